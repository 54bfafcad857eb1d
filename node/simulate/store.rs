//! The simulator's state store. Ten thousand agents each holding ten thousand replicas
//! of real values would need hundreds of gigabytes, so a simulated agent keeps no
//! values at all: every member's history of changes is kept once, shared by all, and a
//! value is rebuilt from (owner, key, version) when a state reply needs it. What a
//! simulated agent *holds* is still decided by the real membership core (its watermark
//! per member); the store only serves what the core says it holds, with real record
//! encodings, so the bytes on the simulated wire are those the agent would send.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use murmur_protocol::swim::KeyValue;
use murmur_protocol::{
    encode_value, Health, HealthRecord, InstanceId, InstanceRecord, NodeName, NodeRecord, ServiceName,
};

use crate::gossip::swim::store::take_within;
use crate::gossip::swim::Store;

/// Services each simulated agent registers.
pub const INSTANCES: u32 = 5;

/// A state reply asked for: (owner, from, upto, budget).
type ReplyKey = (usize, u64, u64, usize);
/// A state reply: the keys, and whether that was all of them.
type Reply = (Vec<KeyValue>, bool);

/// Every member's changes: for owner `i`, `(version, key index)` in order. Key 0 is the
/// node record, keys `1..=INSTANCES` instances, the next `INSTANCES` their health.
#[derive(Debug, Default)]
pub struct History {
    changes: Vec<Vec<(u64, u16)>>,
    /// Replies already built, by (owner, from, upto): a history only grows at its end,
    /// so a reply up to a version never changes. Thousands of agents pull the same
    /// initial state of each member; encoding its records once saves most of a run.
    replies: HashMap<ReplyKey, Reply>,
    /// One allocation per member name, shared by every agent's table.
    names: HashSet<Arc<str>>,
}

impl History {
    /// A history for `nodes` members, none with changes yet.
    pub fn new(nodes: usize) -> Self {
        Self { changes: vec![Vec::new(); nodes], replies: HashMap::new(), names: HashSet::new() }
    }

    /// Records that `owner` wrote key `key` at `version`.
    pub fn record(&mut self, owner: usize, version: u64, key: u16) {
        self.changes[owner].push((version, key));
    }
}

/// The key name of a key index.
pub fn key_name(owner: usize, key: u16) -> String {
    match key {
        0 => murmur_protocol::keys::NODE.to_owned(),
        k if u32::from(k) <= INSTANCES => format!("i/n{owner}-{}", 8000 + k),
        k => format!("h/n{owner}-{}", 8000 + u32::from(k) - INSTANCES),
    }
}

/// The value of `owner`'s key at `version`: the real encoded record an agent writes.
pub fn value(owner: usize, key: u16, version: u64) -> String {
    let node = NodeName::new(&format!("n{owner}")).expect("`n` and digits is a valid node name");
    match key {
        0 => encode_value(&NodeRecord {
            name: node,
            zone: Some("zone-a".into()),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            advertise: std::net::IpAddr::from([127, 0, 0, 1]),
            proxy: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 7947))),
            started_unix_ms: 1_764_000_000_000,
        }),
        k if u32::from(k) <= INSTANCES => {
            let port = 8000 + u16::from(k as u8);
            encode_value(&InstanceRecord {
                service: ServiceName::new(&format!("svc-{}", owner % 50))
                    .expect("`svc-` and digits is a valid service name"),
                instance: InstanceId::new(&format!("n{owner}-{port}"))
                    .expect("`n`, digits, `-`, digits is a valid instance id"),
                address: std::net::IpAddr::from([127, 0, 0, 1]),
                port,
                sidecar: true,
                tags: Vec::new(),
                attributes: BTreeMap::new(),
                weight: 1,
            })
        }
        _ => encode_value(&HealthRecord {
            status: if version.is_multiple_of(2) { Health::Passing } else { Health::Warning },
            since_unix_ms: 1_764_000_000_000 + version,
            output: String::new(),
        }),
    }
}

/// The store of one simulated agent: nothing of its own, the shared history behind it.
#[derive(Debug, Clone)]
pub struct SimStore {
    history: Rc<RefCell<History>>,
}

impl SimStore {
    /// A store reading `history`.
    pub fn new(history: Rc<RefCell<History>>) -> Self {
        Self { history }
    }
}

/// `n1234` → 1234.
pub fn owner_index(owner: &str) -> Option<usize> {
    owner.strip_prefix('n')?.parse().ok()
}

impl Store for SimStore {
    fn apply(&mut self, _owner: &str, _key: &str, _value: Option<&str>, _version: u64) -> bool {
        true
    }

    fn purge(&mut self, _owner: &str, _upto: u64) -> usize {
        0
    }

    fn replace_upto(&mut self, _owner: &str, _upto: u64, _keys: &[KeyValue]) {}

    fn delta(&self, owner: &str, from: u64, upto: u64, budget: usize) -> (Vec<KeyValue>, bool) {
        let Some(i) = owner_index(owner) else { return (Vec::new(), true) };
        let mut history = self.history.borrow_mut();
        if let Some(reply) = history.replies.get(&(i, from, upto, budget)) {
            return reply.clone();
        }
        let Some(changes) = history.changes.get(i) else { return (Vec::new(), true) };
        let mut latest: BTreeMap<u16, u64> = BTreeMap::new();
        for &(version, key) in changes.iter().take_while(|(v, _)| *v <= upto) {
            latest.insert(key, version);
        }
        let mut out: Vec<KeyValue> = latest
            .into_iter()
            .filter(|(_, v)| *v > from)
            .map(|(key, version)| KeyValue { version, key: key_name(i, key), value: Some(value(i, key, version)) })
            .collect();
        out.sort_by_key(|kv| kv.version);
        let reply = take_within(out, budget);
        history.replies.insert((i, from, upto, budget), reply.clone());
        reply
    }

    fn remove(&mut self, _owner: &str) {}

    fn intern(&mut self, name: &str) -> Arc<str> {
        let mut history = self.history.borrow_mut();
        if let Some(held) = history.names.get(name) {
            return held.clone();
        }
        let name: Arc<str> = name.into();
        history.names.insert(name.clone());
        name
    }
}
