//! Connection-level commands: the handshake, COM_CHANGE_USER, COM_RESET_CONNECTION.

use std::net::SocketAddr;
use tokio::io::{BufReader, BufWriter};
use tokio::net::TcpStream;

use super::handshake::{self, ChangeUser, ClientLogin};
use super::prepared::Statements;
use super::{CLIENT_BUFFER, Flow, Session, SessionError, SessionState};
use crate::backend::auth_plugins::NATIVE;
use crate::backend::{Login, release};
use crate::protocol::packet;
use crate::protocol::{ResponseKind, command};
use crate::server::Running;

/// Packets of the connection phase are small; a bigger one is not a login.
const MAX_LOGIN_PACKET: usize = 64 * 1024;

impl Session {
    /// The connection phase: greeting, login, auth switch when the client started with another
    /// plugin, then OK or "Access denied".
    pub(super) async fn accept(
        stream: TcpStream,
        peer: SocketAddr,
        id: u32,
        running: Running,
        kick: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<Session, SessionError> {
        let shared = running.tier().current();
        let (r, w) = stream.into_split();
        let backends = shared.router.backends().len();
        let mut session = Session {
            id,
            peer,
            reader: BufReader::with_capacity(CLIENT_BUFFER, r),
            writer: BufWriter::with_capacity(CLIENT_BUFFER, w),
            salt: handshake::new_salt(),
            login: Login {
                user: String::new(),
                password: String::new(),
                stage1: None,
                database: None,
                collation: handshake::DEFAULT_COLLATION,
                client_caps: shared.caps,
                max_packet_size: u32::try_from(shared.config.mysql.max_packet_size).unwrap_or(u32::MAX),
            },
            conns: (0..backends).map(|_| None).collect(),
            state: SessionState::new(backends),
            stmts: Statements::default(),
            seq: 0,
            shared,
            running,
            kick,
            draining: false,
        };
        let greeting =
            handshake::greeting(&session.shared.server_version, id, &session.salt, session.shared.caps);
        session.write_reply(&greeting).await?;
        let response = session.read_auth_packet().await?;
        let login = handshake::parse_login(&response, session.shared.caps)?;
        session.authenticate(login).await?;
        session.state.view.optimistic_next = session.shared.router.new_sessions_optimistic();
        Ok(session)
    }

    /// Reads one packet of an authentication exchange and advances the sequence id past it.
    async fn read_auth_packet(&mut self) -> Result<Vec<u8>, SessionError> {
        let packet = packet::read_logical(&mut self.reader, MAX_LOGIN_PACKET)
            .await?
            .ok_or(SessionError::Malformed("login (connection closed)"))?;
        self.seq = packet.last_seq.wrapping_add(1);
        Ok(packet.payload)
    }

    /// The client's password proof for mysql_native_password: the one it sent if it used that
    /// plugin, otherwise the answer to an AuthSwitchRequest.
    async fn native_proof(&mut self, plugin: Option<&[u8]>, data: Vec<u8>) -> Result<Vec<u8>, SessionError> {
        if plugin.is_none_or(|p| p == NATIVE) && (data.is_empty() || data.len() == 20) {
            return Ok(data);
        }
        self.write_reply(&handshake::auth_switch(&self.salt)).await?;
        self.read_auth_packet().await
    }

    async fn authenticate(&mut self, login: ClientLogin) -> Result<(), SessionError> {
        let proof = self.native_proof(Some(&login.plugin), login.auth_data.clone()).await?;
        let user = self.shared.config.user(login.user.as_bytes()).cloned();
        let Some((user, credentials)) =
            user.and_then(|u| handshake::verify_user(&self.salt, &u, &proof).map(|c| (u, c)))
        else {
            self.deny(&login.user, !proof.is_empty()).await?;
            return Err(SessionError::AccessDenied(login.user));
        };
        self.login.user = user.name;
        self.login.password = credentials.password;
        self.login.stage1 = credentials.stage1;
        self.login.database = login.database;
        self.login.collation = login.collation;
        self.login.client_caps = login.caps;
        self.running.tier().login_succeeded(self.peer.ip());
        tracing::debug!(session = self.id, peer = %self.peer, user = %self.login.user, "client logged in");
        self.reply_ok().await
    }

    async fn deny(&mut self, user: &str, using_password: bool) -> Result<(), SessionError> {
        let host = self.peer.ip();
        self.shared.metrics.login_failed();
        let hold = self.running.tier().login_failed(host);
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
        let proof = self.native_proof(request.plugin.as_deref(), request.auth_data.clone()).await?;
        let user = self.shared.config.user(request.user.as_bytes()).cloned();
        let Some((user, credentials)) =
            user.and_then(|u| handshake::verify_user(&self.salt, &u, &proof).map(|c| (u, c)))
        else {
            self.deny(&request.user, !proof.is_empty()).await?;
            return Ok(Flow::Quit);
        };
        self.release_connections().await;
        self.state.reset();
        self.stmts = Statements::default();
        self.login.user = user.name;
        self.login.password = credentials.password;
        self.login.stage1 = credentials.stage1;
        self.login.database = request.database;
        if let Some(collation) = request.collation {
            self.login.collation = collation;
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
                Ok(()) => {
                    conn.applied = 0;
                    // The reset also dropped the position tracking rwproxy asked for.
                    conn.tracking_ready = false;
                }
                Err(error) => {
                    tracing::debug!(session = self.id, %error, "closing backend connection that failed to reset");
                    self.drop_connection(index);
                }
            }
        }
        self.state.reset();
        self.stmts = Statements::default();
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
