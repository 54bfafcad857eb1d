//! The gossip key schema: which keys one node's chitchat state holds and what each one
//! means. Health lives under its own key beside its instance so that a health flap
//! resends a few bytes, not the whole instance record.

use crate::names::InstanceId;

/// Key of the node record ([`crate::NodeRecord`]).
pub const NODE: &str = "node";
/// Key set (to any value) by a node that leaves gracefully; peers drop it at once.
pub const LEFT: &str = "left";
/// Prefix of instance keys: `i/<instance id>` holds an [`crate::InstanceRecord`].
pub const INSTANCE_PREFIX: &str = "i/";
/// Prefix of health keys: `h/<instance id>` holds a [`crate::HealthRecord`].
pub const HEALTH_PREFIX: &str = "h/";
/// Key of the keyring this node applies ([`crate::KeyringRecord`]): how a rotation made
/// at run time reaches every member, and how an operator sees that it has.
pub const KEYRING: &str = "keyring";

/// A parsed gossip key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// The node record.
    Node,
    /// The node has left the cluster.
    Left,
    /// One service instance.
    Instance(InstanceId),
    /// The health of one service instance.
    Health(InstanceId),
    /// The node's keyring.
    Keyring,
    /// A key this version does not know (written by a newer agent): ignored.
    Unknown,
}

impl Key {
    /// Parses a key. Keys this version does not know parse as [`Key::Unknown`], so that
    /// newer agents can add keys without older ones failing.
    pub fn parse(key: &str) -> Key {
        if key == NODE {
            Key::Node
        } else if key == LEFT {
            Key::Left
        } else if key == KEYRING {
            Key::Keyring
        } else if let Some(id) = key.strip_prefix(INSTANCE_PREFIX) {
            InstanceId::new(id).map(Key::Instance).unwrap_or(Key::Unknown)
        } else if let Some(id) = key.strip_prefix(HEALTH_PREFIX) {
            InstanceId::new(id).map(Key::Health).unwrap_or(Key::Unknown)
        } else {
            Key::Unknown
        }
    }

    /// The key as it is stored in gossip.
    pub fn render(&self) -> String {
        match self {
            Key::Node => NODE.to_owned(),
            Key::Left => LEFT.to_owned(),
            Key::Keyring => KEYRING.to_owned(),
            Key::Instance(id) => format!("{INSTANCE_PREFIX}{id}"),
            Key::Health(id) => format!("{HEALTH_PREFIX}{id}"),
            Key::Unknown => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let id = InstanceId::new("web-1").expect("valid id");
        for key in [Key::Node, Key::Left, Key::Keyring, Key::Instance(id.clone()), Key::Health(id)] {
            assert_eq!(Key::parse(&key.render()), key);
        }
    }

    #[test]
    fn garbage_keys_are_unknown() {
        for key in ["", "i/", "h/-x", "i/a b", "zzz", "i/é"] {
            assert_eq!(Key::parse(key), Key::Unknown, "{key}");
        }
    }
}
