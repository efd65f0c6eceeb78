//! The compose stack's integration scenarios (tests/compose/scenarios.py), run against the
//! local-process cluster harness: MariaDB primary + two replicas, rwproxy, and two instances
//! of the demo web app behind rwproxy's HTTP balancer.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{cluster, start_proxy_with, wait_for};

#[tokio::test(flavor = "multi_thread")]
async fn compose_scenarios_pass_on_the_local_cluster() {
    let dir = std::env::temp_dir().join(format!("rwproxy-scenarios-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    // Three distinct ports, held together while they are picked. The web servers bind theirs
    // at once, before the proxy opens any listener or connection that could take them.
    let [sql, web1, web2] = free_ports();
    let demo = env!("CARGO_BIN_EXE_rwproxy-demo-web");
    let database = format!("mysql://app:app@127.0.0.1:{sql}/appdb");
    let start = |name: &str, port: u16| {
        let at = dir.display();
        format!(
            "{demo} --listen 127.0.0.1:{port} --name {name} --database {database} >>{at}/{name}.log 2>&1 & echo $! > {at}/{name}.pid"
        )
    };
    let stop = |name: &str| format!("kill $(cat {}/{name}.pid)", dir.display());
    let logs = || {
        ["web1", "web2"]
            .map(|name| {
                format!(
                    "{name}.log:\n{}",
                    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
                )
            })
            .join("\n")
    };
    for (name, port) in [("web1", web1), ("web2", web2)] {
        assert!(Command::new("sh").args(["-c", &start(name, port)]).status().expect("sh").success());
    }
    for name in ["web1", "web2"] {
        let log = dir.join(format!("{name}.log"));
        let listening = wait_for(Duration::from_secs(20), || {
            std::fs::read_to_string(&log).is_ok_and(|text| text.contains("listening on"))
        })
        .await;
        assert!(listening.is_some(), "{name} did not start listening:\n{}", logs());
    }
    let mut text = cluster().proxy_config(&format!("127.0.0.1:{sql}"));
    text = text.replace("interval = \"500ms\"", "interval = \"500ms\"\nmax_replication_lag = \"1s\"");
    text += &format!(
        "\n[http]\nlisten = \"127.0.0.1:0\"\n[http.health]\ninterval = \"200ms\"\n\
         [[http.servers]]\nname = \"web1\"\naddress = \"127.0.0.1:{web1}\"\n\
         [[http.servers]]\nname = \"web2\"\naddress = \"127.0.0.1:{web2}\"\n"
    );
    let proxy = start_proxy_with(&text).await;
    let replica1 = &cluster().replicas()[0];
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compose/scenarios.py");
    let (out, status) = {
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .env("RW_SQL", format!("127.0.0.1:{sql}"))
            .env("RW_HTTP", proxy.http_addr.expect("http").to_string())
            .env("RW_ADMIN", proxy.admin_addr.expect("admin").to_string())
            .env("RW_REPLICA1_SQL", format!("mariadb -uroot -S {}", replica1.socket.display()))
            .env("RW_STOP_WEB1", stop("web1"))
            .env("RW_START_WEB1", start("web1", web1));
        let output = tokio::task::spawn_blocking(move || cmd.output()).await.expect("join").expect("python3");
        (output.clone(), output.status)
    };
    for name in ["web1", "web2"] {
        let _ = Command::new("sh").args(["-c", &stop(name)]).status();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        status.success(),
        "scenarios failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    assert!(stdout.contains("all scenarios passed"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Distinct free loopback ports: each listener is held until all are picked, so the kernel
/// cannot hand the same port out twice.
fn free_ports<const N: usize>() -> [u16; N] {
    let held: [std::net::TcpListener; N] =
        std::array::from_fn(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("free port"));
    held.map(|listener| listener.local_addr().expect("local addr").port())
}
