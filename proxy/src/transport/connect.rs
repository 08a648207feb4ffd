//! Opening connections: TCP with a deadline, then (to another sidecar) mutual TLS.
//!
//! Failures are typed so the edge can say exactly what went wrong: Envoy's `UF` response flag
//! with `upstream_transport_failure_reason` naming the TLS check that failed.

use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::identity::tls::peer_check_reason;

/// Why a connection to an upstream could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect did not finish in time.
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    /// TCP connect failed (refused, unreachable...).
    #[error("connect to {addr} failed: {source}")]
    Tcp {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS handshake failed; `reason` names the check.
    #[error("TLS handshake with {addr} failed ({reason}): {message}")]
    Tls {
        /// The address.
        addr: SocketAddr,
        /// Short reason (`identity_mismatch`, `unknown_ca`, `expired`, `peer_refused`...).
        reason: &'static str,
        /// Full message.
        message: String,
    },
    /// A direct connection to a service outside the mesh (a name, resolved by the pool's
    /// connector) failed.
    #[error("connect to {target} (outside the mesh) failed: {source}")]
    Direct {
        /// `host:port` as configured.
        target: Box<str>,
        /// The resolver's or the OS's error.
        source: std::io::Error,
    },
    /// The TLS the sidecar originates to a service outside the mesh failed; `reason` names
    /// the check.
    #[error("TLS to {target} (outside the mesh) failed ({reason}): {message}")]
    EgressTls {
        /// `host:port` as configured.
        target: Box<str>,
        /// Short reason.
        reason: &'static str,
        /// Full message.
        message: String,
    },
    /// The HTTP handshake over the new connection failed.
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        /// The address.
        addr: SocketAddr,
        /// hyper's error.
        source: hyper::Error,
    },
}

impl ConnectError {
    /// Envoy-style transport failure reason for access logs and the 503 body.
    pub fn transport_reason(&self) -> &'static str {
        match self {
            ConnectError::Timeout(_) => "connect_timeout",
            ConnectError::Tcp { source, .. } => match source.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection_refused",
                _ => "connection_failure",
            },
            ConnectError::Direct { source, .. } => match source.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection_refused",
                std::io::ErrorKind::TimedOut => "connect_timeout",
                _ => "connection_failure",
            },
            ConnectError::Tls { reason, .. } | ConnectError::EgressTls { reason, .. } => reason,
            ConnectError::Handshake { .. } => "protocol_error",
        }
    }
}

/// Connects over TCP with a deadline and sets TCP_NODELAY (requests are small and latency-bound).
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(addr))?
        .map_err(|source| ConnectError::Tcp { addr, source })?;
    // Best effort: failing to set NODELAY only costs latency.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Connects to another sidecar and completes the mutual TLS handshake; the configuration's
/// verifier enforces the chain, the SPIFFE rules and secure naming.
pub async fn connect_tls(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let tcp = connect_tcp(addr, timeout).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let handshake = tokio::time::timeout(timeout, connector.connect(server_name, tcp))
        .await
        .map_err(|_| ConnectError::Timeout(addr))?;
    handshake.map_err(|e| {
        let reason = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(peer_check_reason)
            .unwrap_or("handshake");
        ConnectError::Tls {
            addr,
            reason,
            message: e.to_string(),
        }
    })
}

/// The identity the latest mutual TLS handshake with one sidecar endpoint verified: its
/// certificate's SPIFFE ID, which secure naming accepted. The endpoint's pools record the
/// certificate on every new connection (a comparison, and a copy when it changed); its ID is
/// read out only when an access log line asks (`upstream_peer_principal`, Envoy's
/// `%UPSTREAM_PEER_URI_SAN%`), once per certificate, so requests that are not logged pay
/// nothing for it.
#[derive(Debug, Default)]
pub struct VerifiedPeer(arc_swap::ArcSwapOption<PeerCertificate>);

/// A verified peer certificate and, once asked for, its SPIFFE ID.
#[derive(Debug)]
struct PeerCertificate {
    der: rustls_pki_types::CertificateDer<'static>,
    id: std::sync::OnceLock<Option<Arc<crate::identity::spiffe::SpiffeId>>>,
}

impl VerifiedPeer {
    /// Records the certificate `tls` verified (kept when it is the one already known).
    pub fn record(&self, tls: &TlsStream<TcpStream>) {
        let (_, session) = tls.get_ref();
        let Some(leaf) = session.peer_certificates().and_then(|c| c.first()) else {
            return;
        };
        if self.0.load().as_deref().is_some_and(|c| c.der == *leaf) {
            return;
        }
        self.0.store(Some(Arc::new(PeerCertificate {
            der: leaf.clone().into_owned(),
            id: std::sync::OnceLock::new(),
        })));
    }

    /// The identity, once a handshake verified one.
    pub fn principal(&self) -> Option<Arc<crate::identity::spiffe::SpiffeId>> {
        let cert = self.0.load_full()?;
        cert.id
            .get_or_init(|| {
                crate::identity::tls::spiffe_id_of_leaf(&cert.der)
                    .ok()
                    .map(Arc::new)
            })
            .clone()
    }
}

/// Where a connection pool connects: another sidecar over mutual TLS, or the local
/// application in plain text. The pools of both protocols take it.
#[derive(Clone, Debug)]
pub enum PoolTarget {
    /// Another sidecar, over mutual TLS.
    Mesh {
        /// The destination sidecar's inbound address.
        addr: SocketAddr,
        /// TLS configuration carrying the destination's allowed identities (and the ALPN
        /// protocol of the pool).
        tls: Arc<rustls::ClientConfig>,
        /// SNI sent (the service FQDN); identity is checked on the SPIFFE ID, not this name.
        server_name: ServerName<'static>,
        /// Where the identity each handshake verified is recorded (shared by the endpoint's
        /// pools).
        verified: Arc<VerifiedPeer>,
    },
    /// The local application, plain text (h2c with prior knowledge for HTTP/2).
    Plain {
        /// The app's address.
        addr: SocketAddr,
    },
}

impl PoolTarget {
    /// The address connected to.
    pub fn addr(&self) -> SocketAddr {
        match self {
            PoolTarget::Mesh { addr, .. } | PoolTarget::Plain { addr } => *addr,
        }
    }
}
