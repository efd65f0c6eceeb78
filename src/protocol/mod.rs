//! The MySQL wire protocol, pure: framing, response boundaries, and the few packets rwproxy
//! writes itself. Nothing here knows about sockets beyond `AsyncRead`/`AsyncWrite`, config or
//! routing, so it can be unit-tested and benchmarked alone.

pub mod errors;
pub mod packet;
pub mod response;
pub mod session_track;
pub mod wire;

pub use packet::{Header, Logical, MAX_PAYLOAD, PacketError};
pub use response::{FoundRows, Outcome, Prepared, Progress, ResponseError, ResponseKind, ResponseTracker};

/// Command bytes (first byte of a client command packet).
pub mod command {
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const STATISTICS: u8 = 0x09;
    pub const PING: u8 = 0x0E;
    pub const CHANGE_USER: u8 = 0x11;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1A;
    pub const SET_OPTION: u8 = 0x1B;
    pub const STMT_FETCH: u8 = 0x1C;
    pub const RESET_CONNECTION: u8 = 0x1F;
}

/// Server status flags rwproxy acts on.
pub const IN_TRANS: u16 = 0x0001;
pub const AUTOCOMMIT: u16 = 0x0002;
pub const MORE_RESULTS_EXISTS: u16 = 0x0008;
pub const CURSOR_EXISTS: u16 = 0x0040;
