//! `KILL [CONNECTION | QUERY] id` where `id` is what the client knows: rwproxy's connection id
//! (the greeting's, `CONNECTION_ID()` through rwproxy). Sent on as it is, the id would name an
//! unrelated thread on the primary; here it names a session, whose running statement is
//! stopped on the backend connection that runs it, and which ends for `KILL CONNECTION`.

use super::{Session, SessionError};
use crate::backend::BackendConn;
use crate::classifier::Kill;
use crate::protocol::{Outcome, ResponseKind, command};

/// ER_NO_SUCH_THREAD, ER_KILL_DENIED_ERROR, ER_QUERY_INTERRUPTED, ER_CONNECTION_KILLED,
/// ER_NOT_SUPPORTED_YET: the codes a server answers with.
const NO_SUCH_THREAD: u16 = 1094;
const NOT_OWNER: u16 = 1095;
const QUERY_INTERRUPTED: u16 = 1317;
const CONNECTION_KILLED: u16 = 1927;
const NOT_SUPPORTED: u16 = 1235;

impl Session {
    pub(super) async fn kill(&mut self, kill: Kill) -> Result<(), SessionError> {
        let kind = match kill {
            Kill::Query(_) => "query",
            Kill::Connection(_) => "connection",
            Kill::Unsupported(_) => "other",
        };
        let (result, reply) = self.run_kill(kill).await;
        self.shared.metrics.kill(kind, result);
        match reply {
            Some((code, sql_state, message)) => self.reply_err(code, sql_state, &message).await,
            None => self.reply_ok().await,
        }
    }

    /// Carries out a KILL: what came of it (for the metric), and the error to answer with.
    async fn run_kill(&mut self, kill: Kill) -> (&'static str, Option<(u16, &'static str, String)>) {
        let (id, query_only) = match kill {
            Kill::Connection(id) => (id, false),
            Kill::Query(id) => (id, true),
            Kill::Unsupported(form) => {
                let message = format!(
                    "rwproxy: {form} is not supported: rwproxy's sessions share backend connections; \
                     use KILL [CONNECTION | QUERY] <connection id>"
                );
                return ("unsupported", Some((NOT_SUPPORTED, "42000", message)));
            }
        };
        let registry = self.running.tier().registry.clone();
        let Ok(number) = u32::try_from(id) else {
            return ("no_such_session", Some((NO_SUCH_THREAD, "HY000", format!("Unknown thread id: {id}"))));
        };
        // A session id first; else the server's thread id of a statement a session runs (what
        // `SELECT CONNECTION_ID()` gives a session that holds its connection).
        let (id, target) = match registry.get(number) {
            Some(target) => (number, target),
            None => match registry.running_on_thread(number).as_slice() {
                [(session, target)] => (*session, target.clone()),
                [] => {
                    return (
                        "no_such_session",
                        Some((NO_SUCH_THREAD, "HY000", format!("Unknown thread id: {id}"))),
                    );
                }
                [..] => {
                    let message = format!(
                        "rwproxy: thread id {id} runs statements on several backends; \
                         KILL the session by its connection id instead"
                    );
                    return ("no_such_session", Some((NO_SUCH_THREAD, "HY000", message)));
                }
            },
        };
        // As a server does for a user without CONNECTION_ADMIN: only your own sessions.
        if target.user() != self.login.user {
            return ("not_owner", Some((NOT_OWNER, "HY000", format!("You are not owner of thread {id}"))));
        }
        if id == self.id {
            // The KILL itself is the statement running.
            if query_only {
                return (
                    "done",
                    Some((QUERY_INTERRUPTED, "70100", "Query execution was interrupted".into())),
                );
            }
            self.handle.kill();
            return ("done", Some((CONNECTION_KILLED, "70100", "Connection was killed".into())));
        }
        if let Some((backend, thread_id)) = target.running_on() {
            let statement = target.statement();
            // A connection of its own: the pools may be full, and the statement to stop holds
            // one of their connections.
            let mut login = self.login.clone();
            login.database = None;
            let timeout = self.shared.config.mysql.connect_timeout;
            let stopped = match BackendConn::connect(backend.clone(), &login, timeout).await {
                // The statement ended while the connection logged in: its backend connection
                // may run another session's statement by now, which must not be stopped.
                Ok(_) if target.statement() != statement => Ok(Outcome::default()),
                Ok(mut conn) => {
                    let mut payload = vec![command::QUERY];
                    payload.extend_from_slice(format!("KILL QUERY {thread_id}").as_bytes());
                    conn.run_silently(&payload, ResponseKind::Query).await
                }
                Err(e) => Err(e.to_string()),
            };
            match stopped {
                // The statement may have ended meanwhile (1094): the session is stopped either way.
                Ok(outcome) if outcome.error.is_none_or(|code| code == NO_SUCH_THREAD) => {}
                Ok(outcome) => {
                    let code = outcome.error.unwrap_or_default();
                    let message = format!("rwproxy: {} refused KILL QUERY (error {code})", backend.name);
                    return ("failed", Some((code, "HY000", message)));
                }
                Err(e) => {
                    let message =
                        format!("rwproxy: could not stop session {id}'s statement on {}: {e}", backend.name);
                    let reply =
                        (crate::protocol::errors::NO_BACKEND, crate::protocol::errors::SQLSTATE, message);
                    return ("failed", Some(reply));
                }
            }
            tracing::info!(session = self.id, target = id, backend = %backend.name, thread_id, "KILL QUERY sent for a session's statement");
        }
        if !query_only {
            target.kill();
            self.running.tier().kick(id);
            tracing::info!(session = self.id, target = id, "KILL CONNECTION: session told to close");
        }
        ("done", None)
    }
}
