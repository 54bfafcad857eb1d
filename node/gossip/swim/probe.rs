//! Probing: the round-robin of pings, indirect probes and nacks, the failed cycles
//! that turn into a suspicion, relaying others' indirect probes, pinging one member held
//! dead, telling a member held dead that it is, and comparing member counts.

use super::*;

impl<S: Store> Swim<S> {
    /// A prober holds another number of members up than we do: one of us missed a join
    /// or a death that the rumors did not bring. An exchange with it settles which (at
    /// most one such exchange per [`COUNT_SYNC_EVERY`], since counts also differ for a
    /// moment while a change spreads).
    pub(super) fn compare_counts(&mut self, theirs: u32, src: SocketAddr, now: Instant) {
        if theirs == self.cluster_size() as u32 || now < self.next_count_sync {
            return;
        }
        self.next_count_sync = now + COUNT_SYNC_EVERY;
        self.send_sync(src, false);
    }

    /// A member we hold suspect, dead or departed is still talking to us: it does not
    /// know. Tell it (at most once a second), so it refutes at once instead of at its
    /// next anti-entropy exchange, or, for a suspicion whose rumors were all sent while
    /// it could not be reached (a partition), not at all before the timer runs out.
    pub(super) fn nudge_if_held_down(&mut self, from: &str, src: SocketAddr, now: Instant) {
        let Some(idx) = self.members.find(from) else { return };
        let Some(m) = self.members.get(idx) else { return };
        if m.status == Status::Alive || m.addr != src {
            return;
        }
        if self.nudged.get(&idx).is_some_and(|t| now < *t + NUDGE_EVERY) {
            return;
        }
        self.nudged.insert(idx, now);
        let rumor = Rumor::Member { entry: m.entry(), by: self.me.name.clone() };
        let mut bytes = swim::encode_message(&Message { from: self.me.name.clone(), body: Body::Gossip });
        bytes.extend(swim::encode_rumor(&rumor));
        self.out.push_back(Transmit { to: src, bytes });
    }

    /// Pings one member held dead (not one that left): nobody probes the dead, so after
    /// a partition heals, or after a wrong verdict, this is how the two sides find each
    /// other again. Whoever holds the other dead tells it so, and it refutes.
    pub(super) fn reconnect(&mut self) {
        if self.forget.is_empty() {
            return;
        }
        let pick = self.rng.random_range(0..self.forget.len());
        let Some(f) = self.forget.get(pick) else { return };
        let Some(m) = self.members.get(f.idx) else { return };
        if !f.matches(m) || m.status != Status::Dead {
            return;
        }
        let (addr, target) = (m.addr, m.name.to_string());
        let seq = self.next_seq();
        let members = self.cluster_size() as u32;
        self.send(addr, Body::Ping { seq, target, members }, None);
    }

    pub(super) fn run_probe(&mut self, now: Instant) {
        if let Some(p) = &self.probe {
            if !p.acked && !p.indirect && now >= p.timeout_at {
                self.ask_others();
            }
        }
        if self.probe.as_ref().is_some_and(|p| now >= p.end_at) {
            self.end_probe();
        }
        if self.probe.is_none() && now >= self.next_probe {
            self.start_probe(now);
        }
    }

    pub(super) fn next_target(&mut self) -> Option<MemberIdx> {
        if let Some((idx, _)) = self.retry {
            if self.members.get(idx).is_some_and(Member::is_up) {
                return Some(idx);
            }
            self.retry = None;
        }
        if let Some(idx) = self.early.take() {
            if self.members.get(idx).is_some_and(|m| m.status == Status::Suspect) {
                return Some(idx);
            }
        }
        for _ in 0..2 {
            while self.probe_pos < self.probe_order.len() {
                let idx = self.probe_order[self.probe_pos];
                self.probe_pos += 1;
                if self.members.get(idx).is_some_and(Member::is_up) {
                    return Some(idx);
                }
            }
            self.probe_order = self.members.iter().filter(|(_, m)| m.is_up()).map(|(i, _)| i).collect();
            self.probe_order.shuffle(&mut self.rng);
            self.probe_pos = 0;
        }
        None
    }

    pub(super) fn start_probe(&mut self, now: Instant) {
        let interval = self.health.scale(self.config.probe_interval);
        self.next_probe = now + interval;
        let Some(target) = self.next_target() else { return };
        let Some(m) = self.members.get(target) else { return };
        let (name, addr) = (m.name.clone(), m.addr);
        let seq = self.next_seq();
        let members = self.cluster_size() as u32;
        self.send(addr, Body::Ping { seq, target: name.to_string(), members }, Some(Topic::Member(name.to_string())));
        self.probe = Some(Probe {
            target,
            name,
            seq,
            timeout_at: now + self.health.scale(self.config.probe_timeout),
            end_at: now + interval,
            indirect: false,
            acked: false,
            nacks_expected: 0,
            nacks: 0,
        });
    }

    pub(super) fn ask_others(&mut self) {
        let Some(p) = self.probe.as_mut() else { return };
        p.indirect = true;
        let (target, seq, name) = (p.target, p.seq, p.name.to_string());
        let Some(addr) = self.members.get(target).map(|m| m.addr) else { return };
        let helpers = self.random_up(self.config.indirect_probes as usize, &[target]);
        if let Some(p) = self.probe.as_mut() {
            p.nacks_expected = helpers.len() as u32;
        }
        // A second direct ping beside the indirect ones: on a lossy path it is the
        // likeliest of them to get through (two datagrams against four).
        let members = self.cluster_size() as u32;
        self.send(addr, Body::Ping { seq, target: name.clone(), members }, Some(Topic::Member(name.clone())));
        for h in helpers {
            if let Some(to) = self.members.get(h).map(|m| m.addr) {
                self.send(to, Body::PingReq { seq, target: name.clone(), addr }, None);
            }
        }
    }

    pub(super) fn end_probe(&mut self) {
        let Some(p) = self.probe.take() else { return };
        if p.acked {
            return;
        }
        if p.nacks < p.nacks_expected {
            self.health.worse();
        }
        if p.nacks_expected > 0 {
            // Helpers that did not even say they got no answer: datagrams are being
            // lost around this agent, not only at the target. The share of nacks
            // missing measures the same round-trip loss as late acks do, so it feeds
            // the same estimate (raising it only: a cycle with every nack back says
            // nothing of the many pings that went well), and a network that turns lossy
            // is noticed in the very cycle that would otherwise accuse a live member.
            // With every nack back the target alone is silent: a dead member is
            // suspected as fast as on a clean network.
            let missing = f64::from(p.nacks_expected.saturating_sub(p.nacks)) / f64::from(p.nacks_expected);
            self.see_loss(missing.max(self.ping_loss));
        }
        self.health.worse();
        let still_same = self.members.get(p.target).is_some_and(|m| m.name == p.name && m.is_up());
        if !still_same {
            self.retry = None;
            return;
        }
        let failures = match self.retry {
            Some((idx, n)) if idx == p.target => n + 1,
            _ => 1,
        };
        // One more failed cycle on a lossy network, three more on a very lossy one: at
        // 30% loss a cycle of a live member fails about one time in nine, so three
        // cycles in a row would still accuse one member a second in a thousand.
        let extra = [0, 1, 3][self.loss_extra() as usize];
        if failures >= self.config.suspect_after + extra {
            self.retry = None;
            self.suspect(p.target, p.end_at);
        } else {
            self.retry = Some((p.target, failures));
        }
    }

    pub(super) fn on_ack(&mut self, seq: u32, version: u64, now: Instant) {
        if let Some(relay) = self.relays.remove(&seq) {
            self.relay_deadlines.remove(&(relay.deadline, seq));
            self.send(relay.asker, Body::Ack { seq: relay.asker_seq, version }, None);
            return;
        }
        let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq && !p.acked) else { return };
        p.acked = true;
        // A direct ack in time says the path is clean; an ack that came only after the
        // timeout (through a helper, or the second ping) says a datagram was lost on
        // the way to a live member. A member that never answers teaches nothing about
        // the network (it is likely dead), so it is not counted.
        let (late, target) = (if p.indirect { 1.0 } else { 0.0 }, p.target);
        self.see_loss(late);
        if self.retry.is_some_and(|(i, _)| i == target) {
            self.retry = None;
        }
        self.health.better();
        let Some(m) = self.members.get(target) else { return };
        if version > m.known {
            let addr = m.addr;
            self.members.update(target, |m| m.known = version);
            self.mark_behind(target, addr, now);
        }
    }

    pub(super) fn expire_relays(&mut self, now: Instant) {
        while let Some(&(deadline, seq)) = self.relay_deadlines.first() {
            if deadline > now {
                break;
            }
            self.relay_deadlines.pop_first();
            if let Some(relay) = self.relays.remove(&seq) {
                self.send(relay.asker, Body::Nack { seq: relay.asker_seq }, None);
            }
        }
    }
}
