//! The `rwproxy` command line: a contract other tools script against.

use std::process::Command;

fn rwproxy(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rwproxy")).args(args).output().expect("run rwproxy")
}

#[test]
fn example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/rwproxy.toml");
    let out = rwproxy(&["--check-config", path]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn invalid_config_lists_every_problem_with_key_and_line_and_exits_2() {
    let dir = std::env::temp_dir().join(format!("rwproxy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("bad.toml");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/rwproxy.toml"))
        .expect("example")
        .replace("role = \"primary\"", "role = \"replica\"")
        .replace("127.0.0.1:3307", "nowhere");
    std::fs::write(&path, text).expect("write");
    let out = rwproxy(&["--check-config", path.to_str().expect("utf-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("mysql.backends[1].address") && stderr.contains("line "), "{stderr}");
    assert!(stderr.contains("exactly one backend with role = \"primary\""), "{stderr}");

    std::fs::write(&path, "[mysql]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n").expect("write");
    let out = rwproxy(&["--check-config", path.to_str().expect("utf-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("bogus") && stderr.contains("line 3"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_and_version() {
    let out = rwproxy(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("rwproxy "));
    let out = rwproxy(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--config") && help.contains("--check-config"), "{help}");
}

#[test]
fn environment_variables_fill_the_config_and_print_config_masks_secrets() {
    let dir = std::env::temp_dir().join(format!("rwproxy-cli-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("env.toml");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/rwproxy.toml"))
        .expect("example")
        .replacen("password = \"app\"", "password = \"${RWPROXY_CLI_SECRET}\"", 1);
    assert!(text.contains("${RWPROXY_CLI_SECRET}"), "the example's first user must have password \"app\"");
    std::fs::write(&path, text).expect("write");
    let path = path.to_str().expect("utf-8 path");
    let out = Command::new(env!("CARGO_BIN_EXE_rwproxy"))
        .args(["--check-config", path, "--print-config"])
        .env("RWPROXY_CLI_SECRET", "hunter2")
        .output()
        .expect("run");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!printed.contains("hunter2") && printed.contains("********"), "{printed}");
    assert!(printed.contains("max_idle_connections = 16"), "defaults are printed: {printed}");
    let out = Command::new(env!("CARGO_BIN_EXE_rwproxy"))
        .args(["--check-config", path])
        .env_remove("RWPROXY_CLI_SECRET")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("${RWPROXY_CLI_SECRET}") && stderr.contains("not set"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_listen_address_in_use_is_named_in_the_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let config = format!(
        "[mysql]\nlisten = \"{addr}\"\nconnect_timeout = \"200ms\"\n[[mysql.users]]\nname = \"app\"\npassword = \"app\"\n[[mysql.backends]]\nname = \"p\"\naddress = \"{dead}\"\nrole = \"primary\"\n\n[monitor]\nenabled = false\n"
    );
    let path = std::env::temp_dir().join(format!("rwproxy-bind-{}.toml", std::process::id()));
    std::fs::write(&path, config).expect("write config");
    let out = rwproxy(&["--config", &path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot listen on {addr} (mysql.listen)")), "{stderr}");
}
