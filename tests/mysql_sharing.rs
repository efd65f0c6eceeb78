//! Sharing that never leaks, on the MySQL profile (Oracle MySQL 9.7, a source and a GTID
//! replica; a cluster of this binary's own): each finding of the sharing issue, and the
//! differential leak harness, as `tests/sharing.rs` runs them on MariaDB.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::leaks::{self, Side};
use common::mysql::{APP_PASSWORD, APP_USER, DATABASE, MysqlCluster};
use mysql_async::Conn;
use mysql_async::prelude::*;
use rwproxy::proxy::Proxy;
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

fn mysql() -> &'static MysqlCluster {
    static CLUSTER: OnceLock<MysqlCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        MysqlCluster::start().unwrap_or_else(|e| panic!("cannot start the MySQL cluster: {e}"))
    })
}

/// The profile's config with every backend limited to `max` connections.
async fn start(max: usize, connect_timeout: &str, routing: &str) -> Proxy {
    let text = mysql()
        .proxy_config("127.0.0.1:0")
        .replace("connect_timeout = \"2s\"", &format!("connect_timeout = \"{connect_timeout}\""))
        .replace("role = \"primary\"\n", &format!("role = \"primary\"\nmax_connections = {max}\n"))
        .replace("role = \"replica\"\n", &format!("role = \"replica\"\nmax_connections = {max}\n"))
        .replacen("[[mysql.users]]", &format!("[mysql.routing]\n{routing}\n\n[[mysql.users]]"), 1);
    common::start_proxy_with(&text).await
}

async fn root_sql(sql: String) {
    tokio::task::spawn_blocking(move || {
        mysql().source().sql(&sql)?;
        mysql().wait_replicated()
    })
    .await
    .expect("join")
    .expect("root sql");
}

async fn connect_to(port: u16, db: Option<&str>) -> Conn {
    Conn::new(common::opts(port, APP_USER, APP_PASSWORD).db_name(db)).await.expect("connect")
}

fn source_port() -> u16 {
    mysql().source().port
}

async fn server_id(conn: &mut Conn) -> u32 {
    conn.query_first("SELECT @@server_id").await.expect("read").expect("row")
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_run_in_the_database_they_were_prepared_in_on_mysql() {
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
    let proxy = start(2, "10s", "").await;
    let port = proxy.sql_addr.port();
    let mut tasks = Vec::new();
    for i in 0..8 {
        tasks.push(tokio::spawn(async move {
            let db = if i % 2 == 0 { "share_a" } else { "share_b" };
            let mut conn = connect_to(port, Some(db)).await;
            let who = format!("s{i}");
            for n in 1..=20u32 {
                conn.exec_drop("INSERT INTO pw (who) VALUES (?)", (&who,)).await.expect("insert");
                let count: Option<u32> =
                    conn.exec_first("SELECT COUNT(*) FROM pw WHERE who = ?", (&who,)).await.expect("select");
                assert_eq!(count, Some(n), "session {i} in {db} reads its own rows");
            }
        }));
    }
    for task in tasks {
        task.await.expect("session");
    }
    let mut direct = connect_to(source_port(), Some(DATABASE)).await;
    for (db, parity) in [("share_a", 0), ("share_b", 1)] {
        let whos: Vec<(String, u32)> = direct
            .query(format!("SELECT who, COUNT(*) FROM {db}.pw GROUP BY who ORDER BY who"))
            .await
            .expect("count");
        let expected: Vec<(String, u32)> =
            (0..8).filter(|i| i % 2 == parity).map(|i| (format!("s{i}"), 20)).collect();
        assert_eq!(whos, expected, "every row of {db} came from a session in {db}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_connection_keeps_the_login_character_set_on_mysql() {
    let _serial = SERIAL.lock().await;
    let mut direct = connect_to(source_port(), Some(DATABASE)).await;
    let login: Option<(String, String)> =
        direct.query_first("SELECT @@character_set_client, @@collation_connection").await.expect("direct");
    let global: Option<String> =
        direct.query_first("SELECT @@GLOBAL.collation_connection").await.expect("global");
    assert_ne!(login.as_ref().map(|l| &l.1), global.as_ref(), "the login's collation is not the global one");
    // One connection per backend: every session after the first borrows a connection that was
    // reset when the one before it ended.
    let proxy = start(1, "5s", "").await;
    for round in 0..4 {
        let mut conn = connect_to(proxy.sql_addr.port(), Some(DATABASE)).await;
        for _ in 0..2 {
            let seen: Option<(String, String)> = conn
                .query_first("SELECT @@character_set_client, @@collation_connection")
                .await
                .expect("through rwproxy");
            assert_eq!(seen, login, "round {round}: the login's character set and collation");
        }
        // The client's own reset gives what a direct reset gives (MySQL: the global ones).
        conn.reset().await.expect("reset");
        direct.reset().await.expect("reset");
        let want: Option<(String, String)> = direct
            .query_first("SELECT @@character_set_client, @@collation_connection")
            .await
            .expect("direct");
        for _ in 0..2 {
            let seen: Option<(String, String)> = conn
                .query_first("SELECT @@character_set_client, @@collation_connection")
                .await
                .expect("read");
            assert_eq!(seen, want, "round {round}: after the client's reset, as directly");
        }
        conn.disconnect().await.expect("disconnect");
        direct = connect_to(source_port(), Some(DATABASE)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transaction_characteristics_travel_with_their_transaction_on_mysql() {
    let _serial = SERIAL.lock().await;
    root_sql(format!(
        "CREATE TABLE IF NOT EXISTS {DATABASE}.iso (id INT PRIMARY KEY, v INT);
         REPLACE INTO {DATABASE}.iso VALUES (1, 1);"
    ))
    .await;
    let proxy = start(8, "2s", "").await;
    let mut conn = connect_to(proxy.sql_addr.port(), Some(DATABASE)).await;
    let mut writer = connect_to(source_port(), Some(DATABASE)).await;
    // A one-shot SET TRANSACTION: READ COMMITTED sees a concurrent commit.
    for round in 0..3 {
        writer.query_drop("UPDATE iso SET v = 1 WHERE id = 1").await.expect("reset row");
        root_sql(String::new()).await;
        conn.query_drop("SET TRANSACTION ISOLATION LEVEL READ COMMITTED").await.expect("set");
        let explained: (String, String, String, String, String) =
            conn.query_first("EXPLAIN ROUTE START TRANSACTION").await.expect("explain").expect("row");
        assert_eq!((explained.0.as_str(), explained.4.as_str()), ("primary", "pinned: next_transaction"));
        conn.query_drop("START TRANSACTION").await.expect("begin");
        let first: Option<u32> = conn.query_first("SELECT v FROM iso WHERE id = 1").await.expect("read");
        writer.query_drop("UPDATE iso SET v = 2 WHERE id = 1").await.expect("commit elsewhere");
        let second: Option<u32> = conn.query_first("SELECT v FROM iso WHERE id = 1").await.expect("read");
        conn.query_drop("COMMIT").await.expect("commit");
        assert_eq!((first, second), (Some(1), Some(2)), "round {round}");
    }
    // START TRANSACTION READ ONLY refuses a write as the server does.
    for _ in 0..4 {
        conn.query_drop("START TRANSACTION READ ONLY").await.expect("begin");
        let err = conn.query_drop("INSERT INTO iso VALUES (9, 9)").await.expect_err("refused");
        let mysql_async::Error::Server(e) = err else { panic!("{err:?}") };
        assert_eq!((e.code, e.state.as_str()), (1792, "25006"), "{}", e.message);
        conn.query_drop("COMMIT").await.expect("commit");
    }
    // SERIALIZABLE: transactions on the source, where their reads lock.
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE").await.expect("serializable");
    conn.query_drop("START TRANSACTION").await.expect("begin");
    let _: Option<u32> = conn.query_first("SELECT v FROM iso WHERE id = 1").await.expect("read");
    assert_eq!(server_id(&mut conn).await, 1, "on the source");
    writer.query_drop("SET SESSION innodb_lock_wait_timeout = 1").await.expect("timeout");
    let err = writer.query_drop("UPDATE iso SET v = 3 WHERE id = 1").await.expect_err("locked");
    let mysql_async::Error::Server(e) = err else { panic!("{err:?}") };
    assert_eq!(e.code, 1205);
    conn.query_drop("COMMIT").await.expect("commit");
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ").await.expect("back");
    // autocommit = 0: table-less reads rotate again after a write transaction.
    conn.query_drop("SET autocommit = 0").await.expect("autocommit off");
    conn.query_drop("UPDATE iso SET v = 4 WHERE id = 1").await.expect("write");
    conn.query_drop("COMMIT").await.expect("commit");
    root_sql(String::new()).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        for _ in 0..2 {
            seen.insert(server_id(&mut conn).await);
        }
        if seen.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.len(), 2, "reads reach the replica again: {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_pool_has_its_own_error_on_mysql() {
    let _serial = SERIAL.lock().await;
    root_sql(format!("CREATE TABLE IF NOT EXISTS {DATABASE}.full_t (id INT PRIMARY KEY)")).await;
    let proxy = start(1, "1s", "").await;
    let mut holder = connect_to(proxy.sql_addr.port(), Some(DATABASE)).await;
    holder.query_drop("BEGIN").await.expect("begin");
    holder.query_drop("REPLACE INTO full_t VALUES (1)").await.expect("holds the source's connection");
    let mut other = connect_to(proxy.sql_addr.port(), Some(DATABASE)).await;
    let err = other.query_drop("REPLACE INTO full_t VALUES (2)").await.expect_err("none free");
    let mysql_async::Error::Server(e) = err else { panic!("{err:?}") };
    assert_eq!((e.code, e.state.as_str()), (9004, "HY000"), "{}", e.message);
    holder.query_drop("COMMIT").await.expect("commit");
    other.query_drop("REPLACE INTO full_t VALUES (2)").await.expect("runs now");
}

#[tokio::test(flavor = "multi_thread")]
async fn differential_harness_finds_no_leak_on_mysql() {
    let _serial = SERIAL.lock().await;
    let sessions = 4;
    let side = |port, prefix: &str| Side {
        port,
        user: APP_USER.into(),
        password: APP_PASSWORD.into(),
        dbs: [format!("{prefix}_a"), format!("{prefix}_b")],
    };
    let proxy = start(2, "10s", "consistency = \"global\"").await;
    let _ = leaks::ADMIN.set(proxy.admin_addr.expect("admin"));
    let direct = side(source_port(), "leakd");
    let proxied = side(proxy.sql_addr.port(), "leakp");
    root_sql(leaks::schema(&direct, sessions) + &leaks::schema(&proxied, sessions)).await;
    let count = std::env::var("RWPROXY_LEAK_SEQUENCES").ok().and_then(|s| s.parse().ok()).unwrap_or(160);
    let first_seed = std::env::var("RWPROXY_LEAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    match leaks::hunt(&direct, &proxied, sessions, first_seed, count, 24).await {
        Ok((ran, statements)) => {
            println!("leak harness (MySQL): {ran} sequences, {statements} statements, 0 mismatches");
            assert_eq!(ran, count);
        }
        Err(mismatches) => panic!("{} mismatches:\n{}", mismatches.len(), mismatches.join("\n")),
    }
}
