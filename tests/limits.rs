//! Limits that protect the proxy from clients: the login deadline, connection caps, packet
//! buffers that grow only with the bytes that arrive, over-long user names.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{APP_PASSWORD, APP_USER, DATABASE};
use common::raw::RawClient;
use common::{cluster, connect, start_proxy_with};
use mysql_async::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// The tests of this binary run one at a time: one of them measures the process's RSS.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn config(mysql_keys: &str) -> String {
    cluster()
        .proxy_config("127.0.0.1:0")
        .replace("connect_timeout = \"1s\"", &format!("connect_timeout = \"1s\"\n{mysql_keys}"))
}

/// Reads until the peer closes (or 5 s pass); returns the bytes and how long it took.
async fn read_to_close(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut bytes)).await;
    (bytes, started.elapsed())
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_logs_in_is_closed_at_the_deadline() {
    let _serial = SERIAL.lock().await;
    let proxy = start_proxy_with(&config("handshake_timeout = \"300ms\"")).await;
    let mut silent = TcpStream::connect(proxy.sql_addr).await.expect("connect");
    let (greeting, took) = read_to_close(&mut silent).await;
    assert!(!greeting.is_empty(), "the greeting came first");
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(2), "closed after {took:?}");
    // One that trickles its login a byte at a time (a 100-byte packet, one byte per 50 ms)
    // does not get more time.
    let slow = TcpStream::connect(proxy.sql_addr).await.expect("connect");
    let (mut reader, mut writer) = slow.into_split();
    let trickle = tokio::spawn(async move {
        let _ = writer.write_all(&[100, 0, 0, 1]).await;
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if writer.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut sink)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "a trickled login is cut at the deadline, not after {took:?}");
    trickle.abort();
    // Meanwhile a real client logs in as usual.
    let mut conn = connect(&proxy).await;
    let one: Option<u32> = conn.query_first("SELECT 1").await.expect("query");
    assert_eq!(one, Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_caps_get_1040_at_once() {
    let _serial = SERIAL.lock().await;
    let proxy = start_proxy_with(&config("max_client_connections = 2")).await;
    let first = connect(&proxy).await;
    let second = connect(&proxy).await;
    let started = Instant::now();
    let err = mysql_async::Conn::new(common::opts(proxy.sql_addr.port(), APP_USER, APP_PASSWORD))
        .await
        .expect_err("a third connection is over the cap");
    assert!(started.elapsed() < Duration::from_secs(1), "refused at once");
    assert!(matches!(err, mysql_async::Error::Server(ref e) if e.code == 1040), "{err:?}");
    assert!(err.to_string().contains("Too many connections") && !err.to_string().contains('#'), "{err}");
    drop(first);
    drop(second);
    let mut room = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if mysql_async::Conn::new(common::opts(proxy.sql_addr.port(), APP_USER, APP_PASSWORD)).await.is_ok() {
            room = true;
            break;
        }
    }
    assert!(room, "closed connections make room again");

    let proxy = start_proxy_with(&config("max_connections_per_source = 1")).await;
    let _only = connect(&proxy).await;
    let err = mysql_async::Conn::new(common::opts(proxy.sql_addr.port(), APP_USER, APP_PASSWORD))
        .await
        .expect_err("a second connection from 127.0.0.1 is over the cap");
    assert!(matches!(err, mysql_async::Error::Server(ref e) if e.code == 1040), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn packets_announcing_16_mib_cost_only_what_arrives() {
    let _serial = SERIAL.lock().await;
    let proxy = start_proxy_with(&config("")).await;
    let address = proxy.sql_addr.to_string();
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients
            .push(RawClient::connect(&address, APP_USER, APP_PASSWORD, DATABASE, true).await.expect("login"));
    }
    let before = rss_kib();
    for client in &mut clients {
        // A COM_QUERY header claiming 16 MiB - 1, then one byte, then nothing.
        client.stream.write_all(&[0xff, 0xff, 0xff, 0x00, 0x03]).await.expect("write");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grew = rss_kib().saturating_sub(before);
    assert!(grew < 10 * 1024, "RSS grew by {grew} KiB for 40 stalled 16 MiB packets");
    drop(clients);
}

#[tokio::test(flavor = "multi_thread")]
async fn over_long_user_names_are_refused() {
    let _serial = SERIAL.lock().await;
    let proxy = start_proxy_with(&config("")).await;
    let long = format!("{}\nclient logged in user=admin", "x".repeat(200));
    let err = RawClient::connect(&proxy.sql_addr.to_string(), &long, "x", DATABASE, true)
        .await
        .expect_err("refused");
    assert!(!err.is_empty());
    let mut conn = connect(&proxy).await;
    let one: Option<u32> = conn.query_first("SELECT 1").await.expect("the proxy serves on");
    assert_eq!(one, Some(1));
}

/// One raw HTTP/1.1 request with extra header lines; the status code.
async fn admin_request(addr: std::net::SocketAddr, method: &str, path: &str, headers: &str) -> u16 {
    admin_request_as(addr, &addr.to_string(), method, path, headers).await
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_needs_the_admin_token_and_refuses_other_origins() {
    let _serial = SERIAL.lock().await;
    let dir = std::env::temp_dir().join(format!("rwproxy-admin-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("rwproxy.toml");
    let text = cluster().proxy_config("127.0.0.1:0").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret-token\"",
    );
    std::fs::write(&path, &text).expect("write");
    let proxy = rwproxy::proxy::start_from_file(&path).await.expect("proxy starts");
    let admin = proxy.admin_addr.expect("admin");
    assert_eq!(admin_request(admin, "POST", "/reload", "").await, 401, "no token");
    assert_eq!(admin_request(admin, "POST", "/reload", "Authorization: Bearer wrong\r\n").await, 401);
    let good = "Authorization: Bearer s3cret-token\r\n";
    assert_eq!(admin_request(admin, "POST", "/reload", good).await, 200, "the token reloads");
    let cross = format!("{good}Origin: http://evil.example\r\n");
    assert_eq!(
        admin_request(admin, "POST", "/reload", &cross).await,
        403,
        "another origin, even with the token"
    );
    let fetch = format!("{good}Sec-Fetch-Site: cross-site\r\n");
    assert_eq!(admin_request(admin, "POST", "/reload", &fetch).await, 403);
    // Draining a backend is a change too.
    let drain = "/backends/primary/drain";
    assert_eq!(admin_request(admin, "POST", drain, "").await, 401, "no token");
    assert_eq!(admin_request(admin, "POST", drain, &cross).await, 403);
    assert!(!proxy.sql.current().router.backends().all()[0].is_drained(), "refused: nothing changed");
    assert_eq!(admin_request(admin, "POST", drain, good).await, 200, "the token drains");
    assert!(proxy.sql.current().router.backends().all()[0].is_drained());
    assert_eq!(admin_request(admin, "GET", "/health", "").await, 200, "reads stay open");
    let _ = std::fs::remove_dir_all(&dir);
}

/// One raw HTTP/1.1 request naming `host`; the status code.
async fn admin_request_as(
    addr: std::net::SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &str,
) -> u16 {
    let mut stream = TcpStream::connect(addr).await.expect("connect admin");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n{headers}\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let (bytes, _) = read_to_close(&mut stream).await;
    let text = String::from_utf8_lossy(&bytes);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no HTTP answer: {text:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_the_admin_port_answers_only_requests_that_name_it() {
    let _serial = SERIAL.lock().await;
    let text = cluster().proxy_config("127.0.0.1:0").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\nhost_names = [\"status.internal\"]",
    );
    let proxy = start_proxy_with(&text).await;
    let admin = proxy.admin_addr.expect("admin");
    let port = admin.port();
    // DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1, asking with
    // its own origin (so the same-origin check alone would let it through).
    let evil = format!("evil.example:{port}");
    let origin = format!("Origin: http://{evil}\r\n");
    let drain = "/backends/primary/drain";
    assert_eq!(admin_request_as(admin, &evil, "POST", drain, &origin).await, 403, "no drain by another name");
    assert!(!proxy.sql.current().router.backends().all()[0].is_drained(), "refused: nothing changed");
    for page in ["/sessions", "/queries", "/status", "/"] {
        assert_eq!(
            admin_request_as(admin, &evil, "GET", page, "").await,
            403,
            "{page} is not read by another name"
        );
    }
    // Its own names: the address, localhost, a configured name.
    for host in [admin.to_string(), format!("localhost:{port}"), format!("status.internal:{port}")] {
        assert_eq!(admin_request_as(admin, &host, "GET", "/status", "").await, 200, "{host}");
    }
    assert_eq!(admin_request_as(admin, &format!("localhost:{port}"), "POST", drain, "").await, 200);
    assert!(proxy.sql.current().router.backends().all()[0].is_drained());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_closes_a_connection_that_never_sends_its_head() {
    let _serial = SERIAL.lock().await;
    let proxy = start_proxy_with(&config("")).await;
    let mut stream = TcpStream::connect(proxy.admin_addr.expect("admin")).await.expect("connect");
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    let started = Instant::now();
    let mut bytes = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut bytes)).await.is_ok();
    assert!(closed, "the admin listener still holds a connection whose head never ended");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(9), "closed after {took:?}, before the 10 s header deadline");
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_passwords_are_refused_unless_allowed() {
    let _serial = SERIAL.lock().await;
    let with_user = |extra: &str| {
        cluster().proxy_config("127.0.0.1:0").replace(
            "[[mysql.users]]\nname = \"reader\"",
            &format!("[[mysql.users]]\nname = \"nopass\"\n{extra}\n\n[[mysql.users]]\nname = \"reader\""),
        )
    };
    let proxy = start_proxy_with(&with_user("")).await;
    let refused = RawClient::connect(&proxy.sql_addr.to_string(), "nopass", "", DATABASE, true).await;
    let err = refused.expect_err("an empty password is refused by default");
    assert!(err.contains("Access denied"), "{err}");
    let proxy = start_proxy_with(&with_user("allow_empty_password = true")).await;
    RawClient::connect(&proxy.sql_addr.to_string(), "nopass", "", DATABASE, true)
        .await
        .expect("allowed when the configuration says so");
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_failed_logins_from_one_address_are_slowed_down() {
    let _serial = SERIAL.lock().await;
    let proxy = start_proxy_with(&config("")).await;
    let address = proxy.sql_addr.to_string();
    let mut took = Vec::new();
    for _ in 0..8 {
        let started = Instant::now();
        let denied = RawClient::connect(&address, APP_USER, "wrong", DATABASE, true).await;
        assert!(denied.is_err(), "a wrong password is refused");
        took.push(started.elapsed());
    }
    assert!(took[..5].iter().all(|t| *t < Duration::from_millis(300)), "the first five are free: {took:?}");
    assert!(took[7] >= Duration::from_millis(350), "the eighth waits (400 ms): {took:?}");
    let metrics = proxy.metrics().render(&proxy.backends());
    assert!(metrics.contains("rwproxy_login_failures_total 8"), "{metrics}");
    // Another account's good login forgives nothing.
    RawClient::connect(&address, "reader", "reader", DATABASE, true).await.expect("login");
    let started = Instant::now();
    let _ = RawClient::connect(&address, APP_USER, "wrong", DATABASE, true).await;
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "still held (800 ms) after another account's login"
    );
    // The account's own good login forgives it.
    RawClient::connect(&address, APP_USER, APP_PASSWORD, DATABASE, true).await.expect("login");
    let started = Instant::now();
    let _ = RawClient::connect(&address, APP_USER, "wrong", DATABASE, true).await;
    assert!(started.elapsed() < Duration::from_millis(300), "forgiven after its own good login");
    // Parallel guessing (40 connections, each a different account) is answered at 20 a second
    // at most, however many connections guess at once.
    let started = Instant::now();
    let mut guesses = tokio::task::JoinSet::new();
    for i in 0..40 {
        let address = address.clone();
        guesses.spawn(async move {
            RawClient::connect(&address, &format!("guess{i}"), "x", DATABASE, true).await
        });
    }
    while let Some(guess) = guesses.join_next().await {
        assert!(guess.expect("join").is_err(), "denied");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "40 guesses answered in {:?}",
        started.elapsed()
    );
}

/// The soft limit on open files of this process.
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("limits");
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("Max open files")
}

#[tokio::test(flavor = "multi_thread")]
async fn five_thousand_silent_connections_change_nothing_for_real_clients() {
    let _serial = SERIAL.lock().await;
    const SILENT: usize = 5000;
    // Both ends of every connection live in this process (rwproxy runs in it), plus slack.
    let limit = open_files_limit();
    assert!(
        limit >= 2 * SILENT as u64 + 500,
        "open-files limit {limit} is too low for this test; scripts/test.sh raises it"
    );
    let web = common::web::WebServer::start("web1").await;
    // The cap on client connections counts connections that have not logged in yet too: it is
    // set above the flood here, as an operator expecting one would.
    let mut text =
        config("handshake_timeout = \"4s\"\nmax_client_connections = 8000\nmax_connections_per_source = 0");
    text.push_str(&format!(
        "\n[http]\nlisten = \"127.0.0.1:0\"\n\n[http.health]\ninterval = \"200ms\"\n\n[[http.servers]]\nname = \"web1\"\naddress = \"{}\"\n",
        web.addr
    ));
    let proxy = start_proxy_with(&text).await;
    let http = proxy.http_addr.expect("http");
    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        silent.push(TcpStream::connect(proxy.sql_addr).await.expect("connect"));
    }
    let opened = Instant::now();
    // While they sit there: logins and reads stay fast, the web tier keeps serving and its
    // health checks keep the server up.
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        let mut conn = connect(&proxy).await;
        let one: Option<u32> = conn.query_first("SELECT 1").await.expect("query");
        assert_eq!(one, Some(1));
        slowest = slowest.max(started.elapsed());
        drop(conn);
        let (status, _) = common::http_get(http, "/").await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("slowest login + read among {SILENT} silent connections: {slowest:?}");
    assert!(slowest < Duration::from_millis(100), "a login and read took {slowest:?}");
    let up = proxy.http.as_ref().expect("tier").balancer().servers.list.iter().all(|s| s.is_up());
    assert!(up, "the web server stayed up");
    assert!(opened.elapsed() < Duration::from_secs(4), "checked before the deadline");
    // After the deadline every silent connection has been closed.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(opened.elapsed()) + Duration::from_secs(1))
        .await;
    let mut closed = 0;
    for stream in &mut silent {
        let mut buf = vec![0u8; 4096];
        // The greeting, then the end.
        for _ in 0..4 {
            match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed += 1;
                    break;
                }
                Ok(Ok(_)) => {}
                Err(_) => break,
            }
        }
    }
    assert_eq!(closed, SILENT, "every silent connection is closed at the handshake deadline");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_connections_over_the_cap_get_503_at_once() {
    let _serial = SERIAL.lock().await;
    let web = common::web::WebServer::start("web1").await;
    let text = common::web::balancer_config(&[(&web, "")], "max_client_connections = 2");
    let proxy = start_proxy_with(&text).await;
    let http = proxy.http_addr.expect("http");
    let _a = TcpStream::connect(http).await.expect("first");
    let _b = TcpStream::connect(http).await.expect("second");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let answer = common::try_http(http, "GET", "/").await.expect("an answer");
    assert_eq!(answer.0, 503);
    assert!(started.elapsed() < Duration::from_secs(1), "at once");

    // Per source address: two from 127.0.0.1 at most.
    let text = common::web::balancer_config(&[(&web, "")], "max_connections_per_source = 2");
    let proxy = start_proxy_with(&text).await;
    let http = proxy.http_addr.expect("http");
    let _a = TcpStream::connect(http).await.expect("first");
    let _b = TcpStream::connect(http).await.expect("second");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(common::try_http(http, "GET", "/").await.expect("an answer").0, 503);
    drop(_a);
    let mut ok = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if common::try_http(http, "GET", "/").await.is_some_and(|(status, _)| status == 200) {
            ok = true;
            break;
        }
    }
    assert!(ok, "a closed connection makes room for its source");
}

/// A connection to `addr` from the loopback address `from` (127.0.0.0/8 is all this machine's).
async fn connect_from(from: &str, addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().expect("address"))?;
    socket.connect(addr).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_silent_connections_does_not_keep_real_clients_out() {
    let _serial = SERIAL.lock().await;
    // The defaults: 1024 connections from one address, 2 s for a login's first byte.
    let proxy = start_proxy_with(&config("")).await;
    let addr = proxy.sql_addr;
    // 2,000 connections from 127.0.0.2 that say nothing.
    let mut silent = Vec::new();
    for _ in 0..2_000 {
        match connect_from("127.0.0.2", addr).await {
            Ok(stream) => silent.push(stream),
            Err(e) => panic!("flood connection: {e}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Real clients from 127.0.0.1 log in at once meanwhile.
    let mut fast = 0;
    for _ in 0..20 {
        let started = Instant::now();
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            mysql_async::Conn::new(common::opts(addr.port(), APP_USER, APP_PASSWORD)),
        )
        .await;
        if matches!(conn, Ok(Ok(_))) && started.elapsed() < Duration::from_millis(200) {
            fast += 1;
        }
        if let Ok(Ok(conn)) = conn {
            let _ = conn.disconnect().await;
        }
    }
    assert!(fast >= 19, "{fast} of 20 real logins within 200 ms during the flood");
    // The silent ones are closed after the first-byte deadline, not the 10 s login deadline.
    let started = Instant::now();
    let (_, took) = read_to_close(&mut silent[0]).await;
    assert!(started.elapsed() < Duration::from_secs(4), "a silent connection was held {took:?} more");
    let (_, metrics) = common::http_get(proxy.admin_addr.expect("admin"), "/metrics").await;
    assert!(
        metrics
            .contains("rwproxy_connections_refused_total{listener=\"sql\",reason=\"too_many_from_source\"}"),
        "{metrics}"
    );
    drop(silent);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, metrics) = common::http_get(proxy.admin_addr.expect("admin"), "/metrics").await;
    assert!(
        metrics.contains("rwproxy_connections_refused_total{listener=\"sql\",reason=\"silent\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_http_connection_is_closed_at_the_header_deadline_not_the_idle_one() {
    let _serial = SERIAL.lock().await;
    let web = common::web::WebServer::start("web1").await;
    let text =
        common::web::balancer_config(&[(&web, "")], "header_timeout = \"300ms\"\nidle_timeout = \"60s\"");
    let proxy = start_proxy_with(&text).await;
    let http = proxy.http_addr.expect("http");
    let mut silent = TcpStream::connect(http).await.expect("connect");
    let (_, took) = read_to_close(&mut silent).await;
    assert!(took < Duration::from_secs(2), "a connection that sent nothing was held {took:?}");
    // A keep-alive connection that sent a request keeps its idle time for the next one.
    let mut kept = TcpStream::connect(http).await.expect("connect");
    kept.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("send");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), kept.read(&mut buf))
        .await
        .expect("answer")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "served");
    tokio::time::sleep(Duration::from_millis(800)).await;
    kept.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.expect("second request");
    let (bytes, _) = read_to_close(&mut kept).await;
    assert!(
        String::from_utf8_lossy(&bytes).starts_with("HTTP/1.1 200"),
        "the second request after 800 ms idle"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_sending_large_packets_slowly_cannot_grow_memory_past_the_packet_budget() {
    let _serial = SERIAL.lock().await;
    let text =
        cluster().proxy_config("127.0.0.1:0").replace("connect_timeout = \"1s\"", "connect_timeout = \"3s\"");
    let proxy = start_proxy_with(&text).await;
    let address = proxy.sql_addr.to_string();
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients
            .push(RawClient::connect(&address, APP_USER, APP_PASSWORD, DATABASE, true).await.expect("login"));
    }
    let before = rss_kib();
    // Each announces a 16 MiB COM_QUERY and sends 8 MiB of it, then nothing.
    let chunk = std::sync::Arc::new(vec![b'x'; 64 * 1024]);
    let mut writers = Vec::new();
    for client in clients {
        let chunk = chunk.clone();
        writers.push(tokio::spawn(async move {
            let mut stream = client.stream;
            let _ = stream.write_all(&[0xff, 0xff, 0xff, 0x00, 0x03]).await;
            for _ in 0..128 {
                if tokio::time::timeout(Duration::from_secs(5), stream.write_all(&chunk)).await.is_err() {
                    break;
                }
            }
            stream
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grew = rss_kib().saturating_sub(before);
    eprintln!("RSS grew by {} MiB for 40 clients sending 8 MiB of 16 MiB packets", grew / 1024);
    assert!(grew < 64 * 1024, "RSS grew by {grew} KiB");
    // Everyone else is served meanwhile.
    let mut conn = connect(&proxy).await;
    let one: Option<u32> = conn.query_first("SELECT 1").await.expect("a small statement runs");
    assert_eq!(one, Some(1));
    // Past connect_timeout the waiting ones are told why and closed.
    let mut streams = Vec::new();
    for writer in writers {
        streams.push(writer.await.expect("writer"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut told = 0;
    for stream in &mut streams {
        // The refused ones have their answer waiting; the admitted ones have none (short wait).
        let mut bytes = vec![0u8; 4096];
        let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut bytes)).await;
        let n = read.ok().and_then(Result::ok).unwrap_or(0);
        told += usize::from(String::from_utf8_lossy(&bytes[..n]).contains("max_packet_buffers"));
    }
    assert!(told >= 30, "{told} of 40 were told the packet budget was in use");
}
