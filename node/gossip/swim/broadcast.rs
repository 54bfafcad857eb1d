//! The rumor queue: changes waiting to ride outgoing datagrams. Each rumor is sent a
//! bounded number of times (the caller gives the limit, about λ·log N), the least-sent
//! first, and a newer rumor about the same member or the same key replaces the older
//! one, so a flapping value costs one slot, not one per flap. The queue holds at most
//! [`MAX_RUMORS`]: past that (a mass join, where every agent hears of thousands of new
//! members at once) the rumor sent most, oldest among equals, is dropped, and what it
//! carried reaches the rest through anti-entropy. Pure.

use std::collections::{BTreeSet, HashMap};

/// Most rumors queued. A datagram carries about twenty and an agent sends about twenty
/// datagrams a second, so at up to 32 sends per rumor this is well over half a minute
/// of backlog: anything older goes faster by anti-entropy. It bounds the memory a burst
/// of changes takes (about 200 bytes per rumor).
pub const MAX_RUMORS: usize = 1024;

/// What a rumor is about; a newer rumor with the same topic replaces the older.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A member's liveness.
    Member(String),
    /// One accuser's suspicion of a member.
    Accusation(String, String),
    /// One key of a member's state.
    Key(String, String),
}

#[derive(Debug)]
struct Queued {
    topic: Topic,
    bytes: Vec<u8>,
    sent: u32,
    extra: u32,
}

/// Rumors to send, with how often each has been sent.
#[derive(Debug, Default)]
pub struct Broadcasts {
    /// (times sent, id), with ids counting down from the top: iteration order is least
    /// sent first and newest first among equals, so a fresh change never waits behind
    /// a backlog of older rumors none of which has gone out yet (after a mass join,
    /// a thousand of them), and the backlog is what a full queue drops.
    order: BTreeSet<(u32, u64)>,
    items: HashMap<u64, Queued>,
    by_topic: HashMap<Topic, u64>,
    next_id: u64,
}

impl Broadcasts {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rumors waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// How often the least-sent rumor waiting has been sent (`None`: nothing waits).
    pub fn least_sent(&self) -> Option<u32> {
        self.order.first().map(|&(sent, _)| sent)
    }

    /// Queues an encoded rumor, replacing any older one on the same topic.
    pub fn push(&mut self, topic: Topic, bytes: Vec<u8>) {
        self.push_extra(topic, bytes, 0);
    }

    /// Queues a rumor to be sent `extra` times more than the limit (a refutation, which
    /// must outrun every timer of a suspicion already spreading).
    pub fn push_extra(&mut self, topic: Topic, bytes: Vec<u8>, extra: u32) {
        if let Some(old) = self.by_topic.remove(&topic) {
            if let Some(q) = self.items.remove(&old) {
                self.order.remove(&(q.sent, old));
            }
        }
        self.next_id += 1;
        let id = u64::MAX - self.next_id;
        self.order.insert((0, id));
        self.by_topic.insert(topic.clone(), id);
        self.items.insert(id, Queued { topic, bytes, sent: 0, extra });
        while self.items.len() > MAX_RUMORS && self.evict() {}
    }

    /// Drops the rumor sent most, the oldest among equals; never a refutation (one
    /// queued with extra sends), which is this agent's own defence.
    fn evict(&mut self) -> bool {
        // Backwards, the order is most sent first and, ids counting down, oldest first.
        let victim = self.order.iter().rev().find(|(_, id)| self.items.get(id).is_some_and(|q| q.extra == 0));
        let Some(&(sent, id)) = victim else { return false };
        self.order.remove(&(sent, id));
        if let Some(q) = self.items.remove(&id) {
            self.by_topic.remove(&q.topic);
        }
        true
    }

    /// Appends to `out` as many rumors as fit in `room` bytes, least sent first, and
    /// counts each as sent once more; a rumor sent `limit` times leaves the queue.
    /// `first` names a topic to put in before the others when it is queued (rumors
    /// about a probe's target ride its probe first, so it can refute at once).
    pub fn fill(&mut self, out: &mut Vec<u8>, room: usize, limit: u32, first: Option<&Topic>) {
        let mut budget = room;
        let mut taken = Vec::new();
        if let Some(id) = first.and_then(|t| self.by_topic.get(t)).copied() {
            if let Some(q) = self.items.get(&id) {
                if q.bytes.len() <= budget {
                    budget -= q.bytes.len();
                    out.extend_from_slice(&q.bytes);
                    taken.push((q.sent, id));
                }
            }
        }
        // Rumors that do not fit are passed over, but only a few: the queue can hold
        // thousands during a mass join, and a full datagram is the common case.
        let mut passed = 0;
        for &(sent, id) in &self.order {
            if budget < 8 || passed > 16 {
                break;
            }
            if taken.first().is_some_and(|&(_, t)| t == id) {
                continue;
            }
            let Some(q) = self.items.get(&id) else { continue };
            if q.bytes.len() > budget {
                passed += 1;
                continue;
            }
            budget -= q.bytes.len();
            out.extend_from_slice(&q.bytes);
            taken.push((sent, id));
        }
        for (sent, id) in taken {
            self.order.remove(&(sent, id));
            let Some(q) = self.items.get_mut(&id) else { continue };
            q.sent = sent + 1;
            if q.sent >= limit + q.extra {
                if let Some(q) = self.items.remove(&id) {
                    self.by_topic.remove(&q.topic);
                }
            } else {
                self.order.insert((q.sent, id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: &str) -> Topic {
        Topic::Member(n.into())
    }

    #[test]
    fn each_rumor_is_sent_at_most_the_limit() {
        let mut q = Broadcasts::new();
        q.push(member("a"), vec![1; 10]);
        let mut sends = 0;
        for _ in 0..10 {
            let mut out = Vec::new();
            q.fill(&mut out, 100, 3, None);
            if !out.is_empty() {
                sends += 1;
            }
        }
        assert_eq!(sends, 3);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_full_queue_drops_the_most_sent_oldest_first_and_keeps_refutations() {
        let mut q = Broadcasts::new();
        q.push_extra(member("me"), vec![9], 8);
        let mut out = Vec::new();
        // Sent once each: "me" and "a" (room for two one-byte rumors).
        q.push(member("a"), vec![1]);
        q.fill(&mut out, 2, 100, None);
        for i in 0..MAX_RUMORS - 1 {
            q.push(member(&format!("n{i}")), vec![2]);
        }
        assert_eq!(q.len(), MAX_RUMORS);
        assert!(q.by_topic.contains_key(&member("me")), "the refutation stays");
        assert!(!q.by_topic.contains_key(&member("a")), "the most sent goes first");
        q.push(member("late"), vec![3]);
        assert!(!q.by_topic.contains_key(&member("n0")), "then the oldest of the least sent");
        assert!(q.by_topic.contains_key(&member("late")), "the newest is kept");
    }

    #[test]
    fn a_newer_rumor_on_the_same_topic_replaces_the_older() {
        let mut q = Broadcasts::new();
        q.push(Topic::Key("a".into(), "h/x".into()), vec![1; 4]);
        q.push(Topic::Key("a".into(), "h/x".into()), vec![2; 4]);
        q.push(Topic::Key("a".into(), "h/y".into()), vec![3; 4]);
        assert_eq!(q.len(), 2);
        let mut out = Vec::new();
        q.fill(&mut out, 100, 5, None);
        assert_eq!(out, [3, 3, 3, 3, 2, 2, 2, 2], "the newest first among the unsent");
    }

    #[test]
    fn least_sent_first_within_the_room_and_the_target_first() {
        let mut q = Broadcasts::new();
        q.push(member("old"), vec![1; 10]);
        let mut out = Vec::new();
        q.fill(&mut out, 100, 5, None);
        q.push(member("new"), vec![2; 10]);
        q.push(member("big"), vec![3; 50]);
        let mut out = Vec::new();
        q.fill(&mut out, 25, 5, None);
        assert_eq!(out, [vec![2; 10], vec![1; 10]].concat(), "the new one first; the big one does not fit");
        let mut out = Vec::new();
        q.fill(&mut out, 60, 5, Some(&member("old")));
        assert_eq!(&out[..10], &[1; 10], "the probe target's rumor goes first");
    }
}
