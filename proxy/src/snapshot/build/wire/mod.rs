//! The wire's traffic policy (`meshlite.v1`, as the control plane pushes DestinationRules)
//! read into the proxy's own settings: balancer and hash input, locality setting, slow start,
//! idle timeouts, port-level and subset blocks, path normalisation; routes in [`routes`].

pub(crate) mod resilience;
pub(crate) mod routes;

use meshlite_xds_proto::v1;
use std::time::Duration;

use crate::balance::hash_on::{CookieHash, HashOn};
use crate::balance::locality::LocalitySetting;
use crate::balance::slow_start::SlowStart;
use crate::message::path::PathNormalization;
use crate::snapshot::DEFAULT_IDLE_TIMEOUT;

/// A pushed protobuf duration as a std one; `None` when absent, negative or zero (Istio's
/// unset).
pub(super) fn positive(d: Option<prost_types::Duration>) -> Option<Duration> {
    d.and_then(|d| Duration::try_from(d).ok())
        .filter(|d| !d.is_zero())
}

/// default, failover by region and zone).
pub(super) fn locality_setting(
    l: Option<&v1::load_balancer::LocalityLbSetting>,
) -> LocalitySetting {
    let Some(l) = l else {
        return LocalitySetting::default();
    };
    LocalitySetting {
        distribute: l
            .distribute
            .iter()
            .map(|d| {
                (
                    d.from.clone(),
                    d.to.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                )
            })
            .collect(),
        failover: l
            .failover
            .iter()
            .map(|f| (f.from.clone(), f.to.clone()))
            .collect(),
        failover_priority: l.failover_priority.clone(),
    }
}

/// How long an upstream HTTP connection may stay unused: `http.idleTimeout`, else
/// `tcp.idleTimeout` (as Istio falls back), else Istio's 1 h; `0s` disables it.
pub(super) fn upstream_idle_timeout(pool: Option<&v1::ConnectionPool>) -> Option<Duration> {
    match pool.and_then(|p| p.idle_timeout.or(p.tcp_idle_timeout)) {
        None => Some(DEFAULT_IDLE_TIMEOUT),
        Some(d) => Duration::try_from(d).ok().filter(|d| !d.is_zero()),
    }
}

/// The slow start a `loadBalancer` sets; Envoy applies it to round robin and least request
/// only.
pub(super) fn slow_start_of(
    lb: Option<&v1::LoadBalancer>,
    policy: crate::balance::Policy,
) -> Option<SlowStart> {
    use crate::balance::Policy;
    if !matches!(policy, Policy::RoundRobin | Policy::LeastRequest(_)) {
        return None;
    }
    let w = lb?.warmup.as_ref()?;
    let window = w.duration.and_then(|d| Duration::try_from(d).ok())?;
    SlowStart::new(window, w.minimum_percent, w.aggression)
}

/// One block of `tp` in force for `port`: a `portLevelSettings` entry for the port replaces
/// the top-level blocks wholesale (blocks it omits are not inherited from the top level).
pub(super) fn port_block<T>(
    tp: Option<&v1::TrafficPolicy>,
    port: u16,
    block: impl Fn(&v1::TrafficPolicy) -> Option<&T>,
) -> Option<&T> {
    let tp = tp?;
    match tp.port_level.get(&u32::from(port)) {
        Some(p) => block(p),
        None => block(tp),
    }
}

/// A subset's traffic policy over its service's: each block the subset sets replaces the
/// service's (Istio merges subset policies block by block).
pub(super) fn merged(
    subset: Option<&v1::TrafficPolicy>,
    service: Option<&v1::TrafficPolicy>,
) -> Option<v1::TrafficPolicy> {
    match (subset, service) {
        (None, None) => None,
        (Some(s), None) => Some(s.clone()),
        (None, Some(p)) => Some(p.clone()),
        (Some(s), Some(p)) => Some(v1::TrafficPolicy {
            load_balancer: s.load_balancer.clone().or_else(|| p.load_balancer.clone()),
            connection_pool: s.connection_pool.or(p.connection_pool),
            outlier_detection: s
                .outlier_detection
                .clone()
                .or_else(|| p.outlier_detection.clone()),
            retry_budget: s.retry_budget.or(p.retry_budget),
            tls: s.tls.clone().or_else(|| p.tls.clone()),
            port_level: if s.port_level.is_empty() {
                p.port_level.clone()
            } else {
                s.port_level.clone()
            },
        }),
    }
}

/// The balancing policy and hash input of a `loadBalancer` (none: least request, Istio's
/// default). PASSTHROUGH (the original destination) has no meaning for an explicit proxy and
/// falls back to the default.
pub(super) fn balance_policy(
    lb: Option<&v1::LoadBalancer>,
) -> (crate::balance::Policy, Option<HashOn>) {
    use crate::balance::{LeastRequestConfig, MaglevConfig, Policy, RingHashConfig};
    use v1::load_balancer::consistent_hash::Key;
    let Some(lb) = lb else {
        return (Policy::LeastRequest(LeastRequestConfig::default()), None);
    };
    if let Some(ch) = &lb.consistent_hash {
        let hash_on = match &ch.key {
            Some(Key::HttpHeaderName(h)) => http::HeaderName::try_from(h.as_str())
                .ok()
                .map(HashOn::Header),
            Some(Key::HttpCookie(c)) => Some(HashOn::Cookie(CookieHash {
                name: c.name.clone(),
                path: c.path.clone(),
                ttl: c.ttl.and_then(|d| Duration::try_from(d).ok()),
            })),
            Some(Key::UseSourceIp(true)) => Some(HashOn::SourceIp),
            Some(Key::HttpQueryParameterName(q)) => Some(HashOn::Query(q.clone())),
            _ => None,
        };
        let policy = if ch.maglev_table_size > 0 {
            Policy::Maglev(MaglevConfig {
                table_size: ch.maglev_table_size,
            })
        } else {
            let mut cfg = RingHashConfig::default();
            if ch.minimum_ring_size > 0 {
                cfg.minimum_ring_size = ch.minimum_ring_size;
            }
            Policy::RingHash(cfg)
        };
        return (policy, hash_on);
    }
    match v1::load_balancer::Simple::try_from(lb.simple) {
        Ok(v1::load_balancer::Simple::RoundRobin) => (Policy::RoundRobin, None),
        Ok(v1::load_balancer::Simple::Random) => (Policy::Random, None),
        Ok(v1::load_balancer::Simple::PeakEwma) => (Policy::PeakEwma, None),
        _ => (Policy::LeastRequest(LeastRequestConfig::default()), None),
    }
}

/// MeshConfig's path normalisation, from the wire form.
pub(super) fn path_normalization(mesh: Option<&v1::MeshConfig>) -> PathNormalization {
    use v1::mesh_config::PathNormalization as W;
    match mesh.and_then(|m| W::try_from(m.path_normalization).ok()) {
        Some(W::None) => PathNormalization::None,
        Some(W::MergeSlashes) => PathNormalization::MergeSlashes,
        Some(W::DecodeAndMergeSlashes) => PathNormalization::DecodeAndMergeSlashes,
        Some(W::Base | W::Default) | None => PathNormalization::Base,
    }
}

/// The MeshConfig's `defaultConfig.proxyStatsMatcher` inclusions (none without one).
pub(super) fn stats_inclusions(
    mesh: Option<&v1::MeshConfig>,
) -> crate::telemetry::stats_matcher::StatsInclusions {
    mesh.and_then(|m| m.proxy_stats_matcher.as_ref())
        .map(|s| crate::telemetry::stats_matcher::StatsInclusions {
            prefixes: s.inclusion_prefixes.clone(),
            suffixes: s.inclusion_suffixes.clone(),
            regexps: s.inclusion_regexps.clone(),
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_idle_timeout_falls_back_to_the_tcp_one_then_to_an_hour() {
        let secs = |s| {
            Some(prost_types::Duration {
                seconds: s,
                nanos: 0,
            })
        };
        let pool = |http, tcp| v1::ConnectionPool {
            idle_timeout: http,
            tcp_idle_timeout: tcp,
            ..Default::default()
        };
        let idle = |p: v1::ConnectionPool| upstream_idle_timeout(Some(&p));
        assert_eq!(idle(pool(secs(5), secs(9))), Some(Duration::from_secs(5)));
        assert_eq!(idle(pool(None, secs(9))), Some(Duration::from_secs(9)));
        assert_eq!(idle(pool(secs(0), secs(9))), None, "0s disables");
        assert_eq!(idle(pool(None, None)), Some(DEFAULT_IDLE_TIMEOUT));
        assert_eq!(upstream_idle_timeout(None), Some(DEFAULT_IDLE_TIMEOUT));
    }

    #[test]
    fn a_port_level_or_subset_load_balancer_wins_and_none_means_least_request() {
        use crate::balance::Policy;
        let lb = |simple: v1::load_balancer::Simple| v1::LoadBalancer {
            simple: simple as i32,
            ..Default::default()
        };
        let tp = v1::TrafficPolicy {
            load_balancer: Some(lb(v1::load_balancer::Simple::Random)),
            port_level: [(
                9080,
                v1::TrafficPolicy {
                    load_balancer: Some(lb(v1::load_balancer::Simple::RoundRobin)),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        };
        let policy =
            |port| balance_policy(port_block(Some(&tp), port, |p| p.load_balancer.as_ref())).0;
        assert_eq!(policy(8080), Policy::Random);
        assert_eq!(policy(9080), Policy::RoundRobin);
        assert!(matches!(balance_policy(None).0, Policy::LeastRequest(_)));
        let maglev = v1::LoadBalancer {
            simple: 0,
            consistent_hash: Some(v1::load_balancer::ConsistentHash {
                key: Some(v1::load_balancer::consistent_hash::Key::UseSourceIp(true)),
                minimum_ring_size: 0,
                maglev_table_size: 65537,
            }),
            ..Default::default()
        };
        let (p, on) = balance_policy(Some(&maglev));
        assert!(matches!(p, Policy::Maglev(_)));
        assert!(matches!(on, Some(HashOn::SourceIp)));
    }
}
