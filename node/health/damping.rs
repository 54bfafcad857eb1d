//! Flap damping at the source, as BGP damps a flapping route: a check that keeps failing
//! and recovering is held critical until it has been stable for a while, so that it
//! neither floods the cluster with health rumors nor keeps drawing traffic it then
//! drops. Pure: the caller passes `now`.
//!
//! Every fall to critical adds [`PENALTY`] to a figure that halves every [`HALF_LIFE`]
//! (recoveries cost nothing: one failure and one recovery is an ordinary restart). When
//! the figure reaches [`SUPPRESS`] the instance is held critical and no further flip is
//! published; once it has decayed below [`REUSE`] the check's status is published again.
//! The figure never exceeds [`CEILING`], so an instance that stops flapping is held at
//! most HALF_LIFE × log2(CEILING / REUSE) = 78 s.

use std::time::{Duration, Instant};

use murmur_protocol::Health;

/// Added by each fall to critical.
pub const PENALTY: f64 = 1000.0;
/// Time for the penalty to halve.
pub const HALF_LIFE: Duration = Duration::from_secs(30);
/// Penalty at which flips stop being published: three falls within a few seconds, or
/// four 10 s apart (two falls, a restart say, are never held).
pub const SUPPRESS: f64 = 2500.0;
/// Penalty below which a held instance is published again.
pub const REUSE: f64 = 1000.0;
/// Highest penalty.
pub const CEILING: f64 = 6000.0;

/// The damping state of one instance's check.
#[derive(Debug, Clone)]
pub struct Damping {
    penalty: f64,
    at: Instant,
    held: bool,
    /// What was last published (an instance starts critical, as its thresholds do).
    published: Health,
}

impl Damping {
    /// A check that has not flapped.
    pub fn new(now: Instant) -> Self {
        Damping { penalty: 0.0, at: now, held: false, published: Health::Critical }
    }

    fn decay(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.penalty *= 0.5f64.powf(elapsed / HALF_LIFE.as_secs_f64());
        self.at = now;
    }

    /// The check's status flipped to `status`: returns what to publish, or `None` while
    /// the instance is held.
    pub fn flip(&mut self, status: Health, now: Instant) -> Option<Health> {
        self.decay(now);
        if status == Health::Critical {
            self.penalty = (self.penalty + PENALTY).min(CEILING);
        }
        if self.held {
            return None;
        }
        if self.penalty >= SUPPRESS {
            // The fall that crosses the line is published (it is to critical); the hold
            // starts after it.
            self.held = true;
        }
        self.publish(status)
    }

    /// Called on every check: when a hold has decayed away, returns the check's current
    /// `status` if it differs from what was published.
    pub fn poll(&mut self, status: Health, now: Instant) -> Option<Health> {
        if !self.held {
            return None;
        }
        self.decay(now);
        if self.penalty >= REUSE {
            return None;
        }
        self.held = false;
        self.publish(status)
    }

    fn publish(&mut self, status: Health) -> Option<Health> {
        (status != self.published).then(|| {
            self.published = status;
            status
        })
    }

    /// Whether flips are held back now.
    pub fn held(&self) -> bool {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: Health = Health::Passing;
    const FAIL: Health = Health::Critical;

    #[test]
    fn a_restart_is_not_damped() {
        let t0 = Instant::now();
        let mut d = Damping::new(t0);
        assert_eq!(d.flip(PASS, t0), Some(PASS));
        assert_eq!(d.flip(FAIL, t0 + Duration::from_secs(1)), Some(FAIL));
        assert_eq!(d.flip(PASS, t0 + Duration::from_secs(2)), Some(PASS));
        assert_eq!(d.flip(FAIL, t0 + Duration::from_secs(3)), Some(FAIL));
        assert_eq!(d.flip(PASS, t0 + Duration::from_secs(4)), Some(PASS));
        assert!(!d.held(), "two falls close together are still published");
    }

    #[test]
    fn a_flapping_check_is_held_critical_until_it_settles() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut d = Damping::new(t0);
        let mut published = Vec::new();
        // Fails and recovers every second for two minutes.
        for s in 0..120 {
            let status = if s % 2 == 0 { PASS } else { FAIL };
            published.extend(d.flip(status, at(s)));
            published.extend(d.poll(status, at(s)));
        }
        assert_eq!(published, [PASS, FAIL, PASS, FAIL, PASS, FAIL], "three falls, then held critical");
        assert!(d.held());
        // Stable and passing from now on: released once the penalty decays, within the
        // bound, and not before it has dropped below REUSE.
        let mut released = None;
        for s in 120..300 {
            if let Some(status) = d.poll(PASS, at(s)) {
                released = Some((s, status));
                break;
            }
        }
        let (s, status) = released.expect("released");
        assert_eq!(status, PASS);
        let held_for = s - 119;
        assert!((70..=79).contains(&held_for), "held {held_for} s after the last flap");
        assert!(!d.held());
    }

    #[test]
    fn a_release_publishes_only_a_change() {
        let t0 = Instant::now();
        let mut d = Damping::new(t0);
        for s in 0..8 {
            d.flip(if s % 2 == 0 { PASS } else { FAIL }, t0 + Duration::from_secs(s));
        }
        assert!(d.held());
        // It settles critical: what was published (critical) stands, nothing to send.
        assert_eq!(d.poll(FAIL, t0 + Duration::from_secs(600)), None);
        assert!(!d.held());
        assert_eq!(d.flip(PASS, t0 + Duration::from_secs(601)), Some(PASS));
    }
}
