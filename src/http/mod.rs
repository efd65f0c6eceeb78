//! The HTTP load balancer for the web tier: round robin (or least connections, or power of two
//! choices) over healthy servers, backups when every active server is down, active health
//! checks with rise/fall plus passive failure detection, redispatch of requests that never
//! reached a server and one retry of idempotent requests, X-Forwarded-* and Forwarded headers,
//! HTTPS termination with h2, per-server connection limits with a bounded queue, graceful
//! shutdown and configuration reload.
//!
//! Layout: `listener` accepts and hands each connection to a worker thread; `h1` is the
//! HTTP/1.x engine, `forward` + `upstream` the h2 path through hyper; `dispatch` is what both
//! share (retry rules, connection slots, metrics and access log); `servers` holds health and
//! selection, `headers` the forwarding headers of the h2 path; certificates come from
//! [`crate::tls`].

mod dispatch;
mod forward;
mod h1;
mod headers;
mod listener;
mod prefixed;
mod servers;
mod upstream;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::tls;

pub use h1::fuzz_parsers as fuzz_h1;
pub use servers::{HttpServer, Servers};

use crate::config::HttpConfig;
use crate::drain::Drain;
use crate::metrics::Metrics;

/// One configuration of the balancer: replaced as a whole by a reload, while requests already
/// running finish on the one they started with.
pub struct Balancer {
    pub config: HttpConfig,
    pub servers: Servers,
    tls: Option<TlsAcceptor>,
    /// Request bodies held in memory, all connections together (`max_buffered_bodies`);
    /// shared with the configurations before and after a reload.
    pub bodies: crate::budget::Budget,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer").field("servers", &self.servers).finish_non_exhaustive()
    }
}

impl Balancer {
    fn new(config: HttpConfig, metrics: &Metrics, previous: Option<&Balancer>) -> std::io::Result<Balancer> {
        let tls = match &config.tls {
            Some(files) => Some(
                tls::acceptor(files.cert.get_ref().as_ref(), files.key.get_ref().as_ref(), tls::HTTP_ALPN)
                    .map_err(std::io::Error::other)?,
            ),
            None => None,
        };
        let servers = Servers::new(&config, metrics, previous.map(|p| &p.servers));
        let bodies = match previous {
            Some(p) => p.bodies.clone(),
            None => crate::budget::Budget::new(config.max_buffered_bodies),
        };
        bodies.set_limit(config.max_buffered_bodies);
        Ok(Balancer { config, servers, tls, bodies })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("http.listen cannot change without a restart ({old} → {new})")]
    Listen { old: String, new: String },
    #[error("http.threads cannot change without a restart ({old} → {new})")]
    Threads { old: usize, new: usize },
    #[error("{0}")]
    Tls(std::io::Error),
}

/// The running balancer: its listener, the current configuration and its health checks.
pub struct HttpTier {
    pub addr: SocketAddr,
    current: ArcSwap<Balancer>,
    metrics: Arc<Metrics>,
    health: Mutex<Vec<JoinHandle<()>>>,
    /// Tells the accept loop to stop (and, dropped with the tier, to end).
    drain: watch::Sender<bool>,
    listener: Mutex<Option<JoinHandle<()>>>,
    /// The client connections, told to finish on shutdown.
    connections: Arc<Drain>,
    /// Client connections per source address (`max_connections_per_source`).
    per_source: Arc<crate::tally::Tally<std::net::IpAddr>>,
}

impl std::fmt::Debug for HttpTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTier").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for HttpTier {
    fn drop(&mut self) {
        self.stop_health_checks();
        // The worker threads end with the acceptor's hand-off channels, once their
        // connections have.
        if let Ok(mut listener) = self.listener.lock()
            && let Some(task) = listener.take()
        {
            task.abort();
        }
    }
}

impl HttpTier {
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The configuration requests start with now.
    pub fn balancer(&self) -> Arc<Balancer> {
        self.current.load_full()
    }

    /// Swaps in a new configuration. Servers that stay keep their health; requests in flight
    /// finish where they are.
    pub fn reload(self: &Arc<Self>, config: HttpConfig) -> Result<(), ReloadError> {
        let old = self.balancer();
        if old.config.listen.get_ref() != config.listen.get_ref() {
            return Err(ReloadError::Listen {
                old: old.config.listen.get_ref().clone(),
                new: config.listen.get_ref().clone(),
            });
        }
        if old.config.threads != config.threads {
            return Err(ReloadError::Threads { old: old.config.threads, new: config.threads });
        }
        let next = Balancer::new(config, &self.metrics, Some(&old)).map_err(ReloadError::Tls)?;
        self.current.store(Arc::new(next));
        self.stop_health_checks();
        self.start_health_checks();
        Ok(())
    }

    /// Stops accepting, lets requests in flight finish for up to `deadline`, then returns.
    pub async fn shutdown(&self, deadline: Duration) {
        let _ = self.drain.send(true);
        let task = self.listener.lock().ok().and_then(|mut l| l.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        tracing::info!(connections = self.connections.running(), "HTTP balancer draining");
        let left = self.connections.drain(deadline).await;
        if left > 0 {
            tracing::warn!(connections = left, "HTTP connections still running at the shutdown deadline");
        }
        self.stop_health_checks();
    }

    fn start_health_checks(self: &Arc<Self>) {
        let balancer = self.balancer();
        let tasks =
            (0..balancer.servers.list.len()).map(|i| tokio::spawn(health_checks(balancer.clone(), i)));
        if let Ok(mut health) = self.health.lock() {
            health.extend(tasks);
        }
    }

    fn stop_health_checks(&self) {
        if let Ok(mut health) = self.health.lock() {
            for task in health.drain(..) {
                task.abort();
            }
        }
    }
}

/// Binds the listener, starts the worker threads (see `threads`), serving and health-checking.
pub async fn start(config: HttpConfig, metrics: Arc<Metrics>) -> std::io::Result<Arc<HttpTier>> {
    let addr: SocketAddr = config.listen.get_ref().parse().map_err(std::io::Error::other)?;
    let threads = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let listener = crate::proxy::bind(addr, "http.listen").await?;
    let bound = listener.local_addr()?;
    let balancer = Balancer::new(config, &metrics, None)?;
    let https = balancer.tls.is_some();
    let (drain, draining) = watch::channel(false);
    let tier = Arc::new(HttpTier {
        addr: bound,
        current: ArcSwap::from_pointee(balancer),
        metrics,
        health: Mutex::new(Vec::new()),
        drain,
        listener: Mutex::new(None),
        connections: Arc::new(Drain::default()),
        per_source: Arc::default(),
    });
    tier.start_health_checks();
    // Workers and the acceptor hold only weak references, so dropping the tier stops everything.
    let workers = (0..threads)
        .map(|i| listener::Worker::spawn(i, Arc::downgrade(&tier), tier.metrics.http_worker(i)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let task = tokio::spawn(listener::serve(listener, Arc::downgrade(&tier), workers, draining));
    if let Ok(mut slot) = tier.listener.lock() {
        *slot = Some(task);
    }
    tracing::info!(http = %bound, https, threads, "HTTP balancer listening");
    Ok(tier)
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
    let Ok(uri) = format!("http://{}{}", server.address, health.path).parse::<hyper::Uri>() else {
        tracing::warn!(server = %server.name, path = %health.path, "health check path is not a valid URI");
        return;
    };
    loop {
        ticker.tick().await;
        let result = tokio::time::timeout(health.timeout, probe.get(uri.clone())).await;
        let failure = match result {
            Ok(Ok(resp)) if resp.status().is_success() => None,
            Ok(Ok(resp)) => Some(format!("health check returned {}", resp.status())),
            Ok(Err(e)) => Some(format!("health check failed: {e}")),
            Err(_) => Some("health check timed out".to_string()),
        };
        match failure {
            None => server.observe(true, ""),
            Some(why) => {
                server.metrics.health_failures.increment(1);
                server.observe(false, &why);
            }
        }
    }
}
