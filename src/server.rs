//! The SQL listener: accepts clients, applies the firewall, and hands each to the SQL worker
//! thread with the fewest sessions, where it runs to its end.
//!
//! Each worker is a single-threaded event loop with its own share of every backend's idle
//! connections ([`crate::backend::Pool`] keeps one shard per worker): a session and the
//! backend connections it borrows stay on one thread, sparing the cross-thread wake-ups and
//! cache traffic of a work-stealing scheduler (the HTTP tier's model).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::accept::{Refusals, next_connection};
use crate::session;
use crate::sql_tier::SqlTier;

/// A client handed to a worker.
type Arrival = (std::net::TcpStream, SocketAddr);

struct Worker {
    handoff: mpsc::UnboundedSender<Arrival>,
    /// Sessions running on it, read by the acceptor.
    load: Arc<AtomicUsize>,
}

impl Worker {
    fn spawn(index: usize, tier: Weak<SqlTier>) -> std::io::Result<Worker> {
        let (handoff, arrivals) = mpsc::unbounded_channel();
        let load = Arc::new(AtomicUsize::new(0));
        let counted = load.clone();
        std::thread::Builder::new()
            .name(format!("rwproxy-sql-{index}"))
            .spawn(move || run_worker(index, arrivals, tier, counted))?;
        Ok(Worker { handoff, load })
    }
}

fn run_worker(
    index: usize,
    mut arrivals: mpsc::UnboundedReceiver<Arrival>,
    tier: Weak<SqlTier>,
    load: Arc<AtomicUsize>,
) {
    // Sockets and timers only: the signal and child-process drivers would cost every wake-up
    // a check (signals are handled on the main runtime).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build() {
        Ok(runtime) => runtime,
        Err(e) => return tracing::error!(error = %e, "SQL worker thread could not start"),
    };
    runtime.block_on(async move {
        let mut sessions = JoinSet::new();
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Bounded by the acceptor: it ends when the tier drains or is dropped.
        loop {
            tokio::select! {
                arrival = arrivals.recv() => {
                    let Some((stream, peer)) = arrival else { break };
                    let (Some(tier), Ok(stream)) = (tier.upgrade(), TcpStream::from_std(stream)) else {
                        load.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    };
                    let load = load.clone();
                    sessions.spawn(async move {
                        session::run(stream, peer, tier, index).await;
                        load.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                // Finished sessions are reaped as they end.
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                _ = sweep.tick() => {
                    if let Some(tier) = tier.upgrade() {
                        close_idle_backend_connections(&tier, index);
                    }
                }
            }
        }
        // Bounded by the sessions: a drain closes them at their next transaction boundary,
        // and the tier's shutdown deadline ends the process.
        while sessions.join_next().await.is_some() {}
    });
}

/// How often each worker looks for idle backend connections past `backend_idle_timeout`.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Closes this worker's idle backend connections that nobody borrowed for
/// `mysql.backend_idle_timeout`, or that are older than `mysql.backend_max_age`, and every
/// idle one of a drained replica (the operator wants its connections gone; a drained primary
/// still takes the writes).
fn close_idle_backend_connections(tier: &SqlTier, worker: usize) {
    let shared = tier.current();
    let now = std::time::Instant::now();
    let before = |limit: std::time::Duration| (!limit.is_zero()).then(|| now.checked_sub(limit)).flatten();
    let idle_since = before(shared.config.mysql.backend_idle_timeout);
    let opened_before = before(shared.config.mysql.backend_max_age);
    let backends = shared.router.backends();
    for backend in backends.all() {
        let emptied = backend.is_drained() && !backends.is_primary(backend.index);
        let idle_since = if emptied { Some(now) } else { idle_since };
        if idle_since.is_none() && opened_before.is_none() {
            continue;
        }
        let closed = backend.pool.close_idle(worker, idle_since, opened_before);
        if closed > 0 {
            tracing::debug!(backend = %backend.name, closed, "backend connections closed (backend_idle_timeout, backend_max_age, drained)");
        }
    }
}

/// Accepts SQL clients until the task is aborted or the tier drains, handing each to the
/// worker with the fewest sessions.
/// How long a new connection may wait in the backlog while every client slot is taken.
const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

pub async fn serve(listener: TcpListener, tier: Arc<SqlTier>) {
    let count = tier.current().config.mysql.workers();
    let workers: Vec<Worker> =
        (0..count).filter_map(|i| Worker::spawn(i, Arc::downgrade(&tier)).ok()).collect();
    if workers.is_empty() {
        return tracing::error!("no SQL worker thread could start");
    }
    let mut draining = tier.draining();
    let mut refusals = Refusals::default();
    let mut next = 0;
    loop {
        // At max_client_connections new connections wait in the kernel's backlog for a slot
        // (HAProxy's maxconn), up to QUEUE_WAIT; only then are they taken and refused.
        let cap = tier.current().config.mysql.max_client_connections;
        for _ in 0..QUEUE_WAIT.as_millis() / 10 {
            if tier.sessions() < cap {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tokio::select! {
            (stream, peer) = next_connection(&listener, "sql") => {
                let shared = tier.current();
                if !shared.config.mysql.firewall.permits(peer.ip()) {
                    shared.metrics.refused_by_firewall("sql");
                    refusals.refused("sql", peer);
                    continue;
                }
                drop(shared);
                let Ok(stream) = stream.into_std() else { continue };
                // One pass from a rotating start: ties go round.
                let Some(at) = (0..workers.len())
                    .map(|i| (next + i) % workers.len())
                    .min_by_key(|&i| workers[i].load.load(Ordering::Relaxed)) else { continue };
                next = (at + 1) % workers.len();
                workers[at].load.fetch_add(1, Ordering::Relaxed);
                if workers[at].handoff.send((stream, peer)).is_err() {
                    workers[at].load.fetch_sub(1, Ordering::Relaxed);
                }
            }
            _ = draining.changed() => return,
        }
    }
}
