//! Running a command on a backend: choose, connect lazily, replay session commands, send,
//! relay the answer, and retry a read elsewhere when a backend fails before answering.

use super::consistency::hinted_position;
use super::optimistic::Ran;
use super::{Session, SessionError};
use crate::backend::{Side, State, checkout, relay_response, reset};
use crate::classifier::{
    Classification, Destination, Effect, Hint, Reason, classify_lead, counts_as_write, explain_route_in,
    kill_target, lead,
};
use crate::protocol::{FoundRows, Outcome, ResponseKind, command};
use crate::router::{Decision, Target};
use std::borrow::Cow;

/// What a command is, for a backend: raw bytes, or a statement command whose ids (and
/// parameter types) are rewritten for the backend that runs it.
#[derive(Clone, Copy)]
pub(super) enum Outgoing<'a> {
    Raw(&'a [u8]),
    Statement(&'a [u8]),
}

/// Why one backend could not run the command.
pub(super) enum AttemptError {
    /// Nothing was sent or nothing came back; the next candidate may run it.
    Unavailable(String),
    /// Nothing was sent: every connection the backend allows is in use (the pool is full,
    /// the backend is fine).
    Full(String),
    /// The backend went away after the command was sent, before any answer reached the client.
    Lost(String),
    /// The client went away, or the backend died mid-answer: the session cannot go on.
    Fatal(SessionError),
}

impl AttemptError {
    pub(super) fn describe(&self) -> String {
        match self {
            AttemptError::Unavailable(why) | AttemptError::Full(why) | AttemptError::Lost(why) => why.clone(),
            AttemptError::Fatal(e) => e.to_string(),
        }
    }
}

impl Session {
    pub(super) async fn query(&mut self, payload: Vec<u8>) -> Result<(), SessionError> {
        let sql = statement_text(payload.get(1..).unwrap_or_default());
        let lead = lead(&sql);
        if let Some(statement) = explain_route_in(&sql, &lead) {
            return Box::pin(self.explain_route(statement)).await;
        }
        if lead.first_word.is_some_and(|w| w.eq_ignore_ascii_case("SELECT"))
            && let Some(local) = self.answered_here(&sql)
        {
            return match local {
                Answered::Position => Box::pin(self.answer_position()).await,
                Answered::ConnectionId(name) => Box::pin(self.answer_connection_id(name)).await,
                Answered::RowCount(name, count) | Answered::FoundRows(name, count) => {
                    Box::pin(self.answer_count(name, count)).await
                }
            };
        }
        if lead.first_word.is_some_and(|w| w.eq_ignore_ascii_case("KILL"))
            && let Some(kill) = kill_target(&sql)
        {
            return Box::pin(self.kill(kill)).await;
        }
        let class = classify_lead(&sql, &lead);
        if class.destination == Destination::All && !self.state.history.has_room_for(&payload) {
            return self.history_full().await;
        }
        let Some(decision) = self.route(&class).await? else {
            return Ok(());
        };
        let variables_pinned = self.state.view.user_variables_on_primary;
        let statement = payload.get(1..).unwrap_or_default();
        let digest = self.shared.config.mysql.query_digests.then(|| crate::digests::Seen::text(statement));
        let ran = self
            .run(decision, Outgoing::Raw(&payload), ResponseKind::Query, Some((&class, &sql)), None, digest)
            .await?;
        if let Some((outcome, backend)) = ran
            && outcome.error.is_none()
        {
            if class.effect == Effect::UserVariablesOnPrimary {
                Box::pin(self.settle_user_variables(&sql, backend, variables_pinned)).await;
            }
            if class.effect == Effect::UseDatabase {
                self.login.database = database_of_use(&String::from_utf8_lossy(&payload[1..]));
            }
            if class.destination == Destination::All {
                self.remember_session_command(&payload, backend);
            }
        }
        Ok(())
    }

    /// What rwproxy answers itself instead of a backend, now: `SELECT CONNECTION_ID()` while
    /// the session borrows a connection per statement (a session holding its connection reads
    /// the server's id for it, which locks, PROCESSLIST and innodb_trx name), `ROW_COUNT()` and
    /// `FOUND_ROWS()` when the session's count is known (not `FOUND_ROWS()` on MySQL: there DML
    /// changes it too, and the server warns that the function is deprecated).
    pub(super) fn answered_here<'a>(&self, sql: &'a str) -> Option<Answered<'a>> {
        match asked_here(sql)? {
            Asked::Position => Some(Answered::Position),
            Asked::ConnectionId(name) => self.borrows_per_statement().then_some(Answered::ConnectionId(name)),
            Asked::RowCount(name) => self.row_count.map(|count| Answered::RowCount(name, count)),
            Asked::FoundRows(name) => self
                .found_rows
                .filter(|_| self.shared.server_version.contains("MariaDB"))
                .and_then(|rows| i64::try_from(rows).ok())
                .map(|rows| Answered::FoundRows(name, rows)),
        }
    }

    /// Decides where a statement goes; an optimistic transaction that needs the primary moves
    /// there first. `None`: it could not move and the client has its answer (1213).
    pub(super) async fn route(&mut self, class: &Classification) -> Result<Option<Decision>, SessionError> {
        let view = &self.state.view;
        let backends = self.shared.router.backends();
        if view.read_only_transaction
            && class.changes_rows
            && view.pinned.is_some_and(|b| !backends.is_primary(b))
        {
            // A read-only transaction on a replica: the server there would refuse the change
            // for being a replica (1290); the transaction's own refusal is what a direct
            // connection gets.
            let message = "Cannot execute statement in a READ ONLY transaction";
            self.reply_err(1792, "25006", message).await?;
            return Ok(None);
        }
        let decision = self.shared.router.decide(class, &self.state.view);
        if !(self.state.view.optimistic && decision.target == Target::Primary) {
            return Ok(Some(decision));
        }
        if !Box::pin(self.move_transaction()).await? {
            return Ok(None);
        }
        Ok(Some(self.shared.router.decide(class, &self.state.view)))
    }

    /// COM_INIT_DB and COM_SET_OPTION: session commands, like `USE` and `SET`.
    pub(super) async fn session_command(&mut self, payload: Vec<u8>) -> Result<(), SessionError> {
        if !self.state.history.has_room_for(&payload) {
            return self.history_full().await;
        }
        let class = session_class();
        let decision = self.shared.router.decide(&class, &self.state.view);
        let ran = self
            .run(decision, Outgoing::Raw(&payload), ResponseKind::Query, Some((&class, "")), None, None)
            .await?;
        if let Some((outcome, backend)) = ran
            && outcome.error.is_none()
        {
            if payload.first() == Some(&command::INIT_DB) {
                self.login.database = Some(String::from_utf8_lossy(&payload[1..]).into_owned());
            }
            self.remember_session_command(&payload, backend);
        }
        Ok(())
    }

    /// A session command that would make the settings replayed on every new backend connection
    /// too many or too large is refused before it runs (state stays as the backends have it).
    async fn history_full(&mut self) -> Result<(), SessionError> {
        let message = format!(
            "rwproxy: this session already carries {} settings that every backend connection must replay \
             (limit {} settings, {} bytes); reset the connection or reuse setting names",
            self.state.history.len(),
            super::state::MAX_HISTORY_ENTRIES,
            super::state::MAX_HISTORY_BYTES
        );
        self.reply_err(1105, "HY000", &message).await
    }

    /// Records a session command that `backend` has just run, so the others replay it (after
    /// `login.database` follows a `USE`: the connection is in the session's database then).
    pub(super) fn remember_session_command(&mut self, payload: &[u8], backend: usize) {
        self.state.history.push(payload);
        self.state.after_setting(payload);
        if let Some(conn) = self.conns.get_mut(backend).and_then(Option::as_mut) {
            conn.applied = self.state.history.head();
            if changes_database(payload) {
                conn.database = Some(self.login.database.clone());
            }
            conn.ran_setting(payload);
        }
    }

    /// COM_FIELD_LIST is a read of table metadata.
    pub(super) async fn field_list(&mut self, payload: Vec<u8>) -> Result<(), SessionError> {
        let class = Classification::new(Destination::Read, Reason::Read);
        let decision = self.shared.router.decide(&class, &self.state.view);
        self.run(decision, Outgoing::Raw(&payload), ResponseKind::Rows, None, None, None).await?;
        Ok(())
    }

    /// COM_STATISTICS describes the primary.
    pub(super) async fn statistics(&mut self, payload: Vec<u8>) -> Result<(), SessionError> {
        let decision = Decision { target: Target::Primary, reason: Reason::NodeSpecific };
        self.run(decision, Outgoing::Raw(&payload), ResponseKind::Single, None, None, None).await?;
        Ok(())
    }

    /// Runs a command on the decision's target, trying the next candidate when a backend is
    /// unavailable (and, for reads, when it fails before answering). Returns the outcome and the
    /// backend that answered, or `None` when the client got an error from rwproxy instead.
    pub(super) async fn run(
        &mut self,
        decision: Decision,
        out: Outgoing<'_>,
        kind: ResponseKind,
        statement: Option<(&Classification, &str)>,
        statement_id: Option<u32>,
        digest: Option<crate::digests::Seen<'_>>,
    ) -> Result<Option<(Outcome, usize)>, SessionError> {
        let started = std::time::Instant::now();
        if decision.target == Target::Primary
            && !self.shared.router.backends().is_confirmed()
            && let Some(why) = Box::pin(self.primary_unconfirmed()).await
        {
            let message = format!("rwproxy: no primary available (the primary is not known: {why})");
            self.reply_err(crate::protocol::errors::NO_BACKEND, crate::protocol::errors::SQLSTATE, &message)
                .await?;
            return Ok(None);
        }
        let retry_lost = decision.target.is_read();
        let mut candidates =
            self.shared.router.candidates(decision.target, &self.state.excluded, self.worker);
        if decision.target.is_read() {
            // The classifier saw the token; only then is the text searched for the position.
            let hinted = statement
                .filter(|(class, _)| class.hint == Some(Hint::After))
                .and_then(|(_, sql)| hinted_position(sql));
            let need = self.read_need(hinted).await;
            candidates = self.consistent_candidates(candidates, need).await;
        }
        let reads_diagnostics = statement.is_some_and(|(class, _)| class.destination == Destination::Last);
        if self.keep_for_next == Some(super::Pin::Diagnostics)
            && !reads_diagnostics
            && statement.is_some()
            && self.multiplexing()
            && self.pin() == Some(super::Pin::Diagnostics)
        {
            Box::pin(self.give_back_except(candidates.first().copied())).await;
        }
        let mut failures = Vec::new();
        let mut full = 0;
        for backend in candidates {
            // The monitor says it is down: fail now rather than wait for a connect timeout. A
            // pinned session still tries its own backend: its transaction lives there.
            if !matches!(decision.target, Target::Backend(_))
                && let Some(b) = self.shared.router.backends().get(backend)
                && b.health.state() == State::Down
            {
                failures.push(format!("{} ({}): down: {}", b.name, b.address, b.health.reason()));
                continue;
            }
            match self.attempt(backend, out, kind, statement_id, started).await {
                Ok(outcome) => {
                    let backends = self.shared.router.backends();
                    backends.mark_ok(backend);
                    if let Some(b) = backends.get(backend) {
                        let took = started.elapsed();
                        self.shared.metrics.query(self.worker, b, decision.target, decision.reason, took);
                        if let Some(seen) = digest {
                            let on_primary = backends.is_primary(backend);
                            let error = outcome.error.is_some();
                            let run = crate::digests::Run {
                                on_primary,
                                reason: decision.reason.as_str(),
                                took,
                                error,
                            };
                            self.running.tier().digests.record(self.worker, seen, run);
                        }
                    }
                    self.keep_for_next = kept_for_next(statement.map(|(class, _)| class), &outcome);
                    self.row_count = outcome.row_count;
                    self.found_rows = found_rows_after(self.found_rows, statement.map(|(c, _)| c), &outcome);
                    let mut state_changed = false;
                    if let Some(conn) = self.conns.get_mut(backend).and_then(Option::as_mut) {
                        conn.leftover = self.keep_for_next.is_some();
                        state_changed = conn.tracked.state_changed;
                    }
                    let was_pinned = self.state.view.pinned;
                    self.state.after_response(backend, &outcome, self.shared.router.optimistic());
                    // A change of rows that changed none wrote nothing (and no GTID shows for
                    // it): later reads need nothing of it.
                    let writes = statement.is_some_and(|(class, _)| {
                        counts_as_write(class) && !(class.changes_rows && outcome.row_count == Some(0))
                    });
                    self.learn_from_statement(backend, writes, outcome.error.is_some(), outcome.status);
                    let class = statement.map(|(class, _)| class);
                    let ran = Ran { backend, out, kind, class, outcome: &outcome, was_pinned, writes };
                    self.track_optimistic(ran);
                    if let Some((class, sql)) = statement
                        && outcome.error.is_none()
                    {
                        self.state.after_statement(class, sql);
                    }
                    if state_changed && let Some((class, _)) = statement {
                        let on_primary = self.shared.router.backends().is_primary(backend);
                        self.state.after_state_change(class, on_primary);
                    }
                    // Only now does the client get the end of the answer: what it said (a
                    // write's position) is recorded before the client can act on it.
                    tokio::io::AsyncWriteExt::flush(&mut self.writer).await?;
                    return Ok(Some((outcome, backend)));
                }
                Err(AttemptError::Unavailable(why)) => failures.push(why),
                Err(AttemptError::Full(why)) => {
                    full += 1;
                    failures.push(why);
                }
                Err(AttemptError::Lost(why)) if retry_lost => failures.push(why),
                Err(AttemptError::Lost(why)) => {
                    let message = format!("rwproxy: lost connection to backend during query ({why})");
                    let code = crate::protocol::errors::BACKEND_LOST;
                    self.reply_err(code, crate::protocol::errors::SQLSTATE, &message).await?;
                    return Ok(None);
                }
                Err(AttemptError::Fatal(e)) => return Err(e),
            }
        }
        let what = match decision.target {
            Target::Primary => "primary",
            Target::Backend(_) => "backend for this session",
            Target::ReadPool | Target::Replica | Target::PreferPrimary => "backend",
        };
        if failures.is_empty() {
            failures.push("no replica is usable and all_replicas_down = \"error\"".to_string());
        }
        // Every backend tried was up and busy: a limit of rwproxy's, not a failure.
        let (code, message) = if full == failures.len() {
            let message = format!(
                "rwproxy: too many connections: every connection to the {what} is in use ({}); nothing ran, retry later",
                failures.join("; ")
            );
            (crate::protocol::errors::POOL_FULL, message)
        } else {
            let message = format!("rwproxy: no {what} available ({})", failures.join("; "));
            (crate::protocol::errors::NO_BACKEND, message)
        };
        self.reply_err(code, crate::protocol::errors::SQLSTATE, &message).await?;
        Ok(None)
    }

    async fn attempt(
        &mut self,
        backend: usize,
        out: Outgoing<'_>,
        kind: ResponseKind,
        statement_id: Option<u32>,
        started: std::time::Instant,
    ) -> Result<Outcome, AttemptError> {
        self.ensure_connection(backend).await?;
        if self.conns[backend].as_ref().is_some_and(|c| c.applied != self.state.history.head()) {
            // Boxed, like the other rare paths: they would size every session's task.
            Box::pin(self.replay_history(backend)).await?;
        }
        let bytes: Cow<'_, [u8]> = match out {
            Outgoing::Raw(bytes) => Cow::Borrowed(bytes),
            Outgoing::Statement(bytes) => Cow::Owned(self.statement_for_backend(backend, bytes).await?),
        };
        // Only a connection that holds another insert id may need it, also when the session's
        // is 0 and the connection's another session's (boxed: rare).
        if self.conns[backend].as_ref().is_some_and(|c| c.last_insert_id != self.last_insert_id) {
            Box::pin(self.carry_insert_id(backend, out)).await?;
        }
        let digest = self.digest_wanted(backend);
        let Some(conn) = self.conns[backend].as_mut() else {
            return Err(AttemptError::Unavailable("connection vanished".into()));
        };
        conn.busy = true;
        conn.tracked = Default::default();
        // A client that turns state-change tracking on sees the entries from its own `SET`'s
        // answer on, as directly (only `SET` statements are looked into).
        if let Outgoing::Raw(bytes) = out
            && bytes.first() == Some(&command::QUERY)
            && bytes.get(1..4).is_some_and(|w| w.eq_ignore_ascii_case(b"SET"))
        {
            conn.ran_setting(bytes);
        }
        conn.digest = digest.then(crate::backend::Digest::default);
        let target = conn.backend.clone();
        let down = target.health.marked_down(self.worker);
        tokio::pin!(down);
        down.as_mut().enable();
        // A backend already marked down (a pinned transaction's) is not watched: only the
        // change tells that a wait is hopeless.
        let watch_down = target.health.state() != State::Down;
        // Published for `KILL QUERY` from another session (cleared when the answer is in).
        self.handle.started(backend, conn.thread_id, started);
        if let Err(e) = conn.send(0, &bytes).await {
            self.handle.finished();
            self.backend_failed(backend, &e.to_string());
            return Err(AttemptError::Lost(e.to_string()));
        }
        // A server that hangs (stopped, overloaded, partitioned) holds the session only until
        // the monitor marks it down: nothing has reached the client yet, so a read is retried
        // elsewhere and anything else gets a clear error.
        if watch_down {
            tokio::select! {
                biased;
                () = conn.answer_started() => {}
                () = &mut down => {
                    self.handle.finished();
                    let why = format!("{} was marked down while this statement waited: {}", target.name, target.health.reason());
                    self.backend_failed(backend, &why);
                    return Err(AttemptError::Lost(why));
                }
            }
        }
        let Some(conn) = self.conns[backend].as_mut() else {
            self.handle.finished();
            return Err(AttemptError::Unavailable("connection vanished".into()));
        };
        // The answer has begun: a server that hangs in the middle of it is cut off when the
        // monitor marks it down. Part of the answer may have reached the client, so the client
        // connection ends too (an error packet there would corrupt the stream).
        let relayed = tokio::select! {
            biased;
            relayed = relay_response(conn, kind, &mut self.reader, &mut self.writer, statement_id) => relayed,
            () = &mut down, if watch_down => {
                self.handle.finished();
                let why = format!("{} was marked down in the middle of an answer: {}", target.name, target.health.reason());
                self.backend_failed(backend, &why);
                return Err(AttemptError::Fatal(SessionError::BrokenResponse(why)));
            }
        };
        self.handle.finished();
        let Some(conn) = self.conns[backend].as_mut() else {
            return Err(AttemptError::Unavailable("connection vanished".into()));
        };
        match relayed {
            Ok(outcome) => {
                conn.busy = false;
                if outcome.insert_id != 0 && outcome.error.is_none() {
                    conn.last_insert_id = outcome.insert_id;
                    self.last_insert_id = outcome.insert_id;
                }
                Ok(outcome)
            }
            Err(e) if e.side == Side::Client => {
                Err(AttemptError::Fatal(SessionError::ClientIo(std::io::Error::other(e.message))))
            }
            Err(e) => {
                self.backend_failed(backend, &e.message);
                if e.touched_client {
                    Err(AttemptError::Fatal(SessionError::BrokenResponse(e.message)))
                } else {
                    Err(AttemptError::Lost(e.message))
                }
            }
        }
    }

    /// Why the primary is not known for sure (`detect_primary` before the monitor has heard
    /// every backend, or servers that contradict each other), after waiting up to
    /// `connect_timeout` for the monitor to settle it; `None` once it is known.
    async fn primary_unconfirmed(&self) -> Option<String> {
        let backends = self.shared.router.backends();
        backends.unconfirmed()?;
        let deadline = tokio::time::Instant::now() + self.shared.config.mysql.connect_timeout;
        // Bounded by the deadline: the monitor's first round takes one check of each backend.
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            backends.unconfirmed()?;
        }
        backends.unconfirmed()
    }

    /// A backend connection failed: forget it, and any transaction pinned to it.
    pub(super) fn backend_failed(&mut self, backend: usize, error: &str) {
        self.drop_connection(backend);
        // One lost connection may be this session's doing; several within a window are the
        // backend's.
        self.shared.router.backends().lost_connection(backend, error);
        if self.state.view.pinned == Some(backend) {
            self.state.view.pinned = None;
        }
        if self.state.optimistic.as_ref().is_some_and(|o| o.backend == backend) {
            self.state.take_optimistic();
        }
    }

    /// Opens the connection to `backend` if the session has none, or if the one it has was
    /// closed by the server while idle. A connection lost inside a transaction is not replaced
    /// silently: the transaction is gone, and the client must hear it.
    pub(super) async fn ensure_connection(&mut self, backend: usize) -> Result<(), AttemptError> {
        if let Some(conn) = self.conns[backend].as_mut() {
            if !conn.is_closed() {
                // Tracking is asked for once per connection, and again after a client's reset.
                if conn.tracking_ready {
                    return Ok(());
                }
                return match Box::pin(conn.enable_tracking()).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        self.backend_failed(backend, &e.to_string());
                        Err(AttemptError::Unavailable(e.to_string()))
                    }
                };
            }
            let pinned = self.state.view.pinned == Some(backend);
            self.drop_connection(backend);
            if pinned {
                self.state.view.pinned = None;
                return Err(AttemptError::Lost(
                    "connection closed inside a transaction; the transaction is lost".into(),
                ));
            }
        }
        let Some(target) = self.shared.router.backends().get(backend).cloned() else {
            return Err(AttemptError::Unavailable(format!("no backend #{backend}")));
        };
        let timeout = self.shared.config.mysql.connect_timeout;
        match checkout(&target, &self.login, self.state.history.tag(), timeout, self.worker).await {
            Ok(mut conn) => {
                // A borrowed connection holds another session's settings: a prefix of this
                // session's is completed by the replay, anything else is reset first.
                conn.applied = match conn.settings.and_then(|tag| self.state.history.applied_for(tag)) {
                    Some(applied) => applied,
                    None => {
                        if let Err(e) = Box::pin(reset(&mut conn, self.login.database.as_deref())).await {
                            return Err(AttemptError::Unavailable(e));
                        }
                        0
                    }
                };
                // A borrowed connection has usually asked for tracking already.
                if !conn.tracking_ready
                    && let Err(e) = Box::pin(conn.enable_tracking()).await
                {
                    self.shared.router.backends().mark_failed(backend, &e.to_string());
                    return Err(AttemptError::Unavailable(e.to_string()));
                }
                self.conns[backend] = Some(conn);
                Ok(())
            }
            Err(e @ crate::backend::BackendError::Exhausted { .. }) => Err(AttemptError::Full(e.to_string())),
            Err(e) => {
                // Unreachable, or its logins fail for everyone (the server refuses rwproxy's
                // login: a backend reads cannot go to, whatever the monitor's own login says).
                // A refusal of what this session asked for (its database) changes nothing for
                // the others.
                if e.is_unreachable() {
                    self.shared.router.backends().mark_failed(backend, &e.to_string());
                } else if e.is_backend_refusal() {
                    self.shared.router.backends().mark_failed(backend, &format!("logins fail: {e}"));
                }
                Err(AttemptError::Unavailable(e.to_string()))
            }
        }
    }

    /// Runs on `backend` the session commands it has not seen yet, in order. A backend that
    /// refuses one leaves this session (it would answer with the wrong settings).
    pub(super) async fn replay_history(&mut self, backend: usize) -> Result<(), AttemptError> {
        let Some(conn) = self.conns[backend].as_mut() else {
            return Ok(());
        };
        let pending: Vec<(u64, Vec<u8>)> = self.state.history.pending(conn.applied).cloned().collect();
        for (seq, payload) in pending {
            let result = conn.run_silently(&payload, ResponseKind::Query).await;
            match result {
                Ok(outcome) if outcome.error.is_none() => {
                    conn.applied = seq;
                    if changes_database(&payload) {
                        // The last database command of the history is the session's database.
                        conn.database = Some(self.login.database.clone());
                    }
                    conn.ran_setting(&payload);
                }
                Ok(outcome) => {
                    let name = conn.backend.name.clone();
                    let text = String::from_utf8_lossy(&payload[1..]).into_owned();
                    tracing::warn!(session = self.id, backend = %name, command = %text, code = ?outcome.error, "session command failed on replay; backend leaves this session");
                    self.drop_connection(backend);
                    if let Some(flag) = self.state.excluded.get_mut(backend) {
                        *flag = true;
                    }
                    return Err(AttemptError::Unavailable(format!(
                        "{name}: session command {text:?} failed there"
                    )));
                }
                Err(error) => {
                    self.backend_failed(backend, &error);
                    return Err(AttemptError::Unavailable(error));
                }
            }
        }
        Ok(())
    }
}

/// State a statement leaves on its connection for the session's next command only: warnings
/// and the found-rows count (the client may read them next; a diagnostics statement keeps them
/// too), `SET TRANSACTION` for the next transaction.
fn kept_for_next(class: Option<&Classification>, outcome: &Outcome) -> Option<super::Pin> {
    if class.is_some_and(|c| c.effect == Effect::NextTransaction) && outcome.error.is_none() {
        Some(super::Pin::NextTransaction)
    } else if outcome.warnings > 0 || class.is_some_and(|c| c.destination == Destination::Last) {
        Some(super::Pin::Diagnostics)
    } else {
        None
    }
}

/// What `FOUND_ROWS()` reads after a statement, when rwproxy can tell: the rows of a result
/// set, unless `SQL_CALC_FOUND_ROWS` asked the server to count past a LIMIT (or the statement
/// reads diagnostics itself: both are classified `Last`).
fn found_rows_after(before: Option<u64>, class: Option<&Classification>, outcome: &Outcome) -> Option<u64> {
    match outcome.found_rows {
        FoundRows::Kept => before,
        FoundRows::Rows(rows) if class.is_some_and(|c| c.destination != Destination::Last) => Some(rows),
        FoundRows::Rows(_) | FoundRows::Unknown => None,
    }
}

/// A statement's text: borrowed when it is valid UTF-8 (std's check has an ASCII fast path
/// that the lossy conversion's chunking does not), else with replacement characters.
fn statement_text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// A statement rwproxy may answer itself; the names are the column's as the client wrote it.
#[derive(Debug, PartialEq, Eq)]
enum Asked<'a> {
    Position,
    ConnectionId(&'a str),
    RowCount(&'a str),
    FoundRows(&'a str),
}

/// What rwproxy answers, with the value it answers with.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answered<'a> {
    /// `SELECT @@rwproxy_position`.
    Position,
    /// `SELECT CONNECTION_ID()`: the session's id.
    ConnectionId(&'a str),
    /// `SELECT ROW_COUNT()` and `SELECT FOUND_ROWS()`: the session's counts.
    RowCount(&'a str, i64),
    FoundRows(&'a str, i64),
}

impl Answered<'_> {
    /// For `EXPLAIN ROUTE`.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Answered::Position => "position",
            Answered::ConnectionId(_) => "connection_id",
            Answered::RowCount(..) => "row_count",
            Answered::FoundRows(..) => "found_rows",
        }
    }
}

/// The statements rwproxy may answer itself, told apart by length first (one trim per SELECT).
fn asked_here(sql: &str) -> Option<Asked<'_>> {
    let text = sql.trim().trim_end_matches(';').trim_end();
    let is = |wanted: &str| text.eq_ignore_ascii_case(wanted);
    match text.len() {
        25 if is("SELECT @@rwproxy_position") => Some(Asked::Position),
        22 if is("SELECT CONNECTION_ID()") => Some(Asked::ConnectionId(&text[7..])),
        18 if is("SELECT ROW_COUNT()") => Some(Asked::RowCount(&text[7..])),
        19 if is("SELECT FOUND_ROWS()") => Some(Asked::FoundRows(&text[7..])),
        _ => None,
    }
}

/// Whether a session command changes the default database (COM_INIT_DB, `USE`).
fn changes_database(payload: &[u8]) -> bool {
    match payload.split_first() {
        Some((&command::INIT_DB, _)) => true,
        Some((&command::QUERY, sql)) => {
            let sql = sql.trim_ascii_start();
            sql.len() > 4 && sql[..3].eq_ignore_ascii_case(b"use") && sql[3].is_ascii_whitespace()
        }
        _ => false,
    }
}

/// COM_INIT_DB and COM_SET_OPTION route like `USE` and `SET`: session commands.
fn session_class() -> Classification {
    Classification::new(Destination::All, Reason::SessionCommand)
}

/// The database named by `USE db` (backquotes removed).
fn database_of_use(sql: &str) -> Option<String> {
    let rest = sql.trim().get(3..)?.trim().trim_end_matches(';').trim();
    let name = rest.strip_prefix('`').and_then(|r| r.strip_suffix('`')).unwrap_or(rest);
    (!name.is_empty()).then(|| name.replace("``", "`"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn use_statement_names_database() {
        assert_eq!(super::database_of_use("USE appdb").as_deref(), Some("appdb"));
        assert_eq!(super::database_of_use("use `my db`;").as_deref(), Some("my db"));
        assert_eq!(super::database_of_use("USE").as_deref(), None);
    }

    #[test]
    fn statements_answered_here_are_recognised() {
        use super::{Asked, asked_here};
        assert_eq!(asked_here("select @@rwproxy_position;"), Some(Asked::Position));
        assert_eq!(asked_here("  SELECT @@RWPROXY_POSITION"), Some(Asked::Position));
        assert_eq!(asked_here("SELECT @@rwproxy_position, 1"), None);
        assert_eq!(asked_here("select connection_id() ;"), Some(Asked::ConnectionId("connection_id()")));
        assert_eq!(asked_here("SELECT ROW_COUNT()"), Some(Asked::RowCount("ROW_COUNT()")));
        assert_eq!(asked_here("SELECT ROW_COUNT() AS n"), None);
        assert_eq!(asked_here("select found_rows()"), Some(Asked::FoundRows("found_rows()")));
        assert_eq!(asked_here("SELECT CONNECTION_ID()+0"), None);
    }
}
