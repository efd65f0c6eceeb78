//! User variables whose values the server made (`@v := …`, `SELECT … INTO @v`, `SET @v =
//! (SELECT …)`). Without multiplexing they simply stay on the session's connection. With it,
//! rwproxy reads them back on the connection that made them, right after the statement, and
//! records `SET @v = <literal of the same type>` in the session's settings: the values then move
//! to any connection the session borrows, like `SET @v = 1`, and the session is not pinned.
//! What cannot be read back exactly (warnings the read would clear, names rwproxy cannot
//! quote, types it does not know) keeps the `user_variables` pin.

use super::Session;
use crate::backend::Cell;
use crate::classifier::assigned_user_variables;
use crate::protocol::command;

/// The largest value carried (bytes of its text or hex): larger ones keep the pin.
const MAX_VALUE: usize = 64 * 1024;

impl Session {
    /// After a statement that gave user variables server-made values on `backend` and
    /// succeeded: with multiplexing they move with the session when they can be read back
    /// (not when the statement left warnings or other state its session may read next: the
    /// read-back would clear it), and then the session is pinned for them no more than before
    /// the statement.
    pub(super) async fn settle_user_variables(&mut self, sql: &str, backend: usize, pinned_before: bool) {
        if self.multiplexing()
            && self.keep_for_next.is_none()
            && self.carry_user_variables(sql, backend).await
        {
            self.state.view.user_variables_on_primary = pinned_before;
        }
    }

    /// After a statement that gave user variables server-made values on `backend`: reads them
    /// back and records them as settings. Returns whether that worked (the session need not
    /// be pinned for them).
    async fn carry_user_variables(&mut self, sql: &str, backend: usize) -> bool {
        let Some(names) = assigned_user_variables(sql) else { return false };
        if names.is_empty() {
            return true;
        }
        let extended = self
            .login
            .mariadb_caps
            .contains(mysql_common::constants::MariadbCapabilities::MARIADB_CLIENT_EXTENDED_METADATA);
        let Some(conn) = self.conns.get_mut(backend).and_then(Option::as_mut) else { return false };
        let row = match conn.query_row(&read_back_sql(&names), extended).await {
            Ok(Some(row)) if row.len() == names.len() * 4 => row,
            Ok(_) => return false,
            Err(e) => {
                tracing::debug!(session = self.id, error = %e, "user variables could not be read back; the session keeps its connection");
                return false;
            }
        };
        let mut sets = Vec::with_capacity(names.len());
        for (name, cells) in names.iter().zip(row.chunks(4)) {
            let Some(literal) = literal(cells) else { return false };
            let mut payload = vec![command::QUERY];
            payload.extend_from_slice(format!("SET @{name} = {literal}").as_bytes());
            sets.push(payload);
        }
        if !sets.iter().all(|set| self.state.history.has_room_for(set)) {
            return false;
        }
        for set in &sets {
            self.remember_session_command(set, backend);
        }
        true
    }
}

/// `SELECT @a, HEX(@a), CHARSET(@a), COLLATION(@a), @b, …`: the value (its column type says
/// the variable's type), and for strings their bytes and character set.
fn read_back_sql(names: &[String]) -> String {
    let columns: Vec<String> =
        names.iter().map(|n| format!("@{n}, HEX(@{n}), CHARSET(@{n}), COLLATION(@{n})")).collect();
    format!("SELECT {}", columns.join(", "))
}

/// A literal that gives a user variable the same value and type, from its four cells.
fn literal(cells: &[Cell]) -> Option<String> {
    let [value, hex, charset, collation] = cells else { return None };
    let Some(bytes) = &value.value else { return Some("NULL".into()) };
    // A number's text (a string's bytes are read as hex below: they need not be UTF-8).
    let text = std::str::from_utf8(bytes).unwrap_or_default();
    let only = |allowed: &[u8]| {
        !text.is_empty()
            && text.len() <= MAX_VALUE
            && text.bytes().all(|b| b.is_ascii_digit() || allowed.contains(&b))
    };
    match value.column_type {
        // TINY, SHORT, LONG, INT24, LONGLONG: an integer literal (one over i64 is unsigned).
        1 | 2 | 3 | 8 | 9 if only(b"-") => Some(text.to_string()),
        // DECIMAL, NEWDECIMAL: the same scale.
        0 | 246 if only(b"-.") => {
            let scale = text.split_once('.').map_or(0, |(_, fraction)| fraction.len());
            (scale <= 30).then(|| format!("CAST({text} AS DECIMAL(65, {scale}))"))
        }
        // FLOAT, DOUBLE: an exponent makes the literal a double.
        4 | 5 if only(b"-.e+") => {
            Some(if text.contains('e') { text.to_string() } else { format!("{text}e0") })
        }
        // Strings: their bytes in their character set and collation.
        15 | 249..=254 => {
            let name = |cell: &Cell| {
                let bytes = cell.value.as_deref()?;
                let ok = !bytes.is_empty() && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
                ok.then(|| String::from_utf8_lossy(bytes).into_owned())
            };
            let hex = hex
                .value
                .as_deref()
                .filter(|h| h.len() <= 2 * MAX_VALUE && h.iter().all(u8::is_ascii_hexdigit))?;
            let hex = std::str::from_utf8(hex).ok()?;
            let (charset, collation) = (name(charset)?, name(collation)?);
            Some(if charset == "binary" {
                format!("_binary X'{hex}'")
            } else {
                format!("_{charset} X'{hex}' COLLATE {collation}")
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(column_type: u8, value: Option<&str>) -> Cell {
        Cell { column_type, collation: 33, value: value.map(|v| v.as_bytes().to_vec()) }
    }

    fn of(column_type: u8, value: Option<&str>, hex: &str, charset: &str, collation: &str) -> Option<String> {
        literal(&[
            cell(column_type, value),
            cell(253, Some(hex)),
            cell(253, Some(charset)),
            cell(253, Some(collation)),
        ])
    }

    #[test]
    fn literals_keep_value_and_type() {
        assert_eq!(of(8, Some("-42"), "", "binary", "binary").as_deref(), Some("-42"));
        assert_eq!(
            of(8, Some("18446744073709551615"), "", "binary", "binary").as_deref(),
            Some("18446744073709551615")
        );
        assert_eq!(
            of(246, Some("1.50"), "", "binary", "binary").as_deref(),
            Some("CAST(1.50 AS DECIMAL(65, 2))")
        );
        assert_eq!(of(246, Some("7"), "", "binary", "binary").as_deref(), Some("CAST(7 AS DECIMAL(65, 0))"));
        assert_eq!(of(5, Some("0.1"), "", "binary", "binary").as_deref(), Some("0.1e0"));
        assert_eq!(of(5, Some("1e20"), "", "binary", "binary").as_deref(), Some("1e20"));
        assert_eq!(
            of(253, Some("hé"), "68C3A9", "utf8mb4", "utf8mb4_general_ci").as_deref(),
            Some("_utf8mb4 X'68C3A9' COLLATE utf8mb4_general_ci")
        );
        assert_eq!(of(251, Some("\u{0}"), "00", "binary", "binary").as_deref(), Some("_binary X'00'"));
        let not_utf8 = [
            Cell { column_type: 251, collation: 63, value: Some(vec![0, 255]) },
            cell(253, Some("00FF")),
            cell(253, Some("binary")),
            cell(253, Some("binary")),
        ];
        assert_eq!(literal(&not_utf8).as_deref(), Some("_binary X'00FF'"));
        assert_eq!(
            of(253, Some(""), "", "latin1", "latin1_swedish_ci").as_deref(),
            Some("_latin1 X'' COLLATE latin1_swedish_ci")
        );
        assert_eq!(of(6, None, "", "binary", "binary").as_deref(), Some("NULL"));
    }

    #[test]
    fn anything_odd_is_refused() {
        assert_eq!(of(8, Some("1; DROP TABLE t"), "", "binary", "binary"), None);
        assert_eq!(of(5, Some("inf"), "", "binary", "binary"), None);
        assert_eq!(of(253, Some("x"), "78", "utf8'", "x"), None);
        assert_eq!(of(253, Some("x"), "7G", "utf8mb4", "utf8mb4_bin"), None);
        assert_eq!(of(245, Some("{}"), "7B7D", "utf8mb4", "utf8mb4_bin"), None);
    }
}
