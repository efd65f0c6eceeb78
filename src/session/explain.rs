//! `EXPLAIN ROUTE <statement>`: rwproxy answers with where the statement would go and why,
//! without running it.

use mysql_common::constants::CapabilityFlags as Caps;

use super::{Session, SessionError};
use crate::classifier::classify;
use crate::protocol::{packet, wire};
use crate::router::Target;

impl Session {
    pub(super) async fn explain_route(&mut self, statement: &str) -> Result<(), SessionError> {
        if let Some(reason) = self.answered_by_rwproxy(statement) {
            let connection = self.describe_connection();
            let row = ["rwproxy", "none", reason, "no position needed", connection.as_str()];
            return self
                .write_text_result(&["destination", "backend", "reason", "consistency", "connection"], &row)
                .await;
        }
        let class = classify(statement);
        let router = self.shared.router.clone();
        let decision = router.decide(&class, &self.state.view);
        let destination = match decision.target {
            Target::ReadPool => "read",
            Target::Replica => "replica",
            Target::Primary => "primary",
            Target::PreferPrimary => "all",
            Target::Backend(_) if self.state.view.pinned.is_some() => "pinned",
            Target::Backend(_) => "last",
        };
        let backend = router
            .would_pick(decision.target, &self.state.excluded, self.worker)
            .and_then(|b| router.backends().get(b).map(|b| b.name.clone()))
            .unwrap_or_else(|| "none".into());
        let consistency = if decision.target.is_read() {
            self.describe_consistency(super::consistency::hinted_position(statement))
        } else {
            "no position needed".to_string()
        };
        let connection = self.describe_connection();
        let row = [
            destination,
            backend.as_str(),
            decision.reason.as_str(),
            consistency.as_str(),
            connection.as_str(),
        ];
        self.write_text_result(&["destination", "backend", "reason", "consistency", "connection"], &row).await
    }

    /// A one-row text result set written by rwproxy itself.
    pub(super) async fn write_text_result(
        &mut self,
        columns: &[&str],
        row: &[&str],
    ) -> Result<(), SessionError> {
        let extended = self.extended_metadata();
        let columns: Vec<Vec<u8>> = columns.iter().map(|c| wire::text_column(c, extended)).collect();
        self.write_row_result(columns, row).await
    }

    /// Why rwproxy answers `statement` itself, when it does (`KILL`, and what `query` answers
    /// without a backend).
    fn answered_by_rwproxy(&self, statement: &str) -> Option<&'static str> {
        if crate::classifier::kill_target(statement).is_some() {
            return Some("kill");
        }
        self.answered_here(statement).map(|answered| answered.reason())
    }

    /// `SELECT CONNECTION_ID()`: the id the client's greeting carried, which `KILL` through
    /// rwproxy takes (the borrowed backend connection's id changes from statement to statement).
    pub(super) async fn answer_connection_id(&mut self, name: &str) -> Result<(), SessionError> {
        let mariadb = self.shared.server_version.contains("MariaDB");
        let column = wire::IntegerColumn::connection_id(mariadb).definition(name, self.extended_metadata());
        self.write_row_result(vec![column], &[&self.id.to_string()]).await
    }

    /// `SELECT ROW_COUNT()` or `SELECT FOUND_ROWS()` when rwproxy knows what the session's
    /// previous statements left: the borrowed backend connection may have run another
    /// session's statement since.
    pub(super) async fn answer_count(&mut self, name: &str, count: i64) -> Result<(), SessionError> {
        let column = wire::IntegerColumn::row_count().definition(name, self.extended_metadata());
        self.write_row_result(vec![column], &[&count.to_string()]).await
    }

    fn extended_metadata(&self) -> bool {
        self.login
            .mariadb_caps
            .contains(mysql_common::constants::MariadbCapabilities::MARIADB_CLIENT_EXTENDED_METADATA)
    }

    /// A one-row text result rwproxy answers itself.
    async fn write_row_result(&mut self, columns: Vec<Vec<u8>>, row: &[&str]) -> Result<(), SessionError> {
        let deprecate_eof = self.login.client_caps.contains(Caps::CLIENT_DEPRECATE_EOF);
        let mut packets: Vec<Vec<u8>> = vec![vec![columns.len() as u8]];
        packets.extend(columns);
        if !deprecate_eof {
            packets.push(wire::eof_packet(self.state.status, false));
        }
        let mut values = Vec::new();
        for value in row {
            wire::put_lenenc_str(&mut values, value.as_bytes());
        }
        packets.push(values);
        packets.push(wire::eof_packet(self.state.status, deprecate_eof));
        // A result set of one row: what ROW_COUNT() and FOUND_ROWS() read next.
        self.row_count = Some(-1);
        self.found_rows = Some(1);
        for p in &packets {
            self.seq = packet::write_packet(&mut self.writer, self.seq, p).await?;
        }
        use tokio::io::AsyncWriteExt;
        self.writer.flush().await?;
        Ok(())
    }
}
