//! Accepting client connections and handing each to the worker thread with the fewest; on the
//! worker: TLS when configured, then HTTP/1.x through the balancer's own engine (`h1`) or h2
//! through hyper (ALPN `h2`, or the h2 preface on a plain connection), idle timeouts, and the
//! drain of a graceful shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::BytesMut;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::headers::ClientAddr;
use super::prefixed::Prefixed;
use super::upstream::Upstreams;
use super::{HttpTier, forward, h1};
use crate::drain::Member;
use crate::tally::Counted;

/// What a client sends first on an h2 connection with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A thread serving client connections on its own single-threaded event loop: each connection
/// and its server connections stay there, sparing the cross-thread wake-ups and cache traffic
/// of a work-stealing scheduler.
/// A connection handed to a worker, counted under its source address while it lives.
type Arrival = (std::net::TcpStream, SocketAddr, Counted<std::net::IpAddr>);

pub struct Worker {
    handoff: mpsc::UnboundedSender<Arrival>,
    load: Arc<Load>,
}

/// Connections running on one worker: read by the acceptor, exported as a gauge.
struct Load {
    count: AtomicUsize,
    gauge: metrics::Gauge,
}

impl Load {
    fn get(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn add(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.gauge.increment(1.0);
    }

    fn sub(&self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.gauge.decrement(1.0);
    }
}

impl Worker {
    pub fn spawn(index: usize, tier: Weak<HttpTier>, gauge: metrics::Gauge) -> std::io::Result<Worker> {
        let (handoff, arrivals) = mpsc::unbounded_channel();
        let load = Arc::new(Load { count: AtomicUsize::new(0), gauge });
        let counted = load.clone();
        std::thread::Builder::new()
            .name(format!("rwproxy-http-{index}"))
            .spawn(move || run_worker(arrivals, tier, counted))?;
        Ok(Worker { handoff, load })
    }
}

fn run_worker(mut arrivals: mpsc::UnboundedReceiver<Arrival>, tier: Weak<HttpTier>, load: Arc<Load>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return tracing::error!(error = %e, "HTTP worker thread could not start"),
    };
    runtime.block_on(async move {
        let mut connections = JoinSet::new();
        let pool = Arc::new(h1::Pool::default());
        // Bounded by the acceptor: it ends when the tier drains or is dropped.
        loop {
            tokio::select! {
                arrival = arrivals.recv() => {
                    let Some((stream, peer, slot)) = arrival else { break };
                    let (Some(tier), Ok(stream)) = (tier.upgrade(), TcpStream::from_std(stream)) else {
                        load.sub();
                        continue;
                    };
                    let (member, _, kicked) = tier.connections.join();
                    let (load, pool) = (load.clone(), pool.clone());
                    connections.spawn(async move {
                        connection(stream, peer, tier, member, kicked, pool).await;
                        drop(slot);
                        load.sub();
                    });
                }
                // Finished connections are reaped as they end.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        // Bounded by the connections (the tier's shutdown deadline ends the process).
        while connections.join_next().await.is_some() {}
    });
}

/// Accepts until told to drain or the tier is gone, handing each connection to the worker
/// with the fewest (so that keep-alive connections spread evenly, which a kernel hash over
/// SO_REUSEPORT sockets does not do, and tail latency follows the busiest thread).
pub async fn serve(
    listener: TcpListener,
    tier: Weak<HttpTier>,
    workers: Vec<Worker>,
    mut draining: watch::Receiver<bool>,
) {
    let mut next = 0;
    let mut refusals = crate::accept::Refusals::default();
    let busy_log = crate::accept::LogLimiter::default();
    loop {
        // At max_client_connections new connections wait in the kernel's backlog for a slot
        // (HAProxy's maxconn), up to QUEUE_WAIT; only then are they taken and answered 503.
        if let Some(current) = tier.upgrade() {
            let cap = current.balancer().config.max_client_connections;
            drop(current);
            for _ in 0..QUEUE_WAIT.as_millis() / 10 {
                if workers.iter().map(|w| w.load.get()).sum::<usize>() < cap {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        tokio::select! {
            (stream, peer) = crate::accept::next_connection(&listener, "http") => {
                let Some(current) = tier.upgrade() else { break };
                let balancer = current.balancer();
                if !balancer.config.firewall.permits(peer.ip()) {
                    current.metrics().refused_by_firewall("http");
                    refusals.refused("http", peer);
                    continue;
                }
                let open: usize = workers.iter().map(|w| w.load.get()).sum();
                let slot = Counted::new(current.per_source.clone(), peer.ip());
                let per_source = balancer.config.max_connections_per_source;
                let over_all = open >= balancer.config.max_client_connections;
                if over_all || per_source > 0 && slot.count > per_source {
                    let reason = if over_all { "too_many" } else { "too_many_from_source" };
                    current.metrics().connection_refused("http", reason);
                    if let Some(count) = busy_log.note(reason) {
                        tracing::warn!(%peer, open, from_source = slot.count, refused = count, reason, "HTTP client connections answered 503 (max_client_connections / max_connections_per_source)");
                    }
                    tokio::spawn(refuse_busy(stream));
                    continue;
                }
                drop((balancer, current));
                // The least loaded, taking turns among equals, in one pass: the loads change
                // while we look (workers finish connections), and a two-pass "find the minimum,
                // then find who has it" could find no one and drop the connection unanswered.
                let Some(at) = (0..workers.len())
                    .map(|i| (next + i) % workers.len())
                    .min_by_key(|&i| workers[i].load.get()) else { continue };
                next = at + 1;
                let Ok(stream) = stream.into_std() else { continue };
                workers[at].load.add();
                if workers[at].handoff.send((stream, peer, slot)).is_err() {
                    workers[at].load.sub();
                }
            }
            changed = draining.changed() => {
                if changed.is_err() || *draining.borrow() {
                    break;
                }
            }
        }
        if tier.strong_count() == 0 {
            break;
        }
    }
    tracing::info!("HTTP balancer stopped accepting");
}

/// How long a new connection may wait in the backlog while every client slot is taken.
const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Answers a connection over `max_client_connections` with 503 and closes it: at once, never a
/// hang, and without a worker's resources.
async fn refuse_busy(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 29\r\nconnection: close\r\nretry-after: 1\r\n\r\ntoo many client connections\r\n";
    let write = async {
        stream.write_all(BUSY).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tier: Arc<HttpTier>,
    _member: Member,
    kicked: oneshot::Receiver<()>,
    pool: Arc<h1::Pool>,
) {
    let _ = stream.set_nodelay(true);
    let balancer = tier.balancer();
    let idle = balancer.config.idle_timeout;
    let Some(acceptor) = balancer.tls.clone() else {
        drop(balancer);
        return plain(stream, ClientAddr::new(peer, false), idle, tier, kicked, pool).await;
    };
    drop(balancer);
    // The TLS and h2 paths live on the heap: a task is as large as its largest path, and an
    // idle plain HTTP/1 connection should not pay for the others.
    Box::pin(tls(stream, acceptor, ClientAddr::new(peer, true), idle, tier, kicked, pool)).await;
}

async fn tls(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    client: ClientAddr,
    idle: Duration,
    tier: Arc<HttpTier>,
    kicked: oneshot::Receiver<()>,
    pool: Arc<h1::Pool>,
) {
    let deadline = first_request_deadline(&tier);
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return tracing::debug!(peer = %client.peer, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!(peer = %client.peer, "TLS handshake timed out"),
    };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        Box::pin(serve_h2(tls, client, idle, tier, kicked)).await;
    } else {
        h1::serve(tls, BytesMut::new(), deadline, client, tier, kicked, pool).await;
    }
}

/// A plain connection is h2 when it opens with the preface, HTTP/1.x otherwise.
async fn plain(
    mut stream: TcpStream,
    client: ClientAddr,
    idle: Duration,
    tier: Arc<HttpTier>,
    kicked: oneshot::Receiver<()>,
    pool: Arc<h1::Pool>,
) {
    let mut first = BytesMut::with_capacity(h1::CLIENT_BUFFER);
    // The first request has `header_timeout` from the accept: a silent connection is closed
    // then, not after `idle_timeout`.
    let deadline = first_request_deadline(&tier);
    // Bounded: at most as many reads as the preface has bytes.
    while first.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&first) {
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut first)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
    if first.starts_with(H2_PREFACE) {
        Box::pin(serve_h2(Prefixed::new(first, stream), client, idle, tier, kicked)).await;
    } else {
        h1::serve(stream, first, deadline, client, tier, kicked, pool).await;
    }
}

/// When the first request head of a connection accepted now must be in.
fn first_request_deadline(tier: &HttpTier) -> tokio::time::Instant {
    tokio::time::Instant::now() + tier.balancer().config.header_timeout
}

async fn serve_h2<I>(
    io: I,
    client: ClientAddr,
    idle: Duration,
    tier: Arc<HttpTier>,
    mut kicked: oneshot::Receiver<()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = client.peer;
    let upstreams = Arc::new(Upstreams::default());
    let for_requests = upstreams.clone();
    let client = Arc::new(client);
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let (tier, upstreams, client) = (tier.clone(), for_requests.clone(), client.clone());
        async move {
            let balancer = tier.balancer();
            Ok::<_, std::convert::Infallible>(forward::handle(req, &client, &balancer, &upstreams).await)
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new()).keep_alive_interval(idle / 2).keep_alive_timeout(idle / 2);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    // Bounded by the connection: it ends on its own, or after a graceful shutdown.
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "h2 client connection ended");
                }
                return;
            }
            _ = &mut kicked, if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            // The server connections of this client run in this task, beside it.
            () = upstreams.driver.run() => {}
        }
    }
}
