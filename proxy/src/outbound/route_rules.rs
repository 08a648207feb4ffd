//! The route-rules stage of the outbound path: what the VirtualService rule a request
//! matched does to it before it is sent, in Envoy's filter order: fault injection (a delay,
//! then an abort answered locally), local rate limits (the rule's, then the destination
//! host's), a rule that answers itself (redirect, direct response), the rule's rewrite and
//! header operations, then the next stage (mirroring and the cluster) within the rule's
//! timeout. Mirroring lives here too: [`mirror`] sends a fire-and-forget copy.

use http::header::{self, HeaderValue};
use http::{Request, Response};
use std::future::Future;
use std::sync::Arc;

use crate::context::ProxyContext;
use crate::message::body::ProxyBody;
use crate::message::errors::{ProxyError, fault_abort, is_grpc};
use crate::message::response_flags::ResponseFlags;
use crate::message::uri::{forward_uri, request_authority};
use crate::resilience::rate_limit::TokenBucket;
use crate::resilience::retry_loop::within;
use crate::route::action;
use crate::snapshot::Cluster;
use crate::snapshot::{Destination, RouteBehaviour};
use crate::transport::forward;

/// The rule a request matched, as this stage reads it.
#[derive(Clone, Copy)]
pub struct Rule<'a> {
    /// What the rule does on the way.
    pub behaviour: &'a RouteBehaviour,
    /// The weighted destination chosen, with its header operations.
    pub destination: Option<&'a Destination>,
    /// How much of the path a `rewrite.uri` replaces.
    pub prefix_len: Option<usize>,
    /// The destination host's own local rate limit.
    pub host_rate_limit: Option<&'a TokenBucket>,
}

/// What a request routed through the rules produced: the response (with the mesh endpoint
/// `E` that gave it, if any) or failure, and the flags set on the way (`DI`, `FI`, and the
/// retry loop's `URX`/`UO`).
#[derive(Debug)]
pub struct Dispatched<E> {
    /// The response and its endpoint, or why there is none.
    pub result: Result<(Response<ProxyBody>, Option<E>), ProxyError>,
    /// Flags of the rules and the retries.
    pub flags: ResponseFlags,
}

impl<E> Dispatched<E> {
    /// A request that failed.
    pub fn failed(e: ProxyError) -> Self {
        Self {
            result: Err(e),
            flags: ResponseFlags::NONE,
        }
    }

    /// A reply of the rules themselves, with `flags`.
    fn local(resp: Response<ProxyBody>, flags: ResponseFlags) -> Self {
        Self {
            result: Ok((resp, None)),
            flags,
        }
    }
}

/// Applies `rule` to `req`, then hands it to `next` within the rule's timeout (504 `UT`
/// when it expires). `roll` draws the per-million numbers fault injection rolls.
pub async fn apply<E, N, F>(
    rule: Rule<'_>,
    mut req: Request<ProxyBody>,
    mut roll: impl FnMut() -> u32,
    next: N,
) -> Dispatched<E>
where
    N: FnOnce(Request<ProxyBody>) -> F,
    F: Future<Output = Dispatched<E>>,
{
    let b = rule.behaviour;
    let mut flags = ResponseFlags::NONE;
    if let Some(fault) = &b.fault {
        if let Some(delay) = fault.delay(roll()) {
            tokio::time::sleep(delay).await;
            flags = ResponseFlags::DI;
        }
        if let Some(abort) = fault.abort(roll()) {
            let resp = fault_abort(abort, is_grpc(req.headers()));
            return Dispatched::local(resp, flags | ResponseFlags::FI);
        }
    }
    // Local rate limits: the rule's, then the destination host's (the clock is read only
    // when there is one).
    let limited = b
        .rate_limit
        .as_ref()
        .is_some_and(|(_, l)| !l.try_take(tokio::time::Instant::now()))
        || rule
            .host_rate_limit
            .is_some_and(|l| !l.try_take(tokio::time::Instant::now()));
    if limited {
        return Dispatched::failed(ProxyError::RateLimited);
    }
    if let Some(t) = &b.terminal {
        let authority = request_authority(&req).unwrap_or_default();
        let resp = action::terminal_response(t, req.uri(), authority);
        return Dispatched::local(resp, flags);
    }
    if let Err(e) = rewrite(&mut req, rule) {
        return Dispatched::failed(e);
    }
    let sent = std::pin::pin!(next(req));
    let mut r = within(b.timeout, sent)
        .await
        .unwrap_or_else(|| Dispatched::failed(ProxyError::Timeout));
    if r.flags.is_empty() {
        r.flags = flags;
    }
    r
}

/// The rule's `rewrite`, then its request header operations and its destination's (so a
/// destination's `set` wins). The path before a URI rewrite is kept in
/// `x-envoy-original-path`; a new authority goes into `Host`, with the URI made
/// origin-form so it is the one read.
fn rewrite(req: &mut Request<ProxyBody>, rule: Rule<'_>) -> Result<(), ProxyError> {
    let b = rule.behaviour;
    let dest_ops = rule.destination.map(|d| &d.request_headers);
    let mut host = None;
    if let Some(rw) = &b.rewrite {
        if let Some(path) = rw.path(req.uri(), rule.prefix_len) {
            let original = HeaderValue::try_from(req.uri().path()).ok();
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(
                http::uri::PathAndQuery::try_from(path)
                    .map_err(|e| ProxyError::InvalidRewrite(format!("path: {e}")))?,
            );
            *req.uri_mut() = http::Uri::from_parts(parts)
                .map_err(|e| ProxyError::InvalidRewrite(format!("URI: {e}")))?;
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
/// with a body is shadowed once its body is complete (see [`crate::message::tee`]).
/// `peer_header` is this workload's peer metadata.
pub fn mirror(
    ctx: &Arc<ProxyContext>,
    peer_header: &HeaderValue,
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
    let ctx = ctx.clone();
    let peer = peer_header.clone();
    let shadow = shadow.clone();
    let send = move |copy: Request<ProxyBody>| {
        tokio::spawn(async move {
            let Some((_, endpoint)) = shadow.pick(None) else {
                return;
            };
            match forward::to_sidecar(&ctx, &peer, &shadow, &endpoint, copy).await {
                Ok(resp) => {
                    // Drain so the stream completes and the connection stays reusable.
                    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                }
                Err(e) => tracing::debug!(
                    cluster = %shadow.name,
                    "mirrored request failed: {}", e.error
                ),
            }
        });
    };
    if http_body::Body::is_end_stream(req.body()) {
        send(head);
        return;
    }
    let body = std::mem::take(req.body_mut());
    *req.body_mut() = ProxyBody::Tee(Box::new(crate::message::tee::TeeBody::new(
        body,
        Box::new(move |bytes| send(head.map(|_| ProxyBody::full(bytes)))),
    )));
}

#[cfg(test)]
#[path = "route_rules_tests.rs"]
mod tests;
