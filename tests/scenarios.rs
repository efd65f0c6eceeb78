//! The compose stack's integration scenarios (tests/compose/scenarios.py), run against the
//! local-process cluster harness: MariaDB primary + two replicas, rwproxy, and two instances
//! of the demo web app behind rwproxy's HTTP balancer.

mod common;

use std::process::Command;

use common::{cluster, free_port, start_proxy_with};

#[tokio::test(flavor = "multi_thread")]
async fn compose_scenarios_pass_on_the_local_cluster() {
    let dir = std::env::temp_dir().join(format!("rwproxy-scenarios-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (sql, web1, web2) = (free_port(), free_port(), free_port());
    let mut text = cluster().proxy_config(&format!("127.0.0.1:{sql}"));
    text = text.replace("interval = \"500ms\"", "interval = \"500ms\"\nmax_replication_lag = \"1s\"");
    text += &format!(
        "\n[http]\nlisten = \"127.0.0.1:0\"\n[http.health]\ninterval = \"200ms\"\n\
         [[http.servers]]\nname = \"web1\"\naddress = \"127.0.0.1:{web1}\"\n\
         [[http.servers]]\nname = \"web2\"\naddress = \"127.0.0.1:{web2}\"\n"
    );
    let proxy = start_proxy_with(&text).await;
    let demo = env!("CARGO_BIN_EXE_rwproxy-demo-web");
    let database = format!("mysql://app:app@127.0.0.1:{sql}/appdb");
    let start = |name: &str, port: u16| {
        format!(
            "{demo} --listen 127.0.0.1:{port} --name {name} --database {database} >/dev/null 2>&1 & echo $! > {}/{name}.pid",
            dir.display()
        )
    };
    let stop = |name: &str| format!("kill $(cat {}/{name}.pid)", dir.display());
    let replica1 = &cluster().replicas()[0];
    for (name, port) in [("web1", web1), ("web2", web2)] {
        assert!(Command::new("sh").args(["-c", &start(name, port)]).status().expect("sh").success());
    }
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
    assert!(status.success(), "scenarios failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("all scenarios passed"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
