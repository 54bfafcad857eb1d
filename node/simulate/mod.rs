//! `murmur simulate`: the real membership core ([`crate::gossip::swim`]) for N agents in
//! one process, on a simulated network in virtual time. One thread, one queue of events
//! ordered by virtual time, one seeded random source: the same seed replays the same
//! run. The network loses datagrams uniformly, delays each by a random LAN latency,
//! can cut a share of the agents off and heal them, and kill agents (they stop
//! answering, as kill -9 would). No sockets, no sealing: a datagram's size on the wire
//! is its plaintext plus the sealed transport's and IP/UDP's overhead.
//!
//! What it measures (virtual seconds):
//! - convergence: from the start until every agent holds every other as up, with its
//!   whole initial state;
//! - detection: from a kill until every live agent holds the victim dead;
//! - spread: from a state change until every live agent holds it;
//! - bytes sent per agent per second, from convergence to the end (mean and worst);
//! - false dead verdicts: an agent declaring dead one that is alive and reachable.
//!
//! With `MURMUR_SIM_TRACE` set, it also prints to stderr each false verdict, when each
//! kill was first and widely seen, what agents still lack at the end, and datagrams and
//! bytes by message kind: what one needs to see why a run missed.

mod store;

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use murmur_protocol::swim::{Entry, Status};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::gossip::swim::{Event, Identity, Swim, SwimConfig};
use store::{owner_index, History, SimStore, INSTANCES};

/// Bytes the sealed transport adds to a datagram (header, nonce, tag, timestamp, ids).
pub const SEAL_OVERHEAD: usize = 48;
/// IPv4 and UDP headers.
pub const IP_UDP_OVERHEAD: usize = 28;
/// Seeds every simulated agent joins through.
const SEEDS: usize = 3;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Agents.
    pub nodes: usize,
    /// Uniform datagram loss, 0..1, from the moment the cluster has converged: the
    /// scenario is a settled cluster whose network turns lossy.
    pub loss: f64,
    /// Agents killed, spread over the run after convergence.
    pub kill: usize,
    /// Share of agents cut off from the rest for the middle third of the run, 0..1.
    pub partition: f64,
    /// Virtual time to run.
    pub duration: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// State changes per second across the cluster (a health flip of a random agent).
    pub changes_per_s: f64,
    /// One-way delay of a datagram: uniform between these.
    pub delay: (Duration, Duration),
    /// Start from a converged cluster (every agent already holds every other with its
    /// initial state) instead of all joining at once. For sizes where simulating the
    /// mass join itself would take too long; `converged_s` is then 0.
    pub warm: bool,
    /// The membership settings of every agent.
    pub swim: SwimConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 100,
            loss: 0.0,
            kill: 0,
            partition: 0.0,
            duration: Duration::from_secs(30),
            seed: 1,
            changes_per_s: 1.0,
            delay: (Duration::from_micros(100), Duration::from_micros(600)),
            warm: false,
            swim: SwimConfig::default(),
        }
    }
}

/// What a run measured. Times in virtual seconds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Agents.
    pub nodes: usize,
    /// Uniform loss, percent.
    pub loss_pct: f64,
    /// Whether the run started from a converged cluster.
    pub warm: bool,
    /// Until every agent held every other with its state; `None`: never in the run.
    pub converged_s: Option<f64>,
    /// Kills made.
    pub kills: usize,
    /// Kills detected by every live agent before the run ended.
    pub kills_detected: usize,
    /// Median detection.
    pub detect_p50_s: Option<f64>,
    /// 99th percentile detection (kills never detected count as the run's end).
    pub detect_p99_s: Option<f64>,
    /// State changes made after convergence.
    pub changes: usize,
    /// Median spread of a change to every live agent.
    pub spread_p50_s: Option<f64>,
    /// 99th percentile spread of a change to every live agent (never: the run's end).
    pub spread_p99_s: Option<f64>,
    /// Mean bytes sent per agent per second on the wire, after convergence.
    pub bytes_per_agent_per_s: f64,
    /// The most any one agent sent per second, after convergence.
    pub bytes_per_agent_per_s_max: f64,
    /// Largest datagram sent (plaintext bytes).
    pub max_datagram: usize,
    /// Dead verdicts against agents that were alive and reachable.
    pub false_dead: u64,
    /// Seconds of real time the run took.
    pub wall_s: f64,
}

#[derive(Debug)]
enum Kind {
    Deliver { to: u32, from: u32, bytes: Vec<u8> },
    Wake(u32),
    Kill,
    Change,
    Cut,
    Heal,
}

struct Agent {
    core: Swim<SimStore>,
    alive: bool,
    wake_at: u64,
    sent: u64,
    sent_at_converged: u64,
    /// Members held up with their whole initial state, as a bitset over agents.
    have: Vec<u64>,
    have_count: usize,
}

struct Change {
    owner: usize,
    version: u64,
    at: u64,
    reached: Vec<u64>,
    count: usize,
    done: Option<u64>,
}

struct Kill {
    victim: usize,
    at: u64,
    seen: Vec<u64>,
    count: usize,
    done: Option<u64>,
}

/// The address of simulated agent `i` (never sent to: the network is simulated).
fn addr(i: usize) -> SocketAddr {
    let n = (i + 1) as u32;
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, (n >> 16) as u8, (n >> 8) as u8, n as u8)), 7946)
}

fn index(a: SocketAddr) -> Option<usize> {
    match a.ip() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let n = (u32::from(o[1]) << 16) | (u32::from(o[2]) << 8) | u32::from(o[3]);
            n.checked_sub(1).map(|n| n as usize)
        }
        IpAddr::V6(_) => None,
    }
}

fn bit(set: &[u64], i: usize) -> bool {
    set[i / 64] & (1 << (i % 64)) != 0
}

fn set_bit(set: &mut [u64], i: usize, on: bool) -> bool {
    let was = bit(set, i);
    if on {
        set[i / 64] |= 1 << (i % 64);
    } else {
        set[i / 64] &= !(1 << (i % 64));
    }
    was != on
}

/// Initial state version of every agent: its node record, its instances and their health.
const INITIAL_VERSION: u64 = 1 + 2 * INSTANCES as u64;

struct Sim {
    cfg: SimConfig,
    base: Instant,
    now: u64,
    seq: u64,
    heap: BinaryHeap<Reverse<(u64, u64, usize)>>,
    kinds: HashMap<usize, Kind>,
    next_kind: usize,
    rng: StdRng,
    agents: Vec<Agent>,
    history: Rc<RefCell<History>>,
    cut: Vec<bool>,
    cut_active: bool,
    healed_at: Option<u64>,
    converged: Option<u64>,
    /// Agents alive (not killed).
    live: usize,
    /// Agents that hold every other agent up with its initial state.
    full: usize,
    changes: Vec<Change>,
    kills: Vec<Kill>,
    false_dead: u64,
    verdicts: std::collections::HashSet<(usize, u32)>,
    max_datagram: usize,
    words: usize,
    debug: bool,
    by_kind: std::collections::BTreeMap<String, (u64, u64, u64)>,
    suspicions_seen: std::collections::HashSet<(String, u32, String)>,
}

const NS: u64 = 1_000_000_000;

impl Sim {
    fn new(cfg: SimConfig) -> Self {
        let base = Instant::now();
        let n = cfg.nodes;
        let warm = cfg.warm;
        let history = Rc::new(RefCell::new(History::new(n)));
        let words = n.div_ceil(64);
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let mut agents = Vec::with_capacity(n);
        for i in 0..n {
            let me = Identity { name: format!("n{i}"), generation: 1, addr: addr(i) };
            let store = SimStore::new(history.clone());
            // A warm cluster has run a while: its agents' timers are out of step.
            let start = if cfg.warm { base + cfg.swim.probe_interval.mul_f64(rng.random::<f64>()) } else { base };
            let mut core = Swim::new(me, cfg.swim.clone(), store, rng.random(), start);
            for key in 0..INITIAL_VERSION as u16 {
                history.borrow_mut().record(i, u64::from(key) + 1, key);
                core.set_local(&store::key_name(i, key), Some("x"), start);
            }
            agents.push(Agent {
                core,
                alive: true,
                wake_at: u64::MAX,
                sent: 0,
                sent_at_converged: 0,
                have: vec![0; words],
                have_count: 0,
            });
        }
        if cfg.warm {
            let entries: Vec<Entry> = agents
                .iter()
                .enumerate()
                .map(|(i, a)| Entry {
                    name: format!("n{i}"),
                    generation: 1,
                    incarnation: 0,
                    status: Status::Alive,
                    addr: addr(i),
                    version: a.core.version(),
                })
                .collect();
            for (i, a) in agents.iter_mut().enumerate() {
                a.core.adopt(&entries, base);
                a.have = vec![u64::MAX; words];
                set_bit(&mut a.have, i, false);
                a.have_count = n - 1;
            }
        }
        let mut cut = vec![false; n];
        let cut_count = ((n as f64) * cfg.partition).round() as usize;
        let mut order: Vec<usize> = (SEEDS.min(n)..n).collect();
        order.shuffle(&mut rng);
        for &i in order.iter().take(cut_count) {
            cut[i] = true;
        }
        Self {
            cfg,
            base,
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            kinds: HashMap::new(),
            next_kind: 0,
            rng,
            agents,
            history,
            cut,
            cut_active: false,
            healed_at: None,
            converged: None,
            live: n,
            full: if warm { n } else { 0 },
            changes: Vec::new(),
            kills: Vec::new(),
            false_dead: 0,
            verdicts: std::collections::HashSet::new(),
            max_datagram: 0,
            words,
            debug: std::env::var("MURMUR_SIM_TRACE").is_ok(),
            by_kind: Default::default(),
            suspicions_seen: Default::default(),
        }
    }

    fn at(&self, t: u64) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    fn schedule(&mut self, t: u64, kind: Kind) {
        let id = self.next_kind;
        self.next_kind += 1;
        self.kinds.insert(id, kind);
        self.seq += 1;
        self.heap.push(Reverse((t, self.seq, id)));
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        !self.cut_active || self.cut[a] == self.cut[b]
    }

    fn run(mut self) -> Report {
        let wall = Instant::now();
        let n = self.cfg.nodes;
        let end = self.cfg.duration.as_nanos() as u64;
        let seeds: Vec<SocketAddr> = (0..SEEDS.min(n)).map(addr).collect();
        if self.cfg.warm {
            self.check_converged();
            for i in 0..n {
                self.drain(i);
            }
        } else {
            for i in 0..n {
                // All start at once, within a millisecond of each other.
                let t = self.rng.random_range(0..1_000_000u64);
                let now = self.at(t);
                self.agents[i].core.join(seeds.clone(), now);
                self.now = t;
                self.drain(i);
            }
        }
        self.now = 0;
        if self.cfg.partition > 0.0 {
            self.schedule(end / 3, Kind::Cut);
            self.schedule(2 * end / 3, Kind::Heal);
        }
        while let Some(Reverse((t, _, id))) = self.heap.pop() {
            if t > end {
                break;
            }
            self.now = t;
            let Some(kind) = self.kinds.remove(&id) else { continue };
            match kind {
                Kind::Deliver { to, from, bytes } => {
                    let to = to as usize;
                    if self.agents[to].alive {
                        let now = self.at(t);
                        self.agents[to].core.handle_datagram(addr(from as usize), &bytes, now);
                        self.drain(to);
                    }
                }
                Kind::Wake(i) => {
                    let i = i as usize;
                    if self.agents[i].alive && self.agents[i].wake_at == t {
                        self.agents[i].wake_at = u64::MAX;
                        let now = self.at(t);
                        self.agents[i].core.handle_timeout(now);
                        self.drain(i);
                    }
                }
                Kind::Kill => self.kill(),
                Kind::Change => self.change(),
                Kind::Cut => self.cut_active = true,
                Kind::Heal => {
                    self.cut_active = false;
                    self.healed_at = Some(t);
                }
            }
        }
        if self.debug {
            let mut shown = 0;
            for (i, a) in self.agents.iter().enumerate() {
                if a.have_count + 1 < self.agents.len() && shown < 5 {
                    shown += 1;
                    for j in (0..self.agents.len()).filter(|&j| j != i && !bit(&a.have, j)).take(3) {
                        let m = a.core.member(&format!("n{j}"));
                        eprintln!(
                            "n{i} lacks n{j}: {:?} {}",
                            m.map(|m| (m.status, m.incarnation, m.version, m.known)),
                            a.core.pull_state(&format!("n{j}"))
                        );
                    }
                }
            }
            for c in self.changes.iter().filter(|c| c.done.is_none()) {
                let missing: Vec<usize> =
                    (0..self.agents.len()).filter(|&i| self.agents[i].alive && !bit(&c.reached, i)).take(5).collect();
                eprintln!(
                    "change n{} v{} at {:.2}s reached {} of {}; missing {missing:?}",
                    c.owner,
                    c.version,
                    c.at as f64 / 1e9,
                    c.count,
                    self.live
                );
                for &i in &missing {
                    let m = self.agents[i].core.member(&format!("n{}", c.owner));
                    eprintln!("  n{i} holds {:?}", m.map(|m| (m.status, m.incarnation, m.version, m.known)));
                }
            }
            for (k, (n, b, r)) in &self.by_kind {
                if k.starts_with(' ') {
                    // Rumors by kind, and accusations (distinct, and by 5 s of the run).
                    eprintln!("{k:<24} {n:>10}");
                } else {
                    eprintln!("{k:<14} {n:>10} datagrams {b:>12} bytes {r:>10} rumors");
                }
            }
        }
        self.report(end, wall.elapsed())
    }

    /// Sends what agent `i` wants sent, takes its events, and books its next wake-up.
    fn drain(&mut self, i: usize) {
        while let Some(tx) = self.agents[i].core.poll_transmit() {
            let wire = tx.bytes.len() + SEAL_OVERHEAD + IP_UDP_OVERHEAD;
            self.max_datagram = self.max_datagram.max(tx.bytes.len());
            self.agents[i].sent += wire as u64;
            if self.debug {
                if let Ok((m, r)) = murmur_protocol::swim::decode(&tx.bytes) {
                    let kind = format!("{:?}", m.body).split([' ', '{', '(']).next().unwrap_or("").to_owned();
                    let e = self.by_kind.entry(kind).or_default();
                    e.0 += 1;
                    e.1 += wire as u64;
                    e.2 += r.len() as u64;
                    for rumor in &r {
                        let k = match rumor {
                            murmur_protocol::swim::Rumor::Member { entry, by } => {
                                if entry.status == Status::Suspect
                                    && self.suspicions_seen.insert((entry.name.clone(), entry.incarnation, by.clone()))
                                {
                                    self.by_kind.entry("  distinct accusations".into()).or_default().0 += 1;
                                    let bucket = format!("  accusations t={:03}", self.now / NS / 5 * 5);
                                    self.by_kind.entry(bucket).or_default().0 += 1;
                                }
                                format!("  rumor {:?}", entry.status)
                            }
                            murmur_protocol::swim::Rumor::Update(_) => "  rumor update".to_owned(),
                        };
                        self.by_kind.entry(k).or_default().0 += 1;
                    }
                }
            }
            let Some(to) = index(tx.to).filter(|&t| t < self.agents.len()) else { continue };
            if self.cfg.loss > 0.0 && self.converged.is_some() && self.rng.random_bool(self.cfg.loss) {
                continue;
            }
            if !self.reachable(i, to) {
                continue;
            }
            let (lo, hi) = (self.cfg.delay.0.as_nanos() as u64, self.cfg.delay.1.as_nanos() as u64);
            let delay = if hi > lo { self.rng.random_range(lo..hi) } else { lo };
            self.schedule(self.now + delay, Kind::Deliver { to: to as u32, from: i as u32, bytes: tx.bytes });
        }
        while let Some(ev) = self.agents[i].core.poll_event() {
            self.observe(i, ev);
        }
        let next = self.agents[i].core.poll_timeout();
        let t = next.saturating_duration_since(self.base).as_nanos() as u64;
        let t = t.max(self.now + 1_000);
        if t < self.agents[i].wake_at {
            self.agents[i].wake_at = t;
            self.schedule(t, Kind::Wake(i as u32));
        }
    }

    fn observe(&mut self, i: usize, ev: Event) {
        match ev {
            Event::Up(name) | Event::State(name, _) => {
                let Some(j) = owner_index(&name).filter(|&j| j < self.agents.len()) else { return };
                let Some(m) = self.agents[i].core.member(&name) else { return };
                let (version, up) = (m.version, m.is_up());
                if up && version >= INITIAL_VERSION && set_bit(&mut self.agents[i].have, j, true) {
                    self.agents[i].have_count += 1;
                    if self.agents[i].have_count + 1 == self.agents.len() {
                        self.full += 1;
                        self.check_converged();
                    }
                }
                for c in self.changes.iter_mut().filter(|c| c.owner == j && c.done.is_none()) {
                    if version >= c.version && up && set_bit(&mut c.reached, i, true) {
                        c.count += 1;
                        if self.debug && self.now - c.at > NS {
                            eprintln!("  n{i} got n{j} v{} late, at {:.2}s", c.version, (self.now - c.at) as f64 / 1e9);
                        }
                    }
                }
                for k in self.kills.iter_mut().filter(|k| k.victim == j) {
                    if up && k.done.is_none() && set_bit(&mut k.seen, i, false) {
                        k.count -= 1;
                    }
                }
                self.settle();
            }
            Event::Down(name, status) => self.on_down(i, &name, Some(status)),
            Event::Forgotten(name) => self.on_down(i, &name, None),
        }
    }

    fn on_down(&mut self, i: usize, name: &str, status: Option<Status>) {
        let Some(j) = owner_index(name).filter(|&j| j < self.agents.len()) else { return };
        if set_bit(&mut self.agents[i].have, j, false) {
            if self.agents[i].have_count + 1 == self.agents.len() {
                self.full -= 1;
            }
            self.agents[i].have_count -= 1;
        }
        // Each verdict counts once, as the agents first hear of it: a member at an
        // incarnation. It is false when the member is alive and the two sides could
        // reach each other; one across a partition is true, and so is one reached
        // just after the heal on what was seen during the cut.
        if status == Some(Status::Dead) {
            let incarnation = self.agents[i].core.member(name).map_or(0, |m| m.incarnation);
            let was_cut = self.cut[i] != self.cut[j] && self.healed_at.is_some_and(|h| self.now < h + 10 * NS);
            let first = self.verdicts.insert((j, incarnation));
            if first && self.agents[j].alive && self.reachable(i, j) && !was_cut {
                if self.debug {
                    let own = self.agents[j].core.incarnation();
                    eprintln!(
                        "false dead t={:.2} victim n{j} (cut {}) own inc {own} declared inc {incarnation} by n{i} (cut {}) lhm {}",
                        self.now as f64 / 1e9,
                        self.cut[j],
                        self.cut[i],
                        self.agents[i].core.local_health()
                    );
                }
                self.false_dead += 1;
            }
        }
        let (now, debug) = (self.now, self.debug);
        for k in self.kills.iter_mut().filter(|k| k.victim == j && k.done.is_none()) {
            if set_bit(&mut k.seen, i, true) {
                k.count += 1;
                if debug && (k.count == 1 || k.count % 100 == 0) {
                    eprintln!("kill {j}: {} down after {:.2}s (status {status:?})", k.count, (now - k.at) as f64 / 1e9);
                }
            }
        }
        self.settle();
    }

    fn check_converged(&mut self) {
        if self.converged.is_some() {
            return;
        }
        if self.full == self.agents.len() {
            self.converged = Some(self.now);
            for a in &mut self.agents {
                a.sent_at_converged = a.sent;
            }
            self.plan_after_convergence();
        }
    }

    fn plan_after_convergence(&mut self) {
        let end = self.cfg.duration.as_nanos() as u64;
        let start = self.now;
        // Kills spread over the run after convergence, leaving the last 10 s (or a
        // third of what is left) for the last one to be detected.
        let tail = (10 * NS).min((end.saturating_sub(start)) / 3);
        let window = end.saturating_sub(start + tail);
        for k in 0..self.cfg.kill {
            let t = start + NS / 2 + window * k as u64 / self.cfg.kill.max(1) as u64;
            self.schedule(t, Kind::Kill);
        }
        if self.cfg.changes_per_s > 0.0 {
            let step = (NS as f64 / self.cfg.changes_per_s) as u64;
            let mut t = start + step;
            while t + 2 * NS < end {
                self.schedule(t, Kind::Change);
                t += step;
            }
        }
    }

    /// Marks changes and kills that every live agent has seen.
    fn settle(&mut self) {
        let live = self.live;
        let now = self.now;
        for c in self.changes.iter_mut().filter(|c| c.done.is_none()) {
            if c.count >= live {
                c.done = Some(now);
                if self.debug && now - c.at > NS {
                    eprintln!("change n{} v{} took {:.2}s", c.owner, c.version, (now - c.at) as f64 / 1e9);
                }
            }
        }
        for k in self.kills.iter_mut().filter(|k| k.done.is_none()) {
            if k.count >= live {
                k.done = Some(now);
            }
        }
    }

    fn kill(&mut self) {
        let n = self.agents.len();
        let candidates: Vec<usize> = (SEEDS.min(n)..n).filter(|&i| self.agents[i].alive && !self.cut[i]).collect();
        let Some(&victim) = candidates.get(self.rng.random_range(0..candidates.len().max(1))) else { return };
        self.agents[victim].alive = false;
        self.live -= 1;
        let mut seen = vec![0; self.words];
        let mut count = 0;
        // Agents that already hold it down (none, normally) count from the start.
        for (i, a) in self.agents.iter().enumerate() {
            if a.alive && a.core.member(&format!("n{victim}")).is_some_and(|m| !m.is_up()) {
                set_bit(&mut seen, i, true);
                count += 1;
            }
        }
        for k in &mut self.kills {
            if set_bit(&mut k.seen, victim, false) {
                k.count -= 1;
            }
        }
        self.kills.push(Kill { victim, at: self.now, seen, count, done: None });
        // The victim's own view no longer counts toward any change.
        for c in &mut self.changes {
            if set_bit(&mut c.reached, victim, false) {
                c.count -= 1;
            }
        }
        self.settle();
    }

    fn change(&mut self) {
        let n = self.agents.len();
        let live: Vec<usize> = (0..n).filter(|&i| self.agents[i].alive).collect();
        let Some(&owner) = live.get(self.rng.random_range(0..live.len().max(1))) else { return };
        let key = 1 + INSTANCES as u16 + self.rng.random_range(0..INSTANCES as u16);
        let version = self.agents[owner].core.version() + 1;
        self.history.borrow_mut().record(owner, version, key);
        let now = self.at(self.now);
        self.agents[owner].core.set_local(&store::key_name(owner, key), Some("x"), now);
        let mut reached = vec![0; self.words];
        set_bit(&mut reached, owner, true);
        self.changes.push(Change { owner, version, at: self.now, reached, count: 1, done: None });
        self.drain(owner);
    }

    fn report(&self, end: u64, wall: Duration) -> Report {
        let secs = |ns: u64| ns as f64 / NS as f64;
        let quantile = |mut v: Vec<f64>, q: f64| -> Option<f64> {
            if v.is_empty() {
                return None;
            }
            v.sort_by(f64::total_cmp);
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
            Some(v[i])
        };
        let detect: Vec<f64> = self.kills.iter().map(|k| secs(k.done.unwrap_or(end) - k.at)).collect();
        let spread: Vec<f64> = self.changes.iter().map(|c| secs(c.done.unwrap_or(end) - c.at)).collect();
        let from = self.converged.unwrap_or(0);
        let span = secs(end.saturating_sub(from)).max(1e-9);
        let rates: Vec<f64> = self
            .agents
            .iter()
            .filter(|a| a.alive)
            .map(|a| (a.sent - if self.converged.is_some() { a.sent_at_converged } else { 0 }) as f64 / span)
            .collect();
        let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
        let max = rates.iter().copied().fold(0.0, f64::max);
        Report {
            nodes: self.cfg.nodes,
            loss_pct: self.cfg.loss * 100.0,
            warm: self.cfg.warm,
            converged_s: self.converged.map(secs),
            kills: self.kills.len(),
            kills_detected: self.kills.iter().filter(|k| k.done.is_some()).count(),
            detect_p50_s: quantile(detect.clone(), 0.5),
            detect_p99_s: quantile(detect, 0.99),
            changes: self.changes.len(),
            spread_p50_s: quantile(spread.clone(), 0.5),
            spread_p99_s: quantile(spread, 0.99),
            bytes_per_agent_per_s: mean,
            bytes_per_agent_per_s_max: max,
            max_datagram: self.max_datagram,
            false_dead: self.false_dead,
            wall_s: wall.as_secs_f64(),
        }
    }
}

/// Runs one simulation.
pub fn run(cfg: SimConfig) -> Report {
    Sim::new(cfg).run()
}

/// `murmur simulate`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Agents to simulate.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Uniform datagram loss, percent, once the cluster has converged.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Agents to kill (kill -9) after convergence, spread over the run.
    #[arg(long, default_value_t = 0)]
    pub kill: usize,
    /// Percent of agents cut off from the rest for the middle third of the run.
    #[arg(long, default_value_t = 0.0)]
    pub partition: f64,
    /// Virtual time to run (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = crate::config::spec::parse_duration)]
    pub duration: Duration,
    /// Seed: the same seed replays the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// State changes per second across the cluster.
    #[arg(long, default_value_t = 1.0)]
    pub changes_per_s: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Start from a converged cluster instead of all agents joining at once (for large
    /// N, where simulating the mass join takes long); convergence is then not measured.
    #[arg(long)]
    pub warm: bool,
    /// Probe interval (the agent's `--probe-interval`).
    #[arg(long, value_parser = crate::config::spec::parse_duration)]
    pub probe_interval: Option<Duration>,
    /// Probe timeout (the agent's `--probe-timeout`).
    #[arg(long, value_parser = crate::config::spec::parse_duration)]
    pub probe_timeout: Option<Duration>,
    /// Failed probe cycles in a row before suspecting.
    #[arg(long)]
    pub suspect_after: Option<u32>,
    /// Shortest suspicion in probe intervals, times max(1, log10 N).
    #[arg(long)]
    pub suspicion_mult: Option<f64>,
    /// Longest suspicion as a multiple of the shortest.
    #[arg(long)]
    pub suspicion_max_mult: Option<f64>,
    /// Each rumor is sent this many times ⌈log10(N + 1)⌉.
    #[arg(long)]
    pub retransmit_mult: Option<u32>,
    /// Gossip interval.
    #[arg(long, value_parser = crate::config::spec::parse_duration)]
    pub gossip_interval: Option<Duration>,
    /// Gossip fanout.
    #[arg(long)]
    pub gossip_fanout: Option<u32>,
}

impl SimulateArgs {
    /// The simulation these flags ask for, or what is wrong with them.
    pub fn config(&self) -> Result<SimConfig, crate::config::ConfigError> {
        use crate::config::ConfigError;
        if self.nodes < 2 {
            return Err(ConfigError::new("--nodes", format!("at least 2 (got {})", self.nodes)));
        }
        if !(0.0..100.0).contains(&self.loss) {
            return Err(ConfigError::new("--loss", format!("a percentage from 0 to below 100 (got {})", self.loss)));
        }
        if !(0.0..=50.0).contains(&self.partition) {
            return Err(ConfigError::new("--partition", format!("a percentage from 0 to 50 (got {})", self.partition)));
        }
        if self.kill >= self.nodes.saturating_sub(SEEDS) && self.kill > 0 {
            return Err(ConfigError::new(
                "--kill",
                format!("fewer than the agents that are not seeds (got {})", self.kill),
            ));
        }
        if !(0.0..=1000.0).contains(&self.changes_per_s) {
            return Err(ConfigError::new("--changes-per-s", format!("from 0 to 1000 (got {})", self.changes_per_s)));
        }
        let mut swim = SwimConfig::default();
        if let Some(v) = self.probe_interval {
            swim.probe_interval = v;
        }
        if let Some(v) = self.probe_timeout {
            swim.probe_timeout = v;
        }
        if let Some(v) = self.suspect_after {
            swim.suspect_after = v.max(1);
        }
        if let Some(v) = self.suspicion_mult {
            swim.suspicion_mult = v;
        }
        if let Some(v) = self.suspicion_max_mult {
            swim.suspicion_max_mult = v;
        }
        if let Some(v) = self.retransmit_mult {
            swim.retransmit_mult = v.max(1);
        }
        if let Some(v) = self.gossip_interval {
            swim.gossip_interval = v;
        }
        if let Some(v) = self.gossip_fanout {
            swim.gossip_fanout = v.max(1);
        }
        Ok(SimConfig {
            swim,
            nodes: self.nodes,
            loss: self.loss / 100.0,
            kill: self.kill,
            partition: self.partition / 100.0,
            duration: self.duration,
            seed: self.seed,
            changes_per_s: self.changes_per_s,
            warm: self.warm,
            ..SimConfig::default()
        })
    }
}

fn show(v: Option<f64>) -> String {
    v.map_or_else(|| "never".to_owned(), |s| format!("{s:.2} s"))
}

impl Report {
    /// The report as a table for people.
    pub fn table(&self) -> String {
        let rows = [
            ("agents", self.nodes.to_string()),
            ("loss", format!("{}%", self.loss_pct)),
            ("start", if self.warm { "warm (converged)" } else { "cold (all join at once)" }.to_owned()),
            ("converged", show(self.converged_s)),
            ("kills detected", format!("{} of {}", self.kills_detected, self.kills)),
            ("detection p50", show(self.detect_p50_s)),
            ("detection p99", show(self.detect_p99_s)),
            ("changes", self.changes.to_string()),
            ("spread p50", show(self.spread_p50_s)),
            ("spread p99", show(self.spread_p99_s)),
            ("bytes/s per agent (mean)", format!("{:.0}", self.bytes_per_agent_per_s)),
            ("bytes/s per agent (max)", format!("{:.0}", self.bytes_per_agent_per_s_max)),
            ("largest datagram", format!("{} B", self.max_datagram)),
            ("false dead verdicts", self.false_dead.to_string()),
            ("wall time", format!("{:.1} s", self.wall_s)),
        ];
        rows.iter().map(|(k, v)| format!("{k:<26} {v}\n")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SimConfig {
        SimConfig { nodes: 40, kill: 2, loss: 0.1, duration: Duration::from_secs(15), seed: 3, ..SimConfig::default() }
    }

    #[test]
    fn the_same_seed_replays_the_same_run() {
        let (a, b) = (run(small()), run(small()));
        let strip = |r: &Report| {
            let mut v = serde_json::to_value(r).expect("serialises");
            v["wall_s"] = serde_json::Value::Null;
            v
        };
        assert_eq!(strip(&a), strip(&b));
        let c = run(SimConfig { seed: 4, ..small() });
        assert_ne!(strip(&a), strip(&c), "another seed is another run");
    }

    #[test]
    fn a_small_cluster_converges_and_sees_its_kills() {
        let r = run(small());
        assert!(r.converged_s.is_some_and(|s| s < 5.0), "{r:?}");
        assert_eq!(r.kills_detected, 2, "{r:?}");
        assert!(r.spread_p99_s.is_some_and(|s| s < 2.0), "{r:?}");
        assert!(r.max_datagram <= murmur_protocol::swim::MAX_MESSAGE);
    }

    #[test]
    fn a_partition_is_seen_and_not_counted_as_false() {
        let r = run(SimConfig { partition: 0.2, loss: 0.0, kill: 0, duration: Duration::from_secs(30), ..small() });
        assert_eq!(r.false_dead, 0, "verdicts across a partition are true ones: {r:?}");
    }

    #[test]
    fn flags_are_checked() {
        let args = |extra: &[&str]| {
            use clap::Parser;
            #[derive(clap::Parser)]
            struct Cli {
                #[command(flatten)]
                sim: SimulateArgs,
            }
            let argv = std::iter::once("simulate").chain(extra.iter().copied());
            Cli::try_parse_from(argv).map(|c| c.sim.config())
        };
        assert!(args(&["--nodes", "1"]).expect("parses").is_err());
        assert!(args(&["--loss", "100"]).expect("parses").is_err());
        assert!(args(&["--kill", "9", "--nodes", "10"]).expect("parses").is_err());
        assert!(args(&["--duration", "soon"]).is_err());
        let ok = args(&["--nodes", "50", "--loss", "10", "--duration", "2m"]).expect("parses").expect("valid");
        assert_eq!((ok.nodes, ok.duration), (50, Duration::from_secs(120)));
        assert!((ok.loss - 0.1).abs() < 1e-9);
    }
}
