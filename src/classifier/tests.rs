use super::*;

fn dest(sql: &str) -> Destination {
    classify(sql).destination
}

#[test]
fn plain_reads_go_to_read() {
    for sql in [
        "SELECT 1",
        "  select * from t where a = 'INSERT'",
        "/* leading */ SELECT c FROM t",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "(SELECT 1) UNION (SELECT 2)",
        "SHOW TABLES",
        "DESCRIBE t",
        "EXPLAIN SELECT 1",
        "SELECT REPLACE(a, 'x', 'y') FROM t",
        "SELECT @@session.time_zone",
        "select c from t -- FOR UPDATE\n",
    ] {
        assert_eq!(dest(sql), Destination::Read, "{sql}");
    }
}

#[test]
fn writes_and_unknowns_go_to_primary() {
    for sql in [
        "INSERT INTO t VALUES (1)",
        "update t set a = 1",
        "DELETE FROM t",
        "REPLACE INTO t VALUES (1)",
        "CREATE TABLE t (a int)",
        "CALL p()",
        "WITH x AS (SELECT 1) UPDATE t SET a = 1",
        "WITH x AS (SELECT 1) DELETE FROM t",
        "FROBNICATE everything",
        "",
        "/*!40101 SET NAMES utf8 */; SELECT 1",
        "SELECT 'unterminated",
        "SELECT 1; DELETE FROM t",
    ] {
        assert_eq!(dest(sql), Destination::Primary, "{sql:?}");
    }
}

#[test]
fn locking_reads_and_side_effects_go_to_primary() {
    for (sql, reason) in [
        ("SELECT * FROM t FOR UPDATE", Reason::LockingRead),
        ("SELECT * FROM t FOR SHARE", Reason::LockingRead),
        ("SELECT * FROM t LOCK IN SHARE MODE", Reason::LockingRead),
        ("SELECT * FROM t FOR UPDATE SKIP LOCKED", Reason::LockingRead),
        ("SELECT LAST_INSERT_ID() AS id", Reason::SideEffectFunction),
        ("SELECT last_insert_id() + 1", Reason::SideEffectFunction),
        ("SELECT @@identity", Reason::SideEffectFunction),
        ("SELECT NEXTVAL(s)", Reason::SideEffectFunction),
        ("SELECT NEXT VALUE FOR s", Reason::SideEffectFunction),
        ("SELECT GET_LOCK('a', 1)", Reason::SideEffectFunction),
        ("SELECT a INTO @v FROM t", Reason::UserVariable),
        ("SELECT @v := 1", Reason::UserVariable),
    ] {
        let c = classify(sql);
        assert_eq!((c.destination, c.reason), (Destination::Primary, reason), "{sql}");
    }
    assert_eq!(classify("SELECT GET_LOCK('a', 1)").effect, Effect::AdvisoryLock);
}

#[test]
fn strings_and_comments_do_not_fool_it() {
    assert_eq!(dest("SELECT 'FOR UPDATE', \"INSERT\" FROM t"), Destination::Read);
    assert_eq!(dest("SELECT `update` FROM t"), Destination::Read);
    assert_eq!(dest("SELECT 1 /* FOR UPDATE */"), Destination::Read);
    assert_eq!(dest("SELECT 'LAST_INSERT_ID()'"), Destination::Read);
}

#[test]
fn transactions_and_session_commands() {
    assert_eq!(classify("BEGIN").effect, Effect::Begin);
    assert_eq!(classify("START TRANSACTION").effect, Effect::Begin);
    assert_eq!(
        classify("start transaction read write").effect,
        Effect::None,
        "declared writes start on the primary"
    );
    let ro = classify("START TRANSACTION READ ONLY");
    assert_eq!((ro.destination, ro.effect), (Destination::Read, Effect::BeginReadOnly));
    assert_eq!(dest("SET time_zone = '+05:00'"), Destination::All);
    assert_eq!(dest("SET NAMES utf8mb4"), Destination::All);
    assert_eq!(dest("SET autocommit = 0"), Destination::All);
    assert_eq!(dest("SET @v = 5"), Destination::All);
    assert_eq!(dest("USE appdb"), Destination::All);
    assert_eq!(dest("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"), Destination::Primary);
    assert_eq!(dest("SET GLOBAL max_connections = 10"), Destination::Primary);
    let sub = classify("SET @m = (SELECT MAX(id) FROM t)");
    assert_eq!((sub.destination, sub.effect), (Destination::Primary, Effect::UserVariablesOnPrimary));
    assert_eq!(classify("CREATE TEMPORARY TABLE tt (a int)").effect, Effect::TemporaryTable);
    assert_eq!(classify("LOCK TABLES t WRITE").effect, Effect::LockTables);
    assert_eq!(classify("UNLOCK TABLES").effect, Effect::UnlockTables);
}

#[test]
fn locks_and_handlers_held_by_the_connection() {
    let effect = |sql: &str| {
        let class = classify(sql);
        assert_eq!(class.destination, Destination::Primary, "{sql}");
        class.effect
    };
    assert_eq!(effect("FLUSH TABLES WITH READ LOCK"), Effect::LockTables);
    assert_eq!(effect("flush tables t1, t2\n  with   read lock"), Effect::LockTables);
    assert_eq!(effect("FLUSH TABLES t1 FOR EXPORT"), Effect::LockTables);
    assert_eq!(effect("FLUSH TABLES"), Effect::None);
    assert_eq!(effect("FLUSH PRIVILEGES"), Effect::None);
    assert_eq!(effect("LOCK INSTANCE FOR BACKUP"), Effect::LockTables);
    assert_eq!(effect("UNLOCK INSTANCE"), Effect::UnlockTables);
    assert_eq!(effect("HANDLER t OPEN"), Effect::HandlerOpen);
    assert_eq!(effect("handler t open as h"), Effect::HandlerOpen);
    assert_eq!(effect("HANDLER h READ FIRST"), Effect::None);
    assert_eq!(effect("HANDLER h CLOSE"), Effect::HandlerClose);
    assert_eq!(effect("BACKUP STAGE START"), Effect::BackupLock);
    assert_eq!(effect("BACKUP STAGE BLOCK_COMMIT"), Effect::None);
    assert_eq!(effect("BACKUP STAGE END"), Effect::BackupUnlock);
    assert_eq!(effect("BACKUP LOCK t"), Effect::BackupLock);
    assert_eq!(effect("BACKUP UNLOCK"), Effect::BackupUnlock);
}

#[test]
fn diagnostics_go_to_last() {
    assert_eq!(dest("SHOW WARNINGS"), Destination::Last);
    assert_eq!(dest("SELECT FOUND_ROWS()"), Destination::Last);
    assert_eq!(dest("SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1"), Destination::Last);
    assert_eq!(dest("SHOW SLAVE STATUS"), Destination::Primary);
}

#[test]
fn hints() {
    assert_eq!(classify("/* rwproxy:primary */ SELECT 1").hint, Some(Hint::Primary));
    assert_eq!(classify("SELECT 1 /* rwproxy:replica */").hint, Some(Hint::Replica));
    assert_eq!(classify("SELECT 1 -- rwproxy:primary\n").hint, Some(Hint::Primary));
    assert_eq!(classify("SELECT 1 /* rwproxy:after=0-1-5 */").hint, Some(Hint::After));
    assert_eq!(classify("/* rwproxy:after=0-1-5 */ SELECT ?").hint, Some(Hint::After));
    assert_eq!(classify("SELECT 1").hint, None);
}

#[test]
fn huge_insert_is_not_tokenized() {
    let mut sql = String::from("INSERT INTO t VALUES ");
    for i in 0..50_000 {
        sql.push_str(&format!("({i}, 'x'),"));
    }
    sql.push_str("(0, 'y')");
    assert_eq!(dest(&sql), Destination::Primary);
}

#[test]
fn explain_route_is_recognised() {
    assert_eq!(explain_route_target("EXPLAIN ROUTE SELECT 1"), Some("SELECT 1"));
    assert_eq!(explain_route_target("explain  route\n UPDATE t SET a = 1"), Some("UPDATE t SET a = 1"));
    assert_eq!(explain_route_target("EXPLAIN SELECT 1"), None);
    assert_eq!(explain_route_target("SELECT 1"), None);
}

#[test]
fn the_byte_scan_never_clears_what_the_token_scan_would_route_elsewhere() {
    for sql in [
        "SELECT * FROM t FOR UPDATE",
        "select last_insert_id()",
        "SELECT @v",
        "SELECT 1; DELETE FROM t",
        "SELECT /*!50000 SQL_CALC_FOUND_ROWS */ 1",
        "SELECT 1 /* rwproxy:primary */",
        "SELECT a FROM t LOCK IN SHARE MODE",
        "SELECT GET_LOCK('x', 1)",
        "WITH x AS (SELECT 1) UPDATE t SET a = 1",
    ] {
        assert!(!lexer::plainly_read(sql), "{sql}");
    }
    assert!(lexer::plainly_read("SELECT c FROM sbtest1 WHERE id = 5021"));
    assert!(!lexer::plainly_read("SELECT 'unterminated"));
    assert!(!lexer::plainly_read("SELECT 'for update' AS x"), "a keyword in a string is only suspicious");
    assert_eq!(
        classify("SELECT 'for update' AS x").destination,
        Destination::Read,
        "the token scan clears it"
    );
}

#[test]
fn writes_are_what_may_change_data() {
    for sql in ["INSERT INTO t VALUES (1)", "CREATE TABLE t (a INT)", "CALL p()", "SELECT NEXTVAL(s)", "DO 1"]
    {
        assert!(counts_as_write(&classify(sql)), "{sql}");
    }
    for sql in [
        "SELECT 1",
        "BEGIN",
        "COMMIT",
        "SELECT * FROM t FOR UPDATE",
        "SELECT 1 INTO @v",
        "SHOW MASTER STATUS",
    ] {
        assert!(!counts_as_write(&classify(sql)), "{sql}");
    }
}

#[test]
fn every_word_the_token_scan_acts_on_stops_the_byte_scan() {
    // The byte scan may call a read plain only when the token scan would: every function and
    // keyword that changes a read's route must be suspicious to it, in any case.
    let keywords = [
        "FOR",
        "LOCK",
        "INTO",
        "NOWAIT",
        "SKIP",
        "INSERT",
        "UPDATE",
        "DELETE",
        "REPLACE",
        "NEXT",
        "SQL_CALC_FOUND_ROWS",
        "RELEASE_LOCK",
        "RELEASE_ALL_LOCKS",
        "RWPROXY",
    ];
    let functions = super::scan::PRIMARY_FUNCTIONS
        .iter()
        .chain(super::scan::LOCK_FUNCTIONS)
        .chain(super::scan::DIAGNOSTIC_FUNCTIONS);
    for word in keywords.iter().chain(functions) {
        assert!(super::lexer::is_suspicious(word), "{word}");
        assert!(super::lexer::is_suspicious(&word.to_ascii_lowercase()), "{word}");
        assert!(!super::lexer::is_suspicious(&format!("{word}X")), "{word}X");
    }
    for word in ["SELECT", "FROM", "WHERE", "id", "ORDER", "LIMIT", "FORM", "LOCKS"] {
        assert!(!super::lexer::is_suspicious(word), "{word}");
    }
}
