//! The digest key, computed for every statement: one pass over the bytes that hashes what
//! [`super::normalize`] keeps — words and punctuation, `?` for each literal, a long literal
//! list cut after three — and ignores whitespace and comments except as the boundary between
//! two words. No call per token and no output buffer: a few instructions per byte.
//!
//! It is a little coarser than the digest text: `id=5` and `id = 7` share a key (and the text
//! of whichever came first), as they are the same statement.

use super::normalize::{BACKTICK, DIGIT, QUOTE, SPACE, WORD, class, comment_end, number_end, quoted_end};

const SEED: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0100_0000_01b3;
/// Hashed for a literal, for a boundary between two words, and once for a cut list.
const LITERAL: u8 = 0;
const BOUNDARY: u8 = 1;
const CUT: u8 = 2;
/// Literals of a list hashed before the rest is cut.
const LIST_KEPT: u32 = 3;

fn mix(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(PRIME)
}

/// What the scan last hashed, for word boundaries and literal lists.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    Nothing,
    Word,
    Literal,
    Other,
}

/// The digest key of a statement.
pub fn key(sql: &[u8]) -> u64 {
    let mut k = Key { h: SEED, last: Last::Nothing, space: false, comma: false, run: 0, cut: false };
    let mut i = 0;
    // Bounded by the statement: every branch advances `i`.
    while let Some(&b) = sql.get(i) {
        i = match class(b) {
            SPACE => {
                k.space = true;
                i + 1
            }
            // A word (digits inside it are part of it): hashed in one tight loop.
            WORD => {
                k.token(Last::Word);
                let mut h = k.h;
                let mut j = i;
                // WORD and DIGIT are 1 and 2: one comparison per byte.
                while let Some(&c) = sql.get(j)
                    && class(c).wrapping_sub(WORD) <= DIGIT - WORD
                {
                    h = mix(h, c);
                    j += 1;
                }
                k.h = h;
                j.max(i + 1)
            }
            // A digit that starts a token starts a number.
            DIGIT => k.literal(number_end(sql, i)),
            QUOTE => k.literal(quoted_end(sql, i, b)),
            BACKTICK => {
                // A quoted name, whole: what is inside is no literal.
                let end = quoted_end(sql, i, b'`').min(sql.len());
                k.token(Last::Other);
                k.h = sql[i..end].iter().fold(k.h, |h, &c| mix(h, c));
                end
            }
            _ => k.punctuation(sql, i),
        };
    }
    k.h
}

struct Key {
    h: u64,
    last: Last,
    /// Whitespace or a comment since the last token.
    space: bool,
    /// A comma after a literal, hashed only once the next token shows the list goes on uncut.
    comma: bool,
    /// Literals of the current list.
    run: u32,
    cut: bool,
}

impl Key {
    /// A word or punctuation starts: the held comma, and the boundary between two words.
    fn token(&mut self, kind: Last) {
        if std::mem::take(&mut self.comma) {
            self.h = mix(self.h, b',');
        }
        if kind == Last::Word && self.last == Last::Word && self.space {
            self.h = mix(self.h, BOUNDARY);
        }
        (self.last, self.space, self.run, self.cut) = (kind, false, 0, false);
    }

    /// A literal ending at `end`; returns `end`.
    fn literal(&mut self, end: usize) -> usize {
        if self.comma && self.run >= LIST_KEPT {
            if !self.cut {
                self.h = mix(self.h, CUT);
                self.cut = true;
            }
        } else {
            if self.comma {
                self.h = mix(self.h, b',');
            } else {
                (self.run, self.cut) = (0, false);
            }
            self.h = mix(self.h, LITERAL);
            self.run += 1;
        }
        (self.comma, self.space, self.last) = (false, false, Last::Literal);
        end
    }

    /// Comments (whitespace to the key), a comma after a literal, any other character.
    fn punctuation(&mut self, sql: &[u8], i: usize) -> usize {
        if let Some(end) = comment_end(sql, i) {
            self.space = true;
            return end;
        }
        let b = sql[i];
        match b {
            b',' if self.last == Last::Literal && !self.comma => {
                self.comma = true;
                i + 1
            }
            _ => {
                self.token(Last::Other);
                self.h = mix(self.h, b);
                i + 1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::key;

    fn k(sql: &str) -> u64 {
        key(sql.as_bytes())
    }

    #[test]
    fn literals_spaces_and_comments_do_not_change_the_key() {
        let base = k("SELECT v FROM t WHERE id = 5");
        for same in [
            "SELECT v FROM t WHERE id = 77",
            "SELECT v FROM t WHERE id = 'x''y'",
            "SELECT  v\nFROM t WHERE id=\"q\" /* note */",
            "/* rwproxy:primary */ SELECT v FROM t WHERE id = 1.5e-3 -- end",
            "SELECT v FROM t # note\nWHERE id = 0x1F",
        ] {
            assert_eq!(k(same), base, "{same}");
        }
        for other in [
            "SELECT v FROM u WHERE id = 5",
            "SELECT vFROM t WHERE id = 5",
            "SELECT v FROM t WHERE id = 5 AND w = 6",
            "SELECT v FROM t WHERE id = v",
            "SELECT v FROM t WHERE id5 = 5",
            "SELECT v FROM `t 1` WHERE id = 5",
        ] {
            assert_ne!(k(other), base, "{other}");
        }
    }

    #[test]
    fn words_with_digits_are_words() {
        assert_ne!(k("SELECT c FROM sbtest1"), k("SELECT c FROM sbtest2"));
        assert_eq!(k("SELECT c FROM sbtest1 WHERE id=5021"), k("SELECT c FROM sbtest1 WHERE id=7"));
        assert_ne!(k("SELECT c FROM `t 1`"), k("SELECT c FROM `t 2`"));
    }

    #[test]
    fn long_lists_are_cut_after_three() {
        assert_eq!(k("WHERE id IN (1, 2, 3, 4)"), k("WHERE id IN (9,8,7,6,5,4,3)"));
        assert_ne!(k("WHERE id IN (1, 2)"), k("WHERE id IN (1, 2, 3)"));
        assert_ne!(k("WHERE id IN (1, 2, 3)"), k("WHERE id IN (1, 2, 3, 4)"));
        assert_eq!(k("VALUES (1, 'a'), (2, 'b')"), k("VALUES (3, 'c'), (4, 'd')"));
        assert_ne!(k("VALUES (1, 'a')"), k("VALUES (1, 'a'), (2, 'b')"));
    }

    #[test]
    fn broken_input_ends_cleanly() {
        for sql in
            ["SELECT 'open", "SELECT `open", "/* open", "x'", "\u{e9}\u{1F600}", "'\\", "1e-", "", "--", "/*"]
        {
            let _ = k(sql);
        }
    }
}
