//! Connections to services outside the mesh: plaintext, or TLS the sidecar originates as the
//! DestinationRule's `trafficPolicy.tls` says (SEMANTICS 1.5), so a call the app makes in
//! plain HTTP leaves the pod encrypted ("TLS origination for the OpenAI API").
//!
//! `SIMPLE` verifies the server's chain against `caCertificates` (else the system's roots) and
//! its name against `subjectAltNames` (else the SNI); `MUTUAL` also presents the user's client
//! certificate; `ISTIO_MUTUAL` presents the workload's SVID and checks the server's SPIFFE ID.
//! `insecureSkipVerify: true` accepts any server certificate (handshake signatures are still
//! checked) and is warned about by validation. TLS 1.3 only unless the `tls12` feature is on.

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use meshlite_xds_proto::v1;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::identity::spiffe::SpiffeId;
use crate::identity::tls::{Identity, peer_check_reason};

/// Why the TLS a DestinationRule asks for cannot be set up (the push is refused).
#[derive(Debug, thiserror::Error)]
pub enum EgressTlsError {
    /// A certificate or key file cannot be read.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the settings.
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
    /// A setting is not usable.
    #[error("{0}")]
    Invalid(String),
}

/// Why a connection to a service outside the mesh failed.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// TCP connect (or name resolution) failed.
    #[error("{0}")]
    Tcp(#[from] std::io::Error),
    /// TCP connect did not finish in time.
    #[error("connect timed out")]
    Timeout,
    /// The TLS handshake failed; `reason` names the check.
    #[error("TLS handshake failed ({reason}): {message}")]
    Tls {
        /// Short reason (`unknown_ca`, `expired`, `invalid_certificate`, ...).
        reason: &'static str,
        /// Full message.
        message: String,
    },
    /// The target URI has no host.
    #[error("the target has no host")]
    NoHost,
}

/// TLS to originate.
#[derive(Debug, Clone)]
pub struct EgressTls {
    config: Arc<rustls::ClientConfig>,
    /// `sni`, when set; else the target's host name.
    sni: Option<ServerName<'static>>,
}

fn read_file(path: &str) -> Result<Vec<u8>, EgressTlsError> {
    std::fs::read(path).map_err(|e| EgressTlsError::File {
        path: path.to_string(),
        message: e.to_string(),
    })
}

fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, EgressTlsError> {
    let bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EgressTlsError::File {
            path: path.to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(EgressTlsError::File {
            path: path.to_string(),
            message: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// The roots a SIMPLE or MUTUAL server chain is verified against.
fn roots(ca_certificates: &str) -> Result<rustls::RootCertStore, EgressTlsError> {
    let mut store = rustls::RootCertStore::empty();
    if ca_certificates.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        for c in found.certs {
            let _ = store.add(c);
        }
        if store.is_empty() {
            return Err(EgressTlsError::Invalid(
                "no caCertificates given and no system roots found".into(),
            ));
        }
        return Ok(store);
    }
    for c in certs(ca_certificates)? {
        store.add(c).map_err(EgressTlsError::Rustls)?;
    }
    Ok(store)
}

impl EgressTls {
    /// The TLS a policy asks for (`None`: plaintext). `alpn` is offered; `identity` and
    /// `mesh_ids` serve ISTIO_MUTUAL (the server must present one of `mesh_ids`).
    pub fn from_policy(
        tls: &v1::ClientTls,
        identity: &Arc<Identity>,
        mesh_ids: &Arc<[SpiffeId]>,
        alpn: &[u8],
    ) -> Result<Option<Self>, EgressTlsError> {
        use v1::client_tls::Mode;
        let mode = Mode::try_from(tls.mode)
            .map_err(|_| EgressTlsError::Invalid(format!("unknown TLS mode {}", tls.mode)))?;
        let sni = (!tls.sni.is_empty())
            .then(|| {
                ServerName::try_from(tls.sni.clone())
                    .map_err(|e| EgressTlsError::Invalid(format!("sni `{}`: {e}", tls.sni)))
            })
            .transpose()?;
        let config = match mode {
            Mode::Disable => return Ok(None),
            Mode::IstioMutual => {
                let allowed: Arc<[SpiffeId]> = if tls.subject_alt_names.is_empty() {
                    mesh_ids.clone()
                } else {
                    tls.subject_alt_names
                        .iter()
                        .map(|s| {
                            SpiffeId::parse(s).map_err(|e| {
                                EgressTlsError::Invalid(format!("subjectAltNames `{s}`: {e}"))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?
                        .into()
                };
                identity.client_config(allowed, alpn)
            }
            Mode::Simple | Mode::Mutual => {
                let provider = identity.provider().clone();
                let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure_skip_verify {
                    Arc::new(AnyCertificate(provider.clone()))
                } else {
                    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                        Arc::new(roots(&tls.ca_certificates)?),
                        provider.clone(),
                    )
                    .build()
                    .map_err(|e| EgressTlsError::Invalid(format!("caCertificates: {e}")))?;
                    Arc::new(SanVerifier {
                        inner,
                        sans: tls.subject_alt_names.clone(),
                    })
                };
                let builder = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .dangerous()
                    .with_custom_certificate_verifier(verifier);
                let mut cfg = if mode == Mode::Mutual {
                    let key = PrivateKeyDer::from_pem_slice(&read_file(&tls.private_key)?)
                        .map_err(|e| EgressTlsError::File {
                            path: tls.private_key.clone(),
                            message: e.to_string(),
                        })?;
                    builder.with_client_auth_cert(certs(&tls.client_certificate)?, key)?
                } else {
                    builder.with_no_client_auth()
                };
                cfg.alpn_protocols = vec![alpn.to_vec()];
                Arc::new(cfg)
            }
        };
        Ok(Some(Self { config, sni }))
    }
}

/// Chain verification by webpki; the name checked is one of `sans` when given (a DNS name
/// verified by webpki, or any SAN of the certificate, e.g. a URI), else the SNI.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    sans: Vec<String>,
}

/// The certificate's DNS and URI SANs.
fn cert_sans(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        if self.sans.is_empty() {
            return verdict;
        }
        match verdict {
            // The chain is good; the name to check is the DestinationRule's.
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {
                let present = cert_sans(end_entity);
                if self
                    .sans
                    .iter()
                    .any(|want| present.iter().any(|p| p == want))
                {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(CertificateError::NotValidForName.into())
                }
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecureSkipVerify: true`: any certificate, genuine handshake signatures. Also what the
/// app's HTTPS probes use ([`crate::admin::app_probe`]): the kubelet checks no certificate.
#[derive(Debug)]
pub(crate) struct AnyCertificate(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Opens connections to services outside the mesh: TCP to the target's host (a name is
/// resolved per connection), then TLS when the policy asks for it.
#[derive(Debug, Clone)]
pub struct EgressConnector {
    connect_timeout: Duration,
    tls: Option<EgressTls>,
}

impl EgressConnector {
    /// A connector with `connect_timeout` and, when given, TLS.
    pub fn new(connect_timeout: Duration, tls: Option<EgressTls>) -> Self {
        Self {
            connect_timeout,
            tls,
        }
    }
}

/// A connection made by [`EgressConnector`].
#[derive(Debug)]
pub enum EgressStream {
    /// Plaintext.
    Plain(TokioIo<TcpStream>),
    /// TLS the sidecar originated.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl tower::Service<http::Uri> for EgressConnector {
    type Response = EgressStream;
    type Error = EgressError;
    type Future = Pin<Box<dyn Future<Output = Result<EgressStream, EgressError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or(EgressError::NoHost)?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(80);
            let tcp = tokio::time::timeout(
                this.connect_timeout,
                TcpStream::connect((host.as_str(), port)),
            )
            .await
            .map_err(|_| EgressError::Timeout)??;
            let _ = tcp.set_nodelay(true);
            let Some(tls) = this.tls else {
                return Ok(EgressStream::Plain(TokioIo::new(tcp)));
            };
            let name = match tls.sni {
                Some(n) => n,
                None => ServerName::try_from(host).map_err(|e| EgressError::Tls {
                    reason: "bad_server_name",
                    message: e.to_string(),
                })?,
            };
            let connector = tokio_rustls::TlsConnector::from(tls.config);
            let handshake =
                tokio::time::timeout(this.connect_timeout, connector.connect(name, tcp))
                    .await
                    .map_err(|_| EgressError::Timeout)?;
            let stream = handshake.map_err(|e| EgressError::Tls {
                reason: e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .map(peer_check_reason)
                    .unwrap_or("handshake"),
                message: e.to_string(),
            })?;
            Ok(EgressStream::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

impl Connection for EgressStream {
    fn connected(&self) -> Connected {
        match self {
            EgressStream::Plain(_) => Connected::new(),
            EgressStream::Tls(s) => {
                let (_, session) = s.inner().get_ref();
                if session.alpn_protocol() == Some(b"h2".as_slice()) {
                    Connected::new().negotiated_h2()
                } else {
                    Connected::new()
                }
            }
        }
    }
}

impl Read for EgressStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            EgressStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            EgressStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl Write for EgressStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            EgressStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            EgressStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            EgressStream::Plain(s) => Pin::new(s).poll_flush(cx),
            EgressStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            EgressStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            EgressStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
