//! Outbound opaque TCP: bytes from the app relayed to a destination sidecar through an HTTP/2
//! CONNECT tunnel on the shared mTLS connection (the HBONE idea from Istio's ambient mode).
//!
//! The destination's inbound side accepts the tunnel only for ports its workload declares `tcp`.
//! Where a connection goes is the VirtualService's `tcp` rules' choice ([`crate::route::tcp`]),
//! else the service's. Metrics are Istio's TCP set (connections opened/closed, bytes each
//! way), labelled with the destination chosen.

use http::{HeaderValue, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;

use crate::context::ProxyContext;
use crate::message::body::ProxyBody;
use crate::message::errors::ProxyError;
use crate::message::headers::PEER_METADATA;
use crate::message::response_flags::ResponseFlags;
use crate::protocol::Protocol;
use crate::route::TcpChoice;
use crate::snapshot::{Cluster, Endpoint, HostPort};
use crate::telemetry::istio::{TcpEvent, TcpReport};
use crate::telemetry::labels::source_report;
use crate::telemetry::peer::WorkloadMetadata;
use crate::telemetry::workload::Reporter;

/// Routes an opaque TCP connection to `host` (addressed to `dst`) by its VirtualService's
/// `tcp` rules, else to the service itself, and relays it there. A rule naming a destination
/// this proxy has no cluster for closes the connection (flag `NC`).
pub(crate) async fn route_and_relay<IO>(
    ctx: &ProxyContext,
    host: &HostPort,
    dst: Option<std::net::IpAddr>,
    client: IO,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // A destination fetched on demand and not here yet: asked for, then routed again on
    // the snapshot that holds it.
    let fetched;
    let host = match host.select_tcp(dst) {
        TcpChoice::Cluster(c) if c.awaiting() => match ctx.fetch(&c.labels.service.fqdn).await {
            Ok(snap) => match snap.host_port(&host.cluster.labels.service.fqdn, host.port) {
                Some(hp) => {
                    fetched = hp.clone();
                    &*fetched
                }
                None => {
                    tracing::debug!(service = %host.cluster.labels.service.fqdn, "tcp connection closed: the service is gone");
                    return;
                }
            },
            Err(e) => {
                refused(ctx, &host.cluster, &e);
                return;
            }
        },
        _ => host,
    };
    match host.select_tcp(dst) {
        TcpChoice::Cluster(cluster) => relay(ctx, cluster, client).await,
        TcpChoice::Missing(name) => {
            let e = ProxyError::NoCluster(name.to_string());
            tracing::debug!(service = %host.cluster.labels.service.fqdn, "tcp connection closed: {e}");
            refused(ctx, &host.cluster, &e);
        }
    }
}

/// The source report of a connection to `cluster`, whose endpoint's workload is `peer`
/// when one was reached.
fn labels(
    ctx: &ProxyContext,
    cluster: &Cluster,
    peer: Option<&Arc<WorkloadMetadata>>,
    flags: ResponseFlags,
) -> TcpReport {
    let snap = ctx.snapshot.load();
    snap.telemetry.tcp_report(
        Reporter::Source,
        source_report(
            &snap.local,
            Some(&cluster.labels),
            peer,
            Protocol::Tcp,
            0,
            flags,
        ),
    )
}

/// Counts a connection that ended before any byte was relayed, with the flag saying why.
fn refused(ctx: &ProxyContext, cluster: &Cluster, e: &ProxyError) {
    let labels = labels(ctx, cluster, None, e.flag());
    ctx.telemetry.metrics.istio.record_tcp_unrelayed(&labels);
}

/// Relays `client` to an endpoint of `cluster` through a CONNECT tunnel, counted in Istio's
/// TCP metrics (explicit listeners, and captured connections taken for opaque TCP).
pub(crate) async fn relay<IO>(ctx: &ProxyContext, cluster: &Cluster, mut client: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    cluster.stats.mark_used();
    // `tcp.maxConnections`: one slot per tunnel for as long as it is open; over the limit the
    // downstream connection is closed at once (Envoy's TCP proxy, flag `UO`).
    let Some(_slot) = cluster.breakers.connections.try_acquire() else {
        cluster.stats.pending_overflow.inc();
        cluster.stats.cx_overflow.inc();
        let e = ProxyError::Overflow(cluster.name.to_string());
        tracing::debug!(service = %cluster.labels.service.fqdn, "tcp connection refused: {e}");
        refused(ctx, cluster, &e);
        return;
    };
    match open_tunnel(ctx, cluster).await {
        Ok((upgraded, endpoint)) => {
            let peer = endpoint.peer.load_full();
            let labels = labels(ctx, cluster, peer.as_ref(), ResponseFlags::NONE);
            let m = &ctx.telemetry.metrics;
            m.istio.record_tcp(&labels, TcpEvent::Opened);
            let mut upstream = TokioIo::new(upgraded);
            if let Err(e) = m.relay(&labels, &mut client, &mut upstream).await {
                tracing::debug!("tcp relay ended: {e}");
            }
        }
        Err(e) => {
            tracing::warn!(service = %cluster.labels.service.fqdn, flag = %e.flag(), "tcp tunnel failed: {e}");
            refused(ctx, cluster, &e);
        }
    }
}

/// Opens a CONNECT tunnel to an endpoint of `cluster`, which learns the endpoint's
/// workload from the answer when the control plane did not describe it.
async fn open_tunnel(
    ctx: &ProxyContext,
    cluster: &Cluster,
) -> Result<(hyper::upgrade::Upgraded, Arc<Endpoint>), ProxyError> {
    let (index, endpoint) = cluster
        .pick(None)
        .ok_or_else(|| ProxyError::NoHealthyUpstream(cluster.name.to_string()))?;
    let mut req = Request::new(ProxyBody::Empty);
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = http::Uri::from_parts({
        let mut p = http::uri::Parts::default();
        p.authority = Some(cluster.authority.clone());
        p
    })
    .map_err(|e| ProxyError::InvalidTarget(e.to_string()))?;
    *req.version_mut() = http::Version::HTTP_2;
    let peer: HeaderValue = ctx.snapshot.load().local.peer_header.clone();
    req.headers_mut().insert(PEER_METADATA.clone(), peer);
    let sent = crate::transport::forward::send_h2(Some(cluster), &endpoint, req).await;
    cluster.report(
        index,
        sent.as_ref()
            .map_or(crate::resilience::outlier::LOCAL_FAILURE_STATUS, |r| {
                r.status().as_u16()
            }),
    );
    let mut resp = sent?;
    if resp.status() != StatusCode::OK {
        return Err(ProxyError::UpstreamTerminated(format!(
            "tunnel refused with status {}",
            resp.status()
        )));
    }
    WorkloadMetadata::learn(&endpoint.peer, resp.headers());
    let upgraded = hyper::upgrade::on(&mut resp)
        .await
        .map_err(|e| ProxyError::UpstreamTerminated(e.to_string()))?;
    Ok((upgraded, endpoint))
}
