//! The token scan for statements that may be reads.

use sqlparser::dialect::MySqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

use super::Hint;
use super::lexer::hint_in;

/// Functions whose answer depends on the session or the primary, or that have side effects.
pub(super) const PRIMARY_FUNCTIONS: &[&str] = &[
    "LAST_INSERT_ID",
    "NEXTVAL",
    "LASTVAL",
    "SETVAL",
    "MASTER_POS_WAIT",
    "MASTER_GTID_WAIT",
    "WAIT_FOR_EXECUTED_GTID_SET",
    "WAIT_UNTIL_SQL_THREAD_AFTER_GTIDS",
    "SLEEP",
    "IS_FREE_LOCK",
    "IS_USED_LOCK",
    "UUID_SHORT",
    "BENCHMARK",
    "SOURCE_POS_WAIT",
];
/// Functions that take a lock held by the connection: the session must stay where it took it.
pub(super) const LOCK_FUNCTIONS: &[&str] = &["GET_LOCK"];
/// Functions that describe the previous statement.
pub(super) const DIAGNOSTIC_FUNCTIONS: &[&str] = &["FOUND_ROWS", "ROW_COUNT"];
const PRIMARY_VARIABLES: &[&str] = &["@@IDENTITY", "@@LAST_INSERT_ID", "@@SESSION.LAST_INSERT_ID"];

/// Everything the token scan found that can change a statement's destination.
#[derive(Debug, Default, Clone, Copy)]
pub struct Features {
    pub tokenize_failed: bool,
    pub multi_statement: bool,
    pub writes: bool,
    pub locking: bool,
    pub assigns_user_variable: bool,
    pub reads_user_variable: bool,
    pub side_effect_function: bool,
    pub takes_lock: bool,
    pub releases_lock: bool,
    pub releases_all_locks: bool,
    pub diagnostics: bool,
    pub subquery: bool,
    pub read_only_transaction: bool,
    pub hint: Option<Hint>,
}

pub fn scan(sql: &str) -> Features {
    let mut f = Features::default();
    let Ok(tokens) = Tokenizer::new(&MySqlDialect {}, sql).tokenize() else {
        f.tokenize_failed = true;
        return f;
    };
    let words: Vec<&Token> = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))).collect();
    for t in &tokens {
        if let Token::Whitespace(
            Whitespace::MultiLineComment(c) | Whitespace::SingleLineComment { comment: c, .. },
        ) = t
            && let Some(h) = hint_in(c.as_bytes())
        {
            f.hint = Some(h);
        }
    }
    for (i, t) in words.iter().enumerate() {
        let next = words.get(i + 1).copied();
        let after = words.get(i + 2).copied();
        match t {
            Token::SemiColon => f.multi_statement |= next.is_some(),
            Token::Assignment => f.assigns_user_variable = true,
            Token::AtSign => f.reads_user_variable = true,
            Token::Word(w) if w.quote_style.is_none() => {
                scan_word(&mut f, &w.value, w.keyword, i, next, after)
            }
            _ => {}
        }
    }
    f
}

/// The unquoted words of `sql`, uppercased, skipping punctuation and comments; `None` when it
/// does not tokenize.
pub fn words(sql: &str) -> Option<Vec<String>> {
    let tokens = Tokenizer::new(&MySqlDialect {}, sql).tokenize().ok()?;
    let words = tokens.into_iter().filter_map(|t| match t {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    });
    Some(words.collect())
}

fn is_keyword(t: Option<&Token>, k: Keyword) -> bool {
    matches!(t, Some(Token::Word(w)) if w.keyword == k && w.quote_style.is_none())
}

fn scan_word(
    f: &mut Features,
    value: &str,
    keyword: Keyword,
    i: usize,
    next: Option<&Token>,
    after: Option<&Token>,
) {
    let call = matches!(next, Some(Token::LParen));
    match keyword {
        Keyword::INSERT | Keyword::UPDATE | Keyword::DELETE | Keyword::REPLACE if i > 0 && !call => {
            // `FOR UPDATE` is a locking read, anything else a data change (`WITH … UPDATE`).
            f.writes |= keyword != Keyword::UPDATE || !f.locking;
        }
        Keyword::FOR if is_keyword(next, Keyword::UPDATE) || is_keyword(next, Keyword::SHARE) => {
            f.locking = true
        }
        Keyword::LOCK if is_keyword(next, Keyword::IN) => f.locking = true,
        Keyword::NOWAIT => f.locking = true,
        Keyword::SKIP if is_keyword(next, Keyword::LOCKED) => f.locking = true,
        Keyword::INTO => f.assigns_user_variable = true,
        Keyword::NEXT if is_keyword(next, Keyword::VALUE) && is_keyword(after, Keyword::FOR) => {
            f.side_effect_function = true;
        }
        Keyword::SELECT if i > 0 => f.subquery = true,
        Keyword::SQL_CALC_FOUND_ROWS => f.diagnostics = true,
        Keyword::READ if is_keyword(next, Keyword::ONLY) => f.read_only_transaction = true,
        _ => scan_name(f, value, call),
    }
}

fn scan_name(f: &mut Features, value: &str, call: bool) {
    if let Some(var) = value.strip_prefix('@') {
        if var.starts_with('@') {
            f.side_effect_function |= PRIMARY_VARIABLES.iter().any(|v| v.eq_ignore_ascii_case(value));
        } else {
            f.reads_user_variable = true;
        }
        return;
    }
    if !call {
        return;
    }
    let is = |list: &[&str]| list.iter().any(|n| n.eq_ignore_ascii_case(value));
    if value.eq_ignore_ascii_case("SQL_CALC_FOUND_ROWS") || is(DIAGNOSTIC_FUNCTIONS) {
        f.diagnostics = true;
    } else if is(LOCK_FUNCTIONS) {
        f.takes_lock = true;
    } else if value.eq_ignore_ascii_case("RELEASE_LOCK") {
        f.releases_lock = true;
    } else if value.eq_ignore_ascii_case("RELEASE_ALL_LOCKS") {
        f.releases_all_locks = true;
    } else if is(PRIMARY_FUNCTIONS) {
        f.side_effect_function = true;
    }
}
