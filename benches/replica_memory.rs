//! What holding a large cluster costs an agent in memory: `cargo bench --bench
//! replica_memory` (`MURMUR_REPLICA_NODES`, default 10000).
//!
//! No machine here runs 10,000 agents, so this builds, in this one process, every
//! structure an agent keeps per member, with the agent's own types and code paths:
//! - the state store (`MapStore`) with each node's record and 5 instances with health;
//! - the SWIM core's member table, entered as a converged join leaves it (`Swim::adopt`);
//! - the gossip side's published view (one `NodeView` per node, as the agent builds it);
//! - the registry's builder and its snapshot.
//!
//! It reports the RSS each one added to this process (the allocator's own overhead
//! included). In the same run it starts one real agent process alone and
//! reads its idle RSS; that plus the replica's RSS is the estimate reported for an agent
//! holding the whole replica. What it does not hold: rumor queues, probe state and
//! datagrams in flight, which are bounded whatever N is.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster;
use murmur::internals::swim::{Identity, MapStore, Store, Swim, SwimConfig};
use murmur::internals::{ClusterView, NodeView, SharedMap, SnapshotBuilder};
use murmur_protocol::swim::{Entry, Status};

/// RSS added since the last row, printed as one table row.
struct Meter {
    rss: f64,
    total: f64,
}

impl Meter {
    fn new() -> Meter {
        Meter { rss: common::rss_mb(std::process::id()), total: 0.0 }
    }

    fn row(&mut self, what: &str, nodes: usize) {
        let rss = common::rss_mb(std::process::id());
        let added = rss - self.rss;
        println!("| {what} | {added:.1} MB | {:.0} B |", added * 1024.0 * 1024.0 / nodes as f64);
        self.rss = rss;
        self.total += added;
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let nodes: usize = std::env::var("MURMUR_REPLICA_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    // The cluster's state as its owners would gossip it; built first and kept aside, so
    // that only what the agent holds is counted below.
    let source = cluster(nodes);
    let now = Instant::now();
    let mut meter = Meter::new();
    println!("replica of {nodes} nodes × 5 instances\n");
    println!("| held by the agent | RSS added | per node |");
    println!("|---|---|---|");

    let mut store = MapStore::default();
    let mut entries = Vec::with_capacity(nodes);
    for node in source.nodes.values() {
        for (version, (key, value)) in node.values.iter().enumerate() {
            store.apply(&node.name, key, Some(value), version as u64 + 1);
        }
        entries.push(Entry {
            name: node.name.clone(),
            generation: node.generation,
            incarnation: 0,
            status: Status::Alive,
            addr: node.gossip_addr,
            version: node.values.len() as u64,
        });
    }
    meter.row("state store (every node's keys and values)", nodes);

    let me = Identity { name: "observer".into(), generation: 1, addr: "127.0.0.1:7946".parse().expect("valid") };
    let mut core = Swim::new(me, SwimConfig::default(), store, 7, now);
    core.adopt(&entries, now);
    drop(entries);
    meter.row("SWIM member table", nodes);

    // The gossip side's view, built as the agent builds it on each change.
    let mut views: SharedMap<String, Arc<NodeView>> = SharedMap::default();
    for node in source.nodes.values() {
        let m = core.member(&node.name).expect("adopted");
        let view = NodeView {
            name: m.name.to_string(),
            generation: m.generation,
            gossip_addr: m.addr,
            status: murmur::MemberStatus::Alive,
            is_self: false,
            values: core.store().values(&m.name),
        };
        views.insert(view.name.clone(), Arc::new(view));
    }
    meter.row("published view", nodes);

    // Built as members arrive, a hundred at a time (a build's temporaries are those of
    // its batch, as in an agent that learns of its cluster over time).
    let mut builder = SnapshotBuilder::default();
    let mut arrived: SharedMap<String, Arc<NodeView>> = SharedMap::default();
    let mut snapshot = Default::default();
    for (i, (name, view)) in views.iter().enumerate() {
        arrived.insert(name.clone(), view.clone());
        if (i + 1) % 100 == 0 || i + 1 == nodes {
            let (built, bad) = builder.build(&ClusterView { nodes: arrived.clone() }, i as u64);
            assert!(bad.is_empty(), "the bench cluster decodes");
            snapshot = built;
        }
    }
    drop(arrived);
    let snapshot: murmur::Snapshot = snapshot;
    assert_eq!(snapshot.members.len(), nodes);
    meter.row("registry builder and snapshot", nodes);
    println!("| **total** | **{:.1} MB** | **{:.0} B** |", meter.total, meter.total * 1024.0 * 1024.0 / nodes as f64);

    // One real agent, alone, idle: the base the replica comes on top of.
    let key = common::keygen();
    let mut agent = common::start("idle agent", &mut common::agent_command("idle", "127.0.0.77", &key, None));
    common::wait_tcp("127.0.0.77:8500".parse().expect("valid"), "the idle agent's API");
    std::thread::sleep(Duration::from_secs(3));
    agent.check_running();
    let idle = common::rss_mb(agent.pid());
    println!(
        "\nidle agent process: {idle:.1} MB RSS; with this replica: about {:.0} MB (goal: < 64 MB)",
        idle + meter.total
    );
    drop((core, views, builder, snapshot, source));
}
