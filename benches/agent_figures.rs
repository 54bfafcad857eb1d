//! The agent's figures, measured on loopback with the real binary (release build):
//! `cargo bench --bench agent_figures` (`MURMUR_BENCH_AGENTS=50` for more). Ten agents, each on its own 127.40.0.x address:
//! convergence after start, time for a new instance to reach another agent's DNS
//! answers, time for a dead app and for a kill -9'd agent to leave them, idle RSS per
//! agent, and gossip bytes per agent per second. Prints a table and writes
//! `benches/results/agent-<unix time>.json`. Absolute figures are noisy on a shared
//! 2-core machine; each is a median over repeats with the worst case beside it.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{agent_command, keygen, metric, rss_mb, write_json};
use hickory_proto::rr::RecordType;
use murmur::client::{addresses, query, ApiClient};

/// Agents, unless `MURMUR_BENCH_AGENTS` says otherwise (6-200).
const DEFAULT_AGENTS: u8 = 10;

fn agents_wanted() -> u8 {
    std::env::var("MURMUR_BENCH_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (6..=200).contains(n))
        .unwrap_or(DEFAULT_AGENTS)
}
const WAIT: Duration = Duration::from_secs(30);

struct Agent {
    child: Child,
    ip: IpAddr,
}

impl Agent {
    fn api(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 8500)
    }
    fn dns(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 8600)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ip(i: u8) -> IpAddr {
    IpAddr::from([127, 67, 0, 10 + i])
}

fn start(i: u8, key: &str) -> Agent {
    let ip = ip(i);
    let child = agent_command(&format!("bench-{i}"), ip, key, None)
        .args(["--namespace", "bench.local", "--seed", &format!("{}:7946", self::ip(0))])
        .args(["--service", "pool:80,check=none", "--service", &format!("n{i}:81,check=none")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start murmur");
    Agent { child, ip }
}

async fn dns_a(dns: SocketAddr, name: &str) -> Vec<IpAddr> {
    query(dns, name, RecordType::A, Duration::from_millis(500)).await.map(|m| addresses(&m)).unwrap_or_default()
}

async fn until<F, Fut>(what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if cond().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[v.len() - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let key = keygen();
    #[allow(non_snake_case)]
    let N = agents_wanted();
    let t0 = Instant::now();
    let mut agents: Vec<Option<Agent>> = (0..N).map(|i| Some(start(i, &key))).collect();
    let dns_of = |a: &Option<Agent>| a.as_ref().map(Agent::dns);
    let converge = until("convergence", || {
        let dnss: Vec<SocketAddr> = agents.iter().filter_map(dns_of).collect();
        async move {
            for d in dnss {
                for j in 0..N {
                    if dns_a(d, &format!("n{j}.bench.local.")).await.is_empty() {
                        return false;
                    }
                }
            }
            true
        }
    })
    .await;
    println!(
        "{N} agents: every DNS stub answers every agent's instance {:.0} ms after the first start",
        ms(t0.elapsed())
    );

    // Idle: gossip bytes and RSS.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let read_bytes = || async {
        let mut sent = 0;
        let mut recv = 0;
        for a in agents.iter().flatten() {
            let m = ApiClient::new(a.api()).get("/metrics").await.expect("metrics");
            sent += metric(&m, "murmur_gossip_sent_bytes_total");
            recv += metric(&m, "murmur_gossip_received_bytes_total");
        }
        (sent, recv)
    };
    let window = Duration::from_secs(10);
    let (s0, r0) = read_bytes().await;
    let w0 = Instant::now();
    tokio::time::sleep(window).await;
    let (s1, r1) = read_bytes().await;
    let secs = w0.elapsed().as_secs_f64();
    let sent_per_agent = (s1 - s0) as f64 / secs / N as f64;
    let recv_per_agent = (r1 - r0) as f64 / secs / N as f64;
    let rss: Vec<f64> = agents.iter().flatten().map(|a| rss_mb(a.child.id())).collect();
    let (rss_med, rss_max) = stats(rss);

    // A new instance registered on agent 0 reaching agent 9's DNS answers.
    let api0 = ApiClient::new(agents[0].as_ref().expect("runs").api());
    let dns9 = agents[N as usize - 1].as_ref().expect("runs").dns();
    let mut appear = Vec::new();
    for k in 0..7 {
        let start = Instant::now();
        api0.put(&format!("/v1/services/fresh{k}/fresh{k}-0"), "{\"port\":81,\"check\":\"none\"}".into())
            .await
            .expect("register");
        until("new instance", || async { !dns_a(dns9, &format!("fresh{k}.bench.local.")).await.is_empty() }).await;
        appear.push(ms(start.elapsed()));
    }
    let (appear_med, appear_max) = stats(appear);

    // A dead app leaving agent 9's answers, with the default check (tcp every 2 s,
    // critical after 2 failures) and with a fast one (every 250 ms).
    let mut dead_app = Vec::new();
    for (label, opts) in [("default", ""), ("fast", ",\"interval\":\"250ms\",\"timeout\":\"200ms\"")] {
        let mut v = Vec::new();
        for k in 0..3 {
            let listener = tokio::net::TcpListener::bind((ip(0), 0)).await.expect("app");
            let port = listener.local_addr().expect("addr").port();
            let name = format!("app-{label}-{k}");
            api0.put(&format!("/v1/services/{name}/{name}-0"), format!("{{\"port\":{port}{opts}}}"))
                .await
                .expect("register");
            until("app healthy", || async { !dns_a(dns9, &format!("{name}.bench.local.")).await.is_empty() }).await;
            // Die at a random point of the check interval, as a real app would.
            tokio::time::sleep(Duration::from_millis(137 * k)).await;
            let start = Instant::now();
            drop(listener);
            until("dead app gone", || async { dns_a(dns9, &format!("{name}.bench.local.")).await.is_empty() }).await;
            v.push(ms(start.elapsed()));
        }
        dead_app.push((label, stats(v)));
    }

    // kill -9: time until every other agent's DNS stops answering the victim.
    let mut detect = Vec::new();
    for victim in (N - 5..N).rev() {
        let mut a = agents[victim as usize].take().expect("runs");
        let gone = a.ip;
        let start = Instant::now();
        let _ = a.child.kill();
        let _ = a.child.wait();
        drop(a);
        let observers: Vec<SocketAddr> = agents.iter().filter_map(dns_of).collect();
        let mut worst = Duration::ZERO;
        let mut pending = observers.clone();
        while !pending.is_empty() {
            assert!(start.elapsed() < WAIT, "kill -9 never detected");
            let mut still = Vec::new();
            for d in pending {
                if dns_a(d, &format!("n{victim}.bench.local.")).await.contains(&gone) {
                    still.push(d);
                } else {
                    worst = start.elapsed();
                }
            }
            pending = still;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        detect.push(ms(worst));
    }
    let (detect_med, detect_max) = stats(detect.clone());

    println!("\n| figure ({N} agents, loopback, release build) | median | worst |");
    println!("|---|---|---|");
    println!("| convergence after start (all stubs answer all instances) | {:.0} ms | |", ms(converge));
    println!("| new instance appears in another agent's DNS answers | {appear_med:.0} ms | {appear_max:.0} ms |");
    for (label, (med, max)) in &dead_app {
        println!("| dead app leaves answers ({label} check) | {med:.0} ms | {max:.0} ms |");
    }
    println!("| kill -9'd agent leaves every other agent's answers | {detect_med:.0} ms | {detect_max:.0} ms |");
    println!("| idle RSS per agent | {rss_med:.1} MB | {rss_max:.1} MB |");
    println!(
        "| gossip bytes per agent per second (sent / received) | {sent_per_agent:.0} / {recv_per_agent:.0} B/s | |"
    );

    let json = serde_json::json!({
        "agents": N,
        "converge_ms": ms(converge),
        "appear_ms": {"median": appear_med, "max": appear_max},
        "dead_app_ms": dead_app.iter().map(|(l, (m, x))| serde_json::json!({"check": l, "median": m, "max": x})).collect::<Vec<_>>(),
        "kill9_detect_ms": {"median": detect_med, "max": detect_max, "runs": detect},
        "idle_rss_mb": {"median": rss_med, "max": rss_max},
        "gossip_bytes_per_agent_per_s": {"sent": sent_per_agent, "received": recv_per_agent},
    });
    write_json("agent", &json);
}
