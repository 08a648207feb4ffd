//! Slow start (Istio's `loadBalancer.warmup`, Envoy's `slow_start_config`): an endpoint that
//! joins a cluster gets a growing share of its weight during a window, so a cold process
//! (empty caches, JIT, connection pools) is not handed its full share at once. Its weight is
//! multiplied by `max(minimumPercent / 100, (age / window)^(1 / aggression))` until `age`
//! reaches the window (SEMANTICS.md §1.2). Only round robin and least request use it, as in
//! Envoy.
//!
//! The factor changes with time while balancers are built once per endpoint set, so the
//! cluster rebuilds its balancer every [`REFRESH`] while an endpoint warms up: weights move
//! in steps of at most that, and the request path still reads the clock nowhere.

use std::time::Duration;

/// How often a cluster with warming endpoints rebuilds its balancer.
pub const REFRESH: Duration = Duration::from_millis(250);

/// Istio's `warmup.minimumPercent` default.
pub const DEFAULT_MINIMUM_PERCENT: f64 = 10.0;

/// Istio's `warmup.aggression` default: the weight grows linearly.
pub const DEFAULT_AGGRESSION: f64 = 1.0;

/// The warm-up curve of one cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    window: Duration,
    min_fraction: f64,
    aggression: f64,
}

impl SlowStart {
    /// A curve over `window`, starting at `minimum_percent` % of the weight; `aggression`
    /// above 1 ramps faster early, below 1 slower. Out-of-range values fall back to Istio's
    /// defaults (the control plane refuses them in the first place). None for a zero window.
    pub fn new(window: Duration, minimum_percent: f64, aggression: f64) -> Option<Self> {
        if window.is_zero() {
            return None;
        }
        let minimum_percent = if (0.0..=100.0).contains(&minimum_percent) {
            minimum_percent
        } else {
            DEFAULT_MINIMUM_PERCENT
        };
        let aggression = if aggression.is_finite() && aggression > 0.0 {
            aggression
        } else {
            DEFAULT_AGGRESSION
        };
        Some(Self {
            window,
            min_fraction: minimum_percent / 100.0,
            aggression,
        })
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The share of its weight an endpoint `age` after joining gets, in thousandths; `None`
    /// once the window is over (its full weight).
    pub fn permille(&self, age: Duration) -> Option<u32> {
        if age >= self.window {
            return None;
        }
        let time = age.as_secs_f64() / self.window.as_secs_f64();
        let factor = time.powf(1.0 / self.aggression).max(self.min_fraction);
        // In (0, 1]: at most 1000, at least 1 so a warming host is never left out.
        Some(((factor * 1000.0).round() as u32).clamp(1, 1000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_weight_starts_at_the_minimum_and_grows_to_full_over_the_window() {
        let s = SlowStart::new(ms(10_000), 10.0, 1.0).expect("curve");
        assert_eq!(s.permille(ms(0)), Some(100), "the minimum at first");
        assert_eq!(
            s.permille(ms(500)),
            Some(100),
            "5 % of the way is under the minimum"
        );
        assert_eq!(s.permille(ms(5_000)), Some(500), "linear with aggression 1");
        assert_eq!(s.permille(ms(9_990)), Some(999));
        assert_eq!(s.permille(ms(10_000)), None, "full weight once warm");
    }

    #[test]
    fn aggression_bends_the_curve() {
        let fast = SlowStart::new(ms(1_000), 0.0, 2.0).expect("curve");
        let slow = SlowStart::new(ms(1_000), 0.0, 0.5).expect("curve");
        // (0.25)^(1/2) = 0.5; (0.25)^2 = 0.0625.
        assert_eq!(fast.permille(ms(250)), Some(500));
        assert_eq!(slow.permille(ms(250)), Some(63));
        assert_eq!(
            slow.permille(ms(0)),
            Some(1),
            "never 0: a warming host still gets a little"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn on_the_refresh_timer_the_weight_ramps_up_over_the_window_then_is_full() {
        // As a cluster's slow-start timer does: every REFRESH, the share of an endpoint
        // that joined at `joined`, until it is warm. Time is paused: the window takes none.
        let window = Duration::from_secs(10);
        let s = SlowStart::new(window, 10.0, 1.0).expect("curve");
        let joined = tokio::time::Instant::now();
        let mut ticks = tokio::time::interval(REFRESH);
        let mut shares = Vec::new();
        loop {
            ticks.tick().await;
            match s.permille(joined.elapsed()) {
                Some(p) => shares.push(p),
                None => break,
            }
        }
        assert_eq!(
            joined.elapsed(),
            window,
            "full weight exactly when the window ends"
        );
        assert_eq!(
            shares.len() as u128,
            window.as_millis() / REFRESH.as_millis()
        );
        assert_eq!(shares.first(), Some(&100), "the minimum at first");
        assert!(shares.windows(2).all(|w| w[0] <= w[1]), "{shares:?}");
        assert_eq!(shares.last(), Some(&975), "one refresh before the end");
    }

    #[test]
    fn bad_parameters_fall_back_to_istios_defaults_and_no_window_means_none() {
        assert_eq!(SlowStart::new(Duration::ZERO, 10.0, 1.0), None);
        let s = SlowStart::new(ms(1_000), 150.0, -1.0).expect("curve");
        assert_eq!(s, SlowStart::new(ms(1_000), 10.0, 1.0).expect("curve"));
    }
}
