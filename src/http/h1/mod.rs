//! The HTTP/1.x forwarding engine. Requests are parsed with httparse straight from the
//! connection's buffer and the server's request head is written in the same pass (hop-by-hop
//! headers out, forwarding headers in); the response head is rewritten the same way and goes
//! out with the body bytes that came with it, in one write. Compared with a general HTTP
//! library on both sides (a header map built, copied per attempt and encoded again, a body
//! stream per message), a proxied request costs about half the instructions.
//!
//! h2 connections are served by hyper (see `listener`); both share the server selection,
//! connection limits, metrics and access log in `dispatch`.

pub mod chunked;
mod fields;
mod relay;
pub mod request;
pub mod response;
mod upstream;

pub use upstream::Pool;

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use hyper::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::dispatch::{self, Attempts, InFlight};
use super::headers::ClientAddr;
use super::{Balancer, HttpTier};
use relay::Limits;
use request::{Framing, Head, HeadError};
use response::{Exchange, Relay};
use upstream::{Failure, ServerConn};

/// Largest request head accepted (431 beyond).
const MAX_HEAD: usize = 64 * 1024;
/// First read buffer of a client connection: requests are mostly small, and an idle
/// keep-alive connection should cost little memory. It grows for larger heads and bodies.
pub const CLIENT_BUFFER: usize = 4 * 1024;

/// A request refused before it reached a server; the connection closes after the answer.
#[derive(Debug)]
struct Refusal {
    /// 0: the client went away, nothing to answer.
    status: u16,
    text: &'static str,
    termination: &'static str,
}

impl Refusal {
    const GONE: Refusal = Refusal { status: 0, text: "", termination: "CD" };

    fn head(e: &HeadError) -> Refusal {
        let text = match e {
            HeadError::Malformed(why) => why,
            HeadError::TooLarge => "request header fields too large",
            HeadError::Connect => "CONNECT is not supported",
        };
        Refusal { status: e.status(), text, termination: "CR" }
    }
}

/// Whether the client connection serves another request.
enum After {
    KeepAlive,
    Close,
}

/// One client connection speaking HTTP/1.x.
struct Client<I> {
    io: I,
    /// Bytes from the client not yet used (the next, pipelined, request's among them).
    buf: BytesMut,
    addr: ClientAddr,
    tier: Arc<HttpTier>,
    /// Completes when the balancer drains.
    kicked: oneshot::Receiver<()>,
    draining: bool,
    /// The worker thread's idle server connections.
    pool: Arc<Pool>,
    /// The server-bound request: head, then body.
    request: Vec<u8>,
    /// Client-bound bytes.
    out: Vec<u8>,
    /// The current request's body on the balancer's shared budget.
    body: Option<crate::budget::Held>,
    /// The first request's head must be in by then, counted from the accept (HAProxy's
    /// `timeout http-request`): a connection that sends nothing is no client.
    first_deadline: Option<Instant>,
}

/// Serves requests on one connection until it closes, fails, idles out or the balancer drains.
/// `first` holds bytes already read from it; its first request head must be whole by
/// `first_deadline`.
pub async fn serve<I>(
    io: I,
    first: BytesMut,
    first_deadline: Instant,
    addr: ClientAddr,
    tier: Arc<HttpTier>,
    kicked: oneshot::Receiver<()>,
    pool: Arc<Pool>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = Client {
        io,
        buf: first,
        addr,
        tier,
        kicked,
        draining: false,
        pool,
        request: Vec::new(),
        out: Vec::new(),
        body: None,
        first_deadline: Some(first_deadline),
    };
    // Bounded by the client: every pass serves one request or ends the connection.
    while let After::KeepAlive = client.next().await {}
    let _ = client.io.shutdown().await;
}

impl<I: AsyncRead + AsyncWrite + Unpin> Client<I> {
    async fn next(&mut self) -> After {
        // The last request's body is gone: its bytes go back to the budget, and a large
        // buffer is not kept for the rest of the connection.
        self.body = None;
        if self.request.capacity() > 64 * 1024 {
            self.request = Vec::new();
        }
        let balancer = self.tier.balancer();
        let head = match self.read_head(&balancer).await {
            Ok(Some(head)) => head,
            Ok(None) => return After::Close,
            Err(refusal) => return self.refuse(&balancer, refusal, None, std::time::Instant::now()).await,
        };
        let started = std::time::Instant::now();
        let deadline = Instant::from_std(started) + balancer.config.request_timeout;
        if let Err(refusal) = self.read_body(&head, &balancer, deadline).await {
            return self.refuse(&balancer, refusal, Some(&head), started).await;
        }
        self.forward(&head, &balancer, started, deadline).await
    }

    /// Reads until a whole request head is buffered. `Ok(None)`: the connection ends quietly
    /// (closed, idle too long, or draining between requests).
    async fn read_head(&mut self, balancer: &Balancer) -> Result<Option<Head>, Refusal> {
        let idle = balancer.config.idle_timeout;
        // Once a head has begun, it has `header_timeout` in all: each byte does not buy more.
        // The first head's time counts from the accept.
        let mut head_deadline: Option<Instant> = self.first_deadline.take();
        // Bounded: every pass reads more bytes, up to MAX_HEAD.
        loop {
            if !self.buf.is_empty() {
                match request::parse(&self.buf, &self.addr, &mut self.request, dispatch::logging()) {
                    Ok(Some(head)) => {
                        self.buf.advance(head.len);
                        return Ok(Some(head));
                    }
                    Ok(None) if self.buf.len() >= MAX_HEAD => {
                        return Err(Refusal::head(&HeadError::TooLarge));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(Refusal::head(&e)),
                }
            } else if self.draining {
                return Ok(None);
            }
            if !self.buf.is_empty() && head_deadline.is_none() {
                head_deadline = Some(Instant::now() + balancer.config.header_timeout);
            }
            // A stall of `idle_timeout` ends it too.
            let stall = Instant::now() + idle;
            let until = head_deadline.map_or(stall, |deadline| deadline.min(stall));
            let read = tokio::select! {
                biased;
                read = tokio::time::timeout_at(until, read_more(&mut self.io, &mut self.buf)) => read,
                _ = &mut self.kicked, if !self.draining => {
                    self.draining = true;
                    continue;
                }
            };
            match read {
                Ok(Ok(0) | Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
                Err(_) if self.buf.is_empty() => return Ok(None),
                Err(_) => {
                    return Err(Refusal { status: 408, text: "request head too slow", termination: "cR" });
                }
            }
        }
    }

    /// Reads the body into `request` after its head, framed with a Content-Length (it is
    /// buffered whole, so that a retry can send it again).
    async fn read_body(
        &mut self,
        head: &Head,
        balancer: &Balancer,
        deadline: Instant,
    ) -> Result<(), Refusal> {
        const TOO_LARGE: Refusal = Refusal { status: 413, text: "request body too large", termination: "PR" };
        const NO_ROOM: Refusal =
            Refusal { status: 503, text: "request bodies in memory are at their limit", termination: "RR" };
        let limit = balancer.config.max_body_size;
        let Some(framing) = head.body else {
            request::finish(&mut self.request, 0, false);
            return Ok(());
        };
        // Only a request with a body touches the shared budget.
        let mut held = balancer.bodies.hold();
        if head.expect_continue && self.buf.is_empty() {
            if matches!(framing, Framing::Length(n) if n > limit as u64) {
                return Err(TOO_LARGE);
            }
            self.io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.map_err(|_| Refusal::GONE)?;
            self.io.flush().await.map_err(|_| Refusal::GONE)?;
        }
        match framing {
            Framing::Length(n) => {
                let n = usize::try_from(n).ok().filter(|&n| n <= limit).ok_or(TOO_LARGE)?;
                if !held.grow(n) {
                    return Err(NO_ROOM);
                }
                self.buf.reserve(n.saturating_sub(self.buf.len()));
                // Bounded: every pass reads more bytes, up to n.
                while self.buf.len() < n {
                    self.read_by(deadline).await?;
                }
                request::finish(&mut self.request, n, true);
                self.request.extend_from_slice(&self.buf[..n]);
                self.buf.advance(n);
            }
            Framing::Chunked => {
                let mut chunks = chunked::Chunked::default();
                let mut body = Vec::new();
                // Bounded: every pass reads more bytes, up to the limit.
                loop {
                    let used = chunks.feed(&self.buf, |data| body.extend_from_slice(data)).map_err(|_| {
                        Refusal { status: 400, text: "malformed chunked body", termination: "CR" }
                    })?;
                    self.buf.advance(used);
                    if body.len() > limit {
                        return Err(TOO_LARGE);
                    }
                    if body.len() > held.bytes() && !held.grow(body.len() - held.bytes()) {
                        return Err(NO_ROOM);
                    }
                    if chunks.is_done() {
                        break;
                    }
                    self.read_by(deadline).await?;
                }
                request::finish(&mut self.request, body.len(), true);
                self.request.extend_from_slice(&body);
            }
        }
        self.body = Some(held);
        Ok(())
    }

    async fn read_by(&mut self, deadline: Instant) -> Result<(), Refusal> {
        match tokio::time::timeout_at(deadline, read_more(&mut self.io, &mut self.buf)).await {
            Ok(Ok(0) | Err(_)) => Err(Refusal::GONE),
            Ok(Ok(_)) => Ok(()),
            Err(_) => Err(Refusal { status: 408, text: "request body too slow", termination: "cR" }),
        }
    }

    /// Sends the request to the first server that takes it (redispatching when nothing was
    /// sent, retrying an idempotent request once) and relays the response.
    async fn forward(
        &mut self,
        head: &Head,
        balancer: &Balancer,
        started: std::time::Instant,
        deadline: Instant,
    ) -> After {
        let exchange = Exchange {
            head_request: head.method == Method::HEAD,
            client_http10: head.http10,
            client_keep_alive: head.keep_alive && !self.draining,
            upgrade: head.upgrade,
        };
        let idempotent = dispatch::idempotent(&head.method);
        let config = &balancer.config;
        let mut retried = false;
        let mut attempts = Attempts::new(balancer);
        loop {
            let (index, in_flight) = match attempts.next(balancer, deadline).await {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(index) => {
                    let why = "every server is at its connection limit";
                    return self.fail(balancer, head, started, 503, why, Some(index), "sQ").await;
                }
            };
            let server = &balancer.servers.list[index];
            let until = dispatch::attempt_deadline(config.response_timeout, deadline);
            let sent = self.pool.exchange(
                server,
                &self.request,
                exchange,
                &mut self.out,
                config.connect_timeout,
                idempotent,
            );
            match tokio::time::timeout_at(until, sent).await {
                Ok(Ok((conn, response, relay))) => {
                    let termination = if retried { "-R" } else { "--" };
                    let logged = head.path.as_deref().map(|path| (&head.method, path));
                    dispatch::record(
                        balancer,
                        &self.addr,
                        Some(index),
                        response.status,
                        started,
                        logged,
                        termination,
                    );
                    return self.relay(conn, response.server_keep_alive, relay, in_flight, config).await;
                }
                Ok(Err(e @ Failure::Connect(_))) => {
                    server.observe(false, &e.to_string());
                    server.metrics.retries.increment(1);
                }
                Ok(Err(e @ Failure::Protocol(_))) => {
                    server.observe(false, &e.to_string());
                    let why = "the server sent an invalid response";
                    return self.fail(balancer, head, started, 502, why, Some(index), "SH").await;
                }
                Ok(Err(e)) => {
                    server.observe(false, &e.to_string());
                    if !idempotent || retried {
                        let why = "the server failed to answer";
                        return self.fail(balancer, head, started, 502, why, Some(index), "SH").await;
                    }
                    server.metrics.retries.increment(1);
                    retried = true;
                }
                Err(_) => {
                    let why = "the server did not answer in time";
                    return self.fail(balancer, head, started, 504, why, Some(index), "sH").await;
                }
            }
        }
        self.fail(balancer, head, started, 503, "no server available", None, "SC").await
    }

    /// Relays the response whose client head is in `out`; keeps the server connection when it
    /// can serve another request.
    async fn relay(
        &mut self,
        mut conn: ServerConn,
        server_keep_alive: bool,
        relay: Relay,
        in_flight: InFlight,
        config: &crate::config::HttpConfig,
    ) -> After {
        let limits = Limits { server_read: config.response_timeout, client_write: config.idle_timeout };
        if relay.switch {
            drop(in_flight);
            self.splice(conn, limits).await;
            return After::Close;
        }
        match relay::body(&mut self.io, &mut conn, relay, &mut self.out, limits, in_flight).await {
            Ok(ended_clean) => {
                if ended_clean && server_keep_alive {
                    self.pool.put(conn);
                }
                if relay.close_client { After::Close } else { After::KeepAlive }
            }
            Err(e) => {
                tracing::debug!(client = %self.addr.peer, server = %conn.server.name, error = %e, "response relay ended");
                After::Close
            }
        }
    }

    /// After a 101: the head and whatever either side sent early, then the two connections
    /// joined byte for byte until one closes.
    async fn splice(&mut self, mut conn: ServerConn, limits: Limits) {
        self.out.extend_from_slice(&conn.buf);
        conn.buf.clear();
        if relay::write(&mut self.io, &self.out, limits).await.is_err()
            || relay::flush(&mut self.io, limits).await.is_err()
            || conn.stream.write_all(&self.buf).await.is_err()
        {
            return;
        }
        self.buf.clear();
        if let Err(e) = tokio::io::copy_bidirectional(&mut self.io, &mut conn.stream).await {
            tracing::debug!(error = %e, "upgraded connection ended");
        }
    }

    /// Answers a request no server answered; the connection stays open when the client and
    /// the balancer allow.
    #[allow(clippy::too_many_arguments)]
    async fn fail(
        &mut self,
        balancer: &Balancer,
        head: &Head,
        started: std::time::Instant,
        status: u16,
        text: &str,
        server: Option<usize>,
        termination: &str,
    ) -> After {
        let logged = head.path.as_deref().map(|path| (&head.method, path));
        dispatch::record(balancer, &self.addr, server, status, started, logged, termination);
        let keep = head.keep_alive && !self.draining;
        if self.answer(status, text, !keep).await && keep { After::KeepAlive } else { After::Close }
    }

    async fn refuse(
        &mut self,
        balancer: &Balancer,
        refusal: Refusal,
        head: Option<&Head>,
        started: std::time::Instant,
    ) -> After {
        if refusal.status != 0 {
            let logged = head.and_then(|h| Some((&h.method, h.path.as_deref()?)));
            dispatch::record(
                balancer,
                &self.addr,
                None,
                refusal.status,
                started,
                logged,
                refusal.termination,
            );
            if self.answer(refusal.status, refusal.text, true).await {
                self.linger().await;
            }
        }
        After::Close
    }

    /// After refusing a request whose body may still be arriving: closing at once would reset
    /// the connection and could destroy the answer before the client reads it, so the write
    /// side is closed and what the client still sends is read and dropped, for a while.
    async fn linger(&mut self) {
        const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
        const MAX_DISCARD: usize = 64 << 20;
        if self.io.shutdown().await.is_err() {
            return;
        }
        let until = Instant::now() + LINGER;
        let mut discarded = 0;
        // Bounded by time and by bytes.
        while discarded < MAX_DISCARD {
            self.buf.clear();
            match tokio::time::timeout_at(until, read_more(&mut self.io, &mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => discarded += n,
                _ => break,
            }
        }
    }

    /// Writes a short plain-text answer of the balancer's own; false when the client is gone.
    async fn answer(&mut self, status: u16, text: &str, close: bool) -> bool {
        use std::io::Write;
        let reason = StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
        self.out.clear();
        // Writing to a Vec cannot fail.
        let _ = write!(
            self.out,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{text}\n",
            text.len() + 1,
            if close { "Connection: close\r\n" } else { "" },
        );
        self.io.write_all(&self.out).await.is_ok() && self.io.flush().await.is_ok()
    }
}

async fn read_more<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(buf.len().max(CLIENT_BUFFER));
    }
    io.read_buf(buf).await
}

/// Runs the HTTP/1 parsers over arbitrary bytes (the fuzz targets' entry): request head,
/// response head, chunked body. Must never panic.
pub fn fuzz_parsers(data: &[u8]) {
    let client = ClientAddr::new(std::net::SocketAddr::from(([127, 0, 0, 1], 1)), false);
    let mut out = Vec::new();
    let _ = request::parse(data, &client, &mut out, true);
    let flags = data.first().copied().unwrap_or(0);
    let exchange = response::Exchange {
        head_request: flags & 1 != 0,
        client_http10: flags & 2 != 0,
        client_keep_alive: flags & 4 != 0,
        upgrade: flags & 8 != 0,
    };
    out.clear();
    let _ = response::parse(data, exchange, &mut out);
    let mut chunks = chunked::Chunked::default();
    let mut body = 0usize;
    let mut rest = data;
    // Bounded: every pass consumes input or stops.
    while !rest.is_empty() && !chunks.is_done() {
        match chunks.feed(rest, |d| body += d.len()) {
            Ok(0) | Err(_) => break,
            Ok(used) => rest = rest.get(used..).unwrap_or_default(),
        }
    }
}
