//! Membership: N murmur agents and N Serf agents on loopback, one size after the other,
//! murmur then Serf for each size.
//!
//! Both are timed the same way: every agent's log lines are stamped as they arrive
//! (one reader thread per agent), and the figures come from the lines each tool prints
//! when it sees a member join or fail (murmur: `member joined` / `member dead`; Serf:
//! `EventMemberJoin` / `EventMemberFailed`). Serf's event handlers cannot be used for
//! timing: the agent coalesces member events for a second or more before running them.
//!
//! - convergence: from the first agent's start until every agent has logged a join of
//!   every other (agents 2..N start together once the first listens, all joining it);
//! - idle: after a settle period, CPU seconds and RSS per agent and bytes on the wire
//!   per agent per second (nftables counters on loopback's output hook, IP headers
//!   included; Serf's TCP push/pull counted both ways) over a window;
//! - kill -9 of one agent: until every other agent has logged it dead/failed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

const SETTLE: Duration = Duration::from_secs(5);
const WINDOW: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(60);
const NFT_TABLE: &str = "murmur_peers_bench";

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Murmur,
    Serf,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Murmur => "murmur",
            Tool::Serf => "serf",
        }
    }
    fn ip(self, i: usize) -> String {
        let net = if self == Tool::Murmur { 63 } else { 64 };
        format!("127.{net}.0.{}", i + 1)
    }
    fn node(self, i: usize) -> String {
        format!("{}{i}", if self == Tool::Murmur { "m" } else { "s" })
    }
    /// The member a log line says joined or failed, if it says so.
    fn event(self, line: &str) -> Option<(bool, String)> {
        match self {
            Tool::Murmur => {
                let joined = line.contains("member joined");
                if !joined && !line.contains("member dead") {
                    return None;
                }
                let name = line.split("member=").nth(1)?.split_whitespace().next()?;
                Some((joined, name.to_owned()))
            }
            Tool::Serf => {
                let (joined, rest) = if let Some(r) = line.split("EventMemberJoin: ").nth(1) {
                    (true, r)
                } else {
                    (false, line.split("EventMemberFailed: ").nth(1)?)
                };
                Some((joined, rest.split_whitespace().next()?.to_owned()))
            }
        }
    }
}

/// Log lines of every agent, stamped on arrival: (when, agent, joined?, member).
type Events = Arc<Mutex<Vec<(Instant, usize, bool, String)>>>;

struct Cluster {
    tool: Tool,
    procs: Vec<Option<Proc>>,
    events: Events,
}

impl Cluster {
    fn start_agent(&mut self, i: usize, key: &str) {
        let (tool, ip) = (self.tool, self.tool.ip(i));
        let seed = tool.ip(0);
        let mut cmd = match tool {
            Tool::Murmur => {
                let mut c = agent_command(&tool.node(i), &ip, key, None);
                c.args(["--seed", &format!("{seed}:7946")])
                    .env("RUST_LOG", "warn,murmur::registry=info")
                    .env("NO_COLOR", "1");
                c
            }
            Tool::Serf => {
                let mut c = Command::new("serf");
                c.args(["agent", &format!("-node={}", tool.node(i)), &format!("-bind={ip}:7946")])
                    .args([&format!("-rpc-addr={ip}:7373"), "-log-level=info"]);
                if i > 0 {
                    c.arg(format!("-join={seed}:7946"));
                }
                c
            }
        };
        let mut proc =
            start(&format!("{} {}", tool.name(), tool.node(i)), cmd.stdout(Stdio::piped()).stderr(Stdio::piped()));
        let child = &mut proc.child;
        for pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as _),
        ]
        .into_iter()
        .flatten()
        {
            let events = self.events.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Some((joined, member)) = tool.event(&line) {
                        events.lock().expect("events lock").push((Instant::now(), i, joined, member));
                    }
                }
            });
        }
        self.procs.push(Some(proc));
    }

    fn pids(&self) -> Vec<u32> {
        self.procs.iter().flatten().map(Proc::pid).collect()
    }

    /// When agent `i` had seen every other of `n` join, if it has.
    fn converged_at(&self, i: usize, n: usize) -> Option<Instant> {
        let events = self.events.lock().expect("events lock");
        let me = self.tool.node(i);
        let mut seen = BTreeSet::new();
        for (at, agent, joined, member) in events.iter() {
            if *agent == i && *joined && *member != me {
                seen.insert(member.clone());
                if seen.len() == n - 1 {
                    return Some(*at);
                }
            }
        }
        None
    }

    fn failed_at(&self, i: usize, victim: &str, after: Instant) -> Option<Instant> {
        let events = self.events.lock().expect("events lock");
        events
            .iter()
            .find(|(at, agent, joined, member)| *agent == i && !joined && member == victim && *at >= after)
            .map(|e| e.0)
    }
}

/// The `q` quantile of `v` (nearest rank).
fn percentile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(f64::NAN)
}

/// Registers a new instance through agent 0's API and returns, for each of the `n`
/// murmur agents, the milliseconds until its DNS stub answered the name with it (every
/// stub asked in turn, over and over, from the moment the registration is sent).
fn new_instance_visible(n: usize) -> Vec<f64> {
    use std::io::{Read, Write};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let body = r#"{"port":9000,"check":"none"}"#;
    let sent = Instant::now();
    let mut api = std::net::TcpStream::connect(format!("{}:8500", Tool::Murmur.ip(0))).expect("agent 0's API");
    write!(
        api,
        "PUT /v1/services/fresh/fresh-1 HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send the registration");
    let mut reply = String::new();
    let _ = api.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 2"), "registration refused: {reply}");
    let mut seen: Vec<Option<f64>> = vec![None; n];
    rt.block_on(async {
        while seen.iter().any(Option::is_none) {
            assert!(sent.elapsed() < WAIT, "the new instance never reached every stub: {seen:?}");
            for (i, s) in seen.iter_mut().enumerate().filter(|(_, s)| s.is_none()) {
                let stub = format!("{}:8600", Tool::Murmur.ip(i)).parse().expect("an address");
                let q = murmur::client::query(
                    stub,
                    "fresh.murmur.local.",
                    hickory_proto::rr::RecordType::A,
                    Duration::from_millis(500),
                );
                if q.await.is_ok_and(|m| !murmur::client::addresses(&m).is_empty()) {
                    *s = Some(sent.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
    });
    seen.into_iter().flatten().collect()
}

/// nftables byte counters for both tools' gossip ports; `None` when nft cannot be used.
struct Counters;

impl Counters {
    fn install() -> Option<Counters> {
        let rules = format!(
            "table inet {NFT_TABLE} {{\n counter murmur {{}}\n counter serf {{}}\n chain out {{\n  \
             type filter hook output priority 0; policy accept;\n  ip saddr 127.63.0.0/24 udp sport 7946 counter name murmur\n  \
             ip saddr 127.64.0.0/24 udp sport 7946 counter name serf\n  ip saddr 127.64.0.0/24 tcp sport 7946 counter name serf\n  \
             ip daddr 127.64.0.0/24 tcp dport 7946 counter name serf\n }}\n}}\n"
        );
        let _ = Command::new("nft").args(["delete", "table", "inet", NFT_TABLE]).stderr(Stdio::null()).status();
        let mut child =
            Command::new("nft").args(["-f", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().ok()?;
        {
            use std::io::Write;
            child.stdin.take()?.write_all(rules.as_bytes()).ok()?;
        }
        let out = child.wait_with_output().ok()?;
        if !out.status.success() {
            eprintln!(
                "*** nftables unavailable ({}): gossip bytes on the wire not measured",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Counters)
    }

    fn bytes(&self, tool: Tool) -> u64 {
        let out = Command::new("nft").args(["list", "counter", "inet", NFT_TABLE, tool.name()]).output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        text.split_whitespace().skip_while(|w| *w != "bytes").nth(1).and_then(|b| b.parse().ok()).unwrap_or(0)
    }
}

impl Drop for Counters {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "inet", NFT_TABLE]).status();
    }
}

fn measure(tool: Tool, n: usize, counters: Option<&Counters>) -> serde_json::Value {
    println!("  membership: {n} {} agents", tool.name());
    let key = keygen();
    let mut c = Cluster { tool, procs: Vec::new(), events: Arc::default() };
    let t0 = Instant::now();
    c.start_agent(0, &key);
    let port = if tool == Tool::Murmur { 8500 } else { 7373 };
    wait_tcp(format!("{}:{port}", tool.ip(0)).parse().expect("an address"), &format!("{} agent 0", tool.name()));
    for i in 1..n {
        c.start_agent(i, &key);
    }
    let spawned = t0.elapsed();
    let mut done = vec![None; n];
    while done.iter().any(Option::is_none) {
        if t0.elapsed() > WAIT {
            let events = c.events.lock().expect("events lock");
            let seen: Vec<usize> = (0..n).map(|i| events.iter().filter(|e| e.1 == i && e.2).count()).collect();
            panic!("{} agents never converged: joins logged per agent {seen:?}", tool.name());
        }
        c.procs.iter_mut().flatten().for_each(Proc::check_running);
        for (i, d) in done.iter_mut().enumerate().filter(|(_, d)| d.is_none()) {
            *d = c.converged_at(i, n);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let converge = done.iter().flatten().map(|at| at.duration_since(t0)).max().unwrap_or_default();

    std::thread::sleep(SETTLE);
    let pids = c.pids();
    let cpu0: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum();
    let bytes0 = counters.map(|k| k.bytes(tool));
    let w0 = Instant::now();
    std::thread::sleep(WINDOW);
    let secs = w0.elapsed().as_secs_f64();
    let cpu_ms = (pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>() - cpu0) * 1000.0 / secs / n as f64;
    let bytes = counters.zip(bytes0).map(|(k, b0)| (k.bytes(tool) - b0) as f64 / secs / n as f64);
    let rss = median(pids.iter().map(|&p| rss_mb(p)).collect());

    let visible = (tool == Tool::Murmur).then(|| new_instance_visible(n));

    let victim = n - 1;
    let victim_name = tool.node(victim);
    let killed = Instant::now();
    c.procs[victim] = None;
    let mut detect: Vec<f64> = Vec::new();
    for i in 0..victim {
        loop {
            if let Some(at) = c.failed_at(i, &victim_name, killed) {
                detect.push(at.duration_since(killed).as_secs_f64() * 1000.0);
                break;
            }
            assert!(killed.elapsed() < WAIT, "{} agent {i} never marked the killed agent failed", tool.name());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let all = detect.iter().cloned().fold(0.0, f64::max);
    let result = serde_json::json!({
        "agents": n,
        "spawn_ms": spawned.as_secs_f64() * 1000.0,
        "converge_ms": converge.as_secs_f64() * 1000.0,
        "kill9_detect_ms": {"median": median(detect.clone()), "all": all},
        "idle_cpu_ms_per_s_per_agent": cpu_ms,
        "rss_mb_per_agent": rss,
        "wire_bytes_per_s_per_agent": bytes,
        "new_instance_in_dns_ms": visible.map(|v| serde_json::json!({
            "median": median(v.clone()),
            "p99": percentile(&v, 0.99),
            "all": v.iter().cloned().fold(0.0, f64::max),
        })),
    });
    println!("    {result}");
    result
}

pub fn run(settings: &Settings, _work: &WorkDir) -> (serde_json::Value, String) {
    let counters = Counters::install();
    let mut results: BTreeMap<usize, [serde_json::Value; 2]> = BTreeMap::new();
    for &n in &settings.sizes {
        let m = measure(Tool::Murmur, n, counters.as_ref());
        let s = measure(Tool::Serf, n, counters.as_ref());
        results.insert(n, [m, s]);
    }
    let mut md = format!(
        "\n## Membership (N agents on loopback; {}s idle window after {}s settling)\n\n\
         | N | figure | murmur | Serf | murmur / Serf |\n|---|---|---|---|---|\n",
        WINDOW.as_secs(),
        SETTLE.as_secs()
    );
    let mut goals = serde_json::Map::new();
    for (n, [m, s]) in &results {
        let rows = [
            ("convergence after start, ms", "/converge_ms", 0),
            ("kill -9 until every other agent drops it, ms", "/kill9_detect_ms/all", 0),
            ("kill -9, median agent, ms", "/kill9_detect_ms/median", 0),
            ("RSS per agent, MB", "/rss_mb_per_agent", 1),
            ("idle CPU per agent, ms per s", "/idle_cpu_ms_per_s_per_agent", 2),
            ("gossip bytes on the wire per agent per s", "/wire_bytes_per_s_per_agent", 0),
            ("a new instance in every agent's DNS, p99 ms (Serf has no DNS)", "/new_instance_in_dns_ms/p99", 0),
        ];
        for (label, pointer, digits) in rows {
            let (a, b) = (m.pointer(pointer).and_then(|v| v.as_f64()), s.pointer(pointer).and_then(|v| v.as_f64()));
            let show = |v: Option<f64>| v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "not measured".into());
            let r = a.zip(b).map(|(a, b)| format!("{:.2}", ratio(a, b))).unwrap_or_else(|| "–".into());
            let _ = writeln!(md, "| {n} | {label} | {} | {} | {r} |", show(a), show(b));
        }
        let detect = |v: &serde_json::Value| v["kill9_detect_ms"]["all"].as_f64().unwrap_or(f64::NAN);
        let conv = |v: &serde_json::Value| v["converge_ms"].as_f64().unwrap_or(f64::NAN);
        let rss = |v: &serde_json::Value| v["rss_mb_per_agent"].as_f64().unwrap_or(f64::NAN);
        let bytes = m["wire_bytes_per_s_per_agent"].as_f64();
        goals.insert(
            n.to_string(),
            serde_json::json!({
                "detect_quarter_of_serf": detect(m) <= detect(s) / 4.0,
                "converge_no_slower": conv(m) <= conv(s),
                "rss_below_serf": rss(m) < rss(s),
                "bytes_at_most_1kb": bytes.map(|b| b <= 1_000.0),
                "dns_visible_p99_500ms": m["new_instance_in_dns_ms"]["p99"].as_f64().map(|v| v <= 500.0),
            }),
        );
    }
    let _ = writeln!(
        md,
        "\nGoals per N: {}",
        serde_json::to_string(&goals).unwrap_or_default().replace("\"", "").replace(",", ", ")
    );
    let json = serde_json::json!({
        "settle_s": SETTLE.as_secs(),
        "window_s": WINDOW.as_secs(),
        "runs": results.iter().map(|(n, [m, s])| serde_json::json!({"agents": n, "murmur": m, "serf": s})).collect::<Vec<_>>(),
        "goals": goals,
    });
    (json, md)
}
