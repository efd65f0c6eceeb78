//! Reuse of backend connections across client sessions, and the per-backend connection cap.
//!
//! A session borrows a connection when it needs that backend. With multiplexing it gives it
//! back ([`park`]) as soon as nothing ties the session to it, unchanged: the next session with
//! the same login takes it and replays only the settings it lacks. At the end of a session (or
//! when the connection's state is unknown) it is reset with COM_RESET_CONNECTION ([`release`]),
//! which rolls back, drops temporary tables, prepared statements and user variables, and restores
//! session variables.
//! deadpool's pools hand out interchangeable objects; these are keyed by login and capped per
//! backend across logins, so a small keyed list and a semaphore do the job.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::Backend;
use super::connection::{BackendConn, BackendError, Login};
use crate::protocol::{ResponseKind, command};
use crate::striped::Striped;

/// The connection-level settings a pooled connection must share with the session using it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolKey {
    pub user: String,
    pub collation: u8,
    pub caps: u32,
    pub mariadb_caps: u32,
}

impl PoolKey {
    /// Whether a connection made for this key serves `login` (compared in place: a checkout
    /// runs on every statement, and building a key allocates).
    pub fn serves(&self, login: &Login) -> bool {
        self.collation == login.collation
            && self.caps == login.client_caps.bits()
            && self.mariadb_caps == login.mariadb_caps.bits()
            && self.user == login.user
    }

    pub fn of(login: &Login) -> PoolKey {
        PoolKey {
            user: login.user.clone(),
            collation: login.collation,
            caps: login.client_caps.bits(),
            mariadb_caps: login.mariadb_caps.bits(),
        }
    }
}

/// The session settings a connection holds: how many entries of a session's settings history
/// it has run, and a digest of those entries in order. Two sessions whose histories have the
/// same tag need nothing replayed when one borrows the other's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingsTag {
    pub len: usize,
    pub chain: u64,
}

impl SettingsTag {
    /// A connection as it comes from a login or a reset.
    pub const FRESH: SettingsTag = SettingsTag { len: 0, chain: 0 };
}

/// A backend connection as the pool lends it: the connection, and what the pool keeps about
/// it (its login, its slot under `max_connections`, the settings it holds). One pointer: a
/// session takes and gives back its connection on every statement, moving it through the
/// session, the pool and the idle list several times, and moving a pointer is cheaper than
/// moving the connection and its pool data (measured: about 1,400 of 19,400 user-space
/// instructions per statement went to moving the connection's buffers and caches before it
/// was boxed; about 300 of 12,800 per prepared execution to moving the pool data beside the
/// box before that went in too).
#[derive(Debug)]
pub struct Pooled(Box<Slot>);

/// What [`Pooled`] points to; its fields read through `Pooled` as its own.
#[derive(Debug)]
pub struct Slot {
    conn: BackendConn,
    key: PoolKey,
    /// Held while the connection exists (given back when it is dropped), when the backend has
    /// `max_connections`.
    _permit: Option<OwnedSemaphorePermit>,
    /// Unique among the connections to this backend: a session's prepared statement remembers
    /// which connection it is prepared on.
    pub uid: u64,
    /// The session settings the connection holds, for the next session that borrows it;
    /// `None` when unknown (it is reset before another session uses it).
    pub settings: Option<SettingsTag>,
    /// The SQL worker thread whose shard it goes back to.
    worker: usize,
    /// When it was last given back (for `backend_idle_timeout`).
    parked_at: std::time::Instant,
    /// When it was opened (for `backend_max_age`).
    opened_at: std::time::Instant,
}

impl std::ops::Deref for Pooled {
    type Target = Slot;
    fn deref(&self) -> &Slot {
        &self.0
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Slot {
        &mut self.0
    }
}

impl std::ops::Deref for Slot {
    type Target = BackendConn;
    fn deref(&self) -> &BackendConn {
        &self.conn
    }
}

impl std::ops::DerefMut for Slot {
    fn deref_mut(&mut self) -> &mut BackendConn {
        &mut self.conn
    }
}

impl Pooled {
    /// After COM_RESET_CONNECTION: the connection holds no settings.
    pub fn was_reset(&mut self) {
        self.conn.was_reset();
        self.settings = Some(SettingsTag::FRESH);
    }
}

/// Idle connections of one SQL worker thread: a connection stays with the thread (and the event
/// loop) that opened it.
/// Aligned to a cache line: each worker locks its own shard on every statement, and two
/// shards side by side would make the workers' cores trade the line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard {
    idle: Mutex<Vec<Pooled>>,
}

/// What a pool did, for `/metrics` and `/status` (what ProxySQL shows in its connection-pool
/// statistics).
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Checkouts served by an idle connection: one per statement with multiplexing, so counted
    /// per worker.
    pub reused: Striped,
    /// Connections opened for a checkout.
    pub opened: AtomicU64,
    /// Borrowed connections reset first: they held settings that were not a prefix of the
    /// borrowing session's.
    pub resets: AtomicU64,
    /// Checkouts that waited for a connection at `max_connections`.
    pub waits: AtomicU64,
    /// Checkouts that gave up at `max_connections` (the client got the error naming the limit).
    pub exhausted: AtomicU64,
}

#[derive(Debug)]
pub struct Pool {
    /// One per SQL worker thread.
    shards: Vec<Shard>,
    pub stats: PoolStats,
    /// Slots under `max_connections`, shared by the shards.
    permits: Option<Arc<Semaphore>>,
    /// Woken when a connection is given back, for a session waiting at `max_connections`
    /// (on any worker: one given back to another worker's shard is closed to free its slot).
    given_back: Notify,
    /// Sessions waiting on `given_back`: a connection given back wakes someone only when
    /// someone waits (a notify without waiters would write the shared line on every statement).
    waiting: AtomicUsize,
    next_uid: AtomicU64,
    max_connections: usize,
    /// Idle connections kept per shard: `max_idle_connections` split over the workers.
    max_idle: usize,
}

/// How many times a checkout looks again after a wake-up before it gives up (each round waits
/// for a connection to be given back, within the deadline).
const CHECKOUT_ROUNDS: usize = 10_000;

impl Pool {
    /// `max_idle` in all, over `workers` shards.
    pub fn new(max_connections: usize, max_idle: usize, workers: usize) -> Pool {
        let permits = (max_connections > 0).then(|| Arc::new(Semaphore::new(max_connections)));
        let workers = workers.max(1);
        let per_shard = if max_idle == 0 { 0 } else { (max_idle / workers).max(1) };
        Pool {
            shards: (0..workers).map(|_| Shard::default()).collect(),
            stats: PoolStats::default(),
            permits,
            given_back: Notify::new(),
            waiting: AtomicUsize::new(0),
            next_uid: AtomicU64::new(1),
            max_connections,
            max_idle: per_shard,
        }
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    pub fn workers(&self) -> usize {
        self.shards.len()
    }

    /// Sessions waiting now for a connection at `max_connections`.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub fn idle_count(&self) -> usize {
        self.shards.iter().map(|s| s.idle.lock().map(|i| i.len()).unwrap_or(0)).sum()
    }

    fn shard(&self, worker: usize) -> &Shard {
        &self.shards[worker % self.shards.len()]
    }

    fn lend(
        &self,
        conn: BackendConn,
        key: PoolKey,
        permit: Option<OwnedSemaphorePermit>,
        worker: usize,
    ) -> Pooled {
        let uid = self.next_uid.fetch_add(1, Ordering::Relaxed);
        let parked_at = std::time::Instant::now();
        Pooled(Box::new(Slot {
            conn,
            key,
            _permit: permit,
            uid,
            settings: Some(SettingsTag::FRESH),
            worker,
            parked_at,
            opened_at: parked_at,
        }))
    }

    /// An idle connection of `worker` with this login: preferably one holding exactly the
    /// settings the session has (nothing to replay), in its database; else the one given back
    /// last.
    fn take_idle(&self, login: &Login, want: Want<'_>, worker: usize) -> Option<Pooled> {
        let mut idle = self.shard(worker).idle.lock().ok()?;
        let mut fallback = None;
        let mut settings_match = None;
        for (at, conn) in idle.iter().enumerate().rev() {
            // No command leaves a database once one is selected: a session without one takes
            // only connections known to have none.
            if !conn.key.serves(login) || want.database.is_none() && conn.database != Some(None) {
                continue;
            }
            let same_settings = conn.settings == Some(want.settings);
            if same_settings && conn.database.as_ref().is_some_and(|d| d.as_deref() == want.database) {
                return Some(idle.swap_remove(at));
            }
            if same_settings && settings_match.is_none() {
                settings_match = Some(at);
            }
            fallback.get_or_insert(at);
        }
        let at = settings_match.or(fallback)?;
        Some(idle.swap_remove(at))
    }

    /// Closes an idle connection that `worker` cannot use (another login, or another
    /// worker's), freeing its slot under `max_connections`.
    fn close_idle_other_than(&self, login: &Login, worker: usize) -> bool {
        let own = worker % self.shards.len();
        for (index, shard) in self.shards.iter().enumerate() {
            let Ok(mut idle) = shard.idle.lock() else { continue };
            if let Some(at) = idle.iter().position(|c| index != own || !c.key.serves(login)) {
                drop(idle.swap_remove(at));
                return true;
            }
        }
        false
    }

    fn put_idle(&self, mut conn: Pooled) {
        let shard = self.shard(conn.worker);
        conn.parked_at = std::time::Instant::now();
        if let Ok(mut idle) = shard.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(conn);
        }
        // SeqCst with the waiter's increment: either it sees this connection in the idle list
        // or this sees it waiting.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.given_back.notify_one();
        }
    }

    /// Closes `worker`'s idle connections given back before `idle_since` or opened before
    /// `opened_before`; returns how many. Run by the worker itself, so a connection is closed
    /// on the event loop it is registered with.
    pub fn close_idle(
        &self,
        worker: usize,
        idle_since: Option<Instant>,
        opened_before: Option<Instant>,
    ) -> usize {
        let old = |c: &Pooled| {
            idle_since.is_some_and(|cutoff| c.parked_at < cutoff)
                || opened_before.is_some_and(|cutoff| c.opened_at < cutoff)
        };
        let stale: Vec<Pooled> = match self.shard(worker).idle.lock() {
            Ok(mut idle) => {
                let (stale, kept) = std::mem::take(&mut *idle).into_iter().partition(old);
                *idle = kept;
                stale
            }
            Err(_) => Vec::new(),
        };
        // Dropped outside the lock: closing sockets is not the other sessions' wait.
        let closed = stale.len();
        drop(stale);
        closed
    }
}

/// What a session wants of a borrowed connection.
#[derive(Debug, Clone, Copy)]
pub struct Want<'a> {
    pub settings: SettingsTag,
    pub database: Option<&'a str>,
}

/// A connection to `backend` for a session logged in as `login`: an idle one with the same
/// login when there is one (moved to the session's database), else a new one. At the backend's
/// `max_connections` it waits, up to `timeout`, for one to be given back.
pub async fn checkout(
    backend: &Arc<Backend>,
    login: &Login,
    settings: SettingsTag,
    timeout: Duration,
    worker: usize,
) -> Result<Pooled, BackendError> {
    let want = Want { settings, database: login.database.as_deref() };
    let pool = &backend.pool;
    let deadline = tokio::time::Instant::now() + timeout;
    for _ in 0..CHECKOUT_ROUNDS {
        // Bounded by the idle list's length.
        while let Some(mut conn) = pool.take_idle(login, want, worker) {
            if conn.is_closed() {
                continue;
            }
            if in_database(&conn, login.database.as_deref()) {
                pool.stats.reused.add(worker, 1);
                return Ok(conn);
            }
            // A server that hangs must not hold the session: the reuse is bounded like a connect.
            let selected =
                tokio::time::timeout_at(deadline, select_database(&mut conn, login.database.as_deref()))
                    .await;
            if selected == Ok(true) {
                pool.stats.reused.add(worker, 1);
                return Ok(conn);
            }
        }
        let Some(permits) = &pool.permits else {
            return connect_with(backend, login, timeout, None, worker).await;
        };
        if let Ok(permit) = permits.clone().try_acquire_owned() {
            return connect_with(backend, login, timeout, Some(permit), worker).await;
        }
        if pool.close_idle_other_than(login, worker) {
            continue;
        }
        let given_back = pool.given_back.notified();
        tokio::pin!(given_back);
        given_back.as_mut().enable();
        let _waiting = Waiting::on(pool);
        if pool.idle_count() > 0 {
            continue;
        }
        pool.stats.waits.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            permit = permits.clone().acquire_owned() => {
                if let Ok(permit) = permit {
                    return connect_with(backend, login, timeout, Some(permit), worker).await;
                }
            }
            () = &mut given_back => {}
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    pool.stats.exhausted.fetch_add(1, Ordering::Relaxed);
    Err(BackendError::Exhausted { backend: backend.name.clone(), max: pool.max_connections, waited: timeout })
}

/// Counts a session among a pool's waiters while it lives.
struct Waiting<'a>(&'a Pool);

impl<'a> Waiting<'a> {
    fn on(pool: &'a Pool) -> Waiting<'a> {
        pool.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(pool)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn connect_with(
    backend: &Arc<Backend>,
    login: &Login,
    timeout: Duration,
    permit: Option<OwnedSemaphorePermit>,
    worker: usize,
) -> Result<Pooled, BackendError> {
    // Boxed: a rare path (login, TLS) that would otherwise size every session's task.
    let conn = Box::pin(BackendConn::connect(backend.clone(), login, timeout)).await?;
    backend.pool.stats.opened.fetch_add(1, Ordering::Relaxed);
    Ok(backend.pool.lend(conn, PoolKey::of(login), permit, worker))
}

/// Whether a connection is known to be in the session's database (or, for a session without
/// one, in none).
fn in_database(conn: &Pooled, database: Option<&str>) -> bool {
    conn.database.as_ref().is_some_and(|d| d.as_deref() == database)
}

/// COM_INIT_DB on a reused connection that is not in the session's database. A connection
/// cannot leave a database: for a session without one it fails unless the connection has none.
async fn select_database(conn: &mut Pooled, database: Option<&str>) -> bool {
    if in_database(conn, database) {
        return true;
    }
    let Some(db) = database else { return false };
    let mut payload = vec![command::INIT_DB];
    payload.extend_from_slice(db.as_bytes());
    let outcome = conn.run_silently(&payload, ResponseKind::Query).await;
    let selected = matches!(outcome, Ok(o) if o.error.is_none());
    conn.database = selected.then(|| Some(db.to_string()));
    selected
}

/// Resets a borrowed connection whose settings are not the session's (COM_RESET_CONNECTION),
/// then selects the session's database.
pub async fn reset(conn: &mut Pooled, database: Option<&str>) -> Result<(), String> {
    conn.backend.pool.stats.resets.fetch_add(1, Ordering::Relaxed);
    let name = conn.backend.name.clone();
    let reset = conn.run_silently(&[command::RESET_CONNECTION], ResponseKind::Query);
    match tokio::time::timeout(RESET_TIMEOUT, reset).await {
        Ok(Ok(o)) if o.error.is_none() => {}
        _ => return Err(format!("{name}: a pooled connection could not be reset")),
    }
    let had_none = conn.database == Some(None);
    conn.was_reset();
    if had_none {
        conn.database = Some(None);
    }
    if !tokio::time::timeout(RESET_TIMEOUT, restore_login_names(conn)).await.unwrap_or(false) {
        return Err(format!("{name}: a pooled connection could not restore its login character set"));
    }
    if !tokio::time::timeout(RESET_TIMEOUT, select_database(conn, database)).await.unwrap_or(false) {
        return Err(format!("{name}: a pooled connection could not select the session's database"));
    }
    Ok(())
}

/// After COM_RESET_CONNECTION: MySQL puts the connection in the server's global character set
/// and collation, not the ones its login chose (MariaDB keeps the login's); the next session
/// to borrow it expects the login's, as a new connection has them. Whether that worked.
async fn restore_login_names(conn: &mut Pooled) -> bool {
    if conn.mariadb {
        return true;
    }
    let Some(set_names) = super::set_names_for(conn.key.collation) else { return true };
    matches!(conn.run_silently(&set_names, ResponseKind::Query).await, Ok(o) if o.error.is_none())
}

/// How long a connection being given back may take to reset.
const RESET_TIMEOUT: Duration = Duration::from_secs(2);

/// Gives a connection back between statements (multiplexing): kept idle as it is, with its
/// settings and prepared statements, for the next session to borrow. One whose state is not
/// known or holds state for its last session's next command is reset first.
/// Returns the connection when it must be reset first ([`release`] does it).
pub fn park(conn: Pooled) -> Option<Pooled> {
    let pool = &conn.backend.pool;
    if conn.busy || pool.max_idle == 0 {
        return None;
    }
    if conn.settings.is_none() || conn.leftover {
        return Some(conn);
    }
    let backend = conn.backend.clone();
    backend.pool.put_idle(conn);
    None
}

/// Gives a connection back at the end of a session: reset, then kept idle (or closed when the
/// idle list is full or the connection is in the middle of something).
pub async fn release(mut conn: Pooled) {
    let pool = &conn.backend.pool;
    let full = pool.shard(conn.worker).idle.lock().is_ok_and(|idle| idle.len() >= pool.max_idle);
    if conn.busy || pool.max_idle == 0 || full {
        return;
    }
    // Bounded: a hung server does not get to hold a session that is ending.
    let reset = conn.run_silently(&[command::RESET_CONNECTION], ResponseKind::Query);
    let reset = tokio::time::timeout(RESET_TIMEOUT, reset).await;
    if !matches!(reset, Ok(Ok(o)) if o.error.is_none()) {
        return;
    }
    let had_none = conn.database == Some(None);
    conn.was_reset();
    if had_none {
        conn.database = Some(None);
    }
    if !tokio::time::timeout(RESET_TIMEOUT, restore_login_names(&mut conn)).await.unwrap_or(false) {
        return;
    }
    let backend = conn.backend.clone();
    backend.pool.put_idle(conn);
}
