//! Counters and gauges that every part writes and the API reads. A leaf: it imports
//! nothing of ours. Label sets are closed enums, never free text, so a hostile query
//! cannot grow the metric set.

pub mod proxy;
mod render;

use std::sync::atomic::{AtomicU64, Ordering};

pub use render::render_prometheus;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds one and returns the new value.
    pub fn inc_get(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
    /// Takes one away (never below zero).
    pub fn dec(&self) {
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(1)));
    }
}

/// Gossip transport counters.
#[derive(Debug, Default)]
pub struct GossipMetrics {
    /// Datagrams sent.
    pub packets_sent: Counter,
    /// Datagrams received (before opening).
    pub packets_received: Counter,
    /// Bytes sent.
    pub bytes_sent: Counter,
    /// Bytes received.
    pub bytes_received: Counter,
    /// Datagrams that did not open under the keyring (wrong key, forged, plain).
    pub undecryptable: Counter,
    /// Datagrams that opened but were not well-formed.
    pub malformed: Counter,
    /// Datagrams refused for a timestamp outside the replay window.
    pub stale: Counter,
    /// Gossip values skipped because they did not decode.
    pub bad_values: Counter,
    /// Datagrams sealed with the cluster key (each used one nonce).
    pub seals: Counter,
    /// Sealed datagrams dropped as exact replays (their key and nonce seen already).
    pub replayed: Counter,
    /// Messages not sent to an address that is no live member nor seed, past its
    /// allowance (a few times what it sent).
    pub capped: Counter,
    /// Removals (tombstones) held until their grace passes, over every member.
    pub tombstones: Gauge,
    /// The epoch of the keyring this agent applies (0 until `murmur keyring` changes it).
    pub keyring_epoch: Gauge,
    /// Keys in this agent's keyring.
    pub keyring_keys: Gauge,
}

/// Membership gauges, set by the registry builder.
#[derive(Debug, Default)]
pub struct MemberMetrics {
    /// Members alive.
    pub alive: Gauge,
    /// Members dead, not yet forgotten.
    pub dead: Gauge,
    /// Members that left.
    pub left: Gauge,
    /// Service instances in the replica.
    pub instances: Gauge,
    /// Snapshots built.
    pub snapshots: Counter,
}

/// DNS query types we count; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    Aaaa,
    /// Service records (targets and ports).
    Srv,
    /// The zone's start of authority.
    Soa,
    /// Everything at a name.
    Any,
    /// Any other type.
    Other,
}

impl QType {
    const ALL: [QType; 6] = [QType::A, QType::Aaaa, QType::Srv, QType::Soa, QType::Any, QType::Other];
    fn label(self) -> &'static str {
        match self {
            QType::A => "A",
            QType::Aaaa => "AAAA",
            QType::Srv => "SRV",
            QType::Soa => "SOA",
            QType::Any => "ANY",
            QType::Other => "other",
        }
    }
}

/// DNS response codes we count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    /// An answer (possibly empty).
    NoError,
    /// The name does not exist.
    NxDomain,
    /// The server failed to answer.
    ServFail,
    /// The query was refused.
    Refused,
    /// The query was malformed.
    FormErr,
    /// Any other code.
    Other,
}

impl Rcode {
    const ALL: [Rcode; 6] =
        [Rcode::NoError, Rcode::NxDomain, Rcode::ServFail, Rcode::Refused, Rcode::FormErr, Rcode::Other];
    fn label(self) -> &'static str {
        match self {
            Rcode::NoError => "NOERROR",
            Rcode::NxDomain => "NXDOMAIN",
            Rcode::ServFail => "SERVFAIL",
            Rcode::Refused => "REFUSED",
            Rcode::FormErr => "FORMERR",
            Rcode::Other => "other",
        }
    }
}

/// DNS counters.
#[derive(Debug, Default)]
pub struct DnsMetrics {
    queries: [[Counter; 6]; 6],
    /// Queries forwarded to an upstream resolver.
    pub forwarded: Counter,
    /// Forwarded queries no upstream answered.
    pub forward_failures: Counter,
    /// UDP queries dropped unanswered: their source was over `dns.rate_limit`.
    pub rate_limited: Counter,
}

impl DnsMetrics {
    /// Counts one answered query.
    pub fn query(&self, qtype: QType, rcode: Rcode) {
        let q = QType::ALL.iter().position(|&t| t == qtype).unwrap_or(5);
        let r = Rcode::ALL.iter().position(|&c| c == rcode).unwrap_or(5);
        self.queries[q][r].inc();
    }

    /// Queries of one type answered with one code.
    pub fn queries(&self, qtype: QType, rcode: Rcode) -> u64 {
        let q = QType::ALL.iter().position(|&t| t == qtype).unwrap_or(5);
        let r = Rcode::ALL.iter().position(|&c| c == rcode).unwrap_or(5);
        self.queries[q][r].get()
    }
}

/// Health-check counters.
#[derive(Debug, Default)]
pub struct HealthMetrics {
    /// Checks that passed.
    pub passed: Counter,
    /// Checks that failed.
    pub failed: Counter,
    /// Health state changes published.
    pub transitions: Counter,
    /// Health state changes held back by flap damping.
    pub damped: Counter,
}

/// API counters.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    /// Requests answered with 2xx.
    pub ok: Counter,
    /// Requests answered with 4xx.
    pub client_errors: Counter,
    /// Requests answered with 5xx.
    pub server_errors: Counter,
}

/// Every metric of one agent.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Gossip transport.
    pub gossip: GossipMetrics,
    /// Membership and replica.
    pub members: MemberMetrics,
    /// DNS stub.
    pub dns: DnsMetrics,
    /// Health checks.
    pub health: HealthMetrics,
    /// Admin API.
    pub api: ApiMetrics,
    /// Sidecar proxy.
    pub proxy: proxy::ProxyMetrics,
}
