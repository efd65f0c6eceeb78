//! Physical packet framing: a 3-byte little-endian length and a sequence id.
//!
//! rwproxy relays *physical* packets so that a 1 GiB result set or a 20 MiB row never has to be
//! held whole: only packets whose content decides what happens next are read into memory.
//! (`mysql_common`'s codec joins logical packets before handing them out, which is what we must
//! avoid on the relay path; we use it for message structs instead.)

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest payload one physical packet carries; a payload of exactly this size is continued by
/// the next packet (possibly empty).
pub const MAX_PAYLOAD: usize = 0xFF_FFFF;

#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed in the middle of a packet")]
    Truncated,
    #[error("packet of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("packet out of order: expected sequence id {expected}, got {got}")]
    OutOfOrder { expected: u8, got: u8 },
    #[error("packet of {len} bytes not admitted (memory for packets in flight is in use)")]
    NotAdmitted { len: usize },
}

/// The 4-byte header that precedes every physical packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: usize,
    pub seq: u8,
}

impl Header {
    pub fn decode(bytes: [u8; 4]) -> Self {
        let len = usize::from(bytes[0]) | usize::from(bytes[1]) << 8 | usize::from(bytes[2]) << 16;
        Header { len, seq: bytes[3] }
    }

    pub fn encode(self) -> [u8; 4] {
        let len = self.len.min(MAX_PAYLOAD);
        [len as u8, (len >> 8) as u8, (len >> 16) as u8, self.seq]
    }

    /// A packet of exactly `MAX_PAYLOAD` bytes is followed by a continuation packet.
    pub fn is_continued(self) -> bool {
        self.len == MAX_PAYLOAD
    }
}

/// Appends `payload` to `out` as one logical packet split into physical packets, starting at
/// sequence id `seq`. Returns the sequence id that follows.
pub fn encode_packet(mut seq: u8, payload: &[u8], out: &mut Vec<u8>) -> u8 {
    let mut chunks = payload.chunks(MAX_PAYLOAD);
    let mut last_len = 0;
    for chunk in chunks.by_ref() {
        out.extend_from_slice(&Header { len: chunk.len(), seq }.encode());
        out.extend_from_slice(chunk);
        seq = seq.wrapping_add(1);
        last_len = chunk.len();
    }
    // An empty payload, or one ending exactly on a boundary, needs an (empty) final packet.
    if payload.is_empty() || last_len == MAX_PAYLOAD {
        out.extend_from_slice(&Header { len: 0, seq }.encode());
        seq = seq.wrapping_add(1);
    }
    seq
}

/// Reads one header; `Ok(None)` when the peer closed the connection cleanly between packets.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Header>, PacketError> {
    let mut buf = [0u8; 4];
    let mut filled = 0;
    while filled < 4 {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            return if filled == 0 { Ok(None) } else { Err(PacketError::Truncated) };
        }
        filled += n;
    }
    Ok(Some(Header::decode(buf)))
}

/// Reads `len` payload bytes and appends them to `out`.
pub async fn read_payload_into<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
    out: &mut Vec<u8>,
) -> Result<(), PacketError> {
    // The buffer grows with the bytes that arrive, a step at a time, never from the header's
    // claim alone: a peer that announces 16 MiB and sends nothing costs one step.
    const STEP: usize = 64 * 1024;
    let start = out.len();
    let mut filled = 0;
    while filled < len {
        let end = start + filled + (len - filled).min(STEP);
        out.resize(end, 0);
        match r.read_exact(&mut out[start + filled..end]).await {
            Ok(_) => filled = end - start,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(PacketError::Truncated),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A logical packet read whole: its payload and the sequence id of its last physical packet.
#[derive(Debug)]
pub struct Logical {
    pub payload: Vec<u8>,
    pub first_seq: u8,
    pub last_seq: u8,
}

/// The next logical packet when it is already whole in `r`'s buffer (a command normally
/// arrives in one read): taken without the reader's per-call work. `None` when it is not
/// whole, spans several physical packets or is over `max` bytes; [`read_logical`] then reads
/// it (and refuses it) the usual way.
pub fn take_buffered<R: AsyncRead + Unpin>(r: &mut tokio::io::BufReader<R>, max: usize) -> Option<Logical> {
    let buf = r.buffer();
    let head: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    let header = Header::decode(head);
    if header.is_continued() || header.len > max {
        return None;
    }
    let payload = buf.get(4..4 + header.len)?.to_vec();
    tokio::io::AsyncBufReadExt::consume(r, 4 + header.len);
    Some(Logical { payload, first_seq: header.seq, last_seq: header.seq })
}

/// Reads one logical packet, joining continuations, refusing payloads above `max` bytes.
/// `Ok(None)` when the peer closed cleanly before the first byte.
pub async fn read_logical<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Logical>, PacketError> {
    let Some(first) = read_header(r).await? else {
        return Ok(None);
    };
    read_logical_admitted(r, first, max, |_| true).await.map(Some)
}

/// [`read_logical`] after its first header was read by the caller, asking `admit` before the
/// payload of each physical packet is read (the caller keeps memory for packets in flight on a
/// budget); a packet `admit` refuses is an error and its bytes stay unread.
pub async fn read_logical_admitted<R: AsyncRead + Unpin>(
    r: &mut R,
    first: Header,
    max: usize,
    mut admit: impl FnMut(usize) -> bool,
) -> Result<Logical, PacketError> {
    let mut payload = Vec::new();
    let mut header = first;
    loop {
        if payload.len() + header.len > max {
            return Err(PacketError::TooLarge { len: payload.len() + header.len, max });
        }
        if !admit(header.len) {
            return Err(PacketError::NotAdmitted { len: header.len });
        }
        read_payload_into(r, header.len, &mut payload).await?;
        if !header.is_continued() {
            break;
        }
        let expected = header.seq.wrapping_add(1);
        header = read_header(r).await?.ok_or(PacketError::Truncated)?;
        if header.seq != expected {
            return Err(PacketError::OutOfOrder { expected, got: header.seq });
        }
    }
    Ok(Logical { payload, first_seq: first.seq, last_seq: header.seq })
}

/// Writes one packet (payload under 16 MiB) straight to `w` and flushes it: header and payload
/// in one vectored write, finished with plain writes if the socket takes only part. For a
/// command with nothing buffered before it (every statement), this spares the copy into a
/// write buffer and the flush round.
pub async fn write_packet_direct<W: AsyncWrite + Unpin>(
    w: &mut W,
    seq: u8,
    payload: &[u8],
) -> Result<(), PacketError> {
    debug_assert!(payload.len() < MAX_PAYLOAD);
    let header = Header { len: payload.len(), seq }.encode();
    let written = w.write_vectored(&[std::io::IoSlice::new(&header), std::io::IoSlice::new(payload)]).await?;
    if written < header.len() {
        w.write_all(&header[written..]).await?;
        w.write_all(payload).await?;
    } else {
        w.write_all(&payload[written - header.len()..]).await?;
    }
    w.flush().await?;
    Ok(())
}

/// Writes one logical packet (not flushed): header and payload straight into `w`, which is
/// normally a `BufWriter`, without an intermediate copy. Returns the next sequence id.
pub async fn write_packet<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut seq: u8,
    payload: &[u8],
) -> Result<u8, PacketError> {
    let mut last_len = 0;
    for chunk in payload.chunks(MAX_PAYLOAD) {
        w.write_all(&Header { len: chunk.len(), seq }.encode()).await?;
        w.write_all(chunk).await?;
        seq = seq.wrapping_add(1);
        last_len = chunk.len();
    }
    if payload.is_empty() || last_len == MAX_PAYLOAD {
        w.write_all(&Header { len: 0, seq }.encode()).await?;
        seq = seq.wrapping_add(1);
    }
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header { len: 0x12_3456, seq: 7 };
        assert_eq!(Header::decode(h.encode()), h);
    }

    #[test]
    fn encode_splits_at_boundary() {
        let payload = vec![1u8; MAX_PAYLOAD];
        let mut out = Vec::new();
        let next = encode_packet(0, &payload, &mut out);
        assert_eq!(next, 2, "a full packet is followed by an empty one");
        assert_eq!(out.len(), 4 + MAX_PAYLOAD + 4);
        assert_eq!(Header::decode([out[0], out[1], out[2], out[3]]).len, MAX_PAYLOAD);
    }

    #[tokio::test]
    async fn write_packet_matches_encode_packet() {
        for len in [0, 1, 100, MAX_PAYLOAD, MAX_PAYLOAD + 1] {
            let payload = vec![5u8; len];
            let mut expected = Vec::new();
            let next = encode_packet(9, &payload, &mut expected);
            let mut written = Vec::new();
            assert_eq!(write_packet(&mut written, 9, &payload).await.expect("write"), next);
            assert!(written == expected, "length {len}");
        }
    }

    #[tokio::test]
    async fn read_logical_joins_continuations() {
        let payload: Vec<u8> = (0..MAX_PAYLOAD + 10).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        encode_packet(3, &payload, &mut wire);
        let mut r = &wire[..];
        let got = read_logical(&mut r, usize::MAX).await.expect("read").expect("packet");
        assert_eq!(got.payload, payload);
        assert_eq!((got.first_seq, got.last_seq), (3, 4));
    }

    #[tokio::test]
    async fn read_logical_rejects_oversize_and_truncation() {
        let mut wire = Vec::new();
        encode_packet(0, &[0u8; 100], &mut wire);
        let mut r = &wire[..];
        assert!(matches!(read_logical(&mut r, 50).await, Err(PacketError::TooLarge { .. })));
        let mut r = &wire[..60];
        assert!(matches!(read_logical(&mut r, 1000).await, Err(PacketError::Truncated)));
        let mut r = &wire[..2];
        assert!(matches!(read_logical(&mut r, 1000).await, Err(PacketError::Truncated)));
        let mut r: &[u8] = &[];
        assert!(matches!(read_logical(&mut r, 1000).await, Ok(None)));
    }
}
