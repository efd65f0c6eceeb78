//! The SQL listener: accepts clients and starts a session for each.

use std::sync::Arc;

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use crate::session::{self, Shared};

/// The next connection. Accept errors (running out of file descriptors, a connection reset
/// before it was accepted) must not end a listener: they are logged and retried after a short
/// pause. `what` names the listener in the log.
pub async fn next_connection(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts SQL clients for ever; each client runs in its own task.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    loop {
        let (stream, peer) = next_connection(&listener, "sql").await;
        tokio::spawn(session::run(stream, peer, shared.clone()));
    }
}
