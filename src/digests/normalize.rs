//! A statement's digest form: literals become `?`, comments go, whitespace runs become one
//! space, and a list of more than three literals (`IN (1, 2, 3, 4)`, many `VALUES` rows' worth)
//! is cut to `?, ?, ?, ...` — so `SELECT v FROM t WHERE id = 5` and `… id = 7` are one
//! statement. The text is made the first time a digest is seen; the key of every statement is
//! hashed by [`super::key`] over the same byte classes.

/// Where the normalized bytes go.
pub trait Sink {
    fn put(&mut self, bytes: &[u8]);
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

/// Byte classes, so that the scan looks each byte up once.
pub(super) const OTHER: u8 = 0;
pub(super) const WORD: u8 = 1;
pub(super) const DIGIT: u8 = 2;
pub(super) const SPACE: u8 = 3;
pub(super) const QUOTE: u8 = 4;
pub(super) const BACKTICK: u8 = 5;

const CLASS: [u8; 256] = {
    let mut class = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        class[b] = if c.is_ascii_digit() {
            DIGIT
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b'$' || c == b'@' || c >= 0x80 {
            WORD
        } else if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            SPACE
        } else if c == b'\'' || c == b'"' {
            QUOTE
        } else if c == b'`' {
            BACKTICK
        } else {
            OTHER
        };
        b += 1;
    }
    class
};

pub(super) fn class(b: u8) -> u8 {
    CLASS[usize::from(b)]
}

/// Feeds `sql` in its digest form to `out`.
pub fn normalize(sql: &[u8], out: &mut impl Sink) {
    let mut w = Writer { out, last: Last::Nothing, space: false, comma: false, run: 0, cut: false };
    let mut i = 0;
    // Bounded by the statement: every branch advances `i`.
    while let Some(&b) = sql.get(i) {
        match class(b) {
            SPACE => {
                w.space = true;
                i += 1;
            }
            WORD => {
                let end = word_end(sql, i);
                let word = &sql[i..end];
                // x'…', b'…', n'…', _utf8mb4'…': one literal.
                let introducer = matches!(word, [b'x' | b'X' | b'b' | b'B' | b'n' | b'N']) || word[0] == b'_';
                if introducer && sql.get(end) == Some(&b'\'') {
                    i = quoted_end(sql, end, b'\'');
                    w.placeholder();
                } else {
                    w.token(word);
                    i = end;
                }
            }
            DIGIT => {
                i = number_end(sql, i);
                w.placeholder();
            }
            QUOTE => {
                i = quoted_end(sql, i, b);
                w.placeholder();
            }
            BACKTICK => {
                let end = quoted_end(sql, i, b'`');
                w.token(&sql[i..end.min(sql.len())]);
                i = end;
            }
            _ => i = punctuation(sql, i, &mut w),
        }
    }
    w.flush_comma();
}

/// Comments, commas, a number written `.5`, any other character: where the scan goes on.
fn punctuation<S: Sink>(sql: &[u8], i: usize, w: &mut Writer<'_, S>) -> usize {
    if let Some(end) = comment_end(sql, i) {
        w.space = true;
        return end;
    }
    let next = sql.get(i + 1).copied();
    match sql[i] {
        b',' => {
            w.comma_seen();
            i + 1
        }
        b'.' if next.is_some_and(|c| class(c) == DIGIT) && w.last != Last::Other => {
            w.placeholder();
            number_end(sql, i)
        }
        _ => {
            w.token(&sql[i..i + 1]);
            i + 1
        }
    }
}

/// Where a comment starting at `i` ends (`#`, `-- `, `/* */`; to the end of an unclosed one),
/// if one starts there.
pub(super) fn comment_end(sql: &[u8], i: usize) -> Option<usize> {
    let next = sql.get(i + 1).copied();
    match sql.get(i)? {
        b'#' => Some(line_end(sql, i)),
        b'-' if next == Some(b'-') && sql.get(i + 2).is_none_or(|c| class(*c) == SPACE) => {
            Some(line_end(sql, i))
        }
        b'/' if next == Some(b'*') => Some(find(sql, i + 2, b"*/").map_or(sql.len(), |end| end + 2)),
        _ => None,
    }
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

fn word_end(sql: &[u8], from: usize) -> usize {
    let rest = sql.get(from..).unwrap_or_default();
    from + rest.iter().position(|&b| !matches!(class(b), WORD | DIGIT)).unwrap_or(rest.len()).max(1)
}

pub(super) fn number_end(sql: &[u8], from: usize) -> usize {
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
pub(super) fn quoted_end(sql: &[u8], from: usize, quote: u8) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn text(sql: &str) -> String {
        let mut t = Text { bytes: Vec::new(), limit: 1024 };
        normalize(sql.as_bytes(), &mut t);
        String::from_utf8(t.bytes).expect("UTF-8 in, UTF-8 out")
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
