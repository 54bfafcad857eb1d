//! Hot paths, timed in-process: `cargo bench --bench hot_paths`. Each line is the
//! median time per operation over 7 batches (with the fastest and slowest batch beside
//! it), after a warm-up batch. No sockets, no sleeps: these are the costs the agent
//! pays per gossip message, per snapshot rebuild, per DNS query and per proxied stream.
//!
//! - registry snapshot build from a cluster view (100 and 1,000 nodes, 5 instances each),
//!   and one change to a 10,000-node replica (two changes per timed operation);
//! - snapshot lookup of a service with 100 instances, and with a tag filter;
//! - DNS answer building: A, SRV and a miss (NXDOMAIN), from a 100-node snapshot;
//! - stream header (Open frame) encode and decode;
//! - the sealed gossip transport: seal and open of a 1 KB and a 16 KB message.
//!
//! Absolute times depend on the machine and on what else runs on it; compare runs of
//! the same machine, or use the counts of `valgrind --tool=callgrind` for exact ones.

use std::hint::black_box;
use std::str::FromStr;
use std::time::Instant;

use hickory_proto::rr::{Name, RecordType};
use murmur::internals::{build_snapshot, ClusterView, FrameCodec, NodeView, SnapshotBuilder, Zone};
use murmur::{HealthFilter, Keyring, MemberStatus, Query};
use murmur_protocol::{encode_value, Frame, Health, HealthRecord, NodeName, Open, ServiceName, Tag, Transport};
use std::sync::Arc;

mod common;
use common::cluster;

/// Times `op`, run `per_batch` times per batch, and prints one line.
fn time<T>(what: &str, per_batch: u32, mut op: impl FnMut() -> T) {
    let mut batch = || {
        let t = Instant::now();
        for _ in 0..per_batch {
            black_box(op());
        }
        t.elapsed().as_nanos() as f64 / f64::from(per_batch)
    };
    batch();
    let mut v: Vec<f64> = (0..7).map(|_| batch()).collect();
    v.sort_by(f64::total_cmp);
    let show = |ns: f64| match ns {
        ns if ns >= 1e6 => format!("{:.2} ms", ns / 1e6),
        ns if ns >= 1e4 => format!("{:.1} µs", ns / 1e3),
        ns => format!("{ns:.0} ns"),
    };
    println!("| {what} | {} | {} – {} |", show(v[3]), show(v[0]), show(v[6]));
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("| operation | median | fastest – slowest batch |");
    println!("|---|---|---|");

    let view_100 = cluster(100);
    let view_1000 = cluster(1000);
    time("snapshot build, 100 nodes × 5 instances", 50, || build_snapshot(&view_100, 1));
    time("snapshot build, 1,000 nodes × 5 instances", 5, || build_snapshot(&view_1000, 1));

    // The replica at 10,000 agents. Each change is what the agent pays for it: the
    // gossip side's new view (a copy of the map's chunk pointers), the incremental
    // build, the status changes and the counts. At 50 changes a second (a deployment),
    // this times 50 is the share of a core the agent spends on its replica; coalescing
    // (at most 20 snapshots a second) only lowers it.
    let mut view = cluster(10_000);
    let mut builder = SnapshotBuilder::default();
    let _ = builder.build(&view, 1);
    let mut version = 1;
    let mut change = |view: &ClusterView| {
        version += 1;
        let published = ClusterView { nodes: view.nodes.clone() };
        let built = builder.build(&published, version);
        (built, builder.take_changes(), builder.counts())
    };
    let names: Vec<String> = view.nodes.keys().cloned().collect();
    let edited = |health_key: usize, status: MemberStatus| -> Vec<Arc<NodeView>> {
        view.nodes
            .values()
            .map(|n| {
                let mut changed = (**n).clone();
                changed.status = status;
                if let Some((_, v)) = changed.values.iter_mut().filter(|(k, _)| k.starts_with("h/")).nth(health_key) {
                    *v = encode_value(&HealthRecord::new(Health::Warning, 2, "flapped")).into();
                }
                Arc::new(changed)
            })
            .collect()
    };
    let cases = [
        ("one health flip of a 10,000-instance service", edited(0, MemberStatus::Alive)),
        ("one health flip of a 1-instance service", edited(1, MemberStatus::Alive)),
        ("one member dies (5 instances leave)", edited(5, MemberStatus::Dead)),
    ];
    let mut k = 0;
    for (what, changed) in &cases {
        time(&format!("replica, 10,000 nodes × 5 instances, {what} and back (2 changes)"), 20, || {
            // A node changed and then back, so every change is a real one.
            k = (k + 7919) % names.len();
            let was = view.nodes.insert(names[k].clone(), changed[k].clone()).expect("a known node");
            let first = change(&view);
            view.nodes.insert(names[k].clone(), was);
            (first, change(&view))
        });
    }

    let (snapshot, bad) = build_snapshot(&view_100, 1);
    assert!(bad.is_empty(), "the bench cluster decodes: {bad:?}");
    let pool = ServiceName::new("pool").expect("valid");
    assert_eq!(snapshot.lookup(&pool, &Query::default()).len(), 100);
    time("lookup, 100 instances, healthy", 20_000, || snapshot.lookup(&pool, &Query::default()));
    let canary =
        Query { health: HealthFilter::default(), tag: Some(Tag::new("canary").expect("valid")), ..Query::default() };
    assert_eq!(snapshot.lookup(&pool, &canary).len(), 10);
    time("lookup, 100 instances, tag filter", 20_000, || snapshot.lookup(&pool, &canary));

    let zone = Zone::new("bench.local", 5, 8, 1).expect("valid zone");
    let mut rng = rand::rng();
    let a = Name::from_str("pool.bench.local.").expect("valid");
    let srv = Name::from_str("_pool._tcp.bench.local.").expect("valid");
    let miss = Name::from_str("nothing.bench.local.").expect("valid");
    time("DNS answer, A, 100 instances (8 returned)", 20_000, || zone.answer(&snapshot, &a, RecordType::A, &mut rng));
    time("DNS answer, SRV, 100 instances (all returned)", 20_000, || {
        zone.answer(&snapshot, &srv, RecordType::SRV, &mut rng)
    });
    time("DNS answer, miss (NXDOMAIN)", 20_000, || zone.answer(&snapshot, &miss, RecordType::A, &mut rng));

    let open = Frame::Open(Open {
        service: ServiceName::new("orders").expect("valid"),
        port: 8080,
        caller: ServiceName::new("web").expect("valid"),
        caller_node: NodeName::new("node-17").expect("valid"),
        transport: Transport::Tcp,
    });
    let encoded = open.encode();
    assert_eq!(Frame::decode(&encoded).expect("decodes"), Some((open.clone(), encoded.len())));
    time("stream header (Open) encode", 200_000, || open.encode());
    time("stream header (Open) decode", 200_000, || Frame::decode(&encoded));

    let key = Keyring::from_base64(&[Keyring::generate_base64()]).expect("a fresh key");
    let codec = FrameCodec::new(Some(key));
    for size in [1024usize, 16 * 1024] {
        let message = vec![0x5a; size];
        let now = murmur::internals::unix_ms();
        let sealed = codec.seal(&message, 7, now);
        assert!(sealed.iter().all(|d| codec.open(d, now).is_ok()), "what is sealed opens");
        let kb = size / 1024;
        time(&format!("gossip seal, {kb} KB message ({} datagrams)", sealed.len()), 5_000, || {
            codec.seal(&message, 7, now)
        });
        time(&format!("gossip open, {kb} KB message"), 5_000, || {
            sealed.iter().filter(|d| codec.open(d, now).is_ok()).count()
        });
    }
}
