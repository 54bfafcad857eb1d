//! The registry replica: one immutable snapshot of every member and every instance,
//! with the pure queries DNS, the API and (later) the proxy ask of it. Building a
//! snapshot is done elsewhere ([`super::build`]); reading one takes no lock and no I/O.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::shared::SharedMap;

use murmur_protocol::{AttrKey, Health, InstanceId, NodeName, ServiceName, Tag};

pub use crate::gossip::MemberStatus;

/// One agent of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its node name, unique in the cluster (`--name`).
    pub name: String,
    /// Where its gossip listens (UDP): what probes and syncs are sent to.
    pub gossip_addr: SocketAddr,
    /// Address from its node record (what DNS answers use).
    pub advertise: Option<IpAddr>,
    /// Alive, dead or left.
    pub status: MemberStatus,
    /// Incarnation (start time, unix ms).
    pub generation: u64,
    /// Its `--zone`, when it set one: queries can prefer instances of a zone.
    pub zone: Option<String>,
    /// The murmur version it runs, from its node record (absent until that arrives).
    pub agent_version: Option<String>,
    /// Instances it registers.
    pub instances: usize,
    /// Whether this is the local agent.
    pub is_self: bool,
}

#[cfg(test)]
impl Member {
    /// Another node named `name` at `generation` with `status`, the rest empty (tests).
    pub(crate) fn other(name: &str, generation: u64, status: MemberStatus) -> Member {
        Member {
            name: name.into(),
            gossip_addr: "127.0.0.1:7946".parse().expect("valid"),
            advertise: None,
            status,
            generation,
            zone: None,
            agent_version: None,
            instances: 0,
            is_self: false,
        }
    }
}

/// What every instance of one node shares: held once per node, not per instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Node that registers the instances.
    pub node: NodeName,
    /// Zone of that node.
    pub zone: Option<String>,
    /// Where that node's sidecar accepts proxied streams (QUIC), when it runs one.
    pub proxy: Option<SocketAddr>,
    /// The node's generation (its start time) as the registry saw it: a connection to
    /// its sidecar belongs to this generation.
    pub generation: u64,
}

/// One service instance with its health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The service it is an instance of.
    pub service: ServiceName,
    /// Its id, unique on its node (`<node>-<port>` unless the spec set `id=`).
    pub id: InstanceId,
    /// The node that registers it, its zone and its sidecar.
    pub host: Arc<Host>,
    /// Where the app listens: what DNS answers and what callers connect to.
    pub address: IpAddr,
    /// The app's port (SRV answers carry it).
    pub port: u16,
    /// Whether a sidecar fronts it.
    pub sidecar: bool,
    /// Its tags: `TAG.service.<namespace>` names and `Query::tag` select on them.
    pub tags: Vec<Tag>,
    /// Its attributes (`attr.KEY=VALUE`), which `Query::attribute` selects on.
    pub attributes: BTreeMap<AttrKey, String>,
    /// Its share of traffic relative to the other instances (SRV weight, balancing).
    pub weight: u16,
    /// What its node's health check last decided.
    pub health: Health,
    /// When `health` last changed, unix ms.
    pub health_since_unix_ms: u64,
    /// What the last check printed or returned, for people reading the API.
    pub health_output: String,
}

/// Which instances a query wants by health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthFilter {
    /// Passing and warning only (the default).
    #[default]
    Healthy,
    /// Every instance of a live node.
    All,
    /// Healthy ones, or every one when none is healthy (Cloud Map's HEALTHY_OR_ELSE_ALL).
    HealthyOrElseAll,
}

/// A lookup of one service.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Which instances by health (default: passing and warning only).
    pub health: HealthFilter,
    /// Only instances with this tag.
    pub tag: Option<Tag>,
    /// Only instances with this attribute value.
    pub attribute: Option<(AttrKey, String)>,
    /// Put instances of this zone first.
    pub prefer_zone: Option<String>,
}

/// An immutable picture of the cluster. Shared as `Arc<Snapshot>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Increases with every rebuild; used as the DNS SOA serial.
    pub version: u64,
    /// Every known member, by name. Shared with the snapshots before and after it but
    /// for the chunk where a member changed.
    pub members: SharedMap<String, Member>,
    /// Instances of live nodes, by service, in instance-id order (then node name). Each
    /// list is shared with the snapshots before and after it until that service changes,
    /// and so is the map but for the chunk where a service changed.
    pub services: SharedMap<ServiceName, Arc<[Arc<Instance>]>>,
    /// Instances of dead nodes (until they are forgotten), by service, in the same
    /// order: never answered, listed by the Consul-compatible endpoints with a critical
    /// node check.
    pub down: SharedMap<ServiceName, Arc<[Arc<Instance>]>>,
    /// For each service in `services` or `down`, the snapshot version at which its
    /// instances (live or down) last changed: what a blocking query on it waits on.
    pub service_index: SharedMap<ServiceName, u64>,
    /// The snapshot version at which a service came or went, or an instance was
    /// registered, removed or changed other than in health or liveness.
    pub catalog_index: u64,
}

impl Snapshot {
    /// Instances of `service` that match `query`; same-zone first when asked.
    pub fn lookup(&self, service: &ServiceName, query: &Query) -> Vec<Arc<Instance>> {
        let Some(all) = self.services.get(service) else {
            return Vec::new();
        };
        let matching: Vec<&Arc<Instance>> = all
            .iter()
            .filter(|i| query.tag.as_ref().is_none_or(|t| i.tags.contains(t)))
            .filter(|i| query.attribute.as_ref().is_none_or(|(k, v)| i.attributes.get(k) == Some(v)))
            .collect();
        let healthy: Vec<&Arc<Instance>> = matching.iter().copied().filter(|i| i.health.is_healthy()).collect();
        let mut out: Vec<Arc<Instance>> = match query.health {
            HealthFilter::Healthy => healthy,
            HealthFilter::All => matching,
            HealthFilter::HealthyOrElseAll if healthy.is_empty() => matching,
            HealthFilter::HealthyOrElseAll => healthy,
        }
        .into_iter()
        .cloned()
        .collect();
        if let Some(zone) = &query.prefer_zone {
            out.sort_by_key(|i| i.host.zone.as_deref() != Some(zone.as_str()));
        }
        out
    }

    /// The version a blocking query on `service` compares with: when its instances last
    /// changed, or, for a service nobody registers, when the set of services last did
    /// (which is at least when this one went).
    pub fn index_of(&self, service: &ServiceName) -> u64 {
        self.service_index.get(service).copied().unwrap_or(self.catalog_index)
    }

    /// Whether any live node registers `service`, healthy or not.
    pub fn knows_service(&self, service: &ServiceName) -> bool {
        self.services.contains_key(service)
    }

    /// One instance by id.
    pub fn instance(&self, service: &ServiceName, id: &InstanceId) -> Option<Arc<Instance>> {
        self.services.get(service)?.iter().find(|i| &i.id == id).cloned()
    }
}
