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

/// The verdicts of one agent.
#[derive(Debug)]
pub struct Liveness<K> {
    dead_at: HashMap<K, u64>,
}

impl<K> Default for Liveness<K> {
    fn default() -> Self {
        Self { dead_at: HashMap::new() }
    }
}

impl<K: Eq + Hash + Clone> Liveness<K> {
    /// Takes chitchat's verdict and the node's current heartbeat; returns ours.
    pub fn judge(&mut self, node: &K, chitchat_alive: bool, heartbeat: u64) -> bool {
        if !chitchat_alive {
            self.dead_at.entry(node.clone()).or_insert(heartbeat);
            return false;
        }
        match self.dead_at.get(node) {
            Some(&at) if heartbeat < at.saturating_add(REVIVE_BEATS) => false,
            Some(_) => {
                self.dead_at.remove(node);
                true
            }
            None => true,
        }
    }

    /// Forgets nodes that are no longer known at all.
    pub fn retain(&mut self, known: impl Fn(&K) -> bool) {
        self.dead_at.retain(|k, _| known(k));
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
}
