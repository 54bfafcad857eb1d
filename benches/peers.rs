//! murmur side by side with the tools users would pick instead, measured in the same
//! run on the same machine: `bash benches/peers.sh` (which installs the peers from
//! Debian, runs this with `cargo bench --bench peers`, then draws the plots).
//!
//! 1. Proxy path: client → outbound proxy → inbound proxy → nginx, through murmur's
//!    sidecars (QUIC, mutual TLS), an HAProxy pair in TCP mode (plaintext), an HAProxy
//!    pair with mutual TLS between them, and direct. wrk at 1 and 16 connections
//!    (100 B answers), at 4 connections for 1 MiB answers, with a fresh connection per
//!    request (16 at a time), iperf3 for bulk; CPU per request and peak RSS of each
//!    proxy in each run.
//! 2. DNS: dnsperf against murmur's stub, dnsmasq and unbound serving the same names
//!    (A, SRV and misses): saturated qps, then latency percentiles at a paced rate.
//! 3. Membership: N murmur agents and N Serf agents on loopback: convergence after
//!    start, kill -9 detection by every other agent, RSS, idle CPU and gossip bytes
//!    on the wire per agent.
//!
//! Every comparison alternates the targets round by round; medians are reported and
//! the ratios murmur/peer are the figures to read: absolute numbers on a shared 2-core
//! machine are noisy (load generator, proxies and backend share the cores).
//!
//! Environment: `MURMUR_PEERS` (parts: `proxy,dns,membership`, default all),
//! `MURMUR_PEERS_SECS` (length of each load run, default 5), `MURMUR_PEERS_ROUNDS`
//! (default 3), `MURMUR_PEERS_SIZES` (membership sizes, default `10,50,100`),
//! `MURMUR_PEERS_HAPROXY_THREADS` (threads of each HAProxy, default 1),
//! `MURMUR_PEERS_BASELINE` (another murmur binary, run beside this build in the proxy
//! part: a before and after measured in the same run),
//! `MURMUR_PEERS_KEEP` (keep the scratch directory with configs and logs).

mod common;
mod peers_support;

use peers_support::*;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let settings = Settings::from_env();
    let work = WorkDir::new();
    let mut results = serde_json::Map::new();
    results.insert("settings".into(), settings.json());
    results.insert("machine".into(), machine());
    let mut md = String::new();
    if settings.wants("proxy") {
        let (json, table) = proxy::run(&settings, &work);
        results.insert("proxy".into(), json);
        md.push_str(&table);
    }
    if settings.wants("dns") {
        let (json, table) = dns::run(&settings, &work);
        results.insert("dns".into(), json);
        md.push_str(&table);
    }
    if settings.wants("membership") {
        let (json, table) = membership::run(&settings, &work);
        results.insert("membership".into(), json);
        md.push_str(&table);
    }
    write_results(serde_json::Value::Object(results), &md);
}
