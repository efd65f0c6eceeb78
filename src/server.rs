//! The SQL listener: accepts clients and starts a session for each.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::session::{self, Shared};

/// Accepts clients until the listener fails; each client runs in its own task.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Running out of file descriptors must not end the proxy; back off briefly.
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(session::run(stream, peer, shared.clone()));
    }
}
