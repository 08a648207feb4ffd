//! The inbound side: callers of this workload, checked against its PeerAuthentication and
//! AuthorizationPolicies, handed to the local application.
//!
//! Each connection's first bytes say what it speaks ([`detect`]): mutual TLS from another
//! sidecar (a ClientHello offering the mesh's ALPN), plaintext HTTP, or something else. What
//! is served then depends on the modes of the workload's ports (SEMANTICS 3): STRICT serves
//! mutual TLS only and closes anything else without a word; PERMISSIVE serves both on the
//! same port; DISABLE terminates no TLS. A caller whose bytes fit no port is closed, counted
//! (`meshlite_inbound_connections_refused_total{reason}`) and logged. The snapshot in force
//! when a connection arrives decides for it, so a push that changes a mode applies to new
//! connections and leaves open ones alone.

pub mod detect;
pub mod http;
mod tcp;

use ::http::HeaderValue;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::context::ProxyContext;
use crate::identity::tls::{is_h2_alpn, peer_check_reason, spiffe_id_of_leaf};
use crate::policy::authz::Peer;
use crate::server::conn;
use crate::server::prefixed::Prefixed;
use crate::snapshot::Snapshot;
use detect::{Detected, MAX_RECORD};

/// How long a connection may stay silent before it is taken for a server-first protocol
/// (MySQL, SMTP: the client waits for a banner) and relayed as opaque TCP, when the
/// workload has a TCP port that accepts plaintext. Clients that speak first do so at once.
const SERVER_FIRST_AFTER: Duration = Duration::from_millis(100);

/// Accepts connections on the inbound listener until drain.
pub async fn serve_listener(
    ctx: Arc<ProxyContext>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut drain = ctx.drain.watch();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(ctx.clone(), acceptor.clone(), stream, remote));
                }
                Err(e) => {
                    tracing::warn!("inbound accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = drain.changed() => return,
        }
    }
}

/// Counts and logs a connection closed without an answer.
fn refuse(ctx: &ProxyContext, remote: SocketAddr, reason: &'static str, why: &str) {
    ctx.telemetry.metrics.security.refused(reason);
    tracing::info!(%remote, reason, "inbound connection refused: {why}");
}

/// The service port of the workload's only TCP port that accepts plaintext, where opaque
/// bytes (and the application's own TLS) are relayed.
fn opaque_port(snap: &Snapshot) -> Option<u16> {
    let mut tcp = snap.inbound_ports().filter(|(_, p)| {
        p.protocol == crate::protocol::Protocol::Tcp && p.mtls.accepts_plaintext()
    });
    let (port, _) = tcp.next()?;
    tcp.next().is_none().then_some(port)
}

/// Reads until the first bytes say what the connection speaks. With every port STRICT
/// one byte is enough: anything but a TLS record is refused.
async fn first_bytes(
    stream: &mut TcpStream,
    only_tls: bool,
    silence: Option<Duration>,
    deadline: Duration,
) -> Result<(Detected, Vec<u8>), &'static str> {
    let start = tokio::time::Instant::now();
    let mut buf = Vec::with_capacity(2048);
    loop {
        let wait = match (buf.is_empty(), silence) {
            (true, Some(s)) => s,
            _ => deadline,
        };
        let read = tokio::time::timeout_at(start + wait, stream.read_buf(&mut buf)).await;
        match read {
            Err(_) if buf.is_empty() && silence.is_some() => return Ok((Detected::Opaque, buf)),
            Err(_) => return Err("detect_timeout"),
            Ok(Err(_)) | Ok(Ok(0)) => return Err("closed"),
            Ok(Ok(_)) => {}
        }
        if only_tls {
            let d = if buf[0] == 0x16 {
                Detected::MeshTls
            } else {
                Detected::Opaque
            };
            return Ok((d, buf));
        }
        if let Some(d) = detect::detect(&buf) {
            return Ok((d, buf));
        }
        if buf.len() >= MAX_RECORD {
            return Ok((Detected::Opaque, buf));
        }
    }
}

/// One accepted connection, from its first bytes to its end.
async fn connection(
    ctx: Arc<ProxyContext>,
    acceptor: TlsAcceptor,
    mut stream: TcpStream,
    remote: SocketAddr,
) {
    let snap = ctx.snapshot.load_full();
    let modes = snap.inbound_modes;
    let local = stream.local_addr().unwrap_or(remote);
    // Redirected by the capture rules: the port the caller addressed is the app's port.
    let original = crate::capture::original_dst::captured(&stream, local);
    let original_port = original.map(|dst| dst.port());
    let local = original.unwrap_or(local);
    let relay_to = original_port
        .filter(|p| {
            snap.inbound_port(Some(*p)).is_some_and(|(served, ip)| {
                served == *p
                    && ip.protocol == crate::protocol::Protocol::Tcp
                    && ip.mtls.accepts_plaintext()
            })
        })
        .or_else(|| opaque_port(&snap));
    let deadline = ctx.limits.header_read_timeout;
    let silence = relay_to.map(|_| SERVER_FIRST_AFTER);
    let (detected, prefix) =
        match first_bytes(&mut stream, !modes.any_plaintext(), silence, deadline).await {
            Ok(d) => d,
            Err("closed") => return,
            Err(reason) => {
                refuse(
                    &ctx,
                    remote,
                    reason,
                    "sent no recognisable first bytes in time",
                );
                return;
            }
        };
    let io = Prefixed::new(prefix, stream);
    match detected {
        Detected::MeshTls if modes.any_mtls() => {
            serve_mtls(ctx, acceptor, io, remote, local, original_port).await
        }
        Detected::MeshTls => refuse(
            &ctx,
            remote,
            "mtls_under_disable",
            "mutual TLS to a workload whose PeerAuthentication is DISABLE",
        ),
        Detected::OtherTls => match relay_to {
            // The application's own TLS, relayed untouched.
            Some(port) => tcp::relay(ctx, snap, io, remote, local, port).await,
            // STRICT treats every TLS client as mutual TLS; the handshake names what fails.
            None if modes.any_mtls() => {
                serve_mtls(ctx, acceptor, io, remote, local, original_port).await
            }
            None => refuse(
                &ctx,
                remote,
                "tls_under_disable",
                "TLS to a DISABLE workload with no TCP port",
            ),
        },
        Detected::PlainHttp if modes.any_plaintext() => {
            serve_plaintext(ctx, io, remote, local, original_port).await
        }
        Detected::PlainHttp => refuse(
            &ctx,
            remote,
            "plaintext_under_strict",
            "plaintext HTTP to a STRICT mutual TLS workload",
        ),
        Detected::Opaque => match relay_to {
            Some(port) => tcp::relay(ctx, snap, io, remote, local, port).await,
            None if !modes.any_plaintext() => refuse(
                &ctx,
                remote,
                "plaintext_under_strict",
                "plaintext to a STRICT mutual TLS workload",
            ),
            None => refuse(
                &ctx,
                remote,
                "no_port",
                "bytes that are not HTTP, and no TCP port to relay them to",
            ),
        },
    }
}

/// Mutual TLS from another sidecar: the handshake checks the chain and the SPIFFE rules,
/// then HTTP is served with the caller's identity.
async fn serve_mtls(
    ctx: Arc<ProxyContext>,
    acceptor: TlsAcceptor,
    io: Prefixed<TcpStream>,
    remote: SocketAddr,
    local: SocketAddr,
    original_port: Option<u16>,
) {
    let handshake = tokio::time::timeout(ctx.limits.header_read_timeout, acceptor.accept(io)).await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .map(|r| {
                    (
                        matches!(r, rustls::Error::InvalidCertificate(_)),
                        peer_check_reason(r),
                    )
                })
                .unwrap_or((false, "handshake"));
            // Certificate checks count themselves in the verifier.
            if !reason.0 {
                ctx.telemetry.metrics.tls_failures.inc("inbound", reason.1);
            }
            tracing::info!(%remote, reason = reason.1, "inbound TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            ctx.telemetry
                .metrics
                .tls_failures
                .inc("inbound", "handshake_timeout");
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let h2 = session.alpn_protocol().is_some_and(is_h2_alpn);
    let sni: Option<Arc<str>> = session.server_name().map(Arc::from);
    let Some(id) = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| spiffe_id_of_leaf(leaf).ok())
    else {
        // The verifier guarantees an identity; refuse defensively if absent.
        ctx.telemetry
            .metrics
            .tls_failures
            .inc("inbound", "bad_spiffe_id");
        return;
    };
    let own = ctx.identity.id().as_str();
    let xfcc = HeaderValue::from_str(&format!("By={own};URI={id}")).ok();
    let identity = Some(Arc::new(Peer::new(&id)));
    let c = ctx.clone();
    conn::serve(
        tls,
        Some(h2),
        &ctx.http_builder,
        &ctx.limits,
        &ctx.drain,
        &ctx.telemetry.metrics,
        move |state| {
            let ic = http::InboundConn::new(c, state, remote, local, identity, xfcc, sni)
                .with_original_port(original_port);
            hyper::service::service_fn(move |req| http::handle(ic.clone(), req))
        },
    )
    .await;
}

/// Plaintext HTTP (PERMISSIVE or DISABLE ports): no identity; each request is checked
/// against its port's mode.
async fn serve_plaintext(
    ctx: Arc<ProxyContext>,
    io: Prefixed<TcpStream>,
    remote: SocketAddr,
    local: SocketAddr,
    original_port: Option<u16>,
) {
    let c = ctx.clone();
    conn::serve(
        io,
        None,
        &ctx.http_builder,
        &ctx.limits,
        &ctx.drain,
        &ctx.telemetry.metrics,
        move |state| {
            let ic = http::InboundConn::new(c, state, remote, local, None, None, None)
                .with_original_port(original_port);
            hyper::service::service_fn(move |req| http::handle(ic.clone(), req))
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    //! The footprint of an accepted connection (see `crate::footprint`).
    use super::*;

    /// The size of the future an async fn of four arguments returns, without calling it.
    fn future_size<F, A, B, C, D, Fut>(_: &F) -> usize
    where
        F: Fn(A, B, C, D) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn the_connection_future_stays_small() {
        // Every accepted connection holds it until it closes (TLS handshake, then HTTP or a
        // relay). Measured 7600 bytes in the test profile; about 20 % headroom.
        let size = future_size(&connection);
        assert!(size <= 9120, "inbound connection future: {size} bytes");
    }
}
