//! The retry budget (Finagle's and linkerd's): retries may add at most a share of the
//! new connections (plus a small floor per second), so a failing upstream cannot turn
//! into a retry storm. Pure: deposits and withdrawals with `now`.

use std::time::{Duration, Instant};

/// A token bucket filled by new connections.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio: f64,
    floor_per_sec: f64,
    window: Duration,
    tokens: f64,
    last: Instant,
}

impl RetryBudget {
    /// Retries may be `ratio` of new connections (0.2 = 20%) plus `floor_per_sec`,
    /// accumulated over at most `window`.
    pub fn new(ratio: f64, floor_per_sec: f64, window: Duration, now: Instant) -> Self {
        Self { ratio, floor_per_sec, window, tokens: floor_per_sec * window.as_secs_f64(), last: now }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        // Deposits do not expire one by one as in linkerd's windowed budget; instead the
        // bucket holds at most the floor's window plus the share of about a thousand
        // connections, so a long quiet run cannot bank an unbounded retry burst.
        let cap = (self.floor_per_sec * self.window.as_secs_f64()).max(1.0) + self.ratio * 1000.0;
        self.tokens = (self.tokens + dt * self.floor_per_sec).min(cap);
    }

    /// Records a new (first-try) connection.
    pub fn deposit(&mut self, now: Instant) {
        self.refill(now);
        self.tokens += self.ratio;
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        self.refill(now);
        // A small epsilon: a hundred deposits of 0.2 must make twenty whole retries.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_the_ratio_and_floor() {
        let t = Instant::now();
        let mut b = RetryBudget::new(0.2, 0.0, Duration::from_secs(10), t);
        for _ in 0..100 {
            b.deposit(t);
        }
        let mut allowed = 0;
        while b.try_withdraw(t) {
            allowed += 1;
        }
        assert_eq!(allowed, 20);
    }

    #[test]
    fn the_floor_refills_with_time() {
        let t = Instant::now();
        let mut b = RetryBudget::new(0.2, 10.0, Duration::from_secs(1), t);
        let mut allowed = 0;
        while b.try_withdraw(t) {
            allowed += 1;
        }
        assert_eq!(allowed, 10, "one second's floor at start");
        assert!(!b.try_withdraw(t));
        assert!(b.try_withdraw(t + Duration::from_millis(150)));
    }
}
