//! The HTTP load balancer for the web tier: round robin (or least connections, or power of two
//! choices) over healthy servers, backups when every active server is down, active health
//! checks with rise/fall plus passive failure detection, redispatch of requests that never
//! reached a server and one retry of idempotent requests, X-Forwarded-* and Forwarded headers.

mod forward;
mod servers;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use servers::{HttpServer, Servers};

use crate::config::HttpConfig;
use crate::metrics::Metrics;

type UpstreamClient = Client<HttpConnector, http_body_util::Full<Bytes>>;

pub struct Balancer {
    config: HttpConfig,
    pub servers: Servers,
    client: UpstreamClient,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer").field("servers", &self.servers).finish_non_exhaustive()
    }
}

/// Binds the listener and starts serving and health-checking; returns the bound address and
/// the tasks (abort them to stop).
pub async fn start(
    config: HttpConfig,
    metrics: &Metrics,
) -> std::io::Result<(SocketAddr, Arc<Balancer>, Vec<JoinHandle<()>>)> {
    let addr: SocketAddr = config.listen.get_ref().parse().map_err(std::io::Error::other)?;
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let balancer = Arc::new(Balancer { servers: Servers::new(&config, metrics), config, client });
    let mut tasks: Vec<JoinHandle<()>> =
        (0..balancer.servers.list.len()).map(|i| tokio::spawn(health_checks(balancer.clone(), i))).collect();
    let serving = balancer.clone();
    tasks.push(tokio::spawn(async move { serve(listener, serving).await }));
    tracing::info!(http = %bound, "HTTP balancer listening");
    Ok((bound, balancer, tasks))
}

async fn serve(listener: TcpListener, balancer: Arc<Balancer>) {
    loop {
        let (stream, peer) = crate::server::next_connection(&listener, "http").await;
        let _ = stream.set_nodelay(true);
        let balancer = balancer.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let balancer = balancer.clone();
                async move { Ok::<_, std::convert::Infallible>(forward::handle(req, peer, &balancer).await) }
            });
            if let Err(e) =
                http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades().await
            {
                tracing::debug!(error = %e, "HTTP client connection ended");
            }
        });
    }
}

/// Active checks: GET the health path every interval; 2xx counts as good.
async fn health_checks(balancer: Arc<Balancer>, index: usize) {
    let health = balancer.config.health.clone();
    let mut ticker = tokio::time::interval(health.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let Some(server) = balancer.servers.list.get(index) else {
        return;
    };
    let probe: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    loop {
        ticker.tick().await;
        let uri = format!("http://{}{}", server.address, health.path);
        let result = match uri.parse::<hyper::Uri>() {
            Ok(uri) => tokio::time::timeout(health.timeout, probe.get(uri)).await,
            Err(_) => return,
        };
        match result {
            Ok(Ok(resp)) if resp.status().is_success() => server.observe(true, ""),
            Ok(Ok(resp)) => server.observe(false, &format!("health check returned {}", resp.status())),
            Ok(Err(e)) => server.observe(false, &format!("health check failed: {e}")),
            Err(_) => server.observe(false, "health check timed out"),
        }
    }
}
