//! Multi-host tests: each host is a network namespace with one murmur agent (the real
//! binary), joined by a bridge that lives in its own namespace, on 198.18.0.0/15.
//! nftables rules in the bridge namespace cut hosts off and drop packets; `tc netem`
//! delays them where the kernel has it. The traffic scenarios add apps per host
//! (tests/chaos_apps: this binary, started again in the host's namespace) that resolve
//! through the host's resolv.conf. The membership scenarios also run with Serf in
//! place of murmur, opt-in (`serf_*`, ignored by default), for RELIABILITY.md. These
//! tests need root; without it they say so loudly and skip. Every namespace and process
//! they make is removed when the harness drops, also on failure.

mod chaos_apps;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos_apps::Report;
use murmur::api::types::{InstanceJson, MemberJson, UpstreamJson};

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

/// Whether `child` has exited.
fn exited(child: &mut Child) -> bool {
    child.try_wait().expect("wait for a process").is_some()
}

/// How long loss and partition phases last: `MURMUR_CHAOS_SECS`, default 30.
fn chaos_secs() -> u64 {
    std::env::var("MURMUR_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30)
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("command runs");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// One network at a time: the scenarios measure timing (detection, false verdicts
/// under loss), and one scenario's load (the rolling restart moves gigabytes through
/// the proxies) would starve another's agents on a 2-core machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A set of hosts on one bridge.
struct Net {
    _turn: std::sync::MutexGuard<'static, ()>,
    prefix: String,
    subnet: u8,
    hosts: usize,
    agents: Vec<Option<Child>>,
    /// App processes: (host, role, process).
    apps: Vec<(usize, &'static str, Child)>,
    key: String,
    /// Where each agent's DNS stub listens, in its host.
    dns: &'static str,
    /// With a CA and a certificate per host in here, the agents run sidecars.
    certs: Option<PathBuf>,
    /// Scratch files (certificates, client reports); removed on teardown.
    dir: PathBuf,
    /// Serf agents instead of murmur's, for the same scenarios' figures.
    serf: bool,
    /// Every wait on the cluster is bounded by this.
    wait: Duration,
}

/// One member as an agent reports it.
struct Seen {
    name: String,
    address: String,
    /// `alive` or anything else.
    status: String,
}

impl Net {
    /// `hosts` namespaces named `<prefix>h<i>` on 198.18.<subnet>.0/24, plus the bridge
    /// namespace `<prefix>br`.
    fn new(tag: &str, subnet: u8, hosts: usize) -> Net {
        let prefix = format!("mm{}{tag}", std::process::id() % 10_000);
        let dir = std::env::temp_dir().join(&prefix);
        let (dns, certs) = ("127.0.0.1:8600", None);
        // A scenario that failed poisoned the lock; the next one still runs.
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let (agents, apps, key) = (Vec::new(), Vec::new(), keygen());
        let (serf, wait) = (false, WAIT);
        let net = Net { _turn, prefix, subnet, hosts, agents, apps, key, dns, certs, dir, serf, wait };
        net.teardown();
        std::fs::create_dir_all(&net.dir).expect("create the scratch directory");
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

    /// A command to run in host `i`'s namespace (with its /etc/netns files).
    fn in_host(&self, i: usize) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host_ns(i)]);
        cmd
    }

    /// `murmur ARGS --json` against host `i`'s agent API, decoded (`None` when the agent
    /// does not answer).
    fn murmur_api<T: serde::de::DeserializeOwned>(&self, i: usize, args: &[&str]) -> Option<T> {
        let out = self
            .in_host(i)
            .arg(env!("CARGO_BIN_EXE_murmur"))
            .args(args)
            .args(["--json", "--api", "127.0.0.1:8500"])
            .output();
        out.ok().and_then(|out| serde_json::from_slice(&out.stdout).ok())
    }

    /// Polls `done` every 20 ms until it holds; returns how long that took. Bounded by
    /// the network's wait.
    fn until(&self, what: &str, mut done: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < self.wait, "timed out after {:?} waiting for {what}", self.wait);
            std::thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
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
        if self.serf {
            self.start_serf(i, name);
            return;
        }
        let ip = self.ip(i);
        let mut cmd = self.in_host(i);
        cmd.args([env!("CARGO_BIN_EXE_murmur"), "agent"])
            .args(["--name", name, "--bind", &format!("{ip}:7946"), "--gossip-key", &self.key])
            .args(["--seed", &format!("{}:7946", self.ip(0)), "--seed", &format!("{}:7946", self.ip(1))])
            .args(["--dns-listen", self.dns, "--api-listen", "127.0.0.1:8500", "--dns-upstream", "127.0.0.1:1"]);
        if let Some(dir) = &self.certs {
            let file = |f: &str| dir.join(name).join(f).display().to_string();
            cmd.args(["--proxy-bind", &format!("{ip}:7947"), "--tls-ca", &file("ca.pem")]).args([
                "--tls-cert",
                &file("cert.pem"),
                "--tls-key",
                &file("key.pem"),
            ]);
        }
        let log = self.log(&format!("agent-{i}"));
        let child = cmd
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent starts");
        self.agents[i] = Some(child);
    }

    /// Starts a Serf agent named `name` in host `i`'s namespace, joining through hosts
    /// 0 and 1 (retried, as murmur retries its seeds), with Serf's default LAN timing.
    fn start_serf(&mut self, i: usize, name: &str) {
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

    /// kill -9 of host `i`'s agent.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The members host `i` knows (empty when its agent does not answer).
    fn members_seen_by(&self, i: usize) -> Vec<Seen> {
        if self.serf {
            return self.serf_members_seen_by(i);
        }
        let members: Vec<MemberJson> = self.murmur_api(i, &["members"]).unwrap_or_default();
        members.into_iter().map(|m| Seen { name: m.name, address: m.address, status: m.status }).collect()
    }

    /// `serf members -format=json` in host `i`: `{"members": [{"name", "addr", "status"}]}`.
    fn serf_members_seen_by(&self, i: usize) -> Vec<Seen> {
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
        self.until(what, || {
            observers.iter().all(|&o| {
                let mut seen = self.alive_seen_by(o);
                seen.sort();
                seen == want
            })
        })
    }

    fn teardown(&self) {
        for i in 0..self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &self.host_ns(i)]).output();
            let _ = std::fs::remove_dir_all(self.etc_dir(i));
        }
        let _ = Command::new("ip").args(["netns", "del", &self.bridge_ns()]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The log file `name`.log in the scratch directory, appended to across restarts.
    fn log(&self, name: &str) -> std::fs::File {
        let path = self.dir.join(format!("{name}.log"));
        std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("open a log file")
    }

    /// On a failure, the end of every log, so that CI shows why.
    fn print_logs(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for path in entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "log")) {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            eprintln!("--- {} (last {} lines)", path.display(), tail.len());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }

    /// Host `i`'s files that `ip netns exec` mounts over /etc.
    fn etc_dir(&self, i: usize) -> PathBuf {
        PathBuf::from("/etc/netns").join(self.host_ns(i))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        for (_, _, app) in &mut self.apps {
            let _ = app.kill();
            let _ = app.wait();
        }
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

impl Net {
    /// As [`Net::new`], with Serf agents instead of murmur's when `serf`; waits are
    /// longer for Serf, whose reconnects and name conflicts take tens of seconds.
    fn of(serf: bool, tag: &str, subnet: u8, hosts: usize) -> Net {
        let mut net = Net::new(tag, subnet, hosts);
        net.serf = serf;
        if serf {
            net.wait = Duration::from_secs(150);
        }
        net
    }

    fn who(&self) -> &'static str {
        if self.serf {
            "serf"
        } else {
            "murmur"
        }
    }
}

/// Figures of [`kill_and_cut`].
struct KillAndCut {
    killed: Duration,
    cut: Duration,
    back: Duration,
}

/// Five hosts; host 4's agent is kill -9'd, then host 3 is cut off the network with its
/// agent running, then healed. Returns how long every other host took to drop each and
/// to see host 3 again.
fn kill_and_cut(serf: bool, tag: &str, subnet: u8) -> KillAndCut {
    const HOSTS: usize = 5;
    let mut net = Net::of(serf, tag, subnet, HOSTS);
    let who = net.who();
    for i in 0..HOSTS {
        net.start(i);
    }
    let all: Vec<usize> = (0..HOSTS).collect();
    let t = net.until_all_see(&all, &all, "every host to see every host");
    eprintln!("{who}: 5 hosts converged in {t:?}");
    net.kill(4);
    let killed = net.until_all_see(&[0, 1, 2, 3], &[0, 1, 2, 3], "host 4 dropped after kill -9");
    eprintln!("{who}: kill -9: every other host dropped host 4 after {killed:?}");
    net.cut(3);
    let cut = net.until_all_see(&[0, 1, 2], &[0, 1, 2], "host 3 dropped after being cut off");
    eprintln!("{who}: cut off: every other host dropped host 3 after {cut:?}");
    net.heal();
    let back = net.until_all_see(&[0, 1, 2, 3], &[0, 1, 2, 3], "host 3 back after healing");
    eprintln!("{who}: healed: every host saw host 3 again after {back:?}");
    KillAndCut { killed, cut, back }
}

#[test]
fn a_killed_or_cut_off_host_is_dropped_by_every_other_host() {
    if skip("a_killed_or_cut_off_host_is_dropped_by_every_other_host") {
        return;
    }
    let f = kill_and_cut(false, "a", 20);
    assert!(f.killed < Duration::from_secs(10), "detection took {:?}", f.killed);
    assert!(f.cut < Duration::from_secs(10), "detection took {:?}", f.cut);
    assert!(f.back < Duration::from_secs(10), "rejoining took {:?}", f.back);
}

/// Serf in the same scenario, for the figures beside murmur's (RELIABILITY.md). Not
/// run by default: it needs Serf (`apt-get install serf`) and takes minutes.
#[test]
#[ignore = "Serf's figures for RELIABILITY.md: cargo test --test chaos serf -- --ignored --nocapture"]
fn serf_kill_and_cut() {
    if skip_serf("serf_kill_and_cut") {
        return;
    }
    kill_and_cut(true, "sa", 26);
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

/// Five hosts; 10%, 30% then 50% loss on every packet between them, each for
/// `MURMUR_CHAOS_SECS` (default 30 s); returns the false "dead" verdicts at each.
fn loss(serf: bool, tag: &str, subnet: u8) -> Vec<(u32, usize)> {
    const HOSTS: usize = 5;
    let mut net = Net::of(serf, tag, subnet, HOSTS);
    let who = net.who();
    for i in 0..HOSTS {
        net.start(i);
    }
    let all: Vec<usize> = (0..HOSTS).collect();
    net.until_all_see(&all, &all, "every host to see every host");
    let secs = chaos_secs();
    let mut results = Vec::new();
    for percent in [10, 30, 50] {
        net.loss(percent);
        let n = net.false_verdicts(Duration::from_secs(secs));
        eprintln!("{who}: {percent}% loss for {secs} s: {n} false dead verdicts");
        results.push((percent, n));
        net.loss(0);
        net.until_all_see(&all, &all, "recovery after loss");
    }
    results
}

#[test]
fn packet_loss_causes_no_false_dead_verdicts() {
    if skip("packet_loss_causes_no_false_dead_verdicts") {
        return;
    }
    // The goal is none at 10% and 30%; 50% is reported, not asserted (Serf starts to
    // fail there too).
    for (percent, n) in loss(false, "l", 21).into_iter().filter(|(p, _)| *p <= 30) {
        assert_eq!(n, 0, "{percent}% loss caused {n} false dead verdicts");
    }
}

#[test]
#[ignore = "Serf's figures for RELIABILITY.md: cargo test --test chaos serf -- --ignored --nocapture"]
fn serf_loss() {
    if skip_serf("serf_loss") {
        return;
    }
    loss(true, "sl", 27);
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

/// Figures of [`partition_restart_seed`].
struct PartitionRestartSeed {
    healed: Duration,
    /// `None`: not within the harness's bound (Serf).
    moved: Option<Duration>,
    joined: Duration,
}

/// Five hosts split into {0, 1} and {2, 3, 4} for `MURMUR_CHAOS_SECS` then healed; host
/// 4's agent killed and restarted at once on host 5's address; host 6 joining while
/// seed 0 is down. Returns how long healing, the move and the join took.
fn partition_restart_seed(serf: bool, tag: &str, subnet: u8) -> PartitionRestartSeed {
    const HOSTS: usize = 7;
    let mut net = Net::of(serf, tag, subnet, HOSTS);
    let who = net.who();
    for i in 0..5 {
        net.start(i);
    }
    let five: Vec<usize> = (0..5).collect();
    net.until_all_see(&five, &five, "every host to see every host");

    // Partition into {0, 1} and {2, 3, 4}: each side keeps serving its own side.
    let secs = chaos_secs();
    net.partition(&[0, 1], &[2, 3, 4]);
    net.until_all_see(&[0, 1], &[0, 1], "the left side to see only itself");
    net.until_all_see(&[2, 3, 4], &[2, 3, 4], "the right side to see only itself");
    std::thread::sleep(Duration::from_secs(secs));
    net.heal();
    let healed = net.until_all_see(&five, &five, "everyone to see everyone after healing");
    eprintln!("{who}: partition of {secs} s healed: everyone saw everyone after {healed:?}");

    // Host 4's task is killed and restarted at once on a new address (host 5's).
    net.kill(4);
    let start = Instant::now();
    net.start_as(5, "host-4", &[]);
    let new_ip = net.ip(5);
    let moved = loop {
        if (0..4).all(|o| net.address_seen_by(o, "host-4").as_deref() == Some(new_ip.as_str())) {
            break Some(start.elapsed());
        }
        if start.elapsed() >= net.wait {
            // Serf may never take the new address (it refuses a known name at a new
            // address until the old entry is reclaimed): its figure is the bound.
            assert!(serf, "the restarted host never replaced its old address");
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    match moved {
        Some(t) => eprintln!("{who}: restart on a new address: every host saw the new address after {t:?}"),
        None => eprintln!("{who}: restart on a new address: not every host saw it within {:?}", net.wait),
    }

    // The first seed is down when a new host joins: it joins through the second.
    net.kill(0);
    net.start(6);
    // (The agent in host 5's namespace is named host-4.) Where the move never took,
    // host 4 is not alive anywhere; the join is judged on the others.
    let (observers, expect): (&[usize], &[usize]) =
        if moved.is_some() { (&[1, 2, 3, 5, 6], &[1, 2, 3, 4, 6]) } else { (&[1, 2, 3, 6], &[1, 2, 3, 6]) };
    let joined = net.until_all_see(observers, expect, "host 6 to join with seed 0 down");
    eprintln!("{who}: joined through the second seed after {joined:?}");
    PartitionRestartSeed { healed, moved, joined }
}

#[test]
fn partitions_heal_restarts_move_and_joins_survive_a_dead_seed() {
    if skip("partitions_heal_restarts_move_and_joins_survive_a_dead_seed") {
        return;
    }
    let f = partition_restart_seed(false, "p", 22);
    assert!(f.healed < Duration::from_secs(10), "healing took {:?}", f.healed);
    assert!(f.moved.is_some_and(|t| t < Duration::from_secs(10)), "the move took {:?}", f.moved);
    assert!(f.joined < Duration::from_secs(10), "the join took {:?}", f.joined);
}

#[test]
#[ignore = "Serf's figures for RELIABILITY.md: cargo test --test chaos serf -- --ignored --nocapture"]
fn serf_partition_restart_seed() {
    if skip_serf("serf_partition_restart_seed") {
        return;
    }
    partition_restart_seed(true, "sp", 28);
}

impl Net {
    /// Every host resolves through its own agent, as an app would by default: the stub
    /// listens on 127.0.0.1:53 and the host's resolv.conf names it.
    fn resolve_through_stubs(&mut self) {
        self.dns = "127.0.0.1:53";
        for i in 0..self.hosts {
            std::fs::create_dir_all(self.etc_dir(i)).expect("create /etc/netns/NAME");
            std::fs::write(self.etc_dir(i).join("resolv.conf"), "nameserver 127.0.0.1\noptions timeout:1 attempts:2\n")
                .expect("write the host's resolv.conf");
        }
    }

    /// A CA and a certificate per host for `services`: agents started from now on run
    /// sidecars with mutual TLS.
    fn issue_certificates(&mut self, services: &[&str]) {
        let ca = self.dir.join("ca").display().to_string();
        murmur_cli(&["ca", "init", "--dir", &ca]);
        for i in 0..self.hosts {
            let (name, out) = (format!("host-{i}"), self.dir.join(format!("host-{i}")).display().to_string());
            let mut args = vec!["cert", "issue", "--ca-dir", &ca, "--name", &name, "--out", &out];
            for s in services {
                args.extend(["--service", s]);
            }
            murmur_cli(&args);
        }
        self.certs = Some(self.dir.clone());
    }

    /// Starts the app `role` of tests/chaos_apps in host `i`: this test binary, run in
    /// the host's namespace (so with its resolv.conf), told by `env` what to be.
    fn start_app(&mut self, i: usize, role: &'static str, env: &[(&str, String)]) {
        let child = self.app(i, role, env).spawn().expect("the app starts");
        self.apps.push((i, role, child));
    }

    /// The command that runs app `role` in host `i`, its stderr in the role's log.
    fn app(&self, i: usize, role: &str, env: &[(&str, String)]) -> Command {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut cmd = self.in_host(i);
        cmd.arg(exe)
            .args(["--exact", "app_process", "--ignored", "--nocapture", "--test-threads", "1"])
            .env("MURMUR_CHAOS_APP", role)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log(&format!("{role}-{i}")));
        cmd
    }

    /// Host `i`'s app `role`, taken out of the list.
    fn take_app(&mut self, i: usize, role: &str) -> Child {
        let at = self.apps.iter().position(|(h, r, _)| *h == i && *r == role).expect("the app runs");
        self.apps.swap_remove(at).2
    }

    /// SIGTERM to host `i`'s agent, which drains and leaves; returns once it has exited.
    fn terminate(&mut self, i: usize) -> Duration {
        let mut agent = self.agents[i].take().expect("the agent runs");
        // `ip netns exec` execs the agent, so this pid is the agent's.
        sh(&["kill", "-TERM", &agent.id().to_string()]);
        self.until(&format!("host {i}'s agent to exit on SIGTERM"), || exited(&mut agent))
    }

    /// Waits until every host in `observers` sees a healthy `service` instance on each
    /// host in `serving`, and no other; returns how long that took.
    fn until_all_serve(&self, observers: &[usize], serving: &[usize], service: &str) -> Duration {
        let want: Vec<String> = serving.iter().map(|i| format!("host-{i}")).collect();
        self.until(&format!("every host to see {want:?} serve"), || {
            observers.iter().all(|&o| {
                let seen: Vec<InstanceJson> = self.murmur_api(o, &["services", service]).unwrap_or_default();
                let mut nodes: Vec<String> = seen.into_iter().map(|s| s.node).collect();
                nodes.sort();
                nodes == want
            })
        })
    }
}

/// Runs `murmur ARGS` to completion.
fn murmur_cli(args: &[&str]) {
    sh(&[&[env!("CARGO_BIN_EXE_murmur")], args].concat());
}

/// Not a test: the app processes of the rolling restart (tests/chaos_apps), which
/// `Net::start_app` starts by running this binary in a host's namespace.
#[test]
#[ignore = "an app process that the rolling-restart test starts in a host's namespace"]
fn app_process() {
    if !chaos_apps::run_from_env() {
        eprintln!("app_process: MURMUR_CHAOS_APP is not set, so there is nothing to run");
    }
}

/// The traffic of one host's client: where it stops and reports.
struct ClientRun {
    host: usize,
    stop: PathBuf,
    out: PathBuf,
}

impl Net {
    /// Starts host `i`'s client calling `files` through its own sidecar.
    fn start_client(&mut self, i: usize, run: usize) -> ClientRun {
        let stop = self.dir.join(format!("client-{i}-{run}.stop"));
        let out = self.dir.join(format!("client-{i}-{run}.report"));
        let env = [
            ("MURMUR_CHAOS_NAME", "files".to_owned()),
            ("MURMUR_CHAOS_STOP", stop.display().to_string()),
            ("MURMUR_CHAOS_OUT", out.display().to_string()),
        ];
        self.start_app(i, "client", &env);
        ClientRun { host: i, stop, out }
    }

    /// Tells a client to stop after its transfer under way; returns its report.
    fn stop_client(&mut self, run: ClientRun) -> Report {
        std::fs::write(&run.stop, "").expect("write the stop file");
        let mut child = self.take_app(run.host, "client");
        self.until(&format!("host {}'s client to stop", run.host), || exited(&mut child));
        Report::read(&run.out).unwrap_or_else(|| panic!("host {}'s client wrote no report", run.host))
    }
}

impl Net {
    /// Starts host `i`'s echo app and its agent, which serves it as `files` and proxies
    /// `files` for the host's apps.
    fn serve(&mut self, i: usize) {
        self.start_app(i, "echo", &[("MURMUR_CHAOS_BIND", self.ip(i))]);
        let args = ["--service", "files:9000,check=tcp,interval=500ms", "--upstream", "files:9000"];
        self.start_as(i, &format!("host-{i}"), &args);
    }
}

/// `hosts` hosts, each resolving through its own agent's stub on port 53, each serving
/// `files` from an echo app and calling it through its sidecar (mutual TLS); returns
/// once every host sees every host serve.
fn serving_net(tag: &str, subnet: u8, hosts: usize) -> Net {
    let mut net = Net::new(tag, subnet, hosts);
    net.resolve_through_stubs();
    net.issue_certificates(&["files"]);
    for i in 0..hosts {
        net.serve(i);
    }
    let all: Vec<usize> = (0..hosts).collect();
    net.until_all_see(&all, &all, "every host to see every host");
    net.until_all_serve(&all, &all, "files");
    net
}

#[test]
fn a_rolling_restart_of_every_host_under_traffic_fails_no_request() {
    if skip("a_rolling_restart_of_every_host_under_traffic_fails_no_request") {
        return;
    }
    const HOSTS: usize = 4;
    let mut net = serving_net("r", 23, HOSTS);
    let all: Vec<usize> = (0..HOSTS).collect();

    // Every host's client calls `files` (served by every host) back to back; each
    // host in turn is restarted as a whole: its client stops after its transfer under
    // way, its agent drains and leaves on SIGTERM, its app stops, then all three start
    // again. The other clients never stop.
    let mut runs: Vec<Option<ClientRun>> = (0..HOSTS).map(|i| Some(net.start_client(i, 0))).collect();
    std::thread::sleep(Duration::from_secs(3));
    let mut reports = Vec::new();
    for (h, slot) in runs.iter_mut().enumerate() {
        let run = slot.take().expect("host's client runs");
        reports.push(net.stop_client(run));
        let start = Instant::now();
        let drained = net.terminate(h);
        let mut app = net.take_app(h, "echo");
        let _ = app.kill();
        let _ = app.wait();
        net.serve(h);
        net.until_all_serve(&all, &all, "files");
        eprintln!(
            "host-{h}: the agent drained and left in {drained:?}; serving again everywhere after {:?}",
            start.elapsed()
        );
        *slot = Some(net.start_client(h, 1));
        std::thread::sleep(Duration::from_secs(2));
    }
    for run in runs.into_iter().flatten() {
        reports.push(net.stop_client(run));
    }

    let (ok, failed, bytes) = reports.iter().fold((0, 0, 0), |(o, f, b), r| (o + r.ok, f + r.failed, b + r.bytes));
    eprintln!(
        "rolling restart of {HOSTS} hosts: {ok} transfers byte-exact ({:.1} MB), {failed} failed",
        bytes as f64 / 1e6
    );
    for f in reports.iter().flat_map(|r| &r.failures) {
        eprintln!("  failed: {f}");
    }
    assert!(reports.iter().all(|r| r.ok > 0), "a client made no call at all: {reports:?}");
    assert_eq!(failed, 0, "requests failed during the rolling restart");
}

impl Net {
    /// The hosts whose `files` endpoint has a connection open now, as host `i`'s
    /// sidecar counts them.
    fn active_endpoints_of(&self, i: usize) -> Vec<usize> {
        let upstreams: Vec<UpstreamJson> = self.murmur_api(i, &["stats"]).unwrap_or_default();
        let active = upstreams.iter().flat_map(|u| &u.endpoints).filter(|e| e.active > 0);
        // Instance ids are `<node>-<port>`: host-N-9000.
        active.filter_map(|e| e.instance.strip_prefix("host-")?.split('-').next()?.parse().ok()).collect()
    }
}

#[test]
fn a_connection_through_a_killed_sidecar_is_reset_within_the_detection_time() {
    if skip("a_connection_through_a_killed_sidecar_is_reset_within_the_detection_time") {
        return;
    }
    let mut net = serving_net("k", 24, 3);
    // Host 0's app holds a connection open through its sidecar to another host's (the
    // balancer picks; a connection that lands on host 0 itself is closed and made again).
    let mut target = None;
    for attempt in 0..20 {
        let out = net.dir.join(format!("hold-{attempt}.report"));
        net.start_app(
            0,
            "hold",
            &[("MURMUR_CHAOS_NAME", "files".to_owned()), ("MURMUR_CHAOS_OUT", out.display().to_string())],
        );
        net.until("the holding app to get its echo", || {
            std::fs::read_to_string(&out).is_ok_and(|t| t.starts_with("held"))
        });
        match net.active_endpoints_of(0).as_slice() {
            [h] if *h != 0 => {
                target = Some((*h, out));
                break;
            }
            _ => {
                let mut app = net.take_app(0, "hold");
                let _ = app.kill();
                let _ = app.wait();
                net.until("the closed connection to leave the sidecar's count", || {
                    net.active_endpoints_of(0).is_empty()
                });
            }
        }
    }
    let (h, out) = target.expect("20 connections all landed on host 0 itself");

    // kill -9 of that host's agent: its sidecar dies with the connection's stream in it.
    let killed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
    net.kill(h);
    let start = Instant::now();
    let ended = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with("ended ")) {
            break line.to_owned();
        }
        assert!(start.elapsed() < Duration::from_secs(70), "the holding app never saw its connection end");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut words = ended.split(' ').skip(1);
    let at: u128 = words.next().and_then(|w| w.parse().ok()).expect("a time");
    let how = words.next().unwrap_or_default().to_owned();
    let after = Duration::from_millis(at.saturating_sub(killed) as u64);
    eprintln!("kill -9 of host-{h}'s agent: the app's connection through it ended ({how}) after {after:?}");
    assert_ne!(how, "timeout", "the connection was never ended: the app waited out its own 60 s");
    // The failure detector takes about 1.2 s; the QUIC idle timeout, which ended such
    // connections before, is 30 s.
    assert!(after < Duration::from_secs(10), "the connection ended only after {after:?}");
}

#[test]
fn a_delayed_network_causes_no_false_dead_verdicts() {
    if skip("a_delayed_network_causes_no_false_dead_verdicts") {
        return;
    }
    const HOSTS: usize = 3;
    let mut net = Net::new("d", 25, HOSTS);
    // nftables can drop but not delay; delay needs the kernel's sch_netem, which some
    // kernels (this project's development machine's among them) do not have.
    let netem = |net: &Net, i: usize, args: &[&str]| net.in_host(i).args(["tc", "qdisc"]).args(args).output();
    let probe = netem(&net, 0, &["add", "dev", "eth0", "root", "netem", "delay", "1ms"]);
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        let why = probe.map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned()).unwrap_or_else(|e| e.to_string());
        eprintln!(
            "\n*** SKIPPED a_delayed_network_causes_no_false_dead_verdicts: no delay injection here \
             (`tc qdisc add ... netem` failed: {why}); nothing was tested ***\n"
        );
        return;
    }
    let _ = netem(&net, 0, &["del", "dev", "eth0", "root"]);
    for i in 0..HOSTS {
        net.start(i);
    }
    let all: Vec<usize> = (0..HOSTS).collect();
    net.until_all_see(&all, &all, "every host to see every host");
    // 100 ms ± 20 ms on every host's outgoing packets: 200 ms round trips, reordered.
    for i in 0..HOSTS {
        let out = netem(&net, i, &["add", "dev", "eth0", "root", "netem", "delay", "100ms", "20ms"]).expect("tc runs");
        assert!(out.status.success(), "netem on host {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let secs = chaos_secs();
    let n = net.false_verdicts(Duration::from_secs(secs));
    eprintln!("100 ms ± 20 ms delay on every host for {secs} s: {n} false dead verdicts");
    assert_eq!(n, 0, "delay caused {n} false dead verdicts");
}

/// Instances of `web` each host serves in the dns_sd scenario: 3 × 15 SRV records do
/// not fit a UDP reply (at most 1,232 bytes), so the stub truncates and the client must
/// ask again over TCP.
const DNS_SD_INSTANCES: u16 = 15;

impl Net {
    /// Prometheus (Debian's package) in host `i`'s namespace with `config`, its web API on
    /// 127.0.0.1:9090 there; `None`, said loudly, without the binary.
    fn start_prometheus(&mut self, i: usize, test: &str, config: &str) -> Option<()> {
        if Command::new("prometheus").arg("--version").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "prometheus must be installed in CI (.ci/run installs it)");
            eprintln!("\n*** SKIPPED {test}: no `prometheus` binary (apt-get install prometheus) ***\n");
            return None;
        }
        let file = self.dir.join("prometheus.yml");
        std::fs::write(&file, config).expect("write Prometheus's config");
        let log = self.log(&format!("prometheus-{i}"));
        let child = self
            .in_host(i)
            .arg("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", self.dir.join("tsdb").display()))
            .arg("--web.listen-address=127.0.0.1:9090")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        self.apps.push((i, "prometheus", child));
        Some(())
    }

    /// The `__address__` of every target host `i`'s Prometheus has discovered, sorted
    /// (empty while it starts).
    fn prometheus_targets(&self, i: usize) -> Vec<String> {
        let out = self.dir.join("targets.json");
        let _ = std::fs::remove_file(&out);
        let env = [
            ("MURMUR_CHAOS_ADDR", "127.0.0.1:9090".to_owned()),
            ("MURMUR_CHAOS_PATH", "/api/v1/targets".to_owned()),
            ("MURMUR_CHAOS_OUT", out.display().to_string()),
        ];
        // Bounded: the GET's connect is local and its read times out after 5 s.
        let _ = self.app(i, "get", &env).status();
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        let mut got: Vec<String> = json["data"]["activeTargets"]
            .as_array()
            .map(|ts| {
                ts.iter().filter_map(|t| t["discoveredLabels"]["__address__"].as_str().map(str::to_owned)).collect()
            })
            .unwrap_or_default();
        got.sort();
        got
    }
}

/// Prometheus's `dns_sd_configs` (SRV) in a host whose resolv.conf names the agent's
/// stub on port 53: every healthy instance of the cluster is a target (more than fit
/// a UDP reply, so through the TCP retry), an unhealthy one is not, and a killed host's
/// instances leave at the next refresh.
#[test]
fn prometheus_dns_sd_finds_every_healthy_instance_through_resolv_conf() {
    const TEST: &str = "prometheus_dns_sd_finds_every_healthy_instance_through_resolv_conf";
    if skip(TEST) {
        return;
    }
    const HOSTS: usize = 3;
    let mut net = Net::new("s", 29, HOSTS);
    net.resolve_through_stubs();
    let port = |n: u16| 9100 + n;
    for i in 0..HOSTS {
        let mut specs: Vec<String> = (0..DNS_SD_INSTANCES).map(|n| format!("web:{},check=none", port(n))).collect();
        // Nothing listens there: the check fails, and the instance is not answered.
        specs.push(format!("web:{},check=tcp,interval=500ms", port(99)));
        let args: Vec<&str> = specs.iter().flat_map(|s| ["--service", s.as_str()]).collect();
        net.start_as(i, &format!("host-{i}"), &args);
    }
    let all: Vec<usize> = (0..HOSTS).collect();
    net.until_all_see(&all, &all, "every host to see every host");
    let serving = |hosts: &[usize]| {
        let target = |i: usize, n: u16| format!("host-{i}-{}.web.murmur.local:{}", port(n), port(n));
        let mut want: Vec<String> =
            hosts.iter().flat_map(|&i| (0..DNS_SD_INSTANCES).map(move |n| target(i, n))).collect();
        want.sort();
        want
    };
    let config = "global:\n  scrape_interval: 5s\nscrape_configs:\n  - job_name: web\n    dns_sd_configs:\n      \
                  - names: [_web._tcp.murmur.local]\n        type: SRV\n        refresh_interval: 2s\n";
    if net.start_prometheus(0, TEST, config).is_none() {
        return;
    }
    let want = serving(&all);
    let found = net.until("Prometheus to discover every healthy instance", || net.prometheus_targets(0) == want);
    eprintln!("Prometheus's dns_sd found all {} healthy instances after {found:?}", want.len());

    net.kill(2);
    let start = Instant::now();
    net.until("host 0's replica to drop host 2's instances", || {
        let seen: Vec<InstanceJson> = net.murmur_api(0, &["services", "web"]).unwrap_or_default();
        !seen.iter().any(|s| s.node == "host-2")
    });
    let dropped = start.elapsed();
    let want = serving(&[0, 1]);
    net.until("Prometheus to drop host 2's instances", || net.prometheus_targets(0) == want);
    let gone = start.elapsed();
    eprintln!(
        "kill -9 of host-2: its instances left host 0's replica after {dropped:?} and Prometheus's targets after \
         {gone:?} (refresh 2 s; Prometheus passes discovery updates on at most every 5 s)"
    );
    assert!(
        gone - dropped < Duration::from_secs(2 + 5 + 3),
        "Prometheus kept the dead instances {:?} after the stub stopped answering them",
        gone - dropped
    );
}
