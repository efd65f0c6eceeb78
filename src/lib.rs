//! rwproxy: a MySQL-protocol proxy that splits reads from writes over a primary and replicas.
//!
//! # Layout
//! - [`protocol`]: the wire protocol, pure: framing, response boundaries, packets we write.
//! - [`config`]: the TOML config as serde structs, validated with key and line.
//! - [`classifier`]: what a statement is and where it may run.
//! - [`consistency`]: replication positions: what each backend has applied, what a read needs.
//! - [`digests`]: statement digests: each statement shape's count, time and route.
//! - [`router`]: picks a backend for a statement from the classification and session state.
//! - [`backend`]: the backends (health as seen by the data path) and connections to them.
//! - [`session`]: one client connection, from handshake to quit, as a small state machine.
//! - [`server`]: the listener that starts sessions.
//! - [`monitor`]: health and replication-lag checks that move backends in and out of reads.
//! - [`metrics`]: Prometheus series, owned by one proxy instance.
//! - [`http`]: the HTTP load balancer for the web tier.
//! - [`admin`]: the admin HTTP listener: `/metrics`, `/status`, `/health`, status page.
//! - [`proxy`]: start-up: probe the primary, bind, start the monitor, serve.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

pub mod accept;
pub mod admin;
pub mod backend;
pub mod budget;
pub mod classifier;
pub mod config;
pub mod consistency;
pub mod digests;
pub mod drain;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod monitor;
pub mod protocol;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod session;
pub mod sessions;
pub mod sql_tier;
pub mod stream;
pub mod striped;
pub mod tally;
pub mod tls;
