//! A real MariaDB primary and two replicas, as local processes, for tests and for people.
//!
//! Each node gets its own datadir under one temporary directory, a free loopback port and a
//! unix socket; replicas follow the primary with GTID replication and run `read_only`. The
//! `app` user may touch only `appdb`, and holds no privilege that bypasses `read_only`, so a
//! write that reaches a replica fails loudly.
//!
//! Teardown: a small guardian shell reads from a pipe this process holds; when the process
//! exits (however it exits) the pipe closes and the guardian stops the servers and removes the
//! directory.

#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app";
pub const DATABASE: &str = "appdb";

#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub port: u16,
    pub server_id: u32,
    pub datadir: PathBuf,
    pub socket: PathBuf,
    replica: bool,
    process: Mutex<Option<Child>>,
    /// The server's TLS certificate and key, signed by the cluster's CA.
    tls: super::certs::Certs,
}

#[derive(Debug)]
pub struct Cluster {
    pub base: PathBuf,
    /// The cluster's CA and the servers' certificate (TLS is offered by every server; the
    /// replicas replicate over it).
    pub certs: super::certs::Certs,
    pub nodes: Vec<Node>,
    guardian: Mutex<Option<(Child, ChildStdin)>>,
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    run(Command::new("id").arg("-u")).map(|s| s.trim() == "0").unwrap_or(false)
}

fn mariadbd() -> &'static str {
    if Path::new("/usr/sbin/mariadbd").exists() { "/usr/sbin/mariadbd" } else { "mariadbd" }
}

impl Node {
    fn start(&self) -> Result<(), String> {
        let d = self.datadir.display();
        let mut cmd = Command::new(mariadbd());
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={d}"))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!("--pid-file={d}/mariadbd.pid"))
            .arg(format!("--log-error={d}/error.log"))
            .arg(format!("--server-id={}", self.server_id))
            .args(["--log-bin=binlog", "--log-slave-updates", "--binlog-format=ROW", "--skip-name-resolve"])
            .args(["--max-allowed-packet=256M", "--local-infile=1", "--innodb-buffer-pool-size=64M"])
            .args(["--innodb-flush-log-at-trx-commit=2", "--sync-binlog=0", "--performance-schema=OFF"])
            .args(["--innodb-log-file-size=32M", "--max-connections=500", "--character-set-server=utf8mb4"])
            .arg("--collation-server=utf8mb4_general_ci")
            // Stored functions made by the app user (tests of state they leave behind).
            .arg("--log-bin-trust-function-creators=1")
            .arg(format!("--ssl-ca={}", self.tls.ca()))
            .arg(format!("--ssl-cert={}", self.tls.cert("mariadb")))
            .arg(format!("--ssl-key={}", self.tls.key("mariadb")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.replica {
            cmd.arg("--read-only");
        }
        if is_root() {
            cmd.arg("--user=root");
        }
        let child = cmd.spawn().map_err(|e| format!("cannot start mariadbd: {e}"))?;
        *self.process.lock().map_err(|e| e.to_string())? = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<(), String> {
        wait_ready(&self.name, &self.datadir, &self.process, Duration::from_secs(60), || {
            self.sql("SELECT 1").is_ok()
        })
    }

    /// Runs SQL as root over the unix socket; returns tab-separated rows without headers.
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        run(Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "--batch", "--skip-column-names", "-e", sql]))
    }

    /// Stops the server hard (SIGKILL), as a crash would.
    pub fn kill(&self) -> Result<(), String> {
        let mut guard = self.process.lock().map_err(|e| e.to_string())?;
        if let Some(mut child) = guard.take() {
            child.kill().map_err(|e| e.to_string())?;
            child.wait().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to the server process: a stopped server keeps its
    /// connections open and answers nothing, as a hung one does.
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        let guard = self.process.lock().map_err(|e| e.to_string())?;
        let pid = guard.as_ref().map(Child::id).ok_or("not running")?;
        run(Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string())).map(|_| ())
    }

    pub fn restart(&self) -> Result<(), String> {
        self.kill()?;
        self.start()
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Cluster {
    /// Creates and starts the cluster under a fresh temporary directory.
    pub fn start() -> Result<Cluster, String> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let base = std::env::temp_dir().join(format!(
            "rwproxy-cluster-{}-{}",
            std::process::id(),
            stamp % 1_000_000
        ));
        Cluster::start_in(&base)
    }

    pub fn start_in(base: &Path) -> Result<Cluster, String> {
        std::fs::create_dir_all(base).map_err(|e| format!("{}: {e}", base.display()))?;
        let guardian = spawn_guardian(base)?;
        let template = base.join("template");
        let mut install = Command::new("mariadb-install-db");
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", template.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        if is_root() {
            install.arg("--user=root");
        }
        run(&mut install)?;
        let certs = super::certs::Certs::generate(&base.join("tls"), &["mariadb", "rwproxy"])?;
        let mut nodes = Vec::new();
        for (i, name) in ["primary", "replica1", "replica2"].iter().enumerate() {
            let datadir = base.join(name);
            run(Command::new("cp").arg("-a").arg(&template).arg(&datadir))?;
            // Distinct ports: a port just released may be handed out again.
            let mut port = free_port()?;
            for _ in 0..20 {
                if nodes.iter().all(|n: &Node| n.port != port) {
                    break;
                }
                port = free_port()?;
            }
            nodes.push(Node {
                name: name.to_string(),
                port,
                server_id: i as u32 + 1,
                socket: datadir.join("mariadbd.sock"),
                datadir,
                replica: i > 0,
                process: Mutex::new(None),
                tls: certs.clone(),
            });
        }
        let mut cluster =
            Cluster { base: base.to_path_buf(), certs, nodes, guardian: Mutex::new(Some(guardian)) };
        for node in &mut cluster.nodes {
            // Another process may take the free port before the server binds it: then once more
            // on a new one.
            if let Err(first) = node.start() {
                let log = std::fs::read_to_string(node.datadir.join("error.log")).unwrap_or_default();
                if !log.contains("Address already in use") {
                    return Err(first);
                }
                node.port = free_port()?;
                node.start()?;
            }
        }
        cluster.set_up_replication()?;
        Ok(cluster)
    }

    fn set_up_replication(&self) -> Result<(), String> {
        self.primary().sql(&format!(
            "CREATE USER 'repl'@'127.0.0.1' IDENTIFIED BY 'repl';
             GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1';
             CREATE DATABASE {DATABASE};
             CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}';
             GRANT ALL PRIVILEGES ON {DATABASE}.* TO '{APP_USER}'@'%';
             GRANT RELOAD ON *.* TO '{APP_USER}'@'%';
             CREATE USER 'monitor'@'%' IDENTIFIED BY 'monitor';
             GRANT SLAVE MONITOR, REPLICATION CLIENT ON *.* TO 'monitor'@'%';
             GRANT ALL PRIVILEGES ON rwproxy.* TO 'monitor'@'%';
             CREATE USER 'reader'@'%' IDENTIFIED BY 'reader';
             GRANT SELECT ON {DATABASE}.* TO 'reader'@'%';"
        ))?;
        for replica in self.replicas() {
            replica.sql(&format!(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='repl',
                 MASTER_PASSWORD='repl', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1,
                 MASTER_SSL=1, MASTER_SSL_CA='{}', MASTER_SSL_VERIFY_SERVER_CERT=1;
                 START SLAVE;",
                self.primary().port,
                self.certs.ca()
            ))?;
        }
        self.wait_replicated()
    }

    pub fn primary(&self) -> &Node {
        &self.nodes[0]
    }

    pub fn replicas(&self) -> &[Node] {
        &self.nodes[1..]
    }

    /// Waits until every running replica has applied everything the primary has written.
    pub fn wait_replicated(&self) -> Result<(), String> {
        let pos = self.primary().sql("SELECT @@gtid_binlog_pos")?.trim().to_string();
        for replica in self.replicas() {
            let waited = replica.sql(&format!("SELECT MASTER_GTID_WAIT('{pos}', 30)"))?;
            if waited.trim() != "0" {
                return Err(format!("{} did not reach {pos}: {waited}", replica.name));
            }
        }
        Ok(())
    }

    /// Makes `replica` apply events `seconds` late (`MASTER_DELAY`); 0 undoes it.
    pub fn delay_replica(&self, replica: usize, seconds: u32) -> Result<(), String> {
        self.replicas()[replica]
            .sql(&format!("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = {seconds}; START SLAVE;"))
            .map(|_| ())
    }

    /// A config for rwproxy in front of this cluster.
    pub fn proxy_config(&self, listen: &str) -> String {
        let mut out = String::from(
            "[monitor]\nuser = \"monitor\"\npassword = \"monitor\"\ninterval = \"500ms\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n",
        );
        out += &format!(
            "[mysql]\nlisten = \"{listen}\"\nconnect_timeout = \"1s\"\n\n[[mysql.users]]\nname = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\"\n\n[[mysql.users]]\nname = \"reader\"\npassword = \"reader\"\n"
        );
        for node in &self.nodes {
            let role = if node.replica { "replica" } else { "primary" };
            out.push_str(&format!(
                "\n[[mysql.backends]]\nname = \"{}\"\naddress = \"{}\"\nrole = \"{role}\"\n",
                node.name,
                node.address()
            ));
        }
        out
    }

    /// Stops every server now and removes the directory.
    pub fn stop(&self) {
        if let Ok(mut guardian) = self.guardian.lock()
            && let Some((mut child, stdin)) = guardian.take()
        {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// Waits until `ready` says yes, failing early with the server's error log when its process has
/// exited, or after `limit`.
pub fn wait_ready(
    name: &str,
    datadir: &Path,
    process: &Mutex<Option<Child>>,
    limit: Duration,
    ready: impl Fn() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        if let Some(child) = process.lock().map_err(|e| e.to_string())?.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            let log = std::fs::read_to_string(datadir.join("error.log")).unwrap_or_default();
            return Err(format!("{name} exited with {status}:\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{name} did not become ready in {limit:?}"))
}

/// The guardian waits for its stdin to close, then kills every mariadbd running from `base`
/// and removes it.
pub fn spawn_guardian(base: &Path) -> Result<(Child, ChildStdin), String> {
    let script = r#"read _ignored; pkill -KILL -f -- "--datadir=$1/" ; sleep 0.5; rm -rf -- "$1""#;
    let mut child = Command::new("sh")
        .args(["-c", script, "guardian"])
        .arg(base)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the guardian: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("guardian has no stdin")?;
    let _ = stdin.flush();
    Ok((child, stdin))
}
