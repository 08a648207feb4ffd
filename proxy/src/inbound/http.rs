//! Inbound HTTP: a request from another sidecar, already authenticated by mutual TLS, handed to
//! the local application.
//!
//! The target port comes from meshlite's port header or the `:authority` port (a workload with a
//! single port needs neither). HTTP/1.1 that travelled as HTTP/2 is restored to HTTP/1.1 for the
//! app; `http2`/`grpc` ports get h2c. The verified peer identity is passed to the app in
//! `x-forwarded-client-cert` (Istio's sanitize-and-set behaviour); internal headers are removed.
//! CONNECT opens a TCP tunnel to ports declared `tcp` and nowhere else.

use http::header::HeaderValue;
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;

use crate::context::ProxyContext;
use crate::message::body::{BodyCount, ProxyBody};
use crate::message::errors::{ProxyError, is_grpc};
use crate::message::headers::{self, DESTINATION_PORT, ORIG_PROTO, PEER_METADATA};
use crate::message::path::normalize_uri;
use crate::message::response_flags::ResponseFlags;
use crate::message::uri::request_authority;
use crate::names::split_host_port;
use crate::outbound::http::edge_check;
use crate::outbound::upstream::ClusterSender;
use crate::policy::authz::{Attributes, Peer, Request as AuthzRequest, RequestAuth};
use crate::policy::ext_authz::{self, Connection, HeaderChanges};
use crate::policy::inbound::MtlsMode;
use crate::protocol::Protocol;
use crate::server::conn::ConnState;
use crate::snapshot::InboundPort;
use crate::snapshot::Snapshot;
use crate::telemetry::access_log::AccessLogEntry;
use crate::telemetry::exchange::{BreakerPermits, Exchange, TagInput, TrackedBody};
use crate::telemetry::istio::MetricSet;
use crate::telemetry::istio::TcpEvent;
use crate::telemetry::labels::{Caller, destination_report};
use crate::telemetry::metrics::Label;
use crate::telemetry::peer::WorkloadMetadata;
use crate::telemetry::trace::SpanKind;
use crate::telemetry::workload::Reporter::Destination as DESTINATION;
use crate::transport::connect::connect_tcp;
use crate::transport::forward;

/// One connection from a caller: another sidecar over mutual TLS, or a plaintext client
/// of a PERMISSIVE or DISABLE port.
#[derive(Clone, Debug)]
pub struct InboundConn {
    /// Shared proxy state.
    pub ctx: Arc<ProxyContext>,
    /// Activity tracking of this connection.
    pub state: Arc<ConnState>,
    /// The caller's address.
    pub remote: SocketAddr,
    /// The address it connected to.
    pub local: SocketAddr,
    /// The caller's verified identity; `None` for plaintext.
    pub identity: Option<Arc<Peer>>,
    /// The caller's principal as a metric label (`unknown` for plaintext).
    pub principal: Label,
    /// `x-forwarded-client-cert` value for this connection, computed once (mTLS only).
    pub xfcc: Option<HeaderValue>,
    /// The TLS server name the caller sent.
    pub sni: Option<Arc<str>>,
    /// The caller's workload labels, learnt from its first request on this connection.
    pub peer: Arc<arc_swap::ArcSwapOption<WorkloadMetadata>>,
    /// The port the caller addressed, when the capture rules redirected the connection here
    /// (a caller without a sidecar calling the pod's port).
    pub original_port: Option<u16>,
}

impl InboundConn {
    /// The state of a new connection.
    pub fn new(
        ctx: Arc<ProxyContext>,
        state: Arc<ConnState>,
        remote: SocketAddr,
        local: SocketAddr,
        identity: Option<Arc<Peer>>,
        xfcc: Option<HeaderValue>,
        sni: Option<Arc<str>>,
    ) -> Self {
        let principal = identity
            .as_ref()
            .map(|p| p.principal_label().clone())
            .unwrap_or_else(crate::telemetry::peer::unknown);
        Self {
            ctx,
            state,
            remote,
            local,
            identity,
            principal,
            xfcc,
            sni,
            peer: Arc::new(arc_swap::ArcSwapOption::empty()),
            original_port: None,
        }
    }

    /// The same connection, redirected here by the capture rules from `port`.
    pub fn with_original_port(mut self, port: Option<u16>) -> Self {
        self.original_port = port;
        self
    }

    /// What authorization reads of this connection; `request` for an HTTP request.
    fn attributes<'a>(
        &'a self,
        workload_port: u16,
        remote_ip: std::net::IpAddr,
        request: Option<AuthzRequest<'a>>,
    ) -> Attributes<'a> {
        Attributes {
            peer: self.identity.as_deref(),
            source_ip: self.remote.ip(),
            remote_ip,
            destination_ip: self.local.ip(),
            destination_port: workload_port,
            sni: self.sni.as_deref(),
            request,
        }
    }

    /// Whether the connection's kind may reach a port of `mode`; if not, counted and
    /// logged.
    fn admitted(&self, port: u16, mode: MtlsMode) -> Result<(), Refused> {
        let (ok, reason) = if self.identity.is_some() {
            (mode.accepts_mtls(), "mtls_under_disable")
        } else {
            (mode.accepts_plaintext(), "plaintext_under_strict")
        };
        if ok {
            return Ok(());
        }
        self.ctx.telemetry.metrics.security.refused(reason);
        tracing::info!(remote = %self.remote, port, reason, mode = mode.as_str(), "inbound request refused, connection closed");
        Err(Refused(reason))
    }
}

/// A request refused with no answer: the connection is closed (PeerAuthentication said
/// this caller may not use the port at all).
#[derive(Debug)]
pub struct Refused(&'static str);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused: {}", self.0)
    }
}

impl std::error::Error for Refused {}

/// `remote.ip`: the `x-forwarded-for` entry `trusted` proxies from the right (Envoy's
/// `xff_num_trusted_hops`), or the connection's peer when the header has no such entry.
fn remote_ip(headers: &http::HeaderMap, peer: std::net::IpAddr, trusted: u32) -> std::net::IpAddr {
    let Some(xff) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) else {
        return peer;
    };
    let n = usize::try_from(trusted).unwrap_or(usize::MAX);
    xff.rsplit(',')
        .nth(n)
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or(peer)
}

/// Handles one request from a caller.
pub async fn handle(
    conn: InboundConn,
    req: Request<Incoming>,
) -> Result<Response<TrackedBody>, Refused> {
    let start = Instant::now();
    let mut req = req;
    let in_flight = conn.state.start_request();
    let ctx = &conn.ctx;
    let snap = ctx.snapshot.load();
    // The SERVER span, child of the caller's; its id goes to the app in the trace headers.
    let mut span = snap.tracing.start(SpanKind::Server, &mut req, conn.remote);
    // `tagOverrides` values that read the request keep what they read until it ends.
    let tag_input = snap
        .telemetry
        .tag_overrides(DESTINATION)
        .filter(|t| t.reads_request())
        .map(|_| Box::new(TagInput::of(&req)));
    if let (Some(s), Some(id)) = (span.as_deref_mut(), conn.identity.as_ref()) {
        s.tag(
            "downstream_principal",
            format!("spiffe://{}", id.principal()),
        );
    }
    let mut log = AccessLogEntry::begin(
        &ctx.telemetry,
        &snap.telemetry,
        DESTINATION,
        &req,
        conn.remote,
    );
    if let Some(entry) = log.as_deref_mut() {
        entry.downstream_peer_principal = conn
            .identity
            .as_ref()
            .map(|p| format!("spiffe://{}", p.principal()));
    }
    // A request without a body has nothing to count.
    let received = (!hyper::body::Body::is_end_stream(req.body())).then(Arc::<BodyCount>::default);
    let grpc = is_grpc(req.headers());
    let rate = ctx.limits.body_rate(req.version(), grpc);
    // While hyper reads the body, the connection keeps its buffers.
    let open = received.is_some().then(|| conn.state.open_body());
    let mut req = req.map(|b| ProxyBody::downstream(b, received.clone(), grpc, rate, open));
    let peer = WorkloadMetadata::learn(&conn.peer, req.headers());
    let port_hint = req
        .headers()
        .get(&DESTINATION_PORT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .or(conn.original_port)
        .or_else(|| request_authority(&req).and_then(|a| split_host_port(a).1));
    let service = snap
        .local
        .services
        .get(request_authority(&req).map(|a| split_host_port(a).0));

    let mut permits = BreakerPermits::default();
    // What an external authorizer asked to add to the response (rare: boxed).
    let mut response_changes: Option<Box<HeaderChanges>> = None;
    let (protocol, result) = match (edge_check(&conn.state, &req), snap.inbound_port(port_hint)) {
        (Err(e), _) => (Protocol::Http, Err(e)),
        (Ok(()), None) => (
            Protocol::Http,
            Err(ProxyError::NoInboundPort(port_hint.unwrap_or(0))),
        ),
        (Ok(()), Some((port, target))) => {
            conn.admitted(port, target.mtls)?;
            if let Some(s) = span.as_deref_mut() {
                let service = service.as_ref();
                s.route(&service.fqdn, port, &target.name);
            }
            if req.method() == Method::CONNECT {
                (Protocol::Tcp, tunnel(&conn, &snap, port, target, req).await)
            } else {
                // The request as the app would get it (internal headers gone, the caller's
                // certificate in x-forwarded-client-cert, a request id) is what policies and
                // an external authorizer see, as Envoy sanitises before its filters.
                prepare(&conn, &mut req);
                target.stats.mark_used();
                match checked(&conn, &snap, target, &mut req).await {
                    Err(e) => (target.protocol, Err(e)),
                    // `http2MaxRequests` of the workload's own DestinationRule: requests to the
                    // app count from here to the end of their response stream.
                    Ok(changes) => match target.breakers.requests.try_acquire() {
                        None => {
                            target.stats.pending_overflow.inc();
                            (
                                target.protocol,
                                Err(ProxyError::Overflow(target.name.to_string())),
                            )
                        }
                        Some(permit) => {
                            permits.request = Some(permit);
                            if let Some(l) = log.as_deref_mut() {
                                l.upstream_host = Some(target.target.to_string());
                                l.sending_upstream();
                            }
                            response_changes = changes;
                            let answer = forward::to_app(ctx, target, req).await;
                            if let (Some(l), Ok(_)) = (log.as_deref_mut(), &answer) {
                                l.upstream_answered();
                            }
                            (target.protocol, answer)
                        }
                    },
                }
            }
        }
    };
    let (resp, flags) = match result {
        Ok(mut resp) => {
            headers::response_to_downstream(&mut resp, &ctx.headers);
            if let Some(changes) = response_changes {
                changes.apply(resp.headers_mut());
            }
            resp.headers_mut()
                .insert(PEER_METADATA.clone(), snap.local.peer_header.clone());
            (resp, ResponseFlags::NONE)
        }
        Err(e) => {
            tracing::debug!(error = %e, flags = %e.flag(), "inbound request failed");
            if let Some(l) = log.as_deref_mut() {
                l.upstream_transport_failure_reason = e.transport_reason();
                l.response_code_details = e.details();
            }
            let mut resp = e.reply(grpc);
            resp.headers_mut()
                .insert(PEER_METADATA.clone(), snap.local.peer_header.clone());
            (resp, e.flag())
        }
    };
    let source = peer.unwrap_or_else(WorkloadMetadata::unknown);
    let caller = Caller {
        workload: &source,
        principal: &conn.principal,
        mutual_tls: conn.identity.is_some(),
    };
    let labels = destination_report(
        &snap.local,
        caller,
        &service,
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
    // A CONNECT tunnel is a TCP connection: counted in the istio_tcp_* families, not as a
    // request (as Istio counts it).
    exchange.skip_metrics(if protocol == Protocol::Tcp {
        MetricSet::of(meshlite_xds_proto::v1::MetricSelector::AllMetrics)
    } else {
        snap.telemetry.disabled_metrics(DESTINATION)
    });
    if let Some(tags) = snap.telemetry.tag_overrides(DESTINATION) {
        exchange.override_tags(tags.clone(), tag_input);
    }
    exchange.set_grpc_status(resp.headers());
    Ok(resp.map(|b| TrackedBody::new(b, Some(exchange))))
}

/// Seconds since the Unix epoch, for `exp` and `nbf`.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The request's path normalised as MeshConfig says (the app receives that path), then
/// the workload's RequestAuthentication (a bad JWT is a 401), then its
/// AuthorizationPolicies with the verified claims: CUSTOM first (its external authorizer
/// decides, and may change the request), then DENY and ALLOW; a refusal never reaches the
/// app. `Ok` with what the authorizer asked to add to the response. A workload without
/// RequestAuthentication pays one emptiness check for it.
async fn checked(
    conn: &InboundConn,
    snap: &Snapshot,
    target: &InboundPort,
    req: &mut Request<ProxyBody>,
) -> Result<Option<Box<HeaderChanges>>, ProxyError> {
    normalize_uri(req.uri_mut(), snap.path_normalization)?;
    let jwt = &snap.security.jwt;
    let auth = if jwt.is_empty() {
        None
    } else {
        jwt.authenticate(req, unix_now())
            .map_err(ProxyError::Unauthenticated)?
    };
    let authz = &snap.security.authz;
    if authz.is_empty() {
        return Ok(None);
    }
    let remote = remote_ip(
        req.headers(),
        conn.remote.ip(),
        snap.security.num_trusted_proxies,
    );
    let mut attrs = conn.attributes(
        target.target.port(),
        remote,
        Some(authz_request(req, auth.as_ref())),
    );
    let mut changes = None;
    if let Some(custom) = authz.custom(&attrs) {
        // Boxed: rare, and the check's state would otherwise size every request's.
        changes = Box::pin(external(conn, snap, custom.provider, req)).await?;
        // DENY and ALLOW see the request as the authorizer changed it.
        attrs = conn.attributes(
            target.target.port(),
            remote,
            Some(authz_request(req, auth.as_ref())),
        );
    }
    let verdict = authz.evaluate(&attrs);
    audit(
        conn,
        snap,
        &verdict,
        &attrs,
        req.headers().get(&headers::X_REQUEST_ID),
    );
    if verdict.allowed {
        Ok(changes)
    } else {
        Err(ProxyError::AccessDenied(
            verdict.by.map(|m| m.policy.clone()),
        ))
    }
}

/// What authorization reads of an HTTP request, with its verified JWT claims.
fn authz_request<'a, B>(req: &'a Request<B>, auth: Option<&'a RequestAuth>) -> AuthzRequest<'a> {
    AuthzRequest {
        host: request_authority(req).unwrap_or(""),
        method: req.method().as_str(),
        path: req.uri().path(),
        headers: req.headers(),
        auth,
    }
}

/// Puts the request to the external authorizer a CUSTOM policy names.
async fn external(
    conn: &InboundConn,
    snap: &Snapshot,
    provider: Option<&Label>,
    req: &mut Request<ProxyBody>,
) -> Result<Option<Box<HeaderChanges>>, ProxyError> {
    let principal = principal(conn);
    let authorizer = authorizer(&conn.ctx, snap);
    ext_authz::authorize(authorizer, provider, connection(conn, &principal), req).await
}

/// The snapshot's providers, reached through the outbound path's sender.
pub(super) fn authorizer<'a>(
    ctx: &'a Arc<ProxyContext>,
    snap: &'a Snapshot,
) -> ext_authz::Authorizer<'a, impl FnOnce(&str) -> Option<ClusterSender> + 'a> {
    ext_authz::Authorizer {
        providers: &snap.security.ext_authz,
        local: &snap.local,
        sender_for: move |authority: &str| ClusterSender::resolve(ctx, snap, authority),
    }
}

/// The caller's principal as Envoy gives it to an authorizer: its certificate's URI SAN.
fn principal(conn: &InboundConn) -> Option<String> {
    conn.identity
        .as_ref()
        .map(|p| format!("spiffe://{}", p.principal()))
}

/// What an authorizer is told about the connection.
fn connection<'a>(conn: &'a InboundConn, principal: &'a Option<String>) -> Connection<'a> {
    Connection {
        source: conn.remote,
        source_principal: principal.as_deref(),
        destination: conn.local,
        sni: conn.sni.as_deref(),
    }
}

fn audit(
    conn: &InboundConn,
    snap: &Snapshot,
    verdict: &crate::policy::authz::Verdict<'_>,
    attrs: &Attributes<'_>,
    request_id: Option<&HeaderValue>,
) {
    let audit = &conn.ctx.telemetry.audit;
    if audit.wants(verdict) {
        let target = crate::policy::audit::Target {
            workload: &snap.local.metadata.workload,
            namespace: &snap.local.metadata.namespace,
        };
        audit.record(
            verdict,
            attrs,
            target,
            request_id.and_then(|v| v.to_str().ok()),
        );
    }
}

/// The request as the app gets it ([`headers::to_app`]), HTTP/1.1 again when it travelled
/// between sidecars as HTTP/2.
fn prepare(conn: &InboundConn, req: &mut Request<ProxyBody>) {
    let upgrade = forward::is_upgrade(req);
    let restore_http1 = req
        .headers()
        .get(&ORIG_PROTO)
        .is_some_and(|v| v.as_bytes() == b"HTTP/1.1");
    headers::to_app(req.headers_mut(), conn.xfcc.as_ref(), upgrade);
    if restore_http1 {
        *req.version_mut() = Version::HTTP_11;
    }
}

/// CONNECT: a TCP tunnel to a port declared `tcp`, authorized as a TCP connection (a CUSTOM
/// policy's gRPC authorizer first).
async fn tunnel(
    conn: &InboundConn,
    snap: &Snapshot,
    port: u16,
    target: &InboundPort,
    mut req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if target.protocol != Protocol::Tcp {
        return Err(ProxyError::NotTcpPort(port));
    }
    let authz = &snap.security.authz;
    if !authz.is_empty() {
        let custom = authz
            .custom(&conn.attributes(target.target.port(), conn.remote.ip(), None))
            .map(|c| c.provider);
        if let Some(provider) = custom {
            // Boxed, as for HTTP requests.
            Box::pin(ext_authz::authorize_connection(
                authorizer(&conn.ctx, snap),
                provider,
                connection(conn, &principal(conn)),
            ))
            .await?;
        }
        let attrs = conn.attributes(target.target.port(), conn.remote.ip(), None);
        let verdict = authz.evaluate(&attrs);
        audit(conn, snap, &verdict, &attrs, None);
        if !verdict.allowed {
            return Err(ProxyError::AccessDenied(
                verdict.by.map(|m| m.policy.clone()),
            ));
        }
    }
    // `tcp.maxConnections` of the workload's own DestinationRule: one slot per connection
    // to the app, for as long as the tunnel is open.
    target.stats.mark_used();
    let Some(slot) = target.breakers.connections.try_acquire() else {
        target.stats.pending_overflow.inc();
        target.stats.cx_overflow.inc();
        return Err(ProxyError::Overflow(target.name.to_string()));
    };
    let app = connect_tcp(target.target, crate::snapshot::LOCAL_CONNECT_TIMEOUT).await?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let ctx = conn.ctx.clone();
    let snap = ctx.snapshot.load_full();
    let source = conn
        .peer
        .load_full()
        .unwrap_or_else(WorkloadMetadata::unknown);
    let caller = Caller {
        workload: &source,
        principal: &conn.principal,
        mutual_tls: conn.identity.is_some(),
    };
    let service = snap
        .local
        .services
        .get(request_authority(&req).map(|a| split_host_port(a).0));
    let labels = snap.telemetry.tcp_report(
        DESTINATION,
        destination_report(
            &snap.local,
            caller,
            &service,
            Protocol::Tcp,
            0,
            ResponseFlags::NONE,
        ),
    );
    let drain = ctx.drain.track();
    tokio::spawn(async move {
        let (_drain, _slot) = (drain, slot);
        let m = &ctx.telemetry.metrics;
        m.istio.record_tcp(&labels, TcpEvent::Opened);
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut tunnel = hyper_util::rt::TokioIo::new(upgraded);
                let mut app = app;
                if let Err(e) = m.relay(&labels, &mut tunnel, &mut app).await {
                    tracing::debug!("inbound tunnel ended: {e}");
                }
            }
            Err(e) => {
                tracing::debug!("tunnel upgrade failed: {e}");
                m.istio.record_tcp(&labels, TcpEvent::CLOSED_EMPTY);
            }
        }
    });
    Ok(Response::new(ProxyBody::Empty))
}
