//! rustls configurations for the mesh: mutual TLS 1.3 with SPIFFE peer checks.
//!
//! Both directions verify the peer's chain against the mesh trust bundle (RFC 5280 path
//! validation by webpki, no DNS-name check: mesh certificates carry SPIFFE URIs), then the leaf
//! rules of the X509-SVID specification: not a CA, no certificate-signing key usage, exactly one
//! URI SAN holding a valid SPIFFE ID. The client side additionally checks secure naming: the
//! server's ID must be one the destination service is allowed to have. The key pair and the
//! trust bundle live behind atomic pointers so a rotation (next: from the control plane's CA)
//! swaps them in without touching open connections.

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::spiffe::SpiffeId;
use crate::telemetry::metrics::TlsFailureCounter;

/// ALPN protocol id for HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id for HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// What a sidecar offers for HTTP/2 over mutual TLS: Istio's mesh ALPN, which tells a
/// PERMISSIVE inbound port a sidecar from the application's own TLS (SEMANTICS 3).
pub const ALPN_MESH_H2: &[u8] = b"istio-h2";
/// What a sidecar offers for HTTP/1.1 over mutual TLS.
pub const ALPN_MESH_HTTP1: &[u8] = b"istio-http/1.1";

/// Whether a negotiated ALPN protocol means HTTP/2.
pub fn is_h2_alpn(proto: &[u8]) -> bool {
    proto == ALPN_MESH_H2 || proto == ALPN_H2
}

/// Why the proxy's own identity could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The certificate or key was rejected.
    #[error("{0}")]
    Invalid(String),
}

/// Which check refused a peer certificate. The `reason()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum PeerCheckError {
    /// The chain does not lead to the mesh trust bundle.
    #[error("certificate is not signed by the mesh trust bundle (unknown CA)")]
    UnknownCa,
    /// The certificate (or one in its chain) is outside its validity period.
    #[error("certificate is expired or not yet valid")]
    Expired,
    /// Any other chain validation failure.
    #[error("certificate chain is invalid: {0}")]
    Chain(String),
    /// The leaf is a CA certificate or may sign certificates.
    #[error("peer presented a CA certificate as its identity")]
    CaCertificate,
    /// The leaf has no, or more than one, URI SAN, or it is not a valid SPIFFE ID.
    #[error("peer certificate has no valid SPIFFE identity: {0}")]
    BadSpiffeId(String),
    /// Secure naming: the server's ID is not one the destination may have.
    #[error(
        "peer identity {got} is not allowed for this destination (expected one of: {expected})"
    )]
    IdentityMismatch {
        /// The ID the peer presented.
        got: String,
        /// The IDs allowed, comma-separated.
        expected: String,
    },
}

impl PeerCheckError {
    /// Short label for metrics and access logs.
    pub fn reason(&self) -> &'static str {
        match self {
            PeerCheckError::UnknownCa => "unknown_ca",
            PeerCheckError::Expired => "expired",
            PeerCheckError::Chain(_) => "invalid_chain",
            PeerCheckError::CaCertificate => "ca_certificate",
            PeerCheckError::BadSpiffeId(_) => "bad_spiffe_id",
            PeerCheckError::IdentityMismatch { .. } => "identity_mismatch",
        }
    }

    fn into_rustls(self) -> rustls::Error {
        match self {
            PeerCheckError::UnknownCa => CertificateError::UnknownIssuer.into(),
            PeerCheckError::Expired => CertificateError::Expired.into(),
            other => CertificateError::Other(rustls::OtherError(Arc::new(other))).into(),
        }
    }
}

/// Finds the [`PeerCheckError`] behind a failed handshake, if one of our checks failed.
pub fn peer_check_reason(err: &rustls::Error) -> &'static str {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_ca",
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => "expired",
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => other
            .0
            .downcast_ref::<PeerCheckError>()
            .map(PeerCheckError::reason)
            .unwrap_or("invalid_certificate"),
        rustls::Error::InvalidCertificate(_) => "invalid_certificate",
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::AlertReceived(_) => "peer_refused",
        rustls::Error::NoApplicationProtocol => "alpn",
        _ => "handshake",
    }
}

/// Server names whose TLS sessions one client configuration keeps for resumption: its
/// cluster's one service name, with room for another.
const SESSIONS_PER_CONFIG: usize = 2;

/// The trust bundle as webpki wants it, and the certificates it came from.
struct TrustBundle {
    anchors: Vec<TrustAnchor<'static>>,
    certs: Vec<CertificateDer<'static>>,
}

/// The workload's identity: its SPIFFE ID, key pair and the mesh trust bundle, swappable live.
pub struct Identity {
    id: SpiffeId,
    key: ArcSwap<CertifiedKey>,
    roots: ArcSwap<TrustBundle>,
    provider: Arc<CryptoProvider>,
    /// TLS 1.3 with the provider, checked once here, so each destination's client
    /// configuration (made when the destination is first called) cannot fail.
    client_base: rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>,
    failures: TlsFailureCounter,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id.as_str())
            .finish_non_exhaustive()
    }
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let pem_err = |message: String| IdentityError::Pem {
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

impl Identity {
    /// Loads the certificate chain, key and trust bundle from PEM files and checks that the
    /// certificate carries `expected_id` and chains to the bundle.
    pub fn from_files(
        expected_id: &SpiffeId,
        cert: &Path,
        key: &Path,
        roots: &Path,
        failures: TlsFailureCounter,
    ) -> Result<Self, IdentityError> {
        let chain = read_pem_certs(cert)?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| IdentityError::Pem {
            path: key.to_path_buf(),
            message: e.to_string(),
        })?;
        let root_certs = read_pem_certs(roots)?;
        Self::from_parts(expected_id, chain, key_der, &root_certs, failures).map_err(|e| {
            IdentityError::Invalid(format!("{} / {}: {e}", cert.display(), key.display()))
        })
    }

    /// Builds an identity from a chain, its key and the trust bundle held in memory (a
    /// certificate just issued by the control plane's CA), with the same checks as
    /// [`Identity::from_files`].
    pub fn from_parts(
        expected_id: &SpiffeId,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: &[CertificateDer<'static>],
        failures: TlsFailureCounter,
    ) -> Result<Self, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_base = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Invalid(format!("TLS 1.3 unavailable: {e}")))?;
        let me = Self {
            id: expected_id.clone(),
            key: ArcSwap::from_pointee(Self::certified_key(&provider, chain, key)?),
            roots: ArcSwap::from_pointee(Self::bundle(roots)?),
            provider,
            client_base,
            failures,
        };
        me.check_own(&me.key.load())?;
        Ok(me)
    }

    fn certified_key(
        provider: &CryptoProvider,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<CertifiedKey, IdentityError> {
        if chain.is_empty() {
            return Err(IdentityError::Invalid("empty certificate chain".into()));
        }
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| IdentityError::Invalid(format!("unusable private key: {e}")))?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|e| {
            IdentityError::Invalid(format!("key does not match the certificate: {e}"))
        })?;
        Ok(certified)
    }

    /// Checks that a key pair of ours verifies against the bundle and carries our ID.
    fn check_own(&self, key: &CertifiedKey) -> Result<(), IdentityError> {
        let leaf_id = self
            .check_chain(&key.cert, webpki::KeyUsage::client_auth())
            .map_err(|e| {
                IdentityError::Invalid(format!("own certificate fails verification: {e}"))
            })?;
        if leaf_id != self.id {
            return Err(IdentityError::Invalid(format!(
                "certificate is for {leaf_id}, but this workload is {}",
                self.id
            )));
        }
        Ok(())
    }

    /// Replaces the key pair with a newly issued one after checking it as at start-up
    /// (rotation). Connections already open keep the key they were made with.
    pub fn rotate(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), IdentityError> {
        let certified = Self::certified_key(&self.provider, chain, key)?;
        self.check_own(&certified)?;
        self.key.store(Arc::new(certified));
        Ok(())
    }

    /// The current certificate chain, leaf first.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.key.load().cert.clone()
    }

    /// When the current leaf certificate expires (Unix seconds), if it can be read.
    pub fn not_after(&self) -> Option<i64> {
        use x509_parser::prelude::*;
        let key = self.key.load();
        let leaf = key.cert.first()?;
        let (_, cert) = X509Certificate::from_der(leaf.as_ref()).ok()?;
        Some(cert.validity().not_after.timestamp())
    }

    /// When the current leaf certificate became valid (Unix seconds), if it can be read.
    pub fn not_before(&self) -> Option<i64> {
        use x509_parser::prelude::*;
        let key = self.key.load();
        let leaf = key.cert.first()?;
        let (_, cert) = X509Certificate::from_der(leaf.as_ref()).ok()?;
        Some(cert.validity().not_before.timestamp())
    }

    /// The resolver presenting our current certificate as a TLS client (the control-plane
    /// connection authenticates with it for renewals and xDS).
    pub fn client_cert_resolver(self: &Arc<Self>) -> Arc<dyn rustls::client::ResolvesClientCert> {
        Arc::new(OwnCert(self.clone()))
    }

    /// The crypto provider every configuration of this identity uses.
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    fn bundle(roots: &[CertificateDer<'static>]) -> Result<TrustBundle, IdentityError> {
        let anchors = roots
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| IdentityError::Invalid(format!("bad trust anchor: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustBundle {
            anchors,
            certs: roots.to_vec(),
        })
    }

    /// The mesh's roots now (the bootstrap file's until the control plane pushes its bundle,
    /// then the pushed one: old and new roots during a rotation).
    pub fn root_certs(&self) -> Vec<CertificateDer<'static>> {
        self.roots.load().certs.clone()
    }

    /// This workload's SPIFFE ID.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// Checks that `roots` can serve as a trust bundle, without installing it.
    pub fn check_roots(&self, roots: &[CertificateDer<'static>]) -> Result<(), IdentityError> {
        Self::bundle(roots).map(|_| ())
    }

    /// Replaces the trust bundle (root rotation).
    pub fn set_roots(&self, roots: &[CertificateDer<'static>]) -> Result<(), IdentityError> {
        self.roots.store(Arc::new(Self::bundle(roots)?));
        Ok(())
    }

    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }

    /// Verifies a peer chain (`certs[0]` the leaf) and the X509-SVID leaf rules; returns the ID.
    fn check_chain(
        &self,
        certs: &[CertificateDer<'_>],
        usage: webpki::KeyUsage,
    ) -> Result<SpiffeId, PeerCheckError> {
        let (leaf, intermediates) = certs.split_first().ok_or(PeerCheckError::UnknownCa)?;
        self.verify_path(leaf, intermediates, UnixTime::now(), usage)?;
        spiffe_id_of_leaf(leaf)
    }

    /// Logs and counts a refused peer certificate, and turns the reason into rustls's error.
    fn refuse(&self, direction: &'static str, e: PeerCheckError) -> rustls::Error {
        tracing::warn!(
            direction,
            reason = e.reason(),
            "refused peer certificate: {e}"
        );
        self.failures.inc(direction, e.reason());
        e.into_rustls()
    }

    fn verify_path(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), PeerCheckError> {
        let ee = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| PeerCheckError::Chain(e.to_string()))?;
        let roots = self.roots.load();
        ee.verify_for_usage(
            self.algorithms().all,
            &roots.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map(|_| ())
        .map_err(|e| match e {
            // A bad signature under an anchor of the same name is a foreign CA that copied our
            // root's name: for the operator that is "not our CA", not a malformed chain.
            webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
                PeerCheckError::UnknownCa
            }
            webpki::Error::CertExpired { .. }
            | webpki::Error::CertNotValidYet { .. }
            | webpki::Error::InvalidCertValidity => PeerCheckError::Expired,
            other => PeerCheckError::Chain(other.to_string()),
        })
    }

    /// The server-side (inbound) TLS configuration: TLS 1.3, client certificate required and
    /// checked, the mesh's ALPN protocols first, then plain h2 and http/1.1 (a STRICT port
    /// takes any TLS client as a mutual TLS one).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
        let verifier = Arc::new(MeshClientVerifier {
            identity: self.clone(),
        });
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Invalid(format!("TLS 1.3 unavailable: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(OwnCert(self.clone())));
        cfg.alpn_protocols = [ALPN_MESH_H2, ALPN_MESH_HTTP1, ALPN_H2, ALPN_HTTP1]
            .iter()
            .map(|p| p.to_vec())
            .collect();
        Ok(Arc::new(cfg))
    }

    /// The client-side (outbound) configuration for a destination whose sidecars may present
    /// any of `allowed` (secure naming), offering `alpn`.
    pub fn client_config(
        self: &Arc<Self>,
        allowed: Arc<[SpiffeId]>,
        alpn: &[u8],
    ) -> Arc<rustls::ClientConfig> {
        let verifier = Arc::new(MeshServerVerifier {
            identity: self.clone(),
            allowed,
        });
        let mut cfg = self
            .client_base
            .clone()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(OwnCert(self.clone())));
        cfg.alpn_protocols = vec![alpn.to_vec()];
        // Every endpoint of a cluster shares one server name (the service's FQDN), so the
        // cache needs one entry, not rustls' default 256, which it allocates up front: at a
        // thousand clusters that default alone held 20 MB.
        cfg.resumption = rustls::client::Resumption::in_memory_sessions(SESSIONS_PER_CONFIG);
        Arc::new(cfg)
    }
}

/// Extracts and validates the SPIFFE ID of an X509-SVID leaf.
pub fn spiffe_id_of_leaf(leaf: &CertificateDer<'_>) -> Result<SpiffeId, PeerCheckError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| PeerCheckError::BadSpiffeId(format!("unparseable certificate: {e}")))?;
    if let Ok(Some(bc)) = cert.basic_constraints()
        && bc.value.ca
    {
        return Err(PeerCheckError::CaCertificate);
    }
    if let Ok(Some(ku)) = cert.key_usage()
        && (ku.value.key_cert_sign() || ku.value.crl_sign())
    {
        return Err(PeerCheckError::CaCertificate);
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PeerCheckError::BadSpiffeId(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| PeerCheckError::BadSpiffeId("no subjectAltName".into()))?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let first = uris
        .next()
        .ok_or_else(|| PeerCheckError::BadSpiffeId("no URI SAN".into()))?;
    if uris.next().is_some() {
        return Err(PeerCheckError::BadSpiffeId("more than one URI SAN".into()));
    }
    SpiffeId::parse(first).map_err(|e| PeerCheckError::BadSpiffeId(e.to_string()))
}

/// Serves the current key pair for both directions (rotation-ready).
#[derive(Debug)]
struct OwnCert(Arc<Identity>);

impl rustls::server::ResolvesServerCert for OwnCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.key.load_full())
    }
}

impl rustls::client::ResolvesClientCert for OwnCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.key.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Inbound: verifies the calling sidecar's certificate.
#[derive(Debug)]
struct MeshClientVerifier {
    identity: Arc<Identity>,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let result = self
            .identity
            .verify_path(
                end_entity,
                intermediates,
                now,
                webpki::KeyUsage::client_auth(),
            )
            .and_then(|()| spiffe_id_of_leaf(end_entity));
        match result {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(e) => Err(self.identity.refuse("inbound", e)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.identity.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.identity.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.identity.algorithms().supported_schemes()
    }
}

/// Outbound: verifies the destination sidecar's certificate and its identity (secure naming).
#[derive(Debug)]
struct MeshServerVerifier {
    identity: Arc<Identity>,
    allowed: Arc<[SpiffeId]>,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = self
            .identity
            .verify_path(
                end_entity,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
            )
            .and_then(|()| spiffe_id_of_leaf(end_entity))
            .and_then(|id| {
                if self.allowed.contains(&id) {
                    Ok(())
                } else {
                    Err(PeerCheckError::IdentityMismatch {
                        got: id.to_string(),
                        expected: self
                            .allowed
                            .iter()
                            .map(SpiffeId::as_str)
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
            });
        match result {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(self.identity.refuse("outbound", e)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.identity.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.identity.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.identity.algorithms().supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::dev_pki::{DevCa, LeafOptions};

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem")
    }

    #[test]
    fn leaf_with_one_spiffe_uri_is_accepted() {
        let ca = DevCa::new("cluster.local").unwrap();
        let leaf = ca
            .issue("spiffe://cluster.local/ns/default/sa/reviews")
            .unwrap();
        let id = spiffe_id_of_leaf(&der(&leaf.cert_pem)).unwrap();
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/default/sa/reviews");
    }

    #[test]
    fn leaf_with_two_uris_is_refused() {
        let ca = DevCa::new("cluster.local").unwrap();
        let opts = LeafOptions {
            extra_uris: vec!["spiffe://cluster.local/ns/x/sa/y".into()],
            ..Default::default()
        };
        let leaf = ca
            .issue_with("spiffe://cluster.local/ns/default/sa/reviews", &opts)
            .unwrap();
        let err = spiffe_id_of_leaf(&der(&leaf.cert_pem)).unwrap_err();
        assert_eq!(err.reason(), "bad_spiffe_id");
    }

    #[test]
    fn ca_certificate_is_not_an_identity() {
        let ca = DevCa::new("cluster.local").unwrap();
        let opts = LeafOptions {
            is_ca: true,
            ..Default::default()
        };
        let leaf = ca
            .issue_with("spiffe://cluster.local/ns/default/sa/reviews", &opts)
            .unwrap();
        assert_eq!(
            spiffe_id_of_leaf(&der(&leaf.cert_pem))
                .unwrap_err()
                .reason(),
            "ca_certificate"
        );
        assert_eq!(
            spiffe_id_of_leaf(&der(ca.root_pem())).unwrap_err().reason(),
            "ca_certificate"
        );
    }

    fn identity_of(ca: &DevCa, dir: &Path, id: &str) -> Identity {
        let (cert, key) = ca.issue(id).unwrap().write(dir, "me").unwrap();
        let roots = ca.write_root(dir).unwrap();
        Identity::from_files(
            &SpiffeId::parse(id).unwrap(),
            &cert,
            &key,
            &roots,
            TlsFailureCounter::default(),
        )
        .unwrap()
    }

    #[test]
    fn a_foreign_root_with_our_name_is_an_unknown_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ours = DevCa::new("cluster.local").unwrap();
        let me = identity_of(&ours, dir.path(), "spiffe://cluster.local/ns/default/sa/me");
        let twin = DevCa::new("cluster.local").unwrap();
        let theirs = twin
            .issue("spiffe://cluster.local/ns/default/sa/peer")
            .unwrap();
        let err = me
            .check_chain(&[der(&theirs.cert_pem)], webpki::KeyUsage::server_auth())
            .unwrap_err();
        assert_eq!(err.reason(), "unknown_ca", "{err}");
        let friend = ours
            .issue("spiffe://cluster.local/ns/default/sa/peer")
            .unwrap();
        let id = me
            .check_chain(&[der(&friend.cert_pem)], webpki::KeyUsage::server_auth())
            .unwrap();
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/default/sa/peer");
    }
}
