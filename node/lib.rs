//! murmur: a service-discovery mesh with no central server.
//!
//! Every task runs one agent. Agents find each other by gossip (chitchat over a UDP
//! transport sealed with the cluster [`Keyring`]), each keeps a full replica of the
//! registry (one immutable [`Snapshot`] swapped on every change), and apps look names up
//! through a DNS stub on localhost. Health checks and the admin API write only through
//! one narrow [`Publisher`].
//!
//! Data flows one way: config → gossip → registry → readers (DNS, API). The config
//! module reads the settings (one table: file < env < flags); each part builds and
//! checks its own config from them and runs its tasks behind a handle. The agent is the
//! only module that knows every part; it composes the configs and the handles, and owns
//! start-up and the shutdown order.
//!
//! # The public API
//! Every module is private; what is public is re-exported here, in three groups:
//! - **embedding** (this page): build a [`Config`] from a [`Layer`] of settings, start an
//!   [`Agent`], read its [`RegistryReader`], register through its [`Publisher`], shut it
//!   down; issue certificates with [`pki`]. See `examples/embedded.rs`.
//! - **[`client`]**: what a program outside the agent uses to talk to one: the admin API
//!   client, its JSON types, and a one-question DNS client.
//! - **the binary**: [`Cli`] and [`run_command`], all that `node/main.rs` calls.
//!
//! `internals` (hidden from the docs) re-exports the pieces the repository's own benches
//! and fuzz targets drive directly (the SWIM core, the frame codec, the DNS zone). It is
//! not API and changes without notice.

#![warn(missing_docs)]

mod agent;
mod api;
mod cli;
mod clock;
mod config;
mod demo;
mod dns;
mod error;
mod gossip;
mod health;
mod local;
mod metrics;
mod proxy;
mod registry;
mod rlimit;
mod shared;
mod simulate;
mod task;
mod tls;

#[cfg(test)]
mod boundaries;

pub use agent::{Agent, Config, LogConfig, NodeConfig, RunError, StartError};
pub use cli::{run as run_command, Cli};
pub use config::spec::parse_service_spec;
pub use config::upstream::parse_upstream_spec;
pub use config::{
    from_file, from_toml, CheckKind, CheckSpec, ConfigError, Env, Layer, ProcessEnv, ServiceSpec, Settings,
};
pub use error::chain as error_chain;
pub use gossip::{load_keyring_file, KeyChange, KeyFileError, Keyring, KeyringError};
pub use local::{Origin, Publisher};
pub use metrics::proxy::FailureCause;
pub use proxy::{Config as ProxyConfig, ReloadError, TlsFiles};
pub use registry::{HealthFilter, Host, Instance, Member, MemberStatus, Query, RegistryReader, Snapshot};

/// Certificates for the sidecars' mutual TLS: the cluster CA, the identities it issues,
/// and the names a peer's certificate must carry.
pub mod pki {
    pub use crate::tls::ca::{cert_pem, key_pem};
    pub use crate::tls::{node_server_name, service_identity, Ca, CaError, CheckError, Identity, TlsMaterial, ALPN};
}

/// Talking to an agent from outside it: the admin API client and the JSON it returns
/// (murmur's own and the Consul-compatible subset), and a one-question DNS client.
pub mod client {
    pub use crate::api::consul_types::{AgentSelfJson, CatalogServiceJson, ServiceEntryJson};
    pub use crate::api::types::{InstanceJson, MemberJson, ServiceSummaryJson, UpstreamJson};
    pub use crate::cli::{ApiClient, ClientError, Reply};
    pub use crate::dns::client::{addresses, query, QueryError};
}

/// Not API: the pieces the repository's benches and fuzz targets drive directly. Changes
/// without notice.
#[doc(hidden)]
pub mod internals {
    pub use crate::clock::unix_ms;
    pub use crate::config::spec::parse_duration;
    pub use crate::config::upstream::parse_vip_range;
    pub use crate::dns::Zone;
    pub use crate::gossip::Config as GossipConfig;
    pub use crate::gossip::{spawn_gossip, swim, ClusterView, FrameCodec, Gossip, NodeView, DEFAULT_PROBE_TIMEOUT};
    pub use crate::metrics::Metrics;
    pub use crate::registry::{build_snapshot, SnapshotBuilder};
    pub use crate::shared::SharedMap;
}
