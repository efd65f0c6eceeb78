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
    assert!(
        out.status.success(),
        "mariadb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    let out = stdout_ok(&mariadb(port, "SELECT COUNT(*) FROM infile_t; SELECT COUNT(*) FROM infile_t; SELECT COUNT(*) FROM infile_t;", &[]).await);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["5000", "5000", "5000"],
        "replicated to every read backend"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pymysql_checks_pass_through_the_proxy() {
    let proxy = start_proxy().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/pymysql_check.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(proxy.sql_addr.port().to_string())
        .arg(cluster().primary().port.to_string())
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "PyMySQL checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("pymysql: all checks passed"), "{stdout}");
}
