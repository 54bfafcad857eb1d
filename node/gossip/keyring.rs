//! The cluster keyring: a primary key that seals every outgoing gossip datagram and
//! older keys that still open incoming ones, so keys rotate without downtime (add the
//! new key everywhere, make it primary everywhere, then drop the old one).
//!
//! The crypto is ring's AES-256-GCM; nothing here is hand-rolled. Nonces are random
//! 96-bit values, safe for far more datagrams than a key sees between rotations.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
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
    key: LessSafeKey,
}

/// The keys of one agent. `Debug` never prints key material.
pub struct Keyring {
    keys: Vec<SealKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("keys", &self.keys.len()).finish()
    }
}

impl Clone for Keyring {
    fn clone(&self) -> Self {
        Self {
            keys: self.keys.iter().map(|k| SealKey { id: k.id, key: k.key.clone() }).collect(),
            rng: SystemRandom::new(),
        }
    }
}

/// Why a datagram did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Shorter than a nonce and a tag.
    Short,
    /// Sealed under a key this keyring does not hold.
    UnknownKey,
    /// The tag did not verify: tampered, or sealed by someone without the key.
    Forged,
}

impl Keyring {
    /// Builds a keyring from raw keys; the first is primary.
    pub fn new(raw_keys: &[[u8; KEY_LEN]]) -> Result<Keyring, String> {
        if raw_keys.is_empty() {
            return Err("a keyring needs at least one key".into());
        }
        let keys = raw_keys
            .iter()
            .map(|raw| {
                let digest = ring::digest::digest(&ring::digest::SHA256, raw);
                let mut id = [0u8; KEY_ID_LEN];
                id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
                let unbound = UnboundKey::new(&AES_256_GCM, raw).map_err(|_| "invalid AES-256 key".to_owned())?;
                Ok(SealKey { id, key: LessSafeKey::new(unbound) })
            })
            .collect::<Result<_, String>>()?;
        Ok(Keyring { keys, rng: SystemRandom::new() })
    }

    /// Builds a keyring from base64 keys as given on the command line.
    pub fn from_base64(keys: &[String]) -> Result<Keyring, String> {
        let raw = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let bytes = STANDARD
                    .decode(k.trim())
                    .map_err(|_| format!("key #{} is not base64; make one with `murmur keygen`", i + 1))?;
                <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
                    format!(
                        "key #{} is {} bytes, a key is {KEY_LEN}; make one with `murmur keygen`",
                        i + 1,
                        bytes.len()
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Keyring::new(&raw)
    }

    /// A fresh random key in base64, for `murmur keygen`.
    pub fn generate_base64() -> String {
        let mut raw = [0u8; KEY_LEN];
        // The system RNG failing means the OS cannot give randomness at all; there is no
        // safe fallback for key material.
        SystemRandom::new().fill(&mut raw).expect("the operating system random source works");
        STANDARD.encode(raw)
    }

    /// The id of the primary key: the first bytes of its SHA-256.
    pub fn primary_id(&self) -> [u8; KEY_ID_LEN] {
        self.keys[0].id
    }

    /// Seals `plaintext` under the primary key, authenticating `header` too. Returns
    /// `nonce || ciphertext || tag` appended to `out`.
    pub fn seal(&self, header: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("the operating system random source works");
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
        assert!(Keyring::from_base64(&["!!".into()]).expect_err("bad").contains("base64"));
        assert!(Keyring::from_base64(&["AAAA".into()]).expect_err("short").contains("3 bytes"));
        assert!(Keyring::from_base64(&[]).is_err());
    }
}
