//! Sharing that never leaks: sessions that share backend connections hard (two per backend)
//! get what a direct connection gives. Each finding of the sharing issue has a test here (the
//! MySQL profile's are in `tests/mysql.rs`), and a differential harness runs seeded random
//! sequences through rwproxy and directly and compares every answer.

mod common;

use std::time::Duration;

use common::cluster::{APP_PASSWORD, APP_USER, DATABASE};
use common::leaks::{self, Side};
use common::{cluster, connect_direct, opts, replicated, start_proxy_with};
use mysql_async::prelude::*;
use mysql_async::{Conn, Pool};
use tokio::sync::Mutex;

/// Tests that hold locks or change the servers' data run one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// The cluster's proxy config with every backend limited to `max` connections and `routing`
/// lines added to `[mysql.routing]`.
fn shared_hard(max: usize, connect_timeout: &str, routing: &str) -> String {
    cluster()
        .proxy_config("127.0.0.1:0")
        .replace("connect_timeout = \"1s\"", &format!("connect_timeout = \"{connect_timeout}\""))
        .replace("role = \"primary\"\n", &format!("role = \"primary\"\nmax_connections = {max}\n"))
        .replace("role = \"replica\"\n", &format!("role = \"replica\"\nmax_connections = {max}\n"))
        .replacen("[[mysql.users]]", &format!("[mysql.routing]\n{routing}\n\n[[mysql.users]]"), 1)
}

async fn root_sql(sql: String) {
    tokio::task::spawn_blocking(move || cluster().primary().sql(&sql))
        .await
        .expect("join")
        .expect("root sql");
    replicated().await;
}

async fn connect_to(port: u16, db: &str) -> Conn {
    Conn::new(opts(port, APP_USER, APP_PASSWORD).db_name(Some(db))).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_run_in_the_database_they_were_prepared_in() {
    let _serial = SERIAL.lock().await;
    let mut setup = String::new();
    for db in ["share_a", "share_b"] {
        setup += &format!(
            "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db};
             CREATE TABLE {db}.pw (id INT AUTO_INCREMENT PRIMARY KEY, who VARCHAR(20));
             GRANT ALL PRIVILEGES ON {db}.* TO '{APP_USER}'@'%';"
        );
    }
    root_sql(setup).await;
    // One connection per backend: every session's statements run on connections that the
    // other database's sessions used last.
    let proxy = start_proxy_with(&shared_hard(1, "10s", "")).await;
    let port = proxy.sql_addr.port();
    let mut tasks = Vec::new();
    for i in 0..8 {
        tasks.push(tokio::spawn(async move {
            let db = if i % 2 == 0 { "share_a" } else { "share_b" };
            // Long-lived prepared statements (the client's statement cache keeps them).
            let mut conn = connect_to(port, db).await;
            let who = format!("s{i}");
            for n in 1..=25u32 {
                conn.exec_drop("INSERT INTO pw (who) VALUES (?)", (&who,)).await.expect("insert");
                let row: Option<(String, u32)> = conn
                    .exec_first("SELECT DATABASE(), COUNT(*) FROM pw WHERE who = ?", (&who,))
                    .await
                    .expect("select");
                assert_eq!(row, Some((db.to_string(), n)), "session {i} in {db} reads its own rows");
            }
        }));
    }
    for task in tasks {
        task.await.expect("session");
    }
    let mut direct = connect_direct(cluster().primary().port).await;
    for (db, parity) in [("share_a", 0), ("share_b", 1)] {
        let whos: Vec<(String, u32)> = direct
            .query(format!("SELECT who, COUNT(*) FROM {db}.pw GROUP BY who ORDER BY who"))
            .await
            .expect("count");
        let expected: Vec<(String, u32)> =
            (0..8).filter(|i| i % 2 == parity).map(|i| (format!("s{i}"), 25)).collect();
        assert_eq!(whos, expected, "every row of {db} came from a session in {db}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_shot_set_transaction_travels_with_its_transaction() {
    let _serial = SERIAL.lock().await;
    root_sql(format!(
        "CREATE TABLE IF NOT EXISTS {DATABASE}.iso (id INT PRIMARY KEY, v INT);
         REPLACE INTO {DATABASE}.iso VALUES (1, 1);"
    ))
    .await;
    let proxy = start_proxy_with(&cluster().proxy_config("127.0.0.1:0")).await;
    let mut conn = common::connect(&proxy).await;
    let mut writer = connect_direct(cluster().primary().port).await;
    for round in 0..3u32 {
        writer.query_drop("UPDATE iso SET v = 1 WHERE id = 1").await.expect("reset row");
        replicated().await;
        conn.query_drop("SET TRANSACTION ISOLATION LEVEL READ COMMITTED").await.expect("set transaction");
        let explained: (String, String, String, String, String) =
            conn.query_first("EXPLAIN ROUTE START TRANSACTION").await.expect("explain").expect("row");
        assert_eq!(explained.0, "primary", "round {round}: {explained:?}");
        assert_eq!(explained.4, "pinned: next_transaction", "round {round}: {explained:?}");
        conn.query_drop("START TRANSACTION").await.expect("begin");
        let first: Option<u32> = conn.query_first("SELECT v FROM iso WHERE id = 1").await.expect("read");
        writer.query_drop("UPDATE iso SET v = 2 WHERE id = 1").await.expect("concurrent commit");
        let second: Option<u32> = conn.query_first("SELECT v FROM iso WHERE id = 1").await.expect("read");
        conn.query_drop("COMMIT").await.expect("commit");
        assert_eq!((first, second), (Some(1), Some(2)), "round {round}: READ COMMITTED sees the commit");
    }
    // Without the one-shot setting the next transaction is REPEATABLE READ again.
    writer.query_drop("UPDATE iso SET v = 1 WHERE id = 1").await.expect("reset row");
    replicated().await;
    conn.query_drop("START TRANSACTION").await.expect("begin");
    let first: Option<u32> = conn.query_first("SELECT v FROM iso WHERE id = 1").await.expect("read");
    writer.query_drop("UPDATE iso SET v = 2 WHERE id = 1").await.expect("concurrent commit");
    let second: Option<u32> = conn.query_first("SELECT v FROM iso WHERE id = 1").await.expect("read");
    conn.query_drop("COMMIT").await.expect("commit");
    assert_eq!((first, second), (Some(1), Some(1)), "REPEATABLE READ keeps its snapshot");
}

#[tokio::test(flavor = "multi_thread")]
async fn serializable_transactions_lock_on_the_primary() {
    let _serial = SERIAL.lock().await;
    root_sql(format!(
        "CREATE TABLE IF NOT EXISTS {DATABASE}.ser (id INT PRIMARY KEY, v INT);
         REPLACE INTO {DATABASE}.ser VALUES (1, 1);"
    ))
    .await;
    let proxy = start_proxy_with(&cluster().proxy_config("127.0.0.1:0")).await;
    let mut conn = common::connect(&proxy).await;
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE").await.expect("serializable");
    for _ in 0..3 {
        conn.query_drop("START TRANSACTION").await.expect("begin");
        let v: Option<u32> = conn.query_first("SELECT v FROM ser WHERE id = 1").await.expect("read");
        assert_eq!(v, Some(1));
        assert_eq!(common::server_id(&mut conn).await, 1, "a SERIALIZABLE transaction runs on the primary");
        let mut writer = connect_direct(cluster().primary().port).await;
        writer.query_drop("SET SESSION innodb_lock_wait_timeout = 1").await.expect("timeout");
        let blocked = writer
            .query_drop("UPDATE ser SET v = 3 WHERE id = 1")
            .await
            .expect_err("the read locked the row");
        let mysql_async::Error::Server(e) = blocked else { panic!("{blocked:?}") };
        assert_eq!(e.code, 1205, "lock wait timeout, as directly");
        conn.query_drop("COMMIT").await.expect("commit");
    }
    // autocommit = 0 opens its transactions on the primary too.
    conn.query_drop("SET autocommit = 0").await.expect("autocommit off");
    let _: Option<u32> = conn.query_first("SELECT v FROM ser WHERE id = 1").await.expect("read");
    assert_eq!(common::server_id(&mut conn).await, 1);
    conn.query_drop("COMMIT").await.expect("commit");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_transaction_refuses_writes_as_the_server_does() {
    let _serial = SERIAL.lock().await;
    root_sql(format!("CREATE TABLE IF NOT EXISTS {DATABASE}.ro (id INT PRIMARY KEY)")).await;
    let proxy = start_proxy_with(&cluster().proxy_config("127.0.0.1:0")).await;
    let mut conn = common::connect(&proxy).await;
    let mut direct = connect_direct(cluster().primary().port).await;
    let mut on = std::collections::BTreeSet::new();
    for i in 0..6 {
        for c in [&mut conn, &mut direct] {
            c.query_drop("START TRANSACTION READ ONLY").await.expect("begin");
            let err = c.query_drop(format!("INSERT INTO ro VALUES ({i})")).await.expect_err("refused");
            let mysql_async::Error::Server(e) = err else { panic!("{err:?}") };
            assert_eq!((e.code, e.state.as_str()), (1792, "25006"), "{}", e.message);
            assert_eq!(e.message, "Cannot execute statement in a READ ONLY transaction");
        }
        on.insert(common::server_id(&mut conn).await);
        conn.query_drop("COMMIT").await.expect("commit");
        direct.query_drop("COMMIT").await.expect("commit");
    }
    assert!(on.iter().any(|&id| id != 1), "read-only transactions ran on replicas too: {on:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn autocommit_off_reads_rotate_again_after_a_write_transaction() {
    let _serial = SERIAL.lock().await;
    root_sql(format!("CREATE TABLE IF NOT EXISTS {DATABASE}.acw (id INT PRIMARY KEY)")).await;
    let proxy = start_proxy_with(&cluster().proxy_config("127.0.0.1:0")).await;
    let mut conn = common::connect(&proxy).await;
    conn.query_drop("SET autocommit = 0").await.expect("autocommit off");
    conn.query_drop("REPLACE INTO acw VALUES (1)").await.expect("write");
    conn.query_drop("COMMIT").await.expect("commit");
    replicated().await;
    // The replicas take the session's reads once they are known to hold its write (the monitor
    // or a wait tells): within a few monitor intervals, not never.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        for _ in 0..3 {
            seen.insert(common::server_id(&mut conn).await);
        }
        if seen.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.len() >= 2, "table-less reads spread again: {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_pool_has_its_own_error() {
    let _serial = SERIAL.lock().await;
    root_sql(format!("CREATE TABLE IF NOT EXISTS {DATABASE}.full_t (id INT PRIMARY KEY)")).await;
    let proxy = start_proxy_with(&shared_hard(1, "1s", "")).await;
    let mut holder = common::connect(&proxy).await;
    holder.query_drop("BEGIN").await.expect("begin");
    holder.query_drop("REPLACE INTO full_t VALUES (1)").await.expect("holds the primary's one connection");
    let mut other = common::connect(&proxy).await;
    let started = std::time::Instant::now();
    let err = other.query_drop("REPLACE INTO full_t VALUES (2)").await.expect_err("no connection free");
    let mysql_async::Error::Server(e) = err else { panic!("{err:?}") };
    assert_eq!((e.code, e.state.as_str()), (9004, "HY000"), "{}", e.message);
    assert!(e.message.starts_with("rwproxy: too many connections"), "{}", e.message);
    assert!(e.message.contains("(max_connections) are in use"), "{}", e.message);
    assert!(started.elapsed() >= Duration::from_millis(900), "waited connect_timeout");
    holder.query_drop("COMMIT").await.expect("commit");
    other.query_drop("REPLACE INTO full_t VALUES (2)").await.expect("runs once a connection is free");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_without_a_database_never_runs_in_another_sessions() {
    let _serial = SERIAL.lock().await;
    let proxy = start_proxy_with(&shared_hard(1, "5s", "")).await;
    let port = proxy.sql_addr.port();
    let pool_with_db = Pool::new(opts(port, APP_USER, APP_PASSWORD));
    let pool_without = Pool::new(opts(port, APP_USER, APP_PASSWORD).db_name(None::<String>));
    for _ in 0..5 {
        let mut with = pool_with_db.get_conn().await.expect("conn");
        let db: Option<Option<String>> = with.query_first("SELECT DATABASE()").await.expect("db");
        assert_eq!(db, Some(Some(DATABASE.to_string())));
        drop(with);
        let mut without = pool_without.get_conn().await.expect("conn");
        let db: Option<Option<String>> = without.query_first("SELECT DATABASE()").await.expect("db");
        assert_eq!(db, Some(None), "a session that chose no database has none");
        drop(without);
    }
    pool_with_db.disconnect().await.expect("disconnect");
    pool_without.disconnect().await.expect("disconnect");
}

/// Sequences run by the leak harness in this run: `RWPROXY_LEAK_SEQUENCES` (the long run of
/// `scripts/leak-hunt.sh`), else a short seeded run.
fn sequences() -> u64 {
    std::env::var("RWPROXY_LEAK_SEQUENCES").ok().and_then(|s| s.parse().ok()).unwrap_or(240)
}

#[tokio::test(flavor = "multi_thread")]
async fn differential_harness_finds_no_leak_between_sessions_sharing_connections() {
    let _serial = SERIAL.lock().await;
    let sessions = 6;
    let side = |port, prefix: &str| Side {
        port,
        user: APP_USER.into(),
        password: APP_PASSWORD.into(),
        dbs: [format!("{prefix}_a"), format!("{prefix}_b")],
    };
    // `global`: a new session's reads see what the previous sequence wrote (replication lag is
    // not what is hunted here).
    let proxy = start_proxy_with(&shared_hard(2, "10s", "consistency = \"global\"")).await;
    let _ = leaks::ADMIN.set(proxy.admin_addr.expect("admin"));
    let direct = side(cluster().primary().port, "leakd");
    let proxied = side(proxy.sql_addr.port(), "leakp");
    root_sql(leaks::schema(&direct, sessions) + &leaks::schema(&proxied, sessions)).await;
    let first_seed = std::env::var("RWPROXY_LEAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let count = sequences();
    match leaks::hunt(&direct, &proxied, sessions, first_seed, count, 24).await {
        Ok((ran, statements)) => {
            println!("leak harness: {ran} sequences, {statements} statements, 0 mismatches");
            assert_eq!(ran, count);
        }
        Err(mismatches) => {
            let (_, sessions) = common::http_get(proxy.admin_addr.expect("admin"), "/sessions").await;
            panic!("{} mismatches:\n{}\nsessions: {sessions}", mismatches.len(), mismatches.join("\n"))
        }
    }
}
