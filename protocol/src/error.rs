//! The errors of decoding untrusted input. Small, closed and `#[non_exhaustive]` so a
//! caller can count them by kind without matching on text.

use thiserror::Error;

/// Why a name (service, tag, instance, node, attribute key) was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name was empty.
    #[error("{kind} is empty")]
    Empty {
        /// Which kind of name it was.
        kind: &'static str,
    },
    /// The name was longer than its limit.
    #[error("{kind} `{name}` is longer than {max} bytes")]
    TooLong {
        /// Which kind of name it was.
        kind: &'static str,
        /// The refused name (cut to a readable length).
        name: String,
        /// The limit.
        max: usize,
    },
    /// The name had a character that is not allowed.
    #[error("{kind} `{name}` may hold only a-z, 0-9 and '-', and may not start or end with '-'")]
    BadChar {
        /// Which kind of name it was.
        kind: &'static str,
        /// The refused name (cut to a readable length).
        name: String,
    },
}

/// Which protocol limit a decoded record breaks.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LimitError {
    /// A text field is longer than its limit.
    #[error("{what} longer than {max} bytes")]
    TooLong {
        /// The field ("zone", "origin").
        what: &'static str,
        /// Its limit.
        max: usize,
    },
    /// More items than allowed.
    #[error("more than {max} {what}")]
    TooMany {
        /// The items ("tags", "keys").
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// An attribute value over its limit.
    #[error("attribute {key} longer than {max} bytes")]
    AttributeTooLong {
        /// The attribute's key.
        key: String,
        /// The limit.
        max: usize,
    },
    /// A keyring record without a key.
    #[error("a keyring without a key")]
    NoKey,
    /// A keyring record holding one key twice.
    #[error("a key appears twice")]
    DuplicateKey,
}

/// Why a gossip value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The value is longer than [`crate::limits::MAX_VALUE_LEN`].
    #[error("value of {0} bytes is over the limit")]
    TooLong(usize),
    /// The value is not base64.
    #[error("value is not base64")]
    NotBase64,
    /// The value is empty once unwrapped.
    #[error("value is empty")]
    Empty,
    /// The value was written with a schema version this build does not read.
    #[error("value has schema version {0}, this agent reads {expected}", expected = crate::SCHEMA_VERSION)]
    Version(u8),
    /// The bytes do not form a record (bad bincode, a bad name inside, trailing bytes).
    #[error("value does not decode: {0}")]
    Malformed(String),
    /// The record decodes but breaks a protocol limit.
    #[error("value breaks a limit: {0}")]
    Limit(#[from] LimitError),
}
