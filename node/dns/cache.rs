//! Ready UDP replies for the names the stub answers itself, one cache per UDP socket.
//!
//! Apps ask the same few names over and over, and between two registry snapshots the
//! answer to the same datagram is the same but for the order of the instances. So a
//! reply, once encoded, is kept under the query's bytes after its ID (flags, question
//! and EDNS included: whatever the reply depends on); the next identical query gets a
//! copy with its own ID, without a parse, a lookup or an encode. unbound too keeps its
//! local data in wire form; in the profile, building each reply anew was most of the
//! difference in CPU per query between the two.
//!
//! Order: an uncached answer shuffles the instances anew. A cached name instead keeps
//! one random order per snapshot and hands out its rotations in turn (each built the
//! first time it is asked for), so every instance comes first as often as any other,
//! as unbound's `rrset-roundrobin` does. Names with more than [`MAX_ROTATIONS`]
//! instances are not cached: they keep a fresh shuffle per query.
//!
//! Freshness: the whole cache is dropped when a new snapshot is published, before the
//! query that sees it is answered. Forwarded names are never cached (the upstream's
//! answer has its own TTL), nor is anything that did not parse. Size: at most
//! [`BUDGET`] bytes of queries and replies per socket; the cache is emptied when full.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::metrics::{QType, Rcode};
use crate::registry::Snapshot;

/// Most instances behind a cached name (and so rotations kept for it).
pub const MAX_ROTATIONS: usize = 64;
/// Bytes of cached queries and replies per socket.
pub const BUDGET: usize = 128 * 1024;

/// The labels a reply is counted under.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Labels {
    pub qtype: QType,
    pub rcode: Rcode,
}

struct Entry {
    /// The seed of this name's random order for the current snapshot.
    seed: u64,
    /// Reply bytes per rotation (ID bytes left as they were), built on first use.
    rotations: Vec<Option<Box<[u8]>>>,
    /// The rotation the next query gets.
    next: usize,
    labels: Labels,
}

/// What a query gets from the cache.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    /// The reply was written to the output buffer, with the query's ID.
    Hit(Labels),
    /// Build the reply with the instances put in this order, then [`ResponseCache::store`] it.
    Miss(Order),
}

/// How to order the instances of a reply that is about to be built: rotation `k` of
/// the random order seeded by `seed`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Order {
    pub seed: u64,
    pub k: usize,
}

impl Order {
    /// Puts `items` in this order; returns how many there are.
    pub fn apply<T>(self, items: &mut [T]) -> usize {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        items.shuffle(&mut rand::rngs::StdRng::seed_from_u64(self.seed));
        if let Some(k) = self.k.checked_rem(items.len()) {
            items.rotate_left(k);
        }
        items.len()
    }
}

/// One UDP socket's cache of replies (see the module documentation).
pub struct ResponseCache {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    entries: HashMap<Box<[u8]>, Entry>,
    bytes: usize,
}

/// The part of a query the reply depends on: everything after the 2-byte ID.
fn key(query: &[u8]) -> Option<&[u8]> {
    query.get(2..).filter(|k| !k.is_empty())
}

impl ResponseCache {
    /// An empty cache, emptied again whenever `snapshots` publishes a new snapshot.
    pub fn new(mut snapshots: watch::Receiver<Arc<Snapshot>>) -> ResponseCache {
        snapshots.mark_unchanged();
        ResponseCache { snapshots, entries: HashMap::new(), bytes: 0 }
    }

    /// Looks `query` up; on a hit, `out` holds the reply with the query's ID.
    pub fn lookup(&mut self, query: &[u8], out: &mut Vec<u8>) -> Lookup {
        // A closed channel (the agent is stopping) keeps what is cached.
        if self.snapshots.has_changed().unwrap_or(false) {
            self.snapshots.mark_unchanged();
            self.clear();
        }
        let Some(entry) = key(query).and_then(|k| self.entries.get_mut(k)) else {
            return Lookup::Miss(Order { seed: rand::random(), k: 0 });
        };
        let k = entry.next;
        entry.next = (k + 1) % entry.rotations.len();
        match &entry.rotations[k] {
            Some(reply) => {
                out.clear();
                out.extend_from_slice(reply);
                out[..2].copy_from_slice(&query[..2]);
                Lookup::Hit(entry.labels)
            }
            None => Lookup::Miss(Order { seed: entry.seed, k }),
        }
    }

    /// Keeps `reply`, built for `query` in `order` from `instances` instances (0 when
    /// the answer used no instance list), counted under `labels`.
    pub fn store(&mut self, query: &[u8], order: Order, instances: usize, reply: &[u8], labels: Labels) {
        let Order { seed, k } = order;
        let Some(key) = key(query) else { return };
        if instances > MAX_ROTATIONS || reply.len() < 2 {
            return;
        }
        let rotations = instances.max(1);
        if self.bytes + key.len() + reply.len() > BUDGET {
            self.clear();
        }
        let entry = match self.entries.entry(key.into()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                self.bytes += v.key().len();
                v.insert(Entry { seed, rotations: vec![None; rotations], next: 1 % rotations, labels })
            }
        };
        // An entry made for another order (or instance count) than this reply's — the
        // snapshot changed under this query, and the next lookup empties the cache — is
        // left as it is: the reply is sent, not kept.
        if entry.seed != seed || entry.rotations.len() != rotations || entry.labels != labels {
            return;
        }
        if let Some(slot @ None) = entry.rotations.get_mut(k) {
            *slot = Some(reply.into());
            self.bytes += reply.len();
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Queries cached (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABELS: Labels = Labels { qtype: QType::A, rcode: Rcode::NoError };

    fn cache() -> (watch::Sender<Arc<Snapshot>>, ResponseCache) {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        (tx, ResponseCache::new(rx))
    }

    fn query(id: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(b"\x01\x00\x00\x01rest-of-query");
        q
    }

    fn miss(c: &mut ResponseCache, q: &[u8]) -> Order {
        match c.lookup(q, &mut Vec::new()) {
            Lookup::Miss(order) => order,
            hit => panic!("expected a miss, got {hit:?}"),
        }
    }

    #[test]
    fn a_hit_carries_the_query_id_and_the_cached_bytes() {
        let (_tx, mut c) = cache();
        let order = miss(&mut c, &query(1));
        c.store(&query(1), order, 1, b"\x00\x01reply", LABELS);
        let mut out = Vec::new();
        assert_eq!(c.lookup(&query(0xabcd), &mut out), Lookup::Hit(LABELS));
        assert_eq!(out, b"\xab\xcdreply");
    }

    #[test]
    fn a_new_snapshot_empties_the_cache() {
        let (tx, mut c) = cache();
        let order = miss(&mut c, &query(1));
        c.store(&query(1), order, 1, b"\x00\x01reply", LABELS);
        tx.send_replace(Arc::new(Snapshot { version: 2, ..Default::default() }));
        miss(&mut c, &query(1));
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn rotations_are_handed_out_in_turn_and_built_once_each() {
        let (_tx, mut c) = cache();
        let Order { seed, k } = miss(&mut c, &query(1));
        assert_eq!(k, 0);
        c.store(&query(1), Order { seed, k: 0 }, 3, b"..r0", LABELS);
        // Rotations 1 and 2 are not built yet: the next queries ask for them, same seed.
        assert_eq!(miss(&mut c, &query(2)), Order { seed, k: 1 });
        c.store(&query(2), Order { seed, k: 1 }, 3, b"..r1", LABELS);
        assert_eq!(miss(&mut c, &query(3)), Order { seed, k: 2 });
        c.store(&query(3), Order { seed, k: 2 }, 3, b"..r2", LABELS);
        let mut seen = Vec::new();
        for id in 0..6u16 {
            let mut out = Vec::new();
            assert_eq!(c.lookup(&query(id), &mut out), Lookup::Hit(LABELS));
            seen.push(out[2..].to_vec());
        }
        assert_eq!(seen, [b"r0", b"r1", b"r2", b"r0", b"r1", b"r2"].map(|r| r.to_vec()));
    }

    #[test]
    fn the_same_seed_and_rotation_give_the_same_order_and_rotations_cover_every_instance() {
        let base: Vec<u32> = (0..5).collect();
        let firsts: Vec<u32> = (0..5)
            .map(|k| {
                let (mut v, mut again) = (base.clone(), base.clone());
                assert_eq!(Order { seed: 9, k }.apply(&mut v), 5);
                Order { seed: 9, k }.apply(&mut again);
                assert_eq!(v, again, "deterministic");
                v[0]
            })
            .collect();
        let mut sorted = firsts.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2, 3, 4], "each instance first once: {firsts:?}");
    }

    #[test]
    fn names_with_too_many_instances_and_the_budget_bound_what_is_kept() {
        let (_tx, mut c) = cache();
        let order = miss(&mut c, &query(1));
        c.store(&query(1), order, MAX_ROTATIONS + 1, b"..big", LABELS);
        assert_eq!(c.len(), 0, "not cached");
        let reply = vec![0u8; 1000];
        for n in 0..(BUDGET / 1000 + 5) {
            let mut q = query(1);
            q.extend_from_slice(&n.to_be_bytes());
            let order = miss(&mut c, &q);
            c.store(&q, order, 1, &reply, LABELS);
            assert!(c.bytes <= BUDGET);
        }
        assert!(c.len() > 0 && c.len() < BUDGET / 1000);
    }
}
