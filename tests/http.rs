//! The HTTP load balancer against real HTTP servers on loopback.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::web::{WebServer, balancer_config};
use common::{start_proxy_with, wait_for};
use rwproxy::proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A proxy whose HTTP side balances `servers`.
async fn balancer(servers: &[(&WebServer, &str)]) -> Proxy {
    start_proxy_with(&balancer_config(servers, "")).await
}

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
async fn request(proxy: &Proxy, method: &str, path: &str, headers: &str, body: &[u8]) -> (u16, String) {
    let addr = proxy.http_addr.expect("http listener");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: shop.example\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    stream.write_all(body).await.expect("send body");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

async fn names(proxy: &Proxy, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let (status, body) = request(proxy, "GET", "/", "", b"").await;
        assert_eq!(status, 200, "{body}");
        *seen.entry(body).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_is_exact_and_weights_are_honoured() {
    let (web1, web2) = (WebServer::start("web1").await, WebServer::start("web2").await);
    let proxy = balancer(&[(&web1, ""), (&web2, "")]).await;
    assert_eq!(names(&proxy, 10).await, BTreeMap::from([("web1".into(), 5), ("web2".into(), 5)]));
    let proxy = balancer(&[(&web1, "weight = 3"), (&web2, "")]).await;
    assert_eq!(names(&proxy, 8).await, BTreeMap::from([("web1".into(), 6), ("web2".into(), 2)]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_server_costs_no_failed_request_and_rejoins_after_rise() {
    let mut web1 = WebServer::start("web1").await;
    let web2 = WebServer::start("web2").await;
    let proxy = balancer(&[(&web1, ""), (&web2, "")]).await;
    let addr1 = web1.addr;
    let mut failures = 0;
    for i in 0..60 {
        if i == 20 {
            web1.stop();
        }
        let (status, _) = request(&proxy, "GET", "/", "", b"").await;
        failures += usize::from(status != 200);
    }
    assert_eq!(failures, 0, "connect failures are redispatched");
    let server = |i: usize| proxy.balancer().expect("http").servers.list[i].is_up();
    assert!(wait_for(Duration::from_secs(3), || !server(0)).await.is_some(), "web1 leaves the rotation");
    let _web1 = WebServer::start_on("web1", addr1).await;
    let back = wait_for(Duration::from_secs(5), || server(0)).await;
    assert!(back.is_some(), "web1 rejoins after rise checks");
    assert_eq!(names(&proxy, 4).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_serves_only_when_every_active_server_is_down_then_503() {
    let mut web1 = WebServer::start("web1").await;
    let mut web2 = WebServer::start("web2").await;
    let mut spare = WebServer::start("spare").await;
    let proxy = balancer(&[(&web1, ""), (&web2, ""), (&spare, "backup = true")]).await;
    assert!(!names(&proxy, 6).await.contains_key("spare"));
    web1.sick.store(true, std::sync::atomic::Ordering::Relaxed);
    web2.sick.store(true, std::sync::atomic::Ordering::Relaxed);
    let servers = &proxy.balancer().expect("http").servers;
    let down =
        wait_for(Duration::from_secs(3), || !servers.list[0].is_up() && !servers.list[1].is_up()).await;
    assert!(down.is_some());
    assert_eq!(names(&proxy, 3).await, BTreeMap::from([("spare".into(), 3)]));
    web1.stop();
    web2.stop();
    spare.stop();
    let all_down = wait_for(Duration::from_secs(3), || !servers.list[2].is_up()).await;
    assert!(all_down.is_some());
    let started = std::time::Instant::now();
    let (status, body) = request(&proxy, "GET", "/", "", b"").await;
    assert_eq!((status, body.trim()), (503, "no server available"));
    assert!(started.elapsed() < Duration::from_millis(500), "503 at once");
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_are_added() {
    let web1 = WebServer::start("web1").await;
    let proxy = balancer(&[(&web1, "")]).await;
    let (status, body) = request(&proxy, "GET", "/headers", "X-Forwarded-For: 203.0.113.9\r\n", b"").await;
    assert_eq!(status, 200);
    assert!(body.contains("xff=203.0.113.9, 127.0.0.1\n"), "{body}");
    assert!(body.contains("proto=http\n") && body.contains("xhost=shop.example\n"), "{body}");
    assert!(body.contains("forwarded=for=127.0.0.1;proto=http;host=\"shop.example\""), "{body}");
    assert!(body.contains("host=shop.example\n"), "Host is preserved: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn body_limit_gives_413_and_post_is_sent_once() {
    let web1 = WebServer::start("web1").await;
    let proxy = balancer(&[(&web1, "")]).await;
    let big = vec![b'x'; 11 << 20];
    let (status, _) = request(&proxy, "POST", "/upload", "", &big).await;
    assert_eq!(status, 413);
    let before = web1.hits.load(std::sync::atomic::Ordering::Relaxed);
    let (status, body) = request(&proxy, "POST", "/orders", "", b"{\"id\": 1}").await;
    assert_eq!((status, body.as_str()), (200, "web1"));
    assert_eq!(
        web1.hits.load(std::sync::atomic::Ordering::Relaxed),
        before + 1,
        "POST reached the server once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_is_retried_for_get_but_never_for_post() {
    let (web1, web2) = (WebServer::start("web1").await, WebServer::start("web2").await);
    let proxy = balancer(&[(&web1, ""), (&web2, "")]).await;
    let hits = || {
        web1.hits.load(std::sync::atomic::Ordering::Relaxed)
            + web2.hits.load(std::sync::atomic::Ordering::Relaxed)
    };
    let (status, _) = request(&proxy, "POST", "/drop", "", b"order=1").await;
    assert_eq!(status, 502, "a POST whose body was sent is not retried");
    assert_eq!(hits(), 1, "the POST reached one server once");
    let (status, _) = request(&proxy, "GET", "/drop", "", b"").await;
    assert_eq!(status, 502, "both servers drop it: one retry, then 502");
    assert_eq!(hits(), 3, "the GET was tried twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_metrics_are_exported() {
    let web1 = WebServer::start("web1").await;
    let proxy = balancer(&[(&web1, "")]).await;
    for _ in 0..3 {
        assert_eq!(request(&proxy, "GET", "/", "", b"").await.0, 200);
    }
    let dump = proxy.metrics().render(&proxy.backends());
    for needle in [
        "rwproxy_http_requests_total{server=\"web1\",code=\"2xx\"} 3",
        "rwproxy_http_requests_total{server=\"web1\",code=\"5xx\"} 0",
        "rwproxy_http_server_up{server=\"web1\"} 1",
        "rwproxy_http_server_active_connections{server=\"web1\"} 0",
        "rwproxy_http_request_duration_seconds_bucket{server=\"web1\"",
        "rwproxy_http_retries_total{server=\"web1\"} 0",
        "rwproxy_http_health_check_failures_total{server=\"web1\"} 0",
    ] {
        assert!(dump.contains(needle), "missing {needle} in\n{dump}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_and_status_document_list_http_servers() {
    let (web1, web2) = (WebServer::start("web1").await, WebServer::start("web2").await);
    let proxy = balancer(&[(&web1, ""), (&web2, "backup = true")]).await;
    let admin = proxy.admin_addr.expect("admin");
    let (code, page) = common::http_get(admin, "/").await;
    assert_eq!(code, 200);
    assert!(page.contains("<table id=\"http-servers\">") && page.contains("<td>web2</td>"), "{page}");
    let (_, status) = common::http_get(admin, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(status["http_servers"][1]["backup"], true);
    assert_eq!(status["http_servers"][0]["up"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn upgraded_connections_pass_through_both_ways() {
    let web1 = WebServer::start("web1").await;
    let proxy = balancer(&[(&web1, "")]).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.http_addr.expect("http")).await.expect("connect");
    let head = "GET /echo HTTP/1.1\r\nHost: shop.example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("101 in time")
        .expect("read");
    let response = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    assert!(response.to_ascii_lowercase().contains("upgrade: echo"), "{response}");
    for message in ["ping", "a longer message through the proxy"] {
        stream.write_all(message.as_bytes()).await.expect("send frame");
        let mut got = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut got))
            .await
            .expect("echo in time")
            .expect("read");
        assert_eq!(got, message.as_bytes());
    }
}
