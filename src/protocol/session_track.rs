//! Session-state tracking data in OK packets (CLIENT_SESSION_TRACK): reading the GTID of a
//! write out of it, and taking out what the client did not ask for.
//!
//! rwproxy's backend connections always track the transaction position (MariaDB's `last_gtid`
//! system variable, MySQL's `session_track_gtids = OWN_GTID`), whatever the client negotiated.
//! They also track session-state changes (`session_track_state_change`): the server then says
//! when a statement left state in the connection, which tells multiplexing about state the
//! statement's text did not show (a stored procedure that created a temporary table).
//! The OK packets it relays are rewritten to what the client would get from the server
//! directly: without CLIENT_SESSION_TRACK no state at all, with it no entry rwproxy added.

use super::wire::{lenenc_int, put_lenenc_int, put_lenenc_str};

/// SERVER_SESSION_STATE_CHANGED: the OK packet carries session-state data.
pub const STATE_CHANGED: u16 = 0x4000;

/// Entry types of the session-state data.
const TRACK_SYSTEM_VARIABLES: u8 = 0x00;
const TRACK_STATE_CHANGE: u8 = 0x02;
const TRACK_GTIDS: u8 = 0x03;

/// The system variable MariaDB reports a write's GTID in.
pub const LAST_GTID: &[u8] = b"last_gtid";

/// An OK packet (header 0x00, or 0xFE ending a result set with CLIENT_DEPRECATE_EOF), as
/// sent on a connection with CLIENT_SESSION_TRACK.
#[derive(Debug, PartialEq, Eq)]
struct TrackedOk<'a> {
    /// Header, affected rows, last insert id: copied as they are.
    head: &'a [u8],
    status: u16,
    warnings: [u8; 2],
    info: &'a [u8],
    /// The entries of the session-state data, when STATE_CHANGED is set.
    state: &'a [u8],
}

fn lenenc_str(buf: &[u8]) -> Option<(&[u8], usize)> {
    let (len, used) = lenenc_int(buf)?;
    let len = usize::try_from(len).ok()?;
    let bytes = buf.get(used..used.checked_add(len)?)?;
    Some((bytes, used + len))
}

fn parse(payload: &[u8]) -> Option<TrackedOk<'_>> {
    let mut pos = 1;
    for _ in 0..2 {
        pos += lenenc_int(payload.get(pos..)?)?.1;
    }
    let head = payload.get(..pos)?;
    let status = u16::from_le_bytes([*payload.get(pos)?, *payload.get(pos + 1)?]);
    let warnings = [*payload.get(pos + 2)?, *payload.get(pos + 3)?];
    pos += 4;
    let (info, used) = if pos < payload.len() { lenenc_str(&payload[pos..])? } else { (&[][..], 0) };
    pos += used;
    let state =
        if status & STATE_CHANGED != 0 && pos < payload.len() { lenenc_str(&payload[pos..])?.0 } else { &[] };
    Some(TrackedOk { head, status, warnings, info, state })
}

/// One entry of the session-state data: its type and its data.
fn entries(state: &[u8]) -> impl Iterator<Item = (u8, &[u8], &[u8])> {
    let mut rest = state;
    std::iter::from_fn(move || {
        let (&kind, after) = rest.split_first()?;
        let (data, used) = lenenc_str(after)?;
        let whole = &rest[..1 + used];
        rest = &after[used..];
        Some((kind, data, whole))
    })
}

/// What an OK packet of a connection with session tracking tells rwproxy.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tracked {
    /// The GTID a write produced: MariaDB's `last_gtid` variable or MySQL's GTID entry.
    pub gtid: Option<String>,
    /// The server says the statement changed session state (`session_track_state_change`).
    pub state_changed: bool,
}

impl Tracked {
    /// Adds what a later OK packet of the same response said (a statement may answer with
    /// several: `CALL`, multi-statements).
    pub fn add(&mut self, later: Tracked) {
        if later.gtid.is_some() {
            self.gtid = later.gtid;
        }
        self.state_changed |= later.state_changed;
    }
}

/// Reads [`Tracked`] from an OK packet; the default when it carries no session-state data.
pub fn tracked_of_ok(payload: &[u8]) -> Tracked {
    let mut found = Tracked::default();
    let Some(ok) = parse(payload) else { return found };
    for (kind, data, _) in entries(ok.state) {
        match kind {
            TRACK_SYSTEM_VARIABLES => {
                if let Some(value) = last_gtid_value(data) {
                    found.gtid = Some(String::from_utf8_lossy(value).into_owned());
                }
            }
            // One byte of encoding specification, then the GTID set as a string.
            TRACK_GTIDS => {
                if let Some((set, _)) = data.get(1..).and_then(lenenc_str)
                    && !set.is_empty()
                {
                    found.gtid = Some(String::from_utf8_lossy(set).into_owned());
                }
            }
            TRACK_STATE_CHANGE => found.state_changed |= data == b"1",
            _ => {}
        }
    }
    found
}

/// The value of a system-variable entry when it is a non-empty `last_gtid`.
fn last_gtid_value(data: &[u8]) -> Option<&[u8]> {
    let (name, used) = lenenc_str(data)?;
    let (value, _) = lenenc_str(&data[used..])?;
    (name.eq_ignore_ascii_case(LAST_GTID) && !value.is_empty()).then_some(value)
}

/// What the client may see of the session-state data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visible {
    /// The client negotiated CLIENT_SESSION_TRACK.
    pub client_tracks: bool,
    /// rwproxy added `last_gtid` to the tracked variables: its entries go.
    pub hide_last_gtid: bool,
    /// rwproxy turned on `session_track_gtids`: GTID entries go.
    pub hide_gtids: bool,
    /// rwproxy turned on `session_track_state_change`: its entries go.
    pub hide_state_change: bool,
}

/// The OK packet the client should get instead of `payload`, or `None` when `payload` is
/// already right. The info text is kept as the server encodes it (length-prefixed).
pub fn rewrite_ok(payload: &[u8], visible: Visible) -> Option<Vec<u8>> {
    let ok = parse(payload)?;
    if ok.status & STATE_CHANGED == 0 && (visible.client_tracks || ok.info.is_empty()) {
        return None;
    }
    let mut kept = Vec::new();
    if visible.client_tracks {
        for (kind, data, whole) in entries(ok.state) {
            if !hidden(visible, kind, data) {
                kept.extend_from_slice(whole);
            }
        }
        if kept.len() == ok.state.len() {
            return None;
        }
    }
    let mut status = ok.status;
    if kept.is_empty() {
        status &= !STATE_CHANGED;
    }
    let mut out = Vec::with_capacity(payload.len());
    out.extend_from_slice(ok.head);
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(&ok.warnings);
    // As the server writes it: the info field only when there is something to say or state
    // follows.
    if !ok.info.is_empty() || !kept.is_empty() {
        put_lenenc_str(&mut out, ok.info);
    }
    if !kept.is_empty() {
        put_lenenc_int(&mut out, kept.len() as u64);
        out.extend_from_slice(&kept);
    }
    Some(out)
}

/// Whether [`rewrite_ok`] would leave `payload` as it is, without building the rewritten
/// packet (the relay asks for every OK packet it passes straight through).
pub fn unchanged_for(payload: &[u8], visible: Visible) -> bool {
    let Some(ok) = parse(payload) else { return true };
    if ok.status & STATE_CHANGED == 0 && (visible.client_tracks || ok.info.is_empty()) {
        return true;
    }
    visible.client_tracks
        && entries(ok.state)
            .filter(|(kind, data, _)| !hidden(visible, *kind, data))
            .map(|(_, _, whole)| whole.len())
            .sum::<usize>()
            == ok.state.len()
}

/// Whether a session-state entry is rwproxy's own tracking, which the client does not see.
fn hidden(visible: Visible, kind: u8, data: &[u8]) -> bool {
    match kind {
        TRACK_SYSTEM_VARIABLES => {
            visible.hide_last_gtid
                && lenenc_str(data).is_some_and(|(name, _)| name.eq_ignore_ascii_case(LAST_GTID))
        }
        TRACK_GTIDS => visible.hide_gtids,
        TRACK_STATE_CHANGE => visible.hide_state_change,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An OK packet with session-state `entries` (type, data).
    fn ok(status: u16, info: &[u8], entries: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![0x00, 1, 0];
        out.extend_from_slice(&status.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        let mut state = Vec::new();
        for (kind, data) in entries {
            state.push(*kind);
            put_lenenc_str(&mut state, data);
        }
        if !info.is_empty() || !state.is_empty() {
            put_lenenc_str(&mut out, info);
        }
        if !state.is_empty() {
            put_lenenc_str(&mut out, &state);
        }
        out
    }

    fn var(name: &str, value: &str) -> (u8, Vec<u8>) {
        let mut data = Vec::new();
        put_lenenc_str(&mut data, name.as_bytes());
        put_lenenc_str(&mut data, value.as_bytes());
        (TRACK_SYSTEM_VARIABLES, data)
    }

    fn gtids(set: &str) -> (u8, Vec<u8>) {
        let mut data = vec![0];
        put_lenenc_str(&mut data, set.as_bytes());
        (TRACK_GTIDS, data)
    }

    fn changed() -> (u8, Vec<u8>) {
        (TRACK_STATE_CHANGE, b"1".to_vec())
    }

    #[test]
    fn a_state_change_is_read_and_hidden_when_rwproxy_asked_for_it() {
        // As MariaDB answers `CALL p()` where p creates a temporary table.
        let packet = ok(STATE_CHANGED | 2, b"", &[changed()]);
        assert_eq!(tracked_of_ok(&packet), Tracked { gtid: None, state_changed: true });
        assert!(!tracked_of_ok(&ok(2, b"", &[])).state_changed);
        let ours =
            Visible { client_tracks: true, hide_last_gtid: true, hide_gtids: true, hide_state_change: true };
        assert_eq!(rewrite_ok(&packet, ours), Some(ok(2, b"", &[])));
        let set =
            ok(STATE_CHANGED | 2, b"", &[var("time_zone", "+01:00"), changed(), var("last_gtid", "0-1-9")]);
        assert_eq!(tracked_of_ok(&set), Tracked { gtid: Some("0-1-9".into()), state_changed: true });
        assert_eq!(rewrite_ok(&set, ours), Some(ok(STATE_CHANGED | 2, b"", &[var("time_zone", "+01:00")])));
        let theirs = Visible { hide_state_change: false, ..ours };
        assert_eq!(rewrite_ok(&packet, theirs), None, "the client tracks state changes itself");
    }

    #[test]
    fn later_ok_packets_of_a_response_add_to_what_earlier_ones_said() {
        let mut seen = Tracked { gtid: Some("0-1-1".into()), state_changed: true };
        seen.add(Tracked::default());
        assert_eq!(seen, Tracked { gtid: Some("0-1-1".into()), state_changed: true }, "nothing new: kept");
        seen.add(Tracked { gtid: Some("0-1-2".into()), state_changed: false });
        assert_eq!(seen, Tracked { gtid: Some("0-1-2".into()), state_changed: true }, "the last write's");
    }

    #[test]
    fn mariadb_last_gtid_is_read() {
        let packet = ok(STATE_CHANGED | 2, b"", &[var("autocommit", "ON"), var("last_gtid", "0-1-7")]);
        assert_eq!(tracked_of_ok(&packet).gtid.as_deref(), Some("0-1-7"));
        assert_eq!(tracked_of_ok(&ok(2, b"", &[])).gtid, None);
        assert_eq!(tracked_of_ok(&ok(STATE_CHANGED, b"", &[var("last_gtid", "")])).gtid, None);
    }

    #[test]
    fn mysql_own_gtid_is_read() {
        let uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562:23";
        let packet = ok(STATE_CHANGED | 2, b"", &[gtids(uuid)]);
        assert_eq!(tracked_of_ok(&packet).gtid.as_deref(), Some(uuid));
    }

    #[test]
    fn a_client_without_tracking_gets_no_state() {
        let packet = ok(STATE_CHANGED | 2, b"", &[var("last_gtid", "0-1-7")]);
        let visible =
            Visible { client_tracks: false, hide_last_gtid: true, hide_gtids: true, hide_state_change: true };
        assert_eq!(rewrite_ok(&packet, visible), Some(ok(2, b"", &[])));
        let with_info = ok(STATE_CHANGED | 2, b"Rows matched: 1", &[var("last_gtid", "0-1-7")]);
        assert_eq!(rewrite_ok(&with_info, visible), Some(ok(2, b"Rows matched: 1", &[])));
        assert_eq!(rewrite_ok(&ok(2, b"", &[]), visible), None, "nothing to change");
    }

    #[test]
    fn a_tracking_client_keeps_what_it_asked_for() {
        let visible =
            Visible { client_tracks: true, hide_last_gtid: true, hide_gtids: false, hide_state_change: true };
        let packet = ok(STATE_CHANGED | 2, b"", &[var("autocommit", "OFF"), var("last_gtid", "0-1-7")]);
        assert_eq!(
            rewrite_ok(&packet, visible),
            Some(ok(STATE_CHANGED | 2, b"", &[var("autocommit", "OFF")]))
        );
        let only_ours = ok(STATE_CHANGED | 2, b"", &[var("last_gtid", "0-1-7")]);
        assert_eq!(rewrite_ok(&only_ours, visible), Some(ok(2, b"", &[])));
        let theirs = Visible { hide_last_gtid: false, ..visible };
        assert_eq!(rewrite_ok(&packet, theirs), None, "the client tracks last_gtid itself");
    }

    #[test]
    fn unchanged_for_says_what_rewrite_ok_does() {
        let packets = [
            ok(2, b"", &[]),
            ok(2, b"Rows matched: 1", &[]),
            ok(STATE_CHANGED | 2, b"", &[var("last_gtid", "0-1-7")]),
            ok(STATE_CHANGED | 2, b"", &[var("autocommit", "OFF"), var("last_gtid", "0-1-7")]),
            ok(STATE_CHANGED | 2, b"", &[var("autocommit", "OFF")]),
            ok(STATE_CHANGED | 2, b"", &[gtids("0-1-7")]),
            ok(STATE_CHANGED | 2, b"", &[changed()]),
            ok(STATE_CHANGED | 2, b"", &[var("time_zone", "+01:00"), changed()]),
        ];
        for client_tracks in [false, true] {
            for hide in 0..8u8 {
                let visible = Visible {
                    client_tracks,
                    hide_last_gtid: hide & 1 != 0,
                    hide_gtids: hide & 2 != 0,
                    hide_state_change: hide & 4 != 0,
                };
                for packet in &packets {
                    assert_eq!(
                        unchanged_for(packet, visible),
                        rewrite_ok(packet, visible).is_none(),
                        "{visible:?} {packet:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn truncated_packets_are_left_alone() {
        let packet = ok(STATE_CHANGED | 2, b"", &[var("last_gtid", "0-1-7")]);
        let visible =
            Visible { client_tracks: false, hide_last_gtid: true, hide_gtids: true, hide_state_change: true };
        for cut in 0..packet.len() - 1 {
            let _ = rewrite_ok(&packet[..cut], visible);
            let _ = unchanged_for(&packet[..cut], visible);
            let _ = tracked_of_ok(&packet[..cut]).gtid;
        }
    }
}
