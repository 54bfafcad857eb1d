//! The pure decision of when an instance changes health: N failures in a row make it
//! critical, M successes in a row make it passing. No clock, no I/O.

use murmur_protocol::Health;

/// Consecutive-result thresholds for one instance.
#[derive(Debug, Clone)]
pub struct Thresholds {
    failures_before_critical: u32,
    successes_before_passing: u32,
    status: Health,
    successes: u32,
    failures: u32,
}

impl Thresholds {
    /// Starts critical: an instance nobody has checked yet is not sent traffic.
    pub fn new(failures_before_critical: u32, successes_before_passing: u32) -> Self {
        Self {
            failures_before_critical: failures_before_critical.max(1),
            successes_before_passing: successes_before_passing.max(1),
            status: Health::Critical,
            successes: 0,
            failures: 0,
        }
    }

    /// The current status.
    pub fn status(&self) -> Health {
        self.status
    }

    /// Records one check result; returns the new status when it changed.
    pub fn record(&mut self, passed: bool) -> Option<Health> {
        if passed {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.status != Health::Passing && self.successes >= self.successes_before_passing {
                self.status = Health::Passing;
                return Some(Health::Passing);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.status != Health::Critical && self.failures >= self.failures_before_critical {
                self.status = Health::Critical;
                return Some(Health::Critical);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_only_after_the_thresholds() {
        let mut t = Thresholds::new(2, 2);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Health::Passing));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a success resets the failure run");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(Health::Critical));
        assert_eq!(t.record(false), None);
        assert_eq!(t.status(), Health::Critical);
    }

    #[test]
    fn one_success_passes_a_new_instance_by_default() {
        let mut t = Thresholds::new(2, 1);
        assert_eq!(t.status(), Health::Critical);
        assert_eq!(t.record(true), Some(Health::Passing));
    }
}
