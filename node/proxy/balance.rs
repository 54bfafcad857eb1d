//! Endpoint selection: power of two choices over peak-EWMA latency × outstanding
//! connections, weighted, same zone first; round robin as an option. Ejected endpoints
//! are skipped unless every endpoint is ejected (panic mode: use them all rather than
//! fail everything). Pure: candidates and a random source in, a choice out.

use rand::{Rng, RngExt};

pub use crate::config::Policy;

/// Relative difference in load below which two endpoints count as equally loaded.
const TIE_MARGIN: f64 = 0.25;

/// One endpoint as the balancer sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Relative weight; 0 only when nothing else is left.
    pub weight: u16,
    /// In the caller's zone.
    pub same_zone: bool,
    /// Peak-EWMA connect latency in nanoseconds.
    pub latency_ns: f64,
    /// Connections open now.
    pub outstanding: u32,
    /// Ejected by outlier detection.
    pub ejected: bool,
    /// Already tried for this connection.
    pub tried: bool,
}

impl Candidate {
    fn load(&self) -> f64 {
        // +1 so an idle slow endpoint still compares by latency; divided by weight so a
        // heavier endpoint takes proportionally more.
        self.latency_ns.max(1.0) * f64::from(self.outstanding + 1) / f64::from(self.weight.max(1))
    }
}

/// The balancer of one upstream.
#[derive(Debug, Default)]
pub struct Balancer {
    policy: Policy,
    next: usize,
}

impl Balancer {
    /// A balancer with this policy.
    pub fn new(policy: Policy) -> Self {
        Self { policy, next: 0 }
    }

    /// Picks an index into `cands`, or `None` when every candidate was tried.
    pub fn pick(&mut self, cands: &[Candidate], rng: &mut impl Rng) -> Option<usize> {
        let untried: Vec<usize> = (0..cands.len()).filter(|&i| !cands[i].tried).collect();
        if untried.is_empty() {
            return None;
        }
        let narrow = |set: Vec<usize>, keep: &dyn Fn(&Candidate) -> bool| {
            let kept: Vec<usize> = set.iter().copied().filter(|&i| keep(&cands[i])).collect();
            if kept.is_empty() {
                set
            } else {
                kept
            }
        };
        // Healthy first (else panic mode), then same zone, then positive weight.
        let set = narrow(untried, &|c| !c.ejected);
        let set = narrow(set, &|c| c.same_zone);
        let set = narrow(set, &|c| c.weight > 0);
        match self.policy {
            Policy::RoundRobin => {
                self.next = self.next.wrapping_add(1);
                Some(set[self.next % set.len()])
            }
            Policy::P2c if set.len() == 1 => Some(set[0]),
            Policy::P2c => {
                let a = weighted_draw(&set, cands, rng);
                let mut b = weighted_draw(&set, cands, rng);
                for _ in 0..4 {
                    if b != a {
                        break;
                    }
                    b = weighted_draw(&set, cands, rng);
                }
                // Loads within a small margin count as equal and the random first draw
                // stands: otherwise, at low concurrency, whichever endpoint measured a
                // few microseconds faster would take nearly all traffic.
                let (la, lb) = (cands[a].load(), cands[b].load());
                Some(if lb * (1.0 + TIE_MARGIN) < la { b } else { a })
            }
        }
    }
}

/// Draws one index of `set` with probability proportional to its weight.
fn weighted_draw(set: &[usize], cands: &[Candidate], rng: &mut impl Rng) -> usize {
    let total: u64 = set.iter().map(|&i| u64::from(cands[i].weight.max(1))).sum();
    let mut x = rng.random_range(0..total);
    for &i in set {
        let w = u64::from(cands[i].weight.max(1));
        if x < w {
            return i;
        }
        x -= w;
    }
    set[set.len() - 1]
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn c(latency_ms: f64, outstanding: u32) -> Candidate {
        Candidate {
            weight: 1,
            same_zone: true,
            latency_ns: latency_ms * 1e6,
            outstanding,
            ejected: false,
            tried: false,
        }
    }

    fn counts(b: &mut Balancer, cands: &[Candidate], n: usize) -> Vec<usize> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut hits = vec![0; cands.len()];
        for _ in 0..n {
            hits[b.pick(cands, &mut rng).expect("a pick")] += 1;
        }
        hits
    }

    #[test]
    fn p2c_prefers_fast_and_idle_endpoints() {
        let cands = [c(1.0, 0), c(10.0, 0), c(1.0, 20)];
        let hits = counts(&mut Balancer::new(Policy::P2c), &cands, 3000);
        assert!(hits[0] > hits[1] && hits[0] > hits[2], "{hits:?}");
        assert!(hits[1] < 1100 && hits[2] < 1100, "{hits:?}");
    }

    #[test]
    fn ejected_tried_zone_and_weight_rules() {
        let mut cands = vec![c(1.0, 0), c(1.0, 0), c(1.0, 0)];
        cands[0].ejected = true;
        cands[1].same_zone = false;
        let hits = counts(&mut Balancer::new(Policy::P2c), &cands, 500);
        assert_eq!(hits, vec![0, 0, 500], "healthy and same zone first");
        cands[2].tried = true;
        assert_eq!(counts(&mut Balancer::new(Policy::P2c), &cands, 100), vec![0, 100, 0]);
        // Every untried endpoint ejected: panic mode uses them anyway.
        cands[1].ejected = true;
        let hits = counts(&mut Balancer::new(Policy::P2c), &cands, 100);
        assert_eq!(hits[2], 0);
        assert_eq!(hits[0] + hits[1], 100);
        for x in &mut cands {
            x.tried = true;
        }
        assert_eq!(Balancer::new(Policy::P2c).pick(&cands, &mut rand::rngs::StdRng::seed_from_u64(1)), None);
    }

    #[test]
    fn near_equal_endpoints_share_the_traffic() {
        let cands = [c(1.0, 0), c(1.1, 0)];
        let hits = counts(&mut Balancer::new(Policy::P2c), &cands, 2000);
        assert!(hits[0] > 800 && hits[1] > 800, "{hits:?}");
    }

    #[test]
    fn weights_and_round_robin() {
        let mut cands = vec![c(1.0, 0), c(1.0, 0)];
        cands[0].weight = 9;
        let hits = counts(&mut Balancer::new(Policy::P2c), &cands, 2000);
        assert!(hits[0] > 1500, "{hits:?}");
        cands[0].weight = 0;
        assert_eq!(
            counts(&mut Balancer::new(Policy::P2c), &cands, 100),
            vec![0, 100],
            "weight 0 only as a last resort"
        );
        let rr = counts(&mut Balancer::new(Policy::RoundRobin), &[c(1.0, 0), c(9.0, 9)], 100);
        assert_eq!(rr, vec![50, 50]);
    }
}
