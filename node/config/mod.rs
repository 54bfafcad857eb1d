//! Configuration: TOML file < `MURMUR_*` environment < flags, merged into one validated
//! [`Config`] made of per-part configs, each part receiving only its own.
//!
//! Loading config binds nothing and starts nothing; a bad value fails here, naming its
//! field, so that `main` can exit with status 2 before anything runs.

mod error;
mod flags;
mod layer;
pub mod spec;
pub mod upstream;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

pub use error::ConfigError;
pub use flags::AgentArgs;
pub use layer::{from_env, from_toml, Advertise, Env, Layer, ProcessEnv};
pub use spec::{CheckKind, CheckSpec, ServiceSpec};
pub use upstream::{OutlierConfig, Policy, Proto, UpstreamSpec};

use murmur_protocol::limits::MAX_ZONE_LEN;
use murmur_protocol::NodeName;

use crate::gossip::Keyring;
use crate::tls::TlsMaterial;

/// Default gossip bind address: every interface, the port Serf and Consul use.
pub const DEFAULT_GOSSIP_BIND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7946);
/// Default time between pushes of waiting membership changes to three random members.
/// Nothing is sent when nothing waits, so an idle cluster pays only for probes.
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(200);
/// Default probe interval: one member probed per period. Four pings and four acks a
/// second at about 100 bytes each keep an idle agent under 1 KB/s, and a dead member
/// is first missed within a period or two.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// Default probe timeout: a LAN answers in well under a millisecond; 100 ms leaves room
/// for a loaded host before others are asked to probe.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// Default number of members asked to probe indirectly (SWIM's k; memberlist's 3).
pub const DEFAULT_INDIRECT_PROBES: u32 = 3;
/// Default shortest suspicion, in probe intervals times `max(1, log10 N)`: 0.5 s at 100
/// members, 0.75 s at 1,000 (longer on a lossy network; 6× that with no confirmation).
pub const DEFAULT_SUSPICION_MULT: f64 = 1.0;
/// Default retransmit multiplier: each change is sent `4 · ⌈log10(N + 1)⌉` times, as
/// memberlist does.
pub const DEFAULT_RETRANSMIT_MULT: u32 = 4;
/// Default full-state repair interval up to 32 members (memberlist's push/pull); it
/// grows as `⌈log2(N / 32)⌉ + 1` times this above.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Default time a dead node is remembered (listed as dead) before it is forgotten.
/// Minutes, not chitchat's 24 h: tasks churn all the time.
pub const DEFAULT_DEAD_GRACE: Duration = Duration::from_secs(300);
/// How long a removed key is remembered: far longer than any rumor takes to spread, so
/// that only a replica cut off for minutes has to refetch a node's state.
pub const DEFAULT_TOMBSTONE_GRACE: Duration = Duration::from_secs(300);
/// Default drain period: instances are marked draining this long before the agent
/// leaves, three DNS TTLs so that clients stop picking them.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(3);
/// Longest dead grace accepted.
pub const MAX_DEAD_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest drain period accepted.
pub const MAX_DRAIN: Duration = Duration::from_secs(600);
/// Default DNS stub address (Consul's DNS port, on loopback only).
pub const DEFAULT_DNS_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8600);
/// Default DNS TTL in seconds: the replica is live, short TTLs keep client caches fresh.
pub const DEFAULT_DNS_TTL: u32 = 1;
/// Default log filter: hickory's server logs every query at info, which a busy stub
/// cannot afford, so it is held to warnings.
pub const DEFAULT_LOG_FILTER: &str = "info,hickory_server=warn";
/// Default cap on A/AAAA/SRV records per answer (as Cloud Map's multivalue answers).
pub const DEFAULT_DNS_MAX_ANSWERS: usize = 8;
/// Default per-source DNS rate limit, queries per second per client socket (address and
/// port). The standard resolver opens a socket per lookup; a flood from one socket is
/// held to this. (AWS's VPC resolver allows 1,024 packets/s per network interface.)
pub const DEFAULT_DNS_RATE_LIMIT: u32 = 2000;
/// Default admin API address (Consul's HTTP port, on loopback only).
pub const DEFAULT_API_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8500);
/// Default DNS namespace.
pub const DEFAULT_NAMESPACE: &str = "murmur.local";
/// Default cluster id.
pub const DEFAULT_CLUSTER: &str = "murmur";

/// Who this node is.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node name, unique in the cluster.
    pub name: NodeName,
    /// Zone, if any.
    pub zone: Option<String>,
    /// The address peers and DNS answers use.
    pub advertise: IpAddr,
}

/// Gossip settings.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// Cluster id.
    pub cluster: String,
    /// UDP address to bind.
    pub bind: SocketAddr,
    /// Gossip address announced to peers.
    pub advertise: SocketAddr,
    /// Seeds, `HOST:PORT`.
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

/// DNS stub settings.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Address for UDP and TCP.
    pub listen: SocketAddr,
    /// Namespace served, lowercase, without a trailing dot.
    pub namespace: String,
    /// Where other names are forwarded.
    pub upstreams: Vec<SocketAddr>,
    /// TTL of answers, seconds.
    pub ttl: u32,
    /// Cap on records per answer.
    pub max_answers: usize,
    /// UDP queries per second answered per client socket; 0: no limit.
    pub rate_limit: u32,
    /// Proxy-mode aliases and the VIPs they answer (filled in by the agent at start).
    pub aliases: Vec<(String, IpAddr)>,
}

/// Admin API settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The token changes must carry, when one is set.
    pub token: Option<ApiToken>,
    /// Host names answered besides IP addresses and `localhost` (lowercase).
    pub hosts: Vec<String>,
    /// What one agent carries at most: API registrations past it are refused.
    pub limits: RegistrationLimits,
}

/// Caps on what one agent registers, so that one local process cannot make every replica
/// in the cluster carry its junk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationLimits {
    /// Instances, the config's included (`--max-instances`).
    pub instances: usize,
    /// Bytes of tags and attributes (keys and values) over every instance
    /// (`--max-attribute-bytes`).
    pub attribute_bytes: usize,
    /// API registrations and removals a second (a burst of twice that is allowed).
    pub per_second: u32,
}

impl Default for RegistrationLimits {
    fn default() -> Self {
        RegistrationLimits { instances: 256, attribute_bytes: 64 * 1024, per_second: 50 }
    }
}

/// The API token. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    /// Whether `presented` is the token, in time that does not depend on where they
    /// differ.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

/// The API settings from a merged layer: the token from its value or its file (not
/// both), the extra host names checked.
fn api_config(
    listen: Option<SocketAddr>,
    token: Option<String>,
    file: Option<PathBuf>,
    hosts: Option<Vec<String>>,
) -> Result<ApiConfig, ConfigError> {
    let token = match (token, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new("--api-token", "set either the token or --api-token-file, not both"))
        }
        (Some(t), None) => Some(("--api-token", t)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::new("--api-token-file", format!("cannot read {}: {e}", path.display())))?;
            Some(("--api-token-file", text.lines().next().unwrap_or_default().trim().to_owned()))
        }
        (None, None) => None,
    };
    let token = match token {
        Some((field, t)) if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) => {
            return Err(ConfigError::new(field, "the token must be non-empty printable ASCII, without spaces"))
        }
        Some((_, t)) => Some(ApiToken(t)),
        None => None,
    };
    let hosts = hosts
        .unwrap_or_default()
        .into_iter()
        .map(|h| {
            let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
            let ok = !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            ok.then_some(h.clone()).ok_or_else(|| ConfigError::new("--api-host", format!("`{h}` is not a host name")))
        })
        .collect::<Result<_, _>>()?;
    Ok(ApiConfig { listen: listen.unwrap_or(DEFAULT_API_LISTEN), token, hosts, limits: RegistrationLimits::default() })
}

/// The PEM files of a sidecar's mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--tls-ca`.
    pub ca: std::path::PathBuf,
    /// `--tls-cert`.
    pub cert: std::path::PathBuf,
    /// `--tls-key`.
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    /// Reads the files again and checks the certificate as at start: it chains to the
    /// CA and names `node` (and `identity`, when given).
    pub fn reload(&self, node: &str, identity: Option<&str>) -> Result<TlsMaterial, String> {
        let tls = TlsMaterial::load(&self.ca, &self.cert, &self.key)?;
        tls.check(node, identity)?;
        Ok(tls)
    }
}

/// Proxy-mode settings; present only when the sidecar proxy runs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// QUIC address of the inbound listener.
    pub bind: SocketAddr,
    /// What the sidecar's TLS is built from.
    pub tls: TlsMaterial,
    /// The files `tls` was read from, read again on SIGHUP (`None`: built in memory,
    /// as with `--insecure`).
    pub tls_files: Option<TlsFiles>,
    /// The service this sidecar calls as.
    pub identity: Option<murmur_protocol::ServiceName>,
    /// Upstreams the local app calls.
    pub upstreams: Vec<UpstreamSpec>,
    /// First VIP and how many there are.
    pub vip_base: Ipv4Addr,
    /// Size of the VIP range.
    pub vip_count: u32,
    /// Hosts file to write the aliases into.
    pub hosts_file: Option<std::path::PathBuf>,
    /// Where to write one JSON line per proxied connection or UDP flow (`-`: stdout).
    pub access_log: Option<std::path::PathBuf>,
}

/// Log settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// JSON lines instead of text.
    pub json: bool,
    /// `RUST_LOG`-style filter.
    pub filter: String,
}

/// The whole validated configuration of one agent.
#[derive(Debug, Clone)]
pub struct Config {
    /// Who this node is.
    pub node: NodeConfig,
    /// Gossip.
    pub gossip: GossipConfig,
    /// DNS stub.
    pub dns: DnsConfig,
    /// Admin API.
    pub api: ApiConfig,
    /// Instances registered at start.
    pub services: Vec<ServiceSpec>,
    /// The sidecar proxy, when on.
    pub proxy: Option<ProxyConfig>,
    /// Logging.
    pub log: LogConfig,
}

impl Config {
    /// Loads the full stack: the file named by `--config` (or `MURMUR_CONFIG`), then
    /// the environment, then the flags.
    pub fn load(args: &AgentArgs, env: &dyn Env) -> Result<Config, ConfigError> {
        let path = args.config.clone().or_else(|| env.var("MURMUR_CONFIG").map(Into::into));
        let file = match path {
            Some(p) => layer::from_file(&p)?,
            None => Layer::default(),
        };
        let merged = file.stack(from_env(env)?).stack(args.to_layer()?);
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Config::from_layer(merged, &resolv)
    }

    /// Validates a merged layer. `resolv_conf` is the text of /etc/resolv.conf, used
    /// when no upstream resolver is configured.
    pub fn from_layer(l: Layer, resolv_conf: &str) -> Result<Config, ConfigError> {
        let mut api = api_config(l.api_listen, l.api_token.clone(), l.api_token_file.clone(), l.api_hosts.clone())?;
        let defaults = RegistrationLimits::default();
        api.limits.instances = match l.max_instances {
            Some(0) => return Err(ConfigError::new("--max-instances", "must be at least 1")),
            n => n.unwrap_or(defaults.instances),
        };
        api.limits.attribute_bytes = l.max_attribute_bytes.unwrap_or(defaults.attribute_bytes);
        api.limits.per_second = match l.registration_rate {
            Some(0) => return Err(ConfigError::new("--registration-rate", "must be at least 1 a second")),
            n => n.unwrap_or(defaults.per_second),
        };
        let name_text = l.name.clone().unwrap_or_else(hostname);
        let name = NodeName::new(&name_text)
            .map_err(|e| ConfigError::new("--name", format!("{e}; set a node name that is a DNS label")))?;
        if let Some(z) = &l.zone {
            if z.is_empty() || z.len() > MAX_ZONE_LEN {
                return Err(ConfigError::new("--zone", format!("must be 1-{MAX_ZONE_LEN} bytes")));
            }
        }
        let cluster = l.cluster.unwrap_or_else(|| DEFAULT_CLUSTER.to_owned());
        if cluster.is_empty() || cluster.len() > 64 {
            return Err(ConfigError::new("--cluster", "must be 1-64 bytes"));
        }
        let namespace = parse_namespace(l.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE))?;
        let bind = l.bind.unwrap_or(DEFAULT_GOSSIP_BIND);
        let advertise_ip = match l.advertise {
            Some(a) => a.ip,
            None if !bind.ip().is_unspecified() => bind.ip(),
            None => guess_advertise_ip(),
        };
        if advertise_ip.is_unspecified() {
            return Err(ConfigError::new("--advertise", "must be a reachable address, not 0.0.0.0"));
        }
        let advertise_port = l.advertise.and_then(|a| a.port).unwrap_or(bind.port());
        let insecure = l.insecure.unwrap_or(false);
        let keys = l.gossip_keys.unwrap_or_default();
        let key_file = l.gossip_key_file.clone();
        let from_file = match &key_file {
            Some(path) => {
                crate::gossip::load_keyring_file(path).map_err(|m| ConfigError::new("--gossip-key-file", m))?
            }
            None => None,
        };
        // A keyring file that exists wins over --gossip-key: it holds what `murmur
        // keyring` changed since (as Consul's keyring file wins over `encrypt`).
        let keyring = match from_file {
            Some(record) => Some(Keyring::from_record(&record).map_err(|m| ConfigError::new("--gossip-key-file", m))?),
            None if keys.is_empty() => {
                if !insecure {
                    return Err(ConfigError::new(
                        "--gossip-key",
                        "no gossip key: make one with `murmur keygen` and give it to every agent \
                         (with --gossip-key-file, to start the file with), or pass --insecure to run an open cluster",
                    ));
                }
                None
            }
            None => Some(Keyring::from_base64(&keys).map_err(|m| ConfigError::new("--gossip-key", m))?),
        };
        let interval = l.gossip_interval.unwrap_or(DEFAULT_GOSSIP_INTERVAL);
        if interval < Duration::from_millis(10) || interval > Duration::from_secs(10) {
            return Err(ConfigError::new("--gossip-interval", "must be between 10ms and 10s"));
        }
        let probe_interval = l.probe_interval.unwrap_or(DEFAULT_PROBE_INTERVAL);
        if probe_interval < Duration::from_millis(20) || probe_interval > Duration::from_secs(10) {
            return Err(ConfigError::new("--probe-interval", "must be between 20ms and 10s"));
        }
        let probe_timeout = l.probe_timeout.unwrap_or(DEFAULT_PROBE_TIMEOUT.min(probe_interval / 2));
        if probe_timeout < Duration::from_millis(1) || probe_timeout >= probe_interval {
            return Err(ConfigError::new(
                "--probe-timeout",
                "must be at least 1ms and shorter than the probe interval",
            ));
        }
        let indirect_probes = l.indirect_probes.unwrap_or(DEFAULT_INDIRECT_PROBES);
        if indirect_probes > 16 {
            return Err(ConfigError::new("--indirect-probes", "must be at most 16"));
        }
        let suspicion_mult = l.suspicion_mult.unwrap_or(DEFAULT_SUSPICION_MULT);
        if !(0.25..=64.0).contains(&suspicion_mult) {
            return Err(ConfigError::new("--suspicion-mult", "must be between 0.25 and 64"));
        }
        let retransmit_mult = l.retransmit_mult.unwrap_or(DEFAULT_RETRANSMIT_MULT);
        if !(1..=16).contains(&retransmit_mult) {
            return Err(ConfigError::new("--retransmit-mult", "must be between 1 and 16"));
        }
        let sync_interval = l.sync_interval.unwrap_or(DEFAULT_SYNC_INTERVAL);
        if sync_interval < Duration::from_secs(1) || sync_interval > Duration::from_secs(3600) {
            return Err(ConfigError::new("--sync-interval", "must be between 1s and 1h"));
        }
        let dead_grace = l.dead_grace.unwrap_or(DEFAULT_DEAD_GRACE);
        if dead_grace < Duration::from_secs(1) || dead_grace > MAX_DEAD_GRACE {
            return Err(ConfigError::new("--dead-grace", "must be between 1s and 7 days"));
        }
        let tombstone_grace = l.tombstone_grace.unwrap_or(DEFAULT_TOMBSTONE_GRACE);
        if tombstone_grace < Duration::from_secs(1) || tombstone_grace > MAX_DEAD_GRACE {
            return Err(ConfigError::new("--tombstone-grace", "must be between 1s and 7 days"));
        }
        let drain = l.drain.unwrap_or(DEFAULT_DRAIN);
        if drain > MAX_DRAIN {
            return Err(ConfigError::new("--drain", "must be at most 10 minutes"));
        }
        let dns_listen = l.dns_listen.unwrap_or(DEFAULT_DNS_LISTEN);
        let upstreams = match l.dns_upstreams {
            Some(u) => u,
            None => parse_resolv_conf(resolv_conf),
        };
        let upstreams: Vec<SocketAddr> = upstreams.into_iter().filter(|u| !same_endpoint(*u, dns_listen)).collect();
        let max_answers = l.dns_max_answers.unwrap_or(DEFAULT_DNS_MAX_ANSWERS);
        if max_answers == 0 || max_answers > 64 {
            return Err(ConfigError::new("dns.max_answers", "must be between 1 and 64"));
        }
        let services = l.services.unwrap_or_default();
        if services.len() > api.limits.instances {
            return Err(ConfigError::new(
                "--max-instances",
                format!(
                    "the config declares {} instances, more than the cap of {}",
                    services.len(),
                    api.limits.instances
                ),
            ));
        }
        let mut ids = std::collections::BTreeSet::new();
        for (i, s) in services.iter().enumerate() {
            let id = s.id.as_ref().map(|i| i.to_string()).unwrap_or_else(|| format!("{name}-{}", s.port));
            if !ids.insert(id.clone()) {
                return Err(ConfigError::new(
                    format!("service[{i}]"),
                    format!("instance id `{id}` is used twice; give one an id="),
                ));
            }
        }
        let proxy_on = l.upstreams.is_some() || l.proxy_bind.is_some() || l.tls_cert.is_some();
        let proxy = if proxy_on {
            let tls = match (&l.tls_ca, &l.tls_cert, &l.tls_key) {
                (Some(ca), Some(cert), Some(key)) => TlsMaterial::load(ca, cert, key).map_err(|m| {
                    let (field, rest) = m.split_once(": ").unwrap_or(("--tls-cert", m.as_str()));
                    ConfigError::new(field, rest)
                })?,
                (None, None, None) if insecure => {
                    TlsMaterial::insecure(&name).map_err(|m| ConfigError::new("--tls-cert", m))?
                }
                (None, None, None) => {
                    return Err(ConfigError::new(
                        "--tls-cert",
                        "proxy mode needs --tls-ca, --tls-cert and --tls-key (`murmur ca init`, `murmur cert issue`), \
                         or --insecure",
                    ))
                }
                _ => {
                    return Err(ConfigError::new("--tls-cert", "give all three of --tls-ca, --tls-cert and --tls-key"))
                }
            };
            // The identity to call as: the flag, else the first service, else the one
            // service the certificate names (a caller-only task needs no flag).
            let named = if tls.is_mutual() { tls.services_named() } else { Vec::new() };
            let from_cert = match named.as_slice() {
                [one] => murmur_protocol::ServiceName::new(one).ok(),
                _ => None,
            };
            let identity = l.proxy_identity.clone().or_else(|| services.first().map(|s| s.name.clone())).or(from_cert);
            tls.check(name.as_str(), identity.as_ref().map(|s| s.as_str()))
                .map_err(|m| ConfigError::new("--tls-cert", m))?;
            if identity.is_none() && l.upstreams.as_ref().is_some_and(|u| !u.is_empty()) {
                let why = match named.len() {
                    0 => "upstreams need an identity to call as: register a --service, set --proxy-identity, \
                          or issue the certificate with one --service"
                        .to_owned(),
                    _ => format!(
                        "upstreams need an identity to call as, and the certificate names several services ({}): \
                         choose one with --proxy-identity",
                        named.join(", ")
                    ),
                };
                return Err(ConfigError::new("--proxy-identity", why));
            }
            let (vip_base, vip_count) =
                l.vip_range.unwrap_or((upstream::DEFAULT_VIP_BASE, upstream::DEFAULT_VIP_COUNT));
            let upstreams = l.upstreams.clone().unwrap_or_default();
            let mut aliases = std::collections::BTreeSet::new();
            for (i, u) in upstreams.iter().enumerate() {
                if !aliases.insert((u.alias.clone(), u.port)) {
                    return Err(ConfigError::new(
                        format!("upstream[{i}]"),
                        format!("alias `{}` port {} is used twice", u.alias, u.port),
                    ));
                }
            }
            if upstreams.len() as u64 > u64::from(vip_count) {
                return Err(ConfigError::new("--vip-range", "has fewer addresses than there are upstreams"));
            }
            Some(ProxyConfig {
                bind: l.proxy_bind.unwrap_or(SocketAddr::new(advertise_ip, upstream::DEFAULT_PROXY_PORT)),
                tls,
                tls_files: match (&l.tls_ca, &l.tls_cert, &l.tls_key) {
                    (Some(ca), Some(cert), Some(key)) => {
                        Some(TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() })
                    }
                    _ => None,
                },
                identity,
                upstreams,
                vip_base,
                vip_count,
                hosts_file: l.hosts_file.clone(),
                access_log: l.access_log.clone(),
            })
        } else {
            None
        };
        Ok(Config {
            proxy,
            node: NodeConfig { name, zone: l.zone, advertise: advertise_ip },
            gossip: GossipConfig {
                cluster,
                bind,
                advertise: SocketAddr::new(advertise_ip, advertise_port),
                seeds: l.seeds.unwrap_or_default(),
                keyring,
                key_file,
                interval,
                probe_interval,
                probe_timeout,
                indirect_probes,
                suspicion_mult,
                retransmit_mult,
                sync_interval,
                dead_grace,
                tombstone_grace,
                drain,
            },
            dns: DnsConfig {
                listen: dns_listen,
                namespace,
                upstreams,
                ttl: l.dns_ttl.unwrap_or(DEFAULT_DNS_TTL),
                max_answers,
                rate_limit: l.dns_rate_limit.unwrap_or(DEFAULT_DNS_RATE_LIMIT),
                aliases: Vec::new(),
            },
            api,
            services,
            log: LogConfig {
                json: l.log_json.unwrap_or(false),
                filter: l.log_filter.unwrap_or_else(|| DEFAULT_LOG_FILTER.to_owned()),
            },
        })
    }
}

/// A resolver listed as 127.0.0.1:53 is the agent itself when the agent listens on
/// 0.0.0.0:53 or 127.0.0.1:53; forwarding to it would loop.
fn same_endpoint(a: SocketAddr, listen: SocketAddr) -> bool {
    a.port() == listen.port() && (a.ip() == listen.ip() || listen.ip().is_unspecified())
}

fn parse_namespace(ns: &str) -> Result<String, ConfigError> {
    let ns = ns.trim_end_matches('.').to_ascii_lowercase();
    let ok = !ns.is_empty() && ns.len() <= 200 && ns.split('.').all(|label| murmur_protocol::Tag::new(label).is_ok());
    if !ok {
        return Err(ConfigError::new("--namespace", format!("`{ns}` is not a domain name such as myapp.local")));
    }
    Ok(ns)
}

/// The `nameserver` lines of a resolv.conf, on port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        .filter_map(|ip| ip.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().split('.').next().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

/// With gossip bound to every interface and no `--advertise`, the address the hostname
/// resolves to (as /etc/hosts gives it in most containers), else loopback.
fn guess_advertise_ip() -> IpAddr {
    (hostname().as_str(), 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.find(|a| !a.ip().is_loopback()))
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn key() -> String {
        crate::gossip::Keyring::generate_base64()
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let file = from_toml(
            "name = \"from-file\"\nnamespace = \"file.local\"\ninsecure = true\n[dns]\nlisten = \"127.0.0.1:1\"\nttl = \"5s\"\n",
        )
        .expect("valid toml");
        let env =
            from_env(&env(&[("MURMUR_NAME", "from-env"), ("MURMUR_DNS_LISTEN", "127.0.0.1:2")])).expect("valid env");
        let flags = AgentArgs { name: Some("from-flag".into()), ..Default::default() };
        let merged = file.stack(env).stack(flags.to_layer().expect("valid flags"));
        let c = Config::from_layer(merged, "").expect("valid config");
        assert_eq!(c.node.name.as_str(), "from-flag");
        assert_eq!(c.dns.listen.port(), 2);
        assert_eq!(c.dns.namespace, "file.local");
        assert_eq!(c.dns.ttl, 5);
        assert_eq!(c.dns.rate_limit, DEFAULT_DNS_RATE_LIMIT);
    }

    #[test]
    fn the_dns_rate_limit_comes_from_every_source() {
        let file = from_toml("insecure = true\nname = \"n\"\n[dns]\nrate_limit = 10\n").expect("valid toml");
        assert_eq!(Config::from_layer(file.clone(), "").expect("valid").dns.rate_limit, 10);
        let from_vars = from_env(&env(&[("MURMUR_DNS_RATE_LIMIT", "20")])).expect("valid env");
        assert_eq!(Config::from_layer(file.clone().stack(from_vars.clone()), "").expect("valid").dns.rate_limit, 20);
        let flags = AgentArgs { dns_rate_limit: Some(0), ..Default::default() }.to_layer().expect("valid flags");
        assert_eq!(Config::from_layer(file.stack(from_vars).stack(flags), "").expect("valid").dns.rate_limit, 0);
        let err = from_env(&env(&[("MURMUR_DNS_RATE_LIMIT", "-1")])).expect_err("negative");
        assert_eq!(err.field, "MURMUR_DNS_RATE_LIMIT");
    }

    #[test]
    fn the_api_token_comes_from_a_value_or_a_file_and_hosts_are_checked() {
        let dir = std::env::temp_dir().join(format!("murmur-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("token");
        std::fs::write(&path, "from-file\nignored second line\n").expect("write");
        let file =
            from_toml(&format!("insecure = true\nname = \"n\"\n[api]\ntoken_file = {:?}\n", path)).expect("valid toml");
        let api = Config::from_layer(file.clone(), "").expect("valid").api;
        assert!(api.token.as_ref().is_some_and(|t| t.matches("from-file")));
        let vars = from_env(&env(&[("MURMUR_API_TOKEN", "from-env"), ("MURMUR_API_HOSTS", "Mesh.Internal.")]))
            .expect("valid env");
        let both = Config::from_layer(file.stack(vars.clone()), "").expect_err("both");
        assert_eq!(both.field, "--api-token");
        let base = Layer { insecure: Some(true), name: Some("n".into()), ..Default::default() };
        let api = Config::from_layer(base.clone().stack(vars), "").expect("valid").api;
        assert!(api.token.as_ref().is_some_and(|t| t.matches("from-env") && !t.matches("from-en")));
        assert_eq!(api.hosts, ["mesh.internal"]);
        let bad = Layer { api_hosts: Some(vec!["no spaces".into()]), ..base.clone() };
        assert_eq!(Config::from_layer(bad, "").expect_err("bad host").field, "--api-host");
        let blank = Layer { api_token: Some("two words".into()), ..base.clone() };
        assert_eq!(Config::from_layer(blank, "").expect_err("bad token").field, "--api-token");
        let none = Layer { max_instances: Some(0), ..base.clone() };
        assert_eq!(Config::from_layer(none, "").expect_err("zero").field, "--max-instances");
        let still = Layer { registration_rate: Some(0), ..base.clone() };
        assert_eq!(Config::from_layer(still, "").expect_err("zero").field, "--registration-rate");
        let file = from_toml(
            "insecure = true\nname = \"n\"\n[api]\nregistration_rate = 7\n[gossip]\ntombstone_grace = \"30s\"\n",
        )
        .expect("valid toml");
        let config = Config::from_layer(file, "").expect("valid");
        assert_eq!(config.api.limits.per_second, 7);
        assert_eq!(config.gossip.tombstone_grace, Duration::from_secs(30));
        let brief = Layer { tombstone_grace: Some(Duration::from_millis(10)), ..base.clone() };
        assert_eq!(Config::from_layer(brief, "").expect_err("too short").field, "--tombstone-grace");
        let services = ["a:1", "b:2"].iter().map(|s| spec::parse_service_spec(s).expect("valid")).collect();
        let over = Layer { max_instances: Some(1), services: Some(services), ..base };
        let err = Config::from_layer(over, "").expect_err("more than the cap");
        assert!(err.field == "--max-instances" && err.message.contains("declares 2"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn errors_name_their_field() {
        let cases: Vec<(Layer, &str)> = vec![
            (Layer { name: Some("Bad Name".into()), insecure: Some(true), ..Default::default() }, "--name"),
            (Layer { name: Some("a".into()), ..Default::default() }, "--gossip-key"),
            (
                Layer { name: Some("a".into()), gossip_keys: Some(vec!["short".into()]), ..Default::default() },
                "--gossip-key",
            ),
            (
                Layer {
                    name: Some("a".into()),
                    insecure: Some(true),
                    namespace: Some("a..b".into()),
                    ..Default::default()
                },
                "--namespace",
            ),
        ];
        for (layer, field) in cases {
            let err = Config::from_layer(layer, "").expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
        let err = from_toml("[dns]\nlisten = \"nope\"").expect_err("bad listen");
        assert_eq!(err.field, "dns.listen");
        let err = from_toml("bogus = 1").expect_err("unknown key");
        assert!(err.message.contains("bogus"), "{err}");
        let err = from_env(&env(&[("MURMUR_BIND", "x")])).expect_err("bad env");
        assert_eq!(err.field, "MURMUR_BIND");
        let err = from_toml("[[service]]\nname = \"a\"\nport = 1\ncheck = \"ftp\"").expect_err("bad check");
        assert_eq!(err.field, "service[0].check");
    }

    #[test]
    fn keys_and_services_from_every_source() {
        let k = key();
        let c = Config::from_layer(
            from_env(&env(&[
                ("MURMUR_NAME", "n1"),
                ("MURMUR_GOSSIP_KEYS", &format!("{k},{k}")),
                ("MURMUR_SERVICES", "web:80,tags=a;db:5432,check=none"),
            ]))
            .expect("valid env"),
            "",
        )
        .expect("valid");
        assert_eq!(c.services.len(), 2);
        assert!(c.gossip.keyring.is_some());
        let dup = Layer {
            name: Some("n1".into()),
            insecure: Some(true),
            services: Some(vec![
                spec::parse_service_spec("a:80").expect("valid"),
                spec::parse_service_spec("b:80").expect("valid"),
            ]),
            ..Default::default()
        };
        assert_eq!(Config::from_layer(dup, "").expect_err("dup").field, "service[1]");
    }

    #[test]
    fn a_caller_only_agent_calls_as_the_one_service_its_certificate_names() {
        use crate::tls::ca::{cert_pem, key_pem, write_file};
        let dir =
            std::env::temp_dir().join(format!("murmur-identity-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = crate::tls::Ca::generate().expect("ca");
        write_file(&dir.join("ca.pem"), ca.cert_pem(), 0o644).expect("write");
        let node = NodeName::new("n").expect("valid");
        let layer_for = |services: &[&str]| {
            let names: Vec<_> = services.iter().map(|s| murmur_protocol::ServiceName::new(s).expect("valid")).collect();
            let id = ca.issue(&node, &names).expect("issue");
            let tag = services.join("-");
            let (cert, key_file) = (dir.join(format!("{tag}.pem")), dir.join(format!("{tag}.key")));
            write_file(&cert, &cert_pem(&id.cert), 0o644).expect("write");
            write_file(&key_file, &key_pem(&id.key), 0o600).expect("write");
            let flags = AgentArgs {
                name: Some("n".into()),
                gossip_keys: vec![key()],
                upstreams: vec!["orders:80".into()],
                tls_ca: Some(dir.join("ca.pem")),
                tls_cert: Some(cert),
                tls_key: Some(key_file),
                ..Default::default()
            };
            flags.to_layer().expect("valid flags")
        };
        let c = Config::from_layer(layer_for(&["billing"]), "").expect("valid");
        assert_eq!(c.proxy.expect("proxy").identity.map(|s| s.to_string()), Some("billing".into()));
        let err = Config::from_layer(layer_for(&["a", "b"]), "").expect_err("two services");
        assert_eq!(err.field, "--proxy-identity");
        assert!(err.to_string().contains("a, b"), "{err}");
        let err = Config::from_layer(layer_for(&[]), "").expect_err("no service");
        assert_eq!(err.field, "--proxy-identity");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn proxy_settings_survive_the_stack() {
        let flags = AgentArgs {
            name: Some("n".into()),
            insecure: true,
            services: vec!["web:1,check=none".into()],
            upstreams: vec!["orders:80".into()],
            ..Default::default()
        };
        let merged = Layer::default().stack(flags.to_layer().expect("valid flags"));
        let c = Config::from_layer(merged, "").expect("valid");
        let p = c.proxy.expect("proxy mode on");
        assert_eq!(p.upstreams.len(), 1);
        assert_eq!(p.identity.map(|s| s.to_string()), Some("web".into()));
        let no_identity = AgentArgs {
            name: Some("n".into()),
            insecure: true,
            upstreams: vec!["orders:80".into()],
            ..Default::default()
        };
        let err = Config::from_layer(no_identity.to_layer().expect("valid"), "").expect_err("no identity");
        assert_eq!(err.field, "--proxy-identity");
        let no_tls = AgentArgs {
            name: Some("n".into()),
            gossip_keys: vec![key()],
            upstreams: vec!["orders:80".into()],
            ..Default::default()
        };
        let err = Config::from_layer(no_tls.to_layer().expect("valid"), "").expect_err("no tls");
        assert_eq!(err.field, "--tls-cert");
    }

    #[test]
    fn resolv_conf_upstreams_skip_the_agent_itself() {
        let text = "# x\nnameserver 10.0.0.2\nnameserver 127.0.0.1\nnameserver fe80::1%eth0\nsearch a\n";
        assert_eq!(parse_resolv_conf(text).len(), 3);
        let layer = Layer {
            name: Some("n".into()),
            insecure: Some(true),
            dns_listen: Some("127.0.0.1:53".parse().expect("valid")),
            ..Default::default()
        };
        let c = Config::from_layer(layer, text).expect("valid");
        assert_eq!(c.dns.upstreams.len(), 2);
    }
}
