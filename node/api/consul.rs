//! The Consul-compatible read endpoints: `/v1/catalog/services`,
//! `/v1/catalog/service/{name}`, `/v1/health/service/{name}` and `/v1/agent/self`, with
//! Consul's blocking queries (`?index=N&wait=D`).
//!
//! Indexes: a service's index is when its instances last changed in this agent's
//! replica, so unrelated churn does not wake its watchers; the catalog's is when a service
//! came or went or an instance changed other than in health. Both are the replica's
//! snapshot version plus the agent's start time in unix ms: at most one snapshot per
//! 50 ms, so the index of a restarted agent starts past any its earlier run reached,
//! and it never goes backwards on one agent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use murmur_protocol::{Health, ServiceName, Tag};

use super::consul_types::{
    AgentConfigJson, AgentMemberJson, AgentSelfJson, AgentServiceJson, CatalogServiceJson, CheckJson, ConsulCheck,
    ConsulCheckUpdate, ConsulRegistration, NodeJson, ServiceEntryJson, WeightsJson,
};
use super::{bad_request, publish_error, ApiError, ApiState};
use crate::config::spec::parse_duration;
use crate::config::{CheckKind, ServiceSpec};
use crate::local::Origin;
use crate::registry::{Instance, MemberStatus, Snapshot};
use axum::body::Bytes;
use axum::http::StatusCode;
use murmur_protocol::{AttrKey, InstanceId};

/// A blocking query's wait when it names none, as Consul's.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// The longest wait, as Consul's.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// The query parameters the Consul endpoints read.
#[derive(Debug, Default)]
struct Params {
    /// Block until the index passes this.
    index: Option<u64>,
    wait: Option<Duration>,
    /// Every tag asked for (an instance must have them all).
    tags: Vec<Tag>,
    passing: bool,
    /// `node-meta=key:value` pairs a node must all have.
    node_meta: Vec<(String, String)>,
}

impl Params {
    /// Reads Consul's parameters. Those that only tune consistency or order (`stale`,
    /// `consistent`, `cached`, `near`, ...) are taken and ignored: a local replica has
    /// one answer. Those that would change the answer and that murmur does not do are
    /// refused with 400, never ignored.
    fn parse(raw: Option<&str>, datacenter: &str) -> Result<Params, ApiError> {
        let mut p = Params::default();
        for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match &*key {
                "index" => {
                    p.index = Some(value.parse().map_err(|_| {
                        bad_request(format!("index `{value}` is not a number; pass the X-Consul-Index of a reply"))
                    })?);
                }
                "wait" => {
                    p.wait = Some(parse_duration(&value).map_err(|e| bad_request(format!("wait: {e}")))?);
                }
                "tag" => p.tags.push(Tag::new(&value).map_err(|e| bad_request(format!("tag: {e}")))?),
                "passing" => p.passing = !matches!(&*value, "false" | "0"),
                "node-meta" => {
                    let (k, v) = value
                        .split_once(':')
                        .ok_or_else(|| bad_request(format!("node-meta `{value}` must be key:value")))?;
                    p.node_meta.push((k.to_owned(), v.to_owned()));
                }
                "dc" if !value.is_empty() && value != datacenter => {
                    return Err(bad_request(format!(
                        "this agent knows datacenter `{datacenter}` only (murmur's cluster id), not `{value}`"
                    )));
                }
                "ns" | "partition" if !value.is_empty() && value != "default" => {
                    return Err(bad_request(format!("{key} `{value}`: murmur has only the `default` {key}")));
                }
                "filter" => {
                    return Err(bad_request(
                        "filter expressions are not supported by murmur; filter with tag= and node-meta=, or in the client",
                    ));
                }
                "peer" => return Err(bad_request("cluster peering is not supported by murmur; leave out peer=")),
                _ => {}
            }
        }
        Ok(p)
    }

    fn wants(&self, inst: &Instance, meta: &BTreeMap<String, String>) -> bool {
        self.tags.iter().all(|t| inst.tags.contains(t))
            && self.node_meta.iter().all(|(k, v)| meta.get(k).is_some_and(|m| m == v))
    }
}

/// Consul's index for a snapshot version on this agent.
pub(super) fn consul_index(state: &ApiState, version: u64) -> u64 {
    state.agent.generation.saturating_add(version)
}

/// Waits, when `p` asks to block, until `index_of` passes `p.index` or the wait (plus
/// up to a sixteenth, as Consul spreads its watchers) runs out; returns the snapshot to
/// answer from.
async fn block(state: &ApiState, p: &Params, index_of: impl Fn(&Snapshot) -> u64) -> Arc<Snapshot> {
    let snap = state.registry.snapshot();
    let Some(min) = p.index.filter(|&i| i > 0) else { return snap };
    if consul_index(state, index_of(&snap)) > min {
        return snap;
    }
    let wait = p.wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
    let jitter = wait.mul_f64(rand::random::<f64>() / 16.0);
    let (snap, _) = state.registry.wait_for(wait + jitter, |s| consul_index(state, index_of(s)) > min).await;
    snap
}

/// A reply with Consul's headers: the index the client passes back to block on.
fn reply(state: &ApiState, version: u64, body: impl serde::Serialize) -> Response {
    reply_at(consul_index(state, version), body)
}

/// [`reply`] with the Consul index already made.
fn reply_at(index: u64, body: impl serde::Serialize) -> Response {
    let mut resp = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&index.to_string()) {
        resp.headers_mut().insert(HeaderName::from_static("x-consul-index"), v);
    }
    resp
}

/// A UUID-shaped id for a node, from its name: Consul's node ids are UUIDs, stable
/// across restarts, and murmur's node name is what is stable.
pub(crate) fn node_id(name: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("murmur-node:{name}").as_bytes());
    let hex: String = digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// What every entry says of an instance's node.
struct NodeFacts {
    address: String,
    meta: BTreeMap<String, String>,
    alive: bool,
}

fn node_facts(snap: &Snapshot, inst: &Instance) -> NodeFacts {
    let member = snap.members.get(inst.host.node.as_str());
    let address = member
        .map(|m| m.advertise.unwrap_or(m.gossip_addr.ip()).to_string())
        .unwrap_or_else(|| inst.address.to_string());
    let meta = inst.host.zone.iter().map(|z| ("zone".to_owned(), z.clone())).collect();
    NodeFacts { address, meta, alive: member.is_some_and(|m| m.status == MemberStatus::Alive) }
}

/// Every instance of `service`, live and down, by node then id, as Consul orders them.
fn every_instance<'a>(snap: &'a Snapshot, service: &ServiceName) -> Vec<&'a Arc<Instance>> {
    let live = snap.services.get(service).into_iter().flat_map(|l| l.iter());
    let down = snap.down.get(service).into_iter().flat_map(|l| l.iter());
    let mut all: Vec<&Arc<Instance>> = live.chain(down).collect();
    all.sort_by(|a, b| (&a.host.node, &a.id).cmp(&(&b.host.node, &b.id)));
    all
}

fn tagged(address: &str) -> BTreeMap<String, String> {
    [("lan".to_owned(), address.to_owned()), ("wan".to_owned(), address.to_owned())].into()
}

fn service_name(name: &str) -> Result<ServiceName, ApiError> {
    ServiceName::new(name).map_err(|e| bad_request(e.to_string()))
}

/// `GET /v1/catalog/services`: each service with the union of its instances' tags.
pub(super) async fn catalog_services(
    State(state): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let p = Params::parse(raw.as_deref(), &state.agent.cluster)?;
    let snap = block(&state, &p, |s| s.catalog_index).await;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, _) in snap.service_index.iter() {
        let tags = out.entry(name.to_string()).or_default();
        for inst in every_instance(&snap, name) {
            if p.node_meta.is_empty() || p.wants(inst, &node_facts(&snap, inst).meta) {
                tags.extend(inst.tags.iter().map(ToString::to_string));
            }
        }
    }
    Ok(reply(&state, snap.catalog_index, out))
}

/// What a query on one service starts with: its parameters, the service, the snapshot
/// to answer from (after blocking, when asked) and that snapshot's Consul index of it.
async fn service_query(
    state: &ApiState,
    name: &str,
    raw: Option<&str>,
) -> Result<(Params, ServiceName, Arc<Snapshot>, u64), ApiError> {
    let p = Params::parse(raw, &state.agent.cluster)?;
    let service = service_name(name)?;
    let snap = block(state, &p, |s| s.index_of(&service)).await;
    let index = consul_index(state, snap.index_of(&service));
    Ok((p, service, snap, index))
}

/// `GET /v1/catalog/service/{name}`: its instances flattened with their nodes, whatever
/// their health (as Consul's catalog), dead nodes' among them.
pub(super) async fn catalog_service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (p, service, snap, index) = service_query(&state, &name, raw.as_deref()).await?;
    let dc = &state.agent.cluster;
    let out: Vec<CatalogServiceJson> = every_instance(&snap, &service)
        .into_iter()
        .filter_map(|inst| {
            let node = node_facts(&snap, inst);
            p.wants(inst, &node.meta).then(|| CatalogServiceJson {
                id: node_id(inst.host.node.as_str()),
                node: inst.host.node.to_string(),
                tagged_addresses: tagged(&node.address),
                address: node.address,
                datacenter: dc.clone(),
                node_meta: node.meta,
                service_kind: String::new(),
                service_id: inst.id.to_string(),
                service_name: inst.service.to_string(),
                service_address: inst.address.to_string(),
                service_port: inst.port,
                service_tags: inst.tags.iter().map(ToString::to_string).collect(),
                service_meta: meta(inst),
                service_weights: WeightsJson { passing: inst.weight, warning: 1 },
                service_enable_tag_override: false,
                create_index: index,
                modify_index: index,
            })
        })
        .collect();
    Ok(reply_at(index, out))
}

fn meta(inst: &Instance) -> BTreeMap<String, String> {
    inst.attributes.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// `GET /v1/health/service/{name}`: each instance with its node and checks; `?passing`
/// keeps only those whose every check passes.
pub(super) async fn health_service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (p, service, snap, index) = service_query(&state, &name, raw.as_deref()).await?;
    let out: Vec<ServiceEntryJson> = every_instance(&snap, &service)
        .into_iter()
        .filter_map(|inst| {
            let node = node_facts(&snap, inst);
            if !p.wants(inst, &node.meta) || (p.passing && !(node.alive && inst.health == Health::Passing)) {
                return None;
            }
            Some(service_entry(&state.agent.cluster, inst, node, index))
        })
        .collect();
    Ok(reply_at(index, out))
}

fn service_entry(dc: &str, inst: &Instance, node: NodeFacts, index: u64) -> ServiceEntryJson {
    let node_name = inst.host.node.to_string();
    let tags: Vec<String> = inst.tags.iter().map(ToString::to_string).collect();
    let check = |check_id: String, name: String, status: &str, notes: &str, output: String, own: bool| CheckJson {
        node: node_name.clone(),
        check_id,
        name,
        status: status.to_owned(),
        notes: notes.to_owned(),
        output,
        service_id: if own { inst.id.to_string() } else { String::new() },
        service_name: if own { inst.service.to_string() } else { String::new() },
        service_tags: if own { tags.clone() } else { Vec::new() },
        kind: String::new(),
        definition: BTreeMap::new(),
        create_index: index,
        modify_index: index,
    };
    let (serf_status, serf_output) = if node.alive {
        ("passing", "Agent alive and reachable")
    } else {
        ("critical", "Agent not live or unreachable")
    };
    let mut checks =
        vec![check("serfHealth".into(), "Serf Health Status".into(), serf_status, "", serf_output.into(), false)];
    if inst.health == Health::Draining {
        checks.push(check(
            format!("_service_maintenance:{}", inst.id),
            "Service Maintenance Mode".into(),
            "critical",
            "draining: the agent is stopping or the instance is being removed",
            inst.health_output.clone(),
            true,
        ));
    } else {
        checks.push(check(
            format!("service:{}", inst.id),
            format!("Service '{}' check", inst.service),
            inst.health.as_str(),
            "",
            inst.health_output.clone(),
            true,
        ));
    }
    ServiceEntryJson {
        node: NodeJson {
            id: node_id(&node_name),
            node: node_name.clone(),
            tagged_addresses: tagged(&node.address),
            address: node.address,
            datacenter: dc.to_owned(),
            meta: node.meta,
            create_index: index,
            modify_index: index,
        },
        service: AgentServiceJson {
            id: inst.id.to_string(),
            service: inst.service.to_string(),
            tags: tags.clone(),
            meta: meta(inst),
            port: inst.port,
            address: inst.address.to_string(),
            weights: WeightsJson { passing: inst.weight, warning: 1 },
            enable_tag_override: false,
            create_index: index,
            modify_index: index,
        },
        checks,
    }
}

/// `GET /v1/agent/self` in Consul's shape, murmur's own fields under `Murmur`.
pub(super) async fn agent_self(State(state): State<ApiState>) -> Response {
    let mut murmur = (*state.agent).clone();
    murmur.instances = state.publisher.local().borrow().iter().map(|i| i.record.instance.to_string()).collect();
    murmur.draining = state.draining.load(Ordering::Relaxed);
    let snap = state.registry.snapshot();
    let zone = snap.members.get(murmur.name.as_str()).and_then(|m| m.zone.clone());
    let id = node_id(&murmur.name);
    let mut tags: BTreeMap<String, String> = [
        ("dc".to_owned(), murmur.cluster.clone()),
        ("id".to_owned(), id.clone()),
        ("role".to_owned(), "node".to_owned()),
        ("build".to_owned(), murmur.version.clone()),
    ]
    .into();
    let meta: BTreeMap<String, String> = zone.iter().map(|z| ("zone".to_owned(), z.clone())).collect();
    tags.extend(meta.clone());
    let port = murmur.gossip_address.parse::<std::net::SocketAddr>().map(|a| a.port()).unwrap_or(0);
    let body = AgentSelfJson {
        config: AgentConfigJson {
            datacenter: murmur.cluster.clone(),
            primary_datacenter: murmur.cluster.clone(),
            node_name: murmur.name.clone(),
            node_id: id,
            server: false,
            version: murmur.version.clone(),
            revision: "murmur".into(),
        },
        member: AgentMemberJson {
            name: murmur.name.clone(),
            addr: murmur.address.clone(),
            port,
            tags,
            status: if murmur.draining { 2 } else { 1 },
            protocol_min: 1,
            protocol_max: 5,
            protocol_cur: 2,
            delegate_min: 2,
            delegate_max: 5,
            delegate_cur: 4,
        },
        meta,
        murmur,
    };
    reply(&state, snap.catalog_index, body)
}

/// Lowercases an object's keys, and those of the objects under `check`, `checks` and
/// `weights`, leaving user data (`meta`) as it is: Consul matches these keys
/// case-insensitively (`ID`, `Id` and `id` alike).
fn lowercase_keys(value: serde_json::Value, nested: bool) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let k = k.to_ascii_lowercase();
                    let descend = nested && matches!(k.as_str(), "check" | "checks" | "weights");
                    let v = if descend { lowercase_keys(v, false) } else { v };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| lowercase_keys(v, nested)).collect()),
        other => other,
    }
}

fn decode_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad_request(format!("the body is not JSON: {e}")))?;
    serde_json::from_value(lowercase_keys(value, true)).map_err(|e| bad_request(format!("the body does not fit: {e}")))
}

/// `HOST:PORT` of a Consul check: an IP address (IPv6 in brackets) or `localhost`.
fn check_address(text: &str, default_port: Option<u16>) -> Result<std::net::SocketAddr, ApiError> {
    let refuse = || {
        bad_request(format!(
            "check address `{text}` must be IP:PORT or localhost:PORT (murmur's checks do not resolve names)"
        ))
    };
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => {
            (h, p.parse::<u16>().map_err(|_| refuse())?)
        }
        _ => (text, default_port.ok_or_else(refuse)?),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = match host {
        "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
        h => h.parse().map_err(|_| refuse())?,
    };
    Ok(std::net::SocketAddr::new(ip, port))
}

/// A Consul check as murmur's: HTTP (GET, plain http), TCP or TTL, with its timing,
/// thresholds and `DeregisterCriticalServiceAfter`. A command, gRPC, headers and the
/// other kinds are refused rather than ignored.
fn apply_check(spec: &mut ServiceSpec, c: ConsulCheck) -> Result<(), ApiError> {
    if c.args.is_some() || c.script_args.is_some() || c.script.is_some() {
        return Err(bad_request(
            "Args (script checks) are never allowed through the API: a command is set in the agent's own config only",
        ));
    }
    let unsupported = [
        ("GRPC", c.grpc.is_some()),
        ("Header", c.header.is_some()),
        ("DockerContainerID", c.docker_container_id.is_some()),
        ("H2PING", c.h2ping.is_some()),
        ("UDP", c.udp.is_some()),
        ("AliasService", c.alias_service.is_some()),
        ("OSService", c.os_service.is_some()),
    ];
    if let Some((what, _)) = unsupported.iter().find(|(_, given)| *given) {
        return Err(bad_request(format!("{what} checks are not supported by murmur; use HTTP, TCP or TTL")));
    }
    if c.method.as_deref().is_some_and(|m| !m.eq_ignore_ascii_case("GET")) {
        return Err(bad_request("murmur's HTTP checks send GET only; leave out Method"));
    }
    let duration = |what: &str, text: &str| parse_duration(text).map_err(|e| bad_request(format!("{what}: {e}")));
    spec.check.kind = match (&c.http, &c.tcp, &c.ttl) {
        (Some(url), None, None) => {
            let rest = url.strip_prefix("http://").ok_or_else(|| {
                bad_request(format!("HTTP check `{url}`: only plain http:// URLs are probed (no https)"))
            })?;
            let (authority, path) = match rest.find('/') {
                Some(at) => rest.split_at(at),
                None => (rest, "/"),
            };
            spec.check.target = Some(check_address(authority, Some(80))?);
            CheckKind::Http { path: path.to_owned() }
        }
        (None, Some(tcp), None) => {
            spec.check.target = Some(check_address(tcp, None)?);
            CheckKind::Tcp
        }
        (None, None, Some(ttl)) => CheckKind::Ttl { ttl: duration("TTL", ttl)? },
        (None, None, None) => return Err(bad_request("a check needs one of HTTP, TCP or TTL")),
        _ => return Err(bad_request("a check has one of HTTP, TCP or TTL, not several")),
    };
    if let Some(i) = &c.interval {
        spec.check.interval = duration("Interval", i)?;
    }
    match &c.timeout {
        Some(t) => spec.check.timeout = duration("Timeout", t)?,
        None => spec.check.fit_default_timeout(),
    }
    if let Some(d) = &c.deregister_critical_service_after {
        spec.check.deregister_critical_after = Some(duration("DeregisterCriticalServiceAfter", d)?);
    }
    if let Some(n) = c.success_before_passing.filter(|n| *n > 0) {
        spec.check.successes_before_passing = n;
    }
    if let Some(n) = c.failures_before_critical.filter(|n| *n > 0) {
        spec.check.failures_before_critical = n;
    }
    spec.check.id = c.check_id.filter(|id| !id.is_empty());
    Ok(())
}

/// A registration's initial TTL status, when it gives one.
fn initial_status(c: Option<&ConsulCheck>) -> Result<Option<(Health, String)>, ApiError> {
    let Some(c) = c.filter(|c| c.ttl.is_some()) else { return Ok(None) };
    let Some(status) = c.status.as_deref().filter(|s| !s.is_empty()) else { return Ok(None) };
    Ok(Some((check_status(status)?, c.notes.clone().unwrap_or_default())))
}

fn check_status(text: &str) -> Result<Health, ApiError> {
    match text {
        "passing" => Ok(Health::Passing),
        "warning" => Ok(Health::Warning),
        "critical" => Ok(Health::Critical),
        other => Err(bad_request(format!("status `{other}` must be passing, warning or critical"))),
    }
}

/// A Consul registration as murmur's service spec.
fn spec_from_consul(reg: ConsulRegistration) -> Result<(ServiceSpec, Option<ConsulCheck>), ApiError> {
    if reg.kind.as_deref().is_some_and(|k| !k.is_empty()) || reg.connect.is_some() || reg.proxy.is_some() {
        return Err(bad_request(
            "Connect proxies and gateways (Kind, Connect, Proxy) are not supported: murmur's sidecar is its own proxy",
        ));
    }
    let name = service_name(&reg.name)?;
    let port = reg.port.filter(|p| *p > 0).ok_or_else(|| bad_request("Port must be 1-65535"))?;
    let mut spec = ServiceSpec::new(name, port);
    spec.id = reg
        .id
        .filter(|i| !i.is_empty())
        .map(|i| InstanceId::new(&i))
        .transpose()
        .map_err(|e| bad_request(e.to_string()))?;
    spec.address = reg
        .address
        .filter(|a| !a.is_empty())
        .map(|a| a.parse().map_err(|_| bad_request(format!("Address `{a}` is not an IP address"))))
        .transpose()?;
    for t in reg.tags.unwrap_or_default() {
        spec.tags.push(Tag::new(&t).map_err(|e| bad_request(format!("Tags: {e}")))?);
    }
    for (k, v) in reg.meta.unwrap_or_default() {
        spec.attributes.insert(AttrKey::new(&k).map_err(|e| bad_request(format!("Meta: {e}")))?, v);
    }
    if let Some(w) = reg.weights {
        if w.warning.is_some_and(|w| w != 1) {
            return Err(bad_request(
                "Weights.Warning other than 1 is not supported: warning instances keep their weight",
            ));
        }
        if let Some(p) = w.passing {
            spec.weight = p;
        }
    }
    let mut checks = reg.checks.unwrap_or_default();
    checks.extend(reg.check);
    if checks.len() > 1 {
        return Err(bad_request("murmur runs one check per instance: give one Check"));
    }
    let check = checks.pop();
    match &check {
        Some(c) => apply_check(&mut spec, c.clone())?,
        // Consul's instance without a check is passing while its agent lives.
        None => spec.check.kind = CheckKind::None,
    }
    spec.validate().map_err(bad_request)?;
    Ok((spec, check))
}

/// `PUT /v1/agent/service/register` with Consul's body.
pub(super) async fn register(State(state): State<ApiState>, body: Bytes) -> Result<Response, ApiError> {
    let (spec, check) = spec_from_consul(decode_body(&body)?)?;
    let initial = initial_status(check.as_ref())?;
    let id = state.publisher.register(&spec, Origin::Api).await.map_err(publish_error)?;
    if let Some((status, notes)) = initial {
        state.publisher.report(&id, status, &notes).await.map_err(publish_error)?;
    }
    Ok(StatusCode::OK.into_response())
}

fn unknown(what: &str, id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("Unknown {what} ID {id:?}: nothing of that id is registered on this agent"))
}

/// `PUT /v1/agent/service/deregister/{id}`.
pub(super) async fn deregister(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let instance = state.publisher.resolve(&id).ok_or_else(|| unknown("service", &id))?;
    state.publisher.deregister(&instance, Origin::Api).await.map_err(publish_error)?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/check/{pass,warn,fail}/{check_id}?note=`: a TTL check's report.
pub(super) async fn check_report(
    State(state): State<ApiState>,
    Path((verb, check_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let status = match verb.as_str() {
        "pass" => Health::Passing,
        "warn" => Health::Warning,
        "fail" => Health::Critical,
        other => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no check verb `{other}`: use pass, warn, fail or update"),
            ))
        }
    };
    let note = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "note")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    report(&state, &check_id, status, &note).await
}

/// `PUT /v1/agent/check/update/{check_id}` with `{"Status": ..., "Output": ...}`.
pub(super) async fn check_update(
    State(state): State<ApiState>,
    Path(check_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let update: ConsulCheckUpdate = decode_body(&body)?;
    report(&state, &check_id, check_status(&update.status)?, &update.output).await
}

async fn report(state: &ApiState, check_id: &str, status: Health, output: &str) -> Result<Response, ApiError> {
    let instance = state.publisher.resolve_check(check_id).ok_or_else(|| unknown("check", check_id))?;
    state.publisher.report(&instance, status, output).await.map_err(publish_error)?;
    Ok(StatusCode::OK.into_response())
}

/// `GET /v1/agent/services`: the instances registered on this agent, by id.
pub(super) async fn agent_services(State(state): State<ApiState>) -> Response {
    let snap = state.registry.snapshot();
    let local = state.publisher.local().borrow().clone();
    let out: BTreeMap<String, AgentServiceJson> = local
        .iter()
        .map(|i| {
            let r = &i.record;
            let index = consul_index(&state, snap.index_of(&r.service));
            let service = AgentServiceJson {
                id: r.instance.to_string(),
                service: r.service.to_string(),
                tags: r.tags.iter().map(ToString::to_string).collect(),
                meta: r.attributes.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
                port: r.port,
                address: r.address.to_string(),
                weights: WeightsJson { passing: r.weight, warning: 1 },
                enable_tag_override: false,
                create_index: index,
                modify_index: index,
            };
            (r.instance.to_string(), service)
        })
        .collect();
    reply(&state, snap.catalog_index, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_that_change_the_answer_are_refused_and_the_rest_taken() {
        let parse = |q: &str| Params::parse(Some(q), "dc1");
        let p = parse("index=42&wait=120000ms&tag=a&tag=b&passing&stale&near=_agent&dc=dc1").expect("valid");
        assert_eq!(p.index, Some(42));
        assert_eq!(p.wait, Some(Duration::from_secs(120)));
        assert_eq!(p.tags.len(), 2);
        assert!(p.passing);
        assert_eq!(parse("wait=2m").expect("valid").wait, Some(Duration::from_secs(120)));
        assert!(!parse("passing=false").expect("valid").passing);
        for refused in ["filter=Service.Port==80", "dc=other", "index=x", "wait=soon", "peer=p", "ns=team"] {
            let Err(ApiError(status, msg)) = parse(refused) else { panic!("{refused} was taken") };
            assert_eq!(status.as_u16(), 400, "{refused}");
            assert!(!msg.is_empty());
        }
    }

    #[test]
    fn node_ids_are_uuid_shaped_and_stable() {
        let id = node_id("web-1");
        assert_eq!(id, node_id("web-1"));
        assert_ne!(id, node_id("web-2"));
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
    }
}
