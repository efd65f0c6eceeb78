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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use super::headers::ClientAddr;
use super::prefixed::Prefixed;
use super::upstream::Upstreams;
use super::{HttpTier, forward, h1};
use crate::drain::Member;

/// What a client sends first on an h2 connection with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Accepts until told to drain; the connections it started are drained by the tier.
pub async fn serve(listener: TcpListener, tier: Weak<HttpTier>, mut draining: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            (stream, peer) = crate::server::next_connection(&listener, "http") => {
                let Some(tier) = tier.upgrade() else { return };
                let (member, _, kicked) = tier.connections.join();
                tokio::spawn(connection(stream, peer, tier, member, kicked));
            }
            _ = draining.changed() => break,
        }
    }
    tracing::info!("HTTP balancer stopped accepting");
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
