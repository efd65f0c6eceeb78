//! The accept loop the SQL, HTTP and admin listeners share: accepting that survives running
//! out of file descriptors, and rate-limited logging of firewall refusals.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// The next connection. Accept errors (running out of file descriptors, a connection reset
/// before it was accepted) must not end a listener: they are logged and retried after a short
/// pause. `what` names the listener in the log.
///
/// Out of file descriptors, every accept fails at once: the pause grows (up to a second) so
/// the loop does not spin, and the log gets one line a second with the count, not one a try.
pub async fn next_connection(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    let mut pause = Duration::from_millis(10);
    let mut failed = 0u64;
    let mut logged: Option<std::time::Instant> = None;
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                failed += 1;
                if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(listener = what, error = %e, failed, "accept failed; backing off");
                    logged = Some(std::time::Instant::now());
                    failed = 0;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Logs peers a listener's firewall refused: at most one line a second, with the count since
/// the last (a scan must not flood the log).
#[derive(Debug, Default)]
pub struct Refusals {
    since_log: u64,
    logged: Option<std::time::Instant>,
}

impl Refusals {
    pub fn refused(&mut self, listener: &str, peer: SocketAddr) {
        self.since_log += 1;
        if self.logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!(listener, %peer, refused = self.since_log, "connection refused by the firewall");
            self.logged = Some(std::time::Instant::now());
            self.since_log = 0;
        }
    }
}

/// Log lines about one kind of event at most once a second, each with how many happened since
/// the last: a flood of refused or timed-out connections writes a line a second, not a line a
/// connection. Shared by the threads that see the events.
#[derive(Debug, Default)]
pub struct LogLimiter {
    kinds: std::sync::Mutex<std::collections::HashMap<&'static str, (u64, Option<std::time::Instant>)>>,
}

impl LogLimiter {
    /// Counts one event of `kind`; returns how many to report when a line is due now.
    pub fn note(&self, kind: &'static str) -> Option<u64> {
        let mut kinds = self.kinds.lock().ok()?;
        let (count, logged) = kinds.entry(kind).or_insert((0, None));
        *count += 1;
        if logged.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return None;
        }
        *logged = Some(std::time::Instant::now());
        Some(std::mem::take(count))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_flood_is_one_line_a_second() {
        let limiter = super::LogLimiter::default();
        assert_eq!(limiter.note("silent"), Some(1), "the first is logged");
        for _ in 0..1000 {
            assert_eq!(limiter.note("silent"), None);
        }
        assert_eq!(limiter.note("other"), Some(1), "kinds are counted apart");
    }
}
