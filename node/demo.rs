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
use crate::config::{spec::parse_service_spec, Config, Layer};
use crate::dns::client::{addresses, query};
use crate::gossip::Keyring;
use crate::Agent;

const NAMESPACE: &str = "demo.local";
const AGENTS: u8 = 5;
/// Every wait of the demo is bounded by this.
const WAIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(10);

/// A sample app: echoes what it reads, prefixed with its name.
async fn spawn_app(ip: IpAddr, name: &'static str) -> anyhow::Result<(u16, JoinHandle<()>)> {
    let listener = TcpListener::bind((ip, 0)).await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                if let Ok(n) = s.read(&mut buf).await {
                    let _ = s.write_all(format!("{name}@{ip} says: ").as_bytes()).await;
                    let _ = s.write_all(&buf[..n]).await;
                }
            });
        }
    });
    Ok((port, task))
}

fn agent_config(i: u8, key: &str, seed: Option<SocketAddr>, services: &[String]) -> anyhow::Result<Config> {
    let ip: IpAddr = format!("127.0.0.{}", 10 + i).parse()?;
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
        services: Some(
            services.iter().map(|s| parse_service_spec(s).map_err(anyhow::Error::msg)).collect::<Result<_, _>>()?,
        ),
        ..Default::default()
    };
    Config::from_layer(layer, "").map_err(|e| anyhow::anyhow!("{e}"))
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
    println!("murmur demo: {AGENTS} agents on 127.0.0.10-14, namespace {NAMESPACE}, gossip sealed with a fresh key\n");
    let key = Keyring::generate_base64();
    let mut agents: Vec<Option<Agent>> = Vec::new();
    let mut apps: Vec<JoinHandle<()>> = Vec::new();
    let mut seed = None;
    for i in 0..AGENTS {
        let ip: IpAddr = format!("127.0.0.{}", 10 + i).parse()?;
        let mut services = Vec::new();
        let (svc, tags) =
            if i < 2 { ("web", "frontend") } else { ("orders", if i == 2 { "canary" } else { "stable" }) };
        let (port, task) = spawn_app(ip, svc).await?;
        apps.push(task);
        services.push(format!("{svc}:{port},tags={tags},interval=250ms,timeout=200ms,failures=2"));
        let agent = Agent::start(agent_config(i, &key, seed, &services)?).await.context("starting an agent")?;
        seed.get_or_insert(agent.gossip_addr());
        println!(
            "  started node-{i}  gossip {}  dns {}  api {}  service {svc}:{port}",
            agent.gossip_addr(),
            agent.dns_addr(),
            agent.api_addr()
        );
        agents.push(Some(agent));
    }
    let observer = agents[0].as_ref().context("node-0 runs")?;
    let (dns, api) = (observer.dns_addr(), ApiClient::new(observer.api_addr()));
    let registry = observer.registry();

    let converged = time_until("every agent to see every other", || {
        let readers: Vec<_> = agents.iter().flatten().map(|a| a.registry()).collect();
        async move {
            readers.iter().all(|r| {
                let s = r.snapshot();
                s.members.iter().filter(|m| m.status == crate::registry::MemberStatus::Alive).count() == AGENTS as usize
                    && s.services.values().map(|v| v.iter().filter(|i| i.health.is_healthy()).count()).sum::<usize>()
                        == AGENTS as usize
            })
        }
    })
    .await?;
    println!(
        "\n1. the mesh converged: all {AGENTS} agents see all {AGENTS} members and healthy instances   {}",
        ms(converged)
    );

    let orders = format!("orders.{NAMESPACE}.");
    println!("\n2. discovery through node-0's DNS stub at {dns}:");
    let a = dns_addrs(dns, &orders).await;
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
    let mut conn = TcpStream::connect((target.address, target.port)).await?;
    conn.write_all(b"hello").await?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await?;
    println!("   connected to {}:{} -> \"{reply}\"", target.address, target.port);
    if a.len() != 3 {
        bail!("expected 3 orders addresses, got {a:?}");
    }

    println!("\n3. the orders app on node-2 (127.0.0.12) crashes; its agent's TCP check (every 250 ms, critical after 2 failures) notices:");
    apps[2].abort();
    let gone: IpAddr = "127.0.0.12".parse()?;
    let d =
        time_until("the dead app to leave DNS", || async { !dns_addrs(dns, &orders).await.contains(&gone) }).await?;
    println!("   127.0.0.12 left node-0's DNS answers after {}", ms(d));

    println!("\n4. node-3 (127.0.0.13) crashes: no leave message, peers must detect the silence:");
    let crashed = agents[3].take().context("node-3 runs")?;
    crashed.kill().await;
    let dead: IpAddr = "127.0.0.13".parse()?;
    let d = time_until("the crashed agent's instance to leave DNS", || async {
        !dns_addrs(dns, &orders).await.contains(&dead)
    })
    .await?;
    println!(
        "   127.0.0.13 left node-0's DNS answers after {}  (failure detector, phi threshold 6 x 200 ms gossip)",
        ms(d)
    );
    let members: Vec<MemberJson> = serde_json::from_str(&api.get("/v1/members").await?)?;
    for m in &members {
        println!("   member {:<7} {:<12} {}", m.name, m.address, m.status);
    }

    println!("\n5. an app registers itself at run time through node-4's API (PUT /v1/services/orders/orders-late):");
    let late_ip: IpAddr = "127.0.0.14".parse()?;
    let (late_port, late_task) = spawn_app(late_ip, "orders").await?;
    apps.push(late_task);
    let node4 = ApiClient::new(agents[4].as_ref().context("node-4 runs")?.api_addr());
    let start = Instant::now();
    node4
        .put(
            "/v1/services/orders/orders-late",
            format!("{{\"port\":{late_port},\"tags\":[\"late\"],\"interval\":\"250ms\",\"timeout\":\"200ms\"}}"),
        )
        .await?;
    time_until("the new instance in DNS", || async {
        dns_addrs(dns, &format!("late.{orders}")).await.contains(&late_ip)
    })
    .await?;
    println!("   late.{orders} answered on node-0 after {}", ms(start.elapsed()));

    println!("\n6. node-1 leaves gracefully (SIGTERM path: draining, drain period 500 ms, leave):");
    let leaving = agents[1].take().context("node-1 runs")?;
    let start = Instant::now();
    let web = format!("web.{NAMESPACE}.");
    let left_ip: IpAddr = "127.0.0.11".parse()?;
    let watcher = tokio::spawn({
        let web = web.clone();
        async move {
            time_until("draining instance to leave DNS", || async { !dns_addrs(dns, &web).await.contains(&left_ip) })
                .await
        }
    });
    leaving.shutdown().await;
    let out_of_dns = watcher.await??;
    time_until("node-1 to be seen as left", || async {
        registry
            .snapshot()
            .members
            .iter()
            .any(|m| m.name == "node-1" && m.status == crate::registry::MemberStatus::Left)
    })
    .await?;
    println!(
        "   out of DNS answers (draining) after {}; seen as left {} after shutdown began",
        ms(out_of_dns),
        ms(start.elapsed())
    );

    println!("\n7. cleaning up");
    for agent in agents.into_iter().flatten() {
        agent.shutdown().await;
    }
    for app in apps {
        app.abort();
    }
    println!("   all agents left and apps stopped; demo took {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
