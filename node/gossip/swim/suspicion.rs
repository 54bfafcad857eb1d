//! Lifeguard's two timers, pure: the dynamic suspicion timeout, which starts long and
//! shortens as independent accusers confirm, and the local health multiplier, which
//! stretches this agent's own probing while it is the one struggling.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// One suspicion of one member, at one incarnation.
#[derive(Debug, Clone)]
pub struct Suspicion {
    /// The incarnation suspected.
    pub incarnation: u32,
    start: Instant,
    min: Duration,
    max: Duration,
    expected: u32,
    accusers: Vec<Arc<str>>,
}

impl Suspicion {
    /// A suspicion raised by `accuser` at `start`, timing out between `min` (after
    /// `expected` confirmations) and `max` (with none).
    pub fn new(
        incarnation: u32,
        accuser: Arc<str>,
        start: Instant,
        min: Duration,
        max: Duration,
        expected: u32,
    ) -> Self {
        Self { incarnation, start, min, max: max.max(min), expected, accusers: vec![accuser] }
    }

    /// Records an accusation; returns whether it came from someone new (a confirmation).
    pub fn confirm(&mut self, accuser: &Arc<str>) -> bool {
        if self.accusers.len() > self.expected as usize || self.accusers.iter().any(|a| a == accuser) {
            return false;
        }
        self.accusers.push(accuser.clone());
        true
    }

    /// Confirmations beyond the first accusation.
    pub fn confirmations(&self) -> u32 {
        (self.accusers.len() - 1) as u32
    }

    /// When the member is to be declared dead:
    /// `max − (max − min) · ln(c + 1) / ln(k + 1)` after the start, never below `min`.
    pub fn deadline(&self) -> Instant {
        if self.expected == 0 {
            return self.start + self.min;
        }
        let c = f64::from(self.confirmations().min(self.expected));
        let k = f64::from(self.expected);
        let span = (self.max - self.min).as_secs_f64();
        let timeout = self.max.as_secs_f64() - span * (c + 1.0).ln() / (k + 1.0).ln();
        self.start + Duration::from_secs_f64(timeout.max(self.min.as_secs_f64()))
    }
}

/// Lifeguard's local health multiplier: 0 when this agent's probes go well, up to a
/// maximum when they do not. Probe interval and timeout are multiplied by `1 + score`.
#[derive(Debug, Clone, Copy)]
pub struct LocalHealth {
    score: u32,
    max: u32,
}

impl LocalHealth {
    /// A healthy score with this ceiling.
    pub fn new(max: u32) -> Self {
        Self { score: 0, max }
    }

    /// The score now.
    pub fn score(&self) -> u32 {
        self.score
    }

    /// Something went wrong on our side (a failed probe, a missed nack, a refutation).
    pub fn worse(&mut self) {
        self.score = (self.score + 1).min(self.max);
    }

    /// A probe was answered.
    pub fn better(&mut self) {
        self.score = self.score.saturating_sub(1);
    }

    /// `d` scaled by the score.
    pub fn scale(&self, d: Duration) -> Duration {
        d * (1 + self.score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_shorten_the_timeout_to_the_minimum() {
        let t0 = Instant::now();
        let (min, max) = (Duration::from_millis(500), Duration::from_millis(3000));
        let mut s = Suspicion::new(1, "a".into(), t0, min, max, 3);
        assert_eq!(s.deadline(), t0 + max);
        assert!(!s.confirm(&"a".into()), "the same accuser twice is no confirmation");
        let mut last = s.deadline();
        for who in ["b", "c", "d"] {
            assert!(s.confirm(&who.into()));
            assert!(s.deadline() < last);
            last = s.deadline();
        }
        assert_eq!(s.deadline(), t0 + min);
        assert!(!s.confirm(&"e".into()), "past the expected count nothing changes");
        assert_eq!(s.confirmations(), 3);
    }

    #[test]
    fn no_helpers_expected_means_the_minimum() {
        let t0 = Instant::now();
        let s = Suspicion::new(0, "a".into(), t0, Duration::from_secs(1), Duration::from_secs(6), 0);
        assert_eq!(s.deadline(), t0 + Duration::from_secs(1));
    }

    #[test]
    fn local_health_is_bounded_both_ways() {
        let mut h = LocalHealth::new(2);
        h.better();
        assert_eq!(h.score(), 0);
        for _ in 0..5 {
            h.worse();
        }
        assert_eq!(h.score(), 2);
        assert_eq!(h.scale(Duration::from_millis(100)), Duration::from_millis(300));
        h.better();
        assert_eq!(h.score(), 1);
    }
}
