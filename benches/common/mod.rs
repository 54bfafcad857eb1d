//! What every benchmark binary needs: processes that die with the bench, /proc
//! readings, the murmur binary, and the results directory. Each bench includes it with
//! `mod common;` and uses what it needs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use murmur::internals::{ClusterView, NodeView};
use murmur::MemberStatus;
use murmur_protocol::{
    encode_value, keys, Health, HealthRecord, InstanceId, InstanceRecord, Key, NodeName, NodeRecord, ServiceName, Tag,
};

/// The release binary cargo built for this bench.
pub const MURMUR: &str = env!("CARGO_BIN_EXE_murmur");

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    /// Where its output goes, if to a file.
    pub log: Option<PathBuf>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with the process's name if it already exited (a bad config, a port in use).
    pub fn check_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = self.log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
            panic!("{} exited early ({status}); the end of its output:\n{}", self.name, tail.join("\n"));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` with stdin closed (stdout and stderr as the caller set them), named
/// `name` in messages.
pub fn start(name: &str, cmd: &mut Command) -> Proc {
    let child = cmd
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e} (is it installed? benches/peers.sh installs it)"));
    Proc { child, name: name.to_owned(), log: None }
}

/// Starts `program args`, logging to `log`.
pub fn spawn(name: &str, program: &str, args: &[&str], log: &Path) -> Proc {
    spawn_logged(name, Command::new(program).args(args).env("RUST_LOG", "warn"), log)
}

/// Starts `cmd`, its stdout and stderr going to `log` (shown if it exits early).
pub fn spawn_logged(name: &str, cmd: &mut Command, log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    let err = out.try_clone().expect("clone the log handle");
    let mut proc = start(name, cmd.stdout(out).stderr(err));
    proc.log = Some(log.to_owned());
    proc
}

/// `murmur agent` named `name` on `ip`: gossip on port 7946, DNS on 8600, the API on
/// 8500, sealed with `key`, forwarding nowhere; with `certs` (a directory holding
/// `ca.pem`, `cert.pem` and `key.pem` from `murmur cert issue`), a sidecar on 7947 with
/// mutual TLS. Callers add seeds, services and upstreams.
pub fn agent_command(name: &str, ip: impl std::fmt::Display, key: &str, certs: Option<&str>) -> Command {
    agent_command_of(MURMUR, name, ip, key, certs)
}

/// As [`agent_command`], of the murmur binary at `bin` (another build, for a before and
/// after in one run).
pub fn agent_command_of(bin: &str, name: &str, ip: impl std::fmt::Display, key: &str, certs: Option<&str>) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["agent", "--name", name, "--bind", &format!("{ip}:7946"), "--dns-listen", &format!("{ip}:8600")])
        .args(["--api-listen", &format!("{ip}:8500"), "--gossip-key", key, "--dns-upstream", "127.0.0.1:1"])
        .env("RUST_LOG", "warn");
    if let Some(dir) = certs {
        cmd.args(["--proxy-bind", &format!("{ip}:7947"), "--tls-ca", &format!("{dir}/ca.pem")]).args([
            "--tls-cert",
            &format!("{dir}/cert.pem"),
            "--tls-key",
            &format!("{dir}/key.pem"),
        ]);
    }
    cmd
}

/// Runs a command to completion and returns its stdout; panics with stderr on failure.
pub fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e} (is it installed? benches/peers.sh installs it)"));
    assert!(out.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `murmur ARGS` to completion and returns its stdout.
pub fn murmur(args: &[&str]) -> String {
    output(MURMUR, args)
}

/// A fresh gossip key.
pub fn keygen() -> String {
    murmur(&["keygen"]).trim().to_owned()
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_tcp(addr: SocketAddr, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "{what} never listened on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    (tick(11) + tick(12)) as f64 / clock_ticks()
}

/// Clock ticks per second of /proc's CPU times, asked once.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| output("getconf", &["CLK_TCK"]).trim().parse().unwrap_or(100.0))
}

fn status_kb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

/// Resident memory now, MB.
pub fn rss_mb(pid: u32) -> f64 {
    status_kb(pid, "VmRSS:") / 1024.0
}

/// Peak resident memory since start or the last [`reset_peak`], MB.
fn peak_rss_mb(pid: u32) -> f64 {
    status_kb(pid, "VmHWM:") / 1024.0
}

/// Resets a process's peak RSS (`/proc/PID/clear_refs`, value 5), so that the next
/// [`peak_rss_mb`] covers one run.
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// CPU seconds and peak RSS of a set of processes over one run.
pub struct Usage {
    pids: Vec<u32>,
    cpu0: f64,
}

impl Usage {
    pub fn start(pids: Vec<u32>) -> Usage {
        pids.iter().for_each(|&p| reset_peak(p));
        let cpu0 = pids.iter().map(|&p| cpu_seconds(p)).sum();
        Usage { pids, cpu0 }
    }

    /// (CPU seconds, summed peak RSS in MB).
    pub fn finish(self) -> (f64, f64) {
        let (cpu, each) = self.finish_each();
        (cpu, each.iter().sum())
    }

    /// (CPU seconds, each process's peak RSS in MB).
    pub fn finish_each(self) -> (f64, Vec<f64>) {
        let cpu = self.pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>() - self.cpu0;
        (cpu, self.pids.iter().map(|&p| peak_rss_mb(p)).collect())
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// The value of the first line of a Prometheus text exposition that starts with `name`
/// (labels included), 0 when absent.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
}

/// Writes `value` as `benches/results/<prefix>-<unix time>.json` and says where.
pub fn write_json(prefix: &str, value: &serde_json::Value) -> PathBuf {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{prefix}-{unix}.json"));
    match std::fs::write(&path, serde_json::to_string_pretty(value).unwrap_or_default()) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
    path
}

/// A cluster of `nodes` nodes, each running 5 instances: one of `pool` (a service every
/// node runs, 1 in 10 tagged `canary`) and four of its own.
pub fn cluster(nodes: usize) -> ClusterView {
    let nodes = (0..nodes)
        .map(|n| {
            let name = format!("node-{n}");
            let ip = std::net::IpAddr::from([10, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
            let record = NodeRecord {
                name: NodeName::new(&name).expect("valid name"),
                zone: Some(format!("zone-{}", n % 3)),
                agent_version: "bench".into(),
                advertise: ip,
                proxy: Some((ip, 7947).into()),
                started_unix_ms: 1_700_000_000_000 + n as u64,
            };
            let mut values: Vec<(Arc<str>, Arc<str>)> = vec![(keys::NODE.into(), encode_value(&record).into())];
            for k in 0..5 {
                let service = if k == 0 { "pool".to_owned() } else { format!("svc-{n}-{k}") };
                let id = InstanceId::new(&format!("{service}-{n}-{k}")).expect("valid id");
                let tags = if k == 0 && n % 10 == 0 { vec![Tag::new("canary").expect("valid tag")] } else { vec![] };
                let rec = InstanceRecord {
                    service: ServiceName::new(&service).expect("valid service"),
                    instance: id.clone(),
                    address: ip,
                    port: 8000 + k,
                    sidecar: true,
                    tags,
                    attributes: BTreeMap::new(),
                    weight: 1,
                };
                values.push((Key::Instance(id.clone()).render().into(), encode_value(&rec).into()));
                values.push((
                    Key::Health(id).render().into(),
                    encode_value(&HealthRecord::new(Health::Passing, 1, "")).into(),
                ));
            }
            let node = Arc::new(NodeView {
                name: name.clone(),
                generation: 1,
                gossip_addr: (ip, 7946).into(),
                status: MemberStatus::Alive,
                is_self: n == 0,
                values,
            });
            (name, node)
        })
        .collect();
    ClusterView { nodes }
}
