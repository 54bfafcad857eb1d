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
    let g = &m.gossip;
    metric(&mut out, "murmur_gossip_packets_sent_total", "counter", "Gossip datagrams sent.", g.packets_sent.get());
    metric(
        &mut out,
        "murmur_gossip_packets_received_total",
        "counter",
        "Gossip datagrams received.",
        g.packets_received.get(),
    );
    metric(&mut out, "murmur_gossip_sent_bytes_total", "counter", "Gossip bytes sent.", g.bytes_sent.get());
    metric(&mut out, "murmur_gossip_received_bytes_total", "counter", "Gossip bytes received.", g.bytes_received.get());
    let _ = writeln!(
        out,
        "# HELP murmur_gossip_dropped_packets_total Gossip datagrams dropped, by reason.\n\
         # TYPE murmur_gossip_dropped_packets_total counter\n\
         murmur_gossip_dropped_packets_total{{reason=\"undecryptable\"}} {}\n\
         murmur_gossip_dropped_packets_total{{reason=\"malformed\"}} {}\n\
         murmur_gossip_dropped_packets_total{{reason=\"stale\"}} {}",
        g.undecryptable.get(),
        g.malformed.get(),
        g.stale.get()
    );
    metric(
        &mut out,
        "murmur_gossip_bad_values_total",
        "counter",
        "Gossip values skipped because they did not decode.",
        g.bad_values.get(),
    );
    let mm = &m.members;
    let _ = writeln!(
        out,
        "# HELP murmur_members Cluster members by status.\n# TYPE murmur_members gauge\n\
         murmur_members{{status=\"alive\"}} {}\nmurmur_members{{status=\"dead\"}} {}\nmurmur_members{{status=\"left\"}} {}",
        mm.alive.get(),
        mm.dead.get(),
        mm.left.get()
    );
    metric(
        &mut out,
        "murmur_registry_instances",
        "gauge",
        "Service instances in the local replica.",
        mm.instances.get(),
    );
    metric(&mut out, "murmur_registry_snapshots_total", "counter", "Registry snapshots built.", mm.snapshots.get());
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
    metric(&mut out, "murmur_dns_forwarded_total", "counter", "DNS queries forwarded upstream.", m.dns.forwarded.get());
    metric(
        &mut out,
        "murmur_dns_forward_failures_total",
        "counter",
        "Forwarded DNS queries no upstream answered.",
        m.dns.forward_failures.get(),
    );
    let _ = writeln!(
        out,
        "# HELP murmur_health_checks_total Health checks run, by result.\n# TYPE murmur_health_checks_total counter\n\
         murmur_health_checks_total{{result=\"pass\"}} {}\nmurmur_health_checks_total{{result=\"fail\"}} {}",
        m.health.passed.get(),
        m.health.failed.get()
    );
    metric(
        &mut out,
        "murmur_health_transitions_total",
        "counter",
        "Health state changes published.",
        m.health.transitions.get(),
    );
    let _ = writeln!(
        out,
        "# HELP murmur_api_requests_total Admin API requests, by status class.\n# TYPE murmur_api_requests_total counter\n\
         murmur_api_requests_total{{class=\"2xx\"}} {}\nmurmur_api_requests_total{{class=\"4xx\"}} {}\nmurmur_api_requests_total{{class=\"5xx\"}} {}",
        m.api.ok.get(),
        m.api.client_errors.get(),
        m.api.server_errors.get()
    );
    out
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
        let text = render_prometheus(&Metrics::default());
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
