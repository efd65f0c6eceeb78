//! The logged-in sessions by the id their clients know (the greeting's connection id), so that
//! `KILL` from one client reaches another session. The id is rwproxy's own: with multiplexing a
//! session's statements run on whichever backend connection it borrows, so a backend's thread
//! id names no session, and a client's id names no backend thread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{Backend, Backends};

/// What other sessions may see of one session, and the switch that ends it.
#[derive(Debug)]
pub struct Handle {
    /// The client's address.
    pub peer: SocketAddr,
    /// When the client connected.
    pub connected: Instant,
    /// The user the session is logged in as (it changes with COM_CHANGE_USER).
    user: Mutex<String>,
    /// Why the session keeps its backend connections between statements, if it does (written
    /// when that changes: at most twice per transaction).
    pinned: Mutex<Option<&'static str>>,
    /// When the running statement started, in nanoseconds after `connected`.
    statement_started: AtomicU64,
    /// When the session last answered a command, in nanoseconds after `connected` (how long
    /// it has been idle; `transaction_idle_timeout` counts from there too).
    idle_from: AtomicU64,
    /// The backends the session's indexes refer to (they change when it follows a reload).
    backends: Mutex<Arc<Backends>>,
    /// The statement running on a backend now: the backend's index + 1 in the high half and
    /// the server's thread id of the connection in the low half; 0 between statements. Written
    /// only by the session itself, twice per statement, on a line no other session writes.
    running: AtomicU64,
    /// Set by `KILL CONNECTION`: the session ends at its next look, whatever ties it.
    killed: AtomicBool,
}

/// A statement running on a backend connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    pub backend: usize,
    pub thread_id: u32,
}

impl Handle {
    pub fn new(peer: SocketAddr, user: &str, backends: Arc<Backends>) -> Handle {
        Handle {
            peer,
            connected: Instant::now(),
            user: Mutex::new(user.to_string()),
            pinned: Mutex::new(None),
            statement_started: AtomicU64::new(0),
            idle_from: AtomicU64::new(0),
            backends: Mutex::new(backends),
            running: AtomicU64::new(0),
            killed: AtomicBool::new(false),
        }
    }

    /// The session follows a reload: its backend indexes refer to these now.
    pub fn set_backends(&self, backends: Arc<Backends>) {
        if let Ok(mut current) = self.backends.lock() {
            *current = backends;
        }
    }

    pub fn set_user(&self, user: &str) {
        if let Ok(mut name) = self.user.lock() {
            user.clone_into(&mut name);
        }
    }

    pub fn user(&self) -> String {
        self.user.lock().map(|name| name.clone()).unwrap_or_default()
    }

    /// The statement that started `at` runs on `backend`, on the server's thread `thread_id`.
    pub fn started(&self, backend: usize, thread_id: u32, at: Instant) {
        let since = at.saturating_duration_since(self.connected).as_nanos();
        self.statement_started.store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
        let backend = u64::try_from(backend).unwrap_or(u64::from(u32::MAX - 1)) + 1;
        self.running.store(backend << 32 | u64::from(thread_id), Ordering::Release);
    }

    /// Names the running statement: it changes when that statement ends or another starts.
    pub fn statement(&self) -> (u64, u64) {
        (self.running.load(Ordering::Acquire), self.statement_started.load(Ordering::Relaxed))
    }

    /// How long the running statement has run (meaningful while `running` says one does).
    pub fn running_for(&self) -> Duration {
        let started = self.connected + Duration::from_nanos(self.statement_started.load(Ordering::Relaxed));
        started.elapsed()
    }

    /// The session answered a command `at` and waits for the next.
    pub fn idle_since(&self, at: Instant) {
        let since = at.saturating_duration_since(self.connected).as_nanos();
        self.idle_from.store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// How long the session has waited for its client's next command (meaningful between
    /// statements).
    pub fn idle_for(&self) -> Duration {
        (self.connected + Duration::from_nanos(self.idle_from.load(Ordering::Relaxed))).elapsed()
    }

    pub fn set_pinned(&self, reason: Option<&'static str>) {
        if let Ok(mut pinned) = self.pinned.lock() {
            *pinned = reason;
        }
    }

    pub fn pinned(&self) -> Option<&'static str> {
        self.pinned.lock().ok().and_then(|pinned| *pinned)
    }

    pub fn finished(&self) {
        self.running.store(0, Ordering::Release);
    }

    pub fn running(&self) -> Option<Running> {
        let packed = self.running.load(Ordering::Acquire);
        let backend = usize::try_from(packed >> 32).ok()?.checked_sub(1)?;
        Some(Running { backend, thread_id: packed as u32 })
    }

    /// The backend running the session's statement now, and the server's id of the connection.
    pub fn running_on(&self) -> Option<(Arc<Backend>, u32)> {
        let running = self.running()?;
        let backends = self.backends.lock().ok()?.clone();
        Some((backends.get(running.backend)?.clone(), running.thread_id))
    }

    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
    }

    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }
}

/// The logged-in sessions of one SQL listener.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<u32, Arc<Handle>>>,
}

impl Registry {
    /// Lists `handle` under `id` until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, id: u32, handle: Arc<Handle>) -> Registered {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.insert(id, handle);
        }
        Registered { registry: self.clone(), id }
    }

    pub fn get(&self, id: u32) -> Option<Arc<Handle>> {
        self.sessions.lock().ok()?.get(&id).cloned()
    }

    /// The sessions running a statement on a backend connection whose server thread id is
    /// `thread_id` (one per backend at most: each server numbers its own threads).
    pub fn running_on_thread(&self, thread_id: u32) -> Vec<(u32, Arc<Handle>)> {
        let mut found: Vec<(u32, Arc<Handle>)> = match self.sessions.lock() {
            Ok(sessions) => sessions
                .iter()
                .filter(|(_, h)| h.running().is_some_and(|r| r.thread_id == thread_id))
                .map(|(id, h)| (*id, h.clone()))
                .collect(),
            Err(_) => Vec::new(),
        };
        found.sort_unstable_by_key(|(id, _)| *id);
        found
    }

    /// The logged-in sessions, by id.
    pub fn list(&self) -> Vec<(u32, Arc<Handle>)> {
        let mut all: Vec<(u32, Arc<Handle>)> = match self.sessions.lock() {
            Ok(sessions) => sessions.iter().map(|(id, handle)| (*id, handle.clone())).collect(),
            Err(_) => Vec::new(),
        };
        all.sort_unstable_by_key(|(id, _)| *id);
        all
    }
}

/// Keeps a session listed while it lives.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<Registry>,
    id: u32,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut sessions) = self.registry.sessions.lock() {
            sessions.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_listed_while_registered_and_says_what_it_runs() {
        let config = crate::config::Config::from_toml(
            "[mysql]\nlisten = \"127.0.0.1:0\"\n[[mysql.users]]\nname = \"app\"\npassword = \"app\"\n\
             [[mysql.backends]]\nname = \"p\"\naddress = \"127.0.0.1:1\"\nrole = \"primary\"\n\
             [[mysql.backends]]\nname = \"r\"\naddress = \"127.0.0.1:2\"\nrole = \"replica\"\n",
        )
        .expect("config");
        let registry = Arc::new(Registry::default());
        let peer: SocketAddr = "127.0.0.1:5000".parse().expect("address");
        let handle = Arc::new(Handle::new(peer, "nobody", Arc::new(Backends::from_config(&config))));
        handle.set_user("app");
        let guard = registry.register(7, handle.clone());
        let seen = registry.get(7).expect("listed");
        assert_eq!(seen.user(), "app");
        assert_eq!(seen.running(), None);
        handle.started(0, 4_000_000_000, Instant::now());
        assert_eq!(seen.running(), Some(Running { backend: 0, thread_id: 4_000_000_000 }));
        handle.started(1, 5, Instant::now());
        std::thread::sleep(Duration::from_millis(30));
        assert!(seen.running_for() >= Duration::from_millis(30));
        assert_eq!(seen.running(), Some(Running { backend: 1, thread_id: 5 }));
        let (backend, thread_id) = seen.running_on().expect("running");
        assert_eq!((backend.name.as_str(), thread_id), ("r", 5));
        assert_eq!(registry.running_on_thread(5).iter().map(|(id, _)| *id).collect::<Vec<_>>(), [7]);
        assert!(registry.running_on_thread(6).is_empty());
        handle.finished();
        assert_eq!(seen.running(), None);
        assert!(!seen.is_killed());
        seen.kill();
        assert!(handle.is_killed());
        seen.set_pinned(Some("transaction"));
        assert_eq!(handle.pinned(), Some("transaction"));
        assert_eq!(registry.list().iter().map(|(id, _)| *id).collect::<Vec<_>>(), [7]);
        drop(guard);
        assert!(registry.get(7).is_none());
        assert!(registry.list().is_empty());
    }
}
