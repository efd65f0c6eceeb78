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

/// What a reload changes, for the log and the answer: one line per setting that changed
/// (`mysql.routing.consistency: "session" → "user"`), one per list entry added or removed
/// (`mysql.backends[replica3] added`); secrets are named, never shown.
pub fn describe_changes(old: &Config, new: &Config) -> Vec<String> {
    let (old, new) = (old.settings(), new.settings());
    let entry = |key: &str| key.find(']').map(|end| key[..=end].to_string());
    let mut changes = Vec::new();
    let mut whole: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for (here, there, verb) in [(&new, &old, "added"), (&old, &new, "removed")] {
        for key in here.keys().filter(|k| !there.contains_key(*k)) {
            // A list entry that is new (or gone) as a whole is one line.
            match entry(key) {
                Some(e) if !there.keys().any(|k| k.starts_with(&e)) => {
                    if whole.insert(format!("{e} {verb}")) {
                        changes.push(format!("{e} {verb}"));
                    }
                }
                _ => changes.push(format!("{key} {verb}")),
            }
        }
    }
    for (key, (before, secret)) in &old {
        if let Some((after, _)) = new.get(key)
            && after != before
        {
            if *secret {
                changes.push(format!("{key} changed"));
            } else {
                changes.push(format!("{key} changed: {before} → {after}"));
            }
        }
    }
    if changes.is_empty() {
        changes.push("no setting changed".into());
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[monitor]
user = "monitor"
password = "secret1"

[mysql]
listen = "127.0.0.1:0"

[[mysql.users]]
name = "app"
password = "app"

[[mysql.backends]]
name = "primary"
address = "127.0.0.1:3306"
role = "primary"
"#;

    #[test]
    fn every_changed_setting_is_named_and_secrets_are_not_shown() {
        let old = Config::from_toml(BASE).expect("config");
        let text = BASE
            .replace("password = \"secret1\"", "password = \"secret2\"\ndetect_primary = true\nrise = 5")
            .replace(
                "listen = \"127.0.0.1:0\"\n",
                "listen = \"127.0.0.1:0\"\n[mysql.routing]\nconsistency = \"global\"\n",
            )
            + "\n[[mysql.backends]]\nname = \"replica1\"\naddress = \"127.0.0.1:3307\"\nrole = \"replica\"\n";
        let new = Config::from_toml(&text).expect("config");
        let changes = describe_changes(&old, &new);
        let has = |line: &str| changes.iter().any(|c| c == line);
        assert!(has("monitor.detect_primary changed: false → true"), "{changes:?}");
        assert!(
            has("monitor.rise changed: 2 → 5")
                || changes.iter().any(|c| c.starts_with("monitor.rise changed:")),
            "{changes:?}"
        );
        assert!(has("mysql.routing.consistency changed: \"user\" → \"global\""), "{changes:?}");
        assert!(has("monitor.password changed"), "{changes:?}");
        assert!(has("mysql.backends[replica1] added"), "{changes:?}");
        assert!(!changes.iter().any(|c| c.contains("secret")), "{changes:?}");
        assert_eq!(describe_changes(&old, &old), vec!["no setting changed".to_string()]);
    }
}
