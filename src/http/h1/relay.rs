//! Relaying a response body from a server connection to the client, as it is framed: a known
//! length, chunks (passed through as they are, or decoded for an HTTP/1.0 client), or
//! everything until the server closes. The head and the body bytes that came with it leave
//! in one write.

use std::time::Duration;

use bytes::Buf;
use futures_util::FutureExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::chunked::{ChunkError, Chunked};
use super::response::{BodyKind, Relay};
use super::upstream::ServerConn;
use crate::http::dispatch::InFlight;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("server connection failed mid-response: {0}")]
    Server(String),
    #[error("server sent a malformed body: {0}")]
    Body(#[from] ChunkError),
    #[error("no data from the server for {0:?}")]
    ServerTimeout(Duration),
    #[error("client connection failed: {0}")]
    Client(std::io::Error),
    #[error("client did not read for {0:?}")]
    ClientTimeout(Duration),
}

/// Inactivity limits while relaying.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub server_read: Duration,
    pub client_write: Duration,
}

/// Sends the head in `out` and the body after it. `in_flight` (the request's count and
/// connection slot on its server) is released as soon as the server has sent the whole
/// response, before the last write to the client: a client that reads the end of one response
/// may send its next request at once, and it must find the slot free. Returns whether the
/// server connection ended exactly at the end of the response (so it can serve another).
pub async fn body<I: AsyncWrite + Unpin>(
    client: &mut I,
    conn: &mut ServerConn,
    relay: Relay,
    out: &mut Vec<u8>,
    limits: Limits,
    in_flight: InFlight,
) -> Result<bool, RelayError> {
    let mut in_flight = Some(in_flight);
    match relay.body {
        BodyKind::Empty => {
            in_flight.take();
            write(client, out, limits).await?;
        }
        BodyKind::Length(length) => {
            let mut left = length;
            take(conn, out, &mut left);
            // Bounded by the length: every pass relays what one read brought.
            loop {
                if left == 0 {
                    in_flight.take();
                }
                write(client, out, limits).await?;
                if left == 0 {
                    break;
                }
                more(conn, limits).await?;
                out.clear();
                take(conn, out, &mut left);
            }
        }
        BodyKind::Chunked => {
            let mut chunks = Chunked::default();
            // Bounded by the server: each pass relays what one read brought.
            loop {
                let used = if relay.dechunk {
                    chunks.feed(&conn.buf, |data| out.extend_from_slice(data))?
                } else {
                    let used = chunks.feed(&conn.buf, |_| {})?;
                    out.extend_from_slice(&conn.buf[..used]);
                    used
                };
                conn.buf.advance(used);
                if chunks.is_done() {
                    in_flight.take();
                }
                write(client, out, limits).await?;
                if chunks.is_done() {
                    break;
                }
                out.clear();
                more(conn, limits).await?;
            }
        }
        BodyKind::UntilClose => {
            out.extend_from_slice(&conn.buf);
            conn.buf.clear();
            write(client, out, limits).await?;
            // Bounded by the server closing (or the inactivity limit).
            loop {
                match tokio::time::timeout(limits.server_read, conn.read_more()).await {
                    Ok(Ok(0)) => {
                        in_flight.take();
                        break;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(RelayError::Server(e.to_string())),
                    Err(_) => return Err(RelayError::ServerTimeout(limits.server_read)),
                }
                out.clear();
                out.extend_from_slice(&conn.buf);
                conn.buf.clear();
                write(client, out, limits).await?;
            }
            return Ok(false);
        }
    }
    flush(client, limits).await?;
    Ok(conn.buf.is_empty())
}

/// Moves up to `left` buffered body bytes from the server connection to `out`.
fn take(conn: &mut ServerConn, out: &mut Vec<u8>, left: &mut u64) {
    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(conn.buf.len());
    out.extend_from_slice(&conn.buf[..n]);
    conn.buf.advance(n);
    *left -= n as u64;
}

/// Reads more of the body; the server closing before its end is an error.
async fn more(conn: &mut ServerConn, limits: Limits) -> Result<(), RelayError> {
    match tokio::time::timeout(limits.server_read, conn.read_more()).await {
        Ok(Ok(0)) => Err(RelayError::Server("closed before the end of the body".into())),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(RelayError::Server(e.to_string())),
        Err(_) => Err(RelayError::ServerTimeout(limits.server_read)),
    }
}

/// Writes `bytes` to the client. The first attempt goes without a timer: a client that reads
/// takes the whole response at once, and arming a timer per write would cost more than the
/// write itself.
pub async fn write<I: AsyncWrite + Unpin>(
    client: &mut I,
    bytes: &[u8],
    limits: Limits,
) -> Result<(), RelayError> {
    let written = match client.write(bytes).now_or_never() {
        Some(Ok(n)) if n == bytes.len() => return Ok(()),
        Some(Ok(0)) => return Err(RelayError::Client(std::io::ErrorKind::WriteZero.into())),
        Some(Ok(n)) => n,
        Some(Err(e)) => return Err(RelayError::Client(e)),
        None => 0,
    };
    match tokio::time::timeout(limits.client_write, client.write_all(&bytes[written..])).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RelayError::Client(e)),
        Err(_) => Err(RelayError::ClientTimeout(limits.client_write)),
    }
}

/// Flushes the client connection (TLS buffers; a no-op on plain TCP), without a timer when it
/// completes at once.
pub async fn flush<I: AsyncWrite + Unpin>(client: &mut I, limits: Limits) -> Result<(), RelayError> {
    let flushed = match client.flush().now_or_never() {
        Some(done) => done,
        None => match tokio::time::timeout(limits.client_write, client.flush()).await {
            Ok(done) => done,
            Err(_) => return Err(RelayError::ClientTimeout(limits.client_write)),
        },
    };
    flushed.map_err(RelayError::Client)
}
