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

/// Body of `PUT /v1/agent/service/register`, after its keys were lowercased (Consul
/// matches them case-insensitively). Keys murmur does not read are ignored, as Consul
/// ignores keys it does not know; those whose meaning murmur cannot honour are refused
/// (see the API).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ConsulRegistration {
    /// Instance id (default `<node>-<port>`).
    pub id: Option<String>,
    /// Service name.
    pub name: String,
    /// Tags.
    pub tags: Option<Vec<String>>,
    /// Address (an IP address).
    pub address: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// Attributes.
    pub meta: Option<BTreeMap<String, String>>,
    /// Weights.
    pub weights: Option<ConsulWeights>,
    /// One check.
    pub check: Option<ConsulCheck>,
    /// Checks: murmur runs one per instance.
    pub checks: Option<Vec<ConsulCheck>>,
    /// Refused unless empty: no Connect proxies or gateways.
    pub kind: Option<String>,
    /// Refused: no Connect.
    pub connect: Option<serde_json::Value>,
    /// Refused: no Connect.
    pub proxy: Option<serde_json::Value>,
}

/// `Weights` of a registration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ConsulWeights {
    /// The instance's weight.
    pub passing: Option<u16>,
    /// Only 1 is taken: murmur balances warning instances at their passing weight.
    pub warning: Option<u16>,
}

/// A check of a registration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ConsulCheck {
    /// Its id (default `service:<instance id>`).
    #[serde(rename = "checkid")]
    pub check_id: Option<String>,
    /// `http://HOST:PORT/PATH`.
    pub http: Option<String>,
    /// `HOST:PORT`.
    pub tcp: Option<String>,
    /// Reported by the app within this, e.g. `30s`.
    pub ttl: Option<String>,
    /// Between probes.
    pub interval: Option<String>,
    /// One probe.
    pub timeout: Option<String>,
    /// Remove the instance after it has been critical this long.
    #[serde(rename = "deregistercriticalserviceafter")]
    pub deregister_critical_service_after: Option<String>,
    /// Consecutive successes before passing.
    #[serde(rename = "successbeforepassing")]
    pub success_before_passing: Option<u32>,
    /// Consecutive failures before critical.
    #[serde(rename = "failuresbeforecritical")]
    pub failures_before_critical: Option<u32>,
    /// The initial status (TTL checks).
    pub status: Option<String>,
    /// The initial output (TTL checks).
    pub notes: Option<String>,
    /// HTTP method: only GET.
    pub method: Option<String>,
    /// Refused: a command.
    pub args: Option<serde_json::Value>,
    /// Refused: a command.
    #[serde(rename = "scriptargs")]
    pub script_args: Option<serde_json::Value>,
    /// Refused: a command.
    pub script: Option<serde_json::Value>,
    /// Refused: gRPC checks are not built.
    pub grpc: Option<serde_json::Value>,
    /// Refused: request headers are not sent.
    pub header: Option<serde_json::Value>,
    /// Refused: not built.
    #[serde(rename = "dockercontainerid")]
    pub docker_container_id: Option<serde_json::Value>,
    /// Refused: not built.
    pub h2ping: Option<serde_json::Value>,
    /// Refused: not built.
    pub udp: Option<serde_json::Value>,
    /// Refused: not built.
    #[serde(rename = "aliasservice")]
    pub alias_service: Option<serde_json::Value>,
    /// Refused: not built.
    #[serde(rename = "osservice")]
    pub os_service: Option<serde_json::Value>,
}

/// Body of `PUT /v1/agent/check/update/{check_id}`, keys lowercased.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ConsulCheckUpdate {
    /// `passing`, `warning` or `critical`.
    pub status: String,
    /// The check's output.
    pub output: String,
}

/// One element of `GET /v1/operator/keyring`, as Consul answers it: every key with the
/// number of live members that hold it, and murmur's own detail per member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct KeyringJson {
    /// Always false: murmur has one gossip pool.
    #[serde(rename = "WAN")]
    pub wan: bool,
    /// The cluster id.
    pub datacenter: String,
    /// Always empty (Consul's network segments).
    pub segment: String,
    /// Each key (base64) and the live members that hold it.
    pub keys: BTreeMap<String, usize>,
    /// Each key (base64) and the live members that seal with it.
    pub primary_keys: BTreeMap<String, usize>,
    /// Live members, this agent included.
    pub num_nodes: usize,
    /// Consul's per-node error messages; always empty.
    pub messages: BTreeMap<String, String>,
    /// murmur: the epoch of this agent's keyring (changes since the configured one).
    pub epoch: u64,
    /// murmur: every member this agent knows and the keyring it gossips.
    pub members: Vec<KeyringMemberJson>,
}

/// One member in [`KeyringJson`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct KeyringMemberJson {
    /// Node name.
    pub name: String,
    /// alive, dead or left.
    pub status: String,
    /// The epoch of its keyring; absent when it gossips none (an older agent).
    pub epoch: Option<u64>,
    /// The id of the key it seals with (8 hex digits, as logs show keys).
    pub primary: Option<String>,
    /// The ids of every key it holds, primary first.
    pub key_ids: Vec<String>,
}

/// The body of `POST`, `PUT` and `DELETE /v1/operator/keyring`, as Consul takes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct KeyringRequestJson {
    /// The key, base64.
    pub key: String,
}
