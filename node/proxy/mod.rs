//! Proxy mode: the sidecar data path. Outbound, each upstream listens on its VIP and
//! carries app connections to healthy endpoints (balance → outlier → QUIC pool, or TCP);
//! inbound, the QUIC listener checks callers and hands streams to the local app.
//!
//! Pure decisions live in their own files and take `now`: [`balance`], [`ewma`],
//! [`outlier`], [`retry`]. The async shells are [`outbound`], [`inbound`], [`pool`] and
//! [`splice`]. quinn and rustls appear only here and in `tls/`.

pub mod access_log;
pub mod balance;
mod config;
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
use tokio_util::sync::CancellationToken;
use tracing::{info_span, Instrument};

use crate::config::UpstreamSpec;
use crate::local::LocalInstance;
use crate::metrics::Metrics;
use crate::registry::RegistryReader;
use crate::task::Tasks;
use crate::tls::TlsMaterial;
pub use config::{Config, ReloadError, TlsFiles};
use inbound::{serve_inbound, InboundContext};
use outbound::{Caller, Upstream};
use pool::Pool;

/// Streams one peer may have open on a connection: 16,384 proxied connections between
/// one pair of sidecars, and no more (each costs the inbound side a task, an app
/// connection and about 7 KB: `cargo bench --bench conns`). At exactly 10,000 a
/// stream just closed by the caller but not yet credited back made the 10,000th
/// connection wait out its connect timeout; the inbound side allows 20,000 in all.
const MAX_STREAMS: u32 = 16_384;
/// Keep-alive on pooled connections, well inside the idle timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A pooled connection with no packets for this long is dead.
const QUIC_IDLE: Duration = Duration::from_secs(30);
/// The largest QUIC packet path MTU discovery tries (quinn's default stops at 1,452,
/// Ethernet's). Paths that carry more, jumbo frames in a data centre or loopback
/// between sidecars on one host, then move the same bytes in fewer packets: each
/// packet costs a header, its protection, an ack and a pass through the connection's
/// state. On a 1,500-byte path the probes above it are lost, and discovery settles
/// where quinn's default would. Not 8,952 (a 9,000-byte frame): quinn hands the kernel
/// up to 10 packets in one segmentation-offload send, which may not exceed 64 KB, so
/// 10 × 8,952 failed as a whole, quinn took the lost batches for an MTU black hole,
/// and fell back to 1,200-byte packets. 10 × 6,500 fits.
const MAX_UDP_PAYLOAD: u16 = 6500;
/// Flow-control windows: how much one stream (one proxied connection), and all of a
/// connection's streams together, may have in flight unread. They bound what a slow
/// reader makes the sidecars buffer, so they are memory: at 8 MB per stream bulk ran
/// at 6.5 Gbit/s on loopback here with the sidecars at 45–49 MB; at 4 MB, 4.2–4.8
/// Gbit/s at 15–19 MB (2 MB: 3.9 Gbit/s, 14–17 MB). 4 MB still carries 32 Gbit/s
/// over a 1 ms round trip.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// The TLS material does not make a rustls config.
    #[error("tls")]
    Tls(#[from] crate::tls::BuildError),
    /// rustls's config does not make a QUIC config (no TLS 1.3 cipher suite QUIC uses).
    #[error("the TLS config does not suit QUIC")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
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

/// Kernel buffers asked for on the QUIC socket, each way. One burst from a peer (a
/// window's worth of GSO batches) must fit, or the kernel drops the tail: every drop
/// costs a retransmission and a congestion-window cut, and a run of lost large packets
/// looks like an MTU black hole to quinn, which falls back to 1,200-byte packets for a
/// minute. Linux's usual default (208 KB) overflows at a few Gbit/s.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Asks for [`SOCKET_BUFFER`] each way; says once, with the fix, when the kernel caps
/// it lower (`net.core.rmem_max`, `net.core.wmem_max`). The memory is the kernel's,
/// taken only while packets wait in it.
fn size_socket_buffers(socket: &std::net::UdpSocket) {
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    // Linux reports twice what it grants (the bookkeeping overhead included).
    let granted = |got: std::io::Result<usize>| got.map(|b| b / 2).unwrap_or(0);
    let (recv, send) = (granted(sock.recv_buffer_size()), granted(sock.send_buffer_size()));
    if recv < SOCKET_BUFFER / 2 || send < SOCKET_BUFFER / 2 {
        tracing::warn!(
            recv_bytes = recv,
            send_bytes = send,
            wanted = SOCKET_BUFFER,
            "the kernel capped the QUIC socket's buffers: bursts between sidecars can overflow them (lost \
             packets, smaller packets, lower throughput); raise the caps with \
             `sysctl -w net.core.rmem_max={SOCKET_BUFFER} net.core.wmem_max={SOCKET_BUFFER}`"
        );
    }
}

/// QUIC settings of every connection, the peer allowed `max_streams` streams on each.
fn transport(max_streams: u32) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(max_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(QUIC_IDLE.try_into().unwrap_or(VarInt::from_u32(30_000).into())));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    t.send_window(u64::from(CONNECTION_WINDOW));
    Arc::new(t)
}

/// The QUIC server and client configs built from `tls`.
fn quic_configs(tls: &TlsMaterial) -> Result<(quinn::ServerConfig, quinn::ClientConfig), ProxyError> {
    let server = QuicServerConfig::try_from(tls.server_config()?)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport(MAX_STREAMS));
    let client = QuicClientConfig::try_from(tls.client_config()?)?;
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    // Nothing accepts streams a peer opens toward the calling side: advertise none.
    client.transport_config(transport(0));
    Ok((server, client))
}

impl ProxySockets {
    /// Binds the QUIC endpoint and every upstream listener.
    pub async fn bind(config: &Config) -> Result<ProxySockets, ProxyError> {
        let (server, client) = quic_configs(&config.tls)?;
        let bind_err = |source| ProxyError::Bind { setting: "--proxy-bind", addr: config.bind, source };
        let socket = std::net::UdpSocket::bind(config.bind).map_err(bind_err)?;
        size_socket_buffers(&socket);
        // What this endpoint accepts, and tells peers it accepts (quinn's default is
        // 1,472): discovery toward a peer goes no higher than the peer allows.
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config.max_udp_payload_size(MAX_UDP_PAYLOAD).expect("a constant within quinn's 1,200..=65,527");
        let endpoint =
            Endpoint::new(endpoint_config, Some(server), socket, Arc::new(quinn::TokioRuntime)).map_err(bind_err)?;
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

/// A running proxy: its QUIC endpoint, its connection pool and its tasks.
pub struct Proxy {
    endpoint: Endpoint,
    pool: Arc<Pool>,
    tasks: Tasks,
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

    /// Closes every connection (telling peers), then stops the listeners and waits for
    /// the tasks.
    pub async fn shutdown(&mut self) {
        self.close_and_wait().await;
        self.tasks.shutdown().await;
    }

    /// Stops at once: connections closed, tasks aborted.
    pub async fn kill(&mut self) {
        self.close();
        self.tasks.abort().await;
    }

    /// Resolves when one of the proxy's tasks ends on its own.
    pub async fn ended(&mut self) -> (&'static str, crate::error::TaskError) {
        self.tasks.ended().await
    }
}

/// What the proxy needs from the rest of the agent.
pub struct ProxyDeps {
    /// The registry replica, for the endpoints of each upstream.
    pub registry: RegistryReader,
    /// This agent's instances.
    pub local: watch::Receiver<Arc<Vec<LocalInstance>>>,
    /// Set while draining.
    pub draining: Arc<AtomicBool>,
    /// Where the proxy counts its connections, failures and latencies.
    pub metrics: Arc<Metrics>,
    /// Who calls; `None` when there are no upstreams.
    pub caller: Option<Caller>,
    /// Where each proxied connection is logged, when `--access-log` is on.
    pub access_log: Option<access_log::AccessLog>,
}

/// Starts the inbound listener and every upstream; they stop with `cancel` or
/// [`Proxy::shutdown`].
pub fn spawn_proxy(sockets: ProxySockets, config: &Config, deps: ProxyDeps, cancel: CancellationToken) -> Proxy {
    let mut tasks = Tasks::new(cancel);
    let cancel = tasks.token();
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
    tasks.spawn("proxy inbound", inbound);
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
                    tasks.spawn("proxy upstream", serve);
                }
                Listener::Udp(u) => {
                    let serve = udp::serve_udp(up, u, flows.clone(), cancel.clone()).instrument(span);
                    tasks.spawn("proxy udp upstream", serve);
                }
            }
        }
    }
    // Once a second: ejections that ended, state of endpoints that left, closed
    // pooled connections. On every registry change: connections to peers that died or
    // restarted are closed.
    let mut changes = deps.registry.subscribe();
    let refresh_pool = pool.clone();
    tasks.spawn("proxy refresh", async move {
        let pool = refresh_pool;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    upstreams.iter().for_each(|u| u.refresh());
                    pool.prune();
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let snapshot = changes.borrow_and_update().clone();
                    pool.close_stale(&snapshot.members);
                }
            }
        }
    });
    Proxy { endpoint, pool, tasks }
}
