//! Server-side prepared statements across several backends.
//!
//! The client sees one statement id, rwproxy's own. The statement is prepared on the connection
//! that first runs it and lazily on each other connection the first time an execution lands
//! there: a connection keeps its statements by text ([`crate::backend::StatementCache`]), so a
//! connection borrowed from the pool may already have it from another session. Parameter types,
//! which a client sends only when they change, are kept and sent to a connection that may not
//! hold them; long data is kept until the execution it belongs to.

use std::collections::HashMap;

use super::execute::Outgoing;
use super::{Session, SessionError};
use crate::backend::Pooled;
use crate::classifier::{Classification, classify};
use crate::protocol::{ResponseKind, command};
use crate::router::{Decision, Target};

#[derive(Debug, Clone)]
struct Statement {
    /// The COM_STMT_PREPARE payload, to prepare it on another backend.
    prepare: Vec<u8>,
    /// What the server bound it to when the client prepared it: every other server statement
    /// that stands for it is prepared in the same context.
    context: Context,
    class: Classification,
    /// Its digest key, when digests are on (the text was given to the table at the prepare).
    digest: Option<u64>,
    params: u16,
    /// Where it was last run, newest last (a memo: the connection's cache is the truth).
    on: Vec<Placement>,
    /// Parameter types from the last execution that bound them.
    types: Option<Vec<u8>>,
    /// COM_STMT_SEND_LONG_DATA payloads for the next execution.
    long_data: Vec<Vec<u8>>,
    /// Long data for the next execution did not fit (the session's or the shared limit): it
    /// was dropped, and the execution fails with 1153.
    long_data_lost: bool,
    /// Backend holding the open cursor, for COM_STMT_FETCH.
    cursor_on: Option<usize>,
}

/// The statement is `id` on connection `conn` of `backend`, as long as that connection's cache
/// is in `epoch`.
#[derive(Debug, Clone, Copy)]
struct Placement {
    backend: usize,
    conn: u64,
    epoch: u64,
    id: u32,
}

/// What a server binds a statement to at its prepare: the default database its names resolve
/// in, and the settings its text was parsed with (`sql_mode`, character sets), in order.
#[derive(Debug, Clone)]
struct Context {
    /// The connection's statement cache key: `base`, or one of its own for a statement that
    /// must not be shared.
    key: u64,
    /// [`crate::backend::context_key`] of the rest: what the server binds.
    base: u64,
    database: Option<String>,
    settings: Vec<Vec<u8>>,
}

/// Placements a statement remembers; an older one is looked up in the connection's cache again.
const PLACEMENTS: usize = 8;

impl Statement {
    fn placement(&mut self, backend: usize, conn: &Pooled) -> Option<&mut Placement> {
        let epoch = conn.statements.epoch();
        self.on.iter_mut().rev().find(|p| p.backend == backend && p.conn == conn.uid && p.epoch == epoch)
    }

    fn remember(&mut self, placement: Placement) {
        self.on.retain(|p| p.backend != placement.backend || p.conn != placement.conn);
        if self.on.len() >= PLACEMENTS {
            self.on.remove(0);
        }
        self.on.push(placement);
    }
}

#[derive(Debug, Default)]
pub(super) struct Statements {
    /// By client-visible id (rwproxy hands them out in sequence).
    map: HashMap<u32, Statement, crate::backend::FastIds>,
    next_id: u32,
    /// The long data all statements hold, on the tier's shared budget.
    long_data: Option<crate::budget::Held>,
}

impl Statements {
    /// Drops statement `id`'s pending long data and gives its bytes back.
    fn clear_long_data(&mut self, id: u32) {
        if let Some(stmt) = self.map.get_mut(&id) {
            let bytes: usize = stmt.long_data.drain(..).map(|d| d.len()).sum();
            if let Some(held) = self.long_data.as_mut() {
                held.shrink(bytes);
            }
        }
    }

    /// The text of the statement a statement command names.
    pub fn text_of(&self, payload: &[u8]) -> Option<&[u8]> {
        let stmt = self.map.get(&statement_id(payload)?)?;
        stmt.prepare.get(1..)
    }

    /// Whether a cursor is open on some backend (COM_STMT_FETCH must reach it).
    pub fn has_cursor(&self) -> bool {
        self.map.values().any(|s| s.cursor_on.is_some())
    }

    /// A backend connection is gone: its statements and cursors went with it.
    pub fn forget_backend(&mut self, backend: usize) {
        for stmt in self.map.values_mut() {
            stmt.on.retain(|p| p.backend != backend);
            if stmt.cursor_on == Some(backend) {
                stmt.cursor_on = None;
            }
        }
    }
}

fn statement_id(payload: &[u8]) -> Option<u32> {
    payload.get(1..5).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn with_id(payload: &[u8], id: u32) -> Vec<u8> {
    let mut out = payload.to_vec();
    if out.len() >= 5 {
        out[1..5].copy_from_slice(&id.to_le_bytes());
    }
    out
}

/// Where the new-params-bound flag of a COM_STMT_EXECUTE sits, given the parameter count.
fn bound_flag_at(params: u16) -> usize {
    10 + usize::from(params).div_ceil(8)
}

/// Rewrites a COM_STMT_EXECUTE for a backend: its statement id, and the parameter types when
/// the client did not send them but this backend has not seen them.
fn execute_for_backend(
    payload: &[u8],
    backend_id: u32,
    params: u16,
    types: Option<&[u8]>,
    seen: bool,
) -> Vec<u8> {
    let mut out = with_id(payload, backend_id);
    let at = bound_flag_at(params);
    if params == 0 || seen || out.get(at) != Some(&0) {
        return out;
    }
    if let Some(types) = types {
        out[at] = 1;
        out.splice(at + 1..at + 1, types.iter().copied());
    }
    out
}

impl Session {
    pub(super) async fn stmt_prepare(&mut self, payload: Vec<u8>) -> Result<(), SessionError> {
        let sql = String::from_utf8_lossy(payload.get(1..).unwrap_or_default());
        let kill = crate::classifier::lead(&sql).first_word.is_some_and(|w| w.eq_ignore_ascii_case("KILL"));
        if kill && crate::classifier::kill_target(&sql).is_some() {
            // Its id would reach the backend as it is, naming a backend thread, not a session.
            let message =
                "rwproxy: KILL cannot be prepared: its id names an rwproxy session; send it as a query";
            return self.reply_err(1295, "HY000", message).await;
        }
        let class = classify(&sql);
        let decision = self.shared.router.decide(&class, &self.state.view);
        // The connection that prepares it has run the session's settings and is in its
        // database: the statement is bound to the session's context as it is now.
        let mut context = self.prepare_context();
        self.stmts.next_id = self.stmts.next_id.wrapping_add(1).max(1);
        let id = self.stmts.next_id;
        if class.reads_user_variables {
            // MySQL types a user variable a statement reads when the statement is prepared:
            // another statement of the same text, prepared while the variable held another
            // type, would answer with other column metadata. Such a statement is its own.
            // A number no other statement gets, also after this session's resets (its own ids
            // start again at 1).
            let own = self.running.tier().own_statements.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut h = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&(context.base, own), &mut h);
            context.key = std::hash::Hasher::finish(&h);
        }
        let ran =
            self.run(decision, Outgoing::Raw(&payload), ResponseKind::Prepare, None, Some(id), None).await?;
        if let Some((outcome, backend)) = ran
            && let Some(prepared) = outcome.prepared
        {
            let digest = self.shared.config.mysql.query_digests.then(|| {
                self.running.tier().digests.prepared(self.worker, payload.get(1..).unwrap_or_default())
            });
            let mut stmt = Statement {
                prepare: payload,
                context,
                class,
                digest,
                params: prepared.params,
                on: Vec::new(),
                types: None,
                long_data: Vec::new(),
                long_data_lost: false,
                cursor_on: None,
            };
            let key = stmt.context.key;
            if let Some(placement) =
                self.cache_statement(backend, key, &stmt.prepare, prepared.statement_id).await
            {
                stmt.remember(placement);
            }
            self.stmts.map.insert(id, stmt);
        }
        Ok(())
    }

    /// The context a statement prepared now is bound to.
    fn prepare_context(&self) -> Context {
        let settings: Vec<Vec<u8>> = self.state.history.prepare_settings().map(<[u8]>::to_vec).collect();
        let database = self.login.database.clone();
        let base = crate::backend::context_key(database.as_deref(), settings.iter().map(Vec::as_slice));
        Context { key: base, base, database, settings }
    }

    /// Records in the connection's cache that `prepare`, prepared in context `context`, is
    /// statement `backend_id` there, and closes what that pushes out.
    async fn cache_statement(
        &mut self,
        backend: usize,
        context: u64,
        prepare: &[u8],
        backend_id: u32,
    ) -> Option<Placement> {
        let conn = self.conns.get_mut(backend)?.as_mut()?;
        let closed = conn.statements.insert(context, prepare, backend_id);
        let placement = Placement { backend, conn: conn.uid, epoch: conn.statements.epoch(), id: backend_id };
        for old in closed {
            let mut close = vec![command::STMT_CLOSE];
            close.extend_from_slice(&old.to_le_bytes());
            // COM_STMT_CLOSE has no answer.
            if conn.send(0, &close).await.is_err() {
                self.drop_connection(backend);
                return None;
            }
        }
        Some(placement)
    }

    async fn unknown_statement(&mut self, id: u32, what: &str) -> Result<(), SessionError> {
        let message = format!("Unknown prepared statement handler ({id}) given to {what}");
        self.reply_err(1243, "HY000", &message).await
    }

    pub(super) async fn stmt_execute(&mut self, payload: Vec<u8>) -> Result<(), SessionError> {
        let Some(id) = statement_id(&payload).filter(|_| payload.len() >= 10) else {
            return Err(SessionError::Malformed("COM_STMT_EXECUTE"));
        };
        let Some(stmt) = self.stmts.map.get_mut(&id) else {
            return self.unknown_statement(id, "mysqld_stmt_execute").await;
        };
        if std::mem::take(&mut stmt.long_data_lost) {
            self.stmts.clear_long_data(id);
            let message = "Parameter data sent with mysql_stmt_send_long_data() is over rwproxy's limit \
                           (mysql.max_packet_size per session, mysql.max_long_data_total in all)";
            return self.reply_err(1153, "08S01", message).await;
        }
        let at = bound_flag_at(stmt.params);
        if stmt.params > 0 && payload.get(at) == Some(&1) {
            let end = (at + 1 + 2 * usize::from(stmt.params)).min(payload.len());
            stmt.types = Some(payload[at + 1..end].to_vec());
        }
        let class = stmt.class;
        let digest = stmt.digest.map(|key| crate::digests::Seen { key, text: None });
        // Only statements that change routing state or carry a position token need their text
        // again (GET_LOCK, `/* rwproxy:after=… */`, …).
        let text = stmt.prepare.get(1..).unwrap_or_default();
        let needs_text = class.effect != crate::classifier::Effect::None
            || class.hint == Some(crate::classifier::Hint::After);
        let effect_sql = needs_text.then(|| String::from_utf8_lossy(text).into_owned());
        let long_data = !stmt.long_data.is_empty();
        let Some(decision) = self.route(&class).await? else {
            return Ok(());
        };
        let variables_pinned = self.state.view.user_variables_on_primary;
        if long_data && let Some(o) = self.state.optimistic.as_mut() {
            o.not_replayable();
        }
        let ran = self
            .run(
                decision,
                Outgoing::Statement(&payload),
                ResponseKind::Execute,
                Some((&class, effect_sql.as_deref().unwrap_or_default())),
                None,
                digest,
            )
            .await?;
        self.stmts.clear_long_data(id);
        if let Some(stmt) = self.stmts.map.get_mut(&id)
            && let Some((_, backend)) = &ran
        {
            let cursor = payload.get(5).is_some_and(|flags| flags & 0x07 != 0);
            stmt.cursor_on = cursor.then_some(*backend);
        }
        if let Some((outcome, backend)) = ran
            && outcome.error.is_none()
            && class.effect == crate::classifier::Effect::UserVariablesOnPrimary
            && let Some(sql) = &effect_sql
        {
            Box::pin(self.settle_user_variables(sql, backend, variables_pinned)).await;
        }
        Ok(())
    }

    pub(super) async fn stmt_fetch(&mut self, payload: Vec<u8>) -> Result<(), SessionError> {
        let Some(id) = statement_id(&payload) else {
            return Err(SessionError::Malformed("COM_STMT_FETCH"));
        };
        let Some(backend) = self.stmts.map.get(&id).and_then(|s| s.cursor_on) else {
            return self.unknown_statement(id, "mysqld_stmt_fetch").await;
        };
        let decision =
            Decision { target: Target::Backend(backend), reason: crate::classifier::Reason::SessionPinned };
        self.run(decision, Outgoing::Statement(&payload), ResponseKind::Rows, None, None, None).await?;
        Ok(())
    }

    /// No reply: the data waits for the execution. A session holds at most `max_packet_size`
    /// of it, all sessions together `max_long_data_total`; data over either is dropped and
    /// the execution it was for fails.
    pub(super) fn stmt_send_long_data(&mut self, payload: Vec<u8>) {
        let Some(id) = statement_id(&payload).filter(|id| self.stmts.map.contains_key(id)) else {
            return;
        };
        let max = self.shared.config.mysql.max_packet_size;
        let tier = self.running.tier();
        let held = self.stmts.long_data.get_or_insert_with(|| tier.long_data.hold());
        let fits = held.bytes() + payload.len() <= max && held.grow(payload.len());
        if !fits {
            tracing::debug!(session = self.id, "long data over the limits; dropped");
            self.stmts.clear_long_data(id);
        }
        if let Some(stmt) = self.stmts.map.get_mut(&id) {
            if fits {
                stmt.long_data.push(payload);
            } else {
                stmt.long_data_lost = true;
            }
        }
    }

    /// No reply. The statement stays prepared on the connections that have it, in their
    /// caches, for whoever runs the same text there next.
    pub(super) async fn stmt_close(&mut self, payload: &[u8]) {
        if let Some(id) = statement_id(payload) {
            self.stmts.clear_long_data(id);
            self.stmts.map.remove(&id);
        }
    }

    pub(super) async fn stmt_reset(&mut self, payload: &[u8]) -> Result<(), SessionError> {
        let Some(id) = statement_id(payload) else {
            return Err(SessionError::Malformed("COM_STMT_RESET"));
        };
        let Some(stmt) = self.stmts.map.get_mut(&id) else {
            return self.unknown_statement(id, "mysqld_stmt_reset").await;
        };
        stmt.long_data_lost = false;
        stmt.cursor_on = None;
        let on = stmt.on.clone();
        self.stmts.clear_long_data(id);
        // Only a connection the session holds can have state of this statement (an open
        // cursor); long data never waits on a server.
        for placement in on {
            let Some(conn) = self.conns.get_mut(placement.backend).and_then(Option::as_mut) else {
                continue;
            };
            if conn.uid != placement.conn || conn.statements.epoch() != placement.epoch {
                continue;
            }
            let reset = with_id(payload, placement.id);
            if conn.run_silently(&reset, ResponseKind::Query).await.is_err() {
                self.drop_connection(placement.backend);
            }
        }
        self.reply_ok().await
    }

    /// The bytes of a statement command for `backend`: prepares the statement there first if
    /// needed, sends pending long data, and rewrites ids and parameter types.
    pub(super) async fn statement_for_backend(
        &mut self,
        backend: usize,
        payload: &[u8],
    ) -> Result<Vec<u8>, super::execute::AttemptError> {
        use super::execute::AttemptError;
        let id = statement_id(payload)
            .ok_or_else(|| AttemptError::Unavailable("malformed statement command".into()))?;
        let closed = || AttemptError::Unavailable("statement closed".into());
        let vanished = || AttemptError::Unavailable("connection vanished".into());
        let stmt = self.stmts.map.get_mut(&id).ok_or_else(closed)?;
        let conn = self.conns[backend].as_ref().ok_or_else(vanished)?;
        let placement = match stmt.placement(backend, conn) {
            Some(placement) => *placement,
            None => {
                let prepare = stmt.prepare.clone();
                let placement = match conn.statements.get(stmt.context.key, &prepare) {
                    // Another session prepared the same text in the same context on this
                    // connection.
                    Some(cached) => {
                        Placement { backend, conn: conn.uid, epoch: conn.statements.epoch(), id: cached.id }
                    }
                    None => {
                        let context = stmt.context.clone();
                        Box::pin(self.prepare_on(backend, &prepare, &context)).await?
                    }
                };
                self.stmts.map.get_mut(&id).ok_or_else(closed)?.remember(placement);
                placement
            }
        };
        if payload.first() != Some(&command::STMT_EXECUTE) {
            return Ok(with_id(payload, placement.id));
        }
        let conn = self.conns[backend].as_mut().ok_or_else(vanished)?;
        let stmt = self.stmts.map.get_mut(&id).ok_or_else(closed)?;
        for data in &stmt.long_data {
            conn.send(0, &with_id(data, placement.id))
                .await
                .map_err(|e| AttemptError::Unavailable(e.to_string()))?;
        }
        // The server holds the types last bound to the statement, perhaps by another session:
        // the same as this session's need not be sent again.
        let types = stmt.types.as_deref();
        let seen = types.is_none() || conn.statements.bound_types(placement.id) == types;
        let bytes = execute_for_backend(payload, placement.id, stmt.params, types, seen);
        if let Some(types) = types {
            conn.statements.bind_types(placement.id, types);
        }
        Ok(bytes)
    }

    /// Prepares a statement on the session's connection to `backend`, silently, in the context
    /// the client prepared it in, and caches it there. When the session has changed its
    /// database or parse settings since, the connection enters the statement's context for the
    /// prepare and comes back to the session's.
    async fn prepare_on(
        &mut self,
        backend: usize,
        prepare: &[u8],
        context: &Context,
    ) -> Result<Placement, super::execute::AttemptError> {
        use super::execute::AttemptError;
        let current = self.prepare_context();
        let switch = current.base != context.base;
        if switch {
            Box::pin(self.enter_context(backend, context)).await?;
        }
        let conn = self.conns[backend]
            .as_mut()
            .ok_or_else(|| AttemptError::Unavailable("connection vanished".into()))?;
        let name = conn.backend.name.clone();
        let outcome = conn.run_silently(prepare, ResponseKind::Prepare).await;
        if switch {
            Box::pin(self.enter_context(backend, &current)).await?;
        }
        let outcome = outcome.map_err(AttemptError::Unavailable)?;
        let prepared = outcome.prepared.ok_or_else(|| {
            AttemptError::Unavailable(format!("{name}: statement could not be prepared there"))
        })?;
        self.cache_statement(backend, context.key, prepare, prepared.statement_id)
            .await
            .ok_or_else(|| AttemptError::Unavailable(format!("{name}: connection lost")))
    }

    /// Puts the session's connection to `backend` in `context`: the login's `sql_mode` and
    /// character set, then the context's settings and database. A connection that refuses is
    /// dropped (its state is no longer known).
    async fn enter_context(
        &mut self,
        backend: usize,
        context: &Context,
    ) -> Result<(), super::execute::AttemptError> {
        use super::execute::AttemptError;
        let mut commands: Vec<Vec<u8>> = Vec::with_capacity(context.settings.len() + 3);
        let mut sql_mode = vec![command::QUERY];
        sql_mode.extend_from_slice(b"SET SESSION sql_mode = DEFAULT");
        commands.push(sql_mode);
        commands.extend(crate::backend::set_names_for(self.login.collation));
        commands.extend(context.settings.iter().cloned());
        if let Some(db) = &context.database {
            let mut init = vec![command::INIT_DB];
            init.extend_from_slice(db.as_bytes());
            commands.push(init);
        }
        let Some(conn) = self.conns[backend].as_mut() else {
            return Err(AttemptError::Unavailable("connection vanished".into()));
        };
        for payload in &commands {
            match conn.run_silently(payload, ResponseKind::Query).await {
                Ok(outcome) if outcome.error.is_none() => {}
                _ => {
                    let why = format!(
                        "{}: could not enter a prepared statement's context ({})",
                        conn.backend.name,
                        String::from_utf8_lossy(&payload[1..])
                    );
                    self.drop_connection(backend);
                    return Err(AttemptError::Unavailable(why));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execute_gets_types_inserted_for_a_backend_that_lacks_them() {
        // id 9, flags 0, iterations 1, null bitmap (2 params → 1 byte), bound = 0, values.
        let payload = [0x17, 9, 0, 0, 0, 0, 1, 0, 0, 0, 0b00, 0, 0xAA, 0xBB];
        let types = [3u8, 0, 253, 0];
        let out = execute_for_backend(&payload, 77, 2, Some(&types), false);
        assert_eq!(&out[1..5], &77u32.to_le_bytes());
        assert_eq!(&out[11..], &[1, 3, 0, 253, 0, 0xAA, 0xBB]);
        let same = execute_for_backend(&payload, 77, 2, Some(&types), true);
        assert_eq!(&same[11..], &[0, 0xAA, 0xBB]);
    }

    #[test]
    fn short_packets_do_not_panic() {
        for len in 0..12 {
            let payload = vec![0x17; len];
            let _ = execute_for_backend(&payload, 1, 3, Some(&[1, 2, 3, 4, 5, 6]), false);
            let _ = statement_id(&payload);
        }
    }
}
