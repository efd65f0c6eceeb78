//! The HTTP balancer's HTTPS/h2 termination, WebSocket passthrough, per-server connection
//! limits and graceful shutdown, against real servers and clients on loopback.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::start_proxy_with;
use common::web::{WebServer, balancer_config};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};

/// A self-signed certificate for `localhost`, written to PEM files for the config.
fn test_certificate(tag: &str) -> (std::path::PathBuf, std::path::PathBuf, CertificateDer<'static>) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    let dir = std::env::temp_dir().join(format!("rwproxy-tls-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).expect("write cert");
    std::fs::write(&key, generated.signing_key.serialize_pem()).expect("write key");
    (cert, key, generated.cert.der().clone())
}

/// A TLS connection to the balancer offering exactly `alpn`; returns it and what was agreed.
async fn tls_connect(
    addr: std::net::SocketAddr,
    root: CertificateDer<'static>,
    alpn: &[u8],
) -> (tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Option<Vec<u8>>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake with the balancer");
    let agreed = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    (tls, agreed)
}

#[tokio::test(flavor = "multi_thread")]
async fn https_terminates_tls_and_speaks_h2_and_http1_through_alpn() {
    let web1 = WebServer::start("web1").await;
    let (cert, key, root) = test_certificate("alpn");
    let tls =
        format!("tls = {{ cert = {:?}, key = {:?} }}", cert.display().to_string(), key.display().to_string());
    let proxy = start_proxy_with(&balancer_config(&[(&web1, "")], &tls)).await;
    let addr = proxy.http_addr.expect("http");

    let (stream, agreed) = tls_connect(addr, root.clone(), b"h2").await;
    assert_eq!(agreed.as_deref(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2");
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("https://localhost/headers").body(Empty::<Bytes>::new()).expect("request");
        let resp = h2.send_request(req).await.expect("h2 response");
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        let body = String::from_utf8(resp.into_body().collect().await.expect("body").to_bytes().to_vec())
            .expect("utf-8");
        assert!(body.contains("proto=https") && body.contains("host=localhost"), "{body}");
    }

    let (stream, agreed) = tls_connect(addr, root, b"http/1.1").await;
    assert_eq!(agreed.as_deref(), Some(&b"http/1.1"[..]));
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("http/1.1");
    tokio::spawn(conn);
    let req = Request::get("/").header("host", "localhost").body(Empty::<Bytes>::new()).expect("request");
    let resp = h1.send_request(req).await.expect("http/1.1 response");
    assert_eq!(resp.version(), hyper::Version::HTTP_11);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"web1");
    assert_eq!(web1.hits.load(std::sync::atomic::Ordering::Relaxed), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_certificate_is_a_config_error_naming_the_key() {
    let web1 = WebServer::start("web1").await;
    let text = balancer_config(
        &[(&web1, "")],
        "tls = { cert = \"/nonexistent/cert.pem\", key = \"/nonexistent/key.pem\" }",
    );
    let dir = std::env::temp_dir().join(format!("rwproxy-badtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("rwproxy.toml");
    std::fs::write(&path, text).expect("write");
    let err = rwproxy::config::Config::load(&path).expect_err("missing certificate").to_string();
    assert!(err.contains("http.tls") && err.contains("/nonexistent/cert.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_messages_echo_through_the_balancer() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (web1, web2) = (WebServer::start("web1").await, WebServer::start("web2").await);
    let proxy = start_proxy_with(&balancer_config(&[(&web1, ""), (&web2, "")], "")).await;
    let url = format!("ws://{}/ws", proxy.http_addr.expect("http"));
    let (mut ws, response) = tokio_tungstenite::connect_async(url).await.expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    for i in 0..20 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.expect("send");
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("echo in time");
        assert_eq!(echoed.expect("frame").expect("message"), Message::text(text));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.expect("send binary");
    let echoed = ws.next().await.expect("frame").expect("message");
    assert_eq!(echoed, Message::binary(vec![0u8, 1, 2, 255]));
    ws.close(None).await.expect("close");
}

/// One GET on its own connection: (status, body, time taken).
async fn timed_get(addr: std::net::SocketAddr, path: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("http/1.1");
    tokio::spawn(conn);
    let req = Request::get(path).header("host", "shop.example").body(Empty::<Bytes>::new()).expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_queues_requests_and_answers_503_after_queue_timeout() {
    let web1 = WebServer::start("web1").await;
    let proxy =
        start_proxy_with(&balancer_config(&[(&web1, "max_connections = 1")], "queue_timeout = \"300ms\""))
            .await;
    let addr = proxy.http_addr.expect("http");
    let slow = tokio::spawn(timed_get(addr, "/slow?ms=1500"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The only slot is taken: this one waits in the queue, then gets 503.
    let (status, body, took) = timed_get(addr, "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(took >= Duration::from_millis(250) && took < Duration::from_millis(1200), "{took:?}");
    let (status, body, _) = slow.await.expect("slow request");
    assert_eq!((status, body.as_str()), (200, "web1 slow"));
    drop(proxy);

    // With a longer queue_timeout the waiting request is served once the slot frees.
    let proxy =
        start_proxy_with(&balancer_config(&[(&web1, "max_connections = 1")], "queue_timeout = \"5s\"")).await;
    let addr = proxy.http_addr.expect("http");
    let slow = tokio::spawn(timed_get(addr, "/slow?ms=800"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body, took) = timed_get(addr, "/").await;
    assert_eq!((status, body.as_str()), (200, "web1"));
    assert!(took >= Duration::from_millis(400), "it must have waited for the slot: {took:?}");
    assert_eq!(slow.await.expect("slow").0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_server_passes_requests_to_one_with_room() {
    let (web1, web2) = (WebServer::start("web1").await, WebServer::start("web2").await);
    let proxy = start_proxy_with(&balancer_config(
        &[(&web1, "max_connections = 1"), (&web2, "max_connections = 1")],
        "queue_timeout = \"100ms\"",
    ))
    .await;
    let addr = proxy.http_addr.expect("http");
    let slow = tokio::spawn(timed_get(addr, "/slow?ms=1000"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Round robin would pick either; whichever holds the slow request is full, so both of
    // these go to the other one, one after the other.
    let mut served = Vec::new();
    for _ in 0..2 {
        let (status, body, _) = timed_get(addr, "/").await;
        assert_eq!(status, 200, "{body}");
        served.push(body);
    }
    let (_, slow_body, _) = slow.await.expect("slow");
    let busy = slow_body.trim_end_matches(" slow").to_string();
    assert!(served.iter().all(|s| *s != busy), "{served:?} while {busy} was full");
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_finishes_an_in_flight_slow_request() {
    let web1 = WebServer::start("web1").await;
    let mut text = balancer_config(&[(&web1, "")], "");
    text.insert_str(0, "shutdown_timeout = \"5s\"\n");
    let proxy = start_proxy_with(&text).await;
    let addr = proxy.http_addr.expect("http");
    let slow = tokio::spawn(timed_get(addr, "/slow?ms=1000"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let shutdown = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No new connections once draining.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener must be closed");
    let (status, body, _) = slow.await.expect("slow request");
    assert_eq!((status, body.as_str()), (200, "web1 slow"), "the in-flight request must finish");
    shutdown.await.expect("shutdown");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "shutdown waited for the request, not the deadline: {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_h2_streams_do_not_wait_for_each_other() {
    let web1 = WebServer::start("web1").await;
    let (cert, key, root) = test_certificate("streams");
    let tls =
        format!("tls = {{ cert = {:?}, key = {:?} }}", cert.display().to_string(), key.display().to_string());
    let proxy = start_proxy_with(&balancer_config(&[(&web1, "")], &tls)).await;
    let (stream, _) = tls_connect(proxy.http_addr.expect("http"), root, b"h2").await;
    let (h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2");
    tokio::spawn(conn);
    let get = |path: &'static str| {
        let mut h2 = h2.clone();
        async move {
            let started = Instant::now();
            let req =
                Request::get(format!("https://localhost{path}")).body(Empty::<Bytes>::new()).expect("req");
            let resp = h2.send_request(req).await.expect("response");
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            (status, started.elapsed())
        }
    };
    let slow = tokio::spawn(get("/slow?ms=1500"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fast: Vec<_> = (0..8).map(|_| tokio::spawn(get("/"))).collect();
    for f in fast {
        let (status, took) = f.await.expect("join");
        assert_eq!(status, 200);
        assert!(took < Duration::from_millis(1000), "a stream waited behind the slow one: {took:?}");
    }
    assert_eq!(slow.await.expect("join").0, 200);
}
