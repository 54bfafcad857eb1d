//! Hysteresis on chitchat's liveness verdicts. chitchat's failure detector measures the
//! time since a heartbeat *arrived*, so after a node dies, one peer that heard its last
//! heartbeat late can gossip it onward and make the others believe the node is alive
//! again for another detection period (seen on loopback: a crashed node briefly back
//! in answers). Here a node declared dead stays dead until its heartbeat has moved on
//! by [`REVIVE_BEATS`] since the verdict: a node that truly came back (a healed
//! partition) beats every gossip round, a straggler does not. Pure: heartbeats in,
//! verdicts out.

use std::collections::HashMap;
use std::hash::Hash;

/// Heartbeats a dead node must add before it counts as alive again.
pub const REVIVE_BEATS: u64 = 3;

/// What this agent last concluded about a node it has seen alive at least once.
#[derive(Debug, Clone, Copy)]
enum Verdict {
    Alive,
    /// Dead since this heartbeat.
    Dead(u64),
}

/// The verdicts of one agent.
#[derive(Debug)]
pub struct Liveness<K> {
    verdicts: HashMap<K, Verdict>,
}

impl<K> Default for Liveness<K> {
    fn default() -> Self {
        Self { verdicts: HashMap::new() }
    }
}

impl<K: Eq + Hash + Clone> Liveness<K> {
    /// Takes chitchat's verdict and the node's current heartbeat; returns ours. A node
    /// never seen alive (just heard of, its heartbeats not yet counted) is not alive,
    /// but it is not a dead node coming back either: it counts as alive as soon as
    /// chitchat says so.
    pub fn judge(&mut self, node: &K, chitchat_alive: bool, heartbeat: u64) -> bool {
        let verdict = self.verdicts.get(node).copied();
        match (chitchat_alive, verdict) {
            (false, Some(Verdict::Alive)) => {
                self.verdicts.insert(node.clone(), Verdict::Dead(heartbeat));
                false
            }
            (false, _) => false,
            (true, Some(Verdict::Dead(at))) if heartbeat < at.saturating_add(REVIVE_BEATS) => false,
            (true, _) => {
                self.verdicts.insert(node.clone(), Verdict::Alive);
                true
            }
        }
    }

    /// Forgets nodes that are no longer known at all.
    pub fn retain(&mut self, known: impl Fn(&K) -> bool) {
        self.verdicts.retain(|k, _| known(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_straggling_heartbeat_does_not_revive_a_dead_node() {
        let mut l = Liveness::default();
        assert!(l.judge(&"a", true, 10));
        assert!(!l.judge(&"a", false, 10));
        // A peer passes on a slightly newer heartbeat: chitchat says alive, we do not.
        assert!(!l.judge(&"a", true, 11));
        assert!(!l.judge(&"a", true, 12));
        // It keeps beating: it is really back.
        assert!(l.judge(&"a", true, 13));
        assert!(l.judge(&"a", true, 14));
    }

    #[test]
    fn a_new_node_is_alive_as_soon_as_chitchat_says_so() {
        let mut l = Liveness::default();
        // Heard of before its heartbeats were counted.
        assert!(!l.judge(&"b", false, 1));
        assert!(!l.judge(&"b", false, 2));
        assert!(l.judge(&"b", true, 3), "a join is not a revival");
        assert!(!l.judge(&"b", false, 3));
        assert!(!l.judge(&"b", true, 4), "once it was alive and died, hysteresis applies");
    }
}
