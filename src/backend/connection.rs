//! One authenticated connection to a backend.

use std::sync::Arc;
use std::time::Duration;

use mysql_common::constants::{CapabilityFlags as Caps, MariadbCapabilities};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, AuthSwitchRequest, HandshakeResponse};
use mysql_common::proto::MySerialize;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

use super::Backend;
use super::auth::{self, CACHING_SHA2, NATIVE};
use super::relay::Digest;
use crate::protocol::packet::{self, PacketError};
use crate::protocol::session_track::{Tracked, Visible};
use crate::stream::{self, ReadHalf, WriteHalf};

const BUFFER: usize = 64 * 1024;

/// Capabilities that change the shape of responses: a backend connection must use exactly the
/// client's choice of these, because its packets are relayed to the client unchanged.
pub const FORMAT_CAPS: Caps = Caps::CLIENT_PROTOCOL_41
    .union(Caps::CLIENT_DEPRECATE_EOF)
    .union(Caps::CLIENT_SESSION_TRACK)
    .union(Caps::CLIENT_MULTI_RESULTS)
    .union(Caps::CLIENT_PS_MULTI_RESULTS)
    .union(Caps::CLIENT_TRANSACTIONS);

/// Capabilities passed on from the client when the backend offers them.
pub const PASSED_CAPS: Caps = Caps::CLIENT_LONG_PASSWORD
    .union(Caps::CLIENT_FOUND_ROWS)
    .union(Caps::CLIENT_LONG_FLAG)
    .union(Caps::CLIENT_LOCAL_FILES)
    .union(Caps::CLIENT_IGNORE_SPACE)
    .union(Caps::CLIENT_INTERACTIVE)
    .union(Caps::CLIENT_MULTI_STATEMENTS);

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{backend} ({address}): connect failed: {source}")]
    Connect { backend: String, address: String, source: std::io::Error },
    #[error("{backend} ({address}): connect timed out after {timeout:?}")]
    Timeout { backend: String, address: String, timeout: Duration },
    #[error("{backend}: {message}")]
    Refused { backend: String, code: u16, message: String },
    #[error("{backend}: protocol error: {message}")]
    Protocol { backend: String, message: String },
    #[error("{backend}: {source}")]
    Packet { backend: String, source: PacketError },
    #[error("{backend}: all {max} connections (max_connections) are in use; waited {waited:?}")]
    Exhausted { backend: String, max: usize, waited: Duration },
}

impl BackendError {
    /// Whether the backend itself is unreachable (as opposed to refusing these credentials).
    pub fn is_unreachable(&self) -> bool {
        !matches!(self, BackendError::Refused { .. } | BackendError::Exhausted { .. })
    }

    /// Whether the server refused rwproxy's login for a reason of its own, one every session
    /// meets there: too many connections (1040), rwproxy's credentials or host refused (1045,
    /// 1129, 1130), TLS required (3159). Not what the client chose: a database it names that
    /// this server lacks (1049, 1044) refuses that session only.
    pub fn is_backend_refusal(&self) -> bool {
        matches!(self, BackendError::Refused { code: 1040 | 1045 | 1129 | 1130 | 1251 | 3159, .. })
    }
}

/// Who rwproxy logs in as, and with which options. `Debug` masks the password and its hash.
#[derive(Clone)]
pub struct Login {
    pub user: String,
    pub password: String,
    /// SHA1(password) when only the password hash is configured: enough for
    /// mysql_native_password, not for plugins that need the password itself.
    pub stage1: Option<[u8; 20]>,
    pub database: Option<String>,
    pub collation: u8,
    /// The capabilities negotiated with the client.
    pub client_caps: Caps,
    /// MariaDB extended capabilities negotiated with the client (extended type metadata); a
    /// backend connection must use the same, its column definitions reach the client as they are.
    pub mariadb_caps: MariadbCapabilities,
    pub max_packet_size: u32,
}

/// `SET NAMES '<charset>' COLLATE '<collation>'` for a login's collation id: what a connection
/// holds right after it logged in (MySQL's COM_RESET_CONNECTION forgets it; a statement prepared
/// in a session's login character set is prepared in it again). `None` for an id rwproxy does
/// not know.
pub fn set_names_for(collation: u8) -> Option<Vec<u8>> {
    use mysql_common::collations::{Collation, CollationId};
    let resolved = Collation::resolve(CollationId::from(u16::from(collation)));
    if resolved.id() == CollationId::UNKNOWN_COLLATION_ID {
        return None;
    }
    let mut payload = vec![crate::protocol::command::QUERY];
    payload.extend_from_slice(
        format!("SET NAMES '{}' COLLATE '{}'", resolved.charset(), resolved.collation()).as_bytes(),
    );
    Some(payload)
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &"***")
            .field("database", &self.database)
            .field("collation", &self.collation)
            .finish_non_exhaustive()
    }
}

pub struct BackendConn {
    pub backend: Arc<Backend>,
    pub(super) reader: BufReader<ReadHalf>,
    pub(super) writer: BufWriter<WriteHalf>,
    pub caps: Caps,
    /// Sequence number of the last session-history entry this connection has run.
    pub applied: u64,
    /// Counted in the backend's open connections (logged in).
    counted: bool,
    /// A command was sent and its response not fully read: not reusable.
    pub busy: bool,
    /// The server is MariaDB (it decides how the transaction position is tracked).
    pub mariadb: bool,
    /// What of the session-state data the client may see; rwproxy's own tracking is hidden.
    pub visible: Visible,
    /// Tracking of the transaction position has been asked for since the last reset.
    pub tracking_ready: bool,
    /// What the OK packets of the statement being relayed said: its GTID, whether it changed
    /// session state. Cleared before each statement.
    pub tracked: Tracked,
    /// When set, the relay adds every result byte (not the OK/EOF/ERR) to it.
    pub digest: Option<Digest>,
    /// The connection runs over TLS.
    pub tls: bool,
    /// The server's id for this connection (its greeting's): `KILL QUERY` names it.
    pub thread_id: u32,
    /// The default database the connection is in, when known.
    pub database: Option<Option<String>>,
    /// `LAST_INSERT_ID()` on this connection, as its OK packets said.
    pub last_insert_id: u64,
    /// Prepared statements on this connection, by text.
    pub statements: super::statements::StatementCache,
    /// The last statement left state for its session's next command only (warnings, the
    /// found-rows count, `SET TRANSACTION` for the next transaction): the connection is reset
    /// before another session borrows it.
    pub leftover: bool,
}

impl Drop for BackendConn {
    fn drop(&mut self) {
        if self.counted {
            self.backend.health.connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for BackendConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendConn").field("backend", &self.backend.name).finish()
    }
}

impl BackendConn {
    pub async fn connect(
        backend: Arc<Backend>,
        login: &Login,
        timeout: Duration,
    ) -> Result<Self, BackendError> {
        let timed_out = || BackendError::Timeout {
            backend: backend.name.clone(),
            address: backend.address.clone(),
            timeout,
        };
        let result = tokio::time::timeout(timeout, Self::connect_inner(backend.clone(), login))
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        match &result {
            Ok(conn) => tracing::debug!(
                backend = %backend.name, address = %backend.address, user = %login.user, tls = conn.tls,
                "logged in to backend"
            ),
            // Unreachable: the caller marks the backend failed and says so once.
            Err(e) if e.is_unreachable() => tracing::debug!(
                backend = %backend.name, address = %backend.address, user = %login.user, error = %e,
                "backend login failed"
            ),
            Err(e) => tracing::warn!(
                backend = %backend.name, address = %backend.address, user = %login.user, error = %e,
                "backend refused the login"
            ),
        }
        result
    }

    async fn connect_inner(backend: Arc<Backend>, login: &Login) -> Result<Self, BackendError> {
        let mut stream = TcpStream::connect(&backend.address).await.map_err(|source| {
            BackendError::Connect { backend: backend.name.clone(), address: backend.address.clone(), source }
        })?;
        let _ = stream.set_nodelay(true);
        // Read straight from the socket: nothing may be buffered past the greeting when TLS
        // starts after it.
        let greeting = match packet::read_logical(&mut stream, 1 << 16).await {
            Ok(Some(p)) => p,
            Ok(None) => return Err(packet_error(&backend, PacketError::Truncated)),
            Err(source) => return Err(packet_error(&backend, source)),
        };
        let plan = LoginPlan::new(&backend, &greeting, login)?;
        let tls = backend.tls.clone().map_err(|message| BackendError::Protocol {
            backend: backend.name.clone(),
            message: format!("TLS is configured but cannot be set up: {message}"),
        })?;
        let mut seq = greeting.last_seq.wrapping_add(1);
        let mut payload = plan.response;
        // "preferred": TLS when the server offers it; "required": refused without.
        let offered = plan.server_caps.contains(Caps::CLIENT_SSL);
        let required = backend.tls_config.mode == crate::config::TlsMode::Required;
        if required && !offered {
            return Err(protocol(&backend, "TLS is required (tls) but the server does not offer it"));
        }
        let (reader, writer) = match tls.filter(|_| offered) {
            None => stream::plain(stream),
            Some(tls) => {
                // CLIENT_SSL in the response, whose first 32 bytes are the SSLRequest.
                let flags = plan.caps | Caps::CLIENT_SSL;
                if let Some(first) = payload.get_mut(..4) {
                    first.copy_from_slice(&flags.bits().to_le_bytes());
                }
                let request = payload.get(..32).unwrap_or_default();
                let sent = packet::write_packet(&mut stream, seq, request).await;
                seq = sent.map_err(|source| packet_error(&backend, source))?;
                let upgraded = tls.connector.connect(tls.server_name.clone(), stream).await.map_err(|e| {
                    protocol(&backend, format!("TLS handshake with {} failed: {e}", backend.address))
                })?;
                stream::tls(upgraded)
            }
        };
        let mut conn = BackendConn {
            tls: reader.is_tls(),
            reader: BufReader::with_capacity(BUFFER, reader),
            writer: BufWriter::with_capacity(BUFFER, writer),
            backend,
            caps: plan.caps,
            applied: 0,
            counted: false,
            busy: false,
            mariadb: plan.mariadb,
            thread_id: plan.thread_id,
            visible: Visible {
                client_tracks: login.client_caps.contains(Caps::CLIENT_SESSION_TRACK),
                hide_last_gtid: false,
                hide_gtids: false,
                hide_state_change: false,
            },
            tracking_ready: false,
            tracked: Tracked::default(),
            digest: None,
            database: Some(login.database.clone()),
            last_insert_id: 0,
            statements: super::statements::StatementCache::default(),
            leftover: false,
        };
        conn.send(seq, &payload).await?;
        conn.finish_auth(plan.plugin, plan.nonce, login).await?;
        conn.backend.health.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        conn.counted = true;
        Ok(conn)
    }

    /// A connection of rwproxy's own (the primary-position fetch): not one of the clients'
    /// connections the status page counts.
    pub fn not_a_client(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.backend.health.connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn protocol(&self, message: impl Into<String>) -> BackendError {
        protocol(&self.backend, message)
    }

    fn refused(&self, payload: &[u8]) -> BackendError {
        refused(&self.backend, payload)
    }

    /// Reads one logical packet; the connection closing is an error here.
    pub async fn read_packet(&mut self) -> Result<packet::Logical, BackendError> {
        let name = &self.backend.name;
        match packet::read_logical(&mut self.reader, usize::MAX).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(BackendError::Packet { backend: name.clone(), source: PacketError::Truncated }),
            Err(source) => Err(BackendError::Packet { backend: name.clone(), source }),
        }
    }

    /// Writes and flushes one logical packet.
    pub async fn send(&mut self, seq: u8, payload: &[u8]) -> Result<(), BackendError> {
        let result = async {
            if payload.len() < packet::MAX_PAYLOAD && self.writer.buffer().is_empty() {
                return packet::write_packet_direct(self.writer.get_mut(), seq, payload).await;
            }
            packet::write_packet(&mut self.writer, seq, payload).await?;
            self.writer.flush().await?;
            Ok::<_, PacketError>(())
        }
        .await;
        result.map_err(|source| BackendError::Packet { backend: self.backend.name.clone(), source })
    }

    /// Follows the server through auth switches and caching_sha2 exchanges until OK or ERR.
    async fn finish_auth(
        &mut self,
        mut plugin: Vec<u8>,
        mut nonce: Vec<u8>,
        login: &Login,
    ) -> Result<(), BackendError> {
        let password = login.password.as_bytes();
        // Bounded: a well-behaved server needs at most four round trips.
        for _ in 0..6 {
            let reply = self.read_packet().await?;
            let seq = reply.last_seq.wrapping_add(1);
            match reply.payload.first() {
                Some(0x00) => return Ok(()),
                Some(0xFF) => return Err(self.refused(&reply.payload)),
                Some(0xFE) => {
                    let switch = ParseBuf(&reply.payload)
                        .parse::<AuthSwitchRequest>(())
                        .map_err(|e| self.protocol(format!("bad auth switch: {e}")))?;
                    plugin = switch.auth_plugin().as_bytes().to_vec();
                    nonce = switch.plugin_data().to_vec();
                    let data = match login.stage1 {
                        Some(stage1) if plugin == NATIVE => Some(auth::native_from_stage1(&nonce, &stage1)),
                        Some(_) => None,
                        None => auth::auth_response(&plugin, &nonce, password),
                    };
                    let data = data.ok_or_else(|| {
                        let plugin = String::from_utf8_lossy(&plugin);
                        if login.stage1.is_some() {
                            self.protocol(format!("the backend asks for {plugin}, which needs the password; this user is configured with password_hash only"))
                        } else {
                            self.protocol(format!("unsupported auth plugin {plugin}"))
                        }
                    })?;
                    self.send(seq, &data).await?;
                }
                Some(0x01) if plugin == CACHING_SHA2 => match reply.payload.get(1) {
                    Some(3) => {} // fast auth succeeded; OK follows
                    Some(4) => self.full_auth(seq, password, &nonce).await?,
                    _ if !self.backend.public_key_retrieval || self.tls => {
                        return Err(self.protocol("the server sent a public key rwproxy did not ask for"));
                    }
                    _ => {
                        let pem = &reply.payload[1..];
                        let encrypted = auth::encrypt_password(password, &nonce, pem)
                            .ok_or_else(|| self.protocol("bad RSA public key from server"))?;
                        self.send(seq, &encrypted).await?;
                    }
                },
                _ => return Err(self.protocol("unexpected packet during authentication")),
            }
        }
        Err(self.protocol("authentication did not finish"))
    }

    /// caching_sha2 full authentication: the password in the clear over TLS (as MySQL's own
    /// client does), else encrypted with the pinned public key, else with one asked of the
    /// server only where `allow_public_key_retrieval` says so (a man in the middle could
    /// answer with his own key).
    async fn full_auth(&mut self, seq: u8, password: &[u8], nonce: &[u8]) -> Result<(), BackendError> {
        if self.tls {
            let mut clear = password.to_vec();
            clear.push(0);
            return self.send(seq, &clear).await;
        }
        let pinned = self.backend.public_key.clone().map_err(|e| self.protocol(e))?;
        match pinned {
            Some(pem) => {
                let encrypted = auth::encrypt_password(password, nonce, &pem)
                    .ok_or_else(|| self.protocol("server_public_key cannot encrypt the password"))?;
                self.send(seq, &encrypted).await
            }
            None if self.backend.public_key_retrieval => self.send(seq, &[0x02]).await,
            None => Err(self.protocol(
                "caching_sha2_password full authentication needs TLS to the backend, a pinned \
                 server_public_key, or allow_public_key_retrieval = true",
            )),
        }
    }

    /// Whether the server closed this idle connection (EOF, or an unsolicited packet such as
    /// the error a killed connection receives). Polls the socket once and never waits: no
    /// timer, no syscall beyond one non-blocking read attempt.
    pub fn is_closed(&mut self) -> bool {
        use std::task::{Context, Poll, Waker};
        use tokio::io::AsyncBufRead;
        let mut cx = Context::from_waker(Waker::noop());
        !matches!(std::pin::Pin::new(&mut self.reader).poll_fill_buf(&mut cx), Poll::Pending)
    }

    /// Waits until the server has begun to answer (bytes are buffered); the relay then reads
    /// them. An error is left for the relay to meet and report.
    pub async fn answer_started(&mut self) {
        use tokio::io::AsyncBufReadExt;
        let _ = self.reader.fill_buf().await;
    }

    /// A session's setting ran here. One that sets `session_track_state_change` makes the
    /// client the owner of that tracking: its entries reach the client from now on (and a
    /// client that turns it off leaves rwproxy without the server's word on state changes).
    pub fn ran_setting(&mut self, payload: &[u8]) {
        const NAME: &[u8] = b"session_track_state_change";
        if payload.windows(NAME.len()).any(|w| w.eq_ignore_ascii_case(NAME)) {
            self.visible.hide_state_change = false;
        }
    }

    /// After COM_RESET_CONNECTION: statements, tracking and diagnostics are gone.
    pub fn was_reset(&mut self) {
        self.applied = 0;
        self.tracking_ready = false;
        self.statements.clear();
        self.last_insert_id = 0;
        self.leftover = false;
        // MySQL keeps the database, MariaDB's documentation does not say: look again.
        self.database = None;
    }

    pub fn deprecate_eof(&self) -> bool {
        self.caps.contains(Caps::CLIENT_DEPRECATE_EOF)
    }
}

/// What the greeting decides about a login: the capabilities, the first auth response, the
/// handshake response to send (before any TLS flag).
struct LoginPlan {
    server_caps: Caps,
    caps: Caps,
    mariadb: bool,
    thread_id: u32,
    plugin: Vec<u8>,
    nonce: Vec<u8>,
    response: Vec<u8>,
}

impl LoginPlan {
    fn new(backend: &Backend, greeting: &packet::Logical, login: &Login) -> Result<LoginPlan, BackendError> {
        if greeting.payload.first() == Some(&0xFF) {
            return Err(refused(backend, &greeting.payload));
        }
        let handshake =
            crate::protocol::wire::parse_greeting(&greeting.payload).map_err(|e| protocol(backend, e))?;
        let server_caps = handshake.capabilities();
        let wanted_format = login.client_caps & FORMAT_CAPS;
        if !server_caps.contains(wanted_format) {
            let missing = wanted_format.difference(server_caps);
            return Err(protocol(backend, format!("server lacks capabilities the client uses: {missing:?}")));
        }
        let mut caps = wanted_format
            | (login.client_caps & PASSED_CAPS & server_caps)
            | (server_caps
                & (Caps::CLIENT_SECURE_CONNECTION
                    | Caps::CLIENT_PLUGIN_AUTH
                    | Caps::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA));
        if login.database.is_some() {
            caps |= Caps::CLIENT_CONNECT_WITH_DB;
        }
        let server_mariadb = mariadb_caps(&handshake);
        if !server_mariadb.contains(login.mariadb_caps) {
            let missing = login.mariadb_caps.difference(server_mariadb);
            return Err(protocol(
                backend,
                format!("server lacks MariaDB capabilities the client uses: {missing:?}"),
            ));
        }
        // Always: OK packets then carry the transaction position of writes (see
        // `protocol::session_track`); what the client did not ask for is taken out on relay.
        caps |= server_caps & Caps::CLIENT_SESSION_TRACK;
        let nonce = handshake.nonce();
        let plugin = handshake.auth_plugin_name_ref().unwrap_or(NATIVE).to_vec();
        let (plugin, data) =
            match (login.stage1, auth::auth_response(&plugin, &nonce, login.password.as_bytes())) {
                (Some(stage1), _) => (NATIVE.to_vec(), auth::native_from_stage1(&nonce, &stage1)),
                (None, Some(data)) => (plugin, data),
                (None, None) => (
                    NATIVE.to_vec(),
                    auth::auth_response(NATIVE, &nonce, login.password.as_bytes()).unwrap_or_default(),
                ),
            };
        let version = handshake.server_version_parsed().unwrap_or((5, 7, 0));
        let response = HandshakeResponse::new(
            Some(data),
            version,
            Some(login.user.as_bytes()),
            login.database.as_deref().map(str::as_bytes),
            Some(AuthPlugin::from_bytes(&plugin)),
            caps,
            None,
            login.max_packet_size,
        )
        .with_mariadb_ext_capabilities(login.mariadb_caps);
        let mut payload = Vec::new();
        response.serialize(&mut payload);
        // The client's character set follows it to the backend. mysql_common picks utf8mb4 and
        // has no setter; the field sits at a fixed offset (capabilities 4 + max packet 4).
        if let Some(byte) = payload.get_mut(8) {
            *byte = login.collation;
        }
        Ok(LoginPlan {
            server_caps,
            caps,
            mariadb: handshake.server_version_str().contains("MariaDB"),
            thread_id: handshake.connection_id(),
            plugin,
            nonce,
            response: payload,
        })
    }
}

fn protocol(backend: &Backend, message: impl Into<String>) -> BackendError {
    BackendError::Protocol { backend: backend.name.clone(), message: message.into() }
}

fn refused(backend: &Backend, payload: &[u8]) -> BackendError {
    let code = payload.get(1..3).map_or(0, |c| u16::from_le_bytes([c[0], c[1]]));
    // An ERR sent instead of a greeting (1040 Too many connections, a host not allowed) has no
    // SQLSTATE: the message starts right after the code.
    let text = if payload.get(3) == Some(&b'#') { payload.get(9..) } else { payload.get(3..) };
    let text = text.unwrap_or_default();
    BackendError::Refused {
        backend: backend.name.clone(),
        code,
        message: format!("{} ({code})", String::from_utf8_lossy(text)),
    }
}

/// A greeting's MariaDB extended capabilities: only a MariaDB server that clears
/// `CLIENT_LONG_PASSWORD` (MariaDB's `CLIENT_MYSQL`) sends them.
pub fn mariadb_caps(greeting: &mysql_common::packets::HandshakePacket<'_>) -> MariadbCapabilities {
    if greeting.capabilities().contains(Caps::CLIENT_LONG_PASSWORD) {
        MariadbCapabilities::empty()
    } else {
        greeting.mariadb_ext_capabilities()
    }
}

fn packet_error(backend: &Backend, source: PacketError) -> BackendError {
    BackendError::Packet { backend: backend.name.clone(), source }
}

/// What a server's greeting says about it.
#[derive(Debug, Clone)]
pub struct Probed {
    pub version: String,
    pub caps: Caps,
    /// MariaDB's extended capabilities (meaningful when `CLIENT_LONG_PASSWORD` is clear).
    pub mariadb_caps: MariadbCapabilities,
}

/// Reads the greeting of the server at `address`, without logging in.
pub async fn probe(address: &str, timeout: Duration) -> Option<Probed> {
    let attempt = async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        let greeting = packet::read_logical(&mut stream, 1 << 16).await.ok()??;
        let handshake = crate::protocol::wire::parse_greeting(&greeting.payload).ok()?;
        Some(Probed {
            version: handshake.server_version_str().into_owned(),
            caps: handshake.capabilities(),
            mariadb_caps: mariadb_caps(&handshake),
        })
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
}
