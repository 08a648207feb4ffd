//! Resilience settings from the wire (`meshlite.v1` traffic policy and routes) read into
//! the proxy's own types: circuit-breaker thresholds, Istio's and meshlite's retry budgets,
//! outlier detection, retries and local rate limits. Defaults that Istio fills here (unset
//! fields) are named constants beside the types they configure.

use meshlite_xds_proto::v1;
use std::time::Duration;

use super::positive;
use crate::resilience::breaker::PoolLimits;
use crate::resilience::concurrency_budget::BudgetSpec;
use crate::resilience::outlier::{
    DEFAULT_BASE_EJECTION, DEFAULT_INTERVAL, DEFAULT_MAX_EJECTION, DEFAULT_MAX_EJECTION_PERCENT,
    OutlierConfig,
};
use crate::resilience::rate_limit::RateLimit;
use crate::resilience::retry::{
    BACKOFF_MAX_FACTOR, BudgetParams, DEFAULT_BACKOFF_BASE, DEFAULT_BUDGET_MIN_PER_SEC,
    DEFAULT_BUDGET_RATIO, DEFAULT_BUDGET_TTL, RetryOn, RetryPolicy,
};

/// The thresholds of a pushed `connectionPool` (none: no limits).
pub(crate) fn pool_limits(pool: Option<&v1::ConnectionPool>) -> PoolLimits {
    let Some(p) = pool else {
        return PoolLimits::default();
    };
    PoolLimits {
        max_requests: p.http2_max_requests,
        max_pending: p.http1_max_pending_requests,
        max_retries: p.max_retries,
        max_connections: p.max_connections,
    }
}

/// A pushed `retryBudget`.
pub(crate) fn budget_spec(b: &v1::ConcurrencyRetryBudget) -> BudgetSpec {
    BudgetSpec {
        percent: b.percent,
        min_retry_concurrency: b.min_retry_concurrency,
        interval: positive(b.budget_interval),
    }
}

/// A pushed local rate limit.
pub(crate) fn rate_limit(l: &v1::LocalRateLimit) -> RateLimit {
    RateLimit {
        max_tokens: l.max_tokens,
        tokens_per_fill: l.tokens_per_fill,
        fill_interval: positive(l.fill_interval),
    }
}

impl OutlierConfig {
    /// Reads the pushed block. The control plane sends `consecutive_5xx_errors` as Istio
    /// means it (unset already filled with Envoy's 5; 0 disables).
    pub(crate) fn from_proto(o: &v1::OutlierDetection) -> Self {
        let dur = |d: Option<prost_types::Duration>, default| positive(d).unwrap_or(default);
        let base_ejection = dur(o.base_ejection_time, DEFAULT_BASE_EJECTION);
        Self {
            consecutive_5xx: o.consecutive_5xx_errors,
            consecutive_gateway: o.consecutive_gateway_errors,
            interval: dur(o.interval, DEFAULT_INTERVAL),
            base_ejection,
            max_ejection: DEFAULT_MAX_EJECTION.max(base_ejection),
            max_ejection_percent: if o.max_ejection_percent == 0 {
                DEFAULT_MAX_EJECTION_PERCENT
            } else {
                o.max_ejection_percent.min(100)
            },
            min_health_percent: o.min_health_percent.min(100),
            split_local_origin: o.split_external_local_origin_errors,
            consecutive_local_origin: o.consecutive_local_origin_failures,
            error_codes: (!o.http_error_codes.is_empty()).then(|| {
                o.http_error_codes
                    .iter()
                    .filter_map(|&c| u16::try_from(c).ok())
                    .collect()
            }),
        }
    }
}

impl RetryPolicy {
    /// Translates a route's `retries` as istiod does: `None` (no block) gives the built-in
    /// default, `attempts == 0` no policy. Status codes imply `retriable-status-codes`; no
    /// tokens and no codes give the default list. Unknown tokens are ignored (see
    /// [`RetryOn::parse`] to report them); codes above 65535 can never match and are dropped.
    pub(crate) fn from_proto(r: Option<&v1::Retries>, consistent_hash: bool) -> Option<Self> {
        let mut policy = Self::istio_default(consistent_hash);
        let Some(r) = r else {
            return Some(policy);
        };
        if r.attempts == 0 {
            return None;
        }
        policy.num_retries = r.attempts;
        if !r.retry_on.is_empty() || !r.retriable_status_codes.is_empty() {
            let (mut set, _unknown) = RetryOn::parse(&r.retry_on);
            if !r.retriable_status_codes.is_empty() {
                set = set | RetryOn::RETRIABLE_STATUS_CODES;
            }
            policy.retry_on = set;
            let codes = r.retriable_status_codes.iter();
            policy.retriable_status_codes = codes.filter_map(|&c| u16::try_from(c).ok()).collect();
        }
        policy.per_try_timeout = positive(r.per_try_timeout);
        policy.backoff_base = positive(r.backoff).unwrap_or(DEFAULT_BACKOFF_BASE);
        policy.backoff_max = policy.backoff_base.saturating_mul(BACKOFF_MAX_FACTOR);
        policy.avoid_previous_hosts &= !r.keep_previous_hosts;
        policy.remote_localities = r.remote_localities;
        Some(policy)
    }
}

impl BudgetParams {
    /// The rate budget of a destination: its `retrybudget.meshlite.io/rate` annotation, or
    /// Linkerd's defaults. None when the annotation says `off`, or when the destination has
    /// Istio's `retryBudget` and no annotation: the user chose Envoy's budget, and a second
    /// one they did not ask for would refuse retries it allows.
    pub(crate) fn for_destination(
        rate: Option<&v1::RateRetryBudget>,
        concurrency_budget: bool,
    ) -> Option<Self> {
        match rate {
            None if concurrency_budget => None,
            None => Some(Self {
                ttl: DEFAULT_BUDGET_TTL,
                min_per_sec: DEFAULT_BUDGET_MIN_PER_SEC,
                ratio: DEFAULT_BUDGET_RATIO,
            }),
            Some(r) if r.disabled => None,
            Some(r) => Some(Self {
                ttl: r
                    .ttl
                    .and_then(|d| Duration::try_from(d).ok())
                    .unwrap_or(DEFAULT_BUDGET_TTL),
                min_per_sec: r.min_per_second,
                ratio: r.ratio,
            }),
        }
    }
}
