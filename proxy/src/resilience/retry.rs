//! Retries as Envoy runs a VirtualService `retries` block (SEMANTICS.md §2.4): which attempt
//! outcomes are retriable under which `retry_on` tokens, Istio's built-in default policy, and
//! Envoy's fully jittered exponential backoff. A Linkerd-style [`RetryBudget`] bounds retries
//! to a share of the requests plus a small floor, so an outage cannot turn into a retry storm.
//!
//! Everything here is pure: no I/O, no timers. Randomness comes in through
//! [`crate::balance::Random`] and the budget's clock as an `Instant` argument, so tests are
//! deterministic. The budget is shared by every request of a cluster and touches only atomics.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::balance::Random;

/// Istio's built-in `attempts` when a route has no `retries` block.
pub const DEFAULT_NUM_RETRIES: u32 = 2;
/// Envoy's `retry_back_off.base_interval` default (Istio sets no other unless `backoff` is given).
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Envoy's `max_interval` default is this many times the base interval.
pub const BACKOFF_MAX_FACTOR: u32 = 10;
/// Istio's `host_selection_retry_max_attempts` with the previous-hosts predicate.
pub const HOST_SELECTION_MAX_ATTEMPTS: u32 = 5;
/// Linkerd's default budget: deposits (and retries) are forgotten after this long.
pub const DEFAULT_BUDGET_TTL: Duration = Duration::from_secs(10);
/// Linkerd's default floor: retries per second allowed whatever the request rate.
pub const DEFAULT_BUDGET_MIN_PER_SEC: u32 = 10;
/// Linkerd's default ratio: each request earns a fifth of a retry.
pub const DEFAULT_BUDGET_RATIO: f64 = 0.2;

/// Envoy's `retry_on` conditions we implement, as a bit set so a check is one AND.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RetryOn(u32);

impl RetryOn {
    /// No condition: nothing is retried.
    pub const NONE: Self = Self(0);
    /// `5xx`: any 5xx response, or no response at all (not overflow).
    pub const FIVE_XX: Self = Self(1);
    /// `gateway-error`: 502/503/504, or no response at all (not overflow).
    pub const GATEWAY_ERROR: Self = Self(1 << 1);
    /// `reset`: the upstream did not respond (reset, disconnect, per-try timeout).
    pub const RESET: Self = Self(1 << 2);
    /// `reset-before-request`: failed before the request reached the upstream.
    pub const RESET_BEFORE_REQUEST: Self = Self(1 << 3);
    /// `connect-failure`: TCP connect failure or connect timeout.
    pub const CONNECT_FAILURE: Self = Self(1 << 4);
    /// `refused-stream`: HTTP/2 `REFUSED_STREAM`.
    pub const REFUSED_STREAM: Self = Self(1 << 5);
    /// `retriable-4xx`: 409 only.
    pub const RETRIABLE_4XX: Self = Self(1 << 6);
    /// `retriable-status-codes`: the status is in the policy's list.
    pub const RETRIABLE_STATUS_CODES: Self = Self(1 << 7);
    /// `cancelled`: grpc-status 1 in the response headers.
    pub const GRPC_CANCELLED: Self = Self(1 << 8);
    /// `deadline-exceeded`: grpc-status 4.
    pub const GRPC_DEADLINE_EXCEEDED: Self = Self(1 << 9);
    /// `resource-exhausted`: grpc-status 8.
    pub const GRPC_RESOURCE_EXHAUSTED: Self = Self(1 << 10);
    /// `internal`: grpc-status 13.
    pub const GRPC_INTERNAL: Self = Self(1 << 11);
    /// `unavailable`: grpc-status 14.
    pub const GRPC_UNAVAILABLE: Self = Self(1 << 12);
    /// Istio's built-in list: `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`.
    pub const ISTIO_DEFAULT: Self = Self(
        Self::CONNECT_FAILURE.0
            | Self::REFUSED_STREAM.0
            | Self::GRPC_UNAVAILABLE.0
            | Self::GRPC_CANCELLED.0
            | Self::RETRIABLE_STATUS_CODES.0,
    );

    /// Token spellings, as Envoy reads them.
    const TOKENS: [(&'static str, Self); 13] = [
        ("5xx", Self::FIVE_XX),
        ("gateway-error", Self::GATEWAY_ERROR),
        ("reset", Self::RESET),
        ("reset-before-request", Self::RESET_BEFORE_REQUEST),
        ("connect-failure", Self::CONNECT_FAILURE),
        ("refused-stream", Self::REFUSED_STREAM),
        ("retriable-4xx", Self::RETRIABLE_4XX),
        ("retriable-status-codes", Self::RETRIABLE_STATUS_CODES),
        ("cancelled", Self::GRPC_CANCELLED),
        ("deadline-exceeded", Self::GRPC_DEADLINE_EXCEEDED),
        ("resource-exhausted", Self::GRPC_RESOURCE_EXHAUSTED),
        ("internal", Self::GRPC_INTERNAL),
        ("unavailable", Self::GRPC_UNAVAILABLE),
    ];

    /// Parses `retry_on` tokens (trimmed; empty ones skipped). Returns the set and the tokens
    /// we do not know or do not implement (`retriable-headers`, `envoy-ratelimited`, ...) for
    /// the caller to log; those match nothing, as Envoy's would without their extra config.
    pub fn parse<I, S>(tokens: I) -> (Self, Vec<String>)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = Self::NONE;
        let mut unknown = Vec::new();
        for token in tokens {
            let token = token.as_ref().trim();
            if token.is_empty() {
                continue;
            }
            match Self::TOKENS.iter().find(|(name, _)| *name == token) {
                Some((_, flag)) => set = set | *flag,
                None => unknown.push(token.to_owned()),
            }
        }
        (set, unknown)
    }

    /// Whether any condition of `other` is in the set.
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// A route's retry policy after Istio's translation and Envoy's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (so at most `1 + num_retries` tries).
    pub num_retries: u32,
    /// The conditions that make an attempt retriable.
    pub retry_on: RetryOn,
    /// Upstream statuses retried under `retriable-status-codes`.
    pub retriable_status_codes: Box<[u16]>,
    /// Timeout of each attempt; `None`: only the route's overall timeout applies.
    pub per_try_timeout: Option<Duration>,
    /// Backoff base interval.
    pub backoff_base: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
    /// Retry on another host (Envoy's previous-hosts predicate, up to
    /// [`HOST_SELECTION_MAX_ATTEMPTS`] picks); off under consistent hashing or when the
    /// route sets `retryIgnorePreviousHosts: false`.
    pub avoid_previous_hosts: bool,
    /// `retryRemoteLocalities`: once [`PRIORITY_UPDATE_FREQUENCY`] attempts are made,
    /// retries avoid the priorities (localities) already tried.
    pub remote_localities: bool,
}

/// Istio's `update_frequency` for the previous-priorities retry priority: the priorities
/// tried are excluded from the choice every this many attempts.
pub const PRIORITY_UPDATE_FREQUENCY: u32 = 2;

impl RetryPolicy {
    /// Istio's built-in policy (1.24+: no retriable status codes, so 503 is not retried).
    pub fn istio_default(consistent_hash: bool) -> Self {
        Self {
            num_retries: DEFAULT_NUM_RETRIES,
            retry_on: RetryOn::ISTIO_DEFAULT,
            retriable_status_codes: Box::default(),
            per_try_timeout: None,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_BASE.saturating_mul(BACKOFF_MAX_FACTOR),
            avoid_previous_hosts: !consistent_hash,
            remote_localities: false,
        }
    }

    /// Whether an attempt that ended this way may be retried, with Envoy's meaning of each
    /// token (`RetryStateImpl::wouldRetryFromReset` / `wouldRetryFromHeaders`). Attempts
    /// left, the budget and the request body being replayable are the caller's checks.
    pub fn retriable(&self, outcome: &Outcome) -> bool {
        let on = self.retry_on;
        // Envoy counts every reset but overflow as a "5xx" / gateway error / reset.
        let any_reset = RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET;
        match *outcome {
            Outcome::CircuitBreakerOverflow
            | Outcome::DownstreamFailure
            | Outcome::LocalFailure => false,
            Outcome::Response {
                status,
                grpc_status,
            } => {
                (on.intersects(RetryOn::FIVE_XX) && (500..=599).contains(&status))
                    || (on.intersects(RetryOn::GATEWAY_ERROR) && (502..=504).contains(&status))
                    || (on.intersects(RetryOn::RETRIABLE_4XX) && status == 409)
                    || (on.intersects(RetryOn::RETRIABLE_STATUS_CODES)
                        && self.retriable_status_codes.contains(&status))
                    || grpc_status.is_some_and(|g| on.intersects(grpc_flag(g)))
            }
            // Nothing was sent, so a connect failure is also a reset before the request.
            Outcome::ConnectFailure => {
                on.intersects(any_reset | RetryOn::CONNECT_FAILURE | RetryOn::RESET_BEFORE_REQUEST)
            }
            Outcome::Reset { before_request } => {
                on.intersects(any_reset)
                    || (before_request && on.intersects(RetryOn::RESET_BEFORE_REQUEST))
            }
            Outcome::RefusedStream => on.intersects(any_reset | RetryOn::REFUSED_STREAM),
            Outcome::PerTryTimeout => on.intersects(any_reset),
        }
    }

    /// Whether the policy can retry a request that already reached the upstream (a response
    /// or a reset after sending), which needs a copy of its head kept for the next attempt.
    /// A request that never left (connect failure) is retried from the original, so a
    /// policy only for those costs nothing per request. `grpc`: the request is gRPC, the
    /// only kind the gRPC conditions can match.
    ///
    /// `refused-stream` alone does not count: a stream refused before the peer processed it
    /// comes back from hyper unsent when it can, and otherwise Istio's default policy (which
    /// has it) would copy every request's headers for a refusal our own inbound side never
    /// sends (it advertises its stream limit, which the client respects).
    pub fn may_retry_after_send(&self, grpc: bool) -> bool {
        let mut after =
            RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET | RetryOn::RETRIABLE_4XX;
        if !self.retriable_status_codes.is_empty() {
            after = after | RetryOn::RETRIABLE_STATUS_CODES;
        }
        if grpc {
            after = after
                | RetryOn::GRPC_CANCELLED
                | RetryOn::GRPC_DEADLINE_EXCEEDED
                | RetryOn::GRPC_RESOURCE_EXHAUSTED
                | RetryOn::GRPC_INTERNAL
                | RetryOn::GRPC_UNAVAILABLE;
        }
        self.num_retries > 0 && self.retry_on.intersects(after)
    }

    /// How long to wait before retry number `retry_number` (1 for the first retry; 0 is read
    /// as 1): Envoy's fully jittered exponential backoff, uniform in `[0, (2^n − 1)·base)`,
    /// then capped at `backoff_max`. No overflow for any `n`.
    pub fn backoff(&self, retry_number: u32, rng: &mut (impl Random + ?Sized)) -> Duration {
        let n = retry_number.clamp(1, 64);
        let multiplier = u128::MAX >> (128 - n); // 2^n − 1
        let range = multiplier.saturating_mul(self.backoff_base.as_nanos());
        if range == 0 {
            return Duration::ZERO;
        }
        let draw = u128::from(rng.next_u64()) % range;
        let capped = draw.min(self.backoff_max.as_nanos());
        Duration::from_nanos(u64::try_from(capped).unwrap_or(u64::MAX))
    }
}

/// The retry flag for a grpc-status, if Envoy can retry on it.
fn grpc_flag(code: u32) -> RetryOn {
    match code {
        1 => RetryOn::GRPC_CANCELLED,
        4 => RetryOn::GRPC_DEADLINE_EXCEEDED,
        8 => RetryOn::GRPC_RESOURCE_EXHAUSTED,
        13 => RetryOn::GRPC_INTERNAL,
        14 => RetryOn::GRPC_UNAVAILABLE,
        _ => RetryOn::NONE,
    }
}

/// What one attempt produced: the input of the retry decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered. `status` is the upstream's own (a locally generated 503 is a
    /// reset, not a response); `grpc_status` is read from response headers only.
    Response {
        /// HTTP status.
        status: u16,
        /// `grpc-status` header (trailers-only responses), if any.
        grpc_status: Option<u32>,
    },
    /// TCP connect failed or timed out.
    ConnectFailure,
    /// The stream or connection was reset, or closed without a response.
    Reset {
        /// No request byte had reached the upstream.
        before_request: bool,
    },
    /// HTTP/2 `REFUSED_STREAM`: the upstream did not process the request.
    RefusedStream,
    /// The attempt's per-try timeout fired.
    PerTryTimeout,
    /// A local circuit breaker overflowed (Envoy's overflow, which no `retry_on` matches):
    /// never retried.
    CircuitBreakerOverflow,
    /// The caller's side failed (its request body was malformed, too slow or cut off): the
    /// upstream is not at fault and another attempt would fail the same way. Never retried.
    DownstreamFailure,
    /// This proxy could not make the attempt (a request target it cannot forward, a broken
    /// invariant): nothing an upstream did. Never retried.
    LocalFailure,
}

/// The parameters of a rate budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetParams {
    /// How long a deposit or withdrawal counts.
    pub ttl: Duration,
    /// Retries per second allowed regardless of requests.
    pub min_per_sec: u32,
    /// Retries allowed per request.
    pub ratio: f64,
}

/// Why a budget could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetError {
    /// The ratio must be a number in `[0, 1000]` (as Linkerd and tower accept).
    #[error("retry budget ratio {0} must be between 0 and 1000")]
    Ratio(f64),
    /// The TTL must be between 1 s and 60 s (as Linkerd and tower accept).
    #[error("retry budget ttl {0:?} must be between 1s and 60s")]
    Ttl(Duration),
}

/// Windows per TTL: the granularity at which deposits and withdrawals expire.
const WINDOWS: u64 = 10;
/// Ring slots: one more than `WINDOWS`, so a record lives at least a full TTL.
const RING: usize = WINDOWS as usize + 1;
/// Budget units per retry; a deposit is `ratio × UNIT` (ratio resolution 0.001).
const UNIT: i32 = 1000;
/// A slot whose tag is at most this many windows ahead of ours belongs to a later window.
const NEWER_HORIZON: u32 = 1 << 16;

/// A Linkerd-style retry budget shared by all requests of one cluster. Each request
/// deposits `ratio` of a retry, each retry withdraws one; a withdrawal succeeds when the
/// balance of the records still alive, plus a constant reserve of `min_per_sec × ttl`
/// retries, covers it. Records (deposits and withdrawals) made in window `e` (time since the
/// first call, in `ttl / 10` windows) count until window `e + 10` ends: at least `ttl`,
/// less than `ttl × 1.1`. Lock-free: a ring of 11 atomic slots, each packing its window tag
/// (high 32 bits) and balance (low 32 bits, saturating toward fewer retries).
#[derive(Debug)]
pub struct RetryBudget {
    /// What it was built from (a push with the same parameters keeps the budget).
    params: BudgetParams,
    /// The instant of the first call: window 0 starts there.
    origin: OnceLock<Instant>,
    /// Window length in nanoseconds (`ttl / 10`, at least 100 ms).
    window_nanos: u128,
    /// `min_per_sec × ttl` retries, in units.
    reserve: i64,
    /// Units one request deposits.
    deposit: i32,
    /// Per-window records, indexed by window modulo `RING`.
    slots: [AtomicU64; RING],
}

impl Default for RetryBudget {
    /// Linkerd's default: ratio 0.2, 10 retries per second, ttl 10 s.
    fn default() -> Self {
        Self::build(
            DEFAULT_BUDGET_TTL,
            DEFAULT_BUDGET_MIN_PER_SEC,
            DEFAULT_BUDGET_RATIO,
        )
    }
}

impl RetryBudget {
    /// A budget allowing `ratio` retries per request plus `min_per_sec` per second, both
    /// measured over `ttl`.
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f64) -> Result<Self, BudgetError> {
        if !(0.0..=1000.0).contains(&ratio) {
            return Err(BudgetError::Ratio(ratio));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
            return Err(BudgetError::Ttl(ttl));
        }
        Ok(Self::build(ttl, min_per_sec, ratio))
    }

    /// The budget `p` describes.
    pub fn from_params(p: BudgetParams) -> Result<Self, BudgetError> {
        Self::new(p.ttl, p.min_per_sec, p.ratio)
    }

    /// What the budget was built from.
    pub fn params(&self) -> BudgetParams {
        self.params
    }

    /// Builds from checked parameters.
    fn build(ttl: Duration, min_per_sec: u32, ratio: f64) -> Self {
        let reserve = u128::from(min_per_sec) * ttl.as_millis() * UNIT as u128 / 1000;
        Self {
            params: BudgetParams {
                ttl,
                min_per_sec,
                ratio,
            },
            origin: OnceLock::new(),
            window_nanos: (ttl.as_nanos() / u128::from(WINDOWS)).max(1),
            reserve: i64::try_from(reserve).unwrap_or(i64::MAX),
            // ratio ≤ 1000, so at most 1e6 units: no truncation.
            deposit: (ratio * f64::from(UNIT)).round() as i32,
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Records one request (call it for every original request, not for retries).
    pub fn deposit(&self, now: Instant) {
        if self.deposit > 0 {
            self.add(self.window(now), self.deposit);
        }
    }

    /// Takes one retry from the budget; `false` means do not retry. The debit is recorded
    /// first and refunded if the balance it leaves is negative, so racing withdrawals never
    /// overdraw (under contention one may be refused that a lone caller would have got).
    pub fn withdraw(&self, now: Instant) -> bool {
        let window = self.window(now);
        if !self.add(window, -UNIT) {
            return false;
        }
        if self.balance(window) >= 0 {
            return true;
        }
        let tag = window as u32;
        // Refund only while our record is still there: a rotated slot dropped it already.
        let _ = self
            .slot(window)
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                let (t, v) = unpack(w);
                (t == tag).then(|| pack(t, v.saturating_add(UNIT)))
            });
        false
    }

    /// The window `now` falls in, counted from the first instant the budget saw.
    fn window(&self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_init(|| now);
        let n = now.saturating_duration_since(origin).as_nanos() / self.window_nanos;
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// The slot of a window.
    fn slot(&self, window: u64) -> &AtomicU64 {
        &self.slots[(window % RING as u64) as usize]
    }

    /// Adds `delta` units to `window`'s record, clearing an expired one first. Refused (false)
    /// when a later window already took the slot, or when a debit would saturate.
    fn add(&self, window: u64, delta: i32) -> bool {
        let tag = window as u32;
        self.slot(window)
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                let (t, v) = unpack(w);
                let base = if t == tag {
                    v
                } else if (1..=NEWER_HORIZON).contains(&t.wrapping_sub(tag)) {
                    return None;
                } else {
                    0
                };
                match base.checked_add(delta) {
                    Some(v) => Some(pack(tag, v)),
                    None if delta > 0 => Some(pack(tag, i32::MAX)),
                    None => None,
                }
            })
            .is_ok()
    }

    /// Reserve plus every record still alive in `window`.
    fn balance(&self, window: u64) -> i64 {
        let now = window as u32;
        let live = self.slots.iter().map(|s| unpack(s.load(Ordering::SeqCst)));
        let live = live.filter(|&(t, _)| now.wrapping_sub(t) <= WINDOWS as u32);
        self.reserve + live.map(|(_, v)| i64::from(v)).sum::<i64>()
    }
}

/// Splits a slot word into window tag and balance.
fn unpack(w: u64) -> (u32, i32) {
    ((w >> 32) as u32, w as u32 as i32)
}

/// Joins window tag and balance into a slot word.
fn pack(tag: u32, value: i32) -> u64 {
    (u64::from(tag) << 32) | u64::from(value as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::SplitMix64;
    use meshlite_xds_proto::v1;

    fn policy(attempts: u32, retry_on: &[&str], codes: &[u32]) -> Option<RetryPolicy> {
        let retry_on = retry_on.iter().map(|s| s.to_string()).collect();
        let retriable_status_codes = codes.to_vec();
        let r = v1::Retries {
            attempts,
            retry_on,
            retriable_status_codes,
            ..Default::default()
        };
        RetryPolicy::from_proto(Some(&r), false)
    }

    fn http(status: u16) -> Outcome {
        let grpc_status = None;
        Outcome::Response {
            status,
            grpc_status,
        }
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn a_route_without_retries_gets_istios_default_policy() {
        let tokens = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
        let want = RetryPolicy {
            num_retries: 2,
            retry_on: RetryOn::parse(tokens.split(',')).0,
            retriable_status_codes: Box::default(),
            per_try_timeout: None,
            backoff_base: ms(25),
            backoff_max: ms(250),
            avoid_previous_hosts: true,
            remote_localities: false,
        };
        assert_eq!(RetryPolicy::from_proto(None, false).as_ref(), Some(&want));
        let route = |keep_previous_hosts, remote_localities| v1::Retries {
            attempts: 2,
            keep_previous_hosts,
            remote_localities,
            ..Default::default()
        };
        let p = RetryPolicy::from_proto(Some(&route(true, true)), false).expect("policy");
        assert!(!p.avoid_previous_hosts && p.remote_localities);
        let p = RetryPolicy::from_proto(Some(&route(false, false)), false).expect("policy");
        assert!(p.avoid_previous_hosts && !p.remote_localities);
        let hashed = RetryPolicy::from_proto(None, true).expect("default");
        assert!(!hashed.avoid_previous_hosts);
        // Istio 1.24: 503 is no longer retried by default.
        assert!(!want.retriable(&http(503)));
        // A block with attempts only keeps the default conditions.
        let mut five = want;
        five.num_retries = 5;
        assert_eq!(policy(5, &[], &[]), Some(five));
    }

    #[test]
    fn zero_attempts_means_no_policy() {
        assert_eq!(policy(0, &["5xx"], &[503]), None);
    }

    #[test]
    fn status_codes_imply_retriable_status_codes_and_durations_convert() {
        let retriable_status_codes = vec![503, 70_000];
        let mut r = v1::Retries {
            attempts: 3,
            retriable_status_codes,
            ..Default::default()
        };
        r.per_try_timeout = Duration::from_secs(2).try_into().ok();
        r.backoff = ms(100).try_into().ok();
        let p = RetryPolicy::from_proto(Some(&r), true).expect("policy");
        assert_eq!(p.retry_on, RetryOn::RETRIABLE_STATUS_CODES);
        assert_eq!(&*p.retriable_status_codes, &[503]);
        assert_eq!(p.per_try_timeout, Some(Duration::from_secs(2)));
        assert_eq!((p.backoff_base, p.backoff_max), (ms(100), ms(1000)));
        assert!(!p.avoid_previous_hosts);
        let q = policy(1, &["5xx", "bogus"], &[409]).map(|q| q.retry_on);
        assert_eq!(q, Some(RetryOn::FIVE_XX | RetryOn::RETRIABLE_STATUS_CODES));
        let (set, unknown) = RetryOn::parse([" reset ", "", "retriable-headers"]);
        assert_eq!(
            (set, unknown),
            (RetryOn::RESET, vec!["retriable-headers".into()])
        );
    }

    #[test]
    fn each_token_retries_exactly_envoys_outcomes() {
        let grpc = |code| {
            let grpc_status = Some(code);
            Outcome::Response {
                status: 200,
                grpc_status,
            }
        };
        let reset = |before_request| Outcome::Reset { before_request };
        #[rustfmt::skip]
        let outcomes = [
            http(500), http(502), http(503), http(504), http(409), http(404),
            grpc(1), grpc(4), grpc(8), grpc(13), grpc(14), grpc(2),
            Outcome::ConnectFailure, reset(false), reset(true), Outcome::RefusedStream,
            Outcome::PerTryTimeout, Outcome::CircuitBreakerOverflow,
        ];
        // Columns: 500 502 503 504 409 404 | g1 g4 g8 g13 g14 g2 | CF R Rb RS PTT | Overflow
        #[rustfmt::skip]
        let table = [
            ("5xx",                    "111100 000000 11111 0"),
            ("gateway-error",          "011100 000000 11111 0"),
            ("reset",                  "000000 000000 11111 0"),
            ("reset-before-request",   "000000 000000 10100 0"),
            ("connect-failure",        "000000 000000 10000 0"),
            ("refused-stream",         "000000 000000 00010 0"),
            ("retriable-4xx",          "000010 000000 00000 0"),
            ("retriable-status-codes", "001001 000000 00000 0"),
            ("cancelled",              "000000 100000 00000 0"),
            ("deadline-exceeded",      "000000 010000 00000 0"),
            ("resource-exhausted",     "000000 001000 00000 0"),
            ("internal",               "000000 000100 00000 0"),
            ("unavailable",            "000000 000010 00000 0"),
        ];
        for (token, row) in table {
            let want = row.chars().filter(|c| *c != ' ').map(|c| c == '1');
            let mut p = policy(2, &[token], &[]).expect("policy");
            // Codes present on every row: only `retriable-status-codes` may look at them.
            p.retriable_status_codes = Box::new([503, 404]);
            for (o, want) in outcomes.iter().zip(want) {
                assert_eq!(p.retriable(o), want, "{token} on {o:?}");
            }
        }
    }

    #[test]
    fn overflow_and_local_failures_are_never_retried() {
        let (all, _) = RetryOn::parse(RetryOn::TOKENS.iter().map(|(t, _)| *t));
        let mut p = RetryPolicy::istio_default(false);
        p.retry_on = all;
        assert!(!p.retriable(&Outcome::CircuitBreakerOverflow));
        assert!(!p.retriable(&Outcome::DownstreamFailure));
        assert!(!p.retriable(&Outcome::LocalFailure));
        assert!(p.retriable(&Outcome::PerTryTimeout));
    }

    #[test]
    fn backoff_is_fully_jittered_exponential_and_capped() {
        let p = RetryPolicy::istio_default(false);
        let mut rng = SplitMix64(7);
        for n in 1..=5u32 {
            // [0, (2^n − 1)·25 ms), capped at 250 ms: from n = 4 the excess sits on the cap.
            let bound = ms(25 * ((1 << n) - 1));
            let draws: Vec<_> = (0..20_000).map(|_| p.backoff(n, &mut rng)).collect();
            let max = draws.iter().copied().max().unwrap_or_default();
            assert!(max < bound && max <= ms(250), "n={n}: {max:?}");
            assert!(max >= bound.min(ms(250)).mul_f64(0.99), "n={n}: {max:?}");
            assert_eq!(draws.contains(&ms(250)), n >= 4, "n={n}");
        }
        assert_eq!(
            p.backoff(1, &mut || 25_000_000u64 - 1),
            Duration::from_nanos(24_999_999)
        );
        assert_eq!(p.backoff(0, &mut || 25_000_000u64), Duration::ZERO);
        for n in [31, 63, 64, 65, u32::MAX] {
            assert_eq!(p.backoff(n, &mut || u64::MAX), ms(250));
        }
        let mut zero = p;
        zero.backoff_base = Duration::ZERO;
        assert_eq!(zero.backoff(3, &mut SplitMix64(1)), Duration::ZERO);
    }

    #[test]
    fn a_thousand_requests_allow_ratio_plus_floor_retries_and_no_more() {
        // Floor: 10/s × 10 s = 100 retries; ratio: 0.2 × 1000 requests = 200.
        let (b, t0) = (RetryBudget::default(), Instant::now());
        (0..1000).for_each(|i| b.deposit(t0 + ms(i)));
        assert_eq!((0..1000).filter(|_| b.withdraw(t0 + ms(999))).count(), 300);
        // A failing backend: every request retries once as it arrives.
        let b = RetryBudget::default();
        let granted = (0..1000).filter(|i| {
            b.deposit(t0 + ms(*i));
            b.withdraw(t0 + ms(*i))
        });
        assert_eq!(granted.count(), 300);
    }

    #[test]
    fn deposits_and_withdrawals_expire_after_ttl() {
        let b = RetryBudget::new(Duration::from_secs(10), 0, 1.0).expect("budget");
        let t0 = Instant::now();
        b.deposit(t0);
        b.deposit(t0 + ms(999));
        // Window 0 ends at 1 s, so its records count until 11 s: at least the TTL.
        assert_eq!((0..5).filter(|_| b.withdraw(t0 + ms(10_999))).count(), 2);
        // At 11 s the deposits are gone; the two debits (window 10) still count.
        b.deposit(t0 + ms(11_000));
        assert!(!b.withdraw(t0 + ms(11_000)));
        // At 21 s the debits are gone too; the 11 s deposit still counts.
        b.deposit(t0 + ms(21_000));
        assert_eq!((0..5).filter(|_| b.withdraw(t0 + ms(21_000))).count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn on_the_paused_clock_a_spent_budget_refills_when_its_windows_expire() {
        use tokio::time::advance;
        // 5 retries a second over 2 s: a floor of 10; ratio 0.5 per request.
        let b = RetryBudget::new(Duration::from_secs(2), 5, 0.5).expect("budget");
        (0..20).for_each(|_| b.deposit(Instant::now()));
        let take = |n| (0..n).filter(|_| b.withdraw(Instant::now())).count();
        assert_eq!(take(50), 20, "floor 10 + 20 requests x 0.5");
        // Within the TTL nothing comes back.
        advance(Duration::from_millis(1_900)).await;
        assert_eq!(take(5), 0);
        // Past TTL + one window (2.2 s) deposits and debits alike are gone: the floor again.
        advance(Duration::from_millis(300)).await;
        assert_eq!(take(50), 10);
    }

    #[test]
    fn the_floor_alone_allows_min_per_sec_times_ttl_per_ttl() {
        let b = RetryBudget::new(Duration::from_secs(2), 5, 0.2).expect("budget");
        let t0 = Instant::now();
        assert_eq!((0..50).filter(|_| b.withdraw(t0)).count(), 10);
        assert!(!b.withdraw(t0 + ms(2_199)));
        assert_eq!((0..50).filter(|_| b.withdraw(t0 + ms(2_200))).count(), 10);
        // A caller whose clock is more than a TTL behind the slot's owner is refused.
        assert!(!b.withdraw(t0));
    }

    #[test]
    fn racing_withdrawals_never_overdraw_and_refunds_do_not_leak() {
        let b = RetryBudget::new(Duration::from_secs(10), 10, 0.0).expect("budget");
        let t0 = Instant::now();
        let raced: usize = std::thread::scope(|s| {
            let take = || (0..100).filter(|_| b.withdraw(t0)).count();
            let threads: Vec<_> = (0..8).map(|_| s.spawn(take)).collect();
            threads.into_iter().map(|h| h.join().expect("thread")).sum()
        });
        let after = (0..200).filter(|_| b.withdraw(t0)).count();
        assert!(raced <= 100);
        assert_eq!(raced + after, 100);
    }

    #[test]
    fn bad_parameters_are_rejected_and_the_budget_stays_small() {
        let s = Duration::from_secs;
        for ratio in [-0.1, 1000.1, f64::NAN] {
            assert!(matches!(
                RetryBudget::new(s(10), 1, ratio),
                Err(BudgetError::Ratio(_))
            ));
        }
        for ttl in [ms(999), s(61)] {
            assert_eq!(
                RetryBudget::new(ttl, 1, 0.2).err(),
                Some(BudgetError::Ttl(ttl))
            );
        }
        assert!(RetryBudget::new(s(60), u32::MAX, 1000.0).is_ok());
        assert!(std::mem::size_of::<RetryBudget>() <= 192);
    }
}
