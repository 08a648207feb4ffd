//! Inbound HTTP: a request from another sidecar, already authenticated by mutual TLS, handed to
//! the local application.
//!
//! The target port comes from meshlite's port header or the `:authority` port (a workload with a
//! single port needs neither). HTTP/1.1 that travelled as HTTP/2 is restored to HTTP/1.1 for the
//! app; `http2`/`grpc` ports get h2c. The verified peer identity is passed to the app in
//! `x-forwarded-client-cert` (Istio's sanitize-and-set behaviour); internal headers are removed.
//! CONNECT opens a TCP tunnel to ports declared `tcp` and nowhere else.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::time::Instant;

use crate::config::Protocol;
use crate::context::ProxyContext;
use crate::http::body::ProxyBody;
use crate::http::errors::ProxyError;
use crate::http::headers::{
    self, ORIG_PROTO, PEER_METADATA, X_FORWARDED_CLIENT_CERT, X_FORWARDED_PROTO,
};
use crate::http::uri::{forward_uri, request_authority};
use crate::outbound::http::{DESTINATION_PORT, clean_response, send_h1, splice};
use crate::server::conn::ConnState;
use crate::snapshot::{InboundPort, PeerWorkload, split_host_port};
use crate::telemetry::access_log::AccessLogEntry;
use crate::telemetry::exchange::{Exchange, Held, TrackedBody};
use crate::telemetry::labels::destination_report;
use crate::telemetry::metrics::{Label, TcpLabels};
use crate::transport::connect::connect_tcp;
use crate::transport::http1;

/// One mTLS connection from another sidecar.
#[derive(Clone, Debug)]
pub struct InboundConn {
    /// Shared proxy state.
    pub ctx: Arc<ProxyContext>,
    /// Activity tracking of this connection.
    pub state: Arc<ConnState>,
    /// The calling sidecar's address.
    pub remote: SocketAddr,
    /// The caller's verified principal (SPIFFE ID without scheme).
    pub principal: Label,
    /// `x-forwarded-client-cert` value for this connection, computed once.
    pub xfcc: HeaderValue,
    /// The caller's workload labels, learnt from its first request on this connection.
    pub peer: Arc<arc_swap::ArcSwapOption<PeerWorkload>>,
}

/// Handles one request from another sidecar.
pub async fn handle(
    conn: InboundConn,
    req: Request<Incoming>,
) -> Result<Response<TrackedBody>, Infallible> {
    let start = Instant::now();
    let in_flight = conn.state.start_request();
    let ctx = &conn.ctx;
    let snap = ctx.snapshot.load();
    let mut log = ctx.telemetry.access_log.is_some().then(|| {
        let mut entry = AccessLogEntry::for_request(&req, "inbound", conn.remote);
        entry.downstream_peer_principal = Some(conn.principal.to_string());
        Box::new(entry)
    });
    let received = log.as_ref().map(|_| Arc::new(AtomicU64::new(0)));
    let mut req = req.map(|b| ProxyBody::counted(b, received.clone()));
    let peer = PeerWorkload::learn(&conn.peer, req.headers());
    let port_hint = req
        .headers()
        .get(&DESTINATION_PORT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .or_else(|| request_authority(&req).and_then(|a| split_host_port(a).1));
    let service = snap
        .local
        .services
        .get(request_authority(&req).map(|a| split_host_port(a).0));

    let mut held = Held::default();
    let (protocol, result) = match snap.inbound_port(port_hint) {
        None => (
            Protocol::Http,
            Err(ProxyError::NoInboundPort(port_hint.unwrap_or(0))),
        ),
        Some((port, target)) if req.method() == Method::CONNECT => {
            (Protocol::Tcp, tunnel(&conn, port, target, req).await)
        }
        // `http2MaxRequests` of the workload's own DestinationRule: requests to the app count
        // from here to the end of their response stream.
        Some((_, target)) => match target.breakers.requests.try_acquire() {
            None => {
                target.stats.pending_overflow.inc();
                (
                    target.protocol,
                    Err(ProxyError::Overflow(target.name.to_string())),
                )
            }
            Some(permit) => {
                held.request = Some(permit);
                if let Some(l) = log.as_deref_mut() {
                    l.upstream_host = Some(target.target.to_string());
                }
                prepare(&conn, &mut req);
                (target.protocol, forward(ctx, target, req).await)
            }
        },
    };
    let (resp, flags) = match result {
        Ok(mut resp) => {
            let upgrading = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            clean_response(ctx, resp.headers_mut(), upgrading);
            resp.headers_mut()
                .insert(PEER_METADATA.clone(), snap.local.peer_header.clone());
            (resp, "-")
        }
        Err(e) => {
            tracing::debug!(error = %e, flag = e.flag(), "inbound request failed");
            if let Some(l) = log.as_deref_mut() {
                l.upstream_transport_failure_reason = e.transport_reason();
            }
            let mut resp = e.into_response();
            resp.headers_mut()
                .insert(PEER_METADATA.clone(), snap.local.peer_header.clone());
            (resp, e.flag())
        }
    };
    let source = peer
        .as_deref()
        .cloned()
        .unwrap_or_else(PeerWorkload::unknown);
    let labels = destination_report(
        &snap.local,
        &source,
        &conn.principal,
        &service,
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

fn prepare(conn: &InboundConn, req: &mut Request<ProxyBody>) {
    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
    let restore_http1 = req
        .headers()
        .get(&ORIG_PROTO)
        .is_some_and(|v| v.as_bytes() == b"HTTP/1.1");
    let h = req.headers_mut();
    if upgrade {
        headers::strip_hop_by_hop_keep_upgrade(h);
    } else {
        headers::strip_hop_by_hop(h);
    }
    headers::strip_internal(h);
    h.remove(&DESTINATION_PORT);
    h.insert(X_FORWARDED_CLIENT_CERT.clone(), conn.xfcc.clone());
    if !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
    }
    headers::ensure_request_id(h);
    if restore_http1 {
        *req.version_mut() = Version::HTTP_11;
    }
}

async fn forward(
    ctx: &ProxyContext,
    port: &InboundPort,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
    if upgrade {
        // Boxed: rare, and its handshake would otherwise size every request's state.
        return Box::pin(forward_upgrade(ctx, port, req)).await;
    }
    let authority = request_authority(&req).and_then(|a| HeaderValue::from_str(a).ok());
    let (mut parts, body) = req.into_parts();
    match &port.h2c {
        Some(pool) => {
            // HTTP/2 to the app keeps the caller's :authority.
            let next_hop = authority
                .as_ref()
                .and_then(|a| http::uri::Authority::try_from(a.as_bytes()).ok())
                .or_else(|| port.authority.clone());
            parts.uri = forward_uri(&parts.uri, next_hop)?;
            parts.version = Version::HTTP_2;
            parts.headers.remove(header::HOST);
            let req = Request::from_parts(parts, body);
            let mut sender = pool.sender().await?;
            sender
                .ready()
                .await
                .map_err(|e| ProxyError::from_upstream(&e))?;
            match sender.send_request(req).await {
                Ok(resp) => Ok(resp.map(ProxyBody::from)),
                Err(e) => {
                    pool.evict(&sender);
                    Err(ProxyError::from_upstream(&e))
                }
            }
        }
        None => {
            if let Some(a) = authority {
                parts.headers.insert(header::HOST, a);
            }
            parts.uri = forward_uri(&parts.uri, None)?;
            parts.version = Version::HTTP_11;
            let Some(pool) = &port.http1 else {
                return Err(ProxyError::NoInboundPort(port.target.port()));
            };
            // The workload's own `tcp.maxConnections` bounds its app's connections, whatever
            // the number of callers; `http1MaxPendingRequests` how many requests wait for one.
            send_h1(
                pool,
                Request::from_parts(parts, body),
                &port.breakers,
                &port.stats,
                &port.name,
            )
            .await
        }
    }
}

async fn forward_upgrade(
    ctx: &ProxyContext,
    port: &InboundPort,
    mut req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let downstream = hyper::upgrade::on(&mut req);
    let mut sender = http1::dedicated(
        port.target,
        None,
        ctx.connect_timeout
            .min(crate::snapshot::LOCAL_CONNECT_TIMEOUT),
    )
    .await?;
    let (mut parts, body) = req.into_parts();
    parts.uri = forward_uri(&parts.uri, None)?;
    let mut resp = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|e| ProxyError::from_upstream(&e))?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let app = hyper::upgrade::on(&mut resp);
        tokio::spawn(splice(downstream, app));
    }
    Ok(resp.map(ProxyBody::from))
}

/// CONNECT: a TCP tunnel to a port declared `tcp`.
async fn tunnel(
    conn: &InboundConn,
    port: u16,
    target: &InboundPort,
    mut req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if target.protocol != Protocol::Tcp {
        return Err(ProxyError::NotTcpPort(port));
    }
    // `tcp.maxConnections` of the workload's own DestinationRule: one slot per connection
    // to the app, for as long as the tunnel is open.
    let Some(slot) = target.breakers.connections.try_acquire() else {
        target.stats.pending_overflow.inc();
        target.stats.cx_overflow.inc();
        return Err(ProxyError::Overflow(target.name.to_string()));
    };
    let app = connect_tcp(target.target, crate::snapshot::LOCAL_CONNECT_TIMEOUT).await?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let ctx = conn.ctx.clone();
    let snap = ctx.snapshot.load_full();
    let labels = TcpLabels {
        reporter: "destination",
        source_workload: conn
            .peer
            .load_full()
            .map(|p| p.workload.clone())
            .unwrap_or_else(crate::snapshot::unknown),
        source_principal: conn.principal.clone(),
        destination_workload: snap.local.workload.clone(),
        destination_principal: snap.local.principal.clone(),
        destination_service: request_authority(&req)
            .map(|a| Arc::from(split_host_port(a).0))
            .unwrap_or_else(crate::snapshot::unknown),
        response_flags: "-",
        connection_security_policy: "mutual_tls",
    };
    let drain = ctx.drain.track();
    tokio::spawn(async move {
        let (_drain, _slot) = (drain, slot);
        let m = &ctx.telemetry.metrics;
        m.tcp_opened.get_or_create(&labels).inc();
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut tunnel = hyper_util::rt::TokioIo::new(upgraded);
                let mut app = app;
                match tokio::io::copy_bidirectional(&mut tunnel, &mut app).await {
                    Ok((to_app, from_app)) => {
                        m.tcp_received.get_or_create(&labels).inc_by(to_app);
                        m.tcp_sent.get_or_create(&labels).inc_by(from_app);
                    }
                    Err(e) => tracing::debug!("inbound tunnel ended: {e}"),
                }
            }
            Err(e) => tracing::debug!("tunnel upgrade failed: {e}"),
        }
        m.tcp_closed.get_or_create(&labels).inc();
    });
    Ok(Response::new(ProxyBody::Empty))
}
