//! The admin view of a cluster: what its DestinationRule made of it (balancer, limits in
//! force, budgets, outlier detection with the hosts ejected now, hosts still warming up), for
//! `/config_dump`. Read only by operators, never on the request path.

use crate::snapshot::Cluster;

/// A cluster's policy in force, as `/config_dump` shows it.
pub fn policy(c: &Cluster) -> serde_json::Value {
    let limit = |l: &crate::resilience::breaker::Limit| (l.max() != u64::MAX).then_some(l.max());
    let addr = |i: usize| c.endpoints.get(i).map(|e| e.addr.to_string());
    serde_json::json!({
        "load_balancer": format!("{:?}", c.policy()),
        "connect_timeout_ms": c.connect_timeout.as_millis() as u64,
        "hash_on": c.hash_on.as_ref().map(|h| format!("{h:?}")),
        "limits": {
            "max_requests": limit(&c.breakers.requests),
            "max_pending_requests": limit(&c.breakers.pending),
            "max_retries": limit(&c.breakers.retries),
            "max_connections": limit(&c.breakers.connections),
        },
        "concurrency_retry_budget": c.breakers.retry_budget.as_ref().map(|b| serde_json::json!({
            "percent": b.percent(),
            "min_retry_concurrency": b.min_retry_concurrency(),
            "interval_ms": b.interval().map(|i| i.as_millis() as u64),
        })),
        "rate_retry_budget": c.retry_budget.as_ref().map(|b| {
            let p = b.params();
            serde_json::json!({
                "ratio": p.ratio,
                "min_per_second": p.min_per_sec,
                "ttl_ms": p.ttl.as_millis() as u64,
            })
        }),
        "outlier_detection": c.outlier.as_ref().map(|d| serde_json::json!({
            "config": format!("{:?}", d.config()),
            "ejected": (0..c.endpoints.len())
                .filter(|&i| d.is_ejected(i))
                .filter_map(addr)
                .collect::<Vec<_>>(),
        })),
        "warming": c
            .warming_now()
            .map(|shares| {
                shares
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| Some((addr(i)?, (*s)?)))
                    .map(|(a, permille)| serde_json::json!({"endpoint": a, "weight_permille": permille}))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
        "rate_limited": c.rate_limit.is_some(),
    })
}

/// The Telemetry settings in force for this workload, as `/config_dump` shows them (`null`
/// when no Telemetry resource applies).
pub fn telemetry(t: &crate::telemetry::workload::WorkloadTelemetry) -> serde_json::Value {
    use meshlite_xds_proto::v1;
    let Some(p) = &t.pushed else {
        return serde_json::Value::Null;
    };
    let mode = |m: i32| {
        v1::WorkloadMode::try_from(m)
            .unwrap_or_default()
            .as_str_name()
    };
    serde_json::json!({
        "sources": p.sources,
        "tracing": p.tracing.as_ref().map(|t| serde_json::json!({
            "providers": t.providers,
            "random_sampling_percentage": t.random_sampling_percentage,
            "disable_span_reporting": t.disable_span_reporting,
            "custom_tags": t.custom_tags.keys().collect::<Vec<_>>(),
        })),
        "metric_overrides": p.metric_overrides.iter().map(|o| serde_json::json!({
            "metric": v1::MetricSelector::try_from(o.metric).unwrap_or_default().as_str_name(),
            "mode": mode(o.mode),
            "disabled": o.disabled,
            "tag_overrides": o.tag_overrides.iter().map(|(k, v)| (
                k.clone(),
                if v.remove { "REMOVE".to_string() } else { format!("UPSERT {}", v.value) },
            )).collect::<std::collections::BTreeMap<_, _>>(),
        })).collect::<Vec<_>>(),
        "access_logging": p.access_logging.iter().map(|a| serde_json::json!({
            "providers": a.providers,
            "disabled": a.disabled,
            "filter": a.filter,
            "mode": mode(a.mode),
        })).collect::<Vec<_>>(),
    })
}
