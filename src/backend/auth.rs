//! The client side of MySQL authentication, as rwproxy logs in to a backend.

use mysql_common::scramble::{scramble_native, scramble_sha256};

pub const NATIVE: &[u8] = b"mysql_native_password";
pub const CACHING_SHA2: &[u8] = b"caching_sha2_password";

/// The first auth response for `plugin`, or `None` when rwproxy does not speak that plugin.
pub fn auth_response(plugin: &[u8], nonce: &[u8], password: &[u8]) -> Option<Vec<u8>> {
    if password.is_empty() {
        return Some(Vec::new());
    }
    match plugin {
        NATIVE => scramble_native(nonce, password).map(|s| s.to_vec()),
        CACHING_SHA2 => scramble_sha256(nonce, password).map(|s| s.to_vec()),
        _ => None,
    }
}

/// mysql_native_password from SHA1(password) alone: SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw))).
pub fn native_from_stage1(nonce: &[u8], stage1: &[u8; 20]) -> Vec<u8> {
    use sha1::{Digest, Sha1};
    let stage2 = Sha1::digest(stage1);
    let nonce = nonce.strip_suffix(&[0]).unwrap_or(nonce);
    let mask = Sha1::new().chain_update(nonce).chain_update(stage2).finalize();
    stage1.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect()
}

/// caching_sha2_password full authentication without TLS: the password (NUL-terminated),
/// XORed with the nonce, encrypted with the server's RSA public key.
pub fn encrypt_password(password: &[u8], nonce: &[u8], pem: &[u8]) -> Option<Vec<u8>> {
    if nonce.is_empty() || !looks_like_pem(pem) {
        return None;
    }
    let mut plain: Vec<u8> = password.iter().copied().chain(std::iter::once(0)).collect();
    for (i, byte) in plain.iter_mut().enumerate() {
        *byte ^= nonce[i % nonce.len()];
    }
    // mysql_common panics on a key it cannot parse; the key comes from the network, so a bad
    // one must become an error, not a crash.
    std::panic::catch_unwind(|| mysql_common::crypto::encrypt(&plain, pem)).ok()
}

/// A pinned server public key (`server_public_key`): the PEM text, checked to be one.
pub fn read_public_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !looks_like_pem(&pem) {
        return Err(format!("{} holds no PEM public key", path.display()));
    }
    Ok(pem)
}

fn looks_like_pem(pem: &[u8]) -> bool {
    let text = String::from_utf8_lossy(pem);
    text.contains("-----BEGIN") && text.contains("PUBLIC KEY-----")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_response_is_20_bytes_and_empty_password_is_empty() {
        let nonce = [7u8; 20];
        assert_eq!(auth_response(NATIVE, &nonce, b"pw").map(|v| v.len()), Some(20));
        assert_eq!(auth_response(CACHING_SHA2, &nonce, b"pw").map(|v| v.len()), Some(32));
        assert_eq!(auth_response(NATIVE, &nonce, b""), Some(Vec::new()));
        assert_eq!(auth_response(b"dialog", &nonce, b"pw"), None);
    }

    #[test]
    fn native_from_stage1_matches_the_password_scramble() {
        use sha1::{Digest, Sha1};
        let nonce = *b"abcdefghij0123456789";
        let stage1: [u8; 20] = Sha1::digest(b"secret").into();
        assert_eq!(
            native_from_stage1(&nonce, &stage1),
            auth_response(NATIVE, &nonce, b"secret").unwrap_or_default()
        );
    }

    #[test]
    fn garbage_key_is_an_error() {
        assert!(encrypt_password(b"pw", &[1; 20], b"not a key").is_none());
        assert!(
            encrypt_password(b"pw", &[1; 20], b"-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----")
                .is_none()
        );
    }
}
