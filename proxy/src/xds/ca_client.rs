//! Asks the control plane's CA for a certificate: a fresh key made here, a CSR for this
//! workload's SPIFFE ID, proven either by the bootstrap token (first certificate) or by the
//! current SVID presented as the TLS client certificate (renewals).

use meshlite_xds_proto::v1::CertificateRequest;
use meshlite_xds_proto::v1::certificate_service_client::CertificateServiceClient;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::sync::Arc;
use std::time::Duration;

use super::XdsError;
use super::channel::ControlEndpoint;
use crate::identity::csr::PendingKey;
use crate::identity::spiffe::SpiffeId;
use crate::identity::tls::Identity;

/// How the caller proves its identity to the CA.
pub enum Credential<'a> {
    /// A bootstrap token, sent as `authorization: Bearer`.
    Token(&'a str),
    /// The current SVID, presented in the TLS handshake.
    Svid(&'a Arc<Identity>),
}

/// A certificate just issued, with its key.
pub struct Issued {
    /// Leaf first, root last.
    pub chain: Vec<CertificateDer<'static>>,
    /// The chain as PEM, for the state directory.
    pub chain_pem: String,
    /// The key it certifies.
    pub key: PendingKey,
}

/// Requests a certificate for `id` valid for `ttl`.
pub async fn request(
    endpoint: &ControlEndpoint,
    id: &SpiffeId,
    credential: Credential<'_>,
    ttl: Duration,
) -> Result<Issued, XdsError> {
    let key = PendingKey::generate(id).map_err(|e| XdsError::Certificate(e.to_string()))?;
    let identity = match &credential {
        Credential::Svid(i) => Some(*i),
        Credential::Token(_) => None,
    };
    let channel = endpoint.connect(identity).await?;
    let mut client = CertificateServiceClient::new(channel);
    let mut req = tonic::Request::new(CertificateRequest {
        csr: key.csr_pem.clone(),
        validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
    });
    if let Credential::Token(t) = credential {
        let value = format!("Bearer {}", t.trim())
            .parse()
            .map_err(|_| XdsError::Certificate("the bootstrap token is not valid ASCII".into()))?;
        req.metadata_mut().insert("authorization", value);
    }
    let resp = client
        .create_certificate(req)
        .await
        .map_err(|s| XdsError::Refused(format!("{:?}: {}", s.code(), s.message())))?
        .into_inner();
    if resp.cert_chain.is_empty() {
        return Err(XdsError::Certificate(
            "the CA returned no certificate".into(),
        ));
    }
    let chain_pem = resp.cert_chain.concat();
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| XdsError::Certificate(format!("unreadable certificate chain: {e}")))?;
    Ok(Issued {
        chain,
        chain_pem,
        key,
    })
}
