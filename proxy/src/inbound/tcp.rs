//! Opaque TCP on the inbound side: bytes that are neither mutual TLS nor HTTP (a
//! server-first protocol, the application's own TLS) reaching a TCP port whose
//! PeerAuthentication accepts plaintext. They are authorized as a TCP connection (no
//! principal; a CUSTOM policy's gRPC authorizer first), then relayed to the app untouched.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

use crate::context::ProxyContext;
use crate::message::response_flags::ResponseFlags;
use crate::policy::authz::Attributes;
use crate::policy::ext_authz::{self, Connection};
use crate::protocol::Protocol;
use crate::server::prefixed::Prefixed;
use crate::snapshot::Snapshot;
use crate::telemetry::istio::TcpEvent;
use crate::telemetry::labels::{Caller, destination_report};
use crate::telemetry::peer::WorkloadMetadata;
use crate::transport::connect::connect_tcp;

/// Relays `io` to the app behind service port `port`, if authorization allows it.
pub async fn relay(
    ctx: Arc<ProxyContext>,
    snap: Arc<Snapshot>,
    io: Prefixed<TcpStream>,
    remote: SocketAddr,
    local: SocketAddr,
    port: u16,
) {
    let Some((_, target)) = snap.inbound_port(Some(port)) else {
        return;
    };
    let authz = &snap.security.authz;
    if !authz.is_empty() {
        let attrs = Attributes {
            peer: None,
            source_ip: remote.ip(),
            remote_ip: remote.ip(),
            destination_ip: local.ip(),
            destination_port: target.target.port(),
            sni: None,
            request: None,
        };
        if let Some(custom) = authz.custom(&attrs) {
            let connection = Connection {
                source: remote,
                source_principal: None,
                destination: local,
                sni: None,
            };
            let asked = ext_authz::authorize_connection(
                super::http::authorizer(&ctx, &snap),
                custom.provider,
                connection,
            );
            if let Err(e) = Box::pin(asked).await {
                tracing::debug!(%remote, port, "inbound TCP connection denied: {e}");
                return;
            }
        }
        let verdict = authz.evaluate(&attrs);
        let audit = &ctx.telemetry.audit;
        if audit.wants(&verdict) {
            let t = crate::policy::audit::Target {
                workload: &snap.local.metadata.workload,
                namespace: &snap.local.metadata.namespace,
            };
            audit.record(&verdict, &attrs, t, None);
        }
        if !verdict.allowed {
            // A denied TCP connection is closed (SEMANTICS 4.1).
            tracing::debug!(%remote, port, "inbound TCP connection denied by policy");
            return;
        }
    }
    target.stats.mark_used();
    let Some(slot) = target.breakers.connections.try_acquire() else {
        target.stats.pending_overflow.inc();
        target.stats.cx_overflow.inc();
        return;
    };
    let mut app = match connect_tcp(target.target, crate::snapshot::LOCAL_CONNECT_TIMEOUT).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%remote, "inbound TCP relay: {e}");
            return;
        }
    };
    let unknown = crate::telemetry::peer::unknown();
    let caller = Caller {
        workload: &WorkloadMetadata::unknown(),
        principal: &unknown,
        mutual_tls: false,
    };
    let labels = snap.telemetry.tcp_report(
        crate::telemetry::workload::Reporter::Destination,
        destination_report(
            &snap.local,
            caller,
            &snap.local.services.get(None),
            Protocol::Tcp,
            0,
            ResponseFlags::NONE,
        ),
    );
    let _drain = ctx.drain.track();
    let _slot = slot;
    let m = &ctx.telemetry.metrics;
    m.istio.record_tcp(&labels, TcpEvent::Opened);
    let mut io = io;
    if let Err(e) = m.relay(&labels, &mut io, &mut app).await {
        tracing::debug!("inbound TCP relay ended: {e}");
    }
}
