//! Server connections of one worker thread: kept alive between requests and shared by the
//! worker's client connections, used by one request at a time, driven by the task of the
//! request using it (no hand-off to another task). The pool's lock is only ever taken by its
//! own thread, so it is never contended.

use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::response::{self, Exchange, Relay, Response};
use crate::http::HttpServer;

/// Idle connections kept per worker thread; beyond it the oldest is closed.
const MAX_IDLE: usize = 256;
/// Read size; also the largest response head accepted.
pub const BUFFER: usize = 16 * 1024;
const MAX_HEAD: usize = 64 * 1024;

/// One connection to a web server.
pub struct ServerConn {
    pub server: Arc<HttpServer>,
    pub stream: TcpStream,
    /// Bytes read from the server and not yet relayed.
    pub buf: BytesMut,
    /// Kept alive from an earlier request.
    reused: bool,
}

impl ServerConn {
    /// Reads more from the server; `Ok(0)` when it closed.
    pub async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < BUFFER / 4 {
            self.buf.reserve(BUFFER);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// A kept-alive connection the server has closed (or that has unexpected bytes waiting)
    /// is readable; a usable one is not. Readiness is checked first so that the usual case
    /// costs no system call.
    fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        if self.stream.poll_read_ready(&mut cx).is_pending() {
            return true;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Why an attempt on one server failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Nothing reached the server: any request may go to another.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The request may have reached the server, and no response came.
    #[error("request failed: {0}")]
    Failed(String),
    /// The server answered with something that is not HTTP/1.x.
    #[error("{0}")]
    Protocol(#[from] response::ResponseError),
}

/// The idle server connections of one worker thread.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<ServerConn>>,
}

impl Pool {
    /// The most recently used idle connection to `server` that is still open (the warmest).
    fn take(&self, server: &Arc<HttpServer>) -> Option<ServerConn> {
        let mut idle = self.idle.lock().ok()?;
        // Bounded by the idle list's length.
        while let Some(at) = idle.iter().rposition(|c| c.server.address == server.address) {
            let mut conn = idle.remove(at);
            if conn.still_open() {
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    /// Keeps a connection whose last response was read to its end.
    pub fn put(&self, conn: ServerConn) {
        if !conn.buf.is_empty() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() >= MAX_IDLE {
                idle.remove(0);
            }
            idle.push(conn);
        }
    }

    /// Sends `request` to `server` and reads the response head, whose rewritten form for the
    /// client lands in `out`. A kept-alive connection that fails before any answer (the server
    /// closed it meanwhile) is replaced by a new one once, when `idempotent` allows sending
    /// the request again.
    pub async fn exchange(
        &self,
        server: &Arc<HttpServer>,
        request: &[u8],
        exchange: Exchange,
        out: &mut Vec<u8>,
        connect_timeout: Duration,
        idempotent: bool,
    ) -> Result<(ServerConn, Response, Relay), Failure> {
        for fresh in [false, true] {
            let mut conn = match self.take(server).filter(|_| !fresh) {
                Some(conn) => conn,
                None => connect(server, connect_timeout).await?,
            };
            match round_trip(&mut conn, request, exchange, out).await {
                Ok((response, relay)) => return Ok((conn, response, relay)),
                Err(Failure::Failed(_)) if conn.reused && conn.buf.is_empty() && idempotent && !fresh => {
                    tracing::debug!(server = %server.name, "kept-alive connection closed; sending on a new one");
                }
                Err(e) => return Err(e),
            }
        }
        Err(Failure::Failed("no usable connection".into()))
    }
}

async fn connect(server: &Arc<HttpServer>, timeout: Duration) -> Result<ServerConn, Failure> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(server.address.as_str())).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(Failure::Connect(e.to_string())),
        Err(_) => return Err(Failure::Connect(format!("timed out after {timeout:?}"))),
    };
    let _ = stream.set_nodelay(true);
    Ok(ServerConn { server: server.clone(), stream, buf: BytesMut::with_capacity(BUFFER), reused: false })
}

/// Writes the request, then reads until a final response head (interim 1xx responses other
/// than an expected 101 are passed over: the body was already read, so `100 Continue` means
/// nothing to the client).
async fn round_trip(
    conn: &mut ServerConn,
    request: &[u8],
    exchange: Exchange,
    out: &mut Vec<u8>,
) -> Result<(Response, Relay), Failure> {
    conn.stream.write_all(request).await.map_err(|e| Failure::Failed(e.to_string()))?;
    // Bounded: every pass consumes an interim head or reads more bytes, up to MAX_HEAD.
    loop {
        if !conn.buf.is_empty()
            && let Some((response, relay)) = response::parse(&conn.buf, exchange, out)?
        {
            conn.buf.advance(response.len);
            if response.status < 200 && !relay.switch {
                continue;
            }
            return Ok((response, relay));
        }
        if conn.buf.len() >= MAX_HEAD {
            return Err(response::ResponseError::TooLarge.into());
        }
        match conn.read_more().await {
            Ok(0) if conn.buf.is_empty() => return Err(Failure::Failed("connection closed".into())),
            Ok(0) => return Err(response::ResponseError::Malformed.into()),
            Ok(_) => {}
            Err(e) => return Err(Failure::Failed(e.to_string())),
        }
    }
}
