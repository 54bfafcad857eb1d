//! DNS: dnsperf against murmur's stub, dnsmasq and unbound, each serving the same 50
//! services (an A name and an SRV name each) with misses in the same zone answered
//! NXDOMAIN locally. None of them has an upstream: nothing leaves loopback.
//!
//! Two runs per server per round: saturation (`-c 4 -T 2 -q 200`, as fast as the server
//! answers; dnsperf shares the 2 cores with the server) for queries per second, and a
//! paced run (`-Q 20000 -v`) whose per-query lines give latency percentiles (this
//! dnsperf has no percentile report). dnsmasq is single-threaded; unbound runs
//! `num-threads: 2`; murmur's agent runs tokio's 2 workers.

use std::fmt::Write as _;

use super::*;

const SERVICES: usize = 50;
const PORT: u16 = 10053;
const ZONE: &str = "bench.murmur";
/// Where every name points: murmur answers with the registering agent's address.
const ANSWER_IP: &str = "127.62.0.1";
/// Where dnsmasq and unbound listen.
const DNSMASQ_IP: &str = "127.62.0.2";
const UNBOUND_IP: &str = "127.62.0.3";

struct Server {
    name: &'static str,
    ip: &'static str,
    proc: Proc,
}

fn queries(work: &WorkDir) -> String {
    let mut lines = Vec::new();
    for n in 0..SERVICES {
        lines.push(format!("svc{n}.{ZONE} A"));
        lines.push(format!("_svc{n}._tcp.{ZONE} SRV"));
        lines.push(format!("nosuch{n}.{ZONE} A"));
    }
    // A fixed interleaving: A, SRV and a miss in turn, services in a scrambled order.
    let order: Vec<usize> = (0..SERVICES).map(|i| (i * 17) % SERVICES).collect();
    let text: String = order.iter().flat_map(|&n| lines[n * 3..n * 3 + 3].iter()).map(|l| format!("{l}\n")).collect();
    work.write("dns/queries.txt", &text)
}

fn start_murmur(work: &WorkDir) -> Proc {
    let key = keygen();
    let mut args: Vec<String> =
        ["agent", "--name", "dns-bench", "--namespace", ZONE].iter().map(|s| s.to_string()).collect();
    args.extend([
        "--bind".into(),
        format!("{ANSWER_IP}:7946"),
        "--dns-listen".into(),
        format!("{ANSWER_IP}:{PORT}"),
        "--api-listen".into(),
        format!("{ANSWER_IP}:8500"),
        "--gossip-key".into(),
        key,
        "--dns-upstream".into(),
        "127.0.0.1:1".into(),
        "--dns-ttl".into(),
        "60s".into(),
        // dnsmasq and unbound have no per-source limit by default; dnsperf's 4 sockets
        // would each be held to murmur's.
        "--dns-rate-limit".into(),
        "0".into(),
    ]);
    for n in 0..SERVICES {
        args.extend(["--service".into(), format!("svc{n}:80,id=svc{n}-0,check=none")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn("murmur agent (DNS)", MURMUR, &args, &work.path("dns/murmur.log"))
}

fn start_dnsmasq(work: &WorkDir, ip: &str) -> Proc {
    let hosts: String = (0..SERVICES).map(|n| format!("{ANSWER_IP} svc{n}.{ZONE}\n")).collect();
    let hosts = work.write("dns/hosts", &hosts);
    let mut conf = format!(
        "keep-in-foreground\nport={PORT}\nlisten-address={ip}\nbind-interfaces\nno-resolv\nno-poll\nno-hosts\n\
         addn-hosts={hosts}\nlocal=/{ZONE}/\nlocal-ttl=60\ncache-size=1000\nuser=root\npid-file={}\n",
        work.text("dns/dnsmasq.pid")
    );
    for n in 0..SERVICES {
        let _ = writeln!(conf, "srv-host=_svc{n}._tcp.{ZONE},svc{n}.{ZONE},80,0,0");
    }
    let conf = work.write("dns/dnsmasq.conf", &conf);
    spawn("dnsmasq", "dnsmasq", &["-k", "-C", &conf], &work.path("dns/dnsmasq.log"))
}

fn start_unbound(work: &WorkDir, ip: &str) -> Proc {
    let mut conf = format!(
        "server:\n  interface: {ip}@{PORT}\n  port: {PORT}\n  outgoing-interface: {ip}\n  do-ip6: no\n  \
         num-threads: 2\n  so-reuseport: yes\n  chroot: \"\"\n  username: \"\"\n  pidfile: {}\n  logfile: \"\"\n  \
         use-syslog: no\n  access-control: 127.0.0.0/8 allow\n  do-not-query-localhost: yes\n  \
         do-not-query-address: 0.0.0.0/0\n  module-config: \"iterator\"\n  local-zone: \".\" refuse\n  \
         local-zone: \"{ZONE}.\" static\n",
        work.text("dns/unbound.pid")
    );
    for n in 0..SERVICES {
        let _ = writeln!(conf, "  local-data: \"svc{n}.{ZONE}. 60 IN A {ANSWER_IP}\"");
        let _ = writeln!(conf, "  local-data: \"_svc{n}._tcp.{ZONE}. 60 IN SRV 0 0 80 svc{n}.{ZONE}.\"");
    }
    conf.push_str("remote-control:\n  control-enable: no\n");
    let conf = work.write("dns/unbound.conf", &conf);
    spawn("unbound", "unbound", &["-d", "-c", &conf], &work.path("dns/unbound.log"))
}

/// dnsperf's summary: (queries per second, lost, NOERROR, NXDOMAIN, other rcodes).
fn parse_dnsperf(out: &str) -> (f64, u64, u64, u64, u64) {
    let (mut qps, mut lost, mut ok, mut nx, mut other) = (0.0, 0, 0, 0, 0);
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Queries per second:") {
            qps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("Queries lost:") {
            lost = v.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Response codes:") {
            for part in v.split(',') {
                let words: Vec<&str> = part.split_whitespace().collect();
                let count: u64 = words.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
                match words.first() {
                    Some(&"NOERROR") => ok += count,
                    Some(&"NXDOMAIN") => nx += count,
                    _ => other += count,
                }
            }
        }
    }
    (qps, lost, ok, nx, other)
}

/// dnsperf against `server` for `secs` from 4 clients, with `extra` options.
fn dnsperf(server: &Server, queries: &str, secs: u64, extra: &[&str]) -> String {
    let (port, secs) = (PORT.to_string(), secs.to_string());
    let mut args = vec!["-s", server.ip, "-p", &port, "-d", queries, "-l", &secs, "-c", "4"];
    args.extend_from_slice(extra);
    output("dnsperf", &args)
}

fn saturate(server: &Server, queries: &str, secs: u64) -> serde_json::Value {
    let usage = Usage::start(vec![server.proc.pid()]);
    let out = dnsperf(server, queries, secs, &["-T", "2", "-q", "200"]);
    let (cpu, rss) = usage.finish();
    let (qps, lost, ok, nx, other) = parse_dnsperf(&out);
    assert!(qps > 0.0 && other == 0, "{} answered badly under dnsperf:\n{out}", server.name);
    // A third of the queries are misses: anything far off means wrong answers.
    let nx_share = nx as f64 / (ok + nx).max(1) as f64;
    assert!(
        (0.3..0.37).contains(&nx_share),
        "{}: {:.0}% NXDOMAIN, expected a third:\n{out}",
        server.name,
        nx_share * 100.0
    );
    serde_json::json!({"qps": qps, "lost": lost, "server_cpu_s": cpu, "server_peak_rss_mb": rss})
}

fn paced(server: &Server, queries: &str, secs: u64) -> serde_json::Value {
    let out = dnsperf(server, queries, secs, &["-T", "1", "-Q", "20000", "-v"]);
    let mut lat: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1e6)
        .collect();
    assert!(lat.len() > 100, "{}: dnsperf -v printed no per-query latencies", server.name);
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    let (_, lost, ..) = parse_dnsperf(&out);
    serde_json::json!({"p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "p999_us": q(0.999), "answered": lat.len(), "lost": lost})
}

pub fn run(settings: &Settings, work: &WorkDir) -> (serde_json::Value, String) {
    println!("DNS: starting murmur's stub, dnsmasq and unbound with {SERVICES} services each");
    let queries = queries(work);
    let mut servers = vec![
        Server { name: "murmur", ip: ANSWER_IP, proc: start_murmur(work) },
        Server { name: "dnsmasq", ip: DNSMASQ_IP, proc: start_dnsmasq(work, DNSMASQ_IP) },
        Server { name: "unbound", ip: UNBOUND_IP, proc: start_unbound(work, UNBOUND_IP) },
    ];
    // Wait until each server answers the last service (murmur: once its registry has it).
    let last = format!("svc{}.{ZONE}", SERVICES - 1);
    let probe_file = work.write("dns/probe.txt", &format!("{last} A\n"));
    for s in &mut servers {
        let start = std::time::Instant::now();
        loop {
            s.proc.check_running();
            let probe = std::process::Command::new("dnsperf")
                .args(["-s", s.ip, "-p", &PORT.to_string(), "-d", &probe_file, "-n", "1", "-t", "1"])
                .output();
            let answered = probe.map(|o| parse_dnsperf(&String::from_utf8_lossy(&o.stdout)).2 > 0).unwrap_or(false);
            if answered {
                break;
            }
            assert!(start.elapsed().as_secs() < 30, "{} never answered {last}", s.name);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let mut sat: Vec<Vec<serde_json::Value>> = vec![Vec::new(); servers.len()];
    let mut lat: Vec<Vec<serde_json::Value>> = vec![Vec::new(); servers.len()];
    for round in 0..settings.rounds {
        for (i, s) in servers.iter().enumerate() {
            let r = saturate(s, &queries, settings.secs);
            println!("  round {} saturate {:<8} {r}", round + 1, s.name);
            sat[i].push(r);
        }
        for (i, s) in servers.iter().enumerate() {
            let r = paced(s, &queries, settings.secs);
            println!("  round {} paced    {:<8} {r}", round + 1, s.name);
            lat[i].push(r);
        }
    }
    let med = |v: &[serde_json::Value], f: &str| median(v.iter().filter_map(|s| s[f].as_f64()).collect());
    let mut json = serde_json::Map::new();
    for (i, s) in servers.iter().enumerate() {
        json.insert(
            s.name.into(),
            serde_json::json!({
                "median": {
                    "qps": med(&sat[i], "qps"), "server_cpu_s": med(&sat[i], "server_cpu_s"),
                    "server_peak_rss_mb": med(&sat[i], "server_peak_rss_mb"),
                    "p50_us": med(&lat[i], "p50_us"), "p90_us": med(&lat[i], "p90_us"),
                    "p99_us": med(&lat[i], "p99_us"), "p999_us": med(&lat[i], "p999_us"),
                },
                "saturate": sat[i], "paced_20k_qps": lat[i],
            }),
        );
    }
    let get = |name: &str, f: &str| json[name]["median"][f].as_f64().unwrap_or(f64::NAN);
    let mut md = String::from(
        "\n## DNS stub (dnsperf; 50 A names, 50 SRV names, 50 misses)\n\n\
         | figure | murmur | dnsmasq | unbound | murmur / dnsmasq | murmur / unbound |\n|---|---|---|---|---|---|\n",
    );
    for (label, f, digits) in [
        ("queries/s, saturated", "qps", 0),
        ("p50 µs at 20k queries/s", "p50_us", 0),
        ("p99 µs at 20k queries/s", "p99_us", 0),
        ("p99.9 µs at 20k queries/s", "p999_us", 0),
        ("server CPU seconds, saturated run", "server_cpu_s", 2),
        ("server peak RSS MB", "server_peak_rss_mb", 1),
    ] {
        let (m, d, u) = (get("murmur", f), get("dnsmasq", f), get("unbound", f));
        let _ = writeln!(
            md,
            "| {label} | {m:.digits$} | {d:.digits$} | {u:.digits$} | {:.2} | {:.2} |",
            ratio(m, d),
            ratio(m, u)
        );
    }
    let qps_ok = get("murmur", "qps") >= get("unbound", "qps");
    let p99_ok = get("murmur", "p99_us") <= get("unbound", "p99_us");
    let goal = |ok: bool| if ok { "met" } else { "**missed**" };
    let _ = writeln!(
        md,
        "\nGoals: queries/s at least unbound's: {}; p99 no worse than unbound's: {}.",
        goal(qps_ok),
        goal(p99_ok)
    );
    json.insert("goals".into(), serde_json::json!({"qps": qps_ok, "p99": p99_ok}));
    (json.into(), md)
}
