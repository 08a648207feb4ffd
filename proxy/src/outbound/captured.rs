//! Connections the capture rules redirected to the outbound listener, handled from where
//! they were going (their original destination).
//!
//! - A service's address (a virtual IP, or an endpoint's pod IP) on one of its ports: the
//!   connection is that service's. Its port's declared protocol decides how it is carried
//!   (Istio's protocol selection: `http`, `http2`, `grpc` are served as HTTP and routed, each
//!   request by the Host it names on that port, else as the service; `tcp` and its kin go
//!   through a mutual TLS tunnel to an endpoint's sidecar). A port that declares nothing is
//!   sniffed ([`crate::capture::sniff`]): HTTP is served as HTTP, anything else (TLS, other
//!   bytes, silence past the detection timeout) as opaque TCP.
//! - Any other address: MeshConfig `outboundTrafficPolicy.mode` decides. `ALLOW_ANY`
//!   (Istio's default) relays the bytes to the original destination as they are (Envoy's
//!   PassthroughCluster); `REGISTRY_ONLY` closes the connection (BlackHoleCluster). Both
//!   are counted in Istio's TCP metrics under those cluster names, as Istio reports them.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

use super::http::{self, OutboundConn};
use crate::capture::sniff::{DETECTION_TIMEOUT, Sniffed, sniff};
use crate::context::ProxyContext;
use crate::message::response_flags::ResponseFlags;
use crate::protocol::Protocol;
use crate::server::conn;
use crate::server::prefixed::Prefixed;
use crate::snapshot::Snapshot;
use crate::telemetry::istio::{TcpEvent, TcpReport};
use crate::telemetry::labels::{Unregistered, source_report};
use crate::telemetry::workload::Reporter;
use crate::transport::connect::connect_tcp;

/// How a captured connection is carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carry {
    /// Served as HTTP and routed.
    Http,
    /// Relayed as opaque TCP to the service's endpoints.
    Tcp,
}

/// Handles one connection redirected here that was going to `dst`.
pub async fn serve(
    ctx: Arc<ProxyContext>,
    mut stream: TcpStream,
    remote: SocketAddr,
    dst: SocketAddr,
) {
    let snap = ctx.snapshot.load_full();
    let Some(target) = snap.captured(dst) else {
        if snap.outbound_registry_only {
            tracing::debug!(%remote, %dst, "captured connection to an unknown destination closed (REGISTRY_ONLY)");
            let report = unregistered_report(&snap, Unregistered::BlackHole, ResponseFlags::NONE);
            ctx.telemetry.metrics.istio.record_tcp_unrelayed(&report);
            return;
        }
        drop(snap);
        return passthrough(&ctx, stream, dst).await;
    };
    let host = target.host.clone();
    let cluster = &host.cluster;
    let detect = target.detect;
    drop(snap);
    let (carry, prefix) = if detect {
        match sniff(&mut stream, DETECTION_TIMEOUT).await {
            (Sniffed::Closed, _) => return,
            (Sniffed::Http, bytes) => (Carry::Http, bytes),
            (Sniffed::Tls | Sniffed::Opaque, bytes) => (Carry::Tcp, bytes),
        }
    } else {
        let carry = match cluster.protocol {
            Protocol::Tcp => Carry::Tcp,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc => Carry::Http,
        };
        (carry, Vec::new())
    };
    let io = Prefixed::new(prefix, stream);
    match carry {
        Carry::Tcp => {
            let _guard = ctx.drain.track();
            super::tcp::route_and_relay(&ctx, &host, Some(dst.ip()), io).await;
        }
        Carry::Http => {
            let c = ctx.clone();
            let dst = Arc::new(dst);
            conn::serve(
                io,
                None,
                &ctx.http_builder,
                &ctx.limits,
                &ctx.drain,
                &ctx.telemetry.metrics,
                move |state| {
                    let oc = OutboundConn {
                        ctx: c,
                        state,
                        remote,
                        original_dst: Some(dst.clone()),
                    };
                    // Boxed, as in `outbound::serve_listener`: an idle connection keeps no
                    // request-sized slot.
                    hyper::service::service_fn(move |req| Box::pin(http::handle(oc.clone(), req)))
                },
            )
            .await;
        }
    }
}

/// ALLOW_ANY: the bytes go where the app sent them, untouched (the proxy's own connection
/// is not captured again: the rules leave its uid alone).
async fn passthrough(ctx: &ProxyContext, mut app: TcpStream, dst: SocketAddr) {
    let _guard = ctx.drain.track();
    let mut upstream = match connect_tcp(dst, ctx.connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%dst, "passthrough connect failed: {e}");
            let snap = ctx.snapshot.load();
            let report = unregistered_report(&snap, Unregistered::Passthrough, ResponseFlags::UF);
            ctx.telemetry.metrics.istio.record_tcp_unrelayed(&report);
            return;
        }
    };
    let report = unregistered_report(
        &ctx.snapshot.load(),
        Unregistered::Passthrough,
        ResponseFlags::NONE,
    );
    let m = &ctx.telemetry.metrics;
    m.istio.record_tcp(&report, TcpEvent::Opened);
    if let Err(e) = m.relay(&report, &mut app, &mut upstream).await {
        tracing::debug!(%dst, "passthrough relay ended: {e}");
    }
}

/// The source report, under `snap`'s labels and telemetry, of a connection to no known
/// service.
fn unregistered_report(snap: &Snapshot, kind: Unregistered, flags: ResponseFlags) -> TcpReport {
    let labels = source_report(
        &snap.local,
        Some(kind.labels()),
        None,
        Protocol::Tcp,
        0,
        flags,
    );
    snap.telemetry.tcp_report(Reporter::Source, labels)
}
