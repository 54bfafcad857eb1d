//! The whole configuration of one agent: the settings merged (file < env < flags) and
//! each part's config built from them by the part itself, plus who the node is, the
//! instances registered at start and logging.
//!
//! Loading config binds nothing and starts nothing; a bad value fails here, naming its
//! field, so that `main` can exit with status 2 before anything runs.

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};

use murmur_protocol::limits::MAX_ZONE_LEN;
use murmur_protocol::NodeName;

use crate::config::{from_file, within, AgentArgs, ConfigError, Env, Layer, ServiceSpec, Settings};
use crate::{api, dns, gossip, proxy};

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
    pub gossip: gossip::Config,
    /// DNS stub.
    pub dns: dns::Config,
    /// Admin API.
    pub api: api::Config,
    /// Instances registered at start.
    pub services: Vec<ServiceSpec>,
    /// The sidecar proxy, when on.
    pub proxy: Option<proxy::Config>,
    /// Logging.
    pub log: LogConfig,
    /// Worker threads of the runtime the agent runs on (`--threads`, or its default); the
    /// binary builds that runtime before starting the agent, an embedder builds its own.
    pub threads: usize,
}

impl Config {
    /// Loads the full stack: the file named by `--config` (or `MURMUR_CONFIG`), then
    /// the environment, then the flags.
    pub fn load(args: &AgentArgs, env: &dyn Env) -> Result<Config, ConfigError> {
        let path = args.config.clone().or_else(|| env.var("MURMUR_CONFIG").map(Into::into));
        let file = match path {
            Some(p) => from_file(&p)?,
            None => Layer::default(),
        };
        let merged = file.stack(Layer::from_env(env)?).stack(args.to_layer()?);
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Config::from_layer(merged, &resolv)
    }

    /// Validates a merged layer. `resolv_conf` is the text of /etc/resolv.conf, used
    /// when no upstream resolver is configured.
    pub fn from_layer(l: Layer, resolv_conf: &str) -> Result<Config, ConfigError> {
        let s = Settings::resolve(l);
        let api = api::Config::from_settings(&s)?;
        let node = node_config(&s)?;
        let gossip = gossip::Config::from_settings(&s, node.advertise)?;
        let dns = dns::Config::from_settings(&s, resolv_conf)?;
        let services = services(&s, &node.name, api.limits.instances)?;
        let proxy = proxy::Config::from_settings(&s, &node.name, node.advertise, &services)?;
        let log = LogConfig { json: s.log_json, filter: s.log_filter };
        let threads = match s.threads {
            Some(n) => within("--threads", n, 1, 256, "1 and 256")?,
            None => default_threads(proxy.is_some()),
        };
        Ok(Config { node, gossip, dns, api, services, proxy, log, threads })
    }
}

/// Worker threads when `--threads` is not set. A sidecar (proxy mode) serves one task's
/// traffic: on one thread no task wakes another across cores, which cost a third of its
/// CPU per request on two cores. An agent without the proxy answers every app of its
/// host, and its DNS stub reads one socket per core.
fn default_threads(proxy_mode: bool) -> usize {
    if proxy_mode {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
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
    use std::time::Duration;

    use super::*;
    use crate::config::upstream::parse_upstream_spec;
    use crate::config::{from_toml, spec};
    use crate::dns::parse_resolv_conf;

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
        let env = Layer::from_env(&env(&[("MURMUR_NAME", "from-env"), ("MURMUR_DNS_LISTEN", "127.0.0.1:2")]))
            .expect("valid env");
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
    fn a_sidecar_runs_one_thread_and_a_plain_agent_one_per_core_unless_told() {
        let plain = Layer { insecure: Some(true), name: Some("n".into()), ..Default::default() };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(Config::from_layer(plain.clone(), "").expect("valid").threads, cores);
        let upstreams = Some(vec![parse_upstream_spec("web:80").expect("spec")]);
        let sidecar =
            Layer { upstreams, proxy_identity: Some("app".parse().expect("a service name")), ..plain.clone() };
        assert_eq!(Config::from_layer(sidecar.clone(), "").expect("valid").threads, 1);
        let told = Layer { threads: Some(3), ..sidecar };
        assert_eq!(Config::from_layer(told, "").expect("valid").threads, 3);
        let err = Config::from_layer(Layer { threads: Some(0), ..plain }, "").expect_err("no thread");
        assert_eq!(err.field, "--threads", "{err}");
    }

    #[test]
    fn the_dns_rate_limit_comes_from_every_source() {
        let file = from_toml("insecure = true\nname = \"n\"\n[dns]\nrate_limit = 10\n").expect("valid toml");
        assert_eq!(Config::from_layer(file.clone(), "").expect("valid").dns.rate_limit, 10);
        let from_vars = Layer::from_env(&env(&[("MURMUR_DNS_RATE_LIMIT", "20")])).expect("valid env");
        assert_eq!(Config::from_layer(file.clone().stack(from_vars.clone()), "").expect("valid").dns.rate_limit, 20);
        let flags = AgentArgs::parse(["--dns-rate-limit", "0"]).expect("valid").to_layer().expect("valid flags");
        assert_eq!(Config::from_layer(file.stack(from_vars).stack(flags), "").expect("valid").dns.rate_limit, 0);
        let err = Layer::from_env(&env(&[("MURMUR_DNS_RATE_LIMIT", "-1")])).expect_err("negative");
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
        let vars = Layer::from_env(&env(&[("MURMUR_API_TOKEN", "from-env"), ("MURMUR_API_HOSTS", "Mesh.Internal.")]))
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
        let err = from_toml("dns = 5").expect_err("a section given a value");
        assert_eq!(err.field, "dns", "{err}");
        assert!(err.message.contains("must be a table"), "{err}");
        let err = Layer::from_env(&env(&[("MURMUR_BIND", "x")])).expect_err("bad env");
        assert_eq!(err.field, "MURMUR_BIND");
        let err = from_toml("[[service]]\nname = \"a\"\nport = 1\ncheck = \"ftp\"").expect_err("bad check");
        assert_eq!(err.field, "service[0].check");
    }

    #[test]
    fn keys_and_services_from_every_source() {
        let k = key();
        let c = Config::from_layer(
            Layer::from_env(&env(&[
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
