//! `murmur simulate` at 1,000 agents, with kills, without loss and at 10% and 30% loss,
//! and idle from a converged start: the scale the agent cannot be tested at as
//! processes on one machine. It runs the release
//! binary (the simulation is CPU-bound and a debug build is about eight times slower),
//! building it first if needed. Runs are seeded and deterministic, so these bounds hold
//! or fail the same way every time for the same code.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// The release binary, built once for all the tests of this file.
fn release_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(build_release).clone()
}

fn build_release() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--bin", "murmur"])
        .current_dir(&root)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "the release build failed");
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    target.join("release").join("murmur")
}

/// Runs one simulation, bounded in time, and returns its JSON report.
fn simulate(args: &[&str]) -> Value {
    let mut child = Command::new(release_binary())
        .arg("simulate")
        .args(args)
        .arg("--json")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        if child.try_wait().expect("wait works").is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("murmur simulate {args:?} did not finish within 600 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "murmur simulate {args:?} failed");
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    println!("simulate {args:?}: {report}");
    report
}

fn f(r: &Value, key: &str) -> f64 {
    r[key].as_f64().unwrap_or_else(|| panic!("{key} missing or null in {r}"))
}

#[test]
fn a_thousand_agents_converge_detect_kills_and_spread_changes() {
    let r = simulate(&["--nodes", "1000", "--kill", "10", "--duration", "40s", "--seed", "7"]);
    assert!(f(&r, "converged_s") <= 5.0, "convergence (goal: 5 s)");
    assert_eq!(r["kills_detected"], r["kills"], "every kill seen dead by every live agent");
    assert!(f(&r, "detect_p50_s") <= 1.5, "detection p50 (goal: 1.5 s)");
    assert!(f(&r, "detect_p99_s") <= 2.5, "detection p99 (goal: 2.5 s)");
    assert!(f(&r, "spread_p99_s") <= 1.0, "spread p99 (goal: 1 s)");
    assert_eq!(f(&r, "false_dead"), 0.0);
    assert!(f(&r, "max_datagram") <= 1300.0, "datagrams stay under the limit");
}

#[test]
fn a_thousand_agents_at_10_percent_loss_give_no_false_verdict() {
    let r = simulate(&["--nodes", "1000", "--kill", "5", "--loss", "10", "--duration", "60s", "--seed", "7"]);
    assert_eq!(r["kills_detected"], r["kills"]);
    assert!(f(&r, "detect_p99_s") <= 4.0, "detection p99 at 10% loss (goal: 4 s)");
    assert!(f(&r, "spread_p99_s") <= 1.5, "spread p99 at 10% loss");
    assert_eq!(f(&r, "false_dead"), 0.0, "false dead verdicts at 10% loss (goal: 0)");
}

#[test]
fn a_thousand_agents_at_30_percent_loss_hold_together() {
    let r = simulate(&["--nodes", "1000", "--kill", "5", "--loss", "30", "--duration", "60s", "--seed", "7"]);
    assert_eq!(r["kills_detected"], r["kills"], "every kill seen dead by every live agent");
    assert!(f(&r, "detect_p99_s") <= 10.0, "detection p99 at 30% loss");
    assert!(f(&r, "spread_p99_s") <= 2.0, "spread p99 at 30% loss");
    assert_eq!(f(&r, "false_dead"), 0.0, "false dead verdicts at 30% loss (goal: 0)");
    // The storm that a network turning this lossy once set off (14 KB/s per agent, 50
    // false verdicts) must not come back.
    assert!(f(&r, "bytes_per_agent_per_s") <= 8000.0, "bytes per agent at 30% loss");
}

#[test]
fn a_thousand_agents_idle_send_under_2_kb_per_second_each() {
    // Idle but for one state change per second across the cluster, from a converged
    // start: the cost of membership itself, without the mass join's tail.
    let r = simulate(&["--nodes", "1000", "--warm", "--duration", "60s", "--seed", "7"]);
    assert!(f(&r, "bytes_per_agent_per_s") <= 2000.0, "bytes per agent, idle (goal: 2 KB/s)");
    assert!(f(&r, "spread_p99_s") <= 1.0, "spread p99 (goal: 1 s)");
    assert_eq!(f(&r, "false_dead"), 0.0);
}
