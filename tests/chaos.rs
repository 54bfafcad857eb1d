//! Multi-host tests: each host is a network namespace with one murmur agent (the real
//! binary), joined by a bridge that lives in its own namespace, on 198.18.0.0/15.
//! nftables rules in the bridge namespace cut hosts off and drop packets. These tests
//! need root; without it they say so loudly and skip. Every namespace and process they
//! make is removed when the harness drops, also on failure.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use murmur::api::types::MemberJson;

/// Every wait is bounded by this.
const WAIT: Duration = Duration::from_secs(30);

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn tools_present() -> bool {
    ["ip", "nft"]
        .iter()
        .all(|t| Command::new("sh").args(["-c", &format!("command -v {t}")]).output().is_ok_and(|o| o.status.success()))
}

/// Says loudly why a test did not run; returns true when it must skip.
fn skip(test: &str) -> bool {
    if !is_root() {
        eprintln!("\n*** SKIPPED {test}: multi-host tests need root (network namespaces) ***\n");
        return true;
    }
    if !tools_present() {
        assert!(std::env::var_os("CI").is_none(), "CI must install iproute2 and nftables (.ci/run does)");
        eprintln!("\n*** SKIPPED {test}: `ip` and `nft` are needed (apt-get install iproute2 nftables) ***\n");
        return true;
    }
    false
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("command runs");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A set of hosts on one bridge.
struct Net {
    prefix: String,
    subnet: u8,
    hosts: usize,
    agents: Vec<Option<Child>>,
    key: String,
}

impl Net {
    /// `hosts` namespaces named `<prefix>h<i>` on 198.18.<subnet>.0/24, plus the bridge
    /// namespace `<prefix>br`.
    fn new(tag: &str, subnet: u8, hosts: usize) -> Net {
        let prefix = format!("mm{}{tag}", std::process::id() % 10_000);
        let net = Net { prefix, subnet, hosts, agents: Vec::new(), key: keygen() };
        net.teardown();
        let br = net.bridge_ns();
        sh(&["ip", "netns", "add", &br]);
        sh(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &br, "link", "set", "br0", "up"]);
        net.nft("add table bridge chaos");
        net.nft("add chain bridge chaos fwd_rules { type filter hook forward priority 0; policy accept; }");
        for i in 0..hosts {
            let ns = net.host_ns(i);
            let (a, b) = (format!("{}a{i}", net.prefix), format!("{}b{i}", net.prefix));
            sh(&["ip", "netns", "add", &ns]);
            sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
            sh(&["ip", "link", "set", &a, "netns", &ns]);
            sh(&["ip", "link", "set", &b, "netns", &br]);
            sh(&["ip", "-n", &ns, "link", "set", &a, "name", "eth0"]);
            sh(&["ip", "-n", &br, "link", "set", &b, "name", &format!("p{i}")]);
            sh(&["ip", "-n", &br, "link", "set", &format!("p{i}"), "master", "br0", "up"]);
            sh(&["ip", "-n", &ns, "addr", "add", &format!("{}/24", net.ip(i)), "dev", "eth0"]);
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn bridge_ns(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn host_ns(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    fn ip(&self, i: usize) -> String {
        format!("198.18.{}.{}", self.subnet, 10 + i)
    }

    /// Starts (or restarts) the agent of host `i`, seeded by hosts 0 and 1.
    fn start(&mut self, i: usize) {
        self.start_as(i, &format!("host-{i}"), &["--service", &format!("app:{},check=none", 8000 + i)]);
    }

    /// Starts an agent named `name` in host `i`'s namespace (also a task restarted
    /// elsewhere under its old name).
    fn start_as(&mut self, i: usize, name: &str, extra: &[&str]) {
        while self.agents.len() <= i {
            self.agents.push(None);
        }
        let ip = self.ip(i);
        let child = Command::new("ip")
            .args(["netns", "exec", &self.host_ns(i), env!("CARGO_BIN_EXE_murmur"), "agent"])
            .args(["--name", name, "--bind", &format!("{ip}:7946"), "--gossip-key", &self.key])
            .args(["--seed", &format!("{}:7946", self.ip(0)), "--seed", &format!("{}:7946", self.ip(1))])
            .args(["--dns-listen", "127.0.0.1:8600", "--api-listen", "127.0.0.1:8500", "--dns-upstream", "127.0.0.1:1"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent starts");
        self.agents[i] = Some(child);
    }

    /// kill -9 of host `i`'s agent.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The members host `i` knows (empty when its API does not answer).
    fn members_seen_by(&self, i: usize) -> Vec<MemberJson> {
        Command::new("ip")
            .args(["netns", "exec", &self.host_ns(i), env!("CARGO_BIN_EXE_murmur"), "members", "--json"])
            .args(["--api", "127.0.0.1:8500"])
            .output()
            .ok()
            .and_then(|out| serde_json::from_slice(&out.stdout).ok())
            .unwrap_or_default()
    }

    /// The members host `i` sees alive.
    fn alive_seen_by(&self, i: usize) -> Vec<String> {
        self.members_seen_by(i).into_iter().filter(|m| m.status == "alive").map(|m| m.name).collect()
    }

    /// Runs one nft command in the bridge namespace, where every packet between hosts passes.
    fn nft(&self, command: &str) {
        sh(&["ip", "netns", "exec", &self.bridge_ns(), "nft", command]);
    }

    /// Adds a rule to the bridge's forward chain.
    fn add_rule(&self, rule: &str) {
        self.nft(&format!("add rule bridge chaos fwd_rules {rule}"));
    }

    /// Removes every rule: cuts, partitions and loss end.
    fn heal(&self) {
        self.nft("flush chain bridge chaos fwd_rules");
    }

    /// Drops every packet to and from host `i` at the bridge.
    fn cut(&self, i: usize) {
        self.add_rule(&format!("iifname p{i} drop"));
        self.add_rule(&format!("oifname p{i} drop"));
    }

    /// Waits until every host in `observers` sees exactly `alive` as the alive members;
    /// returns how long that took.
    fn until_all_see(&self, observers: &[usize], alive: &[usize], what: &str) -> Duration {
        let mut want: Vec<String> = alive.iter().map(|i| format!("host-{i}")).collect();
        want.sort();
        let start = Instant::now();
        loop {
            let done = observers.iter().all(|&o| {
                let mut seen = self.alive_seen_by(o);
                seen.sort();
                seen == want
            });
            if done {
                return start.elapsed();
            }
            assert!(start.elapsed() < WAIT, "timed out after {WAIT:?} waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn teardown(&self) {
        for i in 0..self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &self.host_ns(i)]).output();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.bridge_ns()]).output();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.agents.len() {
            self.kill(i);
        }
        self.teardown();
    }
}

fn keygen() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_murmur")).arg("keygen").output().expect("keygen");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_killed_or_cut_off_host_is_dropped_by_every_other_host() {
    if skip("a_killed_or_cut_off_host_is_dropped_by_every_other_host") {
        return;
    }
    const HOSTS: usize = 5;
    let mut net = Net::new("a", 20, HOSTS);
    for i in 0..HOSTS {
        net.start(i);
    }
    let all: Vec<usize> = (0..HOSTS).collect();
    let t = net.until_all_see(&all, &all, "every host to see every host");
    eprintln!("5 hosts converged in {t:?}");

    // kill -9 of host 4's agent.
    net.kill(4);
    let t = net.until_all_see(&[0, 1, 2, 3], &[0, 1, 2, 3], "host 4 dropped after kill -9");
    eprintln!("kill -9: every other host dropped host 4 after {t:?}");
    assert!(t < Duration::from_secs(10), "detection took {t:?}");

    // Host 3 cut off the network with its agent still running.
    net.cut(3);
    let t = net.until_all_see(&[0, 1, 2], &[0, 1, 2], "host 3 dropped after being cut off");
    eprintln!("cut off: every other host dropped host 3 after {t:?}");
    assert!(t < Duration::from_secs(10), "detection took {t:?}");

    // Healed: everyone sees everyone again, host 3 included.
    net.heal();
    let t = net.until_all_see(&[0, 1, 2, 3], &[0, 1, 2, 3], "host 3 back after healing");
    eprintln!("healed: every host saw host 3 again after {t:?}");
}

impl Net {
    /// Drops `percent`% of all packets crossing the bridge (0 removes the rule).
    fn loss(&self, percent: u32) {
        self.heal();
        if percent > 0 {
            self.add_rule(&format!("numgen random mod 100 < {percent} drop"));
        }
    }

    /// Watches every host's view for `dur`; returns how many times some host saw a live
    /// host as not alive (false "dead" verdicts, counted per observer and member).
    fn false_verdicts(&self, dur: Duration) -> usize {
        let mut flagged = std::collections::BTreeSet::new();
        let mut events = 0;
        let start = Instant::now();
        while start.elapsed() < dur {
            for o in 0..self.hosts {
                let seen = self.alive_seen_by(o);
                if seen.is_empty() {
                    continue; // the CLI call itself did not get through in time
                }
                for m in 0..self.hosts {
                    let name = format!("host-{m}");
                    let missing = !seen.contains(&name);
                    if missing && flagged.insert((o, m)) {
                        events += 1;
                        eprintln!("false verdict: host-{o} does not see {name} alive");
                    } else if !missing {
                        flagged.remove(&(o, m));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        events
    }
}

#[test]
fn packet_loss_causes_no_false_dead_verdicts() {
    if skip("packet_loss_causes_no_false_dead_verdicts") {
        return;
    }
    const HOSTS: usize = 5;
    let mut net = Net::new("l", 21, HOSTS);
    for i in 0..HOSTS {
        net.start(i);
    }
    let all: Vec<usize> = (0..HOSTS).collect();
    net.until_all_see(&all, &all, "every host to see every host");
    let secs: u64 = std::env::var("MURMUR_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let mut results = Vec::new();
    for percent in [10, 30, 50] {
        net.loss(percent);
        let n = net.false_verdicts(Duration::from_secs(secs));
        eprintln!("{percent}% loss for {secs} s: {n} false dead verdicts");
        results.push((percent, n));
        net.loss(0);
        net.until_all_see(&all, &all, "recovery after loss");
    }
    // The goal is none at 10% and 30%; 50% is reported, not asserted (Serf starts to
    // fail there too).
    for (percent, n) in results.into_iter().filter(|(p, _)| *p <= 30) {
        assert_eq!(n, 0, "{percent}% loss caused {n} false dead verdicts");
    }
}

impl Net {
    /// Drops every packet between the two groups of hosts.
    fn partition(&self, left: &[usize], right: &[usize]) {
        for a in left {
            for b in right {
                for (from, to) in [(a, b), (b, a)] {
                    self.add_rule(&format!("iifname p{from} oifname p{to} drop"));
                }
            }
        }
    }

    /// The address host `i` sees for member `name`, if alive.
    fn address_seen_by(&self, i: usize, name: &str) -> Option<String> {
        self.members_seen_by(i).into_iter().find(|m| m.name == name && m.status == "alive").map(|m| m.address)
    }
}

#[test]
fn partitions_heal_restarts_move_and_joins_survive_a_dead_seed() {
    if skip("partitions_heal_restarts_move_and_joins_survive_a_dead_seed") {
        return;
    }
    const HOSTS: usize = 7;
    let mut net = Net::new("p", 22, HOSTS);
    for i in 0..5 {
        net.start(i);
    }
    let five: Vec<usize> = (0..5).collect();
    net.until_all_see(&five, &five, "every host to see every host");

    // Partition into {0, 1} and {2, 3, 4}: each side keeps serving its own side.
    let secs: u64 = std::env::var("MURMUR_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    net.partition(&[0, 1], &[2, 3, 4]);
    net.until_all_see(&[0, 1], &[0, 1], "the left side to see only itself");
    net.until_all_see(&[2, 3, 4], &[2, 3, 4], "the right side to see only itself");
    std::thread::sleep(Duration::from_secs(secs));
    net.heal();
    let t = net.until_all_see(&five, &five, "everyone to see everyone after healing");
    eprintln!("partition of {secs} s healed: everyone saw everyone after {t:?}");
    assert!(t < Duration::from_secs(10), "healing took {t:?}");

    // Host 4's task is killed and restarted at once on a new address (host 5's).
    net.kill(4);
    let start = Instant::now();
    net.start_as(5, "host-4", &[]);
    let new_ip = net.ip(5);
    loop {
        let moved = (0..4).all(|o| net.address_seen_by(o, "host-4").as_deref() == Some(new_ip.as_str()));
        if moved {
            break;
        }
        assert!(start.elapsed() < WAIT, "the restarted host never replaced its old address");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("restart on a new address: every host saw the new address after {:?}", start.elapsed());

    // The first seed is down when a new host joins: it joins through the second.
    net.kill(0);
    net.start(6);
    // (The agent in host 5's namespace is named host-4.)
    let t = net.until_all_see(&[1, 2, 3, 5, 6], &[1, 2, 3, 4, 6], "host 6 to join with seed 0 down");
    eprintln!("joined through the second seed after {t:?}");
}
