//! Istio's `trafficPolicy.retryBudget` (Envoy's cluster retry budget, SEMANTICS.md §1.3):
//! retries in flight are capped at max(`percent` % of the requests counted,
//! `minRetryConcurrency`), in place of `maxRetries`. Without a `budgetInterval` the
//! requests counted are those in flight and pending, so the cap follows the load of the
//! moment; with one, those started within the last interval, so a burst of failures that
//! empties the in-flight count does not also shrink the cap to its floor.
//!
//! The interval count is a sliding window over two fixed windows (the current one, and the
//! previous one weighted by how much of it the sliding window still covers), kept in two
//! atomic words: no lock, and nothing at all on the request path when no interval is set.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A cluster's concurrency retry budget.
#[derive(Debug, Clone)]
pub struct ConcurrencyBudget {
    /// Share of the requests counted that may be retries in flight, in percent.
    percent: f64,
    /// The cap never goes below this.
    min_retry_concurrency: u64,
    /// Requests started per interval, when the budget counts by interval.
    window: Option<Arc<RequestWindow>>,
}

/// Istio's `retryBudget` as set on a destination.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSpec {
    /// Share of the requests counted that may be retries in flight, in percent.
    pub percent: f64,
    /// The cap never goes below this.
    pub min_retry_concurrency: u32,
    /// Count requests started per interval instead of requests in flight (`None` or zero:
    /// in flight).
    pub interval: Option<Duration>,
}

impl ConcurrencyBudget {
    /// The budget `b` sets, reusing `prev`'s request window when its interval is the same
    /// (a push neither resets nor doubles the count).
    pub fn new(b: &BudgetSpec, prev: Option<&ConcurrencyBudget>) -> Self {
        let interval = b.interval.filter(|d| !d.is_zero());
        let window = interval.map(|i| {
            prev.and_then(|p| p.window.clone())
                .filter(|w| w.interval_ns == nanos(i))
                .unwrap_or_else(|| Arc::new(RequestWindow::new(i)))
        });
        Self {
            percent: if b.percent.is_finite() {
                b.percent.clamp(0.0, 100.0)
            } else {
                20.0
            },
            min_retry_concurrency: u64::from(b.min_retry_concurrency),
            window,
        }
    }

    /// Share of the requests counted that may be retries in flight, in percent.
    pub fn percent(&self) -> f64 {
        self.percent
    }

    /// The floor of the cap.
    pub fn min_retry_concurrency(&self) -> u64 {
        self.min_retry_concurrency
    }

    /// The interval requests are counted over (`None`: those in flight are).
    pub fn interval(&self) -> Option<Duration> {
        self.window
            .as_ref()
            .map(|w| Duration::from_nanos(w.interval_ns))
    }

    /// Records one request to the cluster now (it counts only with an interval, and only
    /// then is the clock read).
    pub fn record_request(&self) {
        if self.window.is_some() {
            self.record_request_at(crate::balance::ewma::clock_ns());
        }
    }

    /// Records one request at `now_ns` (the window's clock, [`crate::balance::ewma::clock_ns`]).
    pub fn record_request_at(&self, now_ns: u64) {
        if let Some(w) = &self.window {
            w.record(now_ns);
        }
    }

    /// How many retries may be in flight now, given the requests in flight and pending.
    pub fn max(&self, in_flight: u64, now_ns: u64) -> u64 {
        let counted = match &self.window {
            Some(w) => w.count(now_ns),
            None => in_flight as f64,
        };
        // Envoy truncates the share to a whole number of retries.
        let share = (self.percent / 100.0 * counted) as u64;
        share.max(self.min_retry_concurrency)
    }
}

/// Requests started in the last `interval`, approximated by a sliding window over two fixed
/// windows. Each slot packs a window number (high 32 bits) and its count (low 32 bits).
#[derive(Debug)]
pub struct RequestWindow {
    interval_ns: u64,
    slots: [AtomicU64; 2],
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

impl RequestWindow {
    /// An empty window of length `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval_ns: nanos(interval),
            slots: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Counts one request started at `now_ns`.
    pub fn record(&self, now_ns: u64) {
        let window = now_ns / self.interval_ns;
        let tag = window as u32;
        let _ = self.slots[(window % 2) as usize].fetch_update(
            Ordering::AcqRel,
            Ordering::Acquire,
            |w| {
                let (t, n) = ((w >> 32) as u32, w as u32);
                Some(if t == tag {
                    w & !0xFFFF_FFFF | u64::from(n.saturating_add(1))
                } else {
                    u64::from(tag) << 32 | 1
                })
            },
        );
    }

    /// Requests started within the `interval` before `now_ns`.
    pub fn count(&self, now_ns: u64) -> f64 {
        let window = now_ns / self.interval_ns;
        let in_window = |w: u64| {
            let word = self.slots[(w % 2) as usize].load(Ordering::Acquire);
            if (word >> 32) as u32 == w as u32 {
                f64::from(word as u32)
            } else {
                0.0
            }
        };
        let elapsed = (now_ns % self.interval_ns) as f64 / self.interval_ns as f64;
        let previous = match window.checked_sub(1) {
            Some(p) => in_window(p) * (1.0 - elapsed),
            None => 0.0,
        };
        in_window(window) + previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn budget(percent: f64, min: u32, interval: Option<Duration>) -> ConcurrencyBudget {
        ConcurrencyBudget::new(
            &BudgetSpec {
                percent,
                min_retry_concurrency: min,
                interval,
            },
            None,
        )
    }

    #[test]
    fn without_an_interval_the_cap_is_a_share_of_requests_in_flight_with_a_floor() {
        let b = budget(20.0, 3, None);
        assert_eq!(b.max(0, 0), 3, "the floor when idle");
        assert_eq!(b.max(10, 0), 3, "20 % of 10 is under the floor");
        assert_eq!(b.max(100, 0), 20);
        assert_eq!(b.max(104, 0), 20, "truncated, as Envoy does");
        assert_eq!(budget(0.0, 0, None).max(1000, 0), 0, "retries off");
    }

    #[test]
    fn with_an_interval_the_cap_follows_requests_started_in_it() {
        let b = budget(50.0, 1, Some(Duration::from_secs(1)));
        for i in 0..40 {
            b.record_request_at(i * SECOND / 40);
        }
        // All 40 started within the last second: 50 % of them.
        assert_eq!(b.max(0, SECOND - 1), 20);
        // Half-way through the next window, half of the previous one still counts.
        assert_eq!(b.max(0, SECOND + SECOND / 2), 10);
        // Two intervals later nothing counts but the floor.
        assert_eq!(b.max(0, 3 * SECOND), 1);
    }

    #[test]
    fn a_push_with_the_same_interval_keeps_the_count() {
        let old = budget(100.0, 0, Some(Duration::from_secs(2)));
        for _ in 0..7 {
            old.record_request_at(SECOND);
        }
        let spec = BudgetSpec {
            percent: 100.0,
            min_retry_concurrency: 0,
            interval: Some(Duration::from_secs(2)),
        };
        assert_eq!(ConcurrencyBudget::new(&spec, Some(&old)).max(0, SECOND), 7);
        let other = BudgetSpec {
            interval: Some(Duration::from_secs(3)),
            ..spec
        };
        assert_eq!(
            ConcurrencyBudget::new(&other, Some(&old)).max(0, SECOND),
            0,
            "a new interval starts afresh"
        );
    }
}
