//! A statement's digest form: literals become `?`, comments go, whitespace runs become one
//! space, and a list of more than three literals (`IN (1, 2, 3, 4)`, many `VALUES` rows' worth)
//! is cut to `?, ?, ?, ...` — so `SELECT v FROM t WHERE id = 5` and `… id = 7` are one
//! statement. One pass over the bytes; the same pass gives the digest's hash (every statement)
//! or its text (the first time a digest is seen).

/// Where the normalized bytes go.
pub trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

/// FNV-1a over the normalized bytes: the digest's key.
#[derive(Debug)]
pub struct Hash(pub u64);

impl Default for Hash {
    fn default() -> Self {
        Hash(0xcbf2_9ce4_8422_2325)
    }
}

impl Sink for Hash {
    fn put(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The normalized text, cut at `limit` bytes.
#[derive(Debug)]
pub struct Text {
    pub bytes: Vec<u8>,
    pub limit: usize,
}

impl Sink for Text {
    fn put(&mut self, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// Literals kept in a list before the rest of it is cut.
const LIST_KEPT: u32 = 3;

/// What was last put out, for spacing and list cutting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    Nothing,
    Placeholder,
    Other,
}

/// Feeds `sql` in its digest form to `out`.
pub fn normalize(sql: &[u8], out: &mut impl Sink) {
    let mut w = Writer { out, last: Last::Nothing, space: false, comma: false, run: 0, cut: false };
    let mut i = 0;
    // Bounded by the statement: every branch advances `i`.
    while let Some(&b) = sql.get(i) {
        match b {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                w.space = true;
                i += 1;
            }
            b'#' => i = line_end(sql, i),
            b'-' if sql.get(i + 1) == Some(&b'-')
                && sql.get(i + 2).is_none_or(|c| c.is_ascii_whitespace()) =>
            {
                i = line_end(sql, i)
            }
            b'/' if sql.get(i + 1) == Some(&b'*') => {
                i = find(sql, i + 2, b"*/").map_or(sql.len(), |end| end + 2);
                w.space = true;
            }
            b'\'' | b'"' => {
                i = quoted_end(sql, i, b);
                w.placeholder();
            }
            b'`' => {
                let end = quoted_end(sql, i, b'`');
                w.token(&sql[i..end.min(sql.len())]);
                i = end;
            }
            b'0'..=b'9' => {
                i = number_end(sql, i);
                w.placeholder();
            }
            b'.' if sql.get(i + 1).is_some_and(u8::is_ascii_digit) && w.last != Last::Other => {
                i = number_end(sql, i);
                w.placeholder();
            }
            b',' => {
                w.comma_seen();
                i += 1;
            }
            _ if is_word(b) => {
                let end = word_end(sql, i);
                let word = &sql[i..end];
                // x'…', b'…', n'…', _utf8mb4'…': one literal.
                let introducer = matches!(word, [b'x' | b'X' | b'b' | b'B' | b'n' | b'N']) || word[0] == b'_';
                if introducer && matches!(sql.get(end), Some(b'\'')) {
                    i = quoted_end(sql, end, b'\'');
                    w.placeholder();
                } else {
                    w.token(word);
                    i = end;
                }
            }
            _ => {
                // Multi-byte characters are copied whole: `b` starts one, the rest follow.
                let len = utf8_len(b);
                w.token(&sql[i..(i + len).min(sql.len())]);
                i += len;
            }
        }
    }
    w.flush_comma();
}

struct Writer<'a, S: Sink> {
    out: &'a mut S,
    last: Last,
    /// Whitespace (or a comment) since the last token.
    space: bool,
    /// A comma after a literal, held until the next token says whether the list is cut.
    comma: bool,
    /// Literals in the current list so far.
    run: u32,
    /// The current list was cut (`...` is out).
    cut: bool,
}

impl<S: Sink> Writer<'_, S> {
    fn separate(&mut self) {
        if self.space && self.last != Last::Nothing {
            self.out.put(b" ");
        }
        self.space = false;
    }

    fn flush_comma(&mut self) {
        if std::mem::take(&mut self.comma) {
            self.out.put(b",");
        }
    }

    fn comma_seen(&mut self) {
        if self.last == Last::Placeholder && !self.comma {
            self.comma = true;
            self.space = false;
            return;
        }
        self.flush_comma();
        self.separate();
        self.out.put(b",");
        self.last = Last::Other;
        self.run = 0;
        self.cut = false;
    }

    fn placeholder(&mut self) {
        if self.comma && self.run >= LIST_KEPT {
            // The list goes on past what is kept: cut it (once).
            self.comma = false;
            self.space = false;
            if !self.cut {
                self.out.put(b", ...");
                self.cut = true;
            }
            return;
        }
        let continues = self.comma;
        self.flush_comma();
        if !continues {
            self.run = 0;
            self.cut = false;
        }
        self.separate();
        self.out.put(b"?");
        self.last = Last::Placeholder;
        self.run += 1;
    }

    fn token(&mut self, bytes: &[u8]) {
        self.flush_comma();
        self.separate();
        self.out.put(bytes);
        self.last = Last::Other;
        self.run = 0;
        self.cut = false;
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b == b'@' || b >= 0x80
}

fn word_end(sql: &[u8], from: usize) -> usize {
    let mut i = from;
    while sql.get(i).copied().is_some_and(is_word) {
        i += 1;
    }
    i.max(from + 1)
}

fn number_end(sql: &[u8], from: usize) -> usize {
    let mut i = from + 1;
    while let Some(&b) = sql.get(i) {
        let exponent_sign = (b == b'-' || b == b'+') && matches!(sql.get(i - 1), Some(b'e' | b'E'));
        if b.is_ascii_alphanumeric() || b == b'.' || exponent_sign {
            i += 1;
        } else {
            break;
        }
    }
    i
}

/// The end of a quoted run starting at `from` (after its closing quote); doubled quotes and,
/// for strings, backslash escapes stay inside.
fn quoted_end(sql: &[u8], from: usize, quote: u8) -> usize {
    let mut i = from + 1;
    while let Some(&b) = sql.get(i) {
        if b == b'\\' && quote != b'`' {
            i += 2;
        } else if b == quote {
            if sql.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    sql.len()
}

fn line_end(sql: &[u8], from: usize) -> usize {
    find(sql, from, b"\n").map_or(sql.len(), |end| end + 1)
}

fn find(sql: &[u8], from: usize, what: &[u8]) -> Option<usize> {
    sql.get(from..)?.windows(what.len()).position(|w| w == what).map(|at| from + at)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xF7 => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(sql: &str) -> String {
        let mut t = Text { bytes: Vec::new(), limit: 1024 };
        normalize(sql.as_bytes(), &mut t);
        String::from_utf8(t.bytes).expect("UTF-8 in, UTF-8 out")
    }

    fn hash(sql: &str) -> u64 {
        let mut h = Hash::default();
        normalize(sql.as_bytes(), &mut h);
        h.0
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(text("SELECT v FROM t WHERE id = 5"), "SELECT v FROM t WHERE id = ?");
        assert_eq!(
            text("select *  from t\n where a='x''y' and b = \"q\\\"z\""),
            "select * from t where a=? and b = ?"
        );
        assert_eq!(text("SELECT 1.5e-3, .5, 0x1F"), "SELECT ?, ?, ?");
        assert_eq!(text("SELECT x'AB', _utf8mb4'h', -7"), "SELECT ?, ?, -?");
        assert_eq!(text("SELECT 1, 2, 3, 4, 5, -7"), "SELECT ?, ?, ?, ..., -?");
        assert_eq!(
            text("SELECT a1, t2.c3 FROM `t 1` WHERE `x``y` = 1"),
            "SELECT a1, t2.c3 FROM `t 1` WHERE `x``y` = ?"
        );
        assert_eq!(text("SELECT @v, @@session.sql_mode"), "SELECT @v, @@session.sql_mode");
    }

    #[test]
    fn comments_go_and_spaces_collapse() {
        assert_eq!(text("/* rwproxy:primary */ SELECT  1 -- the end\n"), "SELECT ?");
        assert_eq!(text("SELECT 1 # note\nFROM dual"), "SELECT ? FROM dual");
        assert_eq!(text("SELECT 5--1"), "SELECT ?--?");
    }

    #[test]
    fn long_lists_are_cut() {
        assert_eq!(
            text("SELECT * FROM t WHERE id IN (1, 2, 3, 4, 5)"),
            "SELECT * FROM t WHERE id IN (?, ?, ?, ...)"
        );
        assert_eq!(text("SELECT * FROM t WHERE id IN (1,2)"), "SELECT * FROM t WHERE id IN (?,?)");
        assert_eq!(text("INSERT INTO t VALUES (1, 'a'), (2, 'b')"), "INSERT INTO t VALUES (?, ?), (?, ?)");
        assert_eq!(hash("WHERE id IN (1, 2, 3, 4)"), hash("WHERE id IN (9, 8, 7, 6, 5, 4, 3)"));
        assert_ne!(hash("WHERE id IN (1, 2)"), hash("WHERE id IN (1, 2, 3)"));
    }

    #[test]
    fn same_shape_same_hash() {
        assert_eq!(hash("SELECT v FROM t WHERE id = 5"), hash("SELECT v FROM t WHERE id = 77"));
        assert_eq!(hash("SELECT v FROM t WHERE id = 5"), hash("SELECT  v\nFROM t WHERE id = 'x' /* c */"));
        assert_ne!(hash("SELECT v FROM t WHERE id = 5"), hash("SELECT v FROM u WHERE id = 5"));
    }

    #[test]
    fn broken_input_ends_cleanly() {
        for sql in ["SELECT 'open", "SELECT `open", "/* open", "x'", "\u{e9}\u{1F600}", "'\\", "1e-", ""] {
            let _ = text(sql);
        }
        let cut = Text { bytes: Vec::new(), limit: 8 };
        let mut cut = cut;
        normalize(b"SELECT a_long_column FROM t", &mut cut);
        assert_eq!(cut.bytes, b"SELECT a");
    }
}
