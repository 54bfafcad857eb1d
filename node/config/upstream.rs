//! Proxy-mode settings: upstream specs (`--upstream SERVICE:PORT[,key=value]...`), the
//! VIP range, and the per-upstream knobs with their defaults. Pure parsing.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use murmur_protocol::{ServiceName, Tag};

use super::spec::{parse_duration, SpecError};

/// Default QUIC port of the inbound listener.
pub const DEFAULT_PROXY_PORT: u16 = 7947;
/// Default retries of a connection that failed before the ack.
pub const DEFAULT_RETRIES: u32 = 2;
/// Default time to reach the ack (as Service Connect's connect timeout).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default idle timeout of a TCP connection (as ECS Service Connect's default).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default idle expiry of a UDP flow.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default cap on concurrent connections per upstream.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Default cap on connections waiting for an ack per upstream.
pub const DEFAULT_MAX_PENDING: u32 = 1_024;
/// Default retry budget: retries at most this share of new connections...
pub const DEFAULT_RETRY_RATIO: f64 = 0.2;
/// ...plus this many retries per second.
pub const DEFAULT_RETRY_FLOOR_PER_SEC: f64 = 10.0;

/// TCP or UDP.
pub use murmur_protocol::Transport as Proto;

/// How an upstream picks endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Power of two choices on load.
    #[default]
    P2c,
    /// Each endpoint in turn, whatever its load.
    RoundRobin,
}

/// Settings of outlier detection.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    /// Consecutive failures that eject (0 turns this rule off).
    pub consecutive_failures: u32,
    /// Failure percentage over `interval` that ejects (0 turns this rule off).
    pub failure_percent: u32,
    /// Requests needed in an interval before the percentage rule applies.
    pub min_requests: u32,
    /// Length of the percentage window.
    pub interval: Duration,
    /// Base ejection time, multiplied by the times ejected.
    pub base_ejection: Duration,
    /// The longest an endpoint stays ejected, however often it was before.
    pub max_ejection: Duration,
    /// Largest share of endpoints ejected at once, percent.
    pub max_ejected_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_percent: 50,
            min_requests: 20,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// One upstream: a service the local app calls through its sidecar.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSpec {
    /// The service called.
    pub service: ServiceName,
    /// The port the app calls.
    pub port: u16,
    /// The name the app calls (default: the service name); a DNS label.
    pub alias: Tag,
    /// A fixed listen address instead of a VIP.
    pub listen: Option<SocketAddr>,
    /// TCP or UDP.
    pub proto: Proto,
    /// Retries before the ack (0: never repeat a connection).
    pub retries: u32,
    /// Time to reach the ack.
    pub connect_timeout: Duration,
    /// Close a connection (or expire a UDP flow) idle this long.
    pub idle_timeout: Duration,
    /// How an endpoint is picked for each new connection (`balance=`).
    pub policy: Policy,
    /// Cap on concurrent connections.
    pub max_connections: u32,
    /// Cap on connections waiting for an ack.
    pub max_pending: u32,
    /// When an endpoint is ejected for failing, and for how long.
    pub outlier: OutlierConfig,
    /// Whether endpoints without a sidecar may be called in plain TCP (or UDP) when this
    /// sidecar uses mutual TLS (`plaintext=allow`). Off by default: any holder of the
    /// gossip key could otherwise register the service at its own address and receive
    /// the callers' bytes in the clear.
    pub plaintext: bool,
}

impl UpstreamSpec {
    /// A spec with every default.
    pub fn new(service: ServiceName, port: u16) -> Self {
        let alias = Tag::new(service.as_str()).unwrap_or_else(|_| unreachable_label());
        Self {
            service,
            port,
            alias,
            listen: None,
            proto: Proto::Tcp,
            retries: DEFAULT_RETRIES,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            policy: Policy::P2c,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending: DEFAULT_MAX_PENDING,
            outlier: OutlierConfig::default(),
            plaintext: false,
        }
    }
}

/// A service name is always a valid label, so this is never reached; it exists so the
/// conversion needs no `expect` on a path that reads config.
fn unreachable_label() -> Tag {
    Tag::new("upstream").unwrap_or_else(|_| unreachable!("`upstream` is a valid label"))
}

fn num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, SpecError> {
    v.parse().map_err(|_| SpecError::value(key, v, "a valid number"))
}

/// An upstream spec being built, option by option, from `--upstream` text or from an
/// `[[upstream]]` table.
pub(super) struct UpstreamOptions {
    spec: UpstreamSpec,
    idle_set: bool,
}

impl UpstreamOptions {
    /// The defaults for calling `service` on `port`.
    pub(super) fn new(service: &str, port: &str) -> Result<Self, SpecError> {
        let service = ServiceName::new(service).map_err(SpecError::name("service"))?;
        let port: u16 =
            port.parse().ok().filter(|p| *p > 0).ok_or_else(|| SpecError::value("port", port, "1-65535"))?;
        Ok(Self { spec: UpstreamSpec::new(service, port), idle_set: false })
    }

    /// Sets option `k` (the `--upstream` key, such as `connect-timeout`) from its text.
    pub(super) fn set(&mut self, k: &str, v: &str) -> Result<(), SpecError> {
        let u = &mut self.spec;
        match k {
            "alias" => u.alias = Tag::new(v).map_err(SpecError::name("alias"))?,
            "listen" => u.listen = Some(v.parse().map_err(|_| SpecError::value(k, v, "IP:PORT"))?),
            "proto" => {
                u.proto = match v {
                    "tcp" => Proto::Tcp,
                    "udp" => Proto::Udp,
                    _ => return Err(SpecError::value(k, v, "tcp or udp")),
                }
            }
            "retries" => u.retries = num(k, v)?,
            "connect-timeout" => u.connect_timeout = parse_duration(v)?,
            "idle-timeout" => {
                u.idle_timeout = parse_duration(v)?;
                self.idle_set = true;
            }
            "balance" => {
                u.policy = match v {
                    "p2c" => Policy::P2c,
                    "rr" | "round-robin" => Policy::RoundRobin,
                    _ => return Err(SpecError::value(k, v, "p2c or rr")),
                }
            }
            "max-connections" => u.max_connections = num(k, v)?,
            "max-pending" => u.max_pending = num(k, v)?,
            "eject-after" => u.outlier.consecutive_failures = num(k, v)?,
            "eject-percent" => u.outlier.failure_percent = num(k, v)?,
            "eject-base" => u.outlier.base_ejection = parse_duration(v)?,
            "eject-max-percent" => u.outlier.max_ejected_percent = num(k, v)?,
            "plaintext" => {
                u.plaintext = match v {
                    "allow" => true,
                    "deny" => false,
                    _ => return Err(SpecError::value(k, v, "allow or deny")),
                }
            }
            _ => return Err(SpecError::UnknownOption { spec: "upstream", key: k.to_owned() }),
        }
        Ok(())
    }

    /// The spec, once the options agree with each other.
    pub(super) fn finish(self) -> Result<UpstreamSpec, SpecError> {
        let mut u = self.spec;
        if u.proto == Proto::Udp && !self.idle_set {
            u.idle_timeout = DEFAULT_UDP_IDLE_TIMEOUT;
        }
        if u.connect_timeout.is_zero() || u.idle_timeout.is_zero() {
            return Err(SpecError::bound("timeouts", "above zero"));
        }
        if u.max_connections == 0 || u.max_pending == 0 {
            return Err(SpecError::bound("max-connections and max-pending", "at least 1"));
        }
        if u.retries > 10 {
            return Err(SpecError::bound("retries", "at most 10"));
        }
        if u.outlier.failure_percent > 100 || u.outlier.max_ejected_percent > 100 {
            return Err(SpecError::bound("percentages", "0-100"));
        }
        Ok(u)
    }
}

/// Parses `--upstream SERVICE:PORT[,alias=NAME][,listen=IP:PORT][,proto=tcp|udp]
/// [,retries=N][,connect-timeout=D][,idle-timeout=D][,balance=p2c|rr]
/// [,max-connections=N][,max-pending=N][,eject-after=N][,eject-percent=N]
/// [,eject-base=D][,eject-max-percent=N][,plaintext=allow|deny]`.
pub fn parse_upstream_spec(text: &str) -> Result<UpstreamSpec, SpecError> {
    let mut parts = text.split(',');
    let head = parts.next().unwrap_or_default();
    let shape = |text: &str, expected| SpecError::Shape { text: text.to_owned(), expected };
    let (svc, port) = head.split_once(':').ok_or_else(|| shape(head, "SERVICE:PORT"))?;
    let mut u = UpstreamOptions::new(svc, port)?;
    for item in parts.filter(|p| !p.is_empty()) {
        let (k, v) = item.split_once('=').ok_or_else(|| shape(item, "key=value"))?;
        u.set(k, v)?;
    }
    u.finish()
}

/// Parses `--vip-range A.B.C.D/N` (inside 127.0.0.0/8).
pub fn parse_vip_range(text: &str) -> Result<(Ipv4Addr, u32), SpecError> {
    let (ip, prefix) = text
        .split_once('/')
        .ok_or_else(|| SpecError::Shape { text: text.to_owned(), expected: "IP/PREFIX, such as 127.100.0.0/16" })?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| SpecError::value("address", ip, "an IPv4 address"))?;
    let prefix: u32 =
        prefix.parse().ok().filter(|p| (8..=30).contains(p)).ok_or_else(|| SpecError::bound("prefix", "8-30"))?;
    if ip.octets()[0] != 127 {
        return Err(SpecError::bound("the VIP range", "inside 127.0.0.0/8 (loopback)"));
    }
    let mask = u32::MAX << (32 - prefix);
    let base = u32::from(ip) & mask;
    Ok((Ipv4Addr::from(base + 1), (1u32 << (32 - prefix)) - 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_specs_parse_with_defaults_and_options() {
        let u = parse_upstream_spec("orders:80").expect("valid");
        assert_eq!((u.alias.as_str(), u.port, u.retries, u.proto), ("orders", 80, 2, Proto::Tcp));
        let u = parse_upstream_spec(
            "dns-cache:53,proto=udp,alias=cache,listen=127.0.0.1:5353,retries=0,balance=rr,eject-after=3",
        )
        .expect("valid");
        assert_eq!(u.proto, Proto::Udp);
        assert_eq!(u.idle_timeout, DEFAULT_UDP_IDLE_TIMEOUT);
        assert_eq!(u.alias.as_str(), "cache");
        assert_eq!(u.listen, Some("127.0.0.1:5353".parse().expect("addr")));
        assert_eq!((u.retries, u.policy, u.outlier.consecutive_failures), (0, Policy::RoundRobin, 3));
        assert!(!u.plaintext, "plaintext endpoints are refused unless allowed");
        assert!(parse_upstream_spec("orders:80,plaintext=allow").expect("valid").plaintext);
        for (bad, needle) in [
            ("orders", "SERVICE:PORT"),
            ("orders:0", "port"),
            ("orders:80,alias=Not_ok", "alias"),
            ("orders:80,proto=sctp", "proto"),
            ("orders:80,retries=x", "retries"),
            ("orders:80,plaintext=yes", "plaintext"),
            ("orders:80,bogus=1", "unknown upstream option"),
            ("orders:80,max-pending=0", "at least 1"),
            ("orders:80,connect-timeout=0s", "above zero"),
        ] {
            let e = parse_upstream_spec(bad).expect_err(bad).to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn vip_ranges_stay_on_loopback() {
        assert_eq!(parse_vip_range("127.100.0.0/16"), Ok((Ipv4Addr::new(127, 100, 0, 1), 65_534)));
        assert!(parse_vip_range("10.0.0.0/8").is_err());
        assert!(parse_vip_range("127.0.0.0/31").is_err());
    }
}
