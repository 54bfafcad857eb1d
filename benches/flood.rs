//! Lookups under a flood: `cargo bench --bench flood`. Two agent processes (the real
//! binary) on loopback; agent A serves 50 services. A prober asks A's stub for one name
//! every 2 ms and records the latency, first with A idle, then while this process floods
//! A with (1) DNS queries from 8 senders that do not wait for answers — 50,000 per
//! second in all, then as fast as they can — and (2) garbage datagrams at A's DNS and
//! gossip ports (10,000 per second, then as fast as it can), at once. It reports
//! the prober's p50/p99/p99.9 and lost lookups in each phase, how many flood queries A
//! answered, A's counters of datagrams it refused, and whether B kept A alive throughout
//! (garbage at the gossip port must not cost A its membership). The phases run twice:
//! with A's per-source rate limit off, then at its default. The prober, like the
//! standard resolver, asks from a fresh socket each time, from a thread and runtime of
//! its own; each flood sender uses one socket.
//!
//! The flood and the prober share the machine's 2 cores with the agents: the figures show
//! what a saturated agent still gives its own app, not a line rate.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use murmur::client::{addresses, query, ApiClient, MemberJson};

use common::{agent_command, keygen, metric, write_json, Proc};

const A: [u8; 4] = [127, 68, 0, 1];
const B: [u8; 4] = [127, 68, 0, 2];
const PHASE: Duration = Duration::from_secs(10);

fn agent(name: &str, ip: [u8; 4], key: &str, extra: &[String]) -> Proc {
    let ip = IpAddr::from(ip);
    common::start(
        name,
        agent_command(name, ip, key, None)
            .args(["--namespace", "flood.local"])
            .args(extra)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// Looks a name up every 2 ms until `stop`, each lookup on its own with a 500 ms
/// timeout (so a lost one does not hold up the next); returns the latencies (ns) and
/// the lookups lost.
async fn probe(dns: SocketAddr, stop: Arc<AtomicBool>) -> (Histogram<u64>, u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lookups = tokio::task::JoinSet::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        lookups.spawn(async move {
            let t = Instant::now();
            match query(dns, "svc7.flood.local.", RecordType::A, Duration::from_millis(500)).await {
                Ok(m) if !addresses(&m).is_empty() => Some(t.elapsed().as_nanos() as u64),
                _ => None,
            }
        });
    }
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    let mut lost = 0;
    while let Some(r) = lookups.join_next().await {
        match r.ok().flatten() {
            Some(ns) => h.record(ns).expect("record"),
            None => lost += 1,
        }
    }
    (h, lost)
}

/// Sends DNS queries without waiting for answers, at `rate` per second (0: as fast as it
/// can), counting the answers that come back.
async fn query_flood(
    dns: SocketAddr,
    rate: u64,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
) {
    let sock = Arc::new(tokio::net::UdpSocket::bind((IpAddr::from([127, 68, 0, 9]), 0)).await.expect("bind"));
    let reader = {
        let (sock, stop, answered) = (sock.clone(), stop.clone(), answered.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), sock.recv(&mut buf)).await {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let mut id: u16 = 0;
    let started = Instant::now();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        id = id.wrapping_add(1);
        n += 1;
        if rate > 0 && n.is_multiple_of(32) {
            let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let mut m = Message::query();
        m.metadata.id = id;
        let name = Name::from_ascii(format!("svc{}.flood.local.", id % 60)).expect("valid name");
        m.add_query(Query::query(name, RecordType::A));
        if sock.send_to(&m.to_vec().expect("encode"), dns).await.is_ok() {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        if id.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    let _ = reader.await;
}

/// Sends pseudo-random garbage to `targets` until `stop`, `rate` datagrams per second
/// (0: as fast as it can).
async fn garbage_flood(targets: Vec<SocketAddr>, rate: u64, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let started = Instant::now();
    let mut n: u64 = 0;
    let sock = tokio::net::UdpSocket::bind((IpAddr::from([127, 68, 0, 10]), 0)).await.expect("bind");
    let mut x: u32 = 0x9e37_79b9;
    let mut buf = vec![0u8; 1400];
    while !stop.load(Ordering::Relaxed) {
        for target in &targets {
            let len = 1 + (x as usize % buf.len());
            for b in buf.iter_mut().take(len) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            if sock.send_to(&buf[..len], target).await.is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            n += 1;
        }
        if rate > 0 {
            tokio::time::sleep_until((started + Duration::from_secs_f64(n as f64 / rate as f64)).into()).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn b_sees_a_alive(api: &ApiClient) -> bool {
    let members = api.get("/v1/members").await.ok().and_then(|t| serde_json::from_str::<Vec<MemberJson>>(&t).ok());
    members.is_some_and(|m| m.iter().any(|m| m.name == "flood-a" && m.status == "alive"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let key = keygen();
    let mut report = serde_json::Map::new();
    // The same phases with the stub's per-source rate limit off, then at its default.
    let default = murmur::Settings::resolve(Default::default()).dns_rate_limit;
    let settings = [("no rate limit".to_owned(), 0), (format!("default rate limit ({default}/s per socket)"), default)];
    for (setting, limit) in settings {
        println!("{setting}:");
        report.insert(setting, phases(&key, limit).await.into());
    }
    write_json("flood", &report.into());
}

/// Starts the two agents, A's stub limited to `limit` queries/s per socket, and runs
/// every phase.
async fn phases(key: &str, limit: u32) -> serde_json::Map<String, serde_json::Value> {
    let mut a_args: Vec<String> =
        (0..50).flat_map(|n| ["--service".to_owned(), format!("svc{n}:80,id=svc{n}-0,check=none")]).collect();
    a_args.extend(["--dns-rate-limit".to_owned(), limit.to_string()]);
    let _a = agent("flood-a", A, key, &a_args);
    let _b = agent("flood-b", B, key, &["--seed".into(), format!("{}:7946", IpAddr::from(A))]);
    let dns: SocketAddr = (IpAddr::from(A), 8600).into();
    let (api_a, api_b) =
        (ApiClient::new((IpAddr::from(A), 8500).into()), ApiClient::new((IpAddr::from(B), 8500).into()));
    let start = Instant::now();
    while !b_sees_a_alive(&api_b).await {
        assert!(start.elapsed() < Duration::from_secs(30), "the two agents never met");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut report = serde_json::Map::new();
    // (phase, offered queries and garbage datagrams per second; 0 = unbounded).
    let phases = [
        ("idle", None),
        ("50k queries/s + 10k garbage/s", Some((50_000, 10_000))),
        ("unbounded queries + garbage", Some((0, 0))),
    ];
    for (phase, rate) in phases {
        let flood = rate.is_some();
        let (query_rate, garbage_rate): (u64, u64) = rate.unwrap_or((0, 0));
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, answered, garbage) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let before = api_a.get("/metrics").await.unwrap_or_default();
        let mut tasks = Vec::new();
        if flood {
            for _ in 0..8 {
                let per_sender = query_rate / 8;
                tasks.push(tokio::spawn(query_flood(dns, per_sender, stop.clone(), sent.clone(), answered.clone())));
            }
            let targets = vec![dns, (IpAddr::from(A), 7946).into()];
            tasks.push(tokio::spawn(garbage_flood(targets, garbage_rate, stop.clone(), garbage.clone())));
        }
        // The prober runs on a thread and runtime of its own, so that its latencies are
        // the stub's, not the wait behind the flood senders' tasks in this runtime.
        let prober = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(probe(dns, stop))
            })
        };
        // Watch membership through the phase: B must keep A alive.
        let phase_start = Instant::now();
        let mut a_dropped = false;
        while phase_start.elapsed() < PHASE {
            a_dropped |= !b_sees_a_alive(&api_b).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let (h, lost) = prober.join().expect("prober");
        for t in tasks {
            let _ = t.await;
        }
        let after = api_a.get("/metrics").await.unwrap_or_default();
        let delta = |name: &str| metric(&after, name).saturating_sub(metric(&before, name));
        let secs = phase_start.elapsed().as_secs_f64();
        let line = serde_json::json!({
            "lookups": h.len(), "lost": lost,
            "p50_us": us(&h, 0.5), "p99_us": us(&h, 0.99), "p999_us": us(&h, 0.999),
            "flood_queries_per_s": sent.load(Ordering::Relaxed) as f64 / secs,
            "flood_answered_per_s": answered.load(Ordering::Relaxed) as f64 / secs,
            "rate_limited_per_s": delta("murmur_dns_rate_limited_total") as f64 / secs,
            "garbage_datagrams_per_s": garbage.load(Ordering::Relaxed) as f64 / secs,
            "gossip_refused": delta("murmur_gossip_dropped_packets_total{reason=\"undecryptable\"}")
                + delta("murmur_gossip_dropped_packets_total{reason=\"malformed\"}"),
            "b_saw_a_dead": a_dropped,
        });
        println!("  {phase}: {line}");
        report.insert(phase.into(), line);
    }
    report
}
