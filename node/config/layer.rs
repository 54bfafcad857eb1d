//! One source of settings (file, environment or flags) as a partial config. Sources are
//! read into `Layer`s and stacked (file < env < flags) before validation; each value
//! remembers nothing of where it came from except through the field names in errors,
//! which are produced while reading each source.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::error::ConfigError;
use super::spec::{parse_check_kind, parse_duration, parse_service_spec, ServiceSpec};
use super::upstream::{parse_upstream_spec, parse_vip_range, UpstreamSpec};
use murmur_protocol::{AttrKey, InstanceId, ServiceName, Tag};

/// Where peers reach this node: an IP and, optionally, a port other than the bind port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advertise {
    /// The advertised IP.
    pub ip: IpAddr,
    /// The advertised gossip port, when it differs from the bound one (NAT).
    pub port: Option<u16>,
}

impl FromStr for Advertise {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self { ip: addr.ip(), port: Some(addr.port()) });
        }
        s.parse::<IpAddr>().map(|ip| Self { ip, port: None }).map_err(|_| format!("`{s}` is not IP or IP:PORT"))
    }
}

/// A partial configuration from one source. `None` (or an empty list) means "not set
/// here"; a set list replaces the list of a lower layer rather than extending it.
#[derive(Debug, Default, Clone)]
pub struct Layer {
    pub name: Option<String>,
    pub cluster: Option<String>,
    pub namespace: Option<String>,
    pub zone: Option<String>,
    pub insecure: Option<bool>,
    pub bind: Option<SocketAddr>,
    pub advertise: Option<Advertise>,
    pub seeds: Option<Vec<String>>,
    pub gossip_keys: Option<Vec<String>>,
    pub gossip_key_file: Option<PathBuf>,
    pub gossip_interval: Option<Duration>,
    pub probe_interval: Option<Duration>,
    pub probe_timeout: Option<Duration>,
    pub indirect_probes: Option<u32>,
    pub suspicion_mult: Option<f64>,
    pub retransmit_mult: Option<u32>,
    pub sync_interval: Option<Duration>,
    pub dead_grace: Option<Duration>,
    pub tombstone_grace: Option<Duration>,
    pub drain: Option<Duration>,
    pub dns_listen: Option<SocketAddr>,
    pub dns_upstreams: Option<Vec<SocketAddr>>,
    pub dns_ttl: Option<u32>,
    pub dns_max_answers: Option<usize>,
    pub dns_rate_limit: Option<u32>,
    pub api_listen: Option<SocketAddr>,
    pub api_token: Option<String>,
    pub api_token_file: Option<PathBuf>,
    pub api_hosts: Option<Vec<String>>,
    pub max_instances: Option<usize>,
    pub max_attribute_bytes: Option<usize>,
    pub registration_rate: Option<u32>,
    pub services: Option<Vec<ServiceSpec>>,
    pub log_json: Option<bool>,
    pub log_filter: Option<String>,
    pub upstreams: Option<Vec<UpstreamSpec>>,
    pub proxy_bind: Option<SocketAddr>,
    pub proxy_identity: Option<ServiceName>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub vip_range: Option<(std::net::Ipv4Addr, u32)>,
    pub hosts_file: Option<PathBuf>,
    pub access_log: Option<PathBuf>,
}

/// Stacks `high` on `low`, field by field. `high` is destructured without `..`, so a
/// field added to `Layer` but missing from the one list below is a compile error.
macro_rules! stack_layers {
    ($low:ident, $high:ident, $($f:ident),* $(,)?) => {{
        let Layer { $($f),* } = $high;
        $( if $f.is_some() { $low.$f = $f; } )*
    }};
}

impl Layer {
    /// Puts `high` on top of `self`: every field `high` sets wins.
    pub fn stack(mut self, high: Layer) -> Layer {
        stack_layers!(
            self,
            high,
            name,
            cluster,
            namespace,
            zone,
            insecure,
            bind,
            advertise,
            seeds,
            gossip_keys,
            gossip_key_file,
            gossip_interval,
            probe_interval,
            probe_timeout,
            indirect_probes,
            suspicion_mult,
            retransmit_mult,
            sync_interval,
            dead_grace,
            tombstone_grace,
            drain,
            dns_listen,
            dns_upstreams,
            dns_ttl,
            dns_max_answers,
            dns_rate_limit,
            api_listen,
            api_token,
            api_token_file,
            api_hosts,
            max_instances,
            max_attribute_bytes,
            registration_rate,
            services,
            log_json,
            log_filter,
            upstreams,
            proxy_bind,
            proxy_identity,
            tls_ca,
            tls_cert,
            tls_key,
            vip_range,
            hosts_file,
            access_log
        );
        self
    }
}

/// Reads environment variables; tests give a map instead of the process environment.
pub trait Env {
    /// The value of `key`, if set.
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

/// Parses one value, naming the field on failure.
pub(crate) fn parse_field<T: FromStr>(field: &str, text: &str) -> Result<T, ConfigError> {
    text.trim().parse().map_err(|_| ConfigError::new(field, format!("`{text}` is not a valid value")))
}

fn parse_list<T: FromStr>(field: &str, text: &str, sep: char) -> Result<Vec<T>, ConfigError> {
    text.split(sep).map(str::trim).filter(|s| !s.is_empty()).map(|s| parse_field(field, s)).collect()
}

fn parse_bool(field: &str, text: &str) -> Result<bool, ConfigError> {
    match text.trim() {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" | "" => Ok(false),
        _ => Err(ConfigError::new(field, format!("`{text}` is not true or false"))),
    }
}

/// Longest DNS TTL accepted: answers must follow the live replica.
const MAX_DNS_TTL_SECS: u64 = 3600;

/// A DNS TTL: whole seconds, at most an hour (DNS has no finer unit).
pub(crate) fn ttl_secs(field: &str, d: Duration) -> Result<u32, ConfigError> {
    if d.subsec_nanos() != 0 || d.as_secs() > MAX_DNS_TTL_SECS {
        return Err(ConfigError::new(field, format!("must be whole seconds from 0 to {MAX_DNS_TTL_SECS}s")));
    }
    Ok(d.as_secs() as u32)
}

fn duration_field(field: &str, text: &str) -> Result<Duration, ConfigError> {
    parse_duration(text).map_err(|m| ConfigError::new(field, m))
}

/// Reads the `MURMUR_*` variables. Lists are comma-separated; `MURMUR_SERVICES` is
/// separated by `;` because a service spec holds commas.
pub fn from_env(env: &dyn Env) -> Result<Layer, ConfigError> {
    let get = |k: &str| env.var(k).filter(|v| !v.is_empty()).map(|v| (k.to_owned(), v));
    let text = |k: &str| get(k).map(|(_, v)| v);
    let mut l = Layer {
        name: text("MURMUR_NAME"),
        cluster: text("MURMUR_CLUSTER"),
        namespace: text("MURMUR_NAMESPACE"),
        zone: text("MURMUR_ZONE"),
        log_filter: text("MURMUR_LOG"),
        ..Default::default()
    };
    if let Some((k, v)) = get("MURMUR_INSECURE") {
        l.insecure = Some(parse_bool(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_LOG_JSON") {
        l.log_json = Some(parse_bool(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_BIND") {
        l.bind = Some(parse_field(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_ADVERTISE") {
        l.advertise = Some(parse_field(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_SEEDS") {
        l.seeds = Some(parse_list(&k, &v, ',')?);
    }
    if let Some((k, v)) = get("MURMUR_GOSSIP_KEYS") {
        l.gossip_keys = Some(parse_list(&k, &v, ',')?);
    }
    if let Some((k, v)) = get("MURMUR_GOSSIP_INTERVAL") {
        l.gossip_interval = Some(duration_field(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_PROBE_INTERVAL") {
        l.probe_interval = Some(duration_field(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_PROBE_TIMEOUT") {
        l.probe_timeout = Some(duration_field(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_INDIRECT_PROBES") {
        l.indirect_probes = Some(parse_field(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_SUSPICION_MULT") {
        l.suspicion_mult = Some(parse_field(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_RETRANSMIT_MULT") {
        l.retransmit_mult = Some(parse_field(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_SYNC_INTERVAL") {
        l.sync_interval = Some(duration_field(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_DEAD_GRACE") {
        l.dead_grace = Some(duration_field(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_TOMBSTONE_GRACE") {
        l.tombstone_grace = Some(duration_field(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_DRAIN") {
        l.drain = Some(duration_field(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_DNS_LISTEN") {
        l.dns_listen = Some(parse_field(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_DNS_UPSTREAMS") {
        l.dns_upstreams = Some(parse_list(&k, &v, ',')?);
    }
    if let Some((k, v)) = get("MURMUR_DNS_TTL") {
        l.dns_ttl = Some(ttl_secs(&k, duration_field(&k, &v)?)?);
    }
    if let Some((k, v)) = get("MURMUR_DNS_RATE_LIMIT") {
        l.dns_rate_limit = Some(parse_field(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_API_LISTEN") {
        l.api_listen = Some(parse_field(&k, &v)?);
    }
    l.api_token = text("MURMUR_API_TOKEN");
    l.api_token_file = text("MURMUR_API_TOKEN_FILE").map(PathBuf::from);
    if let Some((k, v)) = get("MURMUR_API_HOSTS") {
        l.api_hosts = Some(parse_list(&k, &v, ',')?);
    }
    if let Some((k, v)) = get("MURMUR_MAX_INSTANCES") {
        l.max_instances = Some(parse_field(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_MAX_ATTRIBUTE_BYTES") {
        l.max_attribute_bytes = Some(parse_field(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_REGISTRATION_RATE") {
        l.registration_rate = Some(parse_field(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_UPSTREAMS") {
        let specs = v
            .split(';')
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_upstream_spec(s.trim()).map_err(|m| ConfigError::new(&k, m)))
            .collect::<Result<_, _>>()?;
        l.upstreams = Some(specs);
    }
    if let Some((k, v)) = get("MURMUR_PROXY_BIND") {
        l.proxy_bind = Some(parse_field(&k, &v)?);
    }
    if let Some((k, v)) = get("MURMUR_PROXY_IDENTITY") {
        l.proxy_identity = Some(ServiceName::new(&v).map_err(|e| ConfigError::new(&k, e.to_string()))?);
    }
    l.gossip_key_file = text("MURMUR_GOSSIP_KEY_FILE").map(PathBuf::from);
    l.tls_ca = text("MURMUR_TLS_CA").map(PathBuf::from);
    l.tls_cert = text("MURMUR_TLS_CERT").map(PathBuf::from);
    l.tls_key = text("MURMUR_TLS_KEY").map(PathBuf::from);
    l.hosts_file = text("MURMUR_HOSTS_FILE").map(PathBuf::from);
    l.access_log = text("MURMUR_ACCESS_LOG").map(PathBuf::from);
    if let Some((k, v)) = get("MURMUR_VIP_RANGE") {
        l.vip_range = Some(parse_vip_range(&v).map_err(|m| ConfigError::new(&k, m))?);
    }
    if let Some((k, v)) = get("MURMUR_SERVICES") {
        let specs = v
            .split(';')
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_service_spec(s.trim()).map_err(|m| ConfigError::new(&k, m)))
            .collect::<Result<_, _>>()?;
        l.services = Some(specs);
    }
    Ok(l)
}

/// The TOML file. Unknown fields are refused so that a typo is an error, not a silently
/// ignored setting.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: Option<String>,
    cluster: Option<String>,
    namespace: Option<String>,
    zone: Option<String>,
    insecure: Option<bool>,
    #[serde(default)]
    gossip: FileGossip,
    #[serde(default)]
    dns: FileDns,
    #[serde(default)]
    api: FileApi,
    #[serde(default)]
    log: FileLog,
    service: Option<Vec<FileService>>,
    #[serde(default)]
    proxy: FileProxy,
    upstream: Option<Vec<FileUpstream>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProxy {
    bind: Option<String>,
    identity: Option<String>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    vip_range: Option<String>,
    hosts_file: Option<PathBuf>,
    access_log: Option<PathBuf>,
}

/// An `[[upstream]]` table: `service` and `port`, then any `--upstream` option as a
/// key (`alias = "o"`, `retries = 3`, `connect-timeout = "1s"`).
#[derive(Debug, Deserialize)]
struct FileUpstream {
    service: String,
    port: u16,
    #[serde(flatten)]
    options: BTreeMap<String, toml::Value>,
}

fn file_upstream(i: usize, u: FileUpstream) -> Result<UpstreamSpec, ConfigError> {
    let mut spec = format!("{}:{}", u.service, u.port);
    for (k, v) in u.options {
        let v = match v {
            toml::Value::String(s) => s,
            other => other.to_string(),
        };
        spec.push_str(&format!(",{k}={v}"));
    }
    parse_upstream_spec(&spec).map_err(|m| ConfigError::new(format!("upstream[{i}]"), m))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGossip {
    bind: Option<String>,
    advertise: Option<String>,
    seeds: Option<Vec<String>>,
    keys: Option<Vec<String>>,
    key_file: Option<PathBuf>,
    interval: Option<String>,
    probe_interval: Option<String>,
    probe_timeout: Option<String>,
    indirect_probes: Option<u32>,
    suspicion_mult: Option<f64>,
    retransmit_mult: Option<u32>,
    sync_interval: Option<String>,
    dead_grace: Option<String>,
    tombstone_grace: Option<String>,
    drain: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDns {
    listen: Option<String>,
    upstreams: Option<Vec<String>>,
    ttl: Option<String>,
    max_answers: Option<usize>,
    rate_limit: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApi {
    listen: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    hosts: Option<Vec<String>>,
    max_instances: Option<usize>,
    max_attribute_bytes: Option<usize>,
    registration_rate: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    json: Option<bool>,
    filter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileService {
    name: String,
    port: u16,
    id: Option<String>,
    address: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    weight: Option<u16>,
    #[serde(default)]
    allow: Vec<String>,
    check: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    failures: Option<u32>,
    successes: Option<u32>,
    deregister_after: Option<String>,
}

fn opt<T>(
    field: &str,
    v: Option<String>,
    f: impl Fn(&str, &str) -> Result<T, ConfigError>,
) -> Result<Option<T>, ConfigError> {
    v.map(|v| f(field, &v)).transpose()
}

fn file_service(i: usize, s: FileService) -> Result<ServiceSpec, ConfigError> {
    let field = |k: &str| format!("service[{i}].{k}");
    let name = ServiceName::new(&s.name).map_err(|e| ConfigError::new(field("name"), e.to_string()))?;
    let mut spec = ServiceSpec::new(name, s.port);
    if let Some(id) = s.id {
        spec.id = Some(InstanceId::new(&id).map_err(|e| ConfigError::new(field("id"), e.to_string()))?);
    }
    spec.address = opt(&field("address"), s.address, parse_field)?;
    spec.tags = s
        .tags
        .iter()
        .map(|t| Tag::new(t).map_err(|e| ConfigError::new(field("tags"), e.to_string())))
        .collect::<Result<_, _>>()?;
    for (k, v) in s.attributes {
        let key = AttrKey::new(&k).map_err(|e| ConfigError::new(field("attributes"), e.to_string()))?;
        spec.attributes.insert(key, v);
    }
    if let Some(w) = s.weight {
        spec.weight = w;
    }
    spec.allow = s
        .allow
        .iter()
        .map(|a| ServiceName::new(a).map_err(|e| ConfigError::new(field("allow"), e.to_string())))
        .collect::<Result<_, _>>()?;
    if let Some(c) = s.check {
        spec.check.kind = parse_check_kind(&c).map_err(|m| ConfigError::new(field("check"), m))?;
    }
    if let Some(d) = opt(&field("interval"), s.interval, duration_field)? {
        spec.check.interval = d;
    }
    match opt(&field("timeout"), s.timeout, duration_field)? {
        Some(d) => spec.check.timeout = d,
        None => spec.check.fit_default_timeout(),
    }
    if let Some(n) = s.failures {
        spec.check.failures_before_critical = n;
    }
    if let Some(n) = s.successes {
        spec.check.successes_before_passing = n;
    }
    spec.check.deregister_critical_after = opt(&field("deregister_after"), s.deregister_after, duration_field)?;
    spec.validate().map_err(|m| ConfigError::new(format!("service[{i}]"), m))?;
    Ok(spec)
}

/// Parses the TOML text of a config file.
pub fn from_toml(text: &str) -> Result<Layer, ConfigError> {
    let f: File = toml::from_str(text)
        .map_err(|e| ConfigError::new("config file", e.to_string().trim_end().replace('\n', " ")))?;
    let g = f.gossip;
    let list = |field: &str, v: Option<Vec<String>>| -> Result<Option<Vec<SocketAddr>>, ConfigError> {
        v.map(|v| v.iter().map(|s| parse_field(field, s)).collect()).transpose()
    };
    Ok(Layer {
        name: f.name,
        cluster: f.cluster,
        namespace: f.namespace,
        zone: f.zone,
        insecure: f.insecure,
        bind: opt("gossip.bind", g.bind, parse_field)?,
        advertise: opt("gossip.advertise", g.advertise, parse_field)?,
        seeds: g.seeds,
        gossip_keys: g.keys,
        gossip_key_file: g.key_file,
        gossip_interval: opt("gossip.interval", g.interval, duration_field)?,
        probe_interval: opt("gossip.probe_interval", g.probe_interval, duration_field)?,
        probe_timeout: opt("gossip.probe_timeout", g.probe_timeout, duration_field)?,
        indirect_probes: g.indirect_probes,
        suspicion_mult: g.suspicion_mult,
        retransmit_mult: g.retransmit_mult,
        sync_interval: opt("gossip.sync_interval", g.sync_interval, duration_field)?,
        dead_grace: opt("gossip.dead_grace", g.dead_grace, duration_field)?,
        tombstone_grace: opt("gossip.tombstone_grace", g.tombstone_grace, duration_field)?,
        drain: opt("gossip.drain", g.drain, duration_field)?,
        dns_listen: opt("dns.listen", f.dns.listen, parse_field)?,
        dns_upstreams: list("dns.upstreams", f.dns.upstreams)?,
        dns_ttl: opt("dns.ttl", f.dns.ttl, duration_field)?.map(|d| ttl_secs("dns.ttl", d)).transpose()?,
        dns_max_answers: f.dns.max_answers,
        dns_rate_limit: f.dns.rate_limit,
        api_listen: opt("api.listen", f.api.listen, parse_field)?,
        api_token: f.api.token,
        api_token_file: f.api.token_file,
        api_hosts: f.api.hosts,
        max_instances: f.api.max_instances,
        max_attribute_bytes: f.api.max_attribute_bytes,
        registration_rate: f.api.registration_rate,
        services: f
            .service
            .map(|v| v.into_iter().enumerate().map(|(i, s)| file_service(i, s)).collect())
            .transpose()?,
        log_json: f.log.json,
        log_filter: f.log.filter,
        upstreams: f
            .upstream
            .map(|v| v.into_iter().enumerate().map(|(i, u)| file_upstream(i, u)).collect())
            .transpose()?,
        proxy_bind: opt("proxy.bind", f.proxy.bind, parse_field)?,
        proxy_identity: f
            .proxy
            .identity
            .map(|i| ServiceName::new(&i).map_err(|e| ConfigError::new("proxy.identity", e.to_string())))
            .transpose()?,
        tls_ca: f.proxy.tls_ca,
        tls_cert: f.proxy.tls_cert,
        tls_key: f.proxy.tls_key,
        vip_range: f
            .proxy
            .vip_range
            .map(|v| parse_vip_range(&v).map_err(|m| ConfigError::new("proxy.vip_range", m)))
            .transpose()?,
        hosts_file: f.proxy.hosts_file,
        access_log: f.proxy.access_log,
    })
}

/// Reads and parses a config file.
pub fn from_file(path: &Path) -> Result<Layer, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("--config", format!("cannot read {}: {e}", path.display())))?;
    from_toml(&text).map_err(|e| ConfigError::new(format!("{} ({})", e.field, path.display()), e.message))
}
