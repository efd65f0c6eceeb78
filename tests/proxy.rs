//! The SQL data path through rwproxy, against a real MariaDB primary and two replicas.

mod common;

use std::collections::BTreeMap;

use common::cluster::{APP_PASSWORD, APP_USER, DATABASE};
use common::raw::RawClient;
use common::{cluster, connect, connect_direct, replicated, server_id, start_proxy};
use mysql_async::prelude::*;
use mysql_async::{Conn, Row, Value};
use mysql_common::constants::CapabilityFlags as Caps;

async fn distribution(conn: &mut Conn, n: usize) -> BTreeMap<u32, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        *seen.entry(server_id(conn).await).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_round_robin_exactly_over_primary_and_replicas() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    let seen = distribution(&mut conn, 30).await;
    assert_eq!(seen, BTreeMap::from([(1, 10), (2, 10), (3, 10)]));
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_exclude_primary_when_configured() {
    let text = cluster().proxy_config("127.0.0.1:0").replacen(
        "[[mysql.users]]",
        "[mysql.routing]\nreads_include_primary = false\n\n[[mysql.users]]",
        1,
    );
    let proxy = common::start_proxy_with(&text).await;
    let mut conn = connect(&proxy).await;
    assert_eq!(distribution(&mut conn, 10).await, BTreeMap::from([(2, 5), (3, 5)]));
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_follow_the_backends_weights_and_a_reload_changes_them() {
    // replica2 takes three reads for every one of the others.
    let name = cluster().replicas()[1].name.clone();
    let text = cluster()
        .proxy_config("127.0.0.1:0")
        .replace(&format!("name = \"{name}\"\n"), &format!("name = \"{name}\"\nweight = 3\n"));
    assert!(text.contains("weight = 3"), "{text}");
    let proxy = common::start_proxy_with(&text).await;
    let mut conn = connect(&proxy).await;
    assert_eq!(distribution(&mut conn, 25).await, BTreeMap::from([(1, 5), (2, 5), (3, 15)]));
    // Weights change on a reload; the backends keep their connections and health.
    let reloaded = text.replace("weight = 3\n", "weight = 1\n");
    let config = rwproxy::config::Config::from_toml(&reloaded).expect("config");
    proxy.reloader.apply(config).expect("reload");
    let mut conn = connect(&proxy).await;
    assert_eq!(distribution(&mut conn, 30).await, BTreeMap::from([(1, 10), (2, 10), (3, 10)]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drained_backend_takes_no_new_reads_and_its_sessions_finish() {
    let proxy = start_proxy().await;
    let admin = proxy.admin_addr.expect("admin");
    let name = cluster().replicas()[1].name.clone();
    let post = |path: String| async move { common::try_http(admin, "POST", &path).await.expect("answered") };
    let mut conn = connect(&proxy).await;
    assert_eq!(distribution(&mut conn, 30).await, BTreeMap::from([(1, 10), (2, 10), (3, 10)]));
    // A read-only transaction that runs on the replica to be drained.
    let mut pinned = connect(&proxy).await;
    let mut on_it = false;
    for _ in 0..6 {
        pinned.query_drop("START TRANSACTION READ ONLY").await.expect("begin");
        if server_id(&mut pinned).await == 3 {
            on_it = true;
            break;
        }
        pinned.query_drop("COMMIT").await.expect("commit");
    }
    assert!(on_it, "read-only transactions rotate over the read backends");

    let (status, body) = post(format!("/backends/{name}/drain")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"admin_state\":\"drain\"") && body.contains("\"changed\":true"), "{body}");
    // New reads go elsewhere; the transaction on it finishes there.
    assert_eq!(distribution(&mut conn, 20).await, BTreeMap::from([(1, 10), (2, 10)]));
    assert_eq!(distribution(&mut pinned, 3).await, BTreeMap::from([(3, 3)]), "the pinned transaction stays");
    pinned.query_drop("COMMIT").await.expect("commit");
    assert_eq!(distribution(&mut pinned, 4).await.get(&3), None, "and then reads elsewhere too");
    // Its idle connections are closed by the workers' sweep (once a second).
    let mut idle = None;
    for _ in 0..30 {
        let (_, status) = common::http_get(admin, "/status").await;
        let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
        let backend = &status["backends"][2];
        assert_eq!(backend["admin_state"], "drain", "{status}");
        assert_eq!(backend["in_read_pool"], false, "{status}");
        idle = backend["idle_connections"].as_u64();
        if idle == Some(0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(idle, Some(0), "idle connections of a drained replica are closed");
    let (_, metrics) = common::http_get(admin, "/metrics").await;
    let line = format!("rwproxy_backend_drained{{backend=\"{name}\"}} 1");
    assert!(metrics.contains(&line), "{line} in\n{metrics}");

    // Mistakes are named; reading is not changing.
    assert_eq!(post("/backends/nosuch/drain".into()).await.0, 404);
    assert_eq!(post(format!("/backends/{name}/offline")).await.0, 404);
    assert_eq!(common::http_get(admin, &format!("/backends/{name}/ready")).await.0, 405);
    // A reload keeps the drain, also one that rebuilds the backend (its limit changed).
    let text = cluster()
        .proxy_config("127.0.0.1:0")
        .replace(&format!("name = \"{name}\"\n"), &format!("name = \"{name}\"\nmax_connections = 5\n"));
    assert!(text.contains("max_connections = 5"), "{text}");
    let config = rwproxy::config::Config::from_toml(&text).expect("config");
    proxy.reloader.apply(config).expect("reload");
    let mut conn = connect(&proxy).await;
    assert_eq!(distribution(&mut conn, 10).await, BTreeMap::from([(1, 5), (2, 5)]));
    // Back in service.
    let (status, body) = post(format!("/backends/{name}/ready")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(distribution(&mut conn, 30).await, BTreeMap::from([(1, 10), (2, 10), (3, 10)]));
}

#[tokio::test(flavor = "multi_thread")]
async fn statement_digests_count_time_and_route_each_statement_shape() {
    let proxy = start_proxy().await;
    let admin = proxy.admin_addr.expect("admin");
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE TABLE digest_t (id INT PRIMARY KEY, v INT)").await.expect("create");
    for id in 1..=6 {
        conn.query_drop(format!("INSERT INTO digest_t VALUES ({id}, {id})")).await.expect("insert");
    }
    replicated().await;
    for id in 1..=6 {
        let _: Option<i32> =
            conn.query_first(format!("SELECT v FROM digest_t WHERE id = {id}")).await.expect("read");
    }
    let select = conn.prep("SELECT v FROM digest_t WHERE id = ? AND v > ?").await.expect("prepare");
    for id in 1..=4 {
        let _: Option<i32> = conn.exec_first(&select, (id, 0)).await.expect("execute");
    }
    conn.query_drop("SELECT * FROM digest_missing").await.expect_err("no such table");
    // A statement is counted right after its answer went out: the next answer says that the
    // previous statement is in (the admin listener could otherwise look first).
    conn.query_drop("DO 1").await.expect("do");
    let queries = |query: &'static str| async move {
        let (status, body) = common::http_get(admin, &format!("/queries{query}")).await;
        assert_eq!(status, 200, "{body}");
        let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        list["queries"].as_array().expect("a list").clone()
    };
    let all = queries("?limit=1000").await;
    let find = |text: &str| {
        all.iter().find(|q| q["statement"] == text).unwrap_or_else(|| panic!("{text} in {all:#?}")).clone()
    };
    let insert = find("INSERT INTO digest_t VALUES (?, ?)");
    assert_eq!((insert["count"].as_u64(), insert["on_primary"].as_u64()), (Some(6), Some(6)), "{insert}");
    assert_eq!(insert["last_reason"], "write");
    let read = find("SELECT v FROM digest_t WHERE id = ?");
    assert_eq!(read["count"].as_u64(), Some(6), "{read}");
    assert_eq!(read["on_primary"].as_u64().zip(read["on_replicas"].as_u64()).map(|(p, r)| p + r), Some(6));
    assert!(read["on_replicas"].as_u64().is_some_and(|r| r >= 2), "reads rotate over the replicas: {read}");
    assert_eq!(read["last_reason"], "read");
    assert!(read["total_seconds"].as_f64().is_some_and(|t| t > 0.0), "{read}");
    let prepared = find("SELECT v FROM digest_t WHERE id = ? AND v > ?");
    assert_eq!(prepared["count"].as_u64(), Some(4), "executions of a prepared statement: {prepared}");
    let missing = find("SELECT * FROM digest_missing");
    assert_eq!((missing["count"].as_u64(), missing["errors"].as_u64()), (Some(1), Some(1)), "{missing}");
    // Ordered, limited, and reset.
    let by_count = queries("?sort=count&limit=2").await;
    assert_eq!(by_count.len(), 2);
    assert!(by_count[0]["count"].as_u64() >= by_count[1]["count"].as_u64(), "{by_count:#?}");
    assert_eq!(common::http_get(admin, "/queries?sort=nonsense").await.0, 400);
    let (_, page) = common::http_get(admin, "/").await;
    assert!(
        page.contains("SELECT v FROM digest_t WHERE id = ?"),
        "the status page lists the costly statements"
    );
    assert_eq!(common::try_http(admin, "POST", "/queries/reset").await.map(|r| r.0), Some(200));
    assert!(queries("").await.is_empty(), "nothing since the reset");
    let _: Option<i32> = conn.exec_first(&select, (1, 0)).await.expect("execute");
    // Counted right after the answer went out: give the worker a moment (bounded).
    let mut again = queries("").await;
    for _ in 0..50 {
        if !again.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        again = queries("").await;
    }
    assert_eq!(again.len(), 1, "{again:#?}");
    assert_eq!(
        again[0]["statement"], "SELECT v FROM digest_t WHERE id = ? AND v > ?",
        "its text outlives the reset"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_land_on_the_primary() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE TABLE writes_t (id INT PRIMARY KEY, who INT)").await.expect("create");
    for i in 0..12 {
        // A write that reached a read_only replica would fail: `app` cannot bypass read_only.
        conn.exec_drop("INSERT INTO writes_t VALUES (?, @@server_id)", (i,)).await.expect("insert");
        conn.query_drop(format!("UPDATE writes_t SET who = @@server_id WHERE id = {i}"))
            .await
            .expect("update");
    }
    let mut direct = connect_direct(cluster().primary().port).await;
    let whos: Vec<u32> = direct.query("SELECT who FROM writes_t").await.expect("select");
    assert_eq!(whos, vec![1; 12]);
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_stay_on_one_backend_and_move_to_the_primary_at_their_first_write() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE TABLE tx_t (id INT PRIMARY KEY)").await.expect("create");
    // The session's reads wait for its write: with the replicas behind (other tests write
    // meanwhile), every transaction would start on the primary.
    replicated().await;
    let mut started_on = Vec::new();
    for begin in
        ["BEGIN", "START TRANSACTION", "START TRANSACTION READ WRITE", "BEGIN", "BEGIN", "BEGIN", "BEGIN"]
    {
        conn.query_drop(begin).await.expect("begin");
        let seen = distribution(&mut conn, 4).await;
        assert_eq!(seen.len(), 1, "{begin}: one backend for the whole transaction: {seen:?}");
        started_on.extend(seen.keys().copied());
        conn.query_drop("COMMIT").await.expect("commit");
    }
    started_on.sort_unstable();
    started_on.dedup();
    assert!(started_on.len() >= 2, "read-only transactions rotate over the read backends: {started_on:?}");
    for begin in ["BEGIN", "START TRANSACTION", "START TRANSACTION READ WRITE"] {
        conn.query_drop(begin).await.expect("begin");
        let before: Option<u32> = conn.query_first("SELECT COUNT(*) FROM tx_t").await.expect("count");
        assert_eq!(before, Some(0));
        conn.query_drop("INSERT INTO tx_t VALUES (1)").await.expect("insert moves the transaction");
        let inside: Option<u32> = conn.query_first("SELECT COUNT(*) FROM tx_t").await.expect("count");
        assert_eq!(inside, Some(1), "the transaction sees its own write");
        assert_eq!(distribution(&mut conn, 3).await, BTreeMap::from([(1, 3)]), "{begin}: on the primary now");
        conn.query_drop("ROLLBACK").await.expect("rollback");
    }
    replicated().await;
    let after: Vec<u32> = conn.query("SELECT COUNT(*) FROM tx_t").await.expect("count");
    assert_eq!(after, vec![0], "rolled back everywhere");
    // The replicas have the session's position once the monitor (or a wait) has seen it:
    // until then a read goes to a backend known to have it, so the spread comes back within
    // a few monitor intervals.
    let mut spread = 0;
    for _ in 0..30 {
        spread = distribution(&mut conn, 3).await.len();
        if spread == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(spread, 3, "reads spread again after the transaction");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_optimistic_transactions_they_stay_on_the_primary() {
    let text = cluster().proxy_config("127.0.0.1:0").replace(
        "connect_timeout = \"1s\"",
        "connect_timeout = \"1s\"\n[mysql.routing]\noptimistic_transactions = false",
    );
    let proxy = common::start_proxy_with(&text).await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE TABLE IF NOT EXISTS ac_t (id INT PRIMARY KEY)").await.expect("create");
    conn.query_drop("DELETE FROM ac_t").await.expect("clean");
    for begin in ["BEGIN", "START TRANSACTION", "START TRANSACTION READ WRITE"] {
        conn.query_drop(begin).await.expect("begin");
        assert_eq!(distribution(&mut conn, 6).await, BTreeMap::from([(1, 6)]), "{begin}");
        conn.query_drop("COMMIT").await.expect("commit");
    }
    conn.query_drop("SET autocommit = 0").await.expect("autocommit off");
    assert_eq!(distribution(&mut conn, 6).await, BTreeMap::from([(1, 6)]));
    conn.query_drop("INSERT INTO ac_t VALUES (7)").await.expect("insert");
    conn.query_drop("ROLLBACK").await.expect("rollback");
    conn.query_drop("INSERT INTO ac_t VALUES (8)").await.expect("insert");
    conn.query_drop("COMMIT").await.expect("commit");
    assert_eq!(distribution(&mut conn, 3).await, BTreeMap::from([(1, 3)]), "still pinned: autocommit is off");
    conn.query_drop("SET autocommit = 1").await.expect("autocommit on");
    replicated().await;
    // Unpinned: reads go to the read pool again. (Where each lands is the consistency rule's
    // call: a replica that the other tests of this binary put behind by more than the causal
    // wait hands its turn to the next, or to the primary.)
    let row: (String, String, String, String, String) =
        conn.query_first("EXPLAIN ROUTE SELECT 1").await.expect("explain").expect("row");
    assert!(row.0 == "read" && row.4.starts_with("borrowed"), "{row:?}");
    let ids: Vec<u32> = conn.query("SELECT id FROM ac_t").await.expect("select");
    assert_eq!(ids, vec![8]);
}

#[tokio::test(flavor = "multi_thread")]
async fn autocommit_off_transactions_start_on_a_read_backend() {
    let proxy = start_proxy().await;
    // Made directly on the primary: the session then has no write of its own whose position
    // the replicas must be known to hold (the rotation under test would otherwise depend on
    // how soon the monitor saw them catch up).
    let mut direct = connect_direct(cluster().primary().port).await;
    direct.query_drop("CREATE TABLE IF NOT EXISTS ac2_t (id INT PRIMARY KEY)").await.expect("create");
    replicated().await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("SET autocommit = 0").await.expect("autocommit off");
    let mut started_on = Vec::new();
    for _ in 0..6 {
        let _: Vec<u32> = conn.query("SELECT id FROM ac2_t").await.expect("opens a transaction");
        let seen = distribution(&mut conn, 3).await;
        assert_eq!(seen.len(), 1, "the implicit transaction stays on one backend: {seen:?}");
        started_on.extend(seen.keys().copied());
        conn.query_drop("COMMIT").await.expect("commit");
    }
    started_on.sort_unstable();
    started_on.dedup();
    assert!(started_on.len() >= 2, "implicit transactions rotate: {started_on:?}");
    let _: Vec<u32> = conn.query("SELECT id FROM ac2_t").await.expect("select");
    conn.query_drop("INSERT INTO ac2_t VALUES (8)").await.expect("insert moves it to the primary");
    assert_eq!(distribution(&mut conn, 3).await, BTreeMap::from([(1, 3)]));
    conn.query_drop("COMMIT").await.expect("commit");
    conn.query_drop("SET autocommit = 1").await.expect("autocommit on");
    let ids: Vec<u32> = conn.query("SELECT id FROM ac2_t").await.expect("select");
    assert_eq!(ids, vec![8], "read-your-writes right after the commit");
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_transaction_is_pinned_to_one_read_backend() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    let mut used = Vec::new();
    for _ in 0..3 {
        conn.query_drop("START TRANSACTION READ ONLY").await.expect("begin");
        let seen = distribution(&mut conn, 5).await;
        assert_eq!(seen.len(), 1, "one backend for the whole transaction: {seen:?}");
        used.extend(seen.keys().copied());
        conn.query_drop("COMMIT").await.expect("commit");
    }
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 2, "successive READ ONLY transactions rotate: {used:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn session_variables_follow_the_session_to_every_backend() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("SET time_zone = '+05:00'").await.expect("set");
    conn.query_drop("SET @greeting = 'hello'").await.expect("set user variable");
    let mut servers = Vec::new();
    for _ in 0..6 {
        let row: (String, String, u32) = conn
            .query_first("SELECT @@time_zone, @greeting, @@server_id")
            .await
            .expect("select")
            .expect("row");
        assert_eq!((row.0.as_str(), row.1.as_str()), ("+05:00", "hello"));
        servers.push(row.2);
    }
    servers.sort_unstable();
    assert_eq!(servers, [1, 1, 2, 2, 3, 3]);
    conn.query_drop("USE information_schema").await.expect("use");
    for _ in 0..3 {
        let db: Option<String> = conn.query_first("SELECT DATABASE()").await.expect("select");
        assert_eq!(db.as_deref(), Some("information_schema"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hints_override_routing() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    for _ in 0..6 {
        let id: Option<u32> =
            conn.query_first("SELECT /* rwproxy:primary */ @@server_id").await.expect("select");
        assert_eq!(id, Some(1));
    }
    // LAST_INSERT_ID() goes to the primary by default; a replica hint sends it to a replica
    // (never the primary while a replica is usable).
    let mut seen = Vec::new();
    for _ in 0..6 {
        let id: Option<u32> = conn
            .query_first("SELECT @@server_id, LAST_INSERT_ID() /* rwproxy:replica */")
            .await
            .map(|r: Option<(u32, u64)>| r.map(|x| x.0))
            .expect("select");
        seen.extend(id);
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, [2, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn ok_packets_of_writes_are_byte_identical_with_and_without_session_tracking() {
    // rwproxy's backend connections track each write's GTID; the client must not see it.
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    // One table per side, so both see the same rows change.
    for t in ["ok_via", "ok_direct"] {
        conn.query_drop(format!("CREATE TABLE {t} (id INT PRIMARY KEY, v INT)")).await.expect("create");
        conn.query_drop(format!("INSERT INTO {t} VALUES (1, 0), (2, 0)")).await.expect("rows");
    }
    let proxy_addr = proxy.sql_addr.to_string();
    let primary_addr = cluster().primary().address();
    for tracking in [false, true] {
        for deprecate_eof in [false, true] {
            let extra = if tracking { Caps::CLIENT_SESSION_TRACK } else { Caps::empty() };
            let login = (APP_USER, APP_PASSWORD, DATABASE);
            let mut via = RawClient::connect_with(&proxy_addr, login, deprecate_eof, extra)
                .await
                .expect("raw via proxy");
            let mut direct = RawClient::connect_with(&primary_addr, login, deprecate_eof, extra)
                .await
                .expect("raw direct");
            let statements = [
                "UPDATE {t} SET v = v + 1 WHERE id = 1",
                "UPDATE {t} SET v = v + 1",
                "INSERT INTO {t} (id, v) SELECT MAX(id) + 1, 0 FROM {t}",
                "SET time_zone = '+01:00'",
                // Session-state changes rwproxy's connections track for multiplexing.
                "CREATE TEMPORARY TABLE {t}_tmp (a INT)",
                "DROP TEMPORARY TABLE {t}_tmp",
                "BEGIN",
                "UPDATE {t} SET v = v + 1 WHERE id = 2",
                "COMMIT",
                "SELECT 1 AS one /* rwproxy:primary */",
            ];
            // One client after the other: their transactions would wait on each other's locks.
            let mut answers = Vec::new();
            for sql in statements {
                answers.push(via.query(&sql.replace("{t}", "ok_via")).await.expect("via proxy"));
            }
            for (sql, a) in statements.iter().zip(answers) {
                let b = direct.query(&sql.replace("{t}", "ok_direct")).await.expect("direct");
                assert_eq!(a, b, "{sql} (tracking = {tracking}, deprecate_eof = {deprecate_eof})");
            }
            // A client that turns state-change tracking on itself gets its entries (rwproxy's
            // connections had it on already, hidden), from the answer to its `SET` on.
            for sql in ["SET session_track_state_change = ON", "CREATE TEMPORARY TABLE {t}_mine (a INT)"] {
                let a = via.query(&sql.replace("{t}", "ok_via")).await.expect("via proxy");
                let b = direct.query(&sql.replace("{t}", "ok_direct")).await.expect("direct");
                assert_eq!(a, b, "{sql} (tracking = {tracking}, deprecate_eof = {deprecate_eof})");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn column_definitions_and_rows_are_byte_identical_to_a_direct_connection() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    conn.query_drop(
        "CREATE TABLE types_t (id INT PRIMARY KEY, b BLOB, bits BIT(5), d DECIMAL(12,4), s VARCHAR(20) CHARACTER SET utf8mb4,
         f DOUBLE, dt DATETIME(3), j JSON, n INT NULL)",
    )
    .await
    .expect("create");
    conn.query_drop(
        "INSERT INTO types_t VALUES (1, x'00ff10', b'10101', 12345678.1234, 'žluťoučký 🐎', 1.5e300, '2024-02-29 12:34:56.789', '{\"a\": [1, 2]}', NULL),
         (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    )
    .await
    .expect("insert");
    replicated().await;
    let proxy_addr = proxy.sql_addr.to_string();
    let primary_addr = cluster().primary().address();
    for deprecate_eof in [false, true] {
        let mut via = RawClient::connect(&proxy_addr, APP_USER, APP_PASSWORD, DATABASE, deprecate_eof)
            .await
            .expect("raw via proxy");
        let mut direct = RawClient::connect(&primary_addr, APP_USER, APP_PASSWORD, DATABASE, deprecate_eof)
            .await
            .expect("raw direct");
        for sql in [
            "SELECT * FROM types_t ORDER BY id",
            "SELECT nosuch FROM types_t",
            "SELECT 1; SELECT 'two', NULL",
        ] {
            // Three rounds so that every read backend answers once.
            for _ in 0..3 {
                let a = via.query(sql).await.expect("via proxy");
                let b = direct.query(sql).await.expect("direct");
                assert_eq!(a, b, "{sql} (deprecate_eof = {deprecate_eof})");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_pass_through_with_code_state_and_message() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    let err = conn.query_drop("SELECT * FROM no_such_table").await.expect_err("must fail");
    let mysql_async::Error::Server(e) = err else { panic!("server error expected, got {err:?}") };
    assert_eq!((e.code, e.state.as_str()), (1146, "42S02"));
    assert_eq!(e.message, "Table 'appdb.no_such_table' doesn't exist");
    // The session goes on.
    assert!(server_id(&mut conn).await >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_20_mib_row_round_trips() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE TABLE big_t (id INT PRIMARY KEY, data LONGBLOB)").await.expect("create");
    let data: Vec<u8> = (0..20 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    conn.exec_drop("INSERT INTO big_t VALUES (1, ?)", (data.clone(),)).await.expect("insert 20 MiB");
    replicated().await;
    for _ in 0..3 {
        let got: Option<Vec<u8>> =
            conn.query_first("SELECT data FROM big_t WHERE id = 1").await.expect("select");
        assert!(got.as_ref() == Some(&data), "20 MiB row differs");
        let got: Option<Vec<u8>> =
            conn.exec_first("SELECT data FROM big_t WHERE id = ?", (1,)).await.expect("exec");
        assert!(got.as_ref() == Some(&data), "20 MiB row differs (binary protocol)");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_statements_and_procedures_return_every_result() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE PROCEDURE two_results() BEGIN SELECT 1 AS a; SELECT 2 AS b, 3 AS c; END")
        .await
        .expect("create procedure");
    for sql in ["CALL two_results()", "SELECT 1 AS a; SELECT 2 AS b, 3 AS c"] {
        let mut result = conn.query_iter(sql).await.expect("query");
        let first: Vec<u32> = result.collect().await.expect("first set");
        let second: Vec<(u32, u32)> = result.collect().await.expect("second set");
        drop(result);
        assert_eq!((first, second), (vec![1], vec![(2, 3)]), "{sql}");
        assert!(server_id(&mut conn).await >= 1, "session usable after {sql}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_run_on_both_routes_with_one_id() {
    // Eventual consistency: the rotation itself is under test here (reads after the session's
    // writes, which may wait for a replica or go to the primary, are tests/consistency.rs's).
    let text = cluster().proxy_config("127.0.0.1:0").replacen(
        "connect_timeout = \"1s\"",
        "connect_timeout = \"1s\"\n[mysql.routing]\nconsistency = \"eventual\"",
        1,
    );
    let proxy = common::start_proxy_with(&text).await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE TABLE ps_t (id INT PRIMARY KEY, v VARCHAR(10))").await.expect("create");
    let insert = conn.prep("INSERT INTO ps_t VALUES (?, ?)").await.expect("prepare insert");
    for i in 0..6 {
        conn.exec_drop(&insert, (i, format!("v{i}"))).await.expect("execute insert");
    }
    replicated().await;
    let select = conn.prep("SELECT @@server_id, v FROM ps_t WHERE id = ?").await.expect("prepare select");
    let mut servers = Vec::new();
    for i in 0..6 {
        let row: Option<(u32, String)> = conn.exec_first(&select, (i,)).await.expect("execute select");
        let (server, v) = row.expect("row");
        assert_eq!(v, format!("v{i}"));
        servers.push(server);
    }
    servers.sort_unstable();
    assert_eq!(servers, [1, 1, 2, 2, 3, 3], "reads rotate; the statement is prepared lazily where needed");
    conn.close(select).await.expect("close");
    conn.close(insert).await.expect("close");
    let rows: Vec<Row> = conn.exec("SELECT ? + 1, ?", (41, Value::NULL)).await.expect("exec");
    assert_eq!(rows.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_access_denied() {
    let proxy = start_proxy().await;
    let err = Conn::new(common::opts(proxy.sql_addr.port(), APP_USER, "wrong")).await.expect_err("must fail");
    let mysql_async::Error::Server(e) = err else { panic!("server error expected, got {err:?}") };
    assert_eq!((e.code, e.state.as_str()), (1045, "28000"));
    assert!(e.message.starts_with("Access denied for user 'app'@'127.0.0.1'"), "{}", e.message);
    let err = Conn::new(common::opts(proxy.sql_addr.port(), "nobody", "x")).await.expect_err("must fail");
    assert!(matches!(err, mysql_async::Error::Server(ref e) if e.code == 1045), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_connection_and_change_user_reset_session_state() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("SET @v = 5").await.expect("set");
    conn.query_drop("BEGIN").await.expect("begin");
    assert!(conn.reset().await.expect("reset"), "COM_RESET_CONNECTION supported");
    let v: Option<Option<u32>> = conn.query_first("SELECT @v").await.expect("select");
    assert_eq!(v, Some(None), "user variable gone");
    assert_eq!(distribution(&mut conn, 6).await.len(), 3, "transaction pin gone");
    let change = mysql_async::ChangeUserOpts::default()
        .with_user(Some("reader".into()))
        .with_pass(Some("reader".into()));
    conn.change_user(change).await.expect("change user");
    let user: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.expect("select");
    assert_eq!(user.as_deref(), Some("reader@%"));
    let bad = mysql_async::ChangeUserOpts::default()
        .with_user(Some("reader".into()))
        .with_pass(Some("nope".into()));
    assert!(conn.change_user(bad).await.is_err(), "wrong password on change user is refused");
}

#[tokio::test(flavor = "multi_thread")]
async fn ping_init_db_and_unsupported_commands() {
    let proxy = start_proxy().await;
    let mut conn = connect(&proxy).await;
    conn.ping().await.expect("ping");
    let mut raw = RawClient::connect(&proxy.sql_addr.to_string(), APP_USER, APP_PASSWORD, DATABASE, true)
        .await
        .expect("raw");
    let reply = raw
        .command(b"\x02information_schema", rwproxy::protocol::ResponseKind::Query)
        .await
        .expect("init db");
    assert_eq!(reply[4], 0x00, "COM_INIT_DB answered OK");
    let reply = raw.query("SELECT DATABASE()").await.expect("select");
    assert!(reply.windows(18).any(|w| w == b"information_schema"), "database changed");
    let reply = raw.command(&[0x0D], rwproxy::protocol::ResponseKind::Query).await.expect("COM_DEBUG");
    assert_eq!(reply[4], 0xFF, "unsupported command gets ERR");
    assert!(String::from_utf8_lossy(&reply).contains("not supported"));
    let reply = raw.command(&[0x09], rwproxy::protocol::ResponseKind::Single).await.expect("COM_STATISTICS");
    assert!(String::from_utf8_lossy(&reply).contains("Uptime"));
}

/// Builds a COM_STMT_EXECUTE for one BLOB parameter whose value came as long data.
fn execute_one_blob(id: u32, cursor: bool, bind_types: bool) -> Vec<u8> {
    let mut p = vec![0x17];
    p.extend_from_slice(&id.to_le_bytes());
    p.push(u8::from(cursor)); // CURSOR_TYPE_READ_ONLY or none
    p.extend_from_slice(&1u32.to_le_bytes());
    p.push(0); // null bitmap: the parameter is not NULL
    if bind_types {
        p.extend_from_slice(&[1, 0xFC, 0]); // new params bound, MYSQL_TYPE_BLOB
    } else {
        p.push(0);
    }
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn long_data_cursors_and_statement_reset_across_backends() {
    use rwproxy::protocol::ResponseKind;
    let proxy = start_proxy().await;
    let mut raw = RawClient::connect(&proxy.sql_addr.to_string(), APP_USER, APP_PASSWORD, DATABASE, false)
        .await
        .expect("raw");
    let mut prepare = vec![0x16];
    prepare.extend_from_slice(b"SELECT CONCAT(?, '|', @@server_id)");
    let reply = raw.command(&prepare, ResponseKind::Prepare).await.expect("prepare");
    assert_eq!(reply[4], 0x00, "prepare OK");
    let id = u32::from_le_bytes([reply[5], reply[6], reply[7], reply[8]]);
    let mut servers = std::collections::BTreeSet::new();
    for round in 0..6u8 {
        let mut long_data = vec![0x18];
        long_data.extend_from_slice(&id.to_le_bytes());
        long_data.extend_from_slice(&[0, 0]);
        long_data.extend_from_slice(format!("chunk-{round}").as_bytes());
        rwproxy::protocol::packet::write_packet(&mut raw.stream, 0, &long_data)
            .await
            .expect("send long data");
        // Types only on the first execution: later backends get them from the proxy.
        let reply = raw
            .command(&execute_one_blob(id, false, round == 0), ResponseKind::Execute)
            .await
            .expect("execute");
        let text = String::from_utf8_lossy(&reply).into_owned();
        assert!(text.contains(&format!("chunk-{round}|")), "long data reached the backend: {text:?}");
        let server =
            text.split(&format!("chunk-{round}|")).nth(1).and_then(|s| s.chars().next()).expect("server id");
        servers.insert(server);
    }
    assert_eq!(servers.len(), 3, "executions rotated over every read backend: {servers:?}");

    // A cursor: the execute answers with metadata only; rows come from COM_STMT_FETCH on the
    // backend that holds the cursor.
    let mut long_data = vec![0x18];
    long_data.extend_from_slice(&id.to_le_bytes());
    long_data.extend_from_slice(&[0, 0]);
    long_data.extend_from_slice(b"cursor");
    rwproxy::protocol::packet::write_packet(&mut raw.stream, 0, &long_data).await.expect("send long data");
    let reply = raw
        .command(&execute_one_blob(id, true, false), ResponseKind::Execute)
        .await
        .expect("execute with cursor");
    assert!(!String::from_utf8_lossy(&reply).contains("cursor|"), "no rows before fetch");
    let mut fetch = vec![0x1C];
    fetch.extend_from_slice(&id.to_le_bytes());
    fetch.extend_from_slice(&10u32.to_le_bytes());
    let reply = raw.command(&fetch, ResponseKind::Rows).await.expect("fetch");
    assert!(String::from_utf8_lossy(&reply).contains("cursor|"), "fetch returns the row");

    let mut reset = vec![0x1A];
    reset.extend_from_slice(&id.to_le_bytes());
    let reply = raw.command(&reset, ResponseKind::Query).await.expect("reset");
    assert_eq!(reply[4], 0x00, "COM_STMT_RESET answered OK");
    let mut close = vec![0x19];
    close.extend_from_slice(&id.to_le_bytes());
    rwproxy::protocol::packet::write_packet(&mut raw.stream, 0, &close).await.expect("close");
    let reply =
        raw.command(&execute_one_blob(id, false, true), ResponseKind::Execute).await.expect("execute closed");
    assert_eq!(reply[4], 0xFF, "a closed statement is unknown");
    assert_eq!(u16::from_le_bytes([reply[5], reply[6]]), 1243);
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_starting_with_either_plugin_log_in() {
    let proxy = start_proxy().await;
    let address = proxy.sql_addr.to_string();
    // The user's plugin is the backends' own (in front of MariaDB: mysql_native_password): a
    // caching_sha2 client is switched; a user configured for caching_sha2_password switches a
    // native client.
    for plugin in ["caching_sha2_password", "mysql_native_password"] {
        let mut raw = RawClient::connect_with_plugin(&address, APP_USER, APP_PASSWORD, DATABASE, plugin)
            .await
            .unwrap_or_else(|e| panic!("{plugin}: {e}"));
        let reply = raw.query("SELECT 1").await.expect("query");
        assert_eq!(reply[4], 1, "one column");
        let wrong = RawClient::connect_with_plugin(&address, APP_USER, "wrong", DATABASE, plugin).await;
        assert!(wrong.expect_err("wrong password").contains("Access denied"), "{plugin}");
    }
    let sha2 = cluster().proxy_config("127.0.0.1:0").replace(
        "name = \"reader\"\npassword = \"reader\"\n",
        "name = \"reader\"\npassword = \"reader\"\nauth = \"caching_sha2_password\"\n",
    );
    let proxy = common::start_proxy_with(&sha2).await;
    let address = proxy.sql_addr.to_string();
    for plugin in ["caching_sha2_password", "mysql_native_password"] {
        let mut raw = RawClient::connect_with_plugin(&address, "reader", "reader", DATABASE, plugin)
            .await
            .unwrap_or_else(|e| panic!("{plugin}: {e}"));
        assert_eq!(raw.query("SELECT 1").await.expect("query")[4], 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_connections_are_reused_clean_across_sessions() {
    // One SQL worker: each worker has its own share of the idle connections.
    let text = cluster()
        .proxy_config("127.0.0.1:0")
        .replace("connect_timeout = \"1s\"", "connect_timeout = \"1s\"\nthreads = 1");
    let proxy = common::start_proxy_with(&text).await;
    let mut first = connect(&proxy).await;
    first.query_drop("SET @secret = 'left behind'").await.expect("set");
    first.query_drop("SET time_zone = '+07:00'").await.expect("set");
    first.query_drop("CREATE TEMPORARY TABLE pool_tmp (a INT)").await.expect("temporary");
    let id_first: u64 =
        first.query_first("SELECT CONNECTION_ID() /* rwproxy:primary */").await.expect("id").expect("row");
    first.disconnect().await.expect("disconnect");
    // The release happens as the session ends; give it a moment.
    let mut reused = false;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if proxy.backends().primary().pool.idle_count() > 0 {
            reused = true;
            break;
        }
    }
    assert!(reused, "the primary connection went back to the pool");
    let mut second = connect(&proxy).await;
    let id_second: u64 =
        second.query_first("SELECT CONNECTION_ID() /* rwproxy:primary */").await.expect("id").expect("row");
    assert_eq!(id_first, id_second, "the same backend connection serves the next session");
    let row: (Option<String>, String) = second
        .query_first("SELECT @secret, @@time_zone /* rwproxy:primary */")
        .await
        .expect("select")
        .expect("row");
    assert_eq!(row, (None, "SYSTEM".to_string()), "no state leaks between sessions");
    let err = second.query_drop("SELECT * FROM pool_tmp").await.expect_err("temporary table gone");
    assert!(err.to_string().contains("doesn't exist"), "{err}");
    let db: Option<String> = second.query_first("SELECT DATABASE() /* rwproxy:primary */").await.expect("db");
    assert_eq!(db.as_deref(), Some(DATABASE));
}

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_makes_a_client_wait_then_fail_clearly() {
    let text = cluster()
        .proxy_config("127.0.0.1:0")
        .replace("connect_timeout = \"1s\"", "connect_timeout = \"300ms\"")
        .replacen("role = \"primary\"", "role = \"primary\"\nmax_connections = 1", 1);
    let proxy = common::start_proxy_with(&text).await;
    let mut holder = connect(&proxy).await;
    holder.query_drop("BEGIN").await.expect("begin");
    holder.query_drop("DO 1").await.expect("holds the only primary connection");
    let mut waiter = connect(&proxy).await;
    let started = std::time::Instant::now();
    let err = waiter.query_drop("DO 2").await.expect_err("no primary connection free");
    let waited = started.elapsed();
    assert!(err.to_string().contains("max_connections"), "{err}");
    assert!(waited >= std::time::Duration::from_millis(250), "waited {waited:?}");
    holder.query_drop("COMMIT").await.expect("commit");
    drop(holder);
    let mut ok = false;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if waiter.query_drop("DO 3").await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "the connection freed by the first session serves the second");
}
