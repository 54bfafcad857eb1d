//! Gossip: chitchat wired to our sealed transport. The only module (with the snapshot
//! builder's input type) that knows chitchat. It publishes this node's keys through a
//! [`StateWriter`] and turns chitchat's state into a plain [`ClusterView`] on every change,
//! which the registry builds snapshots from.

mod frame;
mod keyring;
mod liveness;
pub mod swim;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
};
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use frame::{FrameCodec, Reject, MAX_DATAGRAM};
pub use keyring::{Keyring, KEY_LEN};
pub use transport::SealedTransport;

use crate::config::GossipConfig;
use crate::metrics::Metrics;
use murmur_protocol::keys;

/// How often the cluster view is rebuilt even without a change, so that dead nodes move
/// from "alive" to "dead" to forgotten in the view on time, and revived ones come back.
const VIEW_REFRESH: Duration = Duration::from_millis(500);

/// What a node is, as this agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberStatus {
    /// Heartbeats arrive.
    Alive,
    /// The failure detector declared it dead; forgotten after the dead grace.
    Dead,
    /// It left gracefully.
    Left,
}

/// One node's gossiped state, copied out of chitchat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Node name (chitchat node id).
    pub name: String,
    /// Generation: the start time of this incarnation, so a restart is told apart.
    pub generation: u64,
    /// Gossip address.
    pub gossip_addr: SocketAddr,
    /// Status.
    pub status: MemberStatus,
    /// Whether this is the local node.
    pub is_self: bool,
    /// Every live key and value.
    pub values: Vec<(String, String)>,
}

/// Every node this agent knows, at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Nodes, in chitchat id order.
    pub nodes: Vec<NodeView>,
}

/// The one write path into this node's gossip state.
#[derive(Clone)]
pub struct StateWriter {
    chitchat: Arc<Mutex<Chitchat>>,
}

impl StateWriter {
    /// Sets a key of this node.
    pub async fn set(&self, key: &str, value: String) {
        self.chitchat.lock().await.self_node_state().set(key, value);
    }

    /// Deletes a key of this node (a tombstone peers learn about).
    pub async fn delete(&self, key: &str) {
        self.chitchat.lock().await.self_node_state().delete(key);
    }
}

/// A running gossip member.
pub struct Gossip {
    handle: ChitchatHandle,
    view_rx: watch::Receiver<Arc<ClusterView>>,
    cancel: CancellationToken,
}

/// Starts gossip on an already-bound socket, with `initial` keys set before the first
/// round so peers never see this node without its record.
pub async fn spawn_gossip(
    config: &GossipConfig,
    name: &str,
    generation: u64,
    socket: tokio::net::UdpSocket,
    initial: Vec<(String, String)>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Gossip> {
    let listen_addr = socket.local_addr()?;
    let advertise = if config.advertise.port() == 0 {
        SocketAddr::new(config.advertise.ip(), listen_addr.port())
    } else {
        config.advertise
    };
    let chitchat_config = ChitchatConfig {
        chitchat_id: ChitchatId::new(name.to_owned(), generation, advertise),
        cluster_id: config.cluster.clone(),
        gossip_interval: config.interval,
        listen_addr,
        seed_nodes: config.seeds.clone(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: config.phi_threshold,
            sampling_window_size: 200,
            max_interval: config.interval * 10,
            initial_interval: config.interval,
            dead_node_grace_period: config.dead_grace,
        },
        marked_for_deletion_grace_period: config.dead_grace * 2,
        catchup_callback: None,
        extra_liveness_predicate: Some(Box::new(|state| !state.contains_key(keys::LEFT))),
        protocol_version: ProtocolVersion::V1,
    };
    let transport = SealedTransport::new(socket, FrameCodec::new(config.keyring.clone()), metrics.clone());
    let handle = spawn_chitchat(chitchat_config, initial, &transport).await?;
    let (view_tx, view_rx) = watch::channel(Arc::new(ClusterView::default()));
    let cancel = CancellationToken::new();
    tokio::spawn(view_loop(handle.chitchat(), view_tx, cancel.clone()));
    info!(%advertise, seeds = ?config.seeds, "gossip started");
    Ok(Gossip { handle, view_rx, cancel })
}

/// Copies chitchat's state out as a [`ClusterView`]. Holds the chitchat lock only while
/// copying; never across an await.
fn read_view(chitchat: &Chitchat, liveness: &mut liveness::Liveness<ChitchatId>) -> ClusterView {
    let self_id = chitchat.self_chitchat_id().clone();
    let live: std::collections::HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    liveness.retain(|id| chitchat.node_states().contains_key(id));
    let nodes = chitchat
        .node_states()
        .iter()
        .map(|(id, state)| {
            let alive = liveness.judge(id, live.contains(id) || *id == self_id, heartbeat_value(state.heartbeat()));
            let status = if state.contains_key(keys::LEFT) {
                MemberStatus::Left
            } else if alive {
                MemberStatus::Alive
            } else {
                MemberStatus::Dead
            };
            NodeView {
                name: id.node_id.to_string(),
                generation: id.generation_id,
                gossip_addr: id.gossip_advertise_addr,
                status,
                is_self: *id == self_id,
                values: state.key_values().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            }
        })
        .collect();
    ClusterView { nodes }
}

/// chitchat keeps a heartbeat's number crate-private but serialises it as a plain
/// number; that is the only way to read it from outside.
fn heartbeat_value(h: chitchat::Heartbeat) -> u64 {
    serde_json::to_value(h).ok().and_then(|v| v.as_u64()).unwrap_or(0)
}

async fn view_loop(
    chitchat: Arc<Mutex<Chitchat>>,
    view_tx: watch::Sender<Arc<ClusterView>>,
    cancel: CancellationToken,
) {
    let mut live_rx = chitchat.lock().await.live_nodes_watcher();
    let mut tick = tokio::time::interval(VIEW_REFRESH);
    let mut liveness = liveness::Liveness::default();
    loop {
        let view = read_view(&*chitchat.lock().await, &mut liveness);
        view_tx.send_if_modified(|current| {
            if **current == view {
                false
            } else {
                *current = Arc::new(view);
                true
            }
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = live_rx.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

impl Gossip {
    /// The write path into this node's state.
    pub fn writer(&self) -> StateWriter {
        StateWriter { chitchat: self.handle.chitchat() }
    }

    /// The cluster view, updated on every change.
    pub fn view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view_rx.clone()
    }

    /// The advertised gossip address.
    pub fn advertise_addr(&self) -> SocketAddr {
        self.handle.chitchat_id().gossip_advertise_addr
    }

    /// Leaves gracefully: marks this node as left, pushes that to every live peer at
    /// once (rather than waiting for random rounds), waits a moment for the exchange,
    /// then stops.
    pub async fn leave(self, settle: Duration) {
        let peers: Vec<SocketAddr> = {
            let mut c = self.handle.chitchat().lock_owned().await;
            c.self_node_state().set(keys::LEFT, "1");
            let me = c.self_chitchat_id().clone();
            c.live_nodes().filter(|id| **id != me).map(|id| id.gossip_advertise_addr).collect()
        };
        for peer in peers {
            if let Err(e) = self.handle.gossip(peer) {
                warn!(%peer, error = %e, "could not push leave");
            }
        }
        tokio::time::sleep(settle).await;
        self.stop().await;
    }

    /// Stops gossip without telling anyone (as a crash would look to peers).
    pub async fn stop(self) {
        self.cancel.cancel();
        if let Err(e) = self.handle.shutdown().await {
            warn!(error = %e, "gossip stopped with an error");
        }
    }

    /// Resolves when chitchat's server loop ends on its own (a fatal socket error).
    pub fn died(&self) -> impl std::future::Future<Output = anyhow::Result<()>> + use<> {
        self.handle.termination_watcher()
    }
}
