//! meshlite's extensions set by annotation on Istio resources: a balancer beyond Istio's
//! (`loadbalancer.meshlite.io/algorithm`) and local rate limits (Envoy's local rate limit
//! filter: a token bucket per proxy). On a DestinationRule, `ratelimit.meshlite.io/local` limits every
//! request a sidecar sends to the rule's host; on a VirtualService,
//! `ratelimit.meshlite.io/local.<route name>` limits the named http route. The value reads
//! `maxTokens=100,tokensPerFill=10,fillInterval=1s`: the bucket starts full with
//! `maxTokens`, gains `tokensPerFill` (default 1) every `fillInterval`, and a request without a
//! token is answered 429 with flag `RL`.
//!
//! Retries are also kept within a rate budget (Linkerd's): `retrybudget.meshlite.io/rate` on
//! a DestinationRule reads `ratio=0.2,minPerSecond=10,ttl=10s` (those are the defaults a
//! proxy uses without the annotation; keys left out keep them) or `off`. Istio's own
//! `trafficPolicy.retryBudget` caps retries *in flight* instead; the two can be combined.

use super::IstioDuration;

/// The DestinationRule annotation choosing a balancer beyond Istio's (`PEAK_EWMA`:
/// Linkerd's latency-aware balancer), for the rule's top-level traffic policy.
pub const ALGORITHM_ANNOTATION: &str = "loadbalancer.meshlite.io/algorithm";

/// The annotation on a DestinationRule.
pub const DESTINATION_ANNOTATION: &str = "ratelimit.meshlite.io/local";
/// The prefix of the per-route annotations on a VirtualService (followed by the route name).
pub const ROUTE_ANNOTATION_PREFIX: &str = "ratelimit.meshlite.io/local.";

/// The annotation on a DestinationRule setting the rate retry budget of its host.
pub const RETRY_BUDGET_ANNOTATION: &str = "retrybudget.meshlite.io/rate";

/// A rate retry budget: retries at most `ratio` of requests plus `min_per_second`, both
/// over `ttl`.
#[derive(Debug, Clone, PartialEq)]
pub enum RateRetryBudget {
    /// `off`: this host's retries are not budgeted by rate.
    Off,
    /// The budget's parameters.
    On {
        /// Retries allowed per request.
        ratio: f64,
        /// Retries allowed per second regardless of requests.
        min_per_second: u32,
        /// How long a request's deposit (and a retry's withdrawal) counts.
        ttl: IstioDuration,
    },
}

/// Why a retry-budget annotation is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryBudgetError {
    /// A `key=value` pair is malformed or its key unknown.
    #[error("`{0}`: expected ratio=R, minPerSecond=N, ttl=DURATION, or `off`")]
    Pair(String),
    /// The ratio is not a number in `[0, 1000]`.
    #[error("`{0}`: ratio must be a number between 0 and 1000")]
    Ratio(String),
    /// The reserve is not a whole number.
    #[error("`{0}`: minPerSecond must be a whole number")]
    MinPerSecond(String),
    /// The ttl does not parse or is outside 1 s to 60 s.
    #[error("`{0}`: ttl must be a duration between 1s and 60s")]
    Ttl(String),
}

impl std::str::FromStr for RateRetryBudget {
    type Err = RetryBudgetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "off" {
            return Ok(Self::Off);
        }
        let (mut ratio, mut min_per_second) = (0.2, 10);
        let mut ttl = IstioDuration::from(std::time::Duration::from_secs(10));
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| RetryBudgetError::Pair(pair.to_string()))?;
            match k {
                "ratio" => {
                    ratio = v
                        .parse::<f64>()
                        .ok()
                        .filter(|r| (0.0..=1000.0).contains(r))
                        .ok_or_else(|| RetryBudgetError::Ratio(pair.to_string()))?;
                }
                "minPerSecond" => {
                    min_per_second = v
                        .parse()
                        .map_err(|_| RetryBudgetError::MinPerSecond(pair.to_string()))?;
                }
                "ttl" => {
                    ttl = IstioDuration::parse(v)
                        .ok()
                        .filter(|d| {
                            (std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(60))
                                .contains(&d.as_std())
                        })
                        .ok_or_else(|| RetryBudgetError::Ttl(pair.to_string()))?;
                }
                _ => return Err(RetryBudgetError::Pair(pair.to_string())),
            }
        }
        Ok(Self::On {
            ratio,
            min_per_second,
            ttl,
        })
    }
}

/// One token bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRateLimit {
    /// Bucket size, and the tokens it starts with.
    pub max_tokens: u32,
    /// Tokens added per interval.
    pub tokens_per_fill: u32,
    /// The refill interval.
    pub fill_interval: IstioDuration,
}

/// Why an annotation value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// A `key=value` pair is malformed or its key unknown.
    #[error("`{0}`: expected maxTokens=N, tokensPerFill=N or fillInterval=DURATION")]
    Pair(String),
    /// A number does not parse or is 0.
    #[error("`{0}`: must be a whole number of at least 1")]
    Number(String),
    /// The interval does not parse.
    #[error("fillInterval: {0}")]
    Interval(String),
    /// The interval is under Envoy's 50 ms minimum.
    #[error("fillInterval must be at least 50ms")]
    IntervalTooShort,
    /// A required key is missing.
    #[error("{0} is required")]
    Missing(&'static str),
}

impl std::str::FromStr for LocalRateLimit {
    type Err = RateLimitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut max, mut per_fill, mut interval) = (None, None, None);
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| RateLimitError::Pair(pair.to_string()))?;
            let number = || {
                v.parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| RateLimitError::Number(pair.to_string()))
            };
            match k {
                "maxTokens" => max = Some(number()?),
                "tokensPerFill" => per_fill = Some(number()?),
                "fillInterval" => {
                    let d = IstioDuration::parse(v)
                        .map_err(|e| RateLimitError::Interval(e.to_string()))?;
                    if d.as_std() < std::time::Duration::from_millis(50) {
                        return Err(RateLimitError::IntervalTooShort);
                    }
                    interval = Some(d);
                }
                _ => return Err(RateLimitError::Pair(pair.to_string())),
            }
        }
        Ok(Self {
            max_tokens: max.ok_or(RateLimitError::Missing("maxTokens"))?,
            tokens_per_fill: per_fill.unwrap_or(1),
            fill_interval: interval.ok_or(RateLimitError::Missing("fillInterval"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_retry_budget_annotation_keeping_linkerds_defaults() {
        let b: RateRetryBudget = "ratio=0.5, ttl=5s".parse().unwrap();
        assert_eq!(
            b,
            RateRetryBudget::On {
                ratio: 0.5,
                min_per_second: 10,
                ttl: IstioDuration::parse("5s").unwrap(),
            }
        );
        assert_eq!("off".parse::<RateRetryBudget>(), Ok(RateRetryBudget::Off));
        for bad in [
            "ratio=-1",
            "ratio=much",
            "minPerSecond=-3",
            "ttl=500ms",
            "ttl=2m",
            "burst=3",
            "ratio",
        ] {
            assert!(bad.parse::<RateRetryBudget>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_the_annotation_with_envoys_defaults_and_refuses_nonsense() {
        let l: LocalRateLimit = "maxTokens=100, tokensPerFill=10, fillInterval=1s"
            .parse()
            .unwrap();
        assert_eq!((l.max_tokens, l.tokens_per_fill), (100, 10));
        assert_eq!(l.fill_interval.as_std(), std::time::Duration::from_secs(1));
        let l: LocalRateLimit = "maxTokens=5,fillInterval=100ms".parse().unwrap();
        assert_eq!(l.tokens_per_fill, 1);
        for bad in [
            "fillInterval=1s",
            "maxTokens=5",
            "maxTokens=0,fillInterval=1s",
            "maxTokens=5,fillInterval=10ms",
            "maxTokens=5,fillInterval=soon",
            "maxTokens=5,fillInterval=1s,burst=3",
            "maxTokens",
        ] {
            assert!(bad.parse::<LocalRateLimit>().is_err(), "{bad}");
        }
    }
}
