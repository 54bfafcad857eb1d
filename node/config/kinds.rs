//! How one setting's text becomes its value, the same way from a flag, a `MURMUR_*`
//! variable and a TOML key: each row of the settings table names one [`Kind`], and every
//! error names the spelling the user wrote.

use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use murmur_protocol::ServiceName;

use super::error::ConfigError;
use super::file::{file_service, file_upstream};
use super::spec::{parse_duration, parse_service_spec, ServiceSpec, SpecError};
use super::upstream::{parse_upstream_spec, parse_vip_range, UpstreamSpec};

/// How a setting is given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `--flag VALUE`, once (the last one wins).
    One,
    /// `--flag VALUE`, repeatable; each occurrence is one item of the list.
    Many,
    /// `--flag`, without a value.
    Switch,
}

/// The parser of one setting.
pub(super) trait Kind {
    /// What the setting holds once parsed.
    type Value;
    /// How the flag is given.
    const SHAPE: Shape = Shape::One;

    /// From the text of an environment variable (or of one flag).
    fn parse(field: &str, text: &str) -> Result<Self::Value, ConfigError>;

    /// From the values given to the flag, in order.
    fn from_flags(field: &str, given: &[String]) -> Result<Self::Value, ConfigError> {
        Self::parse(field, given.last().map(String::as_str).unwrap_or_default())
    }

    /// From a TOML value: a string is parsed as the variable's text would be, and a
    /// number or a boolean as the text TOML writes for it.
    fn from_toml(field: &str, value: &toml::Value) -> Result<Self::Value, ConfigError> {
        match value {
            toml::Value::String(s) => Self::parse(field, s),
            toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                Self::parse(field, &value.to_string())
            }
            _ => Err(ConfigError::new(field, "must be a string or a number")),
        }
    }
}

/// Parses one value with its `FromStr`, naming the field on failure.
pub(crate) fn parse_field<T: FromStr>(field: &str, text: &str) -> Result<T, ConfigError> {
    text.trim().parse().map_err(|_| ConfigError::new(field, format!("`{text}` is not a valid value")))
}

/// Any `FromStr` value: addresses, numbers.
pub(super) struct Parsed<T>(PhantomData<T>);

impl<T: FromStr> Kind for Parsed<T> {
    type Value = T;
    fn parse(field: &str, text: &str) -> Result<T, ConfigError> {
        parse_field(field, text)
    }
}

/// Free text, taken as given.
pub(super) struct Text;

impl Kind for Text {
    type Value = String;
    fn parse(_: &str, text: &str) -> Result<String, ConfigError> {
        Ok(text.to_owned())
    }
}

/// A file path (or, for the TLS settings, the PEM text itself).
pub(super) struct Path;

impl Kind for Path {
    type Value = PathBuf;
    fn parse(_: &str, text: &str) -> Result<PathBuf, ConfigError> {
        Ok(PathBuf::from(text))
    }
}

/// On or off: a bare flag, `true`/`false` in TOML, `1`/`0`, `true`/`false` or
/// `yes`/`no` in a variable.
pub(super) struct Switch;

impl Kind for Switch {
    type Value = bool;
    const SHAPE: Shape = Shape::Switch;
    fn parse(field: &str, text: &str) -> Result<bool, ConfigError> {
        match text.trim() {
            "1" | "true" | "yes" => Ok(true),
            "0" | "false" | "no" | "" => Ok(false),
            _ => Err(ConfigError::new(field, format!("`{text}` is not true or false"))),
        }
    }
    fn from_flags(_: &str, _: &[String]) -> Result<bool, ConfigError> {
        Ok(true)
    }
}

/// A duration: `250ms`, `2s`, `5m`, `1h` (a bare number is seconds).
pub(super) struct Dur;

impl Kind for Dur {
    type Value = Duration;
    fn parse(field: &str, text: &str) -> Result<Duration, ConfigError> {
        parse_duration(text).map_err(|m| ConfigError::new(field, m))
    }
}

/// Longest DNS TTL accepted: answers must follow the live replica.
const MAX_DNS_TTL_SECS: u64 = 3600;

/// A DNS TTL: a duration of whole seconds, at most an hour (DNS has no finer unit).
pub(super) struct Ttl;

impl Kind for Ttl {
    type Value = u32;
    fn parse(field: &str, text: &str) -> Result<u32, ConfigError> {
        let d = Dur::parse(field, text)?;
        if d.subsec_nanos() != 0 || d.as_secs() > MAX_DNS_TTL_SECS {
            return Err(ConfigError::new(field, format!("must be whole seconds from 0 to {MAX_DNS_TTL_SECS}s")));
        }
        Ok(d.as_secs() as u32)
    }
}

/// A service name (a DNS label).
pub(super) struct Service;

impl Kind for Service {
    type Value = ServiceName;
    fn parse(field: &str, text: &str) -> Result<ServiceName, ConfigError> {
        ServiceName::new(text).map_err(|e| ConfigError::new(field, e))
    }
}

/// A loopback range, `A.B.C.D/N`: its first usable address and how many there are.
pub(super) struct VipRange;

impl Kind for VipRange {
    type Value = (Ipv4Addr, u32);
    fn parse(field: &str, text: &str) -> Result<(Ipv4Addr, u32), ConfigError> {
        parse_vip_range(text).map_err(|m| ConfigError::new(field, m))
    }
}

/// One item of a list setting.
pub(super) trait Item: Sized {
    /// From its text.
    fn parse_item(field: &str, text: &str) -> Result<Self, ConfigError>;

    /// From item `i` of a TOML array (a string, unless the item says otherwise).
    fn from_toml_item(field: &str, i: usize, value: &toml::Value) -> Result<Self, ConfigError> {
        match value {
            toml::Value::String(s) => Self::parse_item(field, s),
            _ => Err(ConfigError::new(format!("{field}[{i}]"), "must be a string")),
        }
    }
}

impl Item for String {
    fn parse_item(_: &str, text: &str) -> Result<Self, ConfigError> {
        Ok(text.to_owned())
    }
}

impl Item for SocketAddr {
    fn parse_item(field: &str, text: &str) -> Result<Self, ConfigError> {
        parse_field(field, text)
    }
}

impl Item for ServiceSpec {
    fn parse_item(field: &str, text: &str) -> Result<Self, ConfigError> {
        parse_service_spec(text).map_err(|m| ConfigError::new(field, m))
    }
    fn from_toml_item(field: &str, i: usize, value: &toml::Value) -> Result<Self, ConfigError> {
        file_service(field, i, value)
    }
}

impl Item for UpstreamSpec {
    fn parse_item(field: &str, text: &str) -> Result<Self, ConfigError> {
        parse_upstream_spec(text).map_err(|m| ConfigError::new(field, m))
    }
    fn from_toml_item(field: &str, i: usize, value: &toml::Value) -> Result<Self, ConfigError> {
        file_upstream(field, i, value)
    }
}

/// A list: a repeated flag, a variable separated by `SEP`, a TOML array. A list given in
/// a higher layer replaces the lower one's rather than extending it.
pub(super) struct List<T, const SEP: char>(PhantomData<T>);

impl<T: Item, const SEP: char> Kind for List<T, SEP> {
    type Value = Vec<T>;
    const SHAPE: Shape = Shape::Many;
    fn parse(field: &str, text: &str) -> Result<Vec<T>, ConfigError> {
        text.split(SEP).map(str::trim).filter(|s| !s.is_empty()).map(|s| T::parse_item(field, s)).collect()
    }
    fn from_flags(field: &str, given: &[String]) -> Result<Vec<T>, ConfigError> {
        given.iter().map(|s| T::parse_item(field, s)).collect()
    }
    fn from_toml(field: &str, value: &toml::Value) -> Result<Vec<T>, ConfigError> {
        match value {
            toml::Value::Array(items) => {
                items.iter().enumerate().map(|(i, v)| T::from_toml_item(field, i, v)).collect()
            }
            _ => Err(ConfigError::new(field, "must be a list")),
        }
    }
}

/// A comma-separated list in a variable.
pub(super) type Commas<T> = List<T, ','>;
/// A `;`-separated list in a variable, for items that hold commas themselves.
pub(super) type Specs<T> = List<T, ';'>;

/// Where peers reach this node: an IP and, optionally, a port other than the bind port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advertise {
    /// The advertised IP.
    pub ip: IpAddr,
    /// The advertised gossip port, when it differs from the bound one (NAT).
    pub port: Option<u16>,
}

impl FromStr for Advertise {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self { ip: addr.ip(), port: Some(addr.port()) });
        }
        let shape = || SpecError::Shape { text: s.to_owned(), expected: "IP or IP:PORT" };
        s.parse::<IpAddr>().map(|ip| Self { ip, port: None }).map_err(|_| shape())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_reads_a_kind_the_same_way() {
        assert_eq!(Dur::parse("--drain", "2s").expect("valid"), Duration::from_secs(2));
        let toml: toml::Value = toml::Value::String("250ms".into());
        assert_eq!(Dur::from_toml("gossip.drain", &toml).expect("valid"), Duration::from_millis(250));
        assert_eq!(Parsed::<u32>::from_toml("x", &toml::Value::Integer(3)).expect("valid"), 3);
        assert_eq!(Ttl::parse("--dns-ttl", "1.5s").expect_err("fraction").field, "--dns-ttl");
        assert_eq!(Ttl::parse("--dns-ttl", "2h").expect_err("too long").field, "--dns-ttl");
        assert!(Switch::parse("MURMUR_INSECURE", "yes").expect("valid"));
        assert_eq!(Switch::parse("MURMUR_INSECURE", "maybe").expect_err("bad").field, "MURMUR_INSECURE");
        let seeds = Commas::<String>::parse("MURMUR_SEEDS", "a:1, b:2,,").expect("valid");
        assert_eq!(seeds, ["a:1", "b:2"]);
        let flags = Commas::<String>::from_flags("--seed", &["a:1,b:2".into()]).expect("valid");
        assert_eq!(flags, ["a:1,b:2"], "each flag is one item, commas and all");
        let array = toml::Value::Array(vec![toml::Value::Integer(1)]);
        assert_eq!(
            Commas::<String>::from_toml("gossip.seeds", &array).expect_err("not a string").field,
            "gossip.seeds[0]"
        );
        let err = Specs::<ServiceSpec>::parse("MURMUR_SERVICES", "web:80;db").expect_err("no port");
        assert_eq!(err.field, "MURMUR_SERVICES");
    }
}
