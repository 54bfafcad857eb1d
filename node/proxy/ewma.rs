//! Peak EWMA of connect latency (as linkerd and Finagle use it): a new sample above the
//! average replaces it at once (peaks are believed immediately), one below decays into
//! it with a time constant, so a slow endpoint is avoided quickly and trusted again
//! slowly. Pure: time is an argument.

use std::time::{Duration, Instant};

/// Peak-sensitive exponentially weighted moving average of latency.
#[derive(Debug, Clone)]
pub struct PeakEwma {
    value_ns: f64,
    stamp: Instant,
    decay_ns: f64,
}

impl PeakEwma {
    /// Starts at `initial` (a guess, so new endpoints are neither favoured nor shunned).
    pub fn new(initial: Duration, decay: Duration, now: Instant) -> Self {
        Self { value_ns: initial.as_nanos() as f64, stamp: now, decay_ns: decay.as_nanos().max(1) as f64 }
    }

    /// Records one observed latency.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        if sample > self.value_ns {
            self.value_ns = sample;
        } else {
            let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
            let w = (-elapsed / self.decay_ns).exp();
            self.value_ns = self.value_ns * w + sample * (1.0 - w);
        }
        self.stamp = now;
    }

    /// The estimate at `now`: it decays while no sample comes (as linkerd's does), so an
    /// endpoint that was slow once is tried again after a while instead of losing every
    /// comparison forever.
    pub fn get(&self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
        Duration::from_nanos((self.value_ns * (-elapsed / self.decay_ns).exp()) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_jump_and_lows_decay() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(1), Duration::from_secs(10), t0);
        e.observe(Duration::from_millis(50), t0);
        assert_eq!(e.get(t0), Duration::from_millis(50));
        let t1 = t0 + Duration::from_millis(1);
        e.observe(Duration::from_millis(1), t1);
        assert!(e.get(t1) > Duration::from_millis(49), "a low sample right away barely moves it");
        let t2 = t0 + Duration::from_secs(60);
        e.observe(Duration::from_millis(1), t2);
        assert!(e.get(t2) < Duration::from_millis(2), "after many time constants it follows: {:?}", e.get(t2));
    }

    #[test]
    fn an_unused_slow_estimate_decays() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(1), Duration::from_secs(10), t0);
        e.observe(Duration::from_millis(1500), t0);
        assert!(e.get(t0 + Duration::from_secs(60)) < Duration::from_millis(10));
    }
}
