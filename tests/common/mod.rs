//! Shared test fixtures: one real cluster per test binary, a proxy per test, client helpers.

#![allow(dead_code)]

pub mod certs;
pub mod cluster;
pub mod leaks;
pub mod mysql;
pub mod raw;
pub mod traps;
pub mod web;

use std::sync::OnceLock;

use cluster::{APP_PASSWORD, APP_USER, Cluster, DATABASE};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use rwproxy::config::Config;
use rwproxy::proxy::{self, Proxy};

/// The cluster of this test binary, started on first use and torn down when the binary exits.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER
        .get_or_init(|| Cluster::start().unwrap_or_else(|e| panic!("cannot start the MariaDB cluster: {e}")))
}

/// A proxy on a free port in front of the cluster, with `extra` appended to its `[mysql]`
/// config (e.g. routing options).
pub async fn start_proxy_with(config_text: &str) -> Proxy {
    let config = Config::from_toml(config_text).unwrap_or_else(|e| panic!("test config: {e}\n{config_text}"));
    proxy::start(config).await.expect("proxy starts")
}

pub async fn start_proxy() -> Proxy {
    start_proxy_with(&cluster().proxy_config("127.0.0.1:0")).await
}

pub fn opts(port: u16, user: &str, password: &str) -> OptsBuilder {
    // prefer_socket(false): otherwise mysql_async asks for @@socket and bypasses the proxy.
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(password))
        .db_name(Some(DATABASE))
        .prefer_socket(false)
}

pub async fn connect(proxy: &Proxy) -> Conn {
    Conn::new(opts(proxy.sql_addr.port(), APP_USER, APP_PASSWORD)).await.expect("connect through proxy")
}

/// A direct connection to a cluster node, bypassing the proxy.
pub async fn connect_direct(port: u16) -> Conn {
    Conn::new(opts(port, APP_USER, APP_PASSWORD)).await.expect("direct connect")
}

pub async fn server_id(conn: &mut Conn) -> u32 {
    conn.query_first("SELECT @@server_id").await.expect("query").expect("a row")
}

/// Waits (off the async threads) until the replicas have applied every write so far.
pub async fn replicated() {
    tokio::task::spawn_blocking(|| cluster().wait_replicated())
        .await
        .expect("join")
        .expect("replication caught up");
}

/// One plain HTTP/1.1 request without a body on its own connection: the status code and the
/// body, or `None` when nothing (or no HTTP answer) came back within ten seconds.
pub async fn try_http(addr: std::net::SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// A plain HTTP/1.1 GET that must be answered; returns the status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    try_http(addr, "GET", path).await.unwrap_or_else(|| panic!("no HTTP answer from {addr} for {path}"))
}

/// A loopback port that was free a moment ago (for listeners whose address must be known
/// before they start, like a config file for the rwproxy binary).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `probe` every 50 ms until it returns true or `limit` passes; returns the time taken.
pub async fn wait_for(
    limit: std::time::Duration,
    mut probe: impl FnMut() -> bool,
) -> Option<std::time::Duration> {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if probe() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    None
}
