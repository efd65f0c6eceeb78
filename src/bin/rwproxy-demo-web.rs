//! The demo web app of the reference topology: each page load writes a visit and reads the
//! visit count through rwproxy, so one request exercises both tiers (HTTP balancer → web
//! server → SQL proxy → primary for the write, read pool for the read).
//!
//! `rwproxy-demo-web --listen 127.0.0.1:8001 --name web1 --database mysql://app:app@127.0.0.1:6033/appdb`
//!
//! `/` answers with the server's name, the count and the server ids that took the write and
//! the read; `/health` with 200 (the web server itself is up, whatever the database does).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mysql_async::prelude::*;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(about = "rwproxy's demo web app: writes and reads through rwproxy on every page load")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8001")]
    listen: SocketAddr,
    #[arg(long, default_value = "web")]
    name: String,
    /// mysql://user:password@host:port/database of rwproxy's SQL listener.
    #[arg(long, env = "DATABASE_URL", default_value = "mysql://app:app@127.0.0.1:6033/appdb")]
    database: String,
}

struct App {
    name: String,
    pool: mysql_async::Pool,
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let opts = mysql_async::Opts::from_url(&args.database).map_err(|e| format!("--database: {e}"))?;
    // prefer_socket(false): the app must go through rwproxy's TCP port, not a local socket.
    let opts = mysql_async::OptsBuilder::from_opts(opts).prefer_socket(false);
    let app: &'static App = Box::leak(Box::new(App { name: args.name, pool: mysql_async::Pool::new(opts) }));
    // Listen first: a port that cannot be bound fails the start at once, and `/health` answers
    // while the database is still starting.
    let listener = TcpListener::bind(args.listen).await.map_err(|e| format!("{}: {e}", args.listen))?;
    println!("{} listening on http://{}", app.name, listener.local_addr().map_err(|e| e.to_string())?);
    tokio::spawn(create_table(app));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(move |req| async move { Ok::<_, Infallible>(page(app, req).await) });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// The database may still be starting (compose starts everything at once): retry for a
/// minute, then go on and let page loads report the error.
async fn create_table(app: &'static App) {
    const DDL: &str = "CREATE TABLE IF NOT EXISTS demo_visits \
                       (id BIGINT AUTO_INCREMENT PRIMARY KEY, web VARCHAR(64), at TIMESTAMP(6) DEFAULT NOW(6))";
    for attempt in 1..=60 {
        match app.pool.get_conn().await {
            Ok(mut conn) => match conn.query_drop(DDL).await {
                Ok(()) => return,
                Err(e) => eprintln!("{}: creating demo_visits failed: {e}", app.name),
            },
            Err(e) if attempt % 10 == 1 => eprintln!("{}: waiting for the database: {e}", app.name),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn page(app: &App, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/health" => (StatusCode::OK, "ok\n".to_string()),
        "/" => match visit(app).await {
            Ok(text) => (StatusCode::OK, text),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{}: database error: {e}\n", app.name)),
        },
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

async fn visit(app: &App) -> Result<String, mysql_async::Error> {
    let mut conn = app.pool.get_conn().await?;
    // A write (rwproxy sends it to the primary) inside a transaction that also reads the
    // primary's id; then a plain read, which rwproxy balances over the read pool.
    let mut tx = conn.start_transaction(mysql_async::TxOpts::default()).await?;
    tx.exec_drop("INSERT INTO demo_visits (web) VALUES (?)", (&app.name,)).await?;
    let wrote_on: Option<u32> = tx.query_first("SELECT @@server_id").await?;
    tx.commit().await?;
    let read: Option<(u64, u32)> = conn.query_first("SELECT COUNT(*), @@server_id FROM demo_visits").await?;
    let (count, read_on) = read.unwrap_or_default();
    Ok(format!(
        "served by {}\nvisits: {count}\nwrite on server_id {}\nread on server_id {read_on}\n",
        app.name,
        wrote_on.unwrap_or_default()
    ))
}
