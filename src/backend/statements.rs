//! The prepared statements a backend connection holds, by their text and the context they were
//! prepared in.
//!
//! With multiplexing a connection serves many client sessions, one statement at a time, and a
//! session's statements run on whichever connection it borrows. The server-side statements stay
//! with the connection: a session that executes a statement the connection already has uses it
//! as it is, and one that lacks it is prepared there first. A server binds a statement to what
//! was in force when it was prepared (the default database its table names resolve in, the
//! `sql_mode` and character set its text was parsed with), so a statement is shared only with
//! sessions whose statement was prepared in the same context ([`context_key`]). The cache is
//! bounded; the oldest statement is closed on the server to make room.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Statements one connection keeps prepared. Beyond this the oldest is closed (MySQL's
/// `max_prepared_stmt_count` is 16,382 per server by default, shared by all connections).
pub const MAX_CACHED_STATEMENTS: usize = 128;

/// One server-side statement.
#[derive(Debug, Clone)]
pub struct Cached {
    pub id: u32,
    /// The context it was prepared in ([`context_key`]).
    context: u64,
    /// Insertion order, for eviction.
    order: u64,
}

/// A digest of what a server binds a statement to at its prepare: the default database and the
/// settings that change how its text is parsed (in the order they ran).
pub fn context_key<'a>(database: Option<&str>, settings: impl Iterator<Item = &'a [u8]>) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    database.hash(&mut h);
    for setting in settings {
        setting.hash(&mut h);
    }
    h.finish()
}

#[derive(Debug, Default)]
pub struct StatementCache {
    /// By the COM_STMT_PREPARE payload; one entry per context it was prepared in (almost
    /// always one).
    map: HashMap<Vec<u8>, Vec<Cached>>,
    /// Entries over all texts.
    count: usize,
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

    /// The statement prepared from `prepare` in `context`.
    pub fn get(&self, context: u64, prepare: &[u8]) -> Option<&Cached> {
        self.map.get(prepare)?.iter().find(|c| c.context == context)
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

    /// Records statement `id` for `prepare` in `context`. Returns the server ids to close: the
    /// one it replaces (the same text prepared again in the same context) and the oldest when
    /// the cache was full.
    pub fn insert(&mut self, context: u64, prepare: &[u8], id: u32) -> Vec<u32> {
        let mut close = Vec::new();
        self.next_order += 1;
        let cached = Cached { id, context, order: self.next_order };
        let entries = self.map.entry(prepare.to_vec()).or_default();
        match entries.iter_mut().find(|c| c.context == context) {
            Some(old) => {
                if old.id != id {
                    close.push(old.id);
                    self.epoch += 1;
                }
                *old = cached;
            }
            None => {
                entries.push(cached);
                self.count += 1;
            }
        }
        if self.count > MAX_CACHED_STATEMENTS
            && let Some(oldest) = self.oldest()
            && let Some(old) = self.remove(&oldest)
        {
            close.push(old.id);
            self.epoch += 1;
        }
        for id in &close {
            self.bound.remove(id);
        }
        close
    }

    /// The text and context of the entry inserted first.
    fn oldest(&self) -> Option<(Vec<u8>, u64)> {
        self.map
            .iter()
            .flat_map(|(text, entries)| entries.iter().map(move |c| (text, c)))
            .min_by_key(|(_, c)| c.order)
            .map(|(text, c)| (text.clone(), c.context))
    }

    fn remove(&mut self, (text, context): &(Vec<u8>, u64)) -> Option<Cached> {
        let entries = self.map.get_mut(text)?;
        let at = entries.iter().position(|c| c.context == *context)?;
        let old = entries.swap_remove(at);
        if entries.is_empty() {
            self.map.remove(text);
        }
        self.count -= 1;
        Some(old)
    }

    /// The server dropped every statement (COM_RESET_CONNECTION).
    pub fn clear(&mut self) {
        self.map.clear();
        self.bound.clear();
        self.count = 0;
        self.epoch += 1;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_statement_makes_room_and_the_epoch_moves() {
        let mut cache = StatementCache::default();
        for i in 0..MAX_CACHED_STATEMENTS as u32 {
            assert!(cache.insert(0, format!("SELECT {i}").as_bytes(), i + 1).is_empty());
        }
        let epoch = cache.epoch();
        assert_eq!(cache.insert(0, b"SELECT new", 1000), vec![1], "the first one is closed");
        assert_ne!(cache.epoch(), epoch);
        assert!(cache.get(0, b"SELECT 0").is_none());
        assert_eq!(cache.get(0, b"SELECT new").map(|c| c.id), Some(1000));
        assert_eq!(cache.len(), MAX_CACHED_STATEMENTS);
    }

    #[test]
    fn bound_types_are_kept_per_statement_until_it_goes() {
        let mut cache = StatementCache::default();
        assert!(cache.insert(0, b"SELECT ?", 5).is_empty());
        assert!(cache.insert(0, b"SELECT ?, ?", 6).is_empty());
        assert_eq!(cache.bound_types(5), None);
        cache.bind_types(5, &[3, 0]);
        cache.bind_types(6, &[253, 0, 3, 0]);
        assert_eq!(cache.bound_types(5), Some(&[3u8, 0][..]));
        cache.bind_types(5, &[8, 0]);
        assert_eq!(cache.bound_types(5), Some(&[8u8, 0][..]), "another session bound others");
        assert_eq!(cache.insert(0, b"SELECT ?", 9), vec![5]);
        assert_eq!(cache.bound_types(5), None, "closed with its statement");
        assert_eq!(cache.bound_types(6), Some(&[253u8, 0, 3, 0][..]));
        cache.clear();
        assert_eq!(cache.bound_types(6), None);
    }

    #[test]
    fn preparing_the_same_text_again_replaces_it() {
        let mut cache = StatementCache::default();
        assert!(cache.insert(0, b"SELECT ?", 5).is_empty());
        assert_eq!(cache.insert(0, b"SELECT ?", 9), vec![5]);
        assert_eq!(cache.get(0, b"SELECT ?").map(|c| c.id), Some(9));
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn the_same_text_in_another_context_is_another_statement() {
        let in_a = context_key(Some("a"), std::iter::empty());
        let in_b = context_key(Some("b"), std::iter::empty());
        let ansi = context_key(Some("a"), [&b"\x03SET sql_mode = 'ANSI'"[..]].into_iter());
        assert_ne!(in_a, in_b);
        assert_ne!(in_a, ansi);
        let mut cache = StatementCache::default();
        assert!(cache.insert(in_a, b"INSERT INTO t VALUES (?)", 5).is_empty());
        assert!(cache.get(in_b, b"INSERT INTO t VALUES (?)").is_none(), "not shared across databases");
        assert!(cache.get(ansi, b"INSERT INTO t VALUES (?)").is_none(), "nor across sql_mode");
        assert!(cache.insert(in_b, b"INSERT INTO t VALUES (?)", 6).is_empty(), "both kept");
        assert_eq!(cache.get(in_a, b"INSERT INTO t VALUES (?)").map(|c| c.id), Some(5));
        assert_eq!(cache.get(in_b, b"INSERT INTO t VALUES (?)").map(|c| c.id), Some(6));
        assert_eq!(cache.len(), 2);
    }
}
