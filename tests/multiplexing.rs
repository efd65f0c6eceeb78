//! Multiplexing on the real cluster: idle clients hold no backend connections, and the known
//! traps of moving a session between backend connections give the same results as a direct
//! connection.
//!
//! The trap tests run through a proxy whose only backend is the primary, with one connection
//! (`max_connections = 1`) and one SQL worker thread (so both sessions borrow from one shard of
//! the pool): a second session with other settings runs a statement between every
//! statement of the session under test, so each statement of that session runs on a connection
//! the other session used last, and everything the session set must move with it.

mod common;

use std::time::Duration;

use common::cluster::{APP_PASSWORD, APP_USER, DATABASE};
use common::raw::RawClient;
use common::{cluster, connect, connect_direct, start_proxy_with, traps};
use mysql_async::Conn;
use mysql_async::prelude::*;
use mysql_common::constants::CapabilityFlags as Caps;
use rwproxy::protocol::packet;
use rwproxy::proxy::Proxy;
use tokio::sync::{Mutex, MutexGuard};

/// The tests of this binary run one at a time: the idle-clients test counts every connection
/// on the servers.
static SERIAL: Mutex<()> = Mutex::const_new(());

async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// The proxy config with the primary alone, holding one backend connection.
fn primary_only(extra_mysql: &str) -> String {
    let full = cluster().proxy_config("127.0.0.1:0");
    let cut = full.find("\n[[mysql.backends]]\nname = \"replica").unwrap_or(full.len());
    full[..cut].replace("role = \"primary\"", "role = \"primary\"\nmax_connections = 1").replace(
        "connect_timeout = \"1s\"",
        &format!("connect_timeout = \"300ms\"\nthreads = 1\n{extra_mysql}"),
    )
}

/// Runs `steps` on a direct connection to the primary and through `proxy` (see
/// [`traps::same_as_direct`]).
async fn same_as_direct(proxy: &Proxy, name: &str, table: &str, steps: &[&str]) {
    let direct = connect_direct(cluster().primary().port).await;
    traps::same_as_direct(direct, connect(proxy).await, connect(proxy).await, name, table, steps).await;
}

async fn trap_proxy() -> Proxy {
    start_proxy_with(&primary_only("")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn set_names_and_charset_move_with_the_session() {
    let _serial = serial().await;
    let proxy = trap_proxy().await;
    let steps = [
        "SET NAMES utf8mb4",
        "SELECT @@character_set_client, @@character_set_results, @@collation_connection",
        "SELECT CHARSET('x'), HEX('é')",
        "SET NAMES utf8mb4 COLLATE utf8mb4_bin",
        "SELECT @@collation_connection, 'a' = 'A'",
        "SET character_set_results = NULL",
        "SELECT @@character_set_results",
    ];
    same_as_direct(&proxy, "names", "", &steps).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_mode_and_time_zone_move_with_the_session() {
    let _serial = serial().await;
    let proxy = trap_proxy().await;
    let steps = [
        "SET sql_mode = 'ANSI_QUOTES,PIPES_AS_CONCAT'",
        "SELECT @@sql_mode",
        "SELECT 'a' || 'b'",
        "SELECT \"no_such_column\" FROM DUAL",
        "SET time_zone = '+05:00'",
        "SELECT @@time_zone, FROM_UNIXTIME(0)",
        "SET SESSION time_zone = '-03:00'",
        "SELECT FROM_UNIXTIME(0)",
    ];
    same_as_direct(&proxy, "mode", "", &steps).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn autocommit_off_keeps_the_transaction_on_its_connection() {
    let _serial = serial().await;
    let proxy = trap_proxy().await;
    let steps = [
        "SET autocommit = 0",
        "INSERT INTO {t} (v) VALUES (1)",
        "SELECT COUNT(*) FROM {t}",
        "ROLLBACK",
        "SELECT COUNT(*) FROM {t}",
        "INSERT INTO {t} (v) VALUES (2)",
        "COMMIT",
        "SET autocommit = 1",
        "SELECT v FROM {t}",
    ];
    let table = "CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY, v INT)";
    same_as_direct(&proxy, "autocommit", table, &steps).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn last_insert_id_is_carried_to_the_next_connection() {
    let _serial = serial().await;
    let proxy = trap_proxy().await;
    let steps = [
        "INSERT INTO {t} (v) VALUES (1), (2)",
        "SELECT LAST_INSERT_ID()",
        "SELECT v FROM {t} ORDER BY id",
        "SELECT @@identity, @@last_insert_id",
        "INSERT INTO {t} (v) VALUES (LAST_INSERT_ID())",
        "SELECT id, v FROM {t} ORDER BY id",
        "SELECT LAST_INSERT_ID() + 0",
    ];
    let table = "CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY, v INT)";
    same_as_direct(&proxy, "insert_id", table, &steps).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn found_rows_and_warnings_are_read_on_the_connection_that_made_them() {
    let _serial = serial().await;
    let proxy = trap_proxy().await;
    let steps = [
        "INSERT INTO {t} (v) VALUES (1), (2), (3), (4), (5)",
        "SELECT SQL_CALC_FOUND_ROWS v FROM {t} ORDER BY v LIMIT 2",
        "SELECT FOUND_ROWS()",
        "SELECT CAST('12abc' AS SIGNED)",
        "SHOW WARNINGS",
        "SHOW COUNT(*) WARNINGS",
        "SELECT COUNT(*) FROM {t}",
        "SHOW WARNINGS",
        "SELECT CAST('x' AS SIGNED), CAST('y' AS SIGNED)",
        "SHOW COUNT(*) WARNINGS",
    ];
    let table = "CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY, v INT)";
    same_as_direct(&proxy, "diagnostics", table, &steps).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_count_is_the_sessions_previous_statements() {
    let _serial = serial().await;
    let proxy = trap_proxy().await;
    // Between every two steps the other session inserts one row on the shared connection:
    // its ROW_COUNT() there is 1, so every count here that is not 1 shows whose it is.
    let steps = [
        "INSERT INTO {t} (v) VALUES (1), (2), (3), (4), (5)",
        "SELECT ROW_COUNT()",
        "UPDATE {t} SET v = v + 1 WHERE v > 2",
        "select row_count();",
        "DELETE FROM {t} WHERE v > 100",
        "SELECT ROW_COUNT()",
        "SELECT v FROM {t} ORDER BY v",
        "SELECT ROW_COUNT()",
        "INSERT INTO {t} (id, v) VALUES (1, 1)",
        "SELECT ROW_COUNT()",
        "SET @rc = 3",
        "SELECT ROW_COUNT()",
        "INSERT INTO {t} (id, v) VALUES (1, 9) ON DUPLICATE KEY UPDATE v = 9",
        "SELECT ROW_COUNT()",
        "DO 1",
        "SELECT ROW_COUNT()",
        "CREATE TABLE IF NOT EXISTS {t}_b (id INT)",
        "SELECT ROW_COUNT()",
        "DROP TABLE {t}_b",
        "SELECT ROW_COUNT()",
        "SELECT ROW_COUNT()",
    ];
    let table = "CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY, v INT)";
    same_as_direct(&proxy, "row_count", table, &steps).await;
    same_column_as_direct(&proxy, "DO 1", "SELECT ROW_COUNT()").await;
}

/// rwproxy's answer to `question` after `before` describes its column as the server does.
async fn same_column_as_direct(proxy: &Proxy, before: &str, question: &str) {
    let column = |rows: Vec<mysql_async::Row>| {
        let c = &rows.first().expect("a row").columns()[0];
        (c.name_str().into_owned(), c.column_type(), c.flags(), c.character_set(), c.column_length())
    };
    let mut through = connect(proxy).await;
    let mut direct = connect_direct(cluster().primary().port).await;
    through.query_drop(before).await.expect("proxied");
    direct.query_drop(before).await.expect("direct");
    let proxied = column(through.query(question).await.expect("proxied"));
    assert_eq!(proxied, column(direct.query(question).await.expect("direct")), "{question}");
}

#[tokio::test(flavor = "multi_thread")]
async fn found_rows_is_the_sessions_last_result_sets() {
    let _serial = serial().await;
    let proxy = trap_proxy().await;
    // The other session reads one or two rows between every two steps: every count here is
    // 0, 3 or 5, so each shows whose it is.
    let steps = [
        "INSERT INTO {t} (v) VALUES (1), (2), (3), (4), (5)",
        "SELECT v FROM {t} ORDER BY v LIMIT 3",
        "SELECT FOUND_ROWS()",
        "SELECT v FROM {t}",
        "UPDATE {t} SET v = v + 1 WHERE v > 4",
        "select found_rows();",
        "SELECT v FROM {t} WHERE v > 100",
        "SELECT FOUND_ROWS()",
        "SELECT v FROM {t}",
        "SELECT nope FROM {t}",
        "SELECT FOUND_ROWS()",
        "SELECT FOUND_ROWS()",
        "SELECT SQL_CALC_FOUND_ROWS v FROM {t} ORDER BY v LIMIT 1",
        "SELECT FOUND_ROWS()",
    ];
    let table = "CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY, v INT)";
    same_as_direct(&proxy, "found_rows", table, &steps).await;
    same_column_as_direct(&proxy, "SELECT 1", "SELECT FOUND_ROWS()").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transaction_isolation_for_the_next_transaction_only() {
    let _serial = serial().await;
    cluster().primary().sql("GRANT PROCESS ON *.* TO 'app'@'%'").expect("grant");
    let proxy = trap_proxy().await;
    let level = "SELECT trx_isolation_level FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = CONNECTION_ID()";
    let steps = [
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "BEGIN",
        "INSERT INTO {t} (v) VALUES (1)",
        level,
        "COMMIT",
        "BEGIN",
        "INSERT INTO {t} (v) VALUES (1)",
        level,
        "COMMIT",
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        "BEGIN",
        "INSERT INTO {t} (v) VALUES (1)",
        level,
        "COMMIT",
    ];
    let table = "CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY, v INT)";
    same_as_direct(&proxy, "isolation", table, &steps).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn user_variables_and_prepared_statements_move_or_pin() {
    let _serial = serial().await;
    let proxy = trap_proxy().await;
    let steps = [
        "SET @a = 5",
        "SELECT @a + 1",
        "PREPARE s FROM 'SELECT ? * 2'",
        "SET @b = 21",
        "EXECUTE s USING @b",
        "DEALLOCATE PREPARE s",
        "SELECT @a, @b",
        "CREATE TEMPORARY TABLE {t}_tmp (v INT)",
        "INSERT INTO {t}_tmp VALUES (1)",
        "SELECT COUNT(*) FROM {t}_tmp",
        "DROP TEMPORARY TABLE {t}_tmp",
        "SELECT GET_LOCK('mx_lock_{t}', 1)",
        "SELECT IS_USED_LOCK('mx_lock_{t}') = CONNECTION_ID()",
        "SELECT RELEASE_LOCK('mx_lock_{t}')",
    ];
    same_as_direct(&proxy, "variables", "", &steps).await;
}

/// Binary-protocol statements of two sessions on one shared connection: each keeps its own
/// statement ids and parameter types.
#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_of_two_sessions_share_one_connection() {
    let _serial = serial().await;
    let proxy = trap_proxy().await;
    let mut a = connect(&proxy).await;
    let mut b = connect(&proxy).await;
    let sa = a.prep("SELECT CONCAT(?, '-a')").await.expect("prepare a");
    let sb = b.prep("SELECT CONCAT(?, '-a')").await.expect("prepare b (same text)");
    let sc = b.prep("SELECT ? + 1").await.expect("prepare c");
    for i in 0..20 {
        let x: String = a.exec_first(&sa, (format!("x{i}"),)).await.expect("exec a").expect("row");
        assert_eq!(x, format!("x{i}-a"));
        let y: String = b.exec_first(&sb, (i,)).await.expect("exec b").expect("row");
        assert_eq!(y, format!("{i}-a"));
        let z: i64 = b.exec_first(&sc, (i,)).await.expect("exec c").expect("row");
        assert_eq!(z, i + 1);
    }
    a.close(sa).await.expect("close");
    let y: String = b.exec_first(&sb, ("still",)).await.expect("exec b after a closed").expect("row");
    assert_eq!(y, "still-a");
}

/// A COM_STMT_EXECUTE for `SELECT ?` with its one parameter: `types` (type and flag bytes)
/// sent when given, else the server's bound types are used.
fn execute_one(id: u32, types: Option<[u8; 2]>, value: &[u8]) -> Vec<u8> {
    let mut p = vec![0x17];
    p.extend_from_slice(&id.to_le_bytes());
    p.push(0);
    p.extend_from_slice(&1u32.to_le_bytes());
    p.push(0); // null bitmap: not NULL
    match types {
        Some(types) => {
            p.push(1);
            p.extend_from_slice(&types);
        }
        None => p.push(0),
    }
    p.extend_from_slice(value);
    p
}

/// Two sessions share one server statement (the same text on the one connection) but bind
/// different parameter types: a session that sends no types (as libmysqlclient does after its
/// first execution) gets its own types bound again, and the same answer as directly.
#[tokio::test(flavor = "multi_thread")]
async fn parameter_types_follow_the_session_on_a_shared_statement() {
    use rwproxy::protocol::ResponseKind;
    let _serial = serial().await;
    let proxy = trap_proxy().await;
    let login = (APP_USER, APP_PASSWORD, DATABASE);
    let prepare = [&[0x16u8][..], b"SELECT ? AS v"].concat();
    let id_of = |reply: &[u8]| u32::from_le_bytes([reply[5], reply[6], reply[7], reply[8]]);
    let number = Some([8u8, 0]); // LONGLONG
    let text = Some([253u8, 0]); // VAR_STRING
    let five = 5i64.to_le_bytes();
    let abc = [3, b'a', b'b', b'c'];
    let mut answers = Vec::new();
    for address in [proxy.sql_addr.to_string(), cluster().primary().address()] {
        let mut a = RawClient::connect_with(&address, login, true, Caps::empty()).await.expect("a");
        let mut b = RawClient::connect_with(&address, login, true, Caps::empty()).await.expect("b");
        let sa = id_of(&a.command(&prepare, ResponseKind::Prepare).await.expect("prepare a"));
        let sb = id_of(&b.command(&prepare, ResponseKind::Prepare).await.expect("prepare b"));
        let run = async |client: &mut RawClient, payload: Vec<u8>| {
            client.command(&payload, ResponseKind::Execute).await.expect("execute")
        };
        let steps = vec![
            run(&mut a, execute_one(sa, number, &five)).await,
            run(&mut b, execute_one(sb, text, &abc)).await,
            run(&mut a, execute_one(sa, None, &five)).await,
            run(&mut a, execute_one(sa, None, &five)).await,
            run(&mut b, execute_one(sb, None, &abc)).await,
        ];
        answers.push(steps);
    }
    assert_eq!(answers[0], answers[1], "through rwproxy and directly");
}

/// Two workers, one backend connection: a session on one worker gets the connection the other
/// worker's session gave back (closed there to free the slot), not an error.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_on_two_workers_share_one_backend_connection() {
    let _serial = serial().await;
    let proxy = start_proxy_with(&primary_only("").replace("threads = 1", "threads = 2")).await;
    let mut a = connect(&proxy).await;
    let mut b = connect(&proxy).await;
    for i in 0..20u32 {
        let x: u32 = a.query_first(format!("SELECT {i}")).await.expect("a").expect("row");
        let y: u32 = b.query_first(format!("SELECT {i} + 1")).await.expect("b").expect("row");
        assert_eq!((x, y), (i, i + 1));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn server_made_user_variables_move_with_the_session() {
    let _serial = serial().await;
    let proxy = trap_proxy().await;
    // Every value keeps its type: the arithmetic on it shows a decimal, a double, an unsigned
    // integer, and the string's character set and collation.
    let steps = [
        "SELECT @a := 5, @s := 'h\u{e9}llo', @d := 1.50, @f := 0.1e0, @n := NULL, @b := _binary X'00FF', @u := 18446744073709551615",
        "SELECT @a + 1, @s, CHARSET(@s), COLLATION(@s), @d / 4, @f + 0.2, @n IS NULL, HEX(@b), @u - 1, @u DIV 3",
        "SELECT @l := _latin1 'caf\u{e9}' COLLATE latin1_german2_ci",
        "SELECT @l, CHARSET(@l), COLLATION(@l), LENGTH(@l)",
        "SELECT @rn := @rn + 1 AS r, x FROM (SELECT 10 AS x UNION SELECT 20 UNION SELECT 30) AS t3, (SELECT @rn := 0) AS init ORDER BY x",
        "SELECT @rn",
        "INSERT INTO {t} (v) VALUES (41), (42)",
        "SELECT v INTO @x FROM {t} ORDER BY v DESC LIMIT 1",
        "SELECT @x, @x + 1",
        "SET @m = (SELECT MIN(v) FROM {t})",
        "SELECT @m, @m * 2",
        "SELECT @a := @a * 2",
        "SELECT @a, @rn, @s",
    ];
    let table = "CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY, v INT)";
    same_as_direct(&proxy, "server_made_variables", table, &steps).await;
    // None of them pinned the session.
    let mut conn = connect(&proxy).await;
    conn.query_drop("SELECT @rn := @rn + 1 FROM (SELECT 1 UNION SELECT 2) AS t2, (SELECT @rn := 0) AS i")
        .await
        .expect("select");
    let row: (String, String, String, String, String) =
        conn.query_first("EXPLAIN ROUTE SELECT @rn").await.expect("explain").expect("row");
    assert!(row.4.starts_with("borrowed"), "{row:?}");
    let (_, metrics) = common::http_get(proxy.admin_addr.expect("admin"), "/metrics").await;
    assert!(!metrics.contains("rwproxy_multiplex_pins_total{reason=\"user_variables\"} 1"), "{metrics}");
    // A prepared statement's assignment is carried too: another session with other settings
    // takes the one connection in between (it is reset before this session borrows it back).
    let mut prepared = connect(&proxy).await;
    prepared.exec_drop("SELECT @p := ? + 1", (41,)).await.expect("execute");
    let row: (String, String, String, String, String) =
        prepared.query_first("EXPLAIN ROUTE SELECT @p").await.expect("explain").expect("row");
    assert!(row.4.starts_with("borrowed"), "{row:?}");
    conn.query_drop("SET time_zone = '+03:00'").await.expect("set");
    conn.query_drop("SELECT @p := 0").await.expect("the other session's own @p");
    let p: Option<i64> = prepared.query_first("SELECT @p").await.expect("read");
    assert_eq!(p, Some(42));
    // What cannot be carried still pins: a quoted name.
    conn.query_drop("SELECT @`odd name` := 1").await.expect("select");
    let row: (String, String, String, String, String) =
        conn.query_first("EXPLAIN ROUTE SELECT 1").await.expect("explain").expect("row");
    assert_eq!(row.4, "pinned: user_variables");
}

/// A lock or handler held by a connection keeps the session on it: given back, the lock would
/// stay with the connection (and whichever session borrows it next) while the session's
/// `UNLOCK TABLES` ran on another one, leaving the primary read-locked.
#[tokio::test(flavor = "multi_thread")]
async fn locks_and_handlers_held_by_a_connection_pin_the_session() {
    let _serial = serial().await;
    let two = primary_only("").replace("max_connections = 1", "max_connections = 2");
    let proxy = start_proxy_with(&two).await;
    let mut direct = connect_direct(cluster().primary().port).await;
    direct
        .query_drop("CREATE TABLE IF NOT EXISTS mx_locks (id INT PRIMARY KEY, v INT)")
        .await
        .expect("create");
    direct.query_drop("REPLACE INTO mx_locks VALUES (1, 0)").await.expect("row");
    let mut locker = connect(&proxy).await;
    let mut other = connect(&proxy).await;
    let connection = |row: Option<(String, String, String, String, String)>| row.expect("row").4;
    for (lock, unlock, pin) in [
        ("FLUSH TABLES WITH READ LOCK", "UNLOCK TABLES", "pinned: lock_tables"),
        ("FLUSH TABLES mx_locks FOR EXPORT", "UNLOCK TABLES", "pinned: lock_tables"),
        ("BACKUP STAGE START", "BACKUP STAGE END", "pinned: backup_lock"),
    ] {
        locker.query_drop(lock).await.unwrap_or_else(|e| panic!("{lock}: {e}"));
        let explained = locker.query_first("EXPLAIN ROUTE SELECT 1").await.expect("explain");
        assert_eq!(connection(explained), pin, "{lock}");
        // Another session holds a connection meanwhile: given back, it would be the locked one.
        other.query_drop("BEGIN").await.expect("begin");
        other.query_drop("SELECT 1").await.expect("select");
        locker.query_drop(unlock).await.expect("unlock");
        other.query_drop("COMMIT").await.expect("commit");
        // No lock is left anywhere: a direct write does not wait for one.
        direct.query_drop("SET SESSION lock_wait_timeout = 2").await.expect("set");
        direct
            .query_drop("UPDATE mx_locks SET v = v + 1 WHERE id = 1")
            .await
            .unwrap_or_else(|e| panic!("after {lock}: {e}"));
        let explained = locker.query_first("EXPLAIN ROUTE SELECT 1").await.expect("explain");
        assert!(connection(explained).starts_with("borrowed"), "{unlock} ends the pin");
    }
    // An open handler lives in its connection too.
    locker.query_drop("HANDLER mx_locks OPEN AS h").await.expect("open");
    other.query_drop("BEGIN").await.expect("begin");
    other.query_drop("SELECT 1").await.expect("select");
    let first: Option<(i32, i32)> =
        locker.query_first("HANDLER h READ FIRST").await.expect("read on the same connection");
    assert_eq!(first.map(|r| r.0), Some(1));
    locker.query_drop("HANDLER h CLOSE").await.expect("close");
    other.query_drop("COMMIT").await.expect("commit");
    let explained = locker.query_first("EXPLAIN ROUTE SELECT 1").await.expect("explain");
    assert!(connection(explained).starts_with("borrowed"), "closed: not pinned");
}

/// State a statement leaves in its connection without showing it in its text (a stored
/// procedure that creates a temporary table, a multi-statement that sets a user variable): the
/// server says so (`session_track_state_change`), and the session keeps its connection until a
/// reset.
#[tokio::test(flavor = "multi_thread")]
async fn state_left_where_the_text_does_not_show_it_pins_the_session() {
    let _serial = serial().await;
    let two = primary_only("").replace("max_connections = 1", "max_connections = 2");
    let proxy = start_proxy_with(&two).await;
    let mut direct = connect_direct(cluster().primary().port).await;
    for sql in [
        "DROP PROCEDURE IF EXISTS mx_make_tmp",
        "CREATE PROCEDURE mx_make_tmp() BEGIN CREATE TEMPORARY TABLE mx_proc_tmp (a INT); INSERT INTO mx_proc_tmp VALUES (1), (2); END",
        "DROP PROCEDURE IF EXISTS mx_just_read",
        "CREATE PROCEDURE mx_just_read() BEGIN SELECT 1; END",
        "DROP FUNCTION IF EXISTS mx_set_variable",
        "CREATE FUNCTION mx_set_variable() RETURNS INT DETERMINISTIC BEGIN SET @mx_fv = 5; RETURN 1; END",
    ] {
        direct.query_drop(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let mut session = connect(&proxy).await;
    let mut other = connect(&proxy).await;
    let connection = |row: Option<(String, String, String, String, String)>| row.expect("row").4;
    let explain = "EXPLAIN ROUTE SELECT 1";
    // A procedure that leaves nothing behind does not pin.
    session.query_drop("CALL mx_just_read()").await.expect("call");
    assert!(connection(session.query_first(explain).await.expect("explain")).starts_with("borrowed"));
    session.query_drop("CALL mx_make_tmp()").await.expect("call");
    assert_eq!(connection(session.query_first(explain).await.expect("explain")), "pinned: untracked_state");
    // Another session holds a connection meanwhile: given back, it would be the one with the
    // table, and the session's next statement would run where the table is missing.
    other.query_drop("BEGIN").await.expect("begin");
    other.query_drop("SELECT 1").await.expect("select");
    let count: Option<i64> =
        session.query_first("SELECT COUNT(*) FROM mx_proc_tmp").await.expect("the table is still there");
    assert_eq!(count, Some(2));
    other.query_drop("COMMIT").await.expect("commit");
    // Only a reset ends it (the table goes with it).
    session.reset().await.expect("reset");
    assert!(connection(session.query_first(explain).await.expect("explain")).starts_with("borrowed"));
    // A multi-statement that sets a user variable.
    session.query_drop("SET @mx_multi = 7; SELECT 1").await.expect("multi-statement");
    assert_eq!(connection(session.query_first(explain).await.expect("explain")), "pinned: untracked_state");
    other.query_drop("BEGIN").await.expect("begin");
    other.query_drop("SET @mx_multi = 1").await.expect("set");
    let value: Option<i64> = session.query_first("SELECT @mx_multi").await.expect("read back");
    assert_eq!(value, Some(7));
    other.query_drop("COMMIT").await.expect("commit");
    // A stored function that sets a user variable, read by a client with and without
    // CLIENT_DEPRECATE_EOF (the result set then ends with an old EOF packet, whose status
    // flags alone say that state changed).
    for deprecate_eof in [true, false] {
        let login = (APP_USER, APP_PASSWORD, DATABASE);
        let mut raw =
            RawClient::connect_with(&proxy.sql_addr.to_string(), login, deprecate_eof, Caps::empty())
                .await
                .expect("raw client");
        raw.query("SELECT mx_set_variable()").await.expect("function");
        let explained = raw.query("EXPLAIN ROUTE SELECT 1").await.expect("explain");
        let text = String::from_utf8_lossy(&explained);
        assert!(text.contains("pinned: untracked_state"), "deprecate_eof = {deprecate_eof}: {text}");
    }
    let (_, metrics) = common::http_get(proxy.admin_addr.expect("admin"), "/metrics").await;
    let line = "rwproxy_multiplex_pins_total{reason=\"untracked_state\"} 4";
    assert!(metrics.contains(line), "{line} in\n{metrics}");
}

/// Multiplexing off for one user: that user's sessions keep their connections, the others
/// still borrow; a reload turns it back on for sessions already logged in.
#[tokio::test(flavor = "multi_thread")]
async fn multiplexing_can_be_off_for_one_user() {
    let _serial = serial().await;
    let base = primary_only("").replace("max_connections = 1", "max_connections = 4");
    let off = base.replace("name = \"reader\"\n", "name = \"reader\"\nmultiplexing = false\n");
    assert!(off.contains("multiplexing = false"), "{off}");
    let proxy = start_proxy_with(&off).await;
    let connection = |row: Option<(String, String, String, String, String)>| row.expect("row").4;
    let mut app = connect(&proxy).await;
    let opts = common::opts(proxy.sql_addr.port(), "reader", "reader").db_name(Some(DATABASE));
    let mut reader = Conn::new(opts).await.expect("reader logs in");
    let explain = "EXPLAIN ROUTE SELECT 1";
    assert!(connection(app.query_first(explain).await.expect("explain")).starts_with("borrowed"));
    assert_eq!(connection(reader.query_first(explain).await.expect("explain")), "own (multiplexing off)");
    // Its connection id stays the server's: the session holds the connection.
    let first: Option<u64> = reader.query_first("SELECT CONNECTION_ID()").await.expect("id");
    app.query_drop("DO 1").await.expect("app");
    let again: Option<u64> = reader.query_first("SELECT CONNECTION_ID()").await.expect("id");
    assert_eq!(first, again);
    assert_ne!(first, Some(u64::from(reader.id())), "the server's id, not the session's");
    let config = rwproxy::config::Config::from_toml(&base).expect("config");
    proxy.reloader.apply(config).expect("reload");
    assert!(connection(reader.query_first(explain).await.expect("explain")).starts_with("borrowed"));
}

/// `EXPLAIN ROUTE` and `/status` name the pin, and the pins are counted.
#[tokio::test(flavor = "multi_thread")]
async fn explain_route_and_metrics_say_why_a_session_is_pinned() {
    let _serial = serial().await;
    let proxy = trap_proxy().await;
    let mut conn = connect(&proxy).await;
    let connection = |row: (String, String, String, String, String)| row.4;
    let row = conn.query_first("EXPLAIN ROUTE SELECT 1").await.expect("explain").expect("row");
    assert!(connection(row).starts_with("borrowed"));
    conn.query_drop("BEGIN").await.expect("begin");
    conn.query_drop("SELECT 1").await.expect("select");
    let row = conn.query_first("EXPLAIN ROUTE SELECT 1").await.expect("explain").expect("row");
    assert_eq!(connection(row), "pinned: transaction");
    conn.query_drop("COMMIT").await.expect("commit");
    conn.query_drop("CREATE TEMPORARY TABLE mx_explain (v INT)").await.expect("temporary");
    let row = conn.query_first("EXPLAIN ROUTE SELECT 1").await.expect("explain").expect("row");
    assert_eq!(connection(row), "pinned: temporary_table");
    let (_, metrics) = common::http_get(proxy.admin_addr.expect("admin"), "/metrics").await;
    for reason in ["transaction", "temporary_table"] {
        let line = format!("rwproxy_multiplex_pins_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    let (_, status) = common::http_get(proxy.admin_addr.expect("admin"), "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let pinned = &status["multiplexing"]["pinned_sessions"];
    assert_eq!(
        (pinned["temporary_table"].as_i64(), pinned["transaction"].as_i64()),
        (Some(1), Some(0)),
        "{status}"
    );
}

/// Threads connected on a server now.
async fn threads_connected(port: u16) -> u64 {
    let mut conn = connect_direct(port).await;
    let row: (String, u64) =
        conn.query_first("SHOW GLOBAL STATUS LIKE 'Threads_connected'").await.expect("status").expect("row");
    row.1
}

/// 2,000 clients that each ran a read and a write and now sit idle hold no more than
/// `max_idle_connections` connections on any server.
#[tokio::test(flavor = "multi_thread")]
async fn idle_clients_hold_at_most_max_idle_backend_connections() {
    let _serial = serial().await;
    const CLIENTS: usize = 2000;
    const MAX_IDLE: u64 = 4;
    let text = cluster().proxy_config("127.0.0.1:0").replace(
        "connect_timeout = \"1s\"",
        // Every client comes from 127.0.0.1 here: no per-source limit.
        &format!(
            "connect_timeout = \"5s\"\nmax_idle_connections = {MAX_IDLE}\nmax_connections_per_source = 0"
        ),
    );
    let ports: Vec<u16> = std::iter::once(cluster().primary().port)
        .chain(cluster().replicas().iter().map(|r| r.port))
        .collect();
    let mut before = Vec::new();
    for port in &ports {
        before.push(threads_connected(*port).await);
    }
    let proxy = start_proxy_with(&text).await;
    let mut setup = connect(&proxy).await;
    setup
        .query_drop("CREATE TABLE IF NOT EXISTS mx_idle (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
        .await
        .expect("create");
    let mut clients = Vec::with_capacity(CLIENTS);
    let mut logins = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let opts =
            common::opts(proxy.sql_addr.port(), common::cluster::APP_USER, common::cluster::APP_PASSWORD);
        logins.spawn(async move {
            let mut conn = Conn::new(opts).await.expect("login");
            conn.query_drop(format!("INSERT INTO mx_idle (v) VALUES ({i})")).await.expect("write");
            let _: Option<u32> = conn.query_first("SELECT @@server_id").await.expect("read");
            conn
        });
        // A few dozen logins at a time: the test measures connections, not a login storm.
        if logins.len() >= 50
            && let Some(conn) = logins.join_next().await
        {
            clients.push(conn.expect("client"));
        }
    }
    while let Some(conn) = logins.join_next().await {
        clients.push(conn.expect("client"));
    }
    assert_eq!(clients.len(), CLIENTS);
    // The monitor's connection and the consistency position fetcher are rwproxy's own too.
    const OWN: u64 = 2;
    for (i, port) in ports.iter().enumerate() {
        let now = threads_connected(*port).await;
        // The check's own connection counts once.
        let added = now.saturating_sub(before[i]);
        assert!(
            added <= MAX_IDLE + OWN,
            "server {port}: {added} more connections with {CLIENTS} idle clients"
        );
    }
    // A new client logs in and reads while they sit there.
    let started = std::time::Instant::now();
    let mut fresh = connect(&proxy).await;
    let _: Option<u32> = fresh.query_first("SELECT @@server_id").await.expect("read");
    assert!(started.elapsed() < Duration::from_secs(2), "a new client took {:?}", started.elapsed());
    for conn in clients {
        drop(conn);
    }
}

/// A backend connection nobody borrows for `backend_idle_timeout` is closed on the server; the
/// session that used it gets a new one for its next statement.
#[tokio::test(flavor = "multi_thread")]
async fn idle_backend_connections_are_closed_after_backend_idle_timeout() {
    let _serial = serial().await;
    let proxy = start_proxy_with(&primary_only("backend_idle_timeout = \"1s\"")).await;
    let mut client = connect(&proxy).await;
    let first: u64 =
        client.query_first("SELECT CONNECTION_ID() AS backend_thread").await.expect("id").expect("row");
    let mut direct = connect_direct(cluster().primary().port).await;
    let count = format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {first}");
    let present: u64 = direct.query_first(&count).await.expect("processlist").expect("row");
    assert_eq!(present, 1, "the given-back connection is kept idle at first");
    let started = std::time::Instant::now();
    let mut gone = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let left: u64 = direct.query_first(&count).await.expect("processlist").expect("row");
        if left == 0 {
            gone = true;
            break;
        }
    }
    assert!(gone, "the idle backend connection {first} was still open after {:?}", started.elapsed());
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed after {:?}, before its timeout",
        started.elapsed()
    );
    let second: u64 =
        client.query_first("SELECT CONNECTION_ID() AS backend_thread").await.expect("id").expect("row");
    assert_ne!(first, second, "the session reads on a new backend connection");
}

/// A pooled connection older than `backend_max_age` is closed when it is next idle, even while
/// a session keeps using it; the session's statements go on, on a new connection.
#[tokio::test(flavor = "multi_thread")]
async fn backend_connections_are_renewed_after_backend_max_age() {
    let _serial = serial().await;
    let proxy =
        start_proxy_with(&primary_only("backend_max_age = \"1s\"\nbackend_idle_timeout = \"0s\"")).await;
    let mut client = connect(&proxy).await;
    let started = std::time::Instant::now();
    let mut threads = Vec::new();
    for _ in 0..35 {
        let id: u64 =
            client.query_first("SELECT CONNECTION_ID() AS backend_thread").await.expect("id").expect("row");
        if threads.last() != Some(&id) {
            threads.push(id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed().as_secs_f64();
    println!("{} backend connections in {took:.1} s: {threads:?}", threads.len());
    // Opened at the start, each lives 1 s and at most a sweep (1 s) more.
    assert!(threads.len() >= 2, "one backend connection for {took:.1} s: {threads:?}");
    assert!(threads.len() as f64 <= took + 1.0, "renewed more often than every second: {threads:?}");
}

/// At `max_connections` a statement waits for a connection to be given back: it runs when one
/// is, and fails with an error naming the limit when none is within `connect_timeout`. The pool's
/// statistics on `/metrics` and `/status` count both.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_pool_makes_a_statement_wait_then_names_the_limit() {
    let _serial = serial().await;
    // A whole second to wait: room for the test to see the wait and end it.
    let proxy = start_proxy_with(&primary_only("").replace("\"300ms\"", "\"1s\"")).await;
    // Both log in first: the client library runs statements of its own after the login.
    let mut holder = connect(&proxy).await;
    let mut waiter = connect(&proxy).await;
    holder.query_drop("BEGIN").await.expect("begin");
    holder.query_drop("SELECT 1").await.expect("select");
    // The only connection is pinned by the transaction: the wait runs out.
    let started = std::time::Instant::now();
    let err = waiter.query_drop("SELECT 2").await.expect_err("no connection within connect_timeout");
    let waited = started.elapsed();
    assert!(err.to_string().contains("max_connections"), "{err}");
    assert!(waited >= Duration::from_millis(900), "gave up after {waited:?}, before connect_timeout");
    // Given back while the statement waits: it runs.
    let waiting = tokio::spawn(async move {
        let value: Option<u32> = waiter.query_first("SELECT 3").await.expect("served once given back");
        value
    });
    let admin = proxy.admin_addr.expect("admin");
    let mut seen_waiting = false;
    for _ in 0..50 {
        let (_, metrics) = common::http_get(admin, "/metrics").await;
        if metrics.contains("rwproxy_pool_waiting{backend=\"primary\"} 1") {
            seen_waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(seen_waiting, "the second statement never showed as waiting");
    holder.query_drop("COMMIT").await.expect("commit");
    assert_eq!(waiting.await.expect("task"), Some(3));
    let (_, metrics) = common::http_get(admin, "/metrics").await;
    for line in [
        "rwproxy_pool_waits_total{backend=\"primary\"} 2",
        "rwproxy_pool_exhausted_total{backend=\"primary\"} 1",
        "rwproxy_pool_waiting{backend=\"primary\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    let (_, status) = common::http_get(admin, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let pool = &status["backends"][0]["pool"];
    assert_eq!(
        (pool["max_connections"].as_u64(), pool["exhausted"].as_u64()),
        (Some(1), Some(1)),
        "{status}"
    );
    assert!(pool["checkouts_from_idle"].as_u64().is_some_and(|n| n >= 1), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_left_idle_is_rolled_back_and_its_connection_freed() {
    let _serial = serial().await;
    // One backend connection, and a transaction may idle one second.
    let proxy =
        start_proxy_with(&primary_only("transaction_idle_timeout = \"1s\"\n").replace("\"300ms\"", "\"3s\""))
            .await;
    let mut direct = connect_direct(cluster().primary().port).await;
    direct
        .query_drop("CREATE TABLE IF NOT EXISTS idle_trx (id INT PRIMARY KEY, v INT)")
        .await
        .expect("create");
    direct.query_drop("REPLACE INTO idle_trx VALUES (1, 0)").await.expect("row");
    let address = proxy.sql_addr.to_string();
    let mut forgetful =
        RawClient::connect(&address, APP_USER, APP_PASSWORD, DATABASE, true).await.expect("login");
    forgetful.query("BEGIN").await.expect("begin");
    forgetful.query("UPDATE idle_trx SET v = 1 WHERE id = 1").await.expect("update");
    let idle_from = std::time::Instant::now();
    // The session list and the status page show it idling inside its transaction.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admin = proxy.admin_addr.expect("admin");
    let (_, sessions) = common::http_get(admin, "/sessions").await;
    let sessions: serde_json::Value = serde_json::from_str(&sessions).expect("JSON");
    let listed = sessions["sessions"].as_array().expect("list");
    let idle = listed.iter().find(|s| s["pinned"] == "transaction").expect("the idle transaction is listed");
    assert!(idle["running"].is_null(), "{idle}");
    assert!(idle["idle_seconds"].as_f64().is_some_and(|s| (0.25..1.0).contains(&s)), "{idle}");
    let (_, page) = common::http_get(admin, "/").await;
    assert!(page.contains("1 idle inside a transaction"), "{page}");

    // A transaction that keeps working is not idle, however long it runs (2 s here).
    let mut busy = connect(&proxy).await;
    let mut outside = connect(&proxy).await;
    // (The only connection is the forgetful session's: these wait for it.)
    let said =
        tokio::time::timeout(Duration::from_secs(5), packet::read_logical(&mut forgetful.stream, 1 << 16))
            .await
            .expect("closed within 5 s")
            .expect("read")
            .expect("a packet");
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(900) && idle < Duration::from_secs(3), "closed after {idle:?}");
    assert_eq!(said.payload.get(..3), Some(&[0xFF, 0xBF, 0x0F][..]), "ERR 4031");
    let message = String::from_utf8_lossy(&said.payload);
    assert!(message.contains("transaction_idle_timeout"), "{message}");
    let end = packet::read_logical(&mut forgetful.stream, 1 << 16).await;
    assert!(matches!(end, Ok(None) | Err(_)), "then closed: {end:?}");

    // Its update was rolled back, its row lock released and its connection given back: another
    // session takes both at once.
    let started = std::time::Instant::now();
    busy.query_drop("BEGIN").await.expect("begin");
    busy.query_drop("UPDATE idle_trx SET v = 2 WHERE id = 1").await.expect("the row lock is free");
    assert!(started.elapsed() < Duration::from_secs(1), "waited {:?}", started.elapsed());
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let v: Option<i32> =
            busy.query_first("SELECT v FROM idle_trx WHERE id = 1").await.expect("still open");
        assert_eq!(v, Some(2), "its own update, in the same transaction");
    }
    busy.query_drop("COMMIT").await.expect("a working transaction of 2 s is not idle");
    // Outside a transaction only idle_timeout (8 h) applies.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let v: Option<i32> =
        outside.query_first("SELECT v FROM idle_trx WHERE id = 1").await.expect("not closed");
    assert_eq!(v, Some(2));
    let (_, metrics) = common::http_get(proxy.admin_addr.expect("admin"), "/metrics").await;
    let line = "rwproxy_idle_sessions_closed_total{limit=\"transaction_idle_timeout\"} 1";
    assert!(metrics.contains(line), "{line} in\n{metrics}");
}
