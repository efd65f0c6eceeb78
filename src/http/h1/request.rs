//! Reading a client's request head and writing the head the server gets: hop-by-hop headers
//! out, forwarding headers in, the body re-framed with a Content-Length. Header names keep the
//! client's spelling; nothing is re-parsed or hashed.

use std::io::Write;

use hyper::Method;

use super::fields::{self, Connection, hop_by_hop, is};
use crate::http::headers::ClientAddr;

/// Headers parsed per request; more is refused with 431 (HAProxy's default is 101).
pub const MAX_HEADERS: usize = 100;

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
}

/// What the connection loop needs to know about one request once its head is written out.
#[derive(Debug)]
pub struct Head {
    pub method: Method,
    /// The path and query, kept only for the access log (see [`parse`]).
    pub path: Option<String>,
    /// Bytes of the head in the client's buffer.
    pub len: usize,
    pub http10: bool,
    /// The client lets the connection stay open after this request.
    pub keep_alive: bool,
    /// Upgrade requested (WebSocket): `Upgrade` and `Connection: upgrade` go to the server.
    pub upgrade: bool,
    pub expect_continue: bool,
    pub body: Option<Framing>,
}

/// Why a head was refused; the client gets the status and the connection is closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("request header fields too large")]
    TooLarge,
    #[error("method not allowed")]
    Connect,
}

impl HeadError {
    pub fn status(&self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::TooLarge => 431,
            HeadError::Connect => 405,
        }
    }
}

/// Parses the head at the start of `buf`. `Ok(None)`: incomplete. On success the server's
/// request head is in `out`, all but its framing header and final CRLF (see [`finish`]).
/// `keep_path`: copy the path into the head (only the access log reads it).
pub fn parse(
    buf: &[u8],
    client: &ClientAddr,
    out: &mut Vec<u8>,
    keep_path: bool,
) -> Result<Option<Head>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed("bad request line or header")),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Malformed("bad method"))?;
    if method == Method::CONNECT {
        return Err(HeadError::Connect);
    }
    let (authority, path) = split_target(target)?;
    let info = Connection::scan(req.headers);
    let body = body_framing(req.headers, minor == 0)?;
    let upgrade = info.upgrade_to.is_some() && !info.close;
    let expect_continue = minor == 1
        && req.headers.iter().any(|h| is(h, "expect") && h.value.eq_ignore_ascii_case(b"100-continue"));

    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host: Option<&[u8]> = None;
    let mut forwarded_for: Vec<&[u8]> = Vec::new();
    for h in req.headers.iter() {
        if is(h, "host") {
            if host.is_some() {
                return Err(HeadError::Malformed("more than one Host header"));
            }
            host = Some(h.value);
        } else if is(h, "x-forwarded-for") {
            forwarded_for.push(h.value);
            continue;
        }
        if !dropped(h, &info) {
            header(out, h.name.as_bytes(), h.value);
        }
    }
    if host.is_none() {
        match authority {
            Some(authority) => header(out, b"Host", authority.as_bytes()),
            None if minor == 1 => return Err(HeadError::Malformed("HTTP/1.1 request without Host")),
            None => {}
        }
    }
    let host = host.or(authority.map(str::as_bytes));
    if let Some(protocol) = info.upgrade_to.filter(|_| upgrade) {
        header(out, b"Upgrade", protocol);
        header(out, b"Connection", b"upgrade");
    }
    forwarding(out, client, &forwarded_for, host);
    let keep_alive = if minor == 0 { info.keep_alive && !info.close } else { !info.close };
    Ok(Some(Head {
        method,
        path: keep_path.then(|| path.to_string()),
        len,
        http10: minor == 0,
        keep_alive,
        upgrade,
        expect_continue,
        body,
    }))
}

/// Ends the head in `out` for a body of `body_len` bytes (the body follows it).
pub fn finish(out: &mut Vec<u8>, body_len: usize, had_body: bool) {
    if had_body {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "Content-Length: {body_len}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Origin form for the server; an absolute-form target gives up its authority as the host.
fn split_target(target: &str) -> Result<(Option<&str>, &str), HeadError> {
    if target.starts_with('/') || target == "*" {
        return Ok((None, target));
    }
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .ok_or(HeadError::Malformed("bad request target"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |at| (&rest[..at], &rest[at..]));
    if authority.is_empty() {
        return Err(HeadError::Malformed("bad request target"));
    }
    Ok((Some(authority), path))
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Rewritten by the proxy: the body is re-framed and the forwarding fields are its own.
const REWRITTEN: [&str; 4] = ["content-length", "x-forwarded-proto", "x-forwarded-host", "forwarded"];

fn dropped(h: &httparse::Header<'_>, info: &Connection<'_>) -> bool {
    // "expect: 100-continue" is answered here (the body is read before it is sent on); other
    // expectations go to the server.
    if is(h, "expect") {
        return h.value.eq_ignore_ascii_case(b"100-continue");
    }
    hop_by_hop(h, info) || REWRITTEN.iter().any(|name| is(h, name))
}

/// Content-Length or chunked; both, a coding other than chunked last, or differing lengths are
/// refused (the ways a proxy and a server can disagree on where a request ends).
fn body_framing(headers: &[httparse::Header<'_>], http10: bool) -> Result<Option<Framing>, HeadError> {
    let fields = fields::Framing::read(headers)
        .map_err(|_| HeadError::Malformed("bad or conflicting Content-Length"))?;
    match (fields.chunked, fields.length) {
        (Some(_), Some(_)) => Err(HeadError::Malformed("both Transfer-Encoding and Content-Length")),
        (Some(true), None) if !http10 => Ok(Some(Framing::Chunked)),
        (Some(_), None) => Err(HeadError::Malformed("unsupported Transfer-Encoding")),
        (None, None) => Ok(None),
        (None, Some(n)) => Ok(Some(Framing::Length(n))),
    }
}

/// X-Forwarded-For (the client's list with this client appended), X-Forwarded-Proto,
/// X-Forwarded-Host and Forwarded (RFC 7239).
fn forwarding(out: &mut Vec<u8>, client: &ClientAddr, previous: &[&[u8]], host: Option<&[u8]>) {
    out.extend_from_slice(b"X-Forwarded-For: ");
    for p in previous {
        out.extend_from_slice(p);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client.ip_text().as_bytes());
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(client.proto().as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(host) = host {
        header(out, b"X-Forwarded-Host", host);
    }
    out.extend_from_slice(b"Forwarded: ");
    out.extend_from_slice(client.forwarded_for().as_bytes());
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(client.proto().as_bytes());
    if let Some(host) = host {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(host);
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientAddr {
        ClientAddr::new("192.0.2.7:5000".parse().expect("addr"), false)
    }

    fn rewrite(request: &str) -> Result<(Head, String), HeadError> {
        let mut out = Vec::new();
        let head =
            parse(request.as_bytes(), &client(), &mut out, true)?.ok_or(HeadError::Malformed("partial"))?;
        finish(&mut out, 0, head.body.is_some());
        Ok((head, String::from_utf8(out).expect("utf8")))
    }

    #[test]
    fn hop_by_hop_out_forwarding_in() {
        let (head, out) = rewrite(
            "GET /a?b=1 HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, X-Secret\r\n\
             X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 203.0.113.9\r\n\
             Forwarded: for=evil\r\nAccept: */*\r\n\r\n",
        )
        .expect("valid");
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: shop.example\r\nAccept: */*\r\n\
             X-Forwarded-For: 203.0.113.9, 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\
             X-Forwarded-Host: shop.example\r\nForwarded: for=192.0.2.7;proto=http;host=\"shop.example\"\r\n\r\n"
        );
        assert!(head.keep_alive && !head.upgrade && head.body.is_none());
        assert_eq!(head.path.as_deref(), Some("/a?b=1"));
    }

    #[test]
    fn framing_that_could_smuggle_is_refused() {
        for bad in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(rewrite(bad).map(|_| ()).map_err(|e| e.status()), Err(400), "{bad}");
        }
        assert_eq!(rewrite("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n").map(|_| ()), Err(HeadError::Connect));
    }

    #[test]
    fn chunked_body_is_reframed_and_http10_closes() {
        let (head, out) = rewrite(
            "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
        )
        .expect("valid");
        assert_eq!(head.body, Some(Framing::Chunked));
        assert!(head.expect_continue);
        assert!(
            out.ends_with("Content-Length: 0\r\n\r\n") && !out.contains("chunked") && !out.contains("Expect")
        );
        let (head, out) = rewrite("GET http://b.example/x HTTP/1.0\r\n\r\n").expect("valid");
        assert!(!head.keep_alive && head.http10);
        assert!(out.starts_with("GET /x HTTP/1.1\r\nHost: b.example\r\n"), "{out}");
    }

    #[test]
    fn upgrade_goes_through() {
        let (head, out) = rewrite(
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n",
        )
        .expect("valid");
        assert!(head.upgrade);
        assert!(out.contains("Upgrade: websocket\r\nConnection: upgrade\r\n"), "{out}");
    }
}
