//! Proxy metrics: per upstream and per endpoint counters, gauges and hdrhistograms. The
//! proxy writes them (including endpoint state such as ejection and EWMA, so readers
//! need not reach into the proxy); the API and `/metrics` read them. Label values are
//! upstream aliases and instance ids, both validated names from config and registry.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

use super::{Counter, Gauge};

/// Why a proxied connection attempt failed: a closed set, so it can be a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureCause {
    /// TCP connect refused (direct endpoints).
    ConnectRefused,
    /// No answer within the connect timeout.
    ConnectTimeout,
    /// The QUIC connection to the peer sidecar failed.
    QuicConnect,
    /// The peer sidecar refused the stream (the code says why).
    Refused,
    /// The peer sidecar could not reach its app.
    AppUnreachable,
    /// The connection broke after the ack.
    Reset,
    /// The peer's certificate does not name the service.
    Identity,
    /// A UDP datagram too large for a QUIC datagram on this path (dropped).
    DatagramTooLarge,
    /// Any other I/O error before the ack.
    Other,
}

impl FailureCause {
    /// Every cause, in label order.
    pub const ALL: [FailureCause; 9] = [
        FailureCause::ConnectRefused,
        FailureCause::ConnectTimeout,
        FailureCause::QuicConnect,
        FailureCause::Refused,
        FailureCause::AppUnreachable,
        FailureCause::Reset,
        FailureCause::Identity,
        FailureCause::DatagramTooLarge,
        FailureCause::Other,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCause::ConnectRefused => "connect_refused",
            FailureCause::ConnectTimeout => "connect_timeout",
            FailureCause::QuicConnect => "quic_connect",
            FailureCause::Refused => "refused",
            FailureCause::AppUnreachable => "app_unreachable",
            FailureCause::Reset => "reset",
            FailureCause::Identity => "identity",
            FailureCause::DatagramTooLarge => "datagram_too_large",
            FailureCause::Other => "other",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|&c| c == self).unwrap_or(Self::ALL.len() - 1)
    }
}

/// A latency histogram in microseconds (1 µs to 1 h, 3 significant digits).
#[derive(Debug)]
pub struct Latency(Mutex<Histogram<u64>>);

impl Default for Latency {
    fn default() -> Self {
        // The bounds are constants known to be valid for hdrhistogram.
        Self(Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")))
    }
}

/// Quantiles of a [`Latency`], in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quantiles {
    /// How many samples the quantiles are of.
    pub count: u64,
    /// The median, µs.
    pub p50: u64,
    /// The 99th percentile, µs.
    pub p99: u64,
    /// The largest sample, µs.
    pub max: u64,
    /// Sum of all samples (mean × count).
    pub sum: u64,
}

impl Latency {
    /// Records one duration.
    pub fn record(&self, d: std::time::Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        if let Ok(mut h) = self.0.lock() {
            let _ = h.record(us);
        }
    }

    /// The current quantiles.
    pub fn quantiles(&self) -> Quantiles {
        match self.0.lock() {
            Ok(h) if !h.is_empty() => Quantiles {
                count: h.len(),
                p50: h.value_at_quantile(0.5),
                p99: h.value_at_quantile(0.99),
                max: h.max(),
                sum: (h.mean() * h.len() as f64) as u64,
            },
            _ => Quantiles::default(),
        }
    }
}

/// One endpoint of one upstream.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Where it is reached (peer sidecar or direct address), for display.
    pub via: Mutex<String>,
    /// Connections carried to it.
    pub connections: Counter,
    /// Connections open now.
    pub active: Gauge,
    /// Bytes app → endpoint.
    pub bytes_sent: Counter,
    /// Bytes endpoint → app.
    pub bytes_received: Counter,
    failures: [Counter; 9],
    /// Times ejected.
    pub ejections: Counter,
    /// Unix ms until which it is ejected (0: not ejected).
    pub ejected_until_unix_ms: Gauge,
    /// Peak-EWMA connect latency, µs.
    pub ewma_us: Gauge,
    /// Time from pick to ack.
    pub connect_latency: Latency,
    /// Connection lifetime.
    pub duration: Latency,
}

impl EndpointStats {
    /// Counts one failure.
    pub fn failure(&self, cause: FailureCause) {
        self.failures[cause.index()].inc();
    }

    /// Failures of one cause.
    pub fn failures(&self, cause: FailureCause) -> u64 {
        self.failures[cause.index()].get()
    }
}

/// One upstream.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// The service it reaches.
    pub service: String,
    /// Where it listens.
    pub listen: String,
    /// Connections accepted from the app.
    pub accepted: Counter,
    /// Connections that failed after every attempt (the app saw a failure).
    pub failed: Counter,
    /// Retries (attempts after the first).
    pub retries: Counter,
    /// Retries refused by the retry budget.
    pub budget_exhausted: Counter,
    /// Connections closed at once by the circuit breaker.
    pub breaker_rejections: Counter,
    /// Connections with no endpoint to try.
    pub no_endpoints: Counter,
    /// Endpoints left out of a connection's picks because no sidecar fronts them while
    /// this one uses mutual TLS (and the upstream does not allow plaintext).
    pub plaintext_skipped: Counter,
    /// Connections open now.
    pub active: Gauge,
    /// Connections waiting for an ack now.
    pub pending: Gauge,
    endpoints: Mutex<BTreeMap<String, Arc<EndpointStats>>>,
}

impl UpstreamStats {
    /// The stats of endpoint `id`, created on first use.
    pub fn endpoint(&self, id: &str) -> Arc<EndpointStats> {
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id.to_owned()).or_default().clone()
    }

    /// Keeps only the endpoints `keep` says yes to.
    pub fn retain_endpoints(&self, keep: impl Fn(&str, &EndpointStats) -> bool) {
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|id, ep| keep(id, ep));
    }

    /// Every endpoint seen, by id.
    pub fn endpoints(&self) -> Vec<(String, Arc<EndpointStats>)> {
        let map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Inbound (the QUIC listener) counters.
#[derive(Debug, Default)]
pub struct InboundStats {
    /// QUIC connections accepted.
    pub connections: Counter,
    /// QUIC handshakes that failed (wrong CA, no certificate, wrong ALPN).
    pub handshake_failures: Counter,
    /// Streams accepted and spliced to an app.
    pub streams: Counter,
    /// Streams open now.
    pub active: Gauge,
    /// UDP replies too large for a QUIC datagram, dropped.
    pub dropped_datagrams: Counter,
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl InboundStats {
    /// Counts one refusal by reason label.
    pub fn refuse(&self, reason: &'static str) {
        let mut m = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(reason).or_default() += 1;
    }

    /// Refusals by reason.
    pub fn refused(&self) -> Vec<(&'static str, u64)> {
        let m = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// All proxy metrics of one agent.
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    upstreams: Mutex<BTreeMap<String, Arc<UpstreamStats>>>,
    /// The inbound listener.
    pub inbound: InboundStats,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: Counter,
}

impl ProxyMetrics {
    /// Registers an upstream (at start).
    pub fn add_upstream(&self, alias: &str, service: &str, listen: &str) -> Arc<UpstreamStats> {
        let stats =
            Arc::new(UpstreamStats { service: service.to_owned(), listen: listen.to_owned(), ..Default::default() });
        let mut map = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(alias.to_owned(), stats.clone());
        stats
    }

    /// Every upstream, by alias.
    pub fn upstreams(&self) -> Vec<(String, Arc<UpstreamStats>)> {
        let map = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}
