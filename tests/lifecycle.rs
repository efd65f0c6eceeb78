//! Running rwproxy like production on the real cluster: reload under load, graceful shutdown,
//! password hashes, and two proxies with a client library that fails over between them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{cluster, connect, opts, replicated, server_id, start_proxy_with, wait_for};
use mysql_async::Conn;
use mysql_async::prelude::*;
use rwproxy::config::Config;

/// The cluster config without the second replica.
fn without_second_replica(text: &str) -> String {
    let node = &cluster().replicas()[1];
    let block = format!(
        "\n[[mysql.backends]]\nname = \"{}\"\naddress = \"{}\"\nrole = \"replica\"\n",
        node.name,
        node.address()
    );
    assert!(text.contains(&block), "config layout changed:\n{text}");
    text.replace(&block, "")
}

/// One client's loop: reads, and every fifth round a transaction with a write; counts
/// queries and errors. Bounded by `rounds` and by `stop`.
async fn worker(
    mut conn: Conn,
    id: usize,
    rounds: usize,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut errors = Vec::new();
    for round in 0..rounds {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let result = if round % 5 == 0 {
            async {
                conn.query_drop("BEGIN").await?;
                conn.exec_drop("INSERT INTO reload_load (worker, n) VALUES (?, ?)", (id, round)).await?;
                let _: Option<u32> = conn.query_first("SELECT @@server_id").await?;
                conn.query_drop("COMMIT").await
            }
            .await
        } else {
            conn.query_first::<u32, _>("SELECT @@server_id").await.map(|_| ())
        };
        match result {
            Ok(()) => {
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => errors.push(format!("worker {id} round {round}: {e}")),
        }
    }
    let _ = conn.disconnect().await;
    errors
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_reloads_under_load_drop_no_session_and_take_effect() {
    let full = cluster().proxy_config("127.0.0.1:0");
    let reduced = without_second_replica(&full);
    let proxy = start_proxy_with(&full).await;
    let mut setup = connect(&proxy).await;
    setup
        .query_drop(
            "CREATE TABLE IF NOT EXISTS reload_load (id INT AUTO_INCREMENT PRIMARY KEY, worker INT, n INT)",
        )
        .await
        .expect("table");
    replicated().await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for id in 0..4 {
        let conn = connect(&proxy).await;
        workers.push(tokio::spawn(worker(conn, id, 100_000, stop.clone(), done.clone())));
    }
    let second = cluster().replicas()[1].server_id;
    for k in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Alternately remove the second replica and put it back (with other settings changed).
        let text = if k % 2 == 0 {
            reduced.clone()
        } else {
            full.replace("connect_timeout = \"1s\"", "connect_timeout = \"2s\"\nmax_idle_connections = 8")
        };
        let changes = proxy.reloader.apply(Config::from_toml(&text).expect("valid")).expect("reload");
        assert!(!changes.is_empty());
        if k % 2 == 0 {
            assert!(changes.iter().any(|c| c.contains("removed")), "{changes:?}");
            // A session that was open before the reload moves to the new backends: the
            // removed replica answers none of its reads.
            let seen: Vec<u32> = {
                let mut ids = Vec::new();
                for _ in 0..12 {
                    ids.push(server_id(&mut setup).await);
                }
                ids
            };
            assert!(!seen.contains(&second), "removed replica still served reads: {seen:?}");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for w in workers {
        errors.extend(w.await.expect("worker"));
    }
    // The last reload put the replica back: with the load stopped, the rotation is this
    // session's alone, and six reads go twice round the three backends.
    let mut back = false;
    for _ in 0..6 {
        back |= server_id(&mut setup).await == second;
    }
    assert!(back, "the re-added replica must serve reads again");
    let queries = done.load(Ordering::Relaxed);
    println!("reload under load: {queries} statements/transactions, {} errors, 10 reloads", errors.len());
    assert!(errors.is_empty(), "client errors across reloads: {errors:#?}");
    assert!(queries > 200, "the load must have run: {queries}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_reload_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("rwproxy-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("rwproxy.toml");
    let text = cluster().proxy_config("127.0.0.1:0");
    std::fs::write(&path, &text).expect("write");
    let proxy = rwproxy::proxy::start_from_file(&path).await.expect("proxy starts");
    let mut conn = connect(&proxy).await;
    // Two primaries: rejected with the reason; the running config stays.
    std::fs::write(&path, text.replace("role = \"replica\"", "role = \"primary\"")).expect("write");
    let err = proxy.reloader.reload_file().expect_err("invalid config").to_string();
    assert!(err.contains("exactly one backend with role = \"primary\""), "{err}");
    // A listener cannot move without a restart.
    std::fs::write(
        &path,
        text.replace("[admin]\nlisten = \"127.0.0.1:0\"", "[admin]\nlisten = \"127.0.0.1:1\""),
    )
    .expect("write");
    let err = proxy.reloader.reload_file().expect_err("listener change").to_string();
    assert!(err.contains("admin.listen"), "{err}");
    assert_eq!(proxy.backends().len(), 3);
    let _ = server_id(&mut conn).await;
    // The same through the admin listener.
    let admin = proxy.admin_addr.expect("admin");
    let (status, body) = post(admin, "/reload").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("nothing changed"), "{body}");
    std::fs::write(&path, without_second_replica(&text)).expect("write");
    let (status, body) = post(admin, "/reload").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("removed"), "{body}");
    assert_eq!(proxy.backends().len(), 2);
    let metrics = proxy.metrics().render(&proxy.backends());
    for line in [
        "rwproxy_config_reloads_total{result=\"failed\"} 3",
        "rwproxy_config_reloads_total{result=\"ok\"} 1",
        "rwproxy_config_last_reload_successful 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn post(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    common::try_http(addr, "POST", path).await.unwrap_or_else(|| panic!("no answer to POST {path}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_an_open_transaction_finish_and_closes_idle_sessions() {
    let text = format!("shutdown_timeout = \"10s\"\n{}", cluster().proxy_config("127.0.0.1:0"));
    let proxy = start_proxy_with(&text).await;
    let addr = proxy.sql_addr;
    let mut busy = connect(&proxy).await;
    let mut idle = connect(&proxy).await;
    busy.query_drop("CREATE TABLE IF NOT EXISTS shutdown_tx (id INT PRIMARY KEY)").await.expect("table");
    busy.query_drop("DELETE FROM shutdown_tx").await.expect("clean");
    busy.query_drop("BEGIN").await.expect("begin");
    busy.query_drop("INSERT INTO shutdown_tx VALUES (1)").await.expect("insert");
    let sql = proxy.sql.clone();
    let started = Instant::now();
    let shutdown = tokio::spawn(proxy.shutdown());
    // The idle session is closed at once; the listener too.
    let closed = wait_for(Duration::from_secs(5), || sql.sessions() == 1).await;
    assert!(closed.is_some(), "the idle session must close, sessions = {}", sql.sessions());
    assert!(idle.query_drop("SELECT 1").await.is_err(), "the idle session must be gone");
    assert!(Conn::new(opts(addr.port(), "app", "app")).await.is_err(), "no new sessions while draining");
    // The transaction goes on and commits.
    busy.query_drop("INSERT INTO shutdown_tx VALUES (2)").await.expect("insert during drain");
    busy.query_drop("COMMIT").await.expect("commit during drain");
    let left = shutdown.await.expect("shutdown");
    assert_eq!(left, 0);
    assert!(started.elapsed() < Duration::from_secs(8), "shutdown waited for the deadline");
    let mut direct = common::connect_direct(cluster().primary().port).await;
    let rows: Vec<u32> = direct.query("SELECT id FROM shutdown_tx ORDER BY id").await.expect("rows");
    assert_eq!(rows, vec![1, 2], "the transaction committed in full");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_gives_up_on_a_transaction_at_the_deadline() {
    let text = format!("shutdown_timeout = \"1s\"\n{}", cluster().proxy_config("127.0.0.1:0"));
    let proxy = start_proxy_with(&text).await;
    let mut stuck = connect(&proxy).await;
    stuck.query_drop("BEGIN").await.expect("begin");
    let _ = server_id(&mut stuck).await;
    let started = Instant::now();
    let left = proxy.shutdown().await;
    let took = started.elapsed();
    assert_eq!(left, 1, "the open transaction is still there at the deadline");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_hash_authenticates_clients_and_logs_in_to_backends() {
    use sha1::{Digest, Sha1};
    let stage2 = Sha1::digest(Sha1::digest(b"app"));
    let hash: String =
        std::iter::once("*".to_string()).chain(stage2.iter().map(|b| format!("{b:02X}"))).collect();
    let text = cluster().proxy_config("127.0.0.1:0").replacen(
        "password = \"app\"",
        &format!("password_hash = \"{hash}\""),
        1,
    );
    let proxy = start_proxy_with(&text).await;
    let mut conn = connect(&proxy).await;
    // Reads spread over every backend, a write reaches the primary: each needed a backend login.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..9 {
        seen.insert(server_id(&mut conn).await);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    conn.query_drop("CREATE TABLE IF NOT EXISTS hashed_login (id INT)").await.expect("write as hashed user");
    let wrong = Conn::new(opts(proxy.sql_addr.port(), "app", "wrong")).await;
    let err = wrong.expect_err("wrong password refused").to_string();
    assert!(err.contains("1045") || err.contains("Access denied"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_proxies_monitor_on_their_own_and_a_client_fails_over_between_them() {
    let text = cluster().proxy_config("127.0.0.1:0");
    let first = start_proxy_with(&text).await;
    let second = start_proxy_with(&text).await;
    for proxy in [&first, &second] {
        let backends = proxy.backends();
        let measured = wait_for(Duration::from_secs(10), || {
            backends.all().iter().skip(1).all(|b| b.health.lag().is_some())
        })
        .await;
        assert!(measured.is_some(), "each proxy measures replica lag on its own");
    }
    let ports = (first.sql_addr.port(), second.sql_addr.port());
    assert_eq!(failover_client(ports).await, ports.0, "both up: the first host serves");
    let answered = first.metrics().render(&first.backends());
    assert!(answered.contains("rwproxy_queries_total"), "{answered}");
    drop(first);
    assert_eq!(failover_client(ports).await, ports.1, "first down: the client fails over");
}

/// MySQL Connector/Python with two hosts in `failover`: connects, writes and reads, and
/// prints the port it ended up on.
async fn failover_client(ports: (u16, u16)) -> u16 {
    let script = r#"
import sys, mysql.connector
# Without priorities Connector/Python picks a host at random; with them, in order.
hosts = [{"host": "127.0.0.1", "port": int(p), "priority": prio} for p, prio in zip(sys.argv[1:3], (100, 50))]
conn = mysql.connector.connect(user="app", password="app", database="appdb", failover=hosts,
                               connection_timeout=5, use_pure=True)
cur = conn.cursor()
cur.execute("CREATE TABLE IF NOT EXISTS failover_client (id INT AUTO_INCREMENT PRIMARY KEY)")
cur.execute("INSERT INTO failover_client VALUES ()")
conn.commit()
cur.execute("SELECT COUNT(*) FROM failover_client")
assert cur.fetchone()[0] >= 1
print(conn.server_port)
"#;
    let (a, b) = (ports.0.to_string(), ports.1.to_string());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3").args(["-c", script, &a, &b]).output()
    })
    .await
    .expect("join")
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout.trim().parse().unwrap_or_else(|_| panic!("port expected, got {stdout:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn re_roling_a_backend_by_reload_moves_the_writes() {
    let text = cluster().proxy_config("127.0.0.1:0");
    let replica = &cluster().replicas()[0].name;
    // replica1 declared the primary and the primary a replica: writes must now go to replica1.
    let swapped = text
        .replacen("role = \"primary\"", "role = \"swap\"", 1)
        .replacen("role = \"replica\"", "role = \"primary\"", 1)
        .replacen("role = \"swap\"", "role = \"replica\"", 1);
    let proxy = start_proxy_with(&text).await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE TABLE IF NOT EXISTS re_role (id INT)").await.expect("write on the primary");
    let changes = proxy.reloader.apply(Config::from_toml(&swapped).expect("valid")).expect("reload");
    assert!(changes.iter().any(|c| c.contains(replica.as_str()) && c.contains("changed")), "{changes:?}");
    assert_eq!(&proxy.backends().primary().name, replica);
    // The same session's next write reaches replica1, which is read-only and says so.
    let err = conn.query_drop("INSERT INTO re_role VALUES (1)").await.expect_err("replica1 is read-only");
    assert!(err.to_string().contains("read-only") || err.to_string().contains("1290"), "{err}");
    proxy.reloader.apply(Config::from_toml(&text).expect("valid")).expect("reload back");
    conn.query_drop("INSERT INTO re_role VALUES (2)").await.expect("write on the real primary again");
}
