//! A backend's health as the monitor last judged it, readable by every session without locks.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::time::Duration;

/// Where a backend stands. Only `Up` backends serve reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Up,
    /// Replication lag above `max_replication_lag`.
    Lagging,
    /// A replication thread is stopped or failing.
    ReplicationStopped,
    /// Connect or ping failed.
    Down,
}

impl State {
    pub const ALL: [State; 4] = [State::Up, State::Lagging, State::ReplicationStopped, State::Down];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Lagging => "lagging",
            State::ReplicationStopped => "replication_stopped",
            State::Down => "down",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Lagging,
            2 => State::ReplicationStopped,
            3 => State::Down,
            _ => State::Up,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            State::Up => 0,
            State::Lagging => 1,
            State::ReplicationStopped => 2,
            State::Down => 3,
        }
    }
}

/// Health plus the counters the status page shows.
#[derive(Debug)]
pub struct Health {
    state: AtomicU8,
    /// Replication lag in microseconds; -1 when unknown (or not a replica).
    lag_us: AtomicI64,
    reason: Mutex<String>,
    /// Statements this backend ran for clients, by route and routing reason (indexed by
    /// `crate::metrics`, for `rwproxy_queries_total`): written per worker, summed when read.
    pub routed: crate::striped::StripedArray,
    /// Open client-session connections to this backend.
    pub connections: AtomicI64,
    /// `@@read_only` as last seen: 0 unknown, 1 off, 2 on.
    read_only: AtomicU8,
    /// Recent samples for the status page's chart, oldest first.
    history: Mutex<VecDeque<Sample>>,
    /// Woken when the monitor marks the backend down: sessions waiting on it give up then.
    down: crate::striped::StripedNotify,
    /// What the backend replicates from, as its replication status says: `None` not read,
    /// `Some(None)` it replicates from no one (or its I/O thread is stopped).
    source: Mutex<Option<Option<String>>>,
    /// Why the backend is a stale former primary (writable while the replicas follow another
    /// backend), when it is one: it takes no reads, and is fenced when rwproxy may.
    stale: Mutex<Option<String>>,
    /// On the primary: why the monitor cannot write its heartbeat there, if it cannot.
    heartbeat_problem: Mutex<Option<String>>,
}

/// One monitor observation kept for the status page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the proxy started.
    pub at: f64,
    pub lag_ms: Option<f64>,
    pub queries: u64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: AtomicU8::new(State::Up.to_u8()),
            lag_us: AtomicI64::new(-1),
            reason: Mutex::new(String::new()),
            routed: crate::striped::StripedArray::new(crate::metrics::ROUTED_SERIES),
            connections: AtomicI64::new(0),
            read_only: AtomicU8::new(0),
            history: Mutex::new(VecDeque::new()),
            down: crate::striped::StripedNotify::default(),
            source: Mutex::new(None),
            stale: Mutex::new(None),
            heartbeat_problem: Mutex::new(None),
        }
    }
}

impl Health {
    /// What the backend replicates from (`None`: not known yet).
    pub fn source(&self) -> Option<Option<String>> {
        self.source.lock().ok().and_then(|s| s.clone())
    }

    pub fn set_source(&self, source: Option<Option<String>>) {
        if let Ok(mut s) = self.source.lock() {
            *s = source;
        }
    }

    /// Why the backend is a stale former primary, if it is one.
    pub fn stale(&self) -> Option<String> {
        self.stale.lock().ok().and_then(|s| s.clone())
    }

    pub fn set_stale(&self, why: Option<String>) {
        if let Ok(mut s) = self.stale.lock() {
            *s = why;
        }
    }

    /// Why the heartbeat cannot be written on this backend (the primary), if it cannot.
    pub fn heartbeat_problem(&self) -> Option<String> {
        self.heartbeat_problem.lock().ok().and_then(|s| s.clone())
    }

    pub fn set_heartbeat_problem(&self, why: Option<String>) {
        if let Ok(mut s) = self.heartbeat_problem.lock() {
            *s = why;
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn set_state(&self, state: State, reason: &str) {
        if let Ok(mut r) = self.reason.lock() {
            reason.clone_into(&mut r);
        }
        let old = State::from_u8(self.state.swap(state.to_u8(), Ordering::Relaxed));
        if state == State::Down && old != State::Down {
            self.down.notify_waiters();
        }
    }

    /// Completes when the monitor next marks the backend down (enable it before checking the
    /// state, so a change in between is not missed).
    /// Statements this backend ran for clients, over every route and reason.
    pub fn queries(&self) -> u64 {
        (0..crate::metrics::ROUTED_SERIES).map(|i| self.routed.sum(i)).sum()
    }

    /// `worker`: the waiting session's SQL worker (each worker has its own waiter list).
    pub fn marked_down(&self, worker: usize) -> tokio::sync::futures::Notified<'_> {
        self.down.notified(worker)
    }

    pub fn reason(&self) -> String {
        self.reason.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn lag(&self) -> Option<Duration> {
        let us = self.lag_us.load(Ordering::Relaxed);
        u64::try_from(us).ok().map(Duration::from_micros)
    }

    pub fn read_only(&self) -> Option<bool> {
        match self.read_only.load(Ordering::Relaxed) {
            1 => Some(false),
            2 => Some(true),
            _ => None,
        }
    }

    pub fn set_read_only(&self, read_only: Option<bool>) {
        self.read_only.store(read_only.map_or(0, |r| if r { 2 } else { 1 }), Ordering::Relaxed);
    }

    /// Appends a sample, keeping at most `keep`.
    pub fn record(&self, sample: Sample, keep: usize) {
        if let Ok(mut h) = self.history.lock() {
            h.push_back(sample);
            while h.len() > keep {
                h.pop_front();
            }
        }
    }

    pub fn history(&self) -> Vec<Sample> {
        self.history.lock().map(|h| h.iter().copied().collect()).unwrap_or_default()
    }

    pub fn set_lag(&self, lag: Option<Duration>) {
        let us = lag.map_or(-1, |l| i64::try_from(l.as_micros()).unwrap_or(i64::MAX));
        self.lag_us.store(us, Ordering::Relaxed);
    }
}
