//! Backends as the data path sees them, and connections to them.
//!
//! A [`Backend`] is one configured server with passive health: a failed connect marks it
//! unusable for reads for `retry_failed_after`, so a dead replica costs one failed connect, not
//! one per query. Active health checks and lag come with the monitor.

pub mod auth;
mod connection;
mod health;
mod pool;
mod query;
mod relay;
mod statements;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use auth as auth_plugins;
pub use connection::{BackendConn, BackendError, Login, Probed, mariadb_caps, probe, set_names_for};
pub use health::{Health, Sample, State};
pub use pool::{Pool, PoolKey, Pooled, SettingsTag, checkout, park, release, reset};
pub use query::{Cell, QueryError};
pub use relay::{Digest, RelayError, Side, relay_response};
pub use statements::{FastIds, MAX_CACHED_STATEMENTS, StatementCache, context_key};

use crate::config::{BackendTls, Config, Role};
use crate::consistency::Known;

#[derive(Debug)]
pub struct Backend {
    pub index: usize,
    pub name: String,
    pub address: String,
    pub role: Role,
    /// Milliseconds since `Backends::epoch` until which this backend is skipped for reads.
    skip_until_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Connections lost during statements within the current window: (window start in ms
    /// since the epoch, count). A statement can make a server drop its connection (a packet
    /// over its `max_allowed_packet`): one loss is no evidence against the backend.
    losses: Mutex<(u64, u32)>,
    /// "backend failed" lines: one a second, with the count.
    failure_log: crate::accept::LogLimiter,
    /// What the monitor says, and the counters shown on the status page.
    pub health: Health,
    /// Idle connections for reuse, and the `max_connections` cap.
    pub pool: Pool,
    /// The replication position it is known to have applied.
    pub known: Known,
    /// `tls` as configured (a reload that changes it makes a new backend).
    /// The TLS its connections use (the configured one, or "preferred").
    pub tls_config: BackendTls,
    /// The TLS connector built from it; the error when its files could not be loaded (then
    /// connections fail rather than fall back to plaintext).
    pub tls: Result<Option<crate::tls::Client>, String>,
    /// `server_public_key`, read: caching_sha2 full authentication without TLS uses it.
    pub public_key: Result<Option<Vec<u8>>, String>,
    /// `allow_public_key_retrieval`.
    pub public_key_retrieval: bool,
    /// Drained by an operator (`POST /backends/<name>/drain`): no new reads, its idle
    /// connections closed; sessions holding one of its connections finish.
    drained: AtomicBool,
}

fn tls_client(b: &crate::config::BackendConfig) -> Result<Option<crate::tls::Client>, String> {
    let tls = b.tls_setting();
    if tls.mode == crate::config::TlsMode::Disabled {
        return Ok(None);
    }
    // The default (no `tls`) checks no certificate, as a MySQL client's PREFERRED does: only a
    // configured table that turns the check off is worth a warning.
    if b.tls.is_some() && tls.verify == crate::config::Verify::None {
        tracing::warn!(backend = %b.name, "TLS to this backend does not verify its certificate (verify = \"none\")");
    }
    crate::tls::client(&tls, &b.address).map(Some).map_err(|e| {
        tracing::error!(backend = %b.name, error = %e, "TLS to this backend cannot be set up; its connections fail");
        e.to_string()
    })
}

impl Backend {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Whether an operator drained it (it then takes no new reads).
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Drains it or puts it back into service; returns whether that changed anything.
    pub fn set_drained(&self, drained: bool) -> bool {
        let changed = self.drained.swap(drained, Ordering::Relaxed) != drained;
        if changed && drained {
            tracing::warn!(backend = %self.name, "drained by the operator: no new reads; its sessions finish");
        } else if changed {
            tracing::warn!(backend = %self.name, "back in service (the operator's drain ended)");
        }
        changed
    }
}

/// Connections lost during statements within [`LOSS_WINDOW`] that take a backend out of the
/// read rotation (ProxySQL's shunning needs several errors a second too).
pub const LOSSES_TO_FAIL: u32 = 3;
pub const LOSS_WINDOW: Duration = Duration::from_secs(10);

/// Every configured backend, in config order.
#[derive(Debug)]
pub struct Backends {
    list: Vec<Arc<Backend>>,
    /// Index of the current primary: the configured one, or the one the monitor found when
    /// `detect_primary` is on.
    primary: AtomicUsize,
    epoch: Instant,
    retry_after: Duration,
    /// The backends the monitor last found writable, when `detect_primary` looks (more than
    /// one is a misconfiguration shown on `/status`).
    writable: Mutex<Vec<usize>>,
    /// With `detect_primary`: why the primary is not known for sure yet (a cold start before
    /// the monitor has heard every backend, or servers that contradict each other); writes
    /// wait for it, then are refused with this reason. `None`: known.
    unconfirmed: Mutex<Option<String>>,
    /// `unconfirmed` is `None`: read on every write without a lock.
    confirmed: AtomicBool,
}

impl Backends {
    pub fn from_config(config: &Config) -> Backends {
        Backends::reconfigured(config, None)
    }

    /// The backends of `config`. One that `previous` (the configuration a reload replaces)
    /// has at the same position with the same name, address, role and limit is carried over
    /// as it is: its health, lag history and idle connections survive the reload.
    pub fn reconfigured(config: &Config, previous: Option<&Backends>) -> Backends {
        let list: Vec<Arc<Backend>> = config
            .backends()
            .enumerate()
            .map(|(index, b)| {
                let same = previous.and_then(|p| p.get(index)).filter(|old| {
                    old.name == b.name
                        && old.address == b.address
                        && old.role == b.role
                        && old.pool.max_connections() == b.max_connections
                        && old.pool.workers() == config.mysql.workers()
                        && old.tls_config == b.tls_setting()
                        && old.public_key_retrieval == b.allow_public_key_retrieval
                        && b.server_public_key.is_none()
                });
                match same {
                    Some(old) => old.clone(),
                    None => Arc::new(Backend {
                        index,
                        name: b.name.clone(),
                        address: b.address.clone(),
                        role: b.role,
                        skip_until_ms: AtomicU64::new(0),
                        last_error: Mutex::new(None),
                        losses: Mutex::new((0, 0)),
                        failure_log: crate::accept::LogLimiter::default(),
                        health: Health::default(),
                        pool: Pool::new(
                            b.max_connections,
                            config.mysql.max_idle_connections,
                            config.mysql.workers(),
                        ),
                        known: Known::default(),
                        tls_config: b.tls_setting(),
                        tls: tls_client(b),
                        public_key: b
                            .server_public_key
                            .as_deref()
                            .map(|path| auth::read_public_key(std::path::Path::new(path)))
                            .transpose(),
                        public_key_retrieval: b.allow_public_key_retrieval,
                        // A drain outlives a reload that rebuilds the backend under its name.
                        drained: AtomicBool::new(
                            previous.and_then(|p| p.named(&b.name)).is_some_and(|old| old.is_drained()),
                        ),
                    }),
                }
            })
            .collect();
        let configured = list.iter().position(|b| b.role == Role::Primary).unwrap_or(0);
        let follows_servers = config.monitor.enabled && config.monitor.detect_primary;
        // What the servers said outlives a reload: the primary stays the one the monitor
        // followed (a failover the file does not know of), as long as it is still configured.
        let kept = previous
            .filter(|_| follows_servers)
            .and_then(|p| list.iter().position(|b| b.name == p.primary().name));
        let primary = kept.unwrap_or(configured);
        let unconfirmed = match previous {
            Some(p) if follows_servers => p.unconfirmed(),
            _ if follows_servers => {
                Some("rwproxy has not heard from every backend yet (detect_primary)".to_string())
            }
            _ => None,
        };
        Backends {
            list,
            primary: AtomicUsize::new(primary),
            // Kept across reloads: passive-failure deadlines and history are measured from it.
            epoch: previous.map_or_else(Instant::now, |p| p.epoch),
            retry_after: config.mysql.routing.retry_failed_after,
            writable: Mutex::new(Vec::new()),
            confirmed: AtomicBool::new(unconfirmed.is_none()),
            unconfirmed: Mutex::new(unconfirmed),
        }
    }

    /// Why the primary is not known for sure, when it is not (writes wait, then are refused).
    pub fn unconfirmed(&self) -> Option<String> {
        self.unconfirmed.lock().ok().and_then(|u| u.clone())
    }

    /// The monitor's verdict on the primary: known (`None`) or why not.
    pub fn set_unconfirmed(&self, why: Option<String>) {
        if let Ok(mut u) = self.unconfirmed.lock() {
            self.confirmed.store(why.is_none(), Ordering::Release);
            *u = why;
        }
    }

    /// Whether the primary is known for sure (one atomic load).
    pub fn is_confirmed(&self) -> bool {
        self.confirmed.load(Ordering::Acquire)
    }

    pub fn all(&self) -> &[Arc<Backend>] {
        &self.list
    }

    pub fn get(&self, index: usize) -> Option<&Arc<Backend>> {
        self.list.get(index)
    }

    pub fn named(&self, name: &str) -> Option<&Arc<Backend>> {
        self.list.iter().find(|b| b.name == name)
    }

    pub fn primary(&self) -> &Arc<Backend> {
        let index = self.primary.load(Ordering::Relaxed);
        self.list.get(index).unwrap_or(&self.list[0])
    }

    /// Makes `index` the primary (a failover the monitor followed).
    pub fn set_primary(&self, index: usize) {
        if index < self.list.len() {
            let old = self.primary.swap(index, Ordering::Relaxed);
            if old != index {
                tracing::warn!(old = %self.list[old].name, new = %self.list[index].name, "primary changed");
            }
        }
    }

    /// Records which backends are writable (`detect_primary`).
    pub fn set_writable(&self, writable: &[usize]) {
        if let Ok(mut w) = self.writable.lock() {
            writable.clone_into(&mut w);
        }
    }

    /// The backends found writable by the last failover check (empty without `detect_primary`).
    pub fn writable(&self) -> Vec<usize> {
        self.writable.lock().map(|w| w.clone()).unwrap_or_default()
    }

    pub fn is_primary(&self, index: usize) -> bool {
        self.primary.load(Ordering::Relaxed) == index
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Time since these backends were set up (the proxy's start).
    pub fn uptime(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the backend can take reads now: the monitor says it is up, no connect to it
    /// failed within `retry_failed_after`, and no operator drained it.
    pub fn is_usable(&self, index: usize) -> bool {
        self.list.get(index).is_some_and(|b| {
            // 0 once a query succeeded there again: no clock read on the steady path.
            let until = b.skip_until_ms.load(Ordering::Relaxed);
            b.health.state() == State::Up
                && (until == 0 || until <= self.now_ms())
                && !b.is_drained()
                && b.health.stale().is_none()
        })
    }

    /// Records a failure of the backend itself seen by the data path (connect refused, login
    /// refused, no answer): it leaves the read rotation for `retry_failed_after` at once.
    pub fn mark_failed(&self, index: usize, error: &str) {
        if let Some(b) = self.list.get(index) {
            let until = self.now_ms() + u64::try_from(self.retry_after.as_millis()).unwrap_or(u64::MAX / 2);
            b.skip_until_ms.store(until, Ordering::Relaxed);
            if let Ok(mut last) = b.last_error.lock() {
                *last = Some(error.to_string());
            }
            if let Some(count) = b.failure_log.note("failed") {
                tracing::warn!(backend = %b.name, address = %b.address, %error, failures = count, "backend failed; skipped for reads for {:?}", self.retry_after);
            }
        }
    }

    /// Records a connection lost during a statement. A statement can make a server close its
    /// connection (one over its `max_allowed_packet`, say): the backend leaves the read
    /// rotation only after [`LOSSES_TO_FAIL`] losses within [`LOSS_WINDOW`].
    pub fn lost_connection(&self, index: usize, error: &str) {
        let Some(b) = self.list.get(index) else { return };
        let now = self.now_ms();
        let count = match b.losses.lock() {
            Ok(mut losses) => {
                if now.saturating_sub(losses.0) > LOSS_WINDOW.as_millis() as u64 {
                    *losses = (now, 0);
                }
                losses.1 += 1;
                let count = losses.1;
                if count >= LOSSES_TO_FAIL {
                    // It leaves the rotation now; the next window starts empty.
                    *losses = (now, 0);
                }
                count
            }
            Err(_) => LOSSES_TO_FAIL,
        };
        if let Ok(mut last) = b.last_error.lock() {
            *last = Some(error.to_string());
        }
        if count >= LOSSES_TO_FAIL {
            self.mark_failed(index, &format!("{count} connections lost within {LOSS_WINDOW:?}: {error}"));
        }
    }

    /// Records a success: the backend is usable again.
    pub fn mark_ok(&self, index: usize) {
        // Read first: a swap would write the shared line on every query.
        if let Some(b) = self.list.get(index)
            && b.skip_until_ms.load(Ordering::Relaxed) != 0
            && b.skip_until_ms.swap(0, Ordering::Relaxed) != 0
        {
            tracing::info!(backend = %b.name, "backend usable again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends() -> Backends {
        let text = "[mysql]\nlisten = \"127.0.0.1:0\"\n[[mysql.users]]\nname = \"app\"\npassword = \"app\"\n\
                    [[mysql.backends]]\nname = \"p\"\naddress = \"127.0.0.1:1\"\nrole = \"primary\"\n\
                    [[mysql.backends]]\nname = \"r\"\naddress = \"127.0.0.1:2\"\nrole = \"replica\"\n";
        Backends::from_config(&Config::from_toml(text).expect("config"))
    }

    #[test]
    fn one_lost_connection_is_no_evidence_several_are() {
        let b = backends();
        for _ in 1..LOSSES_TO_FAIL {
            b.lost_connection(1, "lost");
            assert!(b.is_usable(1), "a statement may have made the server close it");
        }
        b.lost_connection(1, "lost");
        assert!(!b.is_usable(1), "{LOSSES_TO_FAIL} within the window take it out");
        assert!(b.get(1).and_then(|r| r.last_error()).is_some_and(|e| e.contains("connections lost")));
        b.mark_ok(1);
        assert!(b.is_usable(1), "a success brings it back");
        b.mark_failed(0, "connect refused");
        assert!(!b.is_usable(0), "a connect failure takes it out at once");
    }
}
