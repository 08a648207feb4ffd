//! The proxy's own key pair and certificate signing request.
//!
//! The key is ECDSA P-256, made inside the process and never written anywhere but the
//! optional state directory (0600). The CSR's only SAN is the workload's SPIFFE ID, as the
//! X509-SVID specification and the control plane's CA require.

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::PrivateKeyDer;

use super::spiffe::SpiffeId;

/// Why a key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// Key generation or CSR serialisation failed.
    #[error("cannot make a key and CSR: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A fresh key pair and the CSR asking the CA to certify it.
pub struct PendingKey {
    /// The CSR, PEM.
    pub csr_pem: String,
    /// The private key, PKCS#8 PEM (for the state directory).
    pub key_pem: String,
    key_der: Vec<u8>,
}

impl std::fmt::Debug for PendingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingKey").finish_non_exhaustive()
    }
}

impl PendingKey {
    /// Makes a P-256 key and a CSR for `id`.
    pub fn generate(id: &SpiffeId) -> Result<Self, CsrError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        let csr = params.serialize_request(&key)?;
        Ok(Self {
            csr_pem: csr.pem()?,
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        })
    }

    /// The private key as rustls takes it.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_carries_exactly_the_workload_id() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/reviews").unwrap();
        let pending = PendingKey::generate(&id).unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&pending.csr_pem).unwrap();
        assert_eq!(
            parsed.params.subject_alt_names,
            vec![SanType::URI(id.as_str().try_into().unwrap())]
        );
        assert!(pending.key_pem.contains("PRIVATE KEY"));
    }
}
