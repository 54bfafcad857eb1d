//! Validated names. Logic never sees a raw string for a service, tag, instance or node:
//! each is parsed once into a newtype whose invariant is "a valid lowercase DNS label",
//! because every one of them ends up inside a DNS name (`tag.orders.myapp.local`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::NameError;
use crate::limits::{MAX_ATTR_KEY_LEN, MAX_LABEL_LEN};

/// Cuts a refused name to a length fit for an error message.
fn shown(name: &str) -> String {
    name.chars().take(80).collect()
}

/// Checks that `name` is a DNS label: 1..=63 of `a-z 0-9 -`, not starting or ending with
/// `-`. Upper case is folded to lower case first, as DNS does.
fn parse_label(kind: &'static str, name: &str) -> Result<String, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > MAX_LABEL_LEN {
        return Err(NameError::TooLong { kind, name: shown(name), max: MAX_LABEL_LEN });
    }
    let lower = name.to_ascii_lowercase();
    let ok_chars = lower.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok_chars || lower.starts_with('-') || lower.ends_with('-') {
        return Err(NameError::BadChar { kind, name: shown(name) });
    }
    Ok(lower)
}

macro_rules! label_newtype {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates a name (upper case is folded to lower case).
            pub fn new(name: &str) -> Result<Self, NameError> {
                parse_label($kind, name).map(Self)
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(name: String) -> Result<Self, NameError> {
                Self::new(&name)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(name: &str) -> Result<Self, NameError> {
                Self::new(name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

label_newtype!(
    /// A service name, such as `orders`.
    ServiceName,
    "service name"
);
label_newtype!(
    /// A tag on an instance, such as `canary`; usable as a DNS filter label.
    Tag,
    "tag"
);
label_newtype!(
    /// One instance of a service, unique in the cluster, such as `web-1-8080`.
    InstanceId,
    "instance id"
);
label_newtype!(
    /// The name of a node (one agent), such as its hostname.
    NodeName,
    "node name"
);

/// An attribute key: `A-Z a-z 0-9 _ . -`, at most [`MAX_ATTR_KEY_LEN`] bytes. Attributes
/// never reach DNS names, so they keep their case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AttrKey(String);

impl AttrKey {
    /// Parses and validates an attribute key.
    pub fn new(key: &str) -> Result<Self, NameError> {
        const KIND: &str = "attribute key";
        if key.is_empty() {
            return Err(NameError::Empty { kind: KIND });
        }
        if key.len() > MAX_ATTR_KEY_LEN {
            return Err(NameError::TooLong { kind: KIND, name: shown(key), max: MAX_ATTR_KEY_LEN });
        }
        if !key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
            return Err(NameError::BadChar { kind: KIND, name: shown(key) });
        }
        Ok(Self(key.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AttrKey {
    type Error = NameError;
    fn try_from(key: String) -> Result<Self, NameError> {
        Self::new(&key)
    }
}

impl From<AttrKey> for String {
    fn from(key: AttrKey) -> String {
        key.0
    }
}

impl fmt::Display for AttrKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_fold_case_and_refuse_bad_input() {
        assert_eq!(ServiceName::new("Orders").map(|s| s.to_string()), Ok("orders".into()));
        assert!(ServiceName::new("").is_err());
        assert!(ServiceName::new("-a").is_err());
        assert!(ServiceName::new("a-").is_err());
        assert!(ServiceName::new("a.b").is_err());
        assert!(ServiceName::new("a_b").is_err());
        assert!(ServiceName::new(&"a".repeat(64)).is_err());
        assert!(ServiceName::new(&"a".repeat(63)).is_ok());
        assert!(Tag::new("v2-canary").is_ok());
        assert!(NodeName::new("é").is_err());
    }

    #[test]
    fn attribute_keys_keep_case() {
        assert_eq!(AttrKey::new("Az_1.x-y").map(|k| k.to_string()), Ok("Az_1.x-y".into()));
        assert!(AttrKey::new("a b").is_err());
        assert!(AttrKey::new("").is_err());
    }
}
