//! What both forwarding paths (HTTP/1.x and h2) share: which requests may be retried, the
//! connection slots of `max_connections`, the in-flight count, and the metrics and access log
//! of a finished request.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use hyper::Method;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::headers::ClientAddr;
use super::{Balancer, HttpServer};

/// Requests a server may receive twice without harm (RFC 9110 §9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The servers one request may try, best first, and the slot of each attempt.
pub struct Attempts {
    order: Vec<usize>,
    at: usize,
}

impl Attempts {
    pub fn new(balancer: &Balancer) -> Attempts {
        Attempts { order: balancer.servers.order(), at: 0 }
    }

    /// The next server with its slot taken and the request counted in flight there; `Ok(None)`
    /// when every server was tried; `Err` with the server waited for when all were full until
    /// `queue_timeout`.
    pub async fn next(
        &mut self,
        balancer: &Balancer,
        deadline: tokio::time::Instant,
    ) -> Result<Option<(usize, InFlight)>, usize> {
        if self.at >= self.order.len() {
            return Ok(None);
        }
        let permit = take_slot(balancer, &mut self.order, self.at, deadline).await?;
        let index = self.order[self.at];
        self.at += 1;
        Ok(Some((index, InFlight::start(balancer.servers.list[index].clone(), permit))))
    }
}

/// The deadline of one attempt: the response timeout, within the request's own deadline.
pub fn attempt_deadline(
    response_timeout: std::time::Duration,
    request: tokio::time::Instant,
) -> tokio::time::Instant {
    (tokio::time::Instant::now() + response_timeout).min(request)
}

/// Takes a connection slot for `order[at]`. A server at its limit is swapped for a later one
/// with room; when every one is full the request waits for the first, up to `queue_timeout`.
/// Err carries the server that was waited for.
async fn take_slot(
    balancer: &Balancer,
    order: &mut [usize],
    at: usize,
    deadline: tokio::time::Instant,
) -> Result<Option<OwnedSemaphorePermit>, usize> {
    let list = &balancer.servers.list;
    let slots = |i: usize| list[i].slots.clone();
    let Some(first) = slots(order[at]) else {
        return Ok(None);
    };
    if let Ok(permit) = first.clone().try_acquire_owned() {
        return Ok(Some(permit));
    }
    for later in at + 1..order.len() {
        match slots(order[later]).map(Semaphore::try_acquire_owned) {
            None => {
                order.swap(at, later);
                return Ok(None);
            }
            Some(Ok(permit)) => {
                order.swap(at, later);
                return Ok(Some(permit));
            }
            Some(Err(_)) => {}
        }
    }
    let until = (tokio::time::Instant::now() + balancer.config.queue_timeout).min(deadline);
    match tokio::time::timeout_at(until, first.acquire_owned()).await {
        Ok(Ok(permit)) => Ok(Some(permit)),
        _ => Err(order[at]),
    }
}

/// One request on a server: counted in `active` (least connections reads it) and holding its
/// `max_connections` slot until dropped.
pub struct InFlight {
    server: Arc<HttpServer>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl InFlight {
    fn start(server: Arc<HttpServer>, permit: Option<OwnedSemaphorePermit>) -> InFlight {
        server.active.fetch_add(1, Ordering::Relaxed);
        server.metrics.active.increment(1.0);
        InFlight { server, _permit: permit }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.server.active.fetch_sub(1, Ordering::Relaxed);
        self.server.metrics.active.decrement(1.0);
    }
}

/// Counts one finished request in its server's metrics and writes its access-log line
/// (HAProxy-like: client, server, request, status, time to the response head, termination).
/// `request` is only given when the access log is enabled.
pub fn record(
    balancer: &Balancer,
    client: &ClientAddr,
    server: Option<usize>,
    status: u16,
    started: Instant,
    request: Option<(&Method, &str)>,
    termination: &str,
) {
    let took = started.elapsed();
    let server = server.and_then(|i| balancer.servers.list.get(i));
    if let Some(server) = server {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        server.metrics.responses[class].increment(1);
        server.metrics.duration.record(took.as_secs_f64());
    }
    if let Some((method, path)) = request {
        tracing::info!(
            target: "rwproxy::access",
            "{} {} \"{method} {path}\" {} {:.1}ms {}",
            client.peer,
            server.map_or("-", |s| s.name.as_str()),
            status,
            took.as_secs_f64() * 1000.0,
            termination
        );
    }
}

/// Whether the access log is on (its arguments are only built when it is).
pub fn logging() -> bool {
    tracing::enabled!(target: "rwproxy::access", tracing::Level::INFO)
}
