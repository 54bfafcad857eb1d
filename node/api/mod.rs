//! The admin API: JSON over HTTP/1.1 (axum) on loopback by default. Reads come from the
//! registry snapshot; run-time registration goes through the [`Publisher`]. Every bad
//! request gets a 4xx with a JSON `{"error": ...}` that says what to fix.

mod config;
mod consul;
pub mod consul_types;
mod keyring;
pub mod types;
mod ui;

pub use config::Config;
pub use keyring::PATH as KEYRING_PATH;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Path, Query as QueryParams, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::spec::{parse_check_kind, parse_duration};
use crate::config::ServiceSpec;
use crate::local::{Origin, PublishError, Publisher};
use crate::metrics::{render_prometheus, Metrics};
use crate::registry::{HealthFilter, Instance, MemberStatus, Query, RegistryReader};
use murmur_protocol::{AttrKey, InstanceId, ServiceName, Tag};
use types::{
    AgentJson, EndpointJson, ErrorJson, InstanceJson, MemberJson, QuantilesJson, RegisterJson, ServiceSummaryJson,
    TargetGroupJson, UpstreamJson,
};

/// What the API serves from.
#[derive(Clone)]
pub struct ApiState {
    /// The replica.
    pub registry: RegistryReader,
    /// The write path.
    pub publisher: Publisher,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Static facts about this agent (instances are filled per request).
    pub agent: Arc<AgentJson>,
    /// Set when the agent starts draining: `/health` turns 503.
    pub draining: Arc<AtomicBool>,
    /// Who may call: the host names answered and the token changes need.
    pub access: Arc<Config>,
    /// The gossip keyring, rotated through `/v1/operator/keyring`.
    pub keyring: crate::gossip::KeyringHandle,
}

/// An API error: a status and a message.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorJson { error: self.1 })).into_response()
    }
}

/// A 400 whose body is `msg` (a message or an error that says what was wrong).
fn bad_request(msg: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.to_string())
}

/// Builds the router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/members", get(members))
        .route("/v1/services", get(services))
        .route("/v1/services/{name}", get(service))
        .route("/v1/services/{name}/{instance}", axum::routing::put(register).delete(deregister))
        .route("/v1/agent/self", get(consul::agent_self))
        .route("/v1/catalog/services", get(consul::catalog_services))
        .route("/v1/catalog/service/{name}", get(consul::catalog_service))
        .route("/v1/health/service/{name}", get(consul::health_service))
        .route("/v1/agent/services", get(consul::agent_services))
        .route("/v1/agent/service/register", axum::routing::put(consul::register))
        .route("/v1/agent/service/deregister/{id}", axum::routing::put(consul::deregister))
        .route("/v1/agent/check/update/{check_id}", axum::routing::put(consul::check_update))
        .route("/v1/agent/check/{verb}/{check_id}", axum::routing::put(consul::check_report))
        .route(
            keyring::PATH,
            get(keyring::list).post(keyring::install).put(keyring::make_primary).delete(keyring::remove),
        )
        .route("/v1/upstreams", get(upstreams))
        .route("/v1/prometheus/targets", get(prometheus_targets))
        .route("/ui", get(ui::page))
        .route("/ui/", get(ui::page))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/app.css", get(ui::style))
        .route("/v1/ui/state", get(ui::state))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint; see README for the API".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(middleware::from_fn_with_state(state.clone(), count_status))
        .layer(middleware::from_fn_with_state(state.clone(), consul_headers))
        .with_state(state)
}

/// Refuses, before any handler runs, what a web page or a caller without the token must
/// not do (see [`check_access`]).
async fn guard(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let secret = req.uri().path().starts_with(keyring::PATH);
    match check_access(&state.access, req.method(), secret, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Whether a request may go on:
/// - its `Host`, when it has one, is an IP address, `localhost` or a configured name: a
///   page that rebinds a name of its own to this address is refused, even for reads;
/// - a change (any method but GET and HEAD) carries no `Origin`: browsers send one on
///   every cross-site write, programs and the CLI do not;
/// - a change carries the token, when one is set (`Authorization: Bearer` or
///   `X-Consul-Token`), and so does a `secret` read (the keyring, which shows keys).
fn check_access(access: &Config, method: &Method, secret: bool, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(host) = headers.get(header::HOST) {
        let host = host.to_str().unwrap_or("");
        if !host_allowed(host, &access.hosts) {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!(
                    "this agent does not answer to host `{host}`: call it by IP address or localhost, \
                     or allow the name with --api-host"
                ),
            ));
        }
    }
    let read = matches!(*method, Method::GET | Method::HEAD);
    if read && !secret {
        return Ok(());
    }
    if !read && headers.contains_key(header::ORIGIN) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "changes from web pages are refused (the request carries an Origin header); use a program or the CLI"
                .into(),
        ));
    }
    let Some(token) = &access.token else { return Ok(()) };
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let presented =
        text("authorization").and_then(|v| v.strip_prefix("Bearer ")).or_else(|| text("x-consul-token")).map(str::trim);
    match presented {
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "this agent needs a token for changes and for the keyring: send `Authorization: Bearer <token>` \
             or `X-Consul-Token: <token>`"
                .into(),
        )),
        Some(p) if !token.matches(p) => Err(ApiError(StatusCode::FORBIDDEN, "the token is not this agent's".into())),
        Some(_) => Ok(()),
    }
}

/// Whether `host` (a `Host` header: a name or address, maybe with a port) is one the
/// API answers to.
fn host_allowed(host: &str, names: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        },
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::IpAddr>().is_ok() || name == "localhost" || names.contains(&name)
}

/// Consul's headers on every reply, so that its clients take any of them: there is no
/// leader to lose (each agent answers from its own replica), and a reply that carries no
/// index of its own carries the catalog's.
async fn consul_headers(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let headers = resp.headers_mut();
    headers.insert("x-consul-knownleader", header::HeaderValue::from_static("true"));
    headers.insert("x-consul-lastcontact", header::HeaderValue::from_static("0"));
    if !headers.contains_key("x-consul-index") {
        let index = consul::consul_index(&state, state.registry.snapshot().catalog_index);
        if let Ok(v) = header::HeaderValue::from_str(&index.to_string()) {
            headers.insert("x-consul-index", v);
        }
    }
    resp
}

async fn count_status(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let m = &state.metrics.api;
    match resp.status().as_u16() {
        200..=399 => m.ok.inc(),
        400..=499 => m.client_errors.inc(),
        _ => m.server_errors.inc(),
    }
    resp
}

fn status_text(s: MemberStatus) -> &'static str {
    match s {
        MemberStatus::Alive => "alive",
        MemberStatus::Dead => "dead",
        MemberStatus::Left => "left",
    }
}

async fn members(State(state): State<ApiState>) -> Json<Vec<MemberJson>> {
    Json(member_list(&state.registry.snapshot()))
}

fn member_list(snap: &crate::registry::Snapshot) -> Vec<MemberJson> {
    snap.members
        .values()
        .map(|m| MemberJson {
            name: m.name.clone(),
            address: m.advertise.unwrap_or(m.gossip_addr.ip()).to_string(),
            gossip_address: m.gossip_addr.to_string(),
            status: status_text(m.status).into(),
            generation: m.generation,
            zone: m.zone.clone(),
            version: m.agent_version.clone(),
            instances: m.instances,
        })
        .collect()
}

async fn services(State(state): State<ApiState>) -> Json<Vec<ServiceSummaryJson>> {
    let snap = state.registry.snapshot();
    Json(
        snap.services
            .iter()
            .map(|(name, list)| ServiceSummaryJson {
                name: name.to_string(),
                instances: list.len(),
                healthy: list.iter().filter(|i| i.health.is_healthy()).count(),
            })
            .collect(),
    )
}

fn instance_json(i: &Instance) -> InstanceJson {
    InstanceJson {
        service: i.service.to_string(),
        instance: i.id.to_string(),
        node: i.host.node.to_string(),
        zone: i.host.zone.clone(),
        address: i.address.to_string(),
        port: i.port,
        tags: i.tags.iter().map(ToString::to_string).collect(),
        attributes: i.attributes.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        weight: i.weight,
        health: i.health.as_str().into(),
        health_since_unix_ms: i.health_since_unix_ms,
        health_output: i.health_output.clone(),
    }
}

/// Query parameters of `GET /v1/services/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupParams {
    all: Option<bool>,
    healthy_or_else_all: Option<bool>,
    tag: Option<String>,
    /// `key=value`.
    attr: Option<String>,
    zone: Option<String>,
}

async fn service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    params: Result<QueryParams<LookupParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<InstanceJson>>, ApiError> {
    let QueryParams(p) =
        params.map_err(|e| bad_request(format!("{e}; known parameters: all, healthy_or_else_all, tag, attr, zone")))?;
    let name = ServiceName::new(&name).map_err(|e| bad_request(e.to_string()))?;
    let health = match (p.all, p.healthy_or_else_all) {
        (Some(true), _) => HealthFilter::All,
        (_, Some(true)) => HealthFilter::HealthyOrElseAll,
        _ => HealthFilter::Healthy,
    };
    let tag = p.tag.map(|t| Tag::new(&t)).transpose().map_err(|e| bad_request(e.to_string()))?;
    let attribute = match p.attr {
        Some(a) => {
            let (k, v) = a.split_once('=').ok_or_else(|| bad_request("attr must be key=value"))?;
            Some((AttrKey::new(k).map_err(|e| bad_request(e.to_string()))?, v.to_owned()))
        }
        None => None,
    };
    let query = Query { health, tag, attribute, prefer_zone: p.zone };
    let snap = state.registry.snapshot();
    Ok(Json(snap.lookup(&name, &query).iter().map(|i| instance_json(i)).collect()))
}

/// Query parameters of `GET /v1/prometheus/targets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetParams {
    /// Only this service.
    service: Option<String>,
    /// Every instance, not only the healthy ones (`__meta_murmur_health` tells them apart).
    all: Option<bool>,
}

/// Scrape targets for Prometheus's `http_sd_configs`: one group per healthy instance
/// (passing or warning), so that an instance whose check fails leaves the targets at
/// the next refresh.
async fn prometheus_targets(
    State(state): State<ApiState>,
    params: Result<QueryParams<TargetParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<TargetGroupJson>>, ApiError> {
    let QueryParams(p) = params.map_err(|e| bad_request(format!("{e}; known parameters: service, all")))?;
    let only = p.service.map(|s| ServiceName::new(&s)).transpose().map_err(|e| bad_request(e.to_string()))?;
    let all = p.all.unwrap_or(false);
    let snap = state.registry.snapshot();
    let groups = snap
        .services
        .iter()
        .filter(|(name, _)| only.as_ref().is_none_or(|o| o == *name))
        .flat_map(|(_, list)| list.iter())
        .filter(|i| all || i.health.is_healthy())
        .map(|i| target_group(i))
        .collect();
    Ok(Json(groups))
}

fn target_group(i: &Instance) -> TargetGroupJson {
    let mut labels = std::collections::BTreeMap::new();
    let mut label = |name: &str, value: String| {
        labels.insert(format!("__meta_murmur_{name}"), value);
    };
    label("service", i.service.to_string());
    label("instance", i.id.to_string());
    label("node", i.host.node.to_string());
    label("zone", i.host.zone.clone().unwrap_or_default());
    label("address", i.address.to_string());
    label("port", i.port.to_string());
    // Separators at both ends, as Consul's discovery writes them, so that a relabel
    // regex `.*,canary,.*` matches one whole tag.
    let tags: Vec<String> = i.tags.iter().map(ToString::to_string).collect();
    label("tags", if tags.is_empty() { String::new() } else { format!(",{},", tags.join(",")) });
    label("health", i.health.as_str().to_owned());
    label("weight", i.weight.to_string());
    for (k, v) in &i.attributes {
        let key: String = k.to_string().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        label(&format!("attribute_{key}"), v.clone());
    }
    TargetGroupJson { targets: vec![SocketAddr::new(i.address, i.port).to_string()], labels }
}

fn spec_from_json(name: &str, instance: &str, body: RegisterJson) -> Result<ServiceSpec, ApiError> {
    let name = ServiceName::new(name).map_err(|e| bad_request(e.to_string()))?;
    let mut spec = ServiceSpec::new(name, body.port);
    spec.id = Some(InstanceId::new(instance).map_err(|e| bad_request(e.to_string()))?);
    spec.address = body
        .address
        .map(|a| a.parse().map_err(|_| bad_request(format!("address `{a}` is not an IP address"))))
        .transpose()?;
    spec.tags =
        body.tags.iter().map(|t| Tag::new(t)).collect::<Result<_, _>>().map_err(|e| bad_request(e.to_string()))?;
    for (k, v) in body.attributes {
        spec.attributes.insert(AttrKey::new(&k).map_err(|e| bad_request(e.to_string()))?, v);
    }
    if let Some(w) = body.weight {
        spec.weight = w;
    }
    spec.allow = body
        .allow
        .iter()
        .map(|s| ServiceName::new(s))
        .collect::<Result<_, _>>()
        .map_err(|e| bad_request(format!("allow: {e}")))?;
    if let Some(c) = body.check {
        spec.check.kind = parse_check_kind(&c).map_err(bad_request)?;
        // The API has no authentication: letting it start commands would hand a shell to
        // anything that can reach it (Consul refuses this too unless told otherwise).
        if matches!(spec.check.kind, crate::config::CheckKind::Exec { .. }) {
            return Err(bad_request("exec checks can only be set in the agent's own config, not through the API"));
        }
    }
    if let Some(i) = body.interval {
        spec.check.interval = parse_duration(&i).map_err(bad_request)?;
    }
    match body.timeout {
        Some(t) => spec.check.timeout = parse_duration(&t).map_err(bad_request)?,
        None => spec.check.fit_default_timeout(),
    }
    if let Some(n) = body.failures {
        spec.check.failures_before_critical = n;
    }
    if let Some(n) = body.successes {
        spec.check.successes_before_passing = n;
    }
    if let Some(d) = body.deregister_after {
        spec.check.deregister_critical_after = Some(parse_duration(&d).map_err(bad_request)?);
    }
    spec.validate().map_err(bad_request)?;
    Ok(spec)
}

fn publish_error(e: PublishError) -> ApiError {
    let status = match e {
        PublishError::NotFound(_) => StatusCode::NOT_FOUND,
        PublishError::Draining => StatusCode::SERVICE_UNAVAILABLE,
        PublishError::IdTaken(..) | PublishError::ReadOnly(_) | PublishError::NotTtl(_) => StatusCode::CONFLICT,
        PublishError::TooMany(_) | PublishError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        PublishError::TooLarge(..) => StatusCode::PAYLOAD_TOO_LARGE,
    };
    ApiError(status, e.to_string())
}

async fn register(
    State(state): State<ApiState>,
    Path((name, instance)): Path<(String, String)>,
    body: Result<Json<RegisterJson>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body.map_err(|e| bad_request(e.body_text()))?;
    let spec = spec_from_json(&name, &instance, body)?;
    let id = state.publisher.register(&spec, Origin::Api).await.map_err(publish_error)?;
    Ok(Json(serde_json::json!({ "service": spec.name.to_string(), "instance": id.to_string() })))
}

async fn deregister(
    State(state): State<ApiState>,
    Path((name, instance)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = ServiceName::new(&name).map_err(|e| bad_request(e.to_string()))?;
    let id = InstanceId::new(&instance).map_err(|e| bad_request(e.to_string()))?;
    let owned = state.publisher.local().borrow().iter().any(|i| i.record.instance == id && i.record.service == name);
    if !owned {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("instance `{id}` of `{name}` is not registered on this agent"),
        ));
    }
    state.publisher.deregister(&id, Origin::Api).await.map_err(publish_error)?;
    Ok(Json(serde_json::json!({ "service": name.to_string(), "instance": id.to_string() })))
}

fn quantiles(q: crate::metrics::proxy::Quantiles) -> QuantilesJson {
    let ms = |us: u64| us as f64 / 1000.0;
    QuantilesJson { count: q.count, p50_ms: ms(q.p50), p99_ms: ms(q.p99), max_ms: ms(q.max) }
}

async fn upstreams(State(state): State<ApiState>) -> Json<Vec<UpstreamJson>> {
    Json(upstream_list(&state))
}

fn upstream_list(state: &ApiState) -> Vec<UpstreamJson> {
    let now_ms = crate::clock::unix_ms();
    state
        .metrics
        .proxy
        .upstreams()
        .into_iter()
        .map(|(alias, u)| UpstreamJson {
            alias,
            service: u.service.clone(),
            listen: u.listen.clone(),
            accepted: u.accepted.get(),
            failed: u.failed.get(),
            active: u.active.get(),
            retries: u.retries.get(),
            budget_exhausted: u.budget_exhausted.get(),
            breaker_rejections: u.breaker_rejections.get(),
            no_endpoints: u.no_endpoints.get(),
            plaintext_skipped: u.plaintext_skipped.get(),
            endpoints: u
                .endpoints()
                .into_iter()
                .map(|(instance, e)| {
                    let until = e.ejected_until_unix_ms.get();
                    EndpointJson {
                        instance,
                        via: e.via.lock().map(|v| v.clone()).unwrap_or_default(),
                        state: if until > now_ms { "ejected" } else { "healthy" }.into(),
                        ejected_until_unix_ms: if until > now_ms { until } else { 0 },
                        ejections: e.ejections.get(),
                        ewma_ms: e.ewma_us.get() as f64 / 1000.0,
                        connections: e.connections.get(),
                        active: e.active.get(),
                        bytes_sent: e.bytes_sent.get(),
                        bytes_received: e.bytes_received.get(),
                        failures: crate::metrics::proxy::FailureCause::ALL
                            .iter()
                            .map(|c| (c.as_str().to_owned(), e.failures(*c)))
                            .filter(|(_, n)| *n > 0)
                            .collect(),
                        connect_latency: quantiles(e.connect_latency.quantiles()),
                        duration: quantiles(e.duration.quantiles()),
                    }
                })
                .collect(),
        })
        .collect()
}

async fn health(State(state): State<ApiState>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render_prometheus(&state.metrics))
        .into_response()
}

/// Starts the API on its bound listener; it stops with `cancel` or the handle's
/// `shutdown()`.
pub fn spawn_api(listener: TcpListener, state: ApiState, cancel: CancellationToken) -> crate::task::Tasks {
    let mut tasks = crate::task::Tasks::new(cancel);
    let listen = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let serve = serve_api(listener, state, tasks.token()).instrument(tracing::info_span!("api", %listen));
    tasks.spawn("api", async move { serve.await.map_err(crate::error::TaskError::failed) });
    tasks
}

/// Serves the API on an already-bound listener until `cancel`.
async fn serve_api(listener: TcpListener, state: ApiState, cancel: CancellationToken) -> std::io::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "api listening");
    axum::serve(listener, router(state)).with_graceful_shutdown(async move { cancel.cancelled().await }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(token: Option<&str>, hosts: &[&str]) -> Config {
        let layer = crate::config::Layer {
            api_token: token.map(str::to_owned),
            api_hosts: Some(hosts.iter().map(|h| h.to_string()).collect()),
            name: Some("n".into()),
            insecure: Some(true),
            ..Default::default()
        };
        crate::agent::Config::from_layer(layer, "").expect("valid config").api
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    fn status(a: &Config, method: Method, pairs: &[(&'static str, &str)]) -> u16 {
        check_access(a, &method, false, &headers(pairs)).map_or_else(|e| e.0.as_u16(), |()| 200)
    }

    #[test]
    fn a_rebound_name_is_refused_even_for_reads() {
        let a = access(None, &["murmur.internal"]);
        for host in ["127.0.0.1:8500", "127.0.0.1", "[::1]:8500", "localhost:8500", "LOCALHOST", "murmur.internal"] {
            assert_eq!(status(&a, Method::GET, &[("host", host)]), 200, "{host}");
        }
        for host in ["attacker.example", "attacker.example:8500", "localhost.attacker.example", "127.0.0.1.nip.io"] {
            assert_eq!(status(&a, Method::GET, &[("host", host)]), 403, "{host}");
            assert_eq!(status(&a, Method::PUT, &[("host", host)]), 403, "{host}");
        }
        assert_eq!(status(&a, Method::GET, &[]), 200, "no Host (HTTP/1.0): no browser");
    }

    #[test]
    fn a_web_page_cannot_change_anything() {
        let a = access(None, &[]);
        let page = [("host", "127.0.0.1:8500"), ("origin", "http://attacker.example")];
        assert_eq!(status(&a, Method::PUT, &page), 403);
        assert_eq!(status(&a, Method::DELETE, &page), 403);
        assert_eq!(status(&a, Method::GET, &page), 200, "reads from a page on our own name are fine");
        assert_eq!(status(&a, Method::PUT, &[("host", "127.0.0.1:8500")]), 200, "a program's PUT");
    }

    #[test]
    fn with_a_token_every_change_needs_it() {
        let a = access(Some("s3cret"), &[]);
        let host = ("host", "127.0.0.1:8500");
        assert_eq!(status(&a, Method::PUT, &[host]), 401);
        assert_eq!(status(&a, Method::PUT, &[host, ("authorization", "Bearer wrong")]), 403);
        assert_eq!(status(&a, Method::PUT, &[host, ("authorization", "Bearer s3cret")]), 200);
        assert_eq!(status(&a, Method::DELETE, &[host, ("x-consul-token", "s3cret")]), 200);
        assert_eq!(status(&a, Method::PUT, &[host, ("authorization", "Basic s3cret")]), 401);
        assert_eq!(status(&a, Method::GET, &[host]), 200, "reads stay open");
        let keyring = |pairs: &[(&'static str, &str)]| check_access(&a, &Method::GET, true, &headers(pairs)).is_ok();
        assert!(!keyring(&[host]), "but the keyring shows keys");
        assert!(keyring(&[host, ("authorization", "Bearer s3cret")]));
        assert!(check_access(&access(None, &[]), &Method::GET, true, &headers(&[host])).is_ok(), "no token set");
        assert!(!format!("{a:?}").contains("s3cret"), "the token never shows in Debug");
    }
}
