//! Outlier detection from real traffic (Envoy's model): consecutive local-origin
//! failures, or a failure percentage over an interval with a minimum volume, eject an
//! endpoint for `base × times ejected` (capped); never more than a maximum share of the
//! endpoints at once. As in Envoy, the multiplier comes down by one for every `interval`
//! an endpoint spends back in service, so an endpoint that failed once, long ago, is not
//! ejected for longer the next time. Pure: outcomes and `now` in, ejections out.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

pub use crate::config::OutlierConfig;

/// One connection outcome as the outlier detector counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Connected and acknowledged.
    Success,
    /// Failed before the ack for a reason local to the endpoint.
    Failure,
}

/// An ejection the detector decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ejection<E> {
    /// Who.
    pub endpoint: E,
    /// Until when.
    pub until: Instant,
    /// How many times it has been ejected, this one included.
    pub times: u32,
    /// Which rule fired.
    pub reason: &'static str,
}

#[derive(Debug, Clone)]
struct EndpointState {
    consecutive: u32,
    window_start: Instant,
    requests: u32,
    failures: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
    /// Time in service up to here has already lowered `times_ejected`.
    decayed_to: Instant,
}

impl EndpointState {
    /// Lowers the multiplier by one per whole `interval` in service since the last
    /// ejection ended (or since the last decrement).
    fn decay(&mut self, now: Instant, interval: std::time::Duration) {
        if self.times_ejected == 0 || interval.is_zero() || self.ejected_until.is_some_and(|u| u > now) {
            return;
        }
        let from = self.ejected_until.map_or(self.decayed_to, |u| u.max(self.decayed_to));
        let steps = now.saturating_duration_since(from).as_nanos() / interval.as_nanos();
        match u32::try_from(steps) {
            Ok(steps) if steps < self.times_ejected => {
                self.times_ejected -= steps;
                self.decayed_to = from + interval * steps;
            }
            _ => {
                self.times_ejected = 0;
                self.decayed_to = now;
            }
        }
    }
}

/// Outlier state of one upstream's endpoints.
#[derive(Debug)]
pub struct OutlierDetector<E> {
    config: OutlierConfig,
    endpoints: HashMap<E, EndpointState>,
}

impl<E: Clone + Eq + Hash> OutlierDetector<E> {
    /// A detector with these settings.
    pub fn new(config: OutlierConfig) -> Self {
        Self { config, endpoints: HashMap::new() }
    }

    /// Keeps state only for `current` endpoints (others left the registry).
    pub fn retain(&mut self, current: &[E]) {
        self.endpoints.retain(|e, _| current.contains(e));
    }

    fn ejected_count(&self, now: Instant) -> usize {
        self.endpoints.values().filter(|s| s.ejected_until.is_some_and(|u| u > now)).count()
    }

    /// Records one outcome; returns the ejection it caused, if any. `pool` is the
    /// number of endpoints of the upstream (for the maximum-ejected share).
    pub fn record(&mut self, ep: &E, outcome: Outcome, pool: usize, now: Instant) -> Option<Ejection<E>> {
        let interval = self.config.interval;
        let st = self.endpoints.entry(ep.clone()).or_insert(EndpointState {
            consecutive: 0,
            window_start: now,
            requests: 0,
            failures: 0,
            ejected_until: None,
            times_ejected: 0,
            decayed_to: now,
        });
        st.decay(now, interval);
        if now.saturating_duration_since(st.window_start) >= interval {
            st.window_start = now;
            st.requests = 0;
            st.failures = 0;
        }
        st.requests += 1;
        match outcome {
            Outcome::Success => {
                st.consecutive = 0;
                return None;
            }
            Outcome::Failure => {
                st.consecutive += 1;
                st.failures += 1;
            }
        }
        if st.ejected_until.is_some_and(|u| u > now) {
            return None;
        }
        let c = &self.config;
        let reason = if c.consecutive_failures > 0 && st.consecutive >= c.consecutive_failures {
            "consecutive_failures"
        } else if c.failure_percent > 0
            && st.requests >= c.min_requests
            && st.failures * 100 >= c.failure_percent * st.requests
        {
            "failure_percent"
        } else {
            return None;
        };
        // At least one may be ejected (a pool of one still ejects; the balancer then
        // panics back to it), unless ejection is turned off with 0%.
        let max_ejected =
            if c.max_ejected_percent == 0 { 0 } else { (pool * c.max_ejected_percent as usize / 100).max(1) };
        if self.ejected_count(now) >= max_ejected {
            return None;
        }
        let c = self.config.clone();
        let st = self.endpoints.get_mut(ep)?;
        st.times_ejected += 1;
        let duration = c.base_ejection.checked_mul(st.times_ejected).unwrap_or(c.max_ejection).min(c.max_ejection);
        let until = now + duration;
        st.ejected_until = Some(until);
        st.consecutive = 0;
        st.requests = 0;
        st.failures = 0;
        st.window_start = now;
        Some(Ejection { endpoint: ep.clone(), until, times: st.times_ejected, reason })
    }

    /// Whether `ep` is ejected at `now`.
    pub fn is_ejected(&self, ep: &E, now: Instant) -> bool {
        self.ejected_until(ep).is_some_and(|u| u > now)
    }

    /// When `ep`'s current or last ejection ends.
    pub fn ejected_until(&self, ep: &E) -> Option<Instant> {
        self.endpoints.get(ep)?.ejected_until
    }

    /// How many times `ep` has been ejected.
    #[cfg(test)]
    pub fn times_ejected(&self, ep: &E) -> u32 {
        self.endpoints.get(ep).map(|s| s.times_ejected).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig { consecutive_failures: 3, min_requests: 10, ..Default::default() }
    }

    #[test]
    fn consecutive_failures_eject_with_growing_time() {
        let t = Instant::now();
        let mut d = OutlierDetector::new(cfg());
        assert!(d.record(&"a", Outcome::Failure, 4, t).is_none());
        assert!(d.record(&"a", Outcome::Failure, 4, t).is_none());
        let e = d.record(&"a", Outcome::Failure, 4, t).expect("ejected");
        assert_eq!((e.times, e.reason), (1, "consecutive_failures"));
        assert_eq!(e.until, t + Duration::from_secs(30));
        assert!(d.is_ejected(&"a", t + Duration::from_secs(29)));
        assert!(!d.is_ejected(&"a", t + Duration::from_secs(30)));
        let t2 = t + Duration::from_secs(31);
        for _ in 0..2 {
            assert!(d.record(&"a", Outcome::Failure, 4, t2).is_none());
        }
        let e = d.record(&"a", Outcome::Failure, 4, t2).expect("ejected again");
        assert_eq!(e.until, t2 + Duration::from_secs(60), "base × times ejected");
    }

    #[test]
    fn time_back_in_service_brings_the_multiplier_down() {
        let t = Instant::now();
        let mut d = OutlierDetector::new(cfg());
        fn fail3(d: &mut OutlierDetector<&'static str>, at: Instant) -> Option<Ejection<&'static str>> {
            (0..3).filter_map(|_| d.record(&"a", Outcome::Failure, 4, at)).last()
        }
        let e = fail3(&mut d, t).expect("ejected");
        let e = fail3(&mut d, e.until).expect("ejected again at once");
        assert_eq!(e.times, 2);
        // Back at e.until; 10 s (one interval) in service takes one off, 20 s both.
        let back = e.until;
        assert!(d.record(&"a", Outcome::Success, 4, back + Duration::from_secs(10)).is_none());
        assert_eq!(d.times_ejected(&"a"), 1);
        let e = fail3(&mut d, back + Duration::from_secs(12)).expect("ejected a third time");
        assert_eq!(e.times, 2, "one interval in service took one off");
        assert_eq!(e.until, back + Duration::from_secs(12 + 60));
        let back = e.until;
        assert!(d.record(&"a", Outcome::Success, 4, back + Duration::from_secs(25)).is_none());
        assert_eq!(d.times_ejected(&"a"), 0, "two intervals in service took both off");
        let e = fail3(&mut d, back + Duration::from_secs(30)).expect("ejected");
        assert_eq!(e.until, back + Duration::from_secs(30 + 30), "the base time again");
    }

    #[test]
    fn a_success_resets_the_run() {
        let t = Instant::now();
        let mut d = OutlierDetector::new(cfg());
        for _ in 0..10 {
            assert!(d.record(&"a", Outcome::Failure, 4, t).is_none() || d.times_ejected(&"a") > 0);
            assert!(d.record(&"a", Outcome::Success, 4, t).is_none());
            if d.times_ejected(&"a") > 0 {
                break;
            }
        }
        // Alternating failures never reach 3 in a row, but reach 50% over 10 requests.
        assert_eq!(d.times_ejected(&"a"), 1);
    }

    #[test]
    fn never_more_than_the_maximum_share() {
        let t = Instant::now();
        let mut d = OutlierDetector::new(cfg());
        let mut ejected = 0;
        for ep in ["a", "b", "c", "d"] {
            for _ in 0..3 {
                if d.record(&ep, Outcome::Failure, 4, t).is_some() {
                    ejected += 1;
                }
            }
        }
        assert_eq!(ejected, 2, "50% of 4");
        // With one endpoint, it may still be ejected (the balancer panics back to it).
        let mut single = OutlierDetector::new(cfg());
        let mut got = None;
        for _ in 0..3 {
            got = single.record(&"x", Outcome::Failure, 1, t);
        }
        assert!(got.is_some());
    }
}
