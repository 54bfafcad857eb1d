//! Many agents in one process, on their own 127.x addresses: discovery through DNS and
//! the API, failure of apps and agents, graceful leave, restarts, wrong keys and garbage.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{config, eventually, ip, status, tcp_apps, TestMesh, WAIT};
use hickory_proto::op::{Message, MessageType, OpCode, Query as DnsQuery, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use murmur::client::{addresses, query, ApiClient, ClientError, InstanceJson, MemberJson, ServiceSummaryJson};
use murmur::{Agent, MemberStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(2);

async fn a_records(dns: SocketAddr, name: &str) -> Vec<IpAddr> {
    query(dns, name, RecordType::A, T).await.map(|m| addresses(&m)).unwrap_or_default()
}

async fn tcp_query(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let mut msg = Message::new(7, MessageType::Query, OpCode::Query);
    msg.add_query(DnsQuery::query(Name::from_ascii(name).expect("name"), qtype));
    let bytes = msg.to_vec().expect("encode");
    let mut s = tokio::net::TcpStream::connect(server).await.expect("tcp connect");
    s.write_all(&(bytes.len() as u16).to_be_bytes()).await.expect("write");
    s.write_all(&bytes).await.expect("write");
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.expect("read len");
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.expect("read");
    Message::from_vec(&buf).expect("decode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_resolve_through_dns_and_api() {
    let block = common::block("three_agents_resolve_through_dns_and_api");
    let (ports, apps) = tcp_apps(block, 3).await;
    let mesh = TestMesh::start(block, 3, |i| {
        vec![format!(
            "orders:{},tags={},interval=200ms,timeout=150ms",
            ports[i],
            if i == 0 { "canary" } else { "stable" }
        )]
    })
    .await;
    mesh.converge(3).await;
    let dns = mesh.agent(2).dns_addr();
    let want: Vec<IpAddr> = (0..3).map(|i| ip(block, i)).collect();
    eventually("all three orders instances in DNS", || async {
        let mut got = a_records(dns, "orders.test.local.").await;
        got.sort();
        got == want
    })
    .await;
    // The same query asked again from one socket is served from one UDP socket's cache,
    // which hands out the rotations of one random order in turn: every instance still
    // comes first (a cache that kept one order would answer the same one each time).
    let client = tokio::net::UdpSocket::bind((ip(block, 9), 0)).await.expect("bind");
    let ask = question(0x0707, OpCode::Query, "orders.test.local.").to_vec().expect("encode");
    let mut firsts = std::collections::BTreeSet::new();
    for _ in 0..12 {
        client.send_to(&ask, dns).await.expect("send");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(T, client.recv(&mut buf)).await.expect("a reply in time").expect("recv");
        firsts.extend(addresses(&Message::from_vec(&buf[..n]).expect("decodes")).first().copied());
    }
    assert_eq!(firsts.len(), 3, "instances answered first: {firsts:?}");

    // SRV at both names, with targets that resolve and addresses in the additional section.
    for name in ["orders.test.local.", "_orders._tcp.test.local."] {
        let reply = query(dns, name, RecordType::SRV, T).await.expect("srv reply");
        assert_eq!(reply.answers.len(), 3, "{name}");
        for r in &reply.answers {
            let RData::SRV(srv) = &r.data else { panic!("not SRV") };
            assert!(ports.contains(&srv.port));
            assert!(reply.additionals.iter().any(|a| a.name == srv.target), "no address for {}", srv.target);
            let target = a_records(dns, &srv.target.to_ascii()).await;
            assert_eq!(target.len(), 1, "target {} resolves", srv.target);
        }
    }
    assert_eq!(a_records(dns, "canary.orders.test.local.").await, vec![ip(block, 0)]);
    let miss = query(dns, "nothing.test.local.", RecordType::A, T).await.expect("reply");
    assert_eq!(miss.metadata.response_code, ResponseCode::NXDomain);
    assert!(miss.authorities.iter().any(|r| matches!(r.data, RData::SOA(_))), "NXDOMAIN carries an SOA");
    // Nothing is forwarded: no upstream, so names outside the namespace fail cleanly.
    let out = query(dns, "example.com.", RecordType::A, Duration::from_secs(5)).await.expect("reply");
    assert_eq!(out.metadata.response_code, ResponseCode::ServFail);
    // TCP gives the same answer.
    let over_tcp = tcp_query(dns, "orders.test.local.", RecordType::A).await;
    assert_eq!(over_tcp.answers.len(), 3);

    // The API.
    let api = ApiClient::new(mesh.agent(1).api_addr());
    let members: Vec<MemberJson> = serde_json::from_str(&api.get("/v1/members").await.expect("members")).expect("json");
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m.status == "alive"));
    // Agent 2's DNS saw all three passing; agent 1 may still be a gossip round behind
    // (or a check may have missed once under load), so wait for it rather than read once.
    let all_passing = vec![ServiceSummaryJson { name: "orders".into(), instances: 3, healthy: 3 }];
    eventually("agent 1 sees three passing orders instances", || async {
        let body = api.get("/v1/services").await.expect("services");
        serde_json::from_str::<Vec<ServiceSummaryJson>>(&body).expect("json") == all_passing
    })
    .await;
    let canary: Vec<InstanceJson> =
        serde_json::from_str(&api.get("/v1/services/orders?tag=canary").await.expect("lookup")).expect("json");
    assert_eq!(canary.len(), 1);
    assert_eq!(canary[0].address, ip(block, 0).to_string());
    assert_eq!(canary[0].health, "passing");
    assert!(api.get("/health").await.is_ok());
    let metrics = api.get("/metrics").await.expect("metrics");
    assert!(metrics.contains("murmur_members{status=\"alive\"} 3"), "{metrics}");
    assert!(metrics.contains("murmur_gossip_packets_received_total"));

    // Run-time registration and deregistration through another agent's API.
    let api0 = ApiClient::new(mesh.agent(0).api_addr());
    api0.put(
        "/v1/services/billing/billing-1",
        format!("{{\"port\":{},\"check\":\"tcp\",\"interval\":\"200ms\",\"timeout\":\"100ms\"}}", ports[0]),
    )
    .await
    .expect("register");
    eventually("billing in agent 2's DNS", || async {
        a_records(dns, "billing.test.local.").await == vec![ip(block, 0)]
    })
    .await;
    api0.delete("/v1/services/billing/billing-1").await.expect("deregister");
    eventually("billing gone", || async { a_records(dns, "billing.test.local.").await.is_empty() }).await;

    // Bad requests get a 4xx with a message.
    for (call, status) in [
        (api0.put("/v1/services/Bad_Name/x", "{\"port\":1}".into()).await, 400),
        (api0.put("/v1/services/a/b", "{\"port\":\"x\"}".into()).await, 400),
        (api0.put("/v1/services/a/b", "not json".into()).await, 400),
        (api0.put("/v1/services/a/b", "{\"port\":1,\"check\":\"ftp\"}".into()).await, 400),
        (api0.put("/v1/services/a/b", "{\"port\":1,\"check\":\"exec:touch /tmp/pwned\"}".into()).await, 400),
        (api0.delete("/v1/services/orders/not-mine").await, 404),
        (api0.get("/v1/services/orders?bogus=1").await, 400),
        (api0.get("/v2/nothing").await, 404),
    ] {
        match call {
            Err(ClientError::Status(code, msg)) => {
                assert_eq!(code, status, "{msg}");
                assert!(!msg.is_empty());
            }
            other => panic!("expected HTTP {status}, got {other:?}"),
        }
    }
    for app in apps {
        app.abort();
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_apps_and_dead_agents_leave_answers() {
    let block = common::block("dead_apps_and_dead_agents_leave_answers");
    let (ports, apps) = tcp_apps(block, 4).await;
    let mut apps: Vec<_> = apps.into_iter().map(Some).collect();
    let mut mesh =
        TestMesh::start(block, 4, |i| vec![format!("web:{},interval=200ms,timeout=150ms,failures=2", ports[i])]).await;
    mesh.converge(4).await;
    let dns = mesh.agent(0).dns_addr();
    eventually("4 web instances", || async { a_records(dns, "web.test.local.").await.len() == 4 }).await;

    // An app dies: its agent's check turns it critical and it leaves every answer.
    if let Some(app) = apps[1].take() {
        app.abort();
    }
    let app_gone = eventually("dead app out of DNS", || async {
        !a_records(dns, "web.test.local.").await.contains(&ip(block, 1))
    })
    .await;
    let api = ApiClient::new(mesh.agent(0).api_addr());
    let all: Vec<InstanceJson> =
        serde_json::from_str(&api.get("/v1/services/web?all=true").await.expect("all")).expect("json");
    let sick = all.iter().find(|i| i.address == ip(block, 1).to_string()).expect("still listed with all=true");
    assert_eq!(sick.health, "critical");
    // It comes back when the app does.
    let listener = tokio::net::TcpListener::bind((ip(block, 1), ports[1])).await.expect("rebind app port");
    eventually("app back in DNS", || async { a_records(dns, "web.test.local.").await.contains(&ip(block, 1)) }).await;
    drop(listener);

    // An agent crashes: the others detect it and drop its instance.
    let crashed = mesh.agents[3].take().expect("agent 3 runs");
    crashed.kill().await;
    let agent_gone = eventually("crashed agent out of DNS", || async {
        !a_records(dns, "web.test.local.").await.contains(&ip(block, 3))
    })
    .await;
    let reader = mesh.agent(0).registry();
    eventually("crashed agent marked dead", || async {
        reader.snapshot().members.values().any(|m| m.name == "agent-3" && m.status == MemberStatus::Dead)
    })
    .await;
    eprintln!("dead app left answers after {app_gone:?}; crashed agent after {agent_gone:?}");
    for app in apps.into_iter().flatten() {
        app.abort();
    }
    mesh.stop().await;
}

/// A resolver that answers every query at once: the query sent back as a response with
/// no records (NOERROR).
async fn answering_upstream(ip: IpAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let sock = tokio::net::UdpSocket::bind((ip, 0)).await.expect("bind the upstream");
    let addr = sock.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            if n > 3 {
                buf[2] |= 0x80; // QR: a response
                let _ = sock.send_to(&buf[..n], from).await;
            }
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_upstream_costs_its_timeout_once_not_on_every_query() {
    let block = common::block("a_dead_first_upstream_costs_its_timeout_once_not_on_every_query");
    // The first upstream swallows everything; the second answers.
    let blackhole = tokio::net::UdpSocket::bind((ip(block, 90), 0)).await.expect("bind the blackhole");
    let (good, upstream) = answering_upstream(ip(block, 91)).await;
    let mut cfg = config(block, 0, None, &[], &[]);
    cfg.dns.upstreams = vec![blackhole.local_addr().expect("addr"), good];
    let agent = Agent::start(cfg).await.expect("agent");
    let dns = agent.dns_addr();
    // 500 queries, each from a fresh socket, 50 at a time, each given 1 s (the dead
    // upstream alone takes 2 s to give up on).
    let mut answered = 0;
    for _ in 0..10 {
        let batch: Vec<_> = (0..50)
            .map(|_| tokio::spawn(async move { query(dns, "example.org.", RecordType::A, T / 2).await }))
            .collect();
        for q in batch {
            if q.await.expect("task").is_ok_and(|m| m.metadata.response_code == ResponseCode::NoError) {
                answered += 1;
            }
        }
    }
    assert!(answered >= 495, "{answered} of 500 forwarded queries answered");
    upstream.abort();
    agent.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_past_the_caps_are_refused_and_replicas_do_not_grow() {
    let block = common::block("registrations_past_the_caps_are_refused_and_replicas_do_not_grow");
    let key = murmur::Keyring::generate_base64();
    let mut cfg = config(block, 0, Some(&key), &[], &["own:80,check=none".into()]);
    cfg.api.limits.instances = 5;
    cfg.api.limits.attribute_bytes = 1_000;
    let a = Agent::start(cfg).await.expect("agent a");
    let b = Agent::start(config(block, 1, Some(&key), &[a.gossip_addr()], &[])).await.expect("agent b");
    let api = ApiClient::new(a.api_addr());
    // The config's instance counts: 4 more fit, the fifth API one does not.
    for i in 0..4 {
        assert_eq!(
            status(api.put(&format!("/v1/services/junk/junk-{i}"), "{\"port\":81,\"check\":\"none\"}".into()).await),
            200
        );
    }
    let past = api.put("/v1/services/junk/junk-4", "{\"port\":81,\"check\":\"none\"}".into()).await;
    assert!(matches!(&past, Err(ClientError::Status(429, m)) if m.contains("--max-instances")), "{past:?}");
    // Replacing one is not a new one; large attributes are refused whole.
    let attrs: Vec<String> = (0..5).map(|i| format!("\"a{i}\":\"{}\"", "x".repeat(250))).collect();
    let big = format!("{{\"port\":81,\"check\":\"none\",\"attributes\":{{{}}}}}", attrs.join(","));
    let refused = api.put("/v1/services/junk/junk-0", big).await;
    assert!(matches!(&refused, Err(ClientError::Status(413, m)) if m.contains("--max-attribute-bytes")), "{refused:?}");
    assert_eq!(status(api.put("/v1/services/junk/junk-0", "{\"port\":82,\"check\":\"none\"}".into()).await), 200);
    // The other agent's replica holds the 5, and stays there.
    let count = |s: &murmur::Snapshot| s.services.values().map(|l| l.len()).sum::<usize>();
    let (snap, ok) = b.registry().wait_for(WAIT, |s| count(s) == 5).await;
    assert!(ok, "b sees a's 5 instances: {}", count(&snap));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&b.registry().snapshot()), 5);
    a.kill().await;

    // The rate: a burst of 100, then 50 a second.
    let mut cfg = config(block, 2, None, &[], &[]);
    cfg.api.limits.instances = 1_000;
    let c = Agent::start(cfg).await.expect("agent c");
    let mut codes = std::collections::BTreeMap::new();
    // All at once, so that the test does not depend on how fast this machine is.
    let puts: Vec<_> = (0..300)
        .map(|i| {
            let api = ApiClient::new(c.api_addr());
            tokio::spawn(async move {
                api.put(&format!("/v1/services/fast/fast-{i}"), "{\"port\":81,\"check\":\"none\"}".into()).await
            })
        })
        .collect();
    for p in puts {
        *codes.entry(status(p.await.expect("task"))).or_insert(0) += 1;
    }
    let (ok, limited) = (codes.get(&200).copied().unwrap_or(0), codes.get(&429).copied().unwrap_or(0));
    assert!(ok >= 100 && limited > 0 && ok + limited == 300, "{codes:?}");
    b.kill().await;
    c.kill().await;
}

/// Sends one raw HTTP/1.1 request and returns the status code.
async fn raw_status(addr: SocketAddr, request: String) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to the API");
    s.write_all(request.as_bytes()).await.expect("send");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply).await;
    reply.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_rebound_names_web_pages_and_changes_without_the_token() {
    let block = common::block("the_api_refuses_rebound_names_web_pages_and_changes_without_the_token");
    let mut cfg = config(block, 0, None, &[], &[]);
    cfg.api.token = murmur::Config::from_layer(
        murmur::Layer {
            api_token: Some("s3cret".into()),
            insecure: Some(true),
            name: Some("t".into()),
            ..Default::default()
        },
        "",
    )
    .expect("valid")
    .api
    .token;
    let agent = Agent::start(cfg).await.expect("agent");
    let api = agent.api_addr();
    let put = |host: &str, extra: &str| {
        let body = "{\"port\":81,\"check\":\"none\"}";
        format!(
            "PUT /v1/services/web/web-1 HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let get = |host: &str| format!("GET /v1/members HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let ours = api.to_string();
    assert_eq!(raw_status(api, get("rebound.attacker.example")).await, 403, "a rebound name, even to read");
    assert_eq!(raw_status(api, get(&ours)).await, 200);
    let token = "Authorization: Bearer s3cret\r\n";
    let page = format!("Origin: http://attacker.example\r\n{token}");
    assert_eq!(raw_status(api, put(&ours, &page)).await, 403, "a change from a web page");
    assert_eq!(raw_status(api, put(&ours, "")).await, 401, "a change without the token");
    assert_eq!(raw_status(api, put(&ours, "X-Consul-Token: nope\r\n")).await, 403, "a wrong token");
    assert_eq!(raw_status(api, put(&ours, token)).await, 200, "a change with the token");
    assert_eq!(agent.publisher().local().borrow().len(), 1, "only the last one registered");
    agent.kill().await;
}

/// An app whose port opens and closes every `half` (a listener bound and dropped in
/// turn), until the task is aborted.
fn flapping_app(addr: SocketAddr, half: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_reuseaddr(true).expect("reuseaddr");
            socket.bind(addr).expect("rebind the flapping port");
            let listener = socket.listen(16).expect("listen");
            let open = tokio::time::sleep(half);
            tokio::pin!(open);
            loop {
                tokio::select! {
                    _ = &mut open => break,
                    accepted = listener.accept() => drop(accepted),
                }
            }
            drop(listener);
            tokio::time::sleep(half).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_check_is_held_critical_at_its_source() {
    let block = common::block("a_flapping_check_is_held_critical_at_its_source");
    // A port to flap: bound once to learn a free one, then opened and closed.
    let probe = std::net::TcpListener::bind((ip(block, 0), 0)).expect("bind");
    let addr = probe.local_addr().expect("addr");
    drop(probe);
    let app = flapping_app(addr, Duration::from_millis(300));
    let spec = format!("flap:{},interval=100ms,timeout=80ms,failures=1,successes=1", addr.port());
    let mesh = TestMesh::start(block, 2, |i| if i == 0 { vec![spec.clone()] } else { vec![] }).await;
    mesh.converge(2).await;
    // Left alone, this check would flip about three times a second; damped, three falls
    // are published and then the instance is held critical while it flaps.
    let metrics = mesh.agent(0).metrics();
    eventually("flips held back", || async { metrics.health.damped.get() >= 5 }).await;
    let published = metrics.health.transitions.get();
    assert!(published <= 6, "{published} health changes published from a flapping check");
    // Its peer sees it critical, says why, and sees nothing else while it flaps on.
    let api = ApiClient::new(mesh.agent(1).api_addr());
    let flap = || async {
        let body = api.get("/v1/services/flap?all=true").await.expect("flap");
        let all: Vec<InstanceJson> = serde_json::from_str(&body).expect("json");
        all.into_iter().next().map(|i| (i.health, i.health_output))
    };
    eventually("peer holds it", || async { flap().await.is_some_and(|(_, o)| o.starts_with("flapping")) }).await;
    for _ in 0..20 {
        let (health, output) = flap().await.expect("listed");
        assert_eq!(health, "critical", "held critical while it flaps: {output}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metrics.health.transitions.get() <= 6, "nothing more published while held");
    app.abort();
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_drains_then_leaves() {
    let block = common::block("graceful_leave_drains_then_leaves");
    let mut mesh = TestMesh::start(block, 3, |i| vec![format!("api:{},check=none", 8000 + i)]).await;
    mesh.converge(3).await;
    let dns = mesh.agent(0).dns_addr();
    eventually("3 api instances", || async { a_records(dns, "api.test.local.").await.len() == 3 }).await;
    let leaving = mesh.agents[2].take().expect("agent 2 runs");
    let shutdown = tokio::spawn(leaving.shutdown());
    // Draining: out of answers while the agent is still a live member.
    let reader = mesh.agent(0).registry();
    eventually("draining instance out of DNS", || async {
        !a_records(dns, "api.test.local.").await.contains(&ip(block, 2))
    })
    .await;
    let api = ApiClient::new(mesh.agent(0).api_addr());
    let all: Vec<InstanceJson> =
        serde_json::from_str(&api.get("/v1/services/api?all=true").await.expect("all")).expect("json");
    assert!(
        all.iter().any(|i| i.health == "draining")
            || reader.snapshot().members.values().any(|m| m.status == MemberStatus::Left)
    );
    shutdown.await.expect("shutdown");
    eventually("agent 2 seen as left", || async {
        reader.snapshot().members.values().any(|m| m.name == "agent-2" && m.status == MemberStatus::Left)
    })
    .await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_on_a_new_address_replaces_its_old_self() {
    let block = common::block("a_restarted_agent_on_a_new_address_replaces_its_old_self");
    // A failure detector so slow (suspicions of ten seconds and more) that only the
    // generation rule can explain a quick replacement.
    let mut mesh = TestMesh::start_with(
        13,
        3,
        |i| vec![format!("db:{},check=none", 5432 + i)],
        |c| {
            c.gossip.suspicion_mult = 40.0;
        },
    )
    .await;
    mesh.converge(3).await;
    let dns = mesh.agent(0).dns_addr();
    eventually("3 db instances", || async { a_records(dns, "db.test.local.").await.len() == 3 }).await;
    mesh.agents[2].take().expect("agent 2 runs").kill().await;
    // Same name, new address (block 13, slot 50), new generation.
    let mut cfg = config(block, 50, Some(&mesh.key), &[mesh.seed()], &["db:5434,check=none".into()]);
    cfg.node.name = "agent-2".parse().expect("valid name");
    let restarted = Agent::start(cfg).await.expect("restart");
    let took = eventually("new address in, old address out", || async {
        let got = a_records(dns, "db.test.local.").await;
        got.contains(&ip(block, 50)) && !got.contains(&ip(block, 2)) && got.len() == 3
    })
    .await;
    eprintln!("restart on a new address replaced the old one after {took:?}");
    assert!(took < Duration::from_secs(5), "replaced by the generation rule, not by failure detection: {took:?}");
    let snap = mesh.agent(0).registry().snapshot();
    assert_eq!(snap.members.values().filter(|m| m.name == "agent-2").count(), 1, "{:?}", snap.members);
    restarted.kill().await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_key_cannot_join_or_inject() {
    let block = common::block("a_node_with_another_key_cannot_join_or_inject");
    let mesh = TestMesh::start(block, 2, |_| vec![]).await;
    mesh.converge(2).await;
    let other_key = murmur::Keyring::generate_base64();
    let intruder = Agent::start(config(block, 9, Some(&other_key), &[mesh.seed()], &["evil:1,check=none".into()]))
        .await
        .expect("start");
    let insecure =
        Agent::start(config(block, 10, None, &[mesh.seed()], &["evil:2,check=none".into()])).await.expect("start");
    let metrics = mesh.agent(0).metrics();
    eventually("foreign datagrams dropped and counted", || async { metrics.gossip.undecryptable.get() >= 4 }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for agent in mesh.agents.iter().flatten() {
        let snap = agent.registry().snapshot();
        assert_eq!(snap.members.len(), 2, "{:?}", snap.members);
        assert!(snap.services.is_empty(), "{:?}", snap.services.keys().collect::<Vec<_>>());
    }
    // The intruder learned nothing either.
    assert_eq!(intruder.registry().snapshot().members.len(), 1);
    intruder.kill().await;
    insecure.kill().await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_at_every_port_is_counted_and_changes_nothing() {
    let block = common::block("garbage_at_every_port_is_counted_and_changes_nothing");
    let mesh = TestMesh::start(block, 2, |i| vec![format!("cache:{},check=none", 6379 + i)]).await;
    mesh.converge(2).await;
    let agent = mesh.agent(0);
    let dns = agent.dns_addr();
    eventually("2 cache instances", || async { a_records(dns, "cache.test.local.").await.len() == 2 }).await;
    let sock = tokio::net::UdpSocket::bind((ip(block, 99), 0)).await.expect("bind");
    let mut garbage: Vec<Vec<u8>> =
        vec![vec![], vec![0xA7], vec![0xA7, 1, 0, 0, 0, 0], vec![0xA7, 0, 1, 2, 3], b"GET / HTTP/1.1\r\n\r\n".to_vec()];
    let mut x: u32 = 12345;
    for len in [1usize, 13, 64, 512, 1400, 9000] {
        garbage.push(
            (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect(),
        );
    }
    for g in &garbage {
        sock.send_to(g, agent.gossip_addr()).await.expect("send");
        sock.send_to(g, dns).await.expect("send");
    }
    // A half-open, garbage TCP DNS stream and a garbage HTTP request.
    let mut t = tokio::net::TcpStream::connect(dns).await.expect("tcp");
    t.write_all(&[0xff, 0xff, 1, 2, 3]).await.expect("write");
    drop(t);
    let mut h = tokio::net::TcpStream::connect(agent.api_addr()).await.expect("api");
    h.write_all(b"\x00\x01 nonsense\r\n\r\n").await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(T, h.read_to_end(&mut buf)).await;
    assert!(
        buf.is_empty() || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 4"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    let m = agent.metrics();
    eventually("gossip garbage counted", || async {
        m.gossip.undecryptable.get() + m.gossip.malformed.get() >= garbage.len() as u64 - 1
    })
    .await;
    // Answers are unchanged and the agent still works.
    assert_eq!(a_records(dns, "cache.test.local.").await.len(), 2);
    assert_eq!(agent.registry().snapshot().members.len(), 2);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_truncates_tcp_carries_and_other_names_are_forwarded() {
    let block = common::block("udp_truncates_tcp_carries_and_other_names_are_forwarded");
    // Upstream: an agent serving another namespace; the agent under test forwards to it.
    let up_cfg = {
        let mut c = config(block, 0, None, &[], &["far:80,check=none".into()]);
        c.dns.namespace = "upstream.test".into();
        c
    };
    let upstream = Agent::start(up_cfg).await.expect("upstream");
    let mut cfg = config(
        16,
        1,
        None,
        &[],
        &(0..12)
            .map(|i| format!("big:{},id=big-instance-with-a-long-name-number-{i},check=none", 1000 + i))
            .collect::<Vec<_>>(),
    );
    cfg.dns.upstreams = vec![upstream.dns_addr()];
    let agent = Agent::start(cfg).await.expect("agent");
    let dns = agent.dns_addr();
    let reader = agent.registry();
    eventually("12 big instances", || async {
        reader.snapshot().services.values().map(|v| v.len()).sum::<usize>() == 12
    })
    .await;
    // 12 SRV answers (without their addresses, which are left out first) do not fit 512
    // bytes: UDP without EDNS truncates.
    let udp = query(dns, "big.test.local.", RecordType::SRV, T).await.expect("udp");
    assert!(udp.metadata.truncation, "answers: {}", udp.answers.len());
    let tcp = tcp_query(dns, "big.test.local.", RecordType::SRV).await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 12, "SRV carries every healthy instance (only A/AAAA are capped)");
    assert_eq!(tcp.additionals.len(), 12);
    // Forwarding: the upstream's name resolves through our stub, rcode and all.
    let ureader = upstream.registry();
    eventually("upstream has far", || async { !ureader.snapshot().services.is_empty() }).await;
    let fwd = query(dns, "far.upstream.test.", RecordType::A, WAIT).await.expect("forwarded");
    assert_eq!(addresses(&fwd), vec![ip(block, 0)]);
    assert!(!fwd.metadata.authoritative);
    let nx = query(dns, "nothing.upstream.test.", RecordType::A, WAIT).await.expect("forwarded");
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(agent.metrics().dns.forwarded.get() >= 2);
    agent.kill().await;
    upstream.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_are_retried_until_one_answers_and_dead_nodes_are_forgotten() {
    let block = common::block("seeds_are_retried_until_one_answers_and_dead_nodes_are_forgotten");
    let key = murmur::Keyring::generate_base64();
    // The seed's address is fixed (its own 127.x address, so the port is not shared)
    // and nobody listens there yet.
    let seed_addr = SocketAddr::new(ip(block, 0), 7946);
    let mut early_cfg = config(block, 1, Some(&key), &[seed_addr], &[]);
    early_cfg.gossip.dead_grace = Duration::from_secs(2);
    let early = Agent::start(early_cfg).await.expect("early agent");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(early.registry().snapshot().members.len(), 1);
    let mut seed_cfg = config(block, 0, Some(&key), &[], &[]);
    seed_cfg.gossip.bind = seed_addr;
    seed_cfg.gossip.advertise = seed_addr;
    let seed = Agent::start(seed_cfg).await.expect("seed agent");
    let reader = early.registry();
    eventually("joined once the seed answered", || async {
        reader.snapshot().members.values().filter(|m| m.status == MemberStatus::Alive).count() == 2
    })
    .await;
    // Kill the seed: dead first, then forgotten after the 2 s dead grace.
    seed.kill().await;
    eventually("seed dead", || async { reader.snapshot().members.values().any(|m| m.status == MemberStatus::Dead) })
        .await;
    let forgotten = eventually("seed forgotten", || async { reader.snapshot().members.len() == 1 }).await;
    assert!(forgotten >= Duration::from_millis(1500), "forgotten too early: {forgotten:?}");
    early.kill().await;
}

/// Receives every datagram that reaches `sock` for `d`.
async fn capture(sock: &tokio::net::UdpSocket, d: Duration) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let end = tokio::time::Instant::now() + d;
    while let Ok(Ok((n, from))) = tokio::time::timeout_at(end, sock.recv_from(&mut buf)).await {
        got.push((buf[..n].to_vec(), from));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_datagram_is_answered_at_most_once_and_never_amplified() {
    let block = common::block("a_replayed_datagram_is_answered_at_most_once_and_never_amplified");
    // A tap posing as agent 0's seed captures its sealed join requests; a second socket,
    // a stranger to agent 1, replays one of them to agent 1 a thousand times.
    let tap = tokio::net::UdpSocket::bind((ip(block, 99), 0)).await.expect("bind the tap");
    let tap_addr = tap.local_addr().expect("addr");
    let mesh = TestMesh::start_with(
        22,
        2,
        |i| vec![format!("svc{i}:7000,check=none")],
        |c| c.gossip.seeds.push(tap_addr.to_string()),
    )
    .await;
    mesh.converge(2).await;
    let captured = capture(&tap, Duration::from_millis(1500)).await;
    let (datagram, _) = captured.into_iter().max_by_key(|(d, _)| d.len()).expect("a captured join request");
    let replayer = tokio::net::UdpSocket::bind((ip(block, 98), 0)).await.expect("bind the replayer");
    let target = mesh.agent(1).gossip_addr();
    let m = mesh.agent(1).metrics();
    replayer.send_to(&datagram, target).await.expect("replay");
    // Each further copy is sent again until the agent has counted it, so that a copy the
    // kernel drops under load (a full socket queue) is not one the agent never saw. What
    // comes back to the replayer is collected all along.
    let replayer = std::sync::Arc::new(replayer);
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listen = (replayer.clone(), got.clone());
    let collector = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = listen.0.recv_from(&mut buf).await {
            listen.1.lock().expect("lock").push((buf[..n].to_vec(), from));
        }
    });
    for i in 1..1_000u64 {
        let before = m.gossip.replayed.get();
        let start = tokio::time::Instant::now();
        while m.gossip.replayed.get() == before {
            assert!(start.elapsed() < WAIT, "copy {i} never reached the agent");
            replayer.send_to(&datagram, target).await.expect("replay");
            let sent = tokio::time::Instant::now();
            while m.gossip.replayed.get() == before && sent.elapsed() < Duration::from_millis(200) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    collector.abort();
    let replies = got.lock().expect("lock").clone();
    let bytes: usize = replies.iter().map(|(d, _)| d.len()).sum();
    eprintln!("{} replies, {bytes} bytes, to 1,000 replays of a {}-byte datagram", replies.len(), datagram.len());
    assert!(replies.len() <= 1, "{} replies to one datagram replayed 1,000 times", replies.len());
    assert!(bytes <= 3 * datagram.len(), "{bytes} bytes back for one {}-byte datagram", datagram.len());
    assert!(m.gossip.replayed.get() >= 999, "replays counted: {}", m.gossip.replayed.get());
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_gossip_reveals_nothing_and_replays_change_nothing() {
    let block = common::block("captured_gossip_reveals_nothing_and_replays_change_nothing");
    // A listener posing as a seed that never answers: an agent asks its seeds to let it
    // join until one does, so it captures real sealed datagrams, and it replays them
    // from its own address, as an attacker on the path would.
    let tap = tokio::net::UdpSocket::bind((ip(block, 99), 0)).await.expect("bind the tap");
    let tap_addr = tap.local_addr().expect("addr");
    let mesh = TestMesh::start_with(
        18,
        1,
        |_| vec!["secretsvc:7000,check=none".into()],
        |c| c.gossip.seeds.push(tap_addr.to_string()),
    )
    .await;
    // Agent 0 alone: its join request carries a digest that knows only itself.
    let early = capture(&tap, Duration::from_millis(1200)).await;
    let early_syn = early.iter().map(|(d, _)| d.clone()).next().expect("agent 0 asks its seeds to join");
    let key = mesh.key.clone();
    let (second, during) = tokio::join!(
        Agent::start(config(block, 1, Some(&key), &[mesh.seed(), tap_addr], &["secretsvc:7001,check=none".into()])),
        capture(&tap, Duration::from_millis(600))
    );
    let second = second.expect("agent 1 starts");
    for a in [mesh.agent(0), &second] {
        let (snap, ok) =
            a.registry().wait_for(WAIT, |s| s.services.values().map(|v| v.len()).sum::<usize>() == 2).await;
        assert!(ok, "both instances everywhere: {:?}", snap.services);
    }
    // Nothing readable crosses the wire: no service, node or instance name in any datagram.
    let captured = [early.clone(), during].concat();
    let senders: std::collections::BTreeSet<SocketAddr> = captured.iter().map(|(_, from)| *from).collect();
    assert!(senders.len() >= 2, "both agents asked the tap: {senders:?}");
    for (d, _) in &captured {
        for secret in [&b"secretsvc"[..], b"agent-0", b"agent-1"] {
            assert!(
                !d.windows(secret.len()).any(|w| w == secret),
                "plaintext {:?} on the wire",
                String::from_utf8_lossy(secret)
            );
        }
    }
    // Replay agent 0's early Syn to agent 1: it opens (right key, fresh timestamp) and
    // agent 1 answers the tap with everything that Syn lacked, agent 1's instance included.
    tap.send_to(&early_syn, second.gossip_addr()).await.expect("replay");
    let answers: Vec<Vec<u8>> = capture(&tap, Duration::from_millis(400))
        .await
        .into_iter()
        .filter(|(_, from)| *from == second.gossip_addr())
        .map(|(d, _)| d)
        .collect();
    assert!(!answers.is_empty(), "agent 1 answered the replayed Syn");
    let old_state = answers.iter().max_by_key(|d| d.len()).expect("an answer").clone();
    // Control: the answer carries membership. A fresh agent with the key and no seeds learns
    // of agent 1 from that one replayed datagram.
    let fresh = Agent::start(config(block, 2, Some(&key), &[], &[])).await.expect("agent 2 starts");
    tap.send_to(&old_state, fresh.gossip_addr()).await.expect("replay");
    let (snap, ok) = fresh.registry().wait_for(WAIT, |s| s.members.values().any(|m| m.name == "agent-1")).await;
    assert!(ok, "the replayed answer carried agent 1's state: {:?}", snap.members);
    fresh.kill().await;

    // Agent 1 deregisters its instance (declared in its config, so not through the API);
    // agent 0 sees it go.
    let id = "agent-1-7001".parse().expect("id");
    second.publisher().deregister(&id, murmur::Origin::Config).await.expect("deregister");
    let (snap, ok) =
        mesh.agent(0).registry().wait_for(WAIT, |s| s.services.values().map(|v| v.len()).sum::<usize>() == 1).await;
    assert!(ok, "agent 0 saw the deregistration: {:?}", snap.services);

    // Replaying the old state (and every other captured datagram) to both agents changes
    // nothing: it opens, but its versions and incarnations are older than what they hold.
    let m0 = mesh.agent(0).metrics();
    let (opened0, refused0) = (m0.gossip.packets_received.get(), m0.gossip.undecryptable.get());
    for _ in 0..5 {
        tap.send_to(&old_state, mesh.agent(0).gossip_addr()).await.expect("replay");
        for (d, _) in &captured {
            tap.send_to(d, mesh.agent(0).gossip_addr()).await.expect("replay");
            tap.send_to(d, second.gossip_addr()).await.expect("replay");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(m0.gossip.packets_received.get() > opened0 + 5, "the replays arrived");
    assert_eq!(m0.gossip.undecryptable.get(), refused0, "the replays opened: versions, not the key, stopped them");
    for a in [mesh.agent(0), &second] {
        let snap = a.registry().snapshot();
        let ports: Vec<u16> = snap.services.values().flat_map(|v| v.iter()).map(|i| i.port).collect();
        assert_eq!(ports, [7000], "{}: the deregistered instance stays gone", a.name());
        assert_eq!(snap.members.values().filter(|m| m.status == MemberStatus::Alive).count(), 2);
    }
    second.kill().await;
    mesh.stop().await;
}

/// Sends `bytes` to `dns` from a fresh socket; the reply, if one comes within 300 ms.
async fn raw_udp(dns: SocketAddr, bytes: &[u8]) -> Option<Message> {
    let sock = tokio::net::UdpSocket::bind((dns.ip(), 0)).await.expect("bind");
    sock.send_to(bytes, dns).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_millis(300), sock.recv(&mut buf)).await.ok()?.ok()?;
    Some(Message::from_vec(&buf[..n]).expect("the stub's reply decodes"))
}

fn question(id: u16, op: OpCode, name: &str) -> Message {
    let mut m = Message::new(id, MessageType::Query, op);
    m.add_query(DnsQuery::query(Name::from_ascii(name).expect("name"), RecordType::A));
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_udp_stub_answers_malformed_and_unusual_queries_as_a_resolver_expects() {
    let block = common::block("the_udp_stub_answers_malformed_and_unusual_queries_as_a_resolver_expects");
    let mut cfg = config(block, 0, None, &[], &["web:80,check=none".into()]);
    cfg.dns.rate_limit = 50;
    let agent = Agent::start(cfg).await.expect("agent");
    let dns = agent.dns_addr();
    let reader = agent.registry();
    eventually("web registered", || async { !reader.snapshot().services.is_empty() }).await;

    // A header followed by garbage: FORMERR, same id.
    let mut garbage = question(0x4242, OpCode::Query, "web.test.local.").to_vec().expect("encode");
    garbage.truncate(12);
    garbage[5] = 3; // three questions announced, none present
    let r = raw_udp(dns, &garbage).await.expect("FORMERR comes back");
    assert_eq!((r.metadata.id, r.metadata.response_code), (0x4242, ResponseCode::FormErr));
    // A response, or anything shorter than a header, gets nothing (no reflection).
    let mut response = question(7, OpCode::Query, "web.test.local.");
    response.metadata.message_type = MessageType::Response;
    assert!(raw_udp(dns, &response.to_vec().expect("encode")).await.is_none());
    assert!(raw_udp(dns, b"short").await.is_none());
    // An opcode other than QUERY: NOTIMP.
    let r = raw_udp(dns, &question(8, OpCode::Notify, "web.test.local.").to_vec().expect("encode")).await;
    assert_eq!(r.expect("reply").metadata.response_code, ResponseCode::NotImp);
    // EDNS: our OPT comes back with the payload size capped at 1232; version 1 is BADVERS.
    let mut q = question(9, OpCode::Query, "web.test.local.");
    let mut edns = hickory_proto::op::Edns::new();
    edns.set_max_payload(4096);
    q.set_edns(edns.clone());
    let r = raw_udp(dns, &q.to_vec().expect("encode")).await.expect("reply");
    assert_eq!(addresses(&r), vec![ip(block, 0)]);
    assert_eq!(r.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    edns.set_version(1);
    q.set_edns(edns);
    let r = raw_udp(dns, &q.to_vec().expect("encode")).await.expect("reply");
    // BADVERS and BADSIG share code 16; hickory decodes it as the latter.
    assert_eq!(u16::from(r.metadata.response_code), 16, "{:?}", r.metadata.response_code);

    // One socket asking 200 times at once is answered 50 times (the rate limit's burst,
    // plus what refills while it asks); a fresh socket is still answered.
    let flood = tokio::net::UdpSocket::bind((ip(block, 8), 0)).await.expect("bind");
    for id in 0..200u16 {
        flood
            .send_to(&question(id, OpCode::Query, "web.test.local.").to_vec().expect("encode"), dns)
            .await
            .expect("send");
    }
    let mut answered = 0;
    let mut buf = vec![0u8; 4096];
    while tokio::time::timeout(Duration::from_millis(300), flood.recv(&mut buf)).await.is_ok() {
        answered += 1;
    }
    assert!((50..=60).contains(&answered), "{answered} of 200 answered at 50 queries/s");
    assert!(agent.metrics().dns.rate_limited.get() >= 140);
    assert!(!a_records(dns, "web.test.local.").await.is_empty(), "a fresh socket was held back");
    agent.kill().await;
}

/// Whether every member agent `a` knows gossips a keyring that satisfies `pred`.
async fn every_member_keyring(a: &Agent, pred: impl Fn(&[[u8; 32]]) -> bool) -> bool {
    let Ok(report) = a.keyring().report().await else { return false };
    report.members.len() == 5 && report.members.iter().all(|m| m.record.as_ref().is_some_and(|r| pred(&r.keys)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_cluster_rotates_its_gossip_key_and_then_refuses_the_old_one() {
    let block = common::block("a_running_cluster_rotates_its_gossip_key_and_then_refuses_the_old_one");
    use murmur::{load_keyring_file, KeyChange, Keyring, KeyringError};
    let dir = std::env::temp_dir().join(format!("murmur-rotation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file_of = |name: &str| dir.join(format!("{name}.keyring"));
    let mut mesh =
        TestMesh::start_with(block, 5, |_| vec![], |c| c.gossip.key_file = Some(file_of(c.node.name.as_str()))).await;
    mesh.converge(5).await;
    let old = Keyring::decode_key("old", &mesh.key).expect("the mesh's key");
    let new_b64 = Keyring::generate_base64();
    let new = Keyring::decode_key("new", &new_b64).expect("a fresh key");

    // Every agent watches every snapshot: a member seen anything but alive during the
    // rotation is a false verdict.
    let verdicts = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let watchers: Vec<_> = mesh
        .agents
        .iter()
        .flatten()
        .map(|a| {
            let (name, mut rx, seen) = (a.name().to_owned(), a.registry().subscribe(), verdicts.clone());
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let snap = rx.borrow_and_update().clone();
                    for m in
                        snap.members.values().filter(|m| m.status != MemberStatus::Alive || snap.members.len() != 5)
                    {
                        seen.lock().expect("lock").push(format!("{name} saw {} {:?}", m.name, m.status));
                    }
                }
            })
        })
        .collect();

    // `use` of a key nobody holds, and removing the primary, are refused at once.
    let refused = mesh.agent(2).keyring().change(KeyChange::Use(new), false).await;
    assert!(matches!(refused, Err(KeyringError::NotInstalled(_))), "{refused:?}");
    let refused = mesh.agent(2).keyring().change(KeyChange::Remove(old), false).await;
    assert!(matches!(refused, Err(KeyringError::RemovePrimary(_))), "{refused:?}");

    // Install on one agent; it reaches every member.
    mesh.agent(0).keyring().change(KeyChange::Install(new), false).await.expect("install");
    let took = eventually("the new key on every member, as agent 2 sees them", || async {
        every_member_keyring(mesh.agent(2), |k| k == [old, new]).await
    })
    .await;
    eprintln!("install reached every member in {took:?}");
    // Made primary from another agent.
    mesh.agent(2).keyring().change(KeyChange::Use(new), false).await.expect("use");
    eventually("the new key primary everywhere, as agent 1 sees it", || async {
        every_member_keyring(mesh.agent(1), |k| k == [new, old]).await
    })
    .await;
    mesh.agent(1).keyring().change(KeyChange::Remove(old), false).await.expect("remove");
    for i in 0..5 {
        eventually("only the new key, everywhere", || async {
            every_member_keyring(mesh.agent(i), |k| k == [new]).await
        })
        .await;
        assert_eq!(mesh.agent(i).metrics().gossip.keyring_epoch.get(), 3, "install, use, remove");
    }
    // Every keyring file holds the new key alone (written off the gossip task).
    for i in 0..5 {
        let path = file_of(&format!("agent-{i}"));
        eventually("the keyring file rewritten", || async {
            load_keyring_file(&path).ok().flatten().is_some_and(|r| r.keys == [new] && r.epoch == 3)
        })
        .await;
    }

    // A member that still holds only the old key is refused.
    let stale = Agent::start(config(block, 9, Some(&mesh.key), &[mesh.seed()], &["stale:1,check=none".into()]))
        .await
        .expect("start");
    let metrics = mesh.agent(0).metrics();
    let before = metrics.gossip.undecryptable.get();
    eventually("the old key's datagrams dropped", || async { metrics.gossip.undecryptable.get() >= before + 3 }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for agent in mesh.agents.iter().flatten() {
        let snap = agent.registry().snapshot();
        assert_eq!(snap.members.len(), 5, "{:?}", snap.members);
        assert!(snap.services.is_empty(), "{:?}", snap.services.keys().collect::<Vec<_>>());
    }
    assert_eq!(stale.registry().snapshot().members.len(), 1, "and learned nothing");
    stale.kill().await;
    for w in watchers {
        w.abort();
    }
    let seen = verdicts.lock().expect("lock").clone();
    assert!(seen.is_empty(), "false verdicts during the rotation: {seen:?}");

    // A restart with the old key in its flags comes back with the file's key.
    mesh.agents[3].take().expect("running").kill().await;
    let mut restart = common::layer(block, 3, Some(&mesh.key), &[mesh.seed()], &[]);
    restart.gossip_key_file = Some(file_of("agent-3"));
    let cfg = murmur::Config::from_layer(restart, "").expect("valid config");
    mesh.agents[3] = Some(Agent::start(cfg).await.expect("restart"));
    mesh.converge(5).await;
    let report = mesh.agent(3).keyring().report().await.expect("a keyring");
    assert_eq!((report.local.epoch, report.local.keys.clone()), (3, vec![new]));
    mesh.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
