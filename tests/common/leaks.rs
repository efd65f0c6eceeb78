//! A differential harness that hunts for state leaking between sessions that share backend
//! connections: each of several concurrent sessions runs a seeded random sequence of
//! session-state and data statements (text and prepared) through rwproxy, and the same sequence
//! on a direct connection to the primary; every answer is compared (rows, column metadata,
//! warnings, errors, affected rows, insert ids).
//!
//! The two sides use databases of their own (`<prefix>p_a`/`<prefix>p_b` through rwproxy,
//! `<prefix>d_a`/`<prefix>d_b` directly, each with one table per session) and the answers are
//! compared with the side's database names replaced by `A`/`B`.

#![allow(dead_code)]

use std::fmt::Write as _;

use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder, Params, Value};

/// The admin listener of the proxy under test: what its sessions held is printed at a mismatch.
pub static ADMIN: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();

/// One side's view of the cluster: where to connect and which databases are its own.
#[derive(Clone)]
pub struct Side {
    pub port: u16,
    pub user: String,
    pub password: String,
    /// The side's two databases (`A` and `B` in the answers).
    pub dbs: [String; 2],
}

/// A tiny deterministic generator (SplitMix64): the same seed gives the same sequence.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One step of a sequence; `{A}`/`{B}` name the side's databases, `{T}` the session's table.
#[derive(Debug, Clone)]
pub enum Step {
    Text(String),
    Prepared(String, Vec<Value>),
    Reset,
}

/// The statements a session may run.
pub fn step(rng: &mut Rng, k: u64) -> Step {
    use Step::{Prepared, Text};
    let names = ["latin1", "utf8mb4"];
    let modes = ["''", "'ANSI_QUOTES'", "'PIPES_AS_CONCAT'", "'STRICT_TRANS_TABLES'"];
    let isolation = ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"];
    match rng.below(22) {
        0 => Text(format!("SET NAMES {}", names[rng.below(2) as usize])),
        1 => Text(format!("SET SESSION sql_mode = {}", modes[rng.below(4) as usize])),
        2 => Text(format!("SET time_zone = '+0{}:00'", rng.below(6))),
        3 => Text(format!("USE {}", if rng.below(2) == 0 { "{A}" } else { "{B}" })),
        4 => Text(format!("SET @v = {k}, @s = 'é{k}'")),
        5 => Text(
            "SELECT DATABASE(), @@character_set_client, @@collation_connection, @@sql_mode, @@time_zone, \
             @v, @s, 'x' || 'y', HEX('é'), FROM_UNIXTIME(86400)"
                .into(),
        ),
        6 => Text(format!("INSERT INTO {{T}} (v) VALUES ('é{k}')")),
        7 => Prepared("INSERT INTO {T} (v) VALUES (?)".into(), vec![Value::from(format!("p{k}"))]),
        8 => Prepared(
            "SELECT DATABASE(), COUNT(*), MAX(id), 'é' FROM {T} WHERE id > ?".into(),
            vec![Value::from(0)],
        ),
        9 => Prepared("SELECT v, 'x' || 'y', @v FROM {T} ORDER BY id DESC LIMIT 1".into(), vec![]),
        10 => Text("SELECT COUNT(*), MAX(v), LAST_INSERT_ID() FROM {T}".into()),
        11 => Text("CREATE TEMPORARY TABLE IF NOT EXISTS tmp_leak (x INT)".into()),
        12 => Text(format!("INSERT INTO tmp_leak VALUES ({k})")),
        13 => Text("SELECT COUNT(*) FROM tmp_leak".into()),
        14 => Text("SELECT * FROM no_such_table".into()),
        15 => Text("SELECT CAST('abc' AS SIGNED), 1/0".into()),
        16 => Text(format!("SET SESSION TRANSACTION ISOLATION LEVEL {}", isolation[rng.below(3) as usize])),
        17 => Text("START TRANSACTION".into()),
        18 => Text(if rng.below(2) == 0 { "COMMIT" } else { "ROLLBACK" }.into()),
        19 => Text("SELECT @@autocommit, @@in_transaction".into()),
        20 => Prepared(
            "SELECT CONCAT(?, 'é'), CHARSET(?), ? || 'z'".into(),
            vec!["a".into(), "b".into(), "c".into()],
        ),
        _ => Step::Reset,
    }
}

/// A sequence of `len` steps for `seed`.
pub fn sequence(seed: u64, len: usize) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    (0..len).map(|i| step(&mut rng, seed.wrapping_mul(1000) + i as u64)).collect()
}

fn substitute(sql: &str, side: &Side, table: &str) -> String {
    sql.replace("{A}", &side.dbs[0]).replace("{B}", &side.dbs[1]).replace("{T}", table)
}

fn canonical(text: &str, side: &Side) -> String {
    text.replace(&side.dbs[0], "A").replace(&side.dbs[1], "B")
}

/// A session's connection on one side, in database `A` or `B`.
pub async fn open(side: &Side, db: usize) -> Result<Conn, String> {
    let opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(side.port)
        .user(Some(side.user.clone()))
        .pass(Some(side.password.clone()))
        .db_name(Some(side.dbs[db].clone()))
        .prefer_socket(false)
        // Every prepare reaches the server (the client's cache would hide the path under test).
        .stmt_cache_size(0);
    Conn::new(opts).await.map_err(|e| format!("connect: {e}"))
}

/// Runs one step and describes everything it answered.
pub async fn run(conn: &mut Conn, step: &Step, side: &Side, table: &str) -> String {
    let mut out = String::new();
    let result: Result<Vec<mysql_async::Row>, mysql_async::Error> = match step {
        Step::Text(sql) => conn.query(substitute(sql, side, table)).await,
        Step::Prepared(sql, params) => {
            conn.exec(substitute(sql, side, table), Params::Positional(params.clone())).await
        }
        Step::Reset => conn.reset().await.map(|_| Vec::new()),
    };
    match result {
        Ok(rows) => {
            if let Some(first) = rows.first() {
                for column in first.columns_ref() {
                    let _ = write!(
                        out,
                        "[{} {:?} cs={} flags={:?} len={} dec={}]",
                        column.name_str(),
                        column.column_type(),
                        column.character_set(),
                        column.flags(),
                        column.column_length(),
                        column.decimals()
                    );
                }
            }
            for row in rows {
                let values: Vec<String> = row.unwrap().into_iter().map(|v| v.as_sql(true)).collect();
                let _ = write!(out, " ({})", values.join(", "));
            }
            let _ = write!(
                out,
                " affected={} insert_id={:?} warnings={}",
                conn.affected_rows(),
                conn.last_insert_id(),
                conn.get_warnings()
            );
        }
        Err(mysql_async::Error::Server(e)) => {
            let _ = write!(out, "error {} {} {}", e.code, e.state, e.message);
        }
        Err(e) => {
            let _ = write!(out, "client error {e}");
        }
    }
    canonical(&out, side)
}

/// What one session saw: the transcript of every step, or where the two sides differed.
pub struct Mismatch {
    pub seed: u64,
    pub step: usize,
    pub statement: String,
    pub direct: String,
    pub proxied: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} step {} `{}`:\n  direct:  {}\n  rwproxy: {}",
            self.seed, self.step, self.statement, self.direct, self.proxied
        )
    }
}

/// Runs sequence `seed` on both sides for session `slot` (its tables are `leak_<slot>`).
/// Returns the number of statements compared, or the first difference.
pub async fn compare(
    direct: &Side,
    proxied: &Side,
    slot: usize,
    seed: u64,
    len: usize,
) -> Result<usize, Box<Mismatch>> {
    let table = format!("leak_{slot}");
    let db = (seed % 2) as usize;
    let steps = sequence(seed, len);
    let fail = |step: usize, statement: String, d: String, p: String| {
        Box::new(Mismatch { seed, step, statement, direct: d, proxied: p })
    };
    let mut d = open(direct, db).await.map_err(|e| fail(0, "connect".into(), e, String::new()))?;
    let mut p = match open(proxied, db).await {
        Ok(p) => p,
        Err(e) => return Err(fail(0, "connect".into(), "ok".into(), e)),
    };
    for (i, step) in steps.iter().enumerate() {
        let a = run(&mut d, step, direct, &table).await;
        let b = run(&mut p, step, proxied, &table).await;
        if a != b {
            if let Some(admin) = ADMIN.get() {
                let (_, sessions) = super::http_get(*admin, "/sessions").await;
                eprintln!("at the mismatch of seed {seed}: {sessions}");
            }
            let _ = d.disconnect().await;
            let _ = p.disconnect().await;
            return Err(fail(i, format!("{step:?}"), a, b));
        }
    }
    // Whatever the session left open is rolled back on both sides alike.
    let _ = d.disconnect().await;
    let _ = p.disconnect().await;
    Ok(steps.len())
}

/// The SQL that makes a side's databases and the sessions' tables (run as a user who may).
pub fn schema(side: &Side, sessions: usize) -> String {
    let mut sql = String::new();
    for db in &side.dbs {
        let _ = write!(sql, "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db} CHARACTER SET utf8mb4; ");
        for slot in 0..sessions {
            let _ = write!(
                sql,
                "CREATE TABLE {db}.leak_{slot} (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(40) CHARACTER SET utf8mb4); "
            );
        }
        let _ = write!(sql, "GRANT ALL PRIVILEGES ON {db}.* TO '{}'@'%'; ", side.user);
    }
    sql
}

/// Runs `sequences` sequences (seeds from `first_seed`) over `sessions` concurrent sessions;
/// returns (sequences, statements) or every mismatch found.
pub async fn hunt(
    direct: &Side,
    proxied: &Side,
    sessions: usize,
    first_seed: u64,
    sequences: u64,
    len: usize,
) -> Result<(u64, usize), Vec<String>> {
    let mut tasks = Vec::new();
    for slot in 0..sessions {
        let (direct, proxied) = (direct.clone(), proxied.clone());
        tasks.push(tokio::spawn(async move {
            let mut statements = 0;
            let mut ran = 0;
            let mut seed = first_seed + slot as u64;
            while seed < first_seed + sequences {
                match compare(&direct, &proxied, slot, seed, len).await {
                    Ok(n) => statements += n,
                    Err(m) => return Err(m.to_string()),
                }
                ran += 1;
                seed += sessions as u64;
            }
            Ok((ran, statements))
        }));
    }
    let mut mismatches = Vec::new();
    let (mut ran, mut statements) = (0, 0);
    for task in tasks {
        match task.await {
            Ok(Ok((r, s))) => {
                ran += r;
                statements += s;
            }
            Ok(Err(m)) => mismatches.push(m),
            Err(e) => mismatches.push(format!("session task: {e}")),
        }
    }
    if mismatches.is_empty() { Ok((ran, statements)) } else { Err(mismatches) }
}
