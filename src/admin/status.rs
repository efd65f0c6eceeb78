//! The `/status` JSON document.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::AdminState;

/// A backend pool's limits and what it did (ProxySQL users read the same from its
/// connection-pool statistics).
fn pool_status(pool: &crate::backend::Pool) -> Value {
    let stats = &pool.stats;
    json!({
        "max_connections": pool.max_connections(),
        "waiting": pool.waiting(),
        "checkouts_from_idle": stats.reused.sum(),
        "connections_opened": stats.opened.load(Ordering::Relaxed),
        "resets": stats.resets.load(Ordering::Relaxed),
        "waits": stats.waits.load(Ordering::Relaxed),
        "exhausted": stats.exhausted.load(Ordering::Relaxed),
    })
}

pub fn snapshot(state: &AdminState) -> Value {
    let backends = state.backends();
    let read_pool: Vec<&str> =
        state.router.read_pool().iter().filter_map(|i| backends.get(*i)).map(|b| b.name.as_str()).collect();
    let list: Vec<Value> = backends
        .all()
        .iter()
        .map(|b| {
            let h = &b.health;
            json!({
                "name": b.name,
                "address": b.address,
                "role": if backends.is_primary(b.index) { "primary" } else { "replica" },
                "state": h.state().as_str(),
                "admin_state": if b.is_drained() { "drain" } else { "ready" },
                "reason": h.reason(),
                "stale": h.stale(),
                // What the data path last saw fail there (a connect, a login, a lost connection):
                // the backend sits out of the read pool for `retry_failed_after` after it.
                "last_error": b.last_error(),
                "replicates_from": h.source().flatten(),
                "lag_seconds": h.lag().map(|l| l.as_secs_f64()),
                "connections": h.connections.load(Ordering::Relaxed),
                "idle_connections": b.pool.idle_count(),
                "pool": pool_status(&b.pool),
                "queries_total": h.queries(),
                "in_read_pool": read_pool.contains(&b.name.as_str()),
                "weight": state.router.weight(b.index),
                "gtid": b.known.gtid(),
                "position": b.known.get().map(|p| p.to_string()),
            })
        })
        .collect();
    let http: Vec<Value> = state
        .http
        .iter()
        .flat_map(|h| h.servers.list.iter())
        .map(|s| {
            json!({
                "name": s.name,
                "address": s.address,
                "up": s.is_up(),
                "weight": s.weight,
                "backup": s.backup,
                "active": s.active.load(Ordering::Relaxed),
            })
        })
        .collect();
    let writable: Vec<&str> =
        backends.writable().iter().filter_map(|i| backends.get(*i)).map(|b| b.name.as_str()).collect();
    let mut warnings: Vec<String> = Vec::new();
    if writable.len() > 1 {
        warnings.push(format!(
            "several backends are writable ({}); the primary stays where it is",
            writable.join(", ")
        ));
    }
    if backends.primary().known.gtid() == Some(false) {
        warnings.push(
            "the primary writes no GTIDs (binary log or gtid_mode off): reads after a write go to the primary for max_replication_lag, and lag cannot be measured from positions".into(),
        );
    }
    if state.monitor.enabled && !state.monitor.heartbeat {
        warnings.push("monitor.heartbeat is off: replica lag is measured from GTID positions (one monitor interval's resolution)".into());
    }
    if !state.monitor.enabled {
        warnings.push("the monitor is off: no backend is ever marked down or lagging".into());
    }
    if let Some(why) = backends.unconfirmed() {
        warnings.push(format!("writes are refused: the primary is not known ({why})"));
    }
    for b in backends.all() {
        if let Some(why) = b.health.stale() {
            warnings.push(format!("{}: {why}", b.name));
        }
        if let Some(why) = b.health.heartbeat_problem().filter(|_| backends.is_primary(b.index)) {
            warnings.push(format!(
                "{}: {why}; replica lag is measured from GTID positions instead (one monitor interval's resolution)",
                b.name
            ));
        }
    }
    json!({
        "http_servers": http,
        "primary": backends.primary().name,
        "writable": writable,
        "warnings": warnings,
        "read_pool": read_pool,
        "max_replication_lag_seconds": state.monitor.max_replication_lag.as_secs_f64(),
        "uptime_seconds": backends.uptime().as_secs_f64(),
        "backends": list,
        "consistency": consistency(state),
        "multiplexing": {
            "pinned_sessions": state.metrics.pinned_sessions().into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        },
    })
}

/// The consistency mode and what became of reads after writes and optimistic transactions.
fn consistency(state: &AdminState) -> Value {
    let counts = state.metrics.consistency_counts();
    let [ready, waited, primary] = counts.reads;
    let placed = ready + waited + primary;
    let [replica, moved, conflict, too_large] = counts.optimistic;
    let mode = state.consistency.as_str();
    let primary_gtid = state.backends().primary().known.gtid();
    json!({
        "mode": mode,
        "primary_writes_gtids": primary_gtid,
        "reads_after_writes": {
            "replica_ready": ready,
            "waited": waited,
            "primary": primary,
            "replica_share": (placed > 0).then(|| (ready + waited) as f64 / placed as f64),
        },
        "optimistic_transactions": {
            "replica": replica,
            "moved": moved,
            "conflict": conflict,
            "too_large": too_large,
        },
    })
}

/// `/sessions`: every logged-in SQL session, as ProxySQL's process list shows them: who, from
/// where, since when, what runs now and where, and why the session holds its connections.
pub fn sessions(registry: &crate::sessions::Registry) -> Value {
    let list: Vec<Value> = registry
        .list()
        .into_iter()
        .map(|(id, s)| {
            let running = s.running_on().map(|(backend, thread_id)| {
                json!({
                    "backend": backend.name,
                    "backend_thread_id": thread_id,
                    "seconds": s.running_for().as_secs_f64(),
                })
            });
            json!({
                "id": id,
                "user": s.user(),
                "client": s.peer.to_string(),
                "connected_seconds": s.connected.elapsed().as_secs_f64(),
                "running": running,
                "idle_seconds": s.running_on().is_none().then(|| s.idle_for().as_secs_f64()),
                "pinned": s.pinned(),
            })
        })
        .collect();
    json!({ "sessions": list })
}

/// How `GET /queries` orders the digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestOrder {
    Total,
    Count,
    Max,
    Errors,
}

impl DigestOrder {
    pub fn parse(name: &str) -> Option<DigestOrder> {
        match name {
            "total" => Some(DigestOrder::Total),
            "count" => Some(DigestOrder::Count),
            "max" => Some(DigestOrder::Max),
            "errors" => Some(DigestOrder::Errors),
            _ => None,
        }
    }
}

/// The statement digests, most costly first (by `order`), at most `limit` of them.
pub fn top_digests(
    digests: &crate::digests::Digests,
    order: DigestOrder,
    limit: usize,
) -> Vec<crate::digests::Entry> {
    let mut all = digests.snapshot();
    all.sort_unstable_by(|a, b| match order {
        DigestOrder::Total => b.total.cmp(&a.total),
        DigestOrder::Count => b.count.cmp(&a.count),
        DigestOrder::Max => b.max.cmp(&a.max),
        DigestOrder::Errors => b.errors.cmp(&a.errors),
    });
    all.truncate(limit);
    all
}

/// `GET /queries`: ProxySQL's `stats_mysql_query_digest`.
pub fn queries(digests: &crate::digests::Digests, order: DigestOrder, limit: usize) -> Value {
    let now = std::time::SystemTime::now();
    let list: Vec<Value> = top_digests(digests, order, limit)
        .into_iter()
        .map(|e| {
            json!({
                "digest": format!("{:016x}", e.key),
                "statement": e.text,
                "count": e.count,
                "errors": e.errors,
                "total_seconds": e.total.as_secs_f64(),
                "mean_ms": e.mean().as_secs_f64() * 1000.0,
                "max_ms": e.max.as_secs_f64() * 1000.0,
                "on_primary": e.on_primary,
                "on_replicas": e.on_replicas,
                "last_reason": e.reason,
                "first_seen_seconds_ago": now.duration_since(e.first_seen).unwrap_or_default().as_secs_f64(),
            })
        })
        .collect();
    json!({ "queries": list })
}
