//! Header fields both directions read the same way: hop-by-hop fields, the `Connection`
//! tokens, and the framing fields (Transfer-Encoding, Content-Length).

/// Fields that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

pub fn is(h: &httparse::Header<'_>, name: &str) -> bool {
    h.name.eq_ignore_ascii_case(name)
}

/// A hop-by-hop field, or one the `Connection` field names.
pub fn hop_by_hop(h: &httparse::Header<'_>, info: &Connection<'_>) -> bool {
    HOP_BY_HOP.iter().any(|name| is(h, name))
        || info.named.iter().any(|n| h.name.as_bytes().eq_ignore_ascii_case(n))
}

/// The tokens of the `Connection` header(s) and the `Upgrade` header.
pub struct Connection<'a> {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade_to: Option<&'a [u8]>,
    /// Other headers `Connection` names: hop-by-hop for this connection only.
    pub named: Vec<&'a [u8]>,
}

impl<'a> Connection<'a> {
    pub fn scan(headers: &[httparse::Header<'a>]) -> Connection<'a> {
        let mut c = Connection { close: false, keep_alive: false, upgrade_to: None, named: Vec::new() };
        let mut upgrade_token = false;
        for h in headers {
            if is(h, "connection") {
                for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        c.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        c.keep_alive = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        upgrade_token = true;
                    } else if !token.is_empty() {
                        c.named.push(token);
                    }
                }
            } else if is(h, "upgrade") {
                c.upgrade_to = Some(h.value);
            }
        }
        if !upgrade_token {
            c.upgrade_to = None;
        }
        c
    }
}

/// The framing fields of a message: whether Transfer-Encoding is present and ends in chunked,
/// and the Content-Length, all of whose values must agree.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub chunked: Option<bool>,
    pub length: Option<u64>,
}

/// A Content-Length that is not a number, or two that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadLength;

impl Framing {
    pub fn read(headers: &[httparse::Header<'_>]) -> Result<Framing, BadLength> {
        let mut framing = Framing::default();
        for h in headers {
            if is(h, "transfer-encoding") {
                let last = h.value.rsplit(|&b| b == b',').next().map(<[u8]>::trim_ascii).unwrap_or_default();
                framing.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            } else if is(h, "content-length") {
                for piece in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    let n = parse_length(piece).ok_or(BadLength)?;
                    if framing.length.is_some_and(|l| l != n) {
                        return Err(BadLength);
                    }
                    framing.length = Some(n);
                }
            }
        }
        Ok(framing)
    }
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}
