//! Optimistic transactions: a transaction starts on a read backend and moves to the primary at
//! the first statement that needs it.
//!
//! While it runs on the replica, every statement and a digest of the result the client got are
//! kept. To move, rwproxy rolls back on the replica, starts the transaction on the primary,
//! replays the statements there and compares each result's digest with the one the client saw.
//! All the same: the new statement runs on the primary and the client never knows. One differs
//! (the primary had other data): the client gets 1213 (deadlock, SQLSTATE 40001), which drivers
//! and ORMs retry, and the primary transaction is rolled back, so nothing commits on top of a
//! read that was not what the primary had.

use super::execute::Outgoing;
use super::{Session, SessionError};
use crate::backend::{Digest, relay_response};
use crate::classifier::{Classification, Destination, Effect};
use crate::consistency::OptimisticOutcome;
use crate::protocol::{AUTOCOMMIT, IN_TRANS, Outcome, ResponseKind};

/// COM_QUERY `ROLLBACK`.
const ROLLBACK: &[u8] = b"\x03ROLLBACK";

/// A command that just ran, as the optimistic-transaction bookkeeping needs it.
pub(super) struct Ran<'a> {
    pub backend: usize,
    pub out: Outgoing<'a>,
    pub kind: ResponseKind,
    pub class: Option<&'a Classification>,
    pub outcome: &'a Outcome,
    /// The backend the session was pinned to before the command.
    pub was_pinned: Option<usize>,
    /// The command may have changed data.
    pub writes: bool,
}

/// An optimistic transaction in progress on a read backend.
#[derive(Debug, Clone)]
pub struct Optimistic {
    pub backend: usize,
    /// The statement that began it (`BEGIN`, `START TRANSACTION …`); `None` for the implicit
    /// transaction of an `autocommit = 0` session.
    begin: Option<Vec<u8>>,
    log: Vec<Logged>,
    /// Result bytes read so far.
    bytes: u64,
    /// Still small enough, and made only of statements rwproxy can replay.
    replayable: bool,
}

#[derive(Debug, Clone)]
struct Logged {
    payload: Vec<u8>,
    /// A prepared-statement command (its id is rewritten for the primary).
    statement: bool,
    kind: ResponseKind,
    digest: u64,
    error: Option<u16>,
}

impl Optimistic {
    /// Long data was sent for an execution: it is not kept, so it cannot be replayed.
    pub fn not_replayable(&mut self) {
        self.replayable = false;
    }

    fn record(
        &mut self,
        out: Outgoing<'_>,
        kind: ResponseKind,
        digest: Option<Digest>,
        outcome: &Outcome,
        max: u64,
    ) {
        let (payload, statement) = match out {
            Outgoing::Raw(bytes) => (bytes, false),
            Outgoing::Statement(bytes) => (bytes, true),
        };
        match (kind, digest) {
            // A prepare returns no data; the primary prepares lazily at replay.
            (ResponseKind::Prepare, _) => {}
            // A cursor fetch cannot be replayed on its own.
            (ResponseKind::Rows, _) if statement => self.replayable = false,
            (_, None) => self.replayable = false,
            (_, Some(digest)) => {
                self.bytes += digest.bytes;
                if self.bytes > max {
                    self.replayable = false;
                    self.log.clear();
                } else if self.replayable {
                    let digest = digest.value();
                    let error = outcome.error;
                    self.log.push(Logged { payload: payload.to_vec(), statement, kind, digest, error });
                }
            }
        }
    }
}

impl Session {
    /// Whether the relay should digest the result of the next command on `backend`: it is part
    /// of an optimistic transaction there, or may open one (autocommit off, no transaction).
    pub(super) fn digest_wanted(&self, backend: usize) -> bool {
        match &self.state.optimistic {
            Some(o) => o.backend == backend,
            None => {
                self.shared.router.optimistic()
                    && self.state.view.pinned.is_none()
                    && self.state.status & AUTOCOMMIT == 0
            }
        }
    }

    /// After a command ran: starts, extends or ends the optimistic transaction.
    pub(super) fn track_optimistic(&mut self, ran: Ran<'_>) {
        let Ran { backend, out, kind, class, outcome, was_pinned, writes } = ran;
        let digest = self.conns.get_mut(backend).and_then(Option::as_mut).and_then(|c| c.digest.take());
        let pinned = self.state.view.pinned;
        let is_begin = class.is_some_and(|c| c.effect == Effect::Begin);
        if let Some(o) = &self.state.optimistic
            && (pinned != Some(o.backend) || is_begin)
        {
            self.end_optimistic(OptimisticOutcome::Replica);
        }
        if was_pinned.is_some() || pinned.is_some() {
            self.state.transaction_wrote |= writes;
        }
        if was_pinned.is_some() && pinned.is_none() {
            self.transaction_ended();
        } else if was_pinned.is_none() && pinned.is_none() && !writes && self.state.view.autocommit_off {
            // With autocommit off, a read that opened no transaction (it touched no table) ran
            // outside any: the last transaction's writes no longer say where the next starts.
            self.state.view.optimistic_next = true;
        }
        let primary = self.shared.router.backends().primary().index;
        if !self.shared.router.optimistic() || backend == primary || pinned != Some(backend) {
            return;
        }
        let max = self.shared.config.mysql.routing.optimistic_max_bytes;
        match self.state.optimistic.as_mut() {
            Some(o) if class.is_none_or(|c| c.destination != Destination::All) => {
                o.record(out, kind, digest, outcome, max);
            }
            Some(_) => {}
            None if was_pinned.is_none() || is_begin => {
                if class.is_some_and(|c| c.effect == Effect::BeginReadOnly) {
                    return;
                }
                let begin = match out {
                    Outgoing::Raw(bytes) if is_begin => Some(bytes.to_vec()),
                    _ => None,
                };
                let mut o = Optimistic { backend, begin, log: Vec::new(), bytes: 0, replayable: true };
                if !is_begin {
                    o.record(out, kind, digest, outcome, max);
                }
                self.state.start_optimistic(o);
            }
            None => {}
        }
    }

    /// A transaction ended: whether it needed the primary decides where the session's next
    /// one starts, and feeds the proxy-wide history new sessions start from.
    fn transaction_ended(&mut self) {
        let wrote = std::mem::take(&mut self.state.transaction_wrote);
        self.state.view.optimistic_next = !wrote;
        self.shared.router.transaction_ended(wrote);
    }

    pub(super) fn end_optimistic(&mut self, outcome: OptimisticOutcome) {
        if self.state.take_optimistic().is_some() {
            self.shared.metrics.optimistic(outcome);
        }
    }

    /// Moves the optimistic transaction to the primary. `Ok(false)`: it could not move and the
    /// client got 1213; the transaction is gone on both sides.
    pub(super) async fn move_transaction(&mut self) -> Result<bool, SessionError> {
        let Some(o) = self.state.take_optimistic() else {
            return Ok(true);
        };
        if let Some(conn) = self.conns.get_mut(o.backend).and_then(Option::as_mut)
            && conn.run_silently(ROLLBACK, ResponseKind::Query).await.is_err()
        {
            self.drop_connection(o.backend);
        }
        self.state.view.pinned = None;
        if !o.replayable {
            return self
                .refuse_move(OptimisticOutcome::TooLarge, "it read too much on a replica to be replayed")
                .await;
        }
        let primary = self.shared.router.backends().primary().index;
        match self.replay(primary, &o).await {
            Ok(true) => {
                self.state.transaction_wrote = true;
                self.state.view.pinned = Some(primary);
                self.state.view.last = Some(primary);
                self.shared.metrics.optimistic(OptimisticOutcome::Moved);
                Ok(true)
            }
            Ok(false) => {
                self.rollback_quietly(primary).await;
                self.refuse_move(
                    OptimisticOutcome::Conflict,
                    "rows it read on a replica differ on the primary",
                )
                .await
            }
            Err(why) => {
                self.rollback_quietly(primary).await;
                let why = format!("it could not be replayed on the primary: {why}");
                self.refuse_move(OptimisticOutcome::Conflict, &why).await
            }
        }
    }

    /// Starts the transaction on the primary and replays the log; false when a result differs.
    async fn replay(&mut self, primary: usize, o: &Optimistic) -> Result<bool, String> {
        self.ensure_connection(primary).await.map_err(|e| e.describe())?;
        self.replay_history(primary).await.map_err(|e| e.describe())?;
        if let Some(begin) = &o.begin {
            let conn = self.conns[primary].as_mut().ok_or("connection vanished")?;
            let outcome = conn.run_silently(begin, ResponseKind::Query).await?;
            if outcome.error.is_some() || outcome.status.is_none_or(|s| s & IN_TRANS == 0) {
                return Err("the transaction did not start".into());
            }
        }
        for entry in &o.log {
            let bytes = if entry.statement {
                self.statement_for_backend(primary, &entry.payload).await.map_err(|e| e.describe())?
            } else {
                entry.payload.clone()
            };
            let conn = self.conns[primary].as_mut().ok_or("connection vanished")?;
            conn.digest = Some(Digest::default());
            conn.send(0, &bytes).await.map_err(|e| e.to_string())?;
            let outcome =
                relay_response(conn, entry.kind, &mut tokio::io::empty(), &mut tokio::io::sink(), None)
                    .await
                    .map_err(|e| e.message)?;
            let digest = conn.digest.take().map(|d| d.value());
            if digest != Some(entry.digest) || outcome.error != entry.error {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn rollback_quietly(&mut self, backend: usize) {
        if let Some(conn) = self.conns.get_mut(backend).and_then(Option::as_mut)
            && conn.run_silently(ROLLBACK, ResponseKind::Query).await.is_err()
        {
            self.drop_connection(backend);
        }
    }

    /// The transaction cannot move: the client gets the error drivers retry on.
    async fn refuse_move(&mut self, outcome: OptimisticOutcome, why: &str) -> Result<bool, SessionError> {
        self.shared.metrics.optimistic(outcome);
        self.state.status &= !IN_TRANS;
        // The transaction is over; its retry (which would most likely read the same changed
        // rows, or the same NOW()) starts on the primary.
        self.state.transaction_wrote = true;
        self.transaction_ended();
        let message = format!(
            "Deadlock found when trying to get lock; try restarting transaction (rwproxy: the transaction started on a replica and {why})"
        );
        self.reply_err(1213, "40001", &message).await?;
        Ok(false)
    }
}
