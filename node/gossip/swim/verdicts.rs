//! Verdicts: suspicions raised, confirmed and timed out, refutations, and the merging
//! of every claim others make about a member under SWIM's precedence rules.

use super::*;

impl<S: Store> Swim<S> {
    pub(super) fn suspicion_bounds(&self) -> (Duration, Duration, u32) {
        let n = self.cluster_size() as f64;
        let scale = f64::from(1 + self.loss_extra());
        let min = self.config.probe_interval.mul_f64(self.config.suspicion_mult * n.log10().max(1.0) * scale);
        let max = min.mul_f64(self.config.suspicion_max_mult);
        let expected = (self.cluster_size().saturating_sub(2)).min(self.config.indirect_probes as usize) as u32;
        (min, max, expected)
    }

    pub(super) fn suspect(&mut self, idx: MemberIdx, now: Instant) {
        let Some(m) = self.members.get(idx) else { return };
        let entry = Entry { status: Status::Suspect, ..m.entry() };
        let by = self.me.name.clone();
        self.merge(&entry, &by, true, now);
        // Tell the suspect at once, so it can refute before anyone else has to.
        let mut bytes = swim::encode_message(&Message { from: self.me.name.clone(), body: Body::Gossip });
        bytes.extend(swim::encode_rumor(&Rumor::Member { entry: entry.clone(), by }));
        self.out.push_back(Transmit { to: entry.addr, bytes });
    }

    pub(super) fn start_suspicion(&mut self, idx: MemberIdx, incarnation: u32, accuser: Arc<str>, now: Instant) {
        self.stop_suspicion(idx);
        let (min, max, expected) = self.suspicion_bounds();
        let s = Suspicion::new(incarnation, accuser, now, min, max, expected);
        self.suspicion_deadlines.insert((s.deadline(), idx));
        self.suspicions.insert(idx, s);
    }

    /// Someone else suspects `idx`: probe it next, with a chance that makes about
    /// twice the confirmations a suspicion needs across the cluster. Their verdicts,
    /// from other vantage points, either confirm it within a probe interval (a dead
    /// member is then declared at the shortest timeout) or find it alive and add no
    /// weight; without this, confirmations wait for the round-robin to come by, which
    /// at 1,000 members is seconds for some. A live suspect gets a handful of extra
    /// pings, not one per member.
    pub(super) fn probe_suspect_early(&mut self, idx: MemberIdx) {
        let (_, _, expected) = self.suspicion_bounds();
        let chance = (2.0 * f64::from(expected) / self.cluster_size() as f64).min(1.0);
        if self.rng.random::<f64>() < chance {
            self.early = Some(idx);
        }
    }

    pub(super) fn stop_suspicion(&mut self, idx: MemberIdx) {
        if let Some(s) = self.suspicions.remove(&idx) {
            self.suspicion_deadlines.remove(&(s.deadline(), idx));
        }
    }

    pub(super) fn expire_suspicions(&mut self, now: Instant) {
        while let Some(&(deadline, idx)) = self.suspicion_deadlines.first() {
            if deadline > now {
                break;
            }
            self.suspicion_deadlines.pop_first();
            let Some(s) = self.suspicions.remove(&idx) else { continue };
            let Some(m) = self.members.get(idx) else { continue };
            if m.status == Status::Suspect && m.incarnation == s.incarnation {
                let entry = Entry { status: Status::Dead, ..m.entry() };
                let by = self.me.name.clone();
                self.merge(&entry, &by, true, now);
            }
        }
    }

    pub(super) fn my_entry(&self) -> Entry {
        Entry {
            name: self.me.name.clone(),
            generation: self.me.generation,
            incarnation: self.incarnation,
            status: Status::Alive,
            addr: self.me.addr,
            version: self.version,
        }
    }

    /// Raises the incarnation above a claim against us and spreads that, with twice
    /// the usual sends, and straight to the accuser, whose timer runs first.
    pub(super) fn refute(&mut self, claimed: u32, accuser: &str) {
        self.incarnation = self.incarnation.max(claimed) + 1;
        self.health.worse();
        let rumor = swim::encode_rumor(&Rumor::Member { entry: self.my_entry(), by: self.me.name.clone() });
        let limit = self.retransmit_limit();
        self.queue.push_extra(Topic::Member(self.me.name.clone()), rumor.clone(), limit);
        self.urgent = true;
        if let Some(to) = self.members.find(accuser).and_then(|i| self.members.get(i)).map(|m| m.addr) {
            let mut bytes = swim::encode_message(&Message { from: self.me.name.clone(), body: Body::Gossip });
            bytes.extend_from_slice(&rumor);
            self.out.push_back(Transmit { to, bytes });
        }
    }

    /// Merges one claim about a member. `spread`: a rumor to pass on if it changed
    /// something (entries from an anti-entropy exchange are not passed on).
    pub(super) fn merge(&mut self, entry: &Entry, by: &str, spread: bool, now: Instant) {
        if entry.name == self.me.name {
            let mine = entry.generation == self.me.generation;
            if mine && entry.status != Status::Alive && !self.leaving && entry.incarnation >= self.incarnation {
                self.refute(entry.incarnation, by);
            } else if mine && entry.incarnation > self.incarnation {
                // An old claim of ours at a higher incarnation (from before a refutation
                // we do not remember): go above it.
                self.refute(entry.incarnation, by);
            }
            return;
        }
        let claim = (entry.generation, entry.incarnation, entry.status);
        let Some(idx) = self.members.find(&entry.name) else {
            if matches!(entry.status, Status::Alive | Status::Suspect) {
                self.add_member(entry, by, spread, now);
            }
            return;
        };
        let Some(held) = self.members.get(idx).map(|m| (m.generation, m.incarnation, m.status)) else { return };
        if !overrides(claim, held) {
            // The same suspicion from someone new is a confirmation (Lifeguard).
            if entry.status == Status::Suspect && held == claim {
                let accuser: Arc<str> = by.into();
                if let Some(s) = self.suspicions.get_mut(&idx) {
                    let before = s.deadline();
                    if s.confirm(&accuser) {
                        let after = s.deadline();
                        self.suspicion_deadlines.remove(&(before, idx));
                        self.suspicion_deadlines.insert((after, idx));
                        if spread {
                            self.spread_member(entry, by);
                            self.urgent = true;
                        }
                    }
                }
            }
            return;
        }
        let new_generation = entry.generation != held.0;
        let was_up = matches!(held.2, Status::Alive | Status::Suspect);
        self.members.update(idx, |m| {
            m.generation = entry.generation;
            m.incarnation = entry.incarnation;
            m.addr = entry.addr;
            m.status = entry.status;
            if new_generation {
                m.version = 0;
                m.known = 0;
                m.floor = 0;
            }
        });
        if new_generation {
            self.store.remove(&entry.name);
            self.ahead.remove(&idx);
            self.behind.remove(&idx);
            self.refetch.remove(&idx);
        }
        let name = self.members.get(idx).map(|m| m.name.clone()).unwrap_or_else(|| entry.name.as_str().into());
        match entry.status {
            Status::Alive => {
                self.stop_suspicion(idx);
                if !was_up || new_generation {
                    self.events.push_back(Event::Up(name));
                }
            }
            Status::Suspect => {
                self.start_suspicion(idx, entry.incarnation, by.into(), now);
                self.probe_suspect_early(idx);
                if !was_up || new_generation {
                    self.events.push_back(Event::Up(name));
                }
            }
            Status::Dead | Status::Left => {
                self.stop_suspicion(idx);
                self.behind.remove(&idx);
                self.events.push_back(Event::Down(name.clone(), entry.status));
                self.forget.push_back(Forget {
                    at: now + self.config.dead_grace,
                    idx,
                    name,
                    generation: entry.generation,
                    incarnation: entry.incarnation,
                    status: entry.status,
                });
            }
        }
        if matches!(entry.status, Status::Alive | Status::Suspect) {
            self.note_version(entry, entry.addr, now);
        }
        if spread {
            self.spread_member(entry, by);
            // Every verdict and every way back from one is urgent; a member that was
            // alive and is again (a restart, a new address) is not.
            self.urgent |= entry.status != Status::Alive || held.2 != Status::Alive;
        }
    }

    /// A member as `entry` claims it, holding its state up to `version`.
    pub(super) fn member_from(&mut self, entry: &Entry, version: u64) -> Member {
        Member {
            name: self.store.intern(&entry.name),
            addr: entry.addr,
            generation: entry.generation,
            incarnation: entry.incarnation,
            status: entry.status,
            version,
            known: version,
            floor: 0,
        }
    }

    pub(super) fn add_member(&mut self, entry: &Entry, by: &str, spread: bool, now: Instant) {
        let member = self.member_from(entry, 0);
        let name = member.name.clone();
        let idx = self.members.insert(member);
        // A new member goes into the rest of this round of probes at a random place.
        let pos = self.rng.random_range(self.probe_pos..=self.probe_order.len());
        self.probe_order.insert(pos, idx);
        self.events.push_back(Event::Up(name));
        if entry.status == Status::Suspect {
            self.start_suspicion(idx, entry.incarnation, by.into(), now);
        }
        self.note_version(entry, entry.addr, now);
        if spread {
            self.spread_member(entry, by);
        }
    }

    /// Queues a claim about a member as a rumor.
    pub(super) fn spread_member(&mut self, entry: &Entry, by: &str) {
        let rumor = Rumor::Member { entry: entry.clone(), by: by.to_owned() };
        // Each accuser's suspicion travels on its own, so that every agent counts the
        // independent confirmations (a single topic would keep only the latest
        // accuser). Any other claim replaces what was queued about the member.
        let topic = match entry.status {
            Status::Suspect => Topic::Accusation(entry.name.clone(), by.to_owned()),
            _ => Topic::Member(entry.name.clone()),
        };
        self.queue.push(topic, swim::encode_rumor(&rumor));
    }
}
