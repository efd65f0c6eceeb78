//! Counters that every SQL worker writes on every query and that are read rarely (the status
//! page, the monitor's samples, the read rotation's start): one cache line per worker, so
//! workers on different cores never write the same line; a read sums them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Workers beyond this share slots (still correct, only no longer contention-free).
const SLOTS: usize = 16;

#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot(AtomicU64);

#[derive(Debug, Default)]
pub struct Striped {
    slots: [Slot; SLOTS],
}

impl Striped {
    /// Adds `n` in `worker`'s slot; returns that slot's previous value.
    pub fn add(&self, worker: usize, n: u64) -> u64 {
        self.slots[worker % SLOTS].0.fetch_add(n, Ordering::Relaxed)
    }

    /// `worker`'s slot alone.
    pub fn own(&self, worker: usize) -> u64 {
        self.slots[worker % SLOTS].0.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> u64 {
        self.slots.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn slots_add_up() {
        let s = super::Striped::default();
        assert_eq!(s.add(0, 2), 0);
        assert_eq!(s.add(1, 3), 0);
        assert_eq!(s.add(17, 1), 3, "worker 17 shares worker 1's slot");
        assert_eq!((s.own(0), s.sum()), (2, 6));
    }
}
