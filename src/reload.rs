//! Configuration reload (SIGHUP, `POST /reload`): parse, validate, diff, swap. A new
//! configuration is built beside the running one and swapped in whole; sessions move to it at
//! their next transaction boundary and HTTP requests already running finish where they are, so
//! nothing is dropped. An invalid file changes nothing.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::backend::Backends;
use crate::config::{Config, ConfigError};
use crate::http::{self, HttpTier};
use crate::router::Router;
use crate::sql_tier::Shared;
use crate::sql_tier::SqlTier;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("rwproxy was started without a config file; there is nothing to reload")]
    NoFile,
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0} cannot change without a restart")]
    NeedsRestart(&'static str),
    #[error("{0}")]
    Http(#[from] http::ReloadError),
    #[error("another reload is running")]
    Busy,
    #[error("mysql.tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Applies new configurations to a running proxy, one at a time.
#[derive(Debug)]
pub struct Reloader {
    path: Option<PathBuf>,
    sql: Arc<SqlTier>,
    http: Option<Arc<HttpTier>>,
    serial: Mutex<()>,
}

impl Reloader {
    pub fn new(path: Option<PathBuf>, sql: Arc<SqlTier>, http: Option<Arc<HttpTier>>) -> Reloader {
        Reloader { path, sql, http, serial: Mutex::new(()) }
    }

    /// Reads the config file again and applies it; returns what changed.
    pub fn reload_file(&self) -> Result<Vec<String>, ReloadError> {
        let result = match self.path.as_ref() {
            Some(path) => Config::load(path).map_err(ReloadError::from).and_then(|c| self.swap(c)),
            None => Err(ReloadError::NoFile),
        };
        self.sql.current().metrics.reload(result.is_ok());
        result
    }

    /// Applies `config`; on any error the running configuration stays as it was.
    pub fn apply(&self, config: Config) -> Result<Vec<String>, ReloadError> {
        let result = self.swap(config);
        self.sql.current().metrics.reload(result.is_ok());
        result
    }

    fn swap(&self, config: Config) -> Result<Vec<String>, ReloadError> {
        let _serial = self.serial.try_lock().map_err(|_| ReloadError::Busy)?;
        let old = self.sql.current();
        check_fixed(&old.config, &config)?;
        let changes = describe_changes(&old.config, &config);
        let backends = Arc::new(Backends::reconfigured(&config, Some(old.router.backends())));
        let metrics = Arc::new(old.metrics.reconfigured(&backends));
        let router = Arc::new(Router::from_config(backends.clone(), &config));
        // Everything that can fail comes before anything changes.
        let shared = Shared::new(
            config,
            router,
            metrics.clone(),
            old.server_version.clone(),
            (old.caps, old.mariadb_caps),
        )?;
        if let (Some(tier), Some(http_config)) = (&self.http, &shared.config.http) {
            tier.reload(http_config.clone())?;
        }
        let monitor = crate::monitor::spawn(&shared.config, backends, metrics);
        self.sql.replace(shared, monitor);
        tracing::info!(changes = %changes.join("; "), "configuration reloaded");
        Ok(changes)
    }
}

/// Listeners are bound once; changing them needs a restart.
fn check_fixed(old: &Config, new: &Config) -> Result<(), ReloadError> {
    if old.worker_threads != new.worker_threads {
        return Err(ReloadError::NeedsRestart("worker_threads"));
    }
    if old.mysql.listen.get_ref() != new.mysql.listen.get_ref() {
        return Err(ReloadError::NeedsRestart("mysql.listen"));
    }
    let admin = |c: &Config| c.admin.as_ref().map(|a| a.listen.get_ref().clone());
    if admin(old) != admin(new) {
        return Err(ReloadError::NeedsRestart("admin.listen"));
    }
    if old.http.is_some() != new.http.is_some() {
        return Err(ReloadError::NeedsRestart("the [http] section (added or removed)"));
    }
    Ok(())
}

/// What a reload changes, one line per backend or HTTP server, for the log and the answer.
pub fn describe_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    let old_backends: Vec<(String, String)> =
        old.backends().map(|b| (b.name.clone(), format!("{b:?}"))).collect();
    let new_backends: Vec<(String, String)> =
        new.backends().map(|b| (b.name.clone(), format!("{b:?}"))).collect();
    diff_named("backend", &old_backends, &new_backends, &mut changes);
    let servers = |c: &Config| -> Vec<(String, String)> {
        c.http
            .iter()
            .flat_map(|h| h.servers.iter())
            .map(|s| (s.get_ref().name.clone(), format!("{:?}", s.get_ref())))
            .collect()
    };
    diff_named("HTTP server", &servers(old), &servers(new), &mut changes);
    let users = |c: &Config| c.mysql.users.iter().map(|u| format!("{:?}", u.get_ref())).collect::<Vec<_>>();
    if users(old) != users(new) {
        changes.push("users changed".into());
    }
    if format!("{:?}", old.monitor) != format!("{:?}", new.monitor) {
        changes.push("monitor settings changed".into());
    }
    if changes.is_empty() {
        changes.push("no backend, server, user or monitor changes".into());
    }
    changes
}

fn diff_named(what: &str, old: &[(String, String)], new: &[(String, String)], out: &mut Vec<String>) {
    for (name, desc) in new {
        match old.iter().find(|(n, _)| n == name) {
            None => out.push(format!("{what} {name} added")),
            Some((_, before)) if before != desc => out.push(format!("{what} {name} changed: {desc}")),
            Some(_) => {}
        }
    }
    for (name, _) in old {
        if !new.iter().any(|(n, _)| n == name) {
            out.push(format!("{what} {name} removed"));
        }
    }
}
