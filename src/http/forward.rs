//! Forwarding one request: body limit, forwarding headers, server choice, redispatch and retry.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::Balancer;
use super::dispatch::{self, Attempts, InFlight, idempotent, record};
use super::headers::{ClientAddr, add_forwarding, strip_for_forwarding, strip_hop_by_hop, wants_upgrade};
use super::upstream::{Lease, UpstreamError, Upstreams};

pub type Body = BoxBody<Bytes, hyper::Error>;

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("{text}\n"))).map_err(|never| match never {}).boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// How a request ended, for the access log (after HAProxy's termination states: the side
/// that ended it, then the phase).
struct Ending {
    response: Response<Body>,
    server: Option<usize>,
    termination: &'static str,
}

fn ended(status: StatusCode, text: &str, server: Option<usize>, termination: &'static str) -> Ending {
    Ending { response: plain(status, text), server, termination }
}

/// Forwards one request and writes its access-log line.
pub async fn handle(
    req: Request<Incoming>,
    client: &ClientAddr,
    balancer: &Balancer,
    upstreams: &Arc<Upstreams>,
) -> Response<Body> {
    let started = Instant::now();
    // The request line is kept only when the access log will print it.
    let logged = dispatch::logging().then(|| (req.method().clone(), req.uri().path().to_string()));
    // One deadline for the whole request, checked by every wait inside (body, queue, server):
    // one timer per wait instead of an extra one around the request.
    let deadline = tokio::time::Instant::from_std(started) + balancer.config.request_timeout;
    let ending = forward(req, client, balancer, upstreams, deadline).await;
    let status = ending.response.status().as_u16();
    let request = logged.as_ref().map(|(method, path)| (method, path.as_str()));
    record(balancer, client, ending.server, status, started, request, ending.termination);
    ending.response
}

async fn forward(
    mut req: Request<Incoming>,
    client: &ClientAddr,
    balancer: &Balancer,
    upstreams: &Arc<Upstreams>,
    deadline: tokio::time::Instant,
) -> Ending {
    let timed_out = || ended(StatusCode::GATEWAY_TIMEOUT, "the request timed out", None, "sT");
    let client_upgrade = wants_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // The body is held until the response: on the balancer's shared budget.
    let mut held = balancer.bodies.hold();
    let no_room =
        || ended(StatusCode::SERVICE_UNAVAILABLE, "request bodies in memory are at their limit", None, "RR");
    let announced =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if let Some(n) = announced.filter(|n| *n <= balancer.config.max_body_size)
        && !held.grow(n)
    {
        return no_room();
    }
    let body = if hyper::body::Body::is_end_stream(&body) {
        Bytes::new()
    } else {
        match tokio::time::timeout_at(deadline, Limited::new(body, balancer.config.max_body_size).collect())
            .await
        {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                return ended(StatusCode::PAYLOAD_TOO_LARGE, "request body too large", None, "PR");
            }
            Ok(Err(_)) => {
                return ended(StatusCode::BAD_REQUEST, "could not read the request body", None, "CR");
            }
            Err(_) => return timed_out(),
        }
    };
    if body.len() > held.bytes() && !held.grow(body.len() - held.bytes()) {
        return no_room();
    }
    // An h2 request carries the host in its URI only; servers behind us speak HTTP/1.1.
    if !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    strip_for_forwarding(&mut parts.headers);
    add_forwarding(&mut parts.headers, client);
    let mut client_upgrade = client_upgrade;
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
    let mut retried = false;
    let mut attempts = Attempts::new(balancer);
    loop {
        let (index, in_flight) = match attempts.next(balancer, deadline).await {
            Ok(Some(next)) => next,
            Ok(None) => break,
            Err(index) => {
                return ended(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "every server is at its connection limit",
                    Some(index),
                    "sQ",
                );
            }
        };
        let server = &balancer.servers.list[index];
        // Origin form: the server gets the path; Host stays the client's.
        let uri = hyper::Uri::from(path.clone());
        let mut upstream = Request::new(Full::new(body.clone()));
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = uri;
        *upstream.version_mut() = hyper::Version::HTTP_11;
        *upstream.headers_mut() = parts.headers.clone();
        let connect_timeout = balancer.config.connect_timeout;
        let until = dispatch::attempt_deadline(balancer.config.response_timeout, deadline);
        let sent = tokio::time::timeout_at(until, upstreams.send(server, upstream, connect_timeout)).await;
        match sent {
            Ok(Ok((mut response, lease))) => {
                if response.status() == StatusCode::SWITCHING_PROTOCOLS
                    && let Some(client_side) = client_upgrade.take()
                {
                    splice_upgraded(client_side, hyper::upgrade::on(&mut response));
                    lease.upgraded();
                    drop(in_flight);
                    return Ending {
                        response: response.map(|b| b.boxed()),
                        server: Some(index),
                        termination: "--",
                    };
                }
                let (mut head, body) = response.into_parts();
                strip_hop_by_hop(&mut head.headers);
                let termination = if retried { "-R" } else { "--" };
                // The request counts as in flight until its body has been relayed.
                let body = Guarded { inner: body.boxed(), _in_flight: in_flight, _lease: lease };
                return Ending {
                    response: Response::from_parts(head, body.boxed()),
                    server: Some(index),
                    termination,
                };
            }
            // Nothing reached the server: any request may go to the next one.
            Ok(Err(e @ UpstreamError::Connect(_))) => {
                server.observe(false, &e.to_string());
                server.metrics.retries.increment(1);
            }
            Ok(Err(e)) => {
                server.observe(false, &format!("request failed: {e}"));
                if !idempotent(&parts.method) || retried {
                    return ended(StatusCode::BAD_GATEWAY, "the server failed to answer", Some(index), "SH");
                }
                server.metrics.retries.increment(1);
                retried = true;
            }
            Err(_) => {
                return ended(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the server did not answer in time",
                    Some(index),
                    "sH",
                );
            }
        }
    }
    ended(StatusCode::SERVICE_UNAVAILABLE, "no server available", None, "SC")
}

/// A response body that keeps its request in flight until the body ends or is dropped.
struct Guarded {
    inner: Body,
    _in_flight: InFlight,
    /// The server connection, lent until the body has been relayed.
    _lease: Lease,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// After a 101, the client's and the server's connections are joined byte for byte until either
/// side closes.
fn splice_upgraded(client: hyper::upgrade::OnUpgrade, server: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (client, server) = match tokio::try_join!(client, server) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut client = hyper_util::rt::TokioIo::new(client);
        let mut server = hyper_util::rt::TokioIo::new(server);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
            tracing::debug!(error = %e, "upgraded connection ended");
        }
    });
}
