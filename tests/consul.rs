//! The Consul-compatible API: its shape and blocking queries per service, and the real
//! clients users point at murmur's discovery: vmagent's `consul_sd_configs`, py-consul,
//! and Prometheus's `http_sd_configs`. The clients' tests show as ignored when the
//! client is missing (they fail under CI, whose .ci/run installs them).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::trials::{self, trial};
use common::{eventually, ip, tcp_app, tcp_apps, web_mesh, Scraper, TestMesh};
use murmur::client::{AgentSelfJson, CatalogServiceJson, ServiceEntryJson};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

fn main() -> ExitCode {
    use trials::{block_on, nothing, program, python_module};
    trials::run(vec![
        trial("consul_endpoints_answer_in_consuls_shape_and_block_per_service", nothing(), false, || {
            block_on(consul_endpoints_answer_in_consuls_shape_and_block_per_service())
        }),
        trial("consul_registration_ttl_checks_and_deregister_after", nothing(), false, || {
            block_on(consul_registration_ttl_checks_and_deregister_after())
        }),
        trial(
            "vmagent_consul_sd_discovers_instances_and_follows_their_health",
            program("vmagent", "victoria-metrics"),
            false,
            || block_on(vmagent_consul_sd_discovers_instances_and_follows_their_health()),
        ),
        trial(
            "python_consul_reads_the_catalog_and_blocks_until_a_change",
            python_module("consul", "py-consul"),
            false,
            || block_on(python_consul_reads_the_catalog_and_blocks_until_a_change()),
        ),
        trial("prometheus_http_sd_lists_every_healthy_instance", program("prometheus", "prometheus"), false, || {
            block_on(prometheus_http_sd_lists_every_healthy_instance())
        }),
    ])
}

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
async fn consul_endpoints_answer_in_consuls_shape_and_block_per_service() {
    let block = common::block("consul_endpoints_answer_in_consuls_shape_and_block_per_service");
    let (web_ports, web_apps) = tcp_apps(block, 2).await;
    let (db_port, db_app) = tcp_app(ip(block, 1)).await;
    let mesh = TestMesh::start(block, 2, |i| {
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
    assert_eq!(c.service_address, ip(block, 0).to_string());
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

/// vmagent's `consul_sd_configs`, pointed at an agent as at a Consul agent: it reads
/// `/v1/agent/self` for the datacenter, watches `/v1/catalog/services` and
/// `/v1/health/service/web` with blocking queries, and labels each target with what it
/// read (Prometheus's `__meta_consul_*` labels). Consul discovery lists critical
/// instances too; the scrape config keeps the passing ones, as users write it, so a
/// killed instance leaves the targets, in about a second: its watch was woken.
async fn vmagent_consul_sd_discovers_instances_and_follows_their_health() {
    let block = common::block("vmagent_consul_sd_discovers_instances_and_follows_their_health");
    let (ports, apps, mesh) = web_mesh(block).await;
    let api = mesh.agent(1).api_addr();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: web\n    consul_sd_configs:\n      \
         - server: '{api}'\n        services: [web]\n    relabel_configs:\n      \
         - source_labels: [__meta_consul_health]\n        regex: passing\n        action: keep\n"
    );
    let vmagent = Scraper::vmagent(ip(block, 99), &config);
    let address = |i: usize| SocketAddr::new(ip(block, i), ports[i]).to_string();
    let label = |targets: &[serde_json::Map<String, serde_json::Value>], i: usize, name: &str| {
        targets
            .iter()
            .find(|t| t.get("__address__").and_then(|a| a.as_str()) == Some(address(i).as_str()))
            .and_then(|t| t.get(name)?.as_str().map(str::to_owned))
    };
    eventually("vmagent discovers all three instances, passing", || async {
        let targets = vmagent.targets().await;
        (0..3).all(|i| label(&targets, i, "__meta_consul_health").as_deref() == Some("passing"))
    })
    .await;
    let targets = vmagent.targets().await;
    let me: AgentSelfJson = get(api, "/v1/agent/self", Duration::from_secs(5)).await.json();
    let canary = |name: &str| label(&targets, 0, name).unwrap_or_default();
    assert_eq!(canary("__meta_consul_service"), "web");
    assert_eq!(canary("__meta_consul_dc"), me.config.datacenter);
    assert_eq!(canary("__meta_consul_node"), "agent-0");
    assert_eq!(canary("__meta_consul_tags"), ",canary,");
    assert_eq!(canary("__meta_consul_service_metadata_build"), "b0");
    assert_eq!(canary("__meta_consul_service_port"), ports[0].to_string());
    // Instance 1's app dies: vmagent's watch is woken, and the instance leaves.
    apps[1].abort();
    let took = eventually("instance 1 leaves vmagent's targets", || async {
        let targets = vmagent.targets().await;
        targets.len() == 2 && label(&targets, 1, "__meta_consul_service").is_none()
    })
    .await;
    eprintln!("a failed instance left vmagent's consul_sd targets {took:?} after its app died");
    for app in apps {
        app.abort();
    }
    mesh.stop().await;
}

/// What python-consul runs against agent 1, as a user's script would: the agent's own
/// view, the catalog, tag and health filters, a blocking query that returns once
/// instance 1 fails, a registration with a TTL check that it reports passing, and its
/// removal; then an app of its own with an HTTP check registers on agent 0, and a
/// blocking query on agent 1 returns once it is there and passing.
const PYTHON_CLIENT: &str = r#"
import sys, threading, consul
from http.server import BaseHTTPRequestHandler, HTTPServer
host, port, dc, host0, port0 = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
c = consul.Consul(host=host, port=port)
c0 = consul.Consul(host=host0, port=port0)
me = c.agent.self()
assert me["Config"]["Datacenter"] == dc and me["Config"]["NodeName"] == "agent-1", me["Config"]
index, services = c.catalog.services()
assert sorted(services["web"]) == ["canary", "stable"], services
_, nodes = c.catalog.service("web", tag="canary")
assert [n["Node"] for n in nodes] == ["agent-0"], nodes
index, entries = c.health.service("web", passing=True)
assert len(entries) == 3, entries
print("ready", index, flush=True)
while len(entries) == 3:
    new_index, entries = c.health.service("web", index=index, wait="30s", passing=True)
    assert int(new_index) >= int(index), (new_index, index)
    index = new_index
assert sorted(e["Node"]["Node"] for e in entries) == ["agent-0", "agent-2"], entries
print("woken", index, flush=True)
c.agent.service.register("job", service_id="job-1", port=7000, tags=["batch"], check=consul.Check.ttl("10s"))
assert c.agent.services()["job-1"]["Service"] == "job"
c.agent.check.ttl_pass("service:job-1", "working")
index, entries = c.health.service("job", passing=True)
while not entries:
    index, entries = c.health.service("job", index=index, wait="10s", passing=True)
assert entries[0]["Checks"][1]["Output"] == "working", entries
c.agent.service.deregister("job-1")
assert "job-1" not in c.agent.services()
# An app with an HTTP health endpoint registers on agent 0; agent 1's blocking query,
# asked before, returns once the instance is there and passing.
class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
app = HTTPServer((host0, 0), Health)
threading.Thread(target=app.serve_forever, daemon=True).start()
app_port = app.server_address[1]
index, entries = c.health.service("pyweb", passing=True)
assert entries == [], entries
c0.agent.service.register("pyweb", service_id="pyweb-1", address=host0, port=app_port,
    check=consul.Check.http(f"http://{host0}:{app_port}/health", "200ms", timeout="150ms"))
while not entries:
    new_index, entries = c.health.service("pyweb", index=index, wait="30s", passing=True)
    assert int(new_index) > int(index), (new_index, index)
    index = new_index
assert entries[0]["Node"]["Node"] == "agent-0" and entries[0]["Service"]["Port"] == app_port, entries
print("registered", flush=True)
"#;

/// py-consul, the maintained python-consul (PyPI `py-consul`; .ci/run installs it).
/// Debian's python3-consul 0.7.1 is older than Consul 1.0 and sends its changes (check
/// reports, deregistrations) as GET, which Consul 1.0 and murmur refuse: a change by GET
/// could come from any web page.
async fn python_consul_reads_the_catalog_and_blocks_until_a_change() {
    let block = common::block("python_consul_reads_the_catalog_and_blocks_until_a_change");
    let python = "python3";
    let (_, apps, mesh) = web_mesh(block).await;
    let api = mesh.agent(1).api_addr();
    eventually("agent 1 sees three passing instances", || async {
        get(api, "/v1/health/service/web?passing", Duration::from_secs(5)).await.json::<Vec<ServiceEntryJson>>().len()
            == 3
    })
    .await;
    let me: AgentSelfJson = get(api, "/v1/agent/self", Duration::from_secs(5)).await.json();
    let mut child = tokio::process::Command::new(python)
        .args(["-c", PYTHON_CLIENT, &api.ip().to_string(), &api.port().to_string(), &me.config.datacenter])
        .args([mesh.agent(0).api_addr().ip().to_string(), mesh.agent(0).api_addr().port().to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.expect("python answers in time")
    };
    let ready = next_line().await.expect("read").unwrap_or_default();
    assert!(ready.starts_with("ready "), "the client's reads failed: {ready:?}");
    // The client now blocks; instance 1's app dies and its watch returns.
    apps[1].abort();
    let woken = next_line().await.expect("read").unwrap_or_default();
    assert!(woken.starts_with("woken "), "{woken:?}");
    let registered = next_line().await.expect("read").unwrap_or_default();
    assert_eq!(registered, "registered", "a TTL registration through python-consul failed");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits").expect("status");
    assert!(status.success(), "{status}");
    for app in apps {
        app.abort();
    }
    mesh.stop().await;
}

/// `PUT path` with a JSON body: the status and the body.
async fn put(api: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let r = murmur::client::ApiClient::new(api).put(path, body.to_owned()).await;
    match r {
        Ok(body) => (200, body),
        Err(murmur::client::ClientError::Status(code, body)) => (code, body),
        Err(e) => panic!("PUT {path}: {e}"),
    }
}

/// Consul's registration body (keys in any case), TTL checks reported by the app,
/// expiring, and `DeregisterCriticalServiceAfter`; a check probing its own address;
/// what murmur cannot honour is refused with a reason.
async fn consul_registration_ttl_checks_and_deregister_after() {
    let block = common::block("consul_registration_ttl_checks_and_deregister_after");
    let (app_port, app) = tcp_app(ip(block, 0)).await;
    let mesh = TestMesh::start(block, 2, |_| Vec::new()).await;
    mesh.converge(2).await;
    let (api, peer) = (mesh.agent(0).api_addr(), mesh.agent(1).api_addr());
    let t = Duration::from_secs(5);
    let health_at = |at: SocketAddr, name: &'static str| async move {
        let entries: Vec<ServiceEntryJson> = get(at, &format!("/v1/health/service/{name}"), t).await.json();
        entries.first().map(|e| (e.checks[1].status.clone(), e.checks[1].output.clone()))
    };
    let health = |name: &'static str| health_at(peer, name);
    let body = r#"{"Name": "worker", "ID": "w1", "Port": 9000, "Tags": ["a"], "Meta": {"build": "7"},
        "Check": {"TTL": "2s", "DeregisterCriticalServiceAfter": "2s"}}"#;
    assert_eq!(put(api, "/v1/agent/service/register", body).await.0, 200);
    eventually("the peer lists w1, critical until its first report", || async {
        health("worker").await.is_some_and(|(s, _)| s == "critical")
    })
    .await;
    let local: HashMap<String, serde_json::Value> = get(api, "/v1/agent/services", t).await.json();
    assert_eq!(local["w1"]["Service"], "worker");
    assert_eq!(local["w1"]["Meta"]["build"], "7");
    // The report holds for the TTL from when it was made: no later than `start`.
    let start = Instant::now();
    assert_eq!(put(api, "/v1/agent/check/pass/service:w1?note=all%20good", "").await.0, 200);
    eventually("the report is in the agent's own replica", || async {
        health_at(api, "worker").await == Some(("passing".into(), "all good".into()))
    })
    .await;
    // No more reports: critical after the TTL, then removed 2 s later.
    eventually("the TTL runs out", || async {
        health("worker").await.is_some_and(|(s, output)| s == "critical" && output.contains("TTL expired"))
    })
    .await;
    let expired = start.elapsed();
    eventually("the critical instance is deregistered", || async { health("worker").await.is_none() }).await;
    let reaped = start.elapsed();
    assert!(expired >= Duration::from_secs(2), "expired after {expired:?}, before its 2 s TTL");
    assert!(reaped >= Duration::from_secs(4), "reaped after {reaped:?}, before 2 s TTL + 2 s");
    eprintln!("TTL 2 s: critical {expired:?} after the last report, deregistered after {reaped:?} (2 s + 2 s)");

    // Lowercase keys, no ID (murmur's default id), a TCP check on another address than
    // the instance's: it passes because the check's own target is probed.
    let body = format!(
        r#"{{"name": "probe", "port": 1, "check": {{"tcp": "{}:{app_port}", "interval": "200ms"}}}}"#,
        ip(block, 0)
    );
    assert_eq!(put(api, "/v1/agent/service/register", &body).await.0, 200);
    eventually("the TCP check of its own target passes", || async {
        health("probe").await.is_some_and(|(s, _)| s == "passing")
    })
    .await;
    let (code, body) = put(api, "/v1/agent/check/pass/service:probe", "").await;
    assert_eq!(code, 409, "a report for a check that is not TTL: {body}");
    // Deregistered by its service name, as a client relying on Consul's default id does.
    assert_eq!(put(api, "/v1/agent/service/deregister/probe", "").await.0, 200);
    eventually("it leaves the peer", || async { health("probe").await.is_none() }).await;

    for (body, what) in [
        (r#"{"Name": "x", "Port": 1, "Check": {"Args": ["/bin/true"], "Interval": "1s"}}"#, "Args"),
        (r#"{"Name": "x", "Port": 1, "Check": {"GRPC": "127.0.0.1:1", "Interval": "1s"}}"#, "GRPC"),
        (r#"{"Name": "x", "Port": 1, "Check": {"HTTP": "https://127.0.0.1/", "Interval": "1s"}}"#, "https"),
        (r#"{"Name": "x", "Port": 1, "Checks": [{"TTL": "5s"}, {"TTL": "6s"}]}"#, "one check"),
        (r#"{"Name": "x", "Port": 1, "Kind": "connect-proxy"}"#, "Connect"),
        (r#"{"Name": "x", "Port": 1, "Check": {"TCP": "db.example:5432", "Interval": "1s"}}"#, "resolve"),
        (r#"{"Name": "x"}"#, "Port"),
        ("{not json", "JSON"),
    ] {
        let (code, reply) = put(api, "/v1/agent/service/register", body).await;
        assert_eq!(code, 400, "{body}: {reply}");
        assert!(reply.contains(what), "{body}: {reply}");
    }
    assert_eq!(put(api, "/v1/agent/check/pass/service:nosuch", "").await.0, 404);
    assert_eq!(put(api, "/v1/agent/service/deregister/nosuch", "").await.0, 404);
    app.abort();
    mesh.stop().await;
}

/// Prometheus itself (Debian's package; .ci/run installs it) discovers scrape targets
/// with `http_sd_configs` pointed at an agent: every healthy instance with its labels,
/// and an instance whose app dies leaves at the next refresh.
async fn prometheus_http_sd_lists_every_healthy_instance() {
    let block = common::block("prometheus_http_sd_lists_every_healthy_instance");
    let (ports, apps, mesh) = web_mesh(block).await;
    let api = mesh.agent(1).api_addr();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: web\n    http_sd_configs:\n      \
         - url: http://{api}/v1/prometheus/targets?service=web\n        refresh_interval: 1s\n"
    );
    let prometheus = Scraper::prometheus(ip(block, 99), &config);
    let address = |i: usize| SocketAddr::new(ip(block, i), ports[i]).to_string();
    let discovered = |targets: &[serde_json::Map<String, serde_json::Value>]| {
        let mut got: Vec<String> =
            targets.iter().filter_map(|t| t.get("__address__")?.as_str().map(str::to_owned)).collect();
        got.sort();
        got
    };
    let mut all: Vec<String> = (0..3).map(address).collect();
    all.sort();
    eventually("Prometheus discovers all three instances", || async { discovered(&prometheus.targets().await) == all })
        .await;
    let targets = prometheus.targets().await;
    let canary = targets
        .iter()
        .find(|t| t.get("__address__").and_then(|a| a.as_str()) == Some(address(0).as_str()))
        .expect("the canary is a target");
    let label = |name: &str| canary.get(name).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    assert_eq!(label("__meta_murmur_service"), "web");
    assert_eq!(label("__meta_murmur_tags"), ",canary,");
    assert_eq!(label("__meta_murmur_health"), "passing");
    assert_eq!(label("__meta_murmur_attribute_build"), "b0");
    assert_eq!(label("__meta_murmur_node"), mesh.agent(0).name());
    // The app behind instance 1 dies: its check fails, and it leaves the targets.
    apps[1].abort();
    let gone = eventually("the dead instance leaves Prometheus's targets", || async {
        let got = discovered(&prometheus.targets().await);
        got.len() == 2 && !got.contains(&address(1))
    })
    .await;
    eprintln!(
        "a dead instance left Prometheus's targets {gone:?} after its app died (check every 200 ms, refresh 1 s; Prometheus passes discovery updates on at most every 5 s)"
    );
    for app in apps {
        app.abort();
    }
    mesh.stop().await;
}
