//! The MySQL profile: rwproxy in front of Oracle MySQL 9.7 (Debian's build, from the prefix
//! `scripts/mysql-prefix.sh` unpacks), a source and a GTID replica. Real clients with their
//! default settings: the MySQL 9 command-line client, Connector/Python, PyMySQL, mysql_async.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::mysql::{APP_PASSWORD, APP_USER, DATABASE, MysqlCluster};
use mysql_async::prelude::*;
use rwproxy::proxy::Proxy;

fn mysql() -> &'static MysqlCluster {
    static CLUSTER: OnceLock<MysqlCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        MysqlCluster::start().unwrap_or_else(|e| panic!("cannot start the MySQL cluster: {e}"))
    })
}

async fn start(extra_mysql: &str) -> Proxy {
    let text = mysql()
        .proxy_config("127.0.0.1:0")
        .replace("connect_timeout = \"2s\"\n", &format!("connect_timeout = \"2s\"\n{extra_mysql}"));
    common::start_proxy_with(&text).await
}

async fn connect(proxy: &Proxy) -> mysql_async::Conn {
    let opts = common::opts(proxy.sql_addr.port(), APP_USER, APP_PASSWORD).db_name(Some(DATABASE));
    mysql_async::Conn::new(opts).await.expect("connect through rwproxy")
}

async fn replicated() {
    tokio::task::spawn_blocking(|| mysql().wait_replicated()).await.expect("join").expect("replicated");
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_split_and_writes_reach_the_source() {
    let proxy = start("").await;
    let mut conn = connect(&proxy).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let id: Option<u32> = conn.query_first("SELECT @@server_id").await.expect("read");
        ids.push(id.expect("row"));
    }
    ids.sort_unstable();
    assert_eq!(ids, [1, 1, 2, 2], "reads rotate over source and replica");
    conn.query_drop("CREATE TABLE IF NOT EXISTS t (id INT PRIMARY KEY, v VARCHAR(20))").await.expect("ddl");
    conn.query_drop("REPLACE INTO t VALUES (1, 'one')").await.expect("write");
    // Read your own write at once (consistency = session, with MySQL's GTID tracking).
    for _ in 0..4 {
        let v: Option<String> = conn.query_first("SELECT v FROM t WHERE id = 1").await.expect("read");
        assert_eq!(v.as_deref(), Some("one"));
    }
    replicated().await;
    let _ = Duration::ZERO;
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_log_in_with_their_default_settings() {
    let proxy = start("").await;
    let port = proxy.sql_addr.port().to_string();
    // The MySQL 9 command-line client: caching_sha2_password, no mysql_native_password plugin.
    let out = tokio::task::spawn_blocking(move || {
        common::mysql::program("mysql")
            .args(["--no-defaults", "-h127.0.0.1", &format!("-P{port}"), "-uapp", "-papp", DATABASE])
            .args(["--batch", "--skip-column-names", "-e", "SELECT 40 + 2"])
            .output()
            .expect("mysql client")
    })
    .await
    .expect("join");
    assert!(out.status.success(), "mysql 9 client: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "42");
    let script = r#"
import sys, pymysql, mysql.connector
port = int(sys.argv[1])
c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app", database="appdb")
cur = c.cursor(); cur.execute("SELECT 6 * 7"); print(cur.fetchone()[0])
c = mysql.connector.connect(host="127.0.0.1", port=port, user="app", password="app", database="appdb", use_pure=True)
cur = c.cursor(); cur.execute("SELECT 6 * 7"); print(cur.fetchone()[0])
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, &proxy.sql_addr.port().to_string()])
        .output()
        .await
        .expect("python3");
    assert!(out.status.success(), "PyMySQL / Connector/Python: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().collect::<Vec<_>>(), ["42", "42"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_session_replay_load_data_and_a_20_mb_blob() {
    let proxy = start("").await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE TABLE IF NOT EXISTS ps (id INT PRIMARY KEY, b LONGBLOB)").await.expect("ddl");
    let insert = conn.prep("REPLACE INTO ps VALUES (?, ?)").await.expect("prepare");
    // 20 MB: more than one 16 MiB packet, sent as long data by mysql_async.
    let blob: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
    conn.exec_drop(&insert, (1, blob.clone())).await.expect("20 MB blob");
    let back: Option<Vec<u8>> = conn.query_first("SELECT b FROM ps WHERE id = 1").await.expect("read blob");
    assert!(back.as_ref() == Some(&blob), "the blob comes back whole");
    // Session state reaches every backend the session uses.
    conn.query_drop("SET time_zone = '+03:00'").await.expect("set");
    for _ in 0..4 {
        let tz: Option<String> = conn.query_first("SELECT @@time_zone").await.expect("read");
        assert_eq!(tz.as_deref(), Some("+03:00"));
    }
    // Prepared reads rotate with one client-visible id.
    let select = conn.prep("SELECT @@server_id FROM ps WHERE id = ?").await.expect("prepare select");
    replicated().await;
    // Once rwproxy's monitor has seen the replica apply the session's writes (within an
    // interval or two), the reads rotate.
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let id: Option<u32> = conn.exec_first(&select, (1,)).await.expect("execute");
        ids.insert(id.expect("row"));
        if ids.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), [1, 2], "prepared reads on both servers");
    // LOAD DATA LOCAL INFILE with the MySQL 9 client.
    let path = mysql().base.join("load.tsv");
    std::fs::write(&path, (0..1000).map(|i| format!("{i}\tv{i}\n")).collect::<String>()).expect("file");
    conn.query_drop("CREATE TABLE IF NOT EXISTS loaded (id INT PRIMARY KEY, v VARCHAR(10))")
        .await
        .expect("ddl");
    let port = proxy.sql_addr.port();
    let sql = format!(
        "LOAD DATA LOCAL INFILE '{}' REPLACE INTO TABLE loaded; SELECT COUNT(*) FROM loaded /* rwproxy:primary */",
        path.display()
    );
    let out = tokio::task::spawn_blocking(move || {
        common::mysql::program("mysql")
            .args([
                "--no-defaults",
                "--local-infile=1",
                "-h127.0.0.1",
                &format!("-P{port}"),
                "-uapp",
                "-papp",
                DATABASE,
            ])
            .args(["--batch", "--skip-column-names", "-e", &sql])
            .output()
            .expect("mysql client")
    })
    .await
    .expect("join");
    assert!(out.status.success(), "LOAD DATA LOCAL: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "1000");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lagging_replica_leaves_the_read_pool_and_rwproxy_raises_no_warnings() {
    let proxy = start("").await;
    let lag_known = common::wait_for(Duration::from_secs(10), || {
        proxy.sql.current().router.backends().get(1).is_some_and(|b| b.health.lag().is_some())
    })
    .await;
    assert!(lag_known.is_some(), "heartbeat lag is measured on MySQL");
    let c = mysql();
    c.replica()
        .sql("STOP REPLICA; CHANGE REPLICATION SOURCE TO SOURCE_DELAY = 5; START REPLICA;")
        .expect("delay");
    let demoted = common::wait_for(Duration::from_secs(20), || {
        proxy
            .sql
            .current()
            .router
            .backends()
            .get(1)
            .is_some_and(|b| b.health.state() == rwproxy::backend::State::Lagging)
    })
    .await;
    c.replica()
        .sql("STOP REPLICA; CHANGE REPLICATION SOURCE TO SOURCE_DELAY = 0; START REPLICA;")
        .expect("undelay");
    assert!(demoted.is_some(), "the replica is demoted for lag (SOURCE_DELAY = 5, max lag 2 s)");
    // None of rwproxy's own statements (monitor, heartbeat, position tracking and waits) left a
    // warning on either server (MySQL counts warnings per statement digest).
    let mut conn = connect(&proxy).await;
    conn.query_drop("REPLACE INTO t VALUES (2, 'two')").await.ok();
    let _: Option<String> = conn.query_first("SELECT v FROM t WHERE id = 2").await.ok().flatten();
    for node in &c.nodes {
        let warned = node
            .sql(
                "SELECT DIGEST_TEXT, SUM_WARNINGS FROM performance_schema.events_statements_summary_by_digest \
                 WHERE SUM_WARNINGS > 0 AND (DIGEST_TEXT LIKE '%heartbeat%' OR DIGEST_TEXT LIKE '%@@%' \
                 OR DIGEST_TEXT LIKE 'SHOW REPLICA%' OR DIGEST_TEXT LIKE '%GTID%' OR DIGEST_TEXT LIKE '%session_track%')",
            )
            .expect("digests");
        assert!(warned.trim().is_empty(), "{}: rwproxy's statements raised warnings:\n{warned}", node.name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn detect_primary_keeps_writes_on_the_source_while_the_replica_is_writable() {
    let c = mysql();
    // A replica someone left writable.
    c.replica()
        .sql("SET GLOBAL super_read_only = OFF; SET GLOBAL read_only = OFF;")
        .expect("writable replica");
    let text = mysql()
        .proxy_config("127.0.0.1:0")
        .replace("interval = \"500ms\"", "interval = \"200ms\"\ndetect_primary = true");
    let proxy = common::start_proxy_with(&text).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let backends = proxy.sql.current().router.backends().clone();
    let primary = backends.primary().name.clone();
    let writable = backends.writable().len();
    let (_, status) = common::http_get(proxy.admin_addr.expect("admin"), "/status").await;
    c.replica().sql("SET GLOBAL super_read_only = ON;").expect("read-only again");
    assert_eq!(primary, "source", "the primary did not move to the writable replica");
    assert_eq!(writable, 2, "both writable backends seen");
    assert!(status.contains("several backends are writable"), "{status}");
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE TABLE IF NOT EXISTS dp (id INT PRIMARY KEY)").await.expect("ddl");
    conn.query_drop("REPLACE INTO dp VALUES (1)").await.expect("write");
    let on_source = c.source().sql("SELECT COUNT(*) FROM appdb.dp").expect("count");
    assert_eq!(on_source.trim(), "1", "the write reached the source");
}

#[tokio::test(flavor = "multi_thread")]
async fn caching_sha2_full_authentication_without_tls_needs_a_pinned_key_or_explicit_retrieval() {
    let c = mysql();
    // The server's own key pair, made at --initialize (datadir/public_key.pem).
    let key = c.source().datadir.join("public_key.pem");
    assert!(key.exists(), "{} exists", key.display());
    let plain = |extra: &str| {
        mysql()
            .proxy_config("127.0.0.1:0")
            .replace(
                &format!("tls = {{ ca = \"{}\" }}\n", c.certs.ca()),
                &format!("tls = \"disabled\"\n{extra}"),
            )
            .replace("[monitor]\n", "[monitor]\nenabled = false\n")
    };
    let attempt = |text: String| async move {
        // An empty authentication cache: the next login of `app` is a full authentication.
        tokio::task::spawn_blocking(|| mysql().source().sql("FLUSH PRIVILEGES"))
            .await
            .expect("join")
            .expect("flush");
        let proxy = common::start_proxy_with(&text).await;
        let opts = common::opts(proxy.sql_addr.port(), APP_USER, APP_PASSWORD).db_name(Some(DATABASE));
        let mut conn = mysql_async::Conn::new(opts).await.map_err(|e| e.to_string())?;
        conn.query_first::<u32, _>("SELECT 1 /* rwproxy:primary */").await.map_err(|e| e.to_string())
    };
    // No `tls` at all (the default, "preferred"): TLS because the server offers it, as every
    // MySQL client library does; full authentication goes inside it.
    let default =
        mysql().proxy_config("127.0.0.1:0").replace(&format!("tls = {{ ca = \"{}\" }}\n", c.certs.ca()), "");
    assert!(!default.contains("tls ="), "{default}");
    assert_eq!(attempt(default).await.expect("the default config, over TLS"), Some(1));
    let refused = attempt(plain("")).await.expect_err("no TLS, no key: the password is not sent");
    assert!(refused.contains("full authentication needs TLS"), "{refused}");
    let pinned = plain(&format!("server_public_key = \"{}\"\n", key.display()));
    assert_eq!(attempt(pinned).await.expect("with the pinned key"), Some(1));
    let retrieval = plain("allow_public_key_retrieval = true\n");
    assert_eq!(attempt(retrieval).await.expect("with explicit key retrieval"), Some(1));
    // And with TLS (the profile's default config), after the cache was emptied too.
    assert_eq!(attempt(mysql().proxy_config("127.0.0.1:0")).await.expect("over TLS"), Some(1));
}

/// The multiplexing traps on MySQL: the source alone behind rwproxy with one backend connection
/// and one SQL worker, another session taking that connection between every statement.
#[tokio::test(flavor = "multi_thread")]
async fn multiplexing_moves_session_state_between_connections_on_mysql() {
    let full = mysql().proxy_config("127.0.0.1:0");
    let cut = full.find("\n[[mysql.backends]]\nname = \"replica").unwrap_or(full.len());
    let text = full[..cut]
        .replace("role = \"primary\"", "role = \"primary\"\nmax_connections = 1")
        .replace("connect_timeout = \"2s\"\n", "connect_timeout = \"500ms\"\nthreads = 1\n");
    let proxy = common::start_proxy_with(&text).await;
    let direct_opts = common::opts(mysql().source().port, APP_USER, APP_PASSWORD).db_name(Some(DATABASE));
    let table = "CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY, v INT)";
    let steps = [
        "SET NAMES utf8mb4 COLLATE utf8mb4_bin",
        "SELECT @@collation_connection, 'a' = 'A'",
        "SET time_zone = '+05:00'",
        "SELECT @@time_zone, FROM_UNIXTIME(0)",
        "SET sql_mode = 'PIPES_AS_CONCAT'",
        "SELECT 'a' || 'b'",
        "INSERT INTO {t} (v) VALUES (1), (2)",
        "SELECT LAST_INSERT_ID()",
        "SELECT SQL_CALC_FOUND_ROWS v FROM {t} ORDER BY v LIMIT 1",
        "SELECT FOUND_ROWS()",
        "UPDATE {t} SET v = v + 10 WHERE v > 1",
        "SELECT ROW_COUNT()",
        "SELECT ROW_COUNT()",
        "SELECT CAST('12abc' AS SIGNED)",
        "SHOW WARNINGS",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "BEGIN",
        "INSERT INTO {t} (v) VALUES (3)",
        "SELECT @@transaction_isolation, COUNT(*) FROM {t}",
        "COMMIT",
        "SET @a = 5",
        "SELECT @a + 1",
        // Values the server makes are read back and carried (an assignment inside an
        // expression warns on MySQL: that one keeps the session's connection instead).
        "SELECT v INTO @x FROM {t} ORDER BY v DESC LIMIT 1",
        "SET @m = (SELECT CONCAT('m', MIN(v)) FROM {t})",
        "SELECT @x + 1, @m, CHARSET(@m), COLLATION(@m)",
        "SELECT @y := 1.50",
        "SELECT @y / 4",
    ];
    let mut direct = mysql_async::Conn::new(direct_opts.clone()).await.expect("direct");
    for sql in [
        "DROP PROCEDURE IF EXISTS mysql_make_tmp",
        "CREATE PROCEDURE mysql_make_tmp() BEGIN CREATE TEMPORARY TABLE mysql_proc_tmp (a INT); INSERT INTO mysql_proc_tmp VALUES (1), (2); END",
    ] {
        direct.query_drop(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    common::traps::same_as_direct(
        direct,
        connect(&proxy).await,
        connect(&proxy).await,
        "mysql",
        table,
        &steps,
    )
    .await;
    // State only the server saw made (session_track_state_change): the session keeps its
    // connection (new sessions: the one above ends pinned by a warned assignment).
    let steps = ["CALL mysql_make_tmp()", "SELECT COUNT(*) FROM mysql_proc_tmp"];
    let direct = mysql_async::Conn::new(direct_opts).await.expect("direct");
    let (proxied, other) = (connect(&proxy).await, connect(&proxy).await);
    common::traps::same_as_direct(direct, proxied, other, "mysql_proc", table, &steps).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_query_and_connection_id_work_on_mysql() {
    let proxy = start("").await;
    let mut victim = connect(&proxy).await;
    let id = victim.id();
    let column = |rows: Vec<mysql_async::Row>| {
        let columns = rows.first().expect("a row").columns();
        (columns[0].column_type(), columns[0].flags(), columns[0].name_str().into_owned())
    };
    let proxied = column(victim.query("SELECT CONNECTION_ID()").await.expect("proxied"));
    let direct_opts = common::opts(mysql().source().port, APP_USER, APP_PASSWORD).db_name(Some(DATABASE));
    let mut direct = mysql_async::Conn::new(direct_opts).await.expect("direct");
    assert_eq!(proxied, column(direct.query("SELECT CONNECTION_ID()").await.expect("direct")));
    let seen: Option<u32> = victim.query_first("SELECT CONNECTION_ID()").await.expect("id");
    assert_eq!(seen, Some(id));
    let running = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let result = victim.query_first::<i64, _>("SELECT SLEEP(30) AS kill_on_mysql").await;
        (result, started.elapsed())
    });
    let probe = "SELECT COUNT(*) FROM performance_schema.processlist WHERE INFO = 'SELECT SLEEP(30) AS kill_on_mysql'";
    let mut seen_running = false;
    for _ in 0..200 {
        let mut any = false;
        for node in [mysql().source(), mysql().replica()] {
            let opts = common::opts(node.port, APP_USER, APP_PASSWORD);
            let mut conn = mysql_async::Conn::new(opts).await.expect("direct");
            any |= conn.query_first::<u64, _>(probe).await.expect("processlist") == Some(1);
        }
        if any {
            seen_running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen_running, "the statement never showed in a process list");
    let mut killer = connect(&proxy).await;
    killer.query_drop(format!("KILL QUERY {id}")).await.expect("KILL QUERY");
    let (result, took) = running.await.expect("join");
    assert!(
        matches!(result, Ok(Some(1)))
            || matches!(&result, Err(mysql_async::Error::Server(e)) if e.code == 1317),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(10), "the statement ran {took:?}");
}
