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
