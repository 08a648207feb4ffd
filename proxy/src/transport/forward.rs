//! The forwarder: the last stage of both directions, which puts one request on the wire to
//! its next hop and returns the response head.
//!
//! Outbound, the next hop is another sidecar over mutual TLS ([`to_sidecar`]: the endpoint's
//! multiplexed HTTP/2 connection, or its HTTP/1.1 keep-alive pool) or a service outside the
//! mesh ([`to_external`]); inbound, it is the local app ([`to_app`]: h2c or the HTTP/1.1
//! pool). Header hygiene of each hop is [`crate::message::headers`]'s; the request head is made
//! HTTP/2 (absolute URI, no `Host`) or HTTP/1.1 (origin-form, `Host`) here. An HTTP/1.1
//! upgrade (WebSocket) gets a dedicated connection, spliced to the caller's once both switch.
//!
//! A failure that left the request unsent gives it back in [`SendError::request`], so a
//! retry can send it again without having kept a copy.

use futures_util::TryFutureExt;
use futures_util::future::Either;
use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;

use crate::message::body::ProxyBody;
use crate::message::errors::ProxyError;
use crate::message::headers;
use crate::message::uri::{forward_uri, request_authority};
use crate::protocol::{Protocol, UpstreamProtocol};
use crate::resilience::breaker::Breakers;
use crate::snapshot::{Cluster, Endpoint, External, ExternalTarget, InboundPort};
use crate::telemetry::cluster_stats::ClusterStats;
use crate::transport::connect::{ConnectError, connect_tcp, connect_tls};
use crate::transport::h1_pool::{H1Error, H1Limits, H1Pool};

/// The mutual TLS of a dedicated connection to a sidecar: the cluster's client config and
/// the name its certificate is checked against.
type UpstreamTls = (
    std::sync::Arc<rustls::ClientConfig>,
    rustls_pki_types::ServerName<'static>,
);

/// A request that could not be forwarded: why, and the request itself when none of it was
/// sent (a connection that could not be had), for the caller to send elsewhere.
#[derive(Debug)]
pub struct SendError {
    /// What went wrong.
    pub error: ProxyError,
    /// The request, untouched by the wire, when it never left this proxy.
    pub request: Option<Request<ProxyBody>>,
}

impl SendError {
    /// A failure after the request was handed to a connection (or consumed): nothing to
    /// give back.
    pub fn sent(error: ProxyError) -> Self {
        Self {
            error,
            request: None,
        }
    }

    /// A failure before anything was sent: `request` is given back.
    pub fn unsent(error: ProxyError, request: Request<ProxyBody>) -> Self {
        Self {
            error,
            request: Some(request),
        }
    }
}

impl From<ProxyError> for SendError {
    fn from(error: ProxyError) -> Self {
        Self::sent(error)
    }
}

/// Whether a request asks to switch protocols (an HTTP/1.1 upgrade such as WebSocket).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers())
}

/// How `req` travels to a sidecar of `cluster`. In http1 mode HTTP/1.1 from the app stays
/// HTTP/1.1, as Istio carries it by default (no `h2UpgradePolicy`); HTTP/2 requests and
/// `http2`/`grpc` services always travel as HTTP/2 (gRPC needs its trailers).
pub fn wire_protocol<B>(cluster: &Cluster, req: &Request<B>) -> UpstreamProtocol {
    match cluster.upstream {
        UpstreamProtocol::Http1
            if req.version() != Version::HTTP_2 && cluster.protocol == Protocol::Http =>
        {
            UpstreamProtocol::Http1
        }
        _ => UpstreamProtocol::H2,
    }
}

/// Sends an app's request to `endpoint`, a sidecar of `cluster`, with this workload's peer
/// metadata `peer_header`. The request is given back unsent when no HTTP/2 connection could
/// be had (a connect failure, or `http1MaxPendingRequests` full while one is being made).
///
/// Not an `async fn`: the head is prepared here and the future of the one way it travels is
/// returned, so every request's state holds the request once (in that future) and not also
/// here. The rare ways (an upgrade, a request that has to wait for a connection) are boxed:
/// their handshakes would otherwise size every request's state.
pub fn to_sidecar<'a>(
    ctx: &'a crate::context::ProxyContext,
    peer_header: &HeaderValue,
    cluster: &'a Cluster,
    endpoint: &'a Endpoint,
    mut req: Request<ProxyBody>,
) -> impl Future<Output = Result<Response<ProxyBody>, SendError>> + Send + 'a {
    let upgrade = is_upgrade(&req);
    let wire = wire_protocol(cluster, &req);
    let has_port =
        request_authority(&req).is_some_and(|a| crate::names::split_host_port(a).1.is_some());
    let http1_as_h2 = req.version() != Version::HTTP_2 && !upgrade;
    headers::to_sidecar(
        req.headers_mut(),
        peer_header,
        upgrade,
        http1_as_h2,
        (!has_port).then_some(&cluster.port_header),
    );
    let authority = request_authority(&req).and_then(|a| http::uri::Authority::try_from(a).ok());
    let rare: Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, SendError>> + Send + 'a>> =
        match wire {
            _ if upgrade => {
                let tls = (!endpoint.plaintext)
                    .then(|| (cluster.tls_http1.clone(), cluster.server_name.clone()));
                Box::pin(
                    upgrade_on_dedicated(endpoint.addr, tls, ctx.connect_timeout, req).err_into(),
                )
            }
            UpstreamProtocol::Http1 => {
                let host = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok());
                return match as_http1(req, host) {
                    Ok(req) => Either::Right(Either::Left(
                        send_h1(
                            &endpoint.h1,
                            req,
                            &cluster.breakers,
                            &cluster.stats,
                            &cluster.name,
                        )
                        .err_into(),
                    )),
                    Err(e) => Either::Left(Either::Right(std::future::ready(Err(e.into())))),
                };
            }
            UpstreamProtocol::H2 => {
                let authority = authority.unwrap_or_else(|| cluster.authority.clone());
                match endpoint.h2.live() {
                    Some(sender) => {
                        return match as_http2(req, Some(authority)) {
                            Ok(req) => Either::Right(Either::Right(
                                send_on(sender, Some(cluster), endpoint, req).err_into(),
                            )),
                            Err(e) => {
                                Either::Left(Either::Right(std::future::ready(Err(e.into()))))
                            }
                        };
                    }
                    None => Box::pin(connect_then_send(cluster, endpoint, authority, req)),
                }
            }
        };
    Either::Left(Either::Left(rare))
}

/// The HTTP/2 way when the endpoint has no open connection: the request waits for one
/// (pending), and comes back unsent if none can be had.
async fn connect_then_send(
    cluster: &Cluster,
    endpoint: &Endpoint,
    authority: http::uri::Authority,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, SendError> {
    let sender = match connect_h2(Some(cluster), endpoint).await {
        Ok(s) => s,
        Err(e) => return Err(SendError::unsent(e, req)),
    };
    let req = as_http2(req, Some(authority))?;
    Ok(send_on(sender, Some(cluster), endpoint, req).await?)
}

/// Sends an app's request to a service outside the mesh: straight to its endpoint `target`
/// over the service's pooled client, with the app's own Host, and nothing of the mesh's (no
/// peer metadata, no internal headers). Protocol upgrades are not carried to services
/// outside the mesh.
pub async fn to_external(
    ext: &External,
    target: &ExternalTarget,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    headers::to_external(&mut parts.headers, parts.uri.authority());
    parts.uri = forward_uri(&parts.uri, Some(target.authority.clone()))?;
    parts.version = Version::HTTP_11;
    let resp = ext
        .client
        .request(Request::from_parts(parts, body))
        .await
        .map_err(|e| ProxyError::from_direct(e, target.authority.as_str()))?;
    Ok(resp.map(ProxyBody::from))
}

/// Hands a caller's request (its headers already made the app's: see
/// [`headers::to_app`]) to the local app behind `port`: h2c for `http2`/`grpc` ports with
/// the caller's `:authority`, else HTTP/1.1 on the port's pool under the workload's own
/// `tcp.maxConnections` and `http1MaxPendingRequests`.
pub async fn to_app(
    ctx: &crate::context::ProxyContext,
    port: &InboundPort,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if is_upgrade(&req) {
        let timeout = ctx
            .connect_timeout
            .min(crate::snapshot::LOCAL_CONNECT_TIMEOUT);
        // Boxed: rare, and its handshake would otherwise size every request's state.
        return Box::pin(upgrade_on_dedicated(port.target, None, timeout, req)).await;
    }
    let authority = request_authority(&req).and_then(|a| HeaderValue::from_str(a).ok());
    match &port.h2c {
        Some(pool) => {
            // HTTP/2 to the app keeps the caller's :authority.
            let next_hop = authority
                .as_ref()
                .and_then(|a| http::uri::Authority::try_from(a.as_bytes()).ok())
                .or_else(|| port.authority.clone());
            let req = as_http2(req, next_hop)?;
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
            let req = as_http1(req, authority)?;
            let Some(pool) = &port.http1 else {
                return Err(ProxyError::NoInboundPort(port.target.port()));
            };
            // The workload's own `tcp.maxConnections` bounds its app's connections, whatever
            // the number of callers; `http1MaxPendingRequests` how many requests wait for one.
            send_h1(pool, req, &port.breakers, &port.stats, &port.name).await
        }
    }
}

/// The request head as HTTP/2 carries it: `authority` in an absolute URI, no `Host`.
fn as_http2(
    req: Request<ProxyBody>,
    authority: Option<http::uri::Authority>,
) -> Result<Request<ProxyBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(header::HOST);
    parts.uri = forward_uri(&parts.uri, authority)?;
    parts.version = Version::HTTP_2;
    Ok(Request::from_parts(parts, body))
}

/// The request head as HTTP/1.1 carries it: an origin-form URI, `host` in `Host` when given.
fn as_http1(
    req: Request<ProxyBody>,
    host: Option<HeaderValue>,
) -> Result<Request<ProxyBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    if let Some(host) = host {
        parts.headers.insert(header::HOST, host);
    }
    parts.uri = forward_uri(&parts.uri, None)?;
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

/// Sends on the endpoint's shared HTTP/2 connection (see [`send_on`]), counting a wait for
/// a connection against `cluster`'s `http1MaxPendingRequests` when given.
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

/// A sender on the endpoint's HTTP/2 connection, connecting if there is none.
async fn h2_sender(
    cluster: Option<&Cluster>,
    endpoint: &Endpoint,
) -> Result<SendRequest<ProxyBody>, ProxyError> {
    match endpoint.h2.live() {
        Some(s) => Ok(s),
        None => connect_h2(cluster, endpoint).await,
    }
}

/// A sender on a new (or being made) HTTP/2 connection to the endpoint. A request that has
/// to wait for a connection is pending: `cluster`'s `http1MaxPendingRequests` bounds how
/// many may wait.
async fn connect_h2(
    cluster: Option<&Cluster>,
    endpoint: &Endpoint,
) -> Result<SendRequest<ProxyBody>, ProxyError> {
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
    // Both rounds of the loop return or continue to a second one that returns.
    Err(ProxyError::Internal(
        "HTTP/2 send loop ended without a result",
    ))
}

/// An HTTP/1.1 upgrade on a connection of its own to `addr` (over mutual TLS when `tls` is
/// given): the request goes with an origin-form URI and, when the peer switches protocols,
/// both sides are spliced.
async fn upgrade_on_dedicated(
    addr: std::net::SocketAddr,
    tls: Option<UpstreamTls>,
    connect_timeout: std::time::Duration,
    mut req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let downstream = hyper::upgrade::on(&mut req);
    let mut sender = dedicated(addr, tls, connect_timeout).await?;
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

/// Opens a dedicated HTTP/1.1 connection (for an upgrade such as WebSocket: the connection
/// becomes the tunnel), over mutual TLS when `tls` is given, and returns its sender.
async fn dedicated(
    addr: std::net::SocketAddr,
    tls: Option<UpstreamTls>,
    connect_timeout: std::time::Duration,
) -> Result<hyper::client::conn::http1::SendRequest<ProxyBody>, ConnectError> {
    let handshake_err = |source| ConnectError::Handshake { addr, source };
    match tls {
        Some((cfg, name)) => {
            let io = connect_tls(addr, cfg, name, connect_timeout).await?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(handshake_err)?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            Ok(send)
        }
        None => {
            let io = connect_tcp(addr, connect_timeout).await?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(handshake_err)?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            Ok(send)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_error_gives_back_an_unsent_request_and_nothing_once_sent() {
        let req = Request::builder()
            .uri("/orders")
            .body(ProxyBody::Empty)
            .unwrap();
        let e = SendError::unsent(ProxyError::Overflow("c".into()), req);
        assert_eq!(e.request.as_ref().map(|r| r.uri().path()), Some("/orders"));
        let e: SendError = ProxyError::Timeout.into();
        assert!(e.request.is_none());
    }

    #[test]
    fn http2_heads_carry_the_authority_in_the_uri_and_http1_heads_in_host() {
        let req = Request::builder()
            .uri("/a?b=1")
            .header(header::HOST, "reviews:9080")
            .body(ProxyBody::Empty)
            .unwrap();
        let authority = http::uri::Authority::from_static("reviews:9080");
        let h2 = as_http2(req, Some(authority)).unwrap();
        assert_eq!(h2.uri(), "http://reviews:9080/a?b=1");
        assert_eq!(h2.version(), Version::HTTP_2);
        assert!(!h2.headers().contains_key(header::HOST));
        let h1 = as_http1(h2, Some(HeaderValue::from_static("reviews:9080"))).unwrap();
        assert_eq!(h1.uri(), "/a?b=1");
        assert_eq!(h1.version(), Version::HTTP_11);
        assert_eq!(h1.headers()[header::HOST], "reviews:9080");
    }
}
