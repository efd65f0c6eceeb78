//! Read consistency on the real cluster: read-your-writes with a replica held 1 s behind,
//! `global` reads across connections, position tokens, and optimistic transactions.
//!
//! Tests that delay a replica hold `SERIAL` so that no other test of this binary sees the delay.

mod common;

use std::time::Duration;

use common::{cluster, connect, replicated, start_proxy_with, wait_for};
use mysql_async::Conn;
use mysql_async::prelude::*;
use rwproxy::proxy::Proxy;
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());
static NEXT_KEY: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);

fn config(routing: &str) -> String {
    cluster()
        .proxy_config("127.0.0.1:0")
        .replace("connect_timeout = \"1s\"", &format!("connect_timeout = \"1s\"\n[mysql.routing]\n{routing}"))
}

async fn proxy(routing: &str) -> Proxy {
    start_proxy_with(&config(routing)).await
}

/// Holds replica 2 (`replica2`) `seconds` behind until dropped, once the proxy's monitor has
/// measured the lag (so the test runs against a replica the proxy knows is behind, but inside
/// `max_replication_lag`).
struct Delayed;

impl Delayed {
    async fn start(proxy: &Proxy) -> Delayed {
        tokio::task::spawn_blocking(|| cluster().delay_replica(1, 1)).await.expect("join").expect("delay");
        let backends = proxy.sql.current().router.backends().clone();
        // Writes must flow for the delay to show: the heartbeat does that every 500 ms.
        // MariaDB applies an event once `now >= when + MASTER_DELAY`, `when` in whole seconds, so a
        // 1 s delay holds events 0–1 s; with the heartbeat's 500 ms phase against the check's, the
        // monitor measures 0 and 0.5 s or 0.5 and 1 s by turns. A threshold over 0.5 s was never
        // reached in an unlucky phase (CI): anything over the 100 ms causal wait proves the lag.
        let seen = wait_for(Duration::from_secs(10), || {
            backends.get(2).and_then(|b| b.health.lag()).is_some_and(|l| l > Duration::from_millis(300))
        })
        .await;
        assert!(seen.is_some(), "the proxy never saw replica2's lag");
        Delayed
    }
}

impl Drop for Delayed {
    fn drop(&mut self) {
        // The next test starts with replicas in step.
        let _ = cluster().delay_replica(1, 0);
        let _ = cluster().wait_replicated();
    }
}

async fn table(conn: &mut Conn, name: &str) {
    conn.query_drop(format!(
        "CREATE TABLE IF NOT EXISTS {name} (id INT AUTO_INCREMENT PRIMARY KEY, k INT, v INT)"
    ))
    .await
    .expect("create");
    replicated().await;
}

async fn read_only_transaction(conn: &mut Conn) {
    conn.query_drop("BEGIN").await.expect("begin");
    let _: Vec<u32> = conn.query("SELECT 1").await.expect("read");
    conn.query_drop("COMMIT").await.expect("commit");
}

/// Write-then-read pairs; returns how many reads missed their own write.
async fn stale_pairs(proxy: &Proxy, pairs: usize, reconnect_every: usize) -> usize {
    let mut conn = connect(proxy).await;
    let mut stale = 0;
    for i in 0..pairs {
        if reconnect_every > 0 && i % reconnect_every == 0 {
            conn = connect(proxy).await;
        }
        // Every pair of every run in this binary writes its own key.
        let key = NEXT_KEY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        conn.exec_drop("INSERT INTO ryw_t (k, v) VALUES (?, 1)", (key,)).await.expect("insert");
        let seen: Option<u32> =
            conn.exec_first("SELECT COUNT(*) FROM ryw_t WHERE k = ?", (key,)).await.expect("read");
        if seen != Some(1) {
            stale += 1;
        }
    }
    stale
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_see_the_sessions_own_writes_with_a_replica_a_second_behind() {
    let _serial = SERIAL.lock().await;
    let session = proxy("").await;
    let eventual = proxy("consistency = \"eventual\"").await;
    table(&mut connect(&session).await, "ryw_t").await;
    let _delay = Delayed::start(&session).await;
    // 200 pairs on new sessions (a new connection every pair) and 200 on reused ones.
    let stale = stale_pairs(&session, 200, 1).await + stale_pairs(&session, 200, 0).await;
    assert_eq!(stale, 0, "stale reads with consistency = \"session\"");
    let counts = session.sql.current().metrics.consistency_counts();
    assert!(counts.reads.iter().sum::<u64>() >= 400, "every read after a write was placed: {counts:?}");
    let stale_eventual = stale_pairs(&eventual, 100, 0).await;
    assert!(stale_eventual > 0, "with consistency = \"eventual\" the delayed replica answers stale reads");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_table_is_there_for_the_next_statement() {
    let _serial = SERIAL.lock().await;
    let proxy = proxy("").await;
    let _delay = Delayed::start(&proxy).await;
    let mut conn = connect(&proxy).await;
    for i in 0..40 {
        conn.query_drop(format!("CREATE TABLE new_t{i} (id INT PRIMARY KEY)")).await.expect("create");
        let rows: Result<Vec<u32>, _> = conn.query(format!("SELECT id FROM new_t{i}")).await;
        assert!(rows.is_ok(), "table {i}: {rows:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_answer_most_reads_after_a_write() {
    let _serial = SERIAL.lock().await;
    let proxy = proxy("").await;
    let mut setup = connect(&proxy).await;
    table(&mut setup, "nine_t").await;
    // A replica measured far behind (an earlier test delayed one) is not waited on: start once
    // the monitor sees both in step.
    let backends = proxy.sql.current().router.backends().clone();
    let in_step = wait_for(Duration::from_secs(10), || {
        backends.all().iter().skip(1).all(|b| b.health.lag().is_some_and(|l| l < Duration::from_millis(100)))
    })
    .await;
    assert!(in_step.is_some(), "the replicas never caught up");
    let (mut on_replicas, mut reads, mut stale) = (0, 0, 0);
    let mut conn = connect(&proxy).await;
    for session in 0..20 {
        conn = connect(&proxy).await;
        conn.exec_drop("INSERT INTO nine_t (k, v) VALUES (?, 1)", (session,)).await.expect("insert");
        for _ in 0..9 {
            let (count, server): (u32, u32) = conn
                .exec_first("SELECT COUNT(*), @@server_id FROM nine_t WHERE k = ?", (session,))
                .await
                .expect("read")
                .expect("row");
            reads += 1;
            stale += usize::from(count != 1);
            on_replicas += usize::from(server != 1);
        }
    }
    assert_eq!(stale, 0);
    assert!(on_replicas * 2 >= reads, "replicas answered {on_replicas} of {reads} reads after writes");
    let explained: (String, String, String, String, String) =
        conn.query_first("EXPLAIN ROUTE SELECT 1").await.expect("explain").expect("row");
    assert!(explained.3.contains("0-1-") && explained.3.contains("last read:"), "{explained:?}");
    let (_, status) = common::http_get(proxy.admin_addr.expect("admin"), "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let consistency = &status["consistency"];
    assert_eq!(consistency["mode"], "user", "the default");
    assert_eq!(consistency["primary_writes_gtids"], true);
    let share = consistency["reads_after_writes"]["replica_share"].as_f64().expect("a share");
    assert!(share >= 0.5, "{consistency}");
    for backend in status["backends"].as_array().expect("backends") {
        assert!(backend["position"].as_str().is_some_and(|p| p.starts_with("0-1-")), "{backend}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn global_reads_see_other_connections_writes_and_tokens_carry_positions() {
    let _serial = SERIAL.lock().await;
    let global = proxy("consistency = \"global\"").await;
    let session = proxy("").await;
    let mut setup = connect(&global).await;
    table(&mut setup, "global_t").await;
    let _delay = Delayed::start(&global).await;
    let mut a = connect(&global).await;
    let mut b = connect(&global).await;
    let mut stale = 0;
    for i in 0..300 {
        a.exec_drop("INSERT INTO global_t (k, v) VALUES (?, 1)", (i,)).await.expect("insert");
        let seen: Option<u32> =
            b.exec_first("SELECT COUNT(*) FROM global_t WHERE k = ?", (i,)).await.expect("read");
        stale += usize::from(seen != Some(1));
    }
    assert_eq!(stale, 0, "global: another connection's committed write is always seen");
    // Tokens: a position from session A's connection, a hinted read on B (session mode).
    let mut a = connect(&session).await;
    let mut b = connect(&session).await;
    let mut stale = 0;
    for i in 1000..1200 {
        a.exec_drop("INSERT INTO global_t (k, v) VALUES (?, 1)", (i,)).await.expect("insert");
        let token: String = a.query_first("SELECT @@rwproxy_position").await.expect("token").expect("row");
        assert!(!token.is_empty(), "a session that wrote has a position");
        let sql = format!("SELECT COUNT(*) FROM global_t WHERE k = {i} /* rwproxy:after={token} */");
        let seen: Option<u32> = b.query_first(sql).await.expect("hinted read");
        stale += usize::from(seen != Some(1));
    }
    assert_eq!(stale, 0, "a hinted read sees every write up to the token");
    // The same with the token in a prepared statement's text.
    for i in 2000..2050 {
        a.exec_drop("INSERT INTO global_t (k, v) VALUES (?, 1)", (i,)).await.expect("insert");
        let token: String = a.query_first("SELECT @@rwproxy_position").await.expect("token").expect("row");
        let sql = format!("SELECT COUNT(*) FROM global_t WHERE k = ? /* rwproxy:after={token} */");
        let seen: Option<u32> = b.exec_first(sql, (i,)).await.expect("hinted prepared read");
        stale += usize::from(seen != Some(1));
    }
    assert_eq!(stale, 0, "a hinted prepared read sees every write up to the token");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_whose_reads_changed_on_the_primary_fails_with_a_deadlock() {
    let _serial = SERIAL.lock().await;
    // Reads only on replicas, so every transaction starts on one.
    let proxy = proxy("reads_include_primary = false").await;
    let mut setup = connect(&proxy).await;
    table(&mut setup, "conflict_t").await;
    setup.query_drop("INSERT INTO conflict_t (id, k, v) VALUES (1, 1, 10)").await.expect("row");
    replicated().await;
    // A session's first transaction starts on the primary (nothing is known of it yet); one
    // that only read lets the next start on a replica.
    let mut conn = connect(&proxy).await;
    read_only_transaction(&mut conn).await;
    // Unchanged: the write moves the transaction and commits; the read was right.
    conn.query_drop("BEGIN").await.expect("begin");
    let v: Option<u32> = conn.query_first("SELECT v FROM conflict_t WHERE id = 1").await.expect("read");
    assert_eq!(v, Some(10));
    conn.query_drop("UPDATE conflict_t SET v = v + 1 WHERE id = 1").await.expect("moves and writes");
    conn.query_drop("COMMIT").await.expect("commit");
    let mut direct = common::connect_direct(cluster().primary().port).await;
    let v: Option<u32> = direct.query_first("SELECT v FROM conflict_t WHERE id = 1").await.expect("read");
    assert_eq!(v, Some(11));
    replicated().await;
    // The transaction wrote, so the next one would start on the primary: read-only once more.
    read_only_transaction(&mut conn).await;
    // Changed on the primary after the transaction read it: 1213, and nothing commits.
    conn.query_drop("BEGIN").await.expect("begin");
    let v: Option<u32> = conn.query_first("SELECT v FROM conflict_t WHERE id = 1").await.expect("read");
    assert_eq!(v, Some(11));
    direct.query_drop("UPDATE conflict_t SET v = 100 WHERE id = 1").await.expect("concurrent change");
    let err = conn.query_drop("UPDATE conflict_t SET v = v + 1 WHERE id = 1").await.expect_err("conflict");
    let mysql_async::Error::Server(e) = err else { panic!("server error expected: {err:?}") };
    assert_eq!((e.code, e.state.as_str()), (1213, "40001"), "{}", e.message);
    let v: Option<u32> = direct.query_first("SELECT v FROM conflict_t WHERE id = 1").await.expect("read");
    assert_eq!(v, Some(100), "the conflicting write did not commit");
    // The retry starts on the primary and commits.
    conn.query_drop("BEGIN").await.expect("begin");
    let v: Option<u32> = conn.query_first("SELECT v FROM conflict_t WHERE id = 1").await.expect("read");
    assert_eq!(v, Some(100));
    conn.query_drop("UPDATE conflict_t SET v = v + 1 WHERE id = 1").await.expect("retry writes");
    conn.query_drop("COMMIT").await.expect("commit");
    let v: Option<u32> = direct.query_first("SELECT v FROM conflict_t WHERE id = 1").await.expect("read");
    assert_eq!(v, Some(101));
    let counts = proxy.sql.current().metrics.consistency_counts();
    assert_eq!(counts.optimistic[1..3], [1, 1], "one moved, one conflict: {counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_that_read_too_much_cannot_move() {
    let _serial = SERIAL.lock().await;
    let proxy = proxy("reads_include_primary = false\noptimistic_max_bytes = 1000").await;
    let mut conn = connect(&proxy).await;
    table(&mut conn, "big_t").await;
    conn.query_drop("INSERT INTO big_t (k, v) SELECT seq, seq FROM seq_1_to_200").await.expect("rows");
    replicated().await;
    read_only_transaction(&mut conn).await;
    conn.query_drop("BEGIN").await.expect("begin");
    let rows: Vec<(u32, u32)> = conn.query("SELECT k, v FROM big_t").await.expect("read");
    assert_eq!(rows.len(), 200);
    let err = conn.query_drop("UPDATE big_t SET v = 0 WHERE k = 1").await.expect_err("too large to replay");
    assert!(matches!(err, mysql_async::Error::Server(ref e) if e.code == 1213), "{err:?}");
    let counts = proxy.sql.current().metrics.consistency_counts();
    assert_eq!(counts.optimistic[3], 1, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gtid_of_a_write_is_read_from_the_servers_own_ok_packet() {
    use common::cluster::{APP_PASSWORD, APP_USER, DATABASE};
    use common::raw::RawClient;
    use mysql_common::constants::CapabilityFlags as Caps;
    use rwproxy::protocol::session_track::{Visible, rewrite_ok, tracked_of_ok};
    let primary = cluster().primary();
    let login = (APP_USER, APP_PASSWORD, DATABASE);
    let mut raw = RawClient::connect_with(&primary.address(), login, true, Caps::CLIENT_SESSION_TRACK)
        .await
        .expect("raw login");
    raw.query("SET SESSION session_track_system_variables = 'autocommit,last_gtid'").await.expect("track");
    raw.query("CREATE TABLE IF NOT EXISTS track_t (id INT)").await.expect("create");
    let answer = raw.query("INSERT INTO track_t VALUES (1)").await.expect("insert");
    let payload = &answer[4..];
    let gtid = tracked_of_ok(payload).gtid.expect("the OK packet of a write carries last_gtid");
    let binlog = primary.sql("SELECT @@gtid_binlog_pos").expect("position");
    let have = rwproxy::consistency::Position::parse(&binlog).expect("binlog position");
    let wrote = rwproxy::consistency::Position::parse(&gtid).expect("a GTID");
    assert!(have.covers(&wrote), "{gtid} within {binlog}");
    // Without CLIENT_SESSION_TRACK the same write's OK packet is the plain one.
    let plain = rewrite_ok(
        payload,
        Visible { client_tracks: false, hide_last_gtid: true, hide_gtids: true, hide_state_change: true },
    )
    .expect("rewritten");
    let mut untracked = RawClient::connect(&primary.address(), APP_USER, APP_PASSWORD, DATABASE, true)
        .await
        .expect("raw login");
    let direct = untracked.query("INSERT INTO track_t VALUES (1)").await.expect("insert");
    assert_eq!(plain, &direct[4..], "what a client without tracking gets from the server");
}

/// One "request" of a web application that takes a new connection per request: `write` on one
/// connection, closed; then a read of that row on another.
async fn request_pairs(proxy: &Proxy, pairs: usize) -> (usize, usize) {
    let mut stale = 0;
    let mut missing_tables = 0;
    for _ in 0..pairs {
        let key = NEXT_KEY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut writer = connect(proxy).await;
        writer.exec_drop("INSERT INTO ryw_t (k, v) VALUES (?, 1)", (key,)).await.expect("insert");
        writer.disconnect().await.expect("close");
        let mut reader = connect(proxy).await;
        match reader.exec_first::<u32, _, _>("SELECT COUNT(*) FROM ryw_t WHERE k = ?", (key,)).await {
            Ok(Some(1)) => {}
            Ok(_) => stale += 1,
            Err(mysql_async::Error::Server(e)) if e.code == 1146 => missing_tables += 1,
            Err(e) => panic!("read: {e}"),
        }
        reader.disconnect().await.expect("close");
    }
    (stale, missing_tables)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_connection_reads_what_another_connection_of_the_same_user_wrote() {
    let _serial = SERIAL.lock().await;
    let user = proxy("").await;
    let session = proxy("consistency = \"session\"").await;
    table(&mut connect(&user).await, "ryw_t").await;
    let _delay = Delayed::start(&user).await;
    assert_eq!(request_pairs(&user, 200).await, (0, 0), "consistency = \"user\" (the default)");
    // DDL then a read on a new connection: the table is there.
    for i in 0..40 {
        let mut ddl = connect(&user).await;
        ddl.query_drop(format!("CREATE TABLE user_new_t{i} (id INT PRIMARY KEY)")).await.expect("create");
        ddl.disconnect().await.expect("close");
        let mut reader = connect(&user).await;
        let rows: Result<Vec<u32>, _> = reader.query(format!("SELECT id FROM user_new_t{i}")).await;
        assert!(rows.is_ok(), "table {i} on a new connection: {rows:?}");
    }
    // Eight client processes at once, each a new connection per request.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let port = user.sql_addr.port();
        tasks.push(tokio::spawn(async move {
            let mut stale = 0;
            for _ in 0..25 {
                let key = NEXT_KEY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let opts = common::opts(port, common::cluster::APP_USER, common::cluster::APP_PASSWORD);
                let mut w = Conn::new(opts.clone()).await.expect("connect");
                w.exec_drop("INSERT INTO ryw_t (k, v) VALUES (?, 1)", (key,)).await.expect("insert");
                w.disconnect().await.expect("close");
                let mut r = Conn::new(opts).await.expect("connect");
                let seen: Option<u32> =
                    r.exec_first("SELECT COUNT(*) FROM ryw_t WHERE k = ?", (key,)).await.expect("read");
                stale += usize::from(seen != Some(1));
                r.disconnect().await.expect("close");
            }
            stale
        }));
    }
    let mut stale = 0;
    for task in tasks {
        stale += task.await.expect("client");
    }
    assert_eq!(stale, 0, "8 concurrent clients, a new connection per request");
    // `session` covers only the connection that wrote: the next request may read stale.
    let (stale_session, _) = request_pairs(&session, 60).await;
    assert!(stale_session > 0, "consistency = \"session\" reads stale across connections");
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_answer_most_reads_of_new_connections_with_a_writer_that_never_stops() {
    let _serial = SERIAL.lock().await;
    let proxy = proxy("").await;
    table(&mut connect(&proxy).await, "mix_t").await;
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let writing = writing.clone();
        let port = proxy.sql_addr.port();
        tokio::spawn(async move {
            let opts = common::opts(port, common::cluster::APP_USER, common::cluster::APP_PASSWORD);
            let mut conn = Conn::new(opts).await.expect("connect");
            for i in 0..10_000u32 {
                if !writing.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                conn.exec_drop("INSERT INTO mix_t (k, v) VALUES (?, 1)", (i,)).await.expect("write");
                // A steady writer, 50 writes a second, not one that saturates the primary:
                // flat out, under CI load the replicas fell more than causal_read_timeout
                // behind and every read of the same user rightly went to the primary.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // 16 connections' worth of requests: 90 % reads, 10 % writes, a new connection each.
    let mut tasks = Vec::new();
    for t in 0..16u32 {
        let port = proxy.sql_addr.port();
        tasks.push(tokio::spawn(async move {
            let opts = common::opts(port, common::cluster::APP_USER, common::cluster::APP_PASSWORD);
            let (mut reads, mut on_replicas) = (0, 0);
            for i in 0..20u32 {
                let mut conn = Conn::new(opts.clone()).await.expect("connect");
                if i % 10 == 0 {
                    conn.exec_drop("INSERT INTO mix_t (k, v) VALUES (?, 2)", (t,)).await.expect("write");
                } else {
                    let id: Option<(u32, u32)> = conn
                        .query_first("SELECT @@server_id, COUNT(*) FROM mix_t WHERE k = 1")
                        .await
                        .expect("read");
                    reads += 1;
                    on_replicas += usize::from(id.is_some_and(|(server, _)| server != 1));
                }
                conn.disconnect().await.expect("close");
            }
            (reads, on_replicas)
        }));
    }
    let (mut reads, mut on_replicas) = (0, 0);
    for task in tasks {
        let (r, o) = task.await.expect("client");
        reads += r;
        on_replicas += o;
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    writer.await.expect("writer");
    assert!(on_replicas * 2 >= reads, "replicas answered {on_replicas} of {reads} reads");
}
