//! Where members' versioned key-value state is kept. The membership core decides what
//! to apply and what to serve; a [`Store`] only holds it. The agent's store is its
//! replica of every member's records; the simulator's remembers versions only, so that
//! ten thousand replicas fit in one process; [`MapStore`] is a plain map for tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use murmur_protocol::swim::KeyValue;

/// Rough encoded size of one key-value in a state reply, for filling datagrams.
pub fn encoded_len(key: &str, value: Option<&str>) -> usize {
    key.len() + value.map_or(0, str::len) + 16
}

/// Holds every member's versioned keys.
pub trait Store {
    /// Applies one key of `owner` at `version`; a key already held at a version at
    /// least as high is kept (last writer wins, by version). Returns whether anything
    /// changed.
    fn apply(&mut self, owner: &str, key: &str, value: Option<&str>, version: u64) -> bool;

    /// `owner`'s keys with a version above `from`, ascending by version, as many as fit
    /// in `budget` bytes (at least one when there is one), and whether that was all of
    /// them. `upto` is the version the caller holds completely; a store may serve keys
    /// above it too (they are safe to apply), or stop there.
    fn delta(&self, owner: &str, from: u64, upto: u64, budget: usize) -> (Vec<KeyValue>, bool);

    /// Forgets everything of `owner` (it was forgotten, or a new generation replaced it).
    fn remove(&mut self, owner: &str);

    /// The name of a member as the core should hold it. A store may hand out one shared
    /// allocation per name (the simulator does, for ten thousand tables at once).
    fn intern(&mut self, name: &str) -> Arc<str> {
        name.into()
    }
}

/// A store in plain maps. Keys and values are shared strings, so that the views the
/// agent publishes of each node hold the same allocations as the store (a replica of
/// 10,000 nodes holds their state once, not twice).
#[derive(Debug, Default)]
pub struct MapStore {
    owners: HashMap<String, Keys>,
}

/// One owner's keys: version and value (`None`: deleted) of each.
type Keys = BTreeMap<Arc<str>, (u64, Option<Arc<str>>)>;

impl MapStore {
    /// One owner's live keys and values.
    pub fn values(&self, owner: &str) -> Vec<(Arc<str>, Arc<str>)> {
        self.owners
            .get(owner)
            .map(|m| m.iter().filter_map(|(k, (_, v))| v.clone().map(|v| (k.clone(), v))).collect())
            .unwrap_or_default()
    }
}

impl Store for MapStore {
    fn apply(&mut self, owner: &str, key: &str, value: Option<&str>, version: u64) -> bool {
        let keys = self.owners.entry(owner.to_owned()).or_default();
        match keys.get_mut(key) {
            Some((v, _)) if *v >= version => false,
            Some(held) => {
                *held = (version, value.map(Arc::from));
                true
            }
            None => {
                keys.insert(key.into(), (version, value.map(Arc::from)));
                true
            }
        }
    }

    fn delta(&self, owner: &str, from: u64, _upto: u64, budget: usize) -> (Vec<KeyValue>, bool) {
        let Some(keys) = self.owners.get(owner) else { return (Vec::new(), true) };
        let mut all: Vec<KeyValue> = keys
            .iter()
            .filter(|(_, (v, _))| *v > from)
            .map(|(k, (v, val))| KeyValue { version: *v, key: k.to_string(), value: val.as_deref().map(str::to_owned) })
            .collect();
        all.sort_by_key(|kv| kv.version);
        take_within(all, budget)
    }

    fn remove(&mut self, owner: &str) {
        self.owners.remove(owner);
    }
}

/// The longest prefix of `sorted` within `budget` bytes (and at least its first item),
/// and whether that is all of it.
pub fn take_within(sorted: Vec<KeyValue>, budget: usize) -> (Vec<KeyValue>, bool) {
    let mut used = 0;
    let total = sorted.len();
    let mut out = Vec::new();
    for kv in sorted {
        let len = encoded_len(&kv.key, kv.value.as_deref());
        if !out.is_empty() && used + len > budget {
            break;
        }
        used += len;
        out.push(kv);
    }
    let complete = out.len() == total;
    (out, complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_writer_by_version_wins_and_deltas_are_version_prefixes() {
        let mut s = MapStore::default();
        assert!(s.apply("a", "k", Some("1"), 3));
        assert!(!s.apply("a", "k", Some("0"), 2), "an older write is ignored");
        assert!(s.apply("a", "j", Some("2"), 4));
        assert!(s.apply("a", "k", None, 5));
        let (d, complete) = s.delta("a", 3, 10, 1000);
        assert_eq!(d.iter().map(|kv| kv.version).collect::<Vec<_>>(), [4, 5]);
        assert!(complete);
        let (d, complete) = s.delta("a", 0, 10, 1);
        assert_eq!(d.len(), 1, "at least one item");
        assert!(!complete);
        assert_eq!(s.values("a"), [("j".into(), "2".into())]);
        s.remove("a");
        assert!(s.delta("a", 0, 10, 1000).0.is_empty());
    }
}
