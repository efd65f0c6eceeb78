//! Accepting client connections: TLS when configured, then HTTP/1.x through the balancer's own
//! engine (`h1`) or h2 through hyper (ALPN `h2`, or the h2 preface on a plain connection),
//! idle timeouts, and the drain of a graceful shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::BytesMut;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::headers::ClientAddr;
use super::prefixed::Prefixed;
use super::upstream::Upstreams;
use super::{HttpTier, forward, h1};
use crate::drain::Member;

/// What a client sends first on an h2 connection with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Binds `threads` listening sockets to `addr` with SO_REUSEPORT, so that the kernel spreads
/// new connections over them. With port 0 the first socket picks the port, the others join it.
pub fn bind(addr: SocketAddr, threads: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut addr = addr;
    let mut sockets = Vec::with_capacity(threads);
    for _ in 0..threads.max(1) {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        addr = listener.local_addr()?;
        sockets.push(listener.into_std()?);
    }
    Ok(sockets)
}

/// One listener thread: its own single-threaded event loop accepts on its own socket and
/// serves the connections it accepted, each with its server connections, until the tier
/// drains (or is dropped) and those connections have ended. Keeping a connection on one
/// thread spares the cross-thread wake-ups and cache traffic of a work-stealing scheduler;
/// measured on two cores, a third less proxy CPU per request.
pub fn run_thread(
    socket: std::net::TcpListener,
    tier: Weak<HttpTier>,
    draining: watch::Receiver<bool>,
    accepting: mpsc::Sender<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return tracing::error!(error = %e, "HTTP listener thread could not start"),
    };
    runtime.block_on(async move {
        let listener = match TcpListener::from_std(socket) {
            Ok(listener) => listener,
            Err(e) => return tracing::error!(error = %e, "HTTP listener could not register"),
        };
        let mut connections = serve(listener, tier, draining).await;
        drop(accepting);
        // Bounded by the connections (the tier's shutdown deadline ends the process).
        while connections.join_next().await.is_some() {}
    });
}

/// Accepts until told to drain or the tier is gone; returns the connections still running.
async fn serve(listener: TcpListener, tier: Weak<HttpTier>, mut draining: watch::Receiver<bool>) -> JoinSet<()> {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            (stream, peer) = crate::server::next_connection(&listener, "http") => {
                let Some(tier) = tier.upgrade() else { break };
                let (member, _, kicked) = tier.connections.join();
                connections.spawn(connection(stream, peer, tier, member, kicked));
            }
            // Finished connections are reaped as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            changed = draining.changed() => {
                if changed.is_err() || *draining.borrow() {
                    break;
                }
            }
        }
    }
    connections
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tier: Arc<HttpTier>,
    _member: Member,
    kicked: oneshot::Receiver<()>,
) {
    let _ = stream.set_nodelay(true);
    let balancer = tier.balancer();
    let idle = balancer.config.idle_timeout;
    let Some(acceptor) = balancer.tls.clone() else {
        drop(balancer);
        return plain(stream, ClientAddr::new(peer, false), idle, tier, kicked).await;
    };
    drop(balancer);
    let tls = match tokio::time::timeout(idle, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
    };
    let client = ClientAddr::new(peer, true);
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        serve_h2(tls, client, idle, tier, kicked).await;
    } else {
        h1::serve(tls, BytesMut::new(), client, tier, kicked).await;
    }
}

/// A plain connection is h2 when it opens with the preface, HTTP/1.x otherwise.
async fn plain(
    mut stream: TcpStream,
    client: ClientAddr,
    idle: Duration,
    tier: Arc<HttpTier>,
    kicked: oneshot::Receiver<()>,
) {
    let mut first = BytesMut::with_capacity(h1::CLIENT_BUFFER);
    // Bounded: at most as many reads as the preface has bytes.
    while first.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&first) {
        match tokio::time::timeout(idle, stream.read_buf(&mut first)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
    if first.starts_with(H2_PREFACE) {
        serve_h2(Prefixed::new(first, stream), client, idle, tier, kicked).await;
    } else {
        h1::serve(stream, first, client, tier, kicked).await;
    }
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
