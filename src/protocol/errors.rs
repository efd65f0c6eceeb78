//! The errors rwproxy itself sends while the session stays usable. They use codes of their
//! own in the server range (as ProxySQL's 9001) with SQLSTATE HY000: never the client-side
//! 2003/2013, and never a class-08 SQLSTATE, which make drivers and pools throw the connection
//! away although it still works.

/// No backend could take the statement (all refused, down, or none usable).
pub const NO_BACKEND: u16 = 9001;
/// The backend connection broke during a statement that could not be retried elsewhere (a
/// write, or a read whose answer had begun); the session goes on on a new connection.
pub const BACKEND_LOST: u16 = 9002;
/// A read needed the primary's replication position, which could not be fetched.
pub const POSITION_UNKNOWN: u16 = 9003;
/// Every candidate backend was up but had all of its `max_connections` in use for the whole
/// `connect_timeout`: nothing ran, and the statement may be retried.
pub const POOL_FULL: u16 = 9004;

/// The SQLSTATE of all of them: a general error, not a connection failure.
pub const SQLSTATE: &str = "HY000";
