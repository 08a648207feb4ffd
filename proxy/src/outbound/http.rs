//! Outbound HTTP: the local app's request, routed to a destination service and carried over
//! mutual TLS to one of its sidecars.
//!
//! The path, in order: find the service from `:authority`/Host (404 `NR` when none), clean the
//! headers (hop-by-hop, request id, forwarded proto, peer metadata), pick an endpoint (round
//! robin for now), send on the endpoint's multiplexed HTTP/2 connection (or the HTTP/1.1 pool),
//! and stream the response back with its telemetry finished at end of stream. HTTP/1.1 upgrades
//! (WebSocket) get a dedicated HTTP/1.1 mTLS connection that is spliced once both sides switch.

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::time::Instant;

use crate::context::ProxyContext;
use crate::http::body::ProxyBody;
use crate::http::errors::{ProxyError, is_grpc};
use crate::http::headers::{self, ORIG_PROTO, PEER_METADATA, X_FORWARDED_PROTO};
use crate::http::path::normalize_uri;
use crate::http::replay::{ReplayBody, ReplayHandle};
use crate::http::uri::{forward_uri, request_authority};
use crate::protocol::Protocol;
use crate::protocol::UpstreamProtocol;
use crate::resilience::breaker::Breakers;
use crate::resilience::retry::{
    HOST_SELECTION_MAX_ATTEMPTS, Outcome, PRIORITY_UPDATE_FREQUENCY, RetryPolicy,
};
use crate::route::action;
use crate::server::conn::ConnState;
use crate::snapshot::{Cluster, Endpoint, External, ExternalTarget, Snapshot};
use crate::snapshot::{Routed, Target};
use crate::telemetry::access_log::AccessLogEntry;
use crate::telemetry::exchange::{Exchange, Held, TrackedBody};
use crate::telemetry::labels::source_report;
use crate::telemetry::metrics::ClusterStats;
use crate::telemetry::peer::PeerWorkload;
use crate::transport::h1_pool::{H1Error, H1Limits, H1Pool};
use crate::transport::http1;
use hyper::client::conn::http2::SendRequest;

/// Internal header carrying the service port when the app's authority has none.
pub static DESTINATION_PORT: http::HeaderName = http::HeaderName::from_static("x-meshlite-port");

/// One downstream (app-side) connection's view.
#[derive(Clone, Debug)]
pub struct OutboundConn {
    /// Shared proxy state.
    pub ctx: Arc<ProxyContext>,
    /// Activity tracking of this connection.
    pub state: Arc<ConnState>,
    /// The app's address.
    pub remote: SocketAddr,
}

/// The checks every request gets at the edge, before it is routed ([`crate::http::framing`]).
pub fn edge_check<B>(state: &ConnState, req: &Request<B>) -> Result<(), ProxyError> {
    if state.saw_bare_lf() {
        return Err(ProxyError::BadRequest(
            "a request line ended with a bare LF",
        ));
    }
    crate::http::framing::check(req)
}

/// Handles one request from the local application.
pub async fn handle(
    conn: OutboundConn,
    req: Request<Incoming>,
) -> Result<Response<TrackedBody>, Infallible> {
    let start = Instant::now();
    let mut req = req;
    // Generated before anything is logged, so both sidecars' access logs carry the same id.
    headers::ensure_request_id(req.headers_mut());
    let in_flight = conn.state.start_request();
    let ctx = &conn.ctx;
    let snap = ctx.snapshot.load();
    let mut log = ctx
        .telemetry
        .access_log
        .is_some()
        .then(|| Box::new(AccessLogEntry::for_request(&req, "outbound", conn.remote)));
    let received = log.as_ref().map(|_| Arc::new(AtomicU64::new(0)));
    let grpc = is_grpc(req.headers());
    let rate = ctx.limits.body_rate(req.version(), grpc);
    let mut req = req.map(|b| ProxyBody::downstream(b, received.clone(), rate));

    // Framing that could be read two ways is refused; routes match the normalised path, the
    // one the destination authorizes and its app gets.
    let normalized = edge_check(&conn.state, &req).and_then(|()| {
        normalize_uri(req.uri_mut(), snap.path_normalization).map_err(ProxyError::from)
    });
    let routed = match (normalized, request_authority(&req)) {
        (Err(e), _) => Err(e),
        (Ok(()), None) => Err(ProxyError::NoHost),
        (Ok(()), Some(authority)) => snap
            .route(authority)
            .and_then(|hp| hp.select(crate::route::Head::of(&req), authority))
            .map_err(|miss| ProxyError::from_miss(miss, authority)),
    };
    let mut held = Held::default();
    let mut extra_flag = None;
    let mut response_ops = None;
    let (cluster, result) = match routed {
        Err(e) => (None, Err(e)),
        Ok(routed) => {
            let r = route_request(&conn, &snap, routed, req, log.as_deref_mut(), &mut held).await;
            extra_flag = r.flag;
            if r.result.is_ok() {
                response_ops = Some((
                    &routed.behaviour.response_headers,
                    routed.destination.map(|d| &d.response_headers),
                ));
            }
            let telemetry = routed.cluster.unwrap_or(routed.service);
            (Some(telemetry.clone()), r.result)
        }
    };
    let protocol = cluster
        .as_ref()
        .map(|c| c.protocol)
        .unwrap_or(Protocol::Http);
    let (resp, flags, peer) = match result {
        Ok((mut resp, endpoint)) => {
            let peer = endpoint.and_then(|e| PeerWorkload::learn(&e.peer, resp.headers()));
            let upgrading = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
            clean_response(ctx, resp.headers_mut(), upgrading);
            if let Some((route_ops, destination_ops)) = response_ops {
                route_ops.apply(resp.headers_mut());
                if let Some(ops) = destination_ops {
                    ops.apply(resp.headers_mut());
                }
            }
            (resp, extra_flag.unwrap_or("-"), peer)
        }
        Err(e) => {
            if let Some(l) = log.as_deref_mut() {
                l.upstream_transport_failure_reason = e.transport_reason();
            }
            let flag = match extra_flag {
                Some(extra) => combined_flag(e.flag(), extra),
                None => e.flag(),
            };
            tracing::debug!(error = %e, flag, "outbound request failed");
            (e.reply(grpc), flag, None)
        }
    };
    let labels = source_report(
        &snap.local,
        cluster.as_deref().map(|c| &c.labels),
        peer.as_deref(),
        protocol,
        resp.status().as_u16(),
        flags,
    );
    if let Some(l) = log.as_deref_mut() {
        l.response_code = resp.status().as_u16();
    }
    let mut exchange = Exchange::new(ctx.telemetry.clone(), labels, start, log, in_flight);
    exchange.hold(held);
    exchange.count_received(received);
    exchange.set_grpc_status(resp.headers());
    Ok(resp.map(|b| TrackedBody::new(b, Some(exchange))))
}

/// Applies the chosen rule to the request: fault injection, a rule that answers itself,
/// rewrites and header operations, mirroring, then sends it within the rule's timeout.
async fn route_request(
    conn: &OutboundConn,
    snap: &Snapshot,
    routed: Routed<'_>,
    req: Request<ProxyBody>,
    log: Option<&mut AccessLogEntry>,
    held: &mut Held,
) -> Dispatched {
    let b = routed.behaviour;
    let mut req = req;
    let mut flag = None;
    if let Some(fault) = &b.fault {
        if let Some(delay) = fault.delay(fastrand::u32(..1_000_000)) {
            tokio::time::sleep(delay).await;
            flag = Some("DI");
        }
        if let Some(abort) = fault.abort(fastrand::u32(..1_000_000)) {
            return Dispatched {
                result: Ok((aborted(abort), None)),
                flag: Some(if flag.is_some() { "DI,FI" } else { "FI" }),
            };
        }
    }
    // Local rate limits: the rule's, then the destination host's (the clock is read only
    // when there is one).
    let limited = b
        .rate_limit
        .as_ref()
        .is_some_and(|(_, l)| !l.try_take(Instant::now()))
        || routed
            .cluster
            .and_then(|c| c.rate_limit.as_ref())
            .is_some_and(|l| !l.try_take(Instant::now()));
    if limited {
        return Dispatched::failed(ProxyError::RateLimited);
    }
    if let Some(t) = &b.terminal {
        let authority = request_authority(&req).unwrap_or_default();
        let resp = action::terminal_response(t, req.uri(), authority);
        return Dispatched {
            result: Ok((resp, None)),
            flag,
        };
    }
    if let Err(e) = rewrite(&mut req, routed) {
        return Dispatched::failed(e);
    }
    let Some(cluster) = routed.cluster else {
        return Dispatched::failed(ProxyError::NoCluster(routed.service.name.to_string()));
    };
    if let Some((Target::Cluster(shadow), share)) = &b.mirror
        && share.hit(fastrand::u32(..1_000_000))
    {
        mirror(conn, snap, shadow, &mut req);
    }
    let sent = std::pin::pin!(attempts(
        conn,
        snap,
        cluster,
        b.retry.as_ref(),
        req,
        log,
        held
    ));
    let mut r = within(b.timeout, sent)
        .await
        .unwrap_or_else(|| Dispatched::failed(ProxyError::Timeout));
    if r.flag.is_none() {
        r.flag = flag;
    }
    r
}

/// The local reply of an injected abort: the HTTP status, or for gRPC a 200 whose
/// `grpc-status` carries the code (a trailers-only response).
fn aborted(abort: action::Abort) -> Response<ProxyBody> {
    match abort {
        action::Abort::Http(status) => {
            let mut r = Response::new(ProxyBody::full("fault filter abort"));
            *r.status_mut() = status;
            r
        }
        action::Abort::Grpc(code) => {
            let mut r = Response::new(ProxyBody::Empty);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            r.headers_mut()
                .insert("grpc-status", HeaderValue::from(code));
            r.headers_mut().insert(
                "grpc-message",
                HeaderValue::from_static("fault filter abort"),
            );
            r
        }
    }
}

/// The rule's `rewrite`, then its request header operations and its destination's (so a
/// destination's `set` wins). The path before a URI rewrite is kept in
/// `x-envoy-original-path`; a new authority goes into `Host`, with the URI made
/// origin-form so it is the one read.
fn rewrite(req: &mut Request<ProxyBody>, routed: Routed<'_>) -> Result<(), ProxyError> {
    let b = routed.behaviour;
    let dest_ops = routed.destination.map(|d| &d.request_headers);
    let mut host = None;
    if let Some(rw) = &b.rewrite {
        if let Some(path) = rw.path(req.uri(), routed.prefix_len) {
            let original = HeaderValue::try_from(req.uri().path()).ok();
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(
                http::uri::PathAndQuery::try_from(path)
                    .map_err(|e| ProxyError::UpstreamTerminated(format!("rewritten path: {e}")))?,
            );
            *req.uri_mut() = http::Uri::from_parts(parts)
                .map_err(|e| ProxyError::UpstreamTerminated(format!("rewritten URI: {e}")))?;
            if let Some(o) = original {
                req.headers_mut().insert(action::ORIGINAL_PATH.clone(), o);
            }
        }
        host = rw.authority.clone();
    }
    for ops in std::iter::once(&b.request_headers).chain(dest_ops) {
        if !ops.is_empty() {
            ops.apply(req.headers_mut());
            if ops.host.is_some() {
                host = ops.host.clone();
            }
        }
    }
    if let Some(host) = host {
        *req.uri_mut() = forward_uri(req.uri(), None)?;
        req.headers_mut().insert(header::HOST, host);
    }
    Ok(())
}

/// Sends a copy of the request to the shadow cluster, fire and forget: its response is
/// dropped, its failure only logged, and the original request never waits for it. A request
/// with a body is shadowed once its body is complete (see [`crate::http::tee`]).
fn mirror(
    conn: &OutboundConn,
    snap: &Snapshot,
    shadow: &Arc<Cluster>,
    req: &mut Request<ProxyBody>,
) {
    if shadow.external.is_some() {
        return;
    }
    let mut head = Request::new(ProxyBody::Empty);
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    let ctx = conn.ctx.clone();
    let peer = snap.local.peer_header.clone();
    let shadow = shadow.clone();
    let send = move |copy: Request<ProxyBody>| {
        tokio::spawn(async move {
            let Some((_, endpoint)) = shadow.pick(None) else {
                return;
            };
            let mut slot = Some(copy);
            match forward(&ctx, &peer, &shadow, &endpoint, &mut slot).await {
                Ok(resp) => {
                    // Drain so the stream completes and the connection stays reusable.
                    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                }
                Err(e) => tracing::debug!(cluster = %shadow.name, "mirrored request failed: {e}"),
            }
        });
    };
    if http_body::Body::is_end_stream(req.body()) {
        send(head);
        return;
    }
    let body = std::mem::take(req.body_mut());
    *req.body_mut() = ProxyBody::Tee(Box::new(crate::http::tee::TeeBody::new(
        body,
        Box::new(move |bytes| send(head.map(|_| ProxyBody::full(bytes)))),
    )));
}

/// What sending a request produced: the final response or failure, and the response flag
/// the retry logic adds (`URX`: attempts ran out; `UO`: a retry was refused by `maxRetries`
/// or the retry budget).
struct Dispatched {
    result: Result<(Response<ProxyBody>, Option<Arc<Endpoint>>), ProxyError>,
    flag: Option<&'static str>,
}

impl Dispatched {
    fn failed(e: ProxyError) -> Self {
        Self {
            result: Err(e),
            flag: None,
        }
    }
}

/// Envoy's comma-joined flags for a failure whose retries ended with `extra`.
fn combined_flag(base: &'static str, extra: &'static str) -> &'static str {
    match (base, extra) {
        ("UF", "URX") => "UF,URX",
        ("UC", "URX") => "UC,URX",
        ("UR", "URX") => "UR,URX",
        ("UT", "URX") => "UT,URX",
        ("UF", "UO") => "UF,UO",
        ("UC", "UO") => "UC,UO",
        ("UR", "UO") => "UR,UO",
        ("UT", "UO") => "UT,UO",
        (base, _) => base,
    }
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

/// Sends the request to `cluster` under its circuit breakers and the route's retry policy
/// (Envoy's router): each attempt goes to the endpoint the balancer picks (another than the
/// ones that failed, when the policy says so), is reported to outlier detection, and is
/// retried when the policy's `retryOn` matches its outcome, attempts remain, the request can
/// be sent again, and both `maxRetries` and the retry budgets allow it, after a jittered
/// exponential backoff. What must stay counted until the response stream ends goes into
/// `held`.
async fn attempts(
    conn: &OutboundConn,
    snap: &Snapshot,
    cluster: &Arc<Cluster>,
    retry: Option<&RetryPolicy>,
    req: Request<ProxyBody>,
    mut log: Option<&mut AccessLogEntry>,
    held: &mut Held,
) -> Dispatched {
    // `http2MaxRequests`: the request counts from here to the end of its response stream.
    let Some(permit) = cluster.breakers.requests.try_acquire() else {
        cluster.stats.pending_overflow.inc();
        return Dispatched::failed(ProxyError::Overflow(cluster.name.to_string()));
    };
    held.request = Some(permit);
    if let Some(l) = log.as_deref_mut() {
        l.upstream_cluster = Some(cluster.name.to_string());
    }
    // The request's hash; a hashing cookie it lacks is issued when the rule gives it a TTL.
    let (hash, issued) = match cluster.hash_on.as_ref() {
        None => (None, None),
        Some(h) => match h.hash(&req, conn.remote.ip()) {
            Some(hash) => (Some(hash), None),
            None => h
                .issue_cookie()
                .map_or((None, None), |(hash, c)| (Some(hash), Some(c))),
        },
    };
    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
    let policy = retry.filter(|p| p.num_retries > 0 && !upgrade);
    let mut req = req;
    let mut template = None;
    cluster.breakers.record_request();
    if let Some(p) = policy {
        if let Some(b) = &cluster.retry_budget {
            b.deposit(Instant::now());
        }
        let is_grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !http_body::Body::is_end_stream(req.body()) {
            let (parts, body) = req.into_parts();
            req = Request::from_parts(parts, ProxyBody::Replay(ReplayBody::new(body)));
        }
        // HTTP/1.1 upstreams (and services outside the mesh) connect inside the pool, so
        // even a connect failure needs a copy.
        if p.may_retry_after_send(is_grpc)
            || wire_protocol(cluster, &req) == UpstreamProtocol::Http1
            || cluster.external.is_some()
        {
            template = Some(Template::of(&req));
        }
    }
    let mut failed: Vec<usize> = Vec::new();
    // `retryRemoteLocalities`: the priorities attempted, and those excluded from the choice
    // (updated every PRIORITY_UPDATE_FREQUENCY attempts, as Istio configures Envoy).
    let mut attempted_priorities: Vec<u32> = Vec::new();
    let mut excluded_priorities: Vec<u32> = Vec::new();
    let mut _retrying = None;
    let mut attempt = 0u32;
    loop {
        let avoid = policy.is_some_and(|p| p.avoid_previous_hosts) && hash.is_none();
        let Some(host) = pick_host(
            cluster,
            hash,
            avoid.then_some(&failed[..]),
            &excluded_priorities,
        ) else {
            return Dispatched::failed(ProxyError::NoHealthyUpstream(cluster.name.to_string()));
        };
        if let Some(l) = log.as_deref_mut() {
            l.upstream_host = Some(host.label().to_string());
        }
        let mut slot = Some(req);
        let index = host.index();
        let (result, endpoint) = match host {
            Host::Mesh(_, endpoint) => {
                // In flight for least request until the response stream ends.
                held.endpoint = Some(endpoint.outstanding());
                let result = attempt_mesh(conn, snap, cluster, &endpoint, policy, &mut slot).await;
                report(cluster, index, &result);
                (result, Some(endpoint))
            }
            Host::External(_, target) => {
                let ext = cluster.external.as_ref();
                let sent = std::pin::pin!(async {
                    match (ext, slot.take()) {
                        (Some(ext), Some(req)) => forward_external(ext, target, req).await,
                        _ => Err(ProxyError::UpstreamTerminated("no request to send".into())),
                    }
                });
                (within_per_try(policy, sent).await, None)
            }
        };
        let outcome = match &result {
            Ok(resp) => Outcome::Response {
                status: resp.status().as_u16(),
                grpc_status: resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
                    .and_then(|v| v.parse().ok()),
            },
            Err(e) => e.retry_outcome(slot.is_some()),
        };
        let done = |flag| Dispatched {
            result: result.map(|mut resp| {
                if let Some(cookie) = &issued {
                    resp.headers_mut()
                        .append(header::SET_COOKIE, cookie.clone());
                }
                (resp, endpoint.clone())
            }),
            flag,
        };
        let Some(p) = policy.filter(|p| p.retriable(&outcome)) else {
            return done(None);
        };
        if attempt >= p.num_retries {
            cluster.stats.retry_limit_exceeded.inc();
            return done(Some("URX"));
        }
        let next = match slot.take() {
            Some(unsent) => unsent,
            None => match template.as_ref().and_then(Template::rebuild) {
                Some(again) => again,
                // The body went past the replay bound: this request cannot be sent again.
                None => return done(None),
            },
        };
        // The previous retry is over: it no longer counts against `maxRetries` or the budget.
        _retrying = None;
        let Some(permit) = cluster.breakers.try_retry(crate::balance::ewma::clock_ns()) else {
            cluster.stats.retry_overflow.inc();
            return done(Some("UO"));
        };
        if let Some(b) = &cluster.retry_budget
            && !b.withdraw(Instant::now())
        {
            cluster.stats.retry_overflow.inc();
            return done(Some("UO"));
        }
        _retrying = Some(permit);
        cluster.stats.retries.inc();
        attempt += 1;
        failed.push(index);
        if p.remote_localities {
            if let Some(priority) = cluster.priority_of(index)
                && !attempted_priorities.contains(&priority)
            {
                attempted_priorities.push(priority);
            }
            if attempt.is_multiple_of(PRIORITY_UPDATE_FREQUENCY) {
                excluded_priorities.clone_from(&attempted_priorities);
            }
        }
        drop(done(None));
        // The failed attempt is over: its endpoint stops counting it during the backoff.
        held.endpoint = None;
        tokio::time::sleep(p.backoff(attempt, &mut crate::balance::ThreadRandom)).await;
        req = next;
    }
}

/// Tells outlier detection how a request to endpoint `index` of `cluster` ended.
fn report(cluster: &Cluster, index: usize, result: &Result<Response<ProxyBody>, ProxyError>) {
    match result {
        Ok(resp) => cluster.report(index, resp.status().as_u16()),
        // A local overflow says nothing about the host.
        Err(ProxyError::Overflow(_)) => {}
        Err(e) => cluster.report_local_failure(index, e.outlier_status()),
    }
}

/// Where one attempt goes.
enum Host<'a> {
    /// A mesh endpoint, with its index in the cluster (outlier detection, retries).
    Mesh(usize, Arc<Endpoint>),
    /// An endpoint of a service outside the mesh, with its index (retries).
    External(usize, &'a ExternalTarget),
}

impl Host<'_> {
    fn index(&self) -> usize {
        match self {
            Host::Mesh(i, _) | Host::External(i, _) => *i,
        }
    }

    fn label(&self) -> &str {
        match self {
            Host::Mesh(_, e) => &e.addr_label,
            Host::External(_, t) => &t.label,
        }
    }
}

/// Picks where the next attempt goes, avoiding the `failed` hosts when given and the
/// priorities (localities) `tried_priorities` of a mesh cluster.
fn pick_host<'a>(
    cluster: &'a Cluster,
    hash: Option<u64>,
    failed: Option<&[usize]>,
    tried_priorities: &[u32],
) -> Option<Host<'a>> {
    match &cluster.external {
        None => pick_avoiding(failed, || cluster.pick_excluding(hash, tried_priorities))
            .map(|(i, e)| Host::Mesh(i, e)),
        Some(ext) => pick_avoiding(failed, || ext.pick()).map(|(i, t)| Host::External(i, t)),
    }
}

/// One attempt to a mesh endpoint, within the policy's per-try timeout; a response (or a
/// timeout) is timed for a latency-aware balancer.
async fn attempt_mesh(
    conn: &OutboundConn,
    snap: &Snapshot,
    cluster: &Cluster,
    endpoint: &Arc<Endpoint>,
    policy: Option<&RetryPolicy>,
    slot: &mut Option<Request<ProxyBody>>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let sent = std::pin::pin!(forward(
        &conn.ctx,
        &snap.local.peer_header,
        cluster,
        endpoint,
        slot
    ));
    let sent_at = cluster.observes_latency().then(Instant::now);
    let result = within_per_try(policy, sent).await;
    // Responses and timeouts are timed; a fast failure must not make an endpoint look fast
    // (outlier detection deals with failures).
    if let Some(at) = sent_at
        && matches!(&result, Ok(_) | Err(ProxyError::PerTryTimeout))
    {
        endpoint.latency.observe(
            at.elapsed(),
            crate::balance::ewma::clock_ns(),
            crate::balance::ewma::DEFAULT_DECAY,
        );
    }
    result
}

/// Awaits one attempt, cut at the policy's `perTryTimeout` when it has one.
async fn within_per_try<F>(policy: Option<&RetryPolicy>, sent: Pin<&mut F>) -> F::Output
where
    F: Future<Output = Result<Response<ProxyBody>, ProxyError>>,
{
    within(policy.and_then(|p| p.per_try_timeout), sent)
        .await
        .unwrap_or(Err(ProxyError::PerTryTimeout))
}

/// Awaits `sent` for at most `limit` (`None`: as long as it takes); `None` when cut.
///
/// The caller pins the future in its own state and lends it: moving a future into
/// `tokio::time::timeout` inside an async fn stores it twice, and these futures are the
/// whole request path (an outbound request's state went from 16.8 KB to 5.2 KB, each byte of
/// it copied when hyper takes the request's future).
async fn within<F: Future>(
    limit: Option<std::time::Duration>,
    sent: Pin<&mut F>,
) -> Option<F::Output> {
    match limit {
        None => Some(sent.await),
        Some(t) => tokio::time::timeout(t, sent).await.ok(),
    }
}

/// Picks with `pick`, avoiding the `failed` host indexes for up to Envoy's five tries when
/// given (the previous-hosts retry predicate).
fn pick_avoiding<T>(
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

/// Response hygiene on the way back to the app.
pub fn clean_response(ctx: &ProxyContext, h: &mut http::HeaderMap, upgrading: bool) {
    if upgrading {
        headers::strip_hop_by_hop_keep_upgrade(h);
    } else {
        headers::strip_hop_by_hop(h);
    }
    headers::strip_internal(h);
    match &ctx.headers.server_name {
        Some(name) => {
            if let Ok(v) = HeaderValue::from_str(name) {
                h.insert(header::SERVER, v);
            }
        }
        None => {
            h.remove(header::SERVER);
        }
    }
    match &ctx.headers.via {
        Some(via) => {
            if let Ok(v) = HeaderValue::from_str(via) {
                h.append(header::VIA, v);
            }
        }
        None => {
            h.remove(header::VIA);
        }
    }
}

/// Request hygiene on the way out. `peer_header` is this workload's peer metadata, from the
/// snapshot the request already loaded.
fn prepare(
    peer_header: &HeaderValue,
    cluster: &Cluster,
    req: &mut Request<ProxyBody>,
    upgrade: bool,
) {
    let was_http1 = req.version() != Version::HTTP_2;
    let h = req.headers_mut();
    if upgrade {
        headers::strip_hop_by_hop_keep_upgrade(h);
    } else {
        headers::strip_hop_by_hop(h);
    }
    headers::strip_internal(h);
    // Expect: 100-continue is answered by this proxy (hyper sends 100 when we read the body).
    h.remove(header::EXPECT);
    h.remove(&DESTINATION_PORT);
    headers::ensure_request_id(h);
    if !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    h.insert(PEER_METADATA.clone(), peer_header.clone());
    if was_http1 && !upgrade {
        h.insert(ORIG_PROTO.clone(), HeaderValue::from_static("HTTP/1.1"));
    }
    let has_port =
        request_authority(req).is_some_and(|a| crate::names::split_host_port(a).1.is_some());
    if !has_port {
        req.headers_mut()
            .insert(DESTINATION_PORT.clone(), cluster.port_header.clone());
    }
}

/// How `req` travels to a sidecar of `cluster`. In http1 mode HTTP/1.1 from the app stays
/// HTTP/1.1, as Istio carries it by default (no `h2UpgradePolicy`); HTTP/2 requests and
/// `http2`/`grpc` services always travel as HTTP/2 (gRPC needs its trailers).
fn wire_protocol<B>(cluster: &Cluster, req: &Request<B>) -> UpstreamProtocol {
    match cluster.upstream {
        UpstreamProtocol::Http1
            if req.version() != Version::HTTP_2 && cluster.protocol == Protocol::Http =>
        {
            UpstreamProtocol::Http1
        }
        _ => UpstreamProtocol::H2,
    }
}

/// One attempt to `endpoint`. The request stays in `slot` until the connection is there: a
/// connect failure leaves it in hand, unsent, for the next attempt.
async fn forward(
    ctx: &ProxyContext,
    peer_header: &HeaderValue,
    cluster: &Cluster,
    endpoint: &Arc<Endpoint>,
    slot: &mut Option<Request<ProxyBody>>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Some(req) = slot.as_mut() else {
        return Err(ProxyError::UpstreamTerminated("no request to send".into()));
    };
    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
    let wire = wire_protocol(cluster, req);
    prepare(peer_header, cluster, req, upgrade);
    let authority = request_authority(req).and_then(|a| http::uri::Authority::try_from(a).ok());
    match wire {
        _ if upgrade => {
            let req = slot.take().ok_or(ProxyError::UpgradeRefused)?;
            // Boxed: rare, and its handshake would otherwise size every request's state.
            Box::pin(forward_upgrade(ctx, cluster, endpoint, req)).await
        }
        UpstreamProtocol::H2 => {
            let sender = h2_sender(Some(cluster), endpoint).await?;
            let Some(req) = slot.take() else {
                return Err(ProxyError::UpstreamTerminated("no request to send".into()));
            };
            let authority = authority.unwrap_or_else(|| cluster.authority.clone());
            let (mut parts, body) = req.into_parts();
            parts.headers.remove(header::HOST);
            parts.uri = forward_uri(&parts.uri, Some(authority))?;
            parts.version = Version::HTTP_2;
            send_on(
                sender,
                Some(cluster),
                endpoint,
                Request::from_parts(parts, body),
            )
            .await
        }
        UpstreamProtocol::Http1 => {
            let Some(req) = slot.take() else {
                return Err(ProxyError::UpstreamTerminated("no request to send".into()));
            };
            let (mut parts, body) = req.into_parts();
            if let Some(a) = &authority
                && let Ok(v) = HeaderValue::from_str(a.as_str())
            {
                parts.headers.insert(header::HOST, v);
            }
            parts.uri = forward_uri(&parts.uri, None)?;
            parts.version = Version::HTTP_11;
            send_h1(
                &endpoint.h1,
                Request::from_parts(parts, body),
                &cluster.breakers,
                &cluster.stats,
                &cluster.name,
            )
            .await
        }
    }
}

/// Sends to a service outside the mesh: straight to its endpoint over the plaintext pool,
/// with the app's own Host, and nothing of the mesh's (no peer metadata, no internal
/// headers). Protocol upgrades are not carried to services outside the mesh.
async fn forward_external(
    ext: &External,
    target: &ExternalTarget,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let h = &mut parts.headers;
    headers::strip_hop_by_hop(h);
    headers::strip_internal(h);
    h.remove(&PEER_METADATA);
    h.remove(header::EXPECT);
    h.remove(&DESTINATION_PORT);
    if !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if !h.contains_key(header::HOST)
        && let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        h.insert(header::HOST, v);
    }
    parts.uri = forward_uri(&parts.uri, Some(target.authority.clone()))?;
    parts.version = Version::HTTP_11;
    let resp = ext
        .client
        .request(Request::from_parts(parts, body))
        .await
        .map_err(|e| ProxyError::from_direct(e, target.authority.as_str()))?;
    Ok(resp.map(ProxyBody::from))
}

/// Sends a request this proxy makes itself (an external authorization check) to an
/// endpoint of `cluster` its balancer picks, as an app's request to that service travels:
/// over mutual TLS to the endpoint's sidecar, or in plaintext to a service outside the mesh.
/// No route rules, retries or request telemetry apply; responses feed outlier detection as
/// any other. `peer_header` is this workload's peer metadata.
pub async fn send_to_cluster(
    ctx: &ProxyContext,
    peer_header: &HeaderValue,
    cluster: &Cluster,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    match pick_host(cluster, None, None, &[]) {
        None => Err(ProxyError::NoHealthyUpstream(cluster.name.to_string())),
        Some(Host::External(_, target)) => match &cluster.external {
            Some(ext) => forward_external(ext, target, req).await,
            None => Err(ProxyError::NoCluster(cluster.name.to_string())),
        },
        Some(Host::Mesh(index, endpoint)) => {
            let _in_flight = endpoint.outstanding();
            let result = forward(ctx, peer_header, cluster, &endpoint, &mut Some(req)).await;
            report(cluster, index, &result);
            result
        }
    }
}

/// Sends on the endpoint's shared HTTP/2 connection (see [`send_on`]).
pub async fn send_h2(
    cluster: Option<&Cluster>,
    endpoint: &Endpoint,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let sender = h2_sender(cluster, endpoint).await?;
    send_on(sender, cluster, endpoint, req).await
}

/// Sends on one of `pool`'s HTTP/1.1 connections under the `tcp.maxConnections` and
/// `http1MaxPendingRequests` of `breakers`, counting overflows in `stats` of cluster `name`.
pub async fn send_h1(
    pool: &H1Pool,
    req: Request<ProxyBody>,
    breakers: &Breakers,
    stats: &ClusterStats,
    name: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    let limits = H1Limits {
        connections: &breakers.connections,
        pending: &breakers.pending,
        cx_overflow: &stats.cx_overflow,
    };
    let sent = pool.send(req, Some(limits)).await;
    if let Err(H1Error::Overflow) = &sent {
        stats.pending_overflow.inc();
    }
    sent.map_err(|e| ProxyError::from_h1(e, name))
}

/// A sender on the endpoint's HTTP/2 connection, connecting if there is none. A request
/// that has to wait for a connection is pending: `cluster`'s `http1MaxPendingRequests`
/// bounds how many may wait.
async fn h2_sender(
    cluster: Option<&Cluster>,
    endpoint: &Endpoint,
) -> Result<SendRequest<ProxyBody>, ProxyError> {
    if let Some(s) = endpoint.h2.live() {
        return Ok(s);
    }
    let _pending = match cluster {
        Some(c) => Some(c.breakers.pending.try_acquire().ok_or_else(|| {
            c.stats.pending_overflow.inc();
            ProxyError::Overflow(c.name.to_string())
        })?),
        None => None,
    };
    Ok(endpoint.h2.sender().await?)
}

/// Sends on `sender`. A request the connection never took (it was closing) is sent again
/// once on a fresh connection; nothing that reached the peer is.
async fn send_on(
    sender: SendRequest<ProxyBody>,
    cluster: Option<&Cluster>,
    endpoint: &Endpoint,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut req = req;
    let mut sender = sender;
    for attempt in 0..2 {
        if attempt > 0 {
            sender = h2_sender(cluster, endpoint).await?;
        }
        if sender.ready().await.is_err() {
            endpoint.h2.evict(&sender);
            if attempt == 0 {
                continue;
            }
        }
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok(resp.map(ProxyBody::from)),
            Err(mut e) => {
                endpoint.h2.evict(&sender);
                match e.take_message() {
                    Some(unsent) if attempt == 0 => {
                        req = unsent;
                        continue;
                    }
                    _ => return Err(ProxyError::from_upstream(e.error())),
                }
            }
        }
    }
    Err(ProxyError::UpstreamTerminated(
        "connection closed before the request was sent".into(),
    ))
}

async fn forward_upgrade(
    ctx: &ProxyContext,
    cluster: &Cluster,
    endpoint: &Endpoint,
    mut req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let downstream = hyper::upgrade::on(&mut req);
    let tls =
        (!endpoint.plaintext).then(|| (cluster.tls_http1.clone(), cluster.server_name.clone()));
    let mut sender = http1::dedicated(endpoint.addr, tls, ctx.connect_timeout).await?;
    let (mut parts, body) = req.into_parts();
    parts.uri = forward_uri(&parts.uri, None)?;
    let mut resp = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|e| ProxyError::from_upstream(&e))?;
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(splice(downstream, upstream));
    }
    Ok(resp.map(ProxyBody::from))
}

/// Joins two upgraded connections once both have switched protocols.
pub async fn splice(a: hyper::upgrade::OnUpgrade, b: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(a, b) {
        Ok((a, b)) => {
            let mut a = TokioIo::new(a);
            let mut b = TokioIo::new(b);
            if let Err(e) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
                tracing::debug!("upgraded connection ended: {e}");
            }
        }
        Err(e) => tracing::debug!("upgrade did not complete: {e}"),
    }
}
