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
pub mod store;
mod suspicion;

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
/// How often a member we hold dead is told so when it talks to us.
const NUDGE_EVERY: Duration = Duration::from_secs(1);
/// Weight of one probe in the moving share of unanswered direct pings.
const PING_LOSS_WEIGHT: f64 = 0.05;
/// Above this share of unanswered direct pings, one more failed cycle is needed.
const LOSSY: f64 = 0.05;
/// Above this, two more.
const VERY_LOSSY: f64 = 0.25;
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
    next_probe: Instant,
    relays: HashMap<u32, Relay>,
    relay_deadlines: BTreeSet<(Instant, u32)>,
    suspicions: HashMap<MemberIdx, Suspicion>,
    suspicion_deadlines: BTreeSet<(Instant, MemberIdx)>,
    next_gossip: Instant,
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
    pulls: BTreeMap<u32, (MemberIdx, Instant)>,
    next_pull: Instant,
    forget: VecDeque<(Instant, MemberIdx, Arc<str>, u64)>,
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
            leaving: false,
            health: LocalHealth::new(config.max_local_health),
            ping_loss: 0.0,
            next_probe: now + config.probe_interval,
            next_gossip: now + config.gossip_interval,
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
            next_pull: now,
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

    /// Sets one key of this agent's state (`None` deletes it) and spreads the change.
    pub fn set_local(&mut self, key: &str, value: Option<&str>) {
        self.version += 1;
        let version = self.version;
        self.store.apply(&self.me.name, key, value, version);
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
            self.pulls.values().filter(|(i, _)| Some(*i) == idx).count(),
            idx.and_then(|i| self.ahead.get(&i))
        )
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
        consider((!self.queue.is_empty()).then_some(self.next_gossip));
        consider(Some(self.next_sync));
        consider((!self.joined).then_some(self.next_join));
        consider((!self.behind.is_empty() || !self.pulls.is_empty()).then_some(self.next_pull));
        consider(self.forget.front().map(|x| x.0));
        consider((!self.forget.is_empty()).then_some(self.next_reconnect));
        t
    }

    /// Runs every timer that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.leaving {
            return;
        }
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
                self.send_sync(seed, false, now);
            }
        }
        if now >= self.next_sync {
            self.next_sync = now + if self.synced { self.sync_period() } else { FAST_SYNC };
            self.synced = false;
            if let Some(idx) = self.random_up(1, &[]).first().copied() {
                if let Some(addr) = self.members.get(idx).map(|m| m.addr) {
                    self.send_sync(addr, false, now);
                }
            }
        }
        if now >= self.next_pull {
            self.next_pull = now + self.config.gossip_interval;
            self.run_pulls(now);
        }
        while let Some(&(at, idx, ref name, generation)) = self.forget.front() {
            if at > now {
                break;
            }
            let name = name.clone();
            self.forget.pop_front();
            let due = self.members.get(idx).is_some_and(|m| {
                m.name == name && m.generation == generation && !m.is_up() && m.since + self.config.dead_grace <= now
            });
            if due {
                self.members.remove(idx);
                self.nudged.remove(&idx);
                self.store.remove(&name);
                self.ahead.remove(&idx);
                self.behind.remove(&idx);
                self.events.push_back(Event::Forgotten(name));
            }
        }
    }

    /// Handles one opened datagram from `src`.
    pub fn handle_datagram(&mut self, src: SocketAddr, bytes: &[u8], now: Instant) {
        if self.leaving {
            return;
        }
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
        self.nudge_if_dead(&from, src, now);
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
            Body::StateReply { seq, owner, generation, to, updates } => {
                self.on_state_reply(seq, &owner, generation, to, updates, now)
            }
        }
    }

    /// A prober holds another number of members up than we do: one of us missed a join
    /// or a death that the rumors did not bring. An exchange with it settles which (at
    /// most one such exchange per [`COUNT_SYNC_EVERY`], since counts also differ for a
    /// moment while a change spreads).
    fn compare_counts(&mut self, theirs: u32, src: SocketAddr, now: Instant) {
        if theirs == self.cluster_size() as u32 || now < self.next_count_sync {
            return;
        }
        self.next_count_sync = now + COUNT_SYNC_EVERY;
        self.send_sync(src, false, now);
    }

    /// A member we hold dead or departed is still talking to us: it does not know. Tell
    /// it (at most once a second), so it refutes at once instead of at its next
    /// anti-entropy exchange.
    fn nudge_if_dead(&mut self, from: &str, src: SocketAddr, now: Instant) {
        let Some(idx) = self.members.find(from) else { return };
        let Some(m) = self.members.get(idx) else { return };
        if m.is_up() || m.addr != src {
            return;
        }
        if self.nudged.get(&idx).is_some_and(|t| now < *t + NUDGE_EVERY) {
            return;
        }
        self.nudged.insert(idx, now);
        let rumor = Rumor::Member { entry: m.entry(), by: self.me.name.clone() };
        let mut bytes = swim::encode_message(&Message { from: self.me.name.clone(), body: Body::Gossip });
        bytes.extend(swim::encode_rumor(&rumor));
        self.out.push_back(Transmit { to: src, bytes });
    }

    /// Pings one member held dead (not one that left): nobody probes the dead, so after
    /// a partition heals, or after a wrong verdict, this is how the two sides find each
    /// other again. Whoever holds the other dead tells it so, and it refutes.
    fn reconnect(&mut self) {
        if self.forget.is_empty() {
            return;
        }
        let pick = self.rng.random_range(0..self.forget.len());
        let Some(&(_, idx, ref name, generation)) = self.forget.get(pick) else { return };
        let Some(m) = self.members.get(idx) else { return };
        if m.name != *name || m.generation != generation || m.status != Status::Dead {
            return;
        }
        let (addr, target) = (m.addr, m.name.to_string());
        let seq = self.next_seq();
        let members = self.cluster_size() as u32;
        self.send(addr, Body::Ping { seq, target, members }, None);
    }

    // ----- probing -----

    fn run_probe(&mut self, now: Instant) {
        if let Some(p) = &self.probe {
            if !p.acked && !p.indirect && now >= p.timeout_at {
                self.ask_others(now);
            }
        }
        if self.probe.as_ref().is_some_and(|p| now >= p.end_at) {
            self.end_probe();
        }
        if self.probe.is_none() && now >= self.next_probe {
            self.start_probe(now);
        }
    }

    fn next_target(&mut self) -> Option<MemberIdx> {
        if let Some((idx, _)) = self.retry {
            if self.members.get(idx).is_some_and(Member::is_up) {
                return Some(idx);
            }
            self.retry = None;
        }
        for _ in 0..2 {
            while self.probe_pos < self.probe_order.len() {
                let idx = self.probe_order[self.probe_pos];
                self.probe_pos += 1;
                if self.members.get(idx).is_some_and(Member::is_up) {
                    return Some(idx);
                }
            }
            self.probe_order = self.members.iter().filter(|(_, m)| m.is_up()).map(|(i, _)| i).collect();
            self.probe_order.shuffle(&mut self.rng);
            self.probe_pos = 0;
        }
        None
    }

    fn start_probe(&mut self, now: Instant) {
        let interval = self.health.scale(self.config.probe_interval);
        self.next_probe = now + interval;
        let Some(target) = self.next_target() else { return };
        let Some(m) = self.members.get(target) else { return };
        let (name, addr) = (m.name.clone(), m.addr);
        let seq = self.next_seq();
        let members = self.cluster_size() as u32;
        self.send(addr, Body::Ping { seq, target: name.to_string(), members }, Some(Topic::Member(name.to_string())));
        self.probe = Some(Probe {
            target,
            name,
            seq,
            timeout_at: now + self.health.scale(self.config.probe_timeout),
            end_at: now + interval,
            indirect: false,
            acked: false,
            nacks_expected: 0,
            nacks: 0,
        });
    }

    fn ask_others(&mut self, _now: Instant) {
        let Some(p) = self.probe.as_mut() else { return };
        p.indirect = true;
        let (target, seq, name) = (p.target, p.seq, p.name.to_string());
        let Some(addr) = self.members.get(target).map(|m| m.addr) else { return };
        let helpers = self.random_up(self.config.indirect_probes as usize, &[target]);
        if let Some(p) = self.probe.as_mut() {
            p.nacks_expected = helpers.len() as u32;
        }
        // A second direct ping beside the indirect ones: on a lossy path it is the
        // likeliest of them to get through (two datagrams against four).
        let members = self.cluster_size() as u32;
        self.send(addr, Body::Ping { seq, target: name.clone(), members }, Some(Topic::Member(name.clone())));
        for h in helpers {
            if let Some(to) = self.members.get(h).map(|m| m.addr) {
                self.send(to, Body::PingReq { seq, target: name.clone(), addr }, None);
            }
        }
    }

    fn end_probe(&mut self) {
        let Some(p) = self.probe.take() else { return };
        if p.acked {
            return;
        }
        if p.nacks < p.nacks_expected {
            self.health.worse();
        }
        self.health.worse();
        let still_same = self.members.get(p.target).is_some_and(|m| m.name == p.name && m.is_up());
        if !still_same {
            self.retry = None;
            return;
        }
        let failures = match self.retry {
            Some((idx, n)) if idx == p.target => n + 1,
            _ => 1,
        };
        // One more failed cycle on a lossy network, three more on a very lossy one: at
        // 30% loss a cycle of a live member fails about one time in nine, so three
        // cycles in a row would still accuse one member a second in a thousand.
        let extra = [0, 1, 3][self.loss_extra() as usize];
        if failures >= self.config.suspect_after + extra {
            self.retry = None;
            self.suspect(p.target, p.end_at);
        } else {
            self.retry = Some((p.target, failures));
        }
    }

    fn on_ack(&mut self, seq: u32, version: u64, now: Instant) {
        if let Some(relay) = self.relays.remove(&seq) {
            self.relay_deadlines.remove(&(relay.deadline, seq));
            self.send(relay.asker, Body::Ack { seq: relay.asker_seq, version }, None);
            return;
        }
        let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq && !p.acked) else { return };
        p.acked = true;
        // A direct ack in time says the path is clean; an ack that came only after the
        // timeout (through a helper, or the second ping) says a datagram was lost on
        // the way to a live member. A member that never answers teaches nothing about
        // the network (it is likely dead), so it is not counted.
        if p.indirect {
            self.ping_loss += (1.0 - self.ping_loss) * PING_LOSS_WEIGHT;
        } else {
            self.ping_loss -= self.ping_loss * PING_LOSS_WEIGHT;
        }
        let target = p.target;
        if self.retry.is_some_and(|(i, _)| i == target) {
            self.retry = None;
        }
        self.health.better();
        let Some(m) = self.members.get(target) else { return };
        if version > m.known {
            let addr = m.addr;
            self.members.update(target, |m| m.known = version);
            self.mark_behind(target, addr, now);
        }
    }

    fn expire_relays(&mut self, now: Instant) {
        while let Some(&(deadline, seq)) = self.relay_deadlines.first() {
            if deadline > now {
                break;
            }
            self.relay_deadlines.pop_first();
            if let Some(relay) = self.relays.remove(&seq) {
                self.send(relay.asker, Body::Nack { seq: relay.asker_seq }, None);
            }
        }
    }

    // ----- suspicion -----

    fn cluster_size(&self) -> usize {
        self.members.up() + 1
    }

    /// How lossy this agent finds the network: 0 clean, 1 lossy, 2 very lossy. It asks
    /// more failed cycles before suspecting, more sends per rumor, and gives a suspicion
    /// one more shortest timeout per step, since refutations take longer to get through.
    fn loss_extra(&self) -> u32 {
        u32::from(self.ping_loss > LOSSY) + u32::from(self.ping_loss > VERY_LOSSY)
    }

    fn suspicion_bounds(&self) -> (Duration, Duration, u32) {
        let n = self.cluster_size() as f64;
        let scale = f64::from(1 + self.loss_extra());
        let min = self.config.probe_interval.mul_f64(self.config.suspicion_mult * n.log10().max(1.0) * scale);
        let max = min.mul_f64(self.config.suspicion_max_mult);
        let expected = (self.cluster_size().saturating_sub(2)).min(self.config.indirect_probes as usize) as u32;
        (min, max, expected)
    }

    fn suspect(&mut self, idx: MemberIdx, now: Instant) {
        let Some(m) = self.members.get(idx) else { return };
        let entry = Entry { status: Status::Suspect, ..m.entry() };
        let by = self.me.name.clone();
        self.merge(&entry, &by, true, now);
        // Tell the suspect at once, so it can refute before anyone else has to.
        let mut bytes = swim::encode_message(&Message { from: self.me.name.clone(), body: Body::Gossip });
        bytes.extend(swim::encode_rumor(&Rumor::Member { entry: entry.clone(), by }));
        self.out.push_back(Transmit { to: entry.addr, bytes });
    }

    fn start_suspicion(&mut self, idx: MemberIdx, incarnation: u32, accuser: Arc<str>, now: Instant) {
        self.stop_suspicion(idx);
        let (min, max, expected) = self.suspicion_bounds();
        let s = Suspicion::new(incarnation, accuser, now, min, max, expected);
        self.suspicion_deadlines.insert((s.deadline(), idx));
        self.suspicions.insert(idx, s);
    }

    fn stop_suspicion(&mut self, idx: MemberIdx) {
        if let Some(s) = self.suspicions.remove(&idx) {
            self.suspicion_deadlines.remove(&(s.deadline(), idx));
        }
    }

    fn expire_suspicions(&mut self, now: Instant) {
        while let Some(&(deadline, idx)) = self.suspicion_deadlines.first() {
            if deadline > now {
                break;
            }
            self.suspicion_deadlines.pop_first();
            let Some(s) = self.suspicions.remove(&idx) else { continue };
            let Some(m) = self.members.get(idx) else { continue };
            if m.status == Status::Suspect && m.incarnation == s.incarnation {
                let entry = Entry { status: Status::Dead, ..m.entry() };
                let by = self.me.name.clone();
                self.merge(&entry, &by, true, now);
            }
        }
    }

    // ----- merging what others say -----

    fn my_entry(&self) -> Entry {
        Entry {
            name: self.me.name.clone(),
            generation: self.me.generation,
            incarnation: self.incarnation,
            status: Status::Alive,
            addr: self.me.addr,
            version: self.version,
        }
    }

    /// Raises the incarnation above a claim against us and spreads that, with twice
    /// the usual sends, and straight to the accuser, whose timer runs first.
    fn refute(&mut self, claimed: u32, accuser: &str) {
        self.incarnation = self.incarnation.max(claimed) + 1;
        self.health.worse();
        let rumor = swim::encode_rumor(&Rumor::Member { entry: self.my_entry(), by: self.me.name.clone() });
        let limit = self.retransmit_limit();
        self.queue.push_extra(Topic::Member(self.me.name.clone()), rumor.clone(), limit);
        if let Some(to) = self.members.find(accuser).and_then(|i| self.members.get(i)).map(|m| m.addr) {
            let mut bytes = swim::encode_message(&Message { from: self.me.name.clone(), body: Body::Gossip });
            bytes.extend_from_slice(&rumor);
            self.out.push_back(Transmit { to, bytes });
        }
    }

    /// Merges one claim about a member. `spread`: a rumor to pass on if it changed
    /// something (entries from an anti-entropy exchange are not passed on).
    fn merge(&mut self, entry: &Entry, by: &str, spread: bool, now: Instant) {
        if entry.name == self.me.name {
            let mine = entry.generation == self.me.generation;
            if mine && entry.status != Status::Alive && !self.leaving && entry.incarnation >= self.incarnation {
                self.refute(entry.incarnation, by);
            } else if mine && entry.incarnation > self.incarnation {
                // An old claim of ours at a higher incarnation (from before a refutation
                // we do not remember): go above it.
                self.refute(entry.incarnation, by);
            }
            return;
        }
        let claim = (entry.generation, entry.incarnation, entry.status);
        let Some(idx) = self.members.find(&entry.name) else {
            if matches!(entry.status, Status::Alive | Status::Suspect) {
                self.add_member(entry, by, spread, now);
            }
            return;
        };
        let Some(held) = self.members.get(idx).map(|m| (m.generation, m.incarnation, m.status)) else { return };
        if !overrides(claim, held) {
            // The same suspicion from someone new is a confirmation (Lifeguard).
            if entry.status == Status::Suspect && held == claim {
                let accuser: Arc<str> = by.into();
                if let Some(s) = self.suspicions.get_mut(&idx) {
                    let before = s.deadline();
                    if s.confirm(&accuser) {
                        let after = s.deadline();
                        self.suspicion_deadlines.remove(&(before, idx));
                        self.suspicion_deadlines.insert((after, idx));
                        if spread {
                            self.spread_member(entry, by);
                        }
                    }
                }
            }
            return;
        }
        let new_generation = entry.generation != held.0;
        let was_up = matches!(held.2, Status::Alive | Status::Suspect);
        self.members.update(idx, |m| {
            m.generation = entry.generation;
            m.incarnation = entry.incarnation;
            m.addr = entry.addr;
            if m.status != entry.status {
                m.since = now;
            }
            m.status = entry.status;
            if new_generation {
                m.version = 0;
                m.known = 0;
            }
        });
        if new_generation {
            self.store.remove(&entry.name);
            self.ahead.remove(&idx);
            self.behind.remove(&idx);
        }
        let name = self.members.get(idx).map(|m| m.name.clone()).unwrap_or_else(|| entry.name.as_str().into());
        match entry.status {
            Status::Alive => {
                self.stop_suspicion(idx);
                if !was_up || new_generation {
                    self.events.push_back(Event::Up(name));
                }
            }
            Status::Suspect => {
                self.start_suspicion(idx, entry.incarnation, by.into(), now);
                if !was_up || new_generation {
                    self.events.push_back(Event::Up(name));
                }
            }
            Status::Dead | Status::Left => {
                self.stop_suspicion(idx);
                self.behind.remove(&idx);
                self.events.push_back(Event::Down(name.clone(), entry.status));
                self.forget.push_back((now + self.config.dead_grace, idx, name, entry.generation));
            }
        }
        if matches!(entry.status, Status::Alive | Status::Suspect) {
            self.note_version(entry, entry.addr, now);
        }
        if spread {
            self.spread_member(entry, by);
        }
    }

    fn add_member(&mut self, entry: &Entry, by: &str, spread: bool, now: Instant) {
        let member = Member {
            name: entry.name.as_str().into(),
            addr: entry.addr,
            generation: entry.generation,
            incarnation: entry.incarnation,
            status: entry.status,
            version: 0,
            known: 0,
            since: now,
        };
        let name = member.name.clone();
        let idx = self.members.insert(member);
        // A new member goes into the rest of this round of probes at a random place.
        let pos = self.rng.random_range(self.probe_pos..=self.probe_order.len());
        self.probe_order.insert(pos, idx);
        self.events.push_back(Event::Up(name));
        if entry.status == Status::Suspect {
            self.start_suspicion(idx, entry.incarnation, by.into(), now);
        }
        self.note_version(entry, entry.addr, now);
        if spread {
            self.spread_member(entry, by);
        }
    }

    fn spread_member(&mut self, entry: &Entry, by: &str) {
        let rumor = Rumor::Member { entry: entry.clone(), by: by.to_owned() };
        // Each accuser's suspicion travels on its own, so that every agent counts the
        // independent confirmations (a single topic would keep only the latest
        // accuser). Any other claim replaces what was queued about the member.
        let topic = match entry.status {
            Status::Suspect => Topic::Accusation(entry.name.clone(), by.to_owned()),
            _ => Topic::Member(entry.name.clone()),
        };
        self.queue.push(topic, swim::encode_rumor(&rumor));
    }

    // ----- state -----

    /// Records that `holder` has `entry.name`'s state up to `entry.version`.
    fn note_version(&mut self, entry: &Entry, holder: SocketAddr, now: Instant) {
        let Some(idx) = self.members.find(&entry.name) else { return };
        let Some(m) = self.members.get(idx) else { return };
        if m.generation != entry.generation || !m.is_up() {
            return;
        }
        let (known, version) = (m.known, m.version);
        if entry.version > known {
            self.members.update(idx, |m| m.known = entry.version);
        }
        if entry.version > version {
            self.mark_behind(idx, holder, now);
        }
    }

    fn mark_behind(&mut self, idx: MemberIdx, holder: SocketAddr, now: Instant) {
        self.behind.entry(idx).and_modify(|b| b.holder = holder).or_insert(Behind { holder, since: now });
        // A member none of whose state is held has nothing in flight to wait for: ask now.
        if self.members.get(idx).is_some_and(|m| m.version == 0) {
            self.next_pull = self.next_pull.min(now);
        }
    }

    fn apply_update(&mut self, u: Update, src: SocketAddr, now: Instant) {
        if u.owner == self.me.name {
            return;
        }
        let Some(idx) = self.members.find(&u.owner) else { return };
        let Some(m) = self.members.get(idx) else { return };
        if m.generation != u.generation || u.version <= m.version {
            return;
        }
        let ahead = self.ahead.entry(idx).or_default();
        if ahead.contains(&u.version) {
            return;
        }
        let name = m.name.clone();
        self.store.apply(&u.owner, &u.key, u.value.as_deref(), u.version);
        let contiguous = u.version == m.version + 1;
        if contiguous {
            self.advance(idx, u.version);
        } else if let Some(ahead) = self.ahead.get_mut(&idx) {
            ahead.push(u.version);
        }
        let (version, known) = self.members.get(idx).map(|m| (m.version, m.known)).unwrap_or_default();
        if u.version > known {
            self.members.update(idx, |m| m.known = u.version);
        }
        if self.members.get(idx).is_some_and(|m| m.known > m.version) {
            self.mark_behind(idx, src, now);
        } else {
            self.behind.remove(&idx);
        }
        self.events.push_back(Event::State(name, version));
        let topic = Topic::Key(u.owner.clone(), u.key.clone());
        self.queue.push(topic, swim::encode_rumor(&Rumor::Update(u)));
    }

    /// Moves a member's watermark to `to`, and past every version already held above it.
    fn advance(&mut self, idx: MemberIdx, to: u64) {
        let mut version = to;
        if let Some(ahead) = self.ahead.get_mut(&idx) {
            ahead.retain(|v| *v > version);
            ahead.sort_unstable();
            while ahead.first() == Some(&(version + 1)) {
                version += 1;
                ahead.remove(0);
            }
            if ahead.is_empty() {
                self.ahead.remove(&idx);
            }
        }
        self.members.update(idx, |m| {
            m.version = m.version.max(version);
            m.known = m.known.max(m.version);
        });
    }

    fn run_pulls(&mut self, now: Instant) {
        let expired: Vec<u32> = self.pulls.iter().filter(|(_, (_, at))| *at <= now).map(|(s, _)| *s).collect();
        for seq in expired {
            self.pulls.remove(&seq);
        }
        if self.behind.is_empty() {
            return;
        }
        let room = MAX_PULLS.saturating_sub(self.pulls.len());
        if room == 0 {
            return;
        }
        let in_flight: Vec<MemberIdx> = self.pulls.values().map(|(i, _)| *i).collect();
        let grace = self.config.gossip_interval * 2;
        let mut due: Vec<(MemberIdx, Behind)> = Vec::new();
        let mut settled = Vec::new();
        for (&idx, &b) in &self.behind {
            if due.len() >= room {
                break;
            }
            let Some(m) = self.members.get(idx) else {
                settled.push(idx);
                continue;
            };
            if !m.is_up() || m.known <= m.version {
                settled.push(idx);
                continue;
            }
            if in_flight.contains(&idx) {
                continue;
            }
            // A fresh member has nothing to wait for; a gap may still fill from rumors
            // in flight, so it waits a little.
            if m.version == 0 || now >= b.since + grace {
                due.push((idx, b));
            }
        }
        for idx in settled {
            self.behind.remove(&idx);
        }
        for (idx, b) in due {
            let Some(m) = self.members.get(idx) else { continue };
            // Ask the last holder heard of; once a gap has lasted past two pull
            // timeouts, ask the member itself.
            let to = if b.since + PULL_TIMEOUT * 2 <= now { m.addr } else { b.holder };
            let (owner, generation, from) = (m.name.to_string(), m.generation, m.version);
            let seq = self.next_seq();
            self.pulls.insert(seq, (idx, now + PULL_TIMEOUT));
            self.send(to, Body::StateRequest { seq, owner, generation, from }, None);
        }
    }

    fn serve_state(&mut self, to: SocketAddr, seq: u32, owner: &str, generation: u64, from: u64) {
        let upto = if owner == self.me.name && generation == self.me.generation {
            self.version
        } else {
            match self.members.find(owner).and_then(|i| self.members.get(i)) {
                Some(m) if m.generation == generation => m.version,
                _ => return,
            }
        };
        if upto <= from {
            return;
        }
        let budget = MAX_MESSAGE - 64 - owner.len();
        let (updates, complete) = self.store.delta(owner, from, upto, budget);
        let to_version = match updates.last() {
            Some(kv) if !complete => kv.version.min(upto),
            _ => upto,
        };
        let body = Body::StateReply { seq, owner: owner.to_owned(), generation, to: to_version, updates };
        self.send(to, body, None);
    }

    fn on_state_reply(
        &mut self,
        seq: u32,
        owner: &str,
        generation: u64,
        to: u64,
        updates: Vec<KeyValue>,
        now: Instant,
    ) {
        if self.pulls.remove(&seq).is_none() {
            return;
        }
        let Some(idx) = self.members.find(owner) else { return };
        let Some(m) = self.members.get(idx) else { return };
        if m.generation != generation || to <= m.version {
            return;
        }
        let name = m.name.clone();
        for kv in &updates {
            self.store.apply(owner, &kv.key, kv.value.as_deref(), kv.version);
        }
        self.advance(idx, to);
        let Some(m) = self.members.get(idx) else { return };
        let version = m.version;
        if m.known <= m.version {
            self.behind.remove(&idx);
        } else if let Some(b) = self.behind.get_mut(&idx) {
            // More to fetch: ask again at once rather than after the gap grace.
            b.since = now - self.config.gossip_interval * 2;
        }
        self.events.push_back(Event::State(name, version));
        self.next_pull = self.next_pull.min(now);
    }

    // ----- dissemination and anti-entropy -----

    /// Sends per rumor: `retransmit_mult · ⌈log10(N + 1)⌉`, twice that on a lossy
    /// network, where each send is less likely to arrive and a missed rumor otherwise
    /// waits for an anti-entropy exchange.
    fn retransmit_limit(&self) -> u32 {
        let n = self.cluster_size() as f64;
        self.config.retransmit_mult * ((n + 1.0).log10().ceil() as u32).max(1) * (1 + self.loss_extra().min(1))
    }

    fn gossip_round(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        for idx in self.random_up(self.config.gossip_fanout as usize, &[]) {
            if let Some(to) = self.members.get(idx).map(|m| m.addr) {
                self.send(to, Body::Gossip, None);
            }
        }
    }

    fn sync_period(&self) -> Duration {
        let n = self.cluster_size();
        if n <= 32 {
            return self.config.sync_interval;
        }
        let factor = ((n as f64 / 32.0).log2().ceil() as u32) + 1;
        self.config.sync_interval * factor
    }

    fn digest(&self) -> Vec<u64> {
        let mut d = self.members.digest().to_vec();
        let me = self.my_entry();
        d[bucket_of(&me.name)] ^= entry_hash(&me.name, me.generation, me.incarnation, me.status, me.version);
        d
    }

    fn differing(&self, theirs: &[u64]) -> u64 {
        self.digest().iter().zip(theirs).enumerate().filter(|(_, (a, b))| a != b).fold(0, |m, (i, _)| m | (1 << i))
    }

    fn send_sync(&mut self, to: SocketAddr, reply: bool, _now: Instant) {
        let seq = self.next_seq();
        let body = Body::Sync { seq, reply, me: self.my_entry(), buckets: self.digest() };
        self.send(to, body, None);
    }

    fn send_members(&mut self, to: SocketAddr, seq: u32, differ: u64) {
        let mut entries: Vec<Entry> = self
            .members
            .iter()
            .filter(|(_, m)| differ & (1 << bucket_of(&m.name)) != 0)
            .map(|(_, m)| m.entry())
            .collect();
        if differ & (1 << bucket_of(&self.me.name)) != 0 {
            entries.push(self.my_entry());
        }
        let mut batch = Vec::new();
        let mut size = 0;
        for e in entries {
            let len = e.name.len() + ENTRY_LEN;
            if size + len > MAX_MESSAGE - 64 && !batch.is_empty() {
                self.send(to, Body::Members { seq, entries: std::mem::take(&mut batch) }, None);
                size = 0;
            }
            size += len;
            batch.push(e);
        }
        if !batch.is_empty() {
            self.send(to, Body::Members { seq, entries: batch }, None);
        }
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
