//! The SQL listener: accepts clients, applies the firewall, and runs each as a session.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::accept::{Refusals, next_connection};
use crate::session;
use crate::sql_tier::SqlTier;

/// Accepts SQL clients until the task is aborted or the tier drains; each client runs in
/// its own task.
pub async fn serve(listener: TcpListener, tier: Arc<SqlTier>) {
    let mut draining = tier.draining();
    let mut refusals = Refusals::default();
    loop {
        tokio::select! {
            (stream, peer) = next_connection(&listener, "sql") => {
                let shared = tier.current();
                if !shared.config.mysql.firewall.permits(peer.ip()) {
                    shared.metrics.refused_by_firewall("sql");
                    refusals.refused("sql", peer);
                    continue;
                }
                drop(shared);
                tokio::spawn(session::run(stream, peer, tier.clone()));
            }
            _ = draining.changed() => return,
        }
    }
}
