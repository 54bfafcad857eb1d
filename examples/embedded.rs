//! Embeds murmur as a library: three agents in one process form a mesh, one registers a
//! service at run time through its `Publisher`, and another resolves it through its
//! local DNS stub and its registry replica. Run with `cargo run --example embedded`;
//! the test suite runs it too, so it cannot rot.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::rr::RecordType;
use murmur::client::{addresses, query};
use murmur::{parse_service_spec, Agent, Keyring, Layer, Query};

fn config(i: u8, key: &str, seed: Option<SocketAddr>) -> anyhow::Result<murmur::Config> {
    let ip: IpAddr = format!("127.0.1.{}", 10 + i).parse()?;
    let layer = Layer {
        name: Some(format!("embedded-{i}")),
        namespace: Some("example.local".into()),
        bind: Some(SocketAddr::new(ip, 0)),
        seeds: seed.map(|s| vec![s.to_string()]),
        gossip_keys: Some(vec![key.to_owned()]),
        dns_listen: Some(SocketAddr::new(ip, 0)),
        dns_upstreams: Some(vec![]),
        api_listen: Some(SocketAddr::new(ip, 0)),
        drain: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    murmur::Config::from_layer(layer, "").map_err(|e| anyhow::anyhow!("{e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let key = Keyring::generate_base64();
    let first = Agent::start(config(0, &key, None)?).await?;
    let seed = Some(first.gossip_addr());
    let second = Agent::start(config(1, &key, seed)?).await?;
    let third = Agent::start(config(2, &key, seed)?).await?;

    // An app on the third agent's address registers itself (no health check here: the
    // example has no app listening).
    let spec = parse_service_spec("inventory:9090,check=none,tags=v1")?;
    let id = third.publisher().register(&spec, murmur::Origin::Config).await?;
    println!("registered {id} on {}", third.name());

    let service = "inventory".parse()?;
    let (snapshot, found) =
        first.registry().wait_for(Duration::from_secs(10), |s| !s.lookup(&service, &Query::default()).is_empty()).await;
    anyhow::ensure!(found, "the instance never reached the first agent's replica");
    let instance = snapshot.lookup(&service, &Query::default()).remove(0);
    println!("replica of {}: {} at {}:{}", first.name(), instance.id, instance.address, instance.port);

    // Every replica converges on its own; wait for the second agent's too.
    let (_, found) = second
        .registry()
        .wait_for(Duration::from_secs(10), |s| !s.lookup(&service, &Query::default()).is_empty())
        .await;
    anyhow::ensure!(found, "the instance never reached the second agent's replica");
    let reply = query(second.dns_addr(), "v1.inventory.example.local.", RecordType::A, Duration::from_secs(2)).await?;
    let addrs = addresses(&reply);
    println!("dns of {}: v1.inventory.example.local -> {addrs:?}", second.name());
    anyhow::ensure!(addrs.contains(&instance.address), "DNS did not answer the instance");

    for agent in [third, second, first] {
        agent.shutdown().await;
    }
    println!("ok");
    Ok(())
}
