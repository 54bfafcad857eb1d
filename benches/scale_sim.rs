//! Membership beyond one machine's processes: `cargo bench --bench scale_sim`.
//! Simulates N agents in this one process, each with the real gossip stack (the SWIM core
//! over our sealed, encrypted UDP transport, each on its own 127.90.x.y address) and a
//! realistic state (a node record, one instance, its health). For each N it reports:
//! time until every agent sees all N alive, time until every agent marks a stopped agent
//! dead, gossip bytes per agent per second, the CPU this process used (cores) and its
//! RSS. It gives up on a size when convergence takes longer than the deadline or RSS
//! passes the memory cap, and says which.
//!
//! Environment: `MURMUR_SIM_NODES` (sizes, default `50,100,1000,5000`), `MURMUR_SIM_INTERVAL_MS`
//! (gossip interval, default 200 as in the agent), `MURMUR_SIM_DEADLINE_S` (per phase,
//! default 120), `MURMUR_SIM_MAX_RSS_MB` (default 12000).
//!
//! One machine's two cores run every agent here, so this measures where the *protocol's*
//! per-agent cost (digest size grows with N) meets one machine's CPU, not what N real
//! hosts would see: see the printed CPU figure.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use murmur::internals::{spawn_gossip, Gossip, GossipConfig, Metrics};
use murmur::{Keyring, MemberStatus};
use murmur_protocol::{
    encode_value, keys, Health, HealthRecord, InstanceId, InstanceRecord, Key, NodeName, NodeRecord, ServiceName,
};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn ip(i: usize) -> IpAddr {
    let j = i + 1;
    IpAddr::from([127, 90 + (j >> 16) as u8, (j >> 8) as u8, j as u8])
}

/// CPU seconds this process has used.
fn cpu_seconds() -> f64 {
    common::cpu_seconds(std::process::id())
}

/// This process's resident memory, MB.
fn rss_mb() -> f64 {
    common::rss_mb(std::process::id())
}

fn initial_state(i: usize, addr: IpAddr) -> Vec<(String, String)> {
    let name = format!("sim-{i}");
    let node = NodeRecord {
        name: NodeName::new(&name).expect("valid name"),
        zone: None,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        advertise: addr,
        proxy: None,
        started_unix_ms: 1,
    };
    let id = InstanceId::new(&format!("app-{i}")).expect("valid id");
    let instance = InstanceRecord {
        service: ServiceName::new("app").expect("valid service"),
        instance: id.clone(),
        address: addr,
        port: 8080,
        sidecar: false,
        tags: vec![],
        attributes: BTreeMap::new(),
        weight: 1,
    };
    vec![
        (keys::NODE.to_owned(), encode_value(&node)),
        (Key::Instance(id.clone()).render(), encode_value(&instance)),
        (Key::Health(id).render(), encode_value(&HealthRecord::new(Health::Passing, 1, ""))),
    ]
}

#[derive(Debug)]
enum Outcome {
    Done(Duration),
    Deadline { seen: f64 },
    Memory { seen: f64 },
}

impl Outcome {
    fn json(&self) -> serde_json::Value {
        match self {
            Outcome::Done(d) => serde_json::json!({"ms": d.as_secs_f64() * 1000.0}),
            Outcome::Deadline { seen } => serde_json::json!({"gave_up": "deadline", "share_done": seen}),
            Outcome::Memory { seen } => serde_json::json!({"gave_up": "memory cap", "share_done": seen}),
        }
    }
    fn text(&self) -> String {
        match self {
            Outcome::Done(d) => format!("{:.2} s", d.as_secs_f64()),
            Outcome::Deadline { seen } => format!("gave up at the deadline ({:.0}% done)", seen * 100.0),
            Outcome::Memory { seen } => format!("gave up at the memory cap ({:.0}% done)", seen * 100.0),
        }
    }
}

/// Polls `share` (0..=1) every 100 ms until it reaches 1, the deadline passes or RSS
/// passes the cap.
async fn until(deadline: Duration, cap_mb: f64, mut share: impl FnMut() -> f64) -> Outcome {
    let start = Instant::now();
    let mut last_report = 0;
    loop {
        let seen = share();
        if seen >= 1.0 {
            return Outcome::Done(start.elapsed());
        }
        if start.elapsed() > deadline {
            return Outcome::Deadline { seen };
        }
        if rss_mb() > cap_mb {
            return Outcome::Memory { seen };
        }
        if start.elapsed().as_secs() / 10 != last_report {
            last_report = start.elapsed().as_secs() / 10;
            println!("    {:.0} s: {:.1}% done, RSS {:.0} MB", start.elapsed().as_secs_f64(), seen * 100.0, rss_mb());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops every agent at once, waiting at most 30 s: a CPU-starved simulation can take
/// long to wind down one by one.
async fn stop_all(nodes: Vec<Option<Gossip>>) {
    let mut stops = tokio::task::JoinSet::new();
    for g in nodes.into_iter().flatten() {
        stops.spawn(g.stop());
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), async { while stops.join_next().await.is_some() {} }).await;
}

async fn simulate(n: usize, interval: Duration, deadline: Duration, cap_mb: f64) -> serde_json::Value {
    let keyring = Keyring::from_base64(&[Keyring::generate_base64()]).expect("a fresh key");
    let metrics = Arc::new(Metrics::default());
    let seeds: Vec<String> = (0..3.min(n)).map(|i| format!("{}:7946", ip(i))).collect();
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let mut nodes: Vec<Option<Gossip>> = Vec::with_capacity(n);
    let defaults = murmur::Settings::resolve(Default::default());
    for i in 0..n {
        let addr = SocketAddr::new(ip(i), 7946);
        let config = GossipConfig {
            cluster: "sim".into(),
            bind: addr,
            advertise: addr,
            seeds: seeds.clone(),
            keyring: Some(keyring.clone()),
            key_file: None,
            interval,
            probe_interval: defaults.probe_interval,
            probe_timeout: murmur::internals::DEFAULT_PROBE_TIMEOUT,
            indirect_probes: defaults.indirect_probes,
            suspicion_mult: defaults.suspicion_mult,
            retransmit_mult: defaults.retransmit_mult,
            sync_interval: defaults.sync_interval,
            dead_grace: Duration::from_secs(3600),
            tombstone_grace: defaults.tombstone_grace,
            drain: Duration::ZERO,
        };
        let started = match tokio::net::UdpSocket::bind(addr).await {
            Ok(socket) => {
                spawn_gossip(&config, &format!("sim-{i}"), 1, socket, initial_state(i, ip(i)), metrics.clone())
                    .await
                    .map_err(|e| format!("{e:#}"))
            }
            Err(e) => Err(format!("bind {addr}: {e}")),
        };
        let gossip = match started {
            Ok(g) => g,
            Err(error) => {
                // Typically the open-file limit: each agent holds a gossip socket and
                // the two loopback sockets of its envelope codec.
                println!("  N={n}: could not start agent {i}: {error}");
                stop_all(nodes).await;
                return serde_json::json!({"nodes": n, "gave_up": "start", "started": i, "error": error});
            }
        };
        nodes.push(Some(gossip));
    }
    let spawn_s = started.elapsed().as_secs_f64();
    let views: Vec<_> = nodes.iter().flatten().map(Gossip::view).collect();
    let alive =
        |v: &murmur::internals::ClusterView| v.nodes.values().filter(|m| m.status == MemberStatus::Alive).count();
    let converge = until(deadline, cap_mb, || {
        let seen: usize = views.iter().map(|v| alive(&v.borrow())).sum();
        seen as f64 / (n * n) as f64
    })
    .await;
    let converge_from_first_start = started.elapsed();
    println!("  N={n}: started in {spawn_s:.1} s; convergence {}", converge.text());
    let mut report = serde_json::json!({
        "nodes": n,
        "interval_ms": interval.as_millis() as u64,
        "spawn_s": spawn_s,
        "converge": converge.json(),
        "converge_from_first_start_ms": converge_from_first_start.as_secs_f64() * 1000.0,
    });
    if matches!(converge, Outcome::Done(_)) {
        // Idle cost: bytes and CPU over a 10 s window.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (b0, c0, t0) = (metrics.gossip.bytes_sent.get(), cpu_seconds(), Instant::now());
        tokio::time::sleep(Duration::from_secs(10)).await;
        let secs = t0.elapsed().as_secs_f64();
        let bytes = (metrics.gossip.bytes_sent.get() - b0) as f64 / secs / n as f64;
        let cores = (cpu_seconds() - c0) / secs;
        let per_agent_ms = cores * 1000.0 / n as f64;
        println!(
            "  N={n}: {bytes:.0} B/s sent per agent, {cores:.2} cores busy ({per_agent_ms:.1} ms of CPU per agent per s), RSS {:.0} MB",
            rss_mb()
        );
        report["bytes_sent_per_agent_per_s"] = bytes.into();
        report["idle_cores"] = cores.into();
        report["cpu_ms_per_agent_per_s"] = per_agent_ms.into();

        // A crashed agent (stopped without a word) is marked dead by every other agent.
        let victim = n / 2;
        let name = format!("sim-{victim}");
        if let Some(g) = nodes[victim].take() {
            g.stop().await;
        }
        let others: Vec<_> = views.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, v)| v).collect();
        let detect = until(deadline, cap_mb, || {
            let marked = others
                .iter()
                .filter(|v| v.borrow().nodes.values().all(|m| m.name != name || m.status != MemberStatus::Alive))
                .count();
            marked as f64 / others.len() as f64
        })
        .await;
        println!("  N={n}: a stopped agent marked dead everywhere: {}", detect.text());
        report["detect"] = detect.json();
    }
    report["cpu_seconds"] = (cpu_seconds() - cpu0).into();
    report["rss_mb"] = rss_mb().into();
    stop_all(nodes).await;
    report
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<usize> = std::env::var("MURMUR_SIM_NODES")
        .unwrap_or_else(|_| "50,100,1000,5000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| (2..=60_000).contains(n))
        .collect();
    let interval = Duration::from_millis(env_or("MURMUR_SIM_INTERVAL_MS", 200));
    let deadline = Duration::from_secs(env_or("MURMUR_SIM_DEADLINE_S", 120));
    let cap_mb = env_or("MURMUR_SIM_MAX_RSS_MB", 12_000.0);
    let mut runs = Vec::new();
    for n in sizes {
        println!("simulating {n} agents (gossip every {} ms)", interval.as_millis());
        runs.push(simulate(n, interval, deadline, cap_mb).await);
        // Let the sockets and tasks of this size go before the next.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    common::write_json("scale", &serde_json::json!({ "runs": runs }));
}
