//! What a client session remembers between statements: pins, session commands to replay on
//! every backend connection, and the server status the client last saw.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use super::consistency::ReadAfter;
use super::optimistic::Optimistic;
use crate::backend::SettingsTag;
use crate::classifier::{Classification, Effect, Reason, prepared_name, table_names};
use crate::protocol::{AUTOCOMMIT, IN_TRANS, Outcome};
use crate::router::SessionView;

/// Session commands (`SET`, `USE`, COM_INIT_DB, COM_SET_OPTION) in the order they ran, each
/// with a sequence number so a connection knows which ones it still has to run.
#[derive(Debug, Default, Clone)]
pub struct History {
    entries: Vec<(u64, Vec<u8>)>,
    /// For each entry, a digest of it and every entry before it: a connection's
    /// [`SettingsTag`] names a prefix of the history by its length and this digest.
    chains: Vec<u64>,
    next: u64,
}

/// Settings a session may carry (distinct ones: a new value of a setting replaces the old).
pub const MAX_HISTORY_ENTRIES: usize = 1000;
/// Bytes of settings a session may carry.
pub const MAX_HISTORY_BYTES: usize = 1 << 20;

impl History {
    /// Whether `payload` can be recorded within the limits. A command that replaces one already
    /// recorded always can when it is no longer than the old.
    pub fn has_room_for(&self, payload: &[u8]) -> bool {
        let key = setting_key(payload);
        let kept = |p: &Vec<u8>| p.as_slice() != payload && (key.is_none() || setting_key(p) != key);
        let (count, bytes) = self
            .entries
            .iter()
            .filter(|(_, p)| kept(p))
            .fold((1, payload.len()), |(n, b), (_, p)| (n + 1, b + p.len()));
        count <= MAX_HISTORY_ENTRIES && bytes <= MAX_HISTORY_BYTES
    }

    /// Records a command that succeeded. A later command that sets the same thing replaces an
    /// earlier one, so the history stays as long as the set of distinct settings.
    pub fn push(&mut self, payload: &[u8]) {
        self.next += 1;
        self.entries.push((self.next, payload.to_vec()));
        self.compact();
        self.chains.clear();
        let mut chain = 0u64;
        for (_, p) in &self.entries {
            let mut h = std::hash::DefaultHasher::new();
            (chain, p).hash(&mut h);
            // 0 is the empty history's digest.
            chain = h.finish().max(1);
            self.chains.push(chain);
        }
    }

    /// Drops every entry that a later one of the same setting replaces, unless a user variable
    /// was assigned in between: its value was computed under the earlier setting (a string's
    /// character set, `sql_mode`'s `||`), so replayed in order it must see it.
    fn compact(&mut self) {
        let mut later: HashMap<String, usize> = HashMap::new();
        let mut values = 0;
        let mut keep = vec![true; self.entries.len()];
        for (at, (_, payload)) in self.entries.iter().enumerate().rev() {
            let key = setting_key(payload);
            let carries_value = key.as_deref().is_none_or(|k| k.starts_with("set:@"));
            let name = key.unwrap_or_else(|| format!("text:{}", String::from_utf8_lossy(payload)));
            if later.get(&name) == Some(&values) {
                keep[at] = false;
                continue;
            }
            values += usize::from(carries_value);
            later.insert(name, values);
        }
        let mut flags = keep.into_iter();
        self.entries.retain(|_| flags.next().unwrap_or(true));
    }

    /// What a connection that ran the whole history holds.
    pub fn tag(&self) -> SettingsTag {
        SettingsTag { len: self.entries.len(), chain: self.chains.last().copied().unwrap_or(0) }
    }

    /// For a borrowed connection holding `tag`: the sequence number it has applied when its
    /// settings are a prefix of this history (the rest is replayed), `None` when they are
    /// something else (it must be reset first).
    pub fn applied_for(&self, tag: SettingsTag) -> Option<u64> {
        if tag.len == 0 {
            return Some(0);
        }
        let chain = *self.chains.get(tag.len - 1)?;
        (chain == tag.chain).then(|| self.entries[tag.len - 1].0)
    }

    /// The tag of a connection that has applied up to `applied`, when that is everything (a
    /// connection behind the history holds settings no tag names).
    pub fn tag_if_current(&self, applied: u64) -> Option<SettingsTag> {
        (applied == self.next).then(|| self.tag())
    }

    /// Entries a connection that has applied up to `applied` still has to run.
    pub fn pending(&self, applied: u64) -> impl Iterator<Item = &(u64, Vec<u8>)> {
        self.entries.iter().filter(move |(seq, _)| *seq > applied)
    }

    /// The settings that change how a statement's text is parsed when it is prepared
    /// (`sql_mode`, character sets, collations), in the order they ran.
    pub fn prepare_settings(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.iter().map(|(_, p)| p.as_slice()).filter(|p| binds_at_prepare(p))
    }

    /// The sequence number a connection that ran everything has applied.
    pub fn head(&self) -> u64 {
        self.next
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Whether a session command sets something a server binds a prepared statement to: the
/// `sql_mode` and character sets its text is parsed with.
pub fn binds_at_prepare(payload: &[u8]) -> bool {
    const WORDS: [&[u8]; 5] = [b"sql_mode", b"names", b"character", b"collation", b"charset"];
    payload.first() == Some(&crate::protocol::command::QUERY)
        && payload[1..].windows(5).enumerate().any(|(at, w)| {
            WORDS.iter().any(|word| {
                w.eq_ignore_ascii_case(&word[..5])
                    && payload[1 + at..].get(..word.len()).is_some_and(|t| t.eq_ignore_ascii_case(word))
            })
        })
}

/// What a single-assignment `SET name = …` sets (lowercased `name`), or the command byte for
/// COM_INIT_DB / COM_SET_OPTION / `USE`. `None` when the command sets several things.
fn setting_key(payload: &[u8]) -> Option<String> {
    let (&cmd, body) = payload.split_first()?;
    if cmd != crate::protocol::command::QUERY {
        return Some(format!("cmd:{cmd}"));
    }
    let text = std::str::from_utf8(body).ok()?.trim();
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("use ") {
        return Some("cmd:use".into());
    }
    let rest = lower.strip_prefix("set ")?;
    if rest.contains(',') || rest.contains('\'') && rest.matches('\'').count() > 2 {
        return None;
    }
    // `SET SESSION x = …`, `SET LOCAL x = …`, `SET @@session.x = …` set `x`: the scope word is
    // not the name (two settings under one key would drop the first from the history).
    let rest = rest.trim_start();
    let rest = ["session ", "local "].iter().find_map(|w| rest.strip_prefix(w)).unwrap_or(rest).trim_start();
    if let Some(what) = rest.strip_prefix("transaction ") {
        // `SET SESSION TRANSACTION ISOLATION LEVEL …` / `… READ ONLY|WRITE`: two settings.
        let what = what.trim_start();
        let kind = if what.starts_with("isolation") { "isolation" } else { "access" };
        return Some(format!("set:transaction:{kind}"));
    }
    let name = rest
        .split(['=', ' '])
        .next()?
        .trim()
        .trim_start_matches("@@")
        .trim_start_matches("session.")
        .trim_start_matches("local.");
    (!name.is_empty()).then(|| format!("set:{name}"))
}

#[derive(Debug, Clone)]
pub struct SessionState {
    pub view: SessionView,
    pub history: History,
    /// Status flags of the last OK/EOF the client saw.
    pub status: u16,
    /// Backends removed from this session because a session command failed there.
    pub excluded: Vec<bool>,
    temporary_tables: HashSet<String>,
    prepared: HashSet<String>,
    advisory_locks: u32,
    table_locks: bool,
    /// `HANDLER … OPEN` not yet closed.
    handlers: u32,
    /// MariaDB `BACKUP STAGE START` / `BACKUP LOCK` not yet ended.
    backup_lock: bool,
    /// The server reported session state that the statement's text did not show (a stored
    /// procedure that created a temporary table or ran `SET`); `Some(true)` when it is on the
    /// primary. Nothing but a reset ends it.
    untracked_state: Option<bool>,
    /// What the session's writes require of its reads (kept across resets: the client's next
    /// read still must not miss them).
    pub read_after: ReadAfter,
    /// The transaction running optimistically on a read backend, if any (the router sees
    /// whether there is one as `view.optimistic`: change it through `start_optimistic` and
    /// `take_optimistic` only).
    pub optimistic: Option<Optimistic>,
    /// The current transaction ran a statement that needed the primary.
    pub transaction_wrote: bool,
    /// A one-shot `SET TRANSACTION …` ran on the primary and waits there for the transaction
    /// it applies to (which starts there too).
    pub next_transaction: bool,
    /// The session's isolation level is SERIALIZABLE: every read in a transaction locks, so
    /// transactions start on the primary.
    serializable: bool,
}

impl SessionState {
    pub fn new(backends: usize) -> Self {
        SessionState {
            view: SessionView::default(),
            history: History::default(),
            status: AUTOCOMMIT,
            excluded: vec![false; backends],
            temporary_tables: HashSet::new(),
            prepared: HashSet::new(),
            advisory_locks: 0,
            table_locks: false,
            handlers: 0,
            backup_lock: false,
            untracked_state: None,
            read_after: ReadAfter::default(),
            optimistic: None,
            transaction_wrote: false,
            next_transaction: false,
            serializable: false,
        }
    }

    /// Updates pins from a finished response on `backend`. The backend's IN_TRANS and
    /// AUTOCOMMIT flags are the truth about transactions, whatever the statement looked like.
    /// With `optimistic` transactions an `autocommit = 0` session is pinned only once a
    /// transaction is open (its next one may start on a read backend); without, it stays on
    /// the backend it is on.
    pub fn after_response(&mut self, backend: usize, outcome: &Outcome, optimistic: bool) {
        self.view.last = Some(backend);
        if let Some(status) = outcome.status {
            self.status = status;
            self.view.autocommit_off = status & AUTOCOMMIT == 0;
            let in_transaction = status & IN_TRANS != 0 || !optimistic && status & AUTOCOMMIT == 0;
            self.view.pinned = in_transaction.then_some(backend);
            if !in_transaction {
                self.view.read_only_transaction = false;
            }
        }
    }

    /// Applies what a statement that succeeded does to routing: temporary tables, locks,
    /// text prepared statements, user variables kept on the primary.
    pub fn after_statement(&mut self, class: &Classification, sql: &str) {
        match class.effect {
            Effect::TemporaryTable => self.temporary_tables.extend(table_names(sql)),
            Effect::DropTable => {
                for name in table_names(sql) {
                    self.temporary_tables.remove(&name);
                }
            }
            Effect::LockTables => self.table_locks = true,
            Effect::UnlockTables => self.table_locks = false,
            Effect::AdvisoryLock => self.advisory_locks += 1,
            Effect::ReleaseLock => self.advisory_locks = self.advisory_locks.saturating_sub(1),
            Effect::ReleaseAllLocks => self.advisory_locks = 0,
            Effect::Prepare => self.prepared.extend(prepared_name(sql)),
            Effect::Deallocate => {
                if let Some(name) = prepared_name(sql) {
                    self.prepared.remove(&name);
                }
            }
            Effect::UserVariablesOnPrimary => self.view.user_variables_on_primary = true,
            Effect::HandlerOpen => self.handlers += 1,
            Effect::HandlerClose => self.handlers = self.handlers.saturating_sub(1),
            Effect::BackupLock => self.backup_lock = true,
            Effect::BackupUnlock => self.backup_lock = false,
            Effect::NextTransaction => self.next_transaction = true,
            Effect::BeginReadOnly => self.view.read_only_transaction = self.view.pinned.is_some(),
            Effect::Begin => self.view.read_only_transaction = false,
            Effect::None | Effect::UseDatabase => {}
        }
        // Anything but another setting is (or begins) the transaction a pending `SET
        // TRANSACTION` applied to.
        if class.effect != Effect::NextTransaction && class.destination != crate::classifier::Destination::All
        {
            self.next_transaction = false;
        }
        self.update_view();
    }

    /// A session command ran: a change of the session's isolation level decides where its
    /// transactions start.
    pub fn after_setting(&mut self, payload: &[u8]) {
        let Some(text) =
            payload.get(1..).filter(|_| payload.first() == Some(&crate::protocol::command::QUERY))
        else {
            return;
        };
        let lower = String::from_utf8_lossy(text).to_ascii_lowercase();
        if lower.contains("isolation") {
            self.serializable = lower.contains("serializable");
            self.update_view();
        }
    }

    /// The server said that a statement changed session state (`session_track_state_change`).
    /// Statements whose state rwproxy follows (settings, `USE`, temporary tables, locks,
    /// `PREPARE`, user variables, transactions) are expected to; any other statement left state
    /// rwproxy cannot name or move, so the session keeps its connections until a reset (and
    /// reads the primary when the state is there).
    pub fn after_state_change(&mut self, class: &Classification, on_primary: bool) {
        let expected = class.effect != Effect::None
            || matches!(class.reason, Reason::SessionCommand | Reason::UserVariable | Reason::Transaction);
        if expected {
            return;
        }
        self.untracked_state = Some(self.untracked_state == Some(true) || on_primary);
        self.update_view();
    }

    fn update_view(&mut self) {
        self.view.transaction_on_primary = self.next_transaction || self.serializable;
        self.view.temporary_tables = !self.temporary_tables.is_empty();
        self.view.primary_locked = self.table_locks
            || self.advisory_locks > 0
            || !self.prepared.is_empty()
            || self.handlers > 0
            || self.backup_lock
            || self.untracked_state == Some(true);
    }

    /// A lock, open handler, text-prepared statement or pending `SET TRANSACTION` that holds
    /// the session on its connection.
    pub fn lock_pin(&self) -> Option<super::Pin> {
        if self.next_transaction {
            Some(super::Pin::NextTransaction)
        } else if self.table_locks {
            Some(super::Pin::TableLock)
        } else if self.backup_lock {
            Some(super::Pin::BackupLock)
        } else if self.handlers > 0 {
            Some(super::Pin::Handler)
        } else if self.advisory_locks > 0 {
            Some(super::Pin::AdvisoryLock)
        } else if !self.prepared.is_empty() {
            Some(super::Pin::SqlPrepare)
        } else if self.untracked_state.is_some() {
            Some(super::Pin::UntrackedState)
        } else {
            None
        }
    }

    pub fn start_optimistic(&mut self, transaction: Optimistic) {
        self.optimistic = Some(transaction);
        self.view.optimistic = true;
    }

    pub fn take_optimistic(&mut self) -> Option<Optimistic> {
        self.view.optimistic = false;
        self.optimistic.take()
    }

    /// The backend list changed (a reload): per-backend facts start over.
    pub fn follow_backends(&mut self, backends: usize) {
        self.excluded = vec![false; backends];
        self.view.last = None;
        self.view.pinned = None;
    }

    /// COM_RESET_CONNECTION / COM_CHANGE_USER: everything back to a fresh session.
    pub fn reset(&mut self) {
        let read_after = std::mem::take(&mut self.read_after);
        let optimistic_next = self.view.optimistic_next;
        *self = SessionState::new(self.excluded.len());
        self.read_after = read_after;
        self.view.optimistic_next = optimistic_next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(sql: &str) -> Vec<u8> {
        let mut p = vec![crate::protocol::command::QUERY];
        p.extend_from_slice(sql.as_bytes());
        p
    }

    #[test]
    fn a_setting_a_user_variable_was_assigned_under_stays_before_it() {
        let mut h = History::default();
        h.push(&query("SET NAMES latin1"));
        h.push(&query("SET @s = 'é'"));
        h.push(&query("SET NAMES utf8mb4"));
        let texts = |h: &History| -> Vec<String> {
            h.pending(0).map(|(_, p)| String::from_utf8_lossy(&p[1..]).into_owned()).collect()
        };
        assert_eq!(texts(&h), ["SET NAMES latin1", "SET @s = 'é'", "SET NAMES utf8mb4"]);
        h.push(&query("SET @s = 'x'"));
        assert_eq!(texts(&h), ["SET NAMES utf8mb4", "SET @s = 'x'"], "nothing depends on latin1 any more");
        h.push(&query("SET time_zone = '+01:00'"));
        h.push(&query("SET time_zone = '+02:00'"));
        assert_eq!(texts(&h), ["SET NAMES utf8mb4", "SET @s = 'x'", "SET time_zone = '+02:00'"]);
    }

    #[test]
    fn scope_words_are_not_setting_names() {
        let mut h = History::default();
        h.push(&query("SET SESSION sql_mode = 'ANSI'"));
        h.push(&query("SET SESSION time_zone = '+02:00'"));
        h.push(&query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"));
        h.push(&query("SET SESSION TRANSACTION READ ONLY"));
        h.push(&query("SET LOCAL wait_timeout = 100"));
        assert_eq!(h.len(), 5, "five different settings");
        h.push(&query("SET @@session.sql_mode = 'TRADITIONAL'"));
        h.push(&query("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE"));
        assert_eq!(h.len(), 5, "the same two settings again replace theirs");
        let kept: Vec<String> =
            h.pending(0).map(|(_, p)| String::from_utf8_lossy(&p[1..]).into_owned()).collect();
        assert!(kept.contains(&"SET @@session.sql_mode = 'TRADITIONAL'".to_string()), "{kept:?}");
        assert!(!kept.contains(&"SET SESSION sql_mode = 'ANSI'".to_string()), "{kept:?}");
        let binds: Vec<&[u8]> = h.prepare_settings().collect();
        assert_eq!(binds.len(), 1, "only sql_mode binds a prepare here");
    }

    #[test]
    fn serializable_and_pending_set_transaction_start_transactions_on_the_primary() {
        let mut s = SessionState::new(3);
        assert!(!s.view.transaction_on_primary);
        s.after_setting(&query("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE"));
        assert!(s.view.transaction_on_primary);
        s.after_setting(&query("SET SESSION transaction_isolation = 'READ-COMMITTED'"));
        assert!(!s.view.transaction_on_primary);
        let set = crate::classifier::classify("SET TRANSACTION ISOLATION LEVEL READ COMMITTED");
        s.after_statement(&set, "SET TRANSACTION ISOLATION LEVEL READ COMMITTED");
        assert!(s.view.transaction_on_primary);
        assert_eq!(s.lock_pin(), Some(crate::session::Pin::NextTransaction));
        let names = crate::classifier::classify("SET NAMES utf8mb4");
        s.after_statement(&names, "SET NAMES utf8mb4");
        assert!(s.view.transaction_on_primary, "a setting does not take it");
        let begin = crate::classifier::classify("START TRANSACTION");
        s.after_statement(&begin, "START TRANSACTION");
        assert!(!s.view.transaction_on_primary, "the transaction took it");
        assert_eq!(s.lock_pin(), None);
    }

    #[test]
    fn repeated_settings_keep_only_the_last() {
        let mut h = History::default();
        h.push(&query("SET time_zone = '+01:00'"));
        h.push(&query("SET NAMES utf8mb4"));
        h.push(&query("SET time_zone = '+05:00'"));
        h.push(&query("SET NAMES utf8mb4"));
        let texts: Vec<_> =
            h.pending(0).map(|(_, p)| String::from_utf8_lossy(&p[1..]).into_owned()).collect();
        assert_eq!(texts, ["SET time_zone = '+05:00'", "SET NAMES utf8mb4"]);
        assert_eq!(h.pending(h.head()).count(), 0);
        assert_eq!(h.pending(3).count(), 1, "a connection that ran the first three misses one");
    }

    #[test]
    fn tags_name_prefixes_of_the_history() {
        let mut a = History::default();
        let mut b = History::default();
        assert_eq!(a.tag(), SettingsTag::FRESH);
        a.push(&query("SET NAMES utf8mb4"));
        b.push(&query("SET NAMES utf8mb4"));
        assert_eq!(a.tag(), b.tag(), "the same settings, the same tag");
        let after_names = a.tag();
        a.push(&query("SET time_zone = '+00:00'"));
        assert_eq!(a.applied_for(after_names), Some(1), "a prefix: only the rest is replayed");
        assert_eq!(a.applied_for(SettingsTag::FRESH), Some(0));
        b.push(&query("SET sql_mode = ''"));
        assert_eq!(a.applied_for(b.tag()), None, "different settings: reset first");
        assert_eq!(a.tag_if_current(a.head()), Some(a.tag()));
        assert_eq!(a.tag_if_current(1), None);
    }

    #[test]
    fn multi_assignments_are_kept() {
        let mut h = History::default();
        h.push(&query("SET a = 1, b = 2"));
        h.push(&query("SET a = 3, b = 4"));
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn temporary_tables_locks_and_prepared_statements_hold_the_primary() {
        use crate::classifier::classify;
        let mut s = SessionState::new(3);
        let mut run = |sql: &str| {
            s.after_statement(&classify(sql), sql);
            (s.view.temporary_tables, s.view.primary_locked)
        };
        assert_eq!(run("CREATE TEMPORARY TABLE t1 (a INT)"), (true, false));
        assert_eq!(run("CREATE TEMPORARY TABLE t2 (a INT)"), (true, false));
        assert_eq!(run("DROP TEMPORARY TABLE t1"), (true, false));
        assert_eq!(run("DROP TABLE t2"), (false, false));
        assert_eq!(run("SELECT GET_LOCK('a', 1)"), (false, true));
        assert_eq!(run("SELECT RELEASE_LOCK('a')"), (false, false));
        assert_eq!(run("LOCK TABLES t WRITE"), (false, true));
        assert_eq!(run("UNLOCK TABLES"), (false, false));
        assert_eq!(run("PREPARE s FROM 'SELECT 1'"), (false, true));
        assert_eq!(run("DEALLOCATE PREPARE s"), (false, false));
    }

    #[test]
    fn state_changes_the_text_did_not_show_pin_until_a_reset() {
        use crate::classifier::classify;
        let mut s = SessionState::new(3);
        // What the server flags as a state change (MariaDB 11, measured): these are followed.
        for sql in [
            "SET time_zone = '+01:00'",
            "SET @a = 1",
            "SET autocommit = 0",
            "USE appdb",
            "CREATE TEMPORARY TABLE t (a INT)",
            "DROP TEMPORARY TABLE t",
            "PREPARE s FROM 'SELECT 1'",
            "DEALLOCATE PREPARE s",
        ] {
            s.after_state_change(&classify(sql), true);
            assert_eq!(s.lock_pin(), None, "{sql}");
        }
        s.after_state_change(&classify("CALL make_temporary()"), false);
        assert_eq!(s.lock_pin(), Some(crate::session::Pin::UntrackedState));
        assert!(!s.view.primary_locked, "the state is on a replica's connection");
        s.after_state_change(&classify("SELECT f()"), true);
        assert!(s.view.primary_locked, "state on the primary: reads go there");
        s.after_statement(&classify("UNLOCK TABLES"), "UNLOCK TABLES");
        assert!(s.view.primary_locked, "only a reset ends it");
        s.reset();
        assert_eq!(s.lock_pin(), None);
        assert!(!s.view.primary_locked);
    }

    #[test]
    fn status_flags_pin_and_unpin() {
        let mut s = SessionState::new(3);
        let with = |status| Outcome { status: Some(status), ..Outcome::default() };
        s.after_response(0, &with(IN_TRANS | AUTOCOMMIT), false);
        assert_eq!(s.view.pinned, Some(0));
        s.after_response(0, &with(AUTOCOMMIT), false);
        assert_eq!(s.view.pinned, None);
        s.after_response(0, &with(0), false);
        assert_eq!(s.view.pinned, Some(0), "autocommit=0 pins without optimistic transactions");
        s.after_response(0, &Outcome { error: Some(1064), ..Outcome::default() }, false);
        assert_eq!(s.view.pinned, Some(0), "an error keeps the pin");
        s.after_response(1, &with(0), true);
        assert_eq!(s.view.pinned, None, "optimistic: autocommit=0 alone does not pin");
        s.after_response(1, &with(IN_TRANS), true);
        assert_eq!(s.view.pinned, Some(1), "an open transaction does");
    }
}
