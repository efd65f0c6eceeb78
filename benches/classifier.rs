//! Classification cost per statement, and the statement digest's key.
//!
//! Reproduce: `cargo bench --bench classifier`

use criterion::{Criterion, criterion_group, criterion_main};
use rwproxy::classifier::classify;
use std::hint::black_box;

const STATEMENTS: &[&str] = &[
    "SELECT c FROM sbtest1 WHERE id=5021",
    "SELECT c FROM sbtest1 WHERE id BETWEEN 100 AND 199",
    "SELECT SUM(k) FROM sbtest1 WHERE id BETWEEN 100 AND 199",
    "SELECT c FROM sbtest1 WHERE id BETWEEN 100 AND 199 ORDER BY c",
    "SELECT DISTINCT c FROM sbtest1 WHERE id BETWEEN 100 AND 199 ORDER BY c",
    "UPDATE sbtest1 SET k=k+1 WHERE id=5021",
    "UPDATE sbtest1 SET c='abc' WHERE id=5021",
    "DELETE FROM sbtest1 WHERE id=5021",
    "INSERT INTO sbtest1 (id, k, c, pad) VALUES (5021, 4991, 'x', 'y')",
    "BEGIN",
    "COMMIT",
    "SELECT `auth_user`.`id`, `auth_user`.`password`, `auth_user`.`last_login` FROM `auth_user` WHERE `auth_user`.`username` = 'alice' LIMIT 21",
    "SELECT * FROM users WHERE id = 1 FOR UPDATE",
    "SELECT LAST_INSERT_ID() AS id",
    "SET NAMES utf8mb4",
    "SET time_zone = '+00:00'",
    "SHOW TABLES",
    "SELECT option_name, option_value FROM wp_options WHERE autoload = 'yes'",
    "/* rwproxy:primary */ SELECT balance FROM accounts WHERE id = 7",
    "WITH recent AS (SELECT * FROM orders WHERE created_at > NOW() - INTERVAL 1 DAY) SELECT COUNT(*) FROM recent",
    "SELECT SQL_CALC_FOUND_ROWS * FROM posts LIMIT 10",
    "START TRANSACTION READ ONLY",
    "select `users`.* from `users` where `users`.`id` = 42 and `users`.`deleted_at` is null limit 1",
    "SELECT t.id, t.name FROM teams t JOIN members m ON m.team_id = t.id WHERE m.user_id = 9 ORDER BY t.name",
];

fn mix(c: &mut Criterion) {
    c.bench_function("classify/statement_mix_per_statement", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % STATEMENTS.len();
            black_box(classify(black_box(STATEMENTS[i])))
        })
    });
    c.bench_function("classify/point_select", |b| b.iter(|| black_box(classify(black_box(STATEMENTS[0])))));
    // The statement digest's key (every statement with `mysql.query_digests` on).
    c.bench_function("digest_key/statement_mix_per_statement", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % STATEMENTS.len();
            black_box(rwproxy::digests::key(black_box(STATEMENTS[i].as_bytes())))
        })
    });
    c.bench_function("digest_key/point_select", |b| {
        b.iter(|| black_box(rwproxy::digests::key(black_box(STATEMENTS[0].as_bytes()))))
    });
}

fn load_corpus() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/statements.tsv");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('\t'))
        .map(|(_, s)| s.replace("\\n", "\n"))
        .collect()
}

/// Criterion's figure is the mean over the corpus; the target is the median statement,
/// so that is measured here too: each statement classified 2,000 times, the per-statement
/// average taken, and the median of those printed.
fn corpus(c: &mut Criterion) {
    let statements = load_corpus();
    let mut per_statement: Vec<f64> = statements
        .iter()
        .map(|sql| {
            let started = std::time::Instant::now();
            for _ in 0..2_000 {
                black_box(classify(black_box(sql)));
            }
            started.elapsed().as_nanos() as f64 / 2_000.0
        })
        .collect();
    per_statement.sort_by(f64::total_cmp);
    if let Some(median) = per_statement.get(per_statement.len() / 2) {
        let p90 = per_statement[per_statement.len() * 9 / 10];
        let max = per_statement[per_statement.len() - 1];
        println!(
            "corpus: {} statements, median {median:.0} ns, p90 {p90:.0} ns, max {max:.0} ns per statement",
            statements.len()
        );
    }
    c.bench_function("classify/corpus_mean_per_statement", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % statements.len();
            black_box(classify(black_box(&statements[i])))
        })
    });
}

fn huge_insert(c: &mut Criterion) {
    let mut sql = String::from("INSERT INTO t (a, b) VALUES ");
    let mut i = 0u64;
    while sql.len() < 1 << 20 {
        sql.push_str(&format!("({i}, 'value-{i}'),"));
        i += 1;
    }
    sql.push_str("(0, 'end')");
    c.bench_function("classify/insert_1mb", |b| b.iter(|| black_box(classify(black_box(&sql)))));
}

criterion_group!(benches, mix, corpus, huge_insert);
criterion_main!(benches);
