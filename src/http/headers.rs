//! Header rewriting on the forwarding path: hop-by-hop headers out, forwarding headers in.
//! Runs twice per request, so names are constants (no parsing or hashing of `&str` names)
//! and what depends only on the client connection is built once per connection.

use std::net::SocketAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What the forwarding headers say about one client connection.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    pub peer: SocketAddr,
    pub https: bool,
    ip: HeaderValue,
    /// `for=192.0.2.1` or `for="[2001:db8::1]"` (RFC 7239 quotes IPv6).
    forwarded_for: String,
}

impl ClientAddr {
    pub fn new(peer: SocketAddr, https: bool) -> ClientAddr {
        let ip = peer.ip().to_string();
        let forwarded_for = if peer.is_ipv6() { format!("for=\"[{ip}]\"") } else { format!("for={ip}") };
        let ip = HeaderValue::from_str(&ip).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ClientAddr { peer, https, ip, forwarded_for }
    }

    pub fn proto(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }

    /// The client's address as X-Forwarded-For lists it.
    pub fn ip_text(&self) -> &str {
        self.ip.to_str().unwrap_or("unknown")
    }

    /// The `for=` element of `Forwarded`.
    pub fn forwarded_for(&self) -> &str {
        &self.forwarded_for
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == header::PROXY_AUTHENTICATE
        || *name == header::PROXY_AUTHORIZATION
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
}

/// Whether the request asks to switch protocols (WebSocket and the like).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
}

/// Removes hop-by-hop headers and those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            let common = ["close", "keep-alive", "upgrade"].iter().any(|c| token.eq_ignore_ascii_case(c));
            if !common && let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                doomed.push(name);
            }
        }
    }
    doomed.extend(headers.keys().filter(|name| is_hop_by_hop(name)).cloned());
    for name in doomed {
        headers.remove(name);
    }
}

/// Removes hop-by-hop headers; an upgrade keeps `Connection: upgrade` and `Upgrade`, which the
/// server needs to see.
pub fn strip_for_forwarding(headers: &mut HeaderMap) {
    let upgrade = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// X-Forwarded-For (appended), X-Forwarded-Proto, X-Forwarded-Host and Forwarded.
pub fn add_forwarding(headers: &mut HeaderMap, client: &ClientAddr) {
    let xff = match headers.get(&X_FORWARDED_FOR) {
        Some(previous) => {
            let mut joined = Vec::with_capacity(previous.len() + 2 + client.ip.len());
            joined.extend_from_slice(previous.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client.ip.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client.ip.clone())
        }
        None => client.ip.clone(),
    };
    headers.insert(X_FORWARDED_FOR, xff);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.proto()));
    let host = headers.get(header::HOST).cloned();
    let mut forwarded = String::with_capacity(client.forwarded_for.len() + 48);
    forwarded.push_str(&client.forwarded_for);
    forwarded.push_str(";proto=");
    forwarded.push_str(client.proto());
    if let Some(host) = host.as_ref().and_then(|h| h.to_str().ok()) {
        forwarded.push_str(";host=\"");
        forwarded.push_str(host);
        forwarded.push('"');
    }
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert(header::FORWARDED, value);
    }
    match host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn forwarding_headers_append_and_quote() {
        let client = ClientAddr::new("[2001:db8::1]:4000".parse().expect("addr"), true);
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("shop.example"));
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        add_forwarding(&mut h, &client);
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.9, 2001:db8::1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "shop.example");
        assert_eq!(h[header::FORWARDED], "for=\"[2001:db8::1]\";proto=https;host=\"shop.example\"");
    }
}
