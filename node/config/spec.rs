//! Parsers for the compact specs people type on a command line:
//! `--service NAME:PORT[,tags=a+b][,check=...][,interval=2s]...` and durations (`2s`).
//! Pure: text in, typed value or a [`SpecError`] out.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use murmur_protocol::limits::{MAX_ATTRIBUTES, MAX_ATTR_VALUE_LEN, MAX_TAGS};
use murmur_protocol::{AttrKey, InstanceId, ServiceName, Tag};

/// Why a spec (of a service, an upstream, a check, a duration) was refused. Each says
/// what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The text does not have the spec's shape.
    #[error("`{text}` must be {expected}")]
    Shape {
        /// What was written.
        text: String,
        /// The shape, such as `NAME:PORT` or `key=value`.
        expected: &'static str,
    },
    /// A name is not a valid name of its kind. (The reason is shown, not kept as a
    /// source: this error's text is whole.)
    #[error("{key}: {reason}")]
    Name {
        /// The option or part it was given as (`name`, `alias`, `allow`).
        key: &'static str,
        /// What is wrong with it.
        reason: murmur_protocol::NameError,
    },
    /// An option's value is not of its type.
    #[error("{key} `{value}` is not {expected}")]
    Value {
        /// The option (`port`, `retries`, `proto`).
        key: String,
        /// What was written.
        value: String,
        /// What it must be ("a whole number", "tcp or udp").
        expected: &'static str,
    },
    /// A check that is none of the kinds.
    #[error("unknown check `{text}` (use tcp, http:/path, exec:CMD, ttl:DURATION or none)")]
    UnknownCheck {
        /// What was written.
        text: String,
    },
    /// An http check's path that is not one.
    #[error("http check path `{path}` must start with '/' and hold no spaces")]
    HttpPath {
        /// What was written.
        path: String,
    },
    /// An attribute value over the limit.
    #[error("attribute {key} is longer than {max} bytes")]
    AttributeTooLong {
        /// The attribute.
        key: String,
        /// The limit.
        max: usize,
    },
    /// An option the spec does not have.
    #[error("unknown {spec} option `{key}` (see `murmur agent --help`)")]
    UnknownOption {
        /// `service` or `upstream`.
        spec: &'static str,
        /// The option.
        key: String,
    },
    /// A value outside what is accepted, or options that disagree.
    #[error("{what} must be {rule}")]
    Bound {
        /// What (`interval`, `timeout`, `tags`).
        what: &'static str,
        /// The rule, such as "between 100ms and 3600s".
        rule: String,
    },
    /// Not a duration.
    #[error("`{text}` is not a duration (use 250ms, 2s, 5m or 1h)")]
    NotADuration {
        /// What was written.
        text: String,
    },
    /// A duration with a unit other than ms, s, m or h.
    #[error("`{text}` has an unknown unit (use ms, s, m or h)")]
    UnknownUnit {
        /// What was written.
        text: String,
    },
    /// A duration too long to hold.
    #[error("`{text}` is out of range")]
    OutOfRange {
        /// What was written.
        text: String,
    },
}

impl SpecError {
    /// A value that is not `expected`.
    pub(super) fn value(key: &str, value: &str, expected: &'static str) -> SpecError {
        SpecError::Value { key: key.to_owned(), value: value.to_owned(), expected }
    }

    /// A value or a combination outside `rule`.
    pub(super) fn bound(what: &'static str, rule: impl Into<String>) -> SpecError {
        SpecError::Bound { what, rule: rule.into() }
    }

    /// A name that is not valid as `key`.
    pub(super) fn name(key: &'static str) -> impl FnOnce(murmur_protocol::NameError) -> SpecError {
        move |reason| SpecError::Name { key, reason }
    }
}

/// Default time between two health checks of one instance.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Default time one check may take before it counts as failed.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Default consecutive failures before an instance turns critical.
pub const DEFAULT_FAILURES_BEFORE_CRITICAL: u32 = 2;
/// Default consecutive successes before a critical instance passes again.
pub const DEFAULT_SUCCESSES_BEFORE_PASSING: u32 = 1;
/// Default balancing weight of an instance.
pub const DEFAULT_WEIGHT: u16 = 1;
/// Longest check interval accepted.
pub const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// Shortest check interval accepted: faster checks load the app more than they help.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Shortest `deregister_after` accepted. Consul's is a minute; murmur allows less for
/// short-lived tasks and tests.
pub const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(1);

/// How an instance's health is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// TCP connect to the instance's address and port.
    Tcp,
    /// HTTP GET of this path on the instance's address and port; 2xx and 3xx pass.
    Http {
        /// The request path, starting with `/`.
        path: String,
    },
    /// Run this command through `sh -c`; exit status 0 passes.
    Exec {
        /// The command line.
        command: String,
    },
    /// No probe: the app reports its own status (`PUT /v1/agent/check/pass/<id>`, or
    /// warn, fail) at least once per `ttl`, else the instance turns critical.
    Ttl {
        /// How long a report holds.
        ttl: Duration,
    },
    /// No check: the instance is passing while its agent lives.
    None,
}

/// A health check with its timing and thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    /// What to probe.
    pub kind: CheckKind,
    /// Time between probes.
    pub interval: Duration,
    /// Time one probe may take.
    pub timeout: Duration,
    /// Consecutive failures before critical.
    pub failures_before_critical: u32,
    /// Consecutive successes before passing.
    pub successes_before_passing: u32,
    /// Where to probe, when not the instance's own address and port (a Consul check's
    /// `HTTP` or `TCP` address).
    pub target: Option<std::net::SocketAddr>,
    /// Remove the instance once it has been critical this long (Consul's
    /// `DeregisterCriticalServiceAfter`).
    pub deregister_critical_after: Option<Duration>,
    /// The check's own id, when registered with one (Consul's `CheckID`); it is
    /// `service:<instance id>` otherwise.
    pub id: Option<String>,
}

impl Default for CheckSpec {
    fn default() -> Self {
        Self {
            kind: CheckKind::Tcp,
            interval: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_TIMEOUT,
            failures_before_critical: DEFAULT_FAILURES_BEFORE_CRITICAL,
            successes_before_passing: DEFAULT_SUCCESSES_BEFORE_PASSING,
            target: None,
            deregister_critical_after: None,
            id: None,
        }
    }
}

impl CheckSpec {
    /// For a check whose timeout was not given: the default timeout, or the interval
    /// when that is shorter (`interval=500ms` alone is valid, as it is in Consul).
    pub fn fit_default_timeout(&mut self) {
        self.timeout = DEFAULT_CHECK_TIMEOUT.min(self.interval);
    }
}

/// One service instance this agent registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The service name.
    pub name: ServiceName,
    /// The port the app listens on.
    pub port: u16,
    /// The instance id; `None` means `<node>-<port>`, filled in by the agent.
    pub id: Option<InstanceId>,
    /// The address the app listens on; `None` means the advertised address.
    pub address: Option<IpAddr>,
    /// Tags (`tags=a+b`), for `TAG.service` names and tag queries.
    pub tags: Vec<Tag>,
    /// Attributes (`attr.KEY=VALUE`), for attribute queries.
    pub attributes: BTreeMap<AttrKey, String>,
    /// Its share of traffic relative to other instances (`weight=N`, default 1).
    pub weight: u16,
    /// The health check.
    pub check: CheckSpec,
    /// Services allowed to call this one through the sidecar (empty: any service of
    /// the cluster).
    pub allow: Vec<ServiceName>,
}

impl ServiceSpec {
    /// A spec with defaults for everything but name and port.
    pub fn new(name: ServiceName, port: u16) -> Self {
        Self {
            name,
            port,
            id: None,
            address: None,
            tags: Vec::new(),
            attributes: BTreeMap::new(),
            weight: DEFAULT_WEIGHT,
            check: CheckSpec::default(),
            allow: Vec::new(),
        }
    }

    /// Checks the cross-field rules (timeout below interval, limits).
    pub fn validate(&self) -> Result<(), SpecError> {
        let c = &self.check;
        let between = format!("between {MIN_CHECK_INTERVAL:?} and {MAX_CHECK_INTERVAL:?}");
        if c.interval < MIN_CHECK_INTERVAL || c.interval > MAX_CHECK_INTERVAL {
            return Err(SpecError::bound("interval", between));
        }
        if c.timeout.is_zero() || c.timeout > c.interval {
            return Err(SpecError::bound("timeout", "above zero and at most the interval"));
        }
        if c.failures_before_critical == 0 || c.successes_before_passing == 0 {
            return Err(SpecError::bound("failures and successes thresholds", "at least 1"));
        }
        if let CheckKind::Ttl { ttl } = c.kind {
            if ttl < MIN_CHECK_INTERVAL || ttl > MAX_CHECK_INTERVAL {
                return Err(SpecError::bound("ttl", between));
            }
        }
        if c.deregister_critical_after.is_some_and(|d| d < MIN_DEREGISTER_AFTER) {
            return Err(SpecError::bound("deregister_after", format!("at least {MIN_DEREGISTER_AFTER:?}")));
        }
        if self.tags.len() > MAX_TAGS {
            return Err(SpecError::bound("tags", format!("at most {MAX_TAGS}")));
        }
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(SpecError::bound("attributes", format!("at most {MAX_ATTRIBUTES}")));
        }
        if let Some((k, _)) = self.attributes.iter().find(|(_, v)| v.len() > MAX_ATTR_VALUE_LEN) {
            return Err(SpecError::AttributeTooLong { key: k.to_string(), max: MAX_ATTR_VALUE_LEN });
        }
        if self.port == 0 {
            return Err(SpecError::bound("port", "1-65535"));
        }
        Ok(())
    }
}

/// Parses a duration such as `250ms`, `2s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, SpecError> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let value: f64 = num.parse().map_err(|_| SpecError::NotADuration { text: text.to_owned() })?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(SpecError::UnknownUnit { text: text.to_owned() }),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| SpecError::OutOfRange { text: text.to_owned() })
}

/// Parses a check: `tcp`, `http:/path`, `exec:CMD`, `ttl:DURATION` or `none`.
pub fn parse_check_kind(text: &str) -> Result<CheckKind, SpecError> {
    if let Some(ttl) = text.strip_prefix("ttl:") {
        Ok(CheckKind::Ttl { ttl: parse_duration(ttl)? })
    } else if text == "tcp" {
        Ok(CheckKind::Tcp)
    } else if text == "none" {
        Ok(CheckKind::None)
    } else if let Some(path) = text.strip_prefix("http:") {
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SpecError::HttpPath { path: path.to_owned() });
        }
        Ok(CheckKind::Http { path: path.to_owned() })
    } else if let Some(command) = text.strip_prefix("exec:") {
        if command.trim().is_empty() {
            return Err(SpecError::bound("an exec check", "given a command"));
        }
        Ok(CheckKind::Exec { command: command.to_owned() })
    } else {
        Err(SpecError::UnknownCheck { text: text.to_owned() })
    }
}

/// Parses `--service NAME:PORT[,key=value]...`. Keys: `id`, `addr`, `tags` (`a+b`),
/// `check`, `interval`, `timeout`, `failures`, `successes`, `deregister_after`, `weight`,
/// `allow` (`a+b`), `attr.KEY`.
/// An `exec:` check takes the rest of the spec, so it must come last.
pub fn parse_service_spec(text: &str) -> Result<ServiceSpec, SpecError> {
    let (head, mut rest) = match text.split_once(',') {
        Some((h, r)) => (h, r),
        None => (text, ""),
    };
    let shape = || SpecError::Shape { text: head.to_owned(), expected: "NAME:PORT" };
    let (name, port) = head.split_once(':').ok_or_else(shape)?;
    let name = ServiceName::new(name).map_err(SpecError::name("name"))?;
    let port: u16 = port.parse().map_err(|_| SpecError::value("port", port, "a number 1-65535"))?;
    let mut spec = ServiceSpec::new(name, port);
    let mut timeout_given = false;
    while !rest.is_empty() {
        let (item, tail) = if rest.starts_with("check=exec:") {
            (rest, "")
        } else {
            match rest.split_once(',') {
                Some((i, t)) => (i, t),
                None => (rest, ""),
            }
        };
        rest = tail;
        let (key, value) =
            item.split_once('=').ok_or_else(|| SpecError::Shape { text: item.to_owned(), expected: "key=value" })?;
        apply_service_option(&mut spec, key, value)?;
        timeout_given |= key == "timeout";
    }
    if !timeout_given {
        spec.check.fit_default_timeout();
    }
    spec.validate()?;
    Ok(spec)
}

fn parse_count(key: &str, value: &str) -> Result<u32, SpecError> {
    value.parse().map_err(|_| SpecError::value(key, value, "a whole number"))
}

fn apply_service_option(spec: &mut ServiceSpec, key: &str, value: &str) -> Result<(), SpecError> {
    match key {
        "id" => spec.id = Some(InstanceId::new(value).map_err(SpecError::name("id"))?),
        "addr" => spec.address = Some(value.parse().map_err(|_| SpecError::value(key, value, "an IP address"))?),
        "tags" => {
            spec.tags = value
                .split('+')
                .filter(|t| !t.is_empty())
                .map(|t| Tag::new(t).map_err(SpecError::name("tags")))
                .collect::<Result<_, _>>()?
        }
        "check" => spec.check.kind = parse_check_kind(value)?,
        "allow" => {
            spec.allow = value
                .split('+')
                .filter(|t| !t.is_empty())
                .map(|t| ServiceName::new(t).map_err(SpecError::name("allow")))
                .collect::<Result<_, _>>()?
        }
        "interval" => spec.check.interval = parse_duration(value)?,
        "timeout" => spec.check.timeout = parse_duration(value)?,
        "failures" => spec.check.failures_before_critical = parse_count(key, value)?,
        "successes" => spec.check.successes_before_passing = parse_count(key, value)?,
        "deregister_after" => spec.check.deregister_critical_after = Some(parse_duration(value)?),
        "weight" => spec.weight = value.parse().map_err(|_| SpecError::value(key, value, "0-65535"))?,
        _ => {
            let unknown = || SpecError::UnknownOption { spec: "service", key: key.to_owned() };
            let attr = key.strip_prefix("attr.").ok_or_else(unknown)?;
            let attr = AttrKey::new(attr).map_err(SpecError::name("attr"))?;
            spec.attributes.insert(attr, value.to_owned());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_spec_takes_defaults() {
        let s = parse_service_spec("orders:8080").expect("valid");
        assert_eq!(s.name.as_str(), "orders");
        assert_eq!(s.port, 8080);
        assert_eq!(s.check, CheckSpec::default());
    }

    #[test]
    fn full_spec_parses_every_option() {
        let s = parse_service_spec(
            "web:80,id=web-a,addr=127.0.0.9,tags=canary+v2,allow=api+billing,interval=500ms,timeout=200ms,failures=3,successes=2,weight=5,attr.version=1.2,check=exec:test -f /tmp/x, y",
        )
        .expect("valid");
        assert_eq!(s.id.as_ref().map(|i| i.as_str()), Some("web-a"));
        assert_eq!(s.address, Some("127.0.0.9".parse().expect("ip")));
        assert_eq!(s.tags.len(), 2);
        assert_eq!(s.check.interval, Duration::from_millis(500));
        assert_eq!(s.check.failures_before_critical, 3);
        assert_eq!(s.weight, 5);
        assert_eq!(s.check.kind, CheckKind::Exec { command: "test -f /tmp/x, y".into() });
        assert_eq!(s.attributes.len(), 1);
        assert_eq!(s.allow.len(), 2);
    }

    #[test]
    fn a_short_interval_alone_shortens_the_default_timeout() {
        let s = parse_service_spec("o:1,interval=500ms").expect("valid");
        assert_eq!((s.check.interval, s.check.timeout), (Duration::from_millis(500), Duration::from_millis(500)));
        let s = parse_service_spec("o:1,interval=5s").expect("valid");
        assert_eq!(s.check.timeout, DEFAULT_CHECK_TIMEOUT);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, needle) in [
            ("orders", "NAME:PORT"),
            ("orders:x", "port"),
            ("orders:0", "port"),
            ("Bad_Name:1", "service name"),
            ("o:1,check=ftp", "unknown check"),
            ("o:1,interval=2x", "unit"),
            ("o:1,timeout=5s", "timeout"),
            ("o:1,interval=500ms,timeout=1s", "timeout"),
            ("o:1,frobnicate=1", "unknown service option"),
            ("o:1,check=http:nopath", "start with '/'"),
            ("o:1,tags", "key=value"),
            (&format!("o:1,attr.x={}", "v".repeat(300)), "longer than"),
        ] {
            let err = parse_service_spec(spec).expect_err(spec).to_string();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1e999").is_err());
    }

    #[test]
    fn ttl_checks_and_deregister_after_parse_and_are_bounded() {
        let spec = parse_service_spec("job:7000,check=ttl:30s,deregister_after=10m").expect("valid");
        assert_eq!(spec.check.kind, CheckKind::Ttl { ttl: Duration::from_secs(30) });
        assert_eq!(spec.check.deregister_critical_after, Some(Duration::from_secs(600)));
        assert!(parse_service_spec("job:7000,check=ttl:10ms").is_err(), "a TTL under the shortest interval");
        assert!(parse_service_spec("job:7000,check=ttl:soon").is_err());
        assert!(parse_service_spec("job:7000,deregister_after=100ms").is_err(), "under a second");
    }
}
