//! Envoy's per-cluster statistics, under Envoy's Prometheus names as Istio exports them
//! (`envoy_cluster_*{cluster_name="outbound|9080||reviews.default.svc.cluster.local"}`):
//! what circuit breakers, outlier detection and retries did, and the breakers' state.
//!
//! A cluster's statistics are one allocation of atomics, found by name when the cluster is
//! built, so a push keeps them and the request path bumps an atomic. They are exported only
//! for clusters that have been used (a sidecar that knows a thousand services exports
//! nothing for the ones its app never called), only while the cluster exists (the registry
//! holds them weakly), and only where the `proxyStatsMatcher` includes them
//! ([`super::stats_matcher`]). The breakers' gauges (`circuit_breakers.default.*_open`,
//! `upstream_rq_active`, `upstream_rq_pending_active`) are read from the breakers at scrape
//! time, not kept up to date on every request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;

use super::metrics::Label;
use super::stats_matcher::StatsMatcher;
use crate::resilience::breaker::{Breakers, Limit};

/// A counter of one cluster.
#[derive(Debug, Default)]
pub struct Stat(AtomicU64);

impl Stat {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge of one cluster.
#[derive(Debug, Default)]
pub struct Level(AtomicI64);

impl Level {
    /// Sets the level.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The level.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One cluster's statistics.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// Envoy's cluster name, `outbound|<port>|<subset>|<fqdn>` or `inbound|<port>||`.
    pub name: Label,
    used: AtomicBool,
    /// The breakers, for their gauges (set when the cluster is built).
    breakers: ArcSwapOption<Breakers>,
    /// `upstream_rq_pending_overflow`: requests failed at once by a circuit breaker.
    pub pending_overflow: Stat,
    /// `upstream_cx_overflow`: connections `tcp.maxConnections` kept from opening.
    pub cx_overflow: Stat,
    /// `outlier_detection.ejections_enforced_total`: hosts ejected.
    pub ejections_enforced: Stat,
    /// `outlier_detection.ejections_overflow`: ejections `maxEjectionPercent` refused.
    pub ejections_overflow: Stat,
    /// `outlier_detection.ejections_active`: hosts ejected now.
    pub ejections_active: Level,
    /// `upstream_rq_retry`: retries sent.
    pub retries: Stat,
    /// `upstream_rq_retry_overflow`: retries refused by `maxRetries` or the retry budget.
    pub retry_overflow: Stat,
    /// `upstream_rq_retry_limit_exceeded`: requests that ran out of attempts.
    pub retry_limit_exceeded: Stat,
}

/// A cluster's statistics, shared by the snapshots that have the cluster.
pub type ClusterStats = Arc<ClusterCounters>;

impl ClusterCounters {
    /// Marks the cluster used: from now on its statistics are exported.
    pub fn mark_used(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// Shows `breakers` in the cluster's gauges.
    pub fn watch(&self, breakers: &Breakers) {
        self.breakers.store(Some(Arc::new(breakers.clone())));
    }

    fn exported(&self) -> bool {
        self.used.load(Ordering::Relaxed)
            || [
                &self.pending_overflow,
                &self.cx_overflow,
                &self.ejections_enforced,
                &self.ejections_overflow,
                &self.retries,
                &self.retry_overflow,
                &self.retry_limit_exceeded,
            ]
            .iter()
            .any(|s| s.get() > 0)
    }
}

/// One exported statistic: its Envoy name after `cluster.<name>.`, its Prometheus name,
/// help, type and how to read it.
struct Family {
    envoy: &'static str,
    prometheus: &'static str,
    help: &'static str,
    counter: bool,
    read: fn(&ClusterCounters) -> i64,
}

fn count(s: &Stat) -> i64 {
    i64::try_from(s.get()).unwrap_or(i64::MAX)
}

/// A breaker gauge: 1 when the limit is reached (`*_open`), or the slots taken.
fn breaker(c: &ClusterCounters, limit: fn(&Breakers) -> &Limit, open_flag: bool) -> i64 {
    c.breakers.load().as_ref().map_or(0, |b| {
        let l = limit(b);
        if open_flag {
            i64::from(l.open() >= l.max())
        } else {
            i64::try_from(l.open()).unwrap_or(i64::MAX)
        }
    })
}

const FAMILIES: [Family; 14] = [
    Family {
        envoy: "upstream_rq_pending_overflow",
        prometheus: "envoy_cluster_upstream_rq_pending_overflow",
        help: "Requests failed at once by a circuit breaker (UO)",
        counter: true,
        read: |c| count(&c.pending_overflow),
    },
    Family {
        envoy: "upstream_cx_overflow",
        prometheus: "envoy_cluster_upstream_cx_overflow",
        help: "Connections not opened because tcp.maxConnections was reached",
        counter: true,
        read: |c| count(&c.cx_overflow),
    },
    Family {
        envoy: "upstream_rq_retry",
        prometheus: "envoy_cluster_upstream_rq_retry",
        help: "Retries sent",
        counter: true,
        read: |c| count(&c.retries),
    },
    Family {
        envoy: "upstream_rq_retry_overflow",
        prometheus: "envoy_cluster_upstream_rq_retry_overflow",
        help: "Retries not sent because of maxRetries or the retry budget",
        counter: true,
        read: |c| count(&c.retry_overflow),
    },
    Family {
        envoy: "upstream_rq_retry_limit_exceeded",
        prometheus: "envoy_cluster_upstream_rq_retry_limit_exceeded",
        help: "Requests that ran out of attempts on a retriable failure",
        counter: true,
        read: |c| count(&c.retry_limit_exceeded),
    },
    Family {
        envoy: "upstream_rq_active",
        prometheus: "envoy_cluster_upstream_rq_active",
        help: "Requests in flight",
        counter: false,
        read: |c| breaker(c, |b| &b.requests, false),
    },
    Family {
        envoy: "upstream_rq_pending_active",
        prometheus: "envoy_cluster_upstream_rq_pending_active",
        help: "Requests waiting for a connection",
        counter: false,
        read: |c| breaker(c, |b| &b.pending, false),
    },
    Family {
        envoy: "circuit_breakers.default.cx_open",
        prometheus: "envoy_cluster_circuit_breakers_default_cx_open",
        help: "1 while the connection breaker (tcp.maxConnections) is open",
        counter: false,
        read: |c| breaker(c, |b| &b.connections, true),
    },
    Family {
        envoy: "circuit_breakers.default.rq_pending_open",
        prometheus: "envoy_cluster_circuit_breakers_default_rq_pending_open",
        help: "1 while the pending-request breaker (http1MaxPendingRequests) is open",
        counter: false,
        read: |c| breaker(c, |b| &b.pending, true),
    },
    Family {
        envoy: "circuit_breakers.default.rq_open",
        prometheus: "envoy_cluster_circuit_breakers_default_rq_open",
        help: "1 while the request breaker (http2MaxRequests) is open",
        counter: false,
        read: |c| breaker(c, |b| &b.requests, true),
    },
    Family {
        envoy: "circuit_breakers.default.rq_retry_open",
        prometheus: "envoy_cluster_circuit_breakers_default_rq_retry_open",
        help: "1 while the retry breaker (maxRetries) is open",
        counter: false,
        read: |c| breaker(c, |b| &b.retries, true),
    },
    Family {
        envoy: "outlier_detection.ejections_enforced_total",
        prometheus: "envoy_cluster_outlier_detection_ejections_enforced_total",
        help: "Hosts ejected by outlier detection",
        counter: true,
        read: |c| count(&c.ejections_enforced),
    },
    Family {
        envoy: "outlier_detection.ejections_overflow",
        prometheus: "envoy_cluster_outlier_detection_ejections_overflow",
        help: "Ejections refused because maxEjectionPercent was reached",
        counter: true,
        read: |c| count(&c.ejections_overflow),
    },
    Family {
        envoy: "outlier_detection.ejections_active",
        prometheus: "envoy_cluster_outlier_detection_ejections_active",
        help: "Hosts ejected now",
        counter: false,
        read: |c| c.ejections_active.get(),
    },
];

/// Every cluster's statistics, by name, held weakly.
#[derive(Debug)]
pub struct ClusterStatsRegistry {
    clusters: Mutex<HashMap<Label, Weak<ClusterCounters>>>,
    matcher: ArcSwap<StatsMatcher>,
}

impl Default for ClusterStatsRegistry {
    fn default() -> Self {
        Self {
            clusters: Mutex::default(),
            matcher: ArcSwap::from_pointee(StatsMatcher::default()),
        }
    }
}

impl ClusterStatsRegistry {
    /// The statistics of cluster `name`: the ones a snapshot still holds, else new ones.
    pub fn stats(&self, name: &Label) -> ClusterStats {
        // A poisoned lock only means a panic elsewhere mid-insert; the map is still a map.
        let mut clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(alive) = clusters.get(name).and_then(Weak::upgrade) {
            return alive;
        }
        if clusters.len() >= 64 && clusters.len().is_power_of_two() {
            clusters.retain(|_, w| w.strong_count() > 0);
        }
        let made = Arc::new(ClusterCounters {
            name: name.clone(),
            ..Default::default()
        });
        clusters.insert(name.clone(), Arc::downgrade(&made));
        made
    }

    /// Puts `matcher` in force for the next scrapes.
    pub fn set_matcher(&self, matcher: Arc<StatsMatcher>) {
        self.matcher.store(matcher);
    }

    /// The clusters whose statistics are exported, by name.
    fn exported(&self) -> Vec<ClusterStats> {
        let clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        let mut live: Vec<ClusterStats> = clusters
            .values()
            .filter_map(Weak::upgrade)
            .filter(|c| c.exported())
            .collect();
        live.sort_by(|a, b| a.name.cmp(&b.name));
        live
    }
}

/// A value written as a sample of its family's type (0.0.4: no suffix).
struct Sample(i64);

impl EncodeMetric for Sample {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.0)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

impl Collector for ClusterStatsRegistry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let clusters = self.exported();
        let matcher = self.matcher.load();
        for f in &FAMILIES {
            let included: Vec<&ClusterStats> = clusters
                .iter()
                .filter(|c| matcher.matches(&format!("cluster.{}.{}", c.name, f.envoy)))
                .collect();
            if included.is_empty() {
                continue;
            }
            let kind = if f.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut family = encoder.encode_descriptor(f.prometheus, f.help, None, kind)?;
            for c in included {
                let labels = [("cluster_name", &*c.name)];
                Sample((f.read)(c)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::breaker::{Counts, PoolLimits};
    use crate::telemetry::stats_matcher::StatsInclusions;

    fn encoded(r: &Arc<ClusterStatsRegistry>) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(r.clone()));
        crate::telemetry::prom::encode(&registry)
    }

    fn all() -> Arc<StatsMatcher> {
        Arc::new(
            StatsMatcher::new(&StatsInclusions {
                prefixes: vec!["cluster.".into()],
                ..Default::default()
            })
            .unwrap(),
        )
    }

    const NAME: &str = "outbound|9080||reviews.default.svc.cluster.local";

    #[test]
    fn a_cluster_never_used_exports_nothing_and_a_used_one_everything_included() {
        let r = Arc::new(ClusterStatsRegistry::default());
        r.set_matcher(all());
        let stats = r.stats(&Label::from(NAME));
        let idle = r.stats(&Label::from("outbound|80||idle.default.svc.cluster.local"));
        assert!(!encoded(&r).contains("envoy_cluster"), "nothing used yet");
        stats.mark_used();
        stats.retries.inc();
        let text = encoded(&r);
        assert!(
            text.contains(&format!(
                "# TYPE envoy_cluster_upstream_rq_retry counter\n\
                 envoy_cluster_upstream_rq_retry{{cluster_name=\"{NAME}\"}} 1\n"
            )),
            "{text}"
        );
        assert!(
            !text.contains(&*idle.name),
            "the idle cluster is not exported"
        );
        drop(stats);
        assert!(
            !encoded(&r).contains("envoy_cluster"),
            "a cluster no snapshot holds is gone"
        );
    }

    #[test]
    fn the_same_name_finds_the_same_statistics_while_a_snapshot_holds_them() {
        let r = Arc::new(ClusterStatsRegistry::default());
        let a = r.stats(&Label::from(NAME));
        a.retries.inc();
        assert_eq!(
            r.stats(&Label::from(NAME)).retries.get(),
            1,
            "kept by a push"
        );
        drop(a);
        assert_eq!(
            r.stats(&Label::from(NAME)).retries.get(),
            0,
            "new after it went"
        );
    }

    #[test]
    fn breaker_gauges_are_read_from_the_breakers_and_the_matcher_selects() {
        let r = Arc::new(ClusterStatsRegistry::default());
        let stats = r.stats(&Label::from(NAME));
        let limits = PoolLimits {
            max_requests: 1,
            ..Default::default()
        };
        let breakers = Breakers::new(&limits, None, &Counts::default());
        stats.watch(&breakers);
        stats.mark_used();
        assert!(
            !encoded(&r).contains("envoy_cluster"),
            "Istio's defaults export no cluster statistics"
        );
        r.set_matcher(Arc::new(
            StatsMatcher::new(&StatsInclusions {
                regexps: vec![".*circuit_breakers.*".into()],
                suffixes: vec!["upstream_rq_active".into()],
                ..Default::default()
            })
            .unwrap(),
        ));
        let _held = breakers.requests.try_acquire();
        let text = encoded(&r);
        assert!(
            text.contains(&format!(
                "envoy_cluster_circuit_breakers_default_rq_open{{cluster_name=\"{NAME}\"}} 1\n"
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            "envoy_cluster_circuit_breakers_default_cx_open{{cluster_name=\"{NAME}\"}} 0\n"
        )));
        assert!(text.contains(&format!(
            "envoy_cluster_upstream_rq_active{{cluster_name=\"{NAME}\"}} 1\n"
        )));
        assert!(!text.contains("upstream_rq_retry"), "not included: {text}");
    }
}
