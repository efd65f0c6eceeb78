//! Small queries rwproxy runs on its own behalf over a data-path connection: one value back
//! (a wait for a replication position, a server variable), and turning on tracking of the
//! transaction position.

use super::BackendConn;
use crate::protocol::wire::lenenc_int;
use crate::protocol::{MAX_PAYLOAD, command};

impl BackendConn {
    /// Runs `sql` and returns the first column of its first row (`None` for NULL or no row).
    /// The rest of the result is read and dropped. A server error is `Err` with its message;
    /// the connection stays usable then.
    pub async fn query_value(&mut self, sql: &str) -> Result<Option<String>, QueryError> {
        let row = self.first_row(sql, None).await?;
        let value = row.and_then(|cells| cells.into_iter().next()).and_then(|cell| cell.value);
        Ok(value.map(|text| String::from_utf8_lossy(&text).into_owned()))
    }

    /// Runs `sql` and returns its first row with each column's type: `None` when the answer
    /// has no row. `extended_metadata`: the connection's column definitions carry MariaDB's
    /// extended type info (negotiated with the session's client). A server error is `Err`
    /// with its message; the connection stays usable then.
    pub async fn query_row(
        &mut self,
        sql: &str,
        extended_metadata: bool,
    ) -> Result<Option<Vec<Cell>>, QueryError> {
        self.first_row(sql, Some(extended_metadata)).await
    }

    /// Runs `sql` and reads its whole answer; returns the first row. Column types are read
    /// when `extended_metadata` says how the definitions are laid out (`None`: left 0).
    async fn first_row(
        &mut self,
        sql: &str,
        extended_metadata: Option<bool>,
    ) -> Result<Option<Vec<Cell>>, QueryError> {
        let mut payload = Vec::with_capacity(1 + sql.len());
        payload.push(command::QUERY);
        payload.extend_from_slice(sql.as_bytes());
        self.send(0, &payload).await.map_err(|e| QueryError::Lost(e.to_string()))?;
        let first = self.next_payload().await?;
        let columns = match first.first() {
            Some(0xFF) => return Err(QueryError::Server(error_text(&first))),
            Some(0x00) => return Ok(None),
            _ => lenenc_int(&first)
                .map(|(n, _)| n)
                .ok_or_else(|| QueryError::Lost("bad column count".into()))?,
        };
        let mut types = Vec::new();
        for _ in 0..columns {
            let definition = self.next_payload().await?;
            let kind = match extended_metadata {
                Some(extended) => column_type(&definition, extended)
                    .ok_or_else(|| QueryError::Lost("bad column definition".into()))?,
                None => (0, 0),
            };
            types.push(kind);
        }
        if !self.deprecate_eof() {
            self.next_payload().await?;
        }
        let mut first_row = None;
        // Bounded by the result: every iteration consumes one packet.
        loop {
            let row = self.next_payload().await?;
            match row.first() {
                Some(0xFF) => return Err(QueryError::Server(error_text(&row))),
                Some(0xFE) if row.len() < MAX_PAYLOAD && (self.deprecate_eof() || row.len() < 9) => {
                    return Ok(first_row);
                }
                _ if first_row.is_none() => first_row = Some(text_row(&row, &types)?),
                _ => {}
            }
        }
    }

    async fn next_payload(&mut self) -> Result<Vec<u8>, QueryError> {
        self.read_packet().await.map(|p| p.payload).map_err(|e| QueryError::Lost(e.to_string()))
    }

    /// Asks the server to report each write's GTID and each change of session state in its OK
    /// packets, once per connection (and again after a reset). What rwproxy adds is hidden
    /// from the client on relay; what the server or the client tracks already stays visible.
    pub async fn enable_tracking(&mut self) -> Result<(), QueryError> {
        if self.tracking_ready {
            return Ok(());
        }
        self.tracking_ready = true;
        self.visible.hide_last_gtid = false;
        self.visible.hide_gtids = false;
        self.visible.hide_state_change = false;
        if !self.caps.contains(mysql_common::constants::CapabilityFlags::CLIENT_SESSION_TRACK) {
            return Ok(());
        }
        // One question and one setting for both: a connection reset between sessions with
        // different settings runs this again.
        let position =
            if self.mariadb { "@@session_track_system_variables" } else { "@@session_track_gtids" };
        let both = format!("SELECT {position}, @@session_track_state_change");
        let (row, has_state_change) = match self.first_row(&both, None).await {
            Ok(row) => (row.unwrap_or_default(), true),
            // A server that lacks the state-change tracking may still track positions.
            Err(QueryError::Server(_)) => match self.first_row(&format!("SELECT {position}"), None).await {
                Ok(row) => (row.unwrap_or_default(), false),
                // A server without the variables (MariaDB before 10.2, MySQL before 5.7)
                // tracks nothing.
                Err(QueryError::Server(_)) => return Ok(()),
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let text = |i: usize| -> String {
            let value = row.get(i).and_then(|cell| cell.value.as_deref()).unwrap_or_default();
            String::from_utf8_lossy(value).into_owned()
        };
        let state_change = has_state_change.then(|| text(1));
        let (position_setting, state_change_off) =
            tracking_wanted(self.mariadb, &text(0), state_change.as_deref());
        let mut settings: Vec<&str> = position_setting.iter().map(String::as_str).collect();
        if state_change_off {
            settings.push(STATE_CHANGE_ON);
        }
        if settings.is_empty() {
            return Ok(());
        }
        let mut applied = self.try_setting(&format!("SET SESSION {}", settings.join(", "))).await?;
        let mut state_change_applied = applied && state_change_off;
        if !applied
            && state_change_off
            && let Some(position) = &position_setting
        {
            // Refused as a whole: the position's tracking alone may still be taken.
            applied = self.try_setting(&format!("SET SESSION {position}")).await?;
            state_change_applied = false;
        }
        if position_setting.is_some() {
            if self.mariadb {
                self.visible.hide_last_gtid = applied;
            } else {
                self.visible.hide_gtids = applied;
            }
        }
        self.visible.hide_state_change = state_change_applied;
        Ok(())
    }

    /// Runs a setting; `Ok(false)` when the server refused it (the connection then works
    /// without that tracking: reads after its writes ask the primary for its position, state
    /// changes only the statement text shows are seen).
    async fn try_setting(&mut self, sql: &str) -> Result<bool, QueryError> {
        let mut payload = vec![command::QUERY];
        payload.extend_from_slice(sql.as_bytes());
        let outcome = self
            .run_silently(&payload, crate::protocol::ResponseKind::Query)
            .await
            .map_err(QueryError::Lost)?;
        if let Some(code) = outcome.error {
            tracing::debug!(backend = %self.backend.name, %sql, code, "position tracking refused");
        }
        Ok(outcome.error.is_none())
    }
}

const STATE_CHANGE_ON: &str = "session_track_state_change = ON";

/// What a connection's tracking lacks, from the server's current values: the setting that adds
/// the transaction position (MariaDB: `last_gtid` among `session_track_system_variables`,
/// MySQL: `session_track_gtids = OWN_GTID`), and whether `session_track_state_change` is off
/// (`None` when the server has no such variable). The server says when a statement leaves state
/// in the connection: multiplexing then keeps the session on it even when the text did not
/// show the state (a stored procedure that creates a temporary table).
fn tracking_wanted(mariadb: bool, position: &str, state_change: Option<&str>) -> (Option<String>, bool) {
    let position_setting = if mariadb {
        let tracked =
            position == "*" || position.split(',').any(|v| v.trim().eq_ignore_ascii_case("last_gtid"));
        let list =
            if position.is_empty() { "last_gtid".to_string() } else { format!("{position},last_gtid") };
        (!tracked).then(|| format!("session_track_system_variables = '{}'", list.replace('\'', "''")))
    } else {
        position.eq_ignore_ascii_case("OFF").then(|| "session_track_gtids = OWN_GTID".to_string())
    };
    let state_change_off = state_change.is_some_and(|v| !(v == "1" || v.eq_ignore_ascii_case("ON")));
    (position_setting, state_change_off)
}

/// One value of a text-protocol row, with its column's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// The column type (`mysql_common::constants::ColumnType` as its byte).
    pub column_type: u8,
    /// The column's collation id (63: binary).
    pub collation: u16,
    /// The value as text; `None` for NULL.
    pub value: Option<Vec<u8>>,
}

/// The collation and type of a column definition (protocol 4.1): six length-encoded names,
/// MariaDB's extended type info when negotiated, then the fixed fields.
fn column_type(definition: &[u8], extended_metadata: bool) -> Option<(u16, u8)> {
    let mut at = 0;
    for _ in 0..(6 + usize::from(extended_metadata)) {
        let (len, used) = lenenc_int(definition.get(at..)?)?;
        at = at.checked_add(used)?.checked_add(usize::try_from(len).ok()?)?;
    }
    let fixed = definition.get(at..)?;
    let (_, used) = lenenc_int(fixed)?;
    let fixed = fixed.get(used..)?;
    let collation = u16::from_le_bytes([*fixed.first()?, *fixed.get(1)?]);
    Some((collation, *fixed.get(6)?))
}

fn text_row(row: &[u8], types: &[(u16, u8)]) -> Result<Vec<Cell>, QueryError> {
    let mut at = 0;
    let mut cells = Vec::with_capacity(types.len());
    for &(collation, column_type) in types {
        let value = if row.get(at) == Some(&0xFB) {
            at += 1;
            None
        } else {
            let (len, used) =
                row.get(at..).and_then(lenenc_int).ok_or_else(|| QueryError::Lost("bad row".into()))?;
            let start = at + used;
            let end = usize::try_from(len).ok().and_then(|l| start.checked_add(l)).unwrap_or(usize::MAX);
            let bytes = row.get(start..end).ok_or_else(|| QueryError::Lost("bad row".into()))?;
            at = end;
            Some(bytes.to_vec())
        };
        cells.push(Cell { column_type, collation, value });
    }
    Ok(cells)
}

fn error_text(payload: &[u8]) -> String {
    let code = payload.get(1..3).map_or(0, |c| u16::from_le_bytes([c[0], c[1]]));
    let text = payload.get(9..).unwrap_or_default();
    format!("{} ({code})", String::from_utf8_lossy(text))
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The server answered with an error; the connection is fine.
    #[error("{0}")]
    Server(String),
    /// The connection failed.
    #[error("{0}")]
    Lost(String),
}

#[cfg(test)]
mod tests {
    use super::tracking_wanted;

    #[test]
    fn tracking_adds_only_what_the_server_lacks() {
        let list = |l: &str| Some(format!("session_track_system_variables = '{l}'"));
        // MariaDB's default list, an empty one, one that has it, all of them.
        let default = "autocommit,character_set_client,time_zone";
        assert_eq!(
            tracking_wanted(true, default, Some("OFF")),
            (list(&format!("{default},last_gtid")), true)
        );
        assert_eq!(tracking_wanted(true, "", Some("0")), (list("last_gtid"), true));
        assert_eq!(tracking_wanted(true, "time_zone, LAST_GTID", Some("ON")), (None, false));
        assert_eq!(tracking_wanted(true, "*", Some("1")), (None, false));
        assert_eq!(
            tracking_wanted(true, "a'b", None),
            (list("a''b,last_gtid"), false),
            "quoted; no variable"
        );
        // MySQL.
        assert_eq!(
            tracking_wanted(false, "OFF", Some("OFF")),
            (Some("session_track_gtids = OWN_GTID".into()), true)
        );
        assert_eq!(tracking_wanted(false, "ALL_GTIDS", Some("ON")), (None, false));
    }
}
