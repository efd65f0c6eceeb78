//! Routing: from a statement's classification and the session's state to a target.
//!
//! The rule table is `docs/routing.md`'s: a read goes to a replica only when it is shown to be
//! safe; everything else goes to the primary.

mod balance;

use std::sync::Arc;

pub use balance::{Balancer, RoundRobin};

use crate::backend::Backends;
use crate::backend::State;
use crate::classifier::{Classification, Destination, Effect, Hint, Reason};
use crate::config::AllReplicasDown;

/// Where a statement goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The next backend of the read pool (falls back along the rotation, then to the primary).
    ReadPool,
    /// `/* rwproxy:replica */`: the next replica, the primary only when no replica is usable
    /// (whether or not the primary takes reads otherwise).
    Replica,
    Primary,
    /// A session command: the primary when it can be reached, any read backend otherwise.
    PreferPrimary,
    /// One specific backend (a pinned transaction, or "the previous statement's backend").
    Backend(usize),
}

impl Target {
    /// A read that may go to any read backend (and needs a position under `session`
    /// consistency).
    pub fn is_read(self) -> bool {
        matches!(self, Target::ReadPool | Target::Replica)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub target: Target,
    pub reason: Reason,
}

/// The session state routing depends on.
#[derive(Debug, Clone, Default)]
pub struct SessionView {
    /// Backend the session is pinned to: an open transaction or `autocommit = 0`.
    pub pinned: Option<usize>,
    /// `LOCK TABLES`, `GET_LOCK()` or text `PREPARE` hold the session on the primary.
    pub primary_locked: bool,
    pub temporary_tables: bool,
    pub user_variables_on_primary: bool,
    /// Backend that ran the previous statement.
    pub last: Option<usize>,
    /// The pinned transaction runs optimistically on a read backend: the first statement that
    /// needs the primary moves it there.
    pub optimistic: bool,
    /// The session's next transaction may start on a read backend: its previous one did not
    /// need the primary (for a new session: most recent transactions through this proxy did
    /// not). A session whose transactions write keeps them on the primary from the start, so
    /// they are never replayed, and a conflict's retry starts there too.
    pub optimistic_next: bool,
    /// The session runs with `autocommit = 0` (its next statement may open a transaction).
    pub autocommit_off: bool,
    /// The session's next transaction starts on the primary: a one-shot `SET TRANSACTION`
    /// waits there for it, or the session is SERIALIZABLE (its reads lock).
    pub transaction_on_primary: bool,
    /// The pinned transaction was started `READ ONLY`.
    pub read_only_transaction: bool,
}

#[derive(Debug)]
pub struct Router {
    backends: Arc<Backends>,
    reads_include_primary: bool,
    all_replicas_down: AllReplicasDown,
    balancer: RoundRobin,
    /// Transactions start on a read backend (`optimistic_transactions`).
    optimistic: bool,
    /// Whether recent transactions through this proxy needed the primary.
    history: TransactionHistory,
    /// Each backend's share of the reads.
    weights: Weights,
}

/// The last 64 transactions through the proxy: one bit each, set when it needed the primary.
/// A new session's first transaction starts on a read backend only when at least three in four
/// of the last 32 did not.
#[derive(Debug, Default)]
struct TransactionHistory {
    bits: std::sync::atomic::AtomicU64,
    count: std::sync::atomic::AtomicU32,
}

impl TransactionHistory {
    const WINDOW: u32 = 32;

    fn record(&self, wrote: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let _ = self.bits.fetch_update(Relaxed, Relaxed, |b| Some(b << 1 | u64::from(wrote)));
        let _ = self.count.fetch_update(Relaxed, Relaxed, |c| Some((c + 1).min(64)));
    }

    fn mostly_read_only(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let seen = self.count.load(Relaxed).min(Self::WINDOW);
        let window = if seen >= 64 { u64::MAX } else { (1u64 << seen) - 1 };
        let wrote = (self.bits.load(Relaxed) & window).count_ones();
        seen >= 8 && wrote * 4 <= seen
    }
}

impl Router {
    pub fn new(
        backends: Arc<Backends>,
        reads_include_primary: bool,
        all_replicas_down: AllReplicasDown,
        optimistic: bool,
    ) -> Router {
        let balancer = RoundRobin::default();
        let history = TransactionHistory::default();
        let weights = Weights::default();
        Router { backends, reads_include_primary, all_replicas_down, balancer, optimistic, history, weights }
    }

    /// The router `config` describes, over `backends`.
    pub fn from_config(backends: Arc<Backends>, config: &crate::config::Config) -> Router {
        let routing = &config.mysql.routing;
        Router::new(
            backends,
            routing.reads_include_primary,
            config.monitor.all_replicas_down,
            routing.optimistic_transactions,
        )
        .with_weights(config.backends().map(|b| b.weight).collect())
    }

    /// Read weights by backend index (configuration order); all 1 unless given.
    pub fn with_weights(mut self, weights: Vec<u32>) -> Router {
        self.weights = Weights::new(weights);
        self
    }

    /// A backend's read weight.
    pub fn weight(&self, backend: usize) -> u32 {
        self.weights.of(backend)
    }

    /// A transaction ended; `wrote`: it needed the primary.
    pub fn transaction_ended(&self, wrote: bool) {
        self.history.record(wrote);
    }

    /// Whether a new session's first transaction may start on a read backend.
    pub fn new_sessions_optimistic(&self) -> bool {
        self.optimistic && self.history.mostly_read_only()
    }

    /// Whether transactions start optimistically on a read backend.
    pub fn optimistic(&self) -> bool {
        self.optimistic
    }

    /// The backends that take reads right now, in configuration order (for status pages; it
    /// does not advance the rotation).
    pub fn read_pool(&self) -> Vec<usize> {
        let primary = self.backends.primary().index;
        let pool: Vec<usize> = (0..self.backends.len())
            .filter(|&b| (b != primary || self.reads_include_primary) && self.backends.is_usable(b))
            .collect();
        if pool.iter().any(|&b| b != primary) {
            return pool;
        }
        match self.all_replicas_down {
            AllReplicasDown::Error => Vec::new(),
            AllReplicasDown::Primary => vec![primary],
            AllReplicasDown::LeastLagged => {
                let mut order = self.read_rotation(&[], primary, false, false, 0);
                order.truncate(1);
                order.into_vec()
            }
        }
    }

    pub fn backends(&self) -> &Arc<Backends> {
        &self.backends
    }

    /// Decides where a classified statement goes for a session in state `view`.
    pub fn decide(&self, class: &Classification, view: &SessionView) -> Decision {
        let decision = |target, reason| Decision { target, reason };
        if let Some(pinned) = view.pinned {
            // The session moves the transaction to the primary before running it. A setting
            // moves it too: a replay after it would run the transaction's earlier reads under
            // the new setting (another character set, sql_mode, time zone) and find them
            // different, where a direct connection has no reason to fail.
            if view.optimistic && (needs_primary(class) || class.destination == Destination::All) {
                return decision(Target::Primary, class.reason);
            }
            return decision(Target::Backend(pinned), Reason::Transaction);
        }
        if class.destination == Destination::All {
            return decision(Target::PreferPrimary, class.reason);
        }
        let may_read = !matches!(
            class.reason,
            Reason::Write | Reason::Transaction | Reason::MultiStatement | Reason::Unknown
        );
        match class.hint {
            Some(Hint::Primary) => return decision(Target::Primary, Reason::Hint),
            Some(Hint::Replica) if may_read && !view.primary_locked => {
                return decision(Target::Replica, Reason::Hint);
            }
            _ => {}
        }
        let held_on_primary = view.primary_locked || view.temporary_tables || view.user_variables_on_primary;
        let begins = matches!(class.effect, Effect::Begin | Effect::BeginReadOnly);
        if begins && view.transaction_on_primary {
            return decision(Target::Primary, Reason::Transaction);
        }
        if self.optimistic && class.effect == Effect::Begin && !held_on_primary && view.optimistic_next {
            return decision(Target::ReadPool, Reason::Transaction);
        }
        let reading = matches!(class.destination, Destination::Read | Destination::Last);
        if reading
            && view.autocommit_off
            && (!self.optimistic || !view.optimistic_next || view.transaction_on_primary)
        {
            return decision(Target::Primary, Reason::Transaction);
        }
        if reading && view.primary_locked {
            return decision(Target::Primary, Reason::SessionPinned);
        }
        if reading && view.temporary_tables {
            return decision(Target::Primary, Reason::TemporaryTable);
        }
        if reading && view.user_variables_on_primary && class.reads_user_variables {
            return decision(Target::Primary, Reason::UserVariable);
        }
        match class.destination {
            Destination::Read => decision(Target::ReadPool, class.reason),
            Destination::Last => decision(view.last.map_or(Target::ReadPool, Target::Backend), class.reason),
            Destination::Primary | Destination::All => decision(Target::Primary, class.reason),
        }
    }

    /// The backend `candidates` would try first, without advancing the rotation.
    pub fn would_pick(&self, target: Target, excluded: &[bool], lane: usize) -> Option<usize> {
        let primary = self.backends.primary().index;
        match target {
            Target::Primary | Target::PreferPrimary => Some(primary),
            Target::Backend(b) => Some(b),
            Target::ReadPool => self.read_rotation(excluded, primary, false, false, lane).first().copied(),
            Target::Replica => self.read_rotation(excluded, primary, false, true, lane).first().copied(),
        }
    }

    /// Backends to try for `target`, best first. `excluded` marks backends this session must not
    /// use (a session command failed to replay there). `lane`: the session's SQL worker.
    pub fn candidates(&self, target: Target, excluded: &[bool], lane: usize) -> Candidates {
        let primary = self.backends.primary().index;
        match target {
            Target::Primary => smallvec::smallvec![primary],
            Target::Backend(b) => smallvec::smallvec![b],
            Target::ReadPool => self.read_rotation(excluded, primary, true, false, lane),
            Target::Replica => self.read_rotation(excluded, primary, true, true, lane),
            Target::PreferPrimary => {
                let mut order: Candidates = smallvec::smallvec![primary];
                order.extend(
                    self.read_rotation(excluded, primary, true, false, lane)
                        .into_iter()
                        .filter(|b| *b != primary),
                );
                order
            }
        }
    }

    /// The read pool in rotation order starting at the balancer's pick, then the fallbacks:
    /// per `all_replicas_down` when no replica is usable, and backends the monitor still calls
    /// up but whose last connect failed.
    /// `replicas_only`: the primary is only the last fallback.
    fn read_rotation(
        &self,
        excluded: &[bool],
        primary: usize,
        advance: bool,
        replicas_only: bool,
        lane: usize,
    ) -> Candidates {
        let all = self.backends.all();
        let allowed = |b: usize| !excluded.get(b).copied().unwrap_or(false);
        let in_pool =
            |b: usize| allowed(b) && (b != primary || (self.reads_include_primary && !replicas_only));
        let mut order: Candidates =
            (0..all.len()).filter(|&b| in_pool(b) && self.backends.is_usable(b)).collect();
        // With weights, the rotation runs over the weight units of the usable backends: a
        // backend of weight w takes w consecutive picks of every round.
        let slots = self.weights.slots(&order);
        let start = if advance { self.balancer.next(slots, lane) } else { self.balancer.peek(slots, lane) };
        if let Some(start) = start {
            let at = self.weights.position(&order, start);
            order.rotate_left(at);
        }
        if !order.iter().any(|&b| b != primary) {
            match self.all_replicas_down {
                AllReplicasDown::Primary => {}
                AllReplicasDown::Error => return Candidates::new(),
                AllReplicasDown::LeastLagged => {
                    let least = all
                        .iter()
                        .filter(|b| {
                            b.index != primary
                                && allowed(b.index)
                                && b.health.state() == State::Lagging
                                && !b.is_drained()
                        })
                        .min_by_key(|b| b.health.lag().unwrap_or(std::time::Duration::MAX));
                    if let Some(b) = least {
                        order.insert(0, b.index);
                    }
                }
            }
        }
        if !order.contains(&primary) {
            order.push(primary);
        }
        let skipped = (0..all.len()).filter(|&b| {
            in_pool(b)
                && !order.contains(&b)
                && all[b].health.state() == State::Up
                && !self.backends.is_usable(b)
        });
        let skipped: Candidates = skipped.collect();
        order.extend(skipped);
        order
    }
}

/// Backends to try for a statement, best first: inline up to 8 (no allocation per statement).
pub type Candidates = smallvec::SmallVec<[usize; 8]>;

/// Inside an optimistic transaction: whether the statement must run on the primary (a write,
/// a locking read, …). `COMMIT`, `ROLLBACK` and session commands stay where the transaction is.
fn needs_primary(class: &Classification) -> bool {
    class.hint == Some(Hint::Primary)
        || class.destination == Destination::Primary && class.reason != Reason::Transaction
}

#[cfg(test)]
mod tests;

/// Read weights by backend index. Equal weights (the default) rotate over backends as they are.
#[derive(Debug, Default)]
struct Weights {
    /// Empty when every weight is the same.
    by_backend: Vec<u32>,
}

impl Weights {
    fn new(weights: Vec<u32>) -> Weights {
        let equal = weights.windows(2).all(|w| w[0] == w[1]);
        Weights { by_backend: if equal { Vec::new() } else { weights } }
    }

    fn of(&self, backend: usize) -> u32 {
        self.by_backend.get(backend).copied().unwrap_or(1)
    }

    /// How many picks one round over `order` has.
    fn slots(&self, order: &[usize]) -> usize {
        if self.by_backend.is_empty() {
            return order.len();
        }
        order.iter().map(|&b| self.of(b) as usize).sum()
    }

    /// The position in `order` of pick `slot`.
    fn position(&self, order: &[usize], slot: usize) -> usize {
        if self.by_backend.is_empty() {
            return slot;
        }
        let mut left = slot;
        for (at, &b) in order.iter().enumerate() {
            let weight = self.of(b) as usize;
            if left < weight {
                return at;
            }
            left -= weight;
        }
        0
    }
}
