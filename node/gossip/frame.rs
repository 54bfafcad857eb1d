//! The gossip datagram format, pure: no socket, no clock (time comes in as arguments).
//!
//! ```text
//! [0xA7][mode] sealed: [key id: 4][nonce: 12][AES-256-GCM( plaintext )][tag: 16]
//!              plain (--insecure only): plaintext
//! plaintext = [unix ms: u64 LE][message id: u32 LE][chunk index: u8][chunk count: u8][bytes]
//! ```
//!
//! Chitchat fills datagrams up to the 65,507-byte UDP limit, so a sealed message can be
//! a few bytes too big for one datagram; such a message is split into chunks, each sealed
//! on its own, and reassembled only from chunks that opened. The timestamp bounds how
//! long a captured datagram can be replayed; inside that window [`ReplayGuard`] drops a
//! datagram whose key id and nonce were seen already.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::keyring::{Keyring, OpenError, KEY_ID_LEN, SEAL_OVERHEAD};

const MAGIC: u8 = 0xA7;
const MODE_PLAIN: u8 = 0;
const MODE_SEALED: u8 = 1;
const SEALED_HEADER_LEN: usize = 2 + KEY_ID_LEN;
const CHUNK_HEADER_LEN: usize = 8 + 4 + 1 + 1;
/// Largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;
/// Largest chunk of a message carried by one datagram.
const MAX_CHUNK: usize = MAX_DATAGRAM - SEALED_HEADER_LEN - SEAL_OVERHEAD - CHUNK_HEADER_LEN;
/// Most chunks one message may have; chitchat messages are at most one datagram, so two
/// always suffice; four leaves room.
const MAX_CHUNKS: usize = 4;
/// How far a datagram's timestamp may be from our clock before it is refused as a
/// replay (or as a peer with a badly wrong clock).
pub const REPLAY_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Messages being reassembled at once; more are dropped (oldest first).
const MAX_PARTIAL: usize = 32;
/// How long a partial message waits for its other chunks.
const PARTIAL_TTL: Duration = Duration::from_secs(5);

/// Why a datagram was dropped; each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not a murmur gossip datagram, or cut short.
    Malformed,
    /// Sealed, but with a key we do not hold, or forged, or plain while we seal (and
    /// the reverse).
    Unsealable,
    /// Timestamp outside the replay window.
    Stale,
}

/// Seals and opens gossip datagrams under an optional keyring.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    keyring: Option<Keyring>,
}

/// One opened chunk.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    /// When it was sealed (the sender's clock, authenticated).
    pub sent_unix_ms: u64,
    /// Key id and nonce of a sealed datagram: what tells a replay from a new one.
    pub seal_id: Option<[u8; SEAL_ID_LEN]>,
    /// Message id, unique per sender for a while.
    pub message_id: u32,
    /// Index of this chunk.
    pub index: u8,
    /// Chunks in the message.
    pub count: u8,
    /// The chunk's bytes.
    pub bytes: Vec<u8>,
}

impl FrameCodec {
    /// A codec that seals with `keyring`, or sends plain datagrams when `None`.
    pub fn new(keyring: Option<Keyring>) -> Self {
        Self { keyring }
    }

    /// The keyring datagrams are sealed with, if any.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    /// Seals with `keyring` from now on (a rotation); opens only what it can open.
    pub fn set_keyring(&mut self, keyring: Keyring) {
        self.keyring = Some(keyring);
    }

    /// Whether datagrams are sealed (a keyring is set).
    pub fn sealed(&self) -> bool {
        self.keyring.is_some()
    }

    /// Frames one message as one or more datagrams.
    pub fn seal(&self, message: &[u8], message_id: u32, now_unix_ms: u64) -> Vec<Vec<u8>> {
        let chunks: Vec<&[u8]> = if message.is_empty() { vec![message] } else { message.chunks(MAX_CHUNK).collect() };
        let count = chunks.len().min(MAX_CHUNKS) as u8;
        chunks
            .iter()
            .take(MAX_CHUNKS)
            .enumerate()
            .map(|(i, chunk)| {
                let mut plain = Vec::with_capacity(CHUNK_HEADER_LEN + chunk.len());
                plain.extend_from_slice(&now_unix_ms.to_le_bytes());
                plain.extend_from_slice(&message_id.to_le_bytes());
                plain.push(i as u8);
                plain.push(count);
                plain.extend_from_slice(chunk);
                match &self.keyring {
                    Some(k) => {
                        let mut out = Vec::with_capacity(SEALED_HEADER_LEN + SEAL_OVERHEAD + plain.len());
                        out.extend_from_slice(&[MAGIC, MODE_SEALED]);
                        out.extend_from_slice(&k.primary_id());
                        let header = out.clone();
                        k.seal(&header, &plain, &mut out);
                        out
                    }
                    None => {
                        let mut out = vec![MAGIC, MODE_PLAIN];
                        out.extend_from_slice(&plain);
                        out
                    }
                }
            })
            .collect()
    }

    /// Opens one datagram. Nothing of a datagram that does not open is parsed further.
    pub fn open(&self, datagram: &[u8], now_unix_ms: u64) -> Result<Chunk, Reject> {
        let plain = match (datagram, &self.keyring) {
            ([MAGIC, MODE_SEALED, rest @ ..], Some(k)) if rest.len() >= KEY_ID_LEN => {
                let (key_id, sealed) = rest.split_at(KEY_ID_LEN);
                k.open(key_id, &datagram[..SEALED_HEADER_LEN], sealed).map_err(|e| match e {
                    OpenError::Short => Reject::Malformed,
                    OpenError::UnknownKey | OpenError::Forged => Reject::Unsealable,
                })?
            }
            ([MAGIC, MODE_SEALED, ..], Some(_)) => return Err(Reject::Malformed),
            ([MAGIC, MODE_PLAIN, rest @ ..], None) => rest.to_vec(),
            ([MAGIC, MODE_SEALED | MODE_PLAIN, ..], _) => return Err(Reject::Unsealable),
            _ => return Err(Reject::Malformed),
        };
        if plain.len() < CHUNK_HEADER_LEN {
            return Err(Reject::Malformed);
        }
        let (head, bytes) = plain.split_at(CHUNK_HEADER_LEN);
        let ts = u64::from_le_bytes(head[0..8].try_into().map_err(|_| Reject::Malformed)?);
        if ts.abs_diff(now_unix_ms) > REPLAY_WINDOW_MS {
            return Err(Reject::Stale);
        }
        let message_id = u32::from_le_bytes(head[8..12].try_into().map_err(|_| Reject::Malformed)?);
        let (index, count) = (head[12], head[13]);
        if count == 0 || usize::from(count) > MAX_CHUNKS || index >= count {
            return Err(Reject::Malformed);
        }
        let seal_id = match datagram {
            [MAGIC, MODE_SEALED, rest @ ..] => rest.get(..SEAL_ID_LEN).and_then(|id| id.try_into().ok()),
            _ => None,
        };
        Ok(Chunk { sent_unix_ms: ts, seal_id, message_id, index, count, bytes: bytes.to_vec() })
    }
}

/// Key id and nonce: the first bytes after the magic and mode of a sealed datagram.
pub const SEAL_ID_LEN: usize = KEY_ID_LEN + 12;
/// Seal ids remembered at most. At the tens of datagrams a second an agent receives this
/// covers far more than the replay window; under a flood that fills it sooner, the
/// window shrinks instead (see [`ReplayGuard`]).
const MAX_REMEMBERED: usize = 1 << 16;

/// Remembers the seal ids of the datagrams that opened inside the replay window, so that
/// an exact replay is dropped however often it comes. Bounded: when full it forgets the
/// oldest arrival and from then on refuses any datagram sealed no later than that one
/// (it can no longer tell whether such a datagram is a replay).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashSet<[u8; SEAL_ID_LEN]>,
    order: VecDeque<(u64, [u8; SEAL_ID_LEN])>,
    floor_unix_ms: u64,
}

impl ReplayGuard {
    /// Whether a datagram sealed at `sent_unix_ms` with `id` is new; remembers it.
    pub fn admit(&mut self, id: [u8; SEAL_ID_LEN], sent_unix_ms: u64, now_unix_ms: u64) -> bool {
        while let Some(&(sent, old)) = self.order.front() {
            if sent.saturating_add(REPLAY_WINDOW_MS) >= now_unix_ms {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&old);
        }
        if sent_unix_ms <= self.floor_unix_ms || !self.seen.insert(id) {
            return false;
        }
        self.order.push_back((sent_unix_ms, id));
        if self.order.len() > MAX_REMEMBERED {
            if let Some((sent, old)) = self.order.pop_front() {
                self.seen.remove(&old);
                self.floor_unix_ms = self.floor_unix_ms.max(sent);
            }
        }
        true
    }
}

struct Partial {
    chunks: Vec<Option<Vec<u8>>>,
    first_seen: Instant,
}

/// Reassembles multi-chunk messages from opened chunks. Bounded in entries and time.
#[derive(Default)]
pub struct Reassembler {
    partial: HashMap<(SocketAddr, u32), Partial>,
}

impl Reassembler {
    /// Adds a chunk; returns the whole message once every chunk is in.
    pub fn push(&mut self, from: SocketAddr, chunk: Chunk, now: Instant) -> Option<Vec<u8>> {
        if chunk.count == 1 {
            return Some(chunk.bytes);
        }
        self.partial.retain(|_, p| now.duration_since(p.first_seen) < PARTIAL_TTL);
        let key = (from, chunk.message_id);
        // Room is made only for a new message: the one this chunk may complete is never
        // the one evicted.
        if self.partial.len() >= MAX_PARTIAL && !self.partial.contains_key(&key) {
            let oldest = self.partial.iter().min_by_key(|(_, p)| p.first_seen).map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.partial.remove(&k);
            }
        }
        let entry = self
            .partial
            .entry(key)
            .or_insert_with(|| Partial { chunks: vec![None; usize::from(chunk.count)], first_seen: now });
        if entry.chunks.len() != usize::from(chunk.count) {
            self.partial.remove(&key);
            return None;
        }
        entry.chunks[usize::from(chunk.index)] = Some(chunk.bytes);
        if entry.chunks.iter().all(Option::is_some) {
            let done = self.partial.remove(&key)?;
            return Some(done.chunks.into_iter().flatten().flatten().collect());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> FrameCodec {
        FrameCodec::new(Some(Keyring::from_base64(&[Keyring::generate_base64()]).expect("valid")))
    }

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn an_exact_replay_is_dropped_however_often_it_comes() {
        let c = codec();
        let datagram = c.seal(b"hello", 1, NOW).remove(0);
        let mut guard = ReplayGuard::default();
        let chunk = c.open(&datagram, NOW).expect("opens");
        let id = chunk.seal_id.expect("sealed");
        assert!(guard.admit(id, chunk.sent_unix_ms, NOW));
        for _ in 0..1_000 {
            let again = c.open(&datagram, NOW + 1).expect("a replay opens");
            assert!(!guard.admit(again.seal_id.expect("sealed"), again.sent_unix_ms, NOW + 1));
        }
        // The same message sealed again is a new datagram (another nonce).
        let fresh = c.open(&c.seal(b"hello", 1, NOW).remove(0), NOW).expect("opens");
        assert!(guard.admit(fresh.seal_id.expect("sealed"), fresh.sent_unix_ms, NOW));
        // Past the window the record forgets it (the timestamp check refuses it by then).
        assert!(guard.admit([9; SEAL_ID_LEN], NOW + REPLAY_WINDOW_MS + 10, NOW + REPLAY_WINDOW_MS + 10));
        assert_eq!(guard.seen.len(), 1);
    }

    #[test]
    fn a_full_record_shrinks_the_window_instead_of_forgetting_replays() {
        let mut guard = ReplayGuard::default();
        for i in 0..=MAX_REMEMBERED as u64 {
            let mut id = [0u8; SEAL_ID_LEN];
            id[..8].copy_from_slice(&i.to_le_bytes());
            assert!(guard.admit(id, NOW + i / 1000, NOW + i / 1000));
        }
        assert_eq!(guard.seen.len(), MAX_REMEMBERED);
        // The first one was forgotten; replayed now, it is refused by its timestamp.
        assert!(!guard.admit([0; SEAL_ID_LEN], NOW, NOW + 66));
    }

    #[test]
    fn small_messages_take_one_datagram() {
        let c = codec();
        let d = c.seal(b"hello", 7, NOW);
        assert_eq!(d.len(), 1);
        let chunk = c.open(&d[0], NOW + 10).expect("opens");
        assert_eq!((chunk.message_id, chunk.count, chunk.bytes.as_slice()), (7, 1, &b"hello"[..]));
    }

    #[test]
    fn full_size_messages_are_split_and_reassembled() {
        let c = codec();
        let msg: Vec<u8> = (0..MAX_DATAGRAM).map(|i| i as u8).collect();
        let datagrams = c.seal(&msg, 1, NOW);
        assert_eq!(datagrams.len(), 2);
        assert!(datagrams.iter().all(|d| d.len() <= MAX_DATAGRAM));
        let from: SocketAddr = "127.0.0.1:1".parse().expect("valid");
        let mut r = Reassembler::default();
        let now = Instant::now();
        let mut out = None;
        for d in datagrams.iter().rev() {
            out = r.push(from, c.open(d, NOW).expect("opens"), now);
        }
        assert_eq!(out, Some(msg));
    }

    #[test]
    fn foreign_keys_plain_frames_and_stale_frames_are_refused() {
        let (a, b) = (codec(), codec());
        let plain = FrameCodec::new(None);
        let d = a.seal(b"x", 1, NOW).remove(0);
        assert_eq!(b.open(&d, NOW), Err(Reject::Unsealable));
        assert_eq!(plain.open(&d, NOW), Err(Reject::Unsealable));
        assert_eq!(a.open(&plain.seal(b"x", 1, NOW)[0], NOW), Err(Reject::Unsealable));
        assert_eq!(a.open(&d, NOW + REPLAY_WINDOW_MS + 1), Err(Reject::Stale));
        assert_eq!(a.open(b"", NOW), Err(Reject::Malformed));
        assert_eq!(a.open(b"junk", NOW), Err(Reject::Malformed));
        assert_eq!(a.open(&[MAGIC, MODE_SEALED, 1], NOW), Err(Reject::Malformed));
    }

    #[test]
    fn reassembly_is_bounded() {
        let mut r = Reassembler::default();
        let now = Instant::now();
        for id in 0..1000u32 {
            let from: SocketAddr = "127.0.0.1:1".parse().expect("valid");
            let _ = r.push(
                from,
                Chunk { sent_unix_ms: 0, seal_id: None, message_id: id, index: 0, count: 2, bytes: vec![0; 10] },
                now,
            );
        }
        assert!(r.partial.len() <= MAX_PARTIAL);
    }

    #[test]
    fn a_full_table_never_evicts_the_message_being_completed() {
        let mut r = Reassembler::default();
        let now = Instant::now();
        let from: SocketAddr = "127.0.0.1:1".parse().expect("valid");
        let chunk = |id, index| Chunk {
            sent_unix_ms: 0,
            seal_id: None,
            message_id: id,
            index,
            count: 2,
            bytes: vec![index; 3],
        };
        // The oldest partial message is the one whose second chunk arrives last.
        for id in 0..MAX_PARTIAL as u32 {
            assert!(r.push(from, chunk(id, 0), now + Duration::from_millis(u64::from(id))).is_none());
        }
        let done = r.push(from, chunk(0, 1), now + Duration::from_millis(100));
        assert_eq!(done, Some(vec![0, 0, 0, 1, 1, 1]), "completed, not evicted to make room for itself");
    }
}
