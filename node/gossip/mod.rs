//! Gossip: the SWIM membership core ([`swim`]) behind our sealed UDP socket. The only
//! module that knows the membership protocol. It publishes this node's keys through a
//! [`StateWriter`] and turns the core's members and their state into a plain
//! [`ClusterView`] on every change, which the registry builds snapshots from.
//!
//! The core is pure (it takes `(now, datagram)` and timer calls and returns datagrams to
//! send); this shell owns the socket, the clock, the seal and the seeds. Everything runs
//! in one task, so the core needs no lock.

mod budget;
mod config;
mod frame;
mod keyring;
mod rotation;
pub mod swim;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use config::{Config, DEFAULT_PROBE_TIMEOUT};
pub use frame::{FrameCodec, Reject, MAX_DATAGRAM};
pub use keyring::{key_base64, key_id_hex, load_file as load_keyring_file, KeyFileError, Keyring, KEY_LEN};
pub use rotation::{KeyChange, KeyringError, KeyringReport, MemberKeys};

use crate::clock::unix_ms;
use crate::metrics::Metrics;
use crate::shared::SharedMap;
use budget::ReplyBudget;
use frame::{Reassembler, ReplayGuard};
use murmur_protocol::swim::Status;
use murmur_protocol::{decode_value, encode_value, keys, KeyringRecord};
use swim::{Event, Identity, MapStore, Swim, SwimConfig};

/// How often DNS seeds are resolved again, so a seed name that moves is followed.
const RESOLVE_EVERY: Duration = Duration::from_secs(60);
/// How soon seeds that did not resolve are tried again.
const RESOLVE_RETRY: Duration = Duration::from_secs(1);

/// What a node is, as this agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberStatus {
    /// Answers probes (a suspect still counts as alive until it is declared dead).
    Alive,
    /// Declared dead; forgotten after the dead grace.
    Dead,
    /// It left gracefully.
    Left,
}

/// One node's gossiped state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// Generation: the start time of this incarnation, so a restart is told apart.
    pub generation: u64,
    /// Gossip address.
    pub gossip_addr: SocketAddr,
    /// Status.
    pub status: MemberStatus,
    /// Whether this is the local node.
    pub is_self: bool,
    /// Every live key and value (the store's own strings, shared).
    pub values: Vec<(Arc<str>, Arc<str>)>,
}

/// Every node this agent knows, at one moment, one generation per name (the newest).
/// Two views share the chunks of the map where no node changed, and a node that did not
/// change is the same `Arc` in both, so readers rebuild only what changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Nodes by name.
    pub nodes: SharedMap<String, Arc<NodeView>>,
}

impl ClusterView {
    /// A view of `nodes`; of two with one name, the last wins.
    pub fn of(nodes: impl IntoIterator<Item = NodeView>) -> ClusterView {
        ClusterView { nodes: nodes.into_iter().map(|n| (n.name.clone(), Arc::new(n))).collect() }
    }
}

enum Command {
    Set(String, Option<String>),
    Leave(oneshot::Sender<()>),
    ChangeKeyring(KeyChange, bool, oneshot::Sender<Result<KeyringRecord, KeyringError>>),
    ReportKeyring(oneshot::Sender<Option<KeyringReport>>),
}

/// Rotates the gossip keyring of a running agent: the API's way in (`murmur keyring`).
#[derive(Clone)]
pub struct KeyringHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl KeyringHandle {
    /// What every member this agent knows holds.
    pub async fn report(&self) -> Result<KeyringReport, KeyringError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::ReportKeyring(reply)).map_err(|_| KeyringError::Stopped)?;
        rx.await.map_err(|_| KeyringError::Stopped)?.ok_or(KeyringError::Insecure)
    }

    /// Makes `change` on this agent; it spreads from here. Returns the new keyring.
    pub async fn change(&self, change: KeyChange, force: bool) -> Result<KeyringRecord, KeyringError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::ChangeKeyring(change, force, reply)).map_err(|_| KeyringError::Stopped)?;
        rx.await.map_err(|_| KeyringError::Stopped)?
    }
}

/// The one write path into this node's gossip state.
#[derive(Clone)]
pub struct StateWriter {
    tx: mpsc::UnboundedSender<Command>,
}

impl StateWriter {
    /// Sets a key of this node.
    pub async fn set(&self, key: &str, value: String) {
        let _ = self.tx.send(Command::Set(key.to_owned(), Some(value)));
    }

    /// Deletes a key of this node (peers learn of the deletion).
    pub async fn delete(&self, key: &str) {
        let _ = self.tx.send(Command::Set(key.to_owned(), None));
    }
}

/// A running gossip member.
pub struct Gossip {
    tx: mpsc::UnboundedSender<Command>,
    view_rx: watch::Receiver<Arc<ClusterView>>,
    cancel: CancellationToken,
    advertise: SocketAddr,
    done_rx: watch::Receiver<bool>,
}

/// The membership settings in `config`.
fn swim_config(config: &Config) -> SwimConfig {
    SwimConfig {
        probe_interval: config.probe_interval,
        probe_timeout: config.probe_timeout,
        indirect_probes: config.indirect_probes,
        suspicion_mult: config.suspicion_mult,
        retransmit_mult: config.retransmit_mult,
        gossip_interval: config.interval,
        sync_interval: config.sync_interval,
        dead_grace: config.dead_grace,
        tombstone_grace: config.tombstone_grace,
        ..SwimConfig::default()
    }
}

/// Why gossip would not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The socket given has no local address.
    #[error("cannot read the gossip socket's address")]
    Socket(#[source] std::io::Error),
    /// The keyring file could not be written at start.
    #[error("--gossip-key-file: cannot write {} (its directory must exist and be writable by the agent's user)", path.display())]
    KeyFile {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Starts gossip on an already-bound socket, with `initial` keys set before the first
/// datagram so peers never see this node without its record.
pub async fn spawn_gossip(
    config: &Config,
    name: &str,
    generation: u64,
    socket: UdpSocket,
    initial: Vec<(String, String)>,
    metrics: Arc<Metrics>,
) -> Result<Gossip, StartError> {
    let listen_addr = socket.local_addr().map_err(StartError::Socket)?;
    let advertise = if config.advertise.port() == 0 {
        SocketAddr::new(config.advertise.ip(), listen_addr.port())
    } else {
        config.advertise
    };
    let me = Identity { name: name.to_owned(), generation, addr: advertise };
    let now = Instant::now();
    let mut core = Swim::new(me, swim_config(config), MapStore::default(), rand::random(), now);
    for (key, value) in &initial {
        core.set_local(key, Some(value), now);
    }
    let persist = match (&config.keyring, &config.key_file) {
        (Some(keyring), Some(path)) => {
            keyring::save_file(path, &keyring.record())
                .map_err(|source| StartError::KeyFile { path: path.clone(), source })?;
            Some(spawn_keyring_writer(path.clone(), keyring.record()))
        }
        _ => None,
    };
    if let Some(keyring) = &config.keyring {
        core.set_local(keys::KEYRING, Some(&encode_value(&keyring.record())), now);
        metrics.gossip.keyring_epoch.set(keyring.epoch());
        metrics.gossip.keyring_keys.set(keyring.len() as u64);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let (view_tx, view_rx) = watch::channel(Arc::new(ClusterView::default()));
    let (done_tx, done_rx) = watch::channel(false);
    let cancel = CancellationToken::new();
    let shell = Shell {
        core,
        socket,
        codec: FrameCodec::new(config.keyring.clone()),
        reassembler: Reassembler::default(),
        metrics,
        view_tx,
        name: name.to_owned(),
        generation,
        advertise,
        seeds: config.seeds.clone(),
        resolved: Vec::new(),
        next_message_id: rand::random(),
        changed: BTreeSet::from([Arc::from(name)]),
        views: SharedMap::default(),
        replays: ReplayGuard::default(),
        live: HashMap::new(),
        live_addrs: HashMap::new(),
        budget: ReplyBudget::default(),
        keyrings: HashMap::new(),
        persist,
    };
    let task_cancel = cancel.clone();
    tokio::spawn(async move {
        shell.run(rx, task_cancel).await;
        let _ = done_tx.send(true);
    });
    info!(%advertise, seeds = ?config.seeds, "gossip started");
    Ok(Gossip { tx, view_rx, cancel, advertise, done_rx })
}

impl Gossip {
    /// The write path into this node's state.
    pub fn writer(&self) -> StateWriter {
        StateWriter { tx: self.tx.clone() }
    }

    /// The way to rotate the gossip keyring at run time.
    pub fn keyring(&self) -> KeyringHandle {
        KeyringHandle { tx: self.tx.clone() }
    }

    /// The cluster view, updated on every change.
    pub fn view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view_rx.clone()
    }

    /// The advertised gossip address.
    pub fn advertise_addr(&self) -> SocketAddr {
        self.advertise
    }

    /// Leaves gracefully: tells every live member at once (so they drop this node
    /// without waiting for the failure detector), waits a moment for the datagrams,
    /// then stops.
    pub async fn leave(self, settle: Duration) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(Command::Leave(done_tx)).is_ok() {
            let _ = tokio::time::timeout(settle, done_rx).await;
        }
        tokio::time::sleep(settle).await;
        self.stop().await;
    }

    /// Stops gossip without telling anyone (as a crash would look to peers).
    pub async fn stop(self) {
        self.cancel.cancel();
        let mut done = self.done_rx.clone();
        let _ = tokio::time::timeout(Duration::from_secs(2), done.wait_for(|done| *done)).await;
    }

    /// Resolves when the gossip loop has ended (cancelled, or its command channel
    /// closed).
    pub fn died(&self) -> impl std::future::Future<Output = ()> + use<> {
        let mut done = self.done_rx.clone();
        async move {
            let _ = done.wait_for(|done| *done).await;
        }
    }
}

struct Shell {
    core: Swim<MapStore>,
    socket: UdpSocket,
    codec: FrameCodec,
    reassembler: Reassembler,
    metrics: Arc<Metrics>,
    view_tx: watch::Sender<Arc<ClusterView>>,
    name: String,
    generation: u64,
    advertise: SocketAddr,
    seeds: Vec<String>,
    resolved: Vec<SocketAddr>,
    next_message_id: u32,
    /// Members whose view must be built again (they changed since the last publish).
    changed: BTreeSet<Arc<str>>,
    /// The last view of every member, shared with the published views.
    views: SharedMap<String, Arc<NodeView>>,
    /// Seal ids seen inside the replay window.
    replays: ReplayGuard,
    /// The address of every member up, and how many members are up at each address.
    live: HashMap<Arc<str>, SocketAddr>,
    live_addrs: HashMap<SocketAddr, u32>,
    /// What may go to addresses that are neither live members nor seeds.
    budget: ReplyBudget,
    /// The keyring every member gossips, as of its last view.
    keyrings: HashMap<Arc<str>, MemberKeys>,
    /// Where a changed keyring goes to be written to the keyring file.
    persist: Option<watch::Sender<KeyringRecord>>,
}

/// Writes every keyring sent to it to `path`, off the gossip task (a file sync can take a
/// while). The newest wins when changes come faster than writes.
fn spawn_keyring_writer(path: std::path::PathBuf, first: KeyringRecord) -> watch::Sender<KeyringRecord> {
    let (tx, mut rx) = watch::channel(first);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let record = rx.borrow_and_update().clone();
            let target = path.clone();
            match tokio::task::spawn_blocking(move || keyring::save_file(&target, &record)).await {
                Ok(Ok(())) => debug!(path = %path.display(), "keyring file written"),
                Ok(Err(e)) => warn!(
                    path = %path.display(),
                    error = %e,
                    "could not write the keyring file: a restart would come back with the keys it holds"
                ),
                Err(e) => warn!(error = %e, "the keyring file writer failed"),
            }
        }
    });
    tx
}

impl Shell {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>, cancel: CancellationToken) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut next_resolve = tokio::time::Instant::now();
        let mut leaving = false;
        loop {
            self.flush().await;
            self.publish();
            let wake = tokio::time::Instant::from_std(self.core.poll_timeout());
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((len, from)) => self.receive(&buf[..len], from),
                    // An ICMP error from an earlier send (a peer gone) surfaces here; it
                    // says nothing about our socket.
                    Err(e) => {
                        debug!(error = %e, "gossip receive error");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                },
                _ = tokio::time::sleep_until(wake), if !leaving => self.core.handle_timeout(Instant::now()),
                _ = tokio::time::sleep_until(next_resolve), if !leaving && !self.seeds.is_empty() => {
                    let ok = self.resolve_seeds().await;
                    next_resolve = tokio::time::Instant::now() + if ok { RESOLVE_EVERY } else { RESOLVE_RETRY };
                }
                cmd = rx.recv() => match cmd {
                    Some(Command::Set(key, value)) => self.core.set_local(&key, value.as_deref(), Instant::now()),
                    Some(Command::Leave(done)) => {
                        self.core.leave();
                        self.flush().await;
                        leaving = true;
                        let _ = done.send(());
                    }
                    Some(Command::ChangeKeyring(change, force, reply)) => {
                        let _ = reply.send(self.change_keyring(&change, force));
                    }
                    Some(Command::ReportKeyring(reply)) => {
                        let _ = reply.send(self.keyring_report());
                    }
                    None => return,
                },
            }
        }
    }

    fn receive(&mut self, datagram: &[u8], from: SocketAddr) {
        let m = &self.metrics.gossip;
        m.packets_received.inc();
        m.bytes_received.add(datagram.len() as u64);
        let now_ms = unix_ms();
        let chunk = match self.codec.open(datagram, now_ms) {
            Ok(c) => c,
            Err(reject) => {
                match reject {
                    Reject::Unsealable => m.undecryptable.inc(),
                    Reject::Malformed => m.malformed.inc(),
                    Reject::Stale => m.stale.inc(),
                }
                return;
            }
        };
        if let Some(id) = chunk.seal_id {
            if !self.replays.admit(id, chunk.sent_unix_ms, now_ms) {
                m.replayed.inc();
                return;
            }
        }
        if !self.trusted(from) {
            self.budget.received(from, datagram.len(), Instant::now());
        }
        let Some(message) = self.reassembler.push(from, chunk, Instant::now()) else { return };
        let before = self.core.refused().malformed;
        self.core.handle_datagram(from, &message, Instant::now());
        if self.core.refused().malformed > before {
            m.malformed.inc();
        }
    }

    /// Whether `addr` is a live member's or a seed's: what goes there is not capped.
    fn trusted(&self, addr: SocketAddr) -> bool {
        self.live_addrs.contains_key(&addr) || self.resolved.contains(&addr)
    }

    /// Keeps the addresses of live members current from the core's events.
    fn track(&mut self, name: &Arc<str>) {
        let addr = self.core.member(name).filter(|m| m.is_up()).map(|m| m.addr);
        let old = match addr {
            Some(a) => self.live.insert(name.clone(), a),
            None => self.live.remove(name),
        };
        if old == addr {
            return;
        }
        if let Some(old) = old {
            if let Some(n) = self.live_addrs.get_mut(&old) {
                *n -= 1;
                if *n == 0 {
                    self.live_addrs.remove(&old);
                }
            }
        }
        if let Some(a) = addr {
            *self.live_addrs.entry(a).or_default() += 1;
        }
    }

    async fn flush(&mut self) {
        self.metrics.gossip.tombstones.set(self.core.removals() as u64);
        // Events first: a member that just joined is known before anything is sent to it.
        // Each event names the member whose view changed; the registry logs member
        // changes as it sees them.
        while let Some(event) = self.core.poll_event() {
            let name = match event {
                Event::Up(n) | Event::Down(n, _) | Event::State(n, _) | Event::Forgotten(n) => n,
            };
            self.track(&name);
            self.changed.insert(name);
        }
        while let Some(tx) = self.core.poll_transmit() {
            self.next_message_id = self.next_message_id.wrapping_add(1);
            let datagrams = self.codec.seal(&tx.bytes, self.next_message_id, unix_ms());
            let size = datagrams.iter().map(Vec::len).sum();
            if !self.trusted(tx.to) && !self.budget.may_send(tx.to, size, Instant::now()) {
                self.metrics.gossip.capped.inc();
                continue;
            }
            for datagram in datagrams {
                if self.codec.sealed() {
                    self.metrics.gossip.seals.inc();
                }
                match self.socket.send_to(&datagram, tx.to).await {
                    Ok(_) => {
                        self.metrics.gossip.packets_sent.inc();
                        self.metrics.gossip.bytes_sent.add(datagram.len() as u64);
                    }
                    Err(e) => debug!(to = %tx.to, error = %e, "gossip send failed"),
                }
            }
        }
    }

    /// Builds the views of the members that changed, and publishes the whole view (the
    /// others are shared, unchanged, with the last one).
    fn publish(&mut self) {
        if self.changed.is_empty() {
            return;
        }
        let mut modified = false;
        for name in std::mem::take(&mut self.changed) {
            let view = self.view_of(&name);
            match view {
                Some(v) if self.views.get(&*name).is_some_and(|old| **old == v) => {}
                Some(v) => {
                    self.note_keyring(&name, &v);
                    self.views.insert(name.to_string(), Arc::new(v));
                    modified = true;
                }
                None => {
                    self.keyrings.remove(&name);
                    modified |= self.views.remove(&*name).is_some();
                }
            }
        }
        // A copy of the map is its chunk pointers; readers diff it against the last one
        // they took at the cost of what changed.
        if modified {
            self.view_tx.send_replace(Arc::new(ClusterView { nodes: self.views.clone() }));
        }
    }

    /// The view of member `name` as the core has it now; `None` for a member up whose
    /// state has not arrived yet.
    fn view_of(&self, name: &Arc<str>) -> Option<NodeView> {
        let store = self.core.store();
        if **name == *self.name {
            Some(NodeView {
                name: self.name.clone(),
                generation: self.generation,
                gossip_addr: self.advertise,
                status: MemberStatus::Alive,
                is_self: true,
                values: store.values(&self.name),
            })
        } else {
            // A member up but none of whose state has arrived yet (its pull is under
            // way) is left out: readers would see a node without its record.
            self.core.member(name).filter(|m| !m.is_up() || m.version > 0).map(|m| NodeView {
                name: m.name.to_string(),
                generation: m.generation,
                gossip_addr: m.addr,
                status: match m.status {
                    Status::Alive | Status::Suspect => MemberStatus::Alive,
                    Status::Dead => MemberStatus::Dead,
                    Status::Left => MemberStatus::Left,
                },
                is_self: false,
                values: store.values(&m.name),
            })
        }
    }

    /// Keeps the keyring `view` gossips, and adopts it when it ranks above ours.
    fn note_keyring(&mut self, name: &Arc<str>, view: &NodeView) {
        let record = view
            .values
            .iter()
            .find(|(k, _)| &**k == keys::KEYRING)
            .and_then(|(_, v)| decode_value::<KeyringRecord>(v).ok());
        if !view.is_self {
            let newer = match (self.codec.keyring(), &record) {
                (Some(applied), Some(r)) => rotation::to_adopt(applied, r),
                _ => None,
            };
            if let Some(next) = newer {
                info!(
                    from = %view.name,
                    epoch = next.epoch(),
                    keys = next.len(),
                    primary = %keyring::key_id_hex(&next.record().keys[0]),
                    "gossip keyring changed by a peer's rotation"
                );
                self.apply_keyring(next);
            }
        }
        self.keyrings.insert(name.clone(), MemberKeys { name: view.name.clone(), status: view.status, record });
    }

    /// Seals with `next` from now on, gossips it and has it written to the keyring file.
    fn apply_keyring(&mut self, next: Keyring) {
        let record = next.record();
        self.core.set_local(keys::KEYRING, Some(&encode_value(&record)), Instant::now());
        self.changed.insert(Arc::from(self.name.as_str()));
        self.metrics.gossip.keyring_epoch.set(next.epoch());
        self.metrics.gossip.keyring_keys.set(next.len() as u64);
        self.codec.set_keyring(next);
        if let Some(persist) = &self.persist {
            persist.send_replace(record);
        }
    }

    /// Makes a change asked for through the API.
    fn change_keyring(&mut self, change: &KeyChange, force: bool) -> Result<KeyringRecord, KeyringError> {
        let report = self.keyring_report().ok_or(KeyringError::Insecure)?;
        let record = rotation::plan(&report.local, &self.name, change, force, &report.members)?;
        let next = self.codec.keyring().ok_or(KeyringError::Insecure)?.adopt(&record).map_err(KeyringError::BadKey)?;
        info!(?change, epoch = record.epoch, "gossip keyring changed here");
        self.apply_keyring(next);
        Ok(record)
    }

    /// What every member holds; `None` without a keyring.
    fn keyring_report(&self) -> Option<KeyringReport> {
        let local = self.codec.keyring()?.record();
        let mut members: Vec<MemberKeys> = self.keyrings.values().filter(|m| m.name != self.name).cloned().collect();
        members.push(MemberKeys { name: self.name.clone(), status: MemberStatus::Alive, record: Some(local.clone()) });
        members.sort_by(|a, b| a.name.cmp(&b.name));
        Some(KeyringReport { local, members })
    }

    /// Resolves the seeds (names too) and joins through them when the set changed or
    /// this agent knows no live member. Returns whether every seed resolved.
    async fn resolve_seeds(&mut self) -> bool {
        let mut addrs = Vec::new();
        let mut all = true;
        for seed in &self.seeds {
            match tokio::net::lookup_host(seed.as_str()).await {
                Ok(found) => addrs.extend(found.filter(|a| a.is_ipv4() == self.advertise.is_ipv4())),
                Err(e) => {
                    all = false;
                    warn!(%seed, error = %e, "seed does not resolve");
                }
            }
        }
        addrs.sort();
        addrs.dedup();
        if addrs != self.resolved || self.core.up() == 0 {
            self.resolved = addrs.clone();
            self.core.join(addrs, Instant::now());
        }
        all
    }
}
