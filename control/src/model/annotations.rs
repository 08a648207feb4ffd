//! meshlite's extensions set by annotation on Istio resources: a balancer beyond Istio's
//! (`loadbalancer.meshlite.io/algorithm`) and local rate limits (Envoy's local rate limit
//! filter: a token bucket per proxy). On a DestinationRule, `ratelimit.meshlite.io/local` limits every
//! request a sidecar sends to the rule's host; on a VirtualService,
//! `ratelimit.meshlite.io/local.<route name>` limits the named http route. The value reads
//! `maxTokens=100,tokensPerFill=10,fillInterval=1s`: the bucket starts full with
//! `maxTokens`, gains `tokensPerFill` (default 1) every `fillInterval`, and a request without a
//! token is answered 429 with flag `RL`.

use super::IstioDuration;

/// The DestinationRule annotation choosing a balancer beyond Istio's (`PEAK_EWMA`:
/// Linkerd's latency-aware balancer), for the rule's top-level traffic policy.
pub const ALGORITHM_ANNOTATION: &str = "loadbalancer.meshlite.io/algorithm";

/// The annotation on a DestinationRule.
pub const DESTINATION_ANNOTATION: &str = "ratelimit.meshlite.io/local";
/// The prefix of the per-route annotations on a VirtualService (followed by the route name).
pub const ROUTE_ANNOTATION_PREFIX: &str = "ratelimit.meshlite.io/local.";

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
