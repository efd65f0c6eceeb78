//! One client connection: handshake, then one command at a time until the client quits.
//!
//! The session is a small state machine: [`Session::accept`] runs the connection phase and
//! yields an authenticated session; [`Session::serve`] reads a command and dispatches it to a
//! handler; handlers route, run the command on a backend ([`Session::run`]) and update the
//! session state from the backend's answer.

mod consistency;
mod control;
mod execute;
mod explain;
pub mod handshake;
mod kill;
mod multiplex;
mod optimistic;
mod prepared;
mod state;
mod variables;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

use crate::backend::{Login, Pooled};
use crate::protocol::packet::{self, PacketError};
use crate::protocol::{command, wire};
use crate::sql_tier::{Running, Shared, SqlTier};
pub use consistency::ReadAfter;
use handshake::HandshakeError;
pub use multiplex::Pin;
use prepared::Statements;
pub use state::{History, SessionState};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client connection: {0}")]
    Client(#[from] PacketError),
    #[error("client connection: {0}")]
    ClientIo(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("malformed {0} from client")]
    Malformed(&'static str),
    #[error("access denied for user {0:?}")]
    AccessDenied(String),
    #[error("backend failed in the middle of a response: {0}")]
    BrokenResponse(String),
    #[error("the client closed the connection during the login")]
    ClosedDuringLogin,
    #[error("login not finished within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    #[error("nothing sent within {0:?} of the greeting")]
    Silent(std::time::Duration),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("user {0:?} must use TLS; refused a plaintext login")]
    InsecureTransport(String),
    #[error("idle for {0:?} (mysql.idle_timeout)")]
    Idle(std::time::Duration),
    #[error("idle inside a transaction for {0:?} (mysql.transaction_idle_timeout); rolled back")]
    IdleTransaction(std::time::Duration),
    #[error("user {0:?} is at its max_connections")]
    UserLimit(String),
}

type ClientReader = BufReader<crate::stream::ReadHalf>;
type ClientWriter = BufWriter<crate::stream::WriteHalf>;

/// Client-side buffers: commands are small, and results leave in the runs the backend side
/// reads (a write as large as the buffer bypasses it). Small buffers keep an idle client cheap
/// (10,000 idle clients: see `benches/sql-idle-clients.sh`).
const CLIENT_READ_BUFFER: usize = 2 * 1024;
const CLIENT_WRITE_BUFFER: usize = 4 * 1024;

pub struct Session {
    id: u32,
    shared: Arc<Shared>,
    /// Keeps the session counted; leads to the current configuration after a reload.
    running: Running,
    /// Counts the session under its user (for the user's `max_connections`) once logged in.
    user_slot: Option<crate::tally::Counted<String>>,
    /// Completes when the proxy drains (see [`Running::start`]).
    kick: tokio::sync::oneshot::Receiver<()>,
    draining: bool,
    peer: SocketAddr,
    reader: ClientReader,
    writer: ClientWriter,
    salt: [u8; 20],
    login: Login,
    /// Backend connections by backend index, opened on first use.
    conns: Vec<Option<Pooled>>,
    state: SessionState,
    stmts: Statements,
    /// Sequence id for the next packet rwproxy writes to the client.
    seq: u8,
    /// When the last command was answered, and the timer that closes the session
    /// `idle_timeout` (or `transaction_idle_timeout`) after it.
    idle_since: tokio::time::Instant,
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The last statement left state for the next command on its connection (warnings, found
    /// rows, next-transaction characteristics): the connection stays for one more command.
    keep_for_next: Option<Pin>,
    /// Why the session kept its connections after the last command (multiplexing).
    pinned_by: Option<Pin>,
    /// `LAST_INSERT_ID()` as the session's last insert left it, carried to borrowed connections.
    last_insert_id: u64,
    /// `ROW_COUNT()` as the session's last statement left it, when known (answered by rwproxy:
    /// the borrowed connection may have run another session's statement since).
    row_count: Option<i64>,
    /// `FOUND_ROWS()` as the session's statements left it, when known (answered by rwproxy).
    found_rows: Option<u64>,
    /// The SQL worker thread the session runs on: it borrows that thread's backend connections.
    worker: usize,
    /// The user's `multiplexing` is not off (looked up at login and at a reload).
    user_multiplexes: bool,
    /// What `KILL` from another session sees of this one, and its switch.
    handle: Arc<crate::sessions::Handle>,
    /// Listed for `KILL` once logged in.
    registered: Option<crate::sessions::Registered>,
}

/// Which idle limit closes a session.
#[derive(Debug, Clone, Copy)]
enum IdleLimit {
    Session(std::time::Duration),
    Transaction(std::time::Duration),
}

impl IdleLimit {
    fn name(self) -> &'static str {
        match self {
            IdleLimit::Session(_) => "idle_timeout",
            IdleLimit::Transaction(_) => "transaction_idle_timeout",
        }
    }
}

enum Flow {
    Continue,
    Quit,
}

/// Client packets up to this size are read without asking the packet budget (statements are
/// almost always smaller): 4,096 sessions can hold at most 64 MiB of them.
const UNBUDGETED_PACKET: usize = 16 * 1024;

/// Runs one client connection to its end. Errors are logged here: a broken client affects
/// only itself.
pub async fn run(stream: TcpStream, peer: SocketAddr, tier: Arc<SqlTier>, worker: usize) {
    let _ = stream.set_nodelay(true);
    let (running, id, kick) = Running::start(tier, peer.ip());
    let shared = running.tier().current();
    let limits = &shared.config.mysql;
    let per_source = limits.max_connections_per_source;
    let over_all = running.tier().sessions() > limits.max_client_connections;
    if over_all || per_source > 0 && running.from_source() > per_source {
        let reason = if over_all { "too_many" } else { "too_many_from_source" };
        shared.metrics.connection_refused("sql", reason);
        if let Some(count) = running.tier().refusal_log.note(reason) {
            tracing::warn!(%peer, refused = count, reason, "client connections refused with 1040 (max_client_connections / max_connections_per_source)");
        }
        refuse_too_many(stream).await;
        return;
    }
    let handshake_timeout = limits.handshake_timeout;
    let metrics = shared.metrics.clone();
    let running_tier = running.tier().clone();
    drop(shared);
    metrics.client_connected();
    // Boxed: the login's futures (TLS, RSA) would otherwise size every idle session's task.
    let accepted =
        tokio::time::timeout(handshake_timeout, Box::pin(Session::accept(stream, peer, id, running, kick)))
            .await
            .unwrap_or(Err(SessionError::HandshakeTimeout(handshake_timeout)));
    let result = match accepted {
        Ok(mut session) => {
            session.worker = worker;
            let served = session.serve().await;
            Box::pin(session.release_connections()).await;
            session.shared.metrics.multiplex_pin_changed(session.pinned_by.take(), None);
            served
        }
        Err(e) => Err(e),
    };
    metrics.client_disconnected();
    match result {
        Ok(()) => tracing::debug!(session = id, %peer, "client disconnected"),
        // Debug formatting: a user name from the network is quoted and escaped, so it cannot
        // forge log lines.
        Err(SessionError::AccessDenied(user)) => {
            tracing::info!(session = id, %peer, user = ?user, "access denied")
        }
        // A client that hangs up before it logs in (a port check, a load balancer's probe)
        // is not a problem worth a warning.
        Err(SessionError::ClosedDuringLogin) => {
            tracing::debug!(session = id, %peer, "client closed the connection during the login")
        }
        // A flood of these is one line a second.
        Err(e @ (SessionError::Silent(_) | SessionError::HandshakeTimeout(_))) => {
            let kind = if matches!(e, SessionError::Silent(_)) { "silent" } else { "login_timeout" };
            metrics.connection_refused("sql", kind);
            if let Some(count) = running_tier.refusal_log.note(kind) {
                tracing::warn!(%peer, closed = count, error = %e, "client connections closed during the login");
            }
        }
        Err(e) => tracing::warn!(session = id, %peer, error = %e, "client connection closed"),
    }
}

/// Answers a connection over the limits with `1040 Too many connections` in place of the
/// greeting (as a server does), then closes it.
async fn refuse_too_many(mut stream: TcpStream) {
    let payload = wire::err_packet_before_greeting(1040, "Too many connections");
    let mut out = Vec::with_capacity(payload.len() + 4);
    packet::encode_packet(0, &payload, &mut out);
    let write = async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
}

impl Session {
    async fn serve(&mut self) -> Result<(), SessionError> {
        loop {
            // Between commands: a shutdown closes a session that is outside a transaction
            // (one inside finishes it first).
            if self.draining && self.state.view.pinned.is_none() {
                tracing::debug!(session = self.id, "closing for shutdown");
                return Ok(());
            }
            if self.handle.is_killed() {
                tracing::info!(session = self.id, peer = %self.peer, "closed by KILL CONNECTION");
                return Ok(());
            }
            // Waiting on the buffer (not on a packet) loses nothing when a drain interrupts.
            if !self.draining {
                // Biased: a waiting command is taken without polling the timers first; the drain
                // signal comes first so that a client that never pauses still sees it.
                tokio::select! {
                    biased;
                    _ = &mut self.kick => {
                        // A kick is a drain, or a KILL (the loop's top tells them apart).
                        self.draining = !self.handle.is_killed();
                        continue;
                    }
                    filled = self.reader.fill_buf() => { filled?; }
                    () = multiplex::diagnostics_kept(self.pinned_by) => {
                        // The client did not read its warnings at once: they go, and so does
                        // the connection that held them (reset before anyone borrows it).
                        self.keep_for_next = None;
                        self.give_back_connections().await;
                        continue;
                    }
                    _ = &mut self.idle => {
                        // One timer per session, moved only when it fires: a command costs a
                        // clock read, not a timer reset.
                        let (deadline, limit) = self.idle_deadline();
                        if tokio::time::Instant::now() < deadline {
                            self.idle.as_mut().reset(deadline);
                            continue;
                        }
                        return Err(self.close_idle(limit).await);
                    }
                }
            }
            // The next command has arrived: it runs on the newest configuration if it can.
            self.follow_reload().await;
            let max = self.shared.config.mysql.max_packet_size;
            let packet = match packet::take_buffered(&mut self.reader, max) {
                Some(packet) => packet,
                None => match self.read_command(max).await? {
                    Some(packet) => packet,
                    None => return Ok(()),
                },
            };
            if packet.first_seq != 0 {
                return Err(SessionError::Malformed("command (sequence id not 0)"));
            }
            self.seq = packet.last_seq.wrapping_add(1);
            let Some(&cmd) = packet.payload.first() else {
                return Err(SessionError::Malformed("command (empty packet)"));
            };
            if let Flow::Quit = self.dispatch(cmd, packet.payload).await? {
                return Ok(());
            }
            self.give_back_connections().await;
            // Idle from the end of the answer on, as a server counts `wait_timeout`.
            self.idle_since = tokio::time::Instant::now();
            self.handle.idle_since(self.idle_since.into_std());
            self.watch_idle_transaction();
        }
    }

    /// Reads the next command. A packet over [`UNBUDGETED_PACKET`] is read only when the tier's
    /// packet budget has room for it: it waits up to `connect_timeout` for others to finish,
    /// then the client gets 1153 and is closed (its packet is left unread).
    async fn read_command(&mut self, max: usize) -> Result<Option<packet::Logical>, SessionError> {
        let Some(first) = packet::read_header(&mut self.reader).await? else {
            return Ok(None);
        };
        if first.len <= UNBUDGETED_PACKET {
            // Every statement but large ones: no budget to ask (a packet this small has no
            // continuation).
            return Ok(Some(packet::read_logical_admitted(&mut self.reader, first, max, |_| true).await?));
        }
        // Boxed: a rare path that would otherwise size every session's task.
        Box::pin(self.read_large_command(first, max)).await.map(Some)
    }

    /// [`Self::read_command`] for a packet over [`UNBUDGETED_PACKET`].
    async fn read_large_command(
        &mut self,
        first: packet::Header,
        max: usize,
    ) -> Result<packet::Logical, SessionError> {
        let tier = self.running.tier().clone();
        let mut held = tier.packets.hold();
        if first.len <= max {
            let deadline = tokio::time::Instant::now() + self.shared.config.mysql.connect_timeout;
            // Bounded by the deadline.
            while !held.grow(first.len) {
                if tokio::time::Instant::now() >= deadline {
                    let message = format!(
                        "rwproxy: a packet of {} bytes waited {:?} for memory: packets being received from clients already hold mysql.max_packet_buffers",
                        first.len, self.shared.config.mysql.connect_timeout
                    );
                    self.seq = first.seq.wrapping_add(1);
                    self.reply_err(1153, "08S01", &message).await?;
                    return Err(SessionError::Malformed("a packet over the memory budget"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        let mut admitted_first = false;
        let admit = |len: usize| {
            // The first packet is admitted above; continuations of a packet over 16 MiB grow it.
            if !admitted_first {
                admitted_first = true;
                return true;
            }
            held.grow(len)
        };
        Ok(packet::read_logical_admitted(&mut self.reader, first, max, admit).await?)
    }

    /// When the idle session is to be closed, and which limit that is: `idle_timeout`, or
    /// inside a transaction `transaction_idle_timeout` when it is shorter.
    fn idle_deadline(&self) -> (tokio::time::Instant, IdleLimit) {
        let mysql = &self.shared.config.mysql;
        let idle = (self.idle_since + mysql.idle_timeout, IdleLimit::Session(mysql.idle_timeout));
        let in_transaction = self.state.view.pinned.is_some() || self.state.view.optimistic;
        if !in_transaction || mysql.transaction_idle_timeout.is_zero() {
            return idle;
        }
        let transaction = self.idle_since + mysql.transaction_idle_timeout;
        if transaction < idle.0 {
            return (transaction, IdleLimit::Transaction(mysql.transaction_idle_timeout));
        }
        idle
    }

    /// Brings the idle timer forward when the session is inside a transaction whose idle limit
    /// comes before it. Outside transactions the timer stays where it is (it only fires early,
    /// and then moves), so a statement costs no timer reset; inside one, once per transaction.
    fn watch_idle_transaction(&mut self) {
        let (deadline, limit) = self.idle_deadline();
        if matches!(limit, IdleLimit::Transaction(_)) && deadline < self.idle.deadline() {
            self.idle.as_mut().reset(deadline);
        }
    }

    /// Tells the client why it is closed, as MySQL 8 does at `wait_timeout` (4031), and ends
    /// the session. A transaction is rolled back when its connection is reset.
    async fn close_idle(&mut self, limit: IdleLimit) -> SessionError {
        self.seq = 0;
        let message = match limit {
            IdleLimit::Session(_) => {
                "The client was disconnected by the server because of inactivity.".to_string()
            }
            IdleLimit::Transaction(after) => format!(
                "rwproxy: the client was disconnected because its transaction was idle for {after:?} \
                 (mysql.transaction_idle_timeout); the transaction was rolled back"
            ),
        };
        let _ = self.reply_err(4031, "HY000", &message).await;
        self.shared.metrics.idle_closed(limit.name());
        match limit {
            IdleLimit::Session(after) => SessionError::Idle(after),
            IdleLimit::Transaction(after) => SessionError::IdleTransaction(after),
        }
    }

    async fn dispatch(&mut self, cmd: u8, payload: Vec<u8>) -> Result<Flow, SessionError> {
        match cmd {
            command::QUIT => return Ok(Flow::Quit),
            command::PING => self.reply_ok().await?,
            command::QUERY => self.query(payload).await?,
            command::INIT_DB | command::SET_OPTION => self.session_command(payload).await?,
            command::FIELD_LIST => Box::pin(self.field_list(payload)).await?,
            command::STATISTICS => Box::pin(self.statistics(payload)).await?,
            command::STMT_PREPARE => self.stmt_prepare(payload).await?,
            command::STMT_EXECUTE => self.stmt_execute(payload).await?,
            command::STMT_FETCH => self.stmt_fetch(payload).await?,
            command::STMT_SEND_LONG_DATA => self.stmt_send_long_data(payload),
            command::STMT_CLOSE => self.stmt_close(&payload).await,
            command::STMT_RESET => self.stmt_reset(&payload).await?,
            command::RESET_CONNECTION => Box::pin(self.reset_connection()).await?,
            command::CHANGE_USER => return Box::pin(self.change_user(payload)).await,
            other => {
                let message = format!("rwproxy: command 0x{other:02x} is not supported");
                self.reply_err(1047, "08S01", &message).await?;
            }
        }
        Ok(Flow::Continue)
    }

    /// Moves the session to the configuration of a reload once nothing ties it to its backend
    /// connections: no transaction, locks, temporary tables, user variables or open cursors.
    /// The connections go back to their pools; settings are replayed on the new ones.
    async fn follow_reload(&mut self) {
        let tier = self.running.tier().clone();
        if tier.is_current(&self.shared) {
            return;
        }
        if self.pin().is_some_and(|pin| pin != Pin::Diagnostics) {
            return;
        }
        self.release_connections().await;
        self.shared = tier.current();
        self.user_multiplexes = self.user_multiplexing();
        self.handle.set_backends(self.shared.router.backends().clone());
        let backends = self.shared.router.backends().len();
        self.conns = (0..backends).map(|_| None).collect();
        self.state.follow_backends(backends);
        tracing::debug!(session = self.id, "session moved to the reloaded configuration");
    }

    async fn write_reply(&mut self, payload: &[u8]) -> Result<(), SessionError> {
        self.seq = packet::write_packet(&mut self.writer, self.seq, payload).await?;
        self.writer.flush().await?;
        Ok(())
    }

    async fn reply_ok(&mut self) -> Result<(), SessionError> {
        self.write_reply(&wire::ok_packet(self.state.status)).await
    }

    async fn reply_err(&mut self, code: u16, sql_state: &str, message: &str) -> Result<(), SessionError> {
        self.row_count = Some(-1);
        self.write_reply(&wire::err_packet(code, sql_state, message)).await
    }
}
