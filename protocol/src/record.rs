//! The records stored under the gossip keys of [`crate::keys`]. Each one checks its own
//! limits in [`Record::check`], which the decoder runs before a record is handed out.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::error::LimitError;
use crate::limits::{
    MAX_AGENT_VERSION_LEN, MAX_ATTRIBUTES, MAX_ATTR_VALUE_LEN, MAX_HEALTH_OUTPUT_LEN, MAX_KEYRING_KEYS, MAX_TAGS,
    MAX_ZONE_LEN,
};
use crate::names::{AttrKey, InstanceId, NodeName, ServiceName, Tag};

/// A record that can be checked against the protocol limits after decoding.
pub trait Record {
    /// Returns a description of the first limit the record breaks, if any.
    fn check(&self) -> Result<(), LimitError>;
}

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's name, unique in the cluster.
    pub name: NodeName,
    /// The zone (rack, availability zone) the node runs in, if configured.
    pub zone: Option<String>,
    /// The agent's version.
    pub agent_version: String,
    /// The address peers and DNS answers use for this node.
    pub advertise: IpAddr,
    /// Where this node's sidecar accepts proxied streams, when it runs one.
    pub proxy: Option<SocketAddr>,
    /// When this generation of the agent started, unix milliseconds.
    pub started_unix_ms: u64,
}

impl Record for NodeRecord {
    fn check(&self) -> Result<(), LimitError> {
        if self.zone.as_ref().is_some_and(|z| z.len() > MAX_ZONE_LEN) {
            return Err(LimitError::TooLong { what: "zone", max: MAX_ZONE_LEN });
        }
        if self.agent_version.len() > MAX_AGENT_VERSION_LEN {
            return Err(LimitError::TooLong { what: "agent version", max: MAX_AGENT_VERSION_LEN });
        }
        Ok(())
    }
}

/// One instance of a service, registered by the node that gossips it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The service this is an instance of.
    pub service: ServiceName,
    /// The instance id, unique in the cluster.
    pub instance: InstanceId,
    /// Where the instance listens.
    pub address: IpAddr,
    /// The port it listens on.
    pub port: u16,
    /// Whether this node's sidecar fronts the instance (proxy mode reaches it over QUIC).
    pub sidecar: bool,
    /// Tags, for filtering (`canary.orders.myapp.local`).
    pub tags: Vec<Tag>,
    /// Free-form attributes, for filtering by attribute.
    pub attributes: BTreeMap<AttrKey, String>,
    /// Relative weight for balancing; 0 means "never pick unless nothing else".
    pub weight: u16,
}

impl Record for InstanceRecord {
    fn check(&self) -> Result<(), LimitError> {
        if self.tags.len() > MAX_TAGS {
            return Err(LimitError::TooMany { what: "tags", max: MAX_TAGS });
        }
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(LimitError::TooMany { what: "attributes", max: MAX_ATTRIBUTES });
        }
        if let Some((k, _)) = self.attributes.iter().find(|(_, v)| v.len() > MAX_ATTR_VALUE_LEN) {
            return Err(LimitError::AttributeTooLong { key: k.to_string(), max: MAX_ATTR_VALUE_LEN });
        }
        Ok(())
    }
}

/// The health of an instance, as its own node's checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Health {
    /// Checks pass: the instance is in answers.
    Passing,
    /// Checks warn: still in answers (as Consul treats warning).
    Warning,
    /// Checks fail: out of answers.
    Critical,
    /// The instance is going away on purpose: out of answers, open work may finish.
    Draining,
}

impl Health {
    /// Whether an instance in this state belongs in "healthy" answers.
    pub fn is_healthy(self) -> bool {
        matches!(self, Health::Passing | Health::Warning)
    }

    /// The lowercase name used in JSON, tables and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
            Health::Draining => "draining",
        }
    }
}

/// The health of one instance and since when it has been so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecord {
    /// The current state.
    pub status: Health,
    /// When the state began, unix milliseconds.
    pub since_unix_ms: u64,
    /// Short output of the last check (an error message, a status code).
    pub output: String,
}

impl HealthRecord {
    /// Builds a record, cutting `output` to [`MAX_HEALTH_OUTPUT_LEN`] on a character
    /// boundary so that a chatty check cannot produce an undecodable value.
    pub fn new(status: Health, since_unix_ms: u64, output: &str) -> Self {
        let mut end = output.len().min(MAX_HEALTH_OUTPUT_LEN);
        while !output.is_char_boundary(end) {
            end -= 1;
        }
        Self { status, since_unix_ms, output: output[..end].to_owned() }
    }
}

impl Record for HealthRecord {
    fn check(&self) -> Result<(), LimitError> {
        if self.output.len() > MAX_HEALTH_OUTPUT_LEN {
            return Err(LimitError::TooLong { what: "health output", max: MAX_HEALTH_OUTPUT_LEN });
        }
        Ok(())
    }
}

/// The gossip keyring a node applies, gossiped so that a change made on one member
/// reaches all of them. Records are ordered by `(epoch, origin)`: a node adopts any record
/// above its own, and a change made at run time takes the next epoch, so the newest change
/// wins everywhere. A keyring given only by configuration has epoch 0 and an empty origin,
/// so agents started with different flags never overwrite one another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringRecord {
    /// How many changes this keyring is from the configured one.
    pub epoch: u64,
    /// The node whose change made it (empty for a configured keyring).
    pub origin: String,
    /// The AES-256 keys, primary first: the primary seals, all of them open.
    pub keys: Vec<[u8; 32]>,
}

impl KeyringRecord {
    /// The order in which records win: the higher epoch, then the higher origin name.
    pub fn rank(&self) -> (u64, &str) {
        (self.epoch, &self.origin)
    }
}

impl Record for KeyringRecord {
    fn check(&self) -> Result<(), LimitError> {
        if self.keys.is_empty() {
            return Err(LimitError::NoKey);
        }
        if self.keys.len() > MAX_KEYRING_KEYS {
            return Err(LimitError::TooMany { what: "keys", max: MAX_KEYRING_KEYS });
        }
        if self.keys.iter().enumerate().any(|(i, k)| self.keys[..i].contains(k)) {
            return Err(LimitError::DuplicateKey);
        }
        if self.origin.len() > crate::limits::MAX_LABEL_LEN {
            return Err(LimitError::TooLong { what: "origin", max: crate::limits::MAX_LABEL_LEN });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_output_is_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_HEALTH_OUTPUT_LEN);
        let rec = HealthRecord::new(Health::Critical, 1, &long);
        assert!(rec.output.len() <= MAX_HEALTH_OUTPUT_LEN);
        assert!(rec.check().is_ok());
    }

    #[test]
    fn only_passing_and_warning_are_healthy() {
        assert!(Health::Passing.is_healthy());
        assert!(Health::Warning.is_healthy());
        assert!(!Health::Critical.is_healthy());
        assert!(!Health::Draining.is_healthy());
    }

    #[test]
    fn keyrings_are_checked_and_ranked() {
        let ring = |epoch, origin: &str, keys: Vec<[u8; 32]>| KeyringRecord { epoch, origin: origin.into(), keys };
        assert!(ring(0, "", vec![[1; 32]]).check().is_ok());
        assert!(ring(0, "", vec![]).check().is_err());
        assert!(ring(0, "", vec![[1; 32], [1; 32]]).check().is_err());
        assert!(ring(0, "", (0..9u8).map(|i| [i; 32]).collect()).check().is_err());
        assert!(ring(2, "a", vec![[1; 32]]).rank() > ring(1, "z", vec![[1; 32]]).rank());
        assert!(ring(2, "b", vec![[1; 32]]).rank() > ring(2, "a", vec![[1; 32]]).rank());
    }
}
