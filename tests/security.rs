//! Safe on a network: TLS from real clients to rwproxy and from rwproxy to MariaDB servers that
//! require it, firewalls on every listener, per-user address lists and caps, the client idle
//! timeout and the shared long-data budget.
//!
//! Every proxy here talks TLS to its backends, and every server of this binary's cluster
//! requires secure transport (`require_secure_transport = ON`): a plaintext backend connection
//! anywhere in rwproxy (data path, monitor, position fetcher) would fail these tests.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::certs::Certs;
use common::cluster::{APP_PASSWORD, APP_USER, DATABASE};
use common::raw::RawClient;
use common::{cluster, start_proxy_with};
use mysql_async::prelude::Queryable;
use rwproxy::protocol::ResponseKind;
use rwproxy::protocol::packet;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// Secure transport on every server, and a `secure` user (backend side) for `require_tls`.
fn secured() -> &'static () {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let c = cluster();
        c.primary()
            .sql("CREATE USER 'secure'@'%' IDENTIFIED BY 'secure'; GRANT ALL ON appdb.* TO 'secure'@'%';")
            .expect("secure user");
        c.wait_replicated().expect("replicated");
        for node in &c.nodes {
            node.sql("SET GLOBAL require_secure_transport = ON").expect("require_secure_transport");
        }
    })
}

/// rwproxy's config: TLS on its SQL listener (rwproxy's certificate from the cluster's CA),
/// TLS with full verification to every backend, the `secure` user that must use TLS.
fn config(backend_ca: &str, extra_mysql: &str) -> String {
    secured();
    let c = cluster();
    let base = c.proxy_config("127.0.0.1:0");
    let with_tls = base
        .replace(
            "role = \"primary\"\n",
            &format!("role = \"primary\"\ntls = {{ ca = \"{backend_ca}\", verify = \"full\" }}\n"),
        )
        .replace(
            "role = \"replica\"\n",
            &format!("role = \"replica\"\ntls = {{ ca = \"{backend_ca}\", verify = \"full\" }}\n"),
        )
        .replace("connect_timeout = \"1s\"\n", &format!("connect_timeout = \"1s\"\n{extra_mysql}"));
    format!(
        "{with_tls}\n[[mysql.users]]\nname = \"secure\"\npassword = \"secure\"\nrequire_tls = true\n\n[mysql.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        c.certs.cert("rwproxy"),
        c.certs.key("rwproxy")
    )
}

async fn mariadb(port: u16, user: &str, password: &str, args: &[&str], sql: &str) -> std::process::Output {
    Command::new("mariadb")
        .arg("--no-defaults")
        .args(["-h127.0.0.1", &format!("-P{port}"), &format!("-u{user}"), &format!("-p{password}"), DATABASE])
        .args(["--batch", "--skip-column-names"])
        .args(args)
        .args(["-e", sql])
        .output()
        .await
        .expect("run the mariadb client")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

async fn python(script: &str, args: &[String]) -> std::process::Output {
    Command::new("python3").arg("-c").arg(script).args(args).output().await.expect("python3")
}

#[tokio::test(flavor = "multi_thread")]
async fn real_clients_log_in_over_tls_with_a_verified_certificate() {
    let ca = cluster().certs.ca();
    let proxy = start_proxy_with(&config(&ca, "")).await;
    let port = proxy.sql_addr.port();
    // The `secure` user may only log in over TLS: every success below is a TLS session.
    let verify = ["--ssl", &format!("--ssl-ca={ca}"), "--ssl-verify-server-cert"];
    let out = mariadb(port, "secure", "secure", &verify, "status").await;
    assert!(out.status.success(), "mariadb --ssl-verify-server-cert: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Cipher in use is"), "{}", text(&out.stdout));
    // Verification is real: the same client against a CA that did not sign rwproxy's
    // certificate is refused.
    let other = Certs::generate(&cluster().base.join("other-ca"), &[]).expect("other CA");
    let wrong = ["--ssl", &format!("--ssl-ca={}", other.ca()), "--ssl-verify-server-cert"];
    let out = mariadb(port, "secure", "secure", &wrong, "SELECT 1").await;
    assert!(!out.status.success(), "a certificate from another CA must not verify");

    let pymysql = r#"
import sys, ssl, pymysql
ctx = ssl.create_default_context(cafile=sys.argv[2])
c = pymysql.connect(host="127.0.0.1", port=int(sys.argv[1]), user="secure", password="secure",
                    database="appdb", ssl=ctx)
cur = c.cursor(); cur.execute("SELECT 40 + 2"); print(cur.fetchone()[0], c._sock.version())
"#;
    let out = python(pymysql, &[port.to_string(), ca.clone()]).await;
    assert!(out.status.success(), "PyMySQL with a CA: {}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("42 TLSv1."), "{}", text(&out.stdout));

    let connector = r#"
import sys, mysql.connector
for pure in (True,):
    c = mysql.connector.connect(host="127.0.0.1", port=int(sys.argv[1]), user="secure", password="secure",
                                database="appdb", ssl_ca=sys.argv[2], ssl_verify_cert=True,
                                ssl_verify_identity=True, use_pure=pure)
    cur = c.cursor(); cur.execute("SELECT 7 * 6"); print(cur.fetchone()[0])
"#;
    let out = python(connector, &[port.to_string(), ca]).await;
    assert!(out.status.success(), "Connector/Python: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().collect::<Vec<_>>(), ["42"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn require_tls_refuses_plaintext_with_a_clear_error() {
    let ca = cluster().certs.ca();
    let proxy = start_proxy_with(&config(&ca, "")).await;
    let port = proxy.sql_addr.port();
    let out = mariadb(port, "secure", "secure", &["--skip-ssl"], "SELECT 1").await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("3159") && err.contains("must connect with TLS"), "{err}");
    // A user without the requirement still may.
    let out = mariadb(port, APP_USER, APP_PASSWORD, &["--skip-ssl"], "SELECT 1").await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // `[mysql.tls] required = true`: nobody logs in in plaintext.
    let required = config(&ca, "").replace("\n[mysql.tls]\n", "\n[mysql.tls]\nrequired = true\n");
    let proxy = start_proxy_with(&required).await;
    let out = mariadb(proxy.sql_addr.port(), APP_USER, APP_PASSWORD, &["--skip-ssl"], "SELECT 1").await;
    assert!(text(&out.stderr).contains("3159"), "{}", text(&out.stderr));
    let out = mariadb(proxy.sql_addr.port(), APP_USER, APP_PASSWORD, &["--ssl"], "SELECT 1").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn backends_that_require_tls_are_reached_over_verified_tls() {
    let ca = cluster().certs.ca();
    let proxy = start_proxy_with(&config(&ca, "")).await;
    let mut conn = common::connect(&proxy).await;
    // Reads on every backend and a write on the primary, each over TLS (the servers refuse
    // anything else); the session's own backend connection reports its TLS version.
    for _ in 0..6 {
        let version: Option<(String, String)> =
            conn.query_first("SHOW SESSION STATUS LIKE 'Ssl_version'").await.expect("status");
        let version = version.map(|(_, v)| v).unwrap_or_default();
        assert!(version.starts_with("TLSv1."), "backend connection without TLS: {version:?}");
    }
    conn.query_drop("CREATE TABLE IF NOT EXISTS tls_t (id INT PRIMARY KEY)").await.expect("ddl");
    conn.query_drop("REPLACE INTO tls_t VALUES (1)").await.expect("write over TLS");
    // The monitor too: every backend up, with lag measured.
    let sql = proxy.sql.clone();
    let all_up = common::wait_for(Duration::from_secs(10), || {
        let router = sql.current().router.clone();
        router.backends().all().iter().all(|b| b.health.state() == rwproxy::backend::State::Up)
    })
    .await;
    assert!(all_up.is_some(), "the monitor reaches every backend over TLS");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_certificate_from_the_wrong_ca_is_refused_and_logged() {
    let other = Certs::generate(&cluster().base.join("wrong-ca"), &[]).expect("other CA");
    let proxy = start_proxy_with(&config(&other.ca(), "")).await;
    let opts = common::opts(proxy.sql_addr.port(), APP_USER, APP_PASSWORD);
    let err = match mysql_async::Conn::new(opts).await {
        Ok(mut conn) => conn.query_drop("SELECT 1").await.expect_err("no backend may be reached").to_string(),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("TLS handshake") && err.to_lowercase().contains("certificate"), "{err}");
}

/// Reads what the listener sends a new connection within two seconds (the greeting, or
/// nothing when the firewall closed it).
async fn first_bytes(addr: std::net::SocketAddr) -> Vec<u8> {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else { return Vec::new() };
    let mut buf = vec![0u8; 256];
    match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].to_vec(),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn firewalls_refuse_peers_on_every_listener_and_user_hosts_apply() {
    let ca = cluster().certs.ca();
    let firewall = "firewall = { allow = [\"10.0.0.0/8\"] }\n";
    let mut text = config(&ca, firewall).replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\n{firewall}"),
    );
    let web = common::web::WebServer::start("web1").await;
    text.push_str(&format!(
        "\n[http]\nlisten = \"127.0.0.1:0\"\n{firewall}\n[[http.servers]]\nname = \"web1\"\naddress = \"{}\"\n",
        web.addr
    ));
    let proxy = start_proxy_with(&text).await;
    assert!(first_bytes(proxy.sql_addr).await.is_empty(), "SQL listener: refused before the greeting");
    let http = proxy.http_addr.expect("http listener");
    assert!(common::try_http(http, "GET", "/").await.is_none(), "HTTP listener refuses");
    let admin = proxy.admin_addr.expect("admin listener");
    assert!(common::try_http(admin, "GET", "/status").await.is_none(), "admin listener refuses");
    let metrics = proxy.sql.current().metrics.render(proxy.sql.current().router.backends());
    for listener in ["sql", "http", "admin"] {
        let series =
            format!("rwproxy_connections_refused_total{{listener=\"{listener}\",reason=\"firewall\"}} 1");
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
    }

    // Allowed listener, user bound to other hosts: denied like a wrong password.
    let hosts = config(&ca, "").replace(
        "name = \"reader\"\npassword = \"reader\"\n",
        "name = \"reader\"\npassword = \"reader\"\nhosts = [\"10.0.0.0/8\", \"192.168.1.7\"]\n",
    );
    let proxy = start_proxy_with(&hosts).await;
    let out = mariadb(proxy.sql_addr.port(), "reader", "reader", &[], "SELECT 1").await;
    assert!(self::text(&out.stderr).contains("1045"), "{}", self::text(&out.stderr));
    let out = mariadb(proxy.sql_addr.port(), APP_USER, APP_PASSWORD, &[], "SELECT 1").await;
    assert!(out.status.success(), "{}", self::text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn user_connection_caps_and_the_idle_timeout() {
    let ca = cluster().certs.ca();
    let text = config(&ca, "idle_timeout = \"1s\"\n").replace(
        "name = \"reader\"\npassword = \"reader\"\n",
        "name = \"reader\"\npassword = \"reader\"\nmax_connections = 2\n",
    );
    let proxy = start_proxy_with(&text).await;
    let port = proxy.sql_addr.port();
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            mysql_async::Conn::new(common::opts(port, "reader", "reader")).await.expect("under the cap"),
        );
    }
    let err = mysql_async::Conn::new(common::opts(port, "reader", "reader")).await.expect_err("over the cap");
    assert!(err.to_string().contains("max_user_connections"), "{err}");
    // A slot comes back when a session ends.
    drop(held.pop());
    let mut again = None;
    for _ in 0..50 {
        if let Ok(conn) = mysql_async::Conn::new(common::opts(port, "reader", "reader")).await {
            again = Some(conn);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "a freed slot is usable again");

    // Other users are not affected. Idle for longer than idle_timeout: rwproxy says why (4031)
    // and closes.
    let address = proxy.sql_addr.to_string();
    let mut app = RawClient::connect(&address, APP_USER, APP_PASSWORD, DATABASE, true).await.expect("login");
    app.query("SELECT 1").await.expect("active");
    let started = std::time::Instant::now();
    let said = packet::read_logical(&mut app.stream, 1 << 16).await.expect("read").expect("a packet");
    let idle = started.elapsed();
    assert!(idle >= Duration::from_millis(900) && idle < Duration::from_secs(3), "closed after {idle:?}");
    assert_eq!(said.payload.get(..3), Some(&[0xFF, 0xBF, 0x0F][..]), "ERR 4031");
    let end = packet::read_logical(&mut app.stream, 1 << 16).await;
    assert!(matches!(end, Ok(None) | Err(_)), "then closed: {end:?}");
}

/// Sends COM_STMT_SEND_LONG_DATA for parameter 0 of `stmt` (no reply), then executes it;
/// returns the execution's response.
async fn execute_with_long_data(
    client: &mut RawClient,
    stmt: [u8; 4],
    chunks: usize,
    chunk: usize,
) -> Vec<u8> {
    use tokio::io::AsyncWriteExt;
    for _ in 0..chunks {
        let mut payload = vec![0x18];
        payload.extend_from_slice(&stmt);
        payload.extend_from_slice(&[0, 0]);
        payload.extend(std::iter::repeat_n(b'x', chunk));
        packet::write_packet(&mut client.stream, 0, &payload).await.expect("send long data");
    }
    client.stream.flush().await.expect("flush");
    // flags 0, one iteration, null bitmap 0, types bound: one BLOB.
    let mut execute = vec![0x17];
    execute.extend_from_slice(&stmt);
    execute.extend_from_slice(&[0, 1, 0, 0, 0, 0, 1, 0xfc, 0]);
    client.command(&execute, ResponseKind::Execute).await.expect("execute answered")
}

#[tokio::test(flavor = "multi_thread")]
async fn long_data_over_the_shared_budget_fails_the_execution_only() {
    let ca = cluster().certs.ca();
    let proxy = start_proxy_with(&config(&ca, "max_long_data_total = 100000\n")).await;
    let mut conn = common::connect(&proxy).await;
    conn.query_drop("CREATE TABLE IF NOT EXISTS blobs (id INT PRIMARY KEY, b LONGBLOB)").await.expect("ddl");
    let address = proxy.sql_addr.to_string();
    let mut client =
        RawClient::connect(&address, APP_USER, APP_PASSWORD, DATABASE, true).await.expect("login");
    let mut prepare = vec![0x16];
    prepare.extend_from_slice(b"REPLACE INTO blobs VALUES (2, ?)");
    let prepared = client.command(&prepare, ResponseKind::Prepare).await.expect("prepare");
    let stmt: [u8; 4] = prepared[5..9].try_into().expect("statement id");
    // 3 × 40 kB is over the 100 kB shared budget: the execution fails, the session goes on.
    let over = execute_with_long_data(&mut client, stmt, 3, 40_000).await;
    assert_eq!(over.get(4), Some(&0xFF), "an ERR packet");
    assert_eq!(over.get(5..7), Some(&1153u16.to_le_bytes()[..]), "{:?}", String::from_utf8_lossy(&over));
    assert_eq!(proxy.sql.long_data.used(), 0, "dropped data is given back");
    let under = execute_with_long_data(&mut client, stmt, 2, 40_000).await;
    assert_eq!(under.get(4), Some(&0x00), "{:?}", String::from_utf8_lossy(&under));
    // The session gives the bytes back right after relaying the answer, on its own thread.
    let budget = &proxy.sql.long_data;
    let given_back = common::wait_for(Duration::from_secs(2), || budget.used() == 0).await;
    assert!(given_back.is_some(), "every byte was given back after the execution: {} held", budget.used());
    let len: Option<u64> = conn
        .query_first("SELECT LENGTH(b) FROM blobs WHERE id = 2 /* rwproxy:primary */")
        .await
        .expect("read");
    assert_eq!(len, Some(80_000));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_name_that_forges_log_lines_is_logged_escaped_on_one_line() {
    let ca = cluster().certs.ca();
    let port = common::free_port();
    let text = config(&ca, "").replacen(
        "listen = \"127.0.0.1:0\"\nconnect_timeout",
        &format!("listen = \"127.0.0.1:{port}\"\nconnect_timeout"),
        1,
    );
    let path = cluster().base.join(format!("forged-{port}.toml"));
    std::fs::write(&path, &text).expect("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rwproxy"))
        .args(["--config", &path.display().to_string()])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start rwproxy");
    let address = format!("127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&address).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "rwproxy listens");
    let forged = "admin\n2026-12-01T00:00:00Z  INFO rwproxy: client logged in user=admin\x1b[2K";
    let login = RawClient::connect(&address, forged, "wrong", DATABASE, true).await;
    assert!(login.is_err(), "no such user");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let log = format!("{}{}", text_of(&out.stdout), text_of(&out.stderr));
    let denied: Vec<&str> = log.lines().filter(|l| l.contains("access denied")).collect();
    assert_eq!(denied.len(), 1, "{log}");
    assert!(denied[0].contains("admin\\n2026") && denied[0].contains("\\u{1b}"), "escaped: {}", denied[0]);
    assert!(!log.lines().any(|l| l.starts_with("2026-12-01T00:00:00Z")), "no forged line:\n{log}");
    assert!(!log.contains('\x1b'), "no raw escape sequence reached the log");
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
