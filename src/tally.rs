//! Counts of live connections by key, for per-source and per-user caps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Connections counted by a key (source address, user): `enter` returns the count with the
/// new one, `leave` takes it back and forgets keys that reach zero.
#[derive(Debug)]
pub struct Tally<K>(Mutex<HashMap<K, usize>>);

impl<K> Default for Tally<K> {
    fn default() -> Self {
        Tally(Mutex::new(HashMap::new()))
    }
}

impl<K: std::hash::Hash + Eq + Clone> Tally<K> {
    fn enter(&self, key: &K) -> usize {
        match self.0.lock() {
            Ok(mut counts) => {
                let n = counts.entry(key.clone()).or_insert(0);
                *n += 1;
                *n
            }
            Err(_) => 0,
        }
    }

    fn leave(&self, key: &K) {
        if let Ok(mut counts) = self.0.lock()
            && let Some(n) = counts.get_mut(key)
        {
            *n -= 1;
            if *n == 0 {
                counts.remove(key);
            }
        }
    }
}

/// One connection counted under `key` in a shared tally until dropped.
#[derive(Debug)]
pub struct Counted<K: std::hash::Hash + Eq + Clone> {
    tally: Arc<Tally<K>>,
    key: K,
    /// Connections under the key when this one was counted, itself included.
    pub count: usize,
}

impl<K: std::hash::Hash + Eq + Clone> Counted<K> {
    pub fn new(tally: Arc<Tally<K>>, key: K) -> Counted<K> {
        let count = tally.enter(&key);
        Counted { tally, key, count }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Counted<K> {
    fn drop(&mut self) {
        self.tally.leave(&self.key);
    }
}
