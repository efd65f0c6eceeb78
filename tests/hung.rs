//! A server that hangs (SIGSTOP: connections stay open, nothing answers) holds its clients only
//! until the monitor marks it down. Runs on its own cluster because it stops servers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{cluster, connect, start_proxy};
use mysql_async::prelude::*;

/// The longest a statement may wait, as the issue states it: `fall` (3) times `interval`
/// (500 ms), plus `timeout` (1 s), plus 0.5 s. The first failed check takes up to `timeout`;
/// the monitor then checks a failing backend against `interval` (fastinter), so the other two
/// take 500 ms each.
const BOUND: Duration = Duration::from_millis(3 * 500 + 1000 + 500);

/// Resumes the server when dropped, whatever the test did.
struct Stopped(usize);

impl Stopped {
    fn new(node: usize) -> Stopped {
        cluster().nodes[node].signal("STOP").expect("SIGSTOP");
        Stopped(node)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = cluster().nodes[self.0].signal("CONT");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_server_holds_clients_only_until_the_monitor_marks_it_down() {
    let proxy = start_proxy().await;
    let mut setup = connect(&proxy).await;
    setup.query_drop("CREATE TABLE IF NOT EXISTS hung_t (id INT PRIMARY KEY)").await.expect("create");
    common::replicated().await;
    drop(setup);

    // Four readers for six seconds; replica1 stops after one.
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut conn = connect(&proxy).await;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let (mut failed, mut slowest) = (Vec::new(), Duration::ZERO);
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let started = Instant::now();
                let read = tokio::time::timeout(
                    Duration::from_secs(15),
                    conn.query_first::<u32, _>("SELECT COUNT(*) FROM hung_t"),
                )
                .await;
                slowest = slowest.max(started.elapsed());
                match read {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => failed.push(e.to_string()),
                    Err(_) => {
                        failed.push("no answer in 15 s".into());
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (failed, slowest)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let paused = Stopped::new(1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let (failed, slowest) = reader.await.expect("reader");
        assert!(failed.is_empty(), "reads failed while a replica hung: {failed:?}");
        eprintln!("slowest read while a replica hung: {slowest:?}");
        assert!(slowest < BOUND, "a read waited {slowest:?} (bound {BOUND:?})");
    }
    drop(paused);

    // The primary hangs: a write fails within the bound with a clear error; reads go on.
    let mut writer = connect(&proxy).await;
    let mut reader = connect(&proxy).await;
    // The writer holds a primary connection already (a new one would meet connect_timeout
    // instead, a clear error too): its next statement waits on the hung server.
    writer.query_drop("DELETE FROM hung_t WHERE id = 0").await.expect("write before the hang");
    let paused = Stopped::new(0);
    let started = Instant::now();
    let write =
        tokio::time::timeout(Duration::from_secs(15), writer.query_drop("INSERT INTO hung_t VALUES (1)"));
    let err = write.await.expect("an answer within 15 s").expect_err("the primary hangs");
    let took = started.elapsed();
    eprintln!("write on the hung primary failed after {took:?}");
    assert!(took < BOUND, "the write waited {took:?}");
    assert!(err.to_string().contains("marked down"), "{err}");
    for _ in 0..10 {
        let read = tokio::time::timeout(
            Duration::from_secs(15),
            reader.query_first::<u32, _>("SELECT COUNT(*) FROM hung_t"),
        );
        read.await.expect("an answer within 15 s").expect("reads go on");
    }
    drop(paused);

    // The primary hangs in the middle of a long answer: once it is marked down, the relay stops
    // waiting and the client connection is closed (part of the answer was sent: an error
    // packet could not be placed in the stream).
    let up = common::wait_for(Duration::from_secs(15), || {
        proxy.sql.current().router.backends().all()[0].health.state() == rwproxy::backend::State::Up
    });
    assert!(up.await.is_some(), "the primary comes back after SIGCONT");
    let address = proxy.sql_addr.to_string();
    let mut client = common::raw::RawClient::connect(
        &address,
        common::cluster::APP_USER,
        common::cluster::APP_PASSWORD,
        common::cluster::DATABASE,
        true,
    )
    .await
    .expect("login");
    let mut query = vec![0x03];
    query.extend_from_slice(b"SELECT seq, REPEAT('x', 100) FROM seq_1_to_5000000 /* rwproxy:primary */");
    rwproxy::protocol::packet::write_packet(&mut client.stream, 0, &query).await.expect("send");
    let first = rwproxy::protocol::packet::read_logical(&mut client.stream, 1 << 20).await;
    assert!(matches!(first, Ok(Some(_))), "the answer began: {first:?}");
    let paused = Stopped::new(0);
    let started = Instant::now();
    let mut packets = 0u64;
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        // Bounded: the answer has 5,000,000 rows at most.
        loop {
            match rwproxy::protocol::packet::read_logical(&mut client.stream, 1 << 20).await {
                Ok(Some(_)) => packets += 1,
                _ => return,
            }
        }
    })
    .await;
    let took = started.elapsed();
    drop(paused);
    assert!(ended.is_ok(), "the client connection was not closed within 15 s");
    eprintln!("stalled answer closed after {took:?}");
    assert!(took < BOUND, "the stalled answer held the client {took:?}");
    assert!(packets < 5_000_000, "the answer was cut off ({packets} packets)");
}
