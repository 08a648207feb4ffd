//! The retry loop of Envoy's router, as a stage of the request path: it sends one request to
//! a cluster through a next stage ([`Upstream`]: pick a host, send to it) and decides, after
//! each attempt, whether to try again.
//!
//! It owns what retrying needs and nothing else: the route's [`RetryPolicy`] (which outcomes
//! are retried, how many times), the cluster's rate [`RetryBudget`] and its `maxRetries` /
//! `retryBudget` breaker, the jittered exponential backoff, the per-try timeout, and host
//! avoidance (Envoy's previous-hosts predicate and, with `retryRemoteLocalities`, the
//! previous-priorities one). A request whose body may be sent again is kept replayable
//! ([`crate::message::replay`]), and its head copied only when a policy can retry after the
//! request reached the upstream; a request that never left comes back from the next stage
//! in [`SendError::request`] and is sent again as it is.
//!
//! No allocation happens before a retry is actually made (the host lists are empty vectors
//! until then) and the loop is generic over its next stage, so tests drive it with a fake.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use http::{Request, Response, Version};

use crate::balance::Random;
use crate::message::body::ProxyBody;
use crate::message::errors::{ProxyError, is_grpc};
use crate::message::replay::{ReplayBody, ReplayHandle};
use crate::message::response_flags::ResponseFlags;
use crate::resilience::breaker::Breakers;
use crate::resilience::retry::{
    HOST_SELECTION_MAX_ATTEMPTS, Outcome, PRIORITY_UPDATE_FREQUENCY, RetryBudget, RetryPolicy,
};
use crate::telemetry::cluster_stats::ClusterStats;
use crate::transport::forward::SendError;

/// The next stage of the retry loop: where attempts go and how one is sent.
pub trait Upstream {
    /// Where one attempt goes (a mesh endpoint, an external target...).
    type Host;

    /// The cluster's name, for the error when no host is left.
    fn cluster(&self) -> &str;

    /// Picks a host for the next attempt, outside the priorities (localities)
    /// `excluded_priorities`; `None` when the cluster has none. The index identifies the
    /// host among the cluster's (host avoidance, priorities).
    fn pick(&mut self, excluded_priorities: &[u32]) -> Option<(usize, Self::Host)>;

    /// Whether a failed attempt that sent nothing gives the request back (see
    /// [`SendError::request`]); if not, a retry needs a copy of the request kept from the
    /// start (e.g. a pool that connects after taking the request).
    fn gives_back_unsent(&self, req: &Request<ProxyBody>) -> bool;

    /// Sends one attempt to `host`.
    fn send(
        &mut self,
        host: &Self::Host,
        req: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, SendError>>;

    /// How the attempt to `host` (index `index`) ended, its per-try timeout included: for
    /// outlier detection and latency-aware balancing.
    fn ended(
        &mut self,
        host: &Self::Host,
        index: usize,
        result: &Result<Response<ProxyBody>, ProxyError>,
    );

    /// The attempt that failed is over and a retry follows after the backoff: what it held
    /// of its host (an in-flight count) is let go.
    fn retrying(&mut self);

    /// The priority (locality) of host `index`, for `retryRemoteLocalities`.
    fn priority_of(&self, index: usize) -> Option<u32>;
}

/// A next stage lent to a loop (tests keep theirs to look at it afterwards).
impl<T: Upstream> Upstream for &mut T {
    type Host = T::Host;

    fn cluster(&self) -> &str {
        (**self).cluster()
    }

    fn pick(&mut self, excluded_priorities: &[u32]) -> Option<(usize, T::Host)> {
        (**self).pick(excluded_priorities)
    }

    fn gives_back_unsent(&self, req: &Request<ProxyBody>) -> bool {
        (**self).gives_back_unsent(req)
    }

    fn send(
        &mut self,
        host: &T::Host,
        req: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, SendError>> {
        (**self).send(host, req)
    }

    fn ended(
        &mut self,
        host: &T::Host,
        index: usize,
        result: &Result<Response<ProxyBody>, ProxyError>,
    ) {
        (**self).ended(host, index, result);
    }

    fn retrying(&mut self) {
        (**self).retrying();
    }

    fn priority_of(&self, index: usize) -> Option<u32> {
        (**self).priority_of(index)
    }
}

/// What the loop produced: the final response (with the host that gave it) or failure, and
/// the flag retrying adds (`URX`: attempts ran out; `UO`: a retry was refused by
/// `maxRetries` or a retry budget).
#[derive(Debug)]
pub struct Retried<H> {
    /// The last attempt's response and host, or why the request failed.
    pub result: Result<(Response<ProxyBody>, H), ProxyError>,
    /// `URX`, `UO` or none.
    pub flags: ResponseFlags,
}

/// One request's retry loop: the route's policy and the cluster's retry limits.
pub struct RetryLoop<'a, R> {
    /// The route's policy; `None` (or no retries) sends once.
    pub policy: Option<&'a RetryPolicy>,
    /// The cluster's rate budget (a share of requests plus a floor), when it has one.
    pub budget: Option<&'a RetryBudget>,
    /// The cluster's breakers: `maxRetries`, or Istio's `retryBudget` in its place.
    pub breakers: &'a Breakers,
    /// The cluster's retry counters.
    pub stats: &'a ClusterStats,
    /// The request is pinned to a host by consistent hashing: retries never avoid hosts.
    pub hashed: bool,
    /// Backoff jitter.
    pub rng: R,
}

impl<R: Random> RetryLoop<'_, R> {
    /// Sends `req` through `upstream` until an attempt ends in a way the policy does not
    /// retry, the attempts run out, a retry is refused, or the request cannot be sent again.
    pub async fn run<U: Upstream>(
        mut self,
        mut upstream: U,
        mut req: Request<ProxyBody>,
    ) -> Retried<U::Host> {
        let policy = self.policy.filter(|p| p.num_retries > 0);
        let mut template = None;
        if let Some(p) = policy {
            if let Some(b) = self.budget {
                b.deposit(tokio::time::Instant::now());
            }
            if !http_body::Body::is_end_stream(req.body()) {
                let (parts, body) = req.into_parts();
                req = Request::from_parts(parts, ProxyBody::Replay(ReplayBody::new(body)));
            }
            if p.may_retry_after_send(is_grpc(req.headers())) || !upstream.gives_back_unsent(&req) {
                template = Some(Template::of(&req));
            }
        }
        let avoid = policy.is_some_and(|p| p.avoid_previous_hosts) && !self.hashed;
        let per_try = policy.and_then(|p| p.per_try_timeout);
        let mut failed: Vec<usize> = Vec::new();
        // `retryRemoteLocalities`: the priorities attempted, and those excluded from the
        // choice (updated every PRIORITY_UPDATE_FREQUENCY attempts, as Istio configures Envoy).
        let mut attempted_priorities: Vec<u32> = Vec::new();
        let mut excluded_priorities: Vec<u32> = Vec::new();
        let mut _retrying = None;
        let mut attempt = 0u32;
        loop {
            let picked = pick_avoiding(avoid.then_some(&failed[..]), || {
                upstream.pick(&excluded_priorities)
            });
            let Some((index, host)) = picked else {
                let cluster = upstream.cluster().to_string();
                return Retried::failed(ProxyError::NoHealthyUpstream(cluster));
            };
            let sent = {
                let sent = std::pin::pin!(upstream.send(&host, req));
                within(per_try, sent).await
            };
            let (result, unsent) = match sent {
                Some(Ok(resp)) => (Ok(resp), None),
                Some(Err(SendError { error, request })) => (Err(error), request),
                None => (Err(ProxyError::PerTryTimeout), None),
            };
            upstream.ended(&host, index, &result);
            let outcome = match &result {
                Ok(resp) => Outcome::Response {
                    status: resp.status().as_u16(),
                    grpc_status: resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
                        .and_then(|v| v.parse().ok()),
                },
                Err(e) => e.retry_outcome(unsent.is_some()),
            };
            let done = |result: Result<Response<ProxyBody>, ProxyError>, flags| Retried {
                result: result.map(|resp| (resp, host)),
                flags,
            };
            let Some(p) = policy.filter(|p| p.retriable(&outcome)) else {
                return done(result, ResponseFlags::NONE);
            };
            if attempt >= p.num_retries {
                self.stats.retry_limit_exceeded.inc();
                return done(result, ResponseFlags::URX);
            }
            let next = match unsent {
                Some(unsent) => unsent,
                None => match template.as_ref().and_then(Template::rebuild) {
                    Some(again) => again,
                    // The body went past the replay bound: this request cannot be sent again.
                    None => return done(result, ResponseFlags::NONE),
                },
            };
            // The previous retry is over: it no longer counts against `maxRetries` or the
            // budget.
            _retrying = None;
            let Some(permit) = self.breakers.try_retry(crate::balance::ewma::clock_ns()) else {
                self.stats.retry_overflow.inc();
                return done(result, ResponseFlags::UO);
            };
            if let Some(b) = self.budget
                && !b.withdraw(tokio::time::Instant::now())
            {
                self.stats.retry_overflow.inc();
                return done(result, ResponseFlags::UO);
            }
            _retrying = Some(permit);
            self.stats.retries.inc();
            attempt += 1;
            failed.push(index);
            if p.remote_localities {
                if let Some(priority) = upstream.priority_of(index)
                    && !attempted_priorities.contains(&priority)
                {
                    attempted_priorities.push(priority);
                }
                if attempt.is_multiple_of(PRIORITY_UPDATE_FREQUENCY) {
                    excluded_priorities.clone_from(&attempted_priorities);
                }
            }
            drop(result);
            drop(done);
            // The failed attempt is over: its host stops counting it during the backoff.
            upstream.retrying();
            tokio::time::sleep(p.backoff(attempt, &mut self.rng)).await;
            req = next;
        }
    }
}

impl<H> Retried<H> {
    /// A request that failed before any attempt.
    pub fn failed(e: ProxyError) -> Self {
        Self {
            result: Err(e),
            flags: ResponseFlags::NONE,
        }
    }
}

/// Awaits `sent` for at most `limit` (`None`: as long as it takes); `None` when cut.
///
/// The caller pins the future in its own state and lends it: moving a future into
/// `tokio::time::timeout` inside an async fn stores it twice, and these futures are the
/// whole request path (an outbound request's state went from 16.8 KB to 5.2 KB, each byte of
/// it copied when hyper takes the request's future).
pub async fn within<F: Future>(limit: Option<Duration>, sent: Pin<&mut F>) -> Option<F::Output> {
    match limit {
        None => Some(sent.await),
        Some(t) => tokio::time::timeout(t, sent).await.ok(),
    }
}

/// Picks with `pick`, avoiding the `failed` host indexes for up to Envoy's five tries when
/// given (the previous-hosts retry predicate).
pub fn pick_avoiding<T>(
    failed: Option<&[usize]>,
    mut pick: impl FnMut() -> Option<(usize, T)>,
) -> Option<(usize, T)> {
    let mut picked = pick()?;
    if let Some(failed) = failed.filter(|f| !f.is_empty()) {
        for _ in 1..HOST_SELECTION_MAX_ATTEMPTS {
            if !failed.contains(&picked.0) {
                break;
            }
            picked = pick()?;
        }
    }
    Some(picked)
}

/// A request's head, kept to rebuild it for a retry after the first attempt consumed it.
struct Template {
    method: http::Method,
    uri: http::Uri,
    version: Version,
    headers: http::HeaderMap,
    body: Option<ReplayHandle>,
}

impl Template {
    fn of(req: &Request<ProxyBody>) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body: match req.body() {
                ProxyBody::Replay(b) => Some(b.handle()),
                _ => None,
            },
        }
    }

    /// The request again, or `None` when its body can no longer be replayed.
    fn rebuild(&self) -> Option<Request<ProxyBody>> {
        let body = match &self.body {
            Some(b) => ProxyBody::Replay(b.replay()?),
            None => ProxyBody::Empty,
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        Some(req)
    }
}

#[cfg(test)]
#[path = "retry_loop_tests.rs"]
mod tests;
