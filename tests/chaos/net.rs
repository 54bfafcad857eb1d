//! The network harness: hosts as network namespaces on one bridge, each with an agent
//! (murmur's, or Serf's for the comparison), and the faults and observations the
//! scenarios use. Every namespace and process it makes is removed when it drops.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::apps::Report;
use murmur::client::{InstanceJson, MemberJson, UpstreamJson};

/// Every wait is bounded by this.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

pub(crate) fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

pub(crate) fn tools_present() -> bool {
    ["ip", "nft"]
        .iter()
        .all(|t| Command::new("sh").args(["-c", &format!("command -v {t}")]).output().is_ok_and(|o| o.status.success()))
}

/// Why the multi-host scenarios cannot run here, if they cannot: root is needed for
/// network namespaces, and `ip` and `nft` (which CI must have).
pub(crate) fn precondition() -> Result<(), String> {
    if !is_root() {
        return Err("multi-host tests need root (network namespaces)".into());
    }
    if !tools_present() {
        assert!(std::env::var_os("CI").is_none(), "CI must install iproute2 and nftables (.ci/run does)");
        return Err("`ip` and `nft` are needed (apt-get install iproute2 nftables)".into());
    }
    Ok(())
}

/// Whether the kernel can delay packets (`tc ... netem`, the module sch_netem), tried
/// on the loopback of a throwaway namespace. nftables can drop but not delay.
pub(crate) fn netem() -> Result<(), String> {
    let ns = format!("murmur-netem-probe-{}", std::process::id());
    let run = |args: &[&str]| Command::new(args[0]).args(&args[1..]).output();
    if !run(&["ip", "netns", "add", &ns]).is_ok_and(|o| o.status.success()) {
        return Err("cannot make a namespace to try netem in".into());
    }
    let tried = run(&["ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]);
    let _ = run(&["ip", "netns", "del", &ns]);
    match tried {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "no delay injection here (`tc qdisc add ... netem`: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("no `tc` here ({e}; apt-get install iproute2)")),
    }
}

/// Whether Debian's `prometheus` is installed (CI must have it).
pub(crate) fn prometheus() -> Result<(), String> {
    if Command::new("prometheus").arg("--version").output().is_ok() {
        return Ok(());
    }
    assert!(std::env::var_os("CI").is_none(), "prometheus must be installed in CI (.ci/run installs it)");
    Err("no `prometheus` binary (apt-get install prometheus)".into())
}

/// Says loudly why a test did not run; returns true when it must skip.
pub(crate) fn skip(test: &str) -> bool {
    match precondition() {
        Ok(()) => false,
        Err(why) => {
            eprintln!("\n*** SKIPPED {test}: {why} ***\n");
            true
        }
    }
}

/// Whether `child` has exited.
pub(crate) fn exited(child: &mut Child) -> bool {
    child.try_wait().expect("wait for a process").is_some()
}

/// How long loss and partition phases last: `MURMUR_CHAOS_SECS`, default 30.
pub(crate) fn chaos_secs() -> u64 {
    std::env::var("MURMUR_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30)
}

pub(crate) fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("command runs");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// One network at a time: the scenarios measure timing (detection, false verdicts
/// under loss), and one scenario's load (the rolling restart moves gigabytes through
/// the proxies) would starve another's agents on a 2-core machine.
pub(crate) static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A set of hosts on one bridge.
pub(crate) struct Net {
    pub(crate) _turn: std::sync::MutexGuard<'static, ()>,
    pub(crate) prefix: String,
    pub(crate) subnet: u8,
    pub(crate) hosts: usize,
    pub(crate) agents: Vec<Option<Child>>,
    /// App processes: (host, role, process).
    pub(crate) apps: Vec<(usize, &'static str, Child)>,
    pub(crate) key: String,
    /// Where each agent's DNS stub listens, in its host.
    pub(crate) dns: &'static str,
    /// With a CA and a certificate per host in here, the agents run sidecars.
    pub(crate) certs: Option<PathBuf>,
    /// Scratch files (certificates, client reports); removed on teardown.
    pub(crate) dir: PathBuf,
    /// Serf agents instead of murmur's, for the same scenarios' figures.
    pub(crate) serf: bool,
    /// Every wait on the cluster is bounded by this.
    pub(crate) wait: Duration,
}

/// One member as an agent reports it.
pub(crate) struct Seen {
    pub(crate) name: String,
    pub(crate) address: String,
    /// `alive` or anything else.
    pub(crate) status: String,
}

/// The traffic of one host's client: where it stops and reports.
pub(crate) struct ClientRun {
    pub(crate) host: usize,
    pub(crate) stop: PathBuf,
    pub(crate) out: PathBuf,
}

/// Instances of `web` each host serves in the dns_sd scenario: 3 × 15 SRV records do
/// not fit a UDP reply (at most 1,232 bytes), so the stub truncates and the client must
/// ask again over TCP.
pub(crate) const DNS_SD_INSTANCES: u16 = 15;

pub(crate) fn keygen() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_murmur")).arg("keygen").output().expect("keygen");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs `murmur ARGS` to completion.
pub(crate) fn murmur_cli(args: &[&str]) {
    sh(&[&[env!("CARGO_BIN_EXE_murmur")], args].concat());
}

impl Net {
    /// `hosts` namespaces named `<prefix>h<i>` on 198.18.<subnet>.0/24, plus the bridge
    /// namespace `<prefix>br`.
    pub(crate) fn new(tag: &str, subnet: u8, hosts: usize) -> Net {
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

    pub(crate) fn bridge_ns(&self) -> String {
        format!("{}br", self.prefix)
    }

    pub(crate) fn host_ns(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    pub(crate) fn ip(&self, i: usize) -> String {
        format!("198.18.{}.{}", self.subnet, 10 + i)
    }

    /// A command to run in host `i`'s namespace (with its /etc/netns files).
    pub(crate) fn in_host(&self, i: usize) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host_ns(i)]);
        cmd
    }

    /// `murmur ARGS --json` against host `i`'s agent API, decoded (`None` when the agent
    /// does not answer).
    pub(crate) fn murmur_api<T: serde::de::DeserializeOwned>(&self, i: usize, args: &[&str]) -> Option<T> {
        let out = self
            .in_host(i)
            .arg(env!("CARGO_BIN_EXE_murmur"))
            .args(args)
            .args(["--json", "--api", "127.0.0.1:8500"])
            .output();
        out.ok().and_then(|out| serde_json::from_slice(&out.stdout).ok())
    }

    /// Polls `done` until it holds (`wait::until`); returns how long that took. Bounded by
    /// the network's wait.
    pub(crate) fn until(&self, what: &str, done: impl FnMut() -> bool) -> Duration {
        crate::wait::until(what, self.wait, done)
    }

    /// Starts (or restarts) the agent of host `i`, seeded by hosts 0 and 1.
    pub(crate) fn start(&mut self, i: usize) {
        self.start_as(i, &format!("host-{i}"), &["--service", &format!("app:{},check=none", 8000 + i)]);
    }

    /// Starts an agent named `name` in host `i`'s namespace (also a task restarted
    /// elsewhere under its old name).
    pub(crate) fn start_as(&mut self, i: usize, name: &str, extra: &[&str]) {
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

    /// Starts every host's agent and waits until every host sees every host; returns
    /// how long that took.
    pub(crate) fn start_all(&mut self) -> Duration {
        for i in 0..self.hosts {
            self.start(i);
        }
        let all: Vec<usize> = (0..self.hosts).collect();
        self.until_all_see(&all, &all, "every host to see every host")
    }

    /// kill -9 of host `i`'s agent.
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The members host `i` knows (empty when its agent does not answer).
    pub(crate) fn members_seen_by(&self, i: usize) -> Vec<Seen> {
        if self.serf {
            return self.serf_members_seen_by(i);
        }
        let members: Vec<MemberJson> = self.murmur_api(i, &["members"]).unwrap_or_default();
        members.into_iter().map(|m| Seen { name: m.name, address: m.address, status: m.status }).collect()
    }

    /// The members host `i` sees alive.
    pub(crate) fn alive_seen_by(&self, i: usize) -> Vec<String> {
        self.members_seen_by(i).into_iter().filter(|m| m.status == "alive").map(|m| m.name).collect()
    }

    /// Runs one nft command in the bridge namespace, where every packet between hosts passes.
    pub(crate) fn nft(&self, command: &str) {
        sh(&["ip", "netns", "exec", &self.bridge_ns(), "nft", command]);
    }

    /// Adds a rule to the bridge's forward chain.
    pub(crate) fn add_rule(&self, rule: &str) {
        self.nft(&format!("add rule bridge chaos fwd_rules {rule}"));
    }

    /// Removes every rule: cuts, partitions and loss end.
    pub(crate) fn heal(&self) {
        self.nft("flush chain bridge chaos fwd_rules");
    }

    /// Drops every packet to and from host `i` at the bridge.
    pub(crate) fn cut(&self, i: usize) {
        self.add_rule(&format!("iifname p{i} drop"));
        self.add_rule(&format!("oifname p{i} drop"));
    }

    /// Waits until every host in `observers` sees exactly `alive` as the alive members;
    /// returns how long that took.
    pub(crate) fn until_all_see(&self, observers: &[usize], alive: &[usize], what: &str) -> Duration {
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

    pub(crate) fn teardown(&self) {
        for i in 0..self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &self.host_ns(i)]).output();
            let _ = std::fs::remove_dir_all(self.etc_dir(i));
        }
        let _ = Command::new("ip").args(["netns", "del", &self.bridge_ns()]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The log file `name`.log in the scratch directory, appended to across restarts.
    pub(crate) fn log(&self, name: &str) -> std::fs::File {
        let path = self.dir.join(format!("{name}.log"));
        std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("open a log file")
    }

    /// On a failure, the end of every log, so that CI shows why.
    pub(crate) fn print_logs(&self) {
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
    pub(crate) fn etc_dir(&self, i: usize) -> PathBuf {
        PathBuf::from("/etc/netns").join(self.host_ns(i))
    }

    /// As [`Net::new`], with Serf agents instead of murmur's when `serf`; waits are
    /// longer for Serf, whose reconnects and name conflicts take tens of seconds.
    pub(crate) fn of(serf: bool, tag: &str, subnet: u8, hosts: usize) -> Net {
        let mut net = Net::new(tag, subnet, hosts);
        net.serf = serf;
        if serf {
            net.wait = Duration::from_secs(150);
        }
        net
    }

    pub(crate) fn who(&self) -> &'static str {
        if self.serf {
            "serf"
        } else {
            "murmur"
        }
    }

    /// Drops `percent`% of all packets crossing the bridge (0 removes the rule).
    pub(crate) fn loss(&self, percent: u32) {
        self.heal();
        if percent > 0 {
            self.add_rule(&format!("numgen random mod 100 < {percent} drop"));
        }
    }

    /// Watches every host's view for `dur`; returns how many times some host saw a live
    /// host as not alive (false "dead" verdicts, counted per observer and member).
    pub(crate) fn false_verdicts(&self, dur: Duration) -> usize {
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

    /// Drops every packet between the two groups of hosts.
    pub(crate) fn partition(&self, left: &[usize], right: &[usize]) {
        for a in left {
            for b in right {
                for (from, to) in [(a, b), (b, a)] {
                    self.add_rule(&format!("iifname p{from} oifname p{to} drop"));
                }
            }
        }
    }

    /// The address host `i` sees for member `name`, if alive.
    pub(crate) fn address_seen_by(&self, i: usize, name: &str) -> Option<String> {
        self.members_seen_by(i).into_iter().find(|m| m.name == name && m.status == "alive").map(|m| m.address)
    }

    /// Every host resolves through its own agent, as an app would by default: the stub
    /// listens on 127.0.0.1:53 and the host's resolv.conf names it.
    pub(crate) fn resolve_through_stubs(&mut self) {
        self.dns = "127.0.0.1:53";
        for i in 0..self.hosts {
            std::fs::create_dir_all(self.etc_dir(i)).expect("create /etc/netns/NAME");
            std::fs::write(self.etc_dir(i).join("resolv.conf"), "nameserver 127.0.0.1\noptions timeout:1 attempts:2\n")
                .expect("write the host's resolv.conf");
        }
    }

    /// A CA and a certificate per host for `services`: agents started from now on run
    /// sidecars with mutual TLS.
    pub(crate) fn issue_certificates(&mut self, services: &[&str]) {
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

    /// Starts the app `role` of apps.rs in host `i`: this test binary, run in
    /// the host's namespace (so with its resolv.conf), told by `env` what to be.
    pub(crate) fn start_app(&mut self, i: usize, role: &'static str, env: &[(&str, String)]) {
        let child = self.app(i, role, env).spawn().expect("the app starts");
        self.apps.push((i, role, child));
    }

    /// The command that runs app `role` in host `i`, its stderr in the role's log.
    pub(crate) fn app(&self, i: usize, role: &str, env: &[(&str, String)]) -> Command {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut cmd = self.in_host(i);
        cmd.arg(exe)
            .env("MURMUR_CHAOS_APP", role)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log(&format!("{role}-{i}")));
        cmd
    }

    /// Host `i`'s app `role`, taken out of the list.
    pub(crate) fn take_app(&mut self, i: usize, role: &str) -> Child {
        let at = self.apps.iter().position(|(h, r, _)| *h == i && *r == role).expect("the app runs");
        self.apps.swap_remove(at).2
    }

    /// SIGTERM to host `i`'s agent, which drains and leaves; returns once it has exited.
    pub(crate) fn terminate(&mut self, i: usize) -> Duration {
        let mut agent = self.agents[i].take().expect("the agent runs");
        // `ip netns exec` execs the agent, so this pid is the agent's.
        sh(&["kill", "-TERM", &agent.id().to_string()]);
        self.until(&format!("host {i}'s agent to exit on SIGTERM"), || exited(&mut agent))
    }

    /// Waits until every host in `observers` sees a healthy `service` instance on each
    /// host in `serving`, and no other; returns how long that took.
    pub(crate) fn until_all_serve(&self, observers: &[usize], serving: &[usize], service: &str) -> Duration {
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

    /// Starts host `i`'s client calling `files` through its own sidecar.
    pub(crate) fn start_client(&mut self, i: usize, run: usize) -> ClientRun {
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
    pub(crate) fn stop_client(&mut self, run: ClientRun) -> Report {
        std::fs::write(&run.stop, "").expect("write the stop file");
        let mut child = self.take_app(run.host, "client");
        self.until(&format!("host {}'s client to stop", run.host), || exited(&mut child));
        Report::read(&run.out).unwrap_or_else(|| panic!("host {}'s client wrote no report", run.host))
    }

    /// Starts host `i`'s echo app and its agent, which serves it as `files` and proxies
    /// `files` for the host's apps.
    pub(crate) fn serve(&mut self, i: usize) {
        self.start_app(i, "echo", &[("MURMUR_CHAOS_BIND", self.ip(i))]);
        let args = ["--service", "files:9000,check=tcp,interval=500ms", "--upstream", "files:9000"];
        self.start_as(i, &format!("host-{i}"), &args);
    }

    /// The hosts whose `files` endpoint has a connection open now, as host `i`'s
    /// sidecar counts them.
    pub(crate) fn active_endpoints_of(&self, i: usize) -> Vec<usize> {
        let upstreams: Vec<UpstreamJson> = self.murmur_api(i, &["stats"]).unwrap_or_default();
        let active = upstreams.iter().flat_map(|u| &u.endpoints).filter(|e| e.active > 0);
        // Instance ids are `<node>-<port>`: host-N-9000.
        active.filter_map(|e| e.instance.strip_prefix("host-")?.split('-').next()?.parse().ok()).collect()
    }

    /// Prometheus (Debian's package) in host `i`'s namespace with `config`, its web API on
    /// 127.0.0.1:9090 there; `None`, said loudly, without the binary.
    pub(crate) fn start_prometheus(&mut self, i: usize, test: &str, config: &str) -> Option<()> {
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
    pub(crate) fn prometheus_targets(&self, i: usize) -> Vec<String> {
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
