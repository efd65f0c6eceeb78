//! A local MariaDB primary + two replicas with rwproxy in front, for trying rwproxy by hand.
//!
//! `cargo run --example cluster` (or `scripts/demo.sh`) prints the addresses and the `mariadb`
//! command line, and cleans up on Ctrl-C. `RWPROXY_LISTEN` changes the proxy address
//! (default `127.0.0.1:6033`). With `--cluster-only` the proxy is not started: the cluster runs
//! and the config for a separately started `rwproxy` is written and printed (benchmarks use this).

#[path = "../tests/common/certs.rs"]
mod certs;
#[path = "../tests/common/cluster.rs"]
mod cluster;

use rwproxy::config::Config;

#[tokio::main]
async fn main() -> Result<(), String> {
    let listen = std::env::var("RWPROXY_LISTEN").unwrap_or_else(|_| "127.0.0.1:6033".into());
    println!("starting MariaDB primary and two replicas…");
    let cluster = tokio::task::spawn_blocking(cluster::Cluster::start).await.map_err(|e| e.to_string())??;
    let text = cluster.proxy_config(&listen);
    let path = cluster.base.join("rwproxy.toml");
    std::fs::write(&path, &text).map_err(|e| e.to_string())?;
    for node in &cluster.nodes {
        println!("  {:<9} 127.0.0.1:{}  (mariadb -uroot -S {})", node.name, node.port, node.socket.display());
    }
    if std::env::args().any(|a| a == "--cluster-only") {
        println!("config: {}", path.display());
        println!("ready");
        let _ = tokio::signal::ctrl_c().await;
        cluster.stop();
        return Ok(());
    }
    // The web tier: two demo web servers behind rwproxy's HTTP balancer, when the demo web
    // app is built next to this example (scripts/demo.sh builds both).
    let demo_web = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("rwproxy-demo-web")))
        .filter(|path| path.exists());
    let http_listen = std::env::var("RWPROXY_HTTP").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let web_ports = [8001, 8002];
    let admin = std::env::var("RWPROXY_ADMIN").unwrap_or_else(|_| "127.0.0.1:9090".into());
    let text = text.replace("[admin]\nlisten = \"127.0.0.1:0\"", &format!("[admin]\nlisten = \"{admin}\""));
    let text = match &demo_web {
        Some(_) => format!(
            "{text}\n[http]\nlisten = \"{http_listen}\"\n[[http.servers]]\nname = \"web1\"\naddress = \"127.0.0.1:{}\"\n[[http.servers]]\nname = \"web2\"\naddress = \"127.0.0.1:{}\"\n",
            web_ports[0], web_ports[1]
        ),
        None => text,
    };
    std::fs::write(&path, &text).map_err(|e| e.to_string())?;
    let config = Config::from_toml(&text).map_err(|e| e.to_string())?;
    let proxy = rwproxy::proxy::start(config).await.map_err(|e| e.to_string())?;
    let mut web_servers = Vec::new();
    if let Some(binary) = &demo_web {
        let database = format!(
            "mysql://{}:{}@{}/{}",
            cluster::APP_USER,
            cluster::APP_PASSWORD,
            proxy.sql_addr,
            cluster::DATABASE
        );
        for (name, port) in ["web1", "web2"].iter().zip(web_ports) {
            let child = std::process::Command::new(binary)
                .args(["--listen", &format!("127.0.0.1:{port}"), "--name", name, "--database", &database])
                .spawn()
                .map_err(|e| format!("cannot start {name}: {e}"))?;
            web_servers.push(child);
        }
        if let Some(http) = proxy.http_addr {
            println!(
                "web tier: http://{http}/  (web1 127.0.0.1:{}, web2 127.0.0.1:{})",
                web_ports[0], web_ports[1]
            );
        }
    }
    if let Some(admin) = proxy.admin_addr {
        println!("status page: http://{admin}/   metrics: http://{admin}/metrics");
    }
    println!("rwproxy listening on {} (config: {})", proxy.sql_addr, path.display());
    println!(
        "try:  mariadb --comments -h127.0.0.1 -P{} -u{} -p{} {}",
        proxy.sql_addr.port(),
        cluster::APP_USER,
        cluster::APP_PASSWORD,
        cluster::DATABASE
    );
    println!("press Ctrl-C to stop and clean up");
    let _ = tokio::signal::ctrl_c().await;
    for mut child in web_servers {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(proxy);
    cluster.stop();
    Ok(())
}
