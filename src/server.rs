//! The SQL listener and what its sessions share across reloads: the current configuration
//! (a [`Shared`], replaced whole by a reload), the monitor of its backends, the count of
//! running sessions and the drain signal of a graceful shutdown.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::drain::{Drain, Member};
use crate::session::{self, Shared};
use crate::tally::{Counted, Tally};

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

/// The SQL side of a running proxy.
pub struct SqlTier {
    pub addr: SocketAddr,
    current: ArcSwap<Shared>,
    monitor: Mutex<Vec<JoinHandle<()>>>,
    /// Tells the accept loop to stop.
    draining: watch::Sender<bool>,
    /// The running sessions, told to close at their next transaction boundary on shutdown.
    sessions: Arc<Drain>,
    /// Running sessions per client address (for `max_connections_per_source`).
    per_source: Arc<Tally<IpAddr>>,
    /// Recent failed logins per client address, for throttling password guessing.
    login_failures: Mutex<HashMap<IpAddr, Failures>>,
    /// Logged-in sessions per user (for a user's `max_connections`).
    per_user: Arc<Tally<String>>,
    /// Long data of prepared statements held for all sessions (`max_long_data_total`).
    pub long_data: crate::budget::Budget,
}

/// Failed logins from one address: how many in a row, and when the last was.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: std::time::Instant,
}

/// Failed logins from one address allowed before its denials are delayed.
const FREE_FAILURES: u32 = 5;
/// A quiet address is forgiven after this long.
const FAILURES_FORGOTTEN: Duration = Duration::from_secs(600);

impl std::fmt::Debug for SqlTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlTier").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for SqlTier {
    fn drop(&mut self) {
        self.stop_monitor();
    }
}

impl SqlTier {
    pub fn new(addr: SocketAddr, shared: Shared, monitor: Vec<JoinHandle<()>>) -> SqlTier {
        let long_data = crate::budget::Budget::new(shared.config.mysql.max_long_data_total);
        SqlTier {
            addr,
            current: ArcSwap::from_pointee(shared),
            monitor: Mutex::new(monitor),
            draining: watch::channel(false).0,
            sessions: Arc::new(Drain::default()),
            per_source: Arc::default(),
            login_failures: Mutex::new(HashMap::new()),
            per_user: Arc::default(),
            long_data,
        }
    }

    /// The configuration new statements are routed by.
    pub fn current(&self) -> Arc<Shared> {
        self.current.load_full()
    }

    /// Whether `shared` is still the current configuration (cheap: no reference count taken).
    pub fn is_current(&self, shared: &Arc<Shared>) -> bool {
        Arc::ptr_eq(&self.current.load(), shared)
    }

    /// Makes `shared` current and replaces the monitor tasks with `monitor`.
    pub fn replace(&self, shared: Shared, monitor: Vec<JoinHandle<()>>) {
        self.long_data.set_limit(shared.config.mysql.max_long_data_total);
        self.current.store(Arc::new(shared));
        if let Ok(mut tasks) = self.monitor.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
            tasks.extend(monitor);
        }
    }

    /// Records a failed login from `source`; returns how long to hold its denial: nothing for
    /// the first few, then 100 ms doubling up to 5 s, so guessing passwords gets slow.
    pub fn login_failed(&self, source: IpAddr) -> Duration {
        let Ok(mut failures) = self.login_failures.lock() else {
            return Duration::ZERO;
        };
        let now = std::time::Instant::now();
        if failures.len() > 10_000 {
            failures.retain(|_, f| now.duration_since(f.last) < FAILURES_FORGOTTEN);
        }
        let entry = failures.entry(source).or_insert(Failures { count: 0, last: now });
        if now.duration_since(entry.last) >= FAILURES_FORGOTTEN {
            entry.count = 0;
        }
        entry.count += 1;
        entry.last = now;
        match entry.count.checked_sub(FREE_FAILURES + 1) {
            None => Duration::ZERO,
            Some(extra) => {
                (Duration::from_millis(100) * 2u32.saturating_pow(extra.min(6))).min(Duration::from_secs(5))
            }
        }
    }

    /// A login from `source` succeeded: its failures are forgotten.
    pub fn login_succeeded(&self, source: IpAddr) {
        if let Ok(mut failures) = self.login_failures.lock() {
            failures.remove(&source);
        }
    }

    pub fn sessions(&self) -> usize {
        self.sessions.running()
    }

    /// Asks every session to close once it is outside a transaction and waits until all have,
    /// or `deadline` passed; returns how many were still running then.
    pub async fn drain(&self, deadline: Duration) -> usize {
        let _ = self.draining.send(true);
        let left = self.sessions.drain(deadline).await;
        self.stop_monitor();
        left
    }

    pub fn stop_monitor(&self) {
        if let Ok(mut tasks) = self.monitor.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }
}

/// Counts a session as running for as long as it lives, in all and per source address.
pub struct Running {
    tier: Arc<SqlTier>,
    _member: Member,
    /// Counted under its source address while it lives.
    source: Counted<IpAddr>,
}

impl Running {
    /// Registers a session from `source`: its id, and the receiver that completes when the
    /// proxy drains (at once if it already is).
    pub fn start(tier: Arc<SqlTier>, source: IpAddr) -> (Running, u32, oneshot::Receiver<()>) {
        let (member, id, kicked) = tier.sessions.join();
        let source = Counted::new(tier.per_source.clone(), source);
        (Running { tier, _member: member, source }, id, kicked)
    }

    pub fn tier(&self) -> &Arc<SqlTier> {
        &self.tier
    }

    /// Sessions from this session's source address when it started, itself included.
    pub fn from_source(&self) -> usize {
        self.source.count
    }

    /// Counts the logged-in session under `user` (for the user's `max_connections`) while the
    /// returned guard lives.
    pub fn count_user(&self, user: &str) -> Counted<String> {
        Counted::new(self.tier.per_user.clone(), user.to_string())
    }
}

/// Accepts SQL clients until the task is aborted or the tier drains; each client runs in
/// its own task.
pub async fn serve(listener: TcpListener, tier: Arc<SqlTier>) {
    let mut draining = tier.draining.subscribe();
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
