//! 10,000 concurrent connections through one sidecar: `cargo bench --bench conns`
//! (needs nginx, which `benches/peers.sh` installs). A client sidecar and a server
//! sidecar (the real binary, mutual TLS) front nginx; this process opens connections
//! through the client sidecar in steps of 2,500 up to `MURMUR_CONNS` (default 10,000),
//! each an HTTP/1.1 keep-alive connection that must answer 200, then keeps every one
//! busy (a request on each, round after round) for 20 s, then closes them all. It prints
//! both sidecars' RSS at every step, through the hold and 5 s and 60 s after the close
//! (with KB per idle connection and RSS after the close against idle), and fails if
//! any request fails or a connection outlives its client. (RSS after the close shows
//! what the allocator keeps, not live connections: the sidecar's own count of active
//! connections is checked instead.) nginx runs as its own process so that the backend's sockets do not
//! count against this process's open-file limit.

use std::net::{IpAddr, SocketAddr};
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{agent_command, keygen, murmur, rss_mb, start, write_json};

const CLIENT: &str = "127.69.0.1";
const SERVER: &str = "127.69.0.2";
const BACKEND: &str = "127.69.0.3";

/// One request on a keep-alive connection; the response is nginx's fixed 2-byte body.
async fn request(s: &mut TcpStream) -> bool {
    if s.write_all(b"GET / HTTP/1.1\r\nHost: conns\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\nok") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    got.starts_with(b"HTTP/1.1 200")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let target: usize = std::env::var("MURMUR_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("murmur-conns-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("nginx")).expect("scratch directory");
    let d = |p: &str| dir.join(p).to_string_lossy().into_owned();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 40000;\npid {n}/nginx.pid;\n\
         error_log {n}/error.log warn;\nevents {{ worker_connections 30000; }}\nhttp {{\n  access_log off;\n  \
         client_body_temp_path {n};\n  proxy_temp_path {n};\n  fastcgi_temp_path {n};\n  uwsgi_temp_path {n};\n  \
         scgi_temp_path {n};\n  keepalive_requests 1000000;\n  keepalive_timeout 300s;\n  server {{\n    \
         listen {BACKEND}:8080 backlog=4096;\n    location / {{ return 200 \"ok\"; }}\n  }}\n}}\n",
        n = d("nginx")
    );
    std::fs::write(dir.join("nginx/nginx.conf"), conf).expect("nginx config");
    let _nginx = start(
        "nginx",
        Command::new("nginx")
            .args(["-p", &d("nginx"), "-c", &d("nginx/nginx.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    murmur(&["ca", "init", "--dir", &d("ca")]);
    murmur(&["cert", "issue", "--ca-dir", &d("ca"), "--name", "client", "--service", "loadgen", "--out", &d("client")]);
    murmur(&["cert", "issue", "--ca-dir", &d("ca"), "--name", "server", "--service", "web", "--out", &d("server")]);
    let key = keygen();
    let agent = |name: &str, ip: &str, extra: &[String]| {
        start(
            name,
            agent_command(name, ip, &key, Some(&d(name))).args(extra).stdout(Stdio::null()).stderr(Stdio::null()),
        )
    };
    let server = agent("server", SERVER, &["--service".into(), format!("web:8080,addr={BACKEND},check=none")]);
    let client = agent(
        "client",
        CLIENT,
        &[
            "--seed".into(),
            format!("{SERVER}:7946"),
            "--service".into(),
            "loadgen:1,check=none".into(),
            "--upstream".into(),
            format!("web:80,listen={CLIENT}:8080,max-connections=20000,max-pending=20000,idle-timeout=300s"),
        ],
    );
    let (cpid, spid) = (client.pid(), server.pid());
    let addr: SocketAddr = (CLIENT.parse::<IpAddr>().expect("ip"), 8080).into();
    let start = Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            if request(&mut s).await {
                break;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the client sidecar never reached nginx");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut rows = Vec::new();
    let show = |label: String, rows: &mut Vec<serde_json::Value>| {
        let (c, s) = (rss_mb(cpid), rss_mb(spid));
        println!("| {label} | {c:.1} MB | {s:.1} MB |");
        rows.push(serde_json::json!({"at": label, "client_rss_mb": c, "server_rss_mb": s}));
    };
    println!("| connections open | client sidecar RSS | server sidecar RSS |\n|---|---|---|");
    show("0".into(), &mut rows);
    let mut conns: Vec<TcpStream> = Vec::with_capacity(target);
    while conns.len() < target {
        let step = 2500.min(target - conns.len());
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..step {
            opening.spawn(async move {
                let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
                if request(&mut s).await {
                    Ok(s)
                } else {
                    Err("first request failed".to_owned())
                }
            });
        }
        while let Some(r) = opening.join_next().await {
            match r.expect("task") {
                Ok(s) => conns.push(s),
                Err(e) => panic!("connection {} of {target}: {e}", conns.len() + 1),
            }
        }
        show(format!("{}", conns.len()), &mut rows);
    }
    // Hold: every connection makes a request every 2 s (about 5,000 requests/s in all).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut busy = tokio::task::JoinSet::new();
    for (i, mut s) in std::mem::take(&mut conns).into_iter().enumerate() {
        busy.spawn(async move {
            // Spread the connections over the 2 s period.
            tokio::time::sleep(Duration::from_micros((i as u64 * 2_000_000) / target as u64)).await;
            let (mut ok, mut failed) = (0u64, 0u64);
            while tokio::time::Instant::now() < deadline {
                if request(&mut s).await {
                    ok += 1;
                } else {
                    failed += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            (s, ok, failed)
        });
    }
    for t in [5, 10, 15] {
        tokio::time::sleep_until(deadline - Duration::from_secs(20 - t)).await;
        show(format!("{target}, {t} s into the hold"), &mut rows);
    }
    let (mut ok, mut failed) = (0, 0);
    while let Some(r) = busy.join_next().await {
        let (s, o, f) = r.expect("task");
        ok += o;
        failed += f;
        conns.push(s);
    }
    show(format!("{target}, end of the hold ({ok} requests, {failed} failed)"), &mut rows);
    assert_eq!(failed, 0, "requests failed during the hold");
    drop(conns);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let upstreams = murmur::client::ApiClient::new((CLIENT.parse::<IpAddr>().expect("ip"), 8500).into())
        .get("/v1/upstreams")
        .await
        .unwrap_or_default();
    let active = serde_json::from_str::<Vec<murmur::client::UpstreamJson>>(&upstreams)
        .ok()
        .map(|ups| ups.iter().map(|u| u.active).sum::<u64>());
    show(format!("0 (all closed, 5 s later; the client sidecar counts {active:?} active)"), &mut rows);
    assert_eq!(active, Some(0), "every proxied connection ended once its client closed");
    tokio::time::sleep(Duration::from_secs(55)).await;
    show("0 (all closed, 60 s later)".into(), &mut rows);
    // Per idle connection: RSS with every connection open (before the hold) less RSS
    // with none; after the close: RSS a minute later against RSS before any opened.
    let rss =
        |at: &str, who: &str| rows.iter().find(|r| r["at"] == at).and_then(|r| r[who].as_f64()).unwrap_or(f64::NAN);
    let mut summary = serde_json::Map::new();
    for who in ["client_rss_mb", "server_rss_mb"] {
        let (idle, open, after) =
            (rss("0", who), rss(&target.to_string(), who), rss("0 (all closed, 60 s later)", who));
        let per_conn_kb = (open - idle) * 1024.0 / target as f64;
        let back = after / idle;
        println!("{who}: {per_conn_kb:.1} KB per idle connection; a minute after the close at {back:.2}× idle RSS");
        summary.insert(
            who.into(),
            serde_json::json!({"kb_per_idle_connection": per_conn_kb, "after_close_over_idle": back}),
        );
    }
    rows.push(serde_json::Value::Object(summary));
    write_json("conns", &rows.into());
    let _ = std::fs::remove_dir_all(&dir);
}
