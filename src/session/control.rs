//! Connection-level commands: the handshake, COM_CHANGE_USER, COM_RESET_CONNECTION.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

use super::handshake::{self, ChangeUser, ClientLogin, HandshakeError};
use super::prepared::Statements;
use super::{CLIENT_READ_BUFFER, CLIENT_WRITE_BUFFER, Flow, Session, SessionError, SessionState};
use crate::backend::auth_plugins::NATIVE;
use crate::backend::{Login, release};
use crate::config::{ClientAuth, UserConfig};
use crate::protocol::packet;
use crate::protocol::{ResponseKind, command};
use crate::sql_tier::Running;

/// Packets of the connection phase are small; a bigger one is not a login.
const MAX_LOGIN_PACKET: usize = 64 * 1024;

impl Session {
    /// The connection phase: greeting, login, auth switch when the client started with another
    /// plugin, then OK or "Access denied".
    pub(super) async fn accept(
        mut stream: TcpStream,
        peer: SocketAddr,
        id: u32,
        running: Running,
        kick: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<Session, SessionError> {
        let shared = running.tier().current();
        let salt = handshake::new_salt();
        let offered = shared.offered_caps();
        let mut out = Vec::with_capacity(128);
        let plugin = ClientAuth::for_flavour(shared.server_version.contains("MariaDB"));
        let greeting =
            handshake::greeting(&shared.server_version, id, &salt, (offered, shared.mariadb_caps), plugin);
        packet::encode_packet(0, &greeting, &mut out);
        stream.write_all(&out).await?;
        // A connection that says nothing is no client: it gives its slot back soon.
        let first_byte = shared.config.mysql.login_first_byte_timeout;
        if tokio::time::timeout(first_byte, stream.readable()).await.is_err() {
            return Err(SessionError::Silent(first_byte));
        }
        // Straight from the socket, exactly one packet: after an SSLRequest the client's TLS
        // handshake follows at once, and those bytes belong to TLS.
        let first = packet::read_logical(&mut stream, MAX_LOGIN_PACKET)
            .await?
            .ok_or(SessionError::ClosedDuringLogin)?;
        let (halves, response) = if handshake::is_tls_request(&first.payload) {
            let config = shared.tls.clone().ok_or(HandshakeError::TlsRequested)?;
            let tls =
                tokio_rustls::TlsAcceptor::from(config).accept(stream).await.map_err(SessionError::Tls)?;
            (crate::stream::tls(tls), None)
        } else {
            (crate::stream::plain(stream), Some(first.payload))
        };
        let (r, w) = halves;
        let idle_timeout = shared.config.mysql.idle_timeout;
        let backends = shared.router.backends().len();
        let shared_backends = shared.router.backends().clone();
        let mut session = Session {
            id,
            peer,
            reader: BufReader::with_capacity(CLIENT_READ_BUFFER, r),
            writer: BufWriter::with_capacity(CLIENT_WRITE_BUFFER, w),
            salt,
            login: Login {
                user: String::new(),
                password: String::new(),
                stage1: None,
                database: None,
                collation: handshake::DEFAULT_COLLATION,
                client_caps: shared.caps,
                mariadb_caps: mysql_common::constants::MariadbCapabilities::empty(),
                max_packet_size: u32::try_from(shared.config.mysql.max_packet_size).unwrap_or(u32::MAX),
            },
            conns: (0..backends).map(|_| None).collect(),
            state: SessionState::new(backends),
            stmts: Statements::default(),
            seq: first.last_seq.wrapping_add(1),
            shared,
            running,
            user_slot: None,
            idle_since: tokio::time::Instant::now(),
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            kick,
            draining: false,
            keep_for_next: None,
            pinned_by: None,
            last_insert_id: 0,
            row_count: None,
            found_rows: None,
            worker: 0,
            user_multiplexes: true,
            handle: Arc::new(crate::sessions::Handle::new(peer, "", shared_backends)),
            registered: None,
        };
        let response = match response {
            Some(payload) => payload,
            None => session.read_auth_packet().await?,
        };
        let login = handshake::parse_login(&response, offered, session.shared.mariadb_caps)?;
        session.authenticate(login).await?;
        session.state.view.optimistic_next = session.shared.router.new_sessions_optimistic();
        Ok(session)
    }

    /// Reads one packet of an authentication exchange and advances the sequence id past it.
    async fn read_auth_packet(&mut self) -> Result<Vec<u8>, SessionError> {
        let packet = packet::read_logical(&mut self.reader, MAX_LOGIN_PACKET)
            .await?
            .ok_or(SessionError::ClosedDuringLogin)?;
        self.seq = packet.last_seq.wrapping_add(1);
        Ok(packet.payload)
    }

    /// The plugin `user` authenticates with (the default one for an unknown user, so that a
    /// denial looks the same either way).
    fn wanted_auth(&self, user: &str) -> ClientAuth {
        let default = ClientAuth::for_flavour(self.shared.server_version.contains("MariaDB"));
        self.shared.config.user(user.as_bytes()).map_or(default, |u| u.auth_plugin(default))
    }

    /// The client's password proof under `wanted`: the one it sent if it used that plugin,
    /// otherwise the answer to an AuthSwitchRequest.
    async fn auth_proof(
        &mut self,
        plugin: Option<&[u8]>,
        data: Vec<u8>,
        wanted: ClientAuth,
    ) -> Result<Vec<u8>, SessionError> {
        let name = handshake::plugin_name(wanted);
        // No plugin name: a client without CLIENT_PLUGIN_AUTH speaks mysql_native_password.
        let used = plugin.unwrap_or(NATIVE);
        if used == name && (data.is_empty() || data.len() == handshake::proof_len(wanted)) {
            return Ok(data);
        }
        self.write_reply(&handshake::auth_switch(wanted, &self.salt)).await?;
        self.read_auth_packet().await
    }

    async fn authenticate(&mut self, login: ClientLogin) -> Result<(), SessionError> {
        let wanted = self.wanted_auth(&login.user);
        let proof = self.auth_proof(Some(&login.plugin), login.auth_data.clone(), wanted).await?;
        let Some((user, credentials)) = self.verify(&login.user, &proof) else {
            self.deny(&login.user, !proof.is_empty()).await?;
            return Err(SessionError::AccessDenied(login.user));
        };
        self.admit(&user).await?;
        self.login.user = user.name;
        self.login.password = credentials.password;
        self.login.stage1 = credentials.stage1;
        self.login.database = login.database;
        self.login.collation = login.collation;
        self.login.client_caps = login.caps;
        self.login.mariadb_caps = login.mariadb_caps;
        self.running.tier().login_succeeded(self.peer.ip(), &self.login.user);
        tracing::debug!(session = self.id, peer = %self.peer, user = %self.login.user, "client logged in");
        if wanted == ClientAuth::CachingSha2 {
            self.write_reply(&handshake::FAST_AUTH_OK).await?;
        }
        self.reply_ok().await
    }

    /// The user, if the proof is right and the user may log in from this address (a wrong
    /// address is answered like a wrong password, as MySQL's `user@host` is).
    fn verify(&self, name: &str, proof: &[u8]) -> Option<(UserConfig, handshake::Credentials)> {
        let user = self.shared.config.user(name.as_bytes()).filter(|u| u.allows_host(self.peer.ip()))?;
        let credentials = handshake::verify_user(&self.salt, user, self.wanted_auth(name), proof)?;
        Some((user.clone(), credentials))
    }

    /// Checks what a proven user still needs: TLS where required, and a free session under the
    /// user's `max_connections`. Takes the user's session slot.
    async fn admit(&mut self, user: &UserConfig) -> Result<(), SessionError> {
        let tls_required =
            user.require_tls || self.shared.config.mysql.tls.as_ref().is_some_and(|t| t.required);
        if tls_required && !self.reader.get_ref().is_tls() {
            let message = format!(
                "Connections using insecure transport are prohibited: user '{}' must connect with TLS",
                user.name
            );
            self.reply_err(3159, "HY000", &message).await?;
            return Err(SessionError::InsecureTransport(user.name.clone()));
        }
        let slot = self.running.count_user(&user.name);
        if user.max_connections > 0 && slot.count > user.max_connections {
            let message = format!(
                "User '{}' has exceeded the 'max_user_connections' resource (current value: {})",
                user.name, user.max_connections
            );
            self.reply_err(1226, "42000", &message).await?;
            return Err(SessionError::UserLimit(user.name.clone()));
        }
        self.user_slot = Some(slot);
        self.user_multiplexes = user.multiplexing != Some(false);
        self.handle.set_user(&user.name);
        if self.registered.is_none() {
            self.registered = Some(self.running.tier().registry.register(self.id, self.handle.clone()));
        }
        Ok(())
    }

    async fn deny(&mut self, user: &str, using_password: bool) -> Result<(), SessionError> {
        let host = self.peer.ip();
        self.shared.metrics.login_failed();
        let hold = self.running.tier().login_failed(host, user);
        if !hold.is_zero() {
            tracing::debug!(session = self.id, peer = %self.peer, ?hold, "repeated failed logins; denial delayed");
            tokio::time::sleep(hold).await;
        }
        let using = if using_password { "YES" } else { "NO" };
        let message = format!("Access denied for user '{user}'@'{host}' (using password: {using})");
        self.reply_err(1045, "28000", &message).await
    }

    /// COM_CHANGE_USER: re-authenticates the client; backend connections are closed and reopened
    /// lazily as the new user, and every pin, replayed setting and statement is forgotten.
    pub(super) async fn change_user(&mut self, payload: Vec<u8>) -> Result<Flow, SessionError> {
        let request: ChangeUser =
            handshake::parse_change_user(payload.get(1..).unwrap_or_default(), self.login.client_caps)
                .ok_or(SessionError::Malformed("COM_CHANGE_USER"))?;
        let wanted = self.wanted_auth(&request.user);
        let proof = self.auth_proof(request.plugin.as_deref(), request.auth_data.clone(), wanted).await?;
        let Some((user, credentials)) = self.verify(&request.user, &proof) else {
            self.deny(&request.user, !proof.is_empty()).await?;
            return Ok(Flow::Quit);
        };
        // The old user's slot is given back first: changing to the same user is no new session.
        self.user_slot = None;
        if let Err(e) = self.admit(&user).await {
            tracing::info!(session = self.id, error = %e, "COM_CHANGE_USER refused");
            return Ok(Flow::Quit);
        }
        self.release_connections().await;
        self.state.reset();
        self.stmts = Statements::default();
        self.row_count = None;
        self.found_rows = None;
        self.login.user = user.name;
        self.login.password = credentials.password;
        self.login.stage1 = credentials.stage1;
        self.login.database = request.database;
        if let Some(collation) = request.collation {
            self.login.collation = collation;
        }
        if wanted == ClientAuth::CachingSha2 {
            self.write_reply(&handshake::FAST_AUTH_OK).await?;
        }
        self.reply_ok().await?;
        Ok(Flow::Continue)
    }

    /// COM_RESET_CONNECTION: resets every open backend connection and rwproxy's own session
    /// state (pins, replayed settings, prepared statements).
    pub(super) async fn reset_connection(&mut self) -> Result<(), SessionError> {
        for index in 0..self.conns.len() {
            let Some(conn) = self.conns[index].as_mut() else {
                continue;
            };
            let reset = async {
                let outcome = conn.run_silently(&[command::RESET_CONNECTION], ResponseKind::Query).await?;
                if outcome.error.is_some() { Err("reset refused".to_string()) } else { Ok(()) }
            };
            match reset.await {
                // The reset also dropped the position tracking rwproxy asked for.
                Ok(()) => conn.was_reset(),
                Err(error) => {
                    tracing::debug!(session = self.id, %error, "closing backend connection that failed to reset");
                    self.drop_connection(index);
                }
            }
        }
        self.state.reset();
        if !self.shared.server_version.contains("MariaDB") {
            // MySQL's reset puts a connection in the server's global character set, not the
            // login's (MariaDB keeps the login's): every connection the session uses from now
            // on, borrowed ones too, must be where a direct connection would be.
            let mut to_global = vec![command::QUERY];
            to_global.extend_from_slice(
                b"SET character_set_client = DEFAULT, character_set_results = DEFAULT, \
                  character_set_connection = DEFAULT, collation_connection = DEFAULT",
            );
            self.state.history.push(&to_global);
        }
        self.stmts = Statements::default();
        self.keep_for_next = None;
        self.last_insert_id = 0;
        self.row_count = None;
        self.found_rows = None;
        self.reply_ok().await
    }

    pub(super) fn drop_connection(&mut self, index: usize) {
        if let Some(slot) = self.conns.get_mut(index) {
            *slot = None;
        }
        self.stmts.forget_backend(index);
    }

    /// Gives every backend connection back to its pool (reset there); statements go too.
    pub(super) async fn release_connections(&mut self) {
        for index in 0..self.conns.len() {
            if let Some(conn) = self.conns[index].take() {
                release(conn).await;
            }
            self.stmts.forget_backend(index);
        }
    }
}
