//! The `/ui` dashboard in a real headless browser (Debian's chromium, driven through
//! chromedriver's WebDriver protocol; .ci/run installs both): it lists the members and
//! instances and counts the calls made through a sidecar per endpoint, turns a killed
//! agent's row dead and drops its endpoint without a reload, filters from the keyboard,
//! and is saved as a screenshot. Ignored, saying so, without chromedriver (and failing
//! under CI, whose .ci/run installs it).

mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::trials::{self, trial};
use common::{call, echo_app, ip, tcp_apps, with_proxy, TestMesh, WAIT};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() -> ExitCode {
    trials::run(vec![trial(
        "the_dashboard_shows_the_cluster_live_in_a_real_browser",
        trials::program("chromedriver", "chromium chromium-driver"),
        false,
        || trials::block_on(the_dashboard_shows_the_cluster_live_in_a_real_browser()),
    )])
}

/// chromedriver in a process group of its own with the browser it starts: the whole
/// group is killed on drop, so a failing test leaves no browser behind.
struct Driver {
    child: Child,
    addr: SocketAddr,
    profile: std::path::PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(group) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One WebDriver call: `method path` with a JSON body; the reply's `value`.
async fn webdriver(driver: SocketAddr, method: &str, path: &str, body: Value) -> Value {
    let call = async {
        let mut s = tokio::net::TcpStream::connect(driver).await.ok()?;
        let body = if body.is_null() { String::new() } else { body.to_string() };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {driver}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.ok()?;
        // chromedriver keeps the connection open: read the head, then Content-Length bytes.
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let head_end = loop {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            raw.extend_from_slice(&buf[..n]);
            if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().to_owned()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while raw.len() < head_end + length {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
        serde_json::from_slice::<Value>(&raw[head_end..]).ok()
    };
    let reply = tokio::time::timeout(Duration::from_secs(30), call).await.ok().flatten();
    reply.map(|v| v["value"].clone()).unwrap_or(Value::Null)
}

/// A free port on 127.0.0.1 for chromedriver (which cannot be given port 0 and report
/// the port it took). Between this check and chromedriver's bind only another bind on
/// 127.0.0.1 could take it: every other TCP bind of the tests is on its own 127.x block.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Calls made through agent 0's sidecar before the page is read.
const CALLS: u64 = 6;

async fn the_dashboard_shows_the_cluster_live_in_a_real_browser() {
    let block = common::block("the_dashboard_shows_the_cluster_live_in_a_real_browser");
    let (ports, mut apps) = tcp_apps(block, 3).await;
    // Agent 0 proxies `echo`, which agents 1 and 2 serve through their sidecars.
    let mut echo_ports = vec![0];
    for i in 1..3 {
        let (port, app) = echo_app(ip(block, i), "echo").await;
        echo_ports.push(port);
        apps.push(app);
    }
    let ca = murmur::pki::Ca::generate().expect("a CA");
    let mut mesh = TestMesh::start_with(
        45,
        3,
        |i| {
            let mut specs = vec![format!("web:{},tags=v{i},interval=200ms,timeout=150ms", ports[i])];
            specs.push(format!("db:{},check=none", 5432));
            if i > 0 {
                specs.push(format!("echo:{},check=none", echo_ports[i]));
            }
            specs
        },
        |cfg| match cfg.node.name.as_str() {
            "agent-0" => with_proxy(cfg, 45, &ca, Some("web"), &["web"], &["echo:80"]),
            _ => with_proxy(cfg, 45, &ca, Some("echo"), &["echo", "web"], &[]),
        },
    )
    .await;
    mesh.converge(3).await;
    let (_, ok) = mesh
        .agent(0)
        .registry()
        .wait_for(WAIT, |s| s.lookup(&"echo".parse().expect("name"), &Default::default()).len() == 2)
        .await;
    assert!(ok, "agent 0 never saw both echo instances");
    let vip = SocketAddr::from(([127, 201, block, 1], 80));
    for _ in 0..CALLS {
        assert_eq!(call(vip, b"ping").await.expect("a call through the sidecar"), "echo", "the greeting");
    }
    let port = free_port();
    let profile = std::env::temp_dir().join(format!("murmur-chromium-{}", std::process::id()));
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), profile };
    let d = driver.addr;
    let started = Instant::now();
    let session = loop {
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1400,900",
                     format!("--user-data-dir={}", driver.profile.display())]
        }}}});
        let v = webdriver(d, "POST", "/session", caps).await;
        if let Some(id) = v["sessionId"].as_str() {
            break id.to_owned();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no browser session: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let s = format!("/session/{session}");
    let ui = format!("http://{}/ui", mesh.agent(0).api_addr());
    webdriver(d, "POST", &format!("{s}/url"), json!({ "url": ui })).await;
    let script = |js: &str| json!({ "script": js, "args": [] });
    let rows_js = "return Array.from(document.querySelectorAll('#members tbody tr')).map(r => r.dataset.name + '=' + r.dataset.status).sort()";
    let until = |what: &'static str, want: Vec<String>, js: &'static str| {
        let s = s.clone();
        async move {
            let start = Instant::now();
            loop {
                let got = webdriver(d, "POST", &format!("{s}/execute/sync"), script(js)).await;
                let got: Vec<String> = got
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                if got == want {
                    return start.elapsed();
                }
                assert!(start.elapsed() < Duration::from_secs(20), "{what}: the page shows {got:?}, not {want:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let alive: Vec<String> = (0..3).map(|i| format!("agent-{i}=alive")).collect();
    until("three alive members", alive, rows_js).await;
    let instances_js = "return Array.from(document.querySelectorAll('#services tbody tr')).filter(r => r.dataset.service == 'web').map(r => r.dataset.health)";
    until("three passing web instances", vec!["passing".into(); 3], instances_js).await;
    let output_js = "return [document.querySelector('#services tbody tr[data-service=web] td.output').textContent.length > 0 ? 'output' : 'none']";
    until("each instance shows its check output", vec!["output".into()], output_js).await;
    // The upstream table: both endpoints, every call counted, a connect latency each.
    // A row's connect latency reads `p50 / p99 ms`, both numbers, and above zero once the
    // endpoint has carried a connection.
    let upstreams_js = "const latency_ok = r => { const m = r.cells[7].textContent.match(/^([0-9.]+) \\/ ([0-9.]+) ms$/); \
         return m != null && (Number(r.dataset.connections) == 0 || Number(m[2]) > 0); }; \
         const rows = Array.from(document.querySelectorAll('#upstreams tbody tr')).filter(r => r.dataset.upstream == 'echo'); \
         return rows.map(r => r.dataset.instance + (latency_ok(r) ? ' latency' : ' none')).sort() \
         .concat(['connections=' + rows.reduce((n, r) => n + Number(r.dataset.connections), 0), \
                  'bytes=' + rows.reduce((n, r) => n + Number(r.dataset.bytes), 0)])";
    let endpoint = |i: usize| format!("agent-{i}-{} latency", echo_ports[i]);
    // Each call: 4 bytes sent, the 5-byte greeting and the 4-byte echo received.
    let want = vec![endpoint(1), endpoint(2), format!("connections={CALLS}"), format!("bytes={}", CALLS * 13)];
    until("both echo endpoints with every call", want, upstreams_js).await;

    // Agent 2 is killed: its row turns dead on the page, which is never reloaded.
    let two = mesh.agents[2].take().expect("running");
    two.kill().await;
    let want: Vec<String> = vec!["agent-0=alive".into(), "agent-1=alive".into(), "agent-2=dead".into()];
    let took = until("agent 2 dead", want, rows_js).await;
    eprintln!("the page showed agent 2 dead {took:?} after it was killed, without a reload");
    // Its endpoint leaves agent 0's upstream table; the calls made on agent 1 remain.
    let upstream_rows_js =
        "return Array.from(document.querySelectorAll('#upstreams tbody tr')).map(r => r.dataset.instance)";
    until("agent 2's endpoint gone", vec![format!("agent-1-{}", echo_ports[1])], upstream_rows_js).await;

    let shot = webdriver(d, "GET", &format!("{s}/screenshot"), Value::Null).await;
    let png = base64::engine::general_purpose::STANDARD.decode(shot.as_str().unwrap_or_default()).expect("a PNG");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, &png).expect("save the screenshot");
    eprintln!("screenshot: {} ({} bytes)", path.display(), png.len());
    // Keyboard: the filter takes typed text and narrows every table.
    let found =
        webdriver(d, "POST", &format!("{s}/element"), json!({"using": "css selector", "value": "#filter"})).await;
    let element = found.as_object().and_then(|o| o.values().next()).and_then(|v| v.as_str()).expect("the filter box");
    webdriver(d, "POST", &format!("{s}/element/{element}/value"), json!({ "text": "agent-1" })).await;
    until("the filter keeps agent 1's row", vec!["agent-1=alive".into()], rows_js).await;
    let focused =
        webdriver(d, "POST", &format!("{s}/execute/sync"), script("return [document.activeElement.id]")).await;
    assert_eq!(focused, json!(["filter"]));

    webdriver(d, "DELETE", &s, Value::Null).await;
    drop(driver);
    for app in apps {
        app.abort();
    }
    mesh.stop().await;
}
