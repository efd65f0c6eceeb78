//! The monitor on a real cluster: lag demotion with hysteresis, dead and restarted backends,
//! the all-replicas-down fallback, a dead primary, and the admin endpoints. Tests here change
//! the cluster, so they run one at a time.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{cluster, connect, http_get, server_id, start_proxy, start_proxy_with, wait_for};
use mysql_async::prelude::*;
use rwproxy::backend::State;
use rwproxy::proxy::Proxy;
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

fn state(proxy: &Proxy, index: usize) -> State {
    proxy.backends().get(index).expect("backend").health.state()
}

async fn sql(node: usize, statement: &str) {
    let statement = statement.to_string();
    tokio::task::spawn_blocking(move || cluster().nodes[node].sql(&statement))
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("{e}"));
}

async fn servers_used(conn: &mut mysql_async::Conn, reads: usize) -> BTreeSet<u32> {
    let mut seen = BTreeSet::new();
    for _ in 0..reads {
        seen.insert(server_id(conn).await);
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lagging_replica_leaves_the_read_pool_and_comes_back_after_catching_up() {
    let _serial = SERIAL.lock().await;
    let text = cluster().proxy_config("127.0.0.1:0").replace(
        "interval = \"500ms\"",
        "interval = \"500ms\"\nmax_replication_lag = \"1s\"\nrise = 2\nfall = 3",
    );
    let proxy = start_proxy_with(&text).await;
    let lag_known = wait_for(Duration::from_secs(10), || {
        proxy.backends().get(1).is_some_and(|b| b.health.lag().is_some())
    })
    .await;
    assert!(lag_known.is_some(), "heartbeat lag is measured");
    let lag = proxy.backends().get(1).and_then(|b| b.health.lag()).expect("lag");
    assert!(lag < Duration::from_millis(500), "an idle replica is not behind: {lag:?}");

    sql(1, "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 4; START SLAVE;").await;
    let demoted = wait_for(Duration::from_secs(15), || state(&proxy, 1) == State::Lagging).await;
    let demoted = demoted.expect("replica1 demoted for lag");
    eprintln!("lag demotion: {demoted:?} after MASTER_DELAY = 4 (max lag 1 s, fall 3 × 500 ms)");
    let mut conn = connect(&proxy).await;
    assert_eq!(servers_used(&mut conn, 12).await, BTreeSet::from([1, 3]), "no reads on the lagging replica");
    let (_, status) = http_get(proxy.admin_addr.expect("admin"), "/status").await;
    assert!(status.contains("\"state\":\"lagging\"") && status.contains("replication lag"), "{status}");

    sql(1, "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 0; START SLAVE;").await;
    let back = wait_for(Duration::from_secs(20), || state(&proxy, 1) == State::Up).await;
    let back = back.expect("replica1 re-admitted");
    eprintln!("re-admission: {back:?} after MASTER_DELAY = 0 (rise 2 × 500 ms)");
    assert_eq!(servers_used(&mut conn, 6).await, BTreeSet::from([1, 2, 3]));
    let (_, metrics) = http_get(proxy.admin_addr.expect("admin"), "/metrics").await;
    assert!(
        metrics.contains("rwproxy_backend_demotions_total{backend=\"replica1\",reason=\"lagging\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_replication_everywhere_sends_reads_to_the_primary() {
    let _serial = SERIAL.lock().await;
    let proxy = start_proxy().await;
    sql(1, "STOP SLAVE SQL_THREAD").await;
    sql(2, "STOP SLAVE SQL_THREAD").await;
    let out = wait_for(Duration::from_secs(10), || {
        state(&proxy, 1) == State::ReplicationStopped && state(&proxy, 2) == State::ReplicationStopped
    })
    .await;
    assert!(out.is_some(), "both replicas demoted: {:?} {:?}", state(&proxy, 1), state(&proxy, 2));
    let mut conn = connect(&proxy).await;
    assert_eq!(servers_used(&mut conn, 6).await, BTreeSet::from([1]));
    let reason = proxy.backends().get(1).expect("backend").health.reason();
    assert!(reason.contains("SQL=No"), "{reason}");
    sql(1, "START SLAVE SQL_THREAD").await;
    sql(2, "START SLAVE SQL_THREAD").await;
    let back =
        wait_for(Duration::from_secs(10), || state(&proxy, 1) == State::Up && state(&proxy, 2) == State::Up)
            .await;
    assert!(back.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn least_lagged_and_error_policies() {
    let _serial = SERIAL.lock().await;
    for (policy, expect_error) in [("least_lagged", false), ("error", true)] {
        let text = cluster()
            .proxy_config("127.0.0.1:0")
            .replace(
                "interval = \"500ms\"",
                &format!("interval = \"500ms\"\nall_replicas_down = \"{policy}\""),
            )
            .replacen(
                "[[mysql.users]]",
                "[mysql.routing]\nreads_include_primary = false\n\n[[mysql.users]]",
                1,
            );
        let proxy = start_proxy_with(&text).await;
        // Connect first: a driver's own start-up queries are reads too.
        let mut conn = connect(&proxy).await;
        sql(1, "STOP SLAVE SQL_THREAD").await;
        sql(2, "STOP SLAVE SQL_THREAD").await;
        let out = wait_for(Duration::from_secs(10), || {
            state(&proxy, 1) != State::Up && state(&proxy, 2) != State::Up
        })
        .await;
        assert!(out.is_some());
        let got: Result<Option<u32>, _> = conn.query_first("SELECT @@server_id").await;
        sql(1, "START SLAVE SQL_THREAD").await;
        sql(2, "START SLAVE SQL_THREAD").await;
        if expect_error {
            let err = got.expect_err("no read backend with all_replicas_down = error");
            assert!(err.to_string().contains("all_replicas_down"), "{err}");
        } else {
            // Replication stopped is not "lagging": nothing qualifies, so the primary answers.
            assert_eq!(got.expect("read"), Some(1));
        }
        let back = wait_for(Duration::from_secs(10), || {
            state(&proxy, 1) == State::Up && state(&proxy, 2) == State::Up
        })
        .await;
        assert!(back.is_some());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replica_is_demoted_and_readmitted_and_an_inflight_read_is_retried() {
    let _serial = SERIAL.lock().await;
    let text = cluster().proxy_config("127.0.0.1:0").replacen(
        "[[mysql.users]]",
        "[mysql.routing]\nreads_include_primary = false\n\n[[mysql.users]]",
        1,
    );
    let proxy = start_proxy_with(&text).await;
    let mut conn = connect(&proxy).await;
    // The rotation starts at replica1: this slow read runs there, and replica1 dies under it.
    let slow = tokio::spawn(async move {
        let row: Option<(u64, u32)> = conn
            .query_first("SELECT SUM(seq), @@server_id FROM seq_1_to_200000000")
            .await
            .expect("retried read");
        row
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    tokio::task::spawn_blocking(|| cluster().nodes[1].kill()).await.expect("join").expect("kill");
    let row = slow.await.expect("join").expect("row");
    assert_eq!(row.1, 3, "the read was retried on replica2");
    let down = wait_for(Duration::from_secs(10), || state(&proxy, 1) == State::Down).await;
    eprintln!("dead replica demoted after {down:?}");
    assert!(down.is_some());
    let mut conn = connect(&proxy).await;
    assert_eq!(servers_used(&mut conn, 4).await, BTreeSet::from([3]));
    tokio::task::spawn_blocking(|| cluster().nodes[1].restart()).await.expect("join").expect("restart");
    let up = wait_for(Duration::from_secs(20), || state(&proxy, 1) == State::Up).await;
    eprintln!("restarted replica re-admitted after {up:?}");
    assert!(up.is_some());
    assert_eq!(servers_used(&mut conn, 4).await, BTreeSet::from([2, 3]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_primary_keeps_reads_flowing_and_fails_writes_at_once() {
    let _serial = SERIAL.lock().await;
    let proxy = start_proxy().await;
    let admin = proxy.admin_addr.expect("admin");
    assert_eq!(http_get(admin, "/health").await.0, 200);
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE TABLE IF NOT EXISTS dp_t (id INT)").await.expect("create");
    tokio::task::spawn_blocking(|| cluster().nodes[0].kill()).await.expect("join").expect("kill");
    let down = wait_for(Duration::from_secs(10), || state(&proxy, 0) == State::Down).await;
    assert!(down.is_some(), "primary marked down");
    let (code, body) = http_get(admin, "/health").await;
    assert_eq!(code, 503, "{body}");
    for _ in 0..6 {
        let id = server_id(&mut conn).await;
        assert!(id == 2 || id == 3, "reads served by replicas, got {id}");
    }
    let started = std::time::Instant::now();
    let err = conn.query_drop("INSERT INTO dp_t VALUES (1)").await.expect_err("write must fail");
    let took = started.elapsed();
    assert!(
        err.to_string().contains("rwproxy: no primary available") && err.to_string().contains("down"),
        "{err}"
    );
    assert!(took < Duration::from_millis(500), "fails at once, took {took:?}");
    tokio::task::spawn_blocking(|| cluster().nodes[0].restart()).await.expect("join").expect("restart");
    let up = wait_for(Duration::from_secs(20), || state(&proxy, 0) == State::Up).await;
    assert!(up.is_some());
    conn.query_drop("INSERT INTO dp_t VALUES (2)").await.expect("writes work again");
    assert_eq!(http_get(admin, "/health").await.0, 200);
    // Replicas reconnect on their own (MASTER_CONNECT_RETRY = 1).
    let replicating =
        wait_for(Duration::from_secs(20), || state(&proxy, 1) == State::Up && state(&proxy, 2) == State::Up)
            .await;
    assert!(replicating.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_describe_backends_and_routing() {
    let _serial = SERIAL.lock().await;
    let proxy = start_proxy().await;
    let admin = proxy.admin_addr.expect("admin");
    let mut conn = connect(&proxy).await;
    servers_used(&mut conn, 6).await;
    conn.query_drop("DO 1").await.expect("write");
    let lag_known = wait_for(Duration::from_secs(10), || {
        proxy.backends().get(2).is_some_and(|b| b.health.lag().is_some())
    })
    .await;
    assert!(lag_known.is_some());
    let (code, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    for needle in [
        "rwproxy_backend_up{backend=\"primary\",role=\"primary\"} 1",
        "rwproxy_backend_replication_lag_seconds{backend=\"replica1\"}",
        "rwproxy_backend_state{backend=\"replica2\",state=\"up\"} 1",
        "rwproxy_query_duration_seconds_bucket",
        "rwproxy_client_connections 1",
        // Multiplexing: between statements the session's connection waits in the pool.
        "rwproxy_backend_connections{backend=\"replica1\",state=\"in_use\"} 0",
        "rwproxy_backend_connections{backend=\"replica1\",state=\"idle\"} 1",
        "rwproxy_pool_checkouts_total{backend=\"replica1\",from=\"new\"} 1",
        "rwproxy_monitor_check_duration_seconds_bucket{backend=\"primary\"",
        "rwproxy_backend_demotions_total{backend=\"replica1\",reason=\"down\"} 0",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    for counted in [
        "rwproxy_queries_total{backend=\"replica1\",route=\"read\",reason=\"read\"} ",
        "rwproxy_queries_total{backend=\"primary\",route=\"primary\",reason=\"write\"} ",
    ] {
        let value: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(counted))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {counted} in\n{metrics}"));
        assert!(value >= 1.0, "{counted}{value}");
    }
    let (code, status) = http_get(admin, "/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(status["primary"], "primary");
    assert_eq!(status["read_pool"], serde_json::json!(["primary", "replica1", "replica2"]));
    assert_eq!(status["backends"][1]["state"], "up");
    assert!(status["backends"][1]["lag_seconds"].as_f64().is_some_and(|l| l < 1.0));
    let (code, page) = http_get(admin, "/").await;
    assert_eq!(code, 200);
    assert!(page.contains("<table id=\"backends\"") && page.contains("replica2"));
    // The session's connections wait in the pools between its statements.
    assert!(page.contains("<th>connections in use / idle</th>") && page.contains("<td>0 / 1</td>"), "{page}");
    assert_eq!(http_get(admin, "/nope").await.0, 404);
}

/// The status page as a browser renders it (Debian's headless Chromium).
#[tokio::test(flavor = "multi_thread")]
async fn status_page_renders_in_headless_chromium() {
    let _serial = SERIAL.lock().await;
    let proxy = start_proxy().await;
    let admin = proxy.admin_addr.expect("admin");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let profile = std::env::temp_dir().join(format!("rwproxy-chromium-{}", std::process::id()));
    let out = tokio::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("http://{admin}/"))
        .output()
        .await
        .expect("run chromium (installed by scripts/install-deps.sh)");
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<table id=\"backends\">"),
        "no backend table in:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["primary", "replica1", "replica2"] {
        assert!(dom.contains(&format!("<td>{name}</td>")), "{name} missing");
    }
    assert!(dom.contains("<svg class=\"chart\""), "lag chart rendered");
}

#[tokio::test(flavor = "multi_thread")]
async fn detect_primary_follows_an_external_failover() {
    let _serial = SERIAL.lock().await;
    let text = cluster()
        .proxy_config("127.0.0.1:0")
        .replace("interval = \"500ms\"", "interval = \"500ms\"\ndetect_primary = true");
    let proxy = start_proxy_with(&text).await;
    let mut conn = connect(&proxy).await;
    // What a failover tool does: the old primary becomes read-only, replica2 writable.
    sql(0, "SET GLOBAL read_only = ON").await;
    sql(2, "STOP SLAVE; SET GLOBAL read_only = OFF").await;
    let switched = wait_for(Duration::from_secs(10), || proxy.backends().is_primary(2)).await;
    let restore = async {
        sql(2, "SET GLOBAL read_only = ON; START SLAVE").await;
        sql(0, "SET GLOBAL read_only = OFF").await;
    };
    let Some(took) = switched else {
        restore.await;
        panic!("primary not followed");
    };
    eprintln!("new primary followed after {took:?}");
    let who: Option<u32> = conn.query_first("SELECT @@server_id FOR UPDATE").await.expect("locking read");
    let (code, body) = http_get(proxy.admin_addr.expect("admin"), "/status").await;
    restore.await;
    assert_eq!(who, Some(3), "writes and locking reads follow the new primary");
    assert_eq!(code, 200);
    assert!(body.contains("\"primary\":\"replica2\""), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn when_every_replica_lags_reads_go_to_the_primary_or_the_least_lagged() {
    let _serial = SERIAL.lock().await;
    let config = |policy: &str| {
        cluster()
            .proxy_config("127.0.0.1:0")
            .replace(
                "interval = \"500ms\"",
                &format!(
                    "interval = \"500ms\"\nmax_replication_lag = \"1s\"\nall_replicas_down = \"{policy}\""
                ),
            )
            .replacen(
                "[[mysql.users]]",
                "[mysql.routing]\nreads_include_primary = false\n\n[[mysql.users]]",
                1,
            )
    };
    let to_primary = start_proxy_with(&config("primary")).await;
    let to_least = start_proxy_with(&config("least_lagged")).await;
    let mut a = connect(&to_primary).await;
    let mut b = connect(&to_least).await;
    sql(1, "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 3; START SLAVE;").await;
    sql(2, "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 8; START SLAVE;").await;
    let lagging = |p: &Proxy| state(p, 1) == State::Lagging && state(p, 2) == State::Lagging;
    let both = wait_for(Duration::from_secs(15), || lagging(&to_primary) && lagging(&to_least)).await;
    let lag = |i: usize| to_least.backends().get(i).and_then(|b| b.health.lag());
    // Both lags grow alike until replica1's settles at its 3 s delay.
    let apart = wait_for(
        Duration::from_secs(10),
        || matches!((lag(1), lag(2)), (Some(l1), Some(l2)) if l2 > l1 + Duration::from_millis(800)),
    )
    .await;
    let (lag1, lag2) = (lag(1), lag(2));
    let seen_a = servers_used(&mut a, 4).await;
    let seen_b = servers_used(&mut b, 4).await;
    sql(1, "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 0; START SLAVE;").await;
    sql(2, "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 0; START SLAVE;").await;
    assert!(both.is_some() && apart.is_some(), "both replicas demoted for lag, lags apart");
    assert_eq!(seen_a, BTreeSet::from([1]), "all_replicas_down = primary");
    assert_eq!(seen_b, BTreeSet::from([2]), "least_lagged picks replica1 ({lag1:?} vs {lag2:?})");
    let back = wait_for(Duration::from_secs(30), || {
        state(&to_least, 1) == State::Up && state(&to_least, 2) == State::Up
    })
    .await;
    assert!(back.is_some(), "replicas caught up");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_heartbeat_grants_status_says_so_and_lag_is_measured_from_positions() {
    let _serial = SERIAL.lock().await;
    // A monitor user that may read replication status but not write rwproxy's heartbeat.
    sql(
        0,
        "CREATE USER IF NOT EXISTS 'monitor_nohb'@'%' IDENTIFIED BY 'nohb';
         GRANT SLAVE MONITOR, REPLICATION CLIENT ON *.* TO 'monitor_nohb'@'%';",
    )
    .await;
    tokio::task::spawn_blocking(|| cluster().wait_replicated()).await.expect("join").expect("replicated");
    let text = cluster()
        .proxy_config("127.0.0.1:0")
        .replace("user = \"monitor\"\npassword = \"monitor\"", "user = \"monitor_nohb\"\npassword = \"nohb\"")
        .replace("interval = \"500ms\"", "interval = \"200ms\"\nmax_replication_lag = \"30s\"");
    assert!(text.contains("monitor_nohb"), "{text}");
    let proxy = start_proxy_with(&text).await;
    let admin = proxy.admin_addr.expect("admin");
    let mut warned = None;
    for _ in 0..50 {
        let (_, status) = http_get(admin, "/status").await;
        if status.contains("cannot write the heartbeat") {
            warned = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = warned.expect("/status warns that the heartbeat cannot be written");
    assert!(status.contains("GTID positions"), "{status}");
    let (_, page) = http_get(admin, "/").await;
    assert!(page.contains("cannot write the heartbeat"), "the status page says so too");

    // replica1 one second behind while writes flow: measured, not 0.
    sql(1, "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 1; START SLAVE;").await;
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let writing = writing.clone();
        tokio::spawn(async move {
            let mut conn = common::connect_direct(cluster().primary().port).await;
            conn.query_drop("CREATE TABLE IF NOT EXISTS nohb_t (id INT AUTO_INCREMENT PRIMARY KEY)")
                .await
                .expect("create");
            for _ in 0..2_000 {
                if !writing.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                conn.query_drop("INSERT INTO nohb_t VALUES ()").await.expect("write");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut highest = Duration::ZERO;
    for _ in 0..60 {
        if let Some(lag) = proxy.backends().get(1).and_then(|b| b.health.lag()) {
            highest = highest.max(lag);
        }
        if highest >= Duration::from_millis(900) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    writer.await.expect("writer");
    sql(1, "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 0; START SLAVE;").await;
    tokio::task::spawn_blocking(|| cluster().wait_replicated()).await.expect("join").expect("replicated");
    assert!(highest >= Duration::from_millis(900), "a replica 1 s behind measured {highest:?}");
}
