//! The accept loop of port 15012: one task per connection (the TLS handshake of a slow or
//! silent client never holds up the others), then HTTP/2 with bounded per-stream send
//! buffers, serving the gRPC routes.
//!
//! tonic's own server leaves hyper's per-stream send buffer at its default of 400 KiB: an
//! initial sync written to 1,000 streams at once then sits in those buffers (hundreds of MB)
//! instead of waiting in the stream's bounded queue. Serving the routes with hyper directly
//! lets us cap it, so a slow reader costs the control plane a few tens of KiB.

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use super::tls::PeerInfo;

/// Bytes HTTP/2 buffers per stream before the sender waits for the socket.
pub const MAX_SEND_BUF: usize = 16 * 1024;

/// Bytes rustls holds for a connection whose socket is full (its default is 64 KiB).
pub const TLS_BUFFER_LIMIT: usize = 16 * 1024;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams one connection may open at once: a sidecar needs its ADS stream and, now and
/// then, a certificate request.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// HTTP/2 PING interval on idle connections (a vanished sidecar is noticed within about
/// interval + timeout, and its stream ends, starting its grace period).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a PING may go unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Accepts connections on `listener` and serves `routes` on each until the process exits.
/// Every request carries the connection's [`PeerInfo`] in its extensions.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, routes: tonic::service::Routes) {
    let routes = routes.prepare();
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, typically: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, routes) = (acceptor.clone(), routes.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%remote, "TLS handshake refused: {e}");
                    return;
                }
                Err(_) => {
                    tracing::info!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            tls.get_mut().1.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
            let peer = PeerInfo {
                remote: Some(remote),
                chain: Arc::new(
                    tls.get_ref()
                        .1
                        .peer_certificates()
                        .map(<[CertificateDer<'static>]>::to_vec)
                        .unwrap_or_default(),
                ),
            };
            let service = hyper::service::service_fn(move |mut req: http::Request<_>| {
                req.extensions_mut().insert(peer.clone());
                routes.clone().oneshot(req)
            });
            let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_send_buf_size(MAX_SEND_BUF)
                .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                .keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%remote, "connection ended: {e}");
            }
        });
    }
}
