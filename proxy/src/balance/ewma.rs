//! Peak-EWMA latency estimates, for the latency-aware balancer Linkerd's proxy uses by
//! default (beyond Istio's algorithms; `loadbalancer.meshlite.io/algorithm: PEAK_EWMA` on a
//! DestinationRule). Each endpoint keeps an exponentially weighted moving average of its
//! response time that jumps to any higher sample at once (the "peak": a slow endpoint is
//! avoided immediately) and decays back towards faster samples with time constant `decay`.
//! The balancer draws two endpoints and sends to the one with the lower
//! `estimate × (in flight + 1)`.
//!
//! Two atomics per endpoint; a lost update under a race only delays the estimate by one
//! sample, which is the usual trade of lock-free estimators.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Linkerd's default decay time constant.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);
/// The estimate of an endpoint never measured (Linkerd's default RTT).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// Nanoseconds since this process first asked: the clock of the latency estimates (and of
/// the concurrency retry budget's window), cheap enough to read per request.
pub fn clock_ns() -> u64 {
    static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(tokio::time::Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One endpoint's latency estimate.
#[derive(Debug)]
pub struct PeakEwma {
    /// The estimate in nanoseconds, as `f64` bits; 0 bits: never measured.
    estimate: AtomicU64,
    /// When it was last updated, in nanoseconds on the caller's clock.
    stamp: AtomicU64,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self {
            estimate: AtomicU64::new(0),
            stamp: AtomicU64::new(0),
        }
    }
}

impl PeakEwma {
    /// Records a response time `rtt` seen at `now_ns`.
    pub fn observe(&self, rtt: Duration, now_ns: u64, decay: Duration) {
        let sample = rtt.as_nanos() as f64;
        let prev_bits = self.estimate.load(Ordering::Relaxed);
        let next = if prev_bits == 0 {
            sample
        } else {
            let prev = f64::from_bits(prev_bits);
            if sample > prev {
                sample
            } else {
                let elapsed = now_ns.saturating_sub(self.stamp.load(Ordering::Relaxed)) as f64;
                let w = (-elapsed / decay.as_nanos().max(1) as f64).exp();
                prev * w + sample * (1.0 - w)
            }
        };
        self.estimate
            .store(next.max(1.0).to_bits(), Ordering::Relaxed);
        self.stamp.store(now_ns, Ordering::Relaxed);
    }

    /// The current estimate in nanoseconds ([`DEFAULT_RTT`] before any sample).
    pub fn estimate_ns(&self) -> f64 {
        match self.estimate.load(Ordering::Relaxed) {
            0 => DEFAULT_RTT.as_nanos() as f64,
            bits => f64::from_bits(bits),
        }
    }

    /// The balancing cost with `active` requests in flight.
    pub fn cost(&self, active: u64) -> f64 {
        self.estimate_ns() * (active as f64 + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_slower_sample_is_taken_at_once_and_faster_ones_decay_in() {
        let e = PeakEwma::default();
        assert_eq!(e.estimate_ns(), DEFAULT_RTT.as_nanos() as f64);
        e.observe(Duration::from_millis(10), 0, DEFAULT_DECAY);
        assert_eq!(e.estimate_ns(), 10.0 * MS as f64);
        e.observe(Duration::from_millis(100), MS, DEFAULT_DECAY);
        assert_eq!(e.estimate_ns(), 100.0 * MS as f64, "peak: at once");
        // One decay constant later a 10 ms sample pulls it about 63 % of the way down.
        e.observe(Duration::from_millis(10), MS + 10_000 * MS, DEFAULT_DECAY);
        let est = e.estimate_ns() / MS as f64;
        assert!((40.0..45.0).contains(&est), "{est}");
    }

    #[test]
    fn cost_grows_with_requests_in_flight() {
        let e = PeakEwma::default();
        e.observe(Duration::from_millis(2), 0, DEFAULT_DECAY);
        assert_eq!(e.cost(0), 2.0 * MS as f64);
        assert_eq!(e.cost(3), 8.0 * MS as f64);
    }
}
