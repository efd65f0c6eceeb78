//! Where a backend's response ends: a pure state machine fed one logical-packet head at a time.
//!
//! The relay asks [`ResponseTracker::needs_payload`] whether a packet must be read whole (OK, ERR,
//! EOF, column counts, prepare headers) or can be streamed through untouched (column definitions,
//! rows). It then calls [`ResponseTracker::accept`] and learns whether the response goes on,
//! ends, or asks the client for a LOCAL INFILE upload.

use super::wire::{eof_fields, lenenc_int, ok_fields};
use super::{CURSOR_EXISTS, MORE_RESULTS_EXISTS};

/// Which command the response answers; it decides the shape the response may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseKind {
    /// COM_QUERY and single-packet replies (OK / ERR / EOF), including result sets.
    Query,
    /// COM_STMT_EXECUTE: like a query, but a cursor may end the response after the metadata.
    Execute,
    /// COM_STMT_FETCH and COM_FIELD_LIST: rows (or definitions) up to a terminator.
    Rows,
    /// COM_STMT_PREPARE.
    Prepare,
    /// COM_STATISTICS: one packet of text.
    Single,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    First,
    ColumnDefs(u64),
    ColumnsEof,
    Rows,
    PrepareParams(u16, u16),
    PrepareParamsEof(u16),
    PrepareColumns(u16),
    PrepareColumnsEof,
    Done,
}

/// What a COM_STMT_PREPARE answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    pub statement_id: u32,
    pub columns: u16,
    pub params: u16,
}

/// How a completed response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Server status flags from the final OK/EOF, when there was one.
    pub status: Option<u16>,
    /// The error code when the response ended with ERR.
    pub error: Option<u16>,
    pub prepared: Option<Prepared>,
    /// Warnings the final OK/EOF counts (`SHOW WARNINGS` must reach the same connection).
    pub warnings: u16,
    /// The last non-zero `last_insert_id` of an OK packet in the response.
    pub insert_id: u64,
    /// What `ROW_COUNT()` reads after this response, when it is known: the OK's affected rows,
    /// -1 after a result set or an error. `None` after several results (CALL,
    /// multi-statements) and for commands that are no statement.
    pub row_count: Option<i64>,
    /// What the response does to what `FOUND_ROWS()` reads next.
    pub found_rows: FoundRows,
}

/// What a response does to what `FOUND_ROWS()` reads next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FoundRows {
    /// A statement without a result set (or one that failed) leaves it as it was.
    Kept,
    /// A statement's single result set: the rows it returned (what `FOUND_ROWS()` reads after
    /// a SELECT without `SQL_CALC_FOUND_ROWS`).
    Rows(u64),
    /// Several results, or a command that is no statement.
    #[default]
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    More,
    /// The server asked for a LOCAL INFILE upload; the client's packets go to the server next.
    LocalInfile,
    Done(Outcome),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    #[error("malformed {0} packet from backend")]
    Malformed(&'static str),
    #[error("packet after the end of the response")]
    AfterEnd,
}

/// Tracks one response. `deprecate_eof` is whether CLIENT_DEPRECATE_EOF was negotiated.
#[derive(Debug, Clone)]
pub struct ResponseTracker {
    state: State,
    kind: ResponseKind,
    deprecate_eof: bool,
    prepared: Option<Prepared>,
    warnings: u16,
    insert_id: u64,
    /// The affected rows of the OK that ended the last result, if one did.
    affected: Option<u64>,
    /// A result ended with MORE_RESULTS_EXISTS.
    several: bool,
    /// Rows of the current result set so far, and the count of the last one that ended.
    rows: u64,
    result_rows: Option<u64>,
}

impl ResponseTracker {
    pub fn new(kind: ResponseKind, deprecate_eof: bool) -> Self {
        let state = if kind == ResponseKind::Rows { State::Rows } else { State::First };
        ResponseTracker {
            state,
            kind,
            deprecate_eof,
            prepared: None,
            warnings: 0,
            insert_id: 0,
            affected: None,
            several: false,
            rows: 0,
            result_rows: None,
        }
    }

    /// True when the end-of-rows marker may be this packet: 0xFE with a short payload. (A row
    /// starting with 0xFE is an 8-byte length string, so its packet is at least 9 bytes, and with
    /// DEPRECATE_EOF such a row is over 16 MiB.)
    fn is_terminator(&self, first: u8, len: usize) -> bool {
        first == 0xFE && if self.deprecate_eof { len < super::packet::MAX_PAYLOAD } else { len < 9 }
    }

    /// Whether this packet, about to be accepted, is an OK packet (which may carry
    /// session-state data): a plain OK, or the OK that ends rows under CLIENT_DEPRECATE_EOF.
    pub fn is_ok_packet(&self, first: u8, len: usize) -> bool {
        match self.state {
            State::First => {
                self.kind != ResponseKind::Prepare && self.kind != ResponseKind::Single && first == 0x00
                    || self.deprecate_eof && self.is_terminator(first, len)
            }
            State::Rows => self.deprecate_eof && self.is_terminator(first, len),
            _ => false,
        }
    }

    /// Whether this packet, about to be accepted, is an old-style EOF packet (status flags at a
    /// fixed place).
    pub fn is_eof_packet(&self, first: u8, len: usize) -> bool {
        !self.deprecate_eof
            && matches!(self.state, State::First | State::ColumnsEof | State::Rows)
            && self.is_terminator(first, len)
    }

    /// Whether the relay must read this packet's whole payload before calling `accept`.
    pub fn needs_payload(&self, first: u8, len: usize) -> bool {
        match self.state {
            State::ColumnDefs(_) | State::PrepareParams(..) | State::PrepareColumns(_) => false,
            State::Rows => first == 0xFF || self.is_terminator(first, len),
            _ => true,
        }
    }

    /// Feeds one logical packet: its first byte, its length, and its payload when
    /// `needs_payload` said so (an empty slice otherwise).
    pub fn accept(&mut self, first: u8, len: usize, payload: &[u8]) -> Result<Progress, ResponseError> {
        match self.state {
            State::First => self.on_first(first, len, payload),
            State::ColumnDefs(n) => {
                self.state = match (n - 1, self.deprecate_eof) {
                    (0, true) => State::Rows,
                    (0, false) => State::ColumnsEof,
                    (left, _) => State::ColumnDefs(left),
                };
                Ok(Progress::More)
            }
            State::ColumnsEof => self.on_columns_eof(first, len, payload),
            State::Rows => self.on_row(first, len, payload),
            State::PrepareParams(n, cols) => {
                self.state = match (n - 1, self.deprecate_eof) {
                    (0, true) => self.after_params(cols),
                    (0, false) => State::PrepareParamsEof(cols),
                    (left, _) => State::PrepareParams(left, cols),
                };
                Ok(self.progress())
            }
            State::PrepareParamsEof(cols) => {
                self.expect_eof(first, len)?;
                self.state = self.after_params(cols);
                Ok(self.progress())
            }
            State::PrepareColumns(n) => {
                self.state = match (n - 1, self.deprecate_eof) {
                    (0, true) => State::Done,
                    (0, false) => State::PrepareColumnsEof,
                    (left, _) => State::PrepareColumns(left),
                };
                Ok(self.progress())
            }
            State::PrepareColumnsEof => {
                self.expect_eof(first, len)?;
                self.state = State::Done;
                Ok(self.progress())
            }
            State::Done => Err(ResponseError::AfterEnd),
        }
    }

    fn progress(&self) -> Progress {
        if self.state == State::Done {
            Progress::Done(Outcome { prepared: self.prepared, ..Outcome::default() })
        } else {
            Progress::More
        }
    }

    fn expect_eof(&self, first: u8, len: usize) -> Result<(), ResponseError> {
        if self.is_terminator(first, len) { Ok(()) } else { Err(ResponseError::Malformed("EOF")) }
    }

    fn after_params(&self, cols: u16) -> State {
        if cols == 0 { State::Done } else { State::PrepareColumns(cols) }
    }

    fn on_first(&mut self, first: u8, len: usize, payload: &[u8]) -> Result<Progress, ResponseError> {
        match (self.kind, first) {
            (ResponseKind::Single, _) => Ok(self.finish(Outcome::default())),
            (_, 0xFF) => Ok(self.finish(error_outcome(payload))),
            (ResponseKind::Prepare, 0x00) => self.on_prepare_ok(payload),
            (_, 0x00) => {
                let ok = ok_fields(payload).ok_or(ResponseError::Malformed("OK"))?;
                if ok.insert_id != 0 {
                    self.insert_id = ok.insert_id;
                }
                self.affected = Some(ok.affected_rows);
                self.warnings = ok.warnings;
                Ok(self.end_of_result(ok.status))
            }
            (_, 0xFE) if self.is_terminator(first, len) => {
                let status = self.terminator_status(payload)?;
                Ok(self.end_of_result(status))
            }
            (_, 0xFB) => Ok(Progress::LocalInfile),
            _ => {
                let (count, _) = lenenc_int(payload).ok_or(ResponseError::Malformed("column count"))?;
                if count == 0 {
                    return Err(ResponseError::Malformed("column count"));
                }
                self.state = State::ColumnDefs(count);
                self.rows = 0;
                Ok(Progress::More)
            }
        }
    }

    fn on_prepare_ok(&mut self, payload: &[u8]) -> Result<Progress, ResponseError> {
        if payload.len() < 9 {
            return Err(ResponseError::Malformed("prepare OK"));
        }
        let statement_id = u32::from_le_bytes([payload[1], payload[2], payload[3], payload[4]]);
        let columns = u16::from_le_bytes([payload[5], payload[6]]);
        let params = u16::from_le_bytes([payload[7], payload[8]]);
        self.prepared = Some(Prepared { statement_id, columns, params });
        self.state =
            if params > 0 { State::PrepareParams(params, columns) } else { self.after_params(columns) };
        Ok(self.progress())
    }

    fn on_columns_eof(&mut self, first: u8, len: usize, payload: &[u8]) -> Result<Progress, ResponseError> {
        self.expect_eof(first, len)?;
        let status = self.terminator_status(payload)?;
        if self.kind == ResponseKind::Execute && status & CURSOR_EXISTS != 0 {
            // A cursor was opened: rows come later, through COM_STMT_FETCH.
            return Ok(self.finish(Outcome { status: Some(status), ..Outcome::default() }));
        }
        self.state = State::Rows;
        Ok(Progress::More)
    }

    fn on_row(&mut self, first: u8, len: usize, payload: &[u8]) -> Result<Progress, ResponseError> {
        if first == 0xFF {
            return Ok(self.finish(error_outcome(payload)));
        }
        if !self.is_terminator(first, len) {
            self.rows += 1;
            return Ok(Progress::More);
        }
        self.result_rows = Some(self.rows);
        let status = self.terminator_status(payload)?;
        if self.kind == ResponseKind::Rows {
            return Ok(self.finish(Outcome { status: Some(status), ..Outcome::default() }));
        }
        Ok(self.end_of_result(status))
    }

    fn terminator_status(&mut self, payload: &[u8]) -> Result<u16, ResponseError> {
        let fields = if self.deprecate_eof { ok_fields(payload) } else { eof_fields(payload) };
        let fields = fields.ok_or(ResponseError::Malformed("EOF"))?;
        self.warnings = fields.warnings;
        Ok(fields.status)
    }

    /// One result ended; another follows when the server says so (CALL, multi-statements).
    fn end_of_result(&mut self, status: u16) -> Progress {
        if status & MORE_RESULTS_EXISTS != 0 {
            self.state = State::First;
            self.several = true;
            Progress::More
        } else {
            self.finish(Outcome { status: Some(status), ..Outcome::default() })
        }
    }

    fn finish(&mut self, mut outcome: Outcome) -> Progress {
        self.state = State::Done;
        if outcome.error.is_none() {
            outcome.warnings = self.warnings;
        }
        outcome.insert_id = self.insert_id;
        // Only a statement's single result says what ROW_COUNT() and FOUND_ROWS() read next (a
        // cursor's rows are still to come: nothing is known yet then).
        let single = matches!(self.kind, ResponseKind::Query | ResponseKind::Execute) && !self.several;
        let failed = outcome.error.is_some();
        outcome.row_count = match (self.result_rows, self.affected) {
            _ if !single => None,
            _ if failed => Some(-1),
            (Some(_), _) => Some(-1),
            (None, affected) => affected.and_then(|a| i64::try_from(a).ok()),
        };
        outcome.found_rows = match self.result_rows {
            _ if !single => FoundRows::Unknown,
            Some(rows) if !failed => FoundRows::Rows(rows),
            _ => FoundRows::Kept,
        };
        Progress::Done(outcome)
    }

    /// After a LOCAL INFILE upload the server answers with OK or ERR (and maybe more results).
    pub fn after_local_infile(&mut self) {
        self.state = State::First;
    }
}

fn error_outcome(payload: &[u8]) -> Outcome {
    let code = match payload {
        [_, lo, hi, ..] => Some(u16::from_le_bytes([*lo, *hi])),
        _ => Some(0),
    };
    Outcome { error: code, ..Outcome::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(t: &mut ResponseTracker, packets: &[&[u8]]) -> Vec<Progress> {
        packets
            .iter()
            .map(|p| {
                let payload = if t.needs_payload(p[0], p.len()) { *p } else { &[][..] };
                t.accept(p[0], p.len(), payload).expect("valid packet")
            })
            .collect()
    }

    const EOF_MORE: &[u8] = &[0xFE, 0, 0, 0x0A, 0]; // MORE_RESULTS | AUTOCOMMIT
    const EOF_END: &[u8] = &[0xFE, 0, 0, 0x02, 0];
    const COLDEF: &[u8] = &[3, b'd', b'e', b'f', 0, 0, 0, 1, b'a'];

    #[test]
    fn ok_ends_a_query() {
        let mut t = ResponseTracker::new(ResponseKind::Query, false);
        let got = feed(&mut t, &[&[0, 1, 0, 3, 0, 0, 0]]);
        assert_eq!(
            got[0],
            Progress::Done(Outcome {
                status: Some(3),
                row_count: Some(1),
                found_rows: FoundRows::Kept,
                ..Default::default()
            })
        );
    }

    #[test]
    fn result_set_with_old_eof() {
        let mut t = ResponseTracker::new(ResponseKind::Query, false);
        let got = feed(&mut t, &[&[1], COLDEF, EOF_END, &[1, b'x'], &[0xFB], EOF_END]);
        assert_eq!(got[..5], [Progress::More; 5]);
        assert_eq!(
            got[5],
            Progress::Done(Outcome {
                status: Some(2),
                row_count: Some(-1),
                found_rows: FoundRows::Rows(2),
                ..Default::default()
            })
        );
    }

    #[test]
    fn multi_results_then_ok() {
        let mut t = ResponseTracker::new(ResponseKind::Query, false);
        let got = feed(&mut t, &[&[1], COLDEF, EOF_END, &[1, b'x'], EOF_MORE, &[0, 0, 0, 2, 0, 0, 0]]);
        assert!(matches!(got[5], Progress::Done(_)));
        assert!(got[..5].iter().all(|p| *p == Progress::More));
    }

    #[test]
    fn deprecate_eof_has_no_column_eof() {
        let mut t = ResponseTracker::new(ResponseKind::Query, true);
        let ok_end: &[u8] = &[0xFE, 0, 0, 2, 0, 0, 0];
        let got = feed(&mut t, &[&[2], COLDEF, COLDEF, &[1, b'x', 1, b'y'], ok_end]);
        assert!(matches!(got[4], Progress::Done(Outcome { status: Some(2), .. })));
    }

    #[test]
    fn error_mid_rows_ends_response() {
        let mut t = ResponseTracker::new(ResponseKind::Query, true);
        let got = feed(&mut t, &[&[1], COLDEF, &[1, b'x'], &[0xFF, 0x10, 0x04, b'#']]);
        assert!(matches!(got[3], Progress::Done(Outcome { error: Some(0x0410), .. })));
    }

    #[test]
    fn long_row_starting_with_fe_is_not_a_terminator() {
        let t = ResponseTracker { state: State::Rows, ..ResponseTracker::new(ResponseKind::Query, false) };
        assert!(!t.needs_payload(0xFE, 20));
    }

    #[test]
    fn prepare_counts_params_and_columns() {
        let mut t = ResponseTracker::new(ResponseKind::Prepare, false);
        let ok: &[u8] = &[0, 7, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0];
        let got = feed(&mut t, &[ok, COLDEF, COLDEF, EOF_END, COLDEF, EOF_END]);
        let prepared = Prepared { statement_id: 7, columns: 1, params: 2 };
        assert_eq!(got[5], Progress::Done(Outcome { prepared: Some(prepared), ..Default::default() }));
        assert!(got[..5].iter().all(|p| *p == Progress::More));
    }

    #[test]
    fn prepare_without_params_or_columns_is_one_packet() {
        let mut t = ResponseTracker::new(ResponseKind::Prepare, true);
        let got = feed(&mut t, &[&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]);
        assert!(matches!(got[0], Progress::Done(_)));
    }

    #[test]
    fn execute_with_cursor_ends_after_metadata() {
        let mut t = ResponseTracker::new(ResponseKind::Execute, false);
        let got = feed(&mut t, &[&[1], COLDEF, &[0xFE, 0, 0, 0x42, 0]]);
        assert!(matches!(got[2], Progress::Done(_)));
    }

    #[test]
    fn local_infile_then_ok() {
        let mut t = ResponseTracker::new(ResponseKind::Query, false);
        assert_eq!(feed(&mut t, &[&[0xFB, b'f']])[0], Progress::LocalInfile);
        t.after_local_infile();
        assert!(matches!(feed(&mut t, &[&[0, 1, 0, 2, 0, 0, 0]])[0], Progress::Done(_)));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut t = ResponseTracker::new(ResponseKind::Query, false);
        assert!(t.accept(0x00, 1, &[0x00]).is_err());
        let mut t = ResponseTracker::new(ResponseKind::Prepare, false);
        assert!(t.accept(0x00, 2, &[0x00, 1]).is_err());
        let mut t = ResponseTracker::new(ResponseKind::Query, false);
        assert!(t.accept(0xFC, 1, &[0xFC]).is_err());
    }
}

#[cfg(test)]
mod row_count_tests {
    use super::*;

    fn outcome(kind: ResponseKind, packets: &[&[u8]]) -> Outcome {
        let mut t = ResponseTracker::new(kind, false);
        for p in packets {
            let payload = if t.needs_payload(p[0], p.len()) { *p } else { &[][..] };
            if let Progress::Done(outcome) = t.accept(p[0], p.len(), payload).expect("valid packet") {
                return outcome;
            }
        }
        panic!("the response did not end");
    }

    const OK_3_ROWS: &[u8] = &[0x00, 3, 0, 0x02, 0, 0, 0];
    const ERR: &[u8] = &[0xFF, 0x26, 0x04, b'#', b'2', b'3', b'0', b'0', b'0', b'x'];
    const COLUMNS_1: &[u8] = &[1];
    const COLDEF: &[u8] = &[3, b'd', b'e', b'f', 0, 0, 0, 1, b'a'];
    const EOF_END: &[u8] = &[0xFE, 0, 0, 0x02, 0];
    const OK_MORE: &[u8] = &[0x00, 1, 0, 0x0A, 0, 0, 0];

    #[test]
    fn row_count_is_what_the_server_reads_next() {
        assert_eq!(outcome(ResponseKind::Query, &[OK_3_ROWS]).row_count, Some(3));
        assert_eq!(outcome(ResponseKind::Execute, &[OK_3_ROWS]).row_count, Some(3));
        let rows = [COLUMNS_1, COLDEF, EOF_END, &[1, b'x'], EOF_END];
        assert_eq!(outcome(ResponseKind::Query, &rows).row_count, Some(-1));
        assert_eq!(outcome(ResponseKind::Query, &[ERR]).row_count, Some(-1));
        // Several results (CALL, multi-statements) and non-statements: unknown.
        assert_eq!(outcome(ResponseKind::Query, &[OK_MORE, OK_3_ROWS]).row_count, None);
        assert_eq!(outcome(ResponseKind::Rows, &[COLDEF, EOF_END]).row_count, None);
    }

    #[test]
    fn found_rows_follow_result_sets_only() {
        let rows = [COLUMNS_1, COLDEF, EOF_END, &[1, b'x'], &[1, b'y'], EOF_END];
        assert_eq!(outcome(ResponseKind::Query, &rows).found_rows, FoundRows::Rows(2));
        assert_eq!(outcome(ResponseKind::Execute, &rows).found_rows, FoundRows::Rows(2));
        assert_eq!(outcome(ResponseKind::Query, &[OK_3_ROWS]).found_rows, FoundRows::Kept);
        assert_eq!(outcome(ResponseKind::Query, &[ERR]).found_rows, FoundRows::Kept);
        assert_eq!(outcome(ResponseKind::Query, &[OK_MORE, OK_3_ROWS]).found_rows, FoundRows::Unknown);
        assert_eq!(outcome(ResponseKind::Rows, &[COLDEF, EOF_END]).found_rows, FoundRows::Unknown);
    }
}
