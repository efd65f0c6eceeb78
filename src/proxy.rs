//! Putting the pieces together: probe the primary, bind the listeners, start the monitor;
//! and taking them apart again gracefully.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use mysql_common::constants::MariadbCapabilities;

use crate::admin::{self, Admin};
use crate::backend::{Backends, probe};
use crate::config::Config;
use crate::http::HttpTier;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::router::Router;
use crate::server;
use crate::session::handshake::OFFERED_CAPS;
use crate::sql_tier::Shared;
use crate::sql_tier::SqlTier;

/// Announced when neither the config nor the primary gives a version.
const FALLBACK_VERSION: &str = "8.0.0-rwproxy";

/// A running proxy; dropping it stops the listeners and the monitor (sessions already running
/// finish on their own when their clients leave). [`Proxy::shutdown`] stops it gracefully.
#[derive(Debug)]
pub struct Proxy {
    pub sql_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub sql: Arc<SqlTier>,
    pub http: Option<Arc<HttpTier>>,
    pub reloader: Arc<Reloader>,
    shutdown_timeout: Duration,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // Sessions still running hold the SQL tier; its monitor stops with the proxy.
        self.sql.stop_monitor();
    }
}

impl Proxy {
    /// The backends of the current configuration.
    pub fn backends(&self) -> Arc<Backends> {
        self.sql.current().router.backends().clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.sql.current().metrics.clone()
    }

    /// The HTTP balancer's current configuration; `None` without `[http]`.
    pub fn balancer(&self) -> Option<Arc<crate::http::Balancer>> {
        self.http.as_ref().map(|h| h.balancer())
    }

    /// Stops accepting, lets open transactions and in-flight queries and HTTP requests finish
    /// for up to `shutdown_timeout`, then stops. Returns the SQL sessions still open then.
    pub async fn shutdown(self) -> usize {
        let deadline = self.shutdown_timeout;
        tracing::info!(sessions = self.sql.sessions(), ?deadline, "shutting down");
        let http = async {
            if let Some(http) = &self.http {
                http.shutdown(deadline).await;
            }
        };
        let (left, ()) = tokio::join!(self.sql.drain(deadline), http);
        if left > 0 {
            tracing::warn!(sessions = left, "sessions still open at the shutdown deadline; closing them");
        }
        left
    }
}

/// Starts the proxy from a config file; reloads read that file again.
pub async fn start_from_file(path: &Path) -> std::io::Result<Proxy> {
    let config = Config::load(path).map_err(std::io::Error::other)?;
    start_with(config, Some(path.to_path_buf())).await
}

/// Starts the proxy on the current tokio runtime.
pub async fn start(config: Config) -> std::io::Result<Proxy> {
    start_with(config, None).await
}

async fn start_with(config: Config, path: Option<PathBuf>) -> std::io::Result<Proxy> {
    let backends = Arc::new(Backends::from_config(&config));
    let primary = backends.primary().address.clone();
    let probed = probe(&primary, config.mysql.connect_timeout).await;
    // Offer only what the primary has too: a client must never be promised a capability the
    // backends would not honour, since their packets reach it unchanged.
    let caps = match &probed {
        Some(primary) => {
            OFFERED_CAPS & (primary.caps | mysql_common::constants::CapabilityFlags::CLIENT_CONNECT_ATTRS)
        }
        None => {
            tracing::warn!(%primary, "primary not reachable at start-up; offering default capabilities");
            OFFERED_CAPS
        }
    };
    let version = config
        .mysql
        .server_version
        .clone()
        .or_else(|| probed.as_ref().map(|p| p.version.clone()))
        .unwrap_or_else(|| FALLBACK_VERSION.to_string());
    let listen = config.listen_addr().ok_or_else(|| std::io::Error::other("invalid mysql.listen address"))?;
    let listener = bind(listen, "mysql.listen").await?;
    let sql_addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::new(&backends));
    let router = Arc::new(Router::from_config(backends.clone(), &config));
    let monitor = crate::monitor::spawn(&config, backends.clone(), metrics.clone());
    let http = match config.http.clone() {
        Some(http_config) => Some(crate::http::start(http_config, metrics.clone()).await?),
        None => None,
    };
    let admin_listen = config.admin.as_ref().map(|a| a.listen.get_ref().clone());
    let shutdown_timeout = config.shutdown_timeout;
    // MariaDB's extended type metadata (JSON, UUID, INET column formats) is relayed when the
    // primary offers it; the rest of the extended set changes framing or needs commands rwproxy
    // does not relay (progress reports, bulk execution, metadata cache).
    let mariadb_caps = probed.as_ref().map_or(MariadbCapabilities::empty(), |p| {
        p.mariadb_caps & MariadbCapabilities::MARIADB_CLIENT_EXTENDED_METADATA
    });
    let shared =
        Shared::new(config, router, metrics, version, (caps, mariadb_caps)).map_err(std::io::Error::other)?;
    let sql = Arc::new(SqlTier::new(sql_addr, shared, monitor));
    let reloader = Arc::new(Reloader::new(path, sql.clone(), http.clone()));
    let mut tasks = Vec::new();
    let admin_addr = match admin_listen {
        Some(listen) => {
            let addr: SocketAddr = listen.parse().map_err(std::io::Error::other)?;
            let listener = bind(addr, "admin.listen").await?;
            let bound = listener.local_addr()?;
            let state = Arc::new(Admin { sql: sql.clone(), http: http.clone(), reloader: reloader.clone() });
            tasks.push(tokio::spawn(admin::serve(listener, state)));
            tracing::info!(admin = %bound, "admin listening");
            Some(bound)
        }
        None => None,
    };
    tracing::info!(%sql_addr, "SQL proxy listening");
    tasks.push(tokio::spawn(server::serve(listener, sql.clone())));
    tasks.push(tokio::spawn(metrics_upkeep(sql.clone())));
    let http_addr = http.as_ref().map(|h| h.addr);
    Ok(Proxy { sql_addr, admin_addr, http_addr, sql, http, reloader, shutdown_timeout, tasks })
}

/// Binds a listener; the error names the address and the key it came from (a bare "Address
/// already in use" does not say which).
pub async fn bind(addr: SocketAddr, key: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({key}): {e}")))
}

/// Runs the metrics recorder's upkeep every five seconds, scraped or not.
async fn metrics_upkeep(sql: Arc<SqlTier>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        sql.current().metrics.run_upkeep();
    }
}
