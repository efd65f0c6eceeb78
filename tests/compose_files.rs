//! docker-compose.yml cannot run here (no Docker), so its parts are checked against each
//! other and against rwproxy itself: services, ports, mounted files, the rwproxy config it
//! mounts (which must pass `rwproxy --check-config`), the Dockerfile, Prometheus and Grafana.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_yaml_ng::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn compose() -> Value {
    let text =
        std::fs::read_to_string(Path::new(ROOT).join("docker-compose.yml")).expect("docker-compose.yml");
    serde_yaml_ng::from_str(&text).expect("docker-compose.yml is YAML")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"].get(name).unwrap_or_else(|| panic!("service {name} missing"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| s.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// The config as compose hands it to rwproxy: checked, then printed with defaults.
fn mounted_config() -> toml::Table {
    let path = Path::new(ROOT).join("deploy/compose/rwproxy.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_rwproxy"))
        .args(["--check-config", path.to_str().expect("utf-8"), "--print-config"])
        .env("APP_PASSWORD", "app")
        .env("MONITOR_PASSWORD", "monitor")
        .output()
        .expect("run rwproxy");
    assert!(out.status.success(), "--check-config failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!printed.contains("password = \"app\""), "secrets must be masked:\n{printed}");
    toml::from_str(&printed).expect("--print-config prints TOML")
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {address}"))
}

#[test]
fn services_ports_and_the_mounted_config_agree() {
    let compose = compose();
    let names: BTreeSet<&str> =
        compose["services"].as_mapping().expect("services").keys().filter_map(Value::as_str).collect();
    for required in ["primary", "replica1", "replica2", "rwproxy", "web1", "web2", "prometheus", "grafana"] {
        assert!(names.contains(required), "service {required} missing: {names:?}");
    }
    let rwproxy = service(&compose, "rwproxy");
    assert_eq!(rwproxy["build"]["dockerfile"].as_str(), Some("Dockerfile"));
    let volumes = strings(&rwproxy["volumes"]);
    assert!(
        volumes.iter().any(|v| v.starts_with("./deploy/compose/rwproxy.toml:/etc/rwproxy/rwproxy.toml")),
        "{volumes:?}"
    );
    assert_eq!(strings(&rwproxy["command"]), ["--config", "/etc/rwproxy/rwproxy.toml"]);

    let config = mounted_config();
    let listen = |section: &str| config[section]["listen"].as_str().map(port_of).expect("listen");
    let published: BTreeSet<u16> = strings(&rwproxy["ports"]).iter().map(|p| port_of(p)).collect();
    let listening: BTreeSet<u16> = [listen("mysql"), listen("http"), listen("admin")].into();
    assert_eq!(published, listening, "published ports must be the ports rwproxy listens on");

    for backend in config["mysql"]["backends"].as_array().expect("backends") {
        let address = backend["address"].as_str().expect("address");
        let host = address.split(':').next().unwrap_or_default();
        assert!(names.contains(host), "backend {address} is not a compose service");
        assert_eq!(port_of(address), 3306);
    }
    for server in config["http"]["servers"].as_array().expect("servers") {
        let address = server["address"].as_str().expect("address");
        let host = address.split(':').next().unwrap_or_default();
        let command = strings(&service(&compose, host)["command"]);
        let at = command.iter().position(|a| a == "--listen").expect("web server --listen");
        assert_eq!(
            port_of(&command[at + 1]),
            port_of(address),
            "{host} listens where rwproxy sends requests"
        );
        let url = service(&compose, host)["environment"]["DATABASE_URL"].as_str().expect("DATABASE_URL");
        assert!(url.contains(&format!("@rwproxy:{}/", listen("mysql"))), "{host} must use rwproxy: {url}");
    }
    let prometheus =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/compose/prometheus.yml")).expect("file");
    let prometheus: Value = serde_yaml_ng::from_str(&prometheus).expect("prometheus.yml is YAML");
    let targets = strings(&prometheus["scrape_configs"][0]["static_configs"][0]["targets"]);
    assert_eq!(targets, [format!("rwproxy:{}", listen("admin"))]);

    // Users in the config are the users the init scripts create, for both flavors.
    let user = config["mysql"]["users"][0]["name"].as_str().expect("user");
    let monitor = config["monitor"]["user"].as_str().expect("monitor user");
    for flavor in ["mysql", "mariadb"] {
        let init =
            std::fs::read_to_string(Path::new(ROOT).join(format!("deploy/compose/{flavor}/primary-init.sh")))
                .expect("init script");
        for name in [user, monitor, "repl"] {
            assert!(init.contains(&format!("CREATE USER IF NOT EXISTS '{name}'@'%'")), "{flavor}: {name}");
        }
    }
}

#[test]
fn every_mounted_file_exists_for_both_database_flavors() {
    let compose = compose();
    for (name, svc) in compose["services"].as_mapping().expect("services") {
        for volume in strings(&svc["volumes"]) {
            for flavor in ["mysql", "mariadb"] {
                let volume = volume.replace("${DB_FLAVOR:-mysql}", flavor);
                let path = volume.split(':').next().unwrap_or_default();
                assert!(Path::new(ROOT).join(path).exists(), "{name:?} mounts {path}, which is missing");
            }
        }
    }
}

#[test]
fn the_dockerfile_is_a_multi_stage_build_of_both_binaries() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).expect("Dockerfile");
    let stages = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "multi-stage build expected");
    assert!(text.contains("cargo build --release --locked"), "{text}");
    for binary in ["rwproxy", "rwproxy-demo-web"] {
        assert!(text.contains(&format!("/src/target/release/{binary}")), "{binary} not copied");
    }
    for copied in text.lines().filter_map(|l| l.strip_prefix("COPY ")).filter(|l| !l.starts_with("--from")) {
        for source in copied.split_whitespace().rev().skip(1) {
            assert!(Path::new(ROOT).join(source).exists(), "Dockerfile copies missing {source}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_grafana_dashboard_queries_metrics_rwproxy_exports() {
    let text =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/grafana/rwproxy-dashboard.json")).expect("file");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let web = common::web::WebServer::start("web1").await;
    let proxy = common::start_proxy_with(&common::web::balancer_config(&[(&web, "")], "")).await;
    // `rwproxy_queries_total` shows the route × reason pairs that ran: count one statement.
    proxy.backends().all()[0].health.routed.add(0, 0, 1);
    let exported = proxy.metrics().render(&proxy.backends());
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("rwproxy_") {
                    names.insert(word.trim_end_matches("_bucket").to_string());
                }
            }
        }
    }
    assert!(names.len() >= 8, "{names:?}");
    for name in &names {
        assert!(
            exported.contains(name.as_str()),
            "the dashboard queries {name}, which rwproxy does not export"
        );
    }
}
