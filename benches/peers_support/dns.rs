//! DNS: dnsperf against murmur's stub, dnsmasq and unbound, each serving the same names
//! with misses in the same zone answered NXDOMAIN locally. None of them has an
//! upstream: nothing leaves loopback.
//!
//! The queries are 100 names in the mix: 77 A names, 8 SRV names and 15 misses.
//! Per server per round: a saturation run (`-c 4 -T 2 -q 200`, as fast as the server
//! answers; dnsperf shares the 2 cores with the server) for queries per second and the
//! server's CPU per answered query, then paced runs at 1,000 and 20,000 queries/s
//! (`-Q N -v`) whose per-query lines give latency percentiles (this dnsperf has no
//! percentile report). dnsmasq is single-threaded, unbound runs one thread
//! (`num-threads: 1`), and murmur's agent runs tokio's 2 workers. With
//! `MURMUR_PEERS_BASELINE`, that murmur binary serves beside this build.

use std::fmt::Write as _;

use super::*;

/// Registered services: one A name each; the first [`SRV_NAMES`] also get an SRV query.
const SERVICES: usize = 77;
const SRV_NAMES: usize = 8;
const MISSES: usize = 15;
const PORT: u16 = 10053;
const ZONE: &str = "bench.murmur";
/// Where every name points: murmur answers with the registering agent's address.
const ANSWER_IP: &str = "127.62.0.1";
/// Where dnsmasq, unbound and the baseline murmur listen.
const DNSMASQ_IP: &str = "127.62.0.2";
const UNBOUND_IP: &str = "127.62.0.3";
const BASELINE_IP: &str = "127.62.0.4";
/// The paced rates, queries per second.
const PACED: [u32; 2] = [1_000, 20_000];

struct Server {
    name: &'static str,
    ip: &'static str,
    proc: Proc,
}

fn queries(work: &WorkDir) -> String {
    let mut lines: Vec<String> = (0..SERVICES).map(|n| format!("svc{n}.{ZONE} A")).collect();
    lines.extend((0..SRV_NAMES).map(|n| format!("_svc{n}._tcp.{ZONE} SRV")));
    lines.extend((0..MISSES).map(|n| format!("nosuch{n}.{ZONE} A")));
    // A fixed scrambled order (37 is prime to 100), so kinds interleave.
    let n = lines.len();
    let text: String = (0..n).map(|i| format!("{}\n", lines[(i * 37) % n])).collect();
    work.write("dns/queries.txt", &text)
}

fn start_murmur(work: &WorkDir, name: &str, bin: &str, ip: &str) -> Proc {
    let key = keygen();
    let mut args: Vec<String> = ["agent", "--name", name, "--namespace", ZONE].iter().map(|s| s.to_string()).collect();
    args.extend([
        "--bind".into(),
        format!("{ip}:7946"),
        "--dns-listen".into(),
        format!("{ip}:{PORT}"),
        "--api-listen".into(),
        format!("{ip}:8500"),
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
    spawn(&format!("murmur agent ({name})"), bin, &args, &work.path(&format!("dns/{name}.log")))
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
         num-threads: 1\n  so-reuseport: yes\n  chroot: \"\"\n  username: \"\"\n  pidfile: {}\n  logfile: \"\"\n  \
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

/// dnsperf's summary.
#[derive(Default)]
struct Summary {
    qps: f64,
    completed: u64,
    lost: u64,
    noerror: u64,
    nxdomain: u64,
    other: u64,
}

fn parse_dnsperf(out: &str) -> Summary {
    let mut s = Summary::default();
    let first_number = |v: &str| v.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Queries per second:") {
            s.qps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("Queries completed:") {
            s.completed = first_number(v);
        } else if let Some(v) = line.strip_prefix("Queries lost:") {
            s.lost = first_number(v);
        } else if let Some(v) = line.strip_prefix("Response codes:") {
            for part in v.split(',') {
                let words: Vec<&str> = part.split_whitespace().collect();
                let count: u64 = words.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
                match words.first() {
                    Some(&"NOERROR") => s.noerror += count,
                    Some(&"NXDOMAIN") => s.nxdomain += count,
                    _ => s.other += count,
                }
            }
        }
    }
    s
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
    let s = parse_dnsperf(&out);
    assert!(s.qps > 0.0 && s.other == 0, "{} answered badly under dnsperf:\n{out}", server.name);
    // 15 of the 100 names are misses: anything far off means wrong answers.
    let nx_share = s.nxdomain as f64 / (s.noerror + s.nxdomain).max(1) as f64;
    assert!(
        (0.12..0.18).contains(&nx_share),
        "{}: {:.0}% NXDOMAIN, expected 15%:\n{out}",
        server.name,
        nx_share * 100.0
    );
    let cpu_us_per_query = cpu * 1e6 / s.completed.max(1) as f64;
    serde_json::json!({
        "qps": s.qps, "lost": s.lost, "server_cpu_s": cpu, "cpu_us_per_query": cpu_us_per_query,
        "server_peak_rss_mb": rss,
    })
}

fn paced(server: &Server, queries: &str, secs: u64, rate: u32) -> serde_json::Value {
    let rate = rate.to_string();
    let out = dnsperf(server, queries, secs, &["-T", "1", "-Q", &rate, "-v"]);
    let mut lat: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1e6)
        .collect();
    assert!(lat.len() > 100, "{}: dnsperf -v printed no per-query latencies", server.name);
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    let s = parse_dnsperf(&out);
    serde_json::json!({
        "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "p999_us": q(0.999),
        "answered": lat.len(), "lost": s.lost,
    })
}

fn wait_until_answering(work: &WorkDir, servers: &mut [Server]) {
    // Each server must answer the last service (murmur: once its registry has it).
    let last = format!("svc{}.{ZONE}", SERVICES - 1);
    let probe_file = work.write("dns/probe.txt", &format!("{last} A\n"));
    for s in servers {
        let start = std::time::Instant::now();
        loop {
            s.proc.check_running();
            let probe = std::process::Command::new("dnsperf")
                .args(["-s", s.ip, "-p", &PORT.to_string(), "-d", &probe_file, "-n", "1", "-t", "1"])
                .output();
            let answered =
                probe.map(|o| parse_dnsperf(&String::from_utf8_lossy(&o.stdout)).noerror > 0).unwrap_or(false);
            if answered {
                break;
            }
            assert!(start.elapsed().as_secs() < 30, "{} never answered {last}", s.name);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

pub fn run(settings: &Settings, work: &WorkDir) -> (serde_json::Value, String) {
    println!("DNS: starting murmur's stub, dnsmasq and unbound with {SERVICES} services each");
    let queries = queries(work);
    let mut servers = vec![
        Server { name: "murmur", ip: ANSWER_IP, proc: start_murmur(work, "murmur", MURMUR, ANSWER_IP) },
        Server { name: "dnsmasq", ip: DNSMASQ_IP, proc: start_dnsmasq(work, DNSMASQ_IP) },
        Server { name: "unbound", ip: UNBOUND_IP, proc: start_unbound(work, UNBOUND_IP) },
    ];
    if let Some(bin) = &settings.baseline {
        let proc = start_murmur(work, "murmur-baseline", bin, BASELINE_IP);
        servers.push(Server { name: "murmur-baseline", ip: BASELINE_IP, proc });
    }
    wait_until_answering(work, &mut servers);
    let mut sat: Vec<Vec<serde_json::Value>> = vec![Vec::new(); servers.len()];
    let mut lat: Vec<Vec<Vec<serde_json::Value>>> = vec![vec![Vec::new(); PACED.len()]; servers.len()];
    for round in 0..settings.rounds {
        for (i, s) in servers.iter().enumerate() {
            let r = saturate(s, &queries, settings.secs);
            println!("  round {} saturate {:<15} {r}", round + 1, s.name);
            sat[i].push(r);
        }
        for (k, &rate) in PACED.iter().enumerate() {
            for (i, s) in servers.iter().enumerate() {
                let r = paced(s, &queries, settings.secs, rate);
                println!("  round {} paced {rate:>6}/s {:<15} {r}", round + 1, s.name);
                lat[i][k].push(r);
            }
        }
    }
    let med = |v: &[serde_json::Value], f: &str| median(v.iter().filter_map(|s| s[f].as_f64()).collect());
    let mut json = serde_json::Map::new();
    for (i, s) in servers.iter().enumerate() {
        let mut m = serde_json::Map::new();
        for f in ["qps", "server_cpu_s", "cpu_us_per_query", "server_peak_rss_mb"] {
            m.insert(f.into(), med(&sat[i], f).into());
        }
        let mut runs = serde_json::Map::new();
        for (k, rate) in PACED.iter().enumerate() {
            for f in ["p50_us", "p99_us", "p999_us"] {
                m.insert(format!("{f}_at_{rate}"), med(&lat[i][k], f).into());
            }
            runs.insert(format!("paced_{rate}_qps"), lat[i][k].clone().into());
        }
        runs.insert("median".into(), m.into());
        runs.insert("saturate".into(), sat[i].clone().into());
        json.insert(s.name.into(), runs.into());
    }
    let get = |name: &str, f: &str| json.get(name).and_then(|v| v["median"][f].as_f64()).unwrap_or(f64::NAN);
    let mut rows: Vec<(String, String, usize)> = vec![
        ("queries/s, saturated".into(), "qps".into(), 0),
        ("server CPU µs per query, saturated".into(), "cpu_us_per_query".into(), 2),
        ("server peak RSS MB".into(), "server_peak_rss_mb".into(), 1),
    ];
    for rate in PACED {
        for (p, f) in [("p50", "p50_us"), ("p99", "p99_us"), ("p99.9", "p999_us")] {
            rows.push((format!("{p} µs at {rate} queries/s"), format!("{f}_at_{rate}"), 0));
        }
    }
    let mut md = format!(
        "\n## DNS stub (dnsperf; {SERVICES} A names, {SRV_NAMES} SRV names, {MISSES} misses)\n\n\
         | figure | murmur | dnsmasq | unbound | murmur / dnsmasq | murmur / unbound |\n|---|---|---|---|---|---|\n",
    );
    for (label, f, digits) in &rows {
        let (m, d, u) = (get("murmur", f), get("dnsmasq", f), get("unbound", f));
        let _ = writeln!(
            md,
            "| {label} | {m:.digits$} | {d:.digits$} | {u:.digits$} | {:.2} | {:.2} |",
            ratio(m, d),
            ratio(m, u)
        );
    }
    if settings.baseline.is_some() {
        md.push_str("\n### This build against the baseline binary (same run)\n\n| figure | baseline | this build | this / baseline |\n|---|---|---|---|\n");
        for (label, f, digits) in &rows {
            let (b, m) = (get("murmur-baseline", f), get("murmur", f));
            let _ = writeln!(md, "| {label} | {b:.digits$} | {m:.digits$} | {:.2} |", ratio(m, b));
        }
    }
    let qps_ok = get("murmur", "qps") >= get("unbound", "qps");
    let cpu_ok = get("murmur", "cpu_us_per_query") <= get("unbound", "cpu_us_per_query");
    let p99_ok: Vec<bool> = PACED
        .iter()
        .map(|r| get("murmur", &format!("p99_us_at_{r}")) <= get("unbound", &format!("p99_us_at_{r}")))
        .collect();
    let goal = |ok: bool| if ok { "met" } else { "**missed**" };
    let _ = writeln!(
        md,
        "\nGoals against unbound: queries/s at least its: {}; CPU per query no more: {}; p99 no worse at {} queries/s: {}, at {}: {}.",
        goal(qps_ok),
        goal(cpu_ok),
        PACED[0],
        goal(p99_ok[0]),
        PACED[1],
        goal(p99_ok[1]),
    );
    json.insert("goals".into(), serde_json::json!({"qps": qps_ok, "cpu": cpu_ok, "p99": p99_ok}));
    (json.into(), md)
}
