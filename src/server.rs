//! The SQL listener and what its sessions share across reloads: the current configuration
//! (a [`Shared`], replaced whole by a reload), the monitor of its backends, the count of
//! running sessions and the drain signal of a graceful shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::session::{self, Shared};

/// The next connection. Accept errors (running out of file descriptors, a connection reset
/// before it was accepted) must not end a listener: they are logged and retried after a short
/// pause. `what` names the listener in the log.
pub async fn next_connection(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The SQL side of a running proxy.
pub struct SqlTier {
    pub addr: SocketAddr,
    current: ArcSwap<Shared>,
    monitor: Mutex<Vec<JoinHandle<()>>>,
    sessions: AtomicUsize,
    next_id: AtomicU32,
    /// Tells the accept loop to stop.
    draining: watch::Sender<bool>,
    /// One sender per running session, dropped to tell it to close at its next transaction
    /// boundary. Each session waits on its own channel: nothing shared is touched per command.
    /// `None` once draining.
    kicks: Mutex<Option<HashMap<u32, oneshot::Sender<()>>>>,
}

impl std::fmt::Debug for SqlTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlTier").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for SqlTier {
    fn drop(&mut self) {
        self.stop_monitor();
    }
}

impl SqlTier {
    pub fn new(addr: SocketAddr, shared: Shared, monitor: Vec<JoinHandle<()>>) -> SqlTier {
        SqlTier {
            addr,
            current: ArcSwap::from_pointee(shared),
            monitor: Mutex::new(monitor),
            sessions: AtomicUsize::new(0),
            next_id: AtomicU32::new(1),
            draining: watch::channel(false).0,
            kicks: Mutex::new(Some(HashMap::new())),
        }
    }

    /// The configuration new statements are routed by.
    pub fn current(&self) -> Arc<Shared> {
        self.current.load_full()
    }

    /// Whether `shared` is still the current configuration (cheap: no reference count taken).
    pub fn is_current(&self, shared: &Arc<Shared>) -> bool {
        Arc::ptr_eq(&self.current.load(), shared)
    }

    /// Makes `shared` current and replaces the monitor tasks with `monitor`.
    pub fn replace(&self, shared: Shared, monitor: Vec<JoinHandle<()>>) {
        self.current.store(Arc::new(shared));
        if let Ok(mut tasks) = self.monitor.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
            tasks.extend(monitor);
        }
    }

    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Asks every session to close once it is outside a transaction and waits until all have,
    /// or `deadline` passed; returns how many were still running then.
    pub async fn drain(&self, deadline: Duration) -> usize {
        let _ = self.draining.send(true);
        // Dropping the senders wakes every session.
        drop(self.kicks.lock().ok().and_then(|mut kicks| kicks.take()));
        let until = Instant::now() + deadline;
        let polls = deadline.as_millis() / 20 + 1;
        for _ in 0..polls {
            if self.sessions() == 0 || Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop_monitor();
        self.sessions()
    }

    pub fn stop_monitor(&self) {
        if let Ok(mut tasks) = self.monitor.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }
}

/// Counts a session as running for as long as it lives.
pub struct Running {
    tier: Arc<SqlTier>,
    id: u32,
}

impl Running {
    /// Registers a session: its id, and the receiver that completes when the proxy drains
    /// (at once if it already is).
    pub fn start(tier: Arc<SqlTier>) -> (Running, u32, oneshot::Receiver<()>) {
        tier.sessions.fetch_add(1, Ordering::Relaxed);
        let id = tier.next_id.fetch_add(1, Ordering::Relaxed);
        let (kick, kicked) = oneshot::channel();
        if let Ok(mut kicks) = tier.kicks.lock()
            && let Some(kicks) = kicks.as_mut()
        {
            kicks.insert(id, kick);
        }
        (Running { tier, id }, id, kicked)
    }

    pub fn tier(&self) -> &Arc<SqlTier> {
        &self.tier
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(mut kicks) = self.tier.kicks.lock()
            && let Some(kicks) = kicks.as_mut()
        {
            kicks.remove(&self.id);
        }
        self.tier.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts SQL clients until the task is aborted or the tier drains; each client runs in
/// its own task.
pub async fn serve(listener: TcpListener, tier: Arc<SqlTier>) {
    let mut draining = tier.draining.subscribe();
    loop {
        tokio::select! {
            (stream, peer) = next_connection(&listener, "sql") => {
                tokio::spawn(session::run(stream, peer, tier.clone()));
            }
            _ = draining.changed() => return,
        }
    }
}
