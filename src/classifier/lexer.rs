//! A hand-written scan of a statement's start: whitespace, comments (and the hints in them),
//! and the first keywords. It never tokenizes the rest, so it costs the same for a 10-byte
//! SELECT and a 1 MB INSERT.

use super::Hint;

/// What the start of a statement says.
#[derive(Debug, Default)]
pub struct Lead<'a> {
    pub first_word: Option<&'a str>,
    /// Byte offset just past the first word.
    pub first_word_end: usize,
    pub second_word: Option<&'a str>,
    pub hint: Option<Hint>,
}

pub fn lead(sql: &str) -> Lead<'_> {
    let mut hint = None;
    let start = skip_space_and_comments(sql, 0, &mut hint);
    let Some((first, end)) = word_at(sql, start) else {
        return Lead { hint, ..Lead::default() };
    };
    let second = words_after(sql, end, 1).next();
    Lead { first_word: Some(first), first_word_end: end, second_word: second, hint }
}

/// Up to `limit` words after byte `pos`, skipping whitespace and comments; stops at anything
/// that is not a word.
pub fn words_after(sql: &str, mut pos: usize, limit: usize) -> impl Iterator<Item = &str> {
    let mut taken = 0;
    std::iter::from_fn(move || {
        if taken == limit {
            return None;
        }
        let start = skip_space_and_comments(sql, pos, &mut None);
        let (word, end) = word_at(sql, start)?;
        pos = end;
        taken += 1;
        Some(word)
    })
}

/// A keyword (letters, digits, `_`) at `pos`, or a lone `(` (a parenthesised SELECT).
fn word_at(sql: &str, pos: usize) -> Option<(&str, usize)> {
    let bytes = sql.as_bytes();
    if bytes.get(pos) == Some(&b'(') {
        return Some(("(", pos + 1));
    }
    let len = bytes.get(pos..)?.iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
    (len > 0).then(|| (&sql[pos..pos + len], pos + len))
}

/// Skips whitespace and comments from `pos`; records a routing hint found in a comment.
/// Executable comments (`/*! … */`, `/*M! … */`) are code, not comments: they stop the skip.
fn skip_space_and_comments(sql: &str, mut pos: usize, hint: &mut Option<Hint>) -> usize {
    let bytes = sql.as_bytes();
    loop {
        while bytes.get(pos).is_some_and(u8::is_ascii_whitespace) {
            pos += 1;
        }
        let rest = &bytes[pos.min(bytes.len())..];
        let comment_end =
            if rest.starts_with(b"/*") && !rest.starts_with(b"/*!") && !rest.starts_with(b"/*M!") {
                find(rest, b"*/").map_or(rest.len(), |i| i + 2)
            } else if rest.starts_with(b"#") || rest.starts_with(b"-- ") || rest.starts_with(b"--\t") {
                find(rest, b"\n").map_or(rest.len(), |i| i + 1)
            } else {
                return pos;
            };
        if let Some(h) = hint_in(&rest[..comment_end]) {
            *hint = Some(h);
        }
        pos += comment_end;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The hint in one comment's text, if any.
pub fn hint_in(comment: &[u8]) -> Option<Hint> {
    let at = find(comment, b"rwproxy:")?;
    let word = &comment[at + 8..];
    if word.len() >= 7 && word[..7].eq_ignore_ascii_case(b"primary") {
        Some(Hint::Primary)
    } else if word.len() >= 7 && word[..7].eq_ignore_ascii_case(b"replica") {
        Some(Hint::Replica)
    } else if word.len() >= 6 && word[..6].eq_ignore_ascii_case(b"after=") {
        Some(Hint::After)
    } else {
        None
    }
}

/// True when nothing in the statement can make a read anything but a plain read: no word that
/// marks a locking read, a side effect, a write or a hint, no `@`, `;`, `:=` and no executable
/// comment. It looks at every word, inside strings and comments too, so it can only err towards
/// "not plain", which sends the statement on to the full token scan. Unbalanced quotes are
/// not plain either.
pub fn plainly_read(sql: &str) -> bool {
    let bytes = sql.as_bytes();
    let mut quotes = [0usize; 3];
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match BYTE_CLASS[usize::from(b)] {
            OTHER => {}
            WORD => {
                let start = i;
                while i < bytes.len() && BYTE_CLASS[usize::from(bytes[i])] == WORD {
                    i += 1;
                }
                if suspicious_word(&bytes[start..i]) {
                    return false;
                }
                continue;
            }
            _ => match b {
                b'@' | b';' | b':' => return false,
                b'\'' => quotes[0] += 1,
                b'"' => quotes[1] += 1,
                b'`' => quotes[2] += 1,
                b'/' if bytes.get(i + 1) == Some(&b'*') && matches!(bytes.get(i + 2), Some(b'!' | b'M')) => {
                    return false;
                }
                _ => {}
            },
        }
        i += 1;
    }
    // An odd count may be an unterminated string (or an escaped quote): let the tokenizer judge.
    quotes.iter().all(|q| q % 2 == 0)
}

/// What [`plainly_read`] makes of each byte: one table load per byte instead of a chain of
/// range tests (the scan runs over every read statement).
const OTHER: u8 = 0;
const WORD: u8 = 1;
const MARK: u8 = 2;
static BYTE_CLASS: [u8; 256] = {
    let mut table = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'_' {
            table[b] = WORD;
        }
        b += 1;
    }
    let marks = b"@;:'\"`/";
    let mut m = 0;
    while m < marks.len() {
        table[marks[m] as usize] = MARK;
        m += 1;
    }
    table
};

/// Whether a word is one of those that can make a read more than a plain read. Most words of
/// a read are names and common keywords: the length picks the few candidates to compare.
fn suspicious_word(word: &[u8]) -> bool {
    let candidates: &[&[u8]] = match word.len() {
        3 => &[b"FOR"],
        4 => &[b"LOCK", b"INTO", b"SKIP", b"NEXT"],
        5 => &[b"SLEEP"],
        6 => &[b"NOWAIT", b"INSERT", b"UPDATE", b"DELETE", b"SETVAL"],
        7 => &[b"REPLACE", b"NEXTVAL", b"LASTVAL", b"RWPROXY"],
        8 => &[b"GET_LOCK"],
        9 => &[b"ROW_COUNT", b"BENCHMARK"],
        10 => &[b"FOUND_ROWS", b"UUID_SHORT"],
        12 => &[b"IS_FREE_LOCK", b"IS_USED_LOCK", b"RELEASE_LOCK"],
        14 => &[b"LAST_INSERT_ID"],
        15 => &[b"MASTER_POS_WAIT", b"SOURCE_POS_WAIT"],
        16 => &[b"MASTER_GTID_WAIT"],
        17 => &[b"RELEASE_ALL_LOCKS"],
        19 => &[b"SQL_CALC_FOUND_ROWS"],
        26 => &[b"WAIT_FOR_EXECUTED_GTID_SET"],
        33 => &[b"WAIT_UNTIL_SQL_THREAD_AFTER_GTIDS"],
        _ => return false,
    };
    // The first letter turns most candidates away before the whole comparison.
    let first = word[0].to_ascii_uppercase();
    candidates.iter().any(|candidate| candidate[0] == first && candidate.eq_ignore_ascii_case(word))
}

#[cfg(test)]
pub(super) fn is_suspicious(word: &str) -> bool {
    suspicious_word(word.as_bytes())
}
