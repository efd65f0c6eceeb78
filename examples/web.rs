//! A tiny web server for demos and benchmarks: answers every path with its name, `/health`
//! with 200.
//!
//! `cargo run --release --example web -- 127.0.0.1:9001 web1`

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr =
        args.next().unwrap_or_else(|| "127.0.0.1:9001".into()).parse().map_err(std::io::Error::other)?;
    let name: &'static str = Box::leak(args.next().unwrap_or_else(|| "web".into()).into_boxed_str());
    let listener = TcpListener::bind(addr).await?;
    println!("{name} listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(move |_req: Request<hyper::body::Incoming>| async move {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(name))))
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
