//! Every row of the routing table, through the proxy on the real cluster. Each test would fail
//! if its row were routed wrongly: a write on a replica fails (read_only), and a read whose
//! answer depends on session state is checked for that state.

mod common;

use std::collections::BTreeSet;

use common::{connect, replicated, server_id, start_proxy};
use mysql_async::Conn;
use mysql_async::prelude::*;

async fn servers(conn: &mut Conn, n: usize) -> BTreeSet<u32> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        seen.insert(server_id(conn).await);
    }
    seen
}

async fn first<T: FromRow + Send + 'static>(conn: &mut Conn, sql: &str) -> T {
    conn.query_first::<T, _>(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

const ALL: [u32; 3] = [1, 2, 3];

/// A proxy whose reads do not wait for the session's writes: these tests look at the routing
/// table alone, and a read after `GET_LOCK`/`CREATE TEMPORARY TABLE` may otherwise go to the
/// primary while a replica catches up (`tests/consistency.rs` tests that).
async fn eventual_proxy() -> rwproxy::proxy::Proxy {
    let text = common::cluster().proxy_config("127.0.0.1:0").replace(
        "connect_timeout = \"1s\"",
        "connect_timeout = \"1s\"\n[mysql.routing]\nconsistency = \"eventual\"",
    );
    common::start_proxy_with(&text).await
}

#[tokio::test(flavor = "multi_thread")]
async fn last_insert_id_in_any_form_reads_the_primary() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE TABLE lid_t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)").await.expect("create");
    conn.query_drop("INSERT INTO lid_t (v) VALUES (1), (2), (3)").await.expect("insert");
    conn.query_drop("INSERT INTO lid_t (v) VALUES (4)").await.expect("insert");
    for sql in [
        "SELECT LAST_INSERT_ID() AS id",
        "SELECT last_insert_id() + 0 AS x",
        "SELECT 1 AS one, LAST_INSERT_ID() AS id",
        "SELECT @@last_insert_id",
        "SELECT @@identity",
    ] {
        for _ in 0..3 {
            let row: mysql_async::Row = conn.query_first(sql).await.expect("select").expect("row");
            let id: u64 = row.get(row.len() - 1).expect("value");
            assert_eq!(id, 4, "{sql}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn temporary_tables_keep_reads_on_the_primary_until_dropped() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE TEMPORARY TABLE tmp_t (a INT)").await.expect("create temporary");
    conn.query_drop("INSERT INTO tmp_t VALUES (1), (2)").await.expect("insert");
    for _ in 0..6 {
        assert_eq!(first::<u32>(&mut conn, "SELECT COUNT(*) FROM tmp_t").await, 2);
    }
    assert_eq!(servers(&mut conn, 3).await, BTreeSet::from([1]));
    conn.query_drop("DROP TEMPORARY TABLE tmp_t").await.expect("drop");
    assert_eq!(servers(&mut conn, 6).await, BTreeSet::from(ALL), "back to round robin");
}

#[tokio::test(flavor = "multi_thread")]
async fn advisory_and_table_locks_pin_to_the_primary() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE TABLE lock_t (a INT)").await.expect("create");
    assert_eq!(first::<u32>(&mut conn, "SELECT GET_LOCK('rwproxy_test', 5)").await, 1);
    assert_eq!(servers(&mut conn, 6).await, BTreeSet::from([1]));
    let holder: Option<u64> =
        conn.query_first("SELECT IS_USED_LOCK('rwproxy_test') = CONNECTION_ID()").await.expect("select");
    assert_eq!(holder, Some(1), "the lock is held by this session's primary connection");
    assert_eq!(first::<u32>(&mut conn, "SELECT RELEASE_LOCK('rwproxy_test')").await, 1);
    assert_eq!(servers(&mut conn, 6).await, BTreeSet::from(ALL));
    conn.query_drop("LOCK TABLES lock_t WRITE").await.expect("lock");
    conn.query_drop("INSERT INTO lock_t VALUES (1)").await.expect("insert under lock");
    assert_eq!(first::<u32>(&mut conn, "SELECT COUNT(*) FROM lock_t").await, 1);
    assert_eq!(servers(&mut conn, 3).await, BTreeSet::from([1]));
    conn.query_drop("UNLOCK TABLES").await.expect("unlock");
    assert_eq!(servers(&mut conn, 6).await, BTreeSet::from(ALL));
}

#[tokio::test(flavor = "multi_thread")]
async fn found_rows_and_show_warnings_describe_the_previous_statement() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE TABLE fr_t (id INT PRIMARY KEY)").await.expect("create");
    conn.query_drop("INSERT INTO fr_t VALUES (1),(2),(3),(4),(5),(6),(7),(8),(9),(10)")
        .await
        .expect("insert");
    replicated().await;
    for _ in 0..3 {
        let rows: Vec<u32> =
            conn.query("SELECT SQL_CALC_FOUND_ROWS id FROM fr_t ORDER BY id LIMIT 2").await.expect("select");
        assert_eq!(rows, [1, 2]);
        assert_eq!(first::<u32>(&mut conn, "SELECT FOUND_ROWS()").await, 10);
    }
    for _ in 0..3 {
        let _: Option<u64> = conn.query_first("SELECT CAST('12abc' AS UNSIGNED)").await.expect("select");
        let warnings: Vec<(String, u32, String)> = conn.query("SHOW WARNINGS").await.expect("show warnings");
        assert_eq!(warnings.len(), 1, "the warning of the previous read: {warnings:?}");
        assert_eq!(warnings[0].1, 1292);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn user_variables_assigned_by_a_read_are_read_back_from_the_primary() {
    let proxy = eventual_proxy().await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("SELECT 42 INTO @answer").await.expect("select into");
    for _ in 0..6 {
        assert_eq!(first::<u32>(&mut conn, "SELECT @answer").await, 42);
    }
    conn.query_drop("SELECT @counter := 7").await.expect("assign");
    for _ in 0..3 {
        assert_eq!(first::<u32>(&mut conn, "SELECT @counter + 1").await, 8);
    }
    // Reads that do not use variables still spread.
    assert_eq!(servers(&mut conn, 6).await, BTreeSet::from(ALL));
}

#[tokio::test(flavor = "multi_thread")]
async fn text_prepare_and_execute_stay_on_the_primary() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("PREPARE by_id FROM 'SELECT @@server_id + ?'").await.expect("prepare");
    conn.query_drop("SET @zero = 0").await.expect("set");
    for _ in 0..4 {
        assert_eq!(first::<u32>(&mut conn, "EXECUTE by_id USING @zero").await, 1);
    }
    conn.query_drop("DEALLOCATE PREPARE by_id").await.expect("deallocate");
    assert_eq!(servers(&mut conn, 6).await, BTreeSet::from(ALL));
}

#[tokio::test(flavor = "multi_thread")]
async fn locking_reads_go_to_the_primary() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE TABLE lr_t (id INT PRIMARY KEY)").await.expect("create");
    conn.query_drop("INSERT INTO lr_t VALUES (1)").await.expect("insert");
    for sql in [
        "SELECT @@server_id FROM lr_t WHERE id = 1 FOR UPDATE",
        "SELECT @@server_id FROM lr_t WHERE id = 1 LOCK IN SHARE MODE",
        "SELECT @@server_id FROM lr_t WHERE id = 1 FOR UPDATE NOWAIT",
        "SELECT @@server_id FROM lr_t WHERE id = 1 FOR UPDATE SKIP LOCKED",
    ] {
        for _ in 0..3 {
            assert_eq!(first::<u32>(&mut conn, sql).await, 1, "{sql}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sequences_advance_on_the_primary() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE SEQUENCE seq_s").await.expect("create sequence");
    let mut got = Vec::new();
    for sql in ["SELECT NEXTVAL(seq_s)", "SELECT NEXT VALUE FOR seq_s", "SELECT NEXTVAL(seq_s)"] {
        got.push(first::<u64>(&mut conn, sql).await);
    }
    assert_eq!(got, [1, 2, 3]);
    assert_eq!(first::<u64>(&mut conn, "SELECT LASTVAL(seq_s)").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn xa_transactions_and_multi_statements_run_on_the_primary() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE TABLE xa_t (id INT PRIMARY KEY)").await.expect("create");
    for sql in [
        "XA START 'rw1'",
        "INSERT INTO xa_t VALUES (1)",
        "XA END 'rw1'",
        "XA PREPARE 'rw1'",
        "XA COMMIT 'rw1'",
    ] {
        conn.query_drop(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    conn.query_drop("SELECT 1; INSERT INTO xa_t VALUES (2)").await.expect("multi-statement with a write");
    assert_eq!(first::<u32>(&mut conn, "SELECT COUNT(*) FROM xa_t /* rwproxy:primary */").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn strings_and_comments_do_not_fool_the_classifier() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        let row: (String, String, u32) = conn
            .query_first("SELECT 'FOR UPDATE', \"INSERT INTO t\" /* DELETE FROM t */, @@server_id -- LOCK IN SHARE MODE\n")
            .await
            .expect("select")
            .expect("row");
        seen.insert(row.2);
    }
    assert_eq!(seen, BTreeSet::from(ALL));
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_connection_forgets_pins_and_replayed_state() {
    let proxy = eventual_proxy().await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE TEMPORARY TABLE reset_tmp (a INT)").await.expect("temporary");
    conn.query_drop("SELECT GET_LOCK('reset_lock', 1)").await.expect("lock");
    conn.query_drop("SET time_zone = '+03:00'").await.expect("set");
    assert_eq!(servers(&mut conn, 3).await, BTreeSet::from([1]));
    assert!(conn.reset().await.expect("reset"));
    assert_eq!(servers(&mut conn, 6).await, BTreeSet::from(ALL), "no pins after reset");
    for _ in 0..3 {
        let tz: String = first(&mut conn, "SELECT @@time_zone").await;
        assert_eq!(tz, "SYSTEM", "settings are not replayed after reset");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_route_answers_without_running_the_statement() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    let row: (String, String, String, String, String) =
        first(&mut conn, "EXPLAIN ROUTE DELETE FROM no_such_table").await;
    assert_eq!((row.0.as_str(), row.1.as_str(), row.2.as_str()), ("primary", "primary", "write"));
    let row: (String, String, String, String, String) =
        first(&mut conn, "EXPLAIN ROUTE SELECT LAST_INSERT_ID()").await;
    assert_eq!((row.0.as_str(), row.2.as_str()), ("primary", "side_effect_function"));
    let row: (String, String, String, String, String) = first(&mut conn, "explain route SELECT 1").await;
    assert_eq!((row.0.as_str(), row.2.as_str()), ("read", "read"));
    let picked = row.1.clone();
    let actual: u32 = first(&mut conn, "SELECT @@server_id").await;
    let expected = match picked.as_str() {
        "primary" => 1,
        "replica1" => 2,
        _ => 3,
    };
    assert_eq!(actual, expected, "the backend named is the one the next read uses");
    conn.query_drop("BEGIN").await.expect("begin");
    let in_transaction: u32 = first(&mut conn, "SELECT @@server_id").await;
    let row: (String, String, String, String, String) = first(&mut conn, "EXPLAIN ROUTE SELECT 1").await;
    assert_eq!((row.0.as_str(), row.2.as_str()), ("pinned", "transaction"));
    let pinned = ["primary", "replica1", "replica2"][in_transaction as usize - 1];
    assert_eq!(row.1, pinned, "the transaction stays where it started");
    conn.query_drop("COMMIT").await.expect("commit");
    let out = tokio::process::Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h127.0.0.1",
            &format!("-P{}", proxy.sql_addr.port()),
            "-uapp",
            "-papp",
            "--batch",
            "-e",
            "EXPLAIN ROUTE SELECT * FROM t FOR UPDATE",
        ])
        .output()
        .await
        .expect("mariadb client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("destination\tbackend\treason\tconsistency")
            && text.contains("primary\tprimary\tlocking_read\tno position needed"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_command_that_fails_on_a_replica_removes_it_from_the_session() {
    // A database that exists on the primary only (created outside the binlog).
    tokio::task::spawn_blocking(|| {
        common::cluster().primary().sql(
            "SET sql_log_bin = 0; CREATE DATABASE IF NOT EXISTS primary_only; GRANT ALL ON primary_only.* TO 'app'@'%'; SET sql_log_bin = 1;",
        )
    })
    .await
    .expect("join")
    .expect("create primary-only database");
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    assert_eq!(servers(&mut conn, 3).await, BTreeSet::from(ALL), "replicas in use before");
    conn.query_drop("USE primary_only").await.expect("use works on the primary");
    for _ in 0..6 {
        let (db, id): (String, u32) = first(&mut conn, "SELECT DATABASE(), @@server_id").await;
        assert_eq!((db.as_str(), id), ("primary_only", 1), "replicas that cannot follow leave the session");
    }
    let mut other = connect(&proxy).await;
    assert_eq!(servers(&mut other, 6).await, BTreeSet::from(ALL), "other sessions keep every replica");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_that_only_writes_holds_no_replica_connections() {
    let proxy = start_proxy().await;
    // No driver start-up queries: a raw session that only writes.
    let mut raw = common::raw::RawClient::connect(
        &proxy.sql_addr.to_string(),
        "app",
        "app",
        common::cluster::DATABASE,
        true,
    )
    .await
    .expect("raw");
    raw.query("DO 1").await.expect("write");
    let open = |i: usize| {
        proxy.backends().get(i).map(|b| b.health.connections.load(std::sync::atomic::Ordering::Relaxed))
    };
    assert_eq!((open(0), open(1), open(2)), (Some(1), Some(0), Some(0)), "lazy connections");
}

#[tokio::test(flavor = "multi_thread")]
async fn node_specific_statements_go_to_the_primary() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    for _ in 0..3 {
        let rows: Vec<mysql_async::Row> = conn.query("SHOW PROCESSLIST").await.expect("show processlist");
        let own: u64 = first(&mut conn, "SELECT CONNECTION_ID() /* rwproxy:primary */").await;
        assert!(
            rows.iter().any(|r| r.get::<u64, _>(0) == Some(own)),
            "SHOW PROCESSLIST comes from the primary"
        );
    }
}
