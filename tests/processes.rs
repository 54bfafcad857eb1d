//! The real `murmur` binary started as processes: joining through a seed given as a DNS
//! name, lookups through the CLI and the DNS stub, kill -9, SIGTERM, an app failure, a
//! wrong key, garbage datagrams, a restart on a new address, config errors, and the
//! embedded example. Every process is killed when its guard drops.

#[path = "common/blocks.rs"]
mod blocks;
#[path = "common/wait.rs"]
mod wait;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use murmur::client::{addresses, query, AgentSelfJson, ApiClient, MemberJson};

const WAIT: Duration = Duration::from_secs(20);

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_murmur"))
}

/// A running agent process, killed on drop.
struct Proc {
    child: Child,
    api: SocketAddr,
    dns: SocketAddr,
    gossip: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Address `i` of a test's own block (tests/common/blocks.rs).
fn ip(block: u8, i: u8) -> IpAddr {
    IpAddr::from([127, block, 0, 10 + i])
}

/// Starts `murmur agent` as agent `i` of `block`, on its own address with the usual
/// ports (each address is private to one agent, so the ports are never shared).
fn agent(block: u8, i: u8, key: &str, seeds: &[String], extra: &[&str]) -> Proc {
    let ip = ip(block, i);
    let gossip = SocketAddr::new(ip, 7946);
    let dns = SocketAddr::new(ip, 8600);
    let api = SocketAddr::new(ip, 8500);
    let mut cmd = Command::new(bin());
    cmd.args(["agent", "--namespace", "proc.local", "--cluster", "proc"])
        .args(["--dns-listen", &dns.to_string(), "--api-listen", &api.to_string()])
        .args(["--drain", "300ms"])
        .env("MURMUR_GOSSIP_KEYS", key)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if !extra.contains(&"--name") {
        cmd.args(["--name", &format!("p{block}-{i}")]);
    }
    if !extra.contains(&"--bind") {
        cmd.args(["--bind", &gossip.to_string()]);
    }
    for s in seeds {
        cmd.args(["--seed", s]);
    }
    cmd.args(extra);
    let child = cmd.spawn().expect("murmur starts");
    Proc { child, api, dns, gossip }
}

fn wait_until(what: &str, cond: impl FnMut() -> bool) -> Duration {
    wait::until(what, WAIT, cond)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn api_get(rt: &tokio::runtime::Runtime, api: SocketAddr, path: &str) -> Option<String> {
    rt.block_on(ApiClient::new(api).get(path)).ok()
}

fn alive(rt: &tokio::runtime::Runtime, api: SocketAddr) -> Vec<String> {
    api_get(rt, api, "/v1/members")
        .and_then(|t| serde_json::from_str::<Vec<MemberJson>>(&t).ok())
        .map(|m| m.into_iter().filter(|m| m.status == "alive").map(|m| m.name).collect())
        .unwrap_or_default()
}

fn dns_a(rt: &tokio::runtime::Runtime, dns: SocketAddr, name: &str) -> Vec<IpAddr> {
    rt.block_on(query(dns, name, RecordType::A, Duration::from_secs(1))).map(|m| addresses(&m)).unwrap_or_default()
}

fn cli(args: &[&str]) -> Output {
    Command::new(bin()).args(args).stdin(Stdio::null()).output().expect("murmur runs")
}

fn keygen() -> String {
    let out = cli(&["keygen"]);
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("utf8").trim().to_owned()
}

fn free_port(ip: IpAddr) -> u16 {
    std::net::UdpSocket::bind((ip, 0)).expect("bind").local_addr().expect("addr").port()
}

#[test]
fn a_mesh_of_processes_joins_resolves_and_survives_failures() {
    let n = blocks::block("a_mesh_of_processes_joins_resolves_and_survives_failures");
    let rt = rt();
    let key = keygen();
    // The seed listens on 127.0.0.1 so the others can name it `localhost`.
    let seed_port = free_port("127.0.0.1".parse().expect("ip"));
    let seed_addr = format!("127.0.0.1:{seed_port}");
    let app = rt.block_on(tokio::net::TcpListener::bind((ip(n, 2), 0))).expect("app");
    let app_port = app.local_addr().expect("addr").port();
    let mut procs = vec![agent(
        1,
        0,
        &key,
        &[],
        &["--bind", &seed_addr, "--advertise", "127.0.0.1", "--service", "web:8080,check=none"],
    )];
    let seed = vec![format!("localhost:{seed_port}")];
    procs.push(agent(n, 1, &key, &seed, &["--service", "web:8081,check=none,tags=blue"]));
    procs.push(agent(
        1,
        2,
        &key,
        &seed,
        &["--service", &format!("web:{app_port},interval=200ms,timeout=100ms,failures=2")],
    ));
    procs.push(agent(n, 3, &key, &seed, &["--service", "web:8083,check=none"]));
    let names = |n: usize| alive(&rt, procs[n].api).len();
    let joined = wait_until("four members everywhere", || (0..4).all(|n| names(n) == 4));
    eprintln!("4 processes converged in {joined:?}");
    let dns = procs[1].dns;
    wait_until("4 web instances in DNS", || dns_a(&rt, dns, "web.proc.local.").len() == 4);

    // The CLI: tables for people, the API's JSON with --json.
    let api = procs[1].api.to_string();
    let out = cli(&["members", "--api", &api]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.starts_with("NAME") && table.matches("alive").count() == 4, "{table}");
    let out = cli(&["resolve", "blue.web", "--api", &api, "--json"]);
    let json = String::from_utf8_lossy(&out.stdout);
    assert_eq!(json.trim(), api_get(&rt, procs[1].api, "/v1/services/web?tag=blue").expect("api").trim());
    let out = cli(&["services", "--api", &api]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("web"));
    let out = cli(&["services", "web", "--api", &api]);
    assert!(String::from_utf8_lossy(&out.stdout).lines().count() == 5);

    // The app behind agent 2 dies: its instance leaves the answers.
    drop(app);
    let t = wait_until("dead app out of DNS", || !dns_a(&rt, dns, "web.proc.local.").contains(&ip(n, 2)));
    eprintln!("dead app left DNS after {t:?}");

    // kill -9 of agent 3: the others detect it.
    let _ = procs[3].child.kill();
    let t = wait_until("killed agent out of DNS", || !dns_a(&rt, dns, "web.proc.local.").contains(&ip(n, 3)));
    eprintln!("kill -9'd agent left DNS after {t:?}");
    wait_until("killed agent not alive", || !alive(&rt, procs[0].api).contains(&format!("p{n}-3").to_owned()));

    // Restart agent 3 at once on a new address: the new address replaces the old.
    let mut restarted = agent(n, 9, &key, &seed, &["--name", &format!("p{n}-3"), "--service", "web:8083,check=none"]);
    let t = wait_until("restarted agent on its new address", || {
        let got = dns_a(&rt, dns, "web.proc.local.");
        got.contains(&ip(n, 9)) && !got.contains(&ip(n, 3))
    });
    eprintln!("restart on a new address appeared after {t:?}");

    // SIGTERM: drain, leave, exit 0; peers see it as left.
    let pid = restarted.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status = restarted.child.wait().expect("wait");
    assert!(status.success(), "SIGTERM exit: {status:?}");
    wait_until("left", || {
        api_get(&rt, procs[0].api, "/v1/members")
            .and_then(|t| serde_json::from_str::<Vec<MemberJson>>(&t).ok())
            .is_some_and(|m| m.iter().any(|m| m.name == format!("p{n}-3") && m.status == "left"))
    });
    drop(procs);
}

#[test]
fn wrong_keys_and_garbage_do_not_get_in() {
    let n = blocks::block("wrong_keys_and_garbage_do_not_get_in");
    let rt = rt();
    let key = keygen();
    let a = agent(n, 0, &key, &[], &["--service", "db:5432,check=none"]);
    let b = agent(n, 1, &key, &[a.gossip.to_string()], &[]);
    wait_until("two members", || alive(&rt, b.api).len() == 2);
    let intruder = agent(n, 2, &keygen(), &[a.gossip.to_string()], &["--service", "evil:1,check=none"]);
    wait_until("intruder running", || api_get(&rt, intruder.api, "/health").is_some());
    let sock = std::net::UdpSocket::bind((ip(n, 50), 0)).expect("bind");
    for len in [0usize, 1, 6, 40, 1000, 60_000] {
        let junk: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let _ = sock.send_to(&junk, a.gossip);
        let _ = sock.send_to(&junk, a.dns);
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(alive(&rt, a.api).len(), 2);
    assert_eq!(alive(&rt, intruder.api).len(), 1);
    let services = api_get(&rt, a.api, "/v1/services").expect("services");
    assert!(!services.contains("evil"), "{services}");
    let metrics = api_get(&rt, a.api, "/metrics").expect("metrics");
    let undecryptable: u64 = metrics
        .lines()
        .find(|l| l.starts_with("murmur_gossip_dropped_packets_total{reason=\"undecryptable\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("counter present");
    assert!(undecryptable > 0, "{metrics}");
    assert_eq!(dns_a(&rt, a.dns, "db.proc.local."), vec![ip(n, 0)], "still answering");
    let me: AgentSelfJson = serde_json::from_str(&api_get(&rt, a.api, "/v1/agent/self").expect("self")).expect("json");
    assert!(me.murmur.encrypted);
    assert_eq!(
        (me.config.node_name.as_str(), me.murmur.name.as_str()),
        (format!("p{n}-0").as_str(), format!("p{n}-0").as_str())
    );
}

#[test]
fn bad_config_exits_2_naming_the_field() {
    let n = blocks::block("bad_config_exits_2_naming_the_field");
    let key = keygen();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["agent", "--name", "x", "--insecure", "--service", "web"], vec![], "--service"),
        (vec!["agent", "--name", "x"], vec![], "--gossip-key"),
        (vec!["agent", "--name", "x", "--gossip-key", "nope"], vec![], "--gossip-key"),
        (vec!["agent", "--name", "Not Valid", "--insecure"], vec![], "--name"),
        (vec!["agent", "--name", "x", "--insecure"], vec![("MURMUR_DNS_LISTEN", "garbage")], "MURMUR_DNS_LISTEN"),
        (vec!["agent", "--name", "x", "--dns-listen", "garbage", "--insecure"], vec![], "--dns-listen"),
        (vec!["agent", "--name", "x", "--insecure", "--config", "/nonexistent/murmur.toml"], vec![], "--config"),
    ];
    for (args, env, field) in cases {
        let out = Command::new(bin()).args(&args).envs(env).env("MURMUR_GOSSIP_KEYS", "").output().expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(field), "{args:?} should name {field}: {err}");
    }
    // An unknown TOML key names itself.
    let dir = std::env::temp_dir().join(format!("murmur-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "name = \"x\"\ninsecure = true\n[dns]\nlisen = \"127.0.0.1:1\"\n").expect("write");
    let out = cli(&["agent", "--config", file.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lisen"));
    std::fs::remove_dir_all(&dir).expect("clean up");
    // A port in use names its setting.
    let taken = std::net::TcpListener::bind((ip(n, 0), 0)).expect("bind");
    let api = taken.local_addr().expect("addr").to_string();
    let out = Command::new(bin())
        .args([
            "agent",
            "--name",
            "x",
            "--bind",
            &format!("{}:0", ip(n, 0)),
            "--dns-listen",
            &format!("{}:0", ip(n, 0)),
        ])
        .args(["--api-listen", &api])
        .env("MURMUR_GOSSIP_KEYS", &key)
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--api-listen") && err.contains(&api), "{err}");
}

#[test]
fn keygen_makes_a_32_byte_key_and_the_example_runs() {
    use base64::Engine;
    let key = keygen();
    let raw = base64::engine::general_purpose::STANDARD.decode(&key).expect("base64");
    assert_eq!(raw.len(), 32);
    assert_ne!(key, keygen());
    // `cargo test` builds the examples beside the test binaries.
    let example = bin().parent().expect("target dir").join("examples").join("embedded");
    let out = Command::new(&example).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", example.display()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("ok\n"));
}

#[test]
fn proxy_mode_with_certificates_from_the_cli() {
    let n = blocks::block("proxy_mode_with_certificates_from_the_cli");
    use std::io::{BufRead, Read, Write};
    let rt = rt();
    let key = keygen();
    let dir = std::env::temp_dir().join(format!("murmur-proxy-cli-{}", std::process::id()));
    let d = |p: &str| dir.join(p).to_string_lossy().into_owned();
    assert!(cli(&["ca", "init", "--dir", &d("ca")]).status.success());
    let again = cli(&["ca", "init", "--dir", &d("ca")]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already holds a CA"));
    for (name, svc) in [(format!("p{n}-0"), "web"), (format!("p{n}-1"), "echo")] {
        let out = cli(&["cert", "issue", "--ca-dir", &d("ca"), "--name", &name, "--service", svc, "--out", &d(&name)]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let tls = |name: &str| {
        vec![
            "--tls-ca".to_owned(),
            d(&format!("{name}/ca.pem")),
            "--tls-cert".into(),
            d(&format!("{name}/cert.pem")),
            "--tls-key".into(),
            d(&format!("{name}/key.pem")),
        ]
    };
    // The backend app: a greeting, then an echo.
    let app = std::net::TcpListener::bind((ip(n, 1), 0)).expect("app");
    let app_port = app.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in app.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.write_all(b"echo-app\n");
            let mut buf = [0u8; 64];
            if let Ok(n) = s.read(&mut buf) {
                let _ = s.write_all(&buf[..n]);
            }
        }
    });
    let server_tls = tls(&format!("p{n}-1"));
    let proxy_bind = SocketAddr::new(ip(n, 1), 7947).to_string();
    let vip_range = format!("127.202.{n}.0/24");
    let mut server_args: Vec<&str> = vec!["--proxy-bind", &proxy_bind];
    let svc = format!("echo:{app_port},interval=200ms,timeout=100ms");
    server_args.extend(["--service", &svc]);
    server_args.extend(server_tls.iter().map(String::as_str));
    let server = agent(n, 1, &key, &[], &server_args);
    let client_tls = tls(&format!("p{n}-0"));
    let hosts = d("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").expect("hosts file");
    let mut client_args: Vec<&str> = vec![
        "--service",
        "web:1,check=none",
        "--upstream",
        "echo:80",
        "--vip-range",
        &vip_range,
        "--hosts-file",
        &hosts,
    ];
    client_args.extend(client_tls.iter().map(String::as_str));
    let client = agent(n, 0, &key, &[server.gossip.to_string()], &client_args);
    wait_until("the client sees a healthy echo", || {
        api_get(&rt, client.api, "/v1/services")
            .is_some_and(|t| t.contains("\"name\":\"echo\",\"instances\":1,\"healthy\":1"))
    });
    let vip = dns_a(&rt, client.dns, "echo.");
    assert_eq!(vip, vec![IpAddr::from([127, 202, n, 1])], "the alias answers its VIP");
    let mut s = std::net::TcpStream::connect((vip[0], 80)).expect("connect to the VIP");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut r = std::io::BufReader::new(s.try_clone().expect("clone"));
    let mut greeting = String::new();
    r.read_line(&mut greeting).expect("greeting");
    assert_eq!(greeting, "echo-app\n");
    s.write_all(b"ping").expect("write");
    let mut back = [0u8; 4];
    r.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"ping");
    let out = cli(&["stats", "--api", &client.api.to_string()]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains("echo") && table.contains(&format!("quic {proxy_bind}")), "{table}");
    let text = std::fs::read_to_string(&hosts).expect("hosts");
    assert_eq!(text, format!("127.0.0.1 localhost\n127.202.{n}.1 echo echo.proc.local # murmur\n"));
    let mut client = client;
    assert!(Command::new("kill").args(["-TERM", &client.child.id().to_string()]).status().expect("kill").success());
    assert!(client.child.wait().expect("wait").success());
    assert_eq!(
        std::fs::read_to_string(&hosts).expect("hosts"),
        "127.0.0.1 localhost\n",
        "alias lines removed on leave"
    );
    drop(client);
    drop(server);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn the_demo_runs_and_fails_no_call() {
    let start = Instant::now();
    let out = Command::new(bin()).arg("demo").stdin(Stdio::null()).output().expect("demo runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(" calls, 0 failed"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(60), "the demo takes under a minute");
}

/// Resident memory of a process, kB.
fn rss_kb(child: &Child) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// One HTTP/1.1 request on a kept-alive connection; the status code.
fn http_call(conn: &mut std::net::TcpStream, method: &str, path: &str, body: &str) -> u16 {
    use std::io::{BufRead, BufReader, Read, Write};
    let host = conn.peer_addr().expect("peer");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).expect("request written");
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status");
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().expect("length");
            }
        }
    }
    let mut rest = vec![0; length];
    reader.read_exact(&mut rest).expect("body");
    status
}

/// Registers and removes `n` instances through the API, one connection throughout, at
/// most [`CHURN_RATE`] cycles a second (a steady rate makes the tombstones held at once,
/// rate × grace, the same in every burst, whatever else the machine is doing).
fn churn(api: SocketAddr, from: usize, n: usize) {
    let started = Instant::now();
    let mut conn = std::net::TcpStream::connect(api).expect("api connects");
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    // Long ids, as generated task ids are: each removal leaves a tombstone of its key.
    let pad = "x".repeat(48);
    for (k, i) in (from..from + n).enumerate() {
        let due = started + Duration::from_secs_f64(k as f64 / CHURN_RATE);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let path = format!("/v1/services/churn/churn-{i}-{pad}");
        let body = format!("{{\"port\":{},\"check\":\"none\",\"tags\":[\"t{}\"]}}", 9000 + i % 100, i % 7);
        assert_eq!(http_call(&mut conn, "PUT", &path, &body), 200, "register {i}");
        assert_eq!(http_call(&mut conn, "DELETE", &path, ""), 200, "remove {i}");
    }
}

/// Register/remove cycles a second in the churn test.
const CHURN_RATE: f64 = 1000.0;

fn gauge(rt: &tokio::runtime::Runtime, api: SocketAddr, name: &str) -> Option<u64> {
    let metrics = api_get(rt, api, "/metrics")?;
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn registration_churn_leaves_no_tombstones_and_no_memory_behind() {
    let n = blocks::block("registration_churn_leaves_no_tombstones_and_no_memory_behind");
    let rt = rt();
    let key = keygen();
    let seed = SocketAddr::new(ip(n, 0), 7946).to_string();
    let fast = ["--registration-rate", "100000", "--tombstone-grace", "1s", "--service", "web:80,check=none"];
    let agents = [agent(n, 0, &key, &[], &fast), agent(n, 1, &key, std::slice::from_ref(&seed), &fast)];
    wait_until("two members", || agents.iter().all(|a| alive(&rt, a.api).len() == 2));
    let settled = |what: &str| {
        wait_until(what, || agents.iter().all(|a| gauge(&rt, a.api, "murmur_gossip_tombstones") == Some(0)));
    };
    // A first burst as large as the one measured: glibc keeps the arena pages that the
    // tombstones of one grace took at their peak (bounded by rate × grace and by
    // MAX_TOMBSTONES), so the question is whether a second burst grows memory again.
    churn(agents[0].api, 0, 10_000);
    settled("the first burst's tombstones forgotten");
    std::thread::sleep(Duration::from_millis(500));
    let before: Vec<u64> = agents.iter().map(|a| rss_kb(&a.child)).collect();
    let started = Instant::now();
    churn(agents[0].api, 10_000, 10_000);
    let took = started.elapsed();
    let held: Vec<Option<u64>> = agents.iter().map(|a| gauge(&rt, a.api, "murmur_gossip_tombstones")).collect();
    assert!(held.iter().all(|t| t.is_some_and(|t| t > 0)), "removals are remembered for the grace: {held:?}");
    let peak: Vec<u64> = agents.iter().map(|a| rss_kb(&a.child)).collect();
    settled("every tombstone forgotten after the grace");
    std::thread::sleep(Duration::from_millis(500));
    let after: Vec<u64> = agents.iter().map(|a| rss_kb(&a.child)).collect();
    eprintln!("10,000 register/remove cycles in {took:?}; tombstones at the end {held:?}; RSS kB before {before:?}, at the end {peak:?}, after the grace {after:?}");
    for i in 0..2 {
        let services = api_get(&rt, agents[i].api, "/v1/services").expect("services");
        assert!(!services.contains("churn"), "agent {i} still lists churn: {services}");
        let grown = after[i].saturating_sub(before[i]);
        assert!(
            grown < 1536,
            "agent {i} grew by {grown} kB over 10,000 cycles ({} kB before, {} after)",
            before[i],
            after[i]
        );
    }
}

#[test]
fn the_open_files_limit_is_raised_at_start_and_reported() {
    let n = blocks::block("the_open_files_limit_is_raised_at_start_and_reported");
    let rt = rt();
    let (ip, api) = (ip(n, 0), SocketAddr::new(ip(n, 0), 8500));
    // A shell sets the limits most systems start a service with, then becomes the agent.
    let child = Command::new("sh")
        .args(["-c", "ulimit -Sn 1024 && ulimit -Hn 4096 && exec \"$0\" \"$@\""])
        .arg(bin())
        .args(["agent", "--insecure", "--name", &format!("p{n}-0"), "--bind", &format!("{ip}:7946")])
        .args(["--dns-listen", &format!("{ip}:8600"), "--api-listen", &api.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh starts");
    let _guard = Proc { child, api, dns: SocketAddr::new(ip, 8600), gossip: SocketAddr::new(ip, 7946) };
    wait_until("the agent answers", || api_get(&rt, api, "/v1/agent/self").is_some());
    let me: AgentSelfJson = serde_json::from_str(&api_get(&rt, api, "/v1/agent/self").expect("self")).expect("json");
    let me = me.murmur;
    assert_eq!((me.open_files.soft, me.open_files.hard), (Some(4096), Some(4096)), "{:?}", me.open_files);
}

/// Runs `murmur ARGS` and returns its exit status and stdout.
fn status_of(args: &[&str]) -> (i32, String) {
    let out = cli(args);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_cli_tells_scripts_what_happened_by_its_exit_status() {
    let n = blocks::block("the_cli_tells_scripts_what_happened_by_its_exit_status");
    let rt = rt();
    let key = keygen();
    let a = agent(n, 0, &key, &[], &["--service", "web:8080,check=none"]);
    let b = agent(n, 1, &key, &[a.gossip.to_string()], &[]);
    wait_until("two members", || alive(&rt, b.api).len() == 2);
    // Membership comes first and a's instances a little after (up to 160 ms measured
    // on an idle machine): wait for them in b's replica, through the API rather than
    // the command under test.
    wait_until("web in b's replica", || {
        api_get(&rt, b.api, "/v1/services/web").is_some_and(|json| json.contains("8080"))
    });
    let api = b.api.to_string();
    let with = |args: &[&str]| status_of(&[args, &["--api", &api]].concat());

    // 0 found, 3 nothing found, 1 no agent, 2 bad usage.
    let (code, table) = with(&["resolve", "web"]);
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("8080"), "{table}");
    assert_eq!(with(&["resolve", "nosuch"]).0, 3);
    let (code, json) = with(&["resolve", "nosuch", "--json"]);
    assert_eq!((code, json.trim()), (3, "[]"), "--json prints the empty list and still says nothing found");
    assert_eq!(with(&["services", "nosuch"]).0, 3);
    assert_eq!(with(&["members", "--status", "alive"]).0, 0);
    assert_eq!(with(&["members", "--status", "dead"]).0, 3);
    let (code, json) = with(&["members", "--status", "alive", "--json"]);
    let members: Vec<MemberJson> = serde_json::from_str(&json).expect("--json is JSON");
    assert_eq!((code, members.len()), (0, 2));
    assert_eq!(status_of(&["members", "--api", &SocketAddr::new(ip(n, 89), 1).to_string()]).0, 1, "no agent there");
    assert_eq!(with(&["members", "--status", "bogus"]).0, 2, "bad usage");
    let help = String::from_utf8_lossy(&cli(&["--help"]).stdout).into_owned();
    assert!(help.contains("3  nothing found"), "--help documents the exit status: {help}");

    // watch prints the instances there, then one line per change.
    let mut watch = Command::new(bin())
        .args(["watch", "web", "--count", "2", "--api", &api])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("watch starts");
    let mut stdout = watch.stdout.take().expect("piped");
    let mut first = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut first).expect("the first line comes at once");
    assert_eq!(&first, b"added ");
    let put = r#"{"Name":"web","ID":"web-2","Port":9090,"Check":{"TTL":"60s"}}"#.to_owned();
    rt.block_on(ApiClient::new(a.api).put("/v1/agent/service/register", put)).expect("registered");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
    let lines: Vec<&str> = rest.lines().collect();
    assert_eq!(watch.wait().expect("watch ends").code(), Some(0), "{rest}");
    assert_eq!(lines.len(), 2, "{rest}");
    assert!(lines[0].contains(":8080 passing"), "the configured instance: {rest}");
    assert!(lines[1].starts_with("added web-2 ") && lines[1].contains(":9090"), "the new instance: {rest}");

    // The keyring from the CLI: install reaches both members before the command returns.
    let new = keygen();
    let (code, said) = with(&["keyring", "install", &new, "--wait", "15s"]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("installed: 2/2 live members"), "{said}");
    assert_eq!(with(&["keyring", "remove", &key]).0, 1, "the primary cannot be removed");
    let (code, list) = with(&["keyring", "list"]);
    assert!(code == 0 && list.contains(&new) && list.contains("2/2"), "{list}");

    // Completions and the man page come from the binary.
    assert!(String::from_utf8_lossy(&cli(&["completions", "bash"]).stdout).contains("_murmur()"));
    assert!(String::from_utf8_lossy(&cli(&["man"]).stdout).starts_with(".ie"), "roff");
}
