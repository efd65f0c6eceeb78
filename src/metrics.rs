//! Prometheus metrics, owned by one proxy instance (no global recorder, so several proxies can
//! live in one process, as they do in tests). Every series is registered once, with its full
//! label set, when the proxy starts; the hot path only bumps handles.

use crate::session::Pin;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::backend::{Backend, Backends, State};
use crate::classifier::Reason;
use crate::consistency::{OptimisticOutcome, ReadOutcome};
use crate::router::Target;
use crate::striped::StripedArray;

const REASONS: [Reason; 14] = [
    Reason::Read,
    Reason::Write,
    Reason::Transaction,
    Reason::LockingRead,
    Reason::SideEffectFunction,
    Reason::UserVariable,
    Reason::TemporaryTable,
    Reason::SessionCommand,
    Reason::SessionPinned,
    Reason::Diagnostics,
    Reason::NodeSpecific,
    Reason::MultiStatement,
    Reason::Hint,
    Reason::Unknown,
];
const ROUTES: [&str; 4] = ["read", "primary", "all", "pinned"];
/// `rwproxy_queries_total` series per backend: route × reason.
pub const ROUTED_SERIES: usize = ROUTES.len() * REASONS.len();
/// Seconds: from half a millisecond to ten seconds.
const BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A latency histogram that every SQL worker records into on every statement: bucket counts
/// and the sum per worker ([`StripedArray`]), in Prometheus' histogram form when rendered.
#[derive(Debug)]
struct Latency {
    /// Per bucket (not cumulative), then one for samples over the last bound, then the sum in
    /// nanoseconds.
    cells: StripedArray,
}

impl Default for Latency {
    fn default() -> Self {
        Latency { cells: StripedArray::new(BUCKETS.len() + 2) }
    }
}

impl Latency {
    fn record(&self, worker: usize, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(BUCKETS.len());
        self.cells.add(worker, bucket, 1);
        self.cells.add(worker, BUCKETS.len() + 1, u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    fn render(&self, name: &str, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.cells.sum(i);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.cells.sum(BUCKETS.len());
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.cells.sum(BUCKETS.len() + 1) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
        out.push('\n');
    }
}

fn route_index(target: Target) -> usize {
    match target {
        // Counted with the reads: the series' labels stay as they were.
        Target::ReadPool | Target::Replica => 0,
        Target::Primary => 1,
        Target::PreferPrimary => 2,
        Target::Backend(_) => 3,
    }
}

fn reason_index(reason: Reason) -> usize {
    REASONS.iter().position(|r| *r == reason).unwrap_or(REASONS.len() - 1)
}

struct BackendSeries {
    up: Gauge,
    /// `rwproxy_backend_drained{backend}`: 1 while an operator has it drained.
    drained: Gauge,
    lag: Gauge,
    states: Vec<(State, Gauge)>,
    connections: Gauge,
    idle: Gauge,
    /// `rwproxy_pool_waiting{backend}`: sessions waiting for a connection at `max_connections`.
    waiting: Gauge,
    /// `rwproxy_pool_checkouts_total{backend,from}`: idle, new.
    checkouts: [Counter; 2],
    /// `rwproxy_pool_resets_total`, `rwproxy_pool_waits_total`, `rwproxy_pool_exhausted_total`.
    resets: Counter,
    waits: Counter,
    exhausted: Counter,
    demotions: Vec<(State, Counter)>,
    check_duration: Histogram,
    /// The backend's name: its `rwproxy_queries_total` series are registered when first
    /// non-zero (route × reason is 147 series a backend, most never used).
    name: String,
}

pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    backends: Vec<BackendSeries>,
    /// `rwproxy_query_duration_seconds`: kept per worker (every statement records it) and
    /// rendered here; it survives a reload.
    latency: Arc<Latency>,
    client_connections: Gauge,
    /// `rwproxy_config_reloads_total{result}`: ok, failed.
    reloads: [Counter; 2],
    last_reload_ok: Gauge,
    consistency: ConsistencySeries,
    /// `rwproxy_login_failures_total`: clients refused with 1045.
    login_failures: Counter,
    /// `rwproxy_multiplex_pins_total{reason}`: sessions that kept their backend connections
    /// after a command, counted when the reason appears.
    pins: [Counter; Pin::ALL.len()],
    /// Sessions pinned now, by reason (for `/status`); survives a reload like the series.
    pinned_now: Arc<[std::sync::atomic::AtomicI64; Pin::ALL.len()]>,
}

const READ_OUTCOMES: [ReadOutcome; 3] =
    [ReadOutcome::ReplicaReady, ReadOutcome::Waited, ReadOutcome::Primary];
const OPTIMISTIC_OUTCOMES: [OptimisticOutcome; 4] = [
    OptimisticOutcome::Replica,
    OptimisticOutcome::Moved,
    OptimisticOutcome::Conflict,
    OptimisticOutcome::TooLarge,
];

/// Reads that needed a replication position, and optimistic transactions. The counts are also
/// kept as numbers for the status page; they survive a reload like the series do.
struct ConsistencySeries {
    reads: [Counter; 3],
    wait: Histogram,
    optimistic: [Counter; 4],
    counts: Arc<[AtomicU64; 7]>,
}

/// What the status page shows of consistency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsistencyCounts {
    /// Reads after writes by outcome: replica_ready, waited, primary.
    pub reads: [u64; 3],
    /// Optimistic transactions by outcome: replica, moved, conflict, too_large.
    pub optimistic: [u64; 4],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl Metrics {
    pub fn new(backends: &Backends) -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let metrics = Metrics::with_recorder(Arc::new(recorder), backends);
        // The configuration the proxy started with loaded fine.
        metrics.last_reload_ok.set(1.0);
        metrics
    }

    /// The series for the backends of a reloaded configuration, in the same registry: a
    /// backend that stays keeps its counters (registering a known series returns it).
    pub fn reconfigured(&self, backends: &Backends) -> Metrics {
        let mut m = Metrics::with_recorder(self.recorder.clone(), backends);
        m.consistency.counts = self.consistency.counts.clone();
        m.pinned_now = self.pinned_now.clone();
        m.latency = self.latency.clone();
        m
    }

    fn with_recorder(recorder: Arc<PrometheusRecorder>, backends: &Backends) -> Metrics {
        let handle = recorder.handle();
        let consistency = ConsistencySeries {
            reads: READ_OUTCOMES.map(|o| {
                let key = Self::key("rwproxy_consistency_reads_total", &[("outcome", o.as_str())]);
                recorder.register_counter(&key, &METADATA)
            }),
            wait: recorder.register_histogram(&Key::from_name("rwproxy_consistency_wait_seconds"), &METADATA),
            optimistic: OPTIMISTIC_OUTCOMES.map(|o| {
                let key = Self::key("rwproxy_optimistic_transactions_total", &[("outcome", o.as_str())]);
                recorder.register_counter(&key, &METADATA)
            }),
            counts: Arc::new(Default::default()),
        };
        let mut m = Metrics {
            login_failures: recorder
                .register_counter(&Key::from_name("rwproxy_login_failures_total"), &METADATA),
            pinned_now: Arc::new(Default::default()),
            pins: Pin::ALL.map(|pin| {
                recorder.register_counter(
                    &Self::key("rwproxy_multiplex_pins_total", &[("reason", pin.as_str())]),
                    &METADATA,
                )
            }),
            consistency,
            latency: Arc::new(Latency::default()),
            client_connections: recorder
                .register_gauge(&Key::from_name("rwproxy_client_connections"), &METADATA),
            reloads: ["ok", "failed"].map(|result| {
                recorder.register_counter(
                    &Self::key("rwproxy_config_reloads_total", &[("result", result)]),
                    &METADATA,
                )
            }),
            last_reload_ok: recorder
                .register_gauge(&Key::from_name("rwproxy_config_last_reload_successful"), &METADATA),
            backends: Vec::new(),
            recorder,
            handle,
        };
        m.backends = backends.all().iter().map(|b| m.backend_series(&b.name, b.role)).collect();
        m
    }

    fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect();
        Key::from_parts(name, labels)
    }

    fn backend_series(&self, name: &str, role: crate::config::Role) -> BackendSeries {
        let r = &self.recorder;
        let role = match role {
            crate::config::Role::Primary => "primary",
            crate::config::Role::Replica => "replica",
        };
        BackendSeries {
            drained: r.register_gauge(&Self::key("rwproxy_backend_drained", &[("backend", name)]), &METADATA),
            up: r.register_gauge(
                &Self::key("rwproxy_backend_up", &[("backend", name), ("role", role)]),
                &METADATA,
            ),
            lag: r.register_gauge(
                &Self::key("rwproxy_backend_replication_lag_seconds", &[("backend", name)]),
                &METADATA,
            ),
            states: State::ALL
                .iter()
                .map(|s| {
                    let key = Self::key("rwproxy_backend_state", &[("backend", name), ("state", s.as_str())]);
                    (*s, r.register_gauge(&key, &METADATA))
                })
                .collect(),
            connections: r.register_gauge(
                &Self::key("rwproxy_backend_connections", &[("backend", name), ("state", "in_use")]),
                &METADATA,
            ),
            idle: r.register_gauge(
                &Self::key("rwproxy_backend_connections", &[("backend", name), ("state", "idle")]),
                &METADATA,
            ),
            waiting: r.register_gauge(&Self::key("rwproxy_pool_waiting", &[("backend", name)]), &METADATA),
            checkouts: ["idle", "new"].map(|from| {
                r.register_counter(
                    &Self::key("rwproxy_pool_checkouts_total", &[("backend", name), ("from", from)]),
                    &METADATA,
                )
            }),
            resets: r
                .register_counter(&Self::key("rwproxy_pool_resets_total", &[("backend", name)]), &METADATA),
            waits: r
                .register_counter(&Self::key("rwproxy_pool_waits_total", &[("backend", name)]), &METADATA),
            exhausted: r.register_counter(
                &Self::key("rwproxy_pool_exhausted_total", &[("backend", name)]),
                &METADATA,
            ),
            demotions: State::ALL[1..]
                .iter()
                .map(|s| {
                    let key = Self::key(
                        "rwproxy_backend_demotions_total",
                        &[("backend", name), ("reason", s.as_str())],
                    );
                    (*s, r.register_counter(&key, &METADATA))
                })
                .collect(),
            check_duration: r.register_histogram(
                &Self::key("rwproxy_monitor_check_duration_seconds", &[("backend", name)]),
                &METADATA,
            ),
            name: name.to_string(),
        }
    }

    /// A session's pin changed (multiplexing): counted when a reason appears, and kept as the
    /// number of sessions pinned now for each reason.
    pub fn multiplex_pin_changed(&self, old: Option<Pin>, new: Option<Pin>) {
        let at = |pin: Pin| Pin::ALL.iter().position(|p| *p == pin);
        if let Some(i) = old.and_then(at) {
            self.pinned_now[i].fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(i) = new.and_then(at) {
            self.pinned_now[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.pins[i].increment(1);
        }
    }

    /// Sessions pinned to their backend connections now, by reason.
    pub fn pinned_sessions(&self) -> Vec<(&'static str, i64)> {
        Pin::ALL
            .iter()
            .zip(self.pinned_now.iter())
            .map(|(pin, n)| (pin.as_str(), n.load(std::sync::atomic::Ordering::Relaxed)))
            .collect()
    }

    /// One statement answered by `backend`.
    /// A statement `backend` answered, on SQL worker `worker`: counted in the worker's own
    /// cells (no line shared with other workers is written per statement).
    pub fn query(&self, worker: usize, backend: &Backend, target: Target, reason: Reason, took: Duration) {
        backend.health.routed.add(worker, route_index(target) * REASONS.len() + reason_index(reason), 1);
        self.latency.record(worker, took);
    }

    /// A read that needed a replication position was placed; `waited` is how long it waited on
    /// a replica, when it did.
    pub fn consistency_read(&self, outcome: ReadOutcome, waited: Option<Duration>) {
        let i = READ_OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        self.consistency.reads[i].increment(1);
        self.consistency.counts[i].fetch_add(1, Ordering::Relaxed);
        if let Some(waited) = waited {
            self.consistency.wait.record(waited.as_secs_f64());
        }
    }

    /// A client was refused with 1045 (wrong password, unknown user).
    pub fn login_failed(&self) {
        self.login_failures.increment(1);
    }

    /// `rwproxy_connections_refused_total{listener, reason="firewall"}`: a peer outside a
    /// listener's allow list (or in its deny list) was closed. Rare, so the series is looked up
    /// each time.
    pub fn refused_by_firewall(&self, listener: &'static str) {
        self.connection_refused(listener, "firewall");
    }

    /// `rwproxy_connections_refused_total{listener, reason}`: a connection turned away or cut
    /// off before it was served (`firewall`, `too_many`, `too_many_from_source`, `silent`: no
    /// first byte of a login, `login_timeout`). Looked up each time: refusals are rare, and a
    /// series appears only once it counts something.
    pub fn connection_refused(&self, listener: &'static str, reason: &'static str) {
        let key =
            Self::key("rwproxy_connections_refused_total", &[("listener", listener), ("reason", reason)]);
        self.recorder.register_counter(&key, &METADATA).increment(1);
    }

    /// `rwproxy_kills_total{kind, result}`: a `KILL` through the SQL port (`kind` `query`,
    /// `connection` or `other`; `result` `done`, `not_owner`, `no_such_session`, `unsupported`, `failed`).
    /// Rare, so the series is looked up each time.
    pub fn kill(&self, kind: &'static str, result: &'static str) {
        let key = Self::key("rwproxy_kills_total", &[("kind", kind), ("result", result)]);
        self.recorder.register_counter(&key, &METADATA).increment(1);
    }

    /// `rwproxy_idle_sessions_closed_total{limit}`: a client closed for idling past
    /// `idle_timeout` or, inside a transaction, `transaction_idle_timeout`. Rare, so the series
    /// is looked up each time.
    pub fn idle_closed(&self, limit: &'static str) {
        let key = Self::key("rwproxy_idle_sessions_closed_total", &[("limit", limit)]);
        self.recorder.register_counter(&key, &METADATA).increment(1);
    }

    /// An optimistic transaction ended.
    pub fn optimistic(&self, outcome: OptimisticOutcome) {
        let i = OPTIMISTIC_OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        self.consistency.optimistic[i].increment(1);
        self.consistency.counts[3 + i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn consistency_counts(&self) -> ConsistencyCounts {
        let c = &self.consistency.counts;
        let at = |i: usize| c[i].load(Ordering::Relaxed);
        ConsistencyCounts { reads: [at(0), at(1), at(2)], optimistic: [at(3), at(4), at(5), at(6)] }
    }

    /// One reload attempt (SIGHUP, `POST /reload`).
    pub fn reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].increment(1);
        self.last_reload_ok.set(if ok { 1.0 } else { 0.0 });
    }

    pub fn client_connected(&self) {
        self.client_connections.increment(1.0);
    }

    pub fn client_disconnected(&self) {
        self.client_connections.decrement(1.0);
    }

    pub fn monitor_check(&self, backend: usize, took: Duration) {
        if let Some(series) = self.backends.get(backend) {
            series.check_duration.record(took.as_secs_f64());
        }
    }

    pub fn demotion(&self, backend: usize, state: State) {
        if let Some((_, counter)) =
            self.backends.get(backend).and_then(|s| s.demotions.iter().find(|(st, _)| *st == state))
        {
            counter.increment(1);
        }
    }

    /// The Prometheus text exposition, with backend gauges refreshed from live state.
    /// Folds recorded histogram samples into their summaries. The recorder keeps every sample
    /// until this runs (rendering runs it too): without a regular call, memory grows with the
    /// query count whenever nobody scrapes `/metrics`.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    pub fn render(&self, backends: &Backends) -> String {
        for (backend, series) in backends.all().iter().zip(&self.backends) {
            let state = backend.health.state();
            series.up.set(if state == State::Down { 0.0 } else { 1.0 });
            series.drained.set(if backend.is_drained() { 1.0 } else { 0.0 });
            series.lag.set(backend.health.lag().map_or(f64::NAN, |l| l.as_secs_f64()));
            for (s, gauge) in &series.states {
                gauge.set(if *s == state { 1.0 } else { 0.0 });
            }
            // Open connections minus the idle ones: those a session holds now.
            let pool = &backend.pool;
            let idle = pool.idle_count();
            let open = usize::try_from(backend.health.connections.load(Ordering::Relaxed)).unwrap_or(0);
            series.idle.set(idle as f64);
            series.connections.set(open.saturating_sub(idle) as f64);
            series.waiting.set(pool.waiting() as f64);
            series.checkouts[0].absolute(pool.stats.reused.sum());
            series.checkouts[1].absolute(pool.stats.opened.load(Ordering::Relaxed));
            series.resets.absolute(pool.stats.resets.load(Ordering::Relaxed));
            series.waits.absolute(pool.stats.waits.load(Ordering::Relaxed));
            series.exhausted.absolute(pool.stats.exhausted.load(Ordering::Relaxed));
            // Only the route × reason pairs that ever ran are shown (registered once, then kept).
            for (i, (route, reason)) in
                ROUTES.iter().flat_map(|r| REASONS.iter().map(move |x| (r, x))).enumerate()
            {
                let count = backend.health.routed.sum(i);
                if count > 0 {
                    let labels =
                        [("backend", series.name.as_str()), ("route", *route), ("reason", reason.as_str())];
                    let key = Self::key("rwproxy_queries_total", &labels);
                    self.recorder.register_counter(&key, &METADATA).absolute(count);
                }
            }
        }
        let mut text = self.handle.render();
        self.latency.render("rwproxy_query_duration_seconds", &mut text);
        text
    }
}

/// The series of one HTTP server, named after HAProxy's exporter so dashboards carry over.
#[derive(Debug, Clone)]
pub struct HttpServerSeries {
    /// `rwproxy_http_requests_total{server,code}` for 1xx … 5xx.
    pub responses: [Counter; 5],
    pub up: Gauge,
    pub active: Gauge,
    pub duration: Histogram,
    pub retries: Counter,
    pub health_failures: Counter,
}

impl Metrics {
    /// `rwproxy_http_worker_connections{worker}`: client connections on one worker thread.
    pub fn http_worker(&self, worker: usize) -> Gauge {
        let worker = worker.to_string();
        self.recorder.register_gauge(
            &Self::key("rwproxy_http_worker_connections", &[("worker", worker.as_str())]),
            &METADATA,
        )
    }

    /// Registers the series of one HTTP server.
    pub fn http_server(&self, server: &str) -> HttpServerSeries {
        let r = &self.recorder;
        let labels = [("server", server)];
        let responses = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|code| {
            r.register_counter(
                &Self::key("rwproxy_http_requests_total", &[("server", server), ("code", code)]),
                &METADATA,
            )
        });
        HttpServerSeries {
            responses,
            up: r.register_gauge(&Self::key("rwproxy_http_server_up", &labels), &METADATA),
            active: r
                .register_gauge(&Self::key("rwproxy_http_server_active_connections", &labels), &METADATA),
            duration: r
                .register_histogram(&Self::key("rwproxy_http_request_duration_seconds", &labels), &METADATA),
            retries: r.register_counter(&Self::key("rwproxy_http_retries_total", &labels), &METADATA),
            health_failures: r
                .register_counter(&Self::key("rwproxy_http_health_check_failures_total", &labels), &METADATA),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn latency_renders_as_a_cumulative_histogram() {
        let latency = super::Latency::default();
        latency.record(0, Duration::from_micros(300));
        latency.record(1, Duration::from_millis(3));
        latency.record(5, Duration::from_secs(20));
        let mut text = String::new();
        latency.render("q", &mut text);
        for line in [
            "# TYPE q histogram",
            "q_bucket{le=\"0.0005\"} 1",
            "q_bucket{le=\"0.005\"} 2",
            "q_bucket{le=\"10\"} 2",
            "q_bucket{le=\"+Inf\"} 3",
            "q_sum 20.0033",
            "q_count 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
