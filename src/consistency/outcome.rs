//! What happened to reads that needed a position, and to optimistic transactions: the
//! label values of their metrics.

/// How a read with a position to see was placed, for metrics and `EXPLAIN ROUTE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    ReplicaReady,
    Waited,
    Primary,
}

impl ReadOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadOutcome::ReplicaReady => "replica_ready",
            ReadOutcome::Waited => "waited",
            ReadOutcome::Primary => "primary",
        }
    }
}

/// How an optimistic transaction ended, for `rwproxy_optimistic_transactions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimisticOutcome {
    /// Committed or rolled back on the replica: it never needed the primary.
    Replica,
    /// Moved to the primary with identical results.
    Moved,
    /// A replayed result differed: 1213.
    Conflict,
    /// It had read more than `optimistic_max_bytes` (or something not replayable): 1213.
    TooLarge,
}

impl OptimisticOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            OptimisticOutcome::Replica => "replica",
            OptimisticOutcome::Moved => "moved",
            OptimisticOutcome::Conflict => "conflict",
            OptimisticOutcome::TooLarge => "too_large",
        }
    }
}
