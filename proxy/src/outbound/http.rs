//! The edge of the outbound path: a request from the local app enters here, and its reply
//! leaves here with its telemetry.
//!
//! The stages, in order: this edge (framing checks, path normalisation, a request id, the
//! access log entry and the body counters; then the service found from `:authority`/Host,
//! 404 `NR` when none, and its rule selected), the rule's stage
//! ([`super::route_rules`]: faults, rate limits, redirects, rewrites, mirroring, the
//! timeout), the cluster stage ([`super::upstream`]: circuit breaker, hashing, the retry
//! loop of [`crate::resilience::retry_loop`], the balancer's pick), and the forwarder
//! ([`crate::transport::forward`]). Back here, the response is cleaned
//! ([`crate::message::headers::to_downstream`]), the rule's response header operations
//! applied, a failure turned into its local reply ([`ProxyError::reply`]), and the telemetry
//! finished at end of stream ([`TrackedBody`]).

use futures_util::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;

use super::route_rules::{self, Dispatched, Rule};
use super::upstream;
use crate::context::ProxyContext;
use crate::message::body::{BodyCount, ProxyBody};
use crate::message::errors::{ProxyError, is_grpc};
use crate::message::headers;
use crate::message::path::normalize_uri;
use crate::message::response_flags::ResponseFlags;
use crate::message::uri::request_authority;
use crate::protocol::Protocol;
use crate::server::conn::ConnState;
use crate::snapshot::{Routed, Snapshot, Target};
use crate::telemetry::access_log::AccessLogEntry;
use crate::telemetry::exchange::{BreakerPermits, Exchange, TagInput, TrackedBody};
use crate::telemetry::labels::source_report;
use crate::telemetry::peer::WorkloadMetadata;
use crate::telemetry::trace::SpanKind;
use crate::telemetry::workload::Reporter::Source as SOURCE;

/// One downstream (app-side) connection's view.
#[derive(Clone, Debug)]
pub struct OutboundConn {
    /// Shared proxy state.
    pub ctx: Arc<ProxyContext>,
    /// Activity tracking of this connection.
    pub state: Arc<ConnState>,
    /// The app's address.
    pub remote: SocketAddr,
    /// Where the app was sending, when the capture rules redirected the connection here;
    /// `None` in explicit mode (the app addressed this listener). Shared, not inline: the
    /// value is cloned per request, and explicit connections should not carry its size.
    pub original_dst: Option<Arc<SocketAddr>>,
}

/// The checks every request gets at the edge, before it is routed ([`crate::message::framing`]).
pub fn edge_check<B>(state: &ConnState, req: &Request<B>) -> Result<(), ProxyError> {
    if state.saw_bare_lf() {
        return Err(ProxyError::BadRequest(
            "a request line ended with a bare LF",
        ));
    }
    crate::message::framing::check(req)
}

/// Headers a request gains on its way to another sidecar ([`headers::to_sidecar`]).
const ADDED_HEADERS: usize = 4;

/// Handles one request from the local application.
pub async fn handle(
    conn: OutboundConn,
    req: Request<Incoming>,
) -> Result<Response<TrackedBody>, Infallible> {
    let start = Instant::now();
    let mut req = req;
    // Room for what the hop adds (request id, x-forwarded-proto, peer metadata, port): one
    // growth of the map hyper sized to the parsed head, not one per insert.
    // Best effort: a map that cannot grow now fails at the insert, as without this.
    let _ = req.headers_mut().try_reserve(ADDED_HEADERS);
    // Generated before anything is logged, so both sidecars' access logs carry the same id.
    headers::ensure_request_id(req.headers_mut());
    let in_flight = conn.state.start_request();
    let ctx = &conn.ctx;
    let snap = ctx.snapshot.load();
    // The trace decision, written into the headers the request goes on with; a span when
    // sampled (the CLIENT span of Envoy's outbound listener).
    let mut span = snap.tracing.start(SpanKind::Client, &mut req, conn.remote);
    // `tagOverrides` values that read the request keep what they read until it ends.
    let tag_input = snap
        .telemetry
        .tag_overrides(SOURCE)
        .filter(|t| t.reads_request())
        .map(|_| Box::new(TagInput::of(&req)));
    let mut log = AccessLogEntry::begin(&ctx.telemetry, &snap.telemetry, SOURCE, &req, conn.remote);
    // A request without a body has nothing to count.
    let received = (!hyper::body::Body::is_end_stream(req.body())).then(Arc::<BodyCount>::default);
    let grpc = is_grpc(req.headers());
    let rate = ctx.limits.body_rate(req.version(), grpc);
    // While hyper reads the body, the connection keeps its buffers.
    let open = received.is_some().then(|| conn.state.open_body());
    let mut req = req.map(|b| ProxyBody::downstream(b, received.clone(), grpc, rate, open));

    // Framing that could be read two ways is refused; routes match the normalised path, the
    // one the destination authorizes and its app gets.
    let normalized = edge_check(&conn.state, &req).and_then(|()| {
        normalize_uri(req.uri_mut(), snap.path_normalization).map_err(ProxyError::from)
    });
    let mut snap = snap;
    let mut fetched = false;
    let mut refused = normalized.err();
    let routed = loop {
        if let Some(e) = refused.take() {
            break Err(e);
        }
        let routed = match (request_authority(&req), conn.original_dst.as_deref()) {
            (None, None) => Err(ProxyError::NoHost),
            (Some(authority), None) => snap
                .route(authority)
                .and_then(|hp| hp.select(crate::route::Head::of(&req), authority))
                .map_err(|miss| ProxyError::from_miss(miss, authority)),
            // Captured: the service the connection was addressed to, or the one Host names on
            // that port.
            (authority, Some(dst)) => {
                let authority = authority.unwrap_or("");
                snap.route_captured(authority, *dst)
                    .and_then(|hp| hp.select(crate::route::Head::of(&req), authority))
                    .map_err(|miss| ProxyError::from_miss(miss, authority))
            }
        };
        // A service fetched on demand and not here yet: asked for once, then routed again
        // on the snapshot that holds it.
        if let Ok(Routed {
            cluster: Some(c), ..
        }) = &routed
            && c.awaiting()
            && !fetched
        {
            fetched = true;
            let host = c.labels.service.fqdn.clone();
            match ctx.fetch(&host).await {
                Ok(s) => {
                    snap = arc_swap::Guard::from_inner(s);
                    continue;
                }
                Err(e) => break Err(e),
            }
        }
        break routed;
    };
    let mut permits = BreakerPermits::default();
    let mut route_flags = ResponseFlags::NONE;
    let mut response_ops = None;
    let (cluster, result) = match routed {
        Err(e) => (None, Err(e)),
        Ok(routed) => {
            let r = route(&conn, &snap, routed, req, log.as_deref_mut(), &mut permits).await;
            route_flags = r.flags;
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
    if let (Some(s), Some(c)) = (span.as_deref_mut(), cluster.as_deref()) {
        s.route(&c.labels.service.fqdn, c.port, &c.name);
    }
    let protocol = cluster
        .as_ref()
        .map(|c| c.protocol)
        .unwrap_or(Protocol::Http);
    let (resp, flags, peer) = match result {
        Ok((mut resp, endpoint)) => {
            let peer = endpoint.and_then(|e| WorkloadMetadata::learn(&e.peer, resp.headers()));
            headers::response_to_downstream(&mut resp, &ctx.headers);
            if let Some((route_ops, destination_ops)) = response_ops {
                route_ops.apply(resp.headers_mut());
                if let Some(ops) = destination_ops {
                    ops.apply(resp.headers_mut());
                }
            }
            (resp, route_flags, peer)
        }
        Err(e) => {
            if let Some(l) = log.as_deref_mut() {
                l.upstream_transport_failure_reason = e.transport_reason();
            }
            let flags = e.flag_after_retries(route_flags);
            tracing::debug!(error = %e, %flags, "outbound request failed");
            (e.reply(grpc), flags, None)
        }
    };
    let labels = source_report(
        &snap.local,
        cluster.as_deref().map(|c| &c.labels),
        peer.as_ref(),
        protocol,
        resp.status().as_u16(),
        flags,
    );
    if let Some(l) = log.as_deref_mut() {
        l.responded(&resp);
    }
    let mut exchange = Exchange::new(ctx.telemetry.clone(), labels, start, log, in_flight);
    exchange.hold(permits);
    exchange.trace(span);
    exchange.count_received(received);
    exchange.set_grpc(grpc);
    exchange.skip_metrics(snap.telemetry.disabled_metrics(SOURCE));
    if let Some(tags) = snap.telemetry.tag_overrides(SOURCE) {
        exchange.override_tags(tags.clone(), tag_input);
    }
    exchange.set_grpc_status(resp.headers());
    Ok(resp.map(|b| TrackedBody::new(b, Some(exchange))))
}

/// The routed request through the rule's stage, whose next stage mirrors it when the rule
/// says and sends it to the rule's cluster. Not an `async fn`: the stages' own futures are
/// returned, not wrapped (each wrapper would store the request once more).
fn route<'a>(
    conn: &'a OutboundConn,
    snap: &'a Snapshot,
    routed: Routed<'a>,
    req: Request<ProxyBody>,
    log: Option<&'a mut AccessLogEntry>,
    permits: &'a mut BreakerPermits,
) -> impl Future<Output = Dispatched<Arc<crate::snapshot::Endpoint>>> + 'a {
    let rule = Rule {
        behaviour: routed.behaviour,
        destination: routed.destination,
        prefix_len: routed.prefix_len,
        host_rate_limit: routed.cluster.and_then(|c| c.rate_limit.as_deref()),
    };
    let roll = || fastrand::u32(..1_000_000);
    route_rules::apply(rule, req, roll, move |mut req| {
        let Some(cluster) = routed.cluster else {
            let e = ProxyError::NoCluster(routed.service.name.to_string());
            return Either::Left(std::future::ready(Dispatched::failed(e)));
        };
        let peer_header = &snap.local.peer_header;
        if let Some((Target::Cluster(shadow), share)) = &routed.behaviour.mirror
            && share.hit(fastrand::u32(..1_000_000))
        {
            route_rules::mirror(&conn.ctx, peer_header, shadow.get(), &mut req);
        }
        let origin = upstream::Origin {
            ctx: &conn.ctx,
            peer_header,
            remote: conn.remote.ip(),
        };
        let retry = routed.behaviour.retry.as_ref();
        Either::Right(upstream::dispatch(
            origin,
            cluster.get(),
            retry,
            req,
            log,
            permits,
        ))
    })
}

#[cfg(test)]
#[path = "edge_tests.rs"]
mod tests;
