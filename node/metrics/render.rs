//! The Prometheus text exposition format (version 0.0.4) of [`Metrics`]. One file
//! renders everything so names, types and help stay consistent; a test checks the
//! output with `promtool check metrics` when promtool is installed.

use std::fmt::Write;

use super::{Metrics, QType, Rcode};

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

/// Renders all metrics as Prometheus text.
pub fn render_prometheus(m: &Metrics) -> String {
    let mut out = String::with_capacity(4096);
    for part in [render_gossip, render_replica, render_dns, render_health, render_api, render_proxy] {
        part(&mut out, m);
    }
    out
}

/// Gossip: datagrams, bytes, drops by reason, the keyring.
fn render_gossip(out: &mut String, m: &Metrics) {
    let g = &m.gossip;
    metric(out, "murmur_gossip_packets_sent_total", "counter", "Gossip datagrams sent.", g.packets_sent.get());
    metric(
        out,
        "murmur_gossip_seals_total",
        "counter",
        "Gossip datagrams sealed with the cluster key since start (each took one nonce).",
        g.seals.get(),
    );
    metric(
        out,
        "murmur_gossip_packets_received_total",
        "counter",
        "Gossip datagrams received.",
        g.packets_received.get(),
    );
    metric(out, "murmur_gossip_sent_bytes_total", "counter", "Gossip bytes sent.", g.bytes_sent.get());
    metric(out, "murmur_gossip_received_bytes_total", "counter", "Gossip bytes received.", g.bytes_received.get());
    let _ = writeln!(
        out,
        "# HELP murmur_gossip_dropped_packets_total Gossip datagrams dropped, by reason.\n\
         # TYPE murmur_gossip_dropped_packets_total counter\n\
         murmur_gossip_dropped_packets_total{{reason=\"undecryptable\"}} {}\n\
         murmur_gossip_dropped_packets_total{{reason=\"malformed\"}} {}\n\
         murmur_gossip_dropped_packets_total{{reason=\"stale\"}} {}\n\
         murmur_gossip_dropped_packets_total{{reason=\"replayed\"}} {}",
        g.undecryptable.get(),
        g.malformed.get(),
        g.stale.get(),
        g.replayed.get()
    );
    metric(
        out,
        "murmur_gossip_capped_messages_total",
        "counter",
        "Messages not sent to an address that is neither a live member nor a seed, past its allowance.",
        g.capped.get(),
    );
    metric(
        out,
        "murmur_gossip_tombstones",
        "gauge",
        "Removed keys remembered until --tombstone-grace passes, over every member.",
        g.tombstones.get(),
    );
    metric(
        out,
        "murmur_gossip_keyring_epoch",
        "gauge",
        "Epoch of the gossip keyring this agent applies; a rotation has reached every agent when all report the same.",
        g.keyring_epoch.get(),
    );
    metric(out, "murmur_gossip_keyring_keys", "gauge", "Keys in this agent's gossip keyring.", g.keyring_keys.get());
    metric(
        out,
        "murmur_gossip_bad_values_total",
        "counter",
        "Gossip values skipped because they did not decode.",
        g.bad_values.get(),
    );
}

/// Members by status and the replica.
fn render_replica(out: &mut String, m: &Metrics) {
    let mm = &m.members;
    let _ = writeln!(
        out,
        "# HELP murmur_members Cluster members by status.\n# TYPE murmur_members gauge\n\
         murmur_members{{status=\"alive\"}} {}\nmurmur_members{{status=\"dead\"}} {}\nmurmur_members{{status=\"left\"}} {}",
        mm.alive.get(),
        mm.dead.get(),
        mm.left.get()
    );
    metric(out, "murmur_registry_instances", "gauge", "Service instances in the local replica.", mm.instances.get());
    metric(out, "murmur_registry_snapshots_total", "counter", "Registry snapshots built.", mm.snapshots.get());
}

/// The DNS stub: queries by type and code, forwarding, the rate limit.
fn render_dns(out: &mut String, m: &Metrics) {
    let _ = writeln!(out, "# HELP murmur_dns_queries_total DNS queries answered, by type and response code.\n# TYPE murmur_dns_queries_total counter");
    for q in QType::ALL {
        for r in Rcode::ALL {
            let _ = writeln!(
                out,
                "murmur_dns_queries_total{{qtype=\"{}\",rcode=\"{}\"}} {}",
                q.label(),
                r.label(),
                m.dns.queries(q, r)
            );
        }
    }
    metric(out, "murmur_dns_forwarded_total", "counter", "DNS queries forwarded upstream.", m.dns.forwarded.get());
    metric(
        out,
        "murmur_dns_forward_failures_total",
        "counter",
        "Forwarded DNS queries no upstream answered.",
        m.dns.forward_failures.get(),
    );
    metric(
        out,
        "murmur_dns_rate_limited_total",
        "counter",
        "UDP DNS queries dropped unanswered because their source socket was over the rate limit.",
        m.dns.rate_limited.get(),
    );
}

/// Health checks and the state changes they publish.
fn render_health(out: &mut String, m: &Metrics) {
    let _ = writeln!(
        out,
        "# HELP murmur_health_checks_total Health checks run, by result.\n# TYPE murmur_health_checks_total counter\n\
         murmur_health_checks_total{{result=\"pass\"}} {}\nmurmur_health_checks_total{{result=\"fail\"}} {}",
        m.health.passed.get(),
        m.health.failed.get()
    );
    metric(
        out,
        "murmur_health_transitions_total",
        "counter",
        "Health state changes published.",
        m.health.transitions.get(),
    );
    metric(
        out,
        "murmur_health_damped_total",
        "counter",
        "Health state changes of a flapping check held back (the instance is held critical until it settles).",
        m.health.damped.get(),
    );
}

/// Admin API requests by status class.
fn render_api(out: &mut String, m: &Metrics) {
    let _ = writeln!(
        out,
        "# HELP murmur_api_requests_total Admin API requests, by status class.\n# TYPE murmur_api_requests_total counter\n\
         murmur_api_requests_total{{class=\"2xx\"}} {}\nmurmur_api_requests_total{{class=\"4xx\"}} {}\nmurmur_api_requests_total{{class=\"5xx\"}} {}",
        m.api.ok.get(),
        m.api.client_errors.get(),
        m.api.server_errors.get()
    );
}

/// `# HELP` and `# TYPE` of a metric whose samples follow.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The sidecar: per upstream, per endpoint, and the inbound listener.
fn render_proxy(out: &mut String, m: &Metrics) {
    let ups = m.proxy.upstreams();
    render_upstreams(out, &ups);
    render_endpoints(out, &ups);
    render_inbound(out, m);
}

type Upstreams = [(String, std::sync::Arc<super::proxy::UpstreamStats>)];

/// Counters and gauges of each upstream.
fn render_upstreams(out: &mut String, ups: &Upstreams) {
    type UpField = fn(&super::proxy::UpstreamStats) -> u64;
    let per_upstream: [(&str, &str, &str, UpField); 9] = [
        ("murmur_proxy_accepted_total", "counter", "App connections accepted by an upstream.", |u| u.accepted.get()),
        ("murmur_proxy_failed_total", "counter", "App connections that failed after every attempt.", |u| {
            u.failed.get()
        }),
        ("murmur_proxy_retries_total", "counter", "Connection attempts after the first.", |u| u.retries.get()),
        ("murmur_proxy_retry_budget_exhausted_total", "counter", "Retries refused by the retry budget.", |u| {
            u.budget_exhausted.get()
        }),
        (
            "murmur_proxy_breaker_rejections_total",
            "counter",
            "Connections closed at once by the circuit breaker.",
            |u| u.breaker_rejections.get(),
        ),
        ("murmur_proxy_no_endpoints_total", "counter", "Connections with no endpoint to try.", |u| {
            u.no_endpoints.get()
        }),
        (
            "murmur_proxy_plaintext_skipped_total",
            "counter",
            "Endpoints left out of a pick: no sidecar fronts them, and this sidecar uses mutual TLS.",
            |u| u.plaintext_skipped.get(),
        ),
        ("murmur_proxy_upstream_active_connections", "gauge", "App connections open now.", |u| u.active.get()),
        ("murmur_proxy_upstream_pending_connections", "gauge", "App connections waiting for an ack now.", |u| {
            u.pending.get()
        }),
    ];
    for (name, kind, help, f) in per_upstream {
        header(out, name, kind, help);
        for (alias, u) in ups {
            let _ = writeln!(out, "{name}{{upstream=\"{alias}\"}} {}", f(u));
        }
    }
}

/// Each endpoint of each upstream: counters, failures by cause, latency summaries.
fn render_endpoints(out: &mut String, ups: &Upstreams) {
    let eps: Vec<(String, String, std::sync::Arc<super::proxy::EndpointStats>)> = ups
        .iter()
        .flat_map(|(alias, u)| u.endpoints().into_iter().map(move |(id, e)| (alias.clone(), id, e)))
        .collect();
    type EpField = fn(&super::proxy::EndpointStats) -> u64;
    let per_endpoint: [(&str, &str, &str, EpField); 6] = [
        ("murmur_proxy_connections_total", "counter", "Connections carried to an endpoint.", |e| e.connections.get()),
        ("murmur_proxy_active_connections", "gauge", "Connections open to an endpoint now.", |e| e.active.get()),
        ("murmur_proxy_sent_bytes_total", "counter", "Bytes from the app to an endpoint.", |e| e.bytes_sent.get()),
        ("murmur_proxy_received_bytes_total", "counter", "Bytes from an endpoint to the app.", |e| {
            e.bytes_received.get()
        }),
        ("murmur_proxy_ejections_total", "counter", "Times outlier detection ejected an endpoint.", |e| {
            e.ejections.get()
        }),
        ("murmur_proxy_endpoint_ewma_seconds", "gauge", "Peak-EWMA connect latency of an endpoint.", |e| {
            e.ewma_us.get()
        }),
    ];
    for (name, kind, help, f) in per_endpoint {
        header(out, name, kind, help);
        for (alias, id, e) in &eps {
            let v = f(e);
            if name.ends_with("_seconds") {
                let _ = writeln!(out, "{name}{{upstream=\"{alias}\",endpoint=\"{id}\"}} {}", v as f64 / 1e6);
            } else {
                let _ = writeln!(out, "{name}{{upstream=\"{alias}\",endpoint=\"{id}\"}} {v}");
            }
        }
    }
    header(out, "murmur_proxy_failures_total", "counter", "Failed connection attempts, by cause.");
    for (alias, id, e) in &eps {
        for c in super::proxy::FailureCause::ALL {
            let _ = writeln!(
                out,
                "murmur_proxy_failures_total{{upstream=\"{alias}\",endpoint=\"{id}\",cause=\"{}\"}} {}",
                c.as_str(),
                e.failures(c)
            );
        }
    }
    for (name, help, pick) in [
        ("murmur_proxy_connect_latency_seconds", "Time from picking an endpoint to its ack.", 0),
        ("murmur_proxy_connection_duration_seconds", "Lifetime of proxied connections.", 1),
    ] {
        header(out, name, "summary", help);
        for (alias, id, e) in &eps {
            let h = if pick == 0 { &e.connect_latency } else { &e.duration };
            let q = h.quantiles();
            let labels = format!("upstream=\"{alias}\",endpoint=\"{id}\"");
            let _ = writeln!(out, "{name}{{{labels},quantile=\"0.5\"}} {}", q.p50 as f64 / 1e6);
            let _ = writeln!(out, "{name}{{{labels},quantile=\"0.99\"}} {}", q.p99 as f64 / 1e6);
            let _ = writeln!(out, "{name}{{{labels},quantile=\"1\"}} {}", q.max as f64 / 1e6);
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", q.sum as f64 / 1e6);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", q.count);
        }
    }
}

/// The access log's drops and the inbound listener.
fn render_inbound(out: &mut String, m: &Metrics) {
    metric(
        out,
        "murmur_proxy_access_log_dropped_total",
        "counter",
        "Access-log lines dropped because the writer fell behind (--access-log).",
        m.proxy.access_log_dropped.get(),
    );
    let inb = &m.proxy.inbound;
    metric(
        out,
        "murmur_proxy_inbound_connections_total",
        "counter",
        "QUIC connections accepted by the inbound listener.",
        inb.connections.get(),
    );
    metric(
        out,
        "murmur_proxy_inbound_handshake_failures_total",
        "counter",
        "QUIC handshakes refused (wrong CA, no certificate).",
        inb.handshake_failures.get(),
    );
    metric(
        out,
        "murmur_proxy_inbound_streams_total",
        "counter",
        "Inbound streams spliced to a local app.",
        inb.streams.get(),
    );
    metric(out, "murmur_proxy_inbound_active_streams", "gauge", "Inbound streams open now.", inb.active.get());
    metric(
        out,
        "murmur_proxy_inbound_dropped_datagrams_total",
        "counter",
        "UDP replies too large for a QUIC datagram, dropped.",
        inb.dropped_datagrams.get(),
    );
    header(out, "murmur_proxy_inbound_refused_total", "counter", "Inbound streams refused, by reason.");
    for (reason, n) in inb.refused() {
        let _ = writeln!(out, "murmur_proxy_inbound_refused_total{{reason=\"{reason}\"}} {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_has_help_and_type() {
        let m = Metrics::default();
        m.dns.query(QType::Srv, Rcode::NxDomain);
        let text = render_prometheus(&m);
        assert!(text.contains("murmur_dns_queries_total{qtype=\"SRV\",rcode=\"NXDOMAIN\"} 1"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            assert!(text.contains(&format!("# TYPE {name} ")), "no TYPE for {name}");
        }
    }

    /// Runs promtool when it is installed (CI installs it); says so loudly when not.
    #[test]
    fn promtool_accepts_the_output() {
        let Ok(mut child) = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        else {
            assert!(std::env::var_os("CI").is_none(), "promtool must be installed in CI (.ci/run installs it)");
            eprintln!("SKIPPED: promtool is not installed (apt-get install prometheus); .ci/run installs it");
            return;
        };
        use std::io::Write as _;
        let m = Metrics::default();
        let up = m.proxy.add_upstream("orders", "orders", "127.100.0.1:80");
        let ep = up.endpoint("orders-1");
        ep.connect_latency.record(std::time::Duration::from_micros(250));
        ep.failure(super::super::proxy::FailureCause::ConnectTimeout);
        m.proxy.inbound.refuse("not_allowed");
        let text = render_prometheus(&m);
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(text.as_bytes()).expect("write to promtool");
        }
        let out = child.wait_with_output().expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
