//! The balancers that ignore the request: round robin, random and least request, each
//! treating endpoint weights as Envoy does (SEMANTICS.md §1.2). Envoy's weighted schedulers
//! mutate per worker thread; ours are shared by every connection and may only touch atomics
//! at pick time, so where Envoy keeps mutable EDF state we precompute (round robin) or draw
//! (least request) instead, as each type documents.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ActiveRequests, BalanceError, LeastRequestConfig, Random};

/// Longest weighted round-robin schedule kept (entries of 4 bytes: 256 KiB at most).
/// Weights whose reduced sum exceeds it are scaled down to fit, each keeping at least one slot.
pub const MAX_SCHEDULE: u64 = 1 << 16;

fn all_equal(weights: &[u32]) -> bool {
    weights.windows(2).all(|w| w[0] == w[1])
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Round robin. Equal weights: a plain rotation. Unequal weights: Envoy's earliest-deadline-
/// first schedule (host *i*'s k-th pick is due at k / wᵢ, ties to the entry queued first),
/// replayed with Envoy's floating-point arithmetic for one period (Σwᵢ / gcd picks) at
/// construction; a pick is then one `fetch_add` on the cursor, and the random start cursor
/// plays the part of Envoy's random number of initial picks. We chose EDF over nginx's smooth
/// WRR because it is what Envoy runs, so traffic spreads as an Envoy sidecar's would.
#[derive(Debug)]
pub(super) struct RoundRobin {
    len: usize,
    /// Endpoint indices for one period; empty when weights are equal.
    schedule: Vec<u32>,
    cursor: AtomicU64,
}

impl RoundRobin {
    /// `start` is the initial cursor (random in production, as Envoy's).
    pub(super) fn new(weights: &[u32], start: u64) -> Self {
        let schedule = if all_equal(weights) {
            Vec::new()
        } else {
            edf_schedule(weights)
        };
        Self {
            len: weights.len(),
            schedule,
            cursor: AtomicU64::new(start),
        }
    }

    pub(super) fn pick(&self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        if self.schedule.is_empty() {
            return Some((n % self.len as u64) as usize);
        }
        let slot = (n % self.schedule.len() as u64) as usize;
        self.schedule.get(slot).map(|&i| i as usize)
    }
}

fn edf_schedule(weights: &[u32]) -> Vec<u32> {
    let mut w: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
    let g = w.iter().fold(0, |g, &w| gcd(g, w));
    let mut period = w.iter().sum::<u64>() / g.max(1);
    if period > MAX_SCHEDULE {
        for w in &mut w {
            *w = (*w / g * MAX_SCHEDULE / period).max(1);
        }
        period = w.iter().sum();
    }
    // Envoy's EdfScheduler: a min-queue on (deadline, insertion order), deadlines as doubles
    // advanced by 1/w from the popped deadline. Positive floats order like their bit patterns.
    let due = |at: f64, w: u64| (at + 1.0 / w as f64).to_bits();
    let mut queue: BinaryHeap<Reverse<(u64, u64, u32)>> = (0u32..)
        .zip(&w)
        .map(|(i, &w)| Reverse((due(0.0, w), u64::from(i), i)))
        .collect();
    let mut order = w.len() as u64;
    let mut schedule = Vec::with_capacity(period as usize);
    while (schedule.len() as u64) < period {
        let Some(Reverse((deadline, _, i))) = queue.pop() else {
            break;
        };
        schedule.push(i);
        let next = due(f64::from_bits(deadline), w[i as usize]);
        queue.push(Reverse((next, order, i)));
        order += 1;
    }
    schedule
}

/// Random: uniform over the endpoints, weights ignored, as Envoy's random balancer does
/// (`random % hosts`, SEMANTICS.md §1.2). The modulo bias is below 2⁻³² for any real set.
pub(super) fn uniform(len: usize, rng: &mut (impl Random + ?Sized)) -> Option<usize> {
    (len > 0).then(|| (rng.next_u64() % len as u64) as usize)
}

/// Least request. Equal weights: Envoy's power of `choice_count` choices: draw that many
/// indices uniformly with replacement, keep the first, replace it only by a draw with
/// strictly fewer active requests. Unequal weights: Envoy runs EDF over the effective weights
/// `w / (active + 1)^bias`, recomputing a host's weight when it is re-queued; a shared,
/// immutable balancer cannot keep that queue, so we draw at random in proportion to the
/// effective weights read at pick time. The long-run shares are the ones Envoy's EDF aims at,
/// and they react to load immediately rather than a period late. O(n) per pick, no allocation.
#[derive(Debug)]
pub(super) struct LeastRequest {
    len: usize,
    /// Weights when they differ; empty when equal (P2C).
    weights: Vec<u32>,
    choice_count: u32,
    bias: f64,
}

impl LeastRequest {
    pub(super) fn new(weights: &[u32], cfg: LeastRequestConfig) -> Result<Self, BalanceError> {
        if cfg.choice_count < 2 {
            return Err(BalanceError::ChoiceCount(cfg.choice_count));
        }
        let bias = cfg.active_request_bias;
        if !bias.is_finite() || bias < 0.0 {
            return Err(BalanceError::ActiveRequestBias(bias));
        }
        Ok(Self {
            len: weights.len(),
            weights: if all_equal(weights) {
                Vec::new()
            } else {
                weights.iter().map(|&w| w.max(1)).collect()
            },
            choice_count: cfg.choice_count,
            bias,
        })
    }

    fn effective(&self, weight: u32, active: u64) -> f64 {
        let w = f64::from(weight);
        let load = active as f64 + 1.0;
        // Envoy special-cases the common biases to avoid `pow`.
        if self.bias == 1.0 {
            w / load
        } else if self.bias == 0.0 {
            w
        } else {
            w / load.powf(self.bias)
        }
    }

    pub(super) fn pick<A, R>(&self, active: &A, rng: &mut R) -> Option<usize>
    where
        A: ActiveRequests + ?Sized,
        R: Random + ?Sized,
    {
        let n = self.len as u64;
        if n <= 1 {
            return (n == 1).then_some(0);
        }
        if self.weights.is_empty() {
            let mut best = (rng.next_u64() % n) as usize;
            let mut best_active = active.active(best);
            for _ in 1..self.choice_count {
                let candidate = (rng.next_u64() % n) as usize;
                let load = active.active(candidate);
                if load < best_active {
                    best = candidate;
                    best_active = load;
                }
            }
            return Some(best);
        }
        let weight_of = |i: usize, &w: &u32| self.effective(w, active.active(i));
        let total: f64 = self
            .weights
            .iter()
            .enumerate()
            .map(|(i, w)| weight_of(i, w))
            .sum();
        // 53 random bits as a fraction in [0, 1).
        let mut target = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        for (i, w) in self.weights.iter().enumerate() {
            let e = weight_of(i, w);
            if target < e {
                return Some(i);
            }
            target -= e;
        }
        // Counters moved between the two passes (or rounding): the last host takes the rest.
        Some(self.len - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::SplitMix64;

    /// Asserts that 100,000 picks split in proportion to `weights`, within one point.
    fn assert_shares(weights: &[f64], mut pick: impl FnMut() -> Option<usize>) {
        let mut counts = vec![0u32; weights.len()];
        for _ in 0..100_000 {
            counts[pick().unwrap()] += 1;
        }
        let sum: f64 = weights.iter().sum();
        for (&c, w) in counts.iter().zip(weights) {
            let share = f64::from(c) / 100_000.0;
            assert!((share - w / sum).abs() < 0.01, "{counts:?} vs {weights:?}");
        }
    }

    /// A random source replaying `values`.
    fn script(values: &[u64]) -> impl FnMut() -> u64 + '_ {
        let mut it = values.iter().copied();
        move || it.next().unwrap_or(0)
    }

    #[test]
    fn round_robin_rotates_from_its_start() {
        let rr = RoundRobin::new(&[1, 1, 1], 5);
        let seq: Vec<usize> = (0..6).filter_map(|_| rr.pick()).collect();
        assert_eq!(seq, [2, 0, 1, 2, 0, 1]);
    }

    #[test]
    fn weighted_round_robin_follows_envoys_edf_order() {
        // Deadlines: host 0 at 0.2, 0.4, 0.6, 0.8, 1.0; hosts 1 and 2 at 1.0. At the 1.0 tie
        // hosts 1 and 2 were queued first (initially), host 0 re-queued after its 4th pick.
        assert_eq!(edf_schedule(&[5, 1, 1]), [0, 0, 0, 0, 1, 2, 0]);
        // The gcd is divided out: weights 20:10 behave as 2:1 (host 0 due at 0.5 and 1.0,
        // host 1 at 1.0 and queued before host 0's second entry).
        assert_eq!(edf_schedule(&[20, 10]), [0, 1, 0]);
    }

    #[test]
    fn weighted_round_robin_is_accurate_within_one_percent() {
        let rr = RoundRobin::new(&[1, 2, 3, 4, 10], 12345);
        assert_shares(&[1.0, 2.0, 3.0, 4.0, 10.0], || rr.pick());
    }

    #[test]
    fn huge_weights_are_scaled_into_a_bounded_schedule() {
        let schedule = edf_schedule(&[u32::MAX, 3, 1]);
        assert!(schedule.len() as u64 <= MAX_SCHEDULE + 3);
        assert!(schedule.contains(&1) && schedule.contains(&2));
        let heavy = schedule.iter().filter(|&&i| i == 0).count();
        assert!(heavy as f64 / schedule.len() as f64 > 0.99);
    }

    #[test]
    fn random_is_uniform_within_one_percent() {
        let mut rng = SplitMix64(11);
        assert_shares(&[1.0; 4], || uniform(4, &mut rng));
    }

    fn least_request(weights: &[u32], choice_count: u32, active_request_bias: f64) -> LeastRequest {
        let cfg = LeastRequestConfig {
            choice_count,
            active_request_bias,
        };
        LeastRequest::new(weights, cfg).unwrap()
    }

    #[test]
    fn p2c_keeps_the_first_draw_unless_a_later_one_is_strictly_less_loaded() {
        let load = [4u64, 4, 4, 2, 4, 1, 4, 4];
        let two = least_request(&[1; 8], 2, 1.0);
        assert_eq!(two.pick(&load[..], &mut script(&[3, 5])), Some(5));
        assert_eq!(two.pick(&load[..], &mut script(&[5, 3])), Some(5));
        assert_eq!(two.pick(&load[..], &mut script(&[0, 1])), Some(0), "tie");
        let three = least_request(&[1; 8], 3, 1.0);
        assert_eq!(three.pick(&load[..], &mut script(&[0, 3, 5])), Some(5));
    }

    #[test]
    fn p2c_starves_an_overloaded_endpoint() {
        let lr = least_request(&[1; 10], 2, 1.0);
        let load = |i: usize| if i == 0 { 100 } else { 1 };
        let mut rng = SplitMix64(21);
        let mut counts = [0u32; 10];
        for _ in 0..10_000 {
            counts[lr.pick(&load, &mut rng).unwrap()] += 1;
        }
        // Endpoint 0 wins only when both draws hit it: 1 % of picks instead of 10 %.
        assert!(counts[0] < 250, "{counts:?}");
        assert!(counts[1..].iter().all(|&c| c > 900), "{counts:?}");
    }

    #[test]
    fn weighted_least_request_divides_weight_by_load() {
        let mut rng = SplitMix64(31);
        let (idle, busy) = ([0u64; 3], [0u64, 0, 3]);
        // Weights 1, 1, 2; host 2 with 3 in flight weighs 2/4 (bias 1), 2/16 (bias 2) or 2.
        let cases = [
            (1.0, idle, 2.0),
            (1.0, busy, 0.5),
            (2.0, busy, 0.125),
            (0.0, busy, 2.0),
        ];
        for (bias, load, third) in cases {
            let lr = least_request(&[1, 1, 2], 2, bias);
            assert_shares(&[1.0, 1.0, third], || lr.pick(&load[..], &mut rng));
        }
    }
}
