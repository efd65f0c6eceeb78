//! Putting the pieces together: probe the primary, bind the listener, serve.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::backend::{Backends, probe};
use crate::config::Config;
use crate::router::Router;
use crate::server;
use crate::session::Shared;
use crate::session::handshake::OFFERED_CAPS;

/// Announced when neither the config nor the primary gives a version.
const FALLBACK_VERSION: &str = "8.0.0-rwproxy";

/// A running SQL proxy; dropping it stops the listener (sessions already running finish on
/// their own when their clients leave).
#[derive(Debug)]
pub struct Proxy {
    pub sql_addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
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
            OFFERED_CAPS
                & (*primary_caps | mysql_common::constants::CapabilityFlags::CLIENT_CONNECT_ATTRS)
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
    let listen = config
        .listen_addr()
        .ok_or_else(|| std::io::Error::other("invalid mysql.listen address"))?;
    let listener = TcpListener::bind(listen).await?;
    let sql_addr = listener.local_addr()?;
    let router = Router::new(backends, config.mysql.routing.reads_include_primary);
    let shared = Arc::new(Shared::new(config, router, version, caps));
    tracing::info!(%sql_addr, "SQL proxy listening");
    let accept = tokio::spawn(async move {
        if let Err(e) = server::serve(listener, shared).await {
            tracing::error!(error = %e, "SQL listener stopped");
        }
    });
    Ok(Proxy { sql_addr, accept })
}
