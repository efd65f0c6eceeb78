//! Connections to the web servers, owned by one client connection and driven by its task.
//!
//! A shared pool (one connection task per server connection, requests and responses crossing
//! between tasks through channels) costs several task wake-ups per request. Here each client
//! connection keeps its own idle server connections, and their I/O runs in the client
//! connection's own task ([`Driver`]), so a request and its response are relayed without
//! waking another task, much as HAProxy keeps a stream and its server connection together.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::HttpServer;

/// Idle connections kept per client connection; more are closed after their response.
const MAX_IDLE: usize = 4;

type Sender = SendRequest<Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Nothing reached the server: safe to send the request elsewhere.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The request may have reached the server.
    #[error("{0}")]
    Failed(#[from] hyper::Error),
}

/// Runs server-connection futures inside the task that polls [`Driver::run`].
#[derive(Default)]
pub struct Driver {
    pending: Mutex<FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send>>>>,
    waker: AtomicWaker,
}

impl Driver {
    fn spawn(&self, connection: impl Future<Output = ()> + Send + 'static) {
        if let Ok(pending) = self.pending.lock() {
            pending.push(Box::pin(connection));
        }
        self.waker.wake();
    }

    /// Polls every connection for as long as the client connection lives; never completes.
    pub async fn run(&self) {
        std::future::poll_fn(|cx: &mut Context<'_>| {
            self.waker.register(cx.waker());
            if let Ok(mut pending) = self.pending.lock() {
                while let Poll::Ready(Some(())) = pending.poll_next_unpin(cx) {}
            }
            Poll::<()>::Pending
        })
        .await
    }
}

/// One client connection's server connections.
#[derive(Default)]
pub struct Upstreams {
    /// Idle connections with the server they go to (matched by address, so they survive a
    /// reload that keeps the server).
    idle: Mutex<Vec<(Arc<HttpServer>, Sender)>>,
    pub driver: Driver,
}

impl Upstreams {
    /// Sends `req` to `server` on an idle connection, or a new one. A reused connection that
    /// turns out closed before the request went out is replaced transparently.
    /// The [`Lease`] gives the connection back when dropped: drop it once the response body
    /// has been relayed, so a concurrent request (h2) never queues behind a streaming body.
    pub async fn send(
        self: &Arc<Self>,
        server: &Arc<HttpServer>,
        mut req: Request<Full<Bytes>>,
        connect_timeout: Duration,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        // Bounded: at most one stale idle connection per idle slot, then a fresh one.
        for _ in 0..=MAX_IDLE {
            let (mut sender, reused) = match self.take_idle(server) {
                Some(sender) => (sender, true),
                None => (self.connect(server, connect_timeout).await?, false),
            };
            if reused && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(response) => {
                    let lease = Lease { home: self.clone(), server: server.clone(), sender: Some(sender) };
                    return Ok((response, lease));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the kept-alive connection was closed by the server meanwhile.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(UpstreamError::Failed(e.into_error())),
                },
            }
        }
        Err(UpstreamError::Connect("no usable connection".into()))
    }

    fn take_idle(&self, server: &Arc<HttpServer>) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        idle.retain(|(_, s)| !s.is_closed());
        let at = idle.iter().position(|(to, _)| to.address == server.address)?;
        Some(idle.swap_remove(at).1)
    }

    fn put_idle(&self, server: Arc<HttpServer>, sender: Sender) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
            && !sender.is_closed()
        {
            idle.push((server, sender));
        }
    }

    async fn connect(&self, server: &Arc<HttpServer>, timeout: Duration) -> Result<Sender, UpstreamError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(server.address.as_str())).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(UpstreamError::Connect(e.to_string())),
            Err(_) => return Err(UpstreamError::Connect(format!("timed out after {timeout:?}"))),
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let name = server.name.clone();
        self.driver.spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(server = %name, error = %e, "server connection ended");
            }
        });
        Ok(sender)
    }
}

/// A server connection lent to one request; back to the idle list when dropped.
pub struct Lease {
    home: Arc<Upstreams>,
    server: Arc<HttpServer>,
    sender: Option<Sender>,
}

impl Lease {
    /// The connection was taken over by an upgrade (WebSocket): it never comes back.
    pub fn upgraded(mut self) {
        self.sender = None;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.home.put_idle(self.server.clone(), sender);
        }
    }
}
