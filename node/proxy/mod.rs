//! Proxy mode: the sidecar data path. Outbound, each upstream listens on its VIP and
//! carries app connections to healthy endpoints (balance → outlier → QUIC pool, or TCP);
//! inbound, the QUIC listener checks callers and hands streams to the local app.
//!
//! Pure decisions live in their own files and take `now`: [`balance`], [`ewma`],
//! [`outlier`], [`retry`]. The async shells are [`outbound`], [`inbound`], [`pool`] and
//! [`splice`]. quinn and rustls appear only here and in `tls/`.

pub mod access_log;
pub mod balance;
pub mod ewma;
pub mod header;
pub mod inbound;
pub mod outbound;
pub mod outlier;
pub mod pool;
pub mod retry;
pub mod splice;
pub mod udp;
pub mod vip;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, TransportConfig, VarInt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, Instrument};

use crate::config::{ProxyConfig, UpstreamSpec};
use crate::local::LocalInstance;
use crate::metrics::Metrics;
use crate::registry::RegistryReader;
use crate::tls::TlsMaterial;
use inbound::{serve_inbound, InboundContext};
use outbound::{Caller, Upstream};
use pool::Pool;

/// Streams one peer may have open on a connection: 16,384 proxied connections between
/// one pair of sidecars, and no more (each costs the inbound side a task, an app
/// connection and about 21 KB: `cargo bench --bench conns`). At exactly 10,000 a
/// stream just closed by the caller but not yet credited back made the 10,000th
/// connection wait out its connect timeout; the inbound side allows 20,000 in all.
const MAX_STREAMS: u32 = 16_384;
/// Keep-alive on pooled connections, well inside the idle timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A pooled connection with no packets for this long is dead.
const QUIC_IDLE: Duration = Duration::from_secs(30);
/// Flow-control windows sized for bulk transfers on fast links.
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A socket could not be bound (the OS error is the source).
    #[error("{setting}: cannot bind {addr}")]
    Bind {
        /// The setting naming the address.
        setting: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS material does not make a config.
    #[error("tls: {0}")]
    Tls(String),
}

/// Every socket of the proxy, bound before anything runs.
pub struct ProxySockets {
    endpoint: Endpoint,
    client: quinn::ClientConfig,
    listeners: Vec<(UpstreamSpec, Listener)>,
}

/// A bound upstream listener.
enum Listener {
    Tcp(TcpListener),
    Udp(tokio::net::UdpSocket),
}

impl Listener {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr(),
            Listener::Udp(u) => u.local_addr(),
        }
    }
}

/// QUIC settings of every connection, the peer allowed `max_streams` streams on each.
fn transport(max_streams: u32) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(max_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(QUIC_IDLE.try_into().unwrap_or(VarInt::from_u32(30_000).into())));
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    t.send_window(u64::from(CONNECTION_WINDOW));
    Arc::new(t)
}

/// The QUIC server and client configs built from `tls`.
fn quic_configs(tls: &TlsMaterial) -> Result<(quinn::ServerConfig, quinn::ClientConfig), ProxyError> {
    let server = tls.server_config().map_err(ProxyError::Tls)?;
    let server = QuicServerConfig::try_from(server).map_err(|e| ProxyError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport(MAX_STREAMS));
    let client = tls.client_config().map_err(ProxyError::Tls)?;
    let client = QuicClientConfig::try_from(client).map_err(|e| ProxyError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    // Nothing accepts streams a peer opens toward the calling side: advertise none.
    client.transport_config(transport(0));
    Ok((server, client))
}

impl ProxySockets {
    /// Binds the QUIC endpoint and every upstream listener.
    pub async fn bind(config: &ProxyConfig) -> Result<ProxySockets, ProxyError> {
        let (server, client) = quic_configs(&config.tls)?;
        let endpoint = Endpoint::server(server, config.bind).map_err(|source| ProxyError::Bind {
            setting: "--proxy-bind",
            addr: config.bind,
            source,
        })?;
        let mut listeners = Vec::new();
        for (spec, addr) in
            config.upstreams.iter().zip(vip::listen_addrs(&config.upstreams, config.vip_base, config.vip_count))
        {
            let err = |source| ProxyError::Bind { setting: "--upstream", addr, source };
            let l = match spec.proto {
                crate::config::Proto::Tcp => Listener::Tcp(TcpListener::bind(addr).await.map_err(err)?),
                crate::config::Proto::Udp => Listener::Udp(tokio::net::UdpSocket::bind(addr).await.map_err(err)?),
            };
            listeners.push((spec.clone(), l));
        }
        Ok(ProxySockets { endpoint, client, listeners })
    }

    /// The bound QUIC address.
    pub fn quic_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Each upstream's alias and bound listen address.
    pub fn listen_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners.iter().filter_map(|(s, l)| Some((s.alias.to_string(), l.local_addr().ok()?))).collect()
    }
}

/// A running proxy.
pub struct Proxy {
    endpoint: Endpoint,
    pool: Arc<Pool>,
}

impl Proxy {
    /// Puts new TLS material in service (certificate rotation): handshakes from now on,
    /// inbound and outbound, use it. Connections already made keep the certificates
    /// they were made with until they close.
    pub fn set_tls(&self, tls: &TlsMaterial) -> Result<(), ProxyError> {
        let (server, client) = quic_configs(tls)?;
        self.endpoint.set_server_config(Some(server));
        self.pool.set_client(client);
        Ok(())
    }

    /// Closes every QUIC connection at once (the end of a drain).
    pub fn close(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"agent leaving");
    }

    /// Closes every QUIC connection and waits (briefly) until peers were told, so they
    /// drop their pooled connection at once instead of timing out.
    pub async fn close_and_wait(&self) {
        self.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// What the proxy needs from the rest of the agent.
pub struct ProxyDeps {
    /// The replica.
    pub registry: RegistryReader,
    /// This agent's instances.
    pub local: watch::Receiver<Arc<Vec<LocalInstance>>>,
    /// Set while draining.
    pub draining: Arc<AtomicBool>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Who calls; `None` when there are no upstreams.
    pub caller: Option<Caller>,
    /// Where each proxied connection is logged, when `--access-log` is on.
    pub access_log: Option<access_log::AccessLog>,
}

/// Starts the inbound listener and every upstream into `tasks`.
pub fn spawn_proxy(
    sockets: ProxySockets,
    config: &ProxyConfig,
    deps: ProxyDeps,
    tasks: &mut JoinSet<(&'static str, anyhow::Result<()>)>,
    cancel: CancellationToken,
) -> Proxy {
    let ProxySockets { mut endpoint, client, listeners } = sockets;
    endpoint.set_default_client_config(client.clone());
    let pool = Arc::new(Pool::new(endpoint.clone(), client));
    let flows = Arc::new(udp::FlowTable::default());
    let ctx = Arc::new(InboundContext {
        local: deps.local,
        draining: deps.draining,
        mutual: config.tls.is_mutual(),
        metrics: deps.metrics.clone(),
        flows: flows.clone(),
        streams: Arc::new(tokio::sync::Semaphore::new(inbound::MAX_INBOUND_STREAMS)),
        peers: inbound::PeerTable::default(),
    });
    let inbound = serve_inbound(endpoint.clone(), ctx, cancel.clone()).instrument(info_span!("inbound"));
    tasks.spawn(async move { ("proxy inbound", inbound.await) });
    let mut upstreams = Vec::new();
    if let Some(caller) = deps.caller {
        for (spec, listener) in listeners {
            let listen = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let stats = deps.metrics.proxy.add_upstream(spec.alias.as_str(), spec.service.as_str(), &listen);
            let alias = spec.alias.to_string();
            let up = Arc::new(
                Upstream::new(spec, stats, deps.registry.clone(), pool.clone(), caller.clone(), config.tls.is_mutual())
                    .with_access_log(deps.access_log.clone()),
            );
            upstreams.push(up.clone());
            let span = info_span!("upstream", %alias, %listen);
            match listener {
                Listener::Tcp(l) => {
                    let serve = up.serve(l, cancel.clone()).instrument(span);
                    tasks.spawn(async move { ("proxy upstream", serve.await) });
                }
                Listener::Udp(u) => {
                    let serve = udp::serve_udp(up, u, flows.clone(), cancel.clone()).instrument(span);
                    tasks.spawn(async move { ("proxy udp upstream", serve.await) });
                }
            }
        }
    }
    // Once a second: ejections that ended, state of endpoints that left, closed
    // pooled connections. On every registry change: connections to peers that died or
    // restarted are closed.
    let mut changes = deps.registry.subscribe();
    let proxy = Proxy { endpoint, pool: pool.clone() };
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return ("proxy refresh", Ok(())),
                _ = tick.tick() => {
                    upstreams.iter().for_each(|u| u.refresh());
                    pool.prune();
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return ("proxy refresh", Ok(()));
                    }
                    let snapshot = changes.borrow_and_update().clone();
                    pool.close_stale(&snapshot.members);
                }
            }
        }
    });
    proxy
}
