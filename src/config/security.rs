//! The security parts of the config: TLS on the SQL listener and to backends, and the
//! address lists every listener and user may carry.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// `[mysql.tls]`: TLS offered to SQL clients.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqlTls {
    /// PEM file: the certificate, then its chain.
    pub cert: Spanned<String>,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<String>,
    /// Every client must use TLS; a plaintext login is refused with 3159 (as MySQL's
    /// `require_secure_transport`). Default false (per user: `require_tls`).
    #[serde(default)]
    pub required: bool,
}

/// `tls` on a backend: how rwproxy's connections to it (data path and monitor) use TLS. Either
/// a mode, `tls = "preferred"` (the default: TLS when the server offers it, as every MySQL
/// client library does, without checking its certificate), `"required"` (the same, refusing a
/// server without TLS) or `"disabled"`; or a table, `tls = { ca = "ca.pem", verify = "full" }`,
/// which requires TLS and checks the certificate.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BackendTls {
    /// Whether TLS is used: required (a table's default), preferred or disabled.
    pub mode: TlsMode,
    /// PEM file with the CA certificate(s) the server's certificate must lead to.
    #[serde(default)]
    pub ca: Option<String>,
    /// `"full"` (default: chain and name), `"ca"` (chain only) or `"none"` (no check at all).
    pub verify: Verify,
    /// The name the certificate must carry with `verify = "full"`. Default: the host of
    /// `address`.
    pub server_name: Option<String>,
}

/// `mode` of a backend's `tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    Preferred,
    #[default]
    Required,
    Disabled,
}

impl BackendTls {
    /// What a backend without `tls` gets: TLS when offered, certificate not checked.
    pub const PREFERRED: BackendTls =
        BackendTls { mode: TlsMode::Preferred, ca: None, verify: Verify::None, server_name: None };

    fn mode(mode: TlsMode) -> BackendTls {
        BackendTls { mode, ..BackendTls::PREFERRED }
    }
}

/// The table form, as it was before modes existed: TLS required, certificate checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsTable {
    #[serde(default)]
    mode: TlsMode,
    #[serde(default)]
    ca: Option<String>,
    #[serde(default)]
    verify: Verify,
    #[serde(default)]
    server_name: Option<String>,
}

impl<'de> Deserialize<'de> for BackendTls {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = BackendTls;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "\"preferred\", \"required\", \"disabled\" or a table { ca, verify, server_name }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BackendTls, E> {
                let mode = TlsMode::deserialize(serde::de::value::StrDeserializer::<E>::new(v))?;
                Ok(BackendTls::mode(mode))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<BackendTls, A::Error> {
                let t = TlsTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(BackendTls { mode: t.mode, ca: t.ca, verify: t.verify, server_name: t.server_name })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    #[default]
    Full,
    Ca,
    None,
}

/// Which peer addresses a listener or user accepts: `deny` wins, then an empty `allow` lets
/// everyone else in, a non-empty one only its networks. Entries are CIDR networks
/// (`"10.0.0.0/8"`, `"::1/128"`) or single addresses.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AddressList {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Network>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Network>,
}

impl AddressList {
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.deny.iter().any(|n| n.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(ip))
    }

    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// An IPv4-mapped IPv6 peer (`::ffff:10.0.0.1`, what a dual-stack listener reports) is matched
/// as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A network in an address list; a bare address is a network of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Network(pub IpNet);

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&canonical(ip))
    }
}

impl From<Network> for String {
    fn from(n: Network) -> String {
        n.0.to_string()
    }
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Network, String> {
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Network(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| Network(IpNet::from(ip)))
            .map_err(|_| format!("{s:?} is not a network like \"10.0.0.0/8\" or an address"))
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Network, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(allow: &[&str], deny: &[&str]) -> AddressList {
        let parse = |v: &[&str]| v.iter().map(|s| s.parse().expect("network")).collect();
        AddressList { allow: parse(allow), deny: parse(deny) }
    }

    #[test]
    fn deny_wins_then_allow_decides() {
        let acl = list(&["10.0.0.0/8", "127.0.0.1"], &["10.9.0.0/16"]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(acl.permits(ip("10.1.2.3")));
        assert!(!acl.permits(ip("10.9.2.3")));
        assert!(acl.permits(ip("127.0.0.1")));
        assert!(!acl.permits(ip("127.0.0.2")));
        assert!(acl.permits(ip("::ffff:10.1.2.3")), "mapped IPv4 matches as IPv4");
        assert!(list(&[], &[]).permits(ip("192.0.2.1")));
        assert!(!list(&[], &["0.0.0.0/0"]).permits(ip("192.0.2.1")));
    }

    #[test]
    fn bad_networks_are_named() {
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        let err = "localhost".parse::<Network>().expect_err("not an address");
        assert!(err.contains("localhost"), "{err}");
        assert_eq!("10.1.2.3/8".parse::<Network>().map(String::from), Ok("10.0.0.0/8".to_string()));
    }
}
