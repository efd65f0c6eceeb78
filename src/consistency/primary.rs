//! The primary's current position, fetched on one connection of rwproxy's own and shared by
//! every read that needs it.
//!
//! A read that must see everything committed before it started needs a fetch that began after
//! it started. Fetches run one at a time: a read waits for the lock, then uses the newest
//! result if that fetch began after the read did, and fetches itself otherwise. Under load this
//! coalesces: all reads that queued behind one fetch share the next one, so the primary sees
//! about one query per fetch round trip, not one per read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_common::constants::CapabilityFlags as Caps;
use tokio::sync::Mutex;

use super::Position;
use crate::backend::{Backend, BackendConn, Login, QueryError};

#[derive(Debug)]
pub struct PrimaryPosition {
    login: Login,
    timeout: Duration,
    slot: Mutex<Slot>,
}

#[derive(Debug, Default)]
struct Slot {
    conn: Option<BackendConn>,
    /// The newest position and when the fetch that got it began.
    last: Option<(Instant, Option<Position>)>,
    /// The server is MySQL: its position is `gtid_executed`.
    mysql: bool,
}

impl PrimaryPosition {
    /// `user`/`password`: the monitor's login; `timeout`: for connecting and each fetch.
    pub fn new(user: String, password: String, timeout: Duration) -> PrimaryPosition {
        let login = Login {
            user,
            password,
            stage1: None,
            database: None,
            collation: 45, // utf8mb4_general_ci
            mariadb_caps: mysql_common::constants::MariadbCapabilities::empty(),
            client_caps: Caps::CLIENT_PROTOCOL_41 | Caps::CLIENT_DEPRECATE_EOF | Caps::CLIENT_TRANSACTIONS,
            max_packet_size: 1 << 24,
        };
        PrimaryPosition { login, timeout, slot: Mutex::new(Slot::default()) }
    }

    /// The primary's position as of some moment after `since`; `Ok(None)` when the primary
    /// writes no GTIDs.
    pub async fn after(&self, primary: &Arc<Backend>, since: Instant) -> Result<Option<Position>, String> {
        let mut slot = self.slot.lock().await;
        if let Some((fetched, position)) = &slot.last
            && *fetched >= since
        {
            return Ok(position.clone());
        }
        let began = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.fetch(&mut slot, primary)).await;
        let position = match result {
            Ok(Ok(position)) => position,
            Ok(Err(e)) => {
                slot.conn = None;
                return Err(e);
            }
            Err(_) => {
                slot.conn = None;
                return Err(format!("no answer from the primary within {:?}", self.timeout));
            }
        };
        slot.last = Some((began, position.clone()));
        Ok(position)
    }

    async fn fetch(&self, slot: &mut Slot, primary: &Arc<Backend>) -> Result<Option<Position>, String> {
        let stale = slot.conn.as_mut().is_none_or(|c| c.backend.index != primary.index || c.is_closed());
        if stale {
            slot.conn = None;
            let mut conn = BackendConn::connect(primary.clone(), &self.login, self.timeout)
                .await
                .map_err(|e| e.to_string())?;
            conn.not_a_client();
            slot.mysql = !conn.mariadb;
            slot.conn = Some(conn);
        }
        let Some(conn) = slot.conn.as_mut() else {
            return Err("no connection".into());
        };
        let sql = if slot.mysql { "SELECT @@GLOBAL.gtid_executed" } else { "SELECT @@gtid_binlog_pos" };
        match conn.query_value(sql).await {
            Ok(text) => Ok(text.and_then(|t| Position::parse(&t).ok())),
            Err(QueryError::Server(e)) => Err(e),
            Err(QueryError::Lost(e)) => Err(e),
        }
    }
}
