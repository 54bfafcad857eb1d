//! Configuration errors. Every one names the field it is about, in the form the user
//! wrote it (`--dns-listen`, `MURMUR_DNS_LISTEN`, `dns.listen`), because the fix is
//! always "change that field".

use thiserror::Error;

/// A configuration error; `main` prints it and exits with status 2.
#[derive(Debug, Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The field, as the user wrote it.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}
