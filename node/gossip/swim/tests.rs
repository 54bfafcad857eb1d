//! The membership core under explicit virtual time: a handful of members wired by hand,
//! datagrams delivered at once unless a test drops them.

use super::*;

const T0_MS: u64 = 1_764_000_000_000;

struct Net {
    base: Instant,
    now: Duration,
    nodes: Vec<Swim<MapStore>>,
    /// `cut[i]`: every datagram to or from node i is dropped.
    cut: Vec<bool>,
    /// Every datagram a test saw, by sender: (from, to, bytes).
    log: Vec<(usize, usize, Vec<u8>)>,
    events: Vec<Vec<(Duration, Event)>>,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1 + i as u8], 7946))
}

impl Net {
    fn new(n: usize) -> Self {
        Self::with_config(n, SwimConfig::default())
    }

    fn with_config(n: usize, config: SwimConfig) -> Self {
        let base = Instant::now();
        let nodes = (0..n)
            .map(|i| {
                let me = Identity { name: format!("m{i}"), generation: T0_MS, addr: addr(i) };
                Swim::new(me, config.clone(), MapStore::default(), i as u64, base)
            })
            .collect();
        Self { base, now: Duration::ZERO, nodes, cut: vec![false; n], log: Vec::new(), events: vec![Vec::new(); n] }
    }

    fn at(&self) -> Instant {
        self.base + self.now
    }

    fn join_all(&mut self) {
        let now = self.at();
        for node in &mut self.nodes[1..] {
            node.join(vec![addr(0)], now);
        }
    }

    /// Delivers every datagram in flight until none is left.
    fn flush(&mut self) {
        let now = self.at();
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(ev) = self.nodes[i].poll_event() {
                    self.events[i].push((self.now, ev));
                }
                while let Some(tx) = self.nodes[i].poll_transmit() {
                    moved = true;
                    let to = (tx.to.ip().to_string().rsplit('.').next().and_then(|o| o.parse::<usize>().ok()))
                        .map(|o| o - 1)
                        .filter(|&t| t < self.nodes.len());
                    let Some(to) = to else { continue };
                    assert!(tx.bytes.len() <= MAX_MESSAGE, "a datagram of {} bytes", tx.bytes.len());
                    self.log.push((i, to, tx.bytes.clone()));
                    if self.cut[i] || self.cut[to] {
                        continue;
                    }
                    self.nodes[to].handle_datagram(addr(i), &tx.bytes, now);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Runs virtual time forward in 5 ms steps.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(5);
            let now = self.at();
            for i in 0..self.nodes.len() {
                if !self.cut[i] && self.nodes[i].poll_timeout() <= now {
                    self.nodes[i].handle_timeout(now);
                }
            }
            self.flush();
        }
    }

    fn status(&self, of: usize, about: usize) -> Option<Status> {
        self.nodes[of].member(&format!("m{about}")).map(|m| m.status)
    }

    fn first(&self, of: usize, want: impl Fn(&Event) -> bool) -> Option<Duration> {
        self.events[of].iter().find(|(_, e)| want(e)).map(|(t, _)| *t)
    }
}

#[test]
fn members_join_through_a_seed_and_pull_each_others_state() {
    let mut net = Net::new(4);
    for (i, node) in net.nodes.iter_mut().enumerate() {
        node.set_local("node", Some(&format!("record-{i}")), net.base);
        node.set_local("i/web-1", Some("instance"), net.base);
    }
    net.join_all();
    net.run(Duration::from_secs(3));
    for i in 0..4 {
        for j in (0..4).filter(|&j| j != i) {
            assert_eq!(net.status(i, j), Some(Status::Alive), "m{i} sees m{j}");
            let values = net.nodes[i].store().values(&format!("m{j}"));
            assert!(
                values.contains(&("node".into(), format!("record-{j}").into())),
                "m{i} holds m{j}'s state: {values:?}"
            );
            assert_eq!(net.nodes[i].member(&format!("m{j}")).map(|m| m.version), Some(2));
        }
    }
}

#[test]
fn a_change_rides_rumors_and_a_deletion_too() {
    let mut net = Net::new(3);
    net.join_all();
    net.run(Duration::from_secs(3));
    let pulls_before = net.log.len();
    let now = net.at();
    net.nodes[1].set_local("h/web-1", Some("passing"), now);
    net.run(Duration::from_millis(300));
    assert_eq!(net.nodes[2].store().values("m1"), [("h/web-1".into(), "passing".into())]);
    let requests = net.log[pulls_before..]
        .iter()
        .filter(|(_, _, b)| matches!(swim::decode(b), Ok((Message { body: Body::StateRequest { .. }, .. }, _))))
        .count();
    assert_eq!(requests, 0, "a change that arrives by rumor needs no pull");
    let now = net.at();
    net.nodes[1].set_local("h/web-1", None, now);
    net.run(Duration::from_millis(300));
    assert!(net.nodes[2].store().values("m1").is_empty());
    assert_eq!(net.nodes[0].member("m1").map(|m| m.version), Some(2));
}

#[test]
fn a_missed_change_is_pulled() {
    let mut net = Net::new(3);
    net.join_all();
    net.run(Duration::from_secs(3));
    // m2 misses the first change entirely, then hears of the second.
    net.cut[2] = true;
    let now = net.at();
    net.nodes[1].set_local("h/a", Some("1"), now);
    net.run(Duration::from_secs(3));
    net.cut[2] = false;
    let now = net.at();
    net.nodes[1].set_local("h/b", Some("2"), now);
    net.run(Duration::from_secs(2));
    let m1 = net.nodes[2].member("m1").map(|m| (m.version, m.known));
    assert_eq!(m1, Some((2, 2)), "the gap is filled");
    assert_eq!(net.nodes[2].store().values("m1").len(), 2);
}

#[test]
fn removals_are_forgotten_after_the_grace_and_a_replica_cut_off_longer_refetches() {
    let config = SwimConfig { tombstone_grace: Duration::from_secs(2), ..SwimConfig::default() };
    let mut net = Net::with_config(3, config);
    net.join_all();
    net.run(Duration::from_secs(3));
    let now = net.at();
    for key in ["i/a", "i/b", "i/c"] {
        net.nodes[1].set_local(key, Some("x"), now);
    }
    net.run(Duration::from_secs(1));
    assert_eq!(net.nodes[2].store().values("m1").len(), 3);
    // m2 is cut off for longer than the grace, and misses a removal and a new key.
    net.cut[2] = true;
    let now = net.at();
    net.nodes[1].set_local("i/a", None, now);
    net.run(Duration::from_millis(500));
    assert_eq!(net.nodes[0].store().tombstones(), 1, "the removal is remembered for the grace");
    let now = net.at();
    net.nodes[1].set_local("i/d", Some("x"), now);
    net.run(Duration::from_secs(4));
    for i in 0..2 {
        assert_eq!(net.nodes[i].store().tombstones(), 0, "m{i} forgot the removal after the grace");
        assert_eq!(net.nodes[i].removals(), 0);
    }
    let stale = net.nodes[2].store().values("m1");
    assert!(stale.iter().any(|(k, _)| &**k == "i/a"), "m2 still holds the removed key: {stale:?}");
    net.cut[2] = false;
    // Healing: m2 learns m1 is ahead, pulls, finds the holder forgot removals above what
    // it holds, and refetches aside. Readers never see m1 without its keys meanwhile.
    for _ in 0..200 {
        net.run(Duration::from_millis(50));
        let held = net.nodes[2].store().values("m1");
        assert!(["i/b", "i/c"].iter().all(|k| held.iter().any(|(h, _)| &**h == *k)), "m1's keys vanished: {held:?}");
    }
    let keys: Vec<String> = net.nodes[2].store().values("m1").into_iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(keys, ["i/b", "i/c", "i/d"], "the removed key is gone and the new one arrived");
    assert_eq!(net.nodes[2].member("m1").map(|m| (m.version, m.floor)), Some((5, 4)));
}

#[test]
fn removals_held_are_capped() {
    let mut net = Net::new(1);
    let now = net.at();
    let keys = MAX_TOMBSTONES + 100;
    for i in 0..keys {
        net.nodes[0].set_local(&format!("k{i}"), Some("x"), now);
    }
    for i in 0..keys {
        net.nodes[0].set_local(&format!("k{i}"), None, now);
    }
    assert_eq!(net.nodes[0].removals(), MAX_TOMBSTONES);
    assert_eq!(net.nodes[0].store().tombstones(), MAX_TOMBSTONES, "the oldest were forgotten early");
    net.run(Duration::from_secs(301));
    assert_eq!(net.nodes[0].store().tombstones(), 0);
}

#[test]
fn a_silent_member_is_suspected_then_declared_dead_by_everyone() {
    let mut net = Net::new(5);
    net.join_all();
    net.run(Duration::from_secs(3));
    let killed_at = net.now;
    net.cut[4] = true;
    net.run(Duration::from_secs(4));
    for i in 0..4 {
        assert_eq!(net.status(i, 4), Some(Status::Dead), "m{i}");
        let down = net.first(i, |e| matches!(e, Event::Down(n, Status::Dead) if &**n == "m4")).expect("present");
        assert!(down - killed_at < Duration::from_millis(2500), "m{i} after {:?}", down - killed_at);
    }
    // Nobody else was accused along the way.
    for i in 0..4 {
        for j in (0..4).filter(|&j| j != i) {
            assert_eq!(net.status(i, j), Some(Status::Alive));
        }
    }
}

/// A gossip datagram from m0 carrying one claim about a member, by m0.
fn claim_from_m0(entry: Entry) -> Vec<u8> {
    let mut bytes = swim::encode_message(&Message { from: "m0".into(), body: Body::Gossip });
    bytes.extend(swim::encode_rumor(&Rumor::Member { entry, by: "m0".into() }));
    bytes
}

#[test]
fn a_suspect_refutes_and_stays_alive() {
    let mut net = Net::new(3);
    net.join_all();
    net.run(Duration::from_secs(3));
    // m0 wrongly accuses m1 (as a probe lost on a bad path would).
    let entry = net.nodes[0].member("m1").expect("present").entry();
    let bytes = claim_from_m0(Entry { status: Status::Suspect, ..entry });
    let now = net.at();
    net.nodes[2].handle_datagram(addr(0), &bytes, now);
    assert_eq!(net.status(2, 1), Some(Status::Suspect));
    net.nodes[1].handle_datagram(addr(0), &bytes, now);
    assert_eq!(net.nodes[1].incarnation(), 1, "the suspect raised its incarnation");
    net.run(Duration::from_secs(5));
    assert_eq!(net.status(2, 1), Some(Status::Alive));
    assert_eq!(net.status(0, 1), Some(Status::Alive));
    assert_eq!(net.nodes[2].member("m1").map(|m| m.incarnation), Some(1));
}

#[test]
fn a_member_declared_dead_while_alive_is_told_and_comes_back() {
    let mut net = Net::new(3);
    net.join_all();
    net.run(Duration::from_secs(3));
    let entry = net.nodes[0].member("m2").expect("present").entry();
    let bytes = claim_from_m0(Entry { status: Status::Dead, ..entry });
    let now = net.at();
    net.nodes[0].handle_datagram(addr(0), &bytes, now);
    net.nodes[1].handle_datagram(addr(0), &bytes, now);
    assert_eq!(net.status(1, 2), Some(Status::Dead));
    // Nobody probes a dead member, but it still probes them: they tell it.
    net.run(Duration::from_secs(3));
    assert_eq!(net.status(0, 2), Some(Status::Alive));
    assert_eq!(net.status(1, 2), Some(Status::Alive));
}

#[test]
fn an_agent_whose_own_probes_fail_stretches_its_timers() {
    let mut net = Net::new(4);
    net.join_all();
    net.run(Duration::from_secs(3));
    assert_eq!(net.nodes[0].local_health(), 0);
    // m0 can send but hears nothing: its probes fail and no helper's nack comes back.
    let (base, mut now) = (net.base, net.now);
    for _ in 0..400 {
        now += Duration::from_millis(5);
        net.nodes[0].handle_timeout(base + now);
        while net.nodes[0].poll_transmit().is_some() {}
    }
    assert!(net.nodes[0].local_health() >= 3, "score {}", net.nodes[0].local_health());
}

#[test]
fn a_helper_answers_with_a_nack_when_the_target_is_silent() {
    let mut net = Net::new(3);
    net.join_all();
    net.run(Duration::from_secs(3));
    let req = swim::encode_message(&Message {
        from: "m0".into(),
        body: Body::PingReq { seq: 77, target: "m2".into(), addr: addr(2) },
    });
    net.cut[2] = true;
    let now = net.at();
    net.nodes[1].handle_datagram(addr(0), &req, now);
    net.flush();
    let start = net.log.len();
    net.run(Duration::from_millis(200));
    let nack = net.log[start..].iter().any(|(from, to, b)| {
        *from == 1 && *to == 0 && matches!(swim::decode(b), Ok((Message { body: Body::Nack { seq: 77 }, .. }, _)))
    });
    assert!(nack);
}

#[test]
fn leaving_is_seen_at_once_and_a_restart_replaces_the_old_generation() {
    let mut net = Net::new(3);
    net.join_all();
    net.run(Duration::from_secs(3));
    net.nodes[2].leave();
    net.flush();
    assert_eq!(net.status(0, 2), Some(Status::Left));
    assert_eq!(net.status(1, 2), Some(Status::Left));
    // The same name starts again, newer, on another address.
    let me = Identity { name: "m2".into(), generation: T0_MS + 60_000, addr: addr(2) };
    net.nodes[2] = Swim::new(me, SwimConfig::default(), MapStore::default(), 9, net.at());
    let now = net.at();
    net.nodes[2].set_local("node", Some("new"), now);
    let now = net.at();
    net.nodes[2].join(vec![addr(0)], now);
    net.run(Duration::from_secs(3));
    for i in 0..2 {
        let m = net.nodes[i].member("m2").expect("present");
        assert_eq!((m.status, m.generation), (Status::Alive, T0_MS + 60_000));
        assert_eq!(net.nodes[i].store().values("m2"), [("node".into(), "new".into())]);
    }
}

#[test]
fn garbage_is_counted_and_changes_nothing() {
    let mut net = Net::new(2);
    net.join_all();
    net.run(Duration::from_secs(2));
    let now = net.at();
    for bytes in [&b""[..], &[9, 9, 9], &[swim::SWIM_VERSION, 0xff, 0xff, 0xff]] {
        net.nodes[0].handle_datagram(addr(1), bytes, now);
    }
    assert_eq!(net.nodes[0].refused().malformed, 3);
    assert_eq!(net.status(0, 1), Some(Status::Alive));
}

#[test]
fn idle_probing_is_small() {
    let mut net = Net::new(5);
    net.join_all();
    net.run(Duration::from_secs(5));
    let start = net.log.len();
    net.run(Duration::from_secs(10));
    let sent: usize = net.log[start..].iter().filter(|(f, _, _)| *f == 0).map(|(_, _, b)| b.len() + 76).sum();
    // Four pings and four acks a second at about 100 bytes each on the wire.
    assert!(sent / 10 < 1_000, "{} B/s", sent / 10);
}
