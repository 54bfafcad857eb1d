//! Where members' versioned key-value state is kept. The membership core decides what
//! to apply and what to serve; a [`Store`] only holds it. The agent's store is its
//! replica of every member's records; the simulator's remembers versions only, so that
//! ten thousand replicas fit in one process; [`MapStore`] is a plain map for tests.

use std::collections::{BTreeMap, HashMap, HashSet};
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

    /// Forgets `owner`'s removals (tombstones) at or below version `upto`: every replica
    /// has had the grace to learn of them. Returns how many were forgotten.
    fn purge(&mut self, owner: &str, upto: u64) -> usize;

    /// Replaces `owner`'s keys at or below version `upto` with `keys`, a complete fetch
    /// of them from a holder that forgot removals this agent never saw: a key held at or
    /// below `upto` that `keys` does not name is gone. Keys above `upto` (newer rumors)
    /// stay.
    fn replace_upto(&mut self, owner: &str, upto: u64, keys: &[KeyValue]);

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
    owners: HashMap<String, Owned>,
}

/// One owner's keys: version and value (`None`: deleted) of each, and the removals by
/// version, so that forgetting old ones does not scan every key.
#[derive(Debug, Default)]
struct Owned {
    keys: BTreeMap<Arc<str>, (u64, Option<Arc<str>>)>,
    removals: BTreeMap<u64, Arc<str>>,
}

impl Owned {
    fn set(&mut self, key: Arc<str>, version: u64, value: Option<&str>) {
        if value.is_none() {
            self.removals.insert(version, key.clone());
        }
        self.keys.insert(key, (version, value.map(Arc::from)));
    }
}

impl MapStore {
    /// One owner's live keys and values.
    pub fn values(&self, owner: &str) -> Vec<(Arc<str>, Arc<str>)> {
        self.owners
            .get(owner)
            .map(|o| o.keys.iter().filter_map(|(k, (_, v))| v.clone().map(|v| (k.clone(), v))).collect())
            .unwrap_or_default()
    }

    /// Removals held, over every owner.
    pub fn tombstones(&self) -> usize {
        self.owners.values().map(|o| o.keys.values().filter(|(_, v)| v.is_none()).count()).sum()
    }
}

impl Store for MapStore {
    fn apply(&mut self, owner: &str, key: &str, value: Option<&str>, version: u64) -> bool {
        if !self.owners.contains_key(owner) {
            self.owners.insert(owner.to_owned(), Owned::default());
        }
        let Some(owned) = self.owners.get_mut(owner) else { return false };
        let key: Arc<str> = match owned.keys.get_key_value(key) {
            Some((_, (v, _))) if *v >= version => return false,
            Some((k, _)) => k.clone(),
            None => key.into(),
        };
        owned.set(key, version, value);
        true
    }

    fn delta(&self, owner: &str, from: u64, _upto: u64, budget: usize) -> (Vec<KeyValue>, bool) {
        let Some(owned) = self.owners.get(owner) else { return (Vec::new(), true) };
        let mut all: Vec<KeyValue> = owned
            .keys
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

    fn purge(&mut self, owner: &str, upto: u64) -> usize {
        let Some(owned) = self.owners.get_mut(owner) else { return 0 };
        let newer = owned.removals.split_off(&upto.saturating_add(1));
        let due = std::mem::replace(&mut owned.removals, newer);
        let mut forgotten = 0;
        for (version, key) in due {
            // Set again since (a new registration, or a later removal): not this one.
            if owned.keys.get(&key).is_some_and(|(v, value)| *v == version && value.is_none()) {
                owned.keys.remove(&key);
                forgotten += 1;
            }
        }
        if owned.keys.is_empty() {
            self.owners.remove(owner);
        }
        forgotten
    }

    fn replace_upto(&mut self, owner: &str, upto: u64, keys: &[KeyValue]) {
        let owned = self.owners.entry(owner.to_owned()).or_default();
        let named: HashSet<&str> = keys.iter().map(|kv| kv.key.as_str()).collect();
        owned.keys.retain(|k, (v, _)| *v > upto || named.contains(&**k));
        let keys_now = &owned.keys;
        owned.removals.retain(|v, k| keys_now.get(k).is_some_and(|(held, value)| held == v && value.is_none()));
        for kv in keys {
            self.apply(owner, &kv.key, kv.value.as_deref(), kv.version);
        }
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

    #[test]
    fn purging_forgets_only_removals_still_in_place_and_a_refetch_drops_what_is_gone() {
        let mut s = MapStore::default();
        s.apply("a", "x", Some("1"), 1);
        s.apply("a", "y", Some("1"), 2);
        s.apply("a", "x", None, 3);
        s.apply("a", "y", None, 4);
        s.apply("a", "y", Some("again"), 5);
        assert_eq!(s.tombstones(), 1);
        assert_eq!(s.purge("a", 4), 1, "x's removal goes; y was set again since");
        assert_eq!(s.tombstones(), 0);
        assert_eq!(s.values("a"), [("y".into(), "again".into())]);
        // A replica that held x and z from long ago refetches: z is gone, w is new, and
        // a rumor above the fetched version survives.
        let mut r = MapStore::default();
        r.apply("a", "x", Some("1"), 1);
        r.apply("a", "z", Some("1"), 2);
        r.apply("a", "late", Some("1"), 9);
        let fetched = [
            KeyValue { version: 1, key: "x".into(), value: Some("1".into()) },
            KeyValue { version: 6, key: "w".into(), value: Some("1".into()) },
            KeyValue { version: 7, key: "v".into(), value: None },
        ];
        r.replace_upto("a", 7, &fetched);
        let keys: Vec<String> = r.values("a").into_iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(keys, ["late", "w", "x"]);
        assert_eq!(r.tombstones(), 1, "a fetched removal is held like any other");
        assert_eq!(r.purge("a", 7), 1);
    }
}
