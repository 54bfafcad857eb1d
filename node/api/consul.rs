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
    AgentConfigJson, AgentMemberJson, AgentSelfJson, AgentServiceJson, CatalogServiceJson, CheckJson, NodeJson,
    ServiceEntryJson, WeightsJson,
};
use super::{bad_request, ApiError, ApiState};
use crate::config::spec::parse_duration;
use crate::registry::{Instance, MemberStatus, Snapshot};

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
    let mut resp = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&consul_index(state, version).to_string()) {
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

/// `GET /v1/catalog/service/{name}`: its instances flattened with their nodes, whatever
/// their health (as Consul's catalog), dead nodes' among them.
pub(super) async fn catalog_service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let p = Params::parse(raw.as_deref(), &state.agent.cluster)?;
    let service = service_name(&name)?;
    let snap = block(&state, &p, |s| s.index_of(&service)).await;
    let index = consul_index(&state, snap.index_of(&service));
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
    Ok(reply(&state, snap.index_of(&service), out))
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
    let p = Params::parse(raw.as_deref(), &state.agent.cluster)?;
    let service = service_name(&name)?;
    let snap = block(&state, &p, |s| s.index_of(&service)).await;
    let index = consul_index(&state, snap.index_of(&service));
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
    Ok(reply(&state, snap.index_of(&service), out))
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
