//! How fast a Consul blocking query wakes: `cargo bench --bench blocking`.
//!
//! One agent in this process (127.65.0.10) and W watchers, each blocked in
//! `GET /v1/health/service/svc?index=N&wait=60s` over its own HTTP connection. `svc` has
//! 5 instances; each round registers a sixth or removes it again; a task subscribed to the replica
//! notes the instant the new snapshot carries the change, and each watcher the instant
//! its whole reply has arrived. The figure is the difference: from the change reaching
//! the replica to the watcher holding the answer (the goal is under 100 ms). Rounds with
//! W = 1 and W = 100; prints p50, p99 and the worst, and writes
//! `benches/results/blocking-<unix time>.json`.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::write_json;
use murmur::{Config, Layer, Origin, ServiceSpec};
use murmur_protocol::{InstanceId, ServiceName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUNDS_ONE: usize = 200;
const ROUNDS_MANY: usize = 30;
const MANY: usize = 100;
/// Instances of the watched service.
const INSTANCES: u16 = 5;

/// `GET path`; returns the reply's X-Consul-Index and when the reply had fully arrived.
async fn get(api: SocketAddr, path: String) -> (u64, Instant) {
    let mut s = tokio::net::TcpStream::connect(api).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let at = Instant::now();
    let text = String::from_utf8_lossy(&raw);
    let index = text
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-consul-index:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse().ok())
        .expect("X-Consul-Index");
    (index, at)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let ip: IpAddr = [127, 65, 0, 10].into();
    let layer = Layer {
        name: Some("blocking".into()),
        bind: Some(SocketAddr::new(ip, 0)),
        insecure: Some(true),
        dns_listen: Some(SocketAddr::new(ip, 0)),
        dns_upstreams: Some(vec![]),
        api_listen: Some(SocketAddr::new(ip, 0)),
        ..Default::default()
    };
    let agent = murmur::Agent::start(Config::from_layer(layer, "").expect("config")).await.expect("agent starts");
    let api = agent.api_addr();
    let service = ServiceName::new("svc").expect("name");
    // When each snapshot version that changed `svc` was published.
    let seen: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let mut rx = agent.registry().subscribe();
    let (svc, log) = (service.clone(), seen.clone());
    tokio::spawn(async move {
        let mut last = 0;
        while rx.changed().await.is_ok() {
            let index = rx.borrow_and_update().index_of(&svc);
            if index != last {
                last = index;
                log.lock().expect("log").push((index, Instant::now()));
            }
        }
    });
    let publisher = agent.publisher();
    let spec = |n: u16| {
        let mut spec = ServiceSpec::new(service.clone(), 10_000 + n);
        spec.id = Some(InstanceId::new(&format!("svc-{n}")).expect("id"));
        spec.check.kind = murmur::CheckKind::None;
        spec
    };
    for n in 0..INSTANCES {
        publisher.register(&spec(n), Origin::Config).await.expect("register");
    }
    // Each round's change: one more instance, or that one gone again, so the service
    // keeps its size.
    let mut extra = false;
    let mut change = async || {
        extra = !extra;
        let s = spec(INSTANCES);
        match extra {
            true => drop(publisher.register(&s, Origin::Config).await.expect("register")),
            false => publisher.deregister(s.id.as_ref().expect("id"), Origin::Config).await.expect("deregister"),
        }
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut results = serde_json::Map::new();
    for (watchers, rounds) in [(1usize, ROUNDS_ONE), (MANY, ROUNDS_MANY)] {
        let mut wake_ms: Vec<f64> = Vec::new();
        let mut total_ms: Vec<f64> = Vec::new();
        for _ in 0..rounds {
            let (index, _) = get(api, "/v1/health/service/svc".into()).await;
            let tasks: Vec<_> = (0..watchers)
                .map(|_| tokio::spawn(get(api, format!("/v1/health/service/svc?index={index}&wait=60s"))))
                .collect();
            // Let every watcher reach its wait before the change.
            tokio::time::sleep(Duration::from_millis(50 + watchers as u64)).await;
            let before = seen.lock().expect("log").len();
            let written = Instant::now();
            change().await;
            let mut replies = Vec::new();
            for t in tasks {
                replies.push(t.await.expect("watcher"));
            }
            let new_index = replies.iter().map(|(i, _)| *i).min().expect("replies");
            assert!(new_index > index, "woken by the change");
            // The first snapshot after the change is the one that moved the index; the
            // task that notes it may run after the watchers' replies (a reply before it
            // counts as 0).
            let mut replica_at = None;
            for _ in 0..100 {
                replica_at = seen.lock().expect("log").get(before).map(|(_, at)| *at);
                if replica_at.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let replica_at = replica_at.expect("the change reached the replica");
            total_ms.extend(replies.iter().map(|(_, at)| at.duration_since(written).as_secs_f64() * 1000.0));
            wake_ms
                .extend(replies.iter().map(|(_, at)| at.saturating_duration_since(replica_at).as_secs_f64() * 1000.0));
        }
        wake_ms.sort_by(f64::total_cmp);
        total_ms.sort_by(f64::total_cmp);
        let q = |v: &[f64]| (quantile(v, 0.5), quantile(v, 0.99), quantile(v, 1.0));
        let ((p50, p99, max), (t50, t99, tmax)) = (q(&wake_ms), q(&total_ms));
        println!(
            "{watchers:>3} watcher(s), {rounds} rounds: change in the replica -> reply at the watcher: \
             p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms; from the registration call (gossip write, \
             view, the registry's 50 ms coalescing): p50 {t50:.2} ms, p99 {t99:.2} ms, max {tmax:.2} ms"
        );
        results.insert(
            format!("watchers_{watchers}"),
            serde_json::json!({
                "rounds": rounds,
                "replica_to_reply_ms": { "p50": p50, "p99": p99, "max": max },
                "registration_to_reply_ms": { "p50": t50, "p99": t99, "max": tmax },
            }),
        );
    }
    write_json("blocking", &serde_json::Value::Object(results));
    agent.kill().await;
}
