//! Dissemination rounds and anti-entropy: gossip datagrams while rumors wait, the
//! bucketed digest exchange and the entries of buckets that differ.

use super::*;

impl<S: Store> Swim<S> {
    /// Pushes waiting rumors to `gossip_fanout` random members, while a rumor is fresh
    /// (sent fewer than three rounds' worth of times, more on a lossy network). The rest
    /// of a rumor's sends ride probes and acks, which go out anyway: its first hops
    /// decide how fast it spreads, and a gossip datagram that carries one rumor costs
    /// twice that rumor in headers.
    pub(super) fn gossip_round(&mut self) {
        if !self.gossip_due() {
            return;
        }
        for idx in self.random_up(self.config.gossip_fanout as usize, &[]) {
            if let Some(to) = self.members.get(idx).map(|m| m.addr) {
                self.send(to, Body::Gossip, None);
            }
        }
    }

    pub(super) fn gossip_due(&self) -> bool {
        // On a lossy network more of a rumor's sends go to random members: the sends
        // that ride probes reach the few members this agent probes and is probed by,
        // and at 30% loss a member can miss every one of those.
        let hot = 3 * self.config.gossip_fanout * (1 + self.loss_extra());
        self.queue.least_sent().is_some_and(|sent| sent < hot)
    }

    pub(super) fn sync_period(&self) -> Duration {
        let n = self.cluster_size();
        if n <= 32 {
            return self.config.sync_interval;
        }
        let factor = ((n as f64 / 32.0).log2().ceil() as u32) + 1;
        self.config.sync_interval * factor
    }

    pub(super) fn digest(&self) -> Vec<u64> {
        let mut d = self.members.digest().to_vec();
        let me = self.my_entry();
        d[bucket_of(&me.name)] ^= entry_hash(&me.name, me.generation, me.incarnation, me.status, me.version);
        d
    }

    pub(super) fn differing(&self, theirs: &[u64]) -> u64 {
        self.digest().iter().zip(theirs).enumerate().filter(|(_, (a, b))| a != b).fold(0, |m, (i, _)| m | (1 << i))
    }

    pub(super) fn send_sync(&mut self, to: SocketAddr, reply: bool) {
        let seq = self.next_seq();
        let body = Body::Sync { seq, reply, me: self.my_entry(), buckets: self.digest() };
        self.send(to, body, None);
    }

    pub(super) fn send_members(&mut self, to: SocketAddr, seq: u32, differ: u64) {
        let mut entries: Vec<Entry> = self
            .members
            .iter()
            .filter(|(_, m)| differ & (1 << bucket_of(&m.name)) != 0)
            .map(|(_, m)| m.entry())
            .collect();
        if differ & (1 << bucket_of(&self.me.name)) != 0 {
            entries.push(self.my_entry());
        }
        let mut batch = Vec::new();
        let mut size = 0;
        for e in entries {
            let len = e.name.len() + ENTRY_LEN;
            if size + len > MAX_MESSAGE - 64 && !batch.is_empty() {
                self.send(to, Body::Members { seq, entries: std::mem::take(&mut batch) }, None);
                size = 0;
            }
            size += len;
            batch.push(e);
        }
        if !batch.is_empty() {
            self.send(to, Body::Members { seq, entries: batch }, None);
        }
    }
}
