//! Proxy path: wrk and iperf3 through murmur's sidecars, an HAProxy pair (plaintext)
//! and an HAProxy pair with mutual TLS, and direct to the backend.
//!
//! Layout (each its own loopback address): nginx and iperf3 on 127.61.0.3; murmur's
//! client sidecar 127.61.0.1 and server sidecar 127.61.0.2; HAProxy plaintext pair
//! 127.61.0.11 → 127.61.0.12; HAProxy TLS pair 127.61.0.21 → 127.61.0.22. HAProxy runs
//! with `nbthread 2` (its default here, and murmur's tokio runs 2 workers) and keeps its
//! default TLS session resumption: each new client connection costs a resumed TLS 1.3
//! handshake between the pair (HAProxy cannot pool connections in TCP mode). murmur
//! carries each new connection as a stream on one pooled QUIC connection.

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
    Wrk { label: &'static str, threads: u32, conns: u32, close: bool },
    Iperf,
}

const TESTS: [Test; 4] = [
    Test::Wrk { label: "rr_c1", threads: 1, conns: 1, close: false },
    Test::Wrk { label: "rr_c64", threads: 2, conns: 64, close: false },
    Test::Wrk { label: "new_conn_c64", threads: 2, conns: 64, close: true },
    Test::Iperf,
];

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
/// config's (each process gets its own file: it reads it after starting).
fn haproxy_config(
    work: &WorkDir,
    cert: &str,
    file: &str,
    listen_ip: &str,
    next_ip: &str,
    role: &str,
    tls: bool,
) -> String {
    let (ca, pem) = (work.text("certs/ca/ca.pem"), work.text(&format!("certs/{cert}.pem")));
    let mut cfg = String::from(
        "global\n  nbthread 2\n  maxconn 4000\n  ssl-server-verify required\n\
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
    work.write(
        "nginx/nginx.conf",
        &format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {root}/nginx.pid;\n\
             error_log {root}/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  \
             client_body_temp_path {root}/tmp;\n  proxy_temp_path {root}/tmp;\n  fastcgi_temp_path {root}/tmp;\n  \
             uwsgi_temp_path {root}/tmp;\n  scgi_temp_path {root}/tmp;\n  keepalive_requests 1000000;\n  \
             server {{\n    listen {BACKEND}:{HTTP_PORT} backlog=4096;\n    default_type text/plain;\n    \
             location / {{ return 200 \"{}\\n\"; }}\n  }}\n}}\n",
            "0123456789abcdef".repeat(4).get(..63).unwrap_or_default()
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

fn murmur_agent(work: &WorkDir, name: &str, ip: &str, key: &str, extra: &[String]) -> Proc {
    let certs = work.text(&format!("certs/{name}"));
    let mut cmd = agent_command(name, ip, key, Some(&certs));
    spawn_logged(&format!("murmur agent {name}"), cmd.args(extra), &work.path(&format!("{name}.log")))
}

fn run_wrk(threads: u32, conns: u32, close: bool, secs: u64, target: SocketAddr) -> WrkRun {
    let url = format!("http://{target}/");
    let (t, c, d) = (threads.to_string(), conns.to_string(), format!("{secs}s"));
    let mut args = vec!["-t", &t, "-c", &c, "-d", &d, "--latency"];
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
    let key = keygen();
    let services =
        |svc: &str, port: u16| vec!["--service".to_owned(), format!("{svc}:{port},addr={BACKEND},check=none")];
    let server = murmur_agent(
        work,
        "server",
        SERVER,
        &key,
        &[services("web", HTTP_PORT), services("bulk", IPERF_PORT)].concat(),
    );
    let client_extra: Vec<String> = vec![
        "--seed".into(),
        format!("{SERVER}:7946"),
        "--service".into(),
        "loadgen:1,check=none".into(),
        "--upstream".into(),
        format!("web:80,listen={CLIENT}:8080"),
        "--upstream".into(),
        format!("bulk:81,listen={CLIENT}:5201,idle-timeout=120s"),
    ];
    let client = murmur_agent(work, "client", CLIENT, &key, &client_extra);
    let murmur_pids = vec![client.pid(), server.pid()];
    procs.push(client);
    procs.push(server);
    let mut targets = vec![
        Target { name: "direct", http: addr(BACKEND, HTTP_PORT), iperf: addr(BACKEND, IPERF_PORT), pids: vec![] },
        Target { name: "murmur", http: addr(CLIENT, 8080), iperf: addr(CLIENT, 5201), pids: murmur_pids },
    ];
    for (name, (ip1, ip2), tls) in
        [("haproxy", ("127.61.0.11", "127.61.0.12"), false), ("haproxy-tls", ("127.61.0.21", "127.61.0.22"), true)]
    {
        let c1 = haproxy_config(work, "hp1", &format!("{name}-1"), ip1, ip2, "client", tls);
        let c2 = haproxy_config(work, "hp2", &format!("{name}-2"), ip2, ip2, "server", tls);
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
    let start = std::time::Instant::now();
    while std::process::Command::new("wrk")
        .args(["-t1", "-c1", "-d1s", &format!("http://{}/", targets[1].http)])
        .output()
        .map(|o| parse_wrk(&String::from_utf8_lossy(&o.stdout)).rps == 0.0)
        .unwrap_or(true)
    {
        assert!(start.elapsed().as_secs() < 30, "murmur's client sidecar never reached the web service");
    }
    procs.iter_mut().for_each(Proc::check_running);

    // samples[test][target] = one JSON object per round.
    let mut samples: Vec<Vec<Vec<serde_json::Value>>> = vec![vec![Vec::new(); targets.len()]; TESTS.len()];
    for round in 0..settings.rounds {
        for (ti, test) in TESTS.iter().enumerate() {
            for (gi, target) in targets.iter().enumerate() {
                let usage = Usage::start(target.pids.clone());
                let mut sample = match *test {
                    Test::Wrk { threads, conns, close, .. } => {
                        let r = run_wrk(threads, conns, close, settings.secs, target.http);
                        serde_json::json!({"rps": r.rps, "p50_us": r.p50_us, "p99_us": r.p99_us, "errors": r.errors})
                    }
                    Test::Iperf => serde_json::json!({"gbit_s": run_iperf(settings.secs, target.iperf)}),
                };
                let (cpu, rss) = usage.finish();
                if !target.pids.is_empty() {
                    sample["proxy_cpu_s"] = cpu.into();
                    sample["proxy_peak_rss_mb"] = rss.into();
                }
                println!("  round {} {:<13} {:<12} {sample}", round + 1, test.label(), target.name);
                samples[ti][gi].push(sample);
            }
        }
        procs.iter_mut().for_each(Proc::check_running);
    }
    summarize(&targets, &samples)
}

fn summarize(targets: &[Target], samples: &[Vec<Vec<serde_json::Value>>]) -> (serde_json::Value, String) {
    let med =
        |ti: usize, gi: usize, field: &str| median(samples[ti][gi].iter().filter_map(|s| s[field].as_f64()).collect());
    let mut json = serde_json::Map::new();
    for (ti, test) in TESTS.iter().enumerate() {
        let mut per = serde_json::Map::new();
        for (gi, target) in targets.iter().enumerate() {
            let fields = ["rps", "p50_us", "p99_us", "gbit_s", "proxy_cpu_s", "proxy_peak_rss_mb"];
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
    row("1 connection: requests/s", 0, "rps", 0);
    row("1 connection: p50 µs", 0, "p50_us", 0);
    row("1 connection: p99 µs", 0, "p99_us", 0);
    row("64 connections: requests/s", 1, "rps", 0);
    row("64 connections: p50 µs", 1, "p50_us", 0);
    row("64 connections: p99 µs", 1, "p99_us", 0);
    row("new connection per request (64 at a time): connections/s", 2, "rps", 0);
    row("new connection per request: p99 µs", 2, "p99_us", 0);
    row("bulk, one connection (iperf3): Gbit/s", 3, "gbit_s", 2);
    row("proxies' CPU seconds, 64-connection run", 1, "proxy_cpu_s", 2);
    row("proxies' CPU seconds, new-connection run", 2, "proxy_cpu_s", 2);
    row("proxies' CPU seconds, bulk run", 3, "proxy_cpu_s", 2);
    row("proxies' peak RSS MB (both), 64-connection run", 1, "proxy_peak_rss_mb", 1);
    row("proxies' peak RSS MB (both), new-connection run", 2, "proxy_peak_rss_mb", 1);
    let goal = |ok: bool| if ok { "met" } else { "**missed**" };
    let (p50, p99) = (med(0, m, "p50_us") <= med(0, h, "p50_us"), med(0, m, "p99_us") <= med(0, h, "p99_us"));
    let bulk = med(3, m, "gbit_s") >= med(3, t, "gbit_s");
    let conns = med(2, m, "rps") >= 5.0 * med(2, t, "rps");
    let _ = write!(
        md,
        "\nGoals (murmur/peer, same run): p50 at or below the plaintext HAProxy pair (1 connection): {}; \
         p99 likewise: {}; bulk at or above the HAProxy mTLS pair: {}; new connections per second at least 5× \
         the HAProxy mTLS pair: {} ({:.1}×).\n",
        goal(p50),
        goal(p99),
        goal(bulk),
        goal(conns),
        ratio(med(2, m, "rps"), med(2, t, "rps")),
    );
    json.insert("goals".into(), serde_json::json!({"p50": p50, "p99": p99, "bulk": bulk, "new_connections": conns}));
    (json.into(), md)
}
