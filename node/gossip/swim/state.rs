//! Members' versioned state: rumored keys applied by version, the watermark of what
//! is held completely, pulls that fill gaps, and serving those pulls.

use super::*;

impl<S: Store> Swim<S> {
    /// Records that `holder` has `entry.name`'s state up to `entry.version`.
    pub(super) fn note_version(&mut self, entry: &Entry, holder: SocketAddr, now: Instant) {
        let Some(idx) = self.members.find(&entry.name) else { return };
        let Some(m) = self.members.get(idx) else { return };
        if m.generation != entry.generation || !m.is_up() {
            return;
        }
        let (known, version, addr) = (m.known, m.version, m.addr);
        if entry.version > known {
            self.members.update(idx, |m| m.known = entry.version);
        }
        if entry.version > version {
            self.mark_behind(idx, holder, now);
        } else if entry.version == 0 && known == 0 {
            // Whoever told us of it holds none of its state either (it learned of the
            // member moments ago): nobody but the member can say what there is.
            self.mark_behind(idx, addr, now);
        }
    }

    /// Whether a member's state is all held: every version heard of, and something
    /// heard of (a member whose version nobody has told us yet is asked itself).
    fn settled(m: &Member) -> bool {
        m.known <= m.version && m.version > 0
    }

    pub(super) fn mark_behind(&mut self, idx: MemberIdx, holder: SocketAddr, now: Instant) {
        self.behind.entry(idx).and_modify(|b| b.holder = holder).or_insert(Behind { holder, since: now });
        // A member none of whose state is held has nothing in flight to wait for: ask now.
        if self.members.get(idx).is_some_and(|m| m.version == 0) {
            self.next_pull = self.next_pull.min(now);
        }
    }

    pub(super) fn apply_update(&mut self, u: Update, src: SocketAddr, now: Instant) {
        if u.owner == self.me.name {
            return;
        }
        let Some(idx) = self.members.find(&u.owner) else { return };
        let Some(m) = self.members.get(idx) else { return };
        if m.generation != u.generation || u.version <= m.version {
            return;
        }
        if self.ahead.get(&idx).is_some_and(|a| a.contains(&u.version)) {
            return;
        }
        let (name, generation, held) = (m.name.clone(), m.generation, m.version);
        if self.store.apply(&u.owner, &u.key, u.value.as_deref(), u.version) && u.value.is_none() {
            self.note_removal(name.clone(), generation, u.version, now);
        }
        let contiguous = u.version == held + 1;
        if contiguous {
            self.advance(idx, u.version);
        } else {
            self.ahead.entry(idx).or_default().push(u.version);
        }
        let (version, known) = self.members.get(idx).map(|m| (m.version, m.known)).unwrap_or_default();
        if u.version > known {
            self.members.update(idx, |m| m.known = u.version);
        }
        if self.members.get(idx).is_some_and(|m| m.known > m.version) {
            self.mark_behind(idx, src, now);
        } else {
            self.behind.remove(&idx);
        }
        self.events.push_back(Event::State(name, version));
        let topic = Topic::Key(u.owner.clone(), u.key.clone());
        self.queue.push(topic, swim::encode_rumor(&Rumor::Update(u)));
    }

    /// Moves a member's watermark to `to`, and past every version already held above it.
    pub(super) fn advance(&mut self, idx: MemberIdx, to: u64) {
        let mut version = to;
        if let Some(ahead) = self.ahead.get_mut(&idx) {
            ahead.retain(|v| *v > version);
            ahead.sort_unstable();
            while ahead.first() == Some(&(version + 1)) {
                version += 1;
                ahead.remove(0);
            }
            if ahead.is_empty() {
                self.ahead.remove(&idx);
            }
        }
        self.members.update(idx, |m| {
            m.version = m.version.max(version);
            m.known = m.known.max(m.version);
        });
    }

    pub(super) fn run_pulls(&mut self, now: Instant) {
        let expired: Vec<u32> = self.pulls.iter().filter(|(_, p)| p.at <= now).map(|(s, _)| *s).collect();
        for seq in expired {
            self.pulls.remove(&seq);
        }
        if self.behind.is_empty() {
            return;
        }
        let room = MAX_PULLS.saturating_sub(self.pulls.len());
        if room == 0 {
            return;
        }
        let in_flight: Vec<MemberIdx> = self.pulls.values().map(|p| p.idx).collect();
        let grace = self.config.gossip_interval * 2;
        let mut due: Vec<(MemberIdx, Behind)> = Vec::new();
        let mut settled = Vec::new();
        for (&idx, &b) in &self.behind {
            if due.len() >= room {
                break;
            }
            let Some(m) = self.members.get(idx) else {
                settled.push(idx);
                continue;
            };
            let refetching = self.refetch.contains_key(&idx);
            if !m.is_up() || (Self::settled(m) && !refetching) {
                settled.push(idx);
                continue;
            }
            if in_flight.contains(&idx) {
                continue;
            }
            // A fresh member has nothing to wait for; a gap may still fill from rumors
            // in flight, so it waits a little.
            if m.version == 0 || refetching || now >= b.since + grace {
                due.push((idx, b));
            }
        }
        for idx in settled {
            self.behind.remove(&idx);
        }
        for (idx, b) in due {
            let Some(m) = self.members.get(idx) else { continue };
            // Ask the last holder heard of; once a gap has lasted past two pull
            // timeouts, ask the member itself.
            let to = if b.since + PULL_TIMEOUT * 2 <= now || m.known == 0 { m.addr } else { b.holder };
            let refetch = self.refetch.get(&idx).map(|r| r.cursor);
            let (owner, generation) = (m.name.to_string(), m.generation);
            let from = refetch.unwrap_or(m.version);
            let seq = self.next_seq();
            self.pulls.insert(seq, Pull { idx, at: now + PULL_TIMEOUT, from, refetch: refetch.is_some() });
            self.send(to, Body::StateRequest { seq, owner, generation, from }, None);
        }
    }

    pub(super) fn serve_state(&mut self, to: SocketAddr, seq: u32, owner: &str, generation: u64, from: u64) {
        let (upto, floor) = if owner == self.me.name && generation == self.me.generation {
            (self.version, self.floor)
        } else {
            match self.members.find(owner).and_then(|i| self.members.get(i)) {
                Some(m) if m.generation == generation => (m.version, m.floor),
                _ => return,
            }
        };
        // A member asked for its own state answers even when it has none, so that the
        // asker stops asking; a holder with nothing newer stays silent.
        if upto <= from && !(upto == 0 && owner == self.me.name) {
            return;
        }
        let budget = MAX_MESSAGE - 64 - owner.len();
        let (updates, complete) = self.store.delta(owner, from, upto, budget);
        let to_version = match updates.last() {
            Some(kv) if !complete => kv.version.min(upto),
            _ => upto,
        };
        let body = Body::StateReply { seq, owner: owner.to_owned(), generation, to: to_version, floor, updates };
        self.send(to, body, None);
    }

    /// Takes a holder's answer to a pull: `to` is what the asker now holds completely,
    /// `floor` the version at or below which the holder forgot removals.
    pub(super) fn on_state_reply(
        &mut self,
        seq: u32,
        owner: &str,
        generation: u64,
        (to, floor): (u64, u64),
        updates: Vec<KeyValue>,
        now: Instant,
    ) {
        let Some(pull) = self.pulls.remove(&seq) else { return };
        let Some(idx) = self.members.find(owner) else { return };
        let Some(m) = self.members.get(idx) else { return };
        if m.generation != generation || idx != pull.idx {
            return;
        }
        if pull.refetch {
            self.on_refetch_reply(idx, (to, floor), updates, now);
            return;
        }
        if to == 0 {
            // The member has no state at all.
            self.behind.remove(&idx);
            return;
        }
        if floor > pull.from && m.version > 0 {
            // Removals this agent may never have seen (it was behind for longer than the
            // grace) are forgotten by the holder: a key held here may be gone. Fetch the
            // whole state again, aside.
            let holder = m.addr;
            self.refetch.insert(idx, Refetch { floor, ..Refetch::default() });
            self.behind.entry(idx).or_insert(Behind { holder, since: now });
            self.next_pull = now;
            return;
        }
        if to <= m.version {
            return;
        }
        let name = m.name.clone();
        if floor > pull.from {
            // Nothing was held: what arrives is the holder's state as it stands.
            self.members.update(idx, |m| m.floor = m.floor.max(floor));
        }
        for kv in &updates {
            if self.store.apply(owner, &kv.key, kv.value.as_deref(), kv.version) && kv.value.is_none() {
                self.note_removal(name.clone(), generation, kv.version, now);
            }
        }
        self.advance(idx, to);
        self.after_pull(idx, now);
    }

    /// One page of a refetch. A holder that forgot more removals since it began means
    /// beginning again.
    fn on_refetch_reply(&mut self, idx: MemberIdx, (to, floor): (u64, u64), updates: Vec<KeyValue>, now: Instant) {
        let Some(r) = self.refetch.get_mut(&idx) else { return };
        if floor > r.floor {
            *r = Refetch { floor, ..Refetch::default() };
            self.next_pull = now;
            return;
        }
        if to <= r.cursor && to != 0 {
            return;
        }
        r.keys.extend(updates);
        r.cursor = to;
        let Some(m) = self.members.get(idx) else { return };
        if to < m.known.max(m.version) {
            self.next_pull = now;
            return;
        }
        let Some(r) = self.refetch.remove(&idx) else { return };
        let (name, generation) = (m.name.clone(), m.generation);
        self.store.replace_upto(&name, r.cursor, &r.keys);
        for kv in r.keys.iter().filter(|kv| kv.value.is_none()) {
            self.note_removal(name.clone(), generation, kv.version, now);
        }
        self.members.update(idx, |m| m.floor = m.floor.max(r.floor));
        self.advance(idx, r.cursor);
        self.after_pull(idx, now);
    }

    /// After a pull's keys are in: done, or ask again at once for the rest.
    fn after_pull(&mut self, idx: MemberIdx, now: Instant) {
        let Some(m) = self.members.get(idx) else { return };
        let (name, version) = (m.name.clone(), m.version);
        if Self::settled(m) {
            self.behind.remove(&idx);
        } else if let Some(b) = self.behind.get_mut(&idx) {
            // More to fetch: ask again at once rather than after the gap grace.
            b.since = now - self.config.gossip_interval * 2;
        }
        self.events.push_back(Event::State(name, version));
        self.next_pull = self.next_pull.min(now);
    }

    /// Books a removal to forget after the grace; past [`MAX_TOMBSTONES`] the oldest
    /// goes early.
    pub(super) fn note_removal(&mut self, owner: Arc<str>, generation: u64, version: u64, now: Instant) {
        self.removals.push_back(Removal { at: now + self.config.tombstone_grace, owner, generation, version });
        while self.removals.len() > MAX_TOMBSTONES {
            let Some(r) = self.removals.pop_front() else { break };
            self.forget_removal(&r.owner, r.generation, r.version);
        }
    }

    /// Forgets every removal whose grace has passed, one store call per member.
    pub(super) fn forget_removals(&mut self, now: Instant) {
        let mut due: BTreeMap<(Arc<str>, u64), u64> = BTreeMap::new();
        while self.removals.front().is_some_and(|r| r.at <= now) {
            let Some(r) = self.removals.pop_front() else { break };
            let v = due.entry((r.owner, r.generation)).or_default();
            *v = (*v).max(r.version);
        }
        for ((owner, generation), version) in due {
            self.forget_removal(&owner, generation, version);
        }
    }

    fn forget_removal(&mut self, owner: &str, generation: u64, version: u64) {
        if owner == self.me.name {
            if generation == self.me.generation {
                self.store.purge(owner, version);
                self.floor = self.floor.max(version);
            }
            return;
        }
        let Some(idx) = self.members.find(owner) else { return };
        if self.members.get(idx).is_some_and(|m| m.generation == generation) {
            self.store.purge(owner, version);
            self.members.update(idx, |m| m.floor = m.floor.max(version));
        }
    }
}
