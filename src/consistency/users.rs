//! `consistency = "user"`: the newest position of each user's writes through this rwproxy, so
//! that a read sees what any session of the same user wrote before it — a web application's
//! next request on a new connection, or on another connection of its pool, reads its own
//! writes without a round trip to the primary.
//!
//! Memory is bounded: past `max_users` the least recently written users are forgotten, and
//! their positions merge into a floor every user's read needs (never a stale read, at worst
//! one that waits for a little more than it had to).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::Position;

/// Users remembered by default.
pub const MAX_USERS: usize = 10_000;

#[derive(Debug)]
pub struct UserPositions {
    inner: Mutex<Inner>,
    max_users: usize,
    /// Moves on every change: a session that saw this version need not look again (a read
    /// costs one atomic load while no write happens).
    version: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<String, Entry>,
    /// What forgotten users needed.
    floor: Option<Position>,
    /// A forgotten user had a write whose position did not show, at this moment.
    floor_unknown: Option<Instant>,
}

#[derive(Debug, Clone, Default)]
struct Entry {
    position: Option<Position>,
    /// A write of this user ended without its GTID showing at this moment: the primary's
    /// position after it is needed.
    unknown_since: Option<Instant>,
    touched: Option<Instant>,
}

/// What a read of a user must see.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserNeed {
    pub position: Option<Position>,
    /// The primary's position as of a moment after this is needed too.
    pub unknown_since: Option<Instant>,
}

impl Default for UserPositions {
    fn default() -> Self {
        UserPositions::new(MAX_USERS)
    }
}

impl UserPositions {
    pub fn new(max_users: usize) -> UserPositions {
        UserPositions {
            inner: Mutex::new(Inner::default()),
            max_users: max_users.max(1),
            version: AtomicU64::new(0),
        }
    }

    /// A write of `user` committed at `position`.
    pub fn wrote(&self, user: &str, position: &Position) {
        self.update(user, |entry| match entry.position.as_mut() {
            Some(have) => have.merge(position),
            None => entry.position = Some(position.clone()),
        });
    }

    /// A write of `user` ended and its GTID did not show.
    pub fn wrote_unknown(&self, user: &str, at: Instant) {
        self.update(user, |entry| entry.unknown_since = Some(at));
    }

    /// The primary's position fetched after `since` covers `user`'s unknown writes up to then.
    pub fn resolved(&self, user: &str, since: Instant, position: &Position) {
        self.update(user, |entry| {
            match entry.position.as_mut() {
                Some(have) => have.merge(position),
                None => entry.position = Some(position.clone()),
            }
            if entry.unknown_since.is_some_and(|u| u <= since) {
                entry.unknown_since = None;
            }
        });
    }

    /// The version of what is known: it moves on every change.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// What a read of `user` must see: its writes, and those of forgotten users.
    pub fn need(&self, user: &str) -> UserNeed {
        let Ok(inner) = self.inner.lock() else { return UserNeed::default() };
        let entry = inner.users.get(user);
        if entry.is_none() && inner.floor.is_none() && inner.floor_unknown.is_none() {
            return UserNeed::default();
        }
        let mut position = inner.floor.clone();
        if let Some(own) = entry.and_then(|e| e.position.as_ref()) {
            match position.as_mut() {
                Some(p) => p.merge(own),
                None => position = Some(own.clone()),
            }
        }
        let unknown_since = entry.and_then(|e| e.unknown_since).max(inner.floor_unknown);
        UserNeed { position, unknown_since }
    }

    /// Users remembered now.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.users.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn update(&self, user: &str, change: impl FnOnce(&mut Entry)) {
        let Ok(mut inner) = self.inner.lock() else { return };
        // A known user's entry is found without building a key (every write looks here).
        if !inner.users.contains_key(user) {
            if inner.users.len() >= self.max_users {
                inner.forget_oldest(self.max_users.div_ceil(10));
            }
            inner.users.insert(user.to_string(), Entry::default());
        }
        let Some(entry) = inner.users.get_mut(user) else { return };
        change(entry);
        entry.touched = Some(Instant::now());
        // Under the lock: a reader that sees the new version finds the new entry.
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

impl Inner {
    /// Forgets the `n` users written least recently; what they needed goes into the floor.
    fn forget_oldest(&mut self, n: usize) {
        let mut by_age: Vec<(Option<Instant>, String)> =
            self.users.iter().map(|(name, e)| (e.touched, name.clone())).collect();
        by_age.sort();
        for (_, name) in by_age.into_iter().take(n) {
            let Some(entry) = self.users.remove(&name) else { continue };
            if let Some(position) = entry.position {
                match self.floor.as_mut() {
                    Some(floor) => floor.merge(&position),
                    None => self.floor = Some(position),
                }
            }
            self.floor_unknown = self.floor_unknown.max(entry.unknown_since);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(text: &str) -> Position {
        Position::parse(text).expect("position")
    }

    #[test]
    fn a_users_reads_need_its_writes_only() {
        let users = UserPositions::new(10);
        assert_eq!(users.need("app"), UserNeed::default());
        users.wrote("app", &pos("0-1-5"));
        users.wrote("app", &pos("0-1-7"));
        users.wrote("other", &pos("0-1-9"));
        assert_eq!(users.need("app").position, Some(pos("0-1-7")));
        assert_eq!(users.need("nobody").position, None);
    }

    #[test]
    fn an_unknown_write_needs_the_primary_until_resolved() {
        let users = UserPositions::new(10);
        let at = Instant::now();
        users.wrote_unknown("app", at);
        assert_eq!(users.need("app").unknown_since, Some(at));
        users.resolved("app", Instant::now(), &pos("0-1-3"));
        let need = users.need("app");
        assert_eq!((need.position, need.unknown_since), (Some(pos("0-1-3")), None));
    }

    #[test]
    fn forgotten_users_raise_the_floor_instead_of_losing_their_writes() {
        let users = UserPositions::new(3);
        for (i, user) in ["a", "b", "c"].iter().enumerate() {
            users.wrote(user, &pos(&format!("0-1-{}", i + 1)));
        }
        users.wrote("d", &pos("0-1-10"));
        assert_eq!(users.len(), 3, "bounded");
        // "a" was forgotten: any read now needs at least its position.
        assert_eq!(users.need("a").position, Some(pos("0-1-1")));
        assert_eq!(users.need("stranger").position, Some(pos("0-1-1")));
        assert_eq!(users.need("d").position, Some(pos("0-1-10")));
    }
}
