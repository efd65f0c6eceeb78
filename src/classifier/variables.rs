//! Which user variables a statement gives a value made by the server (`@v := …`, `SELECT …
//! INTO @v`, `SET @v = (SELECT …)`): with multiplexing, rwproxy reads them back after the
//! statement and carries them as settings instead of pinning the session to its connection.

use sqlparser::dialect::MySqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer};

/// The user variables `sql` assigns, lowercased names without `@`, each once. `None` when
/// rwproxy cannot name every one (a quoted name, `INTO` a local variable) or the statement
/// sets other state along with them (`SET @v = (SELECT …), sql_mode = …`): the session then
/// keeps its connection. `Some(empty)` for `SELECT … INTO OUTFILE` (no variable at all).
pub fn assigned_user_variables(sql: &str) -> Option<Vec<String>> {
    let tokens = Tokenizer::new(&MySqlDialect {}, sql).tokenize().ok()?;
    let words: Vec<&Token> = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))).collect();
    let mut names: Vec<String> = Vec::new();
    let mut add = |t: Option<&&Token>| -> Option<()> {
        let name = user_variable(t.copied()?)?;
        if !names.contains(&name) {
            names.push(name);
        }
        Some(())
    };
    let is_set = matches!(words.first(), Some(Token::Word(w)) if w.keyword == Keyword::SET);
    let mut depth = 0usize;
    for (i, t) in words.iter().enumerate() {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Assignment => add(i.checked_sub(1).and_then(|p| words.get(p)))?,
            // `SET` targets: after `SET` and after each comma outside parentheses.
            Token::Comma if is_set && depth == 0 => set_target(&words, i + 1, &mut add)?,
            Token::Word(w) if is_set && i == 0 => {
                debug_assert_eq!(w.keyword, Keyword::SET);
                set_target(&words, 1, &mut add)?
            }
            Token::Word(w) if w.keyword == Keyword::INTO && w.quote_style.is_none() => {
                into_targets(&words, i + 1, &mut add)?
            }
            _ => {}
        }
    }
    Some(names)
}

/// A `SET` target at `at`: a user variable (anything else is state rwproxy does not carry
/// this way).
fn set_target(
    words: &[&Token],
    at: usize,
    add: &mut impl FnMut(Option<&&Token>) -> Option<()>,
) -> Option<()> {
    match words.get(at + 1) {
        Some(Token::Eq | Token::Assignment) => add(words.get(at)),
        _ => None,
    }
}

/// `INTO @a, @b` (or `INTO OUTFILE` / `DUMPFILE`: no variables).
fn into_targets(
    words: &[&Token],
    at: usize,
    add: &mut impl FnMut(Option<&&Token>) -> Option<()>,
) -> Option<()> {
    if let Some(Token::Word(w)) = words.get(at)
        && w.quote_style.is_none()
        && (w.value.eq_ignore_ascii_case("OUTFILE") || w.value.eq_ignore_ascii_case("DUMPFILE"))
    {
        return Some(());
    }
    let mut at = at;
    // Bounded by the statement's tokens.
    loop {
        add(words.get(at))?;
        if !matches!(words.get(at + 1), Some(Token::Comma)) {
            return Some(());
        }
        at += 2;
    }
}

/// `@name` as an unquoted word of plain characters: the name, lowercased (user variable names
/// do not depend on case).
fn user_variable(t: &Token) -> Option<String> {
    let Token::Word(w) = t else { return None };
    if w.quote_style.is_some() {
        return None;
    }
    let name = w.value.strip_prefix('@')?;
    let plain = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_$.".contains(&b));
    plain.then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::assigned_user_variables as assigned;

    fn names(list: &[&str]) -> Option<Vec<String>> {
        Some(list.iter().map(|s| (*s).to_string()).collect())
    }

    #[test]
    fn assignments_in_a_statement() {
        let rank = "SELECT @rn := @rn + 1 AS r, t.* FROM t, (SELECT @rn := 0) AS init";
        assert_eq!(assigned(rank), names(&["rn"]));
        assert_eq!(assigned("SELECT @a:=1, @B := 2, @a := 3"), names(&["a", "b"]));
        assert_eq!(assigned("SELECT id INTO @x FROM t LIMIT 1"), names(&["x"]));
        assert_eq!(assigned("SELECT id, v FROM t LIMIT 1 INTO @x, @y"), names(&["x", "y"]));
        assert_eq!(assigned("SELECT * FROM t INTO OUTFILE '/tmp/x'"), names(&[]));
        assert_eq!(assigned("SET @m = (SELECT MAX(id) FROM t)"), names(&["m"]));
        assert_eq!(assigned("SET @m = (SELECT MAX(id) FROM t), @n := 2"), names(&["m", "n"]));
        assert_eq!(assigned("UPDATE t SET v = (@old := v) + 1 WHERE id = 1"), names(&["old"]));
    }

    #[test]
    fn what_it_cannot_name_is_none() {
        assert_eq!(assigned("SELECT @`odd name` := 1"), None);
        assert_eq!(assigned("SELECT 1 INTO local_var"), None);
        assert_eq!(assigned("SET @m = (SELECT MAX(id) FROM t), sql_mode = ''"), None);
        assert_eq!(assigned("SET SESSION sql_mode = (SELECT 'x')"), None);
        assert_eq!(assigned("SELECT 'unterminated"), None);
    }
}
