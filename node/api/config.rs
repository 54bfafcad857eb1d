//! The admin API's settings, checked: the token (from its value or its file), the host
//! names answered, the registration caps.

use std::net::SocketAddr;

use crate::config::{ConfigError, Settings};
use crate::local::RegistrationLimits;

/// Admin API settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The token changes must carry, when one is set.
    pub token: Option<ApiToken>,
    /// Host names answered besides IP addresses and `localhost` (lowercase).
    pub hosts: Vec<String>,
    /// What one agent carries at most: API registrations past it are refused.
    pub limits: RegistrationLimits,
}

/// The API token. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    /// Whether `presented` is the token, in time that does not depend on where they
    /// differ.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl Config {
    /// The API settings: the token from its value or its file (not both), the extra host
    /// names checked, the registration caps.
    pub fn from_settings(s: &Settings) -> Result<Config, ConfigError> {
        let token = match (&s.api_token, &s.api_token_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new("--api-token", "set either the token or --api-token-file, not both"))
            }
            (Some(t), None) => Some(("--api-token", t.clone())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new("--api-token-file", format!("cannot read {}: {e}", path.display()))
                })?;
                Some(("--api-token-file", text.lines().next().unwrap_or_default().trim().to_owned()))
            }
            (None, None) => None,
        };
        let token = match token {
            Some((field, t)) if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(ConfigError::new(field, "the token must be non-empty printable ASCII, without spaces"))
            }
            Some((_, t)) => Some(ApiToken(t)),
            None => None,
        };
        let hosts = s
            .api_hosts
            .iter()
            .flatten()
            .map(|h| {
                let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
                let ok = !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                ok.then_some(h.clone())
                    .ok_or_else(|| ConfigError::new("--api-host", format!("`{h}` is not a host name")))
            })
            .collect::<Result<_, _>>()?;
        if s.max_instances == 0 {
            return Err(ConfigError::new("--max-instances", "must be at least 1"));
        }
        if s.registration_rate == 0 {
            return Err(ConfigError::new("--registration-rate", "must be at least 1 a second"));
        }
        let limits = RegistrationLimits {
            instances: s.max_instances,
            attribute_bytes: s.max_attribute_bytes,
            per_second: s.registration_rate,
        };
        Ok(Config { listen: s.api_listen, token, hosts, limits })
    }
}
