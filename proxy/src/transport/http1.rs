//! HTTP/1.1 clients outside the keep-alive pool of [`super::h1_pool`]: hyper-util's pooled
//! client to services outside the mesh (names resolved per connection, TLS originated when a
//! DestinationRule asks, [`super::egress`]), and the dedicated connection an HTTP upgrade
//! (WebSocket) needs, over mTLS to a sidecar or plain to the app.

use hyper::client::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::connect::{ConnectError, connect_tcp, connect_tls};
use super::egress::{EgressConnector, EgressTls};
use crate::http::body::ProxyBody;

/// A pooled HTTP client to services outside the mesh (names in the URI are resolved per
/// connection by the connector).
pub type LocalHttp1Client = Client<EgressConnector, ProxyBody>;

/// Builds a pooled client: HTTP/1.1, or HTTP/2 with prior knowledge (`h2c`, or `h2` over
/// originated TLS) when `http2_only`; plaintext, or `tls`. The request's Host header is sent
/// as the app gave it.
pub fn egress_client(
    idle_timeout: Duration,
    connect_timeout: Duration,
    http2_only: bool,
    tls: Option<EgressTls>,
) -> LocalHttp1Client {
    let connector = EgressConnector::new(connect_timeout, tls);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle_timeout)
        .http2_only(http2_only)
        .set_host(false)
        .build(connector)
}

/// Opens a dedicated HTTP/1.1 connection (for an upgrade such as WebSocket), over mTLS when
/// `tls` is given, and returns its sender.
pub async fn dedicated(
    addr: SocketAddr,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    connect_timeout: Duration,
) -> Result<http1::SendRequest<ProxyBody>, ConnectError> {
    let handshake_err = |source| ConnectError::Handshake { addr, source };
    match tls {
        Some((cfg, name)) => {
            let io = connect_tls(addr, cfg, name, connect_timeout).await?;
            let (send, conn) = http1::handshake(TokioIo::new(io))
                .await
                .map_err(handshake_err)?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            Ok(send)
        }
        None => {
            let io = connect_tcp(addr, connect_timeout).await?;
            let (send, conn) = http1::handshake(TokioIo::new(io))
                .await
                .map_err(handshake_err)?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            Ok(send)
        }
    }
}
