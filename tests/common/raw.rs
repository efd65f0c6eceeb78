//! A minimal client that speaks the wire protocol by hand, to compare responses byte for byte
//! and to send packets no real driver would.

#![allow(dead_code)]

use mysql_common::constants::CapabilityFlags as Caps;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, AuthSwitchRequest, HandshakePacket, HandshakeResponse};
use mysql_common::proto::MySerialize;
use rwproxy::protocol::packet;
use rwproxy::protocol::{Progress, ResponseKind, ResponseTracker};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct RawClient {
    pub stream: TcpStream,
    pub deprecate_eof: bool,
}

pub fn caps(deprecate_eof: bool) -> Caps {
    let mut caps = Caps::CLIENT_PROTOCOL_41
        | Caps::CLIENT_SECURE_CONNECTION
        | Caps::CLIENT_PLUGIN_AUTH
        | Caps::CLIENT_CONNECT_WITH_DB
        | Caps::CLIENT_MULTI_RESULTS
        | Caps::CLIENT_MULTI_STATEMENTS
        | Caps::CLIENT_PS_MULTI_RESULTS
        | Caps::CLIENT_TRANSACTIONS
        | Caps::CLIENT_LONG_PASSWORD
        | Caps::CLIENT_LONG_FLAG;
    if deprecate_eof {
        caps |= Caps::CLIENT_DEPRECATE_EOF;
    }
    caps
}

impl RawClient {
    pub async fn connect(
        address: &str,
        user: &str,
        password: &str,
        db: &str,
        deprecate_eof: bool,
    ) -> Result<RawClient, String> {
        Self::connect_with(address, (user, password, db), deprecate_eof, Caps::empty()).await
    }

    /// Like `connect`, asking for `extra` capabilities too (CLIENT_SESSION_TRACK, say).
    pub async fn connect_with(
        address: &str,
        (user, password, db): (&str, &str, &str),
        deprecate_eof: bool,
        extra: Caps,
    ) -> Result<RawClient, String> {
        Self::login(address, user, password, db, deprecate_eof, "mysql_native_password", extra).await
    }

    /// Logs in starting with `plugin`; follows an AuthSwitchRequest to either plugin.
    pub async fn connect_with_plugin(
        address: &str,
        user: &str,
        password: &str,
        db: &str,
        plugin: &str,
    ) -> Result<RawClient, String> {
        Self::login(address, user, password, db, true, plugin, Caps::empty()).await
    }

    async fn login(
        address: &str,
        user: &str,
        password: &str,
        db: &str,
        deprecate_eof: bool,
        plugin: &str,
        extra: Caps,
    ) -> Result<RawClient, String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let mut stream = TcpStream::connect(address).await.map_err(|e| err(&e))?;
        let greeting = read(&mut stream).await?;
        let handshake = ParseBuf(&greeting.payload).parse::<HandshakePacket>(()).map_err(|e| err(&e))?;
        let nonce = handshake.nonce();
        let scramble = if plugin == "caching_sha2_password" {
            mysql_common::scramble::scramble_sha256(&nonce, password.as_bytes()).map(|s| s.to_vec())
        } else {
            mysql_common::scramble::scramble_native(&nonce, password.as_bytes()).map(|s| s.to_vec())
        };
        let response = HandshakeResponse::new(
            scramble,
            (10, 11, 0),
            Some(user.as_bytes()),
            Some(db.as_bytes()),
            Some(AuthPlugin::from_bytes(plugin.as_bytes())),
            caps(deprecate_eof) | extra,
            None,
            1 << 30,
        );
        let mut payload = Vec::new();
        response.serialize(&mut payload);
        packet::write_packet(&mut stream, 1, &payload).await.map_err(|e| err(&e))?;
        let mut reply = read(&mut stream).await?;
        if reply.payload.first() == Some(&0xFE) {
            let switch = ParseBuf(&reply.payload).parse::<AuthSwitchRequest>(()).map_err(|e| err(&e))?;
            let nonce = switch.plugin_data();
            let nonce = nonce.strip_suffix(&[0]).unwrap_or(nonce);
            let proof = match switch.auth_plugin().as_bytes() {
                b"mysql_native_password" => {
                    mysql_common::scramble::scramble_native(nonce, password.as_bytes()).map(|s| s.to_vec())
                }
                b"caching_sha2_password" => {
                    mysql_common::scramble::scramble_sha256(nonce, password.as_bytes()).map(|s| s.to_vec())
                }
                _ => return Err("switched to an unexpected plugin".into()),
            };
            let seq = reply.last_seq.wrapping_add(1);
            packet::write_packet(&mut stream, seq, &proof.unwrap_or_default()).await.map_err(|e| err(&e))?;
            reply = read(&mut stream).await?;
        }
        // caching_sha2_password: "fast authentication succeeded", then the OK.
        if reply.payload == [0x01, 0x03] {
            reply = read(&mut stream).await?;
        }
        if reply.payload.first() != Some(&0) {
            return Err(format!("login failed: {:?}", String::from_utf8_lossy(&reply.payload)));
        }
        Ok(RawClient { stream, deprecate_eof })
    }

    /// Sends a command and returns every byte of the response, headers included.
    pub async fn command(&mut self, payload: &[u8], kind: ResponseKind) -> Result<Vec<u8>, String> {
        packet::write_packet(&mut self.stream, 0, payload).await.map_err(|e| e.to_string())?;
        self.stream.flush().await.map_err(|e| e.to_string())?;
        let mut tracker = ResponseTracker::new(kind, self.deprecate_eof);
        let mut out = Vec::new();
        for _ in 0..1_000_000 {
            let p = packet::read_logical(&mut self.stream, usize::MAX)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("closed")?;
            let mut encoded = Vec::new();
            packet::encode_packet(p.first_seq, &p.payload, &mut encoded);
            out.extend_from_slice(&encoded);
            let first = p.payload.first().copied().unwrap_or(0);
            match tracker
                .accept(first, p.payload.len().min(packet::MAX_PAYLOAD - 1), &p.payload)
                .map_err(|e| e.to_string())?
            {
                Progress::Done(_) => return Ok(out),
                Progress::More => {}
                Progress::LocalInfile => return Err("unexpected LOCAL INFILE".into()),
            }
        }
        Err("response too long".into())
    }

    pub async fn query(&mut self, sql: &str) -> Result<Vec<u8>, String> {
        let mut payload = vec![0x03];
        payload.extend_from_slice(sql.as_bytes());
        self.command(&payload, ResponseKind::Query).await
    }
}

async fn read(stream: &mut TcpStream) -> Result<packet::Logical, String> {
    packet::read_logical(stream, 1 << 20)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "closed".to_string())
}
