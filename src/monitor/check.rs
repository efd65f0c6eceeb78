//! One check of one backend over the monitor's own connection.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row};

use crate::backend::State;

/// What one check found.
#[derive(Debug, Clone)]
pub struct Report {
    /// `None` when the backend is fine, otherwise the state it would be in and why.
    pub problem: Option<(State, String)>,
    pub lag: Option<Duration>,
    pub read_only: Option<bool>,
    /// The replication position the backend has applied (its GTID text), and whether it
    /// writes GTIDs at all; `None` when not read.
    pub position: Option<String>,
    pub gtid: Option<bool>,
    /// The address the backend replicates from (`Master_Host:Master_Port`) while its I/O
    /// thread runs or retries; `Some(None)`: it replicates from no one; `None`: not read.
    pub source: Option<Option<String>>,
    /// On the primary: why the heartbeat cannot be written (`Some(None)`: it can).
    pub heartbeat: Option<Option<String>>,
}

impl Report {
    pub fn down(reason: impl Into<String>) -> Report {
        Report { problem: Some((State::Down, reason.into())), ..Report::fine() }
    }

    fn fine() -> Report {
        Report {
            problem: None,
            lag: None,
            read_only: None,
            position: None,
            gtid: None,
            source: None,
            heartbeat: None,
        }
    }
}

/// When rwproxy last wrote the heartbeat on the primary, and the primary's recent positions,
/// shared by every backend's checker.
#[derive(Debug, Default)]
pub struct HeartbeatClock {
    last_write: Mutex<Option<Instant>>,
    /// The primary's positions as its checks read them, each with when it was first seen,
    /// oldest first (bounded): without the heartbeat, a replica's lag is how long ago the
    /// primary first had a position the replica still lacks.
    positions: Mutex<std::collections::VecDeque<(Instant, crate::consistency::Position)>>,
}

/// Primary positions kept for the fallback lag (at `interval = "500ms"`, ten minutes).
const POSITIONS_KEPT: usize = 1200;

impl HeartbeatClock {
    /// The primary's check read `position`.
    fn primary_at(&self, position: &str) {
        let Ok(position) = crate::consistency::Position::parse(position) else { return };
        let Ok(mut positions) = self.positions.lock() else { return };
        if positions.back().is_some_and(|(_, last)| *last == position) {
            return;
        }
        if positions.len() >= POSITIONS_KEPT {
            positions.pop_front();
        }
        positions.push_back((Instant::now(), position));
    }

    /// How far behind a replica at `applied` is, from the primary's positions: 0 when it has
    /// the newest, else the age of the oldest it lacks; `None` when nothing is known.
    pub fn lag_by_position(&self, applied: &str) -> Option<Duration> {
        let applied = crate::consistency::Position::parse(applied).ok()?;
        let positions = self.positions.lock().ok()?;
        let (_, newest) = positions.back()?;
        if applied.covers(newest) {
            return Some(Duration::ZERO);
        }
        let first_missing = positions.iter().find(|(_, p)| !applied.covers(p))?;
        Some(first_missing.0.elapsed())
    }

    fn wrote(&self) {
        if let Ok(mut w) = self.last_write.lock() {
            *w = Some(Instant::now());
        }
    }

    fn age(&self) -> Option<Duration> {
        self.last_write.lock().ok().and_then(|w| w.map(|t| t.elapsed()))
    }
}

/// The statements of the heartbeat on `table` (`db.table` or `table`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatSql {
    pub create_database: Option<String>,
    pub create_table: String,
    pub upsert: String,
    pub age: String,
}

impl HeartbeatSql {
    pub fn new(table: &str) -> HeartbeatSql {
        HeartbeatSql {
            // Without IF NOT EXISTS: two proxies creating it at once get an error (ignored), not
            // a warning.
            create_database: table.split_once('.').map(|(db, _)| format!("CREATE DATABASE {db}")),
            create_table: format!("CREATE TABLE {table} (id TINYINT PRIMARY KEY, ts DATETIME(6) NOT NULL)"),
            // NOW() is fixed for the statement: the update writes the same instant.
            upsert: format!(
                "INSERT INTO {table} (id, ts) VALUES (1, NOW(6)) ON DUPLICATE KEY UPDATE ts = NOW(6)"
            ),
            age: format!("SELECT TIMESTAMPDIFF(MICROSECOND, ts, NOW(6)) FROM {table} WHERE id = 1"),
        }
    }
}

/// The settings a checker needs. `Debug` masks the password.
#[derive(Clone)]
pub struct CheckSettings {
    pub user: String,
    pub password: String,
    pub heartbeat_table: Option<String>,
    pub max_lag: Duration,
    pub read_only_check: bool,
}

impl std::fmt::Debug for CheckSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckSettings")
            .field("user", &self.user)
            .field("password", &"***")
            .field("heartbeat_table", &self.heartbeat_table)
            .field("max_lag", &self.max_lag)
            .finish_non_exhaustive()
    }
}

pub struct Checker {
    address: String,
    /// The backend's `tls`: the monitor's connection uses it too.
    tls: Option<crate::config::BackendTls>,
    settings: CheckSettings,
    conn: Option<Conn>,
    /// `SHOW REPLICA STATUS` is understood (MySQL ≥ 8.0.22, MariaDB ≥ 10.5); else `SLAVE`.
    replica_syntax: bool,
    heartbeat_ready: bool,
    heartbeat_warned: bool,
    /// The server is MySQL (positions are `gtid_executed`), found by the first position read.
    mysql: Option<bool>,
    /// With "preferred" TLS: the server offered none, so the monitor logs in without.
    plain: bool,
}

#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error("{0}")]
    Mysql(#[from] mysql_async::Error),
    #[error("{0}")]
    Bad(String),
}

/// What `SHOW REPLICA STATUS` says of a replica.
#[derive(Debug, Clone)]
struct ReplicaRow {
    /// `host:port` it replicates from.
    source: String,
    io: String,
    sql: String,
    behind: Option<u64>,
    error: String,
}

/// Replica threads and `Seconds_Behind_*`.
fn replica_status(row: Option<ReplicaRow>) -> Report {
    let Some(row) = row else {
        let reason = "not configured as a replica".to_string();
        return Report { problem: Some((State::ReplicationStopped, reason)), ..Report::fine() };
    };
    let ReplicaRow { io, sql, behind, error, .. } = row;
    // IO = "Connecting" is a replica retrying its primary (perhaps down): it still serves a
    // consistent copy, and the heartbeat says how old. Only stopped threads demote it.
    if io == "No" || sql != "Yes" {
        let reason = format!(
            "replication threads IO={io} SQL={sql}{}{error}",
            if error.is_empty() { "" } else { ": " }
        );
        return Report { problem: Some((State::ReplicationStopped, reason)), ..Report::fine() };
    }
    Report { lag: behind.map(Duration::from_secs), ..Report::fine() }
}

/// The monitor's TLS, verified as the data path's is (`tls::client`).
fn ssl_opts(tls: &crate::config::BackendTls) -> mysql_async::SslOpts {
    use crate::config::Verify;
    let mut opts = mysql_async::SslOpts::default()
        // Without a CA (verify = "none") there is no root to trust and none is needed.
        .with_disable_built_in_roots(tls.ca.is_some())
        .with_danger_skip_domain_validation(tls.verify != Verify::Full)
        .with_danger_accept_invalid_certs(tls.verify == Verify::None);
    if let Some(ca) = &tls.ca {
        opts = opts.with_root_certs(vec![std::path::PathBuf::from(ca).into()]);
    }
    if let Some(name) = &tls.server_name {
        opts = opts.with_danger_tls_hostname_override(Some(name.clone()));
    }
    opts
}

impl Checker {
    pub fn new(address: String, tls: Option<crate::config::BackendTls>, settings: CheckSettings) -> Self {
        Checker {
            address,
            tls,
            settings,
            conn: None,
            replica_syntax: true,
            heartbeat_ready: false,
            heartbeat_warned: false,
            mysql: None,
            plain: false,
        }
    }

    /// Runs one check. `primary` says which role the backend has right now.
    pub async fn check(&mut self, primary: bool, clock: &HeartbeatClock) -> Report {
        match self.check_inner(primary, clock).await {
            Ok(report) => report,
            Err(e) => {
                self.conn = None;
                Report::down(e.to_string())
            }
        }
    }

    /// Drops the connection (a check on it was cut off by its time limit).
    pub fn forget_connection(&mut self) {
        self.conn = None;
    }

    async fn connect(&mut self) -> Result<&mut Conn, CheckError> {
        if self.conn.is_none() {
            let (host, port) =
                self.address.rsplit_once(':').ok_or_else(|| CheckError::Bad("bad address".into()))?;
            let port = port.parse().map_err(|_| CheckError::Bad("bad port".into()))?;
            use crate::config::TlsMode;
            let mode = self.tls.as_ref().map_or(TlsMode::Disabled, |t| t.mode);
            let tls = self
                .tls
                .as_ref()
                .filter(|_| mode == TlsMode::Required || mode == TlsMode::Preferred && !self.plain);
            let opts = OptsBuilder::default()
                .ip_or_hostname(host)
                .tcp_port(port)
                .user(Some(self.settings.user.clone()))
                .pass(Some(self.settings.password.clone()))
                .prefer_socket(false)
                .stmt_cache_size(0);
            // The monitor logs in as the data path does: TLS when the server offers it
            // ("preferred"), or always ("required").
            let conn = match Conn::new(opts.clone().ssl_opts(tls.map(ssl_opts))).await {
                Err(mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer))
                    if mode == TlsMode::Preferred =>
                {
                    self.plain = true;
                    Conn::new(opts).await?
                }
                other => other?,
            };
            self.conn = Some(conn);
            self.heartbeat_ready = false;
        }
        self.conn.as_mut().ok_or_else(|| CheckError::Bad("no connection".into()))
    }

    async fn check_inner(&mut self, primary: bool, clock: &HeartbeatClock) -> Result<Report, CheckError> {
        let read_only_check = self.settings.read_only_check;
        let conn = self.connect().await?;
        conn.ping().await?;
        let read_only = if read_only_check {
            let v: Option<u8> = conn.query_first("SELECT @@read_only").await?;
            v.map(|v| v != 0)
        } else {
            None
        };
        // On the primary the replication status only tells whether it follows someone: a
        // monitor user without the right to read it leaves that unknown, not the primary down.
        let row = match self.replica_row().await {
            Ok(row) => Some(row),
            Err(_) if primary => None,
            Err(e) => return Err(e),
        };
        let source = row.as_ref().map(|row| row.as_ref().filter(|r| r.io != "No").map(|r| r.source.clone()));
        let row = row.flatten();
        if primary {
            let heartbeat = Some(self.write_heartbeat(clock).await);
            let (position, gtid) = self.position(true).await?;
            if let Some(p) = &position {
                clock.primary_at(p);
            }
            return Ok(Report { read_only, position, gtid, source, heartbeat, ..Report::fine() });
        }
        let (position, gtid) = self.position(false).await?;
        let mut report = replica_status(row);
        report.position = position;
        report.gtid = gtid;
        report.source = source;
        if let Some(lag) = self.heartbeat_lag(clock).await {
            report.lag = Some(lag);
        } else if let Some(lag) = report.position.as_deref().and_then(|p| clock.lag_by_position(p)) {
            // No heartbeat: how long ago the primary had what this replica lacks (a delayed
            // replica's `Seconds_Behind_*` can read 0 while it is a second behind).
            report.lag = Some(lag);
        }
        if report.problem.is_none()
            && let Some(lag) = report.lag
            && lag > self.settings.max_lag
        {
            let reason = format!(
                "replication lag {:.3}s exceeds {:.3}s",
                lag.as_secs_f64(),
                self.settings.max_lag.as_secs_f64()
            );
            report.problem = Some((State::Lagging, reason));
        }
        report.read_only = read_only;
        Ok(report)
    }

    /// The backend's replication status, `None` when it is no replica.
    async fn replica_row(&mut self) -> Result<Option<ReplicaRow>, CheckError> {
        let conn = self.conn.as_mut().ok_or_else(|| CheckError::Bad("no connection".into()))?;
        let rows: Vec<Row> = if self.replica_syntax {
            match conn.query("SHOW REPLICA STATUS").await {
                Ok(rows) => rows,
                Err(mysql_async::Error::Server(e)) if e.code == 1064 => {
                    self.replica_syntax = false;
                    conn.query("SHOW SLAVE STATUS").await?
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            conn.query("SHOW SLAVE STATUS").await?
        };
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let text = |names: &[&str]| -> Option<String> {
            names.iter().find_map(|n| row.get_opt::<Option<String>, _>(*n).and_then(Result::ok).flatten())
        };
        let value = |names: &[&str]| -> Option<String> {
            text(names).or_else(|| {
                names
                    .iter()
                    .find_map(|n| row.get_opt::<Option<u64>, _>(*n).and_then(Result::ok).flatten())
                    .map(|v| v.to_string())
            })
        };
        let host = text(&["Master_Host", "Source_Host"]).unwrap_or_default();
        let port = value(&["Master_Port", "Source_Port"]).unwrap_or_default();
        Ok(Some(ReplicaRow {
            source: format!("{host}:{port}"),
            io: text(&["Slave_IO_Running", "Replica_IO_Running"]).unwrap_or_default(),
            sql: text(&["Slave_SQL_Running", "Replica_SQL_Running"]).unwrap_or_default(),
            behind: text(&["Seconds_Behind_Master", "Seconds_Behind_Source"])
                .and_then(|s| s.parse::<u64>().ok()),
            error: text(&["Last_IO_Error", "Last_SQL_Error", "Last_Error"])
                .into_iter()
                .chain(text(&["Last_SQL_Error"]))
                .find(|e| !e.is_empty())
                .unwrap_or_default(),
        }))
    }

    /// Makes a stale former primary read-only (`super_read_only` too on MySQL), so nothing can
    /// write there by mistake. Whether it worked (the monitor user may lack the rights).
    pub async fn fence(&mut self) -> Result<(), String> {
        let mysql = self.mysql == Some(true);
        let conn = self.connect().await.map_err(|e| e.to_string())?;
        let sql = if mysql { "SET GLOBAL super_read_only = ON" } else { "SET GLOBAL read_only = ON" };
        conn.query_drop(sql).await.map_err(|e| e.to_string())
    }

    /// The applied position (MariaDB `gtid_slave_pos`, MySQL `gtid_executed`) and whether
    /// the server writes GTIDs (MariaDB: binary log on; MySQL: `gtid_mode = ON`).
    ///
    /// Not MariaDB's `gtid_current_pos`: on a replica that logs its updates it follows the
    /// binary log, which is written before the transaction commits in InnoDB, so it can name a
    /// transaction whose rows a read does not see yet.
    /// The primary's own position is its binary log's.
    async fn position(&mut self, primary: bool) -> Result<(Option<String>, Option<bool>), CheckError> {
        let conn = self.conn.as_mut().ok_or_else(|| CheckError::Bad("no connection".into()))?;
        let mariadb = if primary {
            "SELECT @@gtid_binlog_pos, @@log_bin"
        } else {
            "SELECT @@gtid_slave_pos, @@log_bin"
        };
        const MYSQL: &str = "SELECT @@GLOBAL.gtid_executed, @@GLOBAL.gtid_mode = 'ON'";
        let row: Option<(Option<String>, Option<u8>)> = match self.mysql {
            Some(true) => conn.query_first(MYSQL).await?,
            Some(false) => conn.query_first(mariadb).await?,
            None => match conn.query_first(mariadb).await {
                Ok(row) => {
                    self.mysql = Some(false);
                    row
                }
                // 1193: unknown system variable — not MariaDB.
                Err(mysql_async::Error::Server(e)) if e.code == 1193 => {
                    self.mysql = Some(true);
                    conn.query_first(MYSQL).await?
                }
                Err(e) => return Err(e.into()),
            },
        };
        Ok(match row {
            Some((position, gtid)) => (position.filter(|p| !p.trim().is_empty()), gtid.map(|g| g != 0)),
            None => (None, None),
        })
    }

    /// On the primary: writes `ts = NOW(6)`, creating the table (and its database) the first
    /// time the write finds them missing. No `IF NOT EXISTS` on every start (a note each time)
    /// and no `VALUES()` in the upsert (deprecated on MySQL 8.0.20+): rwproxy's own statements
    /// raise no warnings.
    /// Returns why the heartbeat could not be written, if it could not.
    async fn write_heartbeat(&mut self, clock: &HeartbeatClock) -> Option<String> {
        let table = self.settings.heartbeat_table.clone()?;
        let conn = self.conn.as_mut()?;
        let sql = HeartbeatSql::new(&table);
        let mut result = conn.query_drop(&sql.upsert).await;
        let missing = |r: &Result<(), mysql_async::Error>| matches!(r, Err(mysql_async::Error::Server(e)) if e.code == 1146 || e.code == 1049);
        // Once per connection: create what is missing, the database only when the table's
        // creation says it is missing too.
        if !self.heartbeat_ready && missing(&result) {
            let mut created = conn.query_drop(&sql.create_table).await;
            if missing(&created)
                && let Some(create_database) = &sql.create_database
            {
                let _ = conn.query_drop(create_database).await;
                created = conn.query_drop(&sql.create_table).await;
            }
            if let Err(e) = created {
                tracing::debug!(%table, error = %e, "heartbeat table not created here");
            }
            result = conn.query_drop(&sql.upsert).await;
            self.heartbeat_ready = true;
        }
        match result {
            Ok(()) => {
                clock.wrote();
                None
            }
            Err(e) => {
                if !self.heartbeat_warned {
                    self.heartbeat_warned = true;
                    tracing::warn!(%table, error = %e, "cannot write the heartbeat; replica lag is measured from GTID positions instead (one monitor interval's resolution)");
                }
                Some(format!("cannot write the heartbeat table {table}: {e}"))
            }
        }
    }

    /// On a replica: how far its copy of the heartbeat is behind, at millisecond resolution.
    /// The row's age minus the age of the newest heartbeat written: a replica that has it is
    /// 0 behind, whatever the interval.
    async fn heartbeat_lag(&mut self, clock: &HeartbeatClock) -> Option<Duration> {
        let table = self.settings.heartbeat_table.as_ref()?;
        let since_write = clock.age()?;
        let conn = self.conn.as_mut()?;
        let sql = HeartbeatSql::new(table).age;
        let age_us: i64 = conn.query_first(&sql).await.ok().flatten()?;
        let age = Duration::from_micros(u64::try_from(age_us).unwrap_or(0));
        Some(age.saturating_sub(since_write))
    }
}
