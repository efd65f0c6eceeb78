//! Reuse of backend connections across client sessions, and the per-backend connection cap.
//!
//! A session takes a connection when it first needs that backend and gives it back when it
//! ends (or changes user). A returned connection is reset with COM_RESET_CONNECTION, which
//! rolls back, drops temporary tables, prepared statements and user variables, and restores
//! session variables; only then does it wait, idle, for the next session with the same login.
//! deadpool's pools hand out interchangeable objects; these are keyed by login and capped per
//! backend across logins, so a small keyed list and a semaphore do the job.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Backend;
use super::connection::{BackendConn, BackendError, Login};
use crate::protocol::{ResponseKind, command};

/// The connection-level settings a pooled connection must share with the session using it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolKey {
    pub user: String,
    pub collation: u8,
    pub caps: u32,
    pub mariadb_caps: u32,
}

impl PoolKey {
    pub fn of(login: &Login) -> PoolKey {
        PoolKey {
            user: login.user.clone(),
            collation: login.collation,
            caps: login.client_caps.bits(),
            mariadb_caps: login.mariadb_caps.bits(),
        }
    }
}

#[derive(Debug)]
pub struct Pool {
    idle: Mutex<Vec<BackendConn>>,
    permits: Option<Arc<Semaphore>>,
    max_connections: usize,
    max_idle: usize,
}

impl Pool {
    pub fn new(max_connections: usize, max_idle: usize) -> Pool {
        let permits = (max_connections > 0).then(|| Arc::new(Semaphore::new(max_connections)));
        Pool { idle: Mutex::new(Vec::new()), permits, max_connections, max_idle }
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }

    fn take_idle(&self, key: &PoolKey) -> Option<BackendConn> {
        let mut idle = self.idle.lock().ok()?;
        let at = idle.iter().rposition(|c| &c.key == key)?;
        Some(idle.swap_remove(at))
    }

    async fn permit(
        &self,
        backend: &str,
        wait: Duration,
    ) -> Result<Option<OwnedSemaphorePermit>, BackendError> {
        let Some(permits) = &self.permits else {
            return Ok(None);
        };
        match tokio::time::timeout(wait, permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            _ => Err(BackendError::Exhausted {
                backend: backend.to_string(),
                max: self.max_connections,
                waited: wait,
            }),
        }
    }
}

/// A connection to `backend` for a session logged in as `login`: an idle one with the same
/// login when there is one (moved to the session's database), else a new one.
pub async fn checkout(
    backend: &Arc<Backend>,
    login: &Login,
    timeout: Duration,
) -> Result<BackendConn, BackendError> {
    let key = PoolKey::of(login);
    // Bounded by the idle list's length.
    while let Some(mut conn) = backend.pool.take_idle(&key) {
        if conn.is_closed() {
            continue;
        }
        // A server that hangs must not hold the session: the reuse is bounded like a connect.
        let selected =
            tokio::time::timeout(timeout, select_database(&mut conn, login.database.as_deref())).await;
        if selected == Ok(true) {
            return Ok(conn);
        }
    }
    let permit = backend.pool.permit(&backend.name, timeout).await?;
    let mut conn = BackendConn::connect(backend.clone(), login, timeout).await?;
    conn.permit = permit;
    Ok(conn)
}

/// COM_INIT_DB on a reused connection: the previous session may have left it elsewhere.
async fn select_database(conn: &mut BackendConn, database: Option<&str>) -> bool {
    let Some(db) = database else { return true };
    let mut payload = vec![command::INIT_DB];
    payload.extend_from_slice(db.as_bytes());
    let outcome = conn.run_silently(&payload, ResponseKind::Query).await;
    matches!(outcome, Ok(o) if o.error.is_none())
}

/// How long a connection being given back may take to reset.
const RESET_TIMEOUT: Duration = Duration::from_secs(2);

/// Gives a connection back: reset, then kept idle (or closed when the idle list is full or the
/// connection is in the middle of something).
pub async fn release(mut conn: BackendConn) {
    let pool = &conn.backend.pool;
    if conn.busy || pool.max_idle == 0 || pool.idle_count() >= pool.max_idle {
        return;
    }
    // Bounded: a hung server does not get to hold a session that is ending.
    let reset = conn.run_silently(&[command::RESET_CONNECTION], ResponseKind::Query);
    let reset = tokio::time::timeout(RESET_TIMEOUT, reset).await;
    if !matches!(reset, Ok(Ok(o)) if o.error.is_none()) {
        return;
    }
    conn.applied = 0;
    conn.tracking_ready = false;
    let backend = conn.backend.clone();
    if let Ok(mut idle) = backend.pool.idle.lock()
        && idle.len() < backend.pool.max_idle
    {
        idle.push(conn);
    }
}
