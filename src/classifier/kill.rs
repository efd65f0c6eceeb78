//! What a `KILL` statement names. MySQL: `KILL [CONNECTION | QUERY] id`; MariaDB adds
//! `[HARD | SOFT]` first, `KILL QUERY ID query_id` and `KILL USER name`. Only KILL statements
//! reach here, so a full tokenization costs nothing that matters.

use sqlparser::dialect::MySqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// `KILL [CONNECTION] id`: end the connection.
    Connection(u64),
    /// `KILL QUERY id`: stop the connection's running statement.
    Query(u64),
    /// A form whose target is not a connection id (`KILL USER`, `KILL QUERY ID`, an
    /// expression): named for the error.
    Unsupported(&'static str),
}

/// `None` when `sql` is not a KILL statement.
pub fn kill_target(sql: &str) -> Option<Kill> {
    let tokens: Vec<Token> = Tokenizer::new(&MySqlDialect {}, sql)
        .tokenize()
        .ok()?
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::SemiColon))
        .collect();
    let word = |at: usize| match tokens.get(at) {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    };
    if word(0).as_deref() != Some("KILL") {
        return None;
    }
    let mut at = 1;
    if matches!(word(at).as_deref(), Some("HARD" | "SOFT")) {
        at += 1;
    }
    let query = match word(at).as_deref() {
        Some("QUERY") => {
            at += 1;
            true
        }
        Some("CONNECTION") => {
            at += 1;
            false
        }
        Some("USER") => return Some(Kill::Unsupported("KILL USER")),
        _ => false,
    };
    if query && word(at).as_deref() == Some("ID") {
        return Some(Kill::Unsupported("KILL QUERY ID"));
    }
    let id = match (tokens.get(at), tokens.len() == at + 1) {
        (Some(Token::Number(digits, false)), true) => digits.parse::<u64>().ok(),
        _ => None,
    };
    Some(match id {
        Some(id) if query => Kill::Query(id),
        Some(id) => Kill::Connection(id),
        None => Kill::Unsupported("KILL with anything but a connection id"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_kill_names_its_target() {
        assert_eq!(kill_target("KILL 12"), Some(Kill::Connection(12)));
        assert_eq!(kill_target("kill connection 12;"), Some(Kill::Connection(12)));
        assert_eq!(kill_target("KILL QUERY 7"), Some(Kill::Query(7)));
        assert_eq!(kill_target("KILL HARD QUERY 7"), Some(Kill::Query(7)));
        assert_eq!(kill_target("KILL SOFT CONNECTION 3"), Some(Kill::Connection(3)));
        assert_eq!(kill_target("/* cancel */ KILL QUERY 99999999999"), Some(Kill::Query(99_999_999_999)));
        assert_eq!(kill_target("KILL QUERY ID 5"), Some(Kill::Unsupported("KILL QUERY ID")));
        assert_eq!(kill_target("KILL USER app"), Some(Kill::Unsupported("KILL USER")));
        let expression = Some(Kill::Unsupported("KILL with anything but a connection id"));
        assert_eq!(kill_target("KILL @id"), expression);
        assert_eq!(kill_target("KILL 5 + 1"), expression);
        assert_eq!(kill_target("KILL"), expression);
        assert_eq!(kill_target("SELECT 'KILL 5'"), None);
        assert_eq!(kill_target("killall"), None);
    }
}
