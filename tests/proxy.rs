//! Proxy mode with real sockets, in one process: an app calls an alias on its own
//! sidecar, which carries the connection over QUIC with mutual TLS to a sidecar beside
//! a healthy instance. Balancing, failover, byte-exact transfers, refusals, the circuit
//! breaker and drain.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{call, config, echo_app, eventually, ip, status, with_proxy, WAIT};
use hickory_proto::rr::RecordType;
use murmur::client::{addresses, query};
use murmur::pki::Ca;
use murmur::Agent;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A client agent (`web`, calling `echo:80`) and `backends` agents serving `echo`.
struct ProxyMesh {
    /// The gossip key.
    key: String,
    client: Agent,
    backends: Vec<Option<Agent>>,
    apps: Vec<Option<tokio::task::JoinHandle<()>>>,
    vip: SocketAddr,
}

const NAMES: [&str; 3] = ["echo-a", "echo-b", "echo-c"];

async fn proxy_mesh(block: u8, backends: usize, echo_opts: &str, upstream: &str, ca: &Ca, client_ca: &Ca) -> ProxyMesh {
    proxy_mesh_with(block, backends, echo_opts, upstream, ca, client_ca, |_| "echo").await
}

/// As [`proxy_mesh`]; backend i's certificate names the service `cert_service(i)`.
async fn proxy_mesh_with(
    block: u8,
    backends: usize,
    echo_opts: &str,
    upstream: &str,
    ca: &Ca,
    client_ca: &Ca,
    cert_service: impl Fn(usize) -> &'static str,
) -> ProxyMesh {
    let key = murmur::Keyring::generate_base64();
    let mut cfg = config(block, 0, Some(&key), &[], &["web:1,check=none".into()]);
    with_proxy(&mut cfg, block, client_ca, None, &["web"], &[upstream]);
    let client = Agent::start(cfg).await.expect("client agent");
    let seed = client.gossip_addr();
    let mut agents = Vec::new();
    let mut apps = Vec::new();
    for i in 1..=backends {
        let (port, app) = echo_app(ip(block, i), NAMES[i - 1]).await;
        apps.push(Some(app));
        let spec = format!("echo:{port},interval=200ms,timeout=150ms{echo_opts}");
        let mut cfg = config(block, i, Some(&key), &[seed], &[spec]);
        with_proxy(&mut cfg, block, ca, Some("echo"), &[cert_service(i)], &[]);
        agents.push(Some(Agent::start(cfg).await.expect("backend agent")));
    }
    let reader = client.registry();
    let (_, ok) = reader
        .wait_for(WAIT, |s| s.lookup(&"echo".parse().expect("name"), &Default::default()).len() == backends)
        .await;
    assert!(ok, "the client never saw {backends} healthy echo instances");
    let vip = SocketAddr::new(IpAddr::from([127, 201, block, 1]), 80);
    ProxyMesh { key, client, backends: agents, apps, vip }
}

impl ProxyMesh {
    async fn stop(self) {
        for a in self.backends.into_iter().flatten() {
            a.kill().await;
        }
        for a in self.apps.into_iter().flatten() {
            a.abort();
        }
        self.client.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_reaches_both_instances_and_big_transfers_are_byte_exact() {
    let block = common::block("traffic_reaches_both_instances_and_big_transfers_are_byte_exact");
    let ca = Ca::generate().expect("ca");
    let mesh = proxy_mesh(block, 2, "", "echo:80", &ca, &ca).await;
    // The alias resolves to the VIP through the client's stub, bare and in the namespace.
    for name in ["echo.", "echo.test.local."] {
        let reply = query(mesh.client.dns_addr(), name, RecordType::A, Duration::from_secs(2)).await.expect("dns");
        assert_eq!(addresses(&reply), vec![mesh.vip.ip()], "{name}");
    }
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..100 {
        *seen.entry(call(mesh.vip, b"ping").await.expect("call")).or_insert(0) += 1;
    }
    eprintln!("calls per instance: {seen:?}");
    assert_eq!(seen.len(), 2, "both instances answered: {seen:?}");

    // 100 MB each way (the echo sends every byte back), hashes compared.
    const SIZE: usize = 100 * 1024 * 1024;
    let s = TcpStream::connect(mesh.vip).await.expect("connect");
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut greeting = String::new();
    r.read_line(&mut greeting).await.expect("greeting");
    let writer = tokio::spawn(async move {
        let mut sent = ring::digest::Context::new(&ring::digest::SHA256);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut chunk = vec![0u8; 256 * 1024];
        let mut left = SIZE;
        while left > 0 {
            for b in chunk.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let n = left.min(chunk.len());
            sent.update(&chunk[..n]);
            w.write_all(&chunk[..n]).await.expect("write");
            left -= n;
        }
        w.shutdown().await.expect("half-close");
        sent.finish()
    });
    let mut got = ring::digest::Context::new(&ring::digest::SHA256);
    let mut total = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let start = Instant::now();
    loop {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        got.update(&buf[..n]);
        total += n;
    }
    let sent = writer.await.expect("writer");
    assert_eq!(total, SIZE);
    assert_eq!(sent.as_ref(), got.finish().as_ref(), "byte-exact both ways");
    eprintln!("100 MB each way through two sidecars in {:?}", start.elapsed());
    mesh.stop().await;
}

/// Runs sequential calls until `stop`; returns how many succeeded and, for each that
/// failed, when it started and ended.
fn load(
    vip: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<(Instant, Instant)>)> {
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            match call(vip, b"steady").await {
                Ok(_) => ok += 1,
                Err(e) => {
                    eprintln!("call failed: {e}");
                    failed.push((started, Instant::now()));
                }
            };
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (ok, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_app_or_agent_under_load_fails_nothing() {
    let block = common::block("killing_a_backend_app_or_agent_under_load_fails_nothing");
    let ca = Ca::generate().expect("ca");
    // Round robin, so calls certainly reach the app and the agent that die.
    let mut mesh = proxy_mesh(block, 3, "", "echo:80,balance=rr", &ca, &ca).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = load(mesh.vip, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The app behind backend 1 dies: attempts to it are refused by its sidecar before
    // the ack and retried elsewhere; its health check then takes it out.
    let app_killed = Instant::now();
    if let Some(app) = mesh.apps[0].take() {
        app.abort();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Backend 2's agent crashes: its QUIC connection dies; attempts fail before the ack
    // and are retried; the failure detector then takes it out.
    let killed = Instant::now();
    mesh.backends[1].take().expect("backend 2").kill().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = traffic.await.expect("load");
    eprintln!("{ok} calls succeeded, {} failed", failed.len());
    assert!(ok > 100, "the load ran: {ok}");
    // Calls are sequential, so at most one is in flight when the app dies and one when
    // the agent dies. A call already past the ack at that instant is lost with them (a
    // connection still in the app's accept queue is reset when its listener closes),
    // which is the kill's loss, not the proxy's; the demo counts those apart too. Every
    // other call succeeds.
    let in_flight_at = |at: Instant| move |(start, end): &(Instant, Instant)| *start <= at && at <= *end;
    let excused = |call: &(Instant, Instant)| in_flight_at(app_killed)(call) || in_flight_at(killed)(call);
    assert!(
        failed.len() <= 2 && failed.iter().all(excused),
        "only a call in flight at a kill may fail: {} failed, {} of them in flight at neither",
        failed.len(),
        failed.iter().filter(|c| !excused(c)).count()
    );
    let stats = mesh.client.metrics().proxy.upstreams();
    let retries = stats[0].1.retries.get();
    eprintln!("retries: {retries}");
    assert!(retries > 0, "calls did hit the dead app or agent and were retried");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_certificates_and_callers_outside_allow_are_refused() {
    let block = common::block("foreign_certificates_and_callers_outside_allow_are_refused");
    let second = common::block("foreign_certificates_and_callers_outside_allow_are_refused/second");
    let ca = Ca::generate().expect("ca");
    let other = Ca::generate().expect("other ca");
    // A client that trusts the cluster CA but presents a certificate from another CA:
    // the server refuses it.
    let mesh = proxy_mesh(block, 1, "", "echo:80,retries=0", &ca, &ca).await;
    let backend = mesh.backends[0].as_ref().expect("backend");
    let peer = own_echo(backend).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().expect("der")).expect("root");
    let foreign = other.issue(&"intruder".parse().expect("node"), &["web".parse().expect("name")]).expect("issue");
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![foreign.cert], foreign.key)
        .expect("client auth");
    tls.alpn_protocols = vec![murmur::pki::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let server_name = murmur::pki::node_server_name(peer.host.node.as_str());
    let attempt = async {
        let conn = endpoint
            .connect(peer.host.proxy.expect("sidecar"), &server_name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 16];
        recv.read(&mut buf).await.map_err(|e| e.to_string())
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(5), attempt).await.expect("settled").is_err(),
        "a foreign certificate got through"
    );
    let m = backend.metrics();
    eventually("handshake failure counted", || async { m.proxy.inbound.handshake_failures.get() > 0 }).await;
    assert_eq!(m.proxy.inbound.streams.get(), 0);
    mesh.stop().await;

    // A caller the instance does not allow: refused with a reason, never retried.
    let mesh = proxy_mesh(second, 1, ",allow=billing", "echo:80", &ca, &ca).await;
    assert!(call(mesh.vip, b"x").await.is_err());
    let backend = mesh.backends[0].as_ref().expect("backend");
    let refused = backend.metrics().proxy.inbound.refused();
    assert_eq!(refused, vec![("not_allowed", 1)], "refused once, not retried");
    let up = &mesh.client.metrics().proxy.upstreams()[0].1;
    assert_eq!(up.retries.get(), 0);
    assert_eq!(up.failed.get(), 1);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_cannot_rewrite_or_shadow_a_configured_instance() {
    let block = common::block("the_api_cannot_rewrite_or_shadow_a_configured_instance");
    let ca = Ca::generate().expect("ca");
    // `echo` allows only `billing`; the client calls as `web`.
    let mesh = proxy_mesh(block, 1, ",allow=billing", "echo:80,retries=0", &ca, &ca).await;
    let backend = mesh.backends[0].as_ref().expect("backend");
    let configured = backend.publisher().local().borrow()[0].clone();
    let (id, port) = (configured.record.instance.to_string(), configured.record.port);
    let api = murmur::client::ApiClient::new(backend.api_addr());
    // Replacing it (its allow list lost), repointing it, removing it: refused.
    let path = format!("/v1/services/echo/{id}");
    assert_eq!(status(api.put(&path, format!("{{\"port\":{port},\"check\":\"none\"}}")).await), 409);
    let repoint = format!("{{\"port\":{port},\"address\":\"127.41.0.66\",\"check\":\"none\"}}");
    assert_eq!(status(api.put(&path, repoint).await), 409);
    assert_eq!(status(api.delete(&path).await), 409);
    // A second instance on the same service and port, with no allow list and an id that
    // sorts first, is taken but changes nothing for callers; the API can also carry an
    // allow list of its own.
    let shadow = format!("{{\"port\":{port},\"check\":\"none\"}}");
    assert_eq!(status(api.put("/v1/services/echo/a-shadow", shadow).await), 200);
    let listed = format!("{{\"port\":{port},\"check\":\"none\",\"allow\":[\"web\"]}}");
    assert_eq!(status(api.put("/v1/services/listed/listed", listed).await), 200);
    let local = backend.publisher().local().borrow().clone();
    assert_eq!(local.iter().find(|i| i.record.instance == configured.record.instance), Some(&configured));
    let listed = local.iter().find(|i| i.record.instance.as_str() == "listed").expect("registered");
    assert_eq!(listed.allow, vec!["web".parse::<murmur_protocol::ServiceName>().expect("name")]);
    for _ in 0..5 {
        assert!(call(mesh.vip, b"x").await.is_err(), "web is still not allowed");
    }
    let refused = backend.metrics().proxy.inbound.refused();
    assert!(refused.iter().all(|(why, _)| *why == "not_allowed"), "{refused:?}");
    assert_eq!(backend.metrics().proxy.inbound.streams.get(), 0, "nothing was served");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_rejects_past_its_cap_and_drain_finishes_open_transfers() {
    let block = common::block("the_breaker_rejects_past_its_cap_and_drain_finishes_open_transfers");
    let ca = Ca::generate().expect("ca");
    let mut mesh = proxy_mesh(block, 2, "", "echo:80,max-connections=2", &ca, &ca).await;
    // Two long-lived connections fill the cap; a third is closed at once.
    let mut held = Vec::new();
    for _ in 0..2 {
        let s = TcpStream::connect(mesh.vip).await.expect("connect");
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).await.expect("greeting");
        held.push(r);
    }
    assert!(call(mesh.vip, b"x").await.is_err(), "third connection rejected");
    let up = mesh.client.metrics().proxy.upstreams()[0].1.clone();
    assert_eq!(up.breaker_rejections.get(), 1);
    drop(held);
    eventually("slots free again", || async { up.active.get() == 0 }).await;

    // Drain: a transfer running on backend 1 when it starts leaving completes byte-exact.
    let s = TcpStream::connect(mesh.vip).await.expect("connect");
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut who = String::new();
    r.read_line(&mut who).await.expect("greeting");
    let idx = NAMES.iter().position(|n| *n == who.trim()).expect("known instance");
    let leaving = mesh.backends[idx].take().expect("backend");
    let shutdown = tokio::spawn(leaving.shutdown());
    let payload: Vec<u8> = (0..4 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let expect = payload.clone();
    let writer = tokio::spawn(async move {
        for chunk in payload.chunks(64 * 1024) {
            w.write_all(chunk).await.expect("write");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        w.shutdown().await.expect("half-close");
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.expect("read");
    writer.await.expect("writer");
    assert!(back == expect, "transfer complete and exact during drain ({} of {} bytes)", back.len(), expect.len());
    // New calls go to the other backend meanwhile.
    let other = NAMES[1 - idx];
    assert_eq!(call(mesh.vip, b"y").await.expect("call during drain"), other);
    shutdown.await.expect("shutdown");
    mesh.stop().await;
}

/// A client agent (`web`, calling `upstream`) and one backend agent serving `service` at
/// `port` on its own address (no health check), both in proxy mode under `ca`.
async fn pair(block: u8, ca: &Ca, service: &str, port: u16, upstream: &str) -> (Agent, Agent) {
    let key = murmur::Keyring::generate_base64();
    let mut cfg = config(block, 1, Some(&key), &[], &[format!("{service}:{port},check=none")]);
    with_proxy(&mut cfg, block, ca, None, &[service], &[]);
    let backend = Agent::start(cfg).await.expect("backend");
    let mut cfg = config(block, 0, Some(&key), &[backend.gossip_addr()], &["web:1,check=none".into()]);
    with_proxy(&mut cfg, block, ca, None, &["web"], &[upstream]);
    let client = Agent::start(cfg).await.expect("client");
    (client, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_upstreams_ride_quic_datagrams_and_idle_flows_expire() {
    let ca = Ca::generate().expect("ca");
    let block = common::block("udp_upstreams_ride_quic_datagrams_and_idle_flows_expire");
    let (app_port, app_task) = udp_pong(ip(block, 1)).await;
    let (client, backend) = pair(block, &ca, "cache", app_port, "cache:53,proto=udp,idle-timeout=500ms").await;
    let reader = client.registry();
    let (_, ok) =
        reader.wait_for(WAIT, |s| s.lookup(&"cache".parse().expect("name"), &Default::default()).len() == 1).await;
    assert!(ok, "client sees the cache");
    let vip = SocketAddr::new(IpAddr::from([127, 201, block, 1]), 53);
    for flow in 0..2 {
        let sock = tokio::net::UdpSocket::bind((ip(block, 50 + flow), 0)).await.expect("client socket");
        for i in 0..5 {
            let msg = format!("q{flow}-{i}");
            sock.send_to(msg.as_bytes(), vip).await.expect("send");
            let mut buf = [0u8; 128];
            let (n, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
                .await
                .expect("reply in time")
                .expect("recv");
            assert_eq!(from, vip, "the reply comes from the VIP");
            assert_eq!(&buf[..n], format!("pong:{msg}").as_bytes());
        }
    }
    // A datagram too large for one QUIC datagram is dropped and counted, not sent: 8,000
    // bytes are more than any QUIC packet here may carry, even once path MTU discovery
    // has raised it past 1,200 bytes on loopback (its ceiling is 6,500).
    let big = tokio::net::UdpSocket::bind((ip(block, 60), 0)).await.expect("socket");
    big.send_to(&vec![7u8; 8000], vip).await.expect("send");
    let up = client.metrics().proxy.upstreams()[0].1.clone();
    eventually("oversize datagram counted", || async {
        up.endpoints().iter().any(|(_, e)| e.failures(murmur::FailureCause::DatagramTooLarge) > 0)
    })
    .await;
    let inbound = backend.metrics();
    assert_eq!(inbound.proxy.inbound.streams.get(), 3, "one stream per flow");
    // Both flows idle out on both sides.
    eventually("idle flows closed", || async { inbound.proxy.inbound.active.get() == 0 }).await;
    assert_eq!(up.accepted.get(), 3);
    client.kill().await;
    backend.kill().await;
    app_task.abort();
}

/// A raw QUIC client with a certificate of `ca` naming `services`, connected to `peer`.
/// The backend's own `echo` instance, once its snapshot lists it (it may trail the
/// client's by one coalescing window).
async fn own_echo(backend: &Agent) -> Arc<murmur::Instance> {
    let echo = "echo".parse().expect("name");
    let (snap, ok) = backend.registry().wait_for(WAIT, |s| !s.lookup(&echo, &Default::default()).is_empty()).await;
    assert!(ok, "the backend sees its own instance");
    snap.lookup(&echo, &Default::default())[0].clone()
}

async fn raw_client(ca: &Ca, services: &[&str], peer: SocketAddr, server_node: &str) -> quinn::Connection {
    use murmur::pki::TlsMaterial;
    let names: Vec<murmur_protocol::ServiceName> = services.iter().map(|s| s.parse().expect("name")).collect();
    let tls = TlsMaterial::Mutual {
        ca: vec![ca.cert_der().expect("der")],
        identity: ca.issue(&"raw-client".parse().expect("node"), &names).expect("issue"),
    };
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls.client_config().expect("client config")).expect("quic");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint.connect(peer, &murmur::pki::node_server_name(server_node)).expect("connect").await.expect("handshake")
}

async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> murmur_protocol::Frame {
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(bytes).await.expect("write");
    let _ = send.finish();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while let Some(n) = recv.read(&mut chunk).await.expect("read") {
        buf.extend_from_slice(&chunk[..n]);
    }
    murmur_protocol::Frame::decode(&buf).expect("a frame").expect("whole").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_headers_get_an_error_frame_and_a_counted_reason() {
    let block = common::block("bad_headers_get_an_error_frame_and_a_counted_reason");
    use murmur_protocol::{Frame, Open, RefuseCode, Transport};
    let ca = Ca::generate().expect("ca");
    let mesh = proxy_mesh(block, 1, "", "echo:80", &ca, &ca).await;
    let backend = mesh.backends[0].as_ref().expect("backend");
    let peer = own_echo(backend).await;
    let conn = raw_client(&ca, &["web"], peer.host.proxy.expect("sidecar"), peer.host.node.as_str()).await;
    let open = |service: &str, port: u16, caller: &str| {
        Frame::Open(Open {
            service: service.parse().expect("name"),
            port,
            caller: caller.parse().expect("name"),
            caller_node: "raw-client".parse().expect("node"),
            transport: Transport::Tcp,
        })
        .encode()
    };
    let refused = |f: Frame| match f {
        Frame::Refuse(r) => r.code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(refused(exchange(&conn, b"\x01\x01\x00\x05junk!").await), RefuseCode::BadHeader);
    assert_eq!(refused(exchange(&conn, b"\x09\x01\x00\x00").await), RefuseCode::BadVersion);
    assert_eq!(refused(exchange(&conn, &[1, 1, 0xff, 0xff]).await), RefuseCode::BadHeader, "oversized");
    assert_eq!(refused(exchange(&conn, &open("nothing", 80, "web")).await), RefuseCode::UnknownService);
    assert_eq!(
        refused(exchange(&conn, &open("echo", peer.port, "billing")).await),
        RefuseCode::NotAllowed,
        "claims a service its certificate does not name"
    );
    // And a well-formed header is accepted (the app greets first).
    assert!(matches!(exchange(&conn, &open("echo", peer.port, "web")).await, Frame::Ack));
    let counted: u64 = backend.metrics().proxy.inbound.refused().iter().map(|(_, n)| n).sum();
    assert_eq!(counted, 5);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_what_health_checks_do_not_see() {
    let block = common::block("outlier_detection_ejects_what_health_checks_do_not_see");
    let ca = Ca::generate().expect("ca");
    // No health check: only real traffic can tell that an app died.
    let mut mesh = proxy_mesh(block, 2, ",check=none", "echo:80,balance=rr", &ca, &ca).await;
    if let Some(app) = mesh.apps[0].take() {
        app.abort();
    }
    for _ in 0..60 {
        call(mesh.vip, b"x").await.expect("every call succeeds (retried on the live endpoint)");
    }
    let up = mesh.client.metrics().proxy.upstreams()[0].1.clone();
    let dead = up.endpoints().into_iter().find(|(_, e)| e.failures(murmur::FailureCause::AppUnreachable) > 0);
    let (id, dead) = dead.expect("the dead endpoint was tried");
    assert_eq!(dead.ejections.get(), 1, "{id} ejected once");
    assert_eq!(dead.failures(murmur::FailureCause::AppUnreachable), 5, "then never tried again while ejected");
    assert_eq!(up.failed.get(), 0);
    let json = murmur::client::ApiClient::new(mesh.client.api_addr()).get("/v1/upstreams").await.expect("api");
    assert!(json.contains("\"state\":\"ejected\""), "{json}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_certificate_does_not_name_the_service_gets_none_of_its_traffic() {
    let block = common::block("a_member_whose_certificate_does_not_name_the_service_gets_none_of_its_traffic");
    let ca = Ca::generate().expect("ca");
    // Backend 2 registers `echo` but its certificate names only `other`.
    let mesh = proxy_mesh_with(block, 2, "", "echo:80", &ca, &ca, |i| if i == 1 { "echo" } else { "other" }).await;
    for _ in 0..30 {
        assert_eq!(call(mesh.vip, b"x").await.expect("call"), "echo-a", "only the genuine instance answers");
    }
    let up = mesh.client.metrics().proxy.upstreams()[0].1.clone();
    let impostor = up.endpoints().into_iter().find(|(_, e)| e.failures(murmur::FailureCause::Identity) > 0);
    assert!(impostor.is_some(), "the impostor was tried and refused for its certificate");
    let served = mesh.backends[1].as_ref().expect("impostor").metrics().proxy.inbound.streams.get();
    assert_eq!(served, 0, "no stream ever reached the impostor");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_holder_without_a_certificate_gets_none_of_a_services_traffic() {
    let block = common::block("a_key_holder_without_a_certificate_gets_none_of_a_services_traffic");
    let ca = Ca::generate().expect("ca");
    let mesh = proxy_mesh(block, 1, "", "echo:80", &ca, &ca).await;
    // A member with the gossip key but no certificate (so no sidecar) registers `echo` at
    // an address of its own, at the highest weight, and counts what reaches it.
    let trap = tokio::net::TcpListener::bind((ip(block, 9), 0)).await.expect("bind");
    let port = trap.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    let trap = tokio::spawn(async move {
        while let Ok((s, _)) = trap.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            drop(s);
        }
    });
    let spec = format!("echo:{port},check=none,weight=65535");
    let intruder = Agent::start(config(block, 9, Some(&mesh.key), &[mesh.client.gossip_addr()], &[spec]))
        .await
        .expect("intruder agent");
    let (_, ok) = mesh
        .client
        .registry()
        .wait_for(WAIT, |s| s.lookup(&"echo".parse().expect("name"), &Default::default()).len() == 2)
        .await;
    assert!(ok, "the client sees the intruder's instance");
    for _ in 0..50 {
        assert_eq!(call(mesh.vip, b"x").await.expect("call"), "echo-a", "only the sidecar's instance answers");
    }
    assert_eq!(hits.load(Ordering::Relaxed), 0, "no connection reached the intruder's address");
    let up = mesh.client.metrics().proxy.upstreams()[0].1.clone();
    assert!(up.plaintext_skipped.get() >= 50, "skipped {} times", up.plaintext_skipped.get());
    trap.abort();
    intruder.kill().await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_holding_twenty_thousand_streams_cannot_lock_out_other_callers() {
    let block = common::block("a_peer_holding_twenty_thousand_streams_cannot_lock_out_other_callers");
    let ca = Ca::generate().expect("ca");
    let mesh = proxy_mesh(block, 1, "", "echo:80", &ca, &ca).await;
    let backend = mesh.backends[0].as_ref().expect("backend");
    let peer = own_echo(backend).await;
    let (addr, node) = (peer.host.proxy.expect("sidecar"), peer.host.node.to_string());
    // A member (a valid certificate) opens 2 × 10,000 streams and never finishes a header.
    let mut held = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..2 {
        let conn = raw_client(&ca, &["web"], addr, &node).await;
        for _ in 0..10_000 {
            let Ok((mut send, recv)) = conn.open_bi().await else { break };
            if send.write_all(&[1]).await.is_err() {
                break;
            }
            held.push((send, recv));
        }
        conns.push(conn);
    }
    let m = backend.metrics();
    let over = || m.proxy.inbound.refused().iter().find(|(why, _)| *why == "peer_overloaded").map_or(0, |(_, n)| *n);
    eventually("the peer's streams past its cap refused", || async { over() >= 9_000 }).await;
    // Another caller still gets through.
    assert_eq!(call(mesh.vip, b"x").await.expect("a legitimate call"), "echo-a");
    eprintln!("{} streams opened, {} refused past the peer's cap", held.len(), over());
    drop(held);
    for c in conns {
        c.close(quinn::VarInt::from_u32(0), b"done");
    }
    mesh.stop().await;
}

/// A UDP app on `ip` that answers every datagram with `pong:` and the datagram.
async fn udp_pong(ip: IpAddr) -> (u16, tokio::task::JoinHandle<()>) {
    let app = tokio::net::UdpSocket::bind((ip, 0)).await.expect("udp app");
    let port = app.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = app.recv_from(&mut buf).await {
            let mut reply = b"pong:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = app.send_to(&reply, from).await;
        }
    });
    (port, task)
}

/// Sends `msg` from a fresh socket on `from` to `vip`, up to 3 times as a resolver
/// would; whether the pong came back.
async fn one_shot(from: IpAddr, vip: SocketAddr, msg: &[u8]) -> bool {
    let Ok(sock) = tokio::net::UdpSocket::bind((from, 0)).await else { return false };
    let mut buf = [0u8; 128];
    for _ in 0..3 {
        if sock.send_to(msg, vip).await.is_err() {
            return false;
        }
        if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(700), sock.recv_from(&mut buf)).await {
            return buf[..n].starts_with(b"pong:");
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_opening_a_flow_per_query_neither_runs_out_nor_locks_out_inbound_flows() {
    let ca = Ca::generate().expect("ca");
    let block = common::block("a_resolver_opening_a_flow_per_query_neither_runs_out_nor_locks_out_inbound_flows");
    let key = murmur::Keyring::generate_base64();
    let (port_a, app_a) = udp_pong(ip(block, 0)).await;
    let (port_b, app_b) = udp_pong(ip(block, 1)).await;
    // A calls B's `b-udp`, B calls A's `a-udp`, each on its own VIP range.
    let mut cfg = config(block, 0, Some(&key), &[], &[format!("a-udp:{port_a},check=none")]);
    with_proxy(&mut cfg, block, &ca, None, &["a-udp"], &["b-udp:53,proto=udp"]);
    let a = Agent::start(cfg).await.expect("agent a");
    let mut cfg = config(block, 1, Some(&key), &[a.gossip_addr()], &[format!("b-udp:{port_b},check=none")]);
    with_proxy(&mut cfg, block, &ca, None, &["b-udp"], &["a-udp:53,proto=udp"]);
    if let Some(p) = cfg.proxy.as_mut() {
        p.vip_base = std::net::Ipv4Addr::new(127, 202, block, 1);
    }
    let b = Agent::start(cfg).await.expect("agent b");
    for (agent, svc) in [(&a, "b-udp"), (&b, "a-udp")] {
        let name = svc.parse().expect("name");
        let (_, ok) = agent.registry().wait_for(WAIT, |s| s.lookup(&name, &Default::default()).len() == 1).await;
        assert!(ok, "{} sees {svc}", agent.name());
    }
    let (vip_a, vip_b) = (SocketAddr::from(([127, 201, block, 1], 53)), SocketAddr::from(([127, 202, block, 1], 53)));
    // 5,000 one-datagram flows through A, 50 at a time, within 10 s.
    let start = Instant::now();
    let mut answered = 0;
    for round in 0..100 {
        let batch: Vec<_> = (0..50)
            .map(|i| {
                tokio::spawn(async move { one_shot(ip(block, 50), vip_a, format!("q{round}-{i}").as_bytes()).await })
            })
            .collect();
        for q in batch {
            answered += usize::from(q.await.expect("task"));
        }
    }
    let took = start.elapsed();
    assert_eq!(answered, 5_000, "one-datagram flows answered (in {took:?})");
    assert!(took < Duration::from_secs(10), "5,000 flows took {took:?}");
    // A remote sidecar still opens a flow to A.
    assert!(one_shot(ip(block, 51), vip_b, b"from b").await, "an inbound flow to A opens");
    a.kill().await;
    b.kill().await;
    app_a.abort();
    app_b.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_behind_the_sidecars_reaches_the_app_as_a_reset() {
    let ca = Ca::generate().expect("ca");
    let block = common::block("a_reset_behind_the_sidecars_reaches_the_app_as_a_reset");
    // An app that sends part of a reply, then dies with a reset.
    let app = tokio::net::TcpListener::bind((ip(block, 1), 0)).await.expect("bind");
    let port = app.local_addr().expect("addr").port();
    let app_task = tokio::spawn(async move {
        while let Ok((mut s, _)) = app.accept().await {
            let mut buf = [0u8; 16];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"partial reply").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            #[allow(deprecated)]
            let _ = s.set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    let (client, backend) = pair(block, &ca, "flaky", port, "flaky:80").await;
    let (_, ok) = client
        .registry()
        .wait_for(WAIT, |s| s.lookup(&"flaky".parse().expect("name"), &Default::default()).len() == 1)
        .await;
    assert!(ok);
    let mut s = TcpStream::connect(SocketAddr::new(IpAddr::from([127, 201, block, 1]), 80)).await.expect("connect");
    s.write_all(b"request").await.expect("write");
    let mut got = Vec::new();
    let r = s.read_to_end(&mut got).await;
    assert!(r.is_err(), "a cut-off reply must not look whole: got Ok after {:?}", String::from_utf8_lossy(&got));
    client.kill().await;
    backend.kill().await;
    app_task.abort();
}

/// The certificate a QUIC connection's peer presented.
fn presented(conn: &quinn::Connection) -> Vec<u8> {
    conn.peer_identity()
        .and_then(|any| any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()))
        .expect("the peer presented a certificate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_is_presented_to_new_connections_and_bad_files_change_nothing() {
    let block = common::block("a_reloaded_certificate_is_presented_to_new_connections_and_bad_files_change_nothing");
    use murmur::pki::TlsMaterial;
    use murmur::pki::{cert_pem, key_pem};
    use murmur::TlsFiles;
    let ca = Ca::generate().expect("ca");
    let dir = std::env::temp_dir().join(format!("murmur-tls-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let files = TlsFiles { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    let write = |id: &murmur::pki::Identity| {
        std::fs::write(&files.ca, ca.cert_pem()).expect("write ca");
        std::fs::write(&files.cert, cert_pem(&id.cert)).expect("write cert");
        std::fs::write(&files.key, key_pem(&id.key)).expect("write key");
    };
    let mut cfg = config(block, 0, None, &[], &["echo:80,check=none".into()]);
    with_proxy(&mut cfg, 39, &ca, Some("echo"), &["echo"], &[]);
    let node = cfg.node.name.clone();
    let echo: murmur_protocol::ServiceName = "echo".parse().expect("name");
    let first = ca.issue(&node, std::slice::from_ref(&echo)).expect("issue");
    write(&first);
    let peer = SocketAddr::new(ip(block, 0), 7947);
    if let Some(p) = cfg.proxy.as_mut() {
        p.bind = peer;
        p.tls = TlsMaterial::load(&files.ca, &files.cert, &files.key).expect("load");
        p.tls_files = Some(files.clone());
    }
    let agent = Agent::start(cfg).await.expect("agent");
    let before = raw_client(&ca, &["web"], peer, node.as_str()).await;
    assert_eq!(presented(&before), first.cert.as_ref());

    // A renewed certificate in the same files: new connections get it; the old one stays.
    let second = ca.issue(&node, &[echo]).expect("issue");
    write(&second);
    agent.reload_tls().expect("reload");
    let after = raw_client(&ca, &["web"], peer, node.as_str()).await;
    assert_eq!(presented(&after), second.cert.as_ref());
    assert!(before.close_reason().is_none(), "a connection made before the reload was closed");

    // Files that do not make a certificate for this node are refused; the last good
    // material stays in service.
    let stranger = ca.issue(&"someone-else".parse().expect("node"), &[]).expect("issue");
    write(&stranger);
    let err = agent.reload_tls().expect_err("a certificate for another node");
    assert!(
        matches!(err, murmur::ReloadError::Check(murmur::pki::CheckError::WrongNode { .. })),
        "{}",
        murmur::error_chain(&err)
    );
    std::fs::write(&files.cert, "not a certificate").expect("write");
    assert!(agent.reload_tls().is_err());
    let still = raw_client(&ca, &["web"], peer, node.as_str()).await;
    assert_eq!(presented(&still), second.cert.as_ref());
    agent.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--access-log`: one JSON line per proxied connection, with the endpoint, its node,
/// the bytes each way, the result and the retries; a call with no endpoint is logged
/// with its cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_a_line_per_connection() {
    let block = common::block("the_access_log_has_a_line_per_connection");
    let ca = Ca::generate().expect("ca");
    let key = murmur::Keyring::generate_base64();
    let log = std::env::temp_dir().join(format!("murmur-access-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut cfg = config(block, 0, Some(&key), &[], &["web:1,check=none".into()]);
    with_proxy(&mut cfg, block, &ca, None, &["web"], &["echo:80", "nosuch:81"]);
    cfg.proxy.as_mut().expect("proxy").access_log = Some(log.clone());
    let client = Agent::start(cfg).await.expect("client agent");
    let (port, app) = echo_app(ip(block, 1), NAMES[0]).await;
    let mut cfg = config(block, 1, Some(&key), &[client.gossip_addr()], &[format!("echo:{port},check=none")]);
    with_proxy(&mut cfg, block, &ca, Some("echo"), &["echo"], &[]);
    let backend = Agent::start(cfg).await.expect("backend agent");
    let (_, ok) = client
        .registry()
        .wait_for(WAIT, |s| s.lookup(&"echo".parse().expect("name"), &Default::default()).len() == 1)
        .await;
    assert!(ok, "the client never saw the echo instance");
    let dns = client.dns_addr();
    let vip = |name: &'static str| async move {
        let reply = query(dns, name, RecordType::A, Duration::from_secs(2)).await.expect("dns");
        addresses(&reply).first().copied().expect("a VIP")
    };
    let (echo, nosuch) = (SocketAddr::new(vip("echo.").await, 80), SocketAddr::new(vip("nosuch.").await, 81));
    for _ in 0..3 {
        assert_eq!(call(echo, b"ping").await.expect("call"), "echo-a");
    }
    assert!(call(nosuch, b"ping").await.is_err(), "nothing serves nosuch");
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    };
    eventually("four lines in the access log", || async { lines().len() == 4 }).await;
    let all = lines();
    let ok: Vec<_> = all.iter().filter(|l| l["upstream"] == "echo").collect();
    assert_eq!(ok.len(), 3, "{all:?}");
    for l in &ok {
        assert_eq!(l["result"], "ok", "{l}");
        assert_eq!(l["transport"], "tcp");
        assert_eq!(l["peer_node"], "agent-1");
        assert_eq!(l["endpoint"], format!("agent-1-{port}"));
        assert_eq!(l["retries"], 0);
        // "ping" out; the app's greeting "echo-a\n" and the echo back, however the
        // greeting arrived (with the peer's acknowledgement or after it).
        assert_eq!(l["bytes_sent"], 4, "{l}");
        assert_eq!(l["bytes_received"], 7 + 4, "{l}");
        assert!(l["start_unix_ms"].as_u64().is_some_and(|t| t > 1_700_000_000_000), "{l}");
    }
    let missed = all.iter().find(|l| l["upstream"] == "nosuch").expect("the call with no endpoint");
    assert_eq!(missed["result"], "no_endpoints", "{missed}");
    assert!(missed["endpoint"].is_null());
    backend.kill().await;
    client.kill().await;
    app.abort();
    let _ = std::fs::remove_file(&log);
}
