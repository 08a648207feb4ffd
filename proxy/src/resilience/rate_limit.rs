//! Local rate limiting: Envoy's token bucket, per proxy, for a destination or a route
//! (meshlite's `ratelimit.meshlite.io/local` annotations). The bucket starts full with
//! `max_tokens` and gains `tokens_per_fill` at every whole `fill_interval` since it was
//! made, never above `max_tokens`. A request takes one token or is refused (429, flag `RL`).
//!
//! The state is one `AtomicU64` (tokens, and the number of the last interval credited),
//! updated by compare-and-swap: no lock on the request path. Time comes in as an argument so
//! tests drive it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket.
#[derive(Debug)]
pub struct TokenBucket {
    max_tokens: u32,
    tokens_per_fill: u32,
    fill_interval: Duration,
    start: Instant,
    /// High 32 bits: tokens; low 32 bits: the last interval credited.
    state: AtomicU64,
}

fn pack(tokens: u32, interval: u32) -> u64 {
    (u64::from(tokens) << 32) | u64::from(interval)
}

fn unpack(state: u64) -> (u32, u32) {
    ((state >> 32) as u32, state as u32)
}

/// A local rate limit as set (Envoy's `token_bucket`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// The bucket's size, and its tokens when made.
    pub max_tokens: u32,
    /// Tokens added per interval (0: Envoy's default, 1).
    pub tokens_per_fill: u32,
    /// The interval; `None` or zero: the limit is not usable.
    pub fill_interval: Option<Duration>,
}

impl TokenBucket {
    /// A full bucket; `None` for a setting that cannot limit (no tokens or no interval).
    pub fn new(limit: &RateLimit, now: Instant) -> Option<Self> {
        let fill_interval = limit.fill_interval.filter(|d| !d.is_zero())?;
        (limit.max_tokens > 0).then(|| Self {
            max_tokens: limit.max_tokens,
            tokens_per_fill: limit.tokens_per_fill.max(1),
            fill_interval,
            start: now,
            state: AtomicU64::new(pack(limit.max_tokens, 0)),
        })
    }

    /// Whether this bucket was made from `limit` (so a push that keeps it keeps its tokens).
    pub fn is(&self, limit: &RateLimit) -> bool {
        self.max_tokens == limit.max_tokens
            && self.tokens_per_fill == limit.tokens_per_fill.max(1)
            && limit.fill_interval == Some(self.fill_interval)
    }

    /// Takes a token at `now`; `false` when there is none (the request is refused).
    pub fn try_take(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.start);
        let interval = u32::try_from(elapsed.as_nanos() / self.fill_interval.as_nanos().max(1))
            .unwrap_or(u32::MAX);
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (tokens, credited) = unpack(current);
            let mut tokens = tokens;
            let mut credited = credited;
            if interval > credited {
                let fills = u64::from(interval - credited) * u64::from(self.tokens_per_fill);
                tokens = u64::from(tokens)
                    .saturating_add(fills)
                    .min(u64::from(self.max_tokens)) as u32;
                credited = interval;
            }
            if tokens == 0 {
                // Record the credit even when refusing, so it is not counted twice.
                let next = pack(0, credited);
                if next == current {
                    return false;
                }
                match self.state.compare_exchange_weak(
                    current,
                    next,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return false,
                    Err(actual) => {
                        current = actual;
                        continue;
                    }
                }
            }
            match self.state.compare_exchange_weak(
                current,
                pack(tokens - 1, credited),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max: u32, per_fill: u32, ms: u64) -> RateLimit {
        RateLimit {
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval: Some(Duration::from_millis(ms)),
        }
    }

    #[test]
    fn a_full_bucket_then_one_fill_per_interval_never_above_max() {
        let t0 = Instant::now();
        let b = TokenBucket::new(&limit(3, 2, 1000), t0).unwrap();
        assert_eq!((0..5).filter(|_| b.try_take(t0)).count(), 3, "starts full");
        let t1 = t0 + Duration::from_millis(999);
        assert!(!b.try_take(t1), "no fill before the interval");
        let t2 = t0 + Duration::from_millis(1000);
        assert_eq!((0..5).filter(|_| b.try_take(t2)).count(), 2, "one fill");
        let t3 = t0 + Duration::from_secs(60);
        assert_eq!(
            (0..10).filter(|_| b.try_take(t3)).count(),
            3,
            "capped at max"
        );
    }

    #[test]
    fn over_many_intervals_the_rate_is_tokens_per_fill() {
        let t0 = Instant::now();
        let b = TokenBucket::new(&limit(10, 5, 100), t0).unwrap();
        let mut granted = 0;
        for ms in 0..10_000u64 {
            // Ten tries a millisecond: far over the limit.
            for _ in 0..10 {
                granted += usize::from(b.try_take(t0 + Duration::from_millis(ms)));
            }
        }
        // The initial 10, then 5 at each of the 99 interval boundaries in 0..10 s.
        assert_eq!(granted, 10 + 99 * 5);
    }

    #[tokio::test(start_paused = true)]
    async fn on_the_paused_clock_the_bucket_refills_once_per_interval() {
        use tokio::time::advance;
        let b = TokenBucket::new(&limit(4, 2, 1000), Instant::now()).unwrap();
        let take = |n| (0..n).filter(|_| b.try_take(Instant::now())).count();
        assert_eq!(take(10), 4, "starts full");
        advance(Duration::from_millis(999)).await;
        assert_eq!(take(10), 0, "nothing before the interval");
        advance(Duration::from_millis(1)).await;
        assert_eq!(take(10), 2, "tokens_per_fill at the interval");
        advance(Duration::from_secs(3)).await;
        assert_eq!(take(10), 4, "three fills, capped at max_tokens");
    }

    #[test]
    fn settings_that_cannot_limit_make_no_bucket() {
        let t0 = Instant::now();
        assert!(TokenBucket::new(&limit(0, 1, 1000), t0).is_none());
        assert!(TokenBucket::new(&limit(1, 1, 0), t0).is_none());
        let b = TokenBucket::new(&limit(1, 0, 1000), t0).unwrap();
        assert!(b.is(&limit(1, 1, 1000)), "0 per fill is Envoy's default 1");
        assert!(!b.is(&limit(2, 1, 1000)));
    }
}
