//! Memory held for clients across all connections: a shared limit on bytes that clients can
//! make rwproxy keep (long data of prepared statements, buffered HTTP request bodies), so that
//! many connections each under their own limit cannot add up to an exhausted machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    used: AtomicUsize,
    limit: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget { inner: Arc::new(Inner { used: AtomicUsize::new(0), limit: AtomicUsize::new(limit) }) }
    }

    /// A reload's new limit; what is held stays held.
    pub fn set_limit(&self, limit: usize) {
        self.inner.limit.store(limit, Ordering::Relaxed);
    }

    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// An empty hold on this budget, to grow as bytes arrive.
    pub fn hold(&self) -> Held {
        Held { budget: self.clone(), bytes: 0 }
    }

    fn take(&self, n: usize) -> bool {
        let limit = self.inner.limit.load(Ordering::Relaxed);
        self.inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= limit)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.inner.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Bytes held on a budget by one holder; given back when dropped.
#[derive(Debug)]
pub struct Held {
    budget: Budget,
    bytes: usize,
}

impl Held {
    /// Takes `n` more bytes; false (and nothing taken) when the budget has no room.
    pub fn grow(&mut self, n: usize) -> bool {
        let ok = self.budget.take(n);
        if ok {
            self.bytes += n;
        }
        ok
    }

    /// Gives `n` bytes back (at most what is held).
    pub fn shrink(&mut self, n: usize) {
        let n = n.min(self.bytes);
        self.budget.give(n);
        self.bytes -= n;
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_add_up_to_the_limit_and_are_given_back() {
        let budget = Budget::new(100);
        let mut a = budget.hold();
        let mut b = budget.hold();
        assert!(a.grow(60));
        assert!(!b.grow(41), "over the shared limit");
        assert!(b.grow(40));
        assert_eq!(budget.used(), 100);
        a.shrink(10);
        assert_eq!(budget.used(), 90);
        drop(b);
        assert_eq!(budget.used(), 50);
        drop(a);
        assert_eq!(budget.used(), 0);
    }
}
