//! `KILL` through rwproxy on the real cluster. The id a client knows (its greeting's,
//! `CONNECTION_ID()`) is rwproxy's session id: `KILL QUERY` stops that session's statement on
//! the backend connection running it, `KILL` ends the session, and an id that names no session
//! of the user reaches no backend (sent on, it would name an unrelated thread there).

mod common;

use std::time::{Duration, Instant};

use common::{cluster, connect, connect_direct, opts, start_proxy};
use mysql_async::prelude::*;
use mysql_async::{Conn, consts::ColumnType};

fn server_code(result: Result<impl std::fmt::Debug, mysql_async::Error>) -> u16 {
    match result {
        Err(mysql_async::Error::Server(e)) => e.code,
        other => panic!("a server error expected, got {other:?}"),
    }
}

/// Waits until `text` runs on one of the cluster's servers (its process list).
async fn running_somewhere(text: &str) {
    let probe = format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = '{text}'");
    let mut direct = Vec::new();
    for node in std::iter::once(cluster().primary()).chain(cluster().replicas()) {
        direct.push(connect_direct(node.port).await);
    }
    for _ in 0..200 {
        for conn in &mut direct {
            if conn.query_first::<u64, _>(probe.as_str()).await.expect("processlist") == Some(1) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{text:?} never showed in a process list");
}

type Ran = (Conn, Result<Option<i64>, mysql_async::Error>, Duration);

/// Starts `sql` (a long SLEEP) on `conn` and returns once a server runs it; the task gives the
/// connection back with the result and how long the statement took.
async fn run_long(mut conn: Conn, sql: &str) -> tokio::task::JoinHandle<Ran> {
    let statement = sql.to_string();
    let running = tokio::spawn(async move {
        let started = Instant::now();
        let result = conn.query_first::<i64, _>(statement.as_str()).await;
        (conn, result, started.elapsed())
    });
    running_somewhere(sql).await;
    running
}

/// An interrupted SLEEP returns 1 (MariaDB); a server may say 1317 instead.
fn assert_interrupted(result: &Result<Option<i64>, mysql_async::Error>) {
    match result {
        Ok(Some(1)) => {}
        Err(mysql_async::Error::Server(e)) if e.code == 1317 => {}
        other => panic!("the statement was not interrupted: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_query_stops_the_sessions_statement_and_the_session_goes_on() {
    let proxy = start_proxy().await;
    let victim = connect(&proxy).await;
    let id = victim.id();
    let running = run_long(victim, &format!("SELECT SLEEP(30) AS kill_query_{id}")).await;
    let mut killer = connect(&proxy).await;
    let sent = Instant::now();
    killer.query_drop(format!("KILL QUERY {id}")).await.expect("KILL QUERY of a session of the same user");
    let (mut victim, result, took) = running.await.expect("join");
    println!("KILL QUERY: answered and the statement ended {:?} after it was sent", sent.elapsed());
    assert_interrupted(&result);
    assert!(took < Duration::from_secs(10), "the statement ran {took:?}");
    let seen: Option<u32> = victim.query_first("SELECT CONNECTION_ID()").await.expect("the session goes on");
    assert_eq!(seen, Some(id));
    assert_eq!(victim.query_first::<u8, _>("SELECT 1").await.expect("select"), Some(1));
    // Its own statement: the KILL is the statement running.
    assert_eq!(server_code(victim.query_drop(format!("KILL QUERY {id}")).await), 1317);
    assert_eq!(victim.query_first::<u8, _>("SELECT 2").await.expect("select"), Some(2));
    let (_, metrics) = common::http_get(proxy.admin_addr.expect("admin"), "/metrics").await;
    let line = "rwproxy_kills_total{kind=\"query\",result=\"done\"} 2";
    assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_connection_ends_the_session_and_its_transaction() {
    let proxy = start_proxy().await;
    let mut setup = connect_direct(cluster().primary().port).await;
    setup.query_drop("CREATE TABLE IF NOT EXISTS kill_t (id INT PRIMARY KEY)").await.expect("create");
    let mut victim = connect(&proxy).await;
    let id = victim.id();
    setup.query_drop(format!("DELETE FROM kill_t WHERE id = {id}")).await.expect("delete");
    victim.query_drop("BEGIN").await.expect("begin");
    victim.query_drop(format!("INSERT INTO kill_t VALUES ({id})")).await.expect("insert");
    let running = run_long(victim, &format!("SELECT SLEEP(30) AS kill_connection_{id}")).await;
    let mut killer = connect(&proxy).await;
    killer.query_drop(format!("KILL {id}")).await.expect("KILL of a session of the same user");
    let (mut victim, _, took) = running.await.expect("join");
    assert!(took < Duration::from_secs(10), "the statement ran {took:?}");
    let after = victim.query_drop("SELECT 1").await;
    assert!(after.is_err(), "the killed session still answers");
    // The transaction is gone with it: its row lock no longer holds another writer.
    setup.query_drop("SET SESSION innodb_lock_wait_timeout = 1").await.expect("timeout");
    let mut inserted = false;
    for _ in 0..50 {
        if setup.query_drop(format!("INSERT INTO kill_t VALUES ({id})")).await.is_ok() {
            inserted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(inserted, "the killed session's transaction still holds its row");
    setup.query_drop(format!("DELETE FROM kill_t WHERE id = {id}")).await.expect("clean up");
    // A session killing itself hears it, then is closed.
    let mut own = connect(&proxy).await;
    let own_id = own.id();
    assert_eq!(server_code(own.query_drop(format!("KILL {own_id}")).await), 1927);
    assert!(own.query_drop("SELECT 1").await.is_err(), "a session that killed itself still answers");
    assert_eq!(killer.query_first::<u8, _>("SELECT 1").await.expect("the killer goes on"), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_id_that_names_no_session_of_the_user_reaches_no_backend() {
    let proxy = start_proxy().await;
    let mut killer = connect(&proxy).await;
    // A backend thread's id means nothing to rwproxy: sent on, this would stop the statement.
    let mut bystander = connect_direct(cluster().primary().port).await;
    let thread = bystander.id();
    assert_ne!(thread, killer.id(), "the direct connection's id is also a session's; the test cannot tell");
    let sleep = format!("SELECT SLEEP(2) AS bystander_{thread}");
    let statement = sleep.clone();
    let running = tokio::spawn(async move { bystander.query_first::<i64, _>(statement.as_str()).await });
    running_somewhere(&sleep).await;
    assert_eq!(server_code(killer.query_drop(format!("KILL QUERY {thread}")).await), 1094);
    assert_eq!(server_code(killer.query_drop(format!("KILL {thread}")).await), 1094);
    assert_eq!(
        running.await.expect("join").expect("the bystander's statement"),
        Some(0),
        "it was interrupted"
    );
    // Forms whose target is not a connection id are refused, not sent on.
    assert_eq!(server_code(killer.query_drop("KILL QUERY ID 1").await), 1235);
    assert_eq!(server_code(killer.query_drop("KILL USER app").await), 1235);
    assert_eq!(server_code(killer.exec_drop("KILL QUERY ?", (thread,)).await), 1295);
    // Another user's session: as a server does for a user without CONNECTION_ADMIN.
    let mut other = Conn::new(opts(proxy.sql_addr.port(), "reader", "reader")).await.expect("reader logs in");
    let other_id = other.id();
    assert_eq!(server_code(killer.query_drop(format!("KILL {other_id}")).await), 1095);
    assert_eq!(server_code(killer.query_drop(format!("KILL QUERY {other_id}")).await), 1095);
    assert_eq!(other.query_first::<u8, _>("SELECT 1").await.expect("the reader goes on"), Some(1));
    // Each refusal is counted by kind and result.
    let (_, metrics) = common::http_get(proxy.admin_addr.expect("admin"), "/metrics").await;
    for (labels, count) in [
        ("kind=\"query\",result=\"no_such_session\"", 1),
        ("kind=\"connection\",result=\"no_such_session\"", 1),
        ("kind=\"other\",result=\"unsupported\"", 2),
        ("kind=\"connection\",result=\"not_owner\"", 1),
        ("kind=\"query\",result=\"not_owner\"", 1),
    ] {
        let line = format!("rwproxy_kills_total{{{labels}}} {count}");
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }
    assert_eq!(killer.query_first::<u8, _>("SELECT 1").await.expect("the killer goes on"), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_id_is_the_greeting_id_with_the_servers_column_type() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    for _ in 0..4 {
        // Each borrows whichever backend connection is free: the backend ids would differ.
        conn.query_drop("SELECT 1").await.expect("select");
        let seen: Option<u32> = conn.query_first("SELECT CONNECTION_ID()").await.expect("connection id");
        assert_eq!(seen, Some(conn.id()));
    }
    let column = |result: Vec<mysql_async::Row>| {
        let columns = result.first().expect("a row").columns();
        let c = &columns[0];
        (c.name_str().into_owned(), c.column_type(), c.flags(), c.character_set())
    };
    // EXPLAIN ROUTE says so, for KILL and for the counts once they are known.
    let explain = |row: Option<(String, String, String, String, String)>| {
        let (destination, backend, reason, _, _) = row.expect("a row");
        (destination, backend, reason)
    };
    let row = explain(conn.query_first("EXPLAIN ROUTE SELECT CONNECTION_ID()").await.expect("explain"));
    assert_eq!(row, ("rwproxy".to_string(), "none".to_string(), "connection_id".to_string()));
    let row = explain(conn.query_first("EXPLAIN ROUTE KILL QUERY 1").await.expect("explain"));
    assert_eq!(row, ("rwproxy".to_string(), "none".to_string(), "kill".to_string()));
    conn.query_drop("DO 1").await.expect("do");
    let row = explain(conn.query_first("EXPLAIN ROUTE SELECT ROW_COUNT()").await.expect("explain"));
    assert_eq!(row, ("rwproxy".to_string(), "none".to_string(), "row_count".to_string()));
    let proxied = column(conn.query("select connection_id();").await.expect("proxied"));
    let mut direct = connect_direct(cluster().primary().port).await;
    let direct = column(direct.query("select connection_id();").await.expect("direct"));
    assert_eq!(proxied.1, ColumnType::MYSQL_TYPE_LONG, "MariaDB's type");
    assert_eq!((proxied.1, proxied.2, proxied.3), (direct.1, direct.2, direct.3));
    assert_eq!(proxied.0, direct.0);
}

/// The `mariadb` client's Ctrl-C: it opens a second connection and sends `KILL QUERY` with the
/// id from its greeting. Through rwproxy that id must reach the statement it ran.
#[tokio::test(flavor = "multi_thread")]
async fn the_mariadb_clients_ctrl_c_stops_its_statement() {
    use common::cluster::{APP_PASSWORD, APP_USER, DATABASE};
    let proxy = start_proxy().await;
    let sleep = "SELECT SLEEP(30) AS ctrl_c";
    let child = tokio::process::Command::new("mariadb")
        .arg("--no-defaults")
        .args(["-h127.0.0.1", &format!("-P{}", proxy.sql_addr.port())])
        .args([&format!("-u{APP_USER}"), &format!("-p{APP_PASSWORD}"), DATABASE])
        .args(["--batch", "-e", sleep])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the mariadb client");
    let pid = child.id().expect("pid");
    let started = Instant::now();
    running_somewhere(sleep).await;
    let sent = Instant::now();
    let signalled =
        std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status().expect("kill");
    assert!(signalled.success());
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the client ended")
        .expect("output");
    println!("Ctrl-C: the mariadb client ended {:?} after SIGINT", sent.elapsed());
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(took < Duration::from_secs(15), "the statement ran {took:?}: {stderr}");
    // The client says it killed the query, and the statement ended with 1317.
    assert!(String::from_utf8_lossy(&out.stdout).contains("query killed"), "{stderr}");
    assert!(stderr.contains("1317"), "the client's statement was not stopped: {stderr}");
}

/// `/sessions` lists the logged-in sessions: who, from where, what runs now on which backend
/// thread, and why a session holds its connections; `KILL QUERY` takes the listed id.
#[tokio::test(flavor = "multi_thread")]
async fn the_session_list_shows_what_runs_where_and_what_pins() {
    let proxy = start_proxy().await;
    let admin = proxy.admin_addr.expect("admin");
    let mut pinned = connect(&proxy).await;
    pinned.query_drop("BEGIN").await.expect("begin");
    pinned.query_drop("SELECT 1 FOR UPDATE").await.expect("locking read");
    let busy = connect(&proxy).await;
    let busy_id = busy.id();
    let sleep = format!("SELECT SLEEP(30) AS listed_{busy_id}");
    let running = run_long(busy, &sleep).await;
    let (code, body) = common::http_get(admin, "/sessions").await;
    assert_eq!(code, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("json");
    let sessions = list["sessions"].as_array().expect("a list");
    let find =
        |id: u32| sessions.iter().find(|s| s["id"] == id).unwrap_or_else(|| panic!("{id} not in {body}"));
    let shown = find(pinned.id());
    assert_eq!(shown["user"], "app", "{body}");
    assert_eq!(shown["pinned"], "transaction", "{body}");
    assert!(shown["running"].is_null(), "{body}");
    assert!(shown["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")), "{body}");
    let shown = find(busy_id);
    assert!(shown["pinned"].is_null(), "{body}");
    let backend = shown["running"]["backend"].as_str().expect("the backend running it");
    let thread = shown["running"]["backend_thread_id"].as_u64().expect("its thread id");
    // The listed thread is the one running the statement on that backend.
    let node = std::iter::once(cluster().primary())
        .chain(cluster().replicas())
        .find(|n| n.name == backend)
        .unwrap_or_else(|| panic!("{backend} is no cluster node"));
    let mut direct = connect_direct(node.port).await;
    let info: Option<String> = direct
        .query_first(format!("SELECT INFO FROM information_schema.PROCESSLIST WHERE ID = {thread}"))
        .await
        .expect("processlist");
    assert_eq!(info.as_deref(), Some(sleep.as_str()));
    // The status page shows it among the longest-running statements.
    let (code, page) = common::http_get(admin, "/").await;
    assert_eq!(code, 200);
    assert!(page.contains("1 running a statement, 1 pinned"), "{page}");
    assert!(page.contains(&format!("<tr><td>{busy_id}</td><td>app</td>")), "{page}");
    pinned.query_drop(format!("KILL QUERY {busy_id}")).await.expect("kill query");
    assert_interrupted(&running.await.expect("join").1);
    pinned.query_drop("COMMIT").await.expect("commit");
    let (_, body) = common::http_get(admin, "/sessions").await;
    let list: serde_json::Value = serde_json::from_str(&body).expect("json");
    let sessions = list["sessions"].as_array().expect("a list");
    let shown = sessions.iter().find(|s| s["id"] == pinned.id()).expect("listed");
    assert!(shown["pinned"].is_null() && shown["running"].is_null(), "{body}");
}

/// A session that holds its backend connection (here: in a transaction) reads the server's id
/// for it from `SELECT CONNECTION_ID()`, the one locks and PROCESSLIST name; `KILL QUERY` with
/// that id reaches the statement it runs there.
#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_session_reads_its_backend_thread_id_and_kill_takes_it() {
    let proxy = start_proxy().await;
    let mut victim = connect(&proxy).await;
    victim.query_drop("BEGIN").await.expect("begin");
    victim.query_drop("SELECT 1 FOR UPDATE").await.expect("locking read");
    let thread: u32 = victim.query_first("SELECT CONNECTION_ID()").await.expect("id").expect("row");
    let same: u32 = victim.query_first("SELECT CONNECTION_ID() AS backend").await.expect("id").expect("row");
    assert_eq!(thread, same, "the pinned connection's own id");
    let row: Option<(String, String, String, String, String)> =
        victim.query_first("EXPLAIN ROUTE SELECT CONNECTION_ID()").await.expect("explain");
    assert_ne!(row.expect("a row").0, "rwproxy", "answered by the pinned connection");
    let sleep = format!("SELECT SLEEP(30) AS pinned_{thread}");
    let running = run_long(victim, &sleep).await;
    let mut killer = connect(&proxy).await;
    killer.query_drop(format!("KILL QUERY {thread}")).await.expect("KILL QUERY with the backend thread id");
    let (mut victim, result, took) = running.await.expect("join");
    assert_interrupted(&result);
    assert!(took < Duration::from_secs(10), "the statement ran {took:?}");
    victim.query_drop("ROLLBACK").await.expect("the session goes on");
}
