//! The proxy's figures, measured on loopback with the real binary (release build):
//! `cargo bench --bench proxy_figures`. Two agent processes (a client sidecar with
//! upstreams, a server sidecar fronting three apps of this process) speak QUIC with
//! mutual TLS under a CA made by `murmur ca init`. Each figure runs direct and through
//! the sidecars, alternating, in the same run:
//! - added latency of a small request/response (64 bytes each way, one connection);
//! - bulk throughput of one connection (1 GiB one way) as a share of direct;
//! - new connections per second (connect, 1 byte each way, close; 8 at a time).
//!
//! On a shared 2-core machine the load generator, the apps and both sidecars compete
//! for the same cores: absolute figures are noisy, the ratios less so.
//!
//! `MURMUR_BENCH_ACCESS_LOG=1` runs the client sidecar with `--access-log` (a file in
//! the bench's temporary directory), to compare runs with the log on and off.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{agent_command, keygen, murmur, start, write_json};

const CLIENT: [u8; 4] = [127, 60, 0, 1];
const SERVER: [u8; 4] = [127, 60, 0, 2];

async fn echo_server(l: TcpListener) {
    while let Ok((mut s, _)) = l.accept().await {
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

async fn sink_server(l: TcpListener) {
    while let Ok((mut s, _)) = l.accept().await {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            let _ = s.write_all(&total.to_be_bytes()).await;
        });
    }
}

async fn conn_server(l: TcpListener) {
    while let Ok((mut s, _)) = l.accept().await {
        tokio::spawn(async move {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).await.is_ok() {
                let _ = s.write_all(&b).await;
            }
        });
    }
}

async fn rr(addr: SocketAddr, rounds: usize, h: &mut Histogram<u64>) {
    let mut s = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_nodelay(true).expect("nodelay");
    let req = [7u8; 64];
    let mut resp = [0u8; 64];
    for _ in 0..rounds {
        let t = Instant::now();
        s.write_all(&req).await.expect("write");
        s.read_exact(&mut resp).await.expect("read");
        h.record(t.elapsed().as_nanos() as u64).expect("record");
    }
}

async fn bulk(addr: SocketAddr, bytes: u64) -> f64 {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let chunk = vec![1u8; 256 * 1024];
    let t = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).await.expect("write");
        left -= n as u64;
    }
    s.shutdown().await.expect("shutdown");
    let mut total = [0u8; 8];
    s.read_exact(&mut total).await.expect("count");
    assert_eq!(u64::from_be_bytes(total), bytes, "every byte arrived");
    bytes as f64 * 8.0 / t.elapsed().as_secs_f64() / 1e9
}

async fn conn_rate(addr: SocketAddr, workers: usize, dur: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (done, stop) = (done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect(addr).await else { continue };
                let mut b = [0u8; 1];
                if s.write_all(b"x").await.is_ok() && s.read_exact(&mut b).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let t = Instant::now();
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("murmur-proxy-bench-{}", std::process::id()));
    let d = |p: &str| dir.join(p).to_string_lossy().into_owned();
    murmur(&["ca", "init", "--dir", &d("ca")]);
    murmur(&["cert", "issue", "--ca-dir", &d("ca"), "--name", "client", "--service", "web", "--out", &d("client")]);
    murmur(&[
        "cert",
        "issue",
        "--ca-dir",
        &d("ca"),
        "--name",
        "server",
        "--service",
        "echo",
        "--service",
        "sink",
        "--service",
        "conn",
        "--out",
        &d("server"),
    ]);
    let key = keygen();
    let key = key.as_str();

    let server_ip = std::net::IpAddr::from(SERVER);
    let echo = TcpListener::bind((server_ip, 0)).await.expect("bind");
    let sink = TcpListener::bind((server_ip, 0)).await.expect("bind");
    let conn = TcpListener::bind((server_ip, 0)).await.expect("bind");
    let direct = [echo.local_addr().expect("addr"), sink.local_addr().expect("addr"), conn.local_addr().expect("addr")];
    tokio::spawn(echo_server(echo));
    tokio::spawn(sink_server(sink));
    tokio::spawn(conn_server(conn));

    let agent = |name: &str, ip: [u8; 4], extra: Vec<String>, certs: &str| {
        let ip = std::net::IpAddr::from(ip);
        let mut cmd = agent_command(name, ip, key, Some(&d(certs)));
        cmd.args(extra).stdout(Stdio::null()).stderr(Stdio::null());
        start(name, &mut cmd)
    };
    let server = agent(
        "server",
        SERVER,
        vec![
            "--service".into(),
            format!("echo:{},check=none", direct[0].port()),
            "--service".into(),
            format!("sink:{},check=none", direct[1].port()),
            "--service".into(),
            format!("conn:{},check=none", direct[2].port()),
        ],
        "server",
    );
    let client_ip = std::net::IpAddr::from(CLIENT);
    let access_log = std::env::var_os("MURMUR_BENCH_ACCESS_LOG").map(|_| d("access.log"));
    let proxied: [SocketAddr; 3] = [(client_ip, 18080).into(), (client_ip, 18081).into(), (client_ip, 18082).into()];
    let client = agent(
        "client",
        CLIENT,
        vec![
            "--seed".into(),
            format!("{server_ip}:7946"),
            "--service".into(),
            "web:1,check=none".into(),
            "--upstream".into(),
            format!("echo:80,listen={}", proxied[0]),
            "--upstream".into(),
            format!("sink:81,listen={}", proxied[1]),
            "--upstream".into(),
            format!("conn:82,listen={}", proxied[2]),
        ]
        .into_iter()
        .chain(access_log.iter().flat_map(|p| ["--access-log".to_owned(), p.clone()]))
        .collect(),
        "client",
    );
    let api = murmur::client::ApiClient::new((client_ip, 8500).into());
    let start = Instant::now();
    loop {
        let ready = api.get("/v1/services").await.map(|t| t.matches("\"healthy\":1").count() >= 3).unwrap_or(false);
        if ready {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the client sidecar never saw the server's services");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm up both paths (the QUIC connection is made on first use).
    let mut warm = Histogram::<u64>::new(3).expect("histogram");
    rr(direct[0], 1000, &mut warm).await;
    rr(proxied[0], 1000, &mut warm).await;

    let mut h_direct = Histogram::<u64>::new(3).expect("histogram");
    let mut h_proxy = Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..4 {
        rr(direct[0], 5000, &mut h_direct).await;
        rr(proxied[0], 5000, &mut h_proxy).await;
    }
    let gib = 1u64 << 30;
    let mut tp_direct = Vec::new();
    let mut tp_proxy = Vec::new();
    for _ in 0..2 {
        tp_direct.push(bulk(direct[1], gib).await);
        tp_proxy.push(bulk(proxied[1], gib).await);
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let mut cps_direct = Vec::new();
    let mut cps_proxy = Vec::new();
    for _ in 0..2 {
        cps_direct.push(conn_rate(direct[2], 8, Duration::from_secs(3)).await);
        cps_proxy.push(conn_rate(proxied[2], 8, Duration::from_secs(3)).await);
    }
    let stats = api.get("/v1/upstreams").await.unwrap_or_default();
    let logged = access_log.as_ref().map(|p| std::fs::read_to_string(p).map(|t| t.lines().count()).unwrap_or(0));
    if let Some(lines) = logged {
        println!("access log on: {lines} lines written");
    }
    drop(client);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);

    let (dp50, dp99) = (us(&h_direct, 0.5), us(&h_direct, 0.99));
    let (pp50, pp99) = (us(&h_proxy, 0.5), us(&h_proxy, 0.99));
    println!(
        "\n| figure (loopback, release, mutual TLS between sidecars) | direct | through two sidecars | added / share |"
    );
    println!("|---|---|---|---|");
    println!("| 64 B request/response p50 | {dp50:.1} µs | {pp50:.1} µs | +{:.1} µs |", pp50 - dp50);
    println!("| 64 B request/response p99 | {dp99:.1} µs | {pp99:.1} µs | +{:.1} µs |", pp99 - dp99);
    println!(
        "| bulk, one connection (best of 2 × 1 GiB) | {:.2} Gbit/s | {:.2} Gbit/s | {:.0}% |",
        best(&tp_direct),
        best(&tp_proxy),
        100.0 * best(&tp_proxy) / best(&tp_direct)
    );
    println!(
        "| new connections per second (8 at a time, best of 2 × 3 s) | {:.0}/s | {:.0}/s | {:.0}% |",
        best(&cps_direct),
        best(&cps_proxy),
        100.0 * best(&cps_proxy) / best(&cps_direct)
    );
    let json = serde_json::json!({
        "rr_us": {"direct": {"p50": dp50, "p99": dp99}, "proxied": {"p50": pp50, "p99": pp99}},
        "bulk_gbit_s": {"direct": tp_direct, "proxied": tp_proxy},
        "new_connections_per_s": {"direct": cps_direct, "proxied": cps_proxy},
        "client_upstreams": serde_json::from_str::<serde_json::Value>(&stats).unwrap_or_default(),
        "access_log_lines": logged,
    });
    write_json("proxy", &json);
}
