//! TLS endpoints that stand in for a sidecar the real proxy refuses to become.
//!
//! `meshlite-proxy` checks its own certificate at start and will not run with an expired one, so
//! "a peer presenting an expired certificate" cannot be a real sidecar. These stand-ins present
//! any certificate on loopback so the real sidecar's peer checks can be exercised in both
//! directions:
//!
//! - [`TlsServerPeer`] accepts connections where a destination sidecar would and presents its
//!   certificate (the calling sidecar must refuse it);
//! - [`handshake_as_client`] dials a destination sidecar's inbound port presenting a client
//!   certificate (the destination must refuse it). It does not judge the server's certificate:
//!   the check under test is the sidecar's.

use meshlite_proxy::identity::dev_pki::IssuedCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// ALPN protocols a sidecar might offer or expect: the mesh's own (`istio-*`, what sidecars
/// offer each other) and plain HTTP's.
const ALPN: [&[u8]; 4] = [b"istio-h2", b"istio-http/1.1", b"h2", b"http/1.1"];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn chain_and_key(cert: &IssuedCert) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key PEM");
    (chain, key)
}

/// A TLS server presenting a fixed certificate; it asks for no client certificate and serves
/// nothing after the handshake.
pub struct TlsServerPeer {
    /// Where it listens.
    pub addr: SocketAddr,
    connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsServerPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsServerPeer {
    /// Starts presenting `cert` on an ephemeral loopback port.
    ///
    /// # Panics
    /// If the certificate is unusable or binding fails.
    pub async fn start(cert: &IssuedCert) -> Self {
        let (chain, key) = chain_and_key(cert);
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind TLS peer");
        let addr = listener.local_addr().expect("local addr");
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(stream).await {
                        let mut buf = [0u8; 1024];
                        while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            task,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Accepts whatever certificate the server presents (see the module docs), but still checks the
/// handshake signatures so the TLS exchange itself is genuine.
#[derive(Debug)]
struct AnyServerCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Connects to `addr` as a TLS client presenting `cert`, and reports whether the connection
/// survived: `Ok(())` if the server kept it open after the handshake, `Err(reason)` if the
/// handshake failed or the server aborted it (in TLS 1.3 a refused client certificate is only
/// noticed after the client's side of the handshake is done).
///
/// # Panics
/// If the certificate is unusable or the TCP connection fails.
pub async fn handshake_as_client(addr: SocketAddr, cert: &IssuedCert) -> Result<(), String> {
    let (chain, key) = chain_and_key(cert);
    let provider = provider();
    let verifier = AnyServerCertificate(provider.signature_verification_algorithms);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let name = ServerName::try_from("destination.mesh.invalid").expect("server name");
    let mut tls = match tokio::time::timeout(
        Duration::from_secs(10),
        connector.connect(name, stream),
    )
    .await
    {
        Err(_) => return Err("handshake timed out".into()),
        Ok(Err(e)) => return Err(format!("handshake: {e}")),
        Ok(Ok(tls)) => tls,
    };
    // The server's verdict on our certificate arrives as an alert (or a close) on first read.
    let mut buf = [0u8; 256];
    match tokio::time::timeout(Duration::from_secs(2), tls.read(&mut buf)).await {
        Ok(Err(e)) => Err(format!("after handshake: {e}")),
        Ok(Ok(0)) => Err("closed after handshake".into()),
        Ok(Ok(_)) | Err(_) => Ok(()),
    }
}

/// The certificate a TLS server at `addr` presents (the leaf, DER), without judging it.
///
/// # Panics
/// If the handshake fails.
pub async fn server_certificate(addr: SocketAddr) -> Vec<u8> {
    let provider = provider();
    let verifier = AnyServerCertificate(provider.signature_verification_algorithms);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let name = ServerName::try_from("localhost").expect("server name");
    let tls = connector
        .connect(name, stream)
        .await
        .expect("TLS handshake");
    let (_, session) = tls.get_ref();
    session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .expect("a server certificate")
}
