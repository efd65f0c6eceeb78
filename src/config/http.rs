//! The `[http]` section: the embedded HTTP load balancer for the web tier.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::duration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address the balancer listens on, e.g. `"127.0.0.1:8080"`.
    pub listen: Spanned<String>,
    /// `"round_robin"` (default), `"least_connections"` or `"random_two"`.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// The web servers (`[[http.servers]]`). None yet is allowed: requests get 503 until a
    /// reload adds some.
    #[serde(default)]
    pub servers: Vec<Spanned<HttpServerConfig>>,
    #[serde(default)]
    pub health: HttpHealthConfig,
    /// Time to open a connection to a server. Default `"1s"`.
    #[serde(default = "default_connect_timeout", with = "duration::serde_str")]
    pub connect_timeout: Duration,
    /// Time from sending a request to the response headers. Default `"30s"`.
    #[serde(default = "default_response_timeout", with = "duration::serde_str")]
    pub response_timeout: Duration,
    /// Largest request body accepted; a larger one gets 413. Default 10 MiB.
    #[serde(default = "default_max_body")]
    pub max_body_size: usize,
    /// HTTPS termination: PEM certificate chain and private key files. HTTP/1.1 and h2 are
    /// offered through ALPN.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// A client connection that sends no request for this long is closed. Default `"60s"`.
    #[serde(default = "default_idle_timeout", with = "duration::serde_str")]
    pub idle_timeout: Duration,
    /// Time a request head has from its first byte to its last; a client that trickles it
    /// slower (slowloris) gets 408. Not reset by each byte. Default `"10s"`.
    #[serde(default = "default_header_timeout", with = "duration::serde_str")]
    pub header_timeout: Duration,
    /// Time one request may take from its arrival to the response headers, queueing, retries
    /// and redispatch included; after it the client gets 504. Default `"60s"`.
    #[serde(default = "default_idle_timeout", with = "duration::serde_str")]
    pub request_timeout: Duration,
    /// How long a request waits for a server that is at its `max_connections`; then 503.
    /// Default `"5s"`.
    #[serde(default = "default_queue_timeout", with = "duration::serde_str")]
    pub queue_timeout: Duration,
    /// Threads serving client connections, each with its own event loop; a new connection goes
    /// to the thread with the fewest and stays there with its server connections. 0 (default):
    /// one per core.
    #[serde(default)]
    pub threads: usize,
    /// Peers allowed to connect; others are closed before anything is read. Default: everyone.
    #[serde(default)]
    pub firewall: super::AddressList,
    /// Request bodies held in memory by all connections together; a request whose body does
    /// not fit gets 503. Default 256 MiB.
    #[serde(default = "default_max_buffered_bodies")]
    pub max_buffered_bodies: usize,
    /// Client connections served at once; one more gets `503` and is closed. Default 4096.
    #[serde(default = "default_max_client_connections")]
    pub max_client_connections: usize,
    /// Client connections from one source address at once (0 = no limit); one more gets 503.
    /// Default 1024: one host's flood cannot take every slot.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
}

fn default_max_client_connections() -> usize {
    4096
}

fn default_max_buffered_bodies() -> usize {
    256 << 20
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file: the certificate, then its chain.
    pub cert: Spanned<String>,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    LeastConnections,
    RandomTwo,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpServerConfig {
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Share of requests relative to the other servers. Default 1.
    #[serde(default = "one")]
    pub weight: u32,
    /// Takes traffic only when every non-backup server is down. Default `false`.
    #[serde(default)]
    pub backup: bool,
    /// Most requests in flight to this server; more wait in a queue up to
    /// `http.queue_timeout`. Default 0: no limit.
    #[serde(default)]
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthConfig {
    /// Checked with GET; 2xx is healthy. Default `"/health"`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Default `"1s"`.
    #[serde(default = "default_interval", with = "duration::serde_str")]
    pub interval: Duration,
    /// Default `"1s"`.
    #[serde(default = "default_interval", with = "duration::serde_str")]
    pub timeout: Duration,
    /// Default 2.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Default 3.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

impl Default for HttpHealthConfig {
    fn default() -> Self {
        HttpHealthConfig {
            path: default_path(),
            interval: default_interval(),
            timeout: default_interval(),
            rise: default_rise(),
            fall: default_fall(),
        }
    }
}

fn one() -> u32 {
    1
}
fn default_path() -> String {
    "/health".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections_per_source() -> usize {
    1024
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_queue_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_body() -> usize {
    10 << 20
}
