//! The agent: the only file that knows every part. It binds every socket first (so a
//! taken port is an error naming its setting, before anything runs), starts the parts in
//! data-flow order (gossip → registry → health, DNS, API), and owns shutdown:
//! mark draining → drain period → cancel → bounded wait for tasks → leave → done.

mod config;

pub use config::{Config, LogConfig, NodeConfig};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use murmur_protocol::{encode_value, keys, NodeRecord};
use thiserror::Error;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, Instrument};

use crate::api::{spawn_api, types::AgentJson, ApiState};
use crate::clock::unix_ms;
use crate::dns::{spawn_dns, DnsSockets};
use crate::error::{chain, TaskError};
use crate::gossip::{spawn_gossip, Gossip};
use crate::health::spawn_health;
use crate::local::{Origin, Publisher};
use crate::metrics::Metrics;
use crate::proxy::outbound::Caller;
use crate::proxy::{spawn_proxy, Proxy, ProxyDeps, ProxySockets, ReloadError};
use crate::registry::{spawn_registry, RegistryReader};
use crate::task::Tasks;

/// How long a leaving agent waits for its "left" message to be exchanged with peers.
const LEAVE_SETTLE: Duration = Duration::from_millis(300);

/// Why a running agent stopped other than by a signal.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RunError {
    /// The signal handlers could not be installed.
    #[error("cannot listen for signals")]
    Signals(#[source] std::io::Error),
    /// A part's task ended while the agent ran.
    #[error("{part} died")]
    Died {
        /// The part (`gossip`, `dns`, `proxy upstream`).
        part: &'static str,
        /// How it ended.
        source: TaskError,
    },
}

/// Why the agent could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StartError {
    /// The sidecar proxy could not start.
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
    /// A socket could not be bound (the OS error is the source).
    #[error("{setting}: cannot bind {addr}")]
    Bind {
        /// The setting that names the address.
        setting: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The access log could not be opened.
    #[error("--access-log: cannot open {}", path.display())]
    AccessLog {
        /// The file (`-`: standard output).
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The hosts file could not be written.
    #[error("--hosts-file: cannot write {}", path.display())]
    HostsFile {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Gossip would not start.
    #[error(transparent)]
    Gossip(#[from] crate::gossip::StartError),
    /// A service from the config could not be registered.
    #[error("service {service}: cannot register it")]
    Register {
        /// The service of the instance.
        service: String,
        /// Why the publisher refused it.
        source: crate::local::PublishError,
    },
}

/// A running agent.
pub struct Agent {
    name: String,
    cancel: CancellationToken,
    gossip: Gossip,
    publisher: Publisher,
    registry: RegistryReader,
    metrics: Arc<Metrics>,
    parts: Parts,
    draining: Arc<AtomicBool>,
    drain: Duration,
    /// Where the sidecar's TLS material is read again on SIGHUP, and the service it must
    /// name besides this node (the one the sidecar calls as).
    tls_reload: Option<(crate::proxy::TlsFiles, Option<String>)>,
    /// The hosts file this agent wrote alias lines into, and its namespace.
    hosts_file: Option<(std::path::PathBuf, String)>,
    /// The access log, reopened on SIGHUP.
    access_log: Option<crate::proxy::access_log::AccessLog>,
    gossip_addr: SocketAddr,
    dns_addr: SocketAddr,
    api_addr: SocketAddr,
}

impl Agent {
    /// Binds every socket, then starts every part: gossip with this node's record, the
    /// instances of the config, the registry, the checks, the proxy, DNS and the API.
    pub async fn start(config: Config) -> Result<Agent, StartError> {
        let sockets = Sockets::bind(&config).await?;
        write_hosts_file(&config, &sockets.aliases)?;
        let metrics = Arc::new(Metrics::default());
        let generation = unix_ms();
        let name = config.node.name.to_string();
        let gossip = start_gossip(&config, generation, sockets.gossip, sockets.proxy_addr, &metrics).await?;
        let gossip_addr = gossip.advertise_addr();
        let publisher = register_services(&config, &gossip).await?;

        let cancel = CancellationToken::new();
        let (registry, registry_tasks) = spawn_registry(gossip.view(), metrics.clone(), cancel.child_token());
        let health = spawn_health(publisher.clone(), metrics.clone(), cancel.child_token());
        let draining = Arc::new(AtomicBool::new(false));
        let access_log = open_access_log(&config, &metrics, &cancel).await?;
        let proxy = match (sockets.proxy, &config.proxy) {
            (Some(proxy_sockets), Some(pcfg)) => {
                let caller = pcfg.identity.clone().map(|service| Caller {
                    service,
                    node: config.node.name.clone(),
                    zone: config.node.zone.clone(),
                });
                let deps = ProxyDeps {
                    registry: registry.clone(),
                    local: publisher.local(),
                    draining: draining.clone(),
                    metrics: metrics.clone(),
                    caller,
                    access_log: access_log.clone(),
                };
                Some(spawn_proxy(proxy_sockets, pcfg, deps, cancel.child_token()))
            }
            _ => None,
        };
        let mut dns_config = config.dns.clone();
        dns_config.aliases = sockets.aliases;
        let dns = spawn_dns(sockets.dns, dns_config, registry.clone(), metrics.clone(), cancel.child_token());
        let (dns_addr, api_addr) = (sockets.dns_addr, sockets.api_addr);
        let addrs = [gossip_addr, dns_addr, api_addr];
        let state = ApiState {
            registry: registry.clone(),
            publisher: publisher.clone(),
            metrics: metrics.clone(),
            agent: Arc::new(agent_json(&config, generation, addrs)),
            draining: draining.clone(),
            access: Arc::new(config.api.clone()),
            keyring: gossip.keyring(),
        };
        let api = spawn_api(sockets.api, state, cancel.child_token());
        info!(node = %name, gossip = %gossip_addr, dns = %dns_addr, api = %api_addr, "agent started");
        Ok(Agent {
            name,
            cancel,
            gossip,
            publisher,
            registry,
            metrics,
            parts: Parts { proxy, dns, api, health, registry: registry_tasks },
            draining,
            drain: config.gossip.drain,
            tls_reload: config.proxy.as_ref().and_then(|p| {
                let identity = p.identity.as_ref().map(|s| s.as_str().to_owned());
                p.tls_files.clone().map(|f| (f, identity))
            }),
            access_log,
            hosts_file: config
                .proxy
                .as_ref()
                .and_then(|p| p.hosts_file.clone())
                .map(|p| (p, config.dns.namespace.clone())),
            gossip_addr,
            dns_addr,
            api_addr,
        })
    }

    /// Node name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The replica.
    pub fn registry(&self) -> RegistryReader {
        self.registry.clone()
    }
    /// The write path (run-time registration).
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }
    /// Metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }
    /// The gossip keyring, for rotation at run time.
    pub fn keyring(&self) -> crate::gossip::KeyringHandle {
        self.gossip.keyring()
    }
    /// Advertised gossip address (use it as another agent's seed).
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }
    /// Bound DNS address.
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns_addr
    }
    /// Bound API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Reads the sidecar's TLS files again and, when they hold a certificate that
    /// chains to the CA and names this node (and its service), puts them in service:
    /// new handshakes use them, connections already made keep theirs. Bad files change
    /// nothing. Without TLS files (no proxy, `--insecure`) there is nothing to reload.
    pub fn reload_tls(&self) -> Result<(), ReloadError> {
        let (Some(proxy), Some((files, identity))) = (&self.parts.proxy, &self.tls_reload) else {
            return Err(ReloadError::NoFiles);
        };
        let tls = files.reload(&self.name, identity.as_deref())?;
        proxy.set_tls(&tls).map_err(ReloadError::Apply)
    }

    /// Runs until SIGTERM or SIGINT (then leaves gracefully) or until a part dies (then
    /// returns its error). SIGHUP reloads the TLS files ([`Agent::reload_tls`]).
    pub async fn run_until_signal(mut self) -> Result<(), RunError> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
        let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
        loop {
            tokio::select! {
                _ = term.recv() => {
                    info!("SIGTERM: leaving");
                    break;
                }
                _ = tokio::signal::ctrl_c() => {
                    info!("SIGINT: leaving");
                    break;
                }
                _ = hup.recv() => {
                    match self.reload_tls() {
                        Ok(()) => info!("SIGHUP: TLS certificate, key and CA reloaded"),
                        Err(e) => error!(error = %chain(&e), "SIGHUP: TLS files not reloaded; the old ones stay in service"),
                    }
                    if let Some(log) = &self.access_log {
                        log.reopen();
                        info!("SIGHUP: access log reopened");
                    }
                }
                (part, err) = self.parts.ended(&self.gossip) => {
                    error!(part, error = %chain(&err), "a part of the agent died");
                    self.kill().await;
                    return Err(RunError::Died { part, source: err });
                }
            }
        }
        self.shutdown().await;
        Ok(())
    }

    /// Leaves gracefully: instances draining, drain period, parts stopped, then leave.
    pub async fn shutdown(mut self) {
        self.draining.store(true, Ordering::Relaxed);
        self.publisher.mark_draining().await;
        info!(drain = ?self.drain, "draining");
        // New inbound streams are refused from here on; open ones may finish until the
        // drain deadline, when the QUIC endpoint closes whatever is left.
        tokio::time::sleep(self.drain).await;
        self.parts.shutdown().await;
        self.cancel.cancel();
        self.gossip.leave(LEAVE_SETTLE).await;
        if let Some((path, namespace)) = &self.hosts_file {
            // Our alias lines go with us; every other line stays.
            if let Err(e) = crate::proxy::vip::write_hosts(path, &[], namespace) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove the alias lines");
            }
        }
        info!("left the cluster");
    }

    /// Stops at once without telling peers, as a crash looks to them (tests, demo).
    pub async fn kill(mut self) {
        self.parts.kill().await;
        self.cancel.cancel();
        self.gossip.stop().await;
    }
}

/// The running parts besides gossip, each behind its handle, stopped in order.
struct Parts {
    proxy: Option<Proxy>,
    dns: Tasks,
    api: Tasks,
    health: Tasks,
    registry: Tasks,
}

impl Parts {
    /// Resolves when a part's task ends on its own, or gossip's loop does: which, and
    /// how.
    async fn ended(&mut self, gossip: &Gossip) -> (&'static str, TaskError) {
        let Parts { proxy, dns, api, health, registry } = self;
        let proxy = async {
            match proxy {
                Some(p) => p.ended().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = proxy => r,
            r = dns.ended() => r,
            r = api.ended() => r,
            r = health.ended() => r,
            r = registry.ended() => r,
            () = gossip.died() => ("gossip", TaskError::Stopped),
        }
    }

    /// Stops every part and waits for its tasks: the proxy first (its connections are
    /// closed, telling peers), then the others together.
    async fn shutdown(&mut self) {
        if let Some(p) = &mut self.proxy {
            p.shutdown().await;
        }
        let Parts { dns, api, health, registry, .. } = self;
        tokio::join!(dns.shutdown(), api.shutdown(), health.shutdown(), registry.shutdown());
    }

    /// Stops every part at once.
    async fn kill(&mut self) {
        if let Some(p) = &mut self.proxy {
            p.kill().await;
        }
        let Parts { dns, api, health, registry, .. } = self;
        tokio::join!(dns.abort(), api.abort(), health.abort(), registry.abort());
    }
}

/// Every socket of the agent, bound before anything starts, so that an address in use
/// fails at start naming its setting.
struct Sockets {
    gossip: UdpSocket,
    dns: DnsSockets,
    dns_addr: SocketAddr,
    api: TcpListener,
    api_addr: SocketAddr,
    proxy: Option<ProxySockets>,
    /// Where peers dial the sidecar (the advertised IP when it is bound to every
    /// interface).
    proxy_addr: Option<SocketAddr>,
    /// Each upstream's alias and VIP.
    aliases: Vec<(String, std::net::IpAddr)>,
}

impl Sockets {
    async fn bind(config: &Config) -> Result<Sockets, StartError> {
        let bind_err = |setting, addr| move |source| StartError::Bind { setting, addr, source };
        let gossip = UdpSocket::bind(config.gossip.bind).await.map_err(bind_err("--bind", config.gossip.bind))?;
        let dns = DnsSockets::bind(config.dns.listen).await.map_err(bind_err("--dns-listen", config.dns.listen))?;
        let api = TcpListener::bind(config.api.listen).await.map_err(bind_err("--api-listen", config.api.listen))?;
        let local = |r: std::io::Result<SocketAddr>, setting, addr| r.map_err(bind_err(setting, addr));
        let dns_addr = local(dns.local_addr(), "--dns-listen", config.dns.listen)?;
        let api_addr = local(api.local_addr(), "--api-listen", config.api.listen)?;
        let proxy = match &config.proxy {
            Some(p) => Some(ProxySockets::bind(p).await.map_err(StartError::Proxy)?),
            None => None,
        };
        let proxy_addr = match &proxy {
            Some(s) => {
                let proxy_bind = config.proxy.as_ref().map(|p| p.bind).unwrap_or(config.gossip.bind);
                let bound = s.quic_addr().map_err(bind_err("--proxy-bind", proxy_bind))?;
                Some(if bound.ip().is_unspecified() {
                    SocketAddr::new(config.node.advertise, bound.port())
                } else {
                    bound
                })
            }
            None => None,
        };
        let aliases = proxy
            .as_ref()
            .map(|s| s.listen_addrs().into_iter().map(|(a, l)| (a, l.ip())).collect())
            .unwrap_or_default();
        Ok(Sockets { gossip, dns, dns_addr, api, api_addr, proxy, proxy_addr, aliases })
    }
}

/// Writes the upstreams' aliases into `--hosts-file`, when one is set.
fn write_hosts_file(config: &Config, aliases: &[(String, std::net::IpAddr)]) -> Result<(), StartError> {
    let Some(path) = config.proxy.as_ref().and_then(|p| p.hosts_file.as_ref()) else { return Ok(()) };
    if aliases.is_empty() {
        return Ok(());
    }
    crate::proxy::vip::write_hosts(path, aliases, &config.dns.namespace)
        .map_err(|source| StartError::HostsFile { path: path.clone(), source })
}

/// Starts gossip with this node's record set before the first datagram.
async fn start_gossip(
    config: &Config,
    generation: u64,
    socket: UdpSocket,
    proxy: Option<SocketAddr>,
    metrics: &Arc<Metrics>,
) -> Result<Gossip, StartError> {
    let name = config.node.name.to_string();
    let record = NodeRecord {
        name: config.node.name.clone(),
        zone: config.node.zone.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        advertise: config.node.advertise,
        proxy,
        started_unix_ms: generation,
    };
    let initial = vec![(keys::NODE.to_owned(), encode_value(&record))];
    let gossip = spawn_gossip(&config.gossip, &name, generation, socket, initial, metrics.clone())
        .instrument(info_span!("gossip", node = %name))
        .await?;
    Ok(gossip)
}

/// The write path, with the config's instances registered through it.
async fn register_services(config: &Config, gossip: &Gossip) -> Result<Publisher, StartError> {
    let publisher = Publisher::new(
        gossip.writer(),
        config.node.name.clone(),
        config.node.advertise,
        config.proxy.is_some(),
        config.api.limits,
    );
    for spec in &config.services {
        publisher
            .register(spec, Origin::Config)
            .await
            .map_err(|source| StartError::Register { service: spec.name.to_string(), source })?;
    }
    Ok(publisher)
}

/// Opens `--access-log`, when one is set.
async fn open_access_log(
    config: &Config,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
) -> Result<Option<crate::proxy::access_log::AccessLog>, StartError> {
    let Some(path) = config.proxy.as_ref().and_then(|p| p.access_log.as_ref()) else { return Ok(None) };
    let target = crate::proxy::access_log::Target::from_path(path);
    let log = crate::proxy::access_log::start(target, metrics.clone(), cancel.clone())
        .await
        .map_err(|source| StartError::AccessLog { path: path.clone(), source })?;
    Ok(Some(log))
}

/// What `/v1/agent/self` says about this agent; `addrs` are its gossip, DNS and API
/// addresses.
fn agent_json(config: &Config, generation: u64, addrs: [SocketAddr; 3]) -> AgentJson {
    let [gossip, dns, api] = addrs;
    AgentJson {
        name: config.node.name.to_string(),
        cluster: config.gossip.cluster.clone(),
        namespace: config.dns.namespace.clone(),
        address: config.node.advertise.to_string(),
        gossip_address: gossip.to_string(),
        dns_address: dns.to_string(),
        api_address: api.to_string(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        generation,
        encrypted: config.gossip.keyring.is_some(),
        draining: false,
        instances: Vec::new(),
        open_files: crate::rlimit::open_files(),
    }
}
