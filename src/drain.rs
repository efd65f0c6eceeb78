//! Telling running connections to finish, and waiting until they have: each connection waits
//! on its own channel, so nothing shared is touched while it serves requests or statements.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// The connections of one listener.
#[derive(Debug)]
pub struct Drain {
    running: AtomicUsize,
    next_id: AtomicU32,
    /// One sender per connection, dropped to tell it to finish. `None` once draining.
    kicks: Mutex<Option<HashMap<u32, oneshot::Sender<()>>>>,
}

impl Default for Drain {
    fn default() -> Drain {
        Drain {
            running: AtomicUsize::new(0),
            next_id: AtomicU32::new(1),
            kicks: Mutex::new(Some(HashMap::new())),
        }
    }
}

impl Drain {
    /// Registers a connection: its id, and the receiver that completes when draining starts
    /// (at once if it already has).
    pub fn join(self: &Arc<Self>) -> (Member, u32, oneshot::Receiver<()>) {
        self.running.fetch_add(1, Ordering::Relaxed);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (kick, kicked) = oneshot::channel();
        if let Ok(mut kicks) = self.kicks.lock()
            && let Some(kicks) = kicks.as_mut()
        {
            kicks.insert(id, kick);
        }
        (Member { drain: self.clone(), id }, id, kicked)
    }

    /// Wakes one connection as a drain would (`KILL CONNECTION`: the connection itself knows
    /// why); its sender goes, so a second kick or the drain finds nothing to do for it.
    pub fn kick(&self, id: u32) {
        let sender = self.kicks.lock().ok().and_then(|mut kicks| kicks.as_mut()?.remove(&id));
        drop(sender);
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Tells every connection to finish, then waits until all have or `deadline` passed;
    /// returns how many were still running then.
    pub async fn drain(&self, deadline: Duration) -> usize {
        // Dropping the senders wakes every connection.
        drop(self.kicks.lock().ok().and_then(|mut kicks| kicks.take()));
        let until = Instant::now() + deadline;
        let polls = deadline.as_millis() / 20 + 1;
        for _ in 0..polls {
            if self.running() == 0 || Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.running()
    }
}

/// Counts a connection as running for as long as it lives.
#[derive(Debug)]
pub struct Member {
    drain: Arc<Drain>,
    id: u32,
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Ok(mut kicks) = self.drain.kicks.lock()
            && let Some(kicks) = kicks.as_mut()
        {
            kicks.remove(&self.id);
        }
        self.drain.running.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_kicks_members_and_waits_for_them() {
        let drain = Arc::new(Drain::default());
        let (member, _, kicked) = drain.join();
        let worker = tokio::spawn(async move {
            let _ = kicked.await;
            drop(member);
        });
        assert_eq!(drain.running(), 1);
        assert_eq!(drain.drain(Duration::from_secs(5)).await, 0);
        worker.await.expect("join");
        let (_late, _, kicked) = drain.join();
        assert!(kicked.await.is_err(), "a connection joining after the drain is told at once");
        assert_eq!(drain.drain(Duration::from_millis(50)).await, 1);
    }
}
