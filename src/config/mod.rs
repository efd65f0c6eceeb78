//! Configuration: serde structs by domain, unknown keys rejected, every problem reported with
//! its key and line. Parsing and validation are separate so `--check-config` can list all
//! problems at once.

mod duration;
mod env;
mod http;
mod security;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

pub use duration::parse_duration;
pub use http::{Algorithm, HttpConfig, HttpHealthConfig, HttpServerConfig};
pub use security::{AddressList, BackendTls, Network, SqlTls, TlsMode, Verify};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0}")]
    Parse(String),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// One validation problem: the key it concerns, the line it is on, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.key, self.message)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// On SIGTERM/SIGINT: how long sessions get to finish their transaction and HTTP requests
    /// to finish before rwproxy closes them. Default `"30s"`. (A top-level key: write it before
    /// the first `[section]`.)
    #[serde(default = "default_shutdown_timeout", with = "duration::serde_str")]
    pub shutdown_timeout: Duration,
    /// Worker threads of the runtime: 0 (default) = one per core, 1 = a single thread. A
    /// top-level key; read at start only.
    #[serde(default)]
    pub worker_threads: usize,
    pub mysql: MysqlConfig,
    #[serde(default)]
    pub monitor: MonitorConfig,
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// The HTTP load balancer; off when absent.
    #[serde(default)]
    pub http: Option<HttpConfig>,
}

/// Backend health and replication-lag checks. `Debug` masks the password.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// Checks run at all. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Monitor login. Default: the first `[[mysql.users]]` entry. Needs `REPLICATION CLIENT`
    /// (MariaDB: `SLAVE MONITOR`) for replica status, and with `heartbeat`, `CREATE`, `INSERT`,
    /// `UPDATE` on the heartbeat table's database (on the primary; it replicates).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Time between checks. Default `"500ms"`.
    #[serde(default = "default_interval", with = "duration::serde_str")]
    pub interval: Duration,
    /// Time one check may take. Default `"1s"`.
    #[serde(default = "default_check_timeout", with = "duration::serde_str")]
    pub timeout: Duration,
    /// Consecutive good checks that bring a backend back. Default 2.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive bad checks that take a backend out. Default 3.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// A replica further behind than this leaves the read pool. Default `"2s"`.
    #[serde(default = "default_max_lag", with = "duration::serde_str")]
    pub max_replication_lag: Duration,
    /// rwproxy writes `ts = NOW(6)` to `heartbeat_table` on the primary every interval and
    /// measures each replica's lag from it, in milliseconds. Default `true`; without it, lag is
    /// `Seconds_Behind_Master` (whole seconds, and known to lie).
    #[serde(default = "yes")]
    pub heartbeat: bool,
    /// Default `"rwproxy.heartbeat"`; created when missing (database too) if allowed.
    #[serde(default = "default_heartbeat_table")]
    pub heartbeat_table: String,
    /// Where reads go when no replica is usable: `"primary"` (default), `"least_lagged"` (the
    /// least-lagging replica that is still up), or `"error"`.
    #[serde(default)]
    pub all_replicas_down: AllReplicasDown,
    /// Follow a failover done by another tool: the one backend with `read_only = OFF` is the
    /// primary. Default `false`.
    #[serde(default)]
    pub detect_primary: bool,
}

impl std::fmt::Debug for MonitorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorConfig")
            .field("enabled", &self.enabled)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            enabled: true,
            user: None,
            password: None,
            interval: default_interval(),
            timeout: default_check_timeout(),
            rise: default_rise(),
            fall: default_fall(),
            max_replication_lag: default_max_lag(),
            heartbeat: true,
            heartbeat_table: default_heartbeat_table(),
            all_replicas_down: AllReplicasDown::default(),
            detect_primary: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AllReplicasDown {
    #[default]
    Primary,
    LeastLagged,
    Error,
}

/// The admin HTTP listener: `/metrics`, `/status`, `/health`, and the status page at `/`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: Spanned<String>,
    /// Bearer token that `POST /reload` (and any write endpoint) must carry
    /// (`Authorization: Bearer …`). Without one, writes are taken from loopback peers only.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Peers allowed to connect (`firewall = { allow = ["127.0.0.0/8"], deny = [] }`); others
    /// are closed before anything is read. Default: everyone.
    #[serde(default)]
    pub firewall: AddressList,
    /// Without a `token`, a request must name this listener in its `Host` header: an IP
    /// address, `localhost`, or one of these names (e.g. `["rwproxy"]` for a Prometheus
    /// that scrapes `rwproxy:9090`). A web page whose own name resolves to 127.0.0.1 (DNS
    /// rebinding) is refused. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_names: Vec<String>,
}

/// A secret from the config: never printed by `Debug`.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlConfig {
    /// Address the SQL proxy listens on, e.g. `"127.0.0.1:6033"`.
    pub listen: Spanned<String>,
    /// Users rwproxy authenticates clients as; it logs in to backends with the same credentials.
    #[serde(default)]
    pub users: Vec<Spanned<UserConfig>>,
    pub backends: Vec<Spanned<BackendConfig>>,
    #[serde(default)]
    pub routing: RoutingConfig,
    /// How long to wait for a backend connection to be established and authenticated.
    /// Default `"2s"`.
    #[serde(default = "default_connect_timeout", with = "duration::serde_str")]
    pub connect_timeout: Duration,
    /// Largest client packet accepted, in bytes; a larger one closes that client.
    /// Default 64 MiB (MariaDB's own `max_allowed_packet` default is 16 MiB).
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: usize,
    /// Bytes of client packets being received, over all sessions, for packets over 16 KiB: a
    /// packet that does not fit waits (up to `connect_timeout`) for others to finish, then its
    /// client gets 1153 and is closed. Default 64 MiB (at least `max_packet_size`): clients
    /// that announce large packets and send them slowly cannot grow rwproxy's memory.
    #[serde(default = "default_max_packet_buffers")]
    pub max_packet_buffers: usize,
    /// Server version announced to clients. Default: the primary's own version string, read at
    /// start-up, or `"8.0.0-rwproxy"` when the primary cannot be reached then.
    #[serde(default)]
    pub server_version: Option<String>,
    /// Idle backend connections kept per backend for reuse by later sessions (each reset with
    /// COM_RESET_CONNECTION before it is reused). Default 16; 0 disables pooling.
    #[serde(default = "default_max_idle")]
    pub max_idle_connections: usize,
    /// An idle backend connection that no session borrows for this long is closed (so a quiet
    /// proxy gives the servers their connection slots back, well before the servers'
    /// `wait_timeout` would cut the connection). Default `"10m"`; `"0s"` keeps them.
    #[serde(default = "default_backend_idle_timeout", with = "duration::serde_str")]
    pub backend_idle_timeout: Duration,
    /// A pooled backend connection older than this is closed when it is next idle, so that
    /// connections are renewed (server-side memory a long-lived connection gathers, settings
    /// changed on the server). A session's next statement takes another. Default `"0s"`: no
    /// limit.
    #[serde(default, with = "duration::serde_str")]
    pub backend_max_age: Duration,
    /// Time a client has for the whole login, from connect to OK; one that takes longer is
    /// closed (a deadline for the phase, not reset by each byte). Default `"10s"`.
    #[serde(default = "default_handshake_timeout", with = "duration::serde_str")]
    pub handshake_timeout: Duration,
    /// Client connections served at once; one more gets `1040 Too many connections` and is
    /// closed. Default 4096.
    #[serde(default = "default_max_client_connections")]
    pub max_client_connections: usize,
    /// Client connections from one source address at once (0 = no limit); one more gets
    /// 1040. Default 1024: one host cannot take every slot (an application server's pools
    /// seldom hold more).
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// Time from the greeting to the first byte of the client's answer: a connection that says
    /// nothing is no client, and gives its slot back this soon rather than at
    /// `handshake_timeout`. Default `"2s"`.
    #[serde(default = "default_login_first_byte_timeout", with = "duration::serde_str")]
    pub login_first_byte_timeout: Duration,
    /// A client that sends no command for this long is closed (MySQL's `wait_timeout`).
    /// Default `"8h"`.
    #[serde(default = "default_client_idle_timeout", with = "duration::serde_str")]
    pub idle_timeout: Duration,
    /// A client that sends no command for this long while inside a transaction is closed and
    /// its transaction rolled back (ProxySQL's `max_transaction_idle_time`, MariaDB's
    /// `idle_transaction_timeout`): a forgotten transaction holds a backend connection, its row
    /// locks and the purge of old row versions. Default `"4h"`; `"0s"`: only `idle_timeout`.
    #[serde(default = "default_transaction_idle_timeout", with = "duration::serde_str")]
    pub transaction_idle_timeout: Duration,
    /// TLS offered to clients; none when absent.
    #[serde(default)]
    pub tls: Option<SqlTls>,
    /// Peers allowed to connect; others are closed before the greeting. Default: everyone.
    #[serde(default)]
    pub firewall: AddressList,
    /// Bytes of `COM_STMT_SEND_LONG_DATA` held for all sessions together (each session may
    /// hold up to `max_packet_size`); an execution whose long data did not fit fails with 1153.
    /// Default 256 MiB.
    #[serde(default = "default_max_long_data")]
    pub max_long_data_total: usize,
    /// Sessions borrow a backend connection for a statement (or a transaction) and give it
    /// back as soon as nothing ties them to it, so many clients share a few backend
    /// connections. Default true. Needs `max_idle_connections` > 0.
    #[serde(default = "yes")]
    pub multiplexing: bool,
    /// Count every statement under its digest (`GET /queries`). Default true.
    #[serde(default = "yes")]
    pub query_digests: bool,
    /// Distinct digests kept (statements of further shapes are counted together). Default
    /// 5000. Read at start.
    #[serde(default = "default_query_digests_max")]
    pub query_digests_max: usize,
    /// SQL worker threads, each a single-threaded event loop: a client and its backend
    /// connections stay on one (no cross-thread wake-ups). 0 = one per core (the default).
    /// Read at start; a reload does not change it.
    #[serde(default)]
    pub threads: usize,
}

impl MysqlConfig {
    /// How many SQL worker threads `threads` means on this machine.
    pub fn workers(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// `Debug` leaves the password and its hash out (see the impl below).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// The password in clear. Default empty.
    #[serde(default)]
    pub password: String,
    /// Instead of `password`: the `mysql_native_password` hash as MySQL stores it
    /// (`SELECT PASSWORD('…')`, `*` and 40 hex digits). Clients are checked against it, and
    /// rwproxy logs in to backends with the hash stage the client's proof reveals, so backends
    /// must use `mysql_native_password` for this user.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Lets this user log in with an empty password. Default false: a user without a password
    /// is refused.
    #[serde(default)]
    pub allow_empty_password: bool,
    /// This user must log in over TLS. Default false.
    #[serde(default)]
    pub require_tls: bool,
    /// Networks this user may log in from (MySQL's `user@host`): CIDR networks or addresses.
    /// Default: anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<Network>,
    /// Sessions of this user at once (0 = no limit, the default); one more gets 1226.
    #[serde(default)]
    pub max_connections: usize,
    /// `false`: this user's sessions keep every backend connection they open (multiplexing off
    /// for one application, e.g. one whose stored procedures make session state rwproxy cannot
    /// see). Default: `mysql.multiplexing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplexing: Option<bool>,
    /// The authentication plugin clients use for this user: `"caching_sha2_password"` or
    /// `"mysql_native_password"` (the only choice with `password_hash`). Default: the backends'
    /// own (MariaDB `mysql_native_password`, MySQL 8+ `caching_sha2_password`). A client that
    /// starts with the other plugin is switched.
    #[serde(default)]
    pub auth: Option<ClientAuth>,
}

/// `[[mysql.users]] auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum ClientAuth {
    #[serde(rename = "caching_sha2_password")]
    CachingSha2,
    #[serde(rename = "mysql_native_password")]
    Native,
}

impl ClientAuth {
    /// What the servers behind rwproxy would ask of a client: MariaDB `mysql_native_password`,
    /// MySQL 8+ `caching_sha2_password`.
    pub fn for_flavour(mariadb: bool) -> ClientAuth {
        if mariadb { ClientAuth::Native } else { ClientAuth::CachingSha2 }
    }
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password", &"***")
            .field("password_hash", &self.password_hash.as_ref().map(|_| "***"))
            .field("require_tls", &self.require_tls)
            .field("hosts", &self.hosts)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl BackendConfig {
    /// The TLS its connections use: `tls`, else [`BackendTls::PREFERRED`].
    pub fn tls_setting(&self) -> BackendTls {
        self.tls.clone().unwrap_or(BackendTls::PREFERRED)
    }
}

impl UserConfig {
    /// The plugin this user's clients authenticate with: `auth`, else `mysql_native_password`
    /// with a `password_hash`, else `default` (the backends' flavour's: [`ClientAuth::for_flavour`]).
    pub fn auth_plugin(&self, default: ClientAuth) -> ClientAuth {
        match (self.auth, &self.password_hash) {
            (Some(auth), _) => auth,
            (None, Some(_)) => ClientAuth::Native,
            (None, None) => default,
        }
    }

    /// Whether this user may log in from `ip`.
    pub fn allows_host(&self, ip: std::net::IpAddr) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|n| n.contains(ip))
    }
}

impl UserConfig {
    /// SHA1(SHA1(password)) from `password_hash`, when it is well formed.
    pub fn stage2(&self) -> Option<[u8; 20]> {
        let hex = self.password_hash.as_deref()?.strip_prefix('*')?;
        if hex.len() != 40 {
            return None;
        }
        let mut out = [0u8; 20];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub name: String,
    /// `host:port`.
    pub address: String,
    pub role: Role,
    /// Most connections rwproxy opens to this backend (in use and idle); 0 = no limit. A client
    /// that would need one more waits up to `mysql.connect_timeout` for one to be given back,
    /// then gets an error naming the limit. Default 64 (with multiplexing, connections are
    /// needed for statements running at once and for pinned sessions, not for clients).
    #[serde(default = "default_backend_max_connections")]
    pub max_connections: usize,
    /// Its share of the reads among the backends that may take one: weight 2 takes twice the
    /// reads of weight 1 (`1`–`1000`, default 1). A reload changes it without touching the
    /// backend's connections or health.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// TLS to this backend (data path and monitor): `"preferred"` (the default), `"required"`,
    /// `"disabled"`, or `{ ca = "ca.pem", verify = "full" }` (required and checked).
    #[serde(default)]
    pub tls: Option<BackendTls>,
    /// PEM file with the server's RSA public key, for `caching_sha2_password` full
    /// authentication without TLS (the password is encrypted with it). Without TLS, a pinned
    /// key or `allow_public_key_retrieval`, rwproxy refuses to send the password.
    #[serde(default)]
    pub server_public_key: Option<String>,
    /// Without TLS and without a pinned key, ask the server for its public key (in the clear:
    /// a man in the middle can substitute his own and learn the password). Default false.
    #[serde(default)]
    pub allow_public_key_retrieval: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Reads round-robin over the primary as well as the replicas. Default `true`.
    #[serde(default = "yes")]
    pub reads_include_primary: bool,
    /// After a failed connect, a backend is skipped for reads for this long. Default `"2s"`.
    #[serde(default = "default_retry_after", with = "duration::serde_str")]
    pub retry_failed_after: Duration,
    /// What a read may miss: `"session"` (default: every write of the client's own session is
    /// seen), `"global"` (every write committed before the read started is seen) or
    /// `"eventual"` (replicas answer as far as they have got).
    #[serde(default)]
    pub consistency: Consistency,
    /// How long a read may wait for a replica to apply the position it needs before it goes
    /// to the primary instead. Default `"100ms"`.
    #[serde(default = "default_causal_read_timeout", with = "duration::serde_str")]
    pub causal_read_timeout: Duration,
    /// Transactions start on a read backend and move to the primary at their first write,
    /// replaying what they read there. Default `true`.
    #[serde(default = "yes")]
    pub optimistic_transactions: bool,
    /// Result bytes a transaction may read on a replica before its first write and still move
    /// to the primary; past it the write fails with 1213 (deadlock, retry). Default 1 MiB.
    #[serde(default = "default_optimistic_max_bytes")]
    pub optimistic_max_bytes: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            reads_include_primary: true,
            retry_failed_after: default_retry_after(),
            consistency: Consistency::default(),
            causal_read_timeout: default_causal_read_timeout(),
            optimistic_transactions: true,
            optimistic_max_bytes: default_optimistic_max_bytes(),
        }
    }
}

/// `mysql.routing.consistency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// A read sees every write of any session of the same user through this rwproxy.
    #[default]
    User,
    /// A read sees the writes of its own session.
    Session,
    Global,
    Eventual,
}

impl Consistency {
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::User => "user",
            Consistency::Session => "session",
            Consistency::Global => "global",
            Consistency::Eventual => "eventual",
        }
    }
}

fn default_causal_read_timeout() -> Duration {
    Duration::from_millis(100)
}
fn default_optimistic_max_bytes() -> u64 {
    1 << 20
}

fn yes() -> bool {
    true
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_retry_after() -> Duration {
    Duration::from_secs(2)
}
fn default_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
fn default_max_lag() -> Duration {
    Duration::from_secs(2)
}
fn default_heartbeat_table() -> String {
    "rwproxy.heartbeat".into()
}
fn default_backend_max_connections() -> usize {
    64
}
/// Weights sum over a handful of backends per read: a bound keeps the sum small.
const MAX_WEIGHT: u32 = 1000;

fn default_weight() -> u32 {
    1
}
fn default_max_idle() -> usize {
    16
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_client_connections() -> usize {
    4096
}
fn default_max_connections_per_source() -> usize {
    1024
}
fn default_login_first_byte_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_backend_idle_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_client_idle_timeout() -> Duration {
    Duration::from_secs(8 * 3600)
}
fn default_query_digests_max() -> usize {
    5000
}
fn default_transaction_idle_timeout() -> Duration {
    Duration::from_secs(4 * 3600)
}
fn default_max_long_data() -> usize {
    256 << 20
}
fn default_max_packet_size() -> usize {
    64 << 20
}
fn default_max_packet_buffers() -> usize {
    64 << 20
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let mut config = Config::from_toml(&text)?;
        if let Some(dir) = path.parent() {
            config.resolve_files(dir);
        }
        let problems = config.check_tls_files(&text);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        Ok(config)
    }

    /// TLS files are named relative to the config file, wherever rwproxy is started from.
    fn resolve_files(&mut self, dir: &Path) {
        let resolve = |file: &mut String| {
            if Path::new(file.as_str()).is_relative() {
                *file = dir.join(file.as_str()).display().to_string();
            }
        };
        let listeners = [
            self.http.as_mut().and_then(|h| h.tls.as_mut()).map(|t| (&mut t.cert, &mut t.key)),
            self.mysql.tls.as_mut().map(|t| (&mut t.cert, &mut t.key)),
        ];
        for (cert, key) in listeners.into_iter().flatten() {
            resolve(cert.get_mut());
            resolve(key.get_mut());
        }
        for backend in &mut self.mysql.backends {
            let b = backend.get_mut();
            if let Some(ca) = b.tls.as_mut().and_then(|t| t.ca.as_mut()) {
                resolve(ca);
            }
            if let Some(key) = b.server_public_key.as_mut() {
                resolve(key);
            }
        }
    }

    /// Loads every certificate and key the config names, so a bad file is reported at start
    /// (and by `--check-config`) with its key and line, not at the first connection.
    pub fn check_tls_files(&self, text: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let listeners = [
            ("http.tls", self.http.as_ref().and_then(|h| h.tls.as_ref()).map(|t| (&t.cert, &t.key))),
            ("mysql.tls", self.mysql.tls.as_ref().map(|t| (&t.cert, &t.key))),
        ];
        for (key, files) in listeners {
            let Some((cert, pem_key)) = files else { continue };
            let built = crate::tls::acceptor(Path::new(cert.get_ref()), Path::new(pem_key.get_ref()), &[]);
            if let Err(e) = built {
                let line = line_of(text, cert.span().start);
                problems.push(Problem { key: key.into(), line, message: e.to_string() });
            }
        }
        for (i, backend) in self.mysql.backends.iter().enumerate() {
            let b = backend.get_ref();
            if let Some(tls) = b.tls.as_ref().filter(|t| t.mode != TlsMode::Disabled)
                && let Err(e) = crate::tls::client(tls, &b.address)
            {
                let line = line_of(text, backend.span().start);
                problems.push(Problem {
                    key: format!("mysql.backends[{i}].tls"),
                    line,
                    message: e.to_string(),
                });
            }
            if let Some(path) = &b.server_public_key
                && let Err(e) = crate::backend::auth::read_public_key(Path::new(path))
            {
                let line = line_of(text, backend.span().start);
                problems.push(Problem {
                    key: format!("mysql.backends[{i}].server_public_key"),
                    line,
                    message: e,
                });
            }
        }
        problems
    }

    /// Substitutes `${VAR}`, then parses and validates; a parse error carries toml's line and
    /// column.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let text = &env::substitute(text, |name| std::env::var(name).ok()).map_err(ConfigError::Invalid)?;
        let config = parse_listing_unknown_keys(text)?;
        let problems = config.validate(text);
        if problems.is_empty() { Ok(config) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// Every problem in the config, each with its key and line.
    pub fn validate(&self, text: &str) -> Vec<Problem> {
        let line = |span: std::ops::Range<usize>| line_of(text, span.start);
        let mut problems = Vec::new();
        let mut report =
            |key: String, at: usize, message: String| problems.push(Problem { key, line: at, message });
        let m = &self.mysql;
        if m.listen.get_ref().parse::<SocketAddr>().is_err() {
            let msg = format!("{:?} is not an address like \"127.0.0.1:6033\"", m.listen.get_ref());
            report("mysql.listen".into(), line(m.listen.span()), msg);
        }
        if m.users.is_empty() {
            report("mysql.users".into(), 1, "at least one [[mysql.users]] entry is required".into());
        }
        for (i, user) in m.users.iter().enumerate() {
            let dup = m.users[..i].iter().any(|u| u.get_ref().name == user.get_ref().name);
            let u = user.get_ref();
            if u.name.is_empty() || dup {
                let msg = format!("user name {:?} is empty or repeated", u.name);
                report(format!("mysql.users[{i}].name"), line(user.span()), msg);
            }
            if u.password_hash.is_some() && !u.password.is_empty() {
                let msg = "give either password or password_hash, not both".to_string();
                report(format!("mysql.users[{i}].password_hash"), line(user.span()), msg);
            } else if u.password_hash.is_some() && u.auth == Some(ClientAuth::CachingSha2) {
                let msg =
                    "password_hash is a mysql_native_password hash: auth must be \"mysql_native_password\""
                        .to_string();
                report(format!("mysql.users[{i}].auth"), line(user.span()), msg);
            } else if u.password_hash.is_some() && u.stage2().is_none() {
                let msg = "must be \"*\" and 40 hex digits, as SELECT PASSWORD('...') prints it".to_string();
                report(format!("mysql.users[{i}].password_hash"), line(user.span()), msg);
            }
        }
        let first_hashed = m.users.first().is_some_and(|u| u.get_ref().password_hash.is_some());
        if self.monitor.enabled && self.monitor.password.is_none() && first_hashed {
            let msg = "the monitor logs in with the first user's password, which is only a hash here; \
                       set monitor.user and monitor.password"
                .to_string();
            report("monitor.password".into(), 1, msg);
        }
        self.validate_backends(&mut report, text);
        self.validate_monitor(&mut report, text);
        self.validate_http(&mut report, text);
        if let Some(admin) = &self.admin
            && admin.listen.get_ref().parse::<SocketAddr>().is_err()
        {
            let msg = format!("{:?} is not an address like \"127.0.0.1:9090\"", admin.listen.get_ref());
            report("admin.listen".into(), line(admin.listen.span()), msg);
        }
        if m.max_packet_size < 1024 {
            report("mysql.max_packet_size".into(), 1, "must be at least 1024 bytes".into());
        }
        problems
    }

    fn validate_backends(&self, report: &mut impl FnMut(String, usize, String), text: &str) {
        let line = |span: std::ops::Range<usize>| line_of(text, span.start);
        let m = &self.mysql;
        for (i, b) in m.backends.iter().enumerate() {
            let at = line(b.span());
            let backend = b.get_ref();
            if backend.name.is_empty() || m.backends[..i].iter().any(|o| o.get_ref().name == backend.name) {
                report(
                    format!("mysql.backends[{i}].name"),
                    at,
                    format!("backend name {:?} is empty or repeated", backend.name),
                );
            }
            if !is_host_port(&backend.address) {
                report(
                    format!("mysql.backends[{i}].address"),
                    at,
                    format!("{:?} is not host:port", backend.address),
                );
            }
            if !(1..=MAX_WEIGHT).contains(&backend.weight) {
                report(
                    format!("mysql.backends[{i}].weight"),
                    at,
                    format!("{} is not a weight from 1 to {MAX_WEIGHT}", backend.weight),
                );
            }
        }
        let primaries = m.backends.iter().filter(|b| b.get_ref().role == Role::Primary).count();
        if primaries != 1 {
            let at = m.backends.first().map_or(1, |b| line(b.span()));
            report(
                "mysql.backends".into(),
                at,
                format!("exactly one backend with role = \"primary\" is required, found {primaries}"),
            );
        }
    }

    fn validate_http(&self, report: &mut impl FnMut(String, usize, String), text: &str) {
        let Some(http) = &self.http else { return };
        let line = |span: std::ops::Range<usize>| line_of(text, span.start);
        if http.listen.get_ref().parse::<SocketAddr>().is_err() {
            let msg = format!("{:?} is not an address like \"127.0.0.1:8080\"", http.listen.get_ref());
            report("http.listen".into(), line(http.listen.span()), msg);
        }
        if http.servers.is_empty() {
            report(
                "http.servers".into(),
                line(http.listen.span()),
                "at least one [[http.servers]] entry is required".into(),
            );
        }
        for (i, s) in http.servers.iter().enumerate() {
            let server = s.get_ref();
            if server.name.is_empty() || http.servers[..i].iter().any(|o| o.get_ref().name == server.name) {
                report(
                    format!("http.servers[{i}].name"),
                    line(s.span()),
                    format!("server name {:?} is empty or repeated", server.name),
                );
            }
            if !is_host_port(&server.address) {
                report(
                    format!("http.servers[{i}].address"),
                    line(s.span()),
                    format!("{:?} is not host:port", server.address),
                );
            }
            if server.weight == 0 {
                report(format!("http.servers[{i}].weight"), line(s.span()), "must be at least 1".into());
            }
        }
    }

    fn validate_monitor(&self, report: &mut impl FnMut(String, usize, String), text: &str) {
        let mon = &self.monitor;
        let at = text.lines().position(|l| l.trim() == "[monitor]").map_or(1, |i| i + 1);
        if mon.rise == 0 || mon.fall == 0 {
            report("monitor.rise/fall".into(), at, "must be at least 1".into());
        }
        if mon.interval.is_zero() || mon.timeout.is_zero() {
            report("monitor.interval/timeout".into(), at, "must be greater than zero".into());
        }
        let valid_table = mon
            .heartbeat_table
            .split('.')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if !valid_table || mon.heartbeat_table.split('.').count() > 2 {
            let msg = format!("{:?} is not a table name like \"rwproxy.heartbeat\"", mon.heartbeat_table);
            report("monitor.heartbeat_table".into(), at, msg);
        }
    }

    /// The effective configuration (defaults filled in) as TOML, with passwords and password
    /// hashes masked: what `--print-config` shows.
    pub fn to_masked_toml(&self) -> String {
        let mut value = match toml::Value::try_from(self) {
            Ok(value) => value,
            Err(e) => return format!("# cannot print the config: {e}\n"),
        };
        mask_secrets(&mut value);
        toml::to_string_pretty(&value).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }

    /// Every setting of the effective configuration by its dotted key (`mysql.routing.consistency`,
    /// `mysql.backends[replica1].weight`: entries of a list by their `name`), with its value as
    /// TOML text, secrets masked; the bool says whether the value is a secret's (so a change
    /// shows without the value).
    pub fn settings(&self) -> std::collections::BTreeMap<String, (String, bool)> {
        let mut out = std::collections::BTreeMap::new();
        if let Ok(value) = toml::Value::try_from(self) {
            flatten_setting("", &value, &mut out);
        }
        out
    }

    /// The monitor's login: its own, or the first client user's.
    pub fn monitor_login(&self) -> (String, String) {
        let first = self.mysql.users.first().map(Spanned::get_ref);
        let user = self.monitor.user.clone().or_else(|| first.map(|u| u.name.clone()));
        let password = self.monitor.password.clone().or_else(|| first.map(|u| u.password.clone()));
        (user.unwrap_or_default(), password.unwrap_or_default())
    }

    pub fn backends(&self) -> impl Iterator<Item = &BackendConfig> {
        self.mysql.backends.iter().map(Spanned::get_ref)
    }

    pub fn user(&self, name: &[u8]) -> Option<&UserConfig> {
        self.mysql.users.iter().map(Spanned::get_ref).find(|u| u.name.as_bytes() == name)
    }

    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.mysql.listen.get_ref().parse().ok()
    }
}

/// Parses the config; every unknown key is reported with its line, not only the first: each
/// one found is blanked out (its line) and the parse tried again, a bounded number of times.
fn parse_listing_unknown_keys(text: &str) -> Result<Config, ConfigError> {
    const MAX_UNKNOWN: usize = 50;
    let mut unknown: Vec<Problem> = Vec::new();
    let mut current = text.to_string();
    for _ in 0..=MAX_UNKNOWN {
        let error = match toml::from_str::<Config>(&current) {
            Ok(config) if unknown.is_empty() => return Ok(config),
            Ok(_) => {
                unknown.sort_by_key(|p| p.line);
                return Err(ConfigError::Invalid(unknown));
            }
            Err(e) => e,
        };
        let span = error.span().filter(|_| error.message().starts_with("unknown field"));
        let Some(span) = span else {
            // Another kind of error: reported as toml words it, after the unknown keys.
            if unknown.is_empty() {
                return Err(ConfigError::Parse(error.to_string()));
            }
            let line = line_of(&current, error.span().map_or(0, |s| s.start));
            unknown.push(Problem { key: "config".into(), line, message: error.message().to_string() });
            unknown.sort_by_key(|p| p.line);
            return Err(ConfigError::Invalid(unknown));
        };
        let line = line_of(&current, span.start);
        let key = current.get(span.clone()).unwrap_or_default().trim().to_string();
        let message = error.message().lines().next().unwrap_or_default().to_string();
        unknown.push(Problem { key, line, message });
        // Blank the key's line (keeping the line count) and parse again.
        let start = current[..span.start].rfind('\n').map_or(0, |i| i + 1);
        let end = current[span.start..].find('\n').map_or(current.len(), |i| span.start + i);
        current.replace_range(start..end, "");
    }
    Err(ConfigError::Invalid(unknown))
}

/// Keys whose values are secrets.
const SECRET_KEYS: [&str; 2] = ["password", "password_hash"];

fn flatten_setting(
    prefix: &str,
    value: &toml::Value,
    out: &mut std::collections::BTreeMap<String, (String, bool)>,
) {
    let join = |key: &str| if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table {
                if SECRET_KEYS.contains(&key.as_str()) && v.as_str().is_some() {
                    // Compared by value, printed masked.
                    out.insert(join(key), (v.to_string(), true));
                } else {
                    flatten_setting(&join(key), v, out);
                }
            }
        }
        toml::Value::Array(items) if !items.is_empty() && items.iter().all(toml::Value::is_table) => {
            for (at, item) in items.iter().enumerate() {
                let label = item
                    .get("name")
                    .and_then(toml::Value::as_str)
                    .map_or_else(|| at.to_string(), str::to_string);
                flatten_setting(&format!("{prefix}[{label}]"), item, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), (other.to_string(), false));
        }
    }
}

fn mask_secrets(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                if SECRET_KEYS.contains(&key.as_str()) && v.as_str().is_some_and(|s| !s.is_empty()) {
                    *v = toml::Value::String("********".into());
                } else {
                    mask_secrets(v);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}

fn is_host_port(address: &str) -> bool {
    match address.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(1, |before| before.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[mysql]
listen = "127.0.0.1:6033"
connect_timeout = "500ms"

[[mysql.users]]
name = "app"
password = "app"

[[mysql.backends]]
name = "primary"
address = "127.0.0.1:3306"
role = "primary"

[[mysql.backends]]
name = "replica1"
address = "127.0.0.1:3307"
role = "replica"
"#;

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::from_toml(GOOD).expect("valid");
        assert!(c.mysql.routing.reads_include_primary);
        assert_eq!(c.mysql.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.backends().count(), 2);
        assert!(c.user(b"app").is_some());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = GOOD.replace("role = \"replica\"", "role = \"replica\"\npriority = 3");
        let err = Config::from_toml(&text).expect_err("unknown key").to_string();
        assert!(err.contains("priority") && err.contains("line 19"), "{err}");
    }

    #[test]
    fn every_unknown_key_is_reported_with_its_line() {
        let text = GOOD
            .replace("connect_timeout = \"500ms\"", "connect_timeout = \"500ms\"\nlisten_port = 1")
            .replace("role = \"replica\"", "role = \"replica\"\npriority = 3");
        let Err(ConfigError::Invalid(problems)) = Config::from_toml(&text) else {
            panic!("expected every unknown key");
        };
        let found: Vec<_> = problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(found, [("listen_port", 5), ("priority", 20)], "{problems:?}");
        assert!(problems[0].message.contains("unknown field"), "{problems:?}");
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = GOOD.replace("\"primary\"\n", "\"replica\"\n").replace("127.0.0.1:3307", "nowhere");
        let Err(ConfigError::Invalid(problems)) = Config::from_toml(&text) else {
            panic!("expected validation problems");
        };
        let keys: Vec<_> = problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert!(keys.contains(&("mysql.backends[1].address", 15)), "{keys:?}");
        assert!(keys.iter().any(|(k, _)| *k == "mysql.backends"), "{keys:?}");
    }

    #[test]
    fn a_weight_outside_its_range_is_named_with_its_line() {
        assert_eq!(Config::from_toml(GOOD).expect("valid").mysql.backends[1].get_ref().weight, 1);
        for weight in ["0", "1001"] {
            let text = GOOD.replace("role = \"replica\"", &format!("role = \"replica\"\nweight = {weight}"));
            let Err(ConfigError::Invalid(problems)) = Config::from_toml(&text) else {
                panic!("weight {weight} accepted");
            };
            let found: Vec<_> = problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
            assert_eq!(found, [("mysql.backends[1].weight", 15)], "{problems:?}");
            assert!(problems[0].message.contains("from 1 to 1000"), "{problems:?}");
        }
    }

    #[test]
    fn debug_output_never_shows_passwords() {
        let text = GOOD.replace("password = \"app\"", "password = \"s3cret-pw\"")
            + "\n[monitor]\npassword = \"m0nitor-pw\"\n";
        let c = Config::from_toml(&text).expect("valid");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret-pw") && !shown.contains("m0nitor-pw"), "{shown}");
        assert!(shown.contains("app"), "names stay visible");
    }

    #[test]
    fn bad_duration_is_a_parse_error() {
        let text = GOOD.replace("500ms", "soon");
        let err = Config::from_toml(&text).expect_err("bad duration").to_string();
        assert!(err.contains("soon") && err.contains("line 4"), "{err}");
    }
}
