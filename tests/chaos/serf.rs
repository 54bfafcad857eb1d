//! The Serf comparison: the membership scenarios with Serf's agents in place of
//! murmur's, for RELIABILITY.md's figures. Opt-in (ignored by default): they need Serf
//! (`apt-get install serf`) and take minutes.

use std::process::{Command, Stdio};

use crate::net::{skip, Net, Seen};
use crate::{kill_and_cut, loss, partition_restart_seed};

/// For the Serf runs: says loudly that Serf is missing; returns true when it must skip.
fn skip_serf(test: &str) -> bool {
    if skip(test) {
        return true;
    }
    let present = Command::new("sh").args(["-c", "command -v serf"]).output().is_ok_and(|o| o.status.success());
    if !present {
        eprintln!("\n*** SKIPPED {test}: Serf is not installed (apt-get install serf) ***\n");
    }
    !present
}

/// Serf in the same scenario, for the figures beside murmur's (RELIABILITY.md). Not
/// run by default: it needs Serf (`apt-get install serf`) and takes minutes.
fn serf_kill_and_cut() {
    if skip_serf("serf_kill_and_cut") {
        return;
    }
    kill_and_cut(true, "sa", 26);
}

fn serf_loss() {
    if skip_serf("serf_loss") {
        return;
    }
    loss(true, "sl", 27);
}

fn serf_partition_restart_seed() {
    if skip_serf("serf_partition_restart_seed") {
        return;
    }
    partition_restart_seed(true, "sp", 28);
}

impl Net {
    /// Starts a Serf agent named `name` in host `i`'s namespace, joining through hosts
    /// 0 and 1 (retried, as murmur retries its seeds), with Serf's default LAN timing.
    pub(crate) fn start_serf(&mut self, i: usize, name: &str) {
        let ip = self.ip(i);
        let mut cmd = self.in_host(i);
        cmd.args(["serf", "agent"])
            .args([format!("-node={name}"), format!("-bind={ip}:7946"), "-rpc-addr=127.0.0.1:7373".into()])
            .args(["-retry-interval=1s", "-log-level=warn"]);
        for seed in [0, 1].into_iter().filter(|&s| s != i) {
            cmd.arg(format!("-retry-join={}:7946", self.ip(seed)));
        }
        let log = self.log(&format!("serf-{i}"));
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("serf starts");
        self.agents[i] = Some(child);
    }

    /// `serf members -format=json` in host `i`: `{"members": [{"name", "addr", "status"}]}`.
    pub(crate) fn serf_members_seen_by(&self, i: usize) -> Vec<Seen> {
        let out = self.in_host(i).args(["serf", "members", "-format=json", "-rpc-addr=127.0.0.1:7373"]).output();
        let json: serde_json::Value =
            out.ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or(serde_json::Value::Null);
        let field = |m: &serde_json::Value, k: &str| m[k].as_str().unwrap_or_default().to_owned();
        json["members"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| {
                        let addr = field(m, "addr");
                        let ip = addr.rsplit_once(':').map_or(addr.clone(), |(ip, _)| ip.to_owned());
                        Seen { name: field(m, "name"), address: ip, status: field(m, "status") }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The Serf runs, ignored unless asked for: `cargo test --test chaos serf -- --ignored
/// --nocapture` (they need Serf and take minutes).
pub(crate) fn trials() -> Vec<libtest_mimic::Trial> {
    let runs: [(&str, fn()); 3] = [
        ("serf_kill_and_cut", serf_kill_and_cut),
        ("serf_loss", serf_loss),
        ("serf_partition_restart_seed", serf_partition_restart_seed),
    ];
    runs.into_iter()
        .map(|(name, run)| {
            libtest_mimic::Trial::test(name, move || {
                run();
                Ok(())
            })
            .with_ignored_flag(true)
        })
        .collect()
}
