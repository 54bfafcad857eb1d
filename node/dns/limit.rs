//! Per-source rate limit of the DNS stub: a token bucket per client socket (address and
//! port), so one client that floods the stub is answered at its share and the others
//! keep theirs. On loopback every app has the same address, so the port is what tells
//! them apart; the standard resolver (glibc, Go, musl) opens a fresh socket per lookup
//! and is never limited, while a flood from one socket is.
//!
//! Buckets are keyed exactly, so no client is ever held to another's rate. A bucket idle
//! for a second has refilled, which is the same as having none, so a sweep once a second
//! forgets those: memory follows the sources of the last second or two, not every port
//! ever seen. Past `MAX_TRACKED` sources at once, new ones are answered untracked: a
//! flood from that many sockets is beyond what a per-socket limit can stop anyway.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most sources tracked at once.
const MAX_TRACKED: usize = 65_536;
/// A bucket holds this much time's worth of queries, and is full again after it.
const BURST: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

struct Table {
    buckets: HashMap<SocketAddr, Bucket>,
    swept: Instant,
}

/// Token buckets of `rate` queries per second, each holding up to one second's worth.
pub struct RateLimit {
    rate: f64,
    table: Mutex<Table>,
}

impl RateLimit {
    /// A limit of `per_second` queries per source; `None` when 0 (no limit).
    pub fn new(per_second: u32) -> Option<RateLimit> {
        (per_second > 0).then(|| RateLimit {
            rate: f64::from(per_second),
            table: Mutex::new(Table { buckets: HashMap::new(), swept: Instant::now() }),
        })
    }

    /// Takes a token for a query from `source` at `now`; false when its bucket is empty.
    pub fn allow(&self, source: SocketAddr, now: Instant) -> bool {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_duration_since(t.swept) >= BURST {
            t.buckets.retain(|_, b| now.saturating_duration_since(b.last) < BURST);
            t.swept = now;
        }
        let full = t.buckets.len() >= MAX_TRACKED;
        let burst = self.rate * BURST.as_secs_f64();
        let b = match t.buckets.get_mut(&source) {
            Some(b) => b,
            None if full => return true,
            None => t.buckets.entry(source).or_insert(Bucket { tokens: burst, last: now }),
        };
        b.tokens = (b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * self.rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Sources tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_source_gets_its_rate_and_no_more() {
        let limit = RateLimit::new(100).expect("a limit");
        let t0 = Instant::now();
        let allowed = (0..1000).filter(|_| limit.allow(src(5000), t0)).count();
        assert_eq!(allowed, 100, "a full bucket holds one second's worth");
        // Half a second later, half a second's worth more.
        let t1 = t0 + Duration::from_millis(500);
        let allowed = (0..1000).filter(|_| limit.allow(src(5000), t1)).count();
        assert_eq!(allowed, 50);
        // Idle for a long time: the bucket is full again, not fuller.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..1000).filter(|_| limit.allow(src(5000), t2)).count(), 100);
    }

    #[test]
    fn a_flooding_source_leaves_every_other_source_its_share() {
        let limit = RateLimit::new(50).expect("a limit");
        let t0 = Instant::now();
        for _ in 0..10_000 {
            limit.allow(src(6000), t0);
        }
        // Every other source, each asking once as the standard resolver does.
        assert!((1..=5000).all(|p| limit.allow(src(20_000 + p), t0)), "an innocent source was limited");
        assert!(!limit.allow(src(6000), t0), "the flooder's bucket stays empty");
    }

    #[test]
    fn sources_idle_for_a_second_are_forgotten() {
        let limit = RateLimit::new(50).expect("a limit");
        let t0 = Instant::now();
        for p in 1..=1000 {
            limit.allow(src(p), t0);
        }
        assert_eq!(limit.tracked(), 1000);
        // Past the burst time, the next query sweeps them out.
        limit.allow(src(9999), t0 + BURST);
        assert_eq!(limit.tracked(), 1);
    }

    #[test]
    fn zero_means_no_limit() {
        assert!(RateLimit::new(0).is_none());
    }
}
