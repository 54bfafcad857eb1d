//! An in-process mesh for integration tests, built only on murmur's public API. Each
//! agent gets its own 127.x.y.z address and port 0 everywhere, so tests never share a
//! port; every wait is bounded.

#![allow(dead_code)]

pub mod blocks;
pub mod trials;
pub mod wait;

pub use blocks::block;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use murmur::{parse_service_spec, Agent, Config, Keyring, Layer};

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

/// A mesh of agents in this process.
pub struct TestMesh {
    /// The agents; `None` once killed or shut down.
    pub agents: Vec<Option<Agent>>,
    /// The cluster key.
    pub key: String,
    /// The address block: agent i lives on `127.<block>.<i / 200>.<10 + i % 200>`.
    pub block: u8,
}

/// Agent `i`'s address in block `block`.
pub fn ip(block: u8, i: usize) -> IpAddr {
    IpAddr::from([127, block, (i / 200) as u8, 10 + (i % 200) as u8])
}

/// A config for one test agent.
pub fn config(block: u8, i: usize, key: Option<&str>, seeds: &[SocketAddr], services: &[String]) -> Config {
    Config::from_layer(layer(block, i, key, seeds, services), "").expect("valid test config")
}

/// The settings of [`config`], to change before they are checked.
pub fn layer(block: u8, i: usize, key: Option<&str>, seeds: &[SocketAddr], services: &[String]) -> Layer {
    let ip = ip(block, i);
    Layer {
        name: Some(format!("agent-{i}")),
        namespace: Some("test.local".into()),
        bind: Some(SocketAddr::new(ip, 0)),
        seeds: Some(seeds.iter().map(ToString::to_string).collect()),
        gossip_keys: key.map(|k| vec![k.to_owned()]),
        insecure: Some(key.is_none()),
        drain: Some(Duration::from_secs(1)),
        dns_listen: Some(SocketAddr::new(ip, 0)),
        dns_upstreams: Some(vec![]),
        api_listen: Some(SocketAddr::new(ip, 0)),
        services: Some(services.iter().map(|s| parse_service_spec(s).expect("valid test spec")).collect()),
        ..Default::default()
    }
}

impl TestMesh {
    /// Starts `n` agents in address block `block`; agent i registers `services(i)`.
    pub async fn start(block: u8, n: usize, services: impl Fn(usize) -> Vec<String>) -> TestMesh {
        Self::start_with(block, n, services, |_| {}).await
    }

    /// As [`TestMesh::start`], with `tweak` applied to each agent's config.
    pub async fn start_with(
        block: u8,
        n: usize,
        services: impl Fn(usize) -> Vec<String>,
        tweak: impl Fn(&mut Config),
    ) -> TestMesh {
        let key = Keyring::generate_base64();
        let mut agents = Vec::new();
        let mut seeds = Vec::new();
        for i in 0..n {
            let mut cfg = config(block, i, Some(&key), &seeds, &services(i));
            tweak(&mut cfg);
            let agent = Agent::start(cfg).await.expect("agent starts");
            if seeds.is_empty() {
                seeds.push(agent.gossip_addr());
            }
            agents.push(Some(agent));
        }
        TestMesh { agents, key, block }
    }

    /// Agent `i`, which must be running.
    pub fn agent(&self, i: usize) -> &Agent {
        self.agents[i].as_ref().expect("agent is running")
    }

    /// The first agent's gossip address.
    pub fn seed(&self) -> SocketAddr {
        self.agents.iter().flatten().next().expect("an agent runs").gossip_addr()
    }

    /// Waits until every running agent sees `alive` alive members.
    pub async fn converge(&self, alive: usize) {
        for agent in self.agents.iter().flatten() {
            let (snap, ok) = agent
                .registry()
                .wait_for(WAIT, |s| {
                    s.members.values().filter(|m| m.status == murmur::MemberStatus::Alive).count() == alive
                })
                .await;
            assert!(ok, "{} sees {:?}", agent.name(), snap.members);
        }
    }

    /// Shuts every running agent down.
    pub async fn stop(self) {
        for agent in self.agents.into_iter().flatten() {
            agent.kill().await;
        }
    }
}

/// Polls `cond` until it holds; panics after [`WAIT`]. Returns the time it took.
pub async fn eventually<F, Fut>(what: &str, cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait::until_async(what, WAIT, cond).await
}

/// Three converged agents in `block`, each registering an instance of `web` on a TCP app
/// of its own: instance 0 tagged `canary`, the others `stable`, each with attribute
/// `build=b<i>`, checked every 200 ms. Returns the apps' ports and handles (abort one to
/// make its check fail) and the mesh.
pub async fn web_mesh(block: u8) -> (Vec<u16>, Vec<tokio::task::JoinHandle<()>>, TestMesh) {
    let (ports, apps) = tcp_apps(block, 3).await;
    let mesh = TestMesh::start(block, 3, |i| {
        let tag = if i == 0 { "canary" } else { "stable" };
        vec![format!("web:{},tags={tag},interval=200ms,timeout=150ms,attr.build=b{i}", ports[i])]
    })
    .await;
    mesh.converge(3).await;
    (ports, apps, mesh)
}

/// A TCP app that accepts and closes connections; abort the handle to "crash" it.
pub async fn tcp_app(ip: IpAddr) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind app");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    (port, task)
}

/// `n` TCP apps, app `i` on agent `i`'s address of `block`: their ports, and the handles
/// that crash them.
pub async fn tcp_apps(block: u8, n: usize) -> (Vec<u16>, Vec<tokio::task::JoinHandle<()>>) {
    let mut ports = Vec::with_capacity(n);
    let mut apps = Vec::with_capacity(n);
    for i in 0..n {
        let (port, task) = tcp_app(ip(block, i)).await;
        ports.push(port);
        apps.push(task);
    }
    (ports, apps)
}

/// Turns proxy mode on in `cfg`: QUIC on the agent's own address, mutual TLS with a
/// certificate from `ca` naming `services`, and these upstreams on VIPs in
/// 127.201.<block>.0/24.
pub fn with_proxy(
    cfg: &mut Config,
    block: u8,
    ca: &murmur::pki::Ca,
    identity: Option<&str>,
    services: &[&str],
    upstreams: &[&str],
) {
    use murmur::parse_upstream_spec;
    use murmur::pki::TlsMaterial;
    use murmur::ProxyConfig;
    let services: Vec<murmur_protocol::ServiceName> =
        services.iter().map(|s| s.parse().expect("valid service")).collect();
    let tls = TlsMaterial::Mutual {
        ca: vec![ca.cert_der().expect("ca der")],
        identity: ca.issue(&cfg.node.name, &services).expect("issue"),
    };
    cfg.proxy = Some(ProxyConfig {
        bind: SocketAddr::new(cfg.node.advertise, 0),
        tls,
        tls_files: None,
        identity: identity.map(|s| s.parse().expect("valid identity")).or_else(|| services.first().cloned()),
        upstreams: upstreams.iter().map(|u| parse_upstream_spec(u).expect("valid upstream")).collect(),
        vip_base: std::net::Ipv4Addr::new(127, 201, block, 1),
        vip_count: 250,
        hosts_file: None,
        access_log: None,
    });
}

/// A TCP app that says its name on a line, then echoes everything back, keeping
/// half-close (it shuts its write side down after reading EOF).
pub async fn echo_app(ip: IpAddr, name: &'static str) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind app");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                if w.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = w.shutdown().await;
            });
        }
    });
    (port, task)
}

/// One request/response through a VIP to an [`echo_app`]: returns the name it greeted
/// with, once `payload` has come back whole.
pub async fn call(vip: SocketAddr, payload: &[u8]) -> std::io::Result<String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let s = tokio::net::TcpStream::connect(vip).await?;
    let (r, mut w) = s.into_split();
    let mut r = tokio::io::BufReader::new(r);
    let mut name = String::new();
    r.read_line(&mut name).await?;
    if name.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no greeting"));
    }
    w.write_all(payload).await?;
    w.shutdown().await?;
    let mut back = Vec::new();
    r.read_to_end(&mut back).await?;
    if back != payload {
        return Err(std::io::Error::other(format!("echo mismatch: {} of {} bytes", back.len(), payload.len())));
    }
    Ok(name.trim().to_owned())
}

/// The HTTP status of an API call: 200 for a success, the code of a refusal; panics when
/// the agent could not be reached at all.
pub fn status(r: Result<String, murmur::client::ClientError>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(murmur::client::ClientError::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    }
}

/// A scraper that discovers targets from murmur: Debian's Prometheus, or vmagent
/// (Debian's victoria-metrics; Debian builds Prometheus without `consul_sd_configs`,
/// which vmagent has, with Prometheus's configuration and labels). .ci/run installs both.
/// Killed, and its data directory removed, on drop; its log is printed when the test
/// failed.
pub struct Scraper {
    child: std::process::Child,
    dir: std::path::PathBuf,
    /// Its web address (`/api/v1/targets`).
    pub web: SocketAddr,
}

impl Scraper {
    /// Prometheus on a free port of `ip` with `config` (YAML). The test list checks
    /// that the binary is there ([`trials::program`]).
    pub fn prometheus(ip: IpAddr, config: &str) -> Scraper {
        Self::start("prometheus", ip, config, |dir, cfg, web| {
            vec![
                format!("--config.file={}", cfg.display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address={web}"),
            ]
        })
    }

    /// vmagent on a free port of `ip` with `config` (YAML); the test list checks that
    /// the binary is there.
    pub fn vmagent(ip: IpAddr, config: &str) -> Scraper {
        Self::start("vmagent", ip, config, |dir, cfg, web| {
            vec![
                format!("-promscrape.config={}", cfg.display()),
                format!("-httpListenAddr={web}"),
                // Nothing listens there: vmagent needs somewhere to write, and scraping
                // is not what is tested (loopback, the test's own address).
                format!("-remoteWrite.url=http://{}:1/api/v1/write", web.ip()),
                format!("-remoteWrite.tmpDataPath={}", dir.join("data").display()),
                // How often it reads what its Consul watches hold; the watches block for
                // their own wait and are woken by a change.
                "-promscrape.consulSDCheckInterval=1s".into(),
            ]
        })
    }

    fn start(
        program: &str,
        ip: IpAddr,
        config: &str,
        args: impl Fn(&std::path::Path, &std::path::Path, SocketAddr) -> Vec<String>,
    ) -> Scraper {
        let dir = std::env::temp_dir().join(format!("murmur-{program}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let config_file = dir.join("scrape.yml");
        std::fs::write(&config_file, config).expect("write config");
        let log = std::fs::File::create(dir.join("log")).expect("log file");
        // A free port of the test's own address, not a fixed one: two runs of the suite
        // at once (two clones) would otherwise both want it.
        let web = std::net::TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).expect("a free port");
        let child = std::process::Command::new(program)
            .args(args(&dir, &config_file, web))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{program} starts: {e}"));
        Scraper { child, dir, web }
    }

    /// The targets it has discovered: each one's discovered labels (none while it starts).
    pub async fn targets(&self) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let Ok(body) = murmur::client::ApiClient::new(self.web).get("/api/v1/targets").await else { return Vec::new() };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else { return Vec::new() };
        v["data"]["activeTargets"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t["discoveredLabels"].as_object().cloned()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!("the scraper's log, last lines:");
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
