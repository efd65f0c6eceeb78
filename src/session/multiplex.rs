//! Multiplexing: between commands a session gives its backend connections back to their pools
//! unless something ties it to them, and borrows again for its next statement.
//!
//! What rwproxy can move, it moves: settings and the database are replayed on a borrowed
//! connection (only what it lacks), prepared statements are prepared there under the same
//! client-visible id, and `LAST_INSERT_ID()` is carried over. What it cannot move pins the
//! session to its connections until the state is gone: see [`Pin`].

use super::Session;
use super::execute::{AttemptError, Outgoing};
use crate::backend::{park, release};
use crate::protocol::{ResponseKind, command};

/// Why a session keeps its backend connections between commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// An open transaction (or `autocommit = 0` without optimistic transactions).
    Transaction,
    /// A transaction running optimistically on a read backend.
    Optimistic,
    /// `LOCK TABLES`, `FLUSH TABLES … WITH READ LOCK` / `FOR EXPORT`, `LOCK INSTANCE`.
    TableLock,
    /// MariaDB `BACKUP STAGE` / `BACKUP LOCK`.
    BackupLock,
    /// `HANDLER … OPEN`: the handler lives in the connection.
    Handler,
    /// `GET_LOCK()`.
    AdvisoryLock,
    /// A text `PREPARE`: the statement lives in the connection.
    SqlPrepare,
    /// `CREATE TEMPORARY TABLE`.
    TemporaryTable,
    /// User variables assigned by a statement on the primary (`SELECT … INTO @v`).
    UserVariables,
    /// A prepared statement's open cursor.
    Cursor,
    /// The last statement left warnings or found-rows state that its session may read next
    /// (`SHOW WARNINGS`, `FOUND_ROWS()`): kept for the next command.
    Diagnostics,
    /// `SET TRANSACTION`: the characteristics wait on the connection for the next transaction.
    NextTransaction,
    /// The server reported session state the statement's text did not show (a stored
    /// procedure that created a temporary table or ran `SET`): held until a reset.
    UntrackedState,
}

impl Pin {
    pub const ALL: [Pin; 13] = [
        Pin::Transaction,
        Pin::Optimistic,
        Pin::TableLock,
        Pin::BackupLock,
        Pin::Handler,
        Pin::AdvisoryLock,
        Pin::SqlPrepare,
        Pin::TemporaryTable,
        Pin::UserVariables,
        Pin::Cursor,
        Pin::Diagnostics,
        Pin::NextTransaction,
        Pin::UntrackedState,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Pin::Transaction => "transaction",
            Pin::Optimistic => "optimistic_transaction",
            Pin::TableLock => "lock_tables",
            Pin::BackupLock => "backup_lock",
            Pin::Handler => "handler",
            Pin::AdvisoryLock => "get_lock",
            Pin::SqlPrepare => "sql_prepare",
            Pin::TemporaryTable => "temporary_table",
            Pin::UserVariables => "user_variables",
            Pin::Cursor => "cursor",
            Pin::Diagnostics => "diagnostics",
            Pin::NextTransaction => "next_transaction",
            Pin::UntrackedState => "untracked_state",
        }
    }
}

/// How long a session keeps the connection whose warnings (or found-rows count) it may read
/// next, when no command comes.
pub const DIAGNOSTICS_KEPT: std::time::Duration = std::time::Duration::from_secs(1);

/// Completes `DIAGNOSTICS_KEPT` after the session was pinned for its diagnostics alone; never
/// otherwise (no timer is made then).
pub(super) async fn diagnostics_kept(pinned_by: Option<Pin>) {
    if pinned_by == Some(Pin::Diagnostics) {
        tokio::time::sleep(DIAGNOSTICS_KEPT).await;
    } else {
        std::future::pending::<()>().await;
    }
}

impl Session {
    /// What ties the session to its backend connections now, if anything.
    pub(super) fn pin(&self) -> Option<Pin> {
        let view = &self.state.view;
        if view.optimistic {
            return Some(Pin::Optimistic);
        }
        if view.pinned.is_some() {
            return Some(Pin::Transaction);
        }
        if let Some(pin) = self.state.lock_pin() {
            return Some(pin);
        }
        if view.temporary_tables {
            return Some(Pin::TemporaryTable);
        }
        if view.user_variables_on_primary {
            return Some(Pin::UserVariables);
        }
        if self.stmts.has_cursor() {
            return Some(Pin::Cursor);
        }
        self.keep_for_next
    }

    /// For `EXPLAIN ROUTE`: whether the statement would run on a borrowed connection, and why
    /// not when the session is pinned.
    pub(super) fn describe_connection(&self) -> String {
        if !self.multiplexing() {
            return "own (multiplexing off)".into();
        }
        match self.pin() {
            Some(pin) => format!("pinned: {}", pin.as_str()),
            None => "borrowed for the statement (multiplexing)".into(),
        }
    }

    /// The session's next statement runs on a connection borrowed for it alone (multiplexing
    /// on, nothing pinning): no backend connection is the session's own.
    pub(super) fn borrows_per_statement(&self) -> bool {
        self.multiplexing() && self.pin().is_none()
    }

    pub(super) fn multiplexing(&self) -> bool {
        let mysql = &self.shared.config.mysql;
        mysql.multiplexing && mysql.max_idle_connections > 0 && self.user_multiplexes
    }

    /// Whether the logged-in user's sessions multiplex (`[[mysql.users]] multiplexing`), by
    /// the current configuration.
    pub(super) fn user_multiplexing(&self) -> bool {
        let user = self.shared.config.user(self.login.user.as_bytes());
        user.is_none_or(|u| u.multiplexing != Some(false))
    }

    /// After a command: gives every backend connection back unless the session is pinned.
    pub(super) async fn give_back_connections(&mut self) {
        if !self.multiplexing() {
            return;
        }
        let pin = self.pin();
        if pin != self.pinned_by {
            self.shared.metrics.multiplex_pin_changed(self.pinned_by, pin);
            self.handle.set_pinned(pin.map(Pin::as_str));
            self.pinned_by = pin;
        }
        if pin.is_some() {
            return;
        }
        for index in 0..self.conns.len() {
            self.give_back(index).await;
        }
    }

    /// Gives the connection to backend `index` back to its pool, tagged with the settings it
    /// holds (reset first when it holds state for this session's next command).
    async fn give_back(&mut self, index: usize) {
        let Some(mut conn) = self.conns.get_mut(index).and_then(Option::take) else { return };
        // Settings behind the session's (a `SET` ran on another backend) are no state another
        // session can name: such a connection is reset when it is next borrowed.
        conn.settings = self.state.history.tag_if_current(conn.applied);
        if let Some(conn) = park(conn) {
            // Boxed: a rare path that would otherwise size every session's task.
            Box::pin(release(conn)).await;
        }
    }

    /// The session kept its connections only for the warnings of its last statement, and the
    /// command now running does not read them: every connection but the one to `keep` goes back
    /// now. Holding one backend's connection while waiting for another's lets sessions starve
    /// each other when pools are full (each holds what the other waits for).
    pub(super) async fn give_back_except(&mut self, keep: Option<usize>) {
        self.keep_for_next = None;
        for index in (0..self.conns.len()).filter(|&i| Some(i) != keep) {
            self.give_back(index).await;
        }
    }

    /// A statement that reads `LAST_INSERT_ID()` on a connection that did not run the
    /// session's last insert gets the session's value set there first (`LAST_INSERT_ID(n)` sets
    /// what the next `LAST_INSERT_ID()` returns).
    pub(super) async fn carry_insert_id(
        &mut self,
        backend: usize,
        out: Outgoing<'_>,
    ) -> Result<(), AttemptError> {
        let wanted = self.last_insert_id;
        let Some(conn) = self.conns.get(backend).and_then(Option::as_ref) else {
            return Ok(());
        };
        if conn.last_insert_id == wanted {
            return Ok(());
        }
        let text: &[u8] = match out {
            Outgoing::Raw(bytes) if bytes.first() == Some(&command::QUERY) => &bytes[1..],
            Outgoing::Raw(_) => return Ok(()),
            Outgoing::Statement(bytes) => match self.stmts.text_of(bytes) {
                Some(text) => text,
                None => return Ok(()),
            },
        };
        if !mentions_insert_id(text) {
            return Ok(());
        }
        let mut set = vec![command::QUERY];
        set.extend_from_slice(format!("SELECT LAST_INSERT_ID({wanted})").as_bytes());
        let Some(conn) = self.conns.get_mut(backend).and_then(Option::as_mut) else {
            return Ok(());
        };
        match conn.run_silently(&set, ResponseKind::Query).await {
            Ok(outcome) if outcome.error.is_none() => {
                conn.last_insert_id = wanted;
                Ok(())
            }
            Ok(_) => Err(AttemptError::Unavailable("LAST_INSERT_ID could not be carried over".into())),
            Err(e) => {
                self.backend_failed(backend, &e);
                Err(AttemptError::Unavailable(e))
            }
        }
    }
}

/// Whether statement text reads the last insert id (`LAST_INSERT_ID()`, `@@identity`,
/// `@@last_insert_id`).
fn mentions_insert_id(text: &[u8]) -> bool {
    const NAMES: [&[u8]; 2] = [b"last_insert_id", b"identity"];
    text.windows(8).enumerate().any(|(at, w)| {
        NAMES.iter().any(|name| {
            w.eq_ignore_ascii_case(&name[..8])
                && text.get(at..at + name.len()).is_some_and(|t| t.eq_ignore_ascii_case(name))
        })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn insert_id_readers_are_found() {
        assert!(super::mentions_insert_id(b"SELECT LAST_INSERT_ID()"));
        assert!(super::mentions_insert_id(b"insert into t2 values (last_insert_id())"));
        assert!(super::mentions_insert_id(b"SELECT @@IDENTITY"));
        assert!(!super::mentions_insert_id(b"SELECT 1"));
        assert!(!super::mentions_insert_id(b"SELECT last"));
    }
}
