//! The client side of the connection phase: rwproxy's greeting and the client's login.

use mysql_common::constants::{CapabilityFlags as Caps, MariadbCapabilities, StatusFlags};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthSwitchRequest, HandshakePacket, HandshakeResponse};
use mysql_common::proto::MySerialize;
use mysql_common::scramble::{scramble_native, scramble_sha256};

use crate::backend::auth_plugins::{CACHING_SHA2, NATIVE};
use crate::config::ClientAuth;

/// The wire name of a client authentication plugin.
pub fn plugin_name(auth: ClientAuth) -> &'static [u8] {
    match auth {
        ClientAuth::CachingSha2 => CACHING_SHA2,
        ClientAuth::Native => NATIVE,
    }
}

/// The length of a password proof under `auth` (0 for an empty password).
pub fn proof_len(auth: ClientAuth) -> usize {
    match auth {
        ClientAuth::CachingSha2 => 32,
        ClientAuth::Native => 20,
    }
}

/// caching_sha2_password's "fast authentication succeeded" (AuthMoreData 0x03), sent before the
/// OK.
pub const FAST_AUTH_OK: [u8; 2] = [0x01, 0x03];

/// What rwproxy offers clients. No TLS or compression on the SQL port yet, no
/// MARIADB_CLIENT_CACHE_METADATA (it changes result framing), no query attributes.
pub const OFFERED_CAPS: Caps = Caps::CLIENT_LONG_PASSWORD
    .union(Caps::CLIENT_FOUND_ROWS)
    .union(Caps::CLIENT_LONG_FLAG)
    .union(Caps::CLIENT_CONNECT_WITH_DB)
    .union(Caps::CLIENT_LOCAL_FILES)
    .union(Caps::CLIENT_IGNORE_SPACE)
    .union(Caps::CLIENT_PROTOCOL_41)
    .union(Caps::CLIENT_INTERACTIVE)
    .union(Caps::CLIENT_TRANSACTIONS)
    .union(Caps::CLIENT_SECURE_CONNECTION)
    .union(Caps::CLIENT_MULTI_STATEMENTS)
    .union(Caps::CLIENT_MULTI_RESULTS)
    .union(Caps::CLIENT_PS_MULTI_RESULTS)
    .union(Caps::CLIENT_PLUGIN_AUTH)
    .union(Caps::CLIENT_CONNECT_ATTRS)
    .union(Caps::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA)
    .union(Caps::CLIENT_SESSION_TRACK)
    .union(Caps::CLIENT_DEPRECATE_EOF);

/// utf8mb4_general_ci: the collation announced in the greeting.
pub const DEFAULT_COLLATION: u8 = 45;

/// A fresh 20-byte salt of printable characters (some clients treat it as a C string).
pub fn new_salt() -> [u8; 20] {
    let mut salt = [0u8; 20];
    for b in &mut salt {
        *b = rand::random_range(0x21u8..0x7F);
    }
    salt
}

/// The greeting; it names the plugin the backends' flavour uses (MySQL 8/9:
/// caching_sha2_password, so that clients which no longer carry mysql_native_password start
/// with a plugin they have; MariaDB: mysql_native_password, as the server would).
pub fn greeting(
    server_version: &str,
    connection_id: u32,
    salt: &[u8; 20],
    (caps, mariadb_caps): (Caps, MariadbCapabilities),
    plugin: ClientAuth,
) -> Vec<u8> {
    let mut scramble_1 = [0u8; 8];
    scramble_1.copy_from_slice(&salt[..8]);
    let mut scramble_2 = salt[8..].to_vec();
    scramble_2.push(0);
    let packet = HandshakePacket::new(
        10,
        server_version.as_bytes(),
        connection_id,
        scramble_1,
        Some(scramble_2),
        caps,
        DEFAULT_COLLATION,
        StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        Some(plugin_name(plugin)),
    )
    .with_mariadb_ext_capabilities(mariadb_caps);
    let mut out = Vec::new();
    packet.serialize(&mut out);
    out
}

/// What the client sent in its handshake response. `Debug` leaves the password proof out.
#[derive(Clone)]
pub struct ClientLogin {
    pub caps: Caps,
    /// MariaDB extended capabilities the client chose among those offered.
    pub mariadb_caps: MariadbCapabilities,
    pub collation: u8,
    pub user: String,
    pub database: Option<String>,
    pub plugin: Vec<u8>,
    pub auth_data: Vec<u8>,
}

impl std::fmt::Debug for ClientLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLogin")
            .field("user", &self.user)
            .field("database", &self.database)
            .field("plugin", &String::from_utf8_lossy(&self.plugin))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("malformed handshake response: {0}")]
    Malformed(String),
    #[error("client asked for TLS, which this listener does not offer")]
    TlsRequested,
    #[error("client does not speak protocol 4.1")]
    OldProtocol,
    #[error("user name longer than {MAX_USER_CHARS} characters")]
    UserTooLong,
}

/// The longest user name a server accepts (MariaDB's limit; MySQL's is 32). A longer one is
/// refused before it reaches a log.
pub const MAX_USER_CHARS: usize = 80;

/// Whether the client's first packet is an SSLRequest: the first 32 bytes of a handshake
/// response with CLIENT_SSL, and nothing more.
pub fn is_tls_request(payload: &[u8]) -> bool {
    payload.len() == 32
        && payload[..4].try_into().is_ok_and(|b| u32::from_le_bytes(b) & Caps::CLIENT_SSL.bits() != 0)
}

pub fn parse_login(
    payload: &[u8],
    offered: Caps,
    offered_mariadb: MariadbCapabilities,
) -> Result<ClientLogin, HandshakeError> {
    if payload.len() == 32 {
        return Err(HandshakeError::TlsRequested);
    }
    let response = ParseBuf(payload)
        .parse::<HandshakeResponse>(())
        .map_err(|e| HandshakeError::Malformed(e.to_string()))?;
    let caps = response.capabilities() & offered;
    if !caps.contains(Caps::CLIENT_PROTOCOL_41) {
        return Err(HandshakeError::OldProtocol);
    }
    let user = String::from_utf8_lossy(response.user()).into_owned();
    if user.chars().count() > MAX_USER_CHARS {
        return Err(HandshakeError::UserTooLong);
    }
    // The extended set is only there when the client, like the greeting, cleared CLIENT_MYSQL.
    let mariadb_caps = if response.capabilities().contains(Caps::CLIENT_LONG_PASSWORD) {
        MariadbCapabilities::empty()
    } else {
        response.mariadb_ext_capabilities() & offered_mariadb
    };
    Ok(ClientLogin {
        caps,
        mariadb_caps,
        collation: response.collation(),
        user,
        database: response
            .db_name()
            .filter(|d| !d.is_empty())
            .map(|d| String::from_utf8_lossy(d).into_owned()),
        plugin: response.auth_plugin().map(|p| p.as_bytes().to_vec()).unwrap_or_else(|| NATIVE.to_vec()),
        auth_data: response.scramble_buf().to_vec(),
    })
}

/// An AuthSwitchRequest to `auth` with `salt`.
pub fn auth_switch(auth: ClientAuth, salt: &[u8; 20]) -> Vec<u8> {
    let mut data = salt.to_vec();
    data.push(0);
    let mut out = Vec::new();
    AuthSwitchRequest::new(plugin_name(auth), data).serialize(&mut out);
    out
}

/// How rwproxy logs in to backends for a client that proved who it is. No `Debug`: it is
/// nothing but secrets.
#[derive(Clone)]
pub struct Credentials {
    pub password: String,
    /// SHA1(password), recovered from the client's proof when only the hash is configured.
    pub stage1: Option<[u8; 20]>,
}

/// Checks a response under the user's plugin against the user's password or password hash.
pub fn verify_user(
    salt: &[u8],
    user: &crate::config::UserConfig,
    plugin: ClientAuth,
    response: &[u8],
) -> Option<Credentials> {
    let Some(stage2) = user.stage2() else {
        // An empty password lets anyone in: only where the configuration says so.
        if user.password.is_empty() && !user.allow_empty_password {
            return None;
        }
        let good = match plugin {
            ClientAuth::Native => verify_native(salt, &user.password, response),
            ClientAuth::CachingSha2 => verify_sha256(salt, &user.password, response),
        };
        return good.then(|| Credentials { password: user.password.clone(), stage1: None });
    };
    // response = SHA1(pw) XOR SHA1(salt + SHA1(SHA1(pw))): XOR again to get SHA1(pw), whose
    // SHA1 must be the stored hash.
    use sha1::{Digest, Sha1};
    if response.len() != 20 {
        return None;
    }
    let mask = Sha1::new().chain_update(salt).chain_update(stage2).finalize();
    let mut stage1 = [0u8; 20];
    for (i, byte) in stage1.iter_mut().enumerate() {
        *byte = response[i] ^ mask[i];
    }
    let check = Sha1::digest(stage1);
    constant_time_eq(&check, &stage2).then_some(Credentials { password: String::new(), stage1: Some(stage1) })
}

/// Checks a mysql_native_password response against the configured password.
pub fn verify_native(salt: &[u8], password: &str, response: &[u8]) -> bool {
    if password.is_empty() {
        return response.is_empty();
    }
    match scramble_native(salt, password.as_bytes()) {
        Some(expected) => constant_time_eq(&expected, response),
        None => false,
    }
}

/// Checks a caching_sha2_password scramble: SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + salt).
/// rwproxy knows the password, so every login takes MySQL's fast path (no cache to miss).
pub fn verify_sha256(salt: &[u8], password: &str, response: &[u8]) -> bool {
    if password.is_empty() {
        return response.is_empty();
    }
    match scramble_sha256(salt, password.as_bytes()) {
        Some(expected) => constant_time_eq(&expected, response),
        None => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// The COM_CHANGE_USER fields rwproxy needs.
#[derive(Debug, Clone)]
pub struct ChangeUser {
    pub user: String,
    pub auth_data: Vec<u8>,
    pub database: Option<String>,
    pub collation: Option<u8>,
    pub plugin: Option<Vec<u8>>,
}

/// Parses a COM_CHANGE_USER payload (after the command byte); `None` when malformed.
pub fn parse_change_user(body: &[u8], caps: Caps) -> Option<ChangeUser> {
    let (user, rest) = split_nul(body)?;
    if user.len() > 4 * MAX_USER_CHARS || String::from_utf8_lossy(user).chars().count() > MAX_USER_CHARS {
        return None;
    }
    let (&len, rest) = rest.split_first()?;
    let auth_data = rest.get(..usize::from(len))?.to_vec();
    let rest = &rest[usize::from(len)..];
    let (database, rest) = split_nul(rest).unwrap_or((rest, &[]));
    let (collation, rest) = match rest {
        [lo, _hi, tail @ ..] => (Some(*lo), tail),
        _ => (None, rest),
    };
    let plugin =
        if caps.contains(Caps::CLIENT_PLUGIN_AUTH) { split_nul(rest).map(|(p, _)| p.to_vec()) } else { None };
    Some(ChangeUser {
        user: String::from_utf8_lossy(user).into_owned(),
        auth_data,
        database: (!database.is_empty()).then(|| String::from_utf8_lossy(database).into_owned()),
        collation,
        plugin: plugin.filter(|p| !p.is_empty()),
    })
}

fn split_nul(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|b| *b == 0)?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_parses_back() {
        let salt = new_salt();
        let ext = MariadbCapabilities::MARIADB_CLIENT_EXTENDED_METADATA;
        let caps = OFFERED_CAPS.difference(Caps::CLIENT_LONG_PASSWORD);
        let bytes = greeting("10.11.6-MariaDB", 42, &salt, (caps, ext), ClientAuth::for_flavour(true));
        let parsed = ParseBuf(&bytes).parse::<HandshakePacket>(()).expect("greeting");
        assert_eq!(parsed.connection_id(), 42);
        assert_eq!(parsed.nonce(), salt.to_vec());
        assert_eq!(parsed.capabilities(), caps);
        assert_eq!(parsed.mariadb_ext_capabilities(), ext, "MariaDB's extended set is offered");
        assert_eq!(parsed.auth_plugin_name_ref(), Some(NATIVE), "MariaDB's own plugin");
        let bytes = greeting("9.7.0", 42, &salt, (caps, ext), ClientAuth::for_flavour(false));
        let parsed = ParseBuf(&bytes).parse::<HandshakePacket>(()).expect("greeting");
        assert_eq!(parsed.auth_plugin_name_ref(), Some(CACHING_SHA2), "MySQL's own plugin");
    }

    #[test]
    fn native_verification() {
        let salt = new_salt();
        let good = scramble_native(&salt, b"secret").expect("scramble");
        assert!(verify_native(&salt, "secret", &good));
        assert!(!verify_native(&salt, "other", &good));
        assert!(!verify_native(&salt, "secret", &good[..19]));
        assert!(verify_native(&salt, "", &[]));
        assert!(!verify_native(&salt, "", &good));
    }

    #[test]
    fn caching_sha2_verification() {
        let salt = new_salt();
        let good = scramble_sha256(&salt, b"secret").expect("scramble");
        assert!(verify_sha256(&salt, "secret", &good));
        assert!(!verify_sha256(&salt, "other", &good));
        assert!(!verify_sha256(&salt, "secret", &good[..31]));
        assert!(!verify_sha256(&new_salt(), "secret", &good), "another salt");
        assert!(verify_sha256(&salt, "", &[]));
    }

    #[test]
    fn change_user_parsing_never_panics() {
        let body = b"bob\0\x03abcdb\0\x2d\x00mysql_native_password\0";
        let cu = parse_change_user(body, Caps::CLIENT_PLUGIN_AUTH).expect("parse");
        assert_eq!(
            (cu.user.as_str(), cu.auth_data.as_slice(), cu.database.as_deref()),
            ("bob", &b"abc"[..], Some("db"))
        );
        assert_eq!(cu.plugin.as_deref(), Some(NATIVE));
        for cut in 0..body.len() {
            let _ = parse_change_user(&body[..cut], Caps::CLIENT_PLUGIN_AUTH);
        }
        assert!(parse_login(&[1, 2, 3], OFFERED_CAPS, MariadbCapabilities::empty()).is_err());
    }
}
