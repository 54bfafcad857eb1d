//! The membership wire format: SWIM probes and their answers, the rumors that ride on
//! them, the anti-entropy exchange and the state pulls. Pure: bytes in, values out.
//!
//! ```text
//! datagram plaintext = [SWIM_VERSION: u8][Message][Rumor]*
//! ```
//!
//! The message and every rumor are bincode 2 (standard: varints, little-endian). Rumors
//! are appended one after another to the end of the datagram, each decodable on its own,
//! so a sender can fill a datagram from cached rumor bytes and a receiver can use every
//! rumor before one it cannot read. The version byte lets a later format roll through a
//! cluster: a datagram of another version is refused whole, never misread.
//!
//! Every datagram of a probe or of gossip fits [`MAX_MESSAGE`]; a state reply that holds
//! one value larger than that is the one exception (the transport chunks it).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::limits::{MAX_LABEL_LEN, MAX_VALUE_LEN};

/// The membership wire version this build speaks.
pub const SWIM_VERSION: u8 = 2;

/// Largest plaintext of one probe or gossip datagram, in bytes. With the sealed
/// transport's 48 bytes and 28 of IP and UDP, a datagram stays under 1,400 bytes on the
/// wire, below any path MTU murmur expects, so nothing is fragmented.
pub const MAX_MESSAGE: usize = 1_300;

/// Largest plaintext a decoder accepts: room for a state reply with one maximal value.
pub const MAX_DECODE: usize = MAX_VALUE_LEN + 2 * 1024;

/// Buckets of the anti-entropy digest.
pub const SYNC_BUCKETS: usize = 64;

/// Longest gossip key, in bytes.
pub const MAX_KEY_LEN: usize = 128;

/// Why a datagram was refused. Small and closed so it can be counted by kind.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SwimError {
    /// Empty, or larger than [`MAX_DECODE`].
    #[error("datagram of {0} bytes is empty or over the limit")]
    Size(usize),
    /// Another wire version.
    #[error("membership wire version {0}, this agent speaks {SWIM_VERSION}")]
    Version(u8),
    /// The message does not decode, or breaks a limit.
    #[error("membership message does not decode: {0}")]
    Malformed(String),
}

/// A member's liveness, as the SWIM rules order it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Answers probes.
    Alive,
    /// Missed a probe cycle; dead unless it refutes before the suspicion ends.
    Suspect,
    /// Declared dead.
    Dead,
    /// Left gracefully.
    Left,
}

/// One member as one agent knows it: the unit of membership rumors, joins and repair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Node name.
    pub name: String,
    /// Start time of the member's process (unix ms): a restart is a new generation and
    /// replaces every older one.
    pub generation: u64,
    /// Raised by the member itself to refute a suspicion or a death.
    pub incarnation: u32,
    /// Liveness.
    pub status: Status,
    /// Gossip address.
    pub addr: SocketAddr,
    /// The member's state version as far as the writer of this entry holds it.
    pub version: u64,
}

/// A piggybacked change. Each is retransmitted a bounded number of times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rumor {
    /// A member's liveness changed; `by` is who says so (the accuser for a suspicion or
    /// a death, the member itself otherwise), so independent confirmations can be told
    /// apart.
    Member {
        /// The member.
        entry: Entry,
        /// Who says so.
        by: String,
    },
    /// One key of a member's state changed.
    Update(Update),
}

/// One key of one member's state, at a version of that member's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// The member that owns the key.
    pub owner: String,
    /// The owner's generation.
    pub generation: u64,
    /// The owner's state version at which this value was written.
    pub version: u64,
    /// The key.
    pub key: String,
    /// The value; `None` is a deletion.
    pub value: Option<String>,
}

/// The message a datagram carries before its rumors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Sender's node name.
    pub from: String,
    /// What it is.
    pub body: Body,
}

/// The kinds of message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A probe. `target` names the member it is meant for, so a new process on a reused
    /// address does not answer for the old one.
    Ping {
        /// Sequence number, echoed in the answer.
        seq: u32,
        /// The member probed.
        target: String,
        /// How many members the sender holds up, itself included: a receiver that holds
        /// another count has missed a join or a death (or the sender has) and starts an
        /// anti-entropy exchange with it.
        members: u32,
    },
    /// The answer to a ping; `version` is the sender's own state version.
    Ack {
        /// The ping's sequence number.
        seq: u32,
        /// The sender's state version.
        version: u64,
    },
    /// Asks the receiver to probe `target` on the sender's behalf.
    PingReq {
        /// Sequence number of the asker's probe.
        seq: u32,
        /// The member to probe.
        target: String,
        /// Its address.
        addr: SocketAddr,
    },
    /// Sent by a helper of an indirect probe whose target did not answer in time, so
    /// the asker can tell its own bad network from a dead target (Lifeguard).
    Nack {
        /// The asker's sequence number.
        seq: u32,
    },
    /// Rumors only.
    Gossip,
    /// Anti-entropy, and joining: the sender's digest, a hash per bucket of members.
    /// The sender's own entry rides along so a seed learns a joiner at once.
    Sync {
        /// Exchange id.
        seq: u32,
        /// Whether this is the answer to a `Sync` (then no answer is sent back).
        reply: bool,
        /// The sender itself.
        me: Entry,
        /// One hash per bucket, [`SYNC_BUCKETS`] of them.
        buckets: Vec<u64>,
    },
    /// Entries of the buckets where two digests differ.
    Members {
        /// Exchange id.
        seq: u32,
        /// The entries.
        entries: Vec<Entry>,
    },
    /// Asks for a member's state above a version.
    StateRequest {
        /// Request id.
        seq: u32,
        /// The member.
        owner: String,
        /// Its generation.
        generation: u64,
        /// The version the asker holds.
        from: u64,
    },
    /// A member's keys above the asked version, in version order. Holding these, the
    /// asker holds every key of that member up to `to`.
    StateReply {
        /// The request id.
        seq: u32,
        /// The member.
        owner: String,
        /// Its generation.
        generation: u64,
        /// The version the asker now holds completely.
        to: u64,
        /// Removals at or below this version are forgotten by the sender (their
        /// tombstones outlived the grace): an asker that holds less than this may hold
        /// keys that are gone, and must refetch the member's state from the start.
        floor: u64,
        /// The keys, ascending by version.
        updates: Vec<KeyValue>,
    },
}

/// One key with its version, inside a state reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// Version at which it was written.
    pub version: u64,
    /// The key.
    pub key: String,
    /// The value; `None` is a deletion.
    pub value: Option<String>,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODE>()
}

/// Encodes a message (without rumors) behind the version byte.
pub fn encode_message(message: &Message) -> Vec<u8> {
    let mut out = vec![SWIM_VERSION];
    // Encoding our own values into a Vec fails only past the size limit, and messages
    // are built within it; an empty result is refused by every decoder.
    match bincode::serde::encode_to_vec(message, config()) {
        Ok(body) => out.extend_from_slice(&body),
        Err(_) => out.clear(),
    }
    out
}

/// Encodes one rumor, to be appended to a datagram.
pub fn encode_rumor(rumor: &Rumor) -> Vec<u8> {
    bincode::serde::encode_to_vec(rumor, config()).unwrap_or_default()
}

/// Decodes a datagram's plaintext: its message and every rumor up to the first one that
/// does not decode (those after it are lost; the message and the earlier rumors stand).
pub fn decode(bytes: &[u8]) -> Result<(Message, Vec<Rumor>), SwimError> {
    if bytes.is_empty() || bytes.len() > MAX_DECODE {
        return Err(SwimError::Size(bytes.len()));
    }
    if bytes[0] != SWIM_VERSION {
        return Err(SwimError::Version(bytes[0]));
    }
    let (message, used): (Message, usize) =
        bincode::serde::decode_from_slice(&bytes[1..], config()).map_err(|e| SwimError::Malformed(e.to_string()))?;
    message.check()?;
    let mut rest = &bytes[1 + used..];
    let mut rumors = Vec::new();
    while !rest.is_empty() {
        let Ok((rumor, used)) = bincode::serde::decode_from_slice::<Rumor, _>(rest, config()) else {
            break;
        };
        if rumor.check().is_err() {
            break;
        }
        rumors.push(rumor);
        rest = &rest[used..];
    }
    Ok((message, rumors))
}

fn check_name(name: &str) -> Result<(), SwimError> {
    if name.is_empty() || name.len() > MAX_LABEL_LEN {
        return Err(SwimError::Malformed(format!("node name of {} bytes", name.len())));
    }
    Ok(())
}

fn check_key_value(key: &str, value: Option<&str>) -> Result<(), SwimError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(SwimError::Malformed(format!("key of {} bytes", key.len())));
    }
    if value.is_some_and(|v| v.len() > MAX_VALUE_LEN) {
        return Err(SwimError::Malformed("value over the limit".into()));
    }
    Ok(())
}

impl Entry {
    fn check(&self) -> Result<(), SwimError> {
        check_name(&self.name)
    }
}

impl Rumor {
    fn check(&self) -> Result<(), SwimError> {
        match self {
            Rumor::Member { entry, by } => {
                entry.check()?;
                check_name(by)
            }
            Rumor::Update(u) => {
                check_name(&u.owner)?;
                check_key_value(&u.key, u.value.as_deref())
            }
        }
    }
}

impl Message {
    fn check(&self) -> Result<(), SwimError> {
        check_name(&self.from)?;
        match &self.body {
            Body::Ping { target, .. } | Body::PingReq { target, .. } => check_name(target),
            Body::Sync { me, buckets, .. } => {
                me.check()?;
                if buckets.len() != SYNC_BUCKETS {
                    return Err(SwimError::Malformed(format!("{} digest buckets", buckets.len())));
                }
                Ok(())
            }
            Body::Members { entries, .. } => entries.iter().try_for_each(Entry::check),
            Body::StateRequest { owner, .. } => check_name(owner),
            Body::StateReply { owner, updates, .. } => {
                check_name(owner)?;
                updates.iter().try_for_each(|kv| check_key_value(&kv.key, kv.value.as_deref()))
            }
            Body::Ack { .. } | Body::Nack { .. } | Body::Gossip => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Entry {
        Entry {
            name: name.into(),
            generation: 1_764_000_000_000,
            incarnation: 3,
            status: Status::Suspect,
            addr: "127.0.0.1:7946".parse().expect("valid"),
            version: 12,
        }
    }

    fn every_body() -> Vec<Body> {
        vec![
            Body::Ping { seq: 7, target: "b".into(), members: 12 },
            Body::Ack { seq: 7, version: 99 },
            Body::PingReq { seq: 8, target: "c".into(), addr: "[::1]:1".parse().expect("valid") },
            Body::Nack { seq: 8 },
            Body::Gossip,
            Body::Sync { seq: 1, reply: true, me: entry("a"), buckets: vec![5; SYNC_BUCKETS] },
            Body::Members { seq: 1, entries: vec![entry("x"), entry("y")] },
            Body::StateRequest { seq: 2, owner: "x".into(), generation: 4, from: 10 },
            Body::StateReply {
                seq: 2,
                owner: "x".into(),
                generation: 4,
                to: 12,
                floor: 3,
                updates: vec![
                    KeyValue { version: 11, key: "i/x-80".into(), value: Some("AQID".into()) },
                    KeyValue { version: 12, key: "h/x-80".into(), value: None },
                ],
            },
        ]
    }

    #[test]
    fn every_message_round_trips_with_rumors() {
        let rumors = vec![
            Rumor::Member { entry: entry("d"), by: "a".into() },
            Rumor::Update(Update {
                owner: "d".into(),
                generation: 2,
                version: 5,
                key: "h/d-1".into(),
                value: Some("x".into()),
            }),
        ];
        for body in every_body() {
            let message = Message { from: "a".into(), body };
            let mut bytes = encode_message(&message);
            for r in &rumors {
                bytes.extend(encode_rumor(r));
            }
            assert_eq!(decode(&bytes), Ok((message, rumors.clone())));
        }
    }

    #[test]
    fn a_ping_is_small() {
        let ping = encode_message(&Message {
            from: "web-1234".into(),
            body: Body::Ping { seq: 123_456, target: "orders-9".into(), members: 1000 },
        });
        assert!(ping.len() < 32, "{} bytes", ping.len());
    }

    #[test]
    fn garbage_and_other_versions_are_refused_without_panic() {
        assert_eq!(decode(&[]), Err(SwimError::Size(0)));
        assert_eq!(decode(&[9, 1, 2]), Err(SwimError::Version(9)));
        assert!(matches!(decode(&[SWIM_VERSION, 0xff, 0xff]), Err(SwimError::Malformed(_))));
        let big = vec![SWIM_VERSION; MAX_DECODE + 1];
        assert!(matches!(decode(&big), Err(SwimError::Size(_))));
        // Every prefix and every one-byte corruption of a valid datagram decodes or fails cleanly.
        let mut bytes = encode_message(&Message { from: "a".into(), body: every_body().remove(6) });
        bytes.extend(encode_rumor(&Rumor::Member { entry: entry("q"), by: "q".into() }));
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut]);
        }
        for i in 1..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x5a;
            let _ = decode(&bad);
        }
    }

    #[test]
    fn limits_are_checked() {
        let long = "n".repeat(MAX_LABEL_LEN + 1);
        let bytes = encode_message(&Message { from: long, body: Body::Gossip });
        assert!(matches!(decode(&bytes), Err(SwimError::Malformed(_))));
        let bytes = encode_message(&Message {
            from: "a".into(),
            body: Body::Sync { seq: 1, reply: false, me: entry("a"), buckets: vec![0; 3] },
        });
        assert!(matches!(decode(&bytes), Err(SwimError::Malformed(_))));
        // A rumor that breaks a limit ends the rumors; the message still stands.
        let mut bytes = encode_message(&Message { from: "a".into(), body: Body::Gossip });
        bytes.extend(encode_rumor(&Rumor::Member { entry: entry("ok"), by: "a".into() }));
        bytes.extend(encode_rumor(&Rumor::Member { entry: entry(""), by: "a".into() }));
        let (_, rumors) = decode(&bytes).expect("decodes");
        assert_eq!(rumors.len(), 1);
    }
}
