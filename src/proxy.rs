//! Putting the pieces together: probe the primary, bind the listeners, start the monitor.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::backend::{Backends, probe};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::session::Shared;
use crate::session::handshake::OFFERED_CAPS;
use crate::{monitor, server};

/// Announced when neither the config nor the primary gives a version.
const FALLBACK_VERSION: &str = "8.0.0-rwproxy";

/// A running proxy; dropping it stops the listeners and the monitor (sessions already running
/// finish on their own when their clients leave).
#[derive(Debug)]
pub struct Proxy {
    pub sql_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub http: Option<Arc<crate::http::Balancer>>,
    pub backends: Arc<Backends>,
    pub metrics: Arc<Metrics>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the proxy on the current tokio runtime.
pub async fn start(config: Config) -> std::io::Result<Proxy> {
    let backends = Arc::new(Backends::from_config(&config));
    let primary = backends.primary().address.clone();
    let probed = probe(&primary, config.mysql.connect_timeout).await;
    // Offer only what the primary has too: a client must never be promised a capability the
    // backends would not honour, since their packets reach it unchanged.
    let caps = match &probed {
        Some((_, primary_caps)) => {
            OFFERED_CAPS & (*primary_caps | mysql_common::constants::CapabilityFlags::CLIENT_CONNECT_ATTRS)
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
        .or_else(|| probed.map(|(v, _)| v))
        .unwrap_or_else(|| FALLBACK_VERSION.to_string());
    let listen = config.listen_addr().ok_or_else(|| std::io::Error::other("invalid mysql.listen address"))?;
    let listener = TcpListener::bind(listen).await?;
    let sql_addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::new(&backends));
    let routing = &config.mysql.routing;
    let router = Arc::new(Router::new(
        backends.clone(),
        routing.reads_include_primary,
        config.monitor.all_replicas_down,
    ));
    let mut tasks = monitor::spawn(&config, backends.clone(), metrics.clone());
    let (http_addr, http) = match config.http.clone() {
        Some(http_config) => {
            let (addr, balancer, http_tasks) = crate::http::start(http_config, &metrics).await?;
            tasks.extend(http_tasks);
            (Some(addr), Some(balancer))
        }
        None => (None, None),
    };
    let admin_addr = match &config.admin {
        Some(admin) => {
            let addr: SocketAddr = admin.listen.get_ref().parse().map_err(std::io::Error::other)?;
            let listener = TcpListener::bind(addr).await?;
            let bound = listener.local_addr()?;
            let state = Arc::new(AdminState {
                http: http.clone(),
                router: router.clone(),
                metrics: metrics.clone(),
                monitor: config.monitor.clone(),
            });
            tasks.push(tokio::spawn(async move {
                if let Err(e) = admin::serve(listener, state).await {
                    tracing::error!(error = %e, "admin listener stopped");
                }
            }));
            tracing::info!(admin = %bound, "admin listening");
            Some(bound)
        }
        None => None,
    };
    let shared = Arc::new(Shared::new(config, router, metrics.clone(), version, caps));
    tracing::info!(%sql_addr, "SQL proxy listening");
    tasks.push(tokio::spawn(async move {
        if let Err(e) = server::serve(listener, shared).await {
            tracing::error!(error = %e, "SQL listener stopped");
        }
    }));
    Ok(Proxy { sql_addr, admin_addr, http_addr, http, backends, metrics, tasks })
}
