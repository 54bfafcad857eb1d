//! Gossip's settings, checked: the keyring and the SWIM timings within their bounds.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::config::{within, ConfigError, Settings};
use crate::error::chain;

use super::keyring::{load_file, Keyring};

/// Default probe timeout: a LAN answers in well under a millisecond; 100 ms leaves room
/// for a loaded host before others are asked to probe. (Half the probe interval when
/// that is shorter, so it is not in the settings table.)
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest dead grace accepted.
pub const MAX_DEAD_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest drain period accepted.
pub const MAX_DRAIN: Duration = Duration::from_secs(600);

/// What gossip needs to run: where it listens and announces itself, whom it joins, its
/// keys, and the SWIM timings; built and checked by `from_settings`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cluster's name: agents with another one ignore each other's messages.
    pub cluster: String,
    /// UDP address to bind.
    pub bind: SocketAddr,
    /// Gossip address announced to peers.
    pub advertise: SocketAddr,
    /// Agents to join at start, `HOST:PORT`, resolved again on every attempt.
    pub seeds: Vec<String>,
    /// Keys; `None` only with `insecure`.
    pub keyring: Option<Keyring>,
    /// Where the keyring is kept across restarts (`--gossip-key-file`).
    pub key_file: Option<std::path::PathBuf>,
    /// How often waiting changes are pushed.
    pub interval: Duration,
    /// How often one member is probed.
    pub probe_interval: Duration,
    /// How long a ping waits for its ack.
    pub probe_timeout: Duration,
    /// Members asked to probe indirectly.
    pub indirect_probes: u32,
    /// Shortest suspicion in probe intervals times `max(1, log10 N)`.
    pub suspicion_mult: f64,
    /// Sends per change: this times `⌈log10(N + 1)⌉`.
    pub retransmit_mult: u32,
    /// Full-state repair interval (up to 32 members).
    pub sync_interval: Duration,
    /// How long dead nodes are remembered.
    pub dead_grace: Duration,
    /// How long removed keys are remembered.
    pub tombstone_grace: Duration,
    /// Drain period before leaving.
    pub drain: Duration,
}

impl Config {
    /// Gossip's part of the settings; `advertise_ip` is the node's.
    pub fn from_settings(s: &Settings, advertise_ip: IpAddr) -> Result<Config, ConfigError> {
        let cluster = s.cluster.clone();
        if cluster.is_empty() || cluster.len() > 64 {
            return Err(ConfigError::new("--cluster", "must be 1-64 bytes"));
        }
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        let probe_interval = within("--probe-interval", s.probe_interval, ms(20), secs(10), "20ms and 10s")?;
        let probe_timeout = s.probe_timeout.unwrap_or(DEFAULT_PROBE_TIMEOUT.min(probe_interval / 2));
        if probe_timeout < ms(1) || probe_timeout >= probe_interval {
            return Err(ConfigError::new(
                "--probe-timeout",
                "must be at least 1ms and shorter than the probe interval",
            ));
        }
        if s.indirect_probes > 16 {
            return Err(ConfigError::new("--indirect-probes", "must be at most 16"));
        }
        if s.drain > MAX_DRAIN {
            return Err(ConfigError::new("--drain", "must be at most 10 minutes"));
        }
        let port = s.advertise.and_then(|a| a.port).unwrap_or(s.bind.port());
        Ok(Config {
            cluster,
            bind: s.bind,
            advertise: SocketAddr::new(advertise_ip, port),
            seeds: s.seeds.clone().unwrap_or_default(),
            keyring: keyring(s)?,
            key_file: s.gossip_key_file.clone(),
            interval: within("--gossip-interval", s.gossip_interval, ms(10), secs(10), "10ms and 10s")?,
            probe_interval,
            probe_timeout,
            indirect_probes: s.indirect_probes,
            suspicion_mult: within("--suspicion-mult", s.suspicion_mult, 0.25, 64.0, "0.25 and 64")?,
            retransmit_mult: within("--retransmit-mult", s.retransmit_mult, 1, 16, "1 and 16")?,
            sync_interval: within("--sync-interval", s.sync_interval, secs(1), secs(3600), "1s and 1h")?,
            dead_grace: within("--dead-grace", s.dead_grace, secs(1), MAX_DEAD_GRACE, "1s and 7 days")?,
            tombstone_grace: within("--tombstone-grace", s.tombstone_grace, secs(1), MAX_DEAD_GRACE, "1s and 7 days")?,
            drain: s.drain,
        })
    }
}

/// The keyring: the key file's when it exists (it holds what `murmur keyring` changed
/// since, as Consul's keyring file wins over `encrypt`), else the keys given; none only
/// with `--insecure`.
fn keyring(s: &Settings) -> Result<Option<Keyring>, ConfigError> {
    let from_file = match &s.gossip_key_file {
        Some(path) => load_file(path).map_err(|e| ConfigError::new("--gossip-key-file", chain(&e)))?,
        None => None,
    };
    let keys = s.gossip_keys.as_deref().unwrap_or_default();
    match from_file {
        Some(record) => Ok(Some(Keyring::from_record(&record).map_err(|e| ConfigError::new("--gossip-key-file", e))?)),
        None if keys.is_empty() && s.insecure => Ok(None),
        None if keys.is_empty() => Err(ConfigError::new(
            "--gossip-key",
            "no gossip key: make one with `murmur keygen` and give it to every agent \
             (with --gossip-key-file, to start the file with), or pass --insecure to run an open cluster",
        )),
        None => Ok(Some(Keyring::from_base64(keys).map_err(|e| ConfigError::new("--gossip-key", e))?)),
    }
}
