//! Real client programs through rwproxy: the `mariadb` command-line client and PyMySQL.

mod common;

use common::cluster::{APP_PASSWORD, APP_USER, DATABASE};
use common::{cluster, replicated, start_proxy};
use tokio::process::Command;

async fn mariadb(port: u16, sql: &str, extra: &[&str]) -> std::process::Output {
    Command::new("mariadb")
        .arg("--no-defaults")
        .args([
            "-h127.0.0.1",
            &format!("-P{port}"),
            &format!("-u{APP_USER}"),
            &format!("-p{APP_PASSWORD}"),
            DATABASE,
        ])
        .args(["--batch", "--skip-column-names"])
        .args(extra)
        .args(["-e", sql])
        .output()
        .await
        .expect("run the mariadb client")
}

fn stdout_ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "mariadb failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_cli_reads_rotate_and_writes_work() {
    let proxy = start_proxy().await;
    let port = proxy.sql_addr.port();
    let out = stdout_ok(&mariadb(port, "SELECT @@server_id; SELECT @@server_id; SELECT @@server_id; SELECT @@server_id; SELECT @@server_id; SELECT @@server_id;", &[]).await);
    let mut ids: Vec<&str> = out.lines().collect();
    ids.sort_unstable();
    assert_eq!(ids, ["1", "1", "2", "2", "3", "3"]);
    let out = stdout_ok(
        &mariadb(port, "CREATE TABLE cli_t (id INT PRIMARY KEY); INSERT INTO cli_t VALUES (1), (2); BEGIN; INSERT INTO cli_t VALUES (3); ROLLBACK; SELECT COUNT(*) FROM cli_t /* rwproxy:primary */;", &[])
            .await,
    );
    assert_eq!(out.trim(), "2");
    let out = mariadb(port, "SELECT * FROM cli_nope", &[]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ERROR 1146 (42S02)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_cli_load_data_local_infile() {
    let proxy = start_proxy().await;
    let port = proxy.sql_addr.port();
    let path = std::env::temp_dir().join(format!("rwproxy-infile-{}.tsv", std::process::id()));
    let data: String = (0..5000).map(|i| format!("{i}\tname-{i}\n")).collect();
    std::fs::write(&path, data).expect("write file");
    let sql = format!(
        "CREATE TABLE infile_t (id INT PRIMARY KEY, name VARCHAR(20)); LOAD DATA LOCAL INFILE '{}' INTO TABLE infile_t; SELECT COUNT(*), SUM(id) FROM infile_t /* rwproxy:primary */;",
        path.display()
    );
    let out = stdout_ok(&mariadb(port, &sql, &["--local-infile=1"]).await);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.trim(), "5000\t12497500");
    replicated().await;
    let out = stdout_ok(
        &mariadb(
            port,
            "SELECT COUNT(*) FROM infile_t; SELECT COUNT(*) FROM infile_t; SELECT COUNT(*) FROM infile_t;",
            &[],
        )
        .await,
    );
    assert_eq!(out.lines().collect::<Vec<_>>(), ["5000", "5000", "5000"], "replicated to every read backend");
}

/// Runs `tests/clients/<script>` with the proxy's and the primary's ports; it must exit 0 and
/// print `done`.
async fn python_checks(script: &str, done: &str) {
    let proxy = start_proxy().await;
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(path)
        .arg(proxy.sql_addr.port().to_string())
        .arg(cluster().primary().port.to_string())
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(done), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pymysql_checks_pass_through_the_proxy() {
    python_checks("pymysql_check.py", "pymysql: all checks passed").await;
}

/// pytest's summary line, e.g. "182 passed, 1 skipped in 2.70s", as (outcome, count) pairs.
fn pytest_counts(output: &str) -> Vec<(String, u32)> {
    let summary = output.lines().rev().find(|l| l.contains(" passed") || l.contains(" failed")).unwrap_or("");
    let mut counts: Vec<(String, u32)> = summary
        .split([',', '='])
        .filter_map(|part| {
            let mut words = part.split_whitespace();
            let n = words.next()?.parse().ok()?;
            Some((words.next()?.to_string(), n))
        })
        .collect();
    counts.sort();
    counts
}

/// Tests of the suite that depend on timing: `test_result_concurrent_use_raises` needs a result
/// that is still streaming when a second thread looks, within a second; on a loaded machine
/// the whole result can arrive first (seen directly and through rwproxy). On either side, one
/// of these that fails is run again (up to twice) and counts as passed only when it then passes.
const TIMING_TESTS: [&str; 1] = ["tests/test_connection.py::test_result_concurrent_use_raises"];

/// `counts` with the failed timing-dependent tests counted as passed if they pass when run
/// again; unchanged when anything else failed.
async fn settle_timing_tests(
    suite: &std::path::Path,
    (port, database): (u16, &str),
    counts: Vec<(String, u32)>,
    text: &str,
) -> Vec<(String, u32)> {
    let failed: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("FAILED ")?.split(' ').next()).collect();
    if failed.is_empty() || !failed.iter().all(|t| TIMING_TESTS.contains(t)) {
        return counts;
    }
    for _ in 0..2 {
        let (again, _) = run_pytest(suite, (port, database), &failed).await;
        if again.iter().all(|(k, _)| k == "passed") {
            eprintln!("timing-dependent {failed:?} passed when run again on port {port}");
            let moved = failed.len() as u32;
            let mut settled: Vec<(String, u32)> = counts
                .into_iter()
                .map(|(k, n)| match k.as_str() {
                    "failed" => (k, n - moved.min(n)),
                    "passed" => (k, n + moved),
                    _ => (k, n),
                })
                .filter(|(_, n)| *n > 0)
                .collect();
            if !settled.iter().any(|(k, _)| k == "passed") {
                settled.push(("passed".to_string(), moved));
                settled.sort();
            }
            return settled;
        }
    }
    counts
}

/// Where scripts/install-deps.sh unpacked mysqlclient's sdist (its suite is in `tests/`).
fn mysqlclient_suite() -> std::path::PathBuf {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mysqlclient-suite");
    std::fs::read_dir(&base)
        .ok()
        .and_then(|entries| {
            entries.filter_map(Result::ok).map(|e| e.path()).find(|p| p.join("tests/configdb.py").exists())
        })
        .unwrap_or_else(|| {
            panic!("no mysqlclient suite under {}: run scripts/install-deps.sh --tests", base.display())
        })
}

async fn run_mysqlclient_suite(suite: &std::path::Path, port: u16) -> (Vec<(String, u32)>, String) {
    run_pytest(suite, (port, DATABASE), &["tests"]).await
}

async fn run_pytest(
    suite: &std::path::Path,
    (port, database): (u16, &str),
    tests: &[&str],
) -> (Vec<(String, u32)>, String) {
    let cnf = std::env::temp_dir()
        .join(format!("rwproxy-mysqlclient-{}-{port}-{database}.cnf", std::process::id()));
    let text = format!(
        "[MySQLdb-tests]\nhost=127.0.0.1\nport={port}\nuser={APP_USER}\npassword={APP_PASSWORD}\ndatabase={database}\n"
    );
    std::fs::write(&cnf, text).expect("write option file");
    let out = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .args(tests)
        .current_dir(suite)
        .env("TESTDB", &cnf)
        .output()
        .await
        .expect("run pytest");
    let _ = std::fs::remove_file(&cnf);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (pytest_counts(&text), text)
}

/// The suite runs alone: one of its tests needs a result still streaming when a second thread
/// looks, and a machine busy with another copy of the suite fails it directly too.
static SUITE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// mysqlclient's own test suite (from its sdist, fetched by scripts/install-deps.sh) gives
/// the same results through rwproxy as against the primary directly.
#[tokio::test(flavor = "multi_thread")]
async fn mysqlclient_test_suite_matches_a_direct_connection() {
    let _alone = SUITE.lock().await;
    let suite = mysqlclient_suite();
    let proxy = start_proxy().await;
    let (direct, direct_text) = run_mysqlclient_suite(&suite, cluster().primary().port).await;
    let (through, through_text) = run_mysqlclient_suite(&suite, proxy.sql_addr.port()).await;
    eprintln!("mysqlclient suite direct: {direct:?}; through rwproxy: {through:?}");
    // Either side may lose a timing-dependent test on a loaded machine.
    let direct =
        settle_timing_tests(&suite, (cluster().primary().port, DATABASE), direct, &direct_text).await;
    let through =
        settle_timing_tests(&suite, (proxy.sql_addr.port(), DATABASE), through, &through_text).await;
    let passed = direct.iter().find(|(k, _)| k == "passed").map_or(0, |(_, n)| *n);
    assert!(passed >= 100, "the suite ran against the primary: {direct:?}\n{direct_text}");
    let failures =
        |text: &str| text.lines().filter(|l| l.starts_with("FAILED ")).collect::<Vec<_>>().join("\n");
    assert_eq!(
        through,
        direct,
        "through rwproxy:\n{through_text}\nfailed directly:\n{}",
        failures(&direct_text)
    );
}

/// Two copies of mysqlclient's suite at once, on two databases, through one rwproxy whose
/// backends allow two connections each (sessions share them hard), and directly: each copy's
/// results are the same both ways (sharing leaks nothing between the two).
#[tokio::test(flavor = "multi_thread")]
async fn mysqlclient_suite_twice_at_once_on_two_databases_matches_direct() {
    let _alone = SUITE.lock().await;
    let suite = mysqlclient_suite();
    tokio::task::spawn_blocking(|| {
        cluster().primary().sql(&format!(
            "CREATE DATABASE IF NOT EXISTS suite_a; CREATE DATABASE IF NOT EXISTS suite_b;
             GRANT ALL PRIVILEGES ON suite_a.* TO '{APP_USER}'@'%'; GRANT ALL PRIVILEGES ON suite_b.* TO '{APP_USER}'@'%';"
        ))?;
        cluster().wait_replicated()
    })
    .await
    .expect("join")
    .expect("databases");
    let text = cluster()
        .proxy_config("127.0.0.1:0")
        .replace("connect_timeout = \"1s\"", "connect_timeout = \"10s\"")
        .replace("role = \"primary\"\n", "role = \"primary\"\nmax_connections = 2\n")
        .replace("role = \"replica\"\n", "role = \"replica\"\nmax_connections = 2\n");
    let proxy = common::start_proxy_with(&text).await;
    let twice = |port: u16| {
        let suite = suite.clone();
        async move {
            // Two copies at once load the machine: the one test that depends on timing (see
            // TIMING_TESTS) is left out of this run; the run alone above keeps it.
            let args = ["tests", "--deselect", TIMING_TESTS[0]];
            let (a, b) = tokio::join!(
                run_pytest(&suite, (port, "suite_a"), &args),
                run_pytest(&suite, (port, "suite_b"), &args)
            );
            let a = settle_timing_tests(&suite, (port, "suite_a"), a.0, &a.1).await;
            let b = settle_timing_tests(&suite, (port, "suite_b"), b.0, &b.1).await;
            (a, b)
        }
    };
    let direct = twice(cluster().primary().port).await;
    let through = twice(proxy.sql_addr.port()).await;
    eprintln!("mysqlclient suite twice at once: direct {direct:?}; through rwproxy {through:?}");
    let passed = direct.0.iter().find(|(k, _)| k == "passed").map_or(0, |(_, n)| *n);
    assert!(passed >= 100, "the suite ran: {direct:?}");
    assert!(
        direct.0.iter().chain(&direct.1).all(|(k, _)| k == "passed" || k == "deselected"),
        "directly, every test passes: {direct:?}"
    );
    assert_eq!(through, direct, "each copy gives the same results through rwproxy as directly");
}

#[tokio::test(flavor = "multi_thread")]
async fn autocommit_off_stacks_read_on_replicas_and_write_on_the_primary() {
    // PyMySQL and SQLAlchemy run every statement in a transaction (autocommit off): optimistic
    // transactions still send the read-only ones to replicas.
    python_checks("autocommit_off.py", "autocommit_off: all checks passed").await;
}

async fn mysql2_json(port: u16, table: &str) -> String {
    let npm = concat!(env!("CARGO_MANIFEST_DIR"), "/target/npm");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/mysql2_json.js");
    let out = Command::new("node")
        .env("RWPROXY_NPM", npm)
        .args([script, &port.to_string(), APP_USER, APP_PASSWORD, DATABASE, table])
        .output()
        .await
        .expect("node (scripts/install-deps.sh --tests installs mysql2)");
    assert!(out.status.success(), "mysql2: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql2_reads_json_columns_as_objects_through_rwproxy_as_directly() {
    let proxy = start_proxy().await;
    let direct = mysql2_json(cluster().primary().port, "json_direct").await;
    let through = mysql2_json(proxy.sql_addr.port(), "json_proxied").await;
    assert_eq!(direct, "object {\"a\":[1,2]}", "MariaDB's extended metadata, directly");
    assert_eq!(through, direct, "the same through rwproxy");
}
