//! The Consul-compatible API: its shape, blocking queries per service, and the real
//! Consul clients users run against it (Prometheus's `consul_sd_configs`, python-consul).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{eventually, ip, tcp_app, tcp_apps, TestMesh};
use murmur::api::consul_types::{AgentSelfJson, CatalogServiceJson, ServiceEntryJson};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A reply: status, headers (names lowercased) and body.
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Reply {
    fn index(&self) -> u64 {
        self.headers.get("x-consul-index").and_then(|v| v.parse().ok()).expect("X-Consul-Index on every reply")
    }

    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// `GET path` over plain HTTP/1.1, as any Consul client sends it; bounded by `within`.
async fn get(api: SocketAddr, path: &str, within: Duration) -> Reply {
    let call = async {
        let mut s = tokio::net::TcpStream::connect(api).await.expect("connect to the API");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read");
        let text = String::from_utf8(raw).expect("utf-8 reply");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        let mut lines = head.lines();
        let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Reply { status, headers, body: body.to_owned() }
    };
    tokio::time::timeout(within, call).await.unwrap_or_else(|_| panic!("GET {path} took over {within:?}"))
}

fn check_statuses(entry: &ServiceEntryJson) -> Vec<(String, String)> {
    entry.checks.iter().map(|c| (c.check_id.clone(), c.status.clone())).collect()
}

/// Two agents; agent 1's Consul endpoints list agent 0's and its own instances in
/// Consul's shape, refuse what they do not do, and block per service: a change of one
/// service wakes its watchers and not another's, and the index never goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_endpoints_answer_in_consuls_shape_and_block_per_service() {
    let (web_ports, web_apps) = tcp_apps(27, 2).await;
    let (db_port, db_app) = tcp_app(ip(27, 1)).await;
    let mesh = TestMesh::start(27, 2, |i| {
        let tag = if i == 0 { "canary" } else { "stable" };
        let mut s = vec![format!("web:{},tags={tag},interval=200ms,timeout=150ms,attr.build=b{i}", web_ports[i])];
        if i == 1 {
            s.push(format!("db:{db_port},interval=200ms,timeout=150ms"));
        }
        s
    })
    .await;
    mesh.converge(2).await;
    let api = mesh.agent(1).api_addr();
    let t = Duration::from_secs(5);
    eventually("agent 1 lists both web instances as passing", || async {
        get(api, "/v1/health/service/web?passing", t).await.json::<Vec<ServiceEntryJson>>().len() == 2
    })
    .await;
    eventually("agent 1 lists db as passing", || async {
        get(api, "/v1/health/service/db?passing=1", t).await.json::<Vec<ServiceEntryJson>>().len() == 1
    })
    .await;

    let me = get(api, "/v1/agent/self", t).await;
    assert_eq!(me.headers.get("x-consul-knownleader").map(String::as_str), Some("true"));
    assert_eq!(me.headers.get("x-consul-lastcontact").map(String::as_str), Some("0"));
    let me: AgentSelfJson = me.json();
    assert_eq!(me.config.node_name, "agent-1");
    assert_eq!(me.config.datacenter, me.murmur.cluster);
    assert_eq!(me.member.name, "agent-1");
    let dc = me.config.datacenter.clone();

    let services = get(api, "/v1/catalog/services", t).await;
    let names: HashMap<String, Vec<String>> = services.json();
    assert_eq!(names.get("web").map(Vec::as_slice), Some(&["canary".to_owned(), "stable".to_owned()][..]));
    assert_eq!(names.get("db").map(Vec::len), Some(0));

    let canary: Vec<CatalogServiceJson> = get(api, "/v1/catalog/service/web?tag=canary", t).await.json();
    assert_eq!(canary.len(), 1, "{canary:?}");
    let c = &canary[0];
    assert_eq!((c.node.as_str(), c.datacenter.as_str(), c.service_name.as_str()), ("agent-0", dc.as_str(), "web"));
    assert_eq!(c.service_address, ip(27, 0).to_string());
    assert_eq!(c.service_port, web_ports[0]);
    assert_eq!(c.service_meta.get("build").map(String::as_str), Some("b0"));
    assert_eq!(c.service_weights.passing, 1);

    let web = get(api, "/v1/health/service/web", t).await;
    let entries: Vec<ServiceEntryJson> = web.json();
    let first = &entries[0];
    assert_eq!(first.node.node, "agent-0");
    assert_eq!(
        check_statuses(first),
        [("serfHealth".into(), "passing".into()), (format!("service:{}", first.service.id), "passing".into())]
    );

    for (path, what) in [
        ("/v1/health/service/web?filter=Service.Port%3D%3D80", "filter"),
        ("/v1/catalog/services?dc=elsewhere", "datacenter"),
        ("/v1/health/service/web?index=soon", "index"),
    ] {
        let r = get(api, path, t).await;
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(r.body.contains(what), "{path}: {}", r.body);
    }

    // Blocking: watchers of web and of db, each from its own index.
    let web_index = web.index();
    let db_index = get(api, "/v1/health/service/db", t).await.index();
    let long = Duration::from_secs(60);
    let web_watch =
        tokio::spawn(
            async move { get(api, &format!("/v1/health/service/web?index={web_index}&wait=30s"), long).await },
        );
    let db_watch =
        tokio::spawn(async move { get(api, &format!("/v1/health/service/db?index={db_index}&wait=30s"), long).await });
    let catalog_index = services.index();
    let catalog_watch =
        tokio::spawn(
            async move { get(api, &format!("/v1/catalog/services?index={catalog_index}&wait=30s"), long).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!web_watch.is_finished() && !db_watch.is_finished(), "nothing changed yet: both still wait");
    // The canary's app dies: its check fails, and web's watcher wakes with a higher index.
    web_apps[0].abort();
    let woke = web_watch.await.expect("web watcher");
    assert!(woke.index() > web_index, "woken by the change, not the wait: {} > {web_index}", woke.index());
    let entries: Vec<ServiceEntryJson> = woke.json();
    let canary = entries.iter().find(|e| e.node.node == "agent-0").expect("the canary is still listed");
    assert_eq!(check_statuses(canary)[1].1, "critical", "{canary:?}");
    // The db watcher is not woken by web's change, nor is the catalog's (a health flip).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!db_watch.is_finished(), "db's watcher was woken by web's change");
    assert!(!catalog_watch.is_finished(), "the catalog's watcher was woken by a health flip");
    catalog_watch.abort();
    // Now db's app dies too: its watcher wakes.
    db_app.abort();
    let woke_db = db_watch.await.expect("db watcher");
    assert!(woke_db.index() > db_index);
    assert!(woke_db.json::<Vec<ServiceEntryJson>>().iter().all(|e| e.checks[1].status == "critical"));
    // A wait that runs out returns the same index, after the wait.
    let now = get(api, "/v1/health/service/db", t).await.index();
    let start = Instant::now();
    let same = get(api, &format!("/v1/health/service/db?index={now}&wait=500ms"), t).await;
    assert_eq!(same.index(), now);
    assert!(start.elapsed() >= Duration::from_millis(500), "returned before the wait: {:?}", start.elapsed());

    // Agent 0 crashes: its instance stays listed with a critical node check until it is
    // forgotten, and `?passing` leaves it out.
    let mut mesh = mesh;
    let zero = mesh.agents[0].take().expect("running");
    zero.kill().await;
    eventually("agent 0's web instance has a critical serfHealth", || async {
        let entries: Vec<ServiceEntryJson> = get(api, "/v1/health/service/web", t).await.json();
        entries
            .iter()
            .any(|e| e.node.node == "agent-0" && check_statuses(e)[0] == ("serfHealth".into(), "critical".into()))
    })
    .await;
    let passing: Vec<ServiceEntryJson> = get(api, "/v1/health/service/web?passing", t).await.json();
    assert!(passing.iter().all(|e| e.node.node == "agent-1"), "{passing:?}");
    for app in web_apps {
        app.abort();
    }
    mesh.stop().await;
}
