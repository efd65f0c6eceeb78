//! sysbench's OLTP workloads through rwproxy, with its defaults (server-side prepared
//! statements, every group of statements in BEGIN … COMMIT): read-write transactions commit on
//! the primary without a conflict, read-only ones reach the replicas, and the three servers end
//! up identical.

mod common;

use common::{cluster, replicated, start_proxy};
use tokio::process::Command;

async fn sysbench(port: u16, args: &[&str]) -> String {
    let out = Command::new("sysbench")
        .args(args)
        .args([
            "--mysql-host=127.0.0.1",
            &format!("--mysql-port={port}"),
            "--mysql-user=app",
            "--mysql-password=app",
            "--mysql-db=appdb",
            "--tables=2",
            "--table-size=10000",
            "--threads=4",
            "--time=5",
            "--db-ps-mode=auto",
        ])
        .output()
        .await
        .expect("run sysbench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sysbench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A number from sysbench's summary, e.g. `ignored errors:` or `read:`.
fn summary(output: &str, label: &str) -> u64 {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in sysbench output:\n{output}"))
}

/// Deadlocks InnoDB has detected on the primary so far.
fn deadlocks() -> u64 {
    let out = cluster().primary().sql("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'").expect("status");
    out.split('\t').nth(1).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// Statements that read rows on one server so far (text SELECTs and prepared executions).
fn reads_on(node: usize) -> u64 {
    let out = cluster().nodes[node]
        .sql("SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_select', 'Com_stmt_execute')")
        .expect("status");
    out.lines().filter_map(|l| l.split('\t').nth(1)?.parse::<u64>().ok()).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn oltp_read_write_has_no_errors_and_oltp_read_only_runs_mostly_on_replicas() {
    let proxy = start_proxy().await;
    let port = proxy.sql_addr.port();
    sysbench(port, &["oltp_read_write", "prepare"]).await;
    replicated().await;

    let deadlocks_before = deadlocks();
    let out = sysbench(port, &["oltp_read_write", "run"]).await;
    let deadlocks = deadlocks() - deadlocks_before;
    let counts = proxy.sql.current().metrics.consistency_counts();
    println!(
        "oltp_read_write: optimistic outcomes (replica, moved, conflict, too_large) {:?}",
        counts.optimistic
    );
    println!("{out}");
    assert!(summary(&out, "write:") > 100, "{out}");
    // sysbench retries InnoDB deadlocks between its own threads (it meets them without rwproxy
    // too); every error it saw must be one of those, none a conflict of rwproxy's.
    assert_eq!(summary(&out, "ignored errors:"), deadlocks, "{out}");
    assert_eq!(counts.optimistic[2..], [0, 0], "no optimistic conflicts: {counts:?}");
    let checksums_match = |label: &str| {
        let checksum = |node: usize| {
            cluster().nodes[node].sql("CHECKSUM TABLE appdb.sbtest1, appdb.sbtest2").expect("checksum")
        };
        let primary = checksum(0);
        assert_eq!(checksum(1), primary, "replica1 differs {label}");
        assert_eq!(checksum(2), primary, "replica2 differs {label}");
    };
    replicated().await;
    checksums_match("after oltp_read_write");
    let before: Vec<u64> = (0..3).map(reads_on).collect();
    let out = sysbench(port, &["oltp_read_only", "run"]).await;
    let after: Vec<u64> = (0..3).map(reads_on).collect();
    let reads: Vec<u64> = before.iter().zip(&after).map(|(b, a)| a - b).collect();
    let total: u64 = reads.iter().sum();
    let on_replicas = reads[1] + reads[2];
    println!("oltp_read_only reads per server (primary, replica1, replica2): {reads:?}");
    assert_eq!(summary(&out, "ignored errors:"), 0, "{out}");
    assert!(summary(&out, "read:") > 1000, "{out}");
    assert!(on_replicas * 2 >= total, "replicas ran {on_replicas} of {total} reads");

    replicated().await;
    checksums_match("at the end");
}
