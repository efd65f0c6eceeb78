//! Names a statement creates or drops: temporary tables, text prepared statements. Only DDL and
//! PREPARE reach here, so a full tokenization costs nothing that matters.

use sqlparser::dialect::MySqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer};

fn tokens(sql: &str) -> Vec<Token> {
    Tokenizer::new(&MySqlDialect {}, sql)
        .tokenize()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect()
}

fn is_keyword(t: Option<&Token>, k: Keyword) -> bool {
    matches!(t, Some(Token::Word(w)) if w.keyword == k && w.quote_style.is_none())
}

/// Tables named after `TABLE`/`TABLES` (skipping `IF [NOT] EXISTS`), lowercased, without
/// their database: `DROP TEMPORARY TABLE IF EXISTS a, db.b` gives `["a", "b"]`.
pub fn table_names(sql: &str) -> Vec<String> {
    let tokens = tokens(sql);
    let Some(start) = tokens
        .iter()
        .position(|t| is_keyword(Some(t), Keyword::TABLE) || is_keyword(Some(t), Keyword::TABLES))
    else {
        return Vec::new();
    };
    let mut i = start + 1;
    if is_keyword(tokens.get(i), Keyword::IF) {
        i += 1;
        if is_keyword(tokens.get(i), Keyword::NOT) {
            i += 1;
        }
        i += 1; // EXISTS
    }
    let mut names = Vec::new();
    let mut current: Option<String> = None;
    // A name is expected after TABLE, a comma or a period; any other word (LIKE, AS, …) ends
    // the list.
    let mut expecting = true;
    for t in &tokens[i.min(tokens.len())..] {
        match t {
            Token::Word(w) if expecting => {
                current = Some(w.value.to_lowercase());
                expecting = false;
            }
            Token::Period => expecting = true,
            Token::Comma => {
                names.extend(current.take());
                expecting = true;
            }
            _ => break,
        }
    }
    names.extend(current);
    names
}

/// The statement name in `PREPARE name FROM …`, `EXECUTE name`, `DEALLOCATE PREPARE name`,
/// `DROP PREPARE name`, lowercased.
pub fn prepared_name(sql: &str) -> Option<String> {
    let tokens = tokens(sql);
    let at = tokens
        .iter()
        .position(|t| is_keyword(Some(t), Keyword::PREPARE) || is_keyword(Some(t), Keyword::EXECUTE))?;
    match tokens.get(at + 1) {
        Some(Token::Word(w)) => Some(w.value.to_lowercase()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_found() {
        assert_eq!(table_names("CREATE TEMPORARY TABLE tmp (a INT)"), ["tmp"]);
        assert_eq!(table_names("CREATE TEMPORARY TABLE IF NOT EXISTS `Odd Name` LIKE t"), ["odd name"]);
        assert_eq!(table_names("DROP TEMPORARY TABLE IF EXISTS a, db.b"), ["a", "b"]);
        assert_eq!(table_names("DROP TABLE x"), ["x"]);
        assert!(table_names("SELECT 1").is_empty());
    }

    #[test]
    fn prepared_names_are_found() {
        assert_eq!(prepared_name("PREPARE s1 FROM 'SELECT 1'").as_deref(), Some("s1"));
        assert_eq!(prepared_name("DEALLOCATE PREPARE S1").as_deref(), Some("s1"));
        assert_eq!(prepared_name("DROP PREPARE s1").as_deref(), Some("s1"));
        assert_eq!(prepared_name("SELECT 1"), None);
    }
}
