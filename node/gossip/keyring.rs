//! The cluster keyring: a primary key that seals every outgoing gossip datagram and
//! older keys that still open incoming ones, so keys rotate without downtime (add the
//! new key everywhere, make it primary everywhere, then drop the old one).
//!
//! The crypto is ring's AES-256-GCM; nothing here is hand-rolled. Nonces are unique by
//! construction, not by chance: a random 32-bit prefix drawn when the process makes its
//! keyring, then a 64-bit counter that starts at a random value and goes up by one per
//! seal. Random 96-bit nonces would reach NIST's limit of 2^32 seals per key (the odds
//! of a collision, which lets an attacker forge) in about 11 days at 100 agents; with a
//! counter two seals of one process never share a nonce, and two processes only could
//! if they drew the same prefix (2^-32 per pair) and overlapping stretches of 2^64.
//!
//! A keyring also has a version, `(epoch, origin)`, which [`super::rotation`] uses to
//! spread changes made at run time; and it can be kept in a file ([`load_file`],
//! [`save_file`]) so that those changes survive a restart.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use murmur_protocol::KeyringRecord;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Length of a gossip key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of the key id that tells a receiver which key sealed a datagram.
pub const KEY_ID_LEN: usize = 4;
/// Bytes the AEAD adds: the nonce in front and the tag behind.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + 16;

struct SealKey {
    id: [u8; KEY_ID_LEN],
    raw: [u8; KEY_LEN],
    key: LessSafeKey,
}

/// The keys of one agent. `Debug` never prints key material.
pub struct Keyring {
    keys: Vec<SealKey>,
    /// Changes made at run time since the configured keyring (0: as configured).
    epoch: u64,
    /// The node that made the last change ("" for a configured keyring).
    origin: String,
    /// Shared by every clone, so that no two seals of this process share a nonce.
    nonces: Arc<Nonces>,
}

/// Where nonces come from: a prefix and a counter (see the module documentation).
#[derive(Debug)]
struct Nonces {
    prefix: [u8; 4],
    start: u64,
    next: AtomicU64,
}

impl Nonces {
    fn new() -> Nonces {
        let mut seed = [0u8; 12];
        // Without the OS random source there is no safe prefix to draw.
        SystemRandom::new().fill(&mut seed).expect("the operating system random source works");
        let (prefix, start) = seed.split_at(4);
        let mut p = [0u8; 4];
        p.copy_from_slice(prefix);
        let start = u64::from_le_bytes(start.try_into().unwrap_or_default());
        Nonces { prefix: p, start, next: AtomicU64::new(start) }
    }

    fn next(&self) -> [u8; NONCE_LEN] {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..4].copy_from_slice(&self.prefix);
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        nonce
    }

    fn used(&self) -> u64 {
        self.next.load(Ordering::Relaxed).wrapping_sub(self.start)
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("keys", &self.keys.len()).field("epoch", &self.epoch).finish()
    }
}

impl Clone for Keyring {
    fn clone(&self) -> Self {
        Self {
            keys: self.keys.iter().map(|k| SealKey { id: k.id, raw: k.raw, key: k.key.clone() }).collect(),
            epoch: self.epoch,
            origin: self.origin.clone(),
            nonces: self.nonces.clone(),
        }
    }
}

/// Why a datagram did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenError {
    /// Shorter than a nonce and a tag.
    Short,
    /// Sealed under a key this keyring does not hold.
    UnknownKey,
    /// The tag did not verify: tampered, or sealed by someone without the key.
    Forged,
}

/// Why keys do not make a keyring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No key at all.
    #[error("a keyring needs at least one key")]
    Empty,
    /// A key is not base64.
    #[error("{what} is not base64; make one with `murmur keygen`")]
    NotBase64 {
        /// Which key ("key #2", "KEY").
        what: String,
    },
    /// A key is not 32 bytes.
    #[error("{what} is {len} bytes, a key is {KEY_LEN}; make one with `murmur keygen`")]
    WrongLength {
        /// Which key.
        what: String,
        /// Its length.
        len: usize,
    },
    /// The keys break a limit of the keyring record (too many, one twice).
    #[error("not a usable keyring: {0}")]
    Record(murmur_protocol::LimitError),
    /// ring refused the key.
    #[error("not a usable AES-256 key")]
    Aes,
}

/// Why a keyring file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file exists but cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// It is neither murmur's keyring file nor Serf's (a JSON array of base64 keys).
    #[error("{} is not a keyring file", path.display())]
    Format {
        /// The file.
        path: std::path::PathBuf,
        /// What the JSON reader found.
        source: serde_json::Error,
    },
    /// Its keys do not make a keyring.
    #[error("{} is not a keyring file", path.display())]
    Keys {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with the keys.
        source: KeyError,
    },
}

impl Keyring {
    /// Builds a keyring from raw keys; the first is primary.
    pub fn new(raw_keys: &[[u8; KEY_LEN]]) -> Result<Keyring, KeyError> {
        let record = KeyringRecord { epoch: 0, origin: String::new(), keys: raw_keys.to_vec() };
        Keyring::build(&record, Arc::new(Nonces::new()))
    }

    /// Builds a keyring from a record (a keyring file's, or a peer's).
    pub fn from_record(record: &KeyringRecord) -> Result<Keyring, KeyError> {
        Keyring::build(record, Arc::new(Nonces::new()))
    }

    /// The keyring `record` describes, drawing nonces from the same source as this one
    /// (so that a change of keys never repeats a nonce).
    pub fn adopt(&self, record: &KeyringRecord) -> Result<Keyring, KeyError> {
        Keyring::build(record, self.nonces.clone())
    }

    fn build(record: &KeyringRecord, nonces: Arc<Nonces>) -> Result<Keyring, KeyError> {
        use murmur_protocol::record::Record;
        record.check().map_err(KeyError::Record)?;
        let keys = record
            .keys
            .iter()
            .map(|raw| {
                let unbound = UnboundKey::new(&AES_256_GCM, raw).map_err(|_| KeyError::Aes)?;
                Ok(SealKey { id: key_id(raw), raw: *raw, key: LessSafeKey::new(unbound) })
            })
            .collect::<Result<_, KeyError>>()?;
        Ok(Keyring { keys, epoch: record.epoch, origin: record.origin.clone(), nonces })
    }

    /// What this keyring is, as gossiped and as kept in a keyring file.
    pub fn record(&self) -> KeyringRecord {
        KeyringRecord {
            epoch: self.epoch,
            origin: self.origin.clone(),
            keys: self.keys.iter().map(|k| k.raw).collect(),
        }
    }

    /// Builds a keyring from base64 keys as given on the command line.
    pub fn from_base64(keys: &[String]) -> Result<Keyring, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        let mut raw = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Keyring::decode_key(&format!("key #{}", i + 1), k))
            .collect::<Result<Vec<_>, _>>()?;
        // A key given twice is one key (the first place counts).
        let mut seen = std::collections::HashSet::new();
        raw.retain(|k| seen.insert(*k));
        Keyring::new(&raw)
    }

    /// Decodes one base64 key (`what` names it in the error).
    pub fn decode_key(what: &str, key: &str) -> Result<[u8; KEY_LEN], KeyError> {
        let bytes = STANDARD.decode(key.trim()).map_err(|_| KeyError::NotBase64 { what: what.to_owned() })?;
        <[u8; KEY_LEN]>::try_from(bytes.as_slice())
            .map_err(|_| KeyError::WrongLength { what: what.to_owned(), len: bytes.len() })
    }

    /// A fresh random key in base64, for `murmur keygen`.
    pub fn generate_base64() -> String {
        let mut raw = [0u8; KEY_LEN];
        // The system RNG failing means the OS cannot give randomness at all; there is no
        // safe fallback for key material.
        SystemRandom::new().fill(&mut raw).expect("the operating system random source works");
        STANDARD.encode(raw)
    }

    /// Datagrams this process has sealed (every clone of its keyring counted).
    pub fn seals(&self) -> u64 {
        self.nonces.used()
    }

    /// The id of the primary key: the first bytes of its SHA-256.
    pub fn primary_id(&self) -> [u8; KEY_ID_LEN] {
        self.keys[0].id
    }

    /// The change count of this keyring (0: as configured).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How many keys open datagrams.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true: a keyring holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Seals `plaintext` under the primary key, authenticating `header` too. Returns
    /// `nonce || ciphertext || tag` appended to `out`.
    pub fn seal(&self, header: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        let nonce = self.nonces.next();
        let start = out.len();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let mut body = out.split_off(start + NONCE_LEN);
        // Sealing only fails when the input exceeds AES-GCM's 64 GiB limit; datagrams
        // are under 64 KiB.
        self.keys[0]
            .key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(header), &mut body)
            .expect("a datagram is far below the AES-GCM length limit");
        out.extend_from_slice(&body);
    }

    /// Opens `nonce || ciphertext || tag` sealed under the key `key_id`.
    pub fn open(&self, key_id: &[u8], header: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(OpenError::Short);
        }
        let key = self.keys.iter().find(|k| k.id == key_id).ok_or(OpenError::UnknownKey)?;
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Short)?;
        let mut body = body.to_vec();
        let plain = key.key.open_in_place(nonce, Aad::from(header), &mut body).map_err(|_| OpenError::Forged)?;
        let len = plain.len();
        body.truncate(len);
        Ok(body)
    }
}

/// The id of a key: the first bytes of its SHA-256, which every sealed datagram names.
pub fn key_id(raw: &[u8; KEY_LEN]) -> [u8; KEY_ID_LEN] {
    let digest = ring::digest::digest(&ring::digest::SHA256, raw);
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
    id
}

/// A key id as people read it: eight hex digits.
pub fn key_id_hex(raw: &[u8; KEY_LEN]) -> String {
    key_id(raw).iter().map(|b| format!("{b:02x}")).collect()
}

/// A key in base64, as `murmur keygen` prints it.
pub fn key_base64(raw: &[u8; KEY_LEN]) -> String {
    STANDARD.encode(raw)
}

/// The keyring file: JSON, primary key first.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    epoch: u64,
    origin: String,
    keys: Vec<String>,
}

/// Reads a keyring file. `Ok(None)` when there is none. Serf's format (a JSON array of
/// base64 keys, primary first) is read too, as a configured keyring.
pub fn load_file(path: &Path) -> Result<Option<KeyringRecord>, KeyFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(KeyFileError::Read { path: path.to_owned(), source }),
    };
    let file = match serde_json::from_str::<KeyringFile>(&text) {
        Ok(f) => f,
        Err(source) => match serde_json::from_str::<Vec<String>>(&text) {
            Ok(keys) => KeyringFile { epoch: 0, origin: String::new(), keys },
            Err(_) => return Err(KeyFileError::Format { path: path.to_owned(), source }),
        },
    };
    let bad_keys = |source| KeyFileError::Keys { path: path.to_owned(), source };
    let keys = file
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| Keyring::decode_key(&format!("key #{}", i + 1), k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad_keys)?;
    let record = KeyringRecord { epoch: file.epoch, origin: file.origin, keys };
    murmur_protocol::record::Record::check(&record).map_err(|e| bad_keys(KeyError::Record(e)))?;
    Ok(Some(record))
}

/// Writes a keyring file so that a crash leaves the old file or the new one, never a
/// torn one: a temporary file beside it (mode 0600), synced, renamed over it, and the
/// directory synced.
pub fn save_file(path: &Path, record: &KeyringRecord) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = KeyringFile {
        epoch: record.epoch,
        origin: record.origin.clone(),
        keys: record.keys.iter().map(key_base64).collect(),
    };
    let mut text = serde_json::to_string_pretty(&file).map_err(std::io::Error::other)?;
    text.push('\n');
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "keyring".into());
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_of(keys: &[String]) -> Keyring {
        Keyring::from_base64(keys).expect("valid keys")
    }

    #[test]
    fn seal_open_round_trip_and_rotation() {
        let (a, b) = (Keyring::generate_base64(), Keyring::generate_base64());
        let old = ring_of(std::slice::from_ref(&a));
        let rotating = ring_of(&[b.clone(), a.clone()]);
        let mut sealed = Vec::new();
        old.seal(b"hdr", b"hello", &mut sealed);
        assert_eq!(rotating.open(&old.primary_id(), b"hdr", &sealed).as_deref(), Ok(&b"hello"[..]));
        let mut sealed = Vec::new();
        rotating.seal(b"hdr", b"hi", &mut sealed);
        assert_eq!(old.open(&rotating.primary_id(), b"hdr", &sealed), Err(OpenError::UnknownKey));
    }

    #[test]
    fn nonces_never_repeat_within_a_process_or_across_a_restart() {
        let key = Keyring::generate_base64();
        let first = ring_of(std::slice::from_ref(&key));
        let clone = first.clone();
        let restarted = ring_of(std::slice::from_ref(&key));
        let mut seen = std::collections::HashSet::with_capacity(2_000_000);
        for i in 0..1_000_000u32 {
            // Clones draw from one counter: half the first million through the clone.
            let source = if i % 2 == 0 { &first } else { &clone };
            assert!(seen.insert(source.nonces.next()), "a nonce repeated within the process at {i}");
        }
        for i in 0..1_000_000u32 {
            assert!(seen.insert(restarted.nonces.next()), "a nonce repeated after the restart at {i}");
        }
        assert_eq!(first.seals(), 1_000_000);
        // A seal takes the next nonce: same prefix, counter up by one.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        first.seal(b"h", b"x", &mut a);
        first.seal(b"h", b"x", &mut b);
        assert_eq!(a[..4], b[..4]);
        let counter = |d: &[u8]| u64::from_be_bytes(d[4..NONCE_LEN].try_into().expect("8 bytes"));
        assert_eq!(counter(&b), counter(&a).wrapping_add(1));
        assert_eq!(clone.seals(), 1_000_002);
    }

    #[test]
    fn tampering_is_detected() {
        let k = ring_of(&[Keyring::generate_base64()]);
        let mut sealed = Vec::new();
        k.seal(b"hdr", b"payload", &mut sealed);
        assert_eq!(k.open(&k.primary_id(), b"hdX", &sealed), Err(OpenError::Forged));
        for i in 0..sealed.len() {
            let mut m = sealed.clone();
            m[i] ^= 0x01;
            assert!(k.open(&k.primary_id(), b"hdr", &m).is_err(), "byte {i}");
        }
        assert_eq!(k.open(&k.primary_id(), b"hdr", &sealed[..10]), Err(OpenError::Short));
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        let err = Keyring::from_base64(&["!!".into()]).expect_err("bad");
        assert!(matches!(err, KeyError::NotBase64 { .. }) && err.to_string().contains("base64"), "{err}");
        let err = Keyring::from_base64(&["AAAA".into()]).expect_err("short");
        assert_eq!(err, KeyError::WrongLength { what: "key #1".into(), len: 3 });
        assert_eq!(Keyring::from_base64(&[]).expect_err("none"), KeyError::Empty);
    }

    #[test]
    fn a_keyring_file_round_trips_and_serf_files_are_read() {
        let dir = std::env::temp_dir().join(format!("murmur-keyring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("keyring.json");
        assert!(load_file(&path).expect("no file is no keyring").is_none());
        let record = KeyringRecord { epoch: 3, origin: "a".into(), keys: vec![[7; KEY_LEN], [9; KEY_LEN]] };
        save_file(&path, &record).expect("written");
        assert_eq!(load_file(&path).expect("readable"), Some(record.clone()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "only the owner reads keys");
        let keys = record.keys.iter().map(key_base64).collect::<Vec<_>>();
        std::fs::write(&path, serde_json::to_string(&keys).expect("json")).expect("written");
        let serf = load_file(&path).expect("readable");
        assert_eq!(serf, Some(KeyringRecord { epoch: 0, origin: String::new(), ..record }));
        std::fs::write(&path, "{\"epoch\": 1}").expect("written");
        assert!(matches!(load_file(&path).expect_err("torn"), KeyFileError::Format { .. }));
        std::fs::write(&path, "[\"AAAA\"]").expect("written");
        let err = load_file(&path).expect_err("short key");
        assert!(crate::error::chain(&err).contains("3 bytes"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_adopted_keyring_keeps_drawing_from_the_same_nonces() {
        let first = ring_of(&[Keyring::generate_base64()]);
        let mut sealed = Vec::new();
        first.seal(b"h", b"x", &mut sealed);
        let next =
            first.adopt(&KeyringRecord { epoch: 1, origin: "b".into(), keys: vec![[5; KEY_LEN]] }).expect("valid");
        assert_eq!(next.epoch(), 1);
        assert_eq!(next.seals(), 1, "one counter across the change");
        assert_eq!(next.record().keys, vec![[5; KEY_LEN]]);
        assert_eq!(key_id(&[5; KEY_LEN]), next.primary_id());
    }
}
