//! The `rwproxy` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rwproxy::config::{Config, ConfigError};

/// A MySQL/MariaDB proxy that splits reads from writes over a primary and its replicas.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Run the proxy with this config file.
    #[arg(long, value_name = "PATH", required_unless_present = "check_config")]
    config: Option<PathBuf>,
    /// Validate this config file and exit: 0 when valid, 2 (listing every problem) otherwise.
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    check_config: Option<PathBuf>,
    /// With --check-config: print the effective config (defaults filled in, `${VAR}`s
    /// substituted, passwords masked).
    #[arg(long, requires = "check_config")]
    print_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = args.check_config {
        return match Config::load(&path) {
            Ok(config) => {
                if args.print_config {
                    print!("{}", config.to_masked_toml());
                } else {
                    println!("{}: ok", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => report(&path, &e),
        };
    }
    let Some(path) = args.config else {
        return ExitCode::from(2);
    };
    let threads = match Config::load(&path) {
        Ok(config) => config.worker_threads,
        Err(e) => return report(&path, &e),
    };
    // Colours only on a terminal: a log file or journal gets plain text.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colours)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // Like HAProxy's nbthread: 0 = one worker per core; 1 = everything on one thread, which
    // saves cross-thread wake-ups where other processes share the cores.
    let runtime = match threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rwproxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(path))
}

async fn run(path: PathBuf) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    let proxy = match rwproxy::proxy::start_from_file(&path).await {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("rwproxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (Ok(mut term), Ok(mut hup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup())) else {
        eprintln!("rwproxy: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => {
                // Errors are logged by the reloader's caller here; the old config keeps running.
                if let Err(e) = proxy.reloader.reload_file() {
                    tracing::error!(error = %e, "reload rejected; the running configuration stays");
                }
            }
        }
    }
    let left = proxy.shutdown().await;
    tracing::info!(sessions_closed = left, "stopped");
    ExitCode::SUCCESS
}

fn report(path: &std::path::Path, error: &ConfigError) -> ExitCode {
    eprintln!("{}: invalid config", path.display());
    for line in error.to_string().lines() {
        eprintln!("  {line}");
    }
    ExitCode::from(2)
}
