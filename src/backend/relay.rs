//! Relaying one backend response to the client, packet by packet, with back-pressure.
//!
//! Only packets that decide where the response ends are read whole; column definitions and
//! rows stream from the backend socket to the client socket through fixed buffers, so memory
//! stays flat whatever the result size.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use super::BackendConn;
use crate::protocol::packet::{self, Header, PacketError};
use crate::protocol::session_track;
use crate::protocol::{Outcome, Progress, ResponseKind, ResponseTracker};

/// A checksum of the result bytes of one response (column count, definitions, rows; not the
/// OK/EOF/ERR around them), to tell whether two servers gave a statement the same answer.
#[derive(Debug, Clone, Default)]
pub struct Digest {
    hasher: std::collections::hash_map::DefaultHasher,
    /// Result bytes seen.
    pub bytes: u64,
}

impl Digest {
    pub fn update(&mut self, bytes: &[u8]) {
        use std::hash::Hasher;
        self.hasher.write(bytes);
        self.bytes += bytes.len() as u64;
    }

    pub fn value(&self) -> u64 {
        use std::hash::Hasher;
        self.hasher.finish()
    }
}

/// Which side of the proxy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

#[derive(Debug, thiserror::Error)]
#[error("{side:?} side: {message}")]
pub struct RelayError {
    pub side: Side,
    /// Whether any byte of the response reached the client; if not, the statement may be
    /// retried elsewhere without the client noticing.
    pub touched_client: bool,
    pub message: String,
}

struct Relay<'a, CR, CW> {
    conn: &'a mut BackendConn,
    client_r: &'a mut CR,
    client_w: &'a mut CW,
    touched: bool,
    scratch: Vec<u8>,
}

/// Relays the response to the command just sent on `conn`. `statement_id` replaces the
/// backend's statement id in a COM_STMT_PREPARE answer. The answer's last bytes stay in
/// `client_w`'s buffer: the caller flushes once it has recorded what the answer says (a write's
/// position must be known before the client can act on its OK, e.g. read on another
/// connection).
pub async fn relay_response<CR, CW>(
    conn: &mut BackendConn,
    kind: ResponseKind,
    client_r: &mut CR,
    client_w: &mut CW,
    statement_id: Option<u32>,
) -> Result<Outcome, RelayError>
where
    CR: AsyncBufRead + Unpin,
    CW: AsyncWrite + Unpin,
{
    let mut tracker = ResponseTracker::new(kind, conn.deprecate_eof());
    let mut relay = Relay { conn, client_r, client_w, touched: false, scratch: Vec::new() };
    relay.run(&mut tracker, statement_id).await
}

impl<CR: AsyncBufRead + Unpin, CW: AsyncWrite + Unpin> Relay<'_, CR, CW> {
    fn fail(&self, side: Side, message: String) -> RelayError {
        RelayError { side, touched_client: self.touched, message }
    }

    async fn run(
        &mut self,
        tracker: &mut ResponseTracker,
        statement_id: Option<u32>,
    ) -> Result<Outcome, RelayError> {
        let mut continued = false;
        loop {
            if !continued && let Some(outcome) = self.relay_buffered_run(tracker, statement_id).await? {
                return Ok(outcome);
            }
            let header = self.backend_header().await?;
            if continued {
                // The tail of a logical packet over 16 MiB: opaque bytes.
                if let Some(digest) = self.conn.digest.as_mut() {
                    digest.update(&header.encode());
                }
                self.write_client(&header.encode()).await?;
                self.stream(header.len).await?;
                continued = header.is_continued();
                continue;
            }
            continued = header.is_continued();
            let first = self.peek_first(header.len).await?;
            let progress = if tracker.needs_payload(first, header.len) {
                self.scratch.clear();
                packet::read_payload_into(&mut self.conn.reader, header.len, &mut self.scratch)
                    .await
                    .map_err(|e| self.fail(Side::Backend, e.to_string()))?;
                let mut header = header;
                if !continued {
                    self.inspect(tracker, first, &mut header);
                }
                let progress = tracker
                    .accept(first, header.len, &self.scratch)
                    .map_err(|e| self.fail(Side::Backend, e.to_string()))?;
                // The answer to COM_STMT_PREPARE starts with the statement id the client must use.
                if let Some(id) = statement_id
                    && !self.touched
                    && first == 0x00
                    && self.scratch.len() >= 5
                {
                    self.scratch[1..5].copy_from_slice(&id.to_le_bytes());
                }
                let scratch = std::mem::take(&mut self.scratch);
                self.write_client(&header.encode()).await?;
                self.write_client(&scratch).await?;
                self.scratch = scratch;
                progress
            } else {
                let progress = tracker
                    .accept(first, header.len, &[])
                    .map_err(|e| self.fail(Side::Backend, e.to_string()))?;
                if let Some(digest) = self.conn.digest.as_mut() {
                    digest.update(&header.encode());
                }
                self.write_client(&header.encode()).await?;
                self.stream(header.len).await?;
                progress
            };
            match progress {
                Progress::More => {}
                Progress::Done(outcome) if !continued => return Ok(outcome),
                Progress::Done(_) => {
                    return Err(self.fail(Side::Backend, "response ended inside a packet".into()));
                }
                Progress::LocalInfile => {
                    Box::pin(self.upload_local_infile()).await?;
                    tracker.after_local_infile();
                }
            }
        }
    }

    /// The fast path: every complete packet already in the read buffer is accounted for and
    /// copied to the client in one write, straight from the buffer. Packets the tracker reads
    /// whole (the column count, OK, EOF, ERR) are read in place; one that must change on its way
    /// (an OK packet losing session-state data, an EOF losing a flag, a prepare's statement id)
    /// ends the run and goes the slow way. Returns the outcome if the run ended the response.
    async fn relay_buffered_run(
        &mut self,
        tracker: &mut ResponseTracker,
        statement_id: Option<u32>,
    ) -> Result<Option<Outcome>, RelayError> {
        let buf = self.conn.reader.buffer();
        // A digest hashes inspected packets apart from their headers: the slow path keeps that.
        let in_place = statement_id.is_none() && self.conn.digest.is_none();
        let mut end = 0;
        let mut done = None;
        while done.is_none() && buf.len() >= end + 5 {
            let header = Header::decode([buf[end], buf[end + 1], buf[end + 2], buf[end + 3]]);
            let first = buf[end + 4];
            if header.len == 0 || header.is_continued() || buf.len() < end + 4 + header.len {
                break;
            }
            let payload = &buf[end + 4..end + 4 + header.len];
            let seen: &[u8] = if !tracker.needs_payload(first, header.len) {
                &[]
            } else if in_place
                && let Some(tracked) = unchanged_on_the_way(tracker, first, payload, self.conn.visible)
            {
                self.conn.tracked.add(tracked);
                payload
            } else {
                break;
            };
            match tracker.accept(first, header.len, seen) {
                Ok(Progress::More) => {}
                Ok(Progress::Done(outcome)) => done = Some(outcome),
                Ok(Progress::LocalInfile) | Err(_) => {
                    return Err(self.fail(Side::Backend, "unexpected packet in a row run".into()));
                }
            }
            end += 4 + header.len;
        }
        if end > 0 {
            if let Some(digest) = self.conn.digest.as_mut() {
                digest.update(&buf[..end]);
            }
            self.touched = true;
            let write = self.client_w.write_all(&buf[..end]).await;
            write.map_err(|e| RelayError {
                side: Side::Client,
                touched_client: true,
                message: e.to_string(),
            })?;
            self.conn.reader.consume(end);
        }
        Ok(done)
    }

    async fn backend_header(&mut self) -> Result<Header, RelayError> {
        match packet::read_header(&mut self.conn.reader).await {
            Ok(Some(h)) => Ok(h),
            Ok(None) => Err(self.fail(Side::Backend, "backend closed the connection".into())),
            Err(e) => Err(self.fail(Side::Backend, e.to_string())),
        }
    }

    /// The first payload byte, without consuming it (0 for an empty packet).
    async fn peek_first(&mut self, len: usize) -> Result<u8, RelayError> {
        if len == 0 {
            return Ok(0);
        }
        match self.conn.reader.fill_buf().await {
            Ok([first, ..]) => Ok(*first),
            Ok([]) => Err(self.fail(Side::Backend, PacketError::Truncated.to_string())),
            Err(e) => Err(self.fail(Side::Backend, e.to_string())),
        }
    }

    async fn write_client(&mut self, bytes: &[u8]) -> Result<(), RelayError> {
        self.touched = true;
        self.client_w.write_all(bytes).await.map_err(|e| self.fail(Side::Client, e.to_string()))
    }

    /// Copies `len` payload bytes from the backend to the client.
    async fn stream(&mut self, len: usize) -> Result<(), RelayError> {
        self.touched = true;
        copy_exact(&mut self.conn.reader, &mut *self.client_w, len, self.conn.digest.as_mut())
            .await
            .map_err(|(side, m)| self.fail(side, m))
    }

    /// A packet read whole, before it is accepted and relayed: an OK packet gives up the GTID
    /// of a write and loses the session-state data the client did not ask for; an old-style
    /// EOF loses the state-changed flag for a client without tracking; anything else that is
    /// part of a result (the column count) goes into the digest.
    fn inspect(&mut self, tracker: &ResponseTracker, first: u8, header: &mut Header) {
        if tracker.is_ok_packet(first, header.len) {
            self.conn.tracked.add(session_track::tracked_of_ok(&self.scratch));
            if let Some(rewritten) = session_track::rewrite_ok(&self.scratch, self.conn.visible) {
                self.scratch = rewritten;
                header.len = self.scratch.len();
            }
        } else if tracker.is_eof_packet(first, header.len) {
            self.conn.tracked.state_changed |= eof_state_changed(&self.scratch);
            if !self.conn.visible.client_tracks && self.scratch.len() >= 5 {
                self.scratch[4] &= !EOF_STATE_CHANGED;
            }
        } else if !matches!(first, 0xFE | 0xFF)
            && let Some(digest) = self.conn.digest.as_mut()
        {
            digest.update(&self.scratch);
        }
    }

    /// LOCAL INFILE: the client sends the file as packets ending with an empty one; they go to
    /// the backend unchanged, and the backend then answers as usual.
    async fn upload_local_infile(&mut self) -> Result<(), RelayError> {
        self.client_w.flush().await.map_err(|e| self.fail(Side::Client, e.to_string()))?;
        // Bounded by the client: every iteration consumes one client packet.
        loop {
            let header = match packet::read_header(&mut *self.client_r).await {
                Ok(Some(h)) => h,
                Ok(None) => {
                    return Err(self.fail(Side::Client, "client closed during LOCAL INFILE".into()));
                }
                Err(e) => return Err(self.fail(Side::Client, e.to_string())),
            };
            self.conn
                .writer
                .write_all(&header.encode())
                .await
                .map_err(|e| self.fail(Side::Backend, e.to_string()))?;
            let copied = copy_exact(&mut *self.client_r, &mut self.conn.writer, header.len, None).await;
            // Flip sides: here the client is the reader and the backend the writer.
            copied.map_err(|(side, m)| {
                let side = if side == Side::Backend { Side::Client } else { Side::Backend };
                self.fail(side, m)
            })?;
            if header.len == 0 {
                break;
            }
        }
        self.conn.writer.flush().await.map_err(|e| self.fail(Side::Backend, e.to_string()))
    }
}

/// Whether a packet the tracker reads whole can reach the client as the backend sent it, and
/// if so what an OK packet's session-state data says: `None` when it must change first (see
/// [`Relay::inspect`]) or when it asks for a LOCAL INFILE upload (the slow path runs that).
fn unchanged_on_the_way(
    tracker: &ResponseTracker,
    first: u8,
    payload: &[u8],
    visible: session_track::Visible,
) -> Option<session_track::Tracked> {
    if first == 0xFB {
        return None;
    }
    if tracker.is_ok_packet(first, payload.len()) {
        if !session_track::unchanged_for(payload, visible) {
            return None;
        }
        return Some(session_track::tracked_of_ok(payload));
    }
    if tracker.is_eof_packet(first, payload.len()) {
        let state_changed = eof_state_changed(payload);
        if state_changed && !visible.client_tracks {
            return None;
        }
        return Some(session_track::Tracked { gtid: None, state_changed });
    }
    Some(session_track::Tracked::default())
}

/// Whether an old-style EOF packet has the state-changed status flag. It carries no
/// session-state data to say what changed, so this errs on the safe side: a result set whose
/// statement also wrote (a stored function that inserts) counts as a state change too.
fn eof_state_changed(payload: &[u8]) -> bool {
    payload.len() >= 5 && payload[4] & EOF_STATE_CHANGED != 0
}

/// The state-changed flag in an old-style EOF packet's fifth byte (the status's high byte).
const EOF_STATE_CHANGED: u8 = (session_track::STATE_CHANGED >> 8) as u8;

/// Copies exactly `len` bytes; an error says whether reading (`Backend`) or writing (`Client`)
/// failed.
async fn copy_exact<R, W>(
    from: &mut R,
    to: &mut W,
    mut len: usize,
    mut digest: Option<&mut Digest>,
) -> Result<(), (Side, String)>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while len > 0 {
        let chunk = from.fill_buf().await.map_err(|e| (Side::Backend, e.to_string()))?;
        if chunk.is_empty() {
            return Err((Side::Backend, PacketError::Truncated.to_string()));
        }
        let n = chunk.len().min(len);
        if let Some(digest) = digest.as_mut() {
            digest.update(&chunk[..n]);
        }
        to.write_all(&chunk[..n]).await.map_err(|e| (Side::Client, e.to_string()))?;
        from.consume(n);
        len -= n;
    }
    Ok(())
}

impl BackendConn {
    /// Sends a command rwproxy issues on its own behalf (a replayed `SET`, a lazy prepare, a
    /// reset) and reads its whole response without passing anything to a client.
    pub async fn run_silently(&mut self, payload: &[u8], kind: ResponseKind) -> Result<Outcome, String> {
        self.send(0, payload).await.map_err(|e| e.to_string())?;
        relay_response(self, kind, &mut tokio::io::empty(), &mut tokio::io::sink(), None)
            .await
            .map_err(|e| e.message)
    }
}
