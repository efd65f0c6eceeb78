//! Reading a server's response head and writing the head the client gets: hop-by-hop headers
//! out, the framing the client can read, and whether either connection stays open.

use super::fields::{Connection, Framing, hop_by_hop, is};
use super::request::MAX_HEADERS;

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Empty,
    Length(u64),
    Chunked,
    /// Until the server closes (no length given).
    UntilClose,
}

/// A parsed server response head.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Bytes of the head in the server connection's buffer.
    pub len: usize,
    /// The server keeps its connection open after this response.
    pub server_keep_alive: bool,
}

/// What the request side decides about the response it gets.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    pub head_request: bool,
    pub client_http10: bool,
    /// The client connection may stay open after this response (the client asked for it and
    /// the balancer is not draining).
    pub client_keep_alive: bool,
    /// The client asked to switch protocols.
    pub upgrade: bool,
}

/// How the response reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relay {
    pub body: BodyKind,
    /// Decode a chunked body (the client speaks HTTP/1.0 and cannot read chunks).
    pub dechunk: bool,
    /// Close the client connection after the response.
    pub close_client: bool,
    /// A 101 the client asked for: the connections are spliced after the head.
    pub switch: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    #[error("malformed response head from the server")]
    Malformed,
    #[error("response head from the server too large")]
    TooLarge,
}

/// Parses the head at the start of `buf`; `Ok(None)`: incomplete.
pub fn parse(
    buf: &[u8],
    exchange: Exchange,
    out: &mut Vec<u8>,
) -> Result<Option<(Response, Relay)>, ResponseError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut slots);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge),
        Err(_) => return Err(ResponseError::Malformed),
    };
    let (Some(status), Some(minor)) = (res.code, res.version) else {
        return Err(ResponseError::Malformed);
    };
    let info = Connection::scan(res.headers);
    let switch = status == 101 && exchange.upgrade;
    let body = body_kind(res.headers, status, exchange.head_request)?;
    let server_keep_alive =
        body != BodyKind::UntilClose && !switch && if minor == 0 { info.keep_alive } else { !info.close };
    let dechunk = body == BodyKind::Chunked && exchange.client_http10;
    let close_client = !switch && (!exchange.client_keep_alive || body == BodyKind::UntilClose || dechunk);

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse guarantees three digits.
    out.extend_from_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]);
    out.push(b' ');
    out.extend_from_slice(res.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in res.headers.iter() {
        if keep(h, &info, dechunk) {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    if switch {
        if let Some(protocol) = info.upgrade_to {
            out.extend_from_slice(b"Upgrade: ");
            out.extend_from_slice(protocol);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if body == BodyKind::Chunked && !dechunk {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if close_client {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if exchange.client_http10 && !switch {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let response = Response { status, len, server_keep_alive };
    Ok(Some((response, Relay { body, dechunk, close_client, switch })))
}

/// RFC 9112 §6.3, in order.
fn body_kind(
    headers: &[httparse::Header<'_>],
    status: u16,
    head_request: bool,
) -> Result<BodyKind, ResponseError> {
    if head_request || status < 200 || status == 204 || status == 304 {
        return Ok(BodyKind::Empty);
    }
    let fields = Framing::read(headers).map_err(|_| ResponseError::Malformed)?;
    Ok(match (fields.chunked, fields.length) {
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
        (Some(true), _) => BodyKind::Chunked,
        (Some(false), _) | (None, None) => BodyKind::UntilClose,
        (None, Some(0)) => BodyKind::Empty,
        (None, Some(n)) => BodyKind::Length(n),
    })
}

/// Hop-by-hop headers go; `Content-Length` stays unless the body is re-framed.
fn keep(h: &httparse::Header<'_>, info: &Connection<'_>, dechunk: bool) -> bool {
    !(hop_by_hop(h, info) || dechunk && is(h, "content-length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Exchange =
        Exchange { head_request: false, client_http10: false, client_keep_alive: true, upgrade: false };

    fn rewrite(response: &str, exchange: Exchange) -> (Response, Relay, String) {
        let mut out = Vec::new();
        let (r, relay) = parse(response.as_bytes(), exchange, &mut out).expect("valid").expect("complete");
        (r, relay, String::from_utf8(out).expect("utf8"))
    }

    #[test]
    fn length_framed_keeps_both_connections() {
        let (r, relay, out) = rewrite(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: t=1\r\n\r\nhello",
            PLAIN,
        );
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        assert_eq!((relay.body, r.server_keep_alive, relay.close_client), (BodyKind::Length(5), true, false));
    }

    #[test]
    fn chunked_to_http10_is_decoded_and_closed() {
        let exchange = Exchange { client_http10: true, ..PLAIN };
        let (_, relay, out) = rewrite("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", exchange);
        assert!(relay.dechunk && relay.close_client);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        let (_, relay, out) = rewrite("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", PLAIN);
        assert!(!relay.dechunk && !relay.close_client);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    }

    #[test]
    fn no_length_means_until_close_and_head_has_no_body() {
        let (r, relay, out) = rewrite("HTTP/1.0 200 OK\r\n\r\n", PLAIN);
        assert_eq!(
            (relay.body, r.server_keep_alive, relay.close_client),
            (BodyKind::UntilClose, false, true)
        );
        assert!(out.ends_with("Connection: close\r\n\r\n"));
        let head = Exchange { head_request: true, ..PLAIN };
        let (_, relay, _) = rewrite("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", head);
        assert_eq!(relay.body, BodyKind::Empty);
        assert!(
            parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                PLAIN,
                &mut Vec::new()
            )
            .is_err()
        );
    }

    #[test]
    fn switching_protocols_keeps_upgrade() {
        let upgrade = Exchange { upgrade: true, ..PLAIN };
        let (_, relay, out) = rewrite(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            upgrade,
        );
        assert!(relay.switch);
        assert_eq!(
            out,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        );
    }
}
