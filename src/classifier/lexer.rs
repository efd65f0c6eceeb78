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
        return Lead {
            hint,
            ..Lead::default()
        };
    };
    let second = words_after(sql, end, 1).next();
    Lead {
        first_word: Some(first),
        first_word_end: end,
        second_word: second,
        hint,
    }
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
    let len = bytes
        .get(pos..)?
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count();
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
        let comment_end = if rest.starts_with(b"/*")
            && !rest.starts_with(b"/*!")
            && !rest.starts_with(b"/*M!")
        {
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
    } else {
        None
    }
}
