//! The pieces of the side-by-side runner: its settings and scratch directory, tool
//! output parsing and the results files (processes and /proc readings are in
//! benches/common). Each part (proxy, dns, membership) is a module.

pub mod dns;
pub mod membership;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::Command;

pub use crate::common::*;

/// What to run and for how long.
pub struct Settings {
    parts: Vec<String>,
    /// Length of each load run.
    pub secs: u64,
    /// Rounds of each comparison; targets alternate within a round.
    pub rounds: usize,
    /// Membership sizes.
    pub sizes: Vec<usize>,
    /// Threads of each HAProxy.
    pub haproxy_threads: u32,
    /// Another murmur binary to run beside this build (proxy part).
    pub baseline: Option<String>,
}

impl Settings {
    pub fn from_env() -> Settings {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        let list = |v: String| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect::<Vec<_>>();
        Settings {
            parts: list(var("MURMUR_PEERS", "proxy,dns,membership")),
            secs: var("MURMUR_PEERS_SECS", "5").parse().unwrap_or(5).clamp(1, 120),
            rounds: var("MURMUR_PEERS_ROUNDS", "3").parse().unwrap_or(3).clamp(1, 20),
            sizes: list(var("MURMUR_PEERS_SIZES", "10,50,100"))
                .iter()
                .filter_map(|s| s.parse().ok())
                .filter(|n| (3..=250).contains(n))
                .collect(),
            haproxy_threads: var("MURMUR_PEERS_HAPROXY_THREADS", "1").parse().unwrap_or(1).clamp(1, 8),
            baseline: std::env::var("MURMUR_PEERS_BASELINE").ok().filter(|p| !p.is_empty()),
        }
    }

    pub fn wants(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "parts": self.parts, "secs": self.secs, "rounds": self.rounds, "sizes": self.sizes,
            "haproxy_threads": self.haproxy_threads, "baseline": self.baseline,
        })
    }
}

/// A scratch directory for configs, certificates and logs; removed at the end.
pub struct WorkDir(PathBuf);

impl WorkDir {
    pub fn new() -> WorkDir {
        let dir = std::env::temp_dir().join(format!("murmur-peers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        WorkDir(dir)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    pub fn text(&self, rel: &str) -> String {
        self.path(rel).to_string_lossy().into_owned()
    }

    pub fn write(&self, rel: &str, contents: &str) -> String {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create a scratch subdirectory");
        }
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.to_string_lossy().into_owned()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("MURMUR_PEERS_KEEP").is_some() {
            println!("kept the scratch directory {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The machine the figures come from.
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name"))?.split(':').nth(1).map(|m| m.trim().to_owned()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let version = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                let text =
                    String::from_utf8_lossy(if o.stdout.is_empty() { &o.stderr } else { &o.stdout }).into_owned();
                text.lines().next().unwrap_or("").trim().to_owned()
            })
            .unwrap_or_else(|| "not installed".into())
    };
    serde_json::json!({
        "cpu": cpu,
        "cores": cores,
        "kernel": version("uname", "-r"),
        "haproxy": version("haproxy", "-v"),
        "nginx": version("nginx", "-v"),
        "wrk": version("wrk", "-v"),
        "iperf3": version("iperf3", "-v"),
        "dnsperf": version("dnsperf", "-h"),
        "dnsmasq": version("dnsmasq", "-v"),
        "unbound": version("unbound", "-V"),
        "serf": version("serf", "version"),
    })
}

/// Writes `benches/results/peers-<date>.json` and `.md`.
pub fn write_results(json: serde_json::Value, md: &str) {
    let stamp = output("date", &["-u", "+%Y-%m-%dT%H%MZ"]).trim().to_owned();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&dir).expect("create benches/results");
    let json_path = dir.join(format!("peers-{stamp}.json"));
    let md_path = dir.join(format!("peers-{stamp}.md"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&json).unwrap_or_default()).expect("write results");
    let header = format!(
        "# murmur beside its peers, {stamp}\n\nOne run on one machine ({}), every target alternating round by \
         round; medians of the rounds. Absolute figures on a shared machine are noisy: read the ratios.\n",
        json["machine"]["cpu"].as_str().unwrap_or("unknown CPU")
    );
    std::fs::write(&md_path, format!("{header}{md}")).expect("write results");
    println!("{header}{md}");
    println!("wrote {} and {}", json_path.display(), md_path.display());
}

/// Parses wrk's time with its unit (`276.56us`, `1.20ms`, `2.00s`) into microseconds.
pub fn wrk_time_us(text: &str) -> Option<f64> {
    let (num, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v,
        "ms" => v * 1e3,
        "s" => v * 1e6,
        "m" => v * 60e6,
        _ => return None,
    })
}

/// One wrk run: requests per second, p50 and p99 in microseconds, errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct WrkRun {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

pub fn parse_wrk(out: &str) -> WrkRun {
    let mut run = WrkRun::default();
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => run.rps = v.parse().unwrap_or(0.0),
            ["50%", v] => run.p50_us = wrk_time_us(v).unwrap_or(f64::NAN),
            ["99%", v] => run.p99_us = wrk_time_us(v).unwrap_or(f64::NAN),
            ["Socket", "errors:", rest @ ..] => {
                run.errors += rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum::<u64>()
            }
            ["Non-2xx", "or", "3xx", "responses:", v] => run.errors += v.parse::<u64>().unwrap_or(0),
            _ => {}
        }
    }
    run
}
