//! The member table: every member this agent knows, the SWIM precedence rules that
//! decide which of two claims about a member stands, and the anti-entropy digest kept
//! up to date as members change. Pure: no clock reads (times are given), no I/O.

use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::Arc;

use hashbrown::HashTable;
use murmur_protocol::swim::{Entry, Status, SYNC_BUCKETS};

/// Index of a member in the table; stable while the member is held.
pub type MemberIdx = u32;

/// One member as this agent knows it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Node name.
    pub name: Arc<str>,
    /// Gossip address.
    pub addr: SocketAddr,
    /// Start time of its process (unix ms).
    pub generation: u64,
    /// Its incarnation, raised by the member to refute.
    pub incarnation: u32,
    /// Liveness as this agent holds it.
    pub status: Status,
    /// Every key of its state up to this version is held here.
    pub version: u64,
    /// The highest version of its state heard of.
    pub known: u64,
    /// Removals at or below this version are no longer held here (their tombstones
    /// were forgotten, or never came: this agent refetched the state after them).
    pub floor: u64,
}

impl Member {
    /// The member as an entry on the wire.
    pub fn entry(&self) -> Entry {
        Entry {
            name: self.name.to_string(),
            generation: self.generation,
            incarnation: self.incarnation,
            status: self.status,
            addr: self.addr,
            version: self.version,
        }
    }

    /// Whether it counts as up (probed, gossiped to, counted in N).
    pub fn is_up(&self) -> bool {
        matches!(self.status, Status::Alive | Status::Suspect)
    }
}

/// Whether a claim `(generation, incarnation, status)` about a member overrides what is
/// held. A newer generation always wins (a restart); within a generation these are
/// SWIM's rules, with Left final:
/// - alive(i) overrides alive, suspect and dead at j < i;
/// - suspect(i) overrides alive at j ≤ i and suspect at j < i;
/// - dead(i) overrides alive and suspect at j ≤ i;
/// - left overrides everything but left.
pub fn overrides(claim: (u64, u32, Status), held: (u64, u32, Status)) -> bool {
    let ((cg, ci, cs), (hg, hi, hs)) = (claim, held);
    if cg != hg {
        return cg > hg;
    }
    match (cs, hs) {
        (_, Status::Left) => false,
        (Status::Left, _) => true,
        (Status::Alive, _) => ci > hi,
        (Status::Suspect, Status::Alive) => ci >= hi,
        (Status::Suspect, Status::Suspect) => ci > hi,
        (Status::Suspect, Status::Dead) => false,
        (Status::Dead, Status::Alive | Status::Suspect) => ci >= hi,
        (Status::Dead, Status::Dead) => false,
    }
}

/// FNV-1a, 64 bits: fixed across builds and platforms, which the digest needs (two
/// agents of different versions must hash the same view the same way).
fn fnv(bytes: &[u8], mut hash: u64) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x100_0000_01b3);
    }
    hash
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The digest bucket a name falls in.
pub fn bucket_of(name: &str) -> usize {
    (fnv(name.as_bytes(), FNV_OFFSET) % SYNC_BUCKETS as u64) as usize
}

/// One member's contribution to its bucket's hash. Suspect hashes as alive: a suspicion
/// is short-lived and settles by itself, so it should not make two digests differ.
pub fn entry_hash(name: &str, generation: u64, incarnation: u32, status: Status, version: u64) -> u64 {
    let status = match status {
        Status::Alive | Status::Suspect => 0u8,
        Status::Dead => 1,
        Status::Left => 2,
    };
    let mut h = fnv(name.as_bytes(), FNV_OFFSET);
    h = fnv(&generation.to_le_bytes(), h);
    h = fnv(&incarnation.to_le_bytes(), h);
    h = fnv(&[status], h);
    fnv(&version.to_le_bytes(), h)
}

/// The hash of the name held at slot `i` (every slot in the index holds a member).
fn name_hash(hasher: &RandomState, slots: &[Option<Member>], i: MemberIdx) -> u64 {
    slots[i as usize].as_ref().map_or(0, |m| hasher.hash_one(&*m.name))
}

/// Every member known, by index and by name, with the digest kept current.
///
/// Compact on purpose: the simulator holds ten thousand of these tables of ten
/// thousand members each. The name index holds slot numbers only (the name is read
/// from the slot), and names come from the store's interner.
#[derive(Debug, Default)]
pub struct Members {
    slots: Vec<Option<Member>>,
    free: Vec<MemberIdx>,
    by_name: HashTable<MemberIdx>,
    hasher: RandomState,
    up: usize,
    /// XOR of the entry hashes of the members in each bucket.
    buckets: Vec<u64>,
}

impl Members {
    /// An empty table.
    pub fn new() -> Self {
        Self { buckets: vec![0; SYNC_BUCKETS], ..Self::default() }
    }

    /// Slots in the table (held or free): every index is below this.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Members up (alive or suspect).
    pub fn up(&self) -> usize {
        self.up
    }

    /// Looks a member up by name.
    pub fn find(&self, name: &str) -> Option<MemberIdx> {
        let slots = &self.slots;
        let held = |&i: &MemberIdx| slots[i as usize].as_ref().is_some_and(|m| &*m.name == name);
        self.by_name.find(self.hasher.hash_one(name), held).copied()
    }

    /// Makes room for `more` members without growing again.
    pub fn reserve(&mut self, more: usize) {
        self.slots.reserve_exact(more.saturating_sub(self.free.len()));
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.by_name.reserve(more, |&i| name_hash(hasher, slots, i));
    }

    /// The member at an index, if one is held there.
    pub fn get(&self, idx: MemberIdx) -> Option<&Member> {
        self.slots.get(idx as usize).and_then(Option::as_ref)
    }

    /// Every member held.
    pub fn iter(&self) -> impl Iterator<Item = (MemberIdx, &Member)> {
        self.slots.iter().enumerate().filter_map(|(i, m)| m.as_ref().map(|m| (i as MemberIdx, m)))
    }

    /// The digest: one hash per bucket.
    pub fn digest(&self) -> &[u64] {
        &self.buckets
    }

    /// Adds a member not held yet.
    pub fn insert(&mut self, member: Member) -> MemberIdx {
        self.account(&member, true);
        let name = member.name.clone();
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(member);
                i
            }
            None => {
                self.slots.push(Some(member));
                (self.slots.len() - 1) as MemberIdx
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.by_name.insert_unique(hasher.hash_one(&*name), idx, |&i| name_hash(hasher, slots, i));
        idx
    }

    /// Changes a member through `f`, keeping the digest and the count of members up
    /// right. Returns what `f` returned, or `None` when nothing is held at `idx`.
    pub fn update<R>(&mut self, idx: MemberIdx, f: impl FnOnce(&mut Member) -> R) -> Option<R> {
        let mut member = self.slots.get_mut(idx as usize)?.take()?;
        self.account(&member, false);
        let out = f(&mut member);
        self.account(&member, true);
        self.slots[idx as usize] = Some(member);
        Some(out)
    }

    /// Forgets a member.
    pub fn remove(&mut self, idx: MemberIdx) -> Option<Member> {
        let member = self.slots.get_mut(idx as usize)?.take()?;
        self.account(&member, false);
        if let Ok(entry) = self.by_name.find_entry(self.hasher.hash_one(&*member.name), |&i| i == idx) {
            entry.remove();
        }
        self.free.push(idx);
        Some(member)
    }

    fn account(&mut self, m: &Member, add: bool) {
        let h = entry_hash(&m.name, m.generation, m.incarnation, m.status, m.version);
        self.buckets[bucket_of(&m.name)] ^= h;
        if m.is_up() {
            if add {
                self.up += 1;
            } else {
                self.up -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::*;

    #[test]
    fn precedence_follows_swim() {
        let g = 5;
        // A newer generation always wins, an older one never.
        assert!(overrides((6, 0, Alive), (g, 9, Dead)));
        assert!(!overrides((4, 9, Alive), (g, 0, Alive)));
        // Alive needs a higher incarnation, also to come back from the dead.
        assert!(overrides((g, 2, Alive), (g, 1, Suspect)));
        assert!(!overrides((g, 1, Alive), (g, 1, Suspect)));
        assert!(overrides((g, 2, Alive), (g, 1, Dead)));
        // Suspect beats alive at the same incarnation, not a suspect or the dead.
        assert!(overrides((g, 1, Suspect), (g, 1, Alive)));
        assert!(!overrides((g, 1, Suspect), (g, 1, Suspect)));
        assert!(overrides((g, 2, Suspect), (g, 1, Suspect)));
        assert!(!overrides((g, 3, Suspect), (g, 1, Dead)));
        // Dead beats alive and suspect at the same incarnation.
        assert!(overrides((g, 1, Dead), (g, 1, Alive)));
        assert!(overrides((g, 1, Dead), (g, 1, Suspect)));
        assert!(!overrides((g, 0, Dead), (g, 1, Alive)));
        // Left is final within the generation.
        assert!(overrides((g, 0, Left), (g, 4, Alive)));
        assert!(!overrides((g, 9, Alive), (g, 0, Left)));
    }

    fn member(name: &str, status: Status) -> Member {
        Member {
            name: name.into(),
            addr: "127.0.0.1:1".parse().expect("valid"),
            generation: 1,
            incarnation: 0,
            status,
            version: 0,
            known: 0,
            floor: 0,
        }
    }

    #[test]
    fn digest_depends_on_the_view_not_the_order() {
        let (mut a, mut b) = (Members::new(), Members::new());
        for n in ["x", "y", "z"] {
            a.insert(member(n, Alive));
        }
        for n in ["z", "x", "y"] {
            b.insert(member(n, Alive));
        }
        assert_eq!(a.digest(), b.digest());
        let y = a.find("y").expect("held");
        a.update(y, |m| m.status = Suspect);
        assert_eq!(a.digest(), b.digest(), "a suspicion does not count");
        assert_eq!(a.up(), 3);
        a.update(y, |m| m.status = Dead);
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.up(), 2);
        let y = b.find("y").expect("held");
        b.update(y, |m| m.status = Dead);
        assert_eq!(a.digest(), b.digest());
        let removed = a.remove(a.find("x").expect("held")).expect("removed");
        assert_eq!(&*removed.name, "x");
        assert_eq!(a.up(), 1);
        let again = a.insert(member("w", Alive));
        assert_eq!(a.get(again).map(|m| &*m.name), Some("w"), "a freed slot is reused");
    }
}
