//! Small wire-format helpers: length-encoded integers, status flags in OK/EOF, and the
//! OK/ERR/EOF packets rwproxy writes itself.

/// Decodes a length-encoded integer; returns the value and the bytes it used.
pub fn lenenc_int(buf: &[u8]) -> Option<(u64, usize)> {
    let (&first, rest) = buf.split_first()?;
    let width = match first {
        0..=0xFA => return Some((u64::from(first), 1)),
        0xFC => 2,
        0xFD => 3,
        0xFE => 8,
        _ => return None,
    };
    let bytes = rest.get(..width)?;
    let value = bytes.iter().rev().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
    Some((value, 1 + width))
}

pub fn put_lenenc_int(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=0xFA => out.push(v as u8),
        0xFB..=0xFFFF => {
            out.push(0xFC);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xFF_FFFF => {
            out.push(0xFD);
            out.extend_from_slice(&(v as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xFE);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

pub fn put_lenenc_str(out: &mut Vec<u8>, s: &[u8]) {
    put_lenenc_int(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// What rwproxy reads from an OK packet or an EOF packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OkFields {
    pub affected_rows: u64,
    pub insert_id: u64,
    pub status: u16,
    pub warnings: u16,
}

/// An OK packet (header 0x00 or 0xFE): header, affected rows, last insert id, the 2-byte
/// status, the 2-byte warning count.
pub fn ok_fields(payload: &[u8]) -> Option<OkFields> {
    let mut pos = 1;
    let (affected_rows, used) = lenenc_int(payload.get(pos..)?)?;
    pos += used;
    let (insert_id, used) = lenenc_int(payload.get(pos..)?)?;
    pos += used;
    let bytes = payload.get(pos..pos + 2)?;
    let status = u16::from_le_bytes([bytes[0], bytes[1]]);
    // Servers always send the warning count with PROTOCOL_41; a short packet counts none.
    let warnings = payload.get(pos + 2..pos + 4).map_or(0, |w| u16::from_le_bytes([w[0], w[1]]));
    Some(OkFields { affected_rows, insert_id, status, warnings })
}

/// Status flags of an OK packet.
pub fn status_of_ok(payload: &[u8]) -> Option<u16> {
    ok_fields(payload).map(|f| f.status)
}

/// A pre-DEPRECATE_EOF EOF packet: 0xFE, warnings (2), status (2).
pub fn eof_fields(payload: &[u8]) -> Option<OkFields> {
    let bytes = payload.get(1..5)?;
    Some(OkFields {
        affected_rows: 0,
        insert_id: 0,
        warnings: u16::from_le_bytes([bytes[0], bytes[1]]),
        status: u16::from_le_bytes([bytes[2], bytes[3]]),
    })
}

/// Status flags of a pre-DEPRECATE_EOF EOF packet.
pub fn status_of_eof(payload: &[u8]) -> Option<u16> {
    eof_fields(payload).map(|f| f.status)
}

/// An ERR packet payload (CLIENT_PROTOCOL_41 form).
pub fn err_packet(code: u16, sql_state: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + message.len());
    out.push(0xFF);
    out.extend_from_slice(&code.to_le_bytes());
    out.push(b'#');
    let mut state = [b'H', b'Y', b'0', b'0', b'0'];
    for (dst, src) in state.iter_mut().zip(sql_state.bytes()) {
        *dst = src;
    }
    out.extend_from_slice(&state);
    out.extend_from_slice(message.as_bytes());
    out
}

/// An ERR packet sent instead of the greeting: nothing is negotiated yet, so it has no SQLSTATE
/// (a client would print the marker as part of the message).
pub fn err_packet_before_greeting(code: u16, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + message.len());
    out.push(0xFF);
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(message.as_bytes());
    out
}

/// Parses a server's greeting. mysql_common's parser computes the scramble length as
/// `len as i8 - 8`, which overflows (a panic with overflow checks) for a length byte of
/// 0x80..=0x87 that no server sends: such a greeting is refused here first, and any other
/// panic in the parser becomes an error too (the bytes come from the network).
pub fn parse_greeting(payload: &[u8]) -> Result<mysql_common::packets::HandshakePacket<'_>, String> {
    let version_end = payload.iter().skip(1).position(|b| *b == 0).map(|i| i + 1);
    // After the version's NUL: connection id (4), scramble (8), filler (1), capabilities (2),
    // collation (1), status (2), capabilities (2), then the scramble length.
    let length_byte = version_end.and_then(|end| payload.get(end + 1 + 20));
    if length_byte.is_some_and(|len| (0x80..=0x87).contains(len)) {
        return Err("bad greeting: impossible scramble length".into());
    }
    let parsed = std::panic::catch_unwind(|| {
        mysql_common::io::ParseBuf(payload).parse::<mysql_common::packets::HandshakePacket<'_>>(())
    });
    match parsed {
        Ok(Ok(greeting)) => Ok(greeting),
        Ok(Err(e)) => Err(format!("bad greeting: {e}")),
        Err(_) => Err("bad greeting: unparsable".into()),
    }
}

/// A plain OK packet payload with the given status flags.
pub fn ok_packet(status: u16) -> Vec<u8> {
    let mut out = vec![0x00, 0, 0];
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

/// The packet that ends a result set: an old-style EOF, or an OK with 0xFE header.
pub fn eof_packet(status: u16, deprecate_eof: bool) -> Vec<u8> {
    if deprecate_eof {
        let mut out = ok_packet(status);
        out[0] = 0xFE;
        out
    } else {
        let mut out = vec![0xFE, 0, 0];
        out.extend_from_slice(&status.to_le_bytes());
        out
    }
}

/// A column definition (protocol 4.1) for a text column in a result rwproxy builds itself.
/// `extended_metadata`: the client negotiated MariaDB's extended type info, whose (here empty)
/// block sits between the names and the fixed fields.
pub fn text_column(name: &str, extended_metadata: bool) -> Vec<u8> {
    let mut out = column_names(name, extended_metadata);
    out.extend_from_slice(&45u16.to_le_bytes()); // utf8mb4_general_ci
    out.extend_from_slice(&1024u32.to_le_bytes());
    out.push(0xFD); // MYSQL_TYPE_VAR_STRING
    out.extend_from_slice(&[0, 0]); // flags
    out.push(0x1F); // decimals: not a fixed-decimal column
    out.extend_from_slice(&[0, 0]);
    out
}

/// A column definition up to its fixed fields: the names (a computed column: no schema or
/// table), the extended-metadata block when negotiated, and the fixed fields' length.
fn column_names(name: &str, extended_metadata: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + name.len());
    for part in [&b"def"[..], b"", b"", b"", name.as_bytes(), b""] {
        put_lenenc_str(&mut out, part);
    }
    if extended_metadata {
        put_lenenc_int(&mut out, 0);
    }
    out.push(0x0C);
    out
}

/// An integer column that is never NULL, as a server describes a function's result.
#[derive(Debug, Clone, Copy)]
pub struct IntegerColumn {
    /// MYSQL_TYPE_LONG (0x03) or MYSQL_TYPE_LONGLONG (0x08).
    pub type_code: u8,
    pub length: u32,
    pub unsigned: bool,
}

impl IntegerColumn {
    /// `CONNECTION_ID()`: MariaDB sends an unsigned INT, MySQL an unsigned BIGINT.
    pub fn connection_id(mariadb: bool) -> IntegerColumn {
        IntegerColumn { type_code: if mariadb { 0x03 } else { 0x08 }, length: 10, unsigned: true }
    }

    /// `ROW_COUNT()`: a signed BIGINT.
    pub fn row_count() -> IntegerColumn {
        IntegerColumn { type_code: 0x08, length: 21, unsigned: false }
    }

    pub fn definition(self, name: &str, extended_metadata: bool) -> Vec<u8> {
        let mut out = column_names(name, extended_metadata);
        out.extend_from_slice(&63u16.to_le_bytes()); // binary
        out.extend_from_slice(&self.length.to_le_bytes());
        out.push(self.type_code);
        let unsigned = if self.unsigned { 0x0020 } else { 0 };
        out.extend_from_slice(&(0x0001u16 | unsigned | 0x0080).to_le_bytes()); // NOT NULL, BINARY
        out.push(0);
        out.extend_from_slice(&[0, 0]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_greeting_with_an_impossible_scramble_length_is_an_error_not_a_panic() {
        // Found by the handshake fuzz target: mysql_common computes `len as i8 - 8`.
        let mut greeting = b"\x0a10.11.6-MariaDB\x00".to_vec();
        greeting.extend_from_slice(&[7, 0, 0, 0]);
        greeting.extend_from_slice(b"abcdefgh\x00");
        greeting.extend_from_slice(&[0xfe, 0xf7, 0x2d, 0x02, 0x00, 0xbf, 0x81, 0x81]);
        greeting.extend_from_slice(&[0; 10]);
        greeting.extend_from_slice(b"ijklmnopqrst\x00mysql_native_password\x00");
        assert!(parse_greeting(&greeting).is_err());
        greeting[16 + 1 + 20] = 21;
        assert!(parse_greeting(&greeting).is_ok(), "the same greeting with a real length parses");
    }

    #[test]
    fn lenenc_round_trip() {
        for v in [0u64, 250, 251, 0xFFFF, 0x1_0000, 0xFF_FFFF, 0x100_0000, u64::MAX] {
            let mut out = Vec::new();
            put_lenenc_int(&mut out, v);
            assert_eq!(lenenc_int(&out), Some((v, out.len())), "value {v}");
        }
        assert_eq!(lenenc_int(&[0xFC, 1]), None);
        assert_eq!(lenenc_int(&[0xFF]), None);
        assert_eq!(lenenc_int(&[]), None);
    }

    #[test]
    fn status_flags_are_found() {
        assert_eq!(status_of_ok(&ok_packet(0x4003)), Some(0x4003));
        assert_eq!(status_of_ok(&[0x00, 0xFC, 1, 0, 5, 0x01, 0x00]), Some(1));
        assert_eq!(status_of_ok(&[0x00, 0xFC]), None);
        assert_eq!(status_of_eof(&eof_packet(0x0A, false)), Some(0x0A));
        assert_eq!(status_of_ok(&eof_packet(0x0A, true)), Some(0x0A));
    }

    #[test]
    fn err_packet_layout() {
        let p = err_packet(1045, "28000", "Access denied");
        assert_eq!(&p[..9], &[0xFF, 0x15, 0x04, b'#', b'2', b'8', b'0', b'0', b'0']);
        assert_eq!(&p[9..], b"Access denied");
    }
}
