//! The JSON the admin API speaks, shared with the CLI so both sides agree by
//! construction. Field names are the public contract (see README).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One member of `GET /v1/members`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberJson {
    /// Node name.
    pub name: String,
    /// Advertised address of the node (what DNS answers use).
    pub address: String,
    /// Gossip address, IP:PORT.
    pub gossip_address: String,
    /// `alive`, `dead` or `left`.
    pub status: String,
    /// Incarnation (start time, unix ms).
    pub generation: u64,
    /// Zone, if set.
    pub zone: Option<String>,
    /// Agent version.
    pub version: Option<String>,
    /// Instances it registers.
    pub instances: usize,
}

/// One service of `GET /v1/services`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceSummaryJson {
    /// Service name.
    pub name: String,
    /// Instances on live nodes.
    pub instances: usize,
    /// Of which healthy (passing or warning).
    pub healthy: usize,
}

/// One instance of `GET /v1/services/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceJson {
    /// Service name.
    pub service: String,
    /// Instance id.
    pub instance: String,
    /// Node that registers it.
    pub node: String,
    /// Zone of the node.
    pub zone: Option<String>,
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Tags.
    pub tags: Vec<String>,
    /// Attributes.
    pub attributes: BTreeMap<String, String>,
    /// Weight.
    pub weight: u16,
    /// `passing`, `warning`, `critical` or `draining`.
    pub health: String,
    /// Since when, unix ms.
    pub health_since_unix_ms: u64,
    /// Last check output.
    pub health_output: String,
}

/// Body of `PUT /v1/services/{name}/{instance}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegisterJson {
    /// Port the app listens on.
    pub port: u16,
    /// Address, when not the agent's advertised one.
    #[serde(default)]
    pub address: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Weight (default 1).
    #[serde(default)]
    pub weight: Option<u16>,
    /// Services allowed to call it through the sidecar (empty: any).
    #[serde(default)]
    pub allow: Vec<String>,
    /// `tcp` (default), `http:/path`, `ttl:DURATION`, `exec:CMD` (refused) or `none`.
    #[serde(default)]
    pub check: Option<String>,
    /// Check interval, e.g. `2s`.
    #[serde(default)]
    pub interval: Option<String>,
    /// Check timeout, e.g. `1s`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Failures before critical.
    #[serde(default)]
    pub failures: Option<u32>,
    /// Successes before passing.
    #[serde(default)]
    pub successes: Option<u32>,
    /// Remove the instance once it has been critical this long, e.g. `10m`.
    #[serde(default)]
    pub deregister_after: Option<String>,
}

/// `GET /v1/agent/self`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentJson {
    /// Node name.
    pub name: String,
    /// Cluster id.
    pub cluster: String,
    /// DNS namespace.
    pub namespace: String,
    /// Advertised address.
    pub address: String,
    /// Gossip address.
    pub gossip_address: String,
    /// DNS stub address.
    pub dns_address: String,
    /// API address.
    pub api_address: String,
    /// Agent version.
    pub version: String,
    /// Incarnation.
    pub generation: u64,
    /// Whether gossip is sealed.
    pub encrypted: bool,
    /// Whether the agent is draining.
    pub draining: bool,
    /// Instances registered here.
    pub instances: Vec<String>,
    /// The open-files limit the agent runs with (raised to the hard limit at start).
    pub open_files: crate::rlimit::OpenFiles,
}

/// An error body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorJson {
    /// What was wrong and what to do.
    pub error: String,
}

/// Latency quantiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct QuantilesJson {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

/// One target group of `GET /v1/prometheus/targets`, in the shape Prometheus's
/// `http_sd_configs` reads: one instance, its `address:port`, and `__meta_murmur_*`
/// labels for relabeling.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TargetGroupJson {
    /// `address:port` of the instance.
    pub targets: Vec<String>,
    /// `__meta_murmur_service`, `_instance`, `_node`, `_zone`, `_address`, `_port`,
    /// `_tags` (`,a,b,`), `_health`, `_weight` and `_attribute_<key>` for each attribute.
    pub labels: BTreeMap<String, String>,
}

/// One endpoint of `GET /v1/upstreams`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointJson {
    /// Instance id.
    pub instance: String,
    /// How it is reached: `quic IP:PORT` (its sidecar) or `tcp IP:PORT`.
    pub via: String,
    /// `healthy` or `ejected`.
    pub state: String,
    /// Unix ms when the ejection ends (0 when not ejected).
    pub ejected_until_unix_ms: u64,
    /// Times ejected.
    pub ejections: u64,
    /// Peak-EWMA connect latency, ms.
    pub ewma_ms: f64,
    /// Connections carried.
    pub connections: u64,
    /// Open now.
    pub active: u64,
    /// Bytes app → endpoint.
    pub bytes_sent: u64,
    /// Bytes endpoint → app.
    pub bytes_received: u64,
    /// Failures by cause.
    pub failures: BTreeMap<String, u64>,
    /// Time to the ack.
    pub connect_latency: QuantilesJson,
    /// Connection lifetime.
    pub duration: QuantilesJson,
}

/// One upstream of `GET /v1/upstreams`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpstreamJson {
    /// Alias the app calls.
    pub alias: String,
    /// Service reached.
    pub service: String,
    /// Listen address.
    pub listen: String,
    /// App connections accepted.
    pub accepted: u64,
    /// Of which failed after every attempt.
    pub failed: u64,
    /// Open now.
    pub active: u64,
    /// Retries made.
    pub retries: u64,
    /// Retries refused by the budget.
    pub budget_exhausted: u64,
    /// Closed at once by the circuit breaker.
    pub breaker_rejections: u64,
    /// With no endpoint to try.
    pub no_endpoints: u64,
    /// Endpoints left out of picks: no sidecar, and this sidecar uses mutual TLS.
    pub plaintext_skipped: u64,
    /// Endpoints seen.
    pub endpoints: Vec<EndpointJson>,
}
