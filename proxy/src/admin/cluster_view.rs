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
