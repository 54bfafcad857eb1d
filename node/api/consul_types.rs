//! The JSON of the Consul-compatible endpoints, named and typed as Consul's own
//! (PascalCase), so that Consul's clients (the Go `api` package, python-consul,
//! Prometheus's and vmagent's `consul_sd_configs`) read it unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::types::AgentJson;

/// `GET /v1/agent/self`: Consul's shape (every top-level value an object, as Consul's
/// Go client decodes it), with murmur's own fields under `Murmur`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct AgentSelfJson {
    /// The agent's configuration as Consul names it.
    pub config: AgentConfigJson,
    /// The agent as a gossip member, as Consul's `Member` reads.
    pub member: AgentMemberJson,
    /// Node metadata (`zone` when set).
    pub meta: BTreeMap<String, String>,
    /// murmur's own view of the agent.
    pub murmur: AgentJson,
}

/// `Config` of `GET /v1/agent/self`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct AgentConfigJson {
    /// The cluster id (Consul's datacenter).
    pub datacenter: String,
    /// The same: murmur has one datacenter per cluster.
    pub primary_datacenter: String,
    /// Node name.
    pub node_name: String,
    /// A UUID derived from the node name (stable across restarts).
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// Always false: there are no servers.
    pub server: bool,
    /// murmur's version.
    pub version: String,
    /// `murmur`.
    pub revision: String,
}

/// `Member` of `GET /v1/agent/self`, as Serf's member is shown by Consul.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct AgentMemberJson {
    /// Node name.
    pub name: String,
    /// Advertised address.
    pub addr: String,
    /// Gossip port.
    pub port: u16,
    /// `dc`, `id`, `role` (`node`), `build` and, when set, `zone`.
    pub tags: BTreeMap<String, String>,
    /// Serf's status number: 1 alive, 2 leaving (draining).
    pub status: u8,
    /// Protocol range, as Consul reports it.
    pub protocol_min: u8,
    /// See `protocol_min`.
    pub protocol_max: u8,
    /// See `protocol_min`.
    pub protocol_cur: u8,
    /// See `protocol_min`.
    pub delegate_min: u8,
    /// See `protocol_min`.
    pub delegate_max: u8,
    /// See `protocol_min`.
    pub delegate_cur: u8,
}

/// One entry of `GET /v1/catalog/service/{name}`: an instance flattened with its node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogServiceJson {
    /// The node's id (a UUID derived from its name).
    #[serde(rename = "ID")]
    pub id: String,
    /// Node name.
    pub node: String,
    /// The node's advertised address.
    pub address: String,
    /// The cluster id.
    pub datacenter: String,
    /// `lan` and `wan`: the node's address.
    pub tagged_addresses: BTreeMap<String, String>,
    /// Node metadata (`zone` when set).
    pub node_meta: BTreeMap<String, String>,
    /// Always empty (a typical service).
    pub service_kind: String,
    /// Instance id.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// Service name.
    pub service_name: String,
    /// The instance's address.
    pub service_address: String,
    /// The instance's port.
    pub service_port: u16,
    /// Tags.
    pub service_tags: Vec<String>,
    /// Attributes.
    pub service_meta: BTreeMap<String, String>,
    /// Weights.
    pub service_weights: WeightsJson,
    /// Always false.
    pub service_enable_tag_override: bool,
    /// The service's index when the instance was read (murmur keeps no per-instance index).
    pub create_index: u64,
    /// The same.
    pub modify_index: u64,
}

/// `Passing` and `Warning` weights.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct WeightsJson {
    /// The instance's weight.
    pub passing: u16,
    /// 1, Consul's default.
    pub warning: u16,
}

/// One entry of `GET /v1/health/service/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntryJson {
    /// The node.
    pub node: NodeJson,
    /// The instance.
    pub service: AgentServiceJson,
    /// The node's `serfHealth`, then the instance's check or its maintenance check.
    pub checks: Vec<CheckJson>,
}

/// A node as Consul lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct NodeJson {
    /// A UUID derived from the node name.
    #[serde(rename = "ID")]
    pub id: String,
    /// Node name.
    pub node: String,
    /// Advertised address.
    pub address: String,
    /// The cluster id.
    pub datacenter: String,
    /// `lan` and `wan`: the node's address.
    pub tagged_addresses: BTreeMap<String, String>,
    /// `zone` when set.
    pub meta: BTreeMap<String, String>,
    /// See [`CatalogServiceJson::create_index`].
    pub create_index: u64,
    /// The same.
    pub modify_index: u64,
}

/// An instance as Consul's `AgentService`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct AgentServiceJson {
    /// Instance id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Attributes.
    pub meta: BTreeMap<String, String>,
    /// Port.
    pub port: u16,
    /// Address.
    pub address: String,
    /// Weights.
    pub weights: WeightsJson,
    /// Always false.
    pub enable_tag_override: bool,
    /// See [`CatalogServiceJson::create_index`].
    pub create_index: u64,
    /// The same.
    pub modify_index: u64,
}

/// A health check as Consul lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct CheckJson {
    /// Node name.
    pub node: String,
    /// `serfHealth`, `service:<id>` or `_service_maintenance:<id>`.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Consul's names for these checks.
    pub name: String,
    /// `passing`, `warning` or `critical`.
    pub status: String,
    /// Why, for the maintenance check.
    pub notes: String,
    /// The check's last output.
    pub output: String,
    /// Instance id (empty for the node's check).
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// Service name (empty for the node's check).
    pub service_name: String,
    /// Tags of the instance.
    pub service_tags: Vec<String>,
    /// Empty: the kind of check is not gossiped.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Empty.
    pub definition: BTreeMap<String, String>,
    /// See [`CatalogServiceJson::create_index`].
    pub create_index: u64,
    /// The same.
    pub modify_index: u64,
}
