//! Never write to a stale primary: a failover done by hand outside rwproxy, the old primary
//! back and writable, then a reload and a restart of rwproxy. Runs on a cluster of its own (it
//! kills and promotes servers).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{cluster, connect, connect_direct, start_proxy_with, wait_for};
use mysql_async::prelude::*;
use rwproxy::proxy::Proxy;

fn config() -> String {
    cluster()
        .proxy_config("127.0.0.1:0")
        .replace("interval = \"500ms\"", "interval = \"200ms\"\ndetect_primary = true")
}

fn primary_of(proxy: &Proxy) -> String {
    proxy.sql.current().router.backends().primary().name.clone()
}

async fn sql(node: usize, text: &str) {
    let text = text.to_string();
    tokio::task::spawn_blocking(move || cluster().nodes[node].sql(&text)).await.expect("join").expect("sql");
}

/// Writes `n` rows tagged `phase` through rwproxy; returns their ids (each acknowledged).
async fn write(proxy: &Proxy, phase: &str, first: u32, n: u32) -> Vec<u32> {
    let mut conn = connect(proxy).await;
    let mut ids = Vec::new();
    for id in first..first + n {
        conn.exec_drop("INSERT INTO sp (id, phase) VALUES (?, ?)", (id, phase))
            .await
            .expect("acknowledged write");
        ids.push(id);
    }
    ids
}

async fn reads_from(proxy: &Proxy) -> BTreeSet<u32> {
    let mut conn = connect(proxy).await;
    let mut seen = BTreeSet::new();
    for _ in 0..12 {
        seen.insert(common::server_id(&mut conn).await);
    }
    seen
}

async fn ids_on(node: usize) -> BTreeSet<u32> {
    let mut conn = connect_direct(cluster().nodes[node].port).await;
    let ids: Vec<u32> = conn.query("SELECT id FROM sp").await.expect("ids");
    ids.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_never_reach_a_stale_former_primary_after_a_reload_or_a_restart() {
    let proxy = start_proxy_with(&config()).await;
    let mut conn = connect(&proxy).await;
    conn.query_drop("CREATE TABLE sp (id INT PRIMARY KEY, phase VARCHAR(20))").await.expect("create");
    write(&proxy, "before", 1, 20).await;
    common::replicated().await;

    // The primary crashes; a person promotes replica1 and points replica2 at it.
    tokio::task::spawn_blocking(|| cluster().primary().kill()).await.expect("join").expect("kill");
    sql(1, "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = OFF;").await;
    let r1 = cluster().nodes[1].port;
    sql(
        2,
        &format!(
            "STOP SLAVE; CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={r1}, MASTER_USE_GTID=slave_pos; START SLAVE;"
        ),
    )
    .await;
    let followed = wait_for(Duration::from_secs(15), || primary_of(&proxy) == "replica1").await;
    assert!(followed.is_some(), "rwproxy follows the promotion: primary is {}", primary_of(&proxy));
    let mut acknowledged = write(&proxy, "promoted", 100, 20).await;

    // The old primary comes back, writable and replicating from no one.
    tokio::task::spawn_blocking(|| cluster().primary().restart()).await.expect("join").expect("restart");
    let backends = proxy.sql.current().router.backends().clone();
    let stale =
        wait_for(Duration::from_secs(15), || backends.get(0).is_some_and(|b| b.health.stale().is_some()))
            .await;
    assert!(stale.is_some(), "the old primary is seen as a stale former primary");
    acknowledged.extend(write(&proxy, "old back", 200, 20).await);

    // A reload: the file still names the old primary.
    let reloaded = rwproxy::config::Config::from_toml(&config()).expect("config");
    proxy.reloader.apply(reloaded).expect("reload");
    assert_eq!(primary_of(&proxy), "replica1", "a reload keeps the primary the servers named");
    acknowledged.extend(write(&proxy, "reloaded", 300, 20).await);
    assert!(!reads_from(&proxy).await.contains(&1), "no read from the stale former primary");
    let (_, status) = common::http_get(proxy.admin_addr.expect("admin"), "/status").await;
    assert!(status.contains("stale former primary"), "{status}");
    let (_, page) = common::http_get(proxy.admin_addr.expect("admin"), "/").await;
    assert!(page.contains("stale former primary"), "the status page says so");
    drop(conn);
    drop(proxy);

    // A restart of rwproxy: nothing is known but what the servers say.
    let proxy = start_proxy_with(&config()).await;
    acknowledged.extend(write(&proxy, "restarted", 400, 20).await);
    assert_eq!(primary_of(&proxy), "replica1", "at a cold start the servers name the primary");
    assert!(!reads_from(&proxy).await.contains(&1), "no read from the stale former primary after a restart");

    let on_new = ids_on(1).await;
    let on_old = ids_on(0).await;
    for id in &acknowledged {
        assert!(on_new.contains(id), "acknowledged write {id} is on the new primary");
        assert!(!on_old.contains(id), "acknowledged write {id} reached the stale former primary");
    }
}
