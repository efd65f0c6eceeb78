//! Backend selection algorithms, behind one small trait.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Picks the position of the next backend among `n` candidates.
pub trait Balancer {
    fn next(&self, n: usize) -> Option<usize>;
    /// What `next` would return, without moving on (for explaining a decision).
    fn peek(&self, n: usize) -> Option<usize>;
}

/// Strict rotation shared by every session, so short sessions still spread evenly.
#[derive(Debug, Default)]
pub struct RoundRobin {
    counter: AtomicUsize,
}

impl Balancer for RoundRobin {
    fn next(&self, n: usize) -> Option<usize> {
        (n > 0).then(|| self.counter.fetch_add(1, Ordering::Relaxed) % n)
    }

    fn peek(&self, n: usize) -> Option<usize> {
        (n > 0).then(|| self.counter.load(Ordering::Relaxed) % n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_and_handles_empty() {
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..6).filter_map(|_| rr.next(3)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(rr.next(0), None);
    }
}
