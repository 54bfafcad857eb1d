//! QUIC connections to peer sidecars, shared by every proxied stream to a peer.
//!
//! - A connection carries at most the peer's stream limit. When every connection to a
//!   peer is out of stream credit, another is opened, up to
//!   [`MAX_CONNECTIONS_PER_PEER`], so a pair of sidecars is not held to one
//!   connection's streams.
//! - A lost connection is replaced on next use; connecting to one peer never blocks
//!   streams to another.
//! - Connections to a peer the registry calls dead or gone, or whose generation is no
//!   longer the one the connection was made to, are closed at once
//!   ([`Pool::close_stale`]; generations are compared as the registry saw them, never
//!   one host's clock against another's): the streams
//!   through a dead sidecar end in a reset to the app within the failure detector's
//!   time (about 1.2 s), not after the QUIC idle timeout, and a restarted peer is
//!   reached with a new handshake rather than through a connection nobody answers.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use quinn::{ClientConfig, Connection, Endpoint, RecvStream, SendStream, VarInt};
use tracing::info;

use crate::registry::{Member, MemberStatus, SharedMap};
use crate::tls::node_server_name;

/// Most connections to one peer: 4 × the peer's stream limit (16,384) proxied
/// connections between a pair of sidecars.
pub const MAX_CONNECTIONS_PER_PEER: usize = 4;
/// QUIC application close code: the peer sidecar is dead, gone or restarted.
const CLOSE_STALE: u32 = 1;

/// Why no stream could be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The connection attempt could not start (bad address, endpoint closed).
    #[error("cannot connect to {addr}")]
    Connect {
        /// The peer's sidecar.
        addr: SocketAddr,
        /// Why quinn would not start the attempt.
        source: quinn::ConnectError,
    },
    /// The handshake failed (peer down, wrong CA, refused).
    #[error("handshake with {addr} failed")]
    Handshake {
        /// The peer's sidecar.
        addr: SocketAddr,
        /// How the connection ended.
        source: quinn::ConnectionError,
    },
    /// The connection failed while a stream was being opened.
    #[error("cannot open a stream to {addr}")]
    Stream {
        /// The peer's sidecar.
        addr: SocketAddr,
        /// How the connection ended.
        source: quinn::ConnectionError,
    },
}

/// A stream opened to a peer.
pub struct Opened {
    /// The connection it runs on.
    pub conn: Connection,
    /// Its sending half.
    pub send: SendStream,
    /// Its receiving half.
    pub recv: RecvStream,
    /// Time spent making a new connection for it (zero when one was pooled).
    pub handshake: Duration,
}

struct Pooled {
    conn: Connection,
    /// The peer's generation, as the registry saw it, when the connection was made.
    generation: u64,
}

type Slot = Arc<tokio::sync::Mutex<Vec<Pooled>>>;

/// QUIC connections to peer sidecars, at most one per peer generation, shared by
/// every upstream: a new stream rides an open connection instead of a new handshake.
pub struct Pool {
    endpoint: Endpoint,
    /// Replaced when the TLS material is (certificate rotation).
    client: Mutex<ClientConfig>,
    // A std mutex only to find or add a slot; the per-peer async mutex is what is held
    // while connecting, so one slow peer never blocks the others.
    // Keyed by address and node name (verified in the handshake), so a connection made
    // to one node is never reused for another at the same address.
    slots: Mutex<HashMap<(SocketAddr, String), Slot>>,
}

/// Opens a stream on `conn` if it has stream credit now; `None` when it has none.
fn open_now(conn: &Connection) -> Option<Result<(SendStream, RecvStream), quinn::ConnectionError>> {
    let mut open = std::pin::pin!(conn.open_bi());
    match open.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => Some(r),
        Poll::Pending => None,
    }
}

impl Pool {
    /// A pool dialling from `endpoint` with `client`.
    pub fn new(endpoint: Endpoint, client: ClientConfig) -> Self {
        Self { endpoint, client: Mutex::new(client), slots: Mutex::new(HashMap::new()) }
    }

    /// New connections from now on present and verify with `client`.
    pub fn set_client(&self, client: ClientConfig) {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = client;
    }

    fn slot(&self, addr: SocketAddr, node: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry((addr, node.to_owned())).or_default().clone()
    }

    fn all_slots(&self) -> Vec<((SocketAddr, String), Slot)> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.iter().map(|(k, s)| (k.clone(), s.clone())).collect()
    }

    /// Forgets closed connections, and peers with none left.
    pub fn prune(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|_, s| match s.try_lock() {
            Ok(mut conns) => {
                conns.retain(|p| p.conn.close_reason().is_none());
                !conns.is_empty()
            }
            Err(_) => true,
        });
    }

    /// A new stream to node `node` (at `generation`, as the registry sees it) at `addr`:
    /// on a pooled connection with stream credit, else on a new connection, else (every
    /// connection allowed is at the peer's limit) on the first that frees a stream.
    /// Connections made to an older generation are closed first.
    pub async fn open(&self, addr: SocketAddr, node: &str, generation: u64) -> Result<Opened, PoolError> {
        let slot = self.slot(addr, node);
        let mut conns = slot.lock().await;
        conns.retain(|p| {
            let older = p.generation < generation;
            if older {
                p.conn.close(VarInt::from_u32(CLOSE_STALE), b"peer sidecar restarted");
            }
            !older && p.conn.close_reason().is_none()
        });
        for p in conns.iter() {
            // An error here means the connection just failed: try the next.
            if let Some(Ok((send, recv))) = open_now(&p.conn) {
                return Ok(Opened { conn: p.conn.clone(), send, recv, handshake: Duration::ZERO });
            }
        }
        // At the cap, the first connection is shared; below it, a new one is made.
        let shared = conns.first().filter(|_| conns.len() >= MAX_CONNECTIONS_PER_PEER).map(|p| p.conn.clone());
        let (conn, handshake) = match shared {
            Some(conn) => (conn, Duration::ZERO),
            None => {
                let start = Instant::now();
                let client = self.client.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let connecting = self
                    .endpoint
                    .connect_with(client, addr, &node_server_name(node))
                    .map_err(|source| PoolError::Connect { addr, source })?;
                let conn = connecting.await.map_err(|source| PoolError::Handshake { addr, source })?;
                conns.push(Pooled { conn: conn.clone(), generation });
                (conn, start.elapsed())
            }
        };
        drop(conns);
        let (send, recv) = conn.open_bi().await.map_err(|source| PoolError::Stream { addr, source })?;
        Ok(Opened { conn, send, recv, handshake })
    }

    /// Forgets `conn` to `node` at `addr` (it failed).
    pub fn evict(&self, addr: SocketAddr, node: &str, conn: &Connection) {
        let slot = self.slot(addr, node);
        let Ok(mut conns) = slot.try_lock() else { return };
        conns.retain(|p| p.conn.stable_id() != conn.stable_id());
    }

    /// Closes every connection to a peer that `members` (the registry's) shows dead,
    /// left or not at all, or at another generation than the connection was made to.
    /// Returns how many were closed. A peer being connected to right now is looked at next time.
    pub fn close_stale(&self, members: &SharedMap<String, Member>) -> usize {
        let mut closed = 0;
        for ((addr, node), slot) in self.all_slots() {
            let Ok(mut conns) = slot.try_lock() else { continue };
            let member = members.get(node.as_str());
            let before = conns.len();
            conns.retain(|p| {
                let stale = member.is_none_or(|m| m.status != MemberStatus::Alive || m.generation != p.generation);
                if stale {
                    p.conn.close(VarInt::from_u32(CLOSE_STALE), b"peer sidecar dead, gone or restarted");
                }
                !stale
            });
            if conns.len() < before {
                let status = member.map_or("gone".to_owned(), |m| format!("{:?}", m.status).to_lowercase());
                info!(peer = %node, %addr, %status, connections = before - conns.len(),
                      "closed connections to a dead or restarted sidecar");
                closed += before - conns.len();
            }
        }
        closed
    }

    /// Live connections to `node` at `addr`.
    #[cfg(test)]
    fn connections(&self, addr: SocketAddr, node: &str) -> usize {
        let slot = self.slot(addr, node);
        let conns = slot.try_lock().expect("not in use");
        conns.iter().filter(|p| p.conn.close_reason().is_none()).count()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

    use super::*;
    use crate::tls::TlsMaterial;

    /// A QUIC server for node `peer` allowing `streams` streams per connection, which
    /// accepts every connection and stream and holds them; and a pool to it.
    fn server_and_pool(streams: u32) -> (Endpoint, Arc<AtomicUsize>, Pool) {
        let node: murmur_protocol::NodeName = "peer".parse().expect("node name");
        let tls = TlsMaterial::insecure(&node).expect("throwaway certificate");
        let crypto = QuicServerConfig::try_from(tls.server_config().expect("server")).expect("quic server");
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(super::super::transport(streams));
        let endpoint = Endpoint::server(server, "127.0.0.1:0".parse().expect("addr")).expect("bind");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (ep, count) = (endpoint.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let Ok(conn) = incoming.await else { continue };
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut held = Vec::new();
                    while let Ok(stream) = conn.accept_bi().await {
                        held.push(stream);
                    }
                });
            }
        });
        let crypto = QuicClientConfig::try_from(tls.client_config().expect("client")).expect("quic client");
        let mut client = ClientConfig::new(Arc::new(crypto));
        client.transport_config(super::super::transport(streams));
        let dialler = Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("bind");
        (endpoint, accepted, Pool::new(dialler, client))
    }

    /// The generation of the test's peer.
    const GENERATION: u64 = 1_700_000_000_000;

    async fn open_and_hold(pool: &Pool, addr: SocketAddr) -> Opened {
        let mut s = pool.open(addr, "peer", GENERATION).await.expect("a stream");
        s.send.write_all(b"x").await.expect("write");
        s
    }

    /// The server's count of accepted connections once it reaches `want` (it counts a
    /// connection after the client already uses it) and a moment more, for any extra.
    async fn settled(accepted: &AtomicUsize, want: usize) -> usize {
        let start = Instant::now();
        while accepted.load(Ordering::Relaxed) < want && start.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        accepted.load(Ordering::Relaxed)
    }

    fn member(status: MemberStatus, generation: u64) -> Member {
        Member::other("peer", generation, status)
    }

    fn members(m: Member) -> SharedMap<String, Member> {
        [(m.name.clone(), m)].into_iter().collect()
    }

    #[tokio::test]
    async fn a_peer_out_of_stream_credit_gets_another_connection() {
        let (server, accepted, pool) = server_and_pool(2);
        let addr = server.local_addr().expect("addr");
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(open_and_hold(&pool, addr).await);
        }
        // 5 streams at 2 per connection.
        assert_eq!(pool.connections(addr, "peer"), 3);
        assert_eq!(settled(&accepted, 3).await, 3);
        // Streams that end give their credit back: no new connection for the next ones.
        for mut s in held.drain(..) {
            s.send.finish().expect("finish");
            let _ = s.recv.stop(VarInt::from_u32(0));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let again = open_and_hold(&pool, addr).await;
        assert_eq!(settled(&accepted, 3).await, 3, "a fourth connection for a stream that had credit");
        drop(again);
    }

    #[tokio::test]
    async fn connections_to_a_dead_or_restarted_peer_are_closed() {
        let (server, accepted, pool) = server_and_pool(8);
        let addr = server.local_addr().expect("addr");
        let s = open_and_hold(&pool, addr).await;
        // Alive at the generation the connection was made to: kept, whatever the peer's
        // clock says (generations are never compared with this host's clock).
        assert_eq!(pool.close_stale(&members(member(MemberStatus::Alive, GENERATION))), 0);
        assert!(s.conn.close_reason().is_none());
        // Restarted: another generation.
        assert_eq!(pool.close_stale(&members(member(MemberStatus::Alive, GENERATION + 1))), 1);
        assert!(s.conn.close_reason().is_some(), "the stream's connection is closed");
        // The next stream gets a new connection, which a dead verdict closes.
        let s = open_and_hold(&pool, addr).await;
        assert_eq!(settled(&accepted, 2).await, 2);
        assert_eq!(pool.close_stale(&members(member(MemberStatus::Dead, GENERATION))), 1);
        assert!(s.conn.close_reason().is_some());
        // So does the peer's absence from the registry.
        let s = open_and_hold(&pool, addr).await;
        assert_eq!(pool.close_stale(&SharedMap::default()), 1);
        assert!(s.conn.close_reason().is_some());
        // A stream asked for at a newer generation never rides a connection to the old one.
        let old = open_and_hold(&pool, addr).await;
        let new = pool.open(addr, "peer", GENERATION + 1).await.expect("a stream");
        assert!(old.conn.close_reason().is_some(), "the old generation's connection is closed");
        assert_ne!(old.conn.stable_id(), new.conn.stable_id());
    }
}
