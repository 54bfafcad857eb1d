//! Configuration errors. Every one names the field it is about, in the form the user
//! wrote it (`--dns-listen`, `MURMUR_DNS_LISTEN`, `dns.listen`), because the fix is
//! always "change that field". Values checked after the layers are merged (where the
//! source is no longer known) are named by their flag, and the message also names the
//! variable and the file key that set the same value.

use thiserror::Error;

/// A configuration error; `main` prints it and exits with status 2.
#[derive(Debug, Error)]
#[error("{field}{}: {message}", also(field))]
pub struct ConfigError {
    /// The field, as the user wrote it (or its flag, for merged values).
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// The other spellings of a flag whose value is checked after merging, from the
/// settings table.
fn also(field: &str) -> String {
    match super::settings::Setting::by_flag(field) {
        Some(s) => format!(" (or {}, or {} in the config file)", s.env, s.toml),
        None => String::new(),
    }
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self { field: field.into(), message: message.to_string() }
    }
}

/// `value`, when it lies within `lo..=hi`; else an error about `flag` that says
/// "must be between {range}".
pub fn within<T: PartialOrd>(flag: &str, value: T, lo: T, hi: T, range: &str) -> Result<T, ConfigError> {
    if value < lo || value > hi {
        return Err(ConfigError::new(flag, format!("must be between {range}")));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_fields_name_every_spelling() {
        let e = ConfigError::new("--gossip-key", "no key");
        assert_eq!(e.to_string(), "--gossip-key (or MURMUR_GOSSIP_KEYS, or gossip.keys in the config file): no key");
        assert_eq!(ConfigError::new("dns.listen", "bad").to_string(), "dns.listen: bad");
    }
}
