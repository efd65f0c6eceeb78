//! Failure handling: dead backends, malformed client packets. Runs on its own cluster because
//! it kills servers, and its tests run one at a time: a replica killed by one test must not be
//! the backend another test's statement lands on.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::cluster::{APP_PASSWORD, APP_USER, DATABASE};
use common::raw::RawClient;
use common::{cluster, connect, server_id, start_proxy, start_proxy_with};
use mysql_async::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

fn config_with(extra_routing: &str) -> String {
    cluster().proxy_config("127.0.0.1:0").replacen(
        "[[mysql.users]]",
        &format!("[mysql.routing]\n{extra_routing}\n\n[[mysql.users]]"),
        1,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replica_is_skipped_without_errors_and_rejoins_after_restart() {
    let _serial = SERIAL.lock().await;
    let proxy = start_proxy_with(&config_with("retry_failed_after = \"200ms\"")).await;
    let mut conn = connect(&proxy).await;
    let mut before = BTreeSet::new();
    for _ in 0..6 {
        before.insert(server_id(&mut conn).await);
    }
    assert_eq!(before, BTreeSet::from([1, 2, 3]));
    let victim = &cluster().replicas()[1];
    tokio::task::spawn_blocking(move || cluster().replicas()[1].kill()).await.expect("join").expect("kill");
    let mut during = BTreeSet::new();
    for i in 0..30 {
        let id: u32 = conn
            .query_first("SELECT @@server_id")
            .await
            .unwrap_or_else(|e| panic!("read {i} failed: {e}"))
            .expect("row");
        during.insert(id);
    }
    assert_eq!(during, BTreeSet::from([1, 2]), "{} is dead", victim.name);
    let mut other = connect(&proxy).await;
    assert!(server_id(&mut other).await < 3, "new sessions avoid the dead replica too");
    tokio::task::spawn_blocking(move || cluster().replicas()[1].restart())
        .await
        .expect("join")
        .expect("restart");
    // The monitor may have marked it down while it was away (how long a restart takes depends
    // on the machine's load): it rejoins after `rise` good checks.
    let backends = proxy.sql.current().router.backends().clone();
    let up = common::wait_for(Duration::from_secs(10), || {
        backends.get(2).is_some_and(|b| b.health.state() != rwproxy::backend::State::Down)
    })
    .await;
    assert!(up.is_some(), "the monitor never saw the restarted replica up");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut after = BTreeSet::new();
    for _ in 0..9 {
        after.insert(server_id(&mut conn).await);
    }
    assert_eq!(after, BTreeSet::from([1, 2, 3]), "restarted replica is back in rotation");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_primary_gives_a_clear_error_and_reads_go_on() {
    let _serial = SERIAL.lock().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let primary = cluster().primary().address();
    let text = cluster().proxy_config("127.0.0.1:0").replace(&primary, &format!("127.0.0.1:{dead_port}"));
    let proxy = start_proxy_with(&text).await;
    let mut conn = connect(&proxy).await;
    // Session commands fall back to a replica when the primary is gone.
    conn.query_drop("SET time_zone = '+02:00'").await.expect("set with the primary down");
    for _ in 0..4 {
        let row: Option<(u32, String)> =
            conn.query_first("SELECT @@server_id, @@time_zone").await.expect("read");
        let (id, tz) = row.expect("row");
        assert!(id == 2 || id == 3, "read served by a replica, got {id}");
        assert_eq!(tz, "+02:00");
    }
    let err = conn.query_drop("INSERT INTO t VALUES (1)").await.expect_err("no primary");
    let mysql_async::Error::Server(e) = err else { panic!("ERR packet expected, got {err:?}") };
    assert_eq!((e.code, e.state.as_str()), (9001, "HY000"), "rwproxy's own code, not the client-side 2003");
    assert!(e.message.starts_with("rwproxy: no primary available ("), "{}", e.message);
    assert!(e.message.contains(&format!("127.0.0.1:{dead_port}")), "names the address: {}", e.message);
    assert!(server_id(&mut conn).await >= 2, "the session survives");
}

async fn closed(stream: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 256];
    // Bounded: the proxy either closes (read returns 0) or the timeout says it did not.
    for _ in 0..20 {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_packets_close_only_that_client() {
    let _serial = SERIAL.lock().await;
    let proxy = start_proxy().await;
    let addr = proxy.sql_addr.to_string();
    let mut bystander = connect(&proxy).await;

    // A command packet with the wrong sequence id.
    let mut raw = RawClient::connect(&addr, APP_USER, APP_PASSWORD, DATABASE, true).await.expect("raw");
    raw.stream
        .write_all(&[9, 0, 0, 7, 3, b'S', b'E', b'L', b'E', b'C', b'T', b' ', b'1'])
        .await
        .expect("write");
    assert!(closed(&mut raw.stream).await, "out-of-order packet closes the client");

    // A packet announcing more than max_packet_size.
    let mut raw = RawClient::connect(&addr, APP_USER, APP_PASSWORD, DATABASE, true).await.expect("raw");
    let mut huge = Vec::new();
    for _ in 0..5 {
        huge.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0]);
        huge.extend(std::iter::repeat_n(b'x', 0xFF_FFFF));
    }
    let _ = raw.stream.write_all(&huge).await;
    assert!(closed(&mut raw.stream).await, "oversized packet closes the client");

    // Garbage instead of a login.
    let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let mut greeting = [0u8; 128];
    let _ = stream.read(&mut greeting).await.expect("greeting");
    stream.write_all(&[5, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef, 0x00]).await.expect("write");
    assert!(closed(&mut stream).await, "garbage login closes the client");

    // Truncated packet, then EOF.
    let mut raw = RawClient::connect(&addr, APP_USER, APP_PASSWORD, DATABASE, true).await.expect("raw");
    raw.stream.write_all(&[50, 0, 0, 0, 3, b'S']).await.expect("write");
    raw.stream.shutdown().await.expect("shutdown");
    drop(raw);

    // Everyone else is unaffected, and the proxy still accepts.
    assert!(server_id(&mut bystander).await >= 1);
    let mut fresh = connect(&proxy).await;
    assert!(server_id(&mut fresh).await >= 1);
}
