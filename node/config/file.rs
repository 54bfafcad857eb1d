//! The TOML config file. Its keys are the settings table's (`gossip.bind`, `dns.ttl`),
//! plus `[[service]]` and `[[upstream]]` tables; a key the table does not know is
//! refused, so that a typo is an error and not a silently ignored setting.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::error::ConfigError;
use super::kinds::parse_field;
use super::settings::{Layer, SETTINGS};
use super::spec::{parse_check_kind, parse_duration, ServiceSpec};
use super::upstream::{UpstreamOptions, UpstreamSpec};
use murmur_protocol::{AttrKey, InstanceId, ServiceName, Tag};

/// Parses the TOML text of a config file.
pub fn from_toml(text: &str) -> Result<Layer, ConfigError> {
    let table: toml::Table = toml::from_str(text)
        .map_err(|e| ConfigError::new("config file", e.to_string().trim_end().replace('\n', " ")))?;
    check_keys(&table, "")?;
    Layer::from_toml_table(&table)
}

/// Reads and parses a config file.
pub fn from_file(path: &Path) -> Result<Layer, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("--config", format!("cannot read {}: {e}", path.display())))?;
    from_toml(&text).map_err(|e| ConfigError::new(format!("{} ({})", e.field, path.display()), e.message))
}

/// The value at a dotted key such as `gossip.bind`.
pub(super) fn lookup<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let (head, rest) = match key.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (key, None),
    };
    let value = table.get(head)?;
    match rest {
        None => Some(value),
        Some(rest) => lookup(value.as_table()?, rest),
    }
}

/// Refuses every key that is neither a setting nor a table holding settings.
fn check_keys(table: &toml::Table, prefix: &str) -> Result<(), ConfigError> {
    for (k, v) in table {
        let key = format!("{prefix}{k}");
        if SETTINGS.iter().any(|s| s.toml == key) {
            continue;
        }
        let inner = format!("{key}.");
        let is_section = SETTINGS.iter().any(|s| s.toml.starts_with(&inner));
        match v.as_table() {
            Some(t) if is_section => check_keys(t, &inner)?,
            None if is_section => {
                return Err(ConfigError::new(
                    key,
                    format!("must be a table (`[{k}]` with its keys below), not a value"),
                ))
            }
            _ => return Err(ConfigError::new("config file", format!("unknown key `{key}`"))),
        }
    }
    Ok(())
}

/// A `[[service]]` table: the keys of `--service`, spelled out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileService {
    name: String,
    port: u16,
    id: Option<String>,
    address: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    weight: Option<u16>,
    #[serde(default)]
    allow: Vec<String>,
    check: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    failures: Option<u32>,
    successes: Option<u32>,
    deregister_after: Option<String>,
}

/// Item `i` of the `[[service]]` array (`field` is `service`).
pub(super) fn file_service(field: &str, i: usize, value: &toml::Value) -> Result<ServiceSpec, ConfigError> {
    let item = format!("{field}[{i}]");
    let s: FileService =
        value.clone().try_into().map_err(|e: toml::de::Error| ConfigError::new(&item, e.message().to_owned()))?;
    let at = |k: &str| format!("{item}.{k}");
    let duration = |k: &str, v: &str| parse_duration(v).map_err(|m| ConfigError::new(at(k), m));
    let name = ServiceName::new(&s.name).map_err(|e| ConfigError::new(at("name"), e))?;
    let mut spec = ServiceSpec::new(name, s.port);
    if let Some(id) = s.id {
        spec.id = Some(InstanceId::new(&id).map_err(|e| ConfigError::new(at("id"), e))?);
    }
    spec.address = s.address.map(|a| parse_field(&at("address"), &a)).transpose()?;
    spec.tags =
        s.tags.iter().map(|t| Tag::new(t).map_err(|e| ConfigError::new(at("tags"), e))).collect::<Result<_, _>>()?;
    for (k, v) in s.attributes {
        let key = AttrKey::new(&k).map_err(|e| ConfigError::new(at("attributes"), e))?;
        spec.attributes.insert(key, v);
    }
    if let Some(w) = s.weight {
        spec.weight = w;
    }
    spec.allow = s
        .allow
        .iter()
        .map(|a| ServiceName::new(a).map_err(|e| ConfigError::new(at("allow"), e)))
        .collect::<Result<_, _>>()?;
    if let Some(c) = s.check {
        spec.check.kind = parse_check_kind(&c).map_err(|m| ConfigError::new(at("check"), m))?;
    }
    if let Some(d) = s.interval {
        spec.check.interval = duration("interval", &d)?;
    }
    match s.timeout {
        Some(d) => spec.check.timeout = duration("timeout", &d)?,
        None => spec.check.fit_default_timeout(),
    }
    if let Some(n) = s.failures {
        spec.check.failures_before_critical = n;
    }
    if let Some(n) = s.successes {
        spec.check.successes_before_passing = n;
    }
    spec.check.deregister_critical_after = s.deregister_after.map(|d| duration("deregister_after", &d)).transpose()?;
    spec.validate().map_err(|m| ConfigError::new(&item, m))?;
    Ok(spec)
}

/// Item `i` of the `[[upstream]]` array (`field` is `upstream`): `service` and `port`,
/// then any `--upstream` option as a key (`alias = "o"`, `retries = 3`,
/// `connect-timeout = "1s"`), each set as that option is.
pub(super) fn file_upstream(field: &str, i: usize, value: &toml::Value) -> Result<UpstreamSpec, ConfigError> {
    let item = format!("{field}[{i}]");
    let table = value.as_table().ok_or_else(|| ConfigError::new(&item, "must be a table"))?;
    let text = |v: &toml::Value| match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let service = table.get("service").ok_or_else(|| ConfigError::new(&item, "needs `service`"))?;
    let port = table.get("port").ok_or_else(|| ConfigError::new(&item, "needs `port`"))?;
    let mut u = UpstreamOptions::new(&text(service), &text(port)).map_err(|m| ConfigError::new(&item, m))?;
    for (k, v) in table.iter().filter(|(k, _)| *k != "service" && *k != "port") {
        u.set(k, &text(v)).map_err(|m| ConfigError::new(format!("{item}.{k}"), m))?;
    }
    u.finish().map_err(|m| ConfigError::new(&item, m))
}
