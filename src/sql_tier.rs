//! What the SQL tier's sessions share: the current configuration (a [`Shared`], replaced whole
//! by a reload), the count of running sessions and their tallies, and the drain signal of a
//! graceful shutdown. Sessions and the listener both use it; it uses neither.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use mysql_common::constants::CapabilityFlags as Caps;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::consistency::PrimaryPosition;
use crate::drain::{Drain, Member};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::tally::{Counted, Tally};

/// What every session shares: the config snapshot, the router, what the greeting says. A
/// reload builds a new one; sessions move to it between transactions.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    pub server_version: String,
    /// Capabilities offered to clients: what rwproxy relays, narrowed to what the primary has.
    pub caps: Caps,
    /// MariaDB extended capabilities offered to clients (extended type metadata, when the
    /// primary has it).
    pub mariadb_caps: mysql_common::constants::MariadbCapabilities,
    /// The primary's current position, shared by the reads that need it (`global`
    /// consistency, and a write whose GTID did not show).
    pub primary_position: PrimaryPosition,
    /// TLS offered to clients (`[mysql.tls]`), loaded again by every reload.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Shared {
    pub fn new(
        config: Config,
        router: Arc<Router>,
        metrics: Arc<Metrics>,
        server_version: String,
        (caps, mariadb_caps): (Caps, mysql_common::constants::MariadbCapabilities),
    ) -> Result<Shared, crate::tls::TlsError> {
        let (user, password) = config.monitor_login();
        let primary_position = PrimaryPosition::new(user, password, config.mysql.connect_timeout);
        let tls = match &config.mysql.tls {
            Some(files) => Some(crate::tls::server_config(
                files.cert.get_ref().as_ref(),
                files.key.get_ref().as_ref(),
                &[],
            )?),
            None => None,
        };
        Ok(Shared { config, router, metrics, server_version, caps, mariadb_caps, primary_position, tls })
    }

    /// What the greeting offers: the relayed capabilities, and TLS when configured.
    pub fn offered_caps(&self) -> Caps {
        if self.tls.is_some() { self.caps | Caps::CLIENT_SSL } else { self.caps }
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
    login_failures: Mutex<HashMap<(IpAddr, String), Failures>>,
    /// When the next failed login over the ceiling may be answered: failed logins are answered
    /// at most [`FAILED_LOGINS_PER_SECOND`] a second over all clients, however many connections
    /// guess in parallel.
    next_denial: Mutex<std::time::Instant>,
    /// Logged-in sessions per user (for a user's `max_connections`).
    per_user: Arc<Tally<String>>,
    /// Long data of prepared statements held for all sessions (`max_long_data_total`).
    pub long_data: crate::budget::Budget,
    /// Logged-in sessions by id, for `KILL`.
    pub registry: Arc<crate::sessions::Registry>,
    /// Statement digests (`GET /queries`); they outlive reloads.
    pub digests: crate::digests::Digests,
    /// The newest write position of each user (`consistency = "user"`); outlives reloads.
    pub user_positions: crate::consistency::UserPositions,
    /// Refusals and login timeouts are logged a line a second, with their count.
    pub refusal_log: crate::accept::LogLimiter,
    /// Client packets over 16 KiB being received, all sessions together
    /// (`mysql.max_packet_buffers`).
    pub packets: crate::budget::Budget,
    /// Numbers prepared statements that must never share a server statement (never reused,
    /// also across a session's resets).
    pub own_statements: std::sync::atomic::AtomicU64,
}

/// Failed logins from one address: how many in a row, and when the last was.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: std::time::Instant,
}

/// Failed logins answered per second over all clients (the rest wait their turn).
const FAILED_LOGINS_PER_SECOND: u32 = 20;
/// The longest a denial is held.
const MAX_DENIAL_HOLD: Duration = Duration::from_secs(10);

/// Failed logins of one account from one address allowed before its denials are delayed.
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
        let mysql = &shared.config.mysql;
        let digests = crate::digests::Digests::new(mysql.workers(), mysql.query_digests_max);
        let packets = crate::budget::Budget::new(mysql.max_packet_buffers.max(mysql.max_packet_size));
        SqlTier {
            addr,
            current: ArcSwap::from_pointee(shared),
            monitor: Mutex::new(monitor),
            draining: watch::channel(false).0,
            sessions: Arc::new(Drain::default()),
            per_source: Arc::default(),
            login_failures: Mutex::new(HashMap::new()),
            next_denial: Mutex::new(std::time::Instant::now()),
            per_user: Arc::default(),
            long_data,
            registry: Arc::default(),
            digests,
            user_positions: crate::consistency::UserPositions::default(),
            refusal_log: crate::accept::LogLimiter::default(),
            packets,
            own_statements: std::sync::atomic::AtomicU64::new(1),
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
        let mysql = &shared.config.mysql;
        self.packets.set_limit(mysql.max_packet_buffers.max(mysql.max_packet_size));
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
    pub fn login_failed(&self, source: IpAddr, user: &str) -> Duration {
        let backoff = self.backoff(source, user);
        // The global ceiling: each denial takes the next free slot of the second.
        let Ok(mut next) = self.next_denial.lock() else { return backoff };
        let now = std::time::Instant::now();
        let slot = (*next).max(now);
        *next = slot + Duration::from_secs(1) / FAILED_LOGINS_PER_SECOND;
        backoff.max(slot.saturating_duration_since(now)).min(MAX_DENIAL_HOLD)
    }

    /// The hold for repeated failures of `user` from `source`: none for the first few, then
    /// 100 ms doubling up to 5 s.
    fn backoff(&self, source: IpAddr, user: &str) -> Duration {
        let Ok(mut failures) = self.login_failures.lock() else {
            return Duration::ZERO;
        };
        let now = std::time::Instant::now();
        if failures.len() > 10_000 {
            failures.retain(|_, f| now.duration_since(f.last) < FAILURES_FORGOTTEN);
        }
        let entry = failures.entry((source, user.to_string())).or_insert(Failures { count: 0, last: now });
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

    /// A login of `user` from `source` succeeded: that account's failures from there are
    /// forgotten (not another account's: a valid login does not buy guesses at another).
    pub fn login_succeeded(&self, source: IpAddr, user: &str) {
        if let Ok(mut failures) = self.login_failures.lock() {
            failures.remove(&(source, user.to_string()));
        }
    }

    /// Changes when the tier starts to drain: the listener stops accepting.
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    pub fn sessions(&self) -> usize {
        self.sessions.running()
    }

    /// Wakes session `id` between commands (it then finds itself killed).
    pub fn kick(&self, id: u32) {
        self.sessions.kick(id);
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
