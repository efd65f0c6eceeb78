//! Reads that must see writes: which read backend may answer a read, given the position the
//! read needs (the session's own writes, the primary's current position in `global` mode, or
//! a `/* rwproxy:after=… */` token).
//!
//! A backend known to have applied the position answers at once. Otherwise rwproxy waits on a
//! replica (`MASTER_GTID_WAIT` / `WAIT_FOR_EXECUTED_GTID_SET`) for what is left of
//! `causal_read_timeout`, and the read goes to the primary when none gets there: never a stale
//! row. Replicas whose measured lag already exceeds the timeout are not waited on.

use std::time::{Duration, Instant};

use super::{Session, SessionError};
use crate::backend::QueryError;
use crate::config::Consistency;
use crate::consistency::{Position, ReadOutcome};
use crate::protocol::IN_TRANS;
use crate::router::Candidates;

/// What the session's writes require of its later reads.
#[derive(Debug, Clone, Default)]
pub struct ReadAfter {
    /// The position covering every write of the session whose GTID showed.
    pub position: Option<Position>,
    /// A write ended without its GTID showing: the primary's position after it is needed.
    unknown_write: bool,
    /// A statement that may write ran in the current transaction and no GTID came back yet.
    dirty: bool,
    /// Servers without GTIDs: reads stay on the primary until then.
    primary_until: Option<Instant>,
    /// Where the last read that needed a position went.
    last: Option<LastRead>,
    /// `consistency = "user"`: what the user's writes required when the shared table was at
    /// `user_version` (looked up again only when it moved).
    user_need: crate::consistency::UserNeed,
    user_version: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct LastRead {
    outcome: ReadOutcome,
    backend: Option<usize>,
    waited: Option<Duration>,
}

/// What a read needs.
#[derive(Debug, Clone)]
pub(super) enum Need {
    Any,
    /// Only the primary will do; the text says why.
    Primary(String),
    Position(Position),
}

/// The `/* rwproxy:after=<position> */` token in a statement, if any.
pub(super) fn hinted_position(sql: &str) -> Option<Position> {
    let at = sql.find("rwproxy:after=")? + "rwproxy:after=".len();
    let rest = &sql[at..];
    let end = rest.find(|c: char| c == '*' || c.is_whitespace()).unwrap_or(rest.len());
    Position::parse(&rest[..end]).ok()
}

impl Session {
    /// Learns from a statement that ran on `backend`: the GTID its OK packet carried, or that
    /// it may have written without one showing.
    pub(super) fn learn_from_statement(
        &mut self,
        backend: usize,
        writes: bool,
        failed: bool,
        status: Option<u16>,
    ) {
        if self.shared.config.mysql.routing.consistency == Consistency::Eventual {
            return;
        }
        let gtid = self.conns.get_mut(backend).and_then(Option::as_mut).and_then(|c| c.tracked.gtid.take());
        let user_mode = self.shared.config.mysql.routing.consistency == Consistency::User;
        let after = &mut self.state.read_after;
        if let Some(position) = gtid.and_then(|g| Position::parse(&g).ok()) {
            if user_mode {
                self.running.tier().user_positions.wrote(&self.login.user, &position);
            }
            match after.position.as_mut() {
                Some(have) => have.merge(&position),
                None => after.position = Some(position),
            }
            after.dirty = false;
            after.unknown_write = false;
            return;
        }
        let backends = self.shared.router.backends();
        if writes && !failed && backends.is_primary(backend) {
            after.dirty = true;
        }
        let open = status.is_none_or(|s| s & IN_TRANS != 0);
        if after.dirty && !open {
            after.dirty = false;
            if backends.primary().known.gtid() == Some(false) {
                after.primary_until = Some(Instant::now() + self.shared.config.monitor.max_replication_lag);
            } else {
                after.unknown_write = true;
            }
            if user_mode {
                self.running.tier().user_positions.wrote_unknown(&self.login.user, Instant::now());
            }
        }
    }

    /// What the next read must see; may ask the primary for its position (shared with other
    /// sessions' reads).
    pub(super) async fn read_need(&mut self, hinted: Option<Position>) -> Need {
        let mode = self.shared.config.mysql.routing.consistency;
        if mode == Consistency::Eventual && hinted.is_none() {
            return Need::Any;
        }
        if let Some(until) = self.state.read_after.primary_until {
            if Instant::now() < until {
                return Need::Primary("the servers write no GTIDs and this session wrote recently".into());
            }
            self.state.read_after.primary_until = None;
        }
        let mut need = hinted;
        let global = mode == Consistency::Global;
        if global || self.state.read_after.unknown_write {
            let primary = self.shared.router.backends().primary().clone();
            // Boxed, here and below: rare paths that would otherwise size every session's task.
            match Box::pin(self.shared.primary_position.after(&primary, Instant::now())).await {
                Ok(Some(position)) => {
                    merge_into(&mut need, &position);
                    if !global {
                        merge_into(&mut self.state.read_after.position, &position);
                    }
                    self.state.read_after.unknown_write = false;
                }
                Ok(None) => {
                    // No GTIDs: a write of this session stays unseen by replicas for up to
                    // max_replication_lag.
                    if self.state.read_after.unknown_write {
                        let lag = self.shared.config.monitor.max_replication_lag;
                        self.state.read_after.primary_until = Some(Instant::now() + lag);
                        self.state.read_after.unknown_write = false;
                    }
                    return Need::Primary("the primary writes no GTIDs".into());
                }
                Err(e) => return Need::Primary(format!("the primary's position is unknown ({e})")),
            }
        }
        // One atomic load while the table is as the session last saw it and holds nothing for
        // this user (every read of a read-only application).
        if mode == Consistency::User
            && !self.user_need_is_empty()
            && let Err(why) = Box::pin(self.user_need(&mut need)).await
        {
            return Need::Primary(why);
        }
        if mode != Consistency::Eventual
            && let Some(own) = &self.state.read_after.position
        {
            merge_into(&mut need, own);
        }
        match need {
            Some(position) => Need::Position(position),
            None => Need::Any,
        }
    }

    /// Whether the user's writes need nothing of a read, as of the last look, and nothing changed
    /// since.
    fn user_need_is_empty(&self) -> bool {
        let after = &self.state.read_after;
        after.user_version == Some(self.running.tier().user_positions.version())
            && after.user_need.position.is_none()
            && after.user_need.unknown_since.is_none()
    }

    /// `consistency = "user"`: adds to `need` what the user's writes through this rwproxy
    /// require, asking the primary for its position when one of them ended without its GTID
    /// showing. `Err`: only the primary will do, and why.
    async fn user_need(&mut self, need: &mut Option<Position>) -> Result<(), String> {
        let tier = self.running.tier();
        let version = tier.user_positions.version();
        if self.state.read_after.user_version != Some(version) {
            self.state.read_after.user_need = tier.user_positions.need(&self.login.user);
            self.state.read_after.user_version = Some(version);
        }
        if let Some(position) = &self.state.read_after.user_need.position {
            merge_into(need, position);
        }
        let Some(since) = self.state.read_after.user_need.unknown_since else { return Ok(()) };
        let primary = self.shared.router.backends().primary().clone();
        match self.shared.primary_position.after(&primary, since).await {
            Ok(Some(position)) => {
                tier.user_positions.resolved(&self.login.user, since, &position);
                merge_into(need, &position);
                Ok(())
            }
            Ok(None) if since.elapsed() < self.shared.config.monitor.max_replication_lag => {
                Err("the servers write no GTIDs and this user wrote recently".into())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(format!("the primary's position is unknown ({e})")),
        }
    }

    /// Narrows the read candidates (in rotation order) to those that may answer `need`: the
    /// first that is known to have the position or gets there within the timeout, then the
    /// primary; or the primary alone.
    pub(super) async fn consistent_candidates(&mut self, candidates: Candidates, need: Need) -> Candidates {
        let primary = self.shared.router.backends().primary().index;
        let position = match need {
            Need::Any => return candidates,
            Need::Primary(why) => {
                tracing::debug!(session = self.id, reason = %why, "read goes to the primary");
                self.placed(ReadOutcome::Primary, None, None);
                return smallvec::smallvec![primary];
            }
            Need::Position(position) => position,
        };
        if candidates.is_empty() {
            // No read backend at all (`all_replicas_down = "error"`): the caller says so.
            return candidates;
        }
        if candidates.first() == Some(&primary) {
            // The primary's turn in the rotation: it has every write.
            self.placed(ReadOutcome::Primary, None, None);
            return smallvec::smallvec![primary];
        }
        let timeout = self.shared.config.mysql.routing.causal_read_timeout;
        let deadline = Instant::now() + timeout;
        // Replicas in rotation order: one that is too far behind hands the read to the next
        // replica, not to the primary.
        for backend in candidates.into_iter().filter(|b| *b != primary) {
            let Some(b) = self.shared.router.backends().get(backend).cloned() else {
                continue;
            };
            if b.known.covers(&position) {
                self.placed(ReadOutcome::ReplicaReady, Some(backend), None);
                return smallvec::smallvec![backend, primary];
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || b.health.lag().is_some_and(|lag| lag > timeout) {
                continue;
            }
            let started = Instant::now();
            if Box::pin(self.wait_on(backend, &position, left)).await {
                b.known.reached(&position);
                self.placed(ReadOutcome::Waited, Some(backend), Some(started.elapsed()));
                return smallvec::smallvec![backend, primary];
            }
        }
        self.placed(ReadOutcome::Primary, None, None);
        smallvec::smallvec![primary]
    }

    /// Counts where a read that needed a position went, and remembers it for `EXPLAIN ROUTE`.
    fn placed(&mut self, outcome: ReadOutcome, backend: Option<usize>, waited: Option<Duration>) {
        self.shared.metrics.consistency_read(outcome, waited);
        self.state.read_after.last = Some(LastRead { outcome, backend, waited });
    }

    /// Waits on the session's connection to `backend` until it has applied `position` or
    /// `left` passes; true when it got there.
    async fn wait_on(&mut self, backend: usize, position: &Position, left: Duration) -> bool {
        if self.ensure_connection(backend).await.is_err() {
            return false;
        }
        let Some(conn) = self.conns[backend].as_mut() else {
            return false;
        };
        let sql = position.wait_statement(left.as_secs_f64());
        // The server bounds the wait; this bounds a server that does not answer at all.
        let answered = tokio::time::timeout(left + Duration::from_millis(500), conn.query_value(&sql)).await;
        let Ok(answer) = answered else {
            let why = format!("{}: no answer to a position wait", conn.backend.name);
            self.backend_failed(backend, &why);
            return false;
        };
        match answer {
            Ok(Some(answer)) => answer == "0",
            Ok(None) => false,
            Err(QueryError::Server(e)) => {
                tracing::debug!(session = self.id, backend = %conn.backend.name, error = %e, "position wait refused");
                false
            }
            Err(QueryError::Lost(e)) => {
                self.backend_failed(backend, &e);
                false
            }
        }
    }

    /// `SELECT @@rwproxy_position`: the position covering this session's writes (in `global`
    /// mode the primary's current position), as one row.
    pub(super) async fn answer_position(&mut self) -> Result<(), SessionError> {
        let text = if self.shared.config.mysql.routing.consistency == Consistency::Global
            || self.state.read_after.unknown_write
        {
            let primary = self.shared.router.backends().primary().clone();
            match self.shared.primary_position.after(&primary, Instant::now()).await {
                Ok(position) => {
                    if let Some(p) = &position {
                        merge_into(&mut self.state.read_after.position, p);
                        self.state.read_after.unknown_write = false;
                    }
                    position.map(|p| p.to_string()).unwrap_or_default()
                }
                Err(e) => {
                    let message = format!("rwproxy: the primary's position is unknown ({e})");
                    let code = crate::protocol::errors::POSITION_UNKNOWN;
                    return self.reply_err(code, crate::protocol::errors::SQLSTATE, &message).await;
                }
            }
        } else {
            let mut position = self.state.read_after.position.clone();
            if self.shared.config.mysql.routing.consistency == Consistency::User
                && let Some(user) = self.running.tier().user_positions.need(&self.login.user).position
            {
                merge_into(&mut position, &user);
            }
            position.as_ref().map(ToString::to_string).unwrap_or_default()
        };
        self.write_text_result(&["@@rwproxy_position"], &[text.as_str()]).await
    }

    /// For `EXPLAIN ROUTE`: what consistency would do for a read now, without waiting.
    pub(super) fn describe_consistency(&self, hinted: Option<Position>) -> String {
        let mode = self.shared.config.mysql.routing.consistency;
        let mut need = hinted;
        if mode == Consistency::Global {
            return "global: waits for the primary's current position".into();
        }
        if mode == Consistency::User
            && let Some(user) = self.running.tier().user_positions.need(&self.login.user).position
        {
            merge_into(&mut need, &user);
        }
        if matches!(mode, Consistency::Session | Consistency::User)
            && let Some(own) = &self.state.read_after.position
        {
            merge_into(&mut need, own);
        }
        let Some(position) = need else {
            return "no position needed".into();
        };
        let backends = self.shared.router.backends();
        let ready: Vec<&str> = backends
            .all()
            .iter()
            .filter(|b| !backends.is_primary(b.index) && b.known.covers(&position))
            .map(|b| b.name.as_str())
            .collect();
        let timeout = self.shared.config.mysql.routing.causal_read_timeout;
        let now = if ready.is_empty() {
            format!("no replica known to have {position}: waits up to {timeout:?}, else primary")
        } else {
            format!("{} has applied {position}", ready.join(", "))
        };
        let Some(last) = self.state.read_after.last else {
            return now;
        };
        let name = last.backend.and_then(|b| backends.get(b)).map_or("primary", |b| b.name.as_str());
        let last = match (last.outcome, last.waited) {
            (ReadOutcome::Waited, Some(waited)) => {
                format!("waited {:.1} ms on {name}", waited.as_secs_f64() * 1e3)
            }
            (ReadOutcome::ReplicaReady, _) => format!("{name} had it"),
            _ => "primary".to_string(),
        };
        format!("{now}; last read: {last}")
    }
}

fn merge_into(slot: &mut Option<Position>, position: &Position) {
    match slot.as_mut() {
        Some(have) => have.merge(position),
        None => *slot = Some(position.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::hinted_position;

    #[test]
    fn tokens_are_read_from_comments() {
        let p = hinted_position("SELECT 1 /* rwproxy:after=0-1-42 */").map(|p| p.to_string());
        assert_eq!(p.as_deref(), Some("0-1-42"));
        let p = hinted_position("/*rwproxy:after=0-1-42,1-1-3*/ SELECT 1").map(|p| p.to_string());
        assert_eq!(p.as_deref(), Some("0-1-42,1-1-3"));
        assert!(hinted_position("SELECT 1 /* rwproxy:after=junk */").is_none());
        assert!(hinted_position("SELECT 1").is_none());
    }
}
