//! Entry points for the fuzz targets (`fuzz/`) and their bounded run in the test suite: each
//! feeds arbitrary bytes to the parsers that read network or file input. None may panic, and
//! each must finish in time proportional to its input.

use mysql_common::constants::CapabilityFlags as Caps;
use mysql_common::io::ParseBuf;
use mysql_common::packets::AuthSwitchRequest;

use crate::protocol::packet::Header;
use crate::protocol::session_track::{self, Visible};
use crate::protocol::{Progress, ResponseKind, ResponseTracker};

/// Server bytes as the relay reads them: packets framed by their headers, fed to the response
/// tracker of the kind the first byte picks; every OK also goes through the session-track
/// reader and rewriter.
pub fn mysql_response(data: &[u8]) {
    let Some((&pick, mut rest)) = data.split_first() else { return };
    let kind = [
        ResponseKind::Query,
        ResponseKind::Execute,
        ResponseKind::Rows,
        ResponseKind::Prepare,
        ResponseKind::Single,
    ][usize::from(pick % 5)];
    let mut tracker = ResponseTracker::new(kind, pick & 0x10 != 0);
    let visible = Visible {
        client_tracks: pick & 0x20 != 0,
        hide_last_gtid: pick & 0x40 != 0,
        hide_gtids: pick & 0x80 != 0,
        // The kind takes the low bits; state-change hiding goes with GTID hiding (both are on
        // for every connection rwproxy sets them up on).
        hide_state_change: pick & 0x80 != 0,
    };
    // Bounded: every pass consumes at least a header.
    while let Some(header) = rest.get(..4) {
        let header = Header::decode([header[0], header[1], header[2], header[3]]);
        let Some(payload) = rest.get(4..4 + header.len) else { return };
        rest = &rest[4 + header.len..];
        let first = payload.first().copied().unwrap_or(0);
        if first == 0x00 || first == 0xFE {
            let _ = session_track::tracked_of_ok(payload);
            let _ = session_track::rewrite_ok(payload, visible);
        }
        match tracker.accept(first, header.len, payload) {
            Ok(Progress::More) => {}
            Ok(Progress::LocalInfile) => tracker.after_local_infile(),
            Ok(Progress::Done(_)) | Err(_) => return,
        }
    }
}

/// The connection phase from both sides: a client's login, SSLRequest, COM_CHANGE_USER; a
/// server's greeting and auth switch (parsed by mysql_common, whose panics would be ours).
pub fn handshake(data: &[u8]) {
    let offered = crate::session::handshake::OFFERED_CAPS | Caps::CLIENT_SSL;
    let _ = crate::session::handshake::is_tls_request(data);
    let mariadb = mysql_common::constants::MariadbCapabilities::MARIADB_CLIENT_EXTENDED_METADATA;
    let _ = crate::session::handshake::parse_login(data, offered, mariadb);
    let _ = crate::session::handshake::parse_change_user(data, offered);
    let _ = crate::protocol::wire::parse_greeting(data);
    let _ = ParseBuf(data).parse::<AuthSwitchRequest>(());
}

/// SQL text as clients send it: classification, the `EXPLAIN ROUTE` form, position tokens,
/// assigned user variables, the statement digest (key and text; raw bytes, as they arrive).
pub fn classifier(data: &[u8]) {
    let sql = String::from_utf8_lossy(data);
    let _ = crate::classifier::classify(&sql);
    let _ = crate::classifier::explain_route_target(&sql);
    let _ = crate::consistency::Position::parse(&sql);
    let _ = crate::classifier::assigned_user_variables(&sql);
    let _ = crate::digests::key(data);
    let digests = crate::digests::Digests::new(1, 4);
    digests.record(
        0,
        crate::digests::Seen::text(data),
        crate::digests::Run {
            on_primary: true,
            reason: "fuzz",
            took: std::time::Duration::ZERO,
            error: false,
        },
    );
}

/// HTTP/1 request and response heads and chunked bodies.
pub fn http(data: &[u8]) {
    crate::http::fuzz_h1(data);
}

/// A config file's text (`${VAR}` substitution, TOML, validation).
pub fn config(data: &[u8]) {
    let _ = crate::config::Config::from_toml(&String::from_utf8_lossy(data));
}
