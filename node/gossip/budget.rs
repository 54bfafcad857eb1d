//! A cap on what this agent sends to an address that is not a live member (nor a seed):
//! at most one message per message that opened from it lately, and at most [`AMPLIFY`]
//! times its bytes. A datagram replayed
//! from a spoofed source, or sent by someone who holds the key, then cannot turn this
//! agent into an amplifier against that address; members, once known, are not capped.
//! Pure: the caller passes `now`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Bytes sent to a stranger per byte received from it.
pub const AMPLIFY: u64 = 3;
/// How long what a stranger sent counts.
const WINDOW: Duration = Duration::from_secs(60);
/// Strangers tracked at once; past that the stalest is forgotten (and with it the budget
/// it had).
const MAX_TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Allowance {
    received: u64,
    sent: u64,
    messages_in: u32,
    messages_out: u32,
    since: Instant,
}

/// Per-address byte allowances of strangers.
#[derive(Debug, Default)]
pub struct ReplyBudget {
    strangers: HashMap<SocketAddr, Allowance>,
}

impl ReplyBudget {
    fn entry(&mut self, addr: SocketAddr, now: Instant) -> &mut Allowance {
        if self.strangers.len() >= MAX_TRACKED && !self.strangers.contains_key(&addr) {
            self.strangers.retain(|_, a| now.saturating_duration_since(a.since) < WINDOW);
            if self.strangers.len() >= MAX_TRACKED {
                let stalest = self.strangers.iter().min_by_key(|(_, a)| a.since).map(|(k, _)| *k);
                if let Some(k) = stalest {
                    self.strangers.remove(&k);
                }
            }
        }
        let fresh = Allowance { received: 0, sent: 0, messages_in: 0, messages_out: 0, since: now };
        let a = self.strangers.entry(addr).or_insert(fresh);
        if now.saturating_duration_since(a.since) >= WINDOW {
            *a = fresh;
        }
        a
    }

    /// A datagram of `bytes` that opened arrived from the stranger `from`.
    pub fn received(&mut self, from: SocketAddr, bytes: usize, now: Instant) {
        let a = self.entry(from, now);
        a.received = a.received.saturating_add(bytes as u64);
        a.messages_in = a.messages_in.saturating_add(1);
    }

    /// Whether a message of `bytes` may go to the stranger `to`; counts it when it may.
    pub fn may_send(&mut self, to: SocketAddr, bytes: usize, now: Instant) -> bool {
        let a = self.entry(to, now);
        let after = a.sent.saturating_add(bytes as u64);
        if a.messages_out >= a.messages_in || after > a.received.saturating_mul(AMPLIFY) {
            return false;
        }
        a.sent = after;
        a.messages_out += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stranger_gets_at_most_a_small_multiple_of_what_it_sent() {
        let (mut b, t0) = (ReplyBudget::default(), Instant::now());
        let victim: SocketAddr = "198.51.100.7:7946".parse().expect("addr");
        assert!(!b.may_send(victim, 1, t0), "nothing to someone who sent nothing");
        b.received(victim, 500, t0);
        assert!(!b.may_send(victim, 1_501, t0), "more than 3 × 500 bytes");
        assert!(b.may_send(victim, 1_000, t0));
        assert!(!b.may_send(victim, 1, t0), "one answer per message");
        b.received(victim, 100, t0);
        assert!(b.may_send(victim, 800, t0), "600 × 3 bytes in all");
        assert!(!b.may_send(victim, 1, t0));
        // A minute later the count starts over.
        let later = t0 + WINDOW;
        assert!(!b.may_send(victim, 1, later));
        b.received(victim, 100, later);
        assert!(b.may_send(victim, 300, later));
        assert!(!b.may_send(victim, 1, later));
    }

    #[test]
    fn tracking_is_bounded() {
        let (mut b, t0) = (ReplyBudget::default(), Instant::now());
        for i in 0..(MAX_TRACKED as u32 * 2) {
            let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7946));
            b.received(addr, 10, t0 + Duration::from_millis(u64::from(i)));
        }
        assert!(b.strangers.len() <= MAX_TRACKED);
    }
}
