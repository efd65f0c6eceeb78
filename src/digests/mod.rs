//! Statement digests (ProxySQL's `stats_mysql_query_digest`): every statement that reaches a
//! backend is counted under its digest — its text with the literals replaced (see
//! [`normalize`]) — with its time, errors, and where it ran and why. `GET /queries` lists
//! them; it answers "which statements cost the most" and "why does this one go to the
//! primary".
//!
//! Each SQL worker keeps its own table behind its own lock (only the admin listener ever waits
//! on it), so recording a statement writes nothing another worker touches.

mod key;
mod normalize;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

pub use key::key;
pub use normalize::normalize;

/// Bytes of a digest's text kept (longer statements are cut; their digest covers all of it).
const TEXT_LIMIT: usize = 1024;

/// A statement as the digest table needs it: its key, and its text for the first time the key
/// is seen (`None` when the text was given earlier, at a prepare).
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub key: u64,
    pub text: Option<&'a [u8]>,
}

impl<'a> Seen<'a> {
    /// A statement given as text (COM_QUERY).
    pub fn text(sql: &'a [u8]) -> Seen<'a> {
        Seen { key: key(sql), text: Some(sql) }
    }
}

fn text(sql: &[u8]) -> String {
    let mut text =
        normalize::Text { bytes: Vec::with_capacity(sql.len().min(TEXT_LIMIT)), limit: TEXT_LIMIT };
    normalize(sql, &mut text);
    String::from_utf8_lossy(&text.bytes).into_owned()
}

/// What one digest has seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: u64,
    pub text: String,
    pub count: u64,
    pub errors: u64,
    pub total: Duration,
    pub max: Duration,
    pub on_primary: u64,
    pub on_replicas: u64,
    /// Why the last one went where it went (`Reason::as_str`).
    pub reason: &'static str,
    pub first_seen: SystemTime,
}

impl Entry {
    fn new(key: u64, text: String) -> Entry {
        Entry {
            key,
            text,
            count: 0,
            errors: 0,
            total: Duration::ZERO,
            max: Duration::ZERO,
            on_primary: 0,
            on_replicas: 0,
            reason: "",
            first_seen: SystemTime::now(),
        }
    }

    /// The mean time of one run.
    pub fn mean(&self) -> Duration {
        self.total.checked_div(u32::try_from(self.count).unwrap_or(u32::MAX)).unwrap_or_default()
    }

    fn add(&mut self, other: &Entry) {
        self.count += other.count;
        self.errors += other.errors;
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.on_primary += other.on_primary;
        self.on_replicas += other.on_replicas;
        self.first_seen = self.first_seen.min(other.first_seen);
        if !other.reason.is_empty() {
            self.reason = other.reason;
        }
    }

    fn zero(&mut self) {
        let (key, text) = (self.key, std::mem::take(&mut self.text));
        *self = Entry::new(key, text);
    }
}

/// One statement's run, as recorded.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub on_primary: bool,
    pub reason: &'static str,
    pub took: Duration,
    pub error: bool,
}

/// The keys are hashes already: used as they are.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Table {
    entries: HashMap<u64, Entry, BuildHasherDefault<KeyHasher>>,
    /// Statements whose digest came after the table was full.
    other: Entry,
}

/// Key of the entry that counts statements over the limit.
pub const OTHER: u64 = 0;

impl Table {
    fn new() -> Table {
        Table {
            entries: HashMap::default(),
            other: Entry::new(OTHER, "(other statements: over query_digests_max)".into()),
        }
    }

    fn entry(&mut self, key: u64, text: Option<&[u8]>, limit: usize) -> &mut Entry {
        let full = self.entries.len() >= limit;
        if full && !self.entries.contains_key(&key) {
            return &mut self.other;
        }
        self.entries.entry(key).or_insert_with(|| {
            Entry::new(key, text.map_or_else(|| "(prepared statement)".to_string(), self::text))
        })
    }
}

/// Every worker's digest table.
pub struct Digests {
    workers: Vec<Mutex<Table>>,
    /// Digests kept per worker.
    limit: usize,
}

impl std::fmt::Debug for Digests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Digests").field("workers", &self.workers.len()).field("limit", &self.limit).finish()
    }
}

impl Digests {
    /// Tables for `workers` SQL workers, `max` digests in all (split between them).
    pub fn new(workers: usize, max: usize) -> Digests {
        let workers = workers.max(1);
        Digests {
            workers: (0..workers).map(|_| Mutex::new(Table::new())).collect(),
            limit: max.div_ceil(workers),
        }
    }

    fn table(&self, worker: usize) -> Option<std::sync::MutexGuard<'_, Table>> {
        self.workers.get(worker % self.workers.len())?.lock().ok()
    }

    /// A statement was prepared: its digest's text is kept for its executions.
    pub fn prepared(&self, worker: usize, sql: &[u8]) -> u64 {
        let key = key(sql);
        if let Some(mut table) = self.table(worker) {
            table.entry(key, Some(sql), self.limit);
        }
        key
    }

    /// A statement ran on a backend.
    pub fn record(&self, worker: usize, seen: Seen<'_>, run: Run) {
        let Some(mut table) = self.table(worker) else { return };
        let entry = table.entry(seen.key, seen.text, self.limit);
        entry.count += 1;
        entry.errors += u64::from(run.error);
        entry.total += run.took;
        entry.max = entry.max.max(run.took);
        if run.on_primary {
            entry.on_primary += 1;
        } else {
            entry.on_replicas += 1;
        }
        entry.reason = run.reason;
    }

    /// Every digest that ran since the last reset, summed over the workers.
    pub fn snapshot(&self) -> Vec<Entry> {
        let mut merged: HashMap<u64, Entry> = HashMap::new();
        for worker in 0..self.workers.len() {
            let Some(table) = self.table(worker) else { continue };
            for entry in table.entries.values().chain(std::iter::once(&table.other)).filter(|e| e.count > 0) {
                merged.entry(entry.key).and_modify(|m| m.add(entry)).or_insert_with(|| entry.clone());
            }
        }
        merged.into_values().collect()
    }

    /// Zeroes every count (the texts stay: prepared statements keep theirs).
    pub fn reset(&self) {
        for worker in 0..self.workers.len() {
            if let Some(mut table) = self.table(worker) {
                table.entries.values_mut().for_each(Entry::zero);
                table.other.zero();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(on_primary: bool, ms: u64) -> Run {
        Run { on_primary, reason: "read", took: Duration::from_millis(ms), error: false }
    }

    #[test]
    fn statements_of_one_shape_add_up_over_workers() {
        let digests = Digests::new(2, 100);
        let a = b"SELECT v FROM t WHERE id = 1";
        let b = b"SELECT v FROM t WHERE id = 2";
        digests.record(0, Seen { key: key(a), text: Some(a) }, run(true, 2));
        digests.record(1, Seen { key: key(b), text: Some(b) }, run(false, 5));
        let w = b"UPDATE t SET v = 3";
        digests.record(
            1,
            Seen { key: key(w), text: Some(w) },
            Run { error: true, reason: "write", ..run(true, 1) },
        );
        let mut all = digests.snapshot();
        all.sort_by_key(|e| std::cmp::Reverse(e.count));
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].text, "SELECT v FROM t WHERE id = ?");
        assert_eq!((all[0].count, all[0].on_primary, all[0].on_replicas), (2, 1, 1));
        assert_eq!((all[0].total, all[0].max), (Duration::from_millis(7), Duration::from_millis(5)));
        assert_eq!((all[1].errors, all[1].reason), (1, "write"));
        digests.reset();
        assert!(digests.snapshot().is_empty());
    }

    #[test]
    fn prepared_texts_survive_a_reset_and_the_table_is_bounded() {
        let digests = Digests::new(1, 2);
        let key = digests.prepared(0, b"SELECT ? FROM t");
        digests.reset();
        digests.record(0, Seen { key, text: None }, run(false, 1));
        assert_eq!(digests.snapshot()[0].text, "SELECT ? FROM t");
        for i in 0..5 {
            let sql = format!("SELECT c{i} FROM t");
            digests.record(
                0,
                Seen { key: super::key(sql.as_bytes()), text: Some(sql.as_bytes()) },
                run(false, 1),
            );
        }
        let all = digests.snapshot();
        assert_eq!(all.len(), 3, "two digests and the rest: {all:?}");
        assert_eq!(all.iter().find(|e| e.key == OTHER).map(|e| e.count), Some(4));
    }
}
