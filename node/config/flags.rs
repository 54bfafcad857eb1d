//! The flags of `murmur agent`, as clap types, and their reading into a [`Layer`].
//! The flag names are a public contract (see README); they mirror `MURMUR_*` variables
//! and TOML keys.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::error::ConfigError;
use super::layer::{parse_field, ttl_secs, Advertise, Layer};
use super::spec::{parse_duration, parse_service_spec};
use super::upstream::{parse_upstream_spec, parse_vip_range};

/// Flags of `murmur agent`. Every flag overrides its `MURMUR_*` variable, which
/// overrides the config file.
#[derive(Debug, Default, Clone, Args)]
pub struct AgentArgs {
    /// TOML config file (lowest precedence: env and flags override it).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Node name, unique in the cluster (default: the hostname).
    #[arg(long)]
    pub name: Option<String>,
    /// Cluster id; agents of another cluster are refused.
    #[arg(long)]
    pub cluster: Option<String>,
    /// DNS namespace served by the stub, such as myapp.local.
    #[arg(long, value_name = "DOMAIN")]
    pub namespace: Option<String>,
    /// Zone (rack, availability zone) of this node.
    #[arg(long)]
    pub zone: Option<String>,
    /// Gossip UDP address to bind (default 0.0.0.0:7946).
    #[arg(long, value_name = "IP:PORT")]
    pub bind: Option<SocketAddr>,
    /// Address peers and DNS answers use for this node.
    #[arg(long, value_name = "IP[:PORT]")]
    pub advertise: Option<String>,
    /// Seed to join through, HOST:PORT; repeatable; DNS names allowed.
    #[arg(long = "seed", value_name = "HOST:PORT")]
    pub seeds: Vec<String>,
    /// Gossip key, base64 of 32 bytes (`murmur keygen`); repeatable: the first seals,
    /// all open (rotation).
    #[arg(long = "gossip-key", value_name = "BASE64")]
    pub gossip_keys: Vec<String>,
    /// The keyring file: read at start when it exists (it then wins over --gossip-key),
    /// made from --gossip-key when it does not, and rewritten on every change made with
    /// `murmur keyring`, so keys installed at run time survive a restart.
    #[arg(long, value_name = "PATH")]
    pub gossip_key_file: Option<PathBuf>,
    /// Run without a gossip key (anyone who can reach the port can join). Tests only.
    #[arg(long)]
    pub insecure: bool,
    /// How often waiting membership changes are pushed to three members (default 200ms).
    #[arg(long, value_name = "DURATION")]
    pub gossip_interval: Option<String>,
    /// How often one member is probed (default 250ms).
    #[arg(long, value_name = "DURATION")]
    pub probe_interval: Option<String>,
    /// How long a ping waits for its ack before others are asked to probe (default 100ms).
    #[arg(long, value_name = "DURATION")]
    pub probe_timeout: Option<String>,
    /// How many others probe a member that missed a direct ping (default 3).
    #[arg(long, value_name = "N")]
    pub indirect_probes: Option<u32>,
    /// Shortest suspicion, in probe intervals times max(1, log10 N) (default 1).
    #[arg(long, value_name = "X")]
    pub suspicion_mult: Option<f64>,
    /// Each change is sent this many times ceil(log10(N + 1)) (default 4).
    #[arg(long, value_name = "N")]
    pub retransmit_mult: Option<u32>,
    /// Full-state repair interval at up to 32 members; it grows with N (default 30s).
    #[arg(long, value_name = "DURATION")]
    pub sync_interval: Option<String>,
    /// How long a dead node is remembered before it is forgotten (default 5m).
    #[arg(long, value_name = "DURATION")]
    pub dead_grace: Option<String>,
    /// How long a removed key is remembered so that lagging replicas learn of the
    /// removal; a replica further behind refetches that node's state (default 5m).
    #[arg(long, value_name = "DURATION")]
    pub tombstone_grace: Option<String>,
    /// Drain period on SIGTERM between "draining" and leaving (default 3s).
    #[arg(long, value_name = "DURATION")]
    pub drain: Option<String>,
    /// DNS stub address, UDP and TCP (default 127.0.0.1:8600).
    #[arg(long, value_name = "IP:PORT")]
    pub dns_listen: Option<SocketAddr>,
    /// Resolver for names outside the namespace; repeatable (default: /etc/resolv.conf).
    #[arg(long = "dns-upstream", value_name = "IP:PORT")]
    pub dns_upstreams: Vec<SocketAddr>,
    /// TTL of DNS answers (default 1s).
    #[arg(long, value_name = "DURATION")]
    pub dns_ttl: Option<String>,
    /// UDP DNS queries answered per second per client socket (address and port); the
    /// rest are dropped and counted (default 2000; 0: no limit).
    #[arg(long, value_name = "N")]
    pub dns_rate_limit: Option<u32>,
    /// Admin API address (default 127.0.0.1:8500).
    #[arg(long, value_name = "IP:PORT")]
    pub api_listen: Option<SocketAddr>,
    /// A token every change through the API must carry (`Authorization: Bearer TOKEN` or
    /// `X-Consul-Token: TOKEN`); reads stay open. A flag shows in the process list:
    /// prefer MURMUR_API_TOKEN or --api-token-file.
    #[arg(long, value_name = "TOKEN")]
    pub api_token: Option<String>,
    /// A file whose first line is the API token.
    #[arg(long, value_name = "PATH")]
    pub api_token_file: Option<PathBuf>,
    /// A host name the API answers to besides IP addresses and `localhost` (repeatable);
    /// a request naming any other host is refused, which stops DNS rebinding.
    #[arg(long = "api-host", value_name = "NAME")]
    pub api_hosts: Vec<String>,
    /// Most instances this agent carries, the config's included; registrations through
    /// the API past it get 429 (default 256).
    #[arg(long, value_name = "N")]
    pub max_instances: Option<usize>,
    /// Most bytes of tags and attributes over all of this agent's instances; an API
    /// registration past it gets 413 (default 65536).
    #[arg(long, value_name = "BYTES")]
    pub max_attribute_bytes: Option<usize>,
    /// API registrations and removals a second; bursts of twice that pass, the rest get
    /// 429 (default 50).
    #[arg(long, value_name = "N")]
    pub registration_rate: Option<u32>,
    /// A service instance: NAME:PORT[,tags=a+b][,check=tcp|http:/path|exec:CMD|ttl:30s|none]
    /// [,interval=2s][,timeout=1s][,failures=2][,successes=1][,deregister_after=D][,weight=N]
    /// [,id=ID][,addr=IP][,attr.KEY=VALUE]; repeatable; exec must come last.
    #[arg(long = "service", value_name = "SPEC")]
    pub services: Vec<String>,
    /// Log as JSON lines.
    #[arg(long)]
    pub log_json: bool,
    /// A service the local app calls through the sidecar:
    /// SERVICE:PORT[,alias=NAME][,listen=IP:PORT][,proto=tcp|udp][,retries=2]
    /// [,connect-timeout=2s][,idle-timeout=1h][,balance=p2c|rr][,max-connections=N]
    /// [,max-pending=N][,eject-after=5][,eject-percent=50][,eject-base=30s]
    /// [,eject-max-percent=50][,plaintext=deny|allow]; repeatable.
    #[arg(long = "upstream", value_name = "SPEC")]
    pub upstreams: Vec<String>,
    /// QUIC address of the inbound sidecar listener (default: advertised IP, port 7947).
    #[arg(long, value_name = "IP:PORT")]
    pub proxy_bind: Option<SocketAddr>,
    /// The service this sidecar calls as (default: the first --service, else the one
    /// service the certificate names); the certificate must name it.
    #[arg(long, value_name = "SERVICE")]
    pub proxy_identity: Option<String>,
    /// Cluster CA certificate (PEM) for mutual TLS between sidecars.
    #[arg(long, value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), from `murmur cert issue`.
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// This node's key (PEM). Each of the three TLS settings may also be the PEM text
    /// itself (as ECS passes secrets, in environment variables).
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// Loopback range the upstream VIPs come from (default 127.100.0.0/16).
    #[arg(long, value_name = "CIDR")]
    pub vip_range: Option<String>,
    /// Also write the aliases into this hosts file (other lines are kept).
    #[arg(long, value_name = "PATH")]
    pub hosts_file: Option<PathBuf>,
    /// Write one JSON line per proxied connection or UDP flow to this file (`-`:
    /// stdout); reopened on SIGHUP, for logrotate.
    #[arg(long, value_name = "PATH|-")]
    pub access_log: Option<PathBuf>,
}

fn duration_flag(flag: &str, v: &Option<String>) -> Result<Option<std::time::Duration>, ConfigError> {
    v.as_deref().map(|t| parse_duration(t).map_err(|m| ConfigError::new(flag, m))).transpose()
}

impl AgentArgs {
    /// Reads the flags that were given into a layer.
    pub fn to_layer(&self) -> Result<Layer, ConfigError> {
        let nonempty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        let services = if self.services.is_empty() {
            None
        } else {
            Some(
                self.services
                    .iter()
                    .map(|s| parse_service_spec(s).map_err(|m| ConfigError::new("--service", m)))
                    .collect::<Result<_, _>>()?,
            )
        };
        Ok(Layer {
            name: self.name.clone(),
            cluster: self.cluster.clone(),
            namespace: self.namespace.clone(),
            zone: self.zone.clone(),
            insecure: self.insecure.then_some(true),
            bind: self.bind,
            advertise: self.advertise.as_deref().map(|a| parse_field::<Advertise>("--advertise", a)).transpose()?,
            seeds: nonempty(&self.seeds),
            gossip_keys: nonempty(&self.gossip_keys),
            gossip_key_file: self.gossip_key_file.clone(),
            gossip_interval: duration_flag("--gossip-interval", &self.gossip_interval)?,
            probe_interval: duration_flag("--probe-interval", &self.probe_interval)?,
            probe_timeout: duration_flag("--probe-timeout", &self.probe_timeout)?,
            indirect_probes: self.indirect_probes,
            suspicion_mult: self.suspicion_mult,
            retransmit_mult: self.retransmit_mult,
            sync_interval: duration_flag("--sync-interval", &self.sync_interval)?,
            dead_grace: duration_flag("--dead-grace", &self.dead_grace)?,
            tombstone_grace: duration_flag("--tombstone-grace", &self.tombstone_grace)?,
            drain: duration_flag("--drain", &self.drain)?,
            dns_listen: self.dns_listen,
            dns_upstreams: (!self.dns_upstreams.is_empty()).then(|| self.dns_upstreams.clone()),
            dns_ttl: duration_flag("--dns-ttl", &self.dns_ttl)?.map(|d| ttl_secs("--dns-ttl", d)).transpose()?,
            dns_max_answers: None,
            dns_rate_limit: self.dns_rate_limit,
            api_listen: self.api_listen,
            api_token: self.api_token.clone(),
            api_token_file: self.api_token_file.clone(),
            api_hosts: (!self.api_hosts.is_empty()).then(|| self.api_hosts.clone()),
            max_instances: self.max_instances,
            max_attribute_bytes: self.max_attribute_bytes,
            registration_rate: self.registration_rate,
            services,
            log_json: self.log_json.then_some(true),
            log_filter: None,
            upstreams: if self.upstreams.is_empty() {
                None
            } else {
                Some(
                    self.upstreams
                        .iter()
                        .map(|s| parse_upstream_spec(s).map_err(|m| ConfigError::new("--upstream", m)))
                        .collect::<Result<_, _>>()?,
                )
            },
            proxy_bind: self.proxy_bind,
            proxy_identity: self
                .proxy_identity
                .as_deref()
                .map(|s| {
                    murmur_protocol::ServiceName::new(s)
                        .map_err(|e| ConfigError::new("--proxy-identity", e.to_string()))
                })
                .transpose()?,
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            vip_range: self
                .vip_range
                .as_deref()
                .map(|v| parse_vip_range(v).map_err(|m| ConfigError::new("--vip-range", m)))
                .transpose()?,
            hosts_file: self.hosts_file.clone(),
            access_log: self.access_log.clone(),
        })
    }
}
