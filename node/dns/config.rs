//! The DNS stub's settings, checked: the namespace, the upstream resolvers (never the
//! stub itself) and the answer cap.

use std::net::{IpAddr, SocketAddr};

use crate::config::{within, ConfigError, Settings};

/// DNS stub settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address for UDP and TCP.
    pub listen: SocketAddr,
    /// Namespace served, lowercase, without a trailing dot.
    pub namespace: String,
    /// Where other names are forwarded.
    pub upstreams: Vec<SocketAddr>,
    /// TTL of answers, seconds.
    pub ttl: u32,
    /// Cap on records per answer.
    pub max_answers: usize,
    /// UDP queries per second answered per client socket; 0: no limit.
    pub rate_limit: u32,
    /// Proxy-mode aliases and the VIPs they answer (filled in by the agent at start).
    pub aliases: Vec<(String, IpAddr)>,
}

impl Config {
    /// The stub's part of the settings. `resolv_conf` is the text of /etc/resolv.conf,
    /// whose nameservers are the upstreams when none is given.
    pub fn from_settings(s: &Settings, resolv_conf: &str) -> Result<Config, ConfigError> {
        let upstreams = s.dns_upstreams.clone().unwrap_or_else(|| parse_resolv_conf(resolv_conf));
        Ok(Config {
            listen: s.dns_listen,
            namespace: parse_namespace(&s.namespace)?,
            upstreams: upstreams.into_iter().filter(|u| !same_endpoint(*u, s.dns_listen)).collect(),
            ttl: s.dns_ttl,
            max_answers: within("--dns-max-answers", s.dns_max_answers, 1, 64, "1 and 64")?,
            rate_limit: s.dns_rate_limit,
            aliases: Vec::new(),
        })
    }
}

/// A resolver listed as 127.0.0.1:53 is the agent itself when the agent listens on
/// 0.0.0.0:53 or 127.0.0.1:53; forwarding to it would loop.
fn same_endpoint(a: SocketAddr, listen: SocketAddr) -> bool {
    a.port() == listen.port() && (a.ip() == listen.ip() || listen.ip().is_unspecified())
}

fn parse_namespace(ns: &str) -> Result<String, ConfigError> {
    let ns = ns.trim_end_matches('.').to_ascii_lowercase();
    let ok = !ns.is_empty() && ns.len() <= 200 && ns.split('.').all(|label| murmur_protocol::Tag::new(label).is_ok());
    if !ok {
        return Err(ConfigError::new("--namespace", format!("`{ns}` is not a domain name such as myapp.local")));
    }
    Ok(ns)
}

/// The `nameserver` lines of a resolv.conf, on port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        .filter_map(|ip| ip.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}
