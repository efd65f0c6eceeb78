//! The floor of a TCP proxy's cost on this machine: a relay that only copies bytes. Each client
//! gets one backend connection (round robin at connect) and the bytes flow both ways on one
//! current-thread runtime — no parsing, routing, pooling or tracking. `benches/sql-vs-haproxy.sh`
//! runs it in rwproxy's place with `RELAY_FLOOR=1`, to show what share of a query's CPU is the
//! kernel's (the same for any proxy) and what share is the proxy's own.
//!
//!   cargo run --release --example byte_relay -- LISTEN BACKEND [BACKEND …]

use std::net::SocketAddr;

/// Clients served before the relay exits (a bench opens a few dozen).
const MAX_CLIENTS: usize = 1_000_000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().ok_or("usage: byte_relay LISTEN BACKEND [BACKEND …]")?.parse()?;
    let backends = args.map(|a| a.parse()).collect::<Result<Vec<SocketAddr>, _>>()?;
    if backends.is_empty() {
        return Err("at least one backend".into());
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    for next in 0..MAX_CLIENTS {
        let (client, _) = listener.accept().await?;
        let backend = backends[next % backends.len()];
        tokio::spawn(async move {
            if let Err(e) = relay(client, backend).await {
                eprintln!("byte_relay: {e}");
            }
        });
    }
    Ok(())
}

async fn relay(mut client: tokio::net::TcpStream, backend: SocketAddr) -> std::io::Result<()> {
    let mut server = tokio::net::TcpStream::connect(backend).await?;
    // As rwproxy does: small request/response packets go out at once.
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await.map(|_| ())
}
