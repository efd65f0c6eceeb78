//! Small real HTTP servers for the balancer's tests: each answers with its name.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A web server: `/` → its name, `/drop` → connection closed without an answer, `/health` → 200 (or 503 when `sick`), `/headers` → the
/// forwarding headers it received, `/echo-body` → the request body (with the framing it came
/// in, in `x-seen-length` and `x-seen-te`), `/stream?n=N` → N lines in a chunked body, anything
/// else → its name; counts requests.
pub struct WebServer {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    pub sick: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
    /// Tells open connections to close: a stopped server must look dead, not just deaf.
    stop: tokio::sync::watch::Sender<bool>,
}

impl WebServer {
    pub async fn start(name: &'static str) -> WebServer {
        Self::start_on(name, "127.0.0.1:0".parse().expect("addr")).await
    }

    pub async fn start_on(name: &'static str, addr: SocketAddr) -> WebServer {
        let listener = TcpListener::bind(addr).await.expect("bind web server");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let sick = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let (h, s, accepted) = (hits.clone(), sick.clone(), connections.clone());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                let (h, s) = (h.clone(), s.clone());
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (h, s) = (h.clone(), s.clone());
                        async move {
                            // `/drop` closes the connection without an answer, like a crash.
                            if req.uri().path() == "/drop" {
                                h.fetch_add(1, Ordering::Relaxed);
                                return Err(std::io::Error::other("dropped"));
                            }
                            if req.uri().path() == "/stream" {
                                return Ok(chunked_lines(&req));
                            }
                            Ok(answer(name, req, &h, &s).await.map(BodyExt::boxed_unsync))
                        }
                    });
                    let connection =
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades();
                    tokio::select! {
                        _ = connection => {}
                        _ = stopped.changed() => {}
                    }
                });
            }
        });
        WebServer { name, addr, hits, connections, sick, task: Some(task), stop }
    }

    /// Stops accepting and closes the listener: connections are refused from now on.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = self.stop.send(true);
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer(
    name: &str,
    mut req: Request<hyper::body::Incoming>,
    hits: &AtomicUsize,
    sick: &AtomicBool,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/ws" {
        return websocket_echo(req);
    }
    if path == "/slow" {
        // `/slow?ms=N`: answers after N milliseconds (a request in flight during a shutdown).
        let ms =
            req.uri().query().and_then(|q| q.strip_prefix("ms=")).and_then(|v| v.parse().ok()).unwrap_or(500);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        hits.fetch_add(1, Ordering::Relaxed);
        return Response::new(Full::new(Bytes::from(format!("{name} slow"))));
    }
    if path == "/echo" && req.headers().contains_key(hyper::header::UPGRADE) {
        // A protocol switch, then an echo of every byte: what a WebSocket echo does on the wire.
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static("echo"));
        r.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("upgrade"));
        return r;
    }
    if path == "/health" {
        let status =
            if sick.load(Ordering::Relaxed) { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
        let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
        *r.status_mut() = status;
        return r;
    }
    hits.fetch_add(1, Ordering::Relaxed);
    if path == "/echo-body" {
        let seen = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
        let (length, te) = (seen("content-length"), seen("transfer-encoding"));
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Response::builder()
            .header("x-seen-length", length)
            .header("x-seen-te", te)
            .body(Full::new(body))
            .expect("response");
    }
    let body = if path == "/headers" {
        let h = req.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
        format!(
            "xff={}\nproto={}\nxhost={}\nforwarded={}\nhost={}\n",
            get("x-forwarded-for"),
            get("x-forwarded-proto"),
            get("x-forwarded-host"),
            get("forwarded"),
            get("host")
        )
    } else {
        let _ = req.into_body().collect().await;
        name.to_string()
    };
    Response::new(Full::new(Bytes::from(body)))
}

/// `/stream?n=N`: N numbered lines, a few milliseconds apart, in a body of unknown length
/// (hyper sends it chunked).
fn chunked_lines(
    req: &Request<hyper::body::Incoming>,
) -> Response<UnsyncBoxBody<Bytes, std::convert::Infallible>> {
    let n: usize =
        req.uri().query().and_then(|q| q.strip_prefix("n=")).and_then(|v| v.parse().ok()).unwrap_or(10);
    let lines = futures_util::stream::unfold(0, move |i| async move {
        if i == n {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        Some((Ok(Frame::data(Bytes::from(format!("line {i}\n")))), i + 1))
    });
    Response::new(StreamBody::new(lines).boxed_unsync())
}

/// A real WebSocket server endpoint (RFC 6455 handshake, then tungstenite echoing every message).
fn websocket_echo(mut req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(key) = req.headers().get("sec-websocket-key").map(|k| derive_accept_key(k.as_bytes())) else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not a websocket request")));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                .await;
        for _ in 0..1000 {
            match ws.next().await {
                Some(Ok(msg)) if msg.is_text() || msg.is_binary() => {
                    if ws.send(msg).await.is_err() {
                        return;
                    }
                }
                Some(Ok(msg)) if msg.is_close() => return,
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = r.headers_mut();
    headers.insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static("websocket"));
    headers.insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = hyper::header::HeaderValue::from_str(&key) {
        headers.insert("sec-websocket-accept", accept);
    }
    r
}

/// The config of a proxy whose SQL side points nowhere (unused) and whose HTTP side balances
/// `servers`, each with its extra server keys; `http_extra` goes into `[http]`.
pub fn balancer_config(servers: &[(&WebServer, &str)], http_extra: &str) -> String {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let mut text = format!(
        "[mysql]\nlisten = \"127.0.0.1:0\"\nconnect_timeout = \"200ms\"\n[[mysql.users]]\nname = \"app\"\npassword = \"app\"\n[[mysql.backends]]\nname = \"p\"\naddress = \"{dead}\"\nrole = \"primary\"\n\n[monitor]\nenabled = false\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n{http_extra}\n\n[http.health]\ninterval = \"100ms\"\nrise = 2\nfall = 3\n"
    );
    for (server, extra) in servers {
        text += &format!(
            "\n[[http.servers]]\nname = \"{}\"\naddress = \"{}\"\n{extra}\n",
            server.name, server.addr
        );
    }
    text
}
