//! hyper-util's pooled clients, to other sidecars over mTLS (Istio's default upstream protocol)
//! and to services outside the mesh in plain text, plus one-off connections for upgrades.
//!
//! This module supplies the connectors that give hyper-util's pool mutual TLS with secure
//! naming, and the dedicated connection an HTTP upgrade (WebSocket) needs. The local
//! application is reached through [`super::h1_pool`].

use hyper::client::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::connect::{ConnectError, connect_tcp, connect_tls};
use crate::http::body::ProxyBody;

/// A pooled HTTP/1.1 client over mutual TLS to the sidecars of one destination service.
pub type MeshHttp1Client = Client<MeshTlsConnector, ProxyBody>;
/// A pooled plaintext HTTP client to services outside the mesh (names in the URI are
/// resolved per connection by the connector).
pub type LocalHttp1Client = Client<HttpConnector, ProxyBody>;

/// Builds a pooled plaintext client: HTTP/1.1, or HTTP/2 with prior knowledge (`h2c`) when
/// `http2_only`. The request's Host header is sent as the app gave it.
pub fn plain_client(
    idle_timeout: Duration,
    connect_timeout: Duration,
    http2_only: bool,
) -> LocalHttp1Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle_timeout)
        .http2_only(http2_only)
        .set_host(false)
        .build(connector)
}

/// Builds the pooled mTLS client for one destination service.
pub fn mesh_client(connector: MeshTlsConnector, idle_timeout: Duration) -> MeshHttp1Client {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle_timeout)
        .set_host(false)
        .build(connector)
}

/// Connector for hyper-util's pool: the URI's authority is the sidecar address; the TLS
/// configuration carries the identities that sidecar may present.
#[derive(Clone, Debug)]
pub struct MeshTlsConnector {
    /// TLS configuration (ALPN http/1.1) with the destination's allowed identities.
    pub tls: Arc<rustls::ClientConfig>,
    /// SNI to send.
    pub server_name: ServerName<'static>,
    /// TCP + TLS deadline.
    pub connect_timeout: Duration,
    /// Counts connections opened.
    pub on_connect: prometheus_client::metrics::counter::Counter,
}

/// A TLS connection as hyper-util's pool wants it.
#[derive(Debug)]
pub struct MeshTlsConn(TokioIo<TlsStream<TcpStream>>);

impl Connection for MeshTlsConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for MeshTlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MeshTlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl tower::Service<http::Uri> for MeshTlsConnector {
    type Response = MeshTlsConn;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<MeshTlsConn, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let addr = uri_addr(&uri)?;
            let io = connect_tls(addr, me.tls, me.server_name, me.connect_timeout).await?;
            me.on_connect.inc();
            Ok(MeshTlsConn(TokioIo::new(io)))
        })
    }
}

fn uri_addr(uri: &http::Uri) -> Result<SocketAddr, ConnectError> {
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    uri.authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        .ok_or(ConnectError::Tcp {
            addr: unspecified,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "endpoint URI has no socket address",
            ),
        })
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
