//! An Oracle MySQL source and a GTID replica as local processes, from the private prefix that
//! `scripts/mysql-prefix.sh` unpacks (Debian's MySQL 9.7 build): the MySQL profile of the suite.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::certs::Certs;

pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app";
pub const DATABASE: &str = "appdb";

/// The prefix: `RWPROXY_MYSQL_PREFIX`, else `target/mysql-prefix`.
pub fn prefix() -> PathBuf {
    std::env::var_os("RWPROXY_MYSQL_PREFIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mysql-prefix"))
}

/// A program of the prefix, started through the prefix's own dynamic loader.
pub fn program(name: &str) -> Command {
    let prefix = prefix();
    let lib = prefix.join("usr/lib/x86_64-linux-gnu");
    let path = ["usr/sbin", "usr/bin"].iter().map(|d| prefix.join(d).join(name)).find(|p| p.exists());
    let mut cmd = Command::new(lib.join("ld-linux-x86-64.so.2"));
    cmd.arg("--library-path").arg(&lib).arg(path.unwrap_or_else(|| prefix.join(name)));
    cmd
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

#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub port: u16,
    pub server_id: u32,
    pub datadir: PathBuf,
    pub socket: PathBuf,
    replica: bool,
    tls: Certs,
    process: Mutex<Option<Child>>,
}

impl Node {
    fn start(&self) -> Result<(), String> {
        let prefix = prefix();
        let d = self.datadir.display();
        let mut cmd = program("mysqld");
        cmd.arg("--no-defaults")
            .arg(format!("--basedir={}", prefix.join("usr").display()))
            .arg(format!("--lc-messages-dir={}", prefix.join("usr/share/mysql").display()))
            .arg(format!("--plugin-dir={}", prefix.join("usr/lib/mysql/plugin").display()))
            .arg(format!("--datadir={d}"))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!("--pid-file={d}/mysqld.pid"))
            .arg(format!("--log-error={d}/error.log"))
            .arg(format!("--server-id={}", self.server_id))
            .args(["--gtid-mode=ON", "--enforce-gtid-consistency=ON", "--log-bin=binlog", "--mysqlx=OFF"])
            .args(["--skip-name-resolve", "--local-infile=1", "--max-allowed-packet=256M"])
            .args(["--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=2", "--sync-binlog=0"])
            .args(["--max-connections=500", "--user=root"])
            .arg(format!("--secure-file-priv={d}"))
            .arg(format!("--ssl-ca={}", self.tls.ca()))
            .arg(format!("--ssl-cert={}", self.tls.cert("mariadb")))
            .arg(format!("--ssl-key={}", self.tls.key("mariadb")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.replica {
            cmd.args(["--read-only=ON", "--super-read-only=ON"]);
        }
        let child = cmd.spawn().map_err(|e| format!("cannot start mysqld: {e}"))?;
        *self.process.lock().map_err(|e| e.to_string())? = Some(child);
        super::cluster::wait_ready(&self.name, &self.datadir, &self.process, Duration::from_secs(90), || {
            self.sql("SELECT 1").is_ok()
        })
    }

    /// Runs SQL as root over the unix socket; returns tab-separated rows without headers.
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        run(program("mysql").arg("--no-defaults").arg(format!("--socket={}", self.socket.display())).args([
            "-uroot",
            "--batch",
            "--skip-column-names",
            "-e",
            sql,
        ]))
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends a signal (STOP, CONT, …) to the server.
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        let guard = self.process.lock().map_err(|e| e.to_string())?;
        let child = guard.as_ref().ok_or("not running")?;
        run(Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string())).map(|_| ())
    }
}

#[derive(Debug)]
pub struct MysqlCluster {
    pub base: PathBuf,
    pub certs: Certs,
    pub nodes: Vec<Node>,
    guardian: Mutex<Option<(Child, ChildStdin)>>,
}

impl MysqlCluster {
    /// A source and one replica under a fresh temporary directory.
    pub fn start() -> Result<MysqlCluster, String> {
        if !prefix().join("usr/sbin/mysqld").exists() {
            return Err(format!("no MySQL in {}: run scripts/mysql-prefix.sh", prefix().display()));
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let base =
            std::env::temp_dir().join(format!("rwproxy-mysql-{}-{}", std::process::id(), stamp % 1_000_000));
        std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        let guardian = super::cluster::spawn_guardian(&base)?;
        let certs = Certs::generate(&base.join("tls"), &["mariadb", "rwproxy"])?;
        let template = base.join("template");
        run(program("mysqld")
            .arg("--no-defaults")
            .arg("--initialize-insecure")
            .arg(format!("--basedir={}", prefix().join("usr").display()))
            .arg(format!("--lc-messages-dir={}", prefix().join("usr/share/mysql").display()))
            .arg(format!("--datadir={}", template.display()))
            .arg(format!("--log-error={}", base.join("init.log").display()))
            .arg("--user=root"))?;
        let mut nodes = Vec::new();
        for (i, name) in ["source", "replica"].iter().enumerate() {
            let datadir = base.join(name);
            run(Command::new("cp").arg("-a").arg(&template).arg(&datadir))?;
            // Each server makes its own UUID (GTIDs are keyed by it).
            let _ = std::fs::remove_file(datadir.join("auto.cnf"));
            let mut port = free_port()?;
            while nodes.iter().any(|n: &Node| n.port == port) {
                port = free_port()?;
            }
            nodes.push(Node {
                name: name.to_string(),
                port,
                server_id: i as u32 + 1,
                socket: datadir.join("mysqld.sock"),
                datadir,
                replica: i > 0,
                tls: certs.clone(),
                process: Mutex::new(None),
            });
        }
        let mut cluster = MysqlCluster { base, certs, nodes, guardian: Mutex::new(Some(guardian)) };
        for node in &mut cluster.nodes {
            // Another process may take the free port before the server binds it: then once more
            // on a new one.
            if let Err(first) = node.start() {
                if !first.contains("Address already in use") {
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
        // Users as MySQL 9 makes them by default: caching_sha2_password.
        self.source().sql(&format!(
            "CREATE USER 'repl'@'%' IDENTIFIED BY 'repl';
             GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';
             CREATE DATABASE {DATABASE};
             CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}';
             GRANT ALL PRIVILEGES ON {DATABASE}.* TO '{APP_USER}'@'%';
             CREATE USER 'monitor'@'%' IDENTIFIED BY 'monitor';
             GRANT REPLICATION CLIENT ON *.* TO 'monitor'@'%';
             GRANT ALL PRIVILEGES ON rwproxy.* TO 'monitor'@'%';"
        ))?;
        self.replica().sql(&format!(
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST='127.0.0.1', SOURCE_PORT={}, SOURCE_USER='repl',
             SOURCE_PASSWORD='repl', SOURCE_AUTO_POSITION=1, SOURCE_SSL=1, SOURCE_CONNECT_RETRY=1;
             START REPLICA;",
            self.source().port
        ))?;
        self.wait_replicated()
    }

    pub fn source(&self) -> &Node {
        &self.nodes[0]
    }

    pub fn replica(&self) -> &Node {
        &self.nodes[1]
    }

    /// Waits until the replica has applied everything the source has written.
    pub fn wait_replicated(&self) -> Result<(), String> {
        let executed = self.source().sql("SELECT @@gtid_executed")?.trim().replace("\\n", "");
        let waited = self.replica().sql(&format!("SELECT WAIT_FOR_EXECUTED_GTID_SET('{executed}', 30)"))?;
        if waited.trim() != "0" {
            return Err(format!("the replica did not reach {executed}: {waited}"));
        }
        Ok(())
    }

    /// A config for rwproxy in front of this cluster: TLS to both servers (caching_sha2 full
    /// authentication happens inside it).
    pub fn proxy_config(&self, listen: &str) -> String {
        let mut out = String::from(
            "[monitor]\nuser = \"monitor\"\npassword = \"monitor\"\ninterval = \"500ms\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n",
        );
        out += &format!(
            "[mysql]\nlisten = \"{listen}\"\nconnect_timeout = \"2s\"\n\n[[mysql.users]]\nname = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\"\n"
        );
        for node in &self.nodes {
            let role = if node.replica { "replica" } else { "primary" };
            out.push_str(&format!(
                "\n[[mysql.backends]]\nname = \"{}\"\naddress = \"{}\"\nrole = \"{role}\"\ntls = {{ ca = \"{}\" }}\n",
                node.name,
                node.address(),
                self.certs.ca()
            ));
        }
        out
    }
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}
