//! The multiplexing traps, compared with a direct connection: the same statements through
//! rwproxy (while another session takes the shared backend connection between them) must give
//! the same rows, affected rows, insert id, warning count and error code.

use mysql_async::prelude::*;
use mysql_async::{Conn, Value};

/// Everything a client can see of one statement's answer.
#[derive(Debug, PartialEq)]
pub enum Seen {
    Rows { rows: Vec<Vec<String>>, affected: u64, insert_id: Option<u64>, warnings: u16 },
    Error(u16),
}

fn text(value: &Value) -> String {
    match value {
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    }
}

pub async fn run(conn: &mut Conn, sql: &str) -> Seen {
    match conn.query_iter(sql).await {
        Ok(mut result) => {
            let rows: Vec<mysql_async::Row> = match result.collect().await {
                Ok(rows) => rows,
                Err(mysql_async::Error::Server(e)) => return Seen::Error(e.code),
                Err(e) => panic!("{sql}: {e}"),
            };
            let rows = rows
                .iter()
                .map(|r| (0..r.len()).map(|i| r.as_ref(i).map(text).unwrap_or_default()).collect())
                .collect();
            let (affected, insert_id, warnings) =
                (conn.affected_rows(), conn.last_insert_id(), conn.get_warnings());
            Seen::Rows { rows, affected, insert_id, warnings }
        }
        Err(mysql_async::Error::Server(e)) => Seen::Error(e.code),
        Err(e) => panic!("{sql}: {e}"),
    }
}

/// Runs `steps` on `direct` and on `through` (a session through rwproxy), where `other` (a
/// session through the same rwproxy with other settings) runs a statement between every step;
/// `{t}` in a step is a table of the side's own (`mx_<name>_direct`, `mx_<name>_proxy`), created
/// from `table`. Every step must answer the same on both sides.
pub async fn same_as_direct(
    mut direct: Conn,
    mut through: Conn,
    mut other: Conn,
    name: &str,
    table: &str,
    steps: &[&str],
) {
    for statement in ["SET time_zone = '+09:00'", "SET sql_mode = 'NO_BACKSLASH_ESCAPES'", "SET NAMES latin1"]
    {
        other.query_drop(statement).await.expect("the other session's settings");
    }
    let mut other_ids = 0;
    other
        .query_drop("CREATE TABLE IF NOT EXISTS mx_other (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
        .await
        .expect("create");
    for side in ["direct", "proxy"] {
        let t = format!("mx_{name}_{side}");
        direct.query_drop(format!("DROP TABLE IF EXISTS {t}")).await.expect("drop");
        if !table.is_empty() {
            direct.query_drop(table.replace("{t}", &t)).await.expect("create");
        }
    }
    for step in steps {
        let want = run(&mut direct, &step.replace("{t}", &format!("mx_{name}_direct"))).await;
        // Between the session's statements the other session takes the one connection (when
        // the session has given it back), inserts a row (a new LAST_INSERT_ID and ROW_COUNT()
        // there) and reads up to two rows (a new FOUND_ROWS()). When the session holds the
        // connection, the insert waits `connect_timeout` and gives up; the read is not tried
        // then (a second wait could outlast what the session's pin is kept for).
        if other.query_drop("INSERT INTO mx_other (v) VALUES (7)").await.is_ok() {
            other_ids += 1;
            other.query_drop("SELECT v FROM mx_other LIMIT 2").await.expect("the other session's read");
        }
        let got = run(&mut through, &step.replace("{t}", &format!("mx_{name}_proxy"))).await;
        assert_eq!(got, want, "{name}: {step}");
    }
    assert!(other_ids > 0, "{name}: the other session never got the connection between the steps");
}
