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
