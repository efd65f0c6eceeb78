//! Backend selection algorithms, behind one small trait.

use crate::striped::Striped;

/// Picks the position of the next backend among `n` candidates, for a session on SQL worker
/// `lane`.
pub trait Balancer {
    fn next(&self, n: usize, lane: usize) -> Option<usize>;
    /// What `next` would return, without moving on (for explaining a decision).
    fn peek(&self, n: usize, lane: usize) -> Option<usize>;
}

/// Strict rotation shared by the sessions of a SQL worker, so short sessions still spread
/// evenly: one rotation per worker (each strict, so together they stay even), so that workers
/// on different cores do not write one shared counter on every read.
#[derive(Debug, Default)]
pub struct RoundRobin {
    counter: Striped,
}

impl Balancer for RoundRobin {
    fn next(&self, n: usize, lane: usize) -> Option<usize> {
        (n > 0).then(|| (self.counter.add(lane, 1) % n as u64) as usize)
    }

    fn peek(&self, n: usize, lane: usize) -> Option<usize> {
        (n > 0).then(|| (self.counter.own(lane) % n as u64) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_and_handles_empty() {
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..6).filter_map(|_| rr.next(3, 0)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(rr.next(0, 0), None);
        assert_eq!(rr.next(3, 1), Some(0), "each worker has its own rotation");
    }
}
