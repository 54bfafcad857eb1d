//! Configuration: TOML file < `MURMUR_*` environment < flags, merged into one validated
//! [`Config`] made of per-part configs, each part receiving only its own.
//!
//! Loading config binds nothing and starts nothing; a bad value fails here, naming its
//! field, so that `main` can exit with status 2 before anything runs.

mod error;
mod file;
mod flags;
mod kinds;
mod settings;
pub mod spec;
pub mod upstream;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

pub use error::ConfigError;
pub use file::from_toml;
pub use flags::AgentArgs;
pub use kinds::{Advertise, Shape};
pub use settings::{Env, Layer, ProcessEnv, Setting, Settings, SETTINGS};
pub use spec::{CheckKind, CheckSpec, ServiceSpec};
pub use upstream::{OutlierConfig, Policy, Proto, UpstreamSpec};

use murmur_protocol::limits::MAX_ZONE_LEN;
use murmur_protocol::NodeName;

use crate::gossip::Keyring;
use crate::tls::TlsMaterial;

/// Default probe timeout: a LAN answers in well under a millisecond; 100 ms leaves room
/// for a loaded host before others are asked to probe. (Half the probe interval when
/// that is shorter, so it is not in the settings table.)
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest dead grace accepted.
pub const MAX_DEAD_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest drain period accepted.
pub const MAX_DRAIN: Duration = Duration::from_secs(600);

/// Reads the `MURMUR_*` variables into a layer.
pub fn from_env(env: &dyn Env) -> Result<Layer, ConfigError> {
    Layer::from_env(env)
}

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

/// The API settings: the token from its value or its file (not both), the extra host
/// names checked, the registration caps.
fn api_config(s: &Settings) -> Result<ApiConfig, ConfigError> {
    let token = match (&s.api_token, &s.api_token_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new("--api-token", "set either the token or --api-token-file, not both"))
        }
        (Some(t), None) => Some(("--api-token", t.clone())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
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
    let hosts = s
        .api_hosts
        .iter()
        .flatten()
        .map(|h| {
            let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
            let ok = !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            ok.then_some(h.clone()).ok_or_else(|| ConfigError::new("--api-host", format!("`{h}` is not a host name")))
        })
        .collect::<Result<_, _>>()?;
    if s.max_instances == 0 {
        return Err(ConfigError::new("--max-instances", "must be at least 1"));
    }
    if s.registration_rate == 0 {
        return Err(ConfigError::new("--registration-rate", "must be at least 1 a second"));
    }
    let limits = RegistrationLimits {
        instances: s.max_instances,
        attribute_bytes: s.max_attribute_bytes,
        per_second: s.registration_rate,
    };
    Ok(ApiConfig { listen: s.api_listen, token, hosts, limits })
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
            Some(p) => file::from_file(&p)?,
            None => Layer::default(),
        };
        let merged = file.stack(from_env(env)?).stack(args.to_layer()?);
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Config::from_layer(merged, &resolv)
    }

    /// Validates a merged layer. `resolv_conf` is the text of /etc/resolv.conf, used
    /// when no upstream resolver is configured.
    pub fn from_layer(l: Layer, resolv_conf: &str) -> Result<Config, ConfigError> {
        let s = Settings::resolve(l);
        let api = api_config(&s)?;
        let node = node_config(&s)?;
        let gossip = gossip_config(&s, node.advertise)?;
        let dns = dns_config(&s, resolv_conf)?;
        let services = services(&s, &node.name, api.limits.instances)?;
        let proxy = proxy_config(&s, &node, &services)?;
        let log = LogConfig { json: s.log_json, filter: s.log_filter };
        Ok(Config { node, gossip, dns, api, services, proxy, log })
    }
}

/// `value`, when it lies within `lo..=hi`; else an error about `flag` that says
/// "must be between {range}".
fn within<T: PartialOrd>(flag: &str, value: T, lo: T, hi: T, range: &str) -> Result<T, ConfigError> {
    if value < lo || value > hi {
        return Err(ConfigError::new(flag, format!("must be between {range}")));
    }
    Ok(value)
}

/// Who this node is: its name (a DNS label), zone and advertised IP.
fn node_config(s: &Settings) -> Result<NodeConfig, ConfigError> {
    let name_text = s.name.clone().unwrap_or_else(hostname);
    let name = NodeName::new(&name_text)
        .map_err(|e| ConfigError::new("--name", format!("{e}; set a node name that is a DNS label")))?;
    if let Some(z) = &s.zone {
        if z.is_empty() || z.len() > MAX_ZONE_LEN {
            return Err(ConfigError::new("--zone", format!("must be 1-{MAX_ZONE_LEN} bytes")));
        }
    }
    let advertise = match s.advertise {
        Some(a) => a.ip,
        None if !s.bind.ip().is_unspecified() => s.bind.ip(),
        None => guess_advertise_ip(),
    };
    if advertise.is_unspecified() {
        return Err(ConfigError::new("--advertise", "must be a reachable address, not 0.0.0.0"));
    }
    Ok(NodeConfig { name, zone: s.zone.clone(), advertise })
}

/// The keyring: the key file's when it exists (it holds what `murmur keyring` changed
/// since, as Consul's keyring file wins over `encrypt`), else the keys given; none only
/// with `--insecure`.
fn keyring(s: &Settings) -> Result<Option<Keyring>, ConfigError> {
    let from_file = match &s.gossip_key_file {
        Some(path) => crate::gossip::load_keyring_file(path).map_err(|m| ConfigError::new("--gossip-key-file", m))?,
        None => None,
    };
    let keys = s.gossip_keys.as_deref().unwrap_or_default();
    match from_file {
        Some(record) => Ok(Some(Keyring::from_record(&record).map_err(|m| ConfigError::new("--gossip-key-file", m))?)),
        None if keys.is_empty() && s.insecure => Ok(None),
        None if keys.is_empty() => Err(ConfigError::new(
            "--gossip-key",
            "no gossip key: make one with `murmur keygen` and give it to every agent \
             (with --gossip-key-file, to start the file with), or pass --insecure to run an open cluster",
        )),
        None => Ok(Some(Keyring::from_base64(keys).map_err(|m| ConfigError::new("--gossip-key", m))?)),
    }
}

/// Gossip: the keyring and the SWIM timings, each within its bounds.
fn gossip_config(s: &Settings, advertise_ip: IpAddr) -> Result<GossipConfig, ConfigError> {
    let cluster = s.cluster.clone();
    if cluster.is_empty() || cluster.len() > 64 {
        return Err(ConfigError::new("--cluster", "must be 1-64 bytes"));
    }
    let ms = Duration::from_millis;
    let secs = Duration::from_secs;
    let probe_interval = within("--probe-interval", s.probe_interval, ms(20), secs(10), "20ms and 10s")?;
    let probe_timeout = s.probe_timeout.unwrap_or(DEFAULT_PROBE_TIMEOUT.min(probe_interval / 2));
    if probe_timeout < ms(1) || probe_timeout >= probe_interval {
        return Err(ConfigError::new("--probe-timeout", "must be at least 1ms and shorter than the probe interval"));
    }
    if s.indirect_probes > 16 {
        return Err(ConfigError::new("--indirect-probes", "must be at most 16"));
    }
    if s.drain > MAX_DRAIN {
        return Err(ConfigError::new("--drain", "must be at most 10 minutes"));
    }
    let port = s.advertise.and_then(|a| a.port).unwrap_or(s.bind.port());
    Ok(GossipConfig {
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

/// The DNS stub: resolv.conf's nameservers when no upstream is given, never the stub
/// itself.
fn dns_config(s: &Settings, resolv_conf: &str) -> Result<DnsConfig, ConfigError> {
    let upstreams = s.dns_upstreams.clone().unwrap_or_else(|| parse_resolv_conf(resolv_conf));
    Ok(DnsConfig {
        listen: s.dns_listen,
        namespace: parse_namespace(&s.namespace)?,
        upstreams: upstreams.into_iter().filter(|u| !same_endpoint(*u, s.dns_listen)).collect(),
        ttl: s.dns_ttl,
        max_answers: within("--dns-max-answers", s.dns_max_answers, 1, 64, "1 and 64")?,
        rate_limit: s.dns_rate_limit,
        aliases: Vec::new(),
    })
}

/// The instances registered at start: within the cap, each id used once.
fn services(s: &Settings, node: &NodeName, cap: usize) -> Result<Vec<ServiceSpec>, ConfigError> {
    let services = s.services.clone().unwrap_or_default();
    if services.len() > cap {
        return Err(ConfigError::new(
            "--max-instances",
            format!("the config declares {} instances, more than the cap of {cap}", services.len()),
        ));
    }
    let mut ids = std::collections::BTreeSet::new();
    for (i, spec) in services.iter().enumerate() {
        let id = spec.id.as_ref().map(|i| i.to_string()).unwrap_or_else(|| format!("{node}-{}", spec.port));
        if !ids.insert(id.clone()) {
            return Err(ConfigError::new(
                format!("service[{i}]"),
                format!("instance id `{id}` is used twice; give one an id="),
            ));
        }
    }
    Ok(services)
}

/// The sidecar's TLS: the three files, or with `--insecure` a throwaway certificate.
fn tls_material(s: &Settings, name: &NodeName) -> Result<TlsMaterial, ConfigError> {
    match (&s.tls_ca, &s.tls_cert, &s.tls_key) {
        (Some(ca), Some(cert), Some(key)) => TlsMaterial::load(ca, cert, key).map_err(|m| {
            let (field, rest) = m.split_once(": ").unwrap_or(("--tls-cert", m.as_str()));
            ConfigError::new(field, rest)
        }),
        (None, None, None) if s.insecure => TlsMaterial::insecure(name).map_err(|m| ConfigError::new("--tls-cert", m)),
        (None, None, None) => Err(ConfigError::new(
            "--tls-cert",
            "proxy mode needs --tls-ca, --tls-cert and --tls-key (`murmur ca init`, `murmur cert issue`), \
             or --insecure",
        )),
        _ => Err(ConfigError::new("--tls-cert", "give all three of --tls-ca, --tls-cert and --tls-key")),
    }
}

/// Proxy mode, on when there are upstreams, TLS files or a proxy bind: its TLS, the
/// identity it calls as, the upstreams and their VIPs.
fn proxy_config(s: &Settings, node: &NodeConfig, services: &[ServiceSpec]) -> Result<Option<ProxyConfig>, ConfigError> {
    if s.upstreams.is_none() && s.proxy_bind.is_none() && s.tls_cert.is_none() {
        return Ok(None);
    }
    let tls = tls_material(s, &node.name)?;
    // The identity to call as: the flag, else the first service, else the one service
    // the certificate names (a caller-only task needs no flag).
    let named = if tls.is_mutual() { tls.services_named() } else { Vec::new() };
    let from_cert = match named.as_slice() {
        [one] => murmur_protocol::ServiceName::new(one).ok(),
        _ => None,
    };
    let identity = s.proxy_identity.clone().or_else(|| services.first().map(|s| s.name.clone())).or(from_cert);
    tls.check(node.name.as_str(), identity.as_ref().map(|s| s.as_str()))
        .map_err(|m| ConfigError::new("--tls-cert", m))?;
    let upstreams = s.upstreams.clone().unwrap_or_default();
    if identity.is_none() && !upstreams.is_empty() {
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
    let (vip_base, vip_count) = s.vip_range;
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
    let tls_files = match (&s.tls_ca, &s.tls_cert, &s.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Some(TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() }),
        _ => None,
    };
    Ok(Some(ProxyConfig {
        bind: s.proxy_bind.unwrap_or(SocketAddr::new(node.advertise, upstream::DEFAULT_PROXY_PORT)),
        tls,
        tls_files,
        identity,
        upstreams,
        vip_base,
        vip_count,
        hosts_file: s.hosts_file.clone(),
        access_log: s.access_log.clone(),
    }))
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
        let flags = AgentArgs::parse(["--name", "from-flag"]).expect("valid flags");
        let merged = file.stack(env).stack(flags.to_layer().expect("valid flags"));
        let c = Config::from_layer(merged, "").expect("valid config");
        assert_eq!(c.node.name.as_str(), "from-flag");
        assert_eq!(c.dns.listen.port(), 2);
        assert_eq!(c.dns.namespace, "file.local");
        assert_eq!(c.dns.ttl, 5);
        assert_eq!(c.dns.rate_limit, 2000);
    }

    #[test]
    fn the_dns_rate_limit_comes_from_every_source() {
        let file = from_toml("insecure = true\nname = \"n\"\n[dns]\nrate_limit = 10\n").expect("valid toml");
        assert_eq!(Config::from_layer(file.clone(), "").expect("valid").dns.rate_limit, 10);
        let from_vars = from_env(&env(&[("MURMUR_DNS_RATE_LIMIT", "20")])).expect("valid env");
        assert_eq!(Config::from_layer(file.clone().stack(from_vars.clone()), "").expect("valid").dns.rate_limit, 20);
        let flags = AgentArgs::parse(["--dns-rate-limit", "0"]).expect("valid").to_layer().expect("valid flags");
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
            let (ca, cert, key_file) = (dir.join("ca.pem"), cert.display().to_string(), key_file.display().to_string());
            let flags = AgentArgs::parse([
                "--name",
                "n",
                "--gossip-key",
                &key(),
                "--upstream",
                "orders:80",
                "--tls-ca",
                &ca.display().to_string(),
                "--tls-cert",
                &cert,
                "--tls-key",
                &key_file,
            ])
            .expect("valid flags");
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
        let flags =
            AgentArgs::parse(["--name", "n", "--insecure", "--service", "web:1,check=none", "--upstream", "orders:80"])
                .expect("valid flags");
        let merged = Layer::default().stack(flags.to_layer().expect("valid flags"));
        let c = Config::from_layer(merged, "").expect("valid");
        let p = c.proxy.expect("proxy mode on");
        assert_eq!(p.upstreams.len(), 1);
        assert_eq!(p.identity.map(|s| s.to_string()), Some("web".into()));
        let no_identity = AgentArgs::parse(["--name", "n", "--insecure", "--upstream", "orders:80"]).expect("valid");
        let err = Config::from_layer(no_identity.to_layer().expect("valid"), "").expect_err("no identity");
        assert_eq!(err.field, "--proxy-identity");
        let no_tls =
            AgentArgs::parse(["--name", "n", "--gossip-key", &key(), "--upstream", "orders:80"]).expect("valid");
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
