//! UDP upstreams (which ECS Service Connect cannot carry): each client flow (one source
//! address on the VIP) gets a QUIC stream that opens it (header, ack; the stream stays
//! open as the flow's lifetime) and its datagrams ride QUIC datagrams tagged with the
//! stream's id. A flow idle for the upstream's idle timeout is closed on both sides.
//! Endpoints without a sidecar are relayed as plain UDP.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use quinn::{Connection, RecvStream, SendStream};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::outbound::{Connected, Upstream};
use murmur_protocol::Transport;

/// Datagrams queued per flow before new ones are dropped (UDP may drop; memory may not grow).
const FLOW_QUEUE: usize = 256;
/// Largest UDP payload relayed.
const MAX_PAYLOAD: usize = 65_507;
/// Flows per upstream at once; past this, new flows are refused (dropped datagrams).
const MAX_FLOWS: usize = 4096;
/// Idle timeout of a flow whose client has sent one datagram so far (a resolver-like
/// client opens a socket per query and never sends on it again): it would otherwise
/// hold its slot for the upstream's whole idle timeout.
pub const ONE_SHOT_IDLE: Duration = Duration::from_secs(2);
/// Receive buffer of an inbound flow: anything larger than a QUIC datagram (about
/// 1,200-1,450 bytes) cannot be carried anyway, and is dropped and counted.
const INBOUND_BUFFER: usize = 2048;

/// The idle timeout of a flow that has carried `datagrams` from its client.
fn idle_after(datagrams: u64, idle: Duration) -> Duration {
    if datagrams <= 1 {
        idle.min(ONE_SHOT_IDLE)
    } else {
        idle
    }
}

/// One flow's route: where its datagrams go, and whether a remote sidecar opened it.
struct Route {
    tx: mpsc::Sender<Bytes>,
    inbound: bool,
}

type FlowKey = (usize, u64);

/// Routes incoming QUIC datagrams to their flow, on every connection that carries flows.
#[derive(Default)]
pub struct FlowTable {
    // A std mutex: held for map updates and lookups only.
    flows: Mutex<HashMap<FlowKey, Route>>,
    readers: Mutex<HashSet<usize>>,
}

fn tag(flow: u64, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + payload.len());
    b.put_u64(flow);
    b.put_slice(payload);
    b.freeze()
}

impl FlowTable {
    /// Flows remote sidecars opened to this one (its own calls out are not counted: they
    /// have their own cap, per upstream).
    pub fn inbound_len(&self) -> usize {
        self.flows.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|r| r.inbound).count()
    }

    /// Routes datagrams of `flow` on `conn` to the returned receiver; `inbound` when a
    /// remote sidecar opened the flow.
    pub(crate) fn register(self: &Arc<Self>, conn: &Connection, flow: u64, inbound: bool) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        self.flows.lock().unwrap_or_else(|p| p.into_inner()).insert((conn.stable_id(), flow), Route { tx, inbound });
        let first = self.readers.lock().unwrap_or_else(|p| p.into_inner()).insert(conn.stable_id());
        if first {
            let (table, conn) = (self.clone(), conn.clone());
            tokio::spawn(async move { table.read_datagrams(conn).await });
        }
        rx
    }

    fn unregister(&self, conn: &Connection, flow: u64) {
        self.flows.lock().unwrap_or_else(|p| p.into_inner()).remove(&(conn.stable_id(), flow));
    }

    async fn read_datagrams(&self, conn: Connection) {
        let id = conn.stable_id();
        while let Ok(d) = conn.read_datagram().await {
            if d.len() < 8 {
                continue;
            }
            let flow = u64::from_be_bytes(d[..8].try_into().unwrap_or([0; 8]));
            let tx = self.flows.lock().unwrap_or_else(|p| p.into_inner()).get(&(id, flow)).map(|r| r.tx.clone());
            if let Some(tx) = tx {
                let _ = tx.try_send(d.slice(8..));
            }
        }
        self.readers.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        self.flows.lock().unwrap_or_else(|p| p.into_inner()).retain(|(c, _), _| *c != id);
    }
}

/// Serves one UDP upstream on `socket` until `cancel`.
pub async fn serve_udp(
    up: Arc<Upstream>,
    socket: UdpSocket,
    table: Arc<FlowTable>,
    cancel: CancellationToken,
) -> Result<(), crate::error::TaskError> {
    let socket = Arc::new(socket);
    let flows: Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>> = Arc::default();
    let mut buf = vec![0u8; MAX_PAYLOAD + 1];
    loop {
        let (n, client) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => { debug!(error = %e, "udp recv failed"); continue; }
            },
        };
        let payload = Bytes::copy_from_slice(&buf[..n]);
        let existing = flows.lock().unwrap_or_else(|p| p.into_inner()).get(&client).cloned();
        if let Some(tx) = existing {
            if tx.try_send(payload.clone()).is_ok() {
                continue;
            }
            if !tx.is_closed() {
                continue; // queue full: drop, as the network would
            }
        }
        if flows.lock().unwrap_or_else(|p| p.into_inner()).len() >= MAX_FLOWS {
            up.stats().breaker_rejections.inc();
            continue;
        }
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        let _ = tx.try_send(payload);
        flows.lock().unwrap_or_else(|p| p.into_inner()).insert(client, tx.clone());
        let (up, socket, table, flows, cancel) =
            (up.clone(), socket.clone(), table.clone(), flows.clone(), cancel.clone());
        tokio::spawn(async move {
            run_flow(&up, client, socket, rx, &table, cancel).await;
            flows.lock().unwrap_or_else(|p| p.into_inner()).remove(&client);
        });
    }
}

async fn run_flow(
    up: &Upstream,
    client: SocketAddr,
    socket: Arc<UdpSocket>,
    mut from_app: mpsc::Receiver<Bytes>,
    table: &Arc<FlowTable>,
    cancel: CancellationToken,
) {
    let stats = up.stats();
    stats.accepted.inc();
    let began = up.started();
    let mut attempts = crate::proxy::outbound::Attempts::default();
    let Some((connected, ep, ep_stats)) = up.establish(Transport::Udp, &mut attempts).await else {
        stats.failed.inc();
        let (result, cause) = attempts.failed();
        up.log_access("udp", began, None, None, result, cause, &attempts);
        return;
    };
    ep_stats.connections.inc();
    ep_stats.active.inc();
    let idle = up.spec().idle_timeout;
    let moved = match connected {
        Connected::Quic { conn, send, recv, .. } => {
            let flow = u64::from(send.id());
            let mut from_peer = table.register(&conn, flow, false);
            let moved = relay_quic(
                &conn,
                flow,
                send,
                recv,
                &socket,
                client,
                &mut from_app,
                &mut from_peer,
                idle,
                &ep_stats,
                cancel,
            )
            .await;
            table.unregister(&conn, flow);
            moved
        }
        Connected::Udp(target) => {
            let mut moved = (0, 0);
            if let Ok(direct) = UdpSocket::bind(if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).await {
                if direct.connect(target).await.is_ok() {
                    moved = relay_direct(&direct, &socket, client, &mut from_app, idle, &ep_stats).await;
                }
            }
            moved
        }
        Connected::Tcp(_) => (0, 0),
    };
    up.log_access("udp", began, Some(&ep), Some(moved), "ok", None, &attempts);
    ep_stats.active.dec();
    up.finished(&ep.id);
}

#[allow(clippy::too_many_arguments)]
async fn relay_quic(
    conn: &Connection,
    flow: u64,
    mut send: SendStream,
    mut recv: RecvStream,
    socket: &UdpSocket,
    client: SocketAddr,
    from_app: &mut mpsc::Receiver<Bytes>,
    from_peer: &mut mpsc::Receiver<Bytes>,
    idle: Duration,
    ep_stats: &crate::metrics::proxy::EndpointStats,
    cancel: CancellationToken,
) -> (u64, u64) {
    let mut eof = [0u8; 1];
    let mut datagrams = 0u64;
    let mut moved = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(idle_after(datagrams, idle)) => break,
            // The peer closing the flow's stream ends the flow.
            _ = recv.read(&mut eof) => break,
            d = from_app.recv() => match d {
                Some(d) => {
                    datagrams += 1;
                    // QUIC datagrams must fit one packet on the path (about 1,200-1,450
                    // bytes): larger ones are dropped and counted, as a network would.
                    if conn.max_datagram_size().is_none_or(|max| d.len() + 8 > max) {
                        ep_stats.failure(crate::metrics::proxy::FailureCause::DatagramTooLarge);
                        continue;
                    }
                    ep_stats.bytes_sent.add(d.len() as u64);
                    moved.0 += d.len() as u64;
                    if conn.send_datagram(tag(flow, &d)).is_err() {
                        ep_stats.failure(crate::metrics::proxy::FailureCause::Other);
                    }
                }
                None => break,
            },
            d = from_peer.recv() => match d {
                Some(d) => {
                    ep_stats.bytes_received.add(d.len() as u64);
                    moved.1 += d.len() as u64;
                    let _ = socket.send_to(&d, client).await;
                }
                None => break,
            },
        }
    }
    let _ = send.finish();
    moved
}

async fn relay_direct(
    direct: &UdpSocket,
    socket: &UdpSocket,
    client: SocketAddr,
    from_app: &mut mpsc::Receiver<Bytes>,
    idle: Duration,
    ep_stats: &crate::metrics::proxy::EndpointStats,
) -> (u64, u64) {
    let mut buf = vec![0u8; MAX_PAYLOAD + 1];
    let mut datagrams = 0u64;
    let mut moved = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(idle_after(datagrams, idle)) => return moved,
            d = from_app.recv() => match d {
                Some(d) => {
                    datagrams += 1;
                    ep_stats.bytes_sent.add(d.len() as u64);
                    moved.0 += d.len() as u64;
                    let _ = direct.send(&d).await;
                }
                None => return moved,
            },
            r = direct.recv(&mut buf) => match r {
                Ok(n) => {
                    ep_stats.bytes_received.add(n as u64);
                    moved.1 += n as u64;
                    let _ = socket.send_to(&buf[..n], client).await;
                }
                Err(_) => return moved,
            },
        }
    }
}

/// Inbound: carries one acknowledged UDP flow between the caller's datagrams and the
/// local app, until the caller finishes the stream or the flow idles out.
#[allow(clippy::too_many_arguments)]
pub async fn serve_inbound_flow(
    conn: Connection,
    mut recv: RecvStream,
    mut send: SendStream,
    app: UdpSocket,
    table: Arc<FlowTable>,
    mut from_caller: mpsc::Receiver<Bytes>,
    idle: Duration,
    dropped: &crate::metrics::Counter,
) {
    let flow = u64::from(recv.id());
    let mut buf = vec![0u8; INBOUND_BUFFER];
    let mut eof = [0u8; 1];
    let mut datagrams = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(idle_after(datagrams, idle)) => break,
            _ = recv.read(&mut eof) => break,
            d = from_caller.recv() => match d {
                Some(d) => {
                    datagrams += 1;
                    let _ = app.send(&d).await;
                }
                None => break,
            },
            r = app.recv(&mut buf) => match r {
                Ok(n) if conn.max_datagram_size().is_some_and(|max| n + 8 <= max) => {
                    let _ = conn.send_datagram(tag(flow, &buf[..n]));
                }
                Ok(_) => dropped.inc(),
                Err(_) => break,
            },
        }
    }
    table.unregister(&conn, flow);
    let _ = send.finish();
}
