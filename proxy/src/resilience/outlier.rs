//! Outlier detection: Envoy's consecutive-error ejection as Istio's `outlierDetection` sets it
//! (SEMANTICS.md §1.4). Every attempt's result is reported against its host; a host reaching
//! `consecutive5xxErrors` 5xx results (or `consecutiveGatewayErrors` 502/503/504) in a row is
//! ejected from balancing, if `maxEjectionPercent` allows, for `baseEjectionTime` times the
//! number of its recent ejections (capped at `max(300 s, base)`). A timer ticking every
//! `interval` returns hosts whose time is up and lets the multiplier decay by one per healthy
//! interval, so a host that keeps failing stays out longer and longer.
//!
//! The request path only touches atomics: a success clears the host's counters (a load, and
//! a store only when they were non-zero), a failure bumps them. The mutex is taken only when
//! a counter reaches its threshold and on ticks. The clock comes in as an argument, so tests
//! drive time by hand.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Envoy's `interval` default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Envoy's `base_ejection_time` default.
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
/// Envoy's `max_ejection_time` default (raised to `base` when base is longer).
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
/// Envoy's `max_ejection_percent` default.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

/// A cluster's `outlierDetection`, with Envoy's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierConfig {
    /// 5xx results in a row that eject a host; 0: 5xx ejection off.
    pub consecutive_5xx: u32,
    /// 502/503/504 results in a row that eject a host; 0: gateway ejection off (Istio's
    /// default: Envoy counts them but does not enforce).
    pub consecutive_gateway: u32,
    /// How often ejected hosts are reconsidered.
    pub interval: Duration,
    /// The first ejection's length; the k-th in a row lasts k times this.
    pub base_ejection: Duration,
    /// The longest an ejection lasts.
    pub max_ejection: Duration,
    /// At most this share of hosts may be ejected at once, checked after the prospective
    /// ejection: with the default 10 % and fewer than 10 hosts none ever is (current Envoy).
    pub max_ejection_percent: u32,
    /// Below this share of healthy hosts the cluster balances across all of them (Envoy's
    /// panic threshold); Istio's default 0 never panics.
    pub min_health_percent: u32,
    /// `splitExternalLocalOriginErrors`: failures without a response count apart from HTTP
    /// statuses (else as 503, or 504 for a timeout).
    pub split_local_origin: bool,
    /// `consecutiveLocalOriginFailures`: local-origin failures in a row that eject a host
    /// when they are split; 0: that ejection off.
    pub consecutive_local_origin: u32,
    /// `outlierDetectionHttpErrorCodes`: when set, only responses with these codes are
    /// errors and every other response a success.
    pub error_codes: Option<Box<[u16]>>,
}

impl Default for OutlierConfig {
    /// Envoy's defaults as Istio leaves them: 5 consecutive 5xx eject, gateway errors are
    /// not enforced, local-origin errors are not split.
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway: 0,
            interval: DEFAULT_INTERVAL,
            base_ejection: DEFAULT_BASE_EJECTION,
            max_ejection: DEFAULT_MAX_EJECTION,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
            min_health_percent: 0,
            split_local_origin: false,
            consecutive_local_origin: 5,
            error_codes: None,
        }
    }
}

impl OutlierConfig {
    /// The status a response counts as. With error codes set, a listed 5xx counts as itself
    /// (so 502-504 still make gateway errors), another listed code as 500, and an unlisted
    /// one as a success (Envoy's failure matcher, as Istio wires it).
    fn counted_status(&self, status: u16) -> u16 {
        match &self.error_codes {
            None => status,
            Some(codes) if codes.contains(&status) => {
                if (500..600).contains(&status) {
                    status
                } else {
                    500
                }
            }
            Some(_) => 200,
        }
    }
}

/// One host's outlier state. Shared by the clusters of successive snapshots (keyed by
/// cluster name and address), so a push does not forgive an ejected host.
#[derive(Debug, Default)]
pub struct HostHealth {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    ejected: AtomicBool,
    ejection: Mutex<Ejection>,
}

#[derive(Debug, Default)]
struct Ejection {
    ejected_at: Option<Instant>,
    /// Envoy's `ejectTimeBackoff`: the next ejection lasts this times base (after increment).
    multiplier: u32,
    last_unejected: Option<Instant>,
}

impl HostHealth {
    /// Whether the host is out of balancing now.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    fn reset_counters(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_local.store(0, Ordering::Relaxed);
    }
}

/// The status an attempt's failure counts as when it produced no response: Envoy maps a
/// local-origin failure (connect failure, reset) to 503 and a timeout to 504.
pub const LOCAL_FAILURE_STATUS: u16 = 503;
/// See [`LOCAL_FAILURE_STATUS`].
pub const LOCAL_TIMEOUT_STATUS: u16 = 504;

/// What a report or a tick changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The host at this index was ejected for this long.
    Ejected(usize, Duration),
    /// The host would have been ejected but `maxEjectionPercent` forbade it.
    Overflow(usize),
}

/// The detector of one cluster over its hosts (in the cluster's endpoint order).
#[derive(Debug)]
pub struct Detector {
    cfg: OutlierConfig,
    hosts: Vec<std::sync::Arc<HostHealth>>,
    /// Serialises ejection decisions, so two threshold crossings cannot both pass the
    /// percentage check.
    decide: Mutex<()>,
}

impl Detector {
    /// A detector over `hosts`.
    pub fn new(cfg: OutlierConfig, hosts: Vec<std::sync::Arc<HostHealth>>) -> Self {
        Self {
            cfg,
            hosts,
            decide: Mutex::new(()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &OutlierConfig {
        &self.cfg
    }

    /// The hosts' states, in endpoint order (handed to the next snapshot's detector).
    pub fn hosts(&self) -> &[std::sync::Arc<HostHealth>] {
        &self.hosts
    }

    /// Whether host `i` is ejected.
    pub fn is_ejected(&self, i: usize) -> bool {
        self.hosts.get(i).is_some_and(|h| h.is_ejected())
    }

    /// Hosts ejected now.
    pub fn ejected_count(&self) -> usize {
        self.hosts.iter().filter(|h| h.is_ejected()).count()
    }

    /// Records one attempt's result on host `i` (`status`: the response code, or
    /// [`LOCAL_FAILURE_STATUS`] / [`LOCAL_TIMEOUT_STATUS`] for one that never came).
    pub fn report(&self, i: usize, status: u16, now: Instant) -> Option<Change> {
        let host = self.hosts.get(i)?;
        let status = self.cfg.counted_status(status);
        // With split errors, a response also proves the connection: the local-origin streak
        // ends (Envoy's connect success).
        if self.cfg.split_local_origin && host.consecutive_local.load(Ordering::Relaxed) != 0 {
            host.consecutive_local.store(0, Ordering::Relaxed);
        }
        if !(500..600).contains(&status) {
            // Any non-5xx result ends both streaks; skip the store when there is none, so the
            // common case writes nothing shared.
            if host.consecutive_5xx.load(Ordering::Relaxed) != 0
                || host.consecutive_gateway.load(Ordering::Relaxed) != 0
            {
                host.reset_counters();
            }
            return None;
        }
        let mut tripped = false;
        if matches!(status, 502..=504) {
            let gw = host.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1;
            tripped |= self.cfg.consecutive_gateway > 0 && gw == self.cfg.consecutive_gateway;
        } else {
            host.consecutive_gateway.store(0, Ordering::Relaxed);
        }
        let c5 = host.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        tripped |= self.cfg.consecutive_5xx > 0 && c5 == self.cfg.consecutive_5xx;
        if tripped { self.eject(i, now) } else { None }
    }

    /// Records an attempt to host `i` that ended without a response (connect failure,
    /// reset, timeout): apart when the config splits them, else as `as_status` (503, or 504
    /// for a timeout), as Envoy maps them.
    pub fn report_local_failure(&self, i: usize, as_status: u16, now: Instant) -> Option<Change> {
        if !self.cfg.split_local_origin {
            return self.report(i, as_status, now);
        }
        let host = self.hosts.get(i)?;
        let n = host.consecutive_local.fetch_add(1, Ordering::Relaxed) + 1;
        let limit = self.cfg.consecutive_local_origin;
        if limit > 0 && n == limit {
            self.eject(i, now)
        } else {
            None
        }
    }

    fn eject(&self, i: usize, now: Instant) -> Option<Change> {
        let host = self.hosts.get(i)?;
        // A poisoned lock only means another thread panicked mid-decision; the state it
        // guards is a unit, so carry on.
        let _decide = self.decide.lock().unwrap_or_else(|p| p.into_inner());
        host.reset_counters();
        if host.is_ejected() {
            return None;
        }
        let ejected = self.ejected_count() as u64;
        let total = self.hosts.len() as u64;
        if (ejected + 1) * 100 > u64::from(self.cfg.max_ejection_percent) * total {
            return Some(Change::Overflow(i));
        }
        let mut e = host.ejection.lock().unwrap_or_else(|p| p.into_inner());
        let base = self.cfg.base_ejection;
        if base.saturating_mul(e.multiplier) < self.cfg.max_ejection.saturating_add(base) {
            e.multiplier += 1;
        }
        e.ejected_at = Some(now);
        host.ejected.store(true, Ordering::Release);
        Some(Change::Ejected(i, self.ejection_time(e.multiplier)))
    }

    fn ejection_time(&self, multiplier: u32) -> Duration {
        self.cfg
            .base_ejection
            .saturating_mul(multiplier)
            .min(self.cfg.max_ejection)
    }

    /// The interval timer: returns hosts whose ejection is over (their indices) and decays
    /// the multiplier of hosts healthy for a whole interval.
    pub fn tick(&self, now: Instant) -> Vec<usize> {
        let _decide = self.decide.lock().unwrap_or_else(|p| p.into_inner());
        let mut returned = Vec::new();
        for (i, host) in self.hosts.iter().enumerate() {
            let mut e = host.ejection.lock().unwrap_or_else(|p| p.into_inner());
            if host.is_ejected() {
                let due = e
                    .ejected_at
                    .is_none_or(|at| now.duration_since(at) >= self.ejection_time(e.multiplier));
                if due {
                    host.ejected.store(false, Ordering::Release);
                    host.reset_counters();
                    e.ejected_at = None;
                    e.last_unejected = Some(now);
                    returned.push(i);
                }
            } else if e.multiplier > 0
                && e.last_unejected
                    .is_none_or(|at| now.duration_since(at) >= self.cfg.interval)
            {
                e.multiplier -= 1;
            }
        }
        returned
    }

    /// Indices of the hosts to balance over: the healthy ones, or all of them when the
    /// healthy share is under `minHealthPercent` (panic).
    pub fn balanced_hosts(&self) -> Vec<usize> {
        let healthy: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| !self.is_ejected(i))
            .collect();
        let total = self.hosts.len() as u64;
        if (healthy.len() as u64) * 100 < u64::from(self.cfg.min_health_percent) * total {
            (0..self.hosts.len()).collect()
        } else {
            healthy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshlite_xds_proto::v1;
    use std::sync::Arc;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: 3,
            consecutive_gateway: 0,
            interval: Duration::from_secs(1),
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 100,
            min_health_percent: 0,
            split_local_origin: false,
            consecutive_local_origin: 5,
            error_codes: None,
        }
    }

    #[test]
    fn with_error_codes_only_those_responses_are_errors() {
        let t = Instant::now();
        let d = detector(
            OutlierConfig {
                consecutive_5xx: 2,
                consecutive_gateway: 2,
                error_codes: Some(vec![429, 503].into()),
                ..cfg()
            },
            3,
        );
        // 500 is not listed: a success, so no streak builds.
        for _ in 0..4 {
            assert!(d.report(0, 500, t).is_none());
        }
        assert!(d.report(1, 429, t).is_none());
        assert!(matches!(d.report(1, 429, t), Some(Change::Ejected(1, _))));
        assert!(d.report(2, 503, t).is_none());
        assert!(matches!(d.report(2, 503, t), Some(Change::Ejected(2, _))));
    }

    #[test]
    fn split_local_origin_failures_eject_on_their_own_streak_and_a_response_ends_it() {
        let t = Instant::now();
        let split = detector(
            OutlierConfig {
                split_local_origin: true,
                consecutive_local_origin: 2,
                ..cfg()
            },
            3,
        );
        // Two connect failures with a 503 response between them: the response proves the
        // connection, so no streak of two.
        assert!(split.report_local_failure(0, 503, t).is_none());
        assert!(split.report(0, 503, t).is_none());
        assert!(split.report_local_failure(0, 503, t).is_none());
        assert!(matches!(
            split.report_local_failure(0, 503, t),
            Some(Change::Ejected(0, _))
        ));
        // Split, local failures do not feed the 5xx streak (3 in a row would eject).
        for _ in 0..4 {
            let _ = split.report_local_failure(1, 503, t);
            assert!(split.report(1, 200, t).is_none());
        }
        assert!(split.report(1, 500, t).is_none());
        assert!(split.report(1, 500, t).is_none());
        assert!(matches!(
            split.report(1, 500, t),
            Some(Change::Ejected(1, _))
        ));
        // Not split: a local failure counts as the 5xx it maps to.
        let joined = detector(cfg(), 1);
        assert!(joined.report_local_failure(0, 503, t).is_none());
        assert!(joined.report(0, 500, t).is_none());
        assert!(matches!(
            joined.report_local_failure(0, 504, t),
            Some(Change::Ejected(0, _))
        ));
    }

    fn detector(cfg: OutlierConfig, n: usize) -> Detector {
        Detector::new(cfg, (0..n).map(|_| Arc::default()).collect())
    }

    #[test]
    fn defaults_follow_envoy() {
        let c = OutlierConfig::from_proto(&v1::OutlierDetection {
            consecutive_5xx_errors: 5,
            ..Default::default()
        });
        assert_eq!(c.interval, DEFAULT_INTERVAL);
        assert_eq!(c.base_ejection, DEFAULT_BASE_EJECTION);
        assert_eq!(c.max_ejection, DEFAULT_MAX_EJECTION);
        assert_eq!(c.max_ejection_percent, 10);
        assert_eq!(c.min_health_percent, 0);
        let long = OutlierConfig::from_proto(&v1::OutlierDetection {
            base_ejection_time: Some(prost_types::Duration {
                seconds: 600,
                nanos: 0,
            }),
            ..Default::default()
        });
        assert_eq!(
            long.max_ejection,
            Duration::from_secs(600),
            "max is at least base"
        );
    }

    #[test]
    fn consecutive_5xx_ejects_and_a_success_resets_the_streak() {
        let d = detector(cfg(), 2);
        let t = Instant::now();
        assert_eq!(d.report(0, 500, t), None);
        assert_eq!(d.report(0, 503, t), None);
        assert_eq!(d.report(0, 200, t), None, "success ends the streak");
        assert_eq!(d.report(0, 500, t), None);
        assert_eq!(d.report(0, 404, t), None, "4xx ends it too");
        assert_eq!(d.report(0, 500, t), None);
        assert_eq!(d.report(0, 500, t), None);
        assert_eq!(
            d.report(0, 500, t),
            Some(Change::Ejected(0, Duration::from_secs(10)))
        );
        assert!(d.is_ejected(0));
        assert_eq!(d.balanced_hosts(), vec![1]);
    }

    #[test]
    fn gateway_errors_count_only_when_enforced_and_a_500_breaks_their_streak() {
        let mut c = cfg();
        c.consecutive_5xx = 0;
        c.consecutive_gateway = 2;
        let d = detector(c, 2);
        let t = Instant::now();
        assert_eq!(d.report(0, 502, t), None);
        assert_eq!(d.report(0, 500, t), None, "500 is not a gateway error");
        assert_eq!(d.report(0, 503, t), None);
        assert!(matches!(d.report(0, 504, t), Some(Change::Ejected(0, _))));
        // With 5xx off and gateway off nothing ejects.
        let mut off = cfg();
        off.consecutive_5xx = 0;
        let d = detector(off, 2);
        for _ in 0..20 {
            assert_eq!(d.report(1, 503, t), None);
        }
    }

    #[test]
    fn ejection_time_grows_with_repeats_and_decays_when_healthy() {
        let d = detector(cfg(), 2);
        let t0 = Instant::now();
        let fail = |at: Instant| {
            let mut last = None;
            for _ in 0..3 {
                last = d.report(0, 500, at);
            }
            last
        };
        assert_eq!(fail(t0), Some(Change::Ejected(0, Duration::from_secs(10))));
        assert!(d.tick(t0 + Duration::from_secs(9)).is_empty(), "not yet");
        assert_eq!(d.tick(t0 + Duration::from_secs(10)), vec![0]);
        // Fails again at once: the second ejection lasts twice as long.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(fail(t1), Some(Change::Ejected(0, Duration::from_secs(20))));
        assert!(d.tick(t1 + Duration::from_secs(19)).is_empty());
        assert_eq!(d.tick(t1 + Duration::from_secs(20)), vec![0]);
        // Healthy for two intervals: the multiplier decays from 2 to 0.
        let t2 = t1 + Duration::from_secs(20);
        d.tick(t2 + Duration::from_secs(1));
        d.tick(t2 + Duration::from_secs(2));
        assert_eq!(
            fail(t2 + Duration::from_secs(3)),
            Some(Change::Ejected(0, Duration::from_secs(10)))
        );
    }

    #[test]
    fn ejection_time_is_capped() {
        let mut c = cfg();
        c.max_ejection = Duration::from_secs(25);
        let d = detector(c, 1);
        let mut t = Instant::now();
        let mut times = Vec::new();
        for _ in 0..4 {
            let mut change = None;
            for _ in 0..3 {
                change = d.report(0, 500, t).or(change);
            }
            if let Some(Change::Ejected(_, len)) = change {
                times.push(len.as_secs());
                t += len;
                d.tick(t);
            }
        }
        assert_eq!(times, vec![10, 20, 25, 25]);
    }

    /// Fails host `i` until it trips (three 5xx in a row with [`cfg`]).
    fn trip(d: &Detector, i: usize) -> Option<Change> {
        (0..3).fold(None, |_, _| d.report(i, 500, Instant::now()))
    }

    /// Runs the interval timer as a cluster does, `n` ticks; returns what each returned.
    async fn run_ticks(d: &Detector, ticks: &mut tokio::time::Interval, n: usize) -> Vec<usize> {
        let mut returned = Vec::new();
        for _ in 0..n {
            ticks.tick().await;
            returned.extend(d.tick(Instant::now()));
        }
        returned
    }

    #[tokio::test(start_paused = true)]
    async fn on_the_interval_timer_an_ejected_host_returns_and_repeat_ejections_last_longer() {
        let d = detector(cfg(), 2);
        let mut ticks = tokio::time::interval(cfg().interval);
        ticks.tick().await;
        let t0 = Instant::now();
        assert_eq!(
            trip(&d, 0),
            Some(Change::Ejected(0, Duration::from_secs(10)))
        );
        assert_eq!(d.balanced_hosts(), vec![1]);
        // Out for the base ejection time, back on the first tick after it.
        assert!(run_ticks(&d, &mut ticks, 9).await.is_empty());
        assert!(d.is_ejected(0));
        assert_eq!(run_ticks(&d, &mut ticks, 1).await, vec![0]);
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
        assert_eq!(d.balanced_hosts(), vec![0, 1]);
        // Failing again at once: twice as long, then three times.
        for (n, secs) in [(2, 20), (3, 30)] {
            let at = Instant::now();
            assert_eq!(
                trip(&d, 0),
                Some(Change::Ejected(0, Duration::from_secs(secs))),
                "ejection {n}"
            );
            assert!(
                run_ticks(&d, &mut ticks, secs as usize - 1)
                    .await
                    .is_empty()
            );
            assert_eq!(run_ticks(&d, &mut ticks, 1).await, vec![0]);
            assert_eq!(at.elapsed(), Duration::from_secs(secs));
        }
        // Healthy for three intervals: the multiplier decays back, the next ejection is
        // the base time again.
        run_ticks(&d, &mut ticks, 3).await;
        assert_eq!(
            trip(&d, 0),
            Some(Change::Ejected(0, Duration::from_secs(10)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_holds_while_hosts_come_and_go() {
        // 4 hosts at 50 %: two may be out at once; a third waits until one returns.
        let d = detector(
            OutlierConfig {
                max_ejection_percent: 50,
                ..cfg()
            },
            4,
        );
        let mut ticks = tokio::time::interval(cfg().interval);
        ticks.tick().await;
        assert!(matches!(trip(&d, 0), Some(Change::Ejected(0, _))));
        run_ticks(&d, &mut ticks, 5).await;
        assert!(matches!(trip(&d, 1), Some(Change::Ejected(1, _))));
        assert_eq!(trip(&d, 2), Some(Change::Overflow(2)));
        assert_eq!(d.ejected_count(), 2);
        // Host 0 returns at 10 s, host 1 at 15 s; then host 2 may go.
        assert_eq!(run_ticks(&d, &mut ticks, 5).await, vec![0]);
        assert!(matches!(trip(&d, 2), Some(Change::Ejected(2, _))));
        assert_eq!(d.balanced_hosts(), vec![0, 3]);
        assert_eq!(run_ticks(&d, &mut ticks, 5).await, vec![1]);
        assert_eq!(run_ticks(&d, &mut ticks, 5).await, vec![2]);
        assert_eq!(d.ejected_count(), 0);
    }

    #[test]
    fn max_ejection_percent_is_checked_after_the_prospective_ejection() {
        let mut c = cfg();
        c.max_ejection_percent = 10;
        let d = detector(c.clone(), 3);
        let t = Instant::now();
        d.report(0, 500, t);
        d.report(0, 500, t);
        assert_eq!(
            d.report(0, 500, t),
            Some(Change::Overflow(0)),
            "1 of 3 is 33% > 10%"
        );
        assert!(!d.is_ejected(0));
        c.max_ejection_percent = 34;
        let d = detector(c, 3);
        for _ in 0..3 {
            d.report(0, 500, t);
            d.report(1, 500, t);
        }
        assert!(d.is_ejected(0));
        assert!(!d.is_ejected(1), "a second ejection would be 67%");
    }

    #[test]
    fn all_ejected_leaves_nothing_unless_panic_threshold_is_set() {
        let d = detector(cfg(), 2);
        let t = Instant::now();
        for _ in 0..3 {
            d.report(0, 500, t);
            d.report(1, 500, t);
        }
        assert!(d.balanced_hosts().is_empty(), "Istio's default: 503 UH");
        let mut c = cfg();
        c.min_health_percent = 50;
        let d = detector(c, 2);
        for _ in 0..3 {
            d.report(0, 500, t);
        }
        assert_eq!(d.balanced_hosts(), vec![1], "50% healthy is not below 50%");
        for _ in 0..3 {
            d.report(1, 500, t);
        }
        assert_eq!(d.balanced_hosts(), vec![0, 1], "panic: balance across all");
    }
}
