//! Proxy path: wrk and iperf3 through murmur's sidecars, an HAProxy pair (plaintext)
//! and an HAProxy pair with mutual TLS, and direct to the backend.
//!
//! Layout (each its own loopback address): nginx and iperf3 on 127.61.0.3; murmur's
//! client sidecar 127.61.0.1 and server sidecar 127.61.0.2; HAProxy plaintext pair
//! 127.61.0.11 → 127.61.0.12; HAProxy TLS pair 127.61.0.21 → 127.61.0.22. Each HAProxy
//! runs one thread (`MURMUR_PEERS_HAPROXY_THREADS`, default 1: on 2 cores shared with
//! wrk, nginx and the other proxy of the pair, a second thread per HAProxy only adds
//! contention, which made HAProxy look slower than it is) and keeps its default TLS
//! session resumption: each new client connection costs a resumed TLS 1.3 handshake
//! between the pair (HAProxy cannot pool connections in TCP mode). murmur carries each
//! new connection as a stream on one pooled QUIC connection. wrk runs one thread in
//! every test, for the same reason.
//!
//! nginx answers `/` with 100 bytes and `/1m` with a 1 MiB file.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::*;

const BACKEND: &str = "127.61.0.3";
/// murmur's client sidecar (the app side) and server sidecar.
const CLIENT: &str = "127.61.0.1";
const SERVER: &str = "127.61.0.2";
const HTTP_PORT: u16 = 8080;
const IPERF_PORT: u16 = 5201;

struct Target {
    name: &'static str,
    http: SocketAddr,
    iperf: SocketAddr,
    /// The proxies' processes, for CPU and memory (none for direct).
    pids: Vec<u32>,
}

#[derive(Clone, Copy)]
enum Test {
    Wrk { label: &'static str, conns: u32, close: bool, path: &'static str },
    Iperf,
}

const TESTS: [Test; 5] = [
    Test::Wrk { label: "rr_c1", conns: 1, close: false, path: "/" },
    Test::Wrk { label: "rr_c16", conns: 16, close: false, path: "/" },
    Test::Wrk { label: "mib_c4", conns: 4, close: false, path: "/1m" },
    Test::Wrk { label: "new_conn_c16", conns: 16, close: true, path: "/" },
    Test::Iperf,
];
// Indexes into [`TESTS`].
const RR_C1: usize = 0;
const RR_C16: usize = 1;
const MIB_C4: usize = 2;
const NEW_C16: usize = 3;
const BULK: usize = 4;

impl Test {
    fn label(self) -> &'static str {
        match self {
            Test::Wrk { label, .. } => label,
            Test::Iperf => "bulk",
        }
    }
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("a literal address")
}

/// The config of one HAProxy of a pair: `cert` is its certificate's name, `file` the
/// config's (each process gets its own file: it reads it after starting); it listens on
/// `ips.0` and, as the client of the pair, forwards to `ips.1`.
fn haproxy_config(
    work: &WorkDir,
    cert: &str,
    file: &str,
    ips: (&str, &str),
    role: &str,
    tls: bool,
    threads: u32,
) -> String {
    let (listen_ip, next_ip) = ips;
    let (ca, pem) = (work.text("certs/ca/ca.pem"), work.text(&format!("certs/{cert}.pem")));
    let mut cfg = format!(
        "global\n  nbthread {threads}\n  maxconn 4000\n  ssl-server-verify required\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  maxconn 4000\n",
    );
    for (label, port, next_port) in [("http", HTTP_PORT, HTTP_PORT), ("iperf", IPERF_PORT, IPERF_PORT)] {
        match (role, tls) {
            ("client", false) => write!(
                cfg,
                "frontend {label}\n  bind {listen_ip}:{port}\n  default_backend {label}_b\n\
                 backend {label}_b\n  server s {next_ip}:{next_port}\n"
            ),
            ("client", true) => write!(
                cfg,
                "frontend {label}\n  bind {listen_ip}:{port}\n  default_backend {label}_b\n\
                 backend {label}_b\n  server s {next_ip}:{next_port} ssl crt {pem} ca-file {ca} verify required \
                 verifyhost web.svc.murmur\n"
            ),
            (_, false) => write!(
                cfg,
                "frontend {label}\n  bind {listen_ip}:{port}\n  default_backend {label}_b\n\
                 backend {label}_b\n  server s {BACKEND}:{next_port}\n"
            ),
            (_, true) => write!(
                cfg,
                "frontend {label}\n  bind {listen_ip}:{port} ssl crt {pem} ca-file {ca} verify required\n  \
                 default_backend {label}_b\nbackend {label}_b\n  server s {BACKEND}:{next_port}\n"
            ),
        }
        .expect("write to a String");
    }
    work.write(&format!("{file}.cfg"), &cfg)
}

fn nginx_config(work: &WorkDir) -> String {
    let root = work.text("nginx");
    let mib: Vec<u8> = (0..1024 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::create_dir_all(work.path("nginx/files")).expect("create nginx's files directory");
    std::fs::write(work.path("nginx/files/1m"), mib).expect("write the 1 MiB file");
    work.write(
        "nginx/nginx.conf",
        &format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {root}/nginx.pid;\n\
             error_log {root}/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  \
             client_body_temp_path {root}/tmp;\n  proxy_temp_path {root}/tmp;\n  fastcgi_temp_path {root}/tmp;\n  \
             uwsgi_temp_path {root}/tmp;\n  scgi_temp_path {root}/tmp;\n  keepalive_requests 1000000;\n  \
             server {{\n    listen {BACKEND}:{HTTP_PORT} backlog=4096;\n    default_type text/plain;\n    \
             location / {{ return 200 \"{}\\n\"; }}\n    location = /1m {{ root {root}/files; }}\n  }}\n}}\n",
            "0123456789abcdef".repeat(7).get(..99).unwrap_or_default()
        ),
    )
}

fn certificates(work: &WorkDir) {
    let certs = work.text("certs");
    murmur(&["ca", "init", "--dir", &format!("{certs}/ca")]);
    let issue = |name: &str, services: &[&str]| {
        let mut args = vec!["cert", "issue", "--ca-dir"];
        let ca = format!("{certs}/ca");
        let out = format!("{certs}/{name}");
        args.extend([ca.as_str(), "--name", name, "--out", out.as_str()]);
        for s in services {
            args.extend(["--service", s]);
        }
        murmur(&args);
        let pem =
            [std::fs::read_to_string(format!("{out}/cert.pem")), std::fs::read_to_string(format!("{out}/key.pem"))];
        let [Ok(cert), Ok(key)] = pem else { panic!("murmur cert issue wrote no PEM files in {out}") };
        std::fs::write(format!("{certs}/{name}.pem"), format!("{cert}{key}")).expect("write the HAProxy PEM");
    };
    issue("client", &["loadgen"]);
    issue("server", &["web", "bulk"]);
    issue("hp1", &["web"]);
    issue("hp2", &["web"]);
}

/// murmur's agent `name` (its certificate's name) from the binary `bin` on `ip`.
fn murmur_agent(work: &WorkDir, bin: &str, name: &str, ip: &str, key: &str, extra: &[String]) -> Proc {
    let certs = work.text(&format!("certs/{name}"));
    let mut cmd = agent_command_of(bin, name, ip, key, Some(&certs));
    spawn_logged(&format!("murmur agent {name} on {ip}"), cmd.args(extra), &work.path(&format!("{name}-{ip}.log")))
}

/// A client and a server sidecar from `bin` on `client_ip` and `server_ip`, a cluster of
/// their own; the target that calls through them.
fn murmur_pair(work: &WorkDir, bin: &str, name: &'static str, client_ip: &str, server_ip: &str) -> (Vec<Proc>, Target) {
    let key = keygen();
    let services =
        |svc: &str, port: u16| vec!["--service".to_owned(), format!("{svc}:{port},addr={BACKEND},check=none")];
    let server_extra = [services("web", HTTP_PORT), services("bulk", IPERF_PORT)].concat();
    let server = murmur_agent(work, bin, "server", server_ip, &key, &server_extra);
    let client_extra: Vec<String> = vec![
        "--seed".into(),
        format!("{server_ip}:7946"),
        "--service".into(),
        "loadgen:1,check=none".into(),
        "--upstream".into(),
        format!("web:80,listen={client_ip}:{HTTP_PORT}"),
        "--upstream".into(),
        format!("bulk:81,listen={client_ip}:{IPERF_PORT},idle-timeout=120s"),
    ];
    let client = murmur_agent(work, bin, "client", client_ip, &key, &client_extra);
    let pids = vec![client.pid(), server.pid()];
    let target = Target { name, http: addr(client_ip, HTTP_PORT), iperf: addr(client_ip, IPERF_PORT), pids };
    (vec![client, server], target)
}

fn run_wrk(conns: u32, close: bool, path: &str, secs: u64, target: SocketAddr) -> WrkRun {
    let url = format!("http://{target}{path}");
    let (c, d) = (conns.to_string(), format!("{secs}s"));
    let mut args = vec!["-t", "1", "-c", &c, "-d", &d, "--latency"];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(&url);
    let run = parse_wrk(&output("wrk", &args));
    assert!(run.rps > 0.0, "wrk got no answers through {target}");
    run
}

fn run_iperf(secs: u64, target: SocketAddr) -> f64 {
    let out = output(
        "iperf3",
        &["-c", &target.ip().to_string(), "-p", &target.port().to_string(), "-t", &secs.to_string(), "-J"],
    );
    let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("iperf3 -J gave no JSON: {e}"));
    let bps = json["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0);
    assert!(bps > 0.0, "iperf3 moved nothing through {target}: {}", json["error"]);
    bps / 1e9
}

/// Runs the comparison; returns the JSON and a markdown section.
pub fn run(settings: &Settings, work: &WorkDir) -> (serde_json::Value, String) {
    println!("proxy path: starting nginx, iperf3, two murmur sidecars and two HAProxy pairs");
    certificates(work);
    let mut procs = vec![
        spawn("nginx", "nginx", &["-p", &work.text("nginx"), "-c", &nginx_config(work)], &work.path("nginx.log")),
        spawn("iperf3 -s", "iperf3", &["-s", "-B", BACKEND, "-p", &IPERF_PORT.to_string()], &work.path("iperf3.log")),
    ];
    let (pair, murmur) = murmur_pair(work, MURMUR, "murmur", CLIENT, SERVER);
    procs.extend(pair);
    let mut targets = vec![
        Target { name: "direct", http: addr(BACKEND, HTTP_PORT), iperf: addr(BACKEND, IPERF_PORT), pids: vec![] },
        murmur,
    ];
    // Another build beside this one, in the same run: `MURMUR_PEERS_BASELINE=PATH`.
    if let Some(bin) = &settings.baseline {
        let (pair, baseline) = murmur_pair(work, bin, "murmur-baseline", "127.61.0.31", "127.61.0.32");
        procs.extend(pair);
        targets.push(baseline);
    }
    for (name, (ip1, ip2), tls) in
        [("haproxy", ("127.61.0.11", "127.61.0.12"), false), ("haproxy-tls", ("127.61.0.21", "127.61.0.22"), true)]
    {
        let threads = settings.haproxy_threads;
        let c1 = haproxy_config(work, "hp1", &format!("{name}-1"), (ip1, ip2), "client", tls, threads);
        let c2 = haproxy_config(work, "hp2", &format!("{name}-2"), (ip2, ip2), "server", tls, threads);
        let p2 = spawn(&format!("{name} #2"), "haproxy", &["-db", "-f", &c2], &work.path(&format!("{name}-2.log")));
        let p1 = spawn(&format!("{name} #1"), "haproxy", &["-db", "-f", &c1], &work.path(&format!("{name}-1.log")));
        targets.push(Target {
            name,
            http: addr(ip1, HTTP_PORT),
            iperf: addr(ip1, IPERF_PORT),
            pids: vec![p1.pid(), p2.pid()],
        });
        procs.push(p1);
        procs.push(p2);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    procs.iter_mut().for_each(Proc::check_running);
    for t in &targets {
        wait_tcp(t.http, t.name);
    }
    // The first request through murmur waits for the server's services to arrive by gossip.
    for t in targets.iter().filter(|t| t.name.starts_with("murmur")) {
        let start = std::time::Instant::now();
        while std::process::Command::new("wrk")
            .args(["-t1", "-c1", "-d1s", &format!("http://{}/", t.http)])
            .output()
            .map(|o| parse_wrk(&String::from_utf8_lossy(&o.stdout)).rps == 0.0)
            .unwrap_or(true)
        {
            assert!(start.elapsed().as_secs() < 30, "{}'s client sidecar never reached the web service", t.name);
        }
    }
    procs.iter_mut().for_each(Proc::check_running);

    // samples[test][target] = one JSON object per round.
    let mut samples: Vec<Vec<Vec<serde_json::Value>>> = vec![vec![Vec::new(); targets.len()]; TESTS.len()];
    for round in 0..settings.rounds {
        for (ti, test) in TESTS.iter().enumerate() {
            for (gi, target) in targets.iter().enumerate() {
                let usage = Usage::start(target.pids.clone());
                let mut sample = match *test {
                    Test::Wrk { conns, close, path, .. } => {
                        let r = run_wrk(conns, close, path, settings.secs, target.http);
                        let mut s = serde_json::json!({"rps": r.rps, "p50_us": r.p50_us, "p99_us": r.p99_us, "errors": r.errors});
                        if path == "/1m" {
                            s["mb_s"] = (r.rps * 1024.0 * 1024.0 / 1e6).into();
                        }
                        s
                    }
                    Test::Iperf => serde_json::json!({"gbit_s": run_iperf(settings.secs, target.iperf)}),
                };
                let (cpu, rss) = usage.finish_each();
                if !target.pids.is_empty() {
                    sample["proxy_cpu_s"] = cpu.into();
                    sample["proxy_peak_rss_mb"] = rss.iter().sum::<f64>().into();
                    sample["one_proxy_peak_rss_mb"] = rss.iter().copied().fold(0.0, f64::max).into();
                    if let Some(rps) = sample["rps"].as_f64().filter(|r| *r > 0.0) {
                        sample["proxy_cpu_us_per_request"] = (cpu * 1e6 / (rps * settings.secs as f64)).into();
                    }
                }
                println!("  round {} {:<13} {:<12} {sample}", round + 1, test.label(), target.name);
                samples[ti][gi].push(sample);
            }
        }
        procs.iter_mut().for_each(Proc::check_running);
    }
    summarize(&targets, &samples, settings.haproxy_threads)
}

fn summarize(
    targets: &[Target],
    samples: &[Vec<Vec<serde_json::Value>>],
    haproxy_threads: u32,
) -> (serde_json::Value, String) {
    let med =
        |ti: usize, gi: usize, field: &str| median(samples[ti][gi].iter().filter_map(|s| s[field].as_f64()).collect());
    let mut json = serde_json::Map::new();
    for (ti, test) in TESTS.iter().enumerate() {
        let mut per = serde_json::Map::new();
        for (gi, target) in targets.iter().enumerate() {
            let fields = [
                "rps",
                "p50_us",
                "p99_us",
                "mb_s",
                "gbit_s",
                "proxy_cpu_s",
                "proxy_cpu_us_per_request",
                "proxy_peak_rss_mb",
                "one_proxy_peak_rss_mb",
            ];
            let medians: serde_json::Map<String, serde_json::Value> = fields
                .iter()
                .filter(|f| samples[ti][gi].iter().any(|s| s[**f].is_number()))
                .map(|f| (f.to_string(), med(ti, gi, f).into()))
                .collect();
            per.insert(target.name.into(), serde_json::json!({"median": medians, "rounds": samples[ti][gi]}));
        }
        json.insert(test.label().into(), per.into());
    }
    let idx = |name: &str| targets.iter().position(|t| t.name == name).expect("a known target");
    let (d, m, h, t) = (idx("direct"), idx("murmur"), idx("haproxy"), idx("haproxy-tls"));
    let mut md = String::from(
        "\n## Proxy path (client → proxy → proxy → nginx; wrk, iperf3)\n\n\
         | figure | direct | murmur (QUIC, mTLS) | HAProxy pair (plaintext) | HAProxy pair (mTLS) | murmur / HAProxy | murmur / HAProxy mTLS |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut row = |label: &str, ti: usize, field: &str, digits: usize| {
        let v = |gi: usize| med(ti, gi, field);
        let show = |x: f64| if x.is_nan() { "–".to_owned() } else { format!("{x:.digits$}") };
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {:.2} | {:.2} |",
            show(v(d)),
            show(v(m)),
            show(v(h)),
            show(v(t)),
            ratio(v(m), v(h)),
            ratio(v(m), v(t)),
        );
    };
    row("1 connection, 100 B: requests/s", RR_C1, "rps", 0);
    row("1 connection, 100 B: p50 µs", RR_C1, "p50_us", 0);
    row("1 connection, 100 B: p99 µs", RR_C1, "p99_us", 0);
    row("16 connections, 100 B: requests/s", RR_C16, "rps", 0);
    row("16 connections, 100 B: p50 µs", RR_C16, "p50_us", 0);
    row("16 connections, 100 B: p99 µs", RR_C16, "p99_us", 0);
    row("4 connections, 1 MiB: MB/s", MIB_C4, "mb_s", 0);
    row("new connection per request (16 at a time): connections/s", NEW_C16, "rps", 0);
    row("new connection per request: p99 µs", NEW_C16, "p99_us", 0);
    row("bulk, one connection (iperf3): Gbit/s", BULK, "gbit_s", 2);
    row("proxies' CPU µs per request, 16 connections (both proxies)", RR_C16, "proxy_cpu_us_per_request", 1);
    row("proxies' CPU µs per request, new connections", NEW_C16, "proxy_cpu_us_per_request", 1);
    row("proxies' CPU seconds, bulk run", BULK, "proxy_cpu_s", 2);
    row("peak RSS MB of one proxy, 16 connections", RR_C16, "one_proxy_peak_rss_mb", 1);
    row("peak RSS MB of both proxies, 16 connections", RR_C16, "proxy_peak_rss_mb", 1);
    row("peak RSS MB of both proxies, 1 MiB run", MIB_C4, "proxy_peak_rss_mb", 1);
    let goal = |ok: bool| if ok { "met" } else { "**missed**" };
    let at_least =
        |ti: usize, field: &str, peer: usize, factor: f64| med(ti, m, field) >= factor * med(ti, peer, field);
    let goals = [
        ("requests/s at 16 connections ≥ the mTLS pair", at_least(RR_C16, "rps", t, 1.0)),
        ("1 MiB MB/s ≥ the mTLS pair", at_least(MIB_C4, "mb_s", t, 1.0)),
        ("p50 at 1 connection ≤ the mTLS pair", med(RR_C1, m, "p50_us") <= med(RR_C1, t, "p50_us")),
        ("p50 at 1 connection ≤ the plaintext pair", med(RR_C1, m, "p50_us") <= med(RR_C1, h, "p50_us")),
        ("iperf3 bulk ≥ 1.5× the mTLS pair", at_least(BULK, "gbit_s", t, 1.5)),
        ("new connections/s ≥ the plaintext pair", at_least(NEW_C16, "rps", h, 1.0)),
        (
            "CPU per request (16 connections) below the mTLS pair's",
            med(RR_C16, m, "proxy_cpu_us_per_request") < med(RR_C16, t, "proxy_cpu_us_per_request"),
        ),
        ("RSS of one sidecar ≤ 15 MB at 16 connections", med(RR_C16, m, "one_proxy_peak_rss_mb") <= 15.0),
    ];
    let _ = writeln!(md, "\nGoals (murmur against the peers, same run):\n");
    for (what, ok) in goals {
        let _ = writeln!(md, "- {what}: {}", goal(ok));
    }
    let murmur_threads = match std::env::var("MURMUR_THREADS") {
        Ok(n) => format!("{n} thread(s) each (MURMUR_THREADS)"),
        Err(_) => "their default of one thread each (proxy mode)".to_owned(),
    };
    let _ = writeln!(
        md,
        "\nEach HAProxy runs {haproxy_threads} thread(s); wrk one thread; murmur's sidecars {murmur_threads}; a \
         baseline wrapper may set its own."
    );
    let goals_json: serde_json::Map<String, serde_json::Value> =
        goals.iter().map(|(w, ok)| ((*w).to_owned(), serde_json::Value::Bool(*ok))).collect();
    json.insert("goals".into(), goals_json.into());
    if let Some(b) = targets.iter().position(|t| t.name == "murmur-baseline") {
        md.push_str(
            "\n### This build against the baseline binary (same run)\n\n\
             | figure | baseline | this build | this / baseline |\n|---|---|---|---|\n",
        );
        let rows = [
            ("1 connection, 100 B: p50 µs", RR_C1, "p50_us"),
            ("16 connections, 100 B: requests/s", RR_C16, "rps"),
            ("4 connections, 1 MiB: MB/s", MIB_C4, "mb_s"),
            ("new connections/s (16 at a time)", NEW_C16, "rps"),
            ("bulk (iperf3): Gbit/s", BULK, "gbit_s"),
            ("CPU µs per request, 16 connections", RR_C16, "proxy_cpu_us_per_request"),
            ("peak RSS MB of one proxy, 16 connections", RR_C16, "one_proxy_peak_rss_mb"),
            ("peak RSS MB of both proxies, 1 MiB run", MIB_C4, "proxy_peak_rss_mb"),
        ];
        for (label, ti, field) in rows {
            let (old, new) = (med(ti, b, field), med(ti, m, field));
            let _ = writeln!(md, "| {label} | {old:.2} | {new:.2} | {:.2} |", ratio(new, old));
        }
    }
    (json.into(), md)
}
