//! The retry loop driven by a fake next stage: what it retries, where, how many times,
//! and when it refuses.

use super::*;
use crate::resilience::breaker::Limit;
use crate::resilience::retry::RetryOn;
use crate::transport::connect::ConnectError;
use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

/// What one attempt of the fake does.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Answers with this status.
    Status(u16),
    /// Fails to connect and gives the request back.
    ConnectUnsent,
    /// Fails to connect inside a pool that keeps the request.
    ConnectKept,
    /// The stream is reset after the request was sent.
    Reset,
    /// Never answers.
    Hang,
    /// A local circuit breaker refuses it.
    Overflow,
}

/// A next stage with `hosts` hosts, picked round robin (or from `picks`), whose attempts do
/// what `script` says in order.
#[derive(Default)]
struct Fake {
    hosts: usize,
    round_robin: usize,
    picks: VecDeque<usize>,
    script: VecDeque<Step>,
    gives_back: bool,
    /// Host of each attempt, with the request's `x-try` header as it arrived.
    sent: Vec<(usize, Option<String>)>,
    /// How each attempt ended, as reported (status or error text).
    ended: Vec<(usize, Result<u16, String>)>,
    retrying: usize,
}

impl Fake {
    fn new(hosts: usize, script: &[Step]) -> Self {
        Self {
            hosts,
            script: script.iter().copied().collect(),
            gives_back: true,
            ..Self::default()
        }
    }
}

fn connect_error() -> ProxyError {
    ProxyError::Connect(ConnectError::Timeout(([127, 0, 0, 1], 1).into()))
}

impl Upstream for Fake {
    type Host = usize;

    fn cluster(&self) -> &str {
        "fake"
    }

    fn pick(&mut self, _excluded: &[u32]) -> Option<(usize, usize)> {
        if self.hosts == 0 {
            return None;
        }
        let i = self.picks.pop_front().unwrap_or_else(|| {
            self.round_robin += 1;
            (self.round_robin - 1) % self.hosts
        });
        Some((i, i))
    }

    fn gives_back_unsent(&self, _req: &Request<ProxyBody>) -> bool {
        self.gives_back
    }

    async fn send(
        &mut self,
        host: &usize,
        req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        let tried = req
            .headers()
            .get("x-try")
            .map(|v| v.to_str().unwrap().to_string());
        self.sent.push((*host, tried));
        let step = self
            .script
            .pop_front()
            .expect("an attempt the script did not plan");
        match step {
            Step::Status(s) => {
                let mut resp = Response::new(ProxyBody::Empty);
                *resp.status_mut() = http::StatusCode::from_u16(s).unwrap();
                Ok(resp)
            }
            Step::ConnectUnsent => Err(SendError::unsent(connect_error(), req)),
            Step::ConnectKept => Err(SendError::sent(connect_error())),
            Step::Reset => Err(SendError::sent(ProxyError::UpstreamReset("reset".into()))),
            Step::Hang => std::future::pending().await,
            Step::Overflow => Err(SendError::unsent(ProxyError::Overflow("fake".into()), req)),
        }
    }

    fn ended(
        &mut self,
        host: &usize,
        _index: usize,
        result: &Result<Response<ProxyBody>, ProxyError>,
    ) {
        let r = match result {
            Ok(resp) => Ok(resp.status().as_u16()),
            Err(e) => Err(e.to_string()),
        };
        self.ended.push((*host, r));
    }

    fn retrying(&mut self) {
        self.retrying += 1;
    }

    fn priority_of(&self, _index: usize) -> Option<u32> {
        None
    }
}

/// A policy of `retries` retries on `tokens`, with a 1 ms backoff base.
fn policy(retries: u32, tokens: &[&str]) -> RetryPolicy {
    let mut p = RetryPolicy::istio_default(false);
    p.num_retries = retries;
    p.retry_on = RetryOn::parse(tokens).0;
    p.backoff_base = Duration::from_millis(1);
    p.backoff_max = Duration::from_millis(10);
    p
}

/// Breakers allowing `max_retries` retries in flight.
fn breakers(max_retries: u64) -> Breakers {
    let limit = |max| Limit::new(max, Arc::default());
    Breakers {
        requests: limit(u64::MAX),
        pending: limit(u64::MAX),
        retries: limit(max_retries),
        connections: limit(u64::MAX),
        retry_budget: None,
    }
}

fn request() -> Request<ProxyBody> {
    Request::builder()
        .uri("/orders")
        .header("x-try", "1")
        .body(ProxyBody::Empty)
        .unwrap()
}

/// Runs the loop over `fake` and returns its result's status (or error text), flags and the
/// number of backoff draws.
async fn run(
    fake: &mut Fake,
    policy: Option<&RetryPolicy>,
    breakers: &Breakers,
    budget: Option<&RetryBudget>,
    stats: &ClusterStats,
    hashed: bool,
) -> (Result<(u16, usize), String>, ResponseFlags, u32) {
    let draws = Rc::new(Cell::new(0));
    let counted = draws.clone();
    let retries = RetryLoop {
        policy,
        budget,
        breakers,
        stats,
        hashed,
        rng: move || {
            counted.set(counted.get() + 1);
            0
        },
    };
    let r = retries.run(fake, request()).await;
    let result = r
        .result
        .map(|(resp, host)| (resp.status().as_u16(), host))
        .map_err(|e| e.to_string());
    (result, r.flags, draws.get())
}

#[tokio::test]
async fn a_503_then_a_200_is_one_retry_on_another_host_after_one_backoff() {
    let mut fake = Fake::new(3, &[Step::Status(503), Step::Status(200)]);
    let stats = ClusterStats::default();
    let p = policy(2, &["5xx"]);
    let (result, flags, draws) = run(&mut fake, Some(&p), &breakers(3), None, &stats, false).await;
    assert_eq!(result, Ok((200, 1)));
    assert_eq!(flags, ResponseFlags::NONE);
    assert_eq!(draws, 1, "one backoff before the retry");
    assert_eq!(fake.retrying, 1);
    assert_eq!(stats.retries.get(), 1);
    assert_eq!(fake.ended, vec![(0, Ok(503)), (1, Ok(200))]);
    // The retry is the same request again.
    assert_eq!(fake.sent[1].1.as_deref(), Some("1"));
}

#[tokio::test]
async fn a_retriable_failure_on_the_last_attempt_is_urx_with_the_last_response() {
    let mut fake = Fake::new(3, &[Step::Status(503); 3]);
    let stats = ClusterStats::default();
    let p = policy(2, &["gateway-error"]);
    let (result, flags, draws) = run(&mut fake, Some(&p), &breakers(3), None, &stats, false).await;
    assert_eq!(result, Ok((503, 2)));
    assert_eq!(flags, ResponseFlags::URX);
    assert_eq!(draws, 2);
    assert_eq!(stats.retries.get(), 2);
    assert_eq!(stats.retry_limit_exceeded.get(), 1);
}

#[tokio::test]
async fn an_outcome_the_policy_does_not_name_is_final() {
    let mut fake = Fake::new(3, &[Step::Status(503)]);
    let stats = ClusterStats::default();
    let p = policy(2, &["connect-failure"]);
    let (result, flags, draws) = run(&mut fake, Some(&p), &breakers(3), None, &stats, false).await;
    assert_eq!(result, Ok((503, 0)));
    assert_eq!(flags, ResponseFlags::NONE);
    assert_eq!(draws, 0);
    assert_eq!(fake.sent.len(), 1);
}

#[tokio::test]
async fn without_a_policy_the_request_is_sent_once() {
    let mut fake = Fake::new(3, &[Step::Reset]);
    let stats = ClusterStats::default();
    let (result, flags, _) = run(&mut fake, None, &breakers(3), None, &stats, false).await;
    assert_eq!(
        result,
        Err("upstream reset the stream: reset".to_string()),
        "the failure itself"
    );
    assert_eq!(flags, ResponseFlags::NONE);
    assert_eq!(fake.sent.len(), 1);
}

#[tokio::test]
async fn a_connect_failure_sends_the_request_given_back_again() {
    let mut fake = Fake::new(2, &[Step::ConnectUnsent, Step::Status(200)]);
    let stats = ClusterStats::default();
    // `connect-failure` alone: no copy of the request is kept.
    let p = policy(1, &["connect-failure"]);
    let (result, _, _) = run(&mut fake, Some(&p), &breakers(3), None, &stats, false).await;
    assert_eq!(result, Ok((200, 1)));
    assert_eq!(fake.sent[1].1.as_deref(), Some("1"));
}

#[tokio::test]
async fn a_pool_that_keeps_the_request_is_retried_from_a_copy() {
    let mut fake = Fake::new(2, &[Step::ConnectKept, Step::Status(200)]);
    fake.gives_back = false;
    let stats = ClusterStats::default();
    let p = policy(1, &["connect-failure"]);
    let (result, _, _) = run(&mut fake, Some(&p), &breakers(3), None, &stats, false).await;
    assert_eq!(result, Ok((200, 1)));
    assert_eq!(fake.sent[1].1.as_deref(), Some("1"));
}

#[tokio::test]
async fn a_per_try_timeout_cuts_a_hung_attempt_and_the_next_one_answers() {
    let mut fake = Fake::new(2, &[Step::Hang, Step::Status(200)]);
    let stats = ClusterStats::default();
    let mut p = policy(1, &["reset"]);
    p.per_try_timeout = Some(Duration::from_millis(20));
    let (result, flags, _) = run(&mut fake, Some(&p), &breakers(3), None, &stats, false).await;
    assert_eq!(result, Ok((200, 1)));
    assert_eq!(flags, ResponseFlags::NONE);
    assert_eq!(
        fake.ended[0],
        (0, Err("upstream per-try timeout".to_string())),
        "the timeout is reported as the attempt's end"
    );
}

#[tokio::test]
async fn max_retries_refuses_a_retry_with_uo() {
    let mut fake = Fake::new(2, &[Step::Status(503)]);
    let stats = ClusterStats::default();
    let p = policy(2, &["5xx"]);
    let (result, flags, draws) = run(&mut fake, Some(&p), &breakers(0), None, &stats, false).await;
    assert_eq!(result, Ok((503, 0)));
    assert_eq!(flags, ResponseFlags::UO);
    assert_eq!(draws, 0, "no backoff for a refused retry");
    assert_eq!(stats.retry_overflow.get(), 1);
    assert_eq!(stats.retries.get(), 0);
}

#[tokio::test]
async fn an_empty_retry_budget_refuses_a_retry_with_uo() {
    let mut fake = Fake::new(2, &[Step::Reset]);
    let stats = ClusterStats::default();
    let p = policy(2, &["reset"]);
    // No floor and no share of requests: nothing to withdraw.
    let budget = RetryBudget::new(Duration::from_secs(1), 0, 0.0).unwrap();
    let (result, flags, _) = run(
        &mut fake,
        Some(&p),
        &breakers(3),
        Some(&budget),
        &stats,
        false,
    )
    .await;
    assert_eq!(result, Err("upstream reset the stream: reset".to_string()));
    assert_eq!(flags, ResponseFlags::UO);
    assert_eq!(stats.retry_overflow.get(), 1);
    assert_eq!(fake.sent.len(), 1);
}

#[tokio::test]
async fn a_budget_with_room_lets_retries_through() {
    let mut fake = Fake::new(2, &[Step::Reset, Step::Status(200)]);
    let stats = ClusterStats::default();
    let p = policy(2, &["reset"]);
    let budget = RetryBudget::new(Duration::from_secs(1), 10, 0.2).unwrap();
    let (result, flags, _) = run(
        &mut fake,
        Some(&p),
        &breakers(3),
        Some(&budget),
        &stats,
        false,
    )
    .await;
    assert_eq!(result, Ok((200, 1)));
    assert_eq!(flags, ResponseFlags::NONE);
}

#[tokio::test]
async fn a_retry_avoids_the_host_that_failed_unless_the_request_is_hashed() {
    let p = policy(1, &["5xx"]);
    let stats = ClusterStats::default();
    // The balancer keeps offering host 0: the retry asks again until another comes.
    let mut fake = Fake::new(2, &[Step::Status(503), Step::Status(200)]);
    fake.picks = [0, 0, 0, 1].into_iter().collect();
    let (result, _, _) = run(&mut fake, Some(&p), &breakers(3), None, &stats, false).await;
    assert_eq!(result, Ok((200, 1)));
    // Hashed to host 0: the retry goes there again.
    let mut fake = Fake::new(2, &[Step::Status(503), Step::Status(200)]);
    fake.picks = [0, 0, 0, 1].into_iter().collect();
    let (result, _, _) = run(&mut fake, Some(&p), &breakers(3), None, &stats, true).await;
    assert_eq!(result, Ok((200, 0)));
}

#[tokio::test]
async fn host_avoidance_gives_up_after_envoys_five_picks() {
    let p = policy(1, &["5xx"]);
    let stats = ClusterStats::default();
    let mut fake = Fake::new(2, &[Step::Status(503), Step::Status(200)]);
    fake.picks = [0, 0, 0, 0, 0, 0, 1].into_iter().collect();
    let (result, _, _) = run(&mut fake, Some(&p), &breakers(3), None, &stats, false).await;
    assert_eq!(result, Ok((200, 0)));
}

#[tokio::test]
async fn an_overflow_is_never_retried() {
    let mut fake = Fake::new(2, &[Step::Overflow]);
    let stats = ClusterStats::default();
    let (all, _) = RetryOn::parse(["5xx", "reset", "connect-failure", "gateway-error"]);
    let mut p = policy(2, &[]);
    p.retry_on = all;
    let (result, flags, _) = run(&mut fake, Some(&p), &breakers(3), None, &stats, false).await;
    assert_eq!(
        result,
        Err("upstream overflow in fake: too many requests in flight".to_string())
    );
    assert_eq!(flags, ResponseFlags::NONE);
    assert_eq!(fake.sent.len(), 1);
}

#[tokio::test]
async fn a_cluster_without_hosts_is_no_healthy_upstream() {
    let mut fake = Fake::new(0, &[]);
    let stats = ClusterStats::default();
    let p = policy(2, &["5xx"]);
    let (result, _, _) = run(&mut fake, Some(&p), &breakers(3), None, &stats, false).await;
    assert_eq!(result, Err("no healthy upstream in fake".to_string()));
}
