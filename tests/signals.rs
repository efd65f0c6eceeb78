//! The `rwproxy` binary under signals: SIGHUP reloads the config file, SIGTERM drains.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::web::{WebServer, balancer_config};
use common::{free_port, try_http};

fn config(http: u16, admin: u16, servers: &[(&WebServer, u32)]) -> String {
    let weights: Vec<String> = servers.iter().map(|(_, w)| format!("weight = {w}")).collect();
    let servers: Vec<(&WebServer, &str)> =
        servers.iter().zip(&weights).map(|((s, _), w)| (*s, w.as_str())).collect();
    let text = balancer_config(&servers, "")
        .replace("[admin]\nlisten = \"127.0.0.1:0\"", &format!("[admin]\nlisten = \"127.0.0.1:{admin}\""))
        .replace("[http]\nlisten = \"127.0.0.1:0\"", &format!("[http]\nlisten = \"127.0.0.1:{http}\""))
        .replace("password = \"app\"", "password = \"${RWPROXY_TEST_SECRET}\"");
    format!("shutdown_timeout = \"5s\"\n{text}")
}

async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    try_http(([127, 0, 0, 1], port).into(), "GET", path).await
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args([name, &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_and_sigterm_drains_in_flight_requests() {
    let (web1, web2) = (WebServer::start("web1").await, WebServer::start("web2").await);
    let (http, admin) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("rwproxy-signals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("rwproxy.toml");
    std::fs::write(&path, config(http, admin, &[(&web1, 1)])).expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rwproxy"))
        .arg("--config")
        .arg(&path)
        .env("RWPROXY_TEST_SECRET", "app")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rwproxy");
    let mut up = false;
    for _ in 0..100 {
        if get(http, "/").await.is_some() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "rwproxy did not start listening");
    assert_eq!(get(http, "/").await.map(|r| r.1), Some("web1".into()));

    // SIGHUP: web2 joins with weight 3.
    std::fs::write(&path, config(http, admin, &[(&web1, 1), (&web2, 3)])).expect("write");
    signal(&child, "-HUP");
    let mut joined = false;
    for _ in 0..50 {
        if get(http, "/").await.is_some_and(|r| r.1 == "web2") {
            joined = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(joined, "web2 must take requests after SIGHUP");
    let mut counts = (0, 0);
    for _ in 0..8 {
        match get(http, "/").await.map(|r| r.1).as_deref() {
            Some("web1") => counts.0 += 1,
            Some("web2") => counts.1 += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(counts, (2, 6), "weights 1:3 after the reload");

    // SIGTERM during a slow request: it finishes, then the process exits 0.
    let slow = tokio::spawn(get(http, "/slow?ms=1000"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    signal(&child, "-TERM");
    let (status, body) = slow.await.expect("join").expect("the in-flight request gets its answer");
    assert!(status == 200 && body.ends_with(" slow"), "{status} {body}");
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().expect("wait") {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let status = status.expect("rwproxy must exit after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(4));
    let _ = std::fs::remove_dir_all(&dir);
}
