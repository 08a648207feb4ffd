//! The TLS side of port 15012: the control plane's serving certificate (issued by its own
//! CA), ALPN h2, and client certificates *requested but not required*: a sidecar asking for
//! its first certificate has none yet and proves itself with a token instead.
//!
//! The handshake only checks that the client holds the key of the certificate it presents;
//! whether that certificate is a valid, unrevoked SVID is decided by the handlers with
//! [`crate::ca::CertificateAuthority::verify_client_chain`], so a refusal (expired, revoked,
//! foreign CA) reaches the caller as a gRPC status naming the check, not as a bare TLS alert.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::sync::Arc;

/// Who is on the other end of a connection, in every request's extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Remote socket address.
    pub remote: Option<std::net::SocketAddr>,
    /// The certificate chain the client presented (unverified: see the module docs).
    pub chain: Arc<Vec<CertificateDer<'static>>>,
}

/// Accepts any client certificate whose key the client proves it holds; see module docs.
#[derive(Debug)]
struct PresentedCertificate {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for PresentedCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server configuration for port 15012, presenting `cert` (renewed in place).
pub fn server_config(
    cert: Arc<super::serving::ServingCert>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(PresentedCertificate { provider }))
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}
