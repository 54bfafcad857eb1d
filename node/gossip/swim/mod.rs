//! SWIM membership with Lifeguard's defences, as a state machine without I/O: it takes
//! `(now, datagram)` and `(now)` timer calls and returns datagrams to send, events and
//! the next time it wants to be woken. The agent runs one behind the sealed UDP socket;
//! `murmur simulate` runs thousands on a simulated network in virtual time. The same
//! code decides liveness in both, which is why it must never read a clock or touch a
//! socket.
//!
//! What it does, in the order a datagram's life takes it:
//! - **Probing.** Each period one member, in a shuffled round-robin, gets a ping. No
//!   ack within the timeout: `indirect_probes` others are asked to ping it, and answer
//!   with an ack or, when it stays silent, a nack. A period without an ack is a failed
//!   cycle; `suspect_after` failed cycles in a row make the member suspect.
//! - **Suspicion.** The suspect is told at once (a datagram to it, and the rumor first
//!   on every probe of it) and refutes by raising its incarnation. Otherwise it is
//!   declared dead when its suspicion times out; the timeout shortens from a maximum to
//!   a minimum as independent accusers confirm (Lifeguard).
//! - **Local health.** Failed probes, missed nacks and having to refute raise a score
//!   that stretches this agent's own probe interval and timeout, so an agent that is
//!   itself slow or cut off stops accusing healthy members (Lifeguard).
//! - **Dissemination.** Every change (member up, suspect, dead, left; one key of a
//!   member's state) is a rumor that rides outgoing probes, acks and small gossip
//!   datagrams, each sent at most `retransmit_mult · ⌈log10(N + 1)⌉` times.
//! - **State.** Each member's keys are versioned by its own counter. A receiver applies
//!   a rumored key at once (last writer wins by version) and holds a watermark: every
//!   key up to it is held. A gap, a new member or a higher version seen in an ack is
//!   filled by pulling the keys above the watermark from a member that holds them.
//! - **Anti-entropy.** At an interval that grows with N, a digest (a hash per bucket of
//!   members) is exchanged with one random member; the entries of buckets that differ
//!   are exchanged both ways. Joining is the same exchange with a seed.

mod broadcast;
mod members;
mod probe;
mod state;
pub mod store;
mod suspicion;
mod sync;
mod verdicts;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use murmur_protocol::swim::{self, Body, Entry, KeyValue, Message, Rumor, Status, Update, MAX_MESSAGE};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use broadcast::{Broadcasts, Topic};
use members::{bucket_of, entry_hash, overrides, Members};
pub use members::{Member, MemberIdx};
pub use store::{MapStore, Store};
use suspicion::{LocalHealth, Suspicion};

/// Who this agent is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Node name.
    pub name: String,
    /// Start time of this process (unix ms).
    pub generation: u64,
    /// The gossip address peers reach it on.
    pub addr: SocketAddr,
}

/// The membership settings. Defaults suit a LAN.
#[derive(Debug, Clone)]
pub struct SwimConfig {
    /// How often a member is probed (stretched by local health).
    pub probe_interval: Duration,
    /// How long a direct ping waits for its ack before asking others.
    pub probe_timeout: Duration,
    /// How many others are asked to probe when a direct ping goes unanswered.
    pub indirect_probes: u32,
    /// Failed probe cycles in a row before a member is suspected on a clean network;
    /// one more where this agent sees over 5% of its direct pings go unanswered, two
    /// more over 25% (so uniform loss does not turn into a storm of suspicions).
    pub suspect_after: u32,
    /// Shortest suspicion, in probe intervals, times `max(1, log10 N)`.
    pub suspicion_mult: f64,
    /// Longest suspicion (no confirmation), as a multiple of the shortest.
    pub suspicion_max_mult: f64,
    /// Each rumor is sent `retransmit_mult · ⌈log10(N + 1)⌉` times.
    pub retransmit_mult: u32,
    /// How often waiting rumors are pushed to `gossip_fanout` random members.
    pub gossip_interval: Duration,
    /// How many members each gossip round goes to.
    pub gossip_fanout: u32,
    /// The anti-entropy interval at up to 32 members; above, it grows as
    /// `⌈log2(N / 32)⌉ + 1` times this.
    pub sync_interval: Duration,
    /// How long a dead or departed member is remembered before it is forgotten.
    pub dead_grace: Duration,
    /// How long a removed key (a tombstone) is remembered. A replica that was behind for
    /// longer refetches that member's state.
    pub tombstone_grace: Duration,
    /// Ceiling of the local health score.
    pub max_local_health: u32,
}

impl Default for SwimConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_millis(250),
            probe_timeout: Duration::from_millis(100),
            indirect_probes: 3,
            suspect_after: 1,
            suspicion_mult: 1.0,
            suspicion_max_mult: 6.0,
            retransmit_mult: 4,
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            sync_interval: Duration::from_secs(30),
            dead_grace: Duration::from_secs(300),
            tombstone_grace: Duration::from_secs(300),
            max_local_health: 8,
        }
    }
}

/// Something the rest of the agent (or the simulator) should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member is up: new, back from the dead, or a new generation.
    Up(Arc<str>),
    /// A member was declared dead, or left.
    Down(Arc<str>, Status),
    /// A member's state changed; every key up to this version is held.
    State(Arc<str>, u64),
    /// A dead or departed member was forgotten.
    Forgotten(Arc<str>),
}

/// A datagram to send (plaintext; the shell seals it).
#[derive(Debug, Clone)]
pub struct Transmit {
    /// Where to.
    pub to: SocketAddr,
    /// The plaintext.
    pub bytes: Vec<u8>,
}

/// Counters the core keeps of what it refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct Refused {
    /// Datagrams that did not decode (after they opened).
    pub malformed: u64,
}

/// Pulls in flight at once; more wait their turn.
const MAX_PULLS: usize = 32;
/// How long a pull waits for its reply.
const PULL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a join waits for a seed before asking again.
const JOIN_RETRY: Duration = Duration::from_secs(1);
/// The anti-entropy interval right after a join, and after an exchange found
/// differences: fresh and diverged agents catch up in a few exchanges.
const FAST_SYNC: Duration = Duration::from_millis(500);
/// Least time between two exchanges started because a prober's member count differed.
const COUNT_SYNC_EVERY: Duration = Duration::from_secs(2);
/// One member held dead is pinged every this many probe intervals.
const RECONNECT_EVERY: u32 = 4;
/// How often a member we hold suspect, dead or departed is told so when it talks to us.
const NUDGE_EVERY: Duration = Duration::from_secs(1);
/// Weight of one probe in the moving share of unanswered direct pings.
const PING_LOSS_WEIGHT: f64 = 0.2;
/// Above this share of unanswered direct pings, one more failed cycle is needed.
const LOSSY: f64 = 0.05;
/// Above this, two more.
const VERY_LOSSY: f64 = 0.35;
/// Removals remembered at once, over every member: past it the oldest is forgotten
/// early (a lagging replica then refetches that member's state, which stays correct).
/// With the default grace and registration rate it holds every removal of 13 agents
/// churning flat out.
pub const MAX_TOMBSTONES: usize = 20_000;
/// Room left in a datagram for the message before rumors fill it.
const ENTRY_LEN: usize = 48;

#[derive(Debug)]
struct Probe {
    target: MemberIdx,
    name: Arc<str>,
    seq: u32,
    timeout_at: Instant,
    end_at: Instant,
    indirect: bool,
    acked: bool,
    nacks_expected: u32,
    nacks: u32,
}

#[derive(Debug, Clone, Copy)]
struct Relay {
    asker: SocketAddr,
    asker_seq: u32,
    deadline: Instant,
}

/// A member held dead or departed, to forget at `at` unless it has changed since.
#[derive(Debug, Clone)]
struct Forget {
    at: Instant,
    idx: MemberIdx,
    name: Arc<str>,
    generation: u64,
    incarnation: u32,
    status: Status,
}

impl Forget {
    /// Whether `m` is still the member this was booked for, as it was then.
    fn matches(&self, m: &Member) -> bool {
        m.name == self.name
            && m.generation == self.generation
            && m.incarnation == self.incarnation
            && m.status == self.status
    }
}

/// A removal (a key set to none) to forget at `at`.
#[derive(Debug, Clone)]
struct Removal {
    at: Instant,
    owner: Arc<str>,
    generation: u64,
    version: u64,
}

/// A pull in flight.
#[derive(Debug, Clone, Copy)]
struct Pull {
    idx: MemberIdx,
    /// When it is given up.
    at: Instant,
    /// The version asked from.
    from: u64,
    /// Whether it is part of a refetch.
    refetch: bool,
}

/// A member's state fetched again from the start, because a holder forgot removals
/// this agent may not have seen. It is gathered aside and swapped in whole, so readers
/// never see the member without its keys.
#[derive(Debug, Clone, Default)]
struct Refetch {
    /// The holder's floor that made it necessary.
    floor: u64,
    /// Every key up to this version has been fetched.
    cursor: u64,
    keys: Vec<KeyValue>,
}

#[derive(Debug, Clone, Copy)]
struct Behind {
    holder: SocketAddr,
    since: Instant,
}

/// One agent's membership.
pub struct Swim<S> {
    me: Identity,
    my_name: Arc<str>,
    incarnation: u32,
    version: u64,
    /// This agent's own removals at or below this version are forgotten.
    floor: u64,
    leaving: bool,
    config: SwimConfig,
    members: Members,
    store: S,
    rng: StdRng,
    queue: Broadcasts,
    health: LocalHealth,
    /// Moving share of direct pings not answered within the timeout.
    ping_loss: f64,
    seq: u32,
    probe_order: Vec<MemberIdx>,
    probe_pos: usize,
    probe: Option<Probe>,
    retry: Option<(MemberIdx, u32)>,
    /// A member suspected by another, to probe next (see `probe_suspect_early`).
    early: Option<MemberIdx>,
    next_probe: Instant,
    relays: HashMap<u32, Relay>,
    relay_deadlines: BTreeSet<(Instant, u32)>,
    suspicions: HashMap<MemberIdx, Suspicion>,
    suspicion_deadlines: BTreeSet<(Instant, MemberIdx)>,
    next_gossip: Instant,
    /// A verdict (a suspicion, a confirmation, a death, a departure, a refutation) was
    /// queued: push a gossip round at once instead of at the next tick.
    urgent: bool,
    next_sync: Instant,
    /// Whether the last anti-entropy exchange came back and found nothing to repair;
    /// until one does (after a join, after a difference, after a lost exchange), the
    /// next one comes soon.
    synced: bool,
    seeds: Vec<SocketAddr>,
    joined: bool,
    next_join: Instant,
    ahead: HashMap<MemberIdx, Vec<u64>>,
    // Ordered maps where the core iterates, so a seeded run replays exactly.
    behind: BTreeMap<MemberIdx, Behind>,
    pulls: BTreeMap<u32, Pull>,
    refetch: BTreeMap<MemberIdx, Refetch>,
    next_pull: Instant,
    removals: VecDeque<Removal>,
    forget: VecDeque<Forget>,
    nudged: HashMap<MemberIdx, Instant>,
    next_reconnect: Instant,
    next_count_sync: Instant,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
    refused: Refused,
}

impl<S: Store> Swim<S> {
    /// A member that knows only itself; `join` introduces it to seeds.
    pub fn new(me: Identity, config: SwimConfig, store: S, seed: u64, now: Instant) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let seq = rng.random();
        Self {
            my_name: me.name.as_str().into(),
            me,
            incarnation: 0,
            version: 0,
            floor: 0,
            leaving: false,
            health: LocalHealth::new(config.max_local_health),
            ping_loss: 0.0,
            next_probe: now + config.probe_interval,
            next_gossip: now + config.gossip_interval,
            urgent: false,
            next_sync: now + FAST_SYNC,
            synced: false,
            config,
            members: Members::new(),
            store,
            rng,
            queue: Broadcasts::new(),
            seq,
            probe_order: Vec::new(),
            probe_pos: 0,
            probe: None,
            retry: None,
            early: None,
            relays: HashMap::new(),
            relay_deadlines: BTreeSet::new(),
            suspicions: HashMap::new(),
            suspicion_deadlines: BTreeSet::new(),
            seeds: Vec::new(),
            joined: true,
            next_join: now,
            ahead: HashMap::new(),
            behind: BTreeMap::new(),
            pulls: BTreeMap::new(),
            refetch: BTreeMap::new(),
            next_pull: now,
            removals: VecDeque::new(),
            forget: VecDeque::new(),
            nudged: HashMap::new(),
            next_reconnect: now,
            next_count_sync: now,
            out: VecDeque::new(),
            events: VecDeque::new(),
            refused: Refused::default(),
        }
    }

    /// Joins through `seeds` (addresses); asks again every second until a member answers.
    pub fn join(&mut self, seeds: Vec<SocketAddr>, now: Instant) {
        self.seeds = seeds.into_iter().filter(|s| *s != self.me.addr).collect();
        self.joined = self.seeds.is_empty();
        self.next_join = now;
        self.handle_timeout(now);
    }

    /// Takes `entries` as members already held, with all their state up to each
    /// entry's version, as a finished join and its pulls would leave them, and counts
    /// this agent as joined and in sync (its first anti-entropy exchange comes at a
    /// random point of the usual interval). No events are raised. The simulator's warm
    /// start uses it to begin at a converged cluster of thousands without simulating
    /// the mass join; the store must already hold that state. An agent never calls it:
    /// it joins.
    pub fn adopt(&mut self, entries: &[Entry], now: Instant) {
        self.members.reserve(entries.len());
        for e in entries {
            if e.name == self.me.name || e.status != Status::Alive || self.members.find(&e.name).is_some() {
                continue;
            }
            let member = self.member_from(e, e.version);
            let idx = self.members.insert(member);
            self.probe_order.push(idx);
        }
        self.probe_order.shuffle(&mut self.rng);
        self.probe_pos = 0;
        self.joined = true;
        self.synced = true;
        self.next_sync = now + self.sync_period().mul_f64(self.rng.random::<f64>());
    }

    /// Sets one key of this agent's state (`None` deletes it) and spreads the change.
    pub fn set_local(&mut self, key: &str, value: Option<&str>, now: Instant) {
        self.version += 1;
        let version = self.version;
        self.store.apply(&self.me.name, key, value, version);
        if value.is_none() {
            self.note_removal(self.my_name.clone(), self.me.generation, version, now);
        }
        let update = Update {
            owner: self.me.name.clone(),
            generation: self.me.generation,
            version,
            key: key.to_owned(),
            value: value.map(str::to_owned),
        };
        // With nobody to tell yet, the change is only a version: whoever learns of this
        // agent later pulls its state (a joiner's whole state must not ride rumors).
        if self.members.up() > 0 {
            let topic = Topic::Key(self.me.name.clone(), key.to_owned());
            self.queue.push(topic, swim::encode_rumor(&Rumor::Update(update)));
        }
        self.events.push_back(Event::State(self.my_name.clone(), version));
    }

    /// Leaves: tells every member directly and stops probing. The shell should keep the
    /// socket open a moment so the datagrams leave.
    pub fn leave(&mut self) {
        self.leaving = true;
        let rumor = swim::encode_rumor(&Rumor::Member {
            entry: Entry { status: Status::Left, ..self.my_entry() },
            by: self.me.name.clone(),
        });
        let addrs: Vec<SocketAddr> = self.members.iter().filter(|(_, m)| m.is_up()).map(|(_, m)| m.addr).collect();
        for to in addrs {
            let mut bytes = swim::encode_message(&Message { from: self.me.name.clone(), body: Body::Gossip });
            bytes.extend_from_slice(&rumor);
            self.out.push_back(Transmit { to, bytes });
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The members known (any status), not counting this agent.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().map(|(_, m)| m)
    }

    /// One member by name.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.find(name).and_then(|i| self.members.get(i))
    }

    /// Members up (alive or suspect), not counting this agent.
    pub fn up(&self) -> usize {
        self.members.up()
    }

    /// The state store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// This agent's own state version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// This agent's incarnation.
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    /// The local health score (0 is healthy).
    pub fn local_health(&self) -> u32 {
        self.health.score()
    }

    /// What was refused so far.
    pub fn refused(&self) -> Refused {
        self.refused
    }

    /// Debugging: what this agent holds about pulling `name`.
    pub fn pull_state(&self, name: &str) -> String {
        let idx = self.members.find(name);
        format!(
            "behind {:?} pulls {:?} ahead {:?}",
            idx.and_then(|i| self.behind.get(&i)),
            self.pulls.values().filter(|p| Some(p.idx) == idx).count(),
            idx.and_then(|i| self.ahead.get(&i))
        )
    }

    /// Removals remembered, waiting for their grace to pass.
    pub fn removals(&self) -> usize {
        self.removals.len()
    }

    /// Rumors waiting to be sent.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// When the core next needs `handle_timeout`.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = match &self.probe {
            Some(p) if !p.indirect && !p.acked => p.timeout_at,
            Some(p) => p.end_at,
            None => self.next_probe,
        };
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = t.min(x);
            }
        };
        consider(self.relay_deadlines.first().map(|x| x.0));
        consider(self.suspicion_deadlines.first().map(|x| x.0));
        consider(self.gossip_due().then_some(self.next_gossip));
        consider(Some(self.next_sync));
        consider((!self.joined).then_some(self.next_join));
        consider((!self.behind.is_empty() || !self.pulls.is_empty()).then_some(self.next_pull));
        consider(self.forget.front().map(|f| f.at));
        consider(self.removals.front().map(|r| r.at));
        consider((!self.forget.is_empty()).then_some(self.next_reconnect));
        t
    }

    /// Runs every timer that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.leaving {
            return;
        }
        self.run_timers(now);
        self.push_urgent();
    }

    fn run_timers(&mut self, now: Instant) {
        self.run_probe(now);
        self.expire_relays(now);
        self.expire_suspicions(now);
        if now >= self.next_gossip {
            self.next_gossip = now + self.config.gossip_interval;
            self.gossip_round();
        }
        // An agent that holds nobody alive (cut off, or everyone else restarted) goes
        // back to its seeds until one answers.
        if self.joined && self.members.up() == 0 && !self.seeds.is_empty() {
            self.joined = false;
        }
        if now >= self.next_reconnect {
            self.next_reconnect = now + self.config.probe_interval * RECONNECT_EVERY;
            self.reconnect();
        }
        if !self.joined && now >= self.next_join {
            self.next_join = now + JOIN_RETRY;
            for seed in self.seeds.clone() {
                self.send_sync(seed, false);
            }
        }
        if now >= self.next_sync {
            self.next_sync = now + if self.synced { self.sync_period() } else { FAST_SYNC };
            self.synced = false;
            if let Some(idx) = self.random_up(1, &[]).first().copied() {
                if let Some(addr) = self.members.get(idx).map(|m| m.addr) {
                    self.send_sync(addr, false);
                }
            }
        }
        if now >= self.next_pull {
            self.next_pull = now + self.config.gossip_interval;
            self.run_pulls(now);
        }
        self.forget_removals(now);
        while self.forget.front().is_some_and(|f| f.at <= now) {
            let Some(Forget { idx, name, .. }) = self.forget.pop_front().filter(|f| {
                // A member that came back, or died again since, has a later booking.
                self.members.get(f.idx).is_some_and(|m| f.matches(m))
            }) else {
                continue;
            };
            self.members.remove(idx);
            self.nudged.remove(&idx);
            self.store.remove(&name);
            self.ahead.remove(&idx);
            self.behind.remove(&idx);
            self.refetch.remove(&idx);
            self.events.push_back(Event::Forgotten(name));
        }
    }

    /// Handles one opened datagram from `src`.
    pub fn handle_datagram(&mut self, src: SocketAddr, bytes: &[u8], now: Instant) {
        if self.leaving {
            return;
        }
        self.on_datagram(src, bytes, now);
        self.push_urgent();
    }

    /// A verdict waits: one gossip round now. Each agent does this once per verdict it
    /// learns (a claim that changes nothing is not passed on), so a death reaches every
    /// agent in a few network round trips instead of one gossip interval per hop, at a
    /// cost of `gossip_fanout` datagrams per agent per verdict.
    fn push_urgent(&mut self) {
        if std::mem::take(&mut self.urgent) {
            self.gossip_round();
        }
    }

    fn on_datagram(&mut self, src: SocketAddr, bytes: &[u8], now: Instant) {
        let Ok((message, rumors)) = swim::decode(bytes) else {
            self.refused.malformed += 1;
            return;
        };
        for rumor in rumors {
            match rumor {
                Rumor::Member { entry, by } => self.merge(&entry, &by, true, now),
                Rumor::Update(u) => self.apply_update(u, src, now),
            }
        }
        let from = message.from;
        self.nudge_if_held_down(&from, src, now);
        match message.body {
            Body::Ping { seq, target, members } => {
                if target == self.me.name {
                    let version = self.version;
                    self.send(src, Body::Ack { seq, version }, None);
                    self.compare_counts(members, src, now);
                }
            }
            Body::Ack { seq, version } => self.on_ack(seq, version, now),
            Body::PingReq { seq, target, addr } => {
                let relay_seq = self.next_seq();
                let deadline = now + self.health.scale(self.config.probe_timeout);
                self.relays.insert(relay_seq, Relay { asker: src, asker_seq: seq, deadline });
                self.relay_deadlines.insert((deadline, relay_seq));
                let members = self.cluster_size() as u32;
                self.send(
                    addr,
                    Body::Ping { seq: relay_seq, target: target.clone(), members },
                    Some(Topic::Member(target)),
                );
            }
            Body::Nack { seq } => {
                if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    p.nacks += 1;
                }
            }
            Body::Gossip => {}
            Body::Sync { seq, reply, me, buckets } => {
                let is_seed = self.seeds.contains(&src);
                // A joiner is news (a new member, or a new generation of a known one):
                // its arrival spreads as a rumor from whoever it joined through. A claim
                // that changes nothing is not passed on.
                self.merge(&me, &from, true, now);
                if self.members.find(&me.name).is_some() && (is_seed || !self.joined) {
                    self.joined = true;
                }
                let differ = self.differing(&buckets);
                if differ != 0 {
                    self.send_members(src, seq, differ);
                }
                if reply {
                    self.synced = differ == 0;
                    if !self.synced {
                        self.next_sync = self.next_sync.min(now + FAST_SYNC);
                    }
                }
                if !reply {
                    let body = Body::Sync { seq, reply: true, me: self.my_entry(), buckets: self.digest() };
                    self.send(src, body, None);
                }
            }
            Body::Members { entries, .. } => {
                for e in &entries {
                    self.merge(e, &e.name, false, now);
                    self.note_version(e, src, now);
                }
            }
            Body::StateRequest { seq, owner, generation, from } => self.serve_state(src, seq, &owner, generation, from),
            Body::StateReply { seq, owner, generation, to, floor, updates } => {
                self.on_state_reply(seq, &owner, generation, (to, floor), updates, now)
            }
        }
    }

    fn cluster_size(&self) -> usize {
        self.members.up() + 1
    }

    /// How lossy this agent finds the network: 0 clean, 1 lossy, 2 very lossy. It asks
    /// more failed cycles before suspecting, more sends per rumor, and gives a suspicion
    /// one more shortest timeout per step, since refutations take longer to get through.
    fn loss_extra(&self) -> u32 {
        u32::from(self.ping_loss > LOSSY) + u32::from(self.ping_loss > VERY_LOSSY)
    }

    /// Moves the share of unanswered round trips toward one observation: 1 for an ack
    /// that came only late, 0 for one in time, the share of nacks missing in a cycle.
    fn see_loss(&mut self, sample: f64) {
        self.ping_loss += (sample - self.ping_loss) * PING_LOSS_WEIGHT;
    }

    /// Sends per rumor: `retransmit_mult · ⌈log10(N + 1)⌉`, twice that on a lossy
    /// network, where each send is less likely to arrive and a missed rumor otherwise
    /// waits for an anti-entropy exchange.
    fn retransmit_limit(&self) -> u32 {
        let n = self.cluster_size() as f64;
        self.config.retransmit_mult * ((n + 1.0).log10().ceil() as u32).max(1) * (1 + self.loss_extra().min(1))
    }

    // ----- helpers -----

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Up to `k` distinct random members that are up, none of them in `exclude`.
    fn random_up(&mut self, k: usize, exclude: &[MemberIdx]) -> Vec<MemberIdx> {
        let mut out = Vec::with_capacity(k);
        let available = self.members.up().saturating_sub(exclude.len());
        let want = k.min(available);
        if want == 0 {
            return out;
        }
        let slots = self.members.slots() as MemberIdx;
        let mut tries = 0;
        while out.len() < want && tries < 16 * k + 64 {
            tries += 1;
            let idx = self.rng.random_range(0..slots);
            if exclude.contains(&idx) || out.contains(&idx) {
                continue;
            }
            if self.members.get(idx).is_some_and(Member::is_up) {
                out.push(idx);
            }
        }
        if out.len() < want {
            // A sparse table (many dead slots): fall back to a scan.
            let mut all: Vec<MemberIdx> = self
                .members
                .iter()
                .filter(|(i, m)| m.is_up() && !exclude.contains(i) && !out.contains(i))
                .map(|(i, _)| i)
                .collect();
            all.shuffle(&mut self.rng);
            out.extend(all.into_iter().take(want - out.len()));
        }
        out
    }

    /// Encodes and queues a message, with as many rumors as fit behind it.
    fn send(&mut self, to: SocketAddr, body: Body, first: Option<Topic>) {
        let mut bytes = swim::encode_message(&Message { from: self.me.name.clone(), body });
        if bytes.len() < MAX_MESSAGE {
            let limit = self.retransmit_limit();
            let room = MAX_MESSAGE - bytes.len();
            self.queue.fill(&mut bytes, room, limit, first.as_ref());
        }
        self.out.push_back(Transmit { to, bytes });
    }
}

#[cfg(test)]
mod tests;
