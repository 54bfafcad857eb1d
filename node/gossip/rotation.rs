//! Gossip key rotation at run time, pure: which keyring wins, and what a change asked for
//! through the API makes of this node's keyring.
//!
//! Every member gossips the keyring it applies under [`keys::KEYRING`]. Records are
//! ordered by `(epoch, origin)`, and a member adopts any record ranked above its own. A
//! change made on one member (install, use, remove) takes the next epoch, so it reaches
//! every member that can still open that member's gossip, including those that were
//! away, as a last-writer-wins register. A record carries the keys themselves; gossip
//! is sealed, and only members that hold a current key can read it. Serf's `keys`
//! command also sends new keys in its sealed query.
//!
//! The rules are Serf's. `use` needs the key on every live member, since a member
//! without it could no longer open what the others seal. `remove` refuses the primary,
//! and refuses a key that a live member still seals with. `force` skips the checks on
//! other members, never the local ones.
//!
//! [`keys::KEYRING`]: murmur_protocol::keys::KEYRING

use murmur_protocol::limits::MAX_KEYRING_KEYS;
use murmur_protocol::KeyringRecord;
use thiserror::Error;

use super::keyring::{key_id_hex, Keyring, KEY_LEN};
use super::MemberStatus;

/// A change to the cluster's keyring, as `murmur keyring` asks for it. `Debug` shows the
/// key's id, never the key.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// Add a key: every member opens datagrams sealed with it from then on.
    Install([u8; KEY_LEN]),
    /// Make a key that every member holds the primary: members seal with it.
    Use([u8; KEY_LEN]),
    /// Drop a key no member seals with any more.
    Remove([u8; KEY_LEN]),
}

impl std::fmt::Debug for KeyChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (verb, key) = match self {
            KeyChange::Install(k) => ("install", k),
            KeyChange::Use(k) => ("use", k),
            KeyChange::Remove(k) => ("remove", k),
        };
        write!(f, "{verb} {}", key_id_hex(key))
    }
}

/// Why a keyring change was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// Gossip runs without a keyring.
    #[error("gossip is not encrypted on this agent (--insecure): there is no keyring to change")]
    Insecure,
    /// The key is not base64 of 32 bytes, or the keys would not make a keyring.
    #[error(transparent)]
    BadKey(#[from] super::keyring::KeyError),
    /// No room for another key.
    #[error("the keyring holds {MAX_KEYRING_KEYS} keys already: remove one first (`murmur keyring remove`)")]
    Full,
    /// `use` or `remove` named a key this agent does not hold.
    #[error("key {0} is not in the keyring: install it first (`murmur keyring install`)")]
    NotInstalled(String),
    /// `remove` named this agent's primary key.
    #[error("key {0} is the primary key: make another key primary first (`murmur keyring use`)")]
    RemovePrimary(String),
    /// `use` named a key some live members do not hold yet.
    #[error(
        "key {key} is not on every live member yet ({} lack it: {}); wait until `murmur keyring list` \
         shows it on every member, or pass --force",
        members.len(),
        members.join(", ")
    )]
    NotEverywhere {
        /// The key's id.
        key: String,
        /// The members without it.
        members: Vec<String>,
    },
    /// `remove` named a key some live members still seal with.
    #[error(
        "key {key} is still the primary key of {}; make another key primary everywhere first \
         (`murmur keyring use`), or pass --force",
        members.join(", ")
    )]
    StillPrimary {
        /// The key's id.
        key: String,
        /// The members that seal with it.
        members: Vec<String>,
    },
    /// The gossip task has stopped.
    #[error("gossip has stopped")]
    Stopped,
}

/// One member's keyring as it gossips it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberKeys {
    /// The member's name.
    pub name: String,
    /// Its status as this agent sees it.
    pub status: MemberStatus,
    /// The keyring it applies; `None` when it gossips none (an agent from before
    /// keyring rotation, or a value that did not decode).
    pub record: Option<KeyringRecord>,
}

/// What every member holds, for `murmur keyring list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyringReport {
    /// This agent's keyring.
    pub local: KeyringRecord,
    /// Every member this agent knows, itself included, by name.
    pub members: Vec<MemberKeys>,
}

impl KeyringReport {
    /// The live members, the ones the rules count.
    pub fn alive(&self) -> impl Iterator<Item = &MemberKeys> {
        self.members.iter().filter(|m| m.status == MemberStatus::Alive)
    }
}

/// The keyring `change` makes of `applied`, made by node `me`, checked against what the
/// other members gossip.
pub fn plan(
    applied: &KeyringRecord,
    me: &str,
    change: &KeyChange,
    force: bool,
    members: &[MemberKeys],
) -> Result<KeyringRecord, KeyringError> {
    let mut keys = applied.keys.clone();
    let live = || members.iter().filter(|m| m.status == MemberStatus::Alive && m.name != me);
    match change {
        KeyChange::Install(key) => {
            if !keys.contains(key) {
                if keys.len() >= MAX_KEYRING_KEYS {
                    return Err(KeyringError::Full);
                }
                keys.push(*key);
            }
        }
        KeyChange::Use(key) => {
            let at = keys.iter().position(|k| k == key).ok_or_else(|| KeyringError::NotInstalled(key_id_hex(key)))?;
            let lacking: Vec<String> = live()
                .filter(|m| !m.record.as_ref().is_some_and(|r| r.keys.contains(key)))
                .map(|m| m.name.clone())
                .collect();
            if !lacking.is_empty() && !force {
                return Err(KeyringError::NotEverywhere { key: key_id_hex(key), members: lacking });
            }
            let k = keys.remove(at);
            keys.insert(0, k);
        }
        KeyChange::Remove(key) => {
            let at = keys.iter().position(|k| k == key).ok_or_else(|| KeyringError::NotInstalled(key_id_hex(key)))?;
            if at == 0 {
                return Err(KeyringError::RemovePrimary(key_id_hex(key)));
            }
            let sealing: Vec<String> = live()
                .filter(|m| m.record.as_ref().is_some_and(|r| r.keys.first() == Some(key)))
                .map(|m| m.name.clone())
                .collect();
            if !sealing.is_empty() && !force {
                return Err(KeyringError::StillPrimary { key: key_id_hex(key), members: sealing });
            }
            keys.remove(at);
        }
    }
    Ok(KeyringRecord { epoch: applied.epoch + 1, origin: me.to_owned(), keys })
}

/// The keyring to switch to when a member gossips `record`: `Some` when it ranks above
/// the one applied and is usable.
pub fn to_adopt(applied: &Keyring, record: &KeyringRecord) -> Option<Keyring> {
    let mine = applied.record();
    if record.rank() <= mine.rank() {
        return None;
    }
    applied.adopt(record).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; KEY_LEN] = [1; KEY_LEN];
    const B: [u8; KEY_LEN] = [2; KEY_LEN];

    fn rec(epoch: u64, origin: &str, keys: &[[u8; KEY_LEN]]) -> KeyringRecord {
        KeyringRecord { epoch, origin: origin.into(), keys: keys.to_vec() }
    }

    fn member(name: &str, status: MemberStatus, keys: Option<&[[u8; KEY_LEN]]>) -> MemberKeys {
        MemberKeys { name: name.into(), status, record: keys.map(|k| rec(0, "", k)) }
    }

    #[test]
    fn a_rotation_runs_install_use_remove_with_serfs_rules() {
        let start = rec(0, "", &[A]);
        let installed = plan(&start, "n1", &KeyChange::Install(B), false, &[]).expect("install");
        assert_eq!(installed, rec(1, "n1", &[A, B]));
        assert_eq!(plan(&installed, "n1", &KeyChange::Install(B), false, &[]).expect("again").keys, vec![A, B]);

        // `use` waits until every live member holds the key; dead ones do not count.
        let lagging = [
            member("n1", MemberStatus::Alive, Some(&[A, B])),
            member("n2", MemberStatus::Alive, Some(&[A])),
            member("n3", MemberStatus::Alive, None),
            member("n4", MemberStatus::Dead, Some(&[A])),
        ];
        let err = plan(&installed, "n1", &KeyChange::Use(B), false, &lagging).expect_err("n2 and n3 lack B");
        assert_eq!(err, KeyringError::NotEverywhere { key: key_id_hex(&B), members: vec!["n2".into(), "n3".into()] });
        assert!(err.to_string().contains("n2, n3"), "{err}");
        let used = plan(&installed, "n1", &KeyChange::Use(B), true, &lagging).expect("forced");
        assert_eq!(used, rec(2, "n1", &[B, A]));

        // `remove` refuses the primary, and a key another live member still seals with.
        assert_eq!(
            plan(&used, "n1", &KeyChange::Remove(B), true, &[]),
            Err(KeyringError::RemovePrimary(key_id_hex(&B)))
        );
        let sealing = [member("n2", MemberStatus::Alive, Some(&[A, B]))];
        assert!(matches!(
            plan(&used, "n1", &KeyChange::Remove(A), false, &sealing),
            Err(KeyringError::StillPrimary { .. })
        ));
        let done = [member("n2", MemberStatus::Alive, Some(&[B, A]))];
        assert_eq!(plan(&used, "n1", &KeyChange::Remove(A), false, &done), Ok(rec(3, "n1", &[B])));
        assert_eq!(
            plan(&rec(3, "n1", &[B]), "n1", &KeyChange::Use(A), false, &[]),
            Err(KeyringError::NotInstalled(key_id_hex(&A)))
        );
    }

    #[test]
    fn a_change_never_prints_its_key() {
        let shown = format!("{:?}", KeyChange::Install(A));
        assert_eq!(shown, format!("install {}", key_id_hex(&A)));
        assert!(!shown.contains(&super::super::keyring::key_base64(&A)));
    }

    #[test]
    fn the_keyring_holds_at_most_eight_keys() {
        let full: Vec<[u8; KEY_LEN]> = (0..MAX_KEYRING_KEYS as u8).map(|i| [i + 10; KEY_LEN]).collect();
        assert_eq!(plan(&rec(0, "", &full), "n", &KeyChange::Install(A), false, &[]), Err(KeyringError::Full));
    }

    #[test]
    fn only_a_higher_ranked_usable_record_is_adopted() {
        let mine = Keyring::from_record(&rec(2, "b", &[A])).expect("valid");
        assert!(to_adopt(&mine, &rec(2, "a", &[B])).is_none(), "lower origin at one epoch");
        assert!(to_adopt(&mine, &rec(1, "z", &[B])).is_none(), "older epoch");
        assert!(to_adopt(&mine, &rec(2, "b", &[A])).is_none(), "the same");
        assert!(to_adopt(&mine, &rec(3, "a", &[])).is_none(), "unusable");
        let next = to_adopt(&mine, &rec(3, "a", &[B, A])).expect("newer");
        assert_eq!(next.record(), rec(3, "a", &[B, A]));
    }
}
