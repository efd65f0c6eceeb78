//! The status page: one self-contained HTML document (no scripts or assets from elsewhere),
//! refreshed by the browser every two seconds.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::AdminState;
use crate::backend::{Backend, Sample, State};

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Queries per second over the last ten seconds of samples.
fn qps(samples: &[Sample]) -> f64 {
    let Some(last) = samples.last() else {
        return 0.0;
    };
    let first = samples.iter().find(|s| last.at - s.at <= 10.0).unwrap_or(last);
    let span = last.at - first.at;
    if span <= 0.0 { 0.0 } else { (last.queries - first.queries) as f64 / span }
}

/// An SVG line of lag over the last five minutes, with the demotion threshold dashed.
fn lag_chart(samples: &[Sample], threshold_ms: f64) -> String {
    let (w, h) = (300.0, 40.0);
    let now = samples.last().map_or(0.0, |s| s.at);
    let peak = samples.iter().filter_map(|s| s.lag_ms).fold(threshold_ms * 1.25, f64::max);
    let y = |ms: f64| h - (ms / peak * h).min(h);
    let points: Vec<String> = samples
        .iter()
        .filter_map(|s| s.lag_ms.map(|ms| format!("{:.1},{:.1}", w - (now - s.at) / 300.0 * w, y(ms))))
        .collect();
    format!(
        r##"<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}"><line x1="0" x2="{w}" y1="{t:.1}" y2="{t:.1}" stroke="#c33" stroke-dasharray="3,3"/><polyline fill="none" stroke="#036" stroke-width="1.5" points="{p}"/></svg>"##,
        t = y(threshold_ms),
        p = points.join(" ")
    )
}

fn row(out: &mut String, b: &Backend, state: &AdminState, in_pool: bool) {
    let h = &b.health;
    let samples = h.history();
    let s = h.state();
    let class = match s {
        State::Up => "up",
        State::Lagging => "lagging",
        State::ReplicationStopped | State::Down => "down",
    };
    let role = if state.backends().is_primary(b.index) { "primary" } else { "replica" };
    let lag = h.lag().map_or("–".to_string(), |l| format!("{:.1} ms", l.as_secs_f64() * 1000.0));
    let threshold = state.monitor.max_replication_lag.as_secs_f64() * 1000.0;
    // Held by sessions now / waiting in the pool, and sessions waiting at max_connections.
    let idle = b.pool.idle_count();
    let open = usize::try_from(h.connections.load(Ordering::Relaxed)).unwrap_or(0);
    let mut connections = format!("{} / {idle}", open.saturating_sub(idle));
    if b.pool.waiting() > 0 {
        let _ = write!(connections, " ({} waiting)", b.pool.waiting());
    }
    let _ = write!(
        out,
        "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{role}</td><td class=\"state\">{}</td><td>{}</td><td>{lag}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
        escape(&b.name),
        escape(&b.address),
        if b.is_drained() { format!("{} (drained)", s.as_str()) } else { s.as_str().to_string() },
        if in_pool { "yes" } else { "no" },
        connections,
        h.queries(),
        qps(&samples),
        lag_chart(&samples, threshold),
        escape(&reason(b, in_pool)),
    );
}

/// The monitor's reason, and what keeps the backend out of rotation besides: a stale former
/// primary, or (while it is out of the read pool) the data path's last failure there.
fn reason(b: &Backend, in_pool: bool) -> String {
    let failure = b.last_error().filter(|_| !in_pool).map(|e| format!("last data-path failure: {e}"));
    let parts: Vec<String> = [Some(b.health.reason()), b.health.stale(), failure]
        .into_iter()
        .flatten()
        .filter(|p| !p.is_empty())
        .collect();
    parts.join("; ")
}

/// The HTTP servers table, when the balancer is on.
fn http_table(state: &AdminState) -> String {
    let Some(http) = &state.http else { return String::new() };
    let mut rows = String::new();
    for server in &http.servers.list {
        let (class, up) = if server.is_up() { ("up", "up") } else { ("down", "down") };
        let _ = write!(
            rows,
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td class=\"state\">{up}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&server.name),
            escape(&server.address),
            server.weight,
            if server.backup { "yes" } else { "no" },
            server.active.load(Ordering::Relaxed),
        );
    }
    format!(
        "<h2>HTTP servers</h2>\n<table id=\"http-servers\"><thead><tr><th>server</th><th>address</th><th>state</th><th>weight</th><th>backup</th><th>active</th></tr></thead><tbody>{rows}</tbody></table>"
    )
}

pub fn render(state: &AdminState, sql: &crate::sql_tier::SqlTier) -> String {
    let backends = state.backends();
    let pool = state.router.read_pool();
    let mut rows = String::new();
    for b in backends.all() {
        row(&mut rows, b, state, pool.contains(&b.index));
    }
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2"><title>rwproxy status</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }} th, td {{ padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: left; }}
th {{ background: #f2f2f2; }} tr.up td.state {{ color: #070; }} tr.lagging td.state {{ color: #b60; }} tr.down td.state {{ color: #c00; font-weight: bold; }}
</style></head><body>
<h1>rwproxy</h1>
<p>Up {uptime:.0} s. Primary: <b>{primary}</b>. Replicas leave the read pool above {lag:.3} s of lag.</p>
{warnings}
<h2>MySQL backends</h2>
<table id="backends"><thead><tr><th>backend</th><th>address</th><th>role</th><th>state</th><th>read pool</th><th>lag</th><th>connections in use / idle</th><th>queries</th><th>queries/s</th><th>lag, last 5 min</th><th>reason</th></tr></thead>
<tbody>{rows}</tbody></table>
{sessions}
{queries}
{http}
{consistency}
<p><a href="/status">/status</a> · <a href="/sessions">/sessions</a> · <a href="/queries">/queries</a> · <a href="/metrics">/metrics</a> · <a href="/health">/health</a></p>
</body></html>
"#,
        uptime = backends.uptime().as_secs_f64(),
        primary = escape(&backends.primary().name),
        lag = state.monitor.max_replication_lag.as_secs_f64(),
        warnings = warnings_list(state),
        sessions = sessions_table(&sql.registry),
        queries = queries_table(&sql.digests),
        http = http_table(state),
        consistency = consistency_line(state),
    )
}

/// The warnings `/status` lists (stale former primaries, writes refused, several writable
/// backends), as a list in red; nothing when there are none.
fn warnings_list(state: &AdminState) -> String {
    let status = super::status::snapshot(state);
    let items: Vec<String> = status["warnings"]
        .as_array()
        .map(|w| w.iter().filter_map(|v| v.as_str()).map(|t| format!("<li>{}</li>", escape(t))).collect())
        .unwrap_or_default();
    if items.is_empty() {
        return String::new();
    }
    format!("<ul id=\"warnings\" style=\"color: #c00\">{}</ul>", items.join(""))
}

/// How many sessions there are, run a statement, are pinned; the longest-running statements.
fn sessions_table(registry: &crate::sessions::Registry) -> String {
    const SHOWN: usize = 10;
    let all = registry.list();
    let pinned = all.iter().filter(|(_, s)| s.pinned().is_some()).count();
    // Forgotten transactions hold a connection and their locks (`transaction_idle_timeout`).
    let idle_in_transaction: Vec<std::time::Duration> = all
        .iter()
        .filter(|(_, s)| {
            s.running_on().is_none() && matches!(s.pinned(), Some("transaction" | "optimistic_transaction"))
        })
        .map(|(_, s)| s.idle_for())
        .collect();
    let idle_line = match idle_in_transaction.iter().max() {
        Some(longest) => format!(
            " <b>{} idle inside a transaction</b> (the longest for {:.0} s).",
            idle_in_transaction.len(),
            longest.as_secs_f64()
        ),
        None => String::new(),
    };
    let mut running: Vec<_> = all
        .iter()
        .filter_map(|(id, s)| {
            s.running_on().map(|(backend, thread)| (*id, s, backend, thread, s.running_for()))
        })
        .collect();
    running.sort_unstable_by_key(|r| std::cmp::Reverse(r.4));
    let mut rows = String::new();
    for (id, s, backend, thread, took) in running.iter().take(SHOWN) {
        rows.push_str(&format!(
            "<tr><td>{id}</td><td>{}</td><td>{}</td><td>{}</td><td>{thread}</td><td>{:.1} s</td><td>{}</td></tr>",
            escape(&s.user()),
            s.peer,
            escape(&backend.name),
            took.as_secs_f64(),
            s.pinned().unwrap_or("")
        ));
    }
    format!(
        "<h2>SQL sessions</h2>\n<p id=\"sessions\">{} logged in, {} running a statement, {pinned} pinned.{idle_line} Longest-running statements (all on <a href=\"/sessions\">/sessions</a>; <code>KILL QUERY id</code> stops one):</p>\n<table id=\"running\"><thead><tr><th>id</th><th>user</th><th>client</th><th>backend</th><th>backend thread</th><th>running</th><th>pinned</th></tr></thead><tbody>{rows}</tbody></table>",
        all.len(),
        running.len(),
    )
}

/// The statements that took the most time in all (their digests).
fn queries_table(digests: &crate::digests::Digests) -> String {
    const SHOWN: usize = 10;
    let mut rows = String::new();
    for e in super::status::top_digests(digests, super::status::DigestOrder::Total, SHOWN) {
        let _ = write!(
            rows,
            "<tr><td><code>{}</code></td><td>{}</td><td>{:.3} s</td><td>{:.2} ms</td><td>{:.2} ms</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&e.text),
            e.count,
            e.total.as_secs_f64(),
            e.mean().as_secs_f64() * 1000.0,
            e.max.as_secs_f64() * 1000.0,
            e.on_primary,
            e.on_replicas,
            e.reason,
            e.errors,
        );
    }
    format!(
        "<h2>Statements</h2>\n<p>The statements that took the most time (literals as <code>?</code>; all on <a href=\"/queries\">/queries</a>):</p>\n<table id=\"queries\"><thead><tr><th>statement</th><th>count</th><th>total</th><th>mean</th><th>max</th><th>on primary</th><th>on replicas</th><th>last reason</th><th>errors</th></tr></thead><tbody>{rows}</tbody></table>"
    )
}

/// Reads after writes: how many replicas served, and optimistic transactions by outcome.
fn consistency_line(state: &AdminState) -> String {
    let counts = state.metrics.consistency_counts();
    let [ready, waited, primary] = counts.reads;
    let placed = ready + waited + primary;
    let share = if placed == 0 {
        "–".to_string()
    } else {
        format!("{:.0} %", (ready + waited) as f64 * 100.0 / placed as f64)
    };
    let [replica, moved, conflict, too_large] = counts.optimistic;
    let gtid = match state.backends().primary().known.gtid() {
        Some(false) => {
            " <b>The primary writes no GTIDs: reads after a write go to the primary for max_replication_lag.</b>"
        }
        _ => "",
    };
    format!(
        "<h2>Consistency</h2>\n<p id=\"consistency\">Mode <b>{mode}</b>. Reads after writes served by replicas: {share} ({ready} known ready, {waited} after a wait, {primary} on the primary). Optimistic transactions: {replica} stayed on a replica, {moved} moved, {conflict} conflicts, {too_large} too large.{gtid}</p>",
        mode = state.consistency.as_str(),
    )
}
