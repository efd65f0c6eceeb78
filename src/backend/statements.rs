//! The prepared statements a backend connection holds, by their text.
//!
//! With multiplexing a connection serves many client sessions, one statement at a time, and a
//! session's statements run on whichever connection it borrows. The server-side statements stay
//! with the connection: a session that executes a statement the connection already has (any
//! session prepared it) uses it as it is, and one that lacks it is prepared there first. The
//! cache is bounded; the oldest statement is closed on the server to make room.

use std::collections::HashMap;

/// Statements one connection keeps prepared. Beyond this the oldest is closed (MySQL's
/// `max_prepared_stmt_count` is 16,382 per server by default, shared by all connections).
pub const MAX_CACHED_STATEMENTS: usize = 128;

/// One server-side statement.
#[derive(Debug, Clone)]
pub struct Cached {
    pub id: u32,
    /// Insertion order, for eviction.
    order: u64,
}

#[derive(Debug, Default)]
pub struct StatementCache {
    /// By the COM_STMT_PREPARE payload.
    map: HashMap<Vec<u8>, Cached>,
    next_order: u64,
    /// Changes whenever a statement leaves the cache: a session's memo of "statement X is id N
    /// on this connection" holds only for the epoch it was made in.
    epoch: u64,
    /// The parameter types last bound to each server statement. The server keeps them until
    /// another execution binds others, perhaps another session's: an execution whose types are
    /// these sends none, any other sends its own.
    bound: HashMap<u32, Vec<u8>, FastIds>,
}

/// A fast hash for statement ids, which the server or rwproxy hands out (no client picks
/// them): SipHash cost about 120 instructions a lookup, and an execution looks several up.
pub type FastIds = foldhash::fast::RandomState;

impl StatementCache {
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn get(&self, prepare: &[u8]) -> Option<&Cached> {
        self.map.get(prepare)
    }

    /// The parameter types statement `id` holds, when an execution bound them.
    pub fn bound_types(&self, id: u32) -> Option<&[u8]> {
        self.bound.get(&id).map(Vec::as_slice)
    }

    /// An execution of statement `id` bound `types`.
    pub fn bind_types(&mut self, id: u32, types: &[u8]) {
        if self.bound_types(id) != Some(types) {
            self.bound.insert(id, types.to_vec());
        }
    }

    /// Records statement `id` for `prepare`. Returns the server ids to close: the one it
    /// replaces (the same text prepared again) and the oldest when the cache was full.
    pub fn insert(&mut self, prepare: &[u8], id: u32) -> Vec<u32> {
        let mut close = Vec::new();
        self.next_order += 1;
        let cached = Cached { id, order: self.next_order };
        if let Some(old) = self.map.insert(prepare.to_vec(), cached)
            && old.id != id
        {
            close.push(old.id);
            self.epoch += 1;
        }
        if self.map.len() > MAX_CACHED_STATEMENTS
            && let Some(oldest) = self.map.iter().min_by_key(|(_, c)| c.order).map(|(k, _)| k.clone())
            && let Some(old) = self.map.remove(&oldest)
        {
            close.push(old.id);
            self.epoch += 1;
        }
        for id in &close {
            self.bound.remove(id);
        }
        close
    }

    /// The server dropped every statement (COM_RESET_CONNECTION).
    pub fn clear(&mut self) {
        self.map.clear();
        self.bound.clear();
        self.epoch += 1;
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_statement_makes_room_and_the_epoch_moves() {
        let mut cache = StatementCache::default();
        for i in 0..MAX_CACHED_STATEMENTS as u32 {
            assert!(cache.insert(format!("SELECT {i}").as_bytes(), i + 1).is_empty());
        }
        let epoch = cache.epoch();
        assert_eq!(cache.insert(b"SELECT new", 1000), vec![1], "the first one is closed");
        assert_ne!(cache.epoch(), epoch);
        assert!(cache.get(b"SELECT 0").is_none());
        assert_eq!(cache.get(b"SELECT new").map(|c| c.id), Some(1000));
        assert_eq!(cache.len(), MAX_CACHED_STATEMENTS);
    }

    #[test]
    fn bound_types_are_kept_per_statement_until_it_goes() {
        let mut cache = StatementCache::default();
        assert!(cache.insert(b"SELECT ?", 5).is_empty());
        assert!(cache.insert(b"SELECT ?, ?", 6).is_empty());
        assert_eq!(cache.bound_types(5), None);
        cache.bind_types(5, &[3, 0]);
        cache.bind_types(6, &[253, 0, 3, 0]);
        assert_eq!(cache.bound_types(5), Some(&[3u8, 0][..]));
        cache.bind_types(5, &[8, 0]);
        assert_eq!(cache.bound_types(5), Some(&[8u8, 0][..]), "another session bound others");
        assert_eq!(cache.insert(b"SELECT ?", 9), vec![5]);
        assert_eq!(cache.bound_types(5), None, "closed with its statement");
        assert_eq!(cache.bound_types(6), Some(&[253u8, 0, 3, 0][..]));
        cache.clear();
        assert_eq!(cache.bound_types(6), None);
    }

    #[test]
    fn preparing_the_same_text_again_replaces_it() {
        let mut cache = StatementCache::default();
        assert!(cache.insert(b"SELECT ?", 5).is_empty());
        assert_eq!(cache.insert(b"SELECT ?", 9), vec![5]);
        assert_eq!(cache.get(b"SELECT ?").map(|c| c.id), Some(9));
        cache.clear();
        assert!(cache.is_empty());
    }
}
