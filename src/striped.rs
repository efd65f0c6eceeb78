//! Counters that every SQL worker writes on every query and that are read rarely (the status
//! page, the monitor's samples, the read rotation's start): one cache line per worker, so
//! workers on different cores never write the same line; a read sums them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Workers beyond this share slots (still correct, only no longer contention-free).
const SLOTS: usize = 16;

/// One counter, per worker.
#[derive(Debug)]
pub struct Striped(StripedArray);

impl Default for Striped {
    fn default() -> Self {
        Striped(StripedArray::new(1))
    }
}

impl Striped {
    /// Adds `n` in `worker`'s slot; returns that slot's previous value.
    pub fn add(&self, worker: usize, n: u64) -> u64 {
        self.0.add(worker, 0, n)
    }

    /// `worker`'s slot alone.
    pub fn own(&self, worker: usize) -> u64 {
        self.0.own(worker, 0)
    }

    pub fn sum(&self) -> u64 {
        self.0.sum(0)
    }
}

/// Many counters that every worker writes: one block per worker slot, blocks at least a cache
/// line apart, summed when read (the per-route query counts of a backend, the latency
/// histogram's buckets).
#[derive(Debug)]
pub struct StripedArray {
    width: usize,
    stride: usize,
    cells: Box<[AtomicU64]>,
}

impl StripedArray {
    pub fn new(width: usize) -> StripedArray {
        // A cache line (eight counters) of padding after each block.
        let stride = width.div_ceil(8) * 8 + 8;
        StripedArray { width, stride, cells: (0..SLOTS * stride).map(|_| AtomicU64::new(0)).collect() }
    }

    fn cell(&self, worker: usize, index: usize) -> Option<&AtomicU64> {
        (index < self.width).then(|| &self.cells[(worker % SLOTS) * self.stride + index])
    }

    /// Adds `n` to counter `index` in `worker`'s block; returns its previous value there (0
    /// for an index past the width, which counts nothing).
    pub fn add(&self, worker: usize, index: usize, n: u64) -> u64 {
        self.cell(worker, index).map_or(0, |c| c.fetch_add(n, Ordering::Relaxed))
    }

    /// Counter `index` in `worker`'s block alone.
    pub fn own(&self, worker: usize, index: usize) -> u64 {
        self.cell(worker, index).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn sum(&self, index: usize) -> u64 {
        (0..SLOTS).filter_map(|slot| self.cell(slot, index)).map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// A `Notify` per worker, for an event every worker's sessions wait on once per statement (a
/// backend marked down): a session registers on its own worker's line, so workers never take
/// the same waiter lock; the rare event wakes them all.
#[derive(Debug, Default)]
pub struct StripedNotify {
    slots: [NotifySlot; SLOTS],
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct NotifySlot(tokio::sync::Notify);

impl StripedNotify {
    pub fn notified(&self, worker: usize) -> tokio::sync::futures::Notified<'_> {
        self.slots[worker % SLOTS].0.notified()
    }

    pub fn notify_waiters(&self) {
        for slot in &self.slots {
            slot.0.notify_waiters();
        }
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

    #[test]
    fn array_cells_add_up_across_workers() {
        let a = super::StripedArray::new(10);
        a.add(0, 3, 2);
        a.add(1, 3, 5);
        a.add(17, 9, 1);
        a.add(0, 10, 7); // past the width: ignored
        assert_eq!((a.sum(3), a.sum(9), a.sum(0), a.sum(10)), (7, 1, 0, 0));
    }

    #[tokio::test]
    async fn every_worker_hears_the_event() {
        let n = super::StripedNotify::default();
        let mut first = std::pin::pin!(n.notified(0));
        let mut other = std::pin::pin!(n.notified(21));
        first.as_mut().enable();
        other.as_mut().enable();
        n.notify_waiters();
        tokio::time::timeout(std::time::Duration::from_secs(1), async {
            first.await;
            other.await;
        })
        .await
        .expect("both woken");
    }
}
