//! Read consistency: what each backend is known to have applied, and the primary's current
//! position shared by all reads that need it.
//!
//! A session learns the position of its own writes from the OK packets the primary sends
//! (`protocol::session_track`); the monitor reads each backend's applied position every
//! interval, and a replica that answered a wait is known to be at least where it was asked to
//! be. The session's read path (`session::consistency`) puts these together.

mod outcome;
mod position;
mod primary;
mod users;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

pub use outcome::{OptimisticOutcome, ReadOutcome};
pub use position::{Position, PositionError};
pub use primary::PrimaryPosition;
pub use users::{UserNeed, UserPositions};

/// What rwproxy knows of one backend's replication position.
#[derive(Debug, Default)]
pub struct Known {
    position: Mutex<Option<Position>>,
    /// 0: not checked yet, 1: the server writes GTIDs, 2: it does not (binlog or GTIDs off).
    gtid: AtomicU8,
}

impl Known {
    /// Whether the backend is known to have applied `need`.
    pub fn covers(&self, need: &Position) -> bool {
        self.position.lock().ok().and_then(|p| p.as_ref().map(|p| p.covers(need))).unwrap_or(false)
    }

    /// The monitor read the backend's position: it replaces what was known (a rebuilt
    /// replica may be behind what it once had).
    pub fn set(&self, position: Option<Position>) {
        if let Ok(mut p) = self.position.lock() {
            *p = position;
        }
    }

    /// The backend reached `position` (a wait on it succeeded).
    pub fn reached(&self, position: &Position) {
        if let Ok(mut p) = self.position.lock() {
            match p.as_mut() {
                Some(have) => have.merge(position),
                None => *p = Some(position.clone()),
            }
        }
    }

    pub fn get(&self) -> Option<Position> {
        self.position.lock().ok().and_then(|p| p.clone())
    }

    pub fn set_gtid(&self, on: bool) {
        self.gtid.store(if on { 1 } else { 2 }, Ordering::Relaxed);
    }

    /// Whether the server writes GTIDs; `None` until the monitor has looked.
    pub fn gtid(&self) -> Option<bool> {
        match self.gtid.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }
}
