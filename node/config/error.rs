//! Configuration errors. Every one names the field it is about, in the form the user
//! wrote it (`--dns-listen`, `MURMUR_DNS_LISTEN`, `dns.listen`), because the fix is
//! always "change that field". Values checked after the layers are merged (where the
//! source is no longer known) are named by their flag, and the message also names the
//! variable and the file key that set the same value.

use thiserror::Error;

/// A configuration error; `main` prints it and exits with status 2.
#[derive(Debug, Error)]
#[error("{field}{}: {message}", also(field))]
pub struct ConfigError {
    /// The field, as the user wrote it (or its flag, for merged values).
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// The other spellings of a flag whose value is checked after merging.
fn also(field: &str) -> String {
    let other = match field {
        "--name" => ("MURMUR_NAME", "name"),
        "--cluster" => ("MURMUR_CLUSTER", "cluster"),
        "--namespace" => ("MURMUR_NAMESPACE", "namespace"),
        "--zone" => ("MURMUR_ZONE", "zone"),
        "--advertise" => ("MURMUR_ADVERTISE", "gossip.advertise"),
        "--gossip-key" => ("MURMUR_GOSSIP_KEYS", "gossip.keys"),
        "--gossip-key-file" => ("MURMUR_GOSSIP_KEY_FILE", "gossip.key_file"),
        "--gossip-interval" => ("MURMUR_GOSSIP_INTERVAL", "gossip.interval"),
        "--probe-interval" => ("MURMUR_PROBE_INTERVAL", "gossip.probe_interval"),
        "--probe-timeout" => ("MURMUR_PROBE_TIMEOUT", "gossip.probe_timeout"),
        "--indirect-probes" => ("MURMUR_INDIRECT_PROBES", "gossip.indirect_probes"),
        "--suspicion-mult" => ("MURMUR_SUSPICION_MULT", "gossip.suspicion_mult"),
        "--retransmit-mult" => ("MURMUR_RETRANSMIT_MULT", "gossip.retransmit_mult"),
        "--sync-interval" => ("MURMUR_SYNC_INTERVAL", "gossip.sync_interval"),
        "--dead-grace" => ("MURMUR_DEAD_GRACE", "gossip.dead_grace"),
        "--drain" => ("MURMUR_DRAIN", "gossip.drain"),
        "--tls-cert" => ("MURMUR_TLS_CERT", "proxy.tls_cert"),
        "--proxy-identity" => ("MURMUR_PROXY_IDENTITY", "proxy.identity"),
        "--vip-range" => ("MURMUR_VIP_RANGE", "proxy.vip_range"),
        "--api-token" => ("MURMUR_API_TOKEN", "api.token"),
        "--api-token-file" => ("MURMUR_API_TOKEN_FILE", "api.token_file"),
        "--api-host" => ("MURMUR_API_HOSTS", "api.hosts"),
        "--max-instances" => ("MURMUR_MAX_INSTANCES", "api.max_instances"),
        "--registration-rate" => ("MURMUR_REGISTRATION_RATE", "api.registration_rate"),
        "--tombstone-grace" => ("MURMUR_TOMBSTONE_GRACE", "gossip.tombstone_grace"),
        _ => return String::new(),
    };
    format!(" (or {}, or {} in the config file)", other.0, other.1)
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_fields_name_every_spelling() {
        let e = ConfigError::new("--gossip-key", "no key");
        assert_eq!(e.to_string(), "--gossip-key (or MURMUR_GOSSIP_KEYS, or gossip.keys in the config file): no key");
        assert_eq!(ConfigError::new("dns.listen", "bad").to_string(), "dns.listen: bad");
    }
}
