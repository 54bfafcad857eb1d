//! `murmur demo`: a real mesh of five agents on 127.0.0.x in this one process, with
//! sample TCP apps, showing discovery through the DNS stubs, an app failure and an agent
//! crash being noticed, a run-time registration and a graceful leave, with measured
//! timings. Everything it starts it stops; it exits 0 in well under a minute.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hickory_proto::rr::{RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::api::types::MemberJson;
use crate::cli::ApiClient;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::agent::Config;
use crate::config::upstream::parse_upstream_spec;
use crate::config::{spec::parse_service_spec, Layer, ServiceSpec};
use crate::dns::client::{addresses, query};
use crate::gossip::Keyring;
use crate::proxy::Config as ProxyConfig;
use crate::registry::RegistryReader;
use crate::tls::{Ca, TlsMaterial};
use crate::Agent;

const NAMESPACE: &str = "demo.local";
const AGENTS: u8 = 5;
/// Every wait of the demo is bounded by this.
const WAIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(10);

/// The sample app (`murmur sample-app`, and the demo's): to each connection, echoes
/// what it reads first, prefixed with `NAME@IP says: `. Runs until the listener fails.
pub async fn sample_app(listener: TcpListener, name: String) {
    let ip = listener.local_addr().map(|a| a.ip().to_string()).unwrap_or_default();
    let greeting: Arc<str> = format!("{name}@{ip} says: ").into();
    while let Ok((mut s, _)) = listener.accept().await {
        let greeting = greeting.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 256];
            if let Ok(n) = s.read(&mut buf).await {
                let _ = s.write_all(greeting.as_bytes()).await;
                let _ = s.write_all(&buf[..n]).await;
            }
        });
    }
}

/// Starts a sample app on `ip`, on a port of the system's choosing.
async fn spawn_app(ip: IpAddr, name: &'static str) -> anyhow::Result<(u16, JoinHandle<()>)> {
    let listener = TcpListener::bind((ip, 0)).await?;
    let port = listener.local_addr()?.port();
    Ok((port, tokio::spawn(sample_app(listener, name.to_owned()))))
}

fn agent_config(
    i: u8,
    key: &str,
    seed: Option<SocketAddr>,
    services: &[String],
    ca: &Ca,
    upstreams: &[&str],
) -> anyhow::Result<Config> {
    let ip: IpAddr = format!("127.0.0.{}", 10 + i).parse()?;
    let specs: Vec<ServiceSpec> =
        services.iter().map(|s| parse_service_spec(s).map_err(anyhow::Error::new)).collect::<Result<_, _>>()?;
    let layer = Layer {
        name: Some(format!("node-{i}")),
        cluster: Some("demo".into()),
        namespace: Some(NAMESPACE.into()),
        zone: Some(format!("zone-{}", i % 2)),
        bind: Some(SocketAddr::new(ip, 0)),
        seeds: seed.map(|s| vec![s.to_string()]),
        gossip_keys: Some(vec![key.to_owned()]),
        drain: Some(Duration::from_millis(500)),
        dns_listen: Some(SocketAddr::new(ip, 0)),
        dns_upstreams: Some(vec![]),
        api_listen: Some(SocketAddr::new(ip, 0)),
        services: Some(specs.clone()),
        ..Default::default()
    };
    let mut config = Config::from_layer(layer, "").map_err(|e| anyhow::anyhow!("{e}"))?;
    // Every sidecar gets a certificate from the demo's own CA naming the services it may
    // serve: its own, and on node-1 also `orders`, which an app registers there at run
    // time (a peer refuses to send `orders` traffic to a node whose certificate does not
    // name it).
    let mut names: Vec<murmur_protocol::ServiceName> = specs.iter().map(|s| s.name.clone()).collect();
    if i == 1 {
        names.push("orders".parse()?);
    }
    let identity = ca.issue(&config.node.name, &names)?;
    config.proxy = Some(ProxyConfig {
        bind: SocketAddr::new(ip, 0),
        tls: TlsMaterial::Mutual { ca: vec![ca.cert_der()?], identity },
        tls_files: None,
        identity: names.first().cloned(),
        upstreams: upstreams
            .iter()
            .map(|u| parse_upstream_spec(u).map_err(anyhow::Error::new))
            .collect::<Result<_, _>>()?,
        vip_base: std::net::Ipv4Addr::new(127, 100, 0, 1),
        vip_count: 254,
        hosts_file: None,
        access_log: None,
    });
    Ok(config)
}

/// What the steady traffic of the demo saw.
#[derive(Default)]
struct Traffic {
    ok: u64,
    failed: u64,
    /// When each failed call started and ended, to tell calls that were in flight when
    /// an app or agent was crashed under them from calls routed to a dead endpoint.
    failures: Vec<(Instant, Instant)>,
    latency: Option<hdrhistogram::Histogram<u64>>,
}

impl Traffic {
    /// Failed calls that were already under way when one of `crashes` happened: a crash
    /// takes the requests it was serving with it (no proxy can replay a half-answered
    /// TCP request). Every other failure is the mesh's fault.
    fn in_flight_at(&self, crashes: &[Instant]) -> u64 {
        self.failures.iter().filter(|(start, end)| crashes.iter().any(|c| start < c && c <= end)).count() as u64
    }
}

/// Calls `orders:80` through node-0's sidecar every 10 ms until `stop`: a new
/// connection each time, a request, the whole reply.
fn steady_traffic(vip: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<Traffic> {
    tokio::spawn(async move {
        let mut t =
            Traffic { latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).ok(), ..Default::default() };
        while !stop.load(Ordering::Relaxed) {
            let start = Instant::now();
            let call = async {
                let mut c = TcpStream::connect(vip).await?;
                c.write_all(b"order #1").await?;
                let mut reply = String::new();
                c.read_to_string(&mut reply).await?;
                if reply.starts_with("orders@") {
                    Ok(())
                } else {
                    Err(std::io::Error::other(format!("unexpected reply {reply:?}")))
                }
            };
            match tokio::time::timeout(Duration::from_secs(5), call).await {
                Ok(Ok(())) => {
                    t.ok += 1;
                    if let Some(h) = t.latency.as_mut() {
                        let _ = h.record(start.elapsed().as_micros() as u64);
                    }
                }
                _ => {
                    t.failed += 1;
                    t.failures.push((start, Instant::now()));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        t
    })
}

async fn dns_addrs(server: SocketAddr, name: &str) -> Vec<IpAddr> {
    match query(server, name, RecordType::A, Duration::from_secs(1)).await {
        Ok(reply) => {
            let mut a = addresses(&reply);
            a.sort();
            a
        }
        Err(_) => Vec::new(),
    }
}

/// Polls until `cond` holds; returns how long it took.
async fn time_until<F, Fut>(what: &str, mut cond: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if cond().await {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(POLL).await;
    }
    bail!("timed out after {WAIT:?} waiting for {what}")
}

fn ms(d: Duration) -> String {
    format!("{:>6.0} ms", d.as_secs_f64() * 1000.0)
}

/// Runs the demo.
pub async fn run() -> anyhow::Result<()> {
    let t0 = Instant::now();
    println!("murmur demo: {AGENTS} agents on 127.0.0.10-14, namespace {NAMESPACE}");
    println!("gossip sealed with a fresh key; sidecars speak QUIC with mutual TLS under a fresh CA\n");
    let mut mesh = Mesh::start().await?;
    // node-1's stub shows registry mode; node-0's app uses proxy mode.
    let observer = mesh.running(1)?;
    let (dns, api, registry) = (observer.dns_addr(), ApiClient::new(observer.api_addr()), observer.registry());
    let caller = mesh.running(0)?;
    let (caller_dns, caller_api) = (caller.dns_addr(), ApiClient::new(caller.api_addr()));
    let orders = format!("orders.{NAMESPACE}.");

    mesh.converge().await?;
    registry_mode(dns, &registry, &orders).await?;
    let vip = proxy_mode(caller_dns).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = steady_traffic(vip, stop.clone());
    println!("   steady traffic starts: a new connection to orders:80 every 10 ms during steps 4-7");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let crashes = vec![mesh.crash_app(dns, &orders).await?, mesh.crash_agent(dns, &orders, &api).await?];
    mesh.register_late(&api, caller_dns, &orders).await?;
    mesh.leave(dns, &registry, &orders).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let t = traffic.await?;
    let in_flight = report_traffic(&t, &crashes, &caller_api).await?;

    println!("\n8. cleaning up");
    mesh.stop().await;
    println!("   all agents left and apps stopped; demo took {:.1} s", t0.elapsed().as_secs_f64());
    if t.failed > in_flight {
        bail!("{} calls through the sidecars failed that were not in flight at a crash", t.failed - in_flight);
    }
    Ok(())
}

/// The demo's agents (`None` once stopped) and the sample apps they register.
struct Mesh {
    agents: Vec<Option<Agent>>,
    apps: Vec<JoinHandle<()>>,
}

impl Mesh {
    /// Starts an app and an agent on each of 127.0.0.10-14: two `web`, three `orders`
    /// (one canary); node-0's app calls `orders:80` through its sidecar.
    async fn start() -> anyhow::Result<Mesh> {
        let key = Keyring::generate_base64();
        let ca = Ca::generate()?;
        let mut mesh = Mesh { agents: Vec::new(), apps: Vec::new() };
        let mut seed = None;
        for i in 0..AGENTS {
            let ip: IpAddr = format!("127.0.0.{}", 10 + i).parse()?;
            let (svc, tags) =
                if i < 2 { ("web", "frontend") } else { ("orders", if i == 2 { "canary" } else { "stable" }) };
            let (port, task) = spawn_app(ip, svc).await?;
            mesh.apps.push(task);
            let services = vec![format!("{svc}:{port},tags={tags},interval=250ms,timeout=200ms,failures=2")];
            let upstreams: &[&str] = if i == 0 { &["orders:80"] } else { &[] };
            let config = agent_config(i, &key, seed, &services, &ca, upstreams)?;
            let agent = Agent::start(config).await.context("starting an agent")?;
            seed.get_or_insert(agent.gossip_addr());
            println!(
                "  started node-{i}  gossip {}  dns {}  api {}  service {svc}:{port}{}",
                agent.gossip_addr(),
                agent.dns_addr(),
                agent.api_addr(),
                if i == 0 { "  upstream orders:80" } else { "" }
            );
            mesh.agents.push(Some(agent));
        }
        Ok(mesh)
    }

    /// Agent `i`, while it runs.
    fn running(&self, i: usize) -> anyhow::Result<&Agent> {
        self.agents.get(i).and_then(Option::as_ref).with_context(|| format!("node-{i} runs"))
    }

    /// Step 1: waits until every agent sees every member and every healthy instance.
    async fn converge(&self) -> anyhow::Result<()> {
        let converged = time_until("every agent to see every other", || {
            let readers: Vec<_> = self.agents.iter().flatten().map(|a| a.registry()).collect();
            async move {
                readers.iter().all(|r| {
                    let s = r.snapshot();
                    let alive = s.members.values().filter(|m| m.status == crate::registry::MemberStatus::Alive);
                    let healthy = s.services.values().map(|v| v.iter().filter(|i| i.health.is_healthy()).count());
                    alive.count() == AGENTS as usize && healthy.sum::<usize>() == AGENTS as usize
                })
            }
        })
        .await?;
        println!(
            "\n1. the mesh converged: all {AGENTS} agents see all {AGENTS} members and healthy instances   {}",
            ms(converged)
        );
        Ok(())
    }

    /// Step 4: an orders app crashes; its agent's check takes it out of DNS. Returns
    /// when it crashed.
    async fn crash_app(&mut self, dns: SocketAddr, orders: &str) -> anyhow::Result<Instant> {
        println!("\n4. the orders app on node-2 (127.0.0.12) crashes; its agent's TCP check (every 250 ms, critical after 2 failures) notices:");
        let at = Instant::now();
        self.apps[2].abort();
        let gone: IpAddr = "127.0.0.12".parse()?;
        let d =
            time_until("the dead app to leave DNS", || async { !dns_addrs(dns, orders).await.contains(&gone) }).await?;
        println!("   127.0.0.12 left node-1's DNS answers after {}", ms(d));
        Ok(at)
    }

    /// Step 5: an agent crashes without a word; its peers detect the silence. Returns
    /// when it crashed.
    async fn crash_agent(&mut self, dns: SocketAddr, orders: &str, api: &ApiClient) -> anyhow::Result<Instant> {
        println!("\n5. node-3 (127.0.0.13) crashes: no leave message, peers must detect the silence:");
        let crashed = self.agents[3].take().context("node-3 runs")?;
        let at = Instant::now();
        crashed.kill().await;
        let dead: IpAddr = "127.0.0.13".parse()?;
        let d = time_until("the crashed agent's instance to leave DNS", || async {
            !dns_addrs(dns, orders).await.contains(&dead)
        })
        .await?;
        println!(
            "   127.0.0.13 left node-1's DNS answers after {}  (SWIM: a failed probe, suspicion, then dead everywhere)",
            ms(d)
        );
        let members: Vec<MemberJson> = serde_json::from_str(&api.get("/v1/members").await?)?;
        for m in &members {
            println!("   member {:<7} {:<12} {}", m.name, m.address, m.status);
        }
        Ok(at)
    }

    /// Step 6: an app registers itself through node-1's API; node-0's stub answers it.
    async fn register_late(&mut self, api: &ApiClient, caller_dns: SocketAddr, orders: &str) -> anyhow::Result<()> {
        println!(
            "\n6. an app registers itself at run time through node-1's API (PUT /v1/services/orders/orders-late):"
        );
        let late_ip: IpAddr = "127.0.0.11".parse()?;
        let (late_port, late_task) = spawn_app(late_ip, "orders").await?;
        self.apps.push(late_task);
        let start = Instant::now();
        api.put(
            "/v1/services/orders/orders-late",
            format!("{{\"port\":{late_port},\"tags\":[\"late\"],\"interval\":\"250ms\",\"timeout\":\"200ms\"}}"),
        )
        .await?;
        time_until("the new instance in node-0's DNS", || async {
            dns_addrs(caller_dns, &format!("late.{orders}")).await.contains(&late_ip)
        })
        .await?;
        println!("   late.{orders} answered by node-0's stub after {}", ms(start.elapsed()));
        Ok(())
    }

    /// Step 7: an agent leaves gracefully: draining, the drain period, then leave.
    async fn leave(&mut self, dns: SocketAddr, registry: &RegistryReader, orders: &str) -> anyhow::Result<()> {
        println!("\n7. node-4 leaves gracefully (the SIGTERM path: draining, drain period 500 ms, leave):");
        let leaving = self.agents[4].take().context("node-4 runs")?;
        let start = Instant::now();
        let left_ip: IpAddr = "127.0.0.14".parse()?;
        let watcher = tokio::spawn({
            let orders = orders.to_owned();
            async move {
                time_until("draining instance to leave DNS", || async {
                    !dns_addrs(dns, &orders).await.contains(&left_ip)
                })
                .await
            }
        });
        leaving.shutdown().await;
        let out_of_dns = watcher.await??;
        time_until("node-4 to be seen as left", || async {
            registry
                .snapshot()
                .members
                .values()
                .any(|m| m.name == "node-4" && m.status == crate::registry::MemberStatus::Left)
        })
        .await?;
        println!(
            "   out of DNS answers (draining) after {}; seen as left {} after shutdown began",
            ms(out_of_dns),
            ms(start.elapsed())
        );
        Ok(())
    }

    /// Step 8: every agent leaves, every app stops.
    async fn stop(self) {
        for agent in self.agents.into_iter().flatten() {
            agent.shutdown().await;
        }
        for app in self.apps {
            app.abort();
        }
    }
}

/// Step 2: registry mode, through node-1's stub: A and SRV answers, a tag, a miss, and
/// the app connecting itself to what the replica lists.
async fn registry_mode(dns: SocketAddr, registry: &RegistryReader, orders: &str) -> anyhow::Result<()> {
    println!("\n2. registry mode, through node-1's DNS stub at {dns}:");
    let a = dns_addrs(dns, orders).await;
    println!("   {orders} A     -> {a:?}");
    let srv = query(dns, &format!("_orders._tcp.{NAMESPACE}."), RecordType::SRV, Duration::from_secs(1)).await?;
    for r in &srv.answers {
        if let RData::SRV(s) = &r.data {
            println!("   _orders._tcp SRV -> {} port {}", s.target, s.port);
        }
    }
    println!("   canary.{orders} A -> {:?}", dns_addrs(dns, &format!("canary.{orders}")).await);
    let miss = query(dns, &format!("payments.{NAMESPACE}."), RecordType::A, Duration::from_secs(1)).await?;
    println!("   payments.{NAMESPACE}. -> {} (with SOA for negative caching)", miss.metadata.response_code);
    let first = registry.snapshot().lookup(&"orders".parse()?, &Default::default());
    let target = first.first().context("an orders instance")?;
    let reply = hello(SocketAddr::new(target.address, target.port)).await?;
    println!("   the app connects itself to {}:{} -> \"{reply}\"", target.address, target.port);
    if a.len() != 3 {
        bail!("expected 3 orders addresses, got {a:?}");
    }
    Ok(())
}

/// Step 3: proxy mode on node-0: its app calls plain `orders:80`, a VIP where its
/// sidecar listens. Returns the VIP.
async fn proxy_mode(caller_dns: SocketAddr) -> anyhow::Result<SocketAddr> {
    println!("\n3. proxy mode, on node-0: its app calls plain `orders:80`");
    let vip_ip = *dns_addrs(caller_dns, "orders.").await.first().context("the alias resolves")?;
    let vip = SocketAddr::new(vip_ip, 80);
    println!("   node-0's stub: orders -> {vip_ip} (a loopback VIP where node-0's sidecar listens)");
    let reply = hello(vip).await?;
    println!("   orders:80 -> sidecar -> QUIC + mutual TLS -> sidecar -> app: \"{reply}\"");
    Ok(vip)
}

/// Sends `hello` to a sample app and reads its whole reply.
async fn hello(addr: SocketAddr) -> anyhow::Result<String> {
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(b"hello").await?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await?;
    Ok(reply)
}

/// What the steady traffic saw across steps 4-7, and node-0's upstream as its API
/// reports it. Returns the calls that were in flight at a crash.
async fn report_traffic(t: &Traffic, crashes: &[Instant], caller_api: &ApiClient) -> anyhow::Result<u64> {
    let q = |p: f64| t.latency.as_ref().map(|h| h.value_at_quantile(p) as f64 / 1000.0).unwrap_or(0.0);
    let in_flight = t.in_flight_at(crashes);
    println!(
        "\n   steady traffic through the sidecars across steps 4-7: {} calls, {} failed ({} of them in flight when an app or agent crashed under them)",
        t.ok + t.failed,
        t.failed,
        in_flight
    );
    println!(
        "   call latency (connect, request, whole reply): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        q(0.5),
        q(0.99),
        q(1.0)
    );
    let ups: Vec<crate::api::types::UpstreamJson> = serde_json::from_str(&caller_api.get("/v1/upstreams").await?)?;
    for u in &ups {
        println!("   upstream {}: {} retries, {} failed", u.alias, u.retries, u.failed);
        for e in &u.endpoints {
            println!(
                "     {:<20} {:<8} {:>5} conns  connect p50 {:.2} ms  failures {:?}",
                e.instance, e.state, e.connections, e.connect_latency.p50_ms, e.failures
            );
        }
    }
    Ok(in_flight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_calls_under_way_at_a_crash_are_excused() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let t = Traffic { failures: vec![(at(0), at(5)), (at(10), at(12)), (at(20), at(40))], ..Default::default() };
        // A crash at 3 ms was under the first call; nothing was under way at 15 ms; a
        // call that started after a crash (10 ms) is not excused by it.
        assert_eq!(t.in_flight_at(&[at(3)]), 1);
        assert_eq!(t.in_flight_at(&[at(15)]), 0);
        assert_eq!(t.in_flight_at(&[at(3), at(30)]), 2);
        assert_eq!(t.in_flight_at(&[]), 0);
    }
}
