//! Replication positions as the servers write them: a MariaDB GTID list (`0-1-180,1-2-33`) or
//! a MySQL GTID set (`3e11fa47-…:1-5:7-9,…`). The text is the server's own, so a position
//! an application got from the server can be handed to rwproxy as it is.

use std::collections::BTreeMap;
use std::fmt;

/// A set of transactions: everything a server that "has" this position has applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// MariaDB: per replication domain, the highest sequence number (sequence numbers grow
    /// within a domain, so the highest one covers every earlier one).
    MariaDb(BTreeMap<u32, (u32, u64)>),
    /// MySQL: per source UUID (with its tag, if any), sorted disjoint intervals.
    MySql(BTreeMap<String, Vec<(u64, u64)>>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("empty position")]
    Empty,
    #[error("{0:?} is neither a MariaDB GTID (domain-server-sequence) nor a MySQL GTID set")]
    Malformed(String),
}

impl Position {
    /// Parses a GTID list or set; whitespace and newlines (MySQL prints them) are ignored.
    pub fn parse(text: &str) -> Result<Position, PositionError> {
        let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if text.is_empty() {
            return Err(PositionError::Empty);
        }
        let bad = || PositionError::Malformed(text.clone());
        if text.contains(':') {
            parse_mysql(&text).ok_or_else(bad)
        } else {
            parse_mariadb(&text).ok_or_else(bad)
        }
    }

    /// Whether a server at `self` has applied every transaction of `other`.
    pub fn covers(&self, other: &Position) -> bool {
        match (self, other) {
            (Position::MariaDb(have), Position::MariaDb(need)) => {
                need.iter().all(|(domain, (_, seq))| have.get(domain).is_some_and(|(_, s)| s >= seq))
            }
            (Position::MySql(have), Position::MySql(need)) => need.iter().all(|(source, intervals)| {
                let owned = have.get(source).map(Vec::as_slice).unwrap_or_default();
                intervals.iter().all(|i| owned.iter().any(|o| o.0 <= i.0 && i.1 <= o.1))
            }),
            _ => false,
        }
    }

    /// Adds `other` (the later write of a session, or a wait that succeeded). Positions of two
    /// flavours do not mix: `other` replaces `self` then.
    pub fn merge(&mut self, other: &Position) {
        match (self, other) {
            (Position::MariaDb(have), Position::MariaDb(more)) => {
                for (domain, (server, seq)) in more {
                    let entry = have.entry(*domain).or_insert((*server, *seq));
                    if *seq >= entry.1 {
                        *entry = (*server, *seq);
                    }
                }
            }
            (Position::MySql(have), Position::MySql(more)) => {
                for (source, intervals) in more {
                    let list = have.entry(source.clone()).or_default();
                    list.extend(intervals.iter().copied());
                    normalize(list);
                }
            }
            (this, other) => *this = other.clone(),
        }
    }

    /// Whether this is a MariaDB position (it decides the wait function).
    pub fn is_mariadb(&self) -> bool {
        matches!(self, Position::MariaDb(_))
    }

    /// The statement that waits up to `seconds` for a replica to apply this position; it
    /// answers 0 when the replica got there.
    pub fn wait_statement(&self, seconds: f64) -> String {
        match self {
            Position::MariaDb(_) => format!("SELECT MASTER_GTID_WAIT('{self}', {seconds:.3})"),
            Position::MySql(_) => format!("SELECT WAIT_FOR_EXECUTED_GTID_SET('{self}', {seconds:.3})"),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let s = if first { "" } else { "," };
            first = false;
            f.write_str(s)
        };
        match self {
            Position::MariaDb(map) => {
                for (domain, (server, seq)) in map {
                    sep(f)?;
                    write!(f, "{domain}-{server}-{seq}")?;
                }
            }
            Position::MySql(map) => {
                for (source, intervals) in map {
                    sep(f)?;
                    f.write_str(source)?;
                    for (a, b) in intervals {
                        if a == b { write!(f, ":{a}")? } else { write!(f, ":{a}-{b}")? }
                    }
                }
            }
        }
        Ok(())
    }
}

fn parse_mariadb(text: &str) -> Option<Position> {
    let mut map = BTreeMap::new();
    for gtid in text.split(',') {
        let mut parts = gtid.split('-');
        let domain: u32 = parts.next()?.parse().ok()?;
        let server: u32 = parts.next()?.parse().ok()?;
        let seq: u64 = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        let entry = map.entry(domain).or_insert((server, seq));
        if seq >= entry.1 {
            *entry = (server, seq);
        }
    }
    Some(Position::MariaDb(map))
}

fn parse_mysql(text: &str) -> Option<Position> {
    let mut map: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for member in text.split(',') {
        let mut parts = member.split(':');
        let uuid = parts.next()?.to_ascii_lowercase();
        if uuid.len() != 36 || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return None;
        }
        // MySQL 8.3+ tagged GTIDs: `uuid:tag:1-5`; a tag starts with a letter or underscore.
        let mut key = uuid.clone();
        for part in parts {
            if part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                key = format!("{uuid}:{}", part.to_ascii_lowercase());
                continue;
            }
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
                None => {
                    let n = part.parse().ok()?;
                    (n, n)
                }
            };
            if a == 0 || b < a {
                return None;
            }
            map.entry(key.clone()).or_default().push((a, b));
        }
    }
    map.retain(|_, list| !list.is_empty());
    for list in map.values_mut() {
        normalize(list);
    }
    Some(Position::MySql(map))
}

/// Sorts intervals and joins the ones that touch or overlap.
fn normalize(list: &mut Vec<(u64, u64)>) {
    list.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(list.len());
    for &(a, b) in list.iter() {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    *list = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Position {
        Position::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn mariadb_lists_compare_per_domain() {
        let have = p("0-1-180,1-2-33");
        assert!(have.covers(&p("0-1-180")));
        assert!(have.covers(&p("0-1-12,1-2-33")));
        assert!(!have.covers(&p("0-1-181")));
        assert!(!have.covers(&p("2-1-1")), "an unknown domain is not covered");
        assert!(have.covers(&p("0-3-100")), "the server id does not matter within a domain");
        assert_eq!(have.to_string(), "0-1-180,1-2-33");
    }

    #[test]
    fn mariadb_merge_keeps_the_highest_per_domain() {
        let mut a = p("0-1-10");
        a.merge(&p("0-1-12,1-1-3"));
        a.merge(&p("0-1-11"));
        assert_eq!(a.to_string(), "0-1-12,1-1-3");
    }

    #[test]
    fn mysql_sets_compare_by_interval() {
        let uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let other = "4e11fa47-71ca-11e1-9e33-c80aa9429562";
        let have = p(&format!("{uuid}:1-5:7-9,\n{other}:1-3"));
        assert!(have.covers(&p(&format!("{uuid}:3"))));
        assert!(have.covers(&p(&format!("{uuid}:1-5,{other}:2"))));
        assert!(!have.covers(&p(&format!("{uuid}:6"))));
        assert!(!have.covers(&p(&format!("{uuid}:4-7"))));
        assert_eq!(have.to_string(), format!("{uuid}:1-5:7-9,{other}:1-3"));
        let mut merged = p(&format!("{uuid}:1-5"));
        merged.merge(&p(&format!("{uuid}:6-8")));
        assert_eq!(merged.to_string(), format!("{uuid}:1-8"));
    }

    #[test]
    fn mysql_tagged_gtids_keep_their_tag() {
        let uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let have = p(&format!("{uuid}:1-3:web:1-2"));
        assert!(have.covers(&p(&format!("{uuid}:web:2"))));
        assert!(!have.covers(&p(&format!("{uuid}:web:3"))));
        assert!(have.covers(&p(&format!("{uuid}:2"))));
    }

    #[test]
    fn garbage_is_refused() {
        for bad in
            ["", "abc", "0-1", "0-1-x", "3e11:1-5", "3e11fa47-71ca-11e1-9e33-c80aa9429562:5-2", "0-1-2-3"]
        {
            assert!(Position::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flavours_do_not_cover_each_other() {
        let maria = p("0-1-1");
        let mysql = p("3e11fa47-71ca-11e1-9e33-c80aa9429562:1");
        assert!(!maria.covers(&mysql) && !mysql.covers(&maria));
        assert!(maria.wait_statement(0.1).starts_with("SELECT MASTER_GTID_WAIT('0-1-1', 0.100)"));
        assert!(mysql.wait_statement(1.0).contains("WAIT_FOR_EXECUTED_GTID_SET"));
    }
}
