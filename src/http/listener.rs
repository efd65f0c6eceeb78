//! Accepting client connections: TLS when configured, HTTP/1.1 or h2 (ALPN, or the h2 preface
//! on plain connections), idle timeout, and a graceful drain on shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::headers::ClientAddr;
use super::upstream::Upstreams;
use super::{HttpTier, forward};

/// Accepts until told to drain; then waits for the connections it started to finish their
/// requests (the caller bounds that wait).
pub async fn serve(listener: TcpListener, tier: Weak<HttpTier>, mut draining: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            (stream, peer) = crate::server::next_connection(&listener, "http") => {
                let Some(tier) = tier.upgrade() else { return };
                tokio::spawn(connection(stream, peer, tier, graceful.watcher()));
            }
            _ = draining.changed() => break,
        }
    }
    drop(listener);
    tracing::info!(connections = graceful.count(), "HTTP balancer draining");
    graceful.shutdown().await;
}

async fn connection(stream: TcpStream, peer: SocketAddr, tier: Arc<HttpTier>, watcher: Watcher) {
    let _ = stream.set_nodelay(true);
    let balancer = tier.balancer();
    let idle = balancer.config.idle_timeout;
    let Some(acceptor) = balancer.tls.clone() else {
        return serve_io(TokioIo::new(stream), ClientAddr::new(peer, false), idle, tier, watcher).await;
    };
    drop(balancer);
    match tokio::time::timeout(idle, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => serve_io(TokioIo::new(tls), ClientAddr::new(peer, true), idle, tier, watcher).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

async fn serve_io<I>(
    io: TokioIo<I>,
    client: ClientAddr,
    idle: Duration,
    tier: Arc<HttpTier>,
    watcher: Watcher,
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(idle);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(idle / 2).keep_alive_timeout(idle / 2);
    let conn = builder.serve_connection_with_upgrades(io, service).into_owned();
    // The server connections of this client run in this task, beside it.
    tokio::select! {
        ended = watcher.watch(conn) => {
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "HTTP client connection ended");
            }
        }
        () = upstreams.driver.run() => {}
    }
}
