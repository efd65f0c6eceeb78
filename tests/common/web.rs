//! Small real HTTP servers for the balancer's tests: each answers with its name.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A web server: `/` → its name, `/drop` → connection closed without an answer, `/health` → 200 (or 503 when `sick`), `/headers` → the
/// forwarding headers it received, anything else → its name; counts requests.
pub struct WebServer {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
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
        let (h, s) = (hits.clone(), sick.clone());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
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
                            Ok(answer(name, req, &h, &s).await)
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
        WebServer { name, addr, hits, sick, task: Some(task), stop }
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
