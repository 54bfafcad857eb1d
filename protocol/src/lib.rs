//! Everything that crosses the wire between murmur agents: the gossip key schema, the
//! records stored under those keys, and how they are encoded.
//!
//! This crate is pure. It never touches a socket, a file, a clock or a runtime: time
//! crosses the wire as unix milliseconds given by the caller. Every decoder takes bytes
//! (or text) from the network and returns a `Result`; none panics, and every length it
//! accepts has a named limit in [`limits`].

pub mod codec;
pub mod error;
pub mod frame;
pub mod keys;
pub mod limits;
pub mod names;
pub mod record;
pub mod swim;

pub use codec::{decode_value, encode_value};
pub use error::{DecodeError, LimitError, NameError};
pub use frame::{Frame, FrameError, Open, Refuse, RefuseCode, Transport};
pub use keys::Key;
pub use names::{AttrKey, InstanceId, NodeName, ServiceName, Tag};
pub use record::{Health, HealthRecord, InstanceRecord, KeyringRecord, NodeRecord};

/// The version of the gossip value schema this build writes. A value whose first byte
/// is another version is skipped by readers (and logged), never misread.
pub const SCHEMA_VERSION: u8 = 1;
