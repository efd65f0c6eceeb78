//! A local MariaDB primary + two replicas with rwproxy in front, for trying rwproxy by hand.
//!
//! `cargo run --example cluster` (or `scripts/demo.sh`) prints the addresses and the `mariadb`
//! command line, and cleans up on Ctrl-C. `RWPROXY_LISTEN` changes the proxy address
//! (default `127.0.0.1:6033`). With `--cluster-only` the proxy is not started: the cluster runs
//! and the config for a separately started `rwproxy` is written and printed (benchmarks use this).

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
    let config = Config::from_toml(&text).map_err(|e| e.to_string())?;
    let proxy = rwproxy::proxy::start(config).await.map_err(|e| e.to_string())?;
    println!("rwproxy listening on {} (config: {})", proxy.sql_addr, path.display());
    println!(
        "try:  mariadb -h127.0.0.1 -P{} -u{} -p{} {}",
        proxy.sql_addr.port(),
        cluster::APP_USER,
        cluster::APP_PASSWORD,
        cluster::DATABASE
    );
    println!("press Ctrl-C to stop and clean up");
    let _ = tokio::signal::ctrl_c().await;
    drop(proxy);
    cluster.stop();
    Ok(())
}
