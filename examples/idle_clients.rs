//! Opens many SQL clients through rwproxy and leaves them idle, for `benches/sql-idle-clients.sh`:
//! each logs in, writes a row, reads, and stays connected. Prints rwproxy's resident set size
//! before and after (per client), the connections each server holds (`Threads_connected`), and
//! how long a new client takes to log in, write and read while the others sit there.
//!
//!   idle_clients <rwproxy pid> <rwproxy port> <clients> <server port>...
//!
//! Loopback only; user `app`/`app`, database `appdb`, table `idle_bench` (the bench creates it).

use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder};

fn opts(port: u16) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some("app"))
        .pass(Some("app"))
        .db_name(Some("appdb"))
        .prefer_socket(false)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn threads_connected(port: u16) -> Result<u64, mysql_async::Error> {
    let mut conn = Conn::new(opts(port)).await?;
    let row: Option<(String, u64)> = conn.query_first("SHOW GLOBAL STATUS LIKE 'Threads_connected'").await?;
    conn.disconnect().await?;
    // Less this connection.
    Ok(row.map_or(0, |r| r.1.saturating_sub(1)))
}

async fn client(port: u16, i: usize) -> Result<Conn, mysql_async::Error> {
    let mut conn = Conn::new(opts(port)).await?;
    conn.query_drop(format!("INSERT INTO idle_bench (v) VALUES ({i})")).await?;
    let _: Option<u32> = conn.query_first("SELECT @@server_id").await?;
    Ok(conn)
}

async fn servers(ports: &[u16]) -> Result<Vec<u64>, mysql_async::Error> {
    let mut out = Vec::new();
    for port in ports {
        out.push(threads_connected(*port).await?);
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [pid, port, count, ..] = args.as_slice() else {
        return Err("usage: idle_clients <rwproxy pid> <rwproxy port> <clients> <server port>...".into());
    };
    let (pid, port, count): (u32, u16, usize) = (pid.parse()?, port.parse()?, count.parse()?);
    let ports: Vec<u16> = args[3..].iter().map(|p| p.parse()).collect::<Result<_, _>>()?;
    // Pools and buffers of a running proxy first.
    let mut warm = Vec::new();
    for i in 0..50 {
        warm.push(client(port, i).await?);
    }
    let before_threads = servers(&ports).await?;
    let before = rss_kib(pid);
    let started = Instant::now();
    let mut idle = Vec::with_capacity(count);
    let mut logins = tokio::task::JoinSet::new();
    for i in 0..count {
        logins.spawn(client(port, i));
        if logins.len() >= 64
            && let Some(done) = logins.join_next().await
        {
            idle.push(done??);
        }
    }
    while let Some(done) = logins.join_next().await {
        idle.push(done??);
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    let after_threads = servers(&ports).await?;
    let mut latencies = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let conn = client(port, i).await?;
        latencies.push(t.elapsed());
        conn.disconnect().await?;
    }
    latencies.sort();
    println!("{count} idle clients logged in in {:.1} s", took.as_secs_f64());
    println!(
        "rwproxy RSS {before} -> {after} KiB: {:.1} KiB per idle client, {} MiB in all",
        (after.saturating_sub(before)) as f64 / count as f64,
        after / 1024
    );
    println!(
        "backend connections (Threads_connected, in server order): before {before_threads:?}, with the idle clients {after_threads:?}"
    );
    println!(
        "a new client's login + write + read: median {:.1} ms, max {:.1} ms",
        latencies[latencies.len() / 2].as_secs_f64() * 1000.0,
        latencies[latencies.len() - 1].as_secs_f64() * 1000.0
    );
    drop(idle);
    drop(warm);
    Ok(())
}
