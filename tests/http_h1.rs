//! The balancer's HTTP/1.x engine on the wire: body framing both ways (Content-Length,
//! chunked, HTTP/1.0), `Expect: 100-continue`, HEAD, pipelining, keep-alive, and requests that
//! must be refused without harming anyone else. curl is the client where a real one can say
//! what is needed; raw sockets where the test must control every byte.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::web::{WebServer, balancer_config};
use common::{free_port, start_proxy_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// curl with `args` against the proxy; returns (stdout, stderr). `-D -` puts the response head
/// on stdout before the body.
async fn curl(args: Vec<String>, stdin: Option<Vec<u8>>) -> (String, String) {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("curl runs (apt-get install curl)");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(data) = stdin {
            input.write_all(&data).expect("write stdin");
        }
        drop(input);
        let out = child.wait_with_output().expect("curl output");
        assert!(out.status.success(), "curl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .await
    .expect("join")
}

fn split_head(response: &str) -> (String, String) {
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    (head.to_ascii_lowercase(), body.to_string())
}

/// Sends raw bytes on a fresh connection and reads until the proxy closes it (or 10 s).
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "the proxy did not close the connection: {}", String::from_utf8_lossy(&response));
    String::from_utf8_lossy(&response).into_owned()
}

fn body_of(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_bodies_cross_the_balancer_both_ways() {
    let web = WebServer::start("web1").await;
    let proxy = start_proxy_with(&balancer_config(&[(&web, "")], "")).await;
    let url = |path: &str| format!("http://{}{path}", proxy.http_addr.expect("http"));

    // A chunked upload (curl reading stdin sends chunks) reaches the server whole, with a length.
    let data = body_of(300_000);
    let (out, _) = curl(
        vec![
            "-D".into(),
            "-".into(),
            "-H".into(),
            "Transfer-Encoding: chunked".into(),
            "--data-binary".into(),
            "@-".into(),
            url("/echo-body"),
        ],
        Some(data.clone()),
    )
    .await;
    let (head, body) = split_head(&out);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-seen-length: 300000") && head.contains("x-seen-te: -"), "{head}");
    assert_eq!(body.as_bytes(), &data[..], "the body arrived intact");

    // A chunked download is passed through as chunks.
    let (out, _) = curl(vec!["-D".into(), "-".into(), url("/stream?n=50")], None).await;
    let (head, body) = split_head(&out);
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let expected: String = (0..50).map(|i| format!("line {i}\n")).collect();
    assert_eq!(body, expected);

    // An HTTP/1.0 client cannot read chunks: it gets the body decoded, ended by the close.
    let (out, _) = curl(vec!["-0".into(), "-D".into(), "-".into(), url("/stream?n=20")], None).await;
    let (head, body) = split_head(&out);
    assert!(!head.contains("transfer-encoding") && head.contains("connection: close"), "{head}");
    assert_eq!(body, (0..20).map(|i| format!("line {i}\n")).collect::<String>());
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_continue_and_head_requests() {
    let web = WebServer::start("web1").await;
    let proxy = start_proxy_with(&balancer_config(&[(&web, "")], "")).await;
    let url = |path: &str| format!("http://{}{path}", proxy.http_addr.expect("http"));

    let data = body_of(200_000);
    let (out, err) = curl(
        vec![
            "-v".into(),
            "-H".into(),
            "Expect: 100-continue".into(),
            "--data-binary".into(),
            "@-".into(),
            url("/echo-body"),
        ],
        Some(data.clone()),
    )
    .await;
    assert!(err.contains("< HTTP/1.1 100 Continue"), "curl saw no 100 Continue:\n{err}");
    assert_eq!(out.as_bytes(), &data[..]);

    let (out, _) = curl(vec!["-I".into(), url("/")], None).await;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.to_ascii_lowercase().contains("content-length: 4"),
        "{out}"
    );
    // A HEAD answer has no body even with a length: the next answer on the connection is intact.
    let addr = proxy.http_addr.expect("http");
    let both = raw(
        addr,
        b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(both.matches("HTTP/1.1 200").count(), 2, "{both}");
    assert!(both.ends_with("\r\n\r\nweb1"), "{both}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let web = WebServer::start("web1").await;
    let proxy = start_proxy_with(&balancer_config(&[(&web, "")], "")).await;
    let addr = proxy.http_addr.expect("http");
    let requests = "GET /slow?ms=150 HTTP/1.1\r\nHost: a\r\n\r\n\
                    POST /echo-body HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nsecond\
                    GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let all = raw(addr, requests.as_bytes()).await;
    let bodies: Vec<&str> =
        all.split("HTTP/1.1 200 OK").skip(1).map(|r| r.rsplit("\r\n\r\n").next().unwrap_or("")).collect();
    assert_eq!(bodies, ["web1 slow", "second", "web1"], "{all}");

    // Keep-alive: 50 requests on one client connection, each answered before the next.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut buf = vec![0u8; 4096];
    for i in 0..50 {
        stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("send");
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("answer")
            .expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("web1"), "request {i}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_and_close_only_their_connection() {
    let web = WebServer::start("web1").await;
    let proxy = start_proxy_with(&balancer_config(&[(&web, "")], "")).await;
    let addr = proxy.http_addr.expect("http");
    // A keep-alive client that must not notice the others.
    let mut good = TcpStream::connect(addr).await.expect("connect");
    let mut buf = vec![0u8; 4096];
    let mut ask = async |good: &mut TcpStream| {
        good.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("send");
        let n = good.read(&mut buf).await.expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(ask(&mut good).await.starts_with("HTTP/1.1 200"));
    let before = web.hits.load(std::sync::atomic::Ordering::Relaxed);

    let smuggle = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\n\r\n";
    let long_header = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "b".repeat(70_000));
    let cases: [(&[u8], &str); 6] = [
        (smuggle.as_bytes(), "HTTP/1.1 400"),
        (b"NOT HTTP AT ALL\r\n\r\n", "HTTP/1.1 400"),
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400"),
        (long_header.as_bytes(), "HTTP/1.1 431"),
        (b"CONNECT db:3306 HTTP/1.1\r\nHost: db:3306\r\n\r\n", "HTTP/1.1 405"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "HTTP/1.1 400"),
    ];
    for (bytes, status) in cases {
        let answer = raw(addr, bytes).await;
        assert!(answer.starts_with(status), "{}…: {answer}", String::from_utf8_lossy(&bytes[..20]));
        assert!(answer.contains("Connection: close"), "{answer}");
    }
    assert_eq!(
        web.hits.load(std::sync::atomic::Ordering::Relaxed),
        before,
        "nothing refused reached the server"
    );
    assert!(ask(&mut good).await.starts_with("HTTP/1.1 200"), "the other client's connection is unharmed");

    // A client that stops halfway through its head is closed after the idle timeout, with 408.
    let slow = {
        let port = free_port();
        let text = balancer_config(&[(&web, "")], "idle_timeout = \"300ms\"")
            .replace("[http]\nlisten = \"127.0.0.1:0\"", &format!("[http]\nlisten = \"127.0.0.1:{port}\""));
        start_proxy_with(&text).await
    };
    let answer = raw(slow.http_addr.expect("http"), b"GET / HTTP/1.1\r\nHost").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // One that trickles its head a byte every 100 ms (each byte inside the idle timeout) still
    // gets 408 at the head deadline.
    let trickled = {
        let text = balancer_config(&[(&web, "")], "idle_timeout = \"300ms\"\nheader_timeout = \"800ms\"");
        start_proxy_with(&text).await
    };
    let stream = TcpStream::connect(trickled.http_addr.expect("http")).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for byte in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), reader.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    trickle.abort();
    assert!(took < Duration::from_millis(2500), "the head deadline must cut the trickle, not {took:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_spread_evenly_over_worker_threads() {
    let web = WebServer::start("web1").await;
    let proxy = start_proxy_with(&balancer_config(&[(&web, "")], "threads = 3")).await;
    let addr = proxy.http_addr.expect("http");
    let mut clients = Vec::new();
    let mut buf = vec![0u8; 4096];
    for _ in 0..6 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("send");
        let n = stream.read(&mut buf).await.expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        clients.push(stream);
    }
    let per_worker = |proxy: &rwproxy::proxy::Proxy| -> Vec<f64> {
        let dump = proxy.metrics().render(&proxy.backends());
        (0..3)
            .map(|w| {
                let key = format!("rwproxy_http_worker_connections{{worker=\"{w}\"}} ");
                dump.lines()
                    .find_map(|l| l.strip_prefix(key.as_str()))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("no {key} in\n{dump}"))
            })
            .collect()
    };
    assert_eq!(per_worker(&proxy), [2.0, 2.0, 2.0], "each new connection went to the least loaded worker");
    drop(clients.drain(..3));
    let mut left = Vec::new();
    for _ in 0..50 {
        left = per_worker(&proxy);
        if left.iter().sum::<f64>() == 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left.iter().sum::<f64>(), 3.0, "closed connections leave their workers: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn short_client_connections_reuse_the_workers_server_connections() {
    let web = WebServer::start("web1").await;
    let proxy = start_proxy_with(&balancer_config(&[(&web, "")], "threads = 1")).await;
    let addr = proxy.http_addr.expect("http");
    assert_eq!(common::http_get(addr, "/").await.0, 200);
    let before = web.connections.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..20 {
        // A new client connection each time, closed after its one request.
        assert_eq!(common::http_get(addr, "/").await, (200, "web1".to_string()));
    }
    let opened = web.connections.load(std::sync::atomic::Ordering::Relaxed) - before;
    // The health checks may open one of their own meanwhile; the requests open none.
    assert!(opened <= 1, "20 one-request clients opened {opened} server connections");
}
