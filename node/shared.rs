//! [`SharedMap`]: a sorted map whose copies share storage, and tell what differs between
//! them at the cost of what differs. Entries live in chunks of a
//! few dozen, each behind an `Arc`; a copy clones the chunk pointers only, and a write
//! copies the one chunk it touches. A snapshot of 40,000 services is then a few hundred
//! pointers, and a change between two snapshots costs one chunk, not the whole map;
//! [`SharedMap::diff`] skips the chunks two copies still share.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// Most entries in one chunk; a chunk that grows past it is split in two halves.
const CHUNK: usize = 64;

/// A sorted map with cheap copies; see the module documentation.
#[derive(Clone)]
pub struct SharedMap<K, V> {
    /// Non-empty chunks, each sorted, every key of one below every key of the next.
    chunks: Vec<Arc<Vec<(K, V)>>>,
    len: usize,
}

impl<K, V> Default for SharedMap<K, V> {
    fn default() -> Self {
        SharedMap { chunks: Vec::new(), len: 0 }
    }
}

impl<K: Ord + Clone, V: Clone> SharedMap<K, V> {
    /// The chunk that holds `key`, or would: the last one whose first key is not above it.
    fn chunk_of<Q: Ord + ?Sized>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
    {
        self.chunks.partition_point(|c| c[0].0.borrow() <= key).saturating_sub(1)
    }

    /// The value of `key`.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        let chunk = self.chunks.get(self.chunk_of(key))?;
        chunk.binary_search_by(|(k, _)| k.borrow().cmp(key)).ok().map(|at| &chunk[at].1)
    }

    /// Whether `key` is in the map.
    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`; returns the value it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if self.chunks.is_empty() {
            self.chunks.push(Arc::new(vec![(key, value)]));
            self.len = 1;
            return None;
        }
        let at = self.chunk_of(&key);
        let chunk = Arc::make_mut(&mut self.chunks[at]);
        match chunk.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => Some(std::mem::replace(&mut chunk[i].1, value)),
            Err(i) => {
                chunk.insert(i, (key, value));
                self.len += 1;
                if chunk.len() > CHUNK {
                    let upper = chunk.split_off(chunk.len() / 2);
                    self.chunks.insert(at + 1, Arc::new(upper));
                }
                None
            }
        }
    }

    /// Takes `key` out; returns its value.
    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let at = self.chunk_of(key);
        let i = self.chunks.get(at)?.binary_search_by(|(k, _)| k.borrow().cmp(key)).ok()?;
        let chunk = Arc::make_mut(&mut self.chunks[at]);
        let (_, value) = chunk.remove(i);
        self.len -= 1;
        if chunk.is_empty() {
            self.chunks.remove(at);
        } else if chunk.len() < CHUNK / 4 && at + 1 < self.chunks.len() && self.chunks[at + 1].len() <= CHUNK / 2 {
            // Two small neighbours become one, so that removals never leave a long tail of
            // near-empty chunks behind.
            let next = self.chunks.remove(at + 1);
            Arc::make_mut(&mut self.chunks[at]).extend(next.iter().cloned());
        }
        Some(value)
    }
}

/// One difference between two maps, from [`SharedMap::diff`].
#[derive(Debug, PartialEq, Eq)]
pub enum Diff<'a, K, V> {
    /// In the old map only.
    Gone(&'a K, &'a V),
    /// In the new map only.
    New(&'a K, &'a V),
    /// In both, with values that differ (old, new).
    Changed(&'a K, &'a V, &'a V),
}

/// A place in a map: chunk and entry.
#[derive(Clone, Copy)]
struct Cursor {
    chunk: usize,
    entry: usize,
}

impl Cursor {
    fn get<K, V>(self, map: &SharedMap<K, V>) -> Option<&(K, V)> {
        map.chunks.get(self.chunk).map(|c| &c[self.entry])
    }

    fn advance<K, V>(&mut self, map: &SharedMap<K, V>) {
        self.entry += 1;
        if self.entry == map.chunks[self.chunk].len() {
            self.chunk += 1;
            self.entry = 0;
        }
    }
}

impl<K: Ord, V> SharedMap<K, V> {
    /// What differs from `self` to `new`, in key order; `same` tells whether two values
    /// of one key are equal. A chunk both maps still share is skipped whole, so between
    /// a map and its copy with a few writes this costs those writes' chunks, not the
    /// map's size.
    pub fn diff<'a>(&'a self, new: &'a Self, same: impl Fn(&V, &V) -> bool) -> Vec<Diff<'a, K, V>> {
        let mut out = Vec::new();
        let (mut a, mut b) = (Cursor { chunk: 0, entry: 0 }, Cursor { chunk: 0, entry: 0 });
        loop {
            // Walking in key order, both cursors reach the start of a shared chunk
            // together: its first key is the next one on both sides.
            if a.entry == 0 && b.entry == 0 {
                if let (Some(x), Some(y)) = (self.chunks.get(a.chunk), new.chunks.get(b.chunk)) {
                    if Arc::ptr_eq(x, y) {
                        a.chunk += 1;
                        b.chunk += 1;
                        continue;
                    }
                }
            }
            match (a.get(self), b.get(new)) {
                (None, None) => return out,
                (Some((k, v)), None) => {
                    out.push(Diff::Gone(k, v));
                    a.advance(self);
                }
                (None, Some((k, v))) => {
                    out.push(Diff::New(k, v));
                    b.advance(new);
                }
                (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                    std::cmp::Ordering::Less => {
                        out.push(Diff::Gone(ka, va));
                        a.advance(self);
                    }
                    std::cmp::Ordering::Greater => {
                        out.push(Diff::New(kb, vb));
                        b.advance(new);
                    }
                    std::cmp::Ordering::Equal => {
                        if !same(va, vb) {
                            out.push(Diff::Changed(ka, va, vb));
                        }
                        a.advance(self);
                        b.advance(new);
                    }
                },
            }
        }
    }
}

impl<K, V> SharedMap<K, V> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.chunks.iter().flat_map(|c| c.iter().map(|(k, v)| (k, v)))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    /// Values in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: PartialEq, V: PartialEq> PartialEq for SharedMap<K, V> {
    /// The same entries, however they are chunked.
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<K: Eq, V: Eq> Eq for SharedMap<K, V> {}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SharedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Ord + Clone, V: Clone> FromIterator<(K, V)> for SharedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = SharedMap::default();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A small deterministic generator, so the test needs no crate and replays exactly.
    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn behaves_as_a_btreemap_under_random_inserts_and_removes() {
        let mut seed = 0x9E37_79B9_7F4A_7C15;
        let mut ours: SharedMap<u32, u32> = SharedMap::default();
        let mut model = BTreeMap::new();
        let mut copies = Vec::new();
        for step in 0..20_000u32 {
            let key = (next(&mut seed) % 2_000) as u32;
            if next(&mut seed).is_multiple_of(3) {
                assert_eq!(ours.remove(&key), model.remove(&key), "remove {key} at step {step}");
            } else {
                assert_eq!(ours.insert(key, step), model.insert(key, step), "insert {key} at step {step}");
            }
            assert_eq!(ours.get(&key), model.get(&key));
            if step % 1_000 == 0 {
                copies.push((ours.clone(), model.clone()));
            }
        }
        assert_eq!(ours.len(), model.len());
        assert!(ours.iter().eq(model.iter()), "same entries in the same order");
        assert!(ours.chunks.iter().all(|c| !c.is_empty() && c.len() <= CHUNK));
        // Writes after a copy never show through it.
        for (copy, model) in copies {
            assert_eq!(copy.len(), model.len());
            assert!(copy.iter().eq(model.iter()));
        }
    }

    #[test]
    fn a_write_copies_one_chunk_and_shares_the_rest() {
        let first: SharedMap<u32, u32> = (0..1_000).map(|k| (k, k)).collect();
        let mut second = first.clone();
        second.insert(500, 0);
        let shared = first.chunks.iter().zip(&second.chunks).filter(|(a, b)| Arc::ptr_eq(a, b)).count();
        assert_eq!(shared, first.chunks.len() - 1, "only the chunk holding 500 was copied");
        assert_eq!(first.get(&500), Some(&500));
        assert_eq!(second.get(&500), Some(&0));
        assert_ne!(first, second);
        second.insert(500, 500);
        assert_eq!(first, second, "equal by entries, whatever is shared");
    }

    #[test]
    fn diff_finds_every_difference_between_a_map_and_its_edited_copy() {
        let mut seed = 7;
        let old: SharedMap<u32, u32> = (0..3_000).map(|k| (k * 2, k)).collect();
        for round in 0..200 {
            let mut new = old.clone();
            let mut model = BTreeMap::new();
            for _ in 0..(round % 40) {
                let key = (next(&mut seed) % 6_100) as u32;
                match next(&mut seed) % 3 {
                    0 => {
                        new.remove(&key);
                    }
                    _ => {
                        new.insert(key, round);
                    }
                }
                model.insert(key, ());
            }
            let diffs = old.diff(&new, |a, b| a == b);
            // The model: every key touched, compared by hand.
            let mut expected = Vec::new();
            for key in model.keys() {
                match (old.get(key), new.get(key)) {
                    (Some(a), None) => expected.push(Diff::Gone(key, a)),
                    (None, Some(b)) => expected.push(Diff::New(key, b)),
                    (Some(a), Some(b)) if a != b => expected.push(Diff::Changed(key, a, b)),
                    _ => {}
                }
            }
            let key = |d: &Diff<u32, u32>| match d {
                Diff::Gone(k, _) | Diff::New(k, _) | Diff::Changed(k, _, _) => **k,
            };
            let got: Vec<_> = diffs.iter().map(|d| (key(d), format!("{d:?}"))).collect();
            let want: Vec<_> = expected.iter().map(|d| (key(d), format!("{d:?}"))).collect();
            assert_eq!(got, want, "round {round}");
        }
        // Two unrelated maps with the same entries differ in nothing.
        let again: SharedMap<u32, u32> = (0..3_000).map(|k| (k * 2, k)).collect();
        assert!(old.diff(&again, |a, b| a == b).is_empty());
        assert_eq!(old.diff(&SharedMap::default(), |a, b| a == b).len(), 3_000);
    }

    #[test]
    fn removing_everything_leaves_an_empty_map() {
        let mut map: SharedMap<u32, ()> = (0..500).map(|k| (k, ())).collect();
        for k in (0..500).rev().step_by(2).chain((0..500).step_by(2)) {
            map.remove(&k);
        }
        assert!(map.is_empty());
        assert!(map.chunks.is_empty());
        assert_eq!(map.get(&3), None);
        assert_eq!(map.remove(&3), None);
    }
}
