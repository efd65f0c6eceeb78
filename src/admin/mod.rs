//! The admin HTTP listener: `/metrics` (Prometheus), `/status` (JSON), `/health` (for
//! orchestrators) and `/`, a self-contained status page.

mod page;
mod status;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::backend::{Backends, State};
use crate::config::MonitorConfig;
use crate::http::HttpTier;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::router::Router;
use crate::sql_tier::SqlTier;

/// What the admin listener serves: the running tiers and the reloader.
#[derive(Debug)]
pub struct Admin {
    pub sql: Arc<SqlTier>,
    pub http: Option<Arc<HttpTier>>,
    pub reloader: Arc<Reloader>,
}

impl Admin {
    /// The current configuration's view, taken once per request.
    fn snapshot(&self) -> AdminState {
        let shared = self.sql.current();
        AdminState {
            router: shared.router.clone(),
            metrics: shared.metrics.clone(),
            monitor: shared.config.monitor.clone(),
            consistency: shared.config.mysql.routing.consistency,
            http: self.http.as_ref().map(|h| h.balancer()),
        }
    }
}

/// What the admin pages read.
#[derive(Debug)]
pub struct AdminState {
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    pub monitor: MonitorConfig,
    pub consistency: crate::config::Consistency,
    /// The HTTP balancer, when configured.
    pub http: Option<Arc<crate::http::Balancer>>,
}

impl AdminState {
    fn backends(&self) -> &Backends {
        self.router.backends()
    }
}

/// Serves admin requests until the task is aborted.
pub async fn serve(listener: TcpListener, state: Arc<Admin>) {
    let mut refusals = crate::accept::Refusals::default();
    loop {
        let (stream, peer) = crate::accept::next_connection(&listener, "admin").await;
        let current = state.sql.current();
        if let Some(admin) = &current.config.admin
            && !admin.firewall.permits(peer.ip())
        {
            current.metrics.refused_by_firewall("admin");
            refusals.refused("admin", peer);
            continue;
        }
        drop(current);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&req, &state, peer)) }
            });
            // A request head must arrive whole within the deadline (no slow-header hold).
            let mut builder = http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// Time a client has to send a request head.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An endpoint that changes the proxy.
type Change = fn(&Request<Incoming>, &Admin) -> Response<Full<Bytes>>;

fn route(req: &Request<Incoming>, admin: &Admin, peer: std::net::SocketAddr) -> Response<Full<Bytes>> {
    let config = admin.sql.current().config.admin.clone();
    let open = config.as_ref().is_none_or(|a| a.token.is_none());
    let host = req.headers().get(hyper::header::HOST).and_then(|v| v.to_str().ok());
    if open && !host_names_listener(host, config.as_ref().map_or(&[][..], |a| &a.host_names)) {
        let why = "the Host header does not name this listener (set admin.host_names, or admin.token)\n";
        return respond(StatusCode::FORBIDDEN, "text/plain", why.into());
    }
    let path = req.uri().path();
    // The endpoints that change the proxy: one access rule, POST only.
    let change: Option<Change> = match path {
        "/reload" => Some(reload),
        "/queries/reset" => Some(reset_queries),
        _ if path.starts_with("/backends/") => Some(backend_state),
        _ => None,
    };
    if let Some(change) = change {
        if let Err((status, why)) = write_allowed(req, admin, peer) {
            let mut response = respond(status, "text/plain", format!("{why}\n"));
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static("Bearer"),
                );
            }
            return response;
        }
        if req.method() != Method::POST {
            return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "POST only\n".into());
        }
        return change(req, admin);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    let state = &admin.snapshot();
    match req.uri().path() {
        "/metrics" => {
            respond(StatusCode::OK, "text/plain; version=0.0.4", state.metrics.render(state.backends()))
        }
        "/status" => respond(StatusCode::OK, "application/json", status::snapshot(state).to_string()),
        "/sessions" => {
            let list = status::sessions(&admin.sql.registry);
            respond(StatusCode::OK, "application/json", list.to_string())
        }
        "/queries" => queries(req, admin),
        "/health" => health(state),
        "/" => respond(StatusCode::OK, "text/html; charset=utf-8", page::render(state, &admin.sql)),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Whether a request's `Host` names this listener: an address (a name typed as an IP literal
/// cannot be rebound), `localhost`, or a configured name. DNS rebinding always comes with the
/// attacker's own name. No `Host` at all is not a browser's request, and passes.
fn host_names_listener(host: Option<&str>, names: &[String]) -> bool {
    let Some(host) = host else { return true };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.contains(']') && port.parse::<u16>().is_ok() => name,
        _ => host,
    };
    let name = name.trim_matches(['[', ']']);
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// A write endpoint needs the configured bearer token (compared in constant time), or, when
/// none is configured, a loopback peer; a browser request from another origin is refused
/// whatever it carries (a web page in the operator's browser must not reload the proxy).
/// Refusals: 403 for a cross-origin request or a remote peer without a token configured, 401
/// for a missing or wrong token.
fn write_allowed(
    req: &Request<Incoming>,
    admin: &Admin,
    peer: std::net::SocketAddr,
) -> Result<(), (StatusCode, &'static str)> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let host = header("host");
    let cross_origin = header("origin").is_some_and(|origin| {
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        Some(origin_host) != host
    });
    if cross_origin || header("sec-fetch-site").is_some_and(|s| s != "same-origin" && s != "none") {
        return Err((StatusCode::FORBIDDEN, "cross-origin requests may not change the proxy"));
    }
    let token = admin.sql.current().config.admin.as_ref().and_then(|a| a.token.clone());
    match token {
        Some(token) => {
            let given = header("authorization").and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
            let same: bool = subtle::ConstantTimeEq::ct_eq(given.as_bytes(), token.0.as_bytes()).into();
            if same {
                Ok(())
            } else {
                Err((StatusCode::UNAUTHORIZED, "a valid admin token (Authorization: Bearer …) is required"))
            }
        }
        None if peer.ip().is_loopback() => Ok(()),
        None => Err((StatusCode::FORBIDDEN, "set admin.token to allow this from other hosts")),
    }
}

/// `POST /reload`: 200 with the changes, or 400 with the reasons the running config stays.
fn reload(_req: &Request<Incoming>, admin: &Admin) -> Response<Full<Bytes>> {
    match admin.reloader.reload_file() {
        Ok(changes) => respond(StatusCode::OK, "text/plain", format!("reloaded\n{}\n", changes.join("\n"))),
        Err(e) => {
            tracing::warn!(error = %e, "reload rejected; the running configuration stays");
            respond(StatusCode::BAD_REQUEST, "text/plain", format!("reload rejected; nothing changed\n{e}\n"))
        }
    }
}

/// `POST /backends/<name>/drain` takes a backend out of the read rotation (HAProxy's `drain`,
/// ProxySQL's `OFFLINE_SOFT`): sessions pinned to it finish, its idle connections are closed
/// within a second; a drained primary still takes the writes. `POST /backends/<name>/ready`
/// puts it back. The state outlives reloads; a restart forgets it.
fn backend_state(req: &Request<Incoming>, admin: &Admin) -> Response<Full<Bytes>> {
    let rest = req.uri().path().trim_start_matches("/backends/");
    let Some((name, action)) = rest.rsplit_once('/') else {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "POST /backends/<name>/drain or /ready\n".into(),
        );
    };
    let drained = match action {
        "drain" => true,
        "ready" => false,
        _ => {
            return respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                "POST /backends/<name>/drain or /ready\n".into(),
            );
        }
    };
    let shared = admin.sql.current();
    let Some(backend) = shared.router.backends().named(name) else {
        return respond(StatusCode::NOT_FOUND, "text/plain", format!("no backend named {name:?}\n"));
    };
    let changed = backend.set_drained(drained);
    let body = serde_json::json!({
        "backend": backend.name,
        "admin_state": if drained { "drain" } else { "ready" },
        "changed": changed,
    });
    respond(StatusCode::OK, "application/json", body.to_string())
}

/// `POST /queries/reset`: the digests' counts start again from zero.
fn reset_queries(_req: &Request<Incoming>, admin: &Admin) -> Response<Full<Bytes>> {
    admin.sql.digests.reset();
    respond(StatusCode::OK, "text/plain", "statement digests reset\n".into())
}

/// `GET /queries[?sort=total|count|max|errors][&limit=N]`: the statement digests (default: the
/// 100 that took the most time in all).
fn queries(req: &Request<Incoming>, admin: &Admin) -> Response<Full<Bytes>> {
    let mut order = status::DigestOrder::Total;
    let mut limit = 100;
    for pair in req.uri().query().unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sort" => match status::DigestOrder::parse(value) {
                Some(o) => order = o,
                None => {
                    return respond(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        "sort: total, count, max or errors\n".into(),
                    );
                }
            },
            "limit" => match value.parse() {
                Ok(n) => limit = n,
                Err(_) => return respond(StatusCode::BAD_REQUEST, "text/plain", "limit: a number\n".into()),
            },
            _ => {
                return respond(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("unknown parameter {key:?}\n"),
                );
            }
        }
    }
    let list = status::queries(&admin.sql.digests, order, limit);
    respond(StatusCode::OK, "application/json", list.to_string())
}

/// 200 when the proxy can reach a primary, 503 otherwise.
fn health(state: &AdminState) -> Response<Full<Bytes>> {
    let primary = state.backends().primary();
    if primary.health.state() == State::Up && primary.health.read_only() == Some(true) {
        let body = format!("primary {} is up but read-only: writes fail\n", primary.name);
        respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", body)
    } else if primary.health.state() == State::Up {
        respond(StatusCode::OK, "text/plain", format!("ok: primary {} is up\n", primary.name))
    } else {
        let body = format!(
            "primary {} is {}: {}\n",
            primary.name,
            primary.health.state().as_str(),
            primary.health.reason()
        );
        respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", body)
    }
}

#[cfg(test)]
mod host_tests {
    use super::host_names_listener;

    #[test]
    fn only_names_of_the_listener_pass() {
        let names = ["rwproxy".to_string()];
        for good in
            ["127.0.0.1:9090", "localhost:9090", "LOCALHOST", "rwproxy:9090", "[::1]:9090", "10.0.0.1"]
        {
            assert!(host_names_listener(Some(good), &names), "{good}");
        }
        for bad in ["evil.example:9090", "evil.example", "rwproxy.evil:9090", "localhost.evil:9090"] {
            assert!(!host_names_listener(Some(bad), &names), "{bad}");
        }
        assert!(host_names_listener(None, &names), "no Host: not a browser");
    }
}
