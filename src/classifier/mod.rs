//! Statement classification: where a statement may run, and why.
//!
//! Cheap first: leading comments are skipped by hand and the first keyword decides most writes
//! without tokenizing (a 1 MB multi-row INSERT costs nanoseconds). Everything that might be a read
//! is then scanned with sqlparser's tokenizer, which knows strings, quoted names and comments, so
//! `SELECT 'FOR UPDATE'` is not a locking read. Anything not recognised goes to the primary.

mod kill;
mod lexer;
mod names;
mod scan;
mod variables;

pub use kill::{Kill, kill_target};
pub use lexer::{Lead, lead};
pub use names::{prepared_name, table_names};
pub use scan::Features;
pub use variables::assigned_user_variables;

/// Where a statement may be sent, before session state is considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Any backend of the read pool.
    Read,
    /// The primary.
    Primary,
    /// A session command: runs on the primary now and is replayed on every other backend the
    /// session uses.
    All,
    /// The backend that ran the previous statement.
    Last,
}

/// Why a statement goes where it goes; exported in metrics and `EXPLAIN ROUTE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Read,
    Write,
    Transaction,
    LockingRead,
    SideEffectFunction,
    UserVariable,
    TemporaryTable,
    SessionCommand,
    SessionPinned,
    Diagnostics,
    NodeSpecific,
    MultiStatement,
    Hint,
    Unknown,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Read => "read",
            Reason::Write => "write",
            Reason::Transaction => "transaction",
            Reason::LockingRead => "locking_read",
            Reason::SideEffectFunction => "side_effect_function",
            Reason::UserVariable => "user_variable",
            Reason::TemporaryTable => "temporary_table",
            Reason::SessionCommand => "session_command",
            Reason::SessionPinned => "session_pinned",
            Reason::Diagnostics => "diagnostics",
            Reason::NodeSpecific => "node_specific",
            Reason::MultiStatement => "multi_statement",
            Reason::Hint => "hint",
            Reason::Unknown => "unknown",
        }
    }
}

/// A routing hint written in a comment: `/* rwproxy:primary */`, `/* rwproxy:replica */`, or
/// a position token `/* rwproxy:after=<gtid> */` (the session reads the position from the text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    Primary,
    Replica,
    After,
}

/// What a statement does to the session's routing state once it has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// `BEGIN`, `START TRANSACTION [WITH CONSISTENT SNAPSHOT]`: may start on a read backend
    /// (optimistic). `START TRANSACTION READ WRITE` and `XA` start on the primary.
    Begin,
    /// `START TRANSACTION READ ONLY`: pinned to one read backend.
    BeginReadOnly,
    /// `CREATE TEMPORARY TABLE`: reads stay on the primary while the session holds one.
    TemporaryTable,
    /// `DROP [TEMPORARY] TABLE`: may drop a temporary table.
    DropTable,
    /// `LOCK TABLES`, `FLUSH TABLES … WITH READ LOCK` / `FOR EXPORT`, `LOCK INSTANCE FOR
    /// BACKUP`: the session stays on the primary, on its connection, until `UNLOCK …`.
    LockTables,
    UnlockTables,
    /// `GET_LOCK()`: the session stays on the primary until its locks are released.
    AdvisoryLock,
    ReleaseLock,
    ReleaseAllLocks,
    /// Text `PREPARE name FROM …`: the session stays on the primary while one exists.
    Prepare,
    /// `DEALLOCATE PREPARE name`, `DROP PREPARE name`.
    Deallocate,
    /// `SELECT … INTO @v`, `@v := …`, `SET @v = (SELECT …)`: user variables now live on the
    /// primary only, so later reads that use them go there.
    UserVariablesOnPrimary,
    /// `HANDLER t OPEN` / `HANDLER t CLOSE`: an open handler lives in the connection.
    HandlerOpen,
    HandlerClose,
    /// MariaDB `BACKUP STAGE START` / `BACKUP LOCK t`, until `BACKUP STAGE END` /
    /// `BACKUP UNLOCK`: a lock held by the connection.
    BackupLock,
    BackupUnlock,
    /// `USE db`.
    UseDatabase,
    /// `SET TRANSACTION …` (no `SESSION`): characteristics of the connection's next
    /// transaction only.
    NextTransaction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    pub destination: Destination,
    pub reason: Reason,
    pub effect: Effect,
    pub hint: Option<Hint>,
    /// The statement reads a user variable (`@v`).
    pub reads_user_variables: bool,
    /// `INSERT`, `UPDATE`, `DELETE`, `REPLACE`, `LOAD`: a change of rows, which a read-only
    /// transaction refuses (and which does not end a transaction, as DDL does).
    pub changes_rows: bool,
}

impl Classification {
    pub fn new(destination: Destination, reason: Reason) -> Self {
        Classification {
            destination,
            reason,
            effect: Effect::None,
            hint: None,
            reads_user_variables: false,
            changes_rows: false,
        }
    }

    fn with_effect(mut self, effect: Effect) -> Self {
        self.effect = effect;
        self
    }
}

/// Whether running the statement may change data, so that later reads must see it: anything
/// bound for the primary except reads sent there for other reasons (node-specific `SHOW`s,
/// locking reads, `SELECT … INTO @v` / `@v := …`) and transaction control (`BEGIN`, `COMMIT`,
/// … change nothing by themselves; the writes inside a transaction count).
pub fn counts_as_write(class: &Classification) -> bool {
    class.destination == Destination::Primary
        && !matches!(
            class.reason,
            Reason::NodeSpecific | Reason::Transaction | Reason::LockingRead | Reason::UserVariable
        )
}

/// Classifies one COM_QUERY text (or a COM_STMT_PREPARE statement).
pub fn classify(sql: &str) -> Classification {
    classify_lead(sql, &lexer::lead(sql))
}

/// [`classify`] with the statement's leading words already read (by [`lead`]).
pub fn classify_lead(sql: &str, lead: &Lead<'_>) -> Classification {
    let mut class = match lead.first_word {
        Some(word) => classify_by_keyword(sql, lead, word),
        None => Classification::new(Destination::Primary, Reason::Unknown),
    };
    if class.hint.is_none() {
        class.hint = lead.hint;
    }
    class
}

fn classify_by_keyword(sql: &str, lead: &Lead, word: &str) -> Classification {
    use Destination::{All, Primary};
    // Keywords are short: uppercase on the stack, not in a new String per statement; one
    // written in capitals (most are) is used as it is, without a UTF-8 check of the copy.
    let mut buf = [0u8; 24];
    let upper = if !word.bytes().any(|b| b.is_ascii_lowercase()) {
        word
    } else {
        match buf.get_mut(..word.len()) {
            Some(slot) => {
                slot.copy_from_slice(word.as_bytes());
                slot.make_ascii_uppercase();
                std::str::from_utf8(slot).unwrap_or("")
            }
            None => "",
        }
    };
    match upper {
        "DROP" => classify_drop(lead),
        "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "LOAD" => {
            Classification { changes_rows: true, ..Classification::new(Primary, Reason::Write) }
        }
        "ALTER" | "TRUNCATE" | "RENAME" | "CALL" | "DO" | "GRANT" | "REVOKE" | "KILL" | "ANALYZE"
        | "OPTIMIZE" | "REPAIR" | "CHECK" | "CHECKSUM" | "INSTALL" | "UNINSTALL" | "PURGE" | "RESET"
        | "CHANGE" | "STOP" | "BINLOG" | "CACHE" | "SAVEPOINT" | "RELEASE" | "SHUTDOWN" => {
            Classification::new(Primary, Reason::Write)
        }
        "FLUSH" | "HANDLER" | "BACKUP" => {
            Classification::new(Primary, Reason::Write).with_effect(connection_lock(sql, lead, upper))
        }
        "CREATE" => classify_create(sql, lead),
        "LOCK" => Classification::new(Primary, Reason::Write).with_effect(Effect::LockTables),
        "UNLOCK" => Classification::new(Primary, Reason::Write).with_effect(Effect::UnlockTables),
        "PREPARE" => Classification::new(Primary, Reason::SessionPinned).with_effect(Effect::Prepare),
        "DEALLOCATE" => Classification::new(Primary, Reason::SessionPinned).with_effect(Effect::Deallocate),
        "EXECUTE" => Classification::new(Primary, Reason::SessionPinned),
        "BEGIN" => Classification::new(Primary, Reason::Transaction).with_effect(Effect::Begin),
        "START" => classify_start(sql, lead),
        "GET" if lead.second_word.is_some_and(|w| w.eq_ignore_ascii_case("DIAGNOSTICS")) => {
            Classification::new(Destination::Last, Reason::Diagnostics)
        }
        // XA transactions stay on the primary from their start (never optimistic).
        "XA" => Classification::new(Primary, Reason::Transaction),
        "COMMIT" | "ROLLBACK" => Classification::new(Primary, Reason::Transaction),
        "USE" => Classification::new(All, Reason::SessionCommand).with_effect(Effect::UseDatabase),
        "SET" => classify_set(sql, lead),
        "SHOW" => classify_show(sql, lead),
        "SELECT" | "WITH" | "TABLE" | "VALUES" | "(" | "DESCRIBE" | "DESC" | "EXPLAIN" | "HELP" => {
            classify_read(sql)
        }
        _ => Classification::new(Primary, Reason::Unknown),
    }
}

/// What `FLUSH`, `HANDLER` and `BACKUP` leave held by the connection, if anything.
fn connection_lock(sql: &str, lead: &Lead, first: &str) -> Effect {
    // The words after the first, through table lists (`t1, t2`): tokenized, these are rare.
    let words: Vec<String> = match scan::words(sql.get(lead.first_word_end..).unwrap_or_default()) {
        Some(words) => words,
        None => return Effect::None,
    };
    let has = |pair: [&str; 2]| words.windows(2).any(|w| w[0] == pair[0] && w[1] == pair[1]);
    match first {
        "FLUSH" if has(["READ", "LOCK"]) || has(["FOR", "EXPORT"]) => Effect::LockTables,
        "HANDLER" => match words.get(1).map(String::as_str) {
            Some("OPEN") => Effect::HandlerOpen,
            Some("CLOSE") => Effect::HandlerClose,
            _ => Effect::None,
        },
        "BACKUP" => match (words.first().map(String::as_str), words.get(1).map(String::as_str)) {
            (Some("STAGE"), Some("START")) | (Some("LOCK"), _) => Effect::BackupLock,
            (Some("STAGE"), Some("END")) | (Some("UNLOCK"), _) => Effect::BackupUnlock,
            _ => Effect::None,
        },
        _ => Effect::None,
    }
}

fn classify_drop(lead: &Lead) -> Classification {
    let class = Classification::new(Destination::Primary, Reason::Write);
    match lead.second_word.map(str::to_ascii_uppercase).as_deref() {
        Some("PREPARE") => class.with_effect(Effect::Deallocate),
        Some("TABLE" | "TEMPORARY" | "TABLES") => class.with_effect(Effect::DropTable),
        _ => class,
    }
}

fn classify_create(sql: &str, lead: &Lead) -> Classification {
    let temporary =
        lexer::words_after(sql, lead.first_word_end, 3).any(|w| w.eq_ignore_ascii_case("TEMPORARY"));
    let class = Classification::new(Destination::Primary, Reason::Write);
    if temporary { class.with_effect(Effect::TemporaryTable) } else { class }
}

fn classify_start(sql: &str, lead: &Lead) -> Classification {
    let mut words = lexer::words_after(sql, lead.first_word_end, 8);
    if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("TRANSACTION")) {
        return Classification::new(Destination::Primary, Reason::Write); // START SLAVE and friends
    }
    let features = scan::scan(sql);
    // READ WRITE says the transaction will write (and a read_only replica refuses it).
    let read_write = lexer::words_after(sql, lead.first_word_end, 8).any(|w| w.eq_ignore_ascii_case("WRITE"));
    if features.read_only_transaction {
        Classification::new(Destination::Read, Reason::Transaction).with_effect(Effect::BeginReadOnly)
    } else if read_write {
        Classification::new(Destination::Primary, Reason::Transaction)
    } else {
        Classification::new(Destination::Primary, Reason::Transaction).with_effect(Effect::Begin)
    }
}

fn classify_set(sql: &str, lead: &Lead) -> Classification {
    let second = lexer::words_after(sql, lead.first_word_end, 1).next().unwrap_or("");
    // SET TRANSACTION applies to the next transaction, which runs on the primary; SET GLOBAL is
    // not session state; SET STATEMENT … FOR runs one statement.
    if second.eq_ignore_ascii_case("TRANSACTION") {
        return Classification::new(Destination::Primary, Reason::Write).with_effect(Effect::NextTransaction);
    }
    let primary_only = ["GLOBAL", "STATEMENT", "PASSWORD", "ROLE", "DEFAULT"];
    if primary_only.iter().any(|w| second.eq_ignore_ascii_case(w)) {
        return Classification::new(Destination::Primary, Reason::Write);
    }
    let features = scan::scan(sql);
    if features.tokenize_failed || features.multi_statement {
        return Classification::new(Destination::Primary, Reason::Unknown);
    }
    if features.subquery || features.side_effect_function {
        // The value depends on data or on the primary: compute it there, keep variables there.
        return Classification::new(Destination::Primary, Reason::UserVariable)
            .with_effect(Effect::UserVariablesOnPrimary);
    }
    Classification::new(Destination::All, Reason::SessionCommand)
}

fn classify_show(sql: &str, lead: &Lead) -> Classification {
    let mut words = lexer::words_after(sql, lead.first_word_end, 2);
    let mut next = words.next().unwrap_or("").to_ascii_uppercase();
    if next == "FULL" {
        // SHOW FULL PROCESSLIST is node-specific; SHOW FULL COLUMNS / TABLES are not.
        next = words.next().unwrap_or("").to_ascii_uppercase();
    }
    match next.as_str() {
        "WARNINGS" | "ERRORS" | "COUNT" => Classification::new(Destination::Last, Reason::Diagnostics),
        "MASTER" | "BINARY" | "BINLOG" | "SLAVE" | "REPLICA" | "PROCESSLIST" | "CREATE" | "ENGINE"
        | "ALL" | "RELAYLOG" | "GRANTS" => Classification::new(Destination::Primary, Reason::NodeSpecific),
        _ => Classification::new(Destination::Read, Reason::Read),
    }
}

fn classify_read(sql: &str) -> Classification {
    // Most reads contain nothing that could change their route: a byte scan proves it without
    // tokenizing. Anything it is unsure of goes through the token scan below.
    if lexer::plainly_read(sql) {
        return Classification::new(Destination::Read, Reason::Read);
    }
    let f = scan::scan(sql);
    let (destination, reason, effect) = if f.tokenize_failed {
        (Destination::Primary, Reason::Unknown, Effect::None)
    } else if f.multi_statement {
        (Destination::Primary, Reason::MultiStatement, Effect::None)
    } else if f.writes {
        (Destination::Primary, Reason::Write, Effect::None)
    } else if f.locking {
        (Destination::Primary, Reason::LockingRead, Effect::None)
    } else if f.assigns_user_variable {
        (Destination::Primary, Reason::UserVariable, Effect::UserVariablesOnPrimary)
    } else if f.takes_lock || f.releases_lock || f.releases_all_locks {
        let effect = if f.takes_lock {
            Effect::AdvisoryLock
        } else if f.releases_all_locks {
            Effect::ReleaseAllLocks
        } else {
            Effect::ReleaseLock
        };
        (Destination::Primary, Reason::SideEffectFunction, effect)
    } else if f.side_effect_function {
        (Destination::Primary, Reason::SideEffectFunction, Effect::None)
    } else if f.diagnostics {
        (Destination::Last, Reason::Diagnostics, Effect::None)
    } else {
        (Destination::Read, Reason::Read, Effect::None)
    };
    Classification {
        destination,
        reason,
        effect,
        hint: f.hint,
        reads_user_variables: f.reads_user_variable,
        changes_rows: false,
    }
}

#[cfg(test)]
mod tests;

/// For `EXPLAIN ROUTE <statement>` (answered by rwproxy itself), the statement to explain.
pub fn explain_route_target(sql: &str) -> Option<&str> {
    explain_route_in(sql, &lexer::lead(sql))
}

/// [`explain_route_target`] with the statement's leading words already read (by [`lead`]).
pub fn explain_route_in<'a>(sql: &'a str, lead: &Lead<'a>) -> Option<&'a str> {
    let first = lead.first_word?;
    let second = lead.second_word?;
    if !first.eq_ignore_ascii_case("EXPLAIN") || !second.eq_ignore_ascii_case("ROUTE") {
        return None;
    }
    // `second` is a slice of `sql`: the statement starts right after it.
    let end = second.as_ptr() as usize - sql.as_ptr() as usize + second.len();
    sql.get(end..).map(str::trim)
}
