//! The monitor: one task per backend, checking health and replication lag every `interval`
//! on its own connections, moving backends in and out of the read pool with rise/fall
//! hysteresis, and following a failover when asked to.

mod check;
mod hysteresis;
mod topology;

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinHandle;

pub use check::{CheckSettings, Checker, HeartbeatClock, Report};
pub use hysteresis::Hysteresis;

use crate::backend::{Backends, Sample, State};
use crate::config::Config;
use crate::metrics::Metrics;

/// How long the status page's history reaches back.
const HISTORY_SECONDS: f64 = 300.0;

struct Context {
    backends: Arc<Backends>,
    metrics: Arc<Metrics>,
    clock: HeartbeatClock,
    config: crate::config::MonitorConfig,
    settings: CheckSettings,
    failover: std::sync::Mutex<Failover>,
}

/// What `detect_primary` has seen: the backend that alone is writable, and in how many of its
/// own checks in a row.
#[derive(Debug, Default)]
struct Failover {
    candidate: Option<usize>,
    streak: u32,
    /// Several writable backends were seen (and logged) and not resolved since.
    several_writable: bool,
    /// Backends checked at least once: nothing moves before every backend has had its say
    /// (at start, the first answer must not win the primary role).
    checked: Vec<bool>,
}

/// Starts one monitor task per backend; abort the handles to stop them.
pub fn spawn(config: &Config, backends: Arc<Backends>, metrics: Arc<Metrics>) -> Vec<JoinHandle<()>> {
    if !config.monitor.enabled {
        return Vec::new();
    }
    let (user, password) = config.monitor_login();
    let settings = CheckSettings {
        user,
        password,
        heartbeat_table: config.monitor.heartbeat.then(|| config.monitor.heartbeat_table.clone()),
        max_lag: config.monitor.max_replication_lag,
        // Always: `/health` reports a primary that refuses writes, and `detect_primary` needs it.
        read_only_check: true,
    };
    let ctx = Arc::new(Context {
        backends,
        metrics,
        clock: HeartbeatClock::default(),
        config: config.monitor.clone(),
        settings,
        failover: std::sync::Mutex::new(Failover::default()),
    });
    (0..ctx.backends.len()).map(|index| tokio::spawn(watch(ctx.clone(), index))).collect()
}

async fn watch(ctx: Arc<Context>, index: usize) {
    let Some(backend) = ctx.backends.get(index).cloned() else {
        return;
    };
    let mut checker =
        Checker::new(backend.address.clone(), Some(backend.tls_config.clone()), ctx.settings.clone());
    // After a reload the checks restart on a backend that may already be out: start from its
    // side, so a backend that is down needs `rise` good checks to come back, as always.
    let mut hysteresis = if backend.health.state() == State::Up {
        Hysteresis::new(ctx.config.rise, ctx.config.fall)
    } else {
        Hysteresis::new_down(ctx.config.rise, ctx.config.fall)
    };
    let mut ticker = tokio::time::interval(ctx.config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let keep = (HISTORY_SECONDS / ctx.config.interval.as_secs_f64()).ceil() as usize;
    let mut fence_failed = false;
    loop {
        ticker.tick().await;
        let started = Instant::now();
        if backend.health.stale().is_some() && backend.health.read_only() == Some(false) {
            // Bounded like a check: a server that hangs does not hold the monitor.
            match tokio::time::timeout(ctx.config.timeout, checker.fence()).await {
                Ok(Ok(())) => {
                    tracing::warn!(backend = %backend.name, "stale former primary fenced: read_only = ON")
                }
                Ok(Err(e)) if !fence_failed => {
                    fence_failed = true;
                    tracing::warn!(backend = %backend.name, error = %e, "stale former primary could not be fenced (the monitor user needs SUPER or READ_ONLY ADMIN); it stays out of rotation");
                }
                _ => {}
            }
        }
        let primary = ctx.backends.is_primary(index);
        // After a failed check, a backend that is still up is checked against `interval` too
        // (HAProxy's fastinter): a hung server is out after fall × interval + timeout, not
        // fall × timeout, and the sessions waiting on it are released that much sooner.
        let limit = if hysteresis.is_failing() {
            ctx.config.timeout.min(ctx.config.interval)
        } else {
            ctx.config.timeout
        };
        let report = match tokio::time::timeout(limit, checker.check(primary, &ctx.clock)).await {
            Ok(report) => report,
            Err(_) => {
                // The connection was left in the middle of a check: a new one next time.
                checker.forget_connection();
                Report::down(format!("check timed out after {limit:?}"))
            }
        };
        ctx.metrics.monitor_check(index, started.elapsed());
        apply(&ctx, index, &mut hysteresis, report);
        let sample = Sample {
            at: ctx.backends.uptime().as_secs_f64(),
            lag_ms: backend.health.lag().map(|l| l.as_secs_f64() * 1000.0),
            queries: backend.health.queries(),
        };
        backend.health.record(sample, keep);
    }
}

fn apply(ctx: &Context, index: usize, hysteresis: &mut Hysteresis, report: Report) {
    let Some(backend) = ctx.backends.get(index) else {
        return;
    };
    let health = &backend.health;
    health.set_lag(report.lag);
    health.set_read_only(report.read_only);
    if report.source.is_some() {
        health.set_source(report.source.clone());
    }
    if let Some(heartbeat) = &report.heartbeat {
        health.set_heartbeat_problem(heartbeat.clone());
    }
    if report.problem.is_none() || report.position.is_some() {
        let position = report.position.as_deref().and_then(|p| crate::consistency::Position::parse(p).ok());
        backend.known.set(position);
    }
    if let Some(gtid) = report.gtid {
        let before = backend.known.gtid();
        backend.known.set_gtid(gtid);
        if !gtid && before != Some(false) && ctx.backends.is_primary(index) {
            tracing::warn!(backend = %backend.name, "the primary writes no GTIDs (binary log or gtid_mode off): reads after a session's write go to the primary for max_replication_lag");
        }
    }
    let old = health.state();
    match (hysteresis.observe(report.problem.is_none()), &report.problem) {
        (Some(true), _) => health.set_state(State::Up, ""),
        (Some(false), Some((state, reason))) => {
            health.set_state(*state, reason);
            ctx.metrics.demotion(index, *state);
        }
        // Still out: keep the state and reason current (lag value, lagging → down).
        (None, Some((state, reason))) if !hysteresis.is_up() => health.set_state(*state, reason),
        _ => {}
    }
    let new = health.state();
    if new != old {
        let reason = if new == State::Up { "checks passed".to_string() } else { health.reason() };
        if new == State::Up {
            tracing::info!(backend = %backend.name, from = old.as_str(), to = new.as_str(), %reason, "backend state changed");
        } else {
            tracing::warn!(backend = %backend.name, from = old.as_str(), to = new.as_str(), %reason, "backend state changed");
        }
    }
    if ctx.config.detect_primary
        && let Ok(mut failover) = ctx.failover.lock()
    {
        follow_failover(&ctx.backends, &mut failover, index, ctx.config.rise);
    }
}

/// With `detect_primary`, once every backend has been checked, after each check of backend
/// `checked`:
///
/// - **The servers first.** The backend the replicas replicate from, when it is writable and
///   replicates from no one itself, is the primary — at once, whatever the file says (a failover
///   done outside rwproxy, then a reload or a restart, must not send writes back to the old
///   primary). Every other backend that replicates from no one is a stale former primary: no
///   reads, and fenced (`read_only`) when the monitor user may.
/// - **Else the writable backend**: a backend becomes the primary only when it alone answers as
///   writable (`read_only = OFF`; a backend that does not answer is not), in `rise` of its own
///   checks in a row. With several writable backends nothing moves (a replica someone forgot to
///   make read-only must not take the writes): the current primary stays, and the log and
///   `/status` say so — and at a cold start, when nothing was known before, writes are refused
///   rather than sent to a guess.
fn follow_failover(backends: &Backends, failover: &mut Failover, checked: usize, rise: u32) {
    if failover.checked.len() != backends.len() {
        failover.checked = vec![false; backends.len()];
    }
    if let Some(seen) = failover.checked.get_mut(checked) {
        *seen = true;
    }
    if failover.checked.iter().any(|seen| !seen) {
        return;
    }
    let writable: Vec<usize> =
        backends.all().iter().filter(|b| b.health.read_only() == Some(false)).map(|b| b.index).collect();
    backends.set_writable(&writable);
    let nodes: Vec<topology::Node> = backends
        .all()
        .iter()
        .map(|b| topology::Node {
            address: b.address.clone(),
            read_only: b.health.read_only(),
            source: b.health.source(),
        })
        .collect();
    if let Some(leader) = topology::leader(&nodes) {
        follow_leader(backends, &nodes, leader);
        failover.several_writable = false;
        failover.candidate = None;
        return;
    }
    if writable.len() > 1 {
        if !failover.several_writable {
            let names: Vec<&str> =
                writable.iter().filter_map(|i| backends.get(*i)).map(|b| b.name.as_str()).collect();
            tracing::warn!(writable = ?names, primary = %backends.primary().name, "several backends are writable; the primary stays where it is (set read_only/super_read_only on the replicas)");
        }
        failover.several_writable = true;
        failover.candidate = None;
        if backends.unconfirmed().is_some() {
            let names: Vec<&str> =
                writable.iter().filter_map(|i| backends.get(*i)).map(|b| b.name.as_str()).collect();
            backends.set_unconfirmed(Some(format!(
                "several backends are writable ({}) and no replica says which one it follows",
                names.join(", ")
            )));
        }
        return;
    }
    failover.several_writable = false;
    let Some(&only) = writable.first() else {
        failover.candidate = None;
        if backends.unconfirmed().is_some() {
            backends.set_unconfirmed(Some("no backend is writable".into()));
        }
        return;
    };
    if backends.is_primary(only) {
        failover.candidate = None;
        backends.set_unconfirmed(None);
        return;
    }
    if failover.candidate != Some(only) {
        failover.candidate = Some(only);
        failover.streak = 0;
    }
    if checked == only {
        failover.streak += 1;
    }
    if failover.streak >= rise.max(1) {
        backends.set_primary(only);
        backends.set_unconfirmed(None);
        failover.candidate = None;
    }
}

/// The replicas follow `leader`: it is the primary, and every other backend that replicates
/// from no one is stale.
fn follow_leader(backends: &Backends, nodes: &[topology::Node], leader: usize) {
    let Some(primary) = backends.get(leader) else { return };
    if !backends.is_primary(leader) {
        tracing::warn!(from = %backends.primary().name, to = %primary.name, "the replicas follow another backend: it is the primary now");
        backends.set_primary(leader);
    }
    backends.set_unconfirmed(None);
    for (index, node) in nodes.iter().enumerate() {
        let Some(backend) = backends.get(index) else { continue };
        let stale = index != leader && node.source == Some(None);
        let why = stale.then(|| {
            format!(
                "stale former primary: replicates from no one while the replicas follow {}{}",
                primary.name,
                if node.read_only == Some(false) { " (and is writable)" } else { "" }
            )
        });
        if why.is_some() && backend.health.stale().is_none() {
            tracing::warn!(backend = %backend.name, primary = %primary.name, "stale former primary: it takes no reads and no writes");
        }
        backend.health.set_stale(why);
    }
}
