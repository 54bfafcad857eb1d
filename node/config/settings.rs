//! The one table of settings. Each row is a setting: its doc (the `--help` text), its
//! [`Kind`] (the parser) and default, its flag, `MURMUR_*` variable, TOML key and the
//! value's name in `--help`. Everything that reads settings is made from it: the
//! partial [`Layer`] each source fills, their stacking (file < env < flags), the flags
//! of `murmur agent`, the file's keys, the resolved [`Settings`] with defaults, and the
//! other spellings an error names. Adding a setting is one row here plus its use in the
//! part that owns it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use murmur_protocol::ServiceName;

use super::error::ConfigError;
use super::file::lookup;
use super::kinds::{Advertise, Commas, Dur, Kind, Parsed, Path, Service, Shape, Specs, Switch, Text, Ttl, VipRange};
use super::spec::ServiceSpec;
use super::upstream::UpstreamSpec;

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

/// One row of the table, as data: what `--help`, the file's key check, error messages
/// and the README test read.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The field of [`Layer`] and [`Settings`] (also clap's id of the flag).
    pub id: &'static str,
    /// The flag, with its dashes.
    pub flag: &'static str,
    /// The environment variable.
    pub env: &'static str,
    /// The dotted TOML key.
    pub toml: &'static str,
    /// The value's name in `--help`.
    pub value_name: &'static str,
    /// The default, as text the setting's parser reads; `None` when there is none or it
    /// depends on other settings (said in `help`).
    pub default: Option<&'static str>,
    /// The doc comment, one line per source line.
    pub help: &'static str,
    /// How the flag is given.
    pub shape: Shape,
}

impl Setting {
    /// The row whose flag is `flag` (`--gossip-key`).
    pub fn by_flag(flag: &str) -> Option<&'static Setting> {
        SETTINGS.iter().find(|s| s.flag == flag)
    }

    /// The help text on one line, with the default when there is one.
    pub fn help_text(&self) -> String {
        let text = self.help.lines().map(str::trim).collect::<Vec<_>>().join(" ");
        match self.default {
            Some(d) if self.shape != Shape::Switch => format!("{} (default {d}).", text.trim_end_matches('.')),
            _ => text,
        }
    }
}

/// The type a setting has once defaults are applied: its value when it has a default,
/// else an `Option`.
macro_rules! resolved {
    (default) => { None };
    (default $default:literal) => { Some($default) };
    (type $ty:ty) => { Option<$ty> };
    (type $ty:ty, $default:literal) => { $ty };
    (value $v:ident, $kind:ty, $flag:literal) => { $v };
    (value $v:ident, $kind:ty, $flag:literal, $default:literal) => {
        match $v {
            Some(v) => v,
            None => <$kind as Kind>::parse($flag, $default).expect("every default parses (tested below)"),
        }
    };
}

macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $ty:ty as $kind:ty $(= $default:literal)?, $flag:literal, $env:literal, $toml:literal, $value_name:literal;
    )*) => {
        /// A partial configuration from one source. `None` means "not set here"; a list
        /// set in a higher layer replaces the lower one's rather than extending it.
        // The field docs are also `--help`, where `[,key=value]` means optional, not a link.
        #[allow(rustdoc::broken_intra_doc_links)]
        #[derive(Debug, Default, Clone)]
        pub struct Layer {
            $( $(#[doc = $doc])* pub $field: Option<$ty>, )*
        }

        /// Every setting once the layers are stacked and defaults applied; the values
        /// are checked against each other when the [`Config`](crate::Config) is built.
        #[allow(rustdoc::broken_intra_doc_links)]
        #[derive(Debug, Clone)]
        pub struct Settings {
            $( $(#[doc = $doc])* pub $field: resolved!(type $ty $(, $default)?), )*
        }

        /// The table as data.
        pub const SETTINGS: &[Setting] = &[$(
            Setting {
                id: stringify!($field),
                flag: $flag,
                env: $env,
                toml: $toml,
                value_name: $value_name,
                default: resolved!(default $($default)?),
                help: concat!($($doc, "\n",)*),
                shape: <$kind as Kind>::SHAPE,
            },
        )*];

        impl Layer {
            /// Puts `high` on top of `self`: every field `high` sets wins.
            pub fn stack(mut self, high: Layer) -> Layer {
                let Layer { $($field),* } = high;
                $( if $field.is_some() { self.$field = $field; } )*
                self
            }

            /// Reads the `MURMUR_*` variables (an empty one is not set).
            pub fn from_env(env: &dyn Env) -> Result<Layer, ConfigError> {
                let mut l = Layer::default();
                $(
                    if let Some(v) = env.var($env).filter(|v| !v.is_empty()) {
                        l.$field = Some(<$kind as Kind>::parse($env, &v)?);
                    }
                )*
                Ok(l)
            }

            /// Reads the flags given, each with its values in order.
            pub(super) fn from_flags(given: &[(&str, Vec<String>)]) -> Result<Layer, ConfigError> {
                let mut l = Layer::default();
                $(
                    if let Some((_, v)) = given.iter().find(|(flag, _)| *flag == $flag) {
                        l.$field = Some(<$kind as Kind>::from_flags($flag, v)?);
                    }
                )*
                Ok(l)
            }

            /// Reads the settings of a parsed TOML file (its keys already checked).
            pub(super) fn from_toml_table(table: &toml::Table) -> Result<Layer, ConfigError> {
                let mut l = Layer::default();
                $(
                    if let Some(v) = lookup(table, $toml) {
                        l.$field = Some(<$kind as Kind>::from_toml($toml, v)?);
                    }
                )*
                Ok(l)
            }
        }

        impl Settings {
            /// Applies the defaults to a stacked layer.
            pub fn resolve(l: Layer) -> Settings {
                let Layer { $($field),* } = l;
                Settings { $( $field: resolved!(value $field, $kind, $flag $(, $default)?), )* }
            }
        }
    };
}

settings! {
    /// Node name, unique in the cluster (default: the hostname).
    name: String as Text, "--name", "MURMUR_NAME", "name", "NAME";
    /// Cluster id; agents of another cluster are refused.
    cluster: String as Text = "murmur", "--cluster", "MURMUR_CLUSTER", "cluster", "ID";
    /// DNS namespace served by the stub, such as myapp.local.
    namespace: String as Text = "murmur.local", "--namespace", "MURMUR_NAMESPACE", "namespace", "DOMAIN";
    /// Zone (rack, availability zone) of this node.
    zone: String as Text, "--zone", "MURMUR_ZONE", "zone", "ZONE";
    /// Run without a gossip key (anyone who can reach the port can join). Tests only.
    insecure: bool as Switch = "false", "--insecure", "MURMUR_INSECURE", "insecure", "";
    /// Gossip UDP address to bind.
    bind: SocketAddr as Parsed<SocketAddr> = "0.0.0.0:7946", "--bind", "MURMUR_BIND", "gossip.bind", "IP:PORT";
    /// Address peers and DNS answers use for this node (default: the bind IP, else the
    /// hostname's address).
    advertise: Advertise as Parsed<Advertise>, "--advertise", "MURMUR_ADVERTISE", "gossip.advertise", "IP[:PORT]";
    /// Seed to join through, HOST:PORT; repeatable; DNS names allowed.
    seeds: Vec<String> as Commas<String>, "--seed", "MURMUR_SEEDS", "gossip.seeds", "HOST:PORT";
    /// Gossip key, base64 of 32 bytes (`murmur keygen`); repeatable: the first seals,
    /// all open (rotation). A flag shows in the process list: prefer the variable or the
    /// key file.
    gossip_keys: Vec<String> as Commas<String>, "--gossip-key", "MURMUR_GOSSIP_KEYS", "gossip.keys", "BASE64";
    /// The keyring file: read at start when it exists (it then wins over --gossip-key),
    /// made from --gossip-key when it does not, and rewritten on every change made with
    /// `murmur keyring`, so keys installed at run time survive a restart.
    gossip_key_file: PathBuf as Path, "--gossip-key-file", "MURMUR_GOSSIP_KEY_FILE", "gossip.key_file", "PATH";
    /// How often waiting membership changes are pushed to three members.
    gossip_interval: Duration as Dur = "200ms", "--gossip-interval", "MURMUR_GOSSIP_INTERVAL", "gossip.interval", "DURATION";
    /// How often one member is probed.
    probe_interval: Duration as Dur = "250ms", "--probe-interval", "MURMUR_PROBE_INTERVAL", "gossip.probe_interval", "DURATION";
    /// How long a ping waits for its ack before others are asked to probe (default
    /// 100ms, or half the probe interval when that is shorter).
    probe_timeout: Duration as Dur, "--probe-timeout", "MURMUR_PROBE_TIMEOUT", "gossip.probe_timeout", "DURATION";
    /// How many others probe a member that missed a direct ping.
    indirect_probes: u32 as Parsed<u32> = "3", "--indirect-probes", "MURMUR_INDIRECT_PROBES", "gossip.indirect_probes", "N";
    /// Shortest suspicion, in probe intervals times max(1, log10 N).
    suspicion_mult: f64 as Parsed<f64> = "1", "--suspicion-mult", "MURMUR_SUSPICION_MULT", "gossip.suspicion_mult", "X";
    /// Each change is sent this many times ceil(log10(N + 1)).
    retransmit_mult: u32 as Parsed<u32> = "4", "--retransmit-mult", "MURMUR_RETRANSMIT_MULT", "gossip.retransmit_mult", "N";
    /// Full-state repair interval at up to 32 members; it grows with N.
    sync_interval: Duration as Dur = "30s", "--sync-interval", "MURMUR_SYNC_INTERVAL", "gossip.sync_interval", "DURATION";
    /// How long a dead node is remembered before it is forgotten.
    dead_grace: Duration as Dur = "5m", "--dead-grace", "MURMUR_DEAD_GRACE", "gossip.dead_grace", "DURATION";
    /// How long a removed key is remembered so that lagging replicas learn of the
    /// removal; a replica further behind refetches that node's state.
    tombstone_grace: Duration as Dur = "5m", "--tombstone-grace", "MURMUR_TOMBSTONE_GRACE", "gossip.tombstone_grace", "DURATION";
    /// Drain period on SIGTERM between "draining" and leaving.
    drain: Duration as Dur = "3s", "--drain", "MURMUR_DRAIN", "gossip.drain", "DURATION";
    /// DNS stub address, UDP and TCP.
    dns_listen: SocketAddr as Parsed<SocketAddr> = "127.0.0.1:8600", "--dns-listen", "MURMUR_DNS_LISTEN", "dns.listen", "IP:PORT";
    /// Resolver for names outside the namespace; repeatable (default: the nameservers of
    /// /etc/resolv.conf, minus the agent itself).
    dns_upstreams: Vec<SocketAddr> as Commas<SocketAddr>, "--dns-upstream", "MURMUR_DNS_UPSTREAMS", "dns.upstreams", "IP:PORT";
    /// TTL of DNS answers, whole seconds.
    dns_ttl: u32 as Ttl = "1s", "--dns-ttl", "MURMUR_DNS_TTL", "dns.ttl", "DURATION";
    /// Most A, AAAA or SRV records in one answer, 1-64.
    dns_max_answers: usize as Parsed<usize> = "8", "--dns-max-answers", "MURMUR_DNS_MAX_ANSWERS", "dns.max_answers", "N";
    /// UDP DNS queries answered per second per client socket (address and port); the
    /// rest are dropped and counted (0: no limit).
    dns_rate_limit: u32 as Parsed<u32> = "2000", "--dns-rate-limit", "MURMUR_DNS_RATE_LIMIT", "dns.rate_limit", "N";
    /// Admin API address.
    api_listen: SocketAddr as Parsed<SocketAddr> = "127.0.0.1:8500", "--api-listen", "MURMUR_API_LISTEN", "api.listen", "IP:PORT";
    /// A token every change through the API must carry (`Authorization: Bearer TOKEN` or
    /// `X-Consul-Token: TOKEN`); reads stay open. A flag shows in the process list:
    /// prefer MURMUR_API_TOKEN or --api-token-file.
    api_token: String as Text, "--api-token", "MURMUR_API_TOKEN", "api.token", "TOKEN";
    /// A file whose first line is the API token.
    api_token_file: PathBuf as Path, "--api-token-file", "MURMUR_API_TOKEN_FILE", "api.token_file", "PATH";
    /// A host name the API answers to besides IP addresses and `localhost` (repeatable);
    /// a request naming any other host is refused, which stops DNS rebinding.
    api_hosts: Vec<String> as Commas<String>, "--api-host", "MURMUR_API_HOSTS", "api.hosts", "NAME";
    /// Most instances this agent carries, the config's included; registrations through
    /// the API past it get 429.
    max_instances: usize as Parsed<usize> = "256", "--max-instances", "MURMUR_MAX_INSTANCES", "api.max_instances", "N";
    /// Most bytes of tags and attributes over all of this agent's instances; an API
    /// registration past it gets 413.
    max_attribute_bytes: usize as Parsed<usize> = "65536", "--max-attribute-bytes", "MURMUR_MAX_ATTRIBUTE_BYTES",
        "api.max_attribute_bytes", "BYTES";
    /// API registrations and removals a second; bursts of twice that pass, the rest get
    /// 429.
    registration_rate: u32 as Parsed<u32> = "50", "--registration-rate", "MURMUR_REGISTRATION_RATE", "api.registration_rate",
        "N";
    /// A service instance: NAME:PORT[,tags=a+b][,check=tcp|http:/path|exec:CMD|ttl:30s|none]
    /// [,interval=2s][,timeout=1s][,failures=2][,successes=1][,deregister_after=D][,weight=N]
    /// [,id=ID][,addr=IP][,attr.KEY=VALUE][,allow=a+b]; repeatable; exec must come last.
    /// The variable separates specs with `;`.
    services: Vec<ServiceSpec> as Specs<ServiceSpec>, "--service", "MURMUR_SERVICES", "service", "SPEC";
    /// Worker threads of the agent's runtime, 1-256 (default: 1 in proxy mode, where the
    /// agent is one task's sidecar, as linkerd2-proxy runs on one core; else one per core,
    /// for an agent that answers a whole host's lookups).
    threads: usize as Parsed<usize>, "--threads", "MURMUR_THREADS", "threads", "N";
    /// Log as JSON lines.
    log_json: bool as Switch = "false", "--log-json", "MURMUR_LOG_JSON", "log.json", "";
    /// Log filter, as RUST_LOG (which wins over it); hickory logs every query at info.
    log_filter: String as Text = "info,hickory_server=warn", "--log", "MURMUR_LOG", "log.filter", "FILTER";
    /// A service the local app calls through the sidecar:
    /// SERVICE:PORT[,alias=NAME][,listen=IP:PORT][,proto=tcp|udp][,retries=2]
    /// [,connect-timeout=2s][,idle-timeout=1h][,balance=p2c|rr][,max-connections=N]
    /// [,max-pending=N][,eject-after=5][,eject-percent=50][,eject-base=30s]
    /// [,eject-max-percent=50][,plaintext=deny|allow]; repeatable. The variable
    /// separates specs with `;`.
    upstreams: Vec<UpstreamSpec> as Specs<UpstreamSpec>, "--upstream", "MURMUR_UPSTREAMS", "upstream", "SPEC";
    /// QUIC address of the inbound sidecar listener (default: the advertised IP, port
    /// 7947).
    proxy_bind: SocketAddr as Parsed<SocketAddr>, "--proxy-bind", "MURMUR_PROXY_BIND", "proxy.bind", "IP:PORT";
    /// The service this sidecar calls as (default: the first --service, else the one
    /// service the certificate names); the certificate must name it.
    proxy_identity: ServiceName as Service, "--proxy-identity", "MURMUR_PROXY_IDENTITY", "proxy.identity", "SERVICE";
    /// Cluster CA certificate (PEM) for mutual TLS between sidecars.
    tls_ca: PathBuf as Path, "--tls-ca", "MURMUR_TLS_CA", "proxy.tls_ca", "PATH";
    /// This node's certificate (PEM), from `murmur cert issue`.
    tls_cert: PathBuf as Path, "--tls-cert", "MURMUR_TLS_CERT", "proxy.tls_cert", "PATH";
    /// This node's key (PEM). Each of the three TLS settings may also be the PEM text
    /// itself (as ECS passes secrets, in environment variables).
    tls_key: PathBuf as Path, "--tls-key", "MURMUR_TLS_KEY", "proxy.tls_key", "PATH";
    /// Loopback range the upstream VIPs come from.
    vip_range: (Ipv4Addr, u32) as VipRange = "127.100.0.0/16", "--vip-range", "MURMUR_VIP_RANGE", "proxy.vip_range", "CIDR";
    /// Also write the aliases into this hosts file (other lines are kept).
    hosts_file: PathBuf as Path, "--hosts-file", "MURMUR_HOSTS_FILE", "proxy.hosts_file", "PATH";
    /// Write one JSON line per proxied connection or UDP flow to this file (`-`:
    /// stdout); reopened on SIGHUP, for logrotate.
    access_log: PathBuf as Path, "--access-log", "MURMUR_ACCESS_LOG", "proxy.access_log", "PATH|-";
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_default_parses_and_every_spelling_is_unique() {
        let defaults = Settings::resolve(Layer::default());
        assert_eq!(defaults.dns_rate_limit, 2000);
        assert_eq!(defaults.vip_range.1, 65_534);
        let spellings: [fn(&Setting) -> &'static str; 4] = [|s| s.id, |s| s.flag, |s| s.env, |s| s.toml];
        for spelling in spellings {
            let seen: BTreeSet<_> = SETTINGS.iter().map(spelling).collect();
            assert_eq!(seen.len(), SETTINGS.len(), "two settings share a spelling");
        }
        for s in SETTINGS {
            assert!(s.flag.starts_with("--") && s.env.starts_with("MURMUR_"), "{}", s.id);
            assert!(!s.help.trim().is_empty(), "{} has no help", s.id);
            assert_eq!(s.value_name.is_empty(), s.shape == Shape::Switch, "{}", s.id);
        }
    }

    #[test]
    fn readme_lists_every_setting_in_all_its_spellings() {
        let readme = include_str!("../../README.md");
        let mut missing = Vec::new();
        for s in SETTINGS {
            let key = match s.toml {
                "service" | "upstream" => format!("`[[{}]]`", s.toml),
                key => format!("`{key}`"),
            };
            for spelling in [format!("`{}", s.flag), format!("`{}`", s.env), key] {
                if !readme.contains(&spelling) {
                    missing.push(spelling);
                }
            }
        }
        assert!(missing.is_empty(), "README's settings tables do not list {}", missing.join(", "));
    }

    #[test]
    fn dotted_keys_find_nested_values() {
        let table: toml::Table = toml::from_str("[gossip]\nbind = \"127.0.0.1:1\"\n").expect("valid toml");
        let layer = Layer::from_toml_table(&table).expect("valid");
        assert_eq!(layer.bind, Some("127.0.0.1:1".parse().expect("addr")));
        assert!(lookup(&table, "gossip.nope").is_none() && lookup(&table, "bind").is_none());
    }
}
