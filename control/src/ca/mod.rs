//! The mesh certificate authority: it issues every workload its SPIFFE X509-SVID.
//!
//! It follows Istio's CA (see SEMANTICS.md §6): a sidecar sends a PKCS#10 CSR whose only SAN is
//! its SPIFFE ID `spiffe://<td>/ns/<ns>/sa/<sa>`, proves that it owns that identity (a bootstrap
//! [`token`] on first start, its current SVID on renewal), and gets back a chain leaf first, root
//! last. The CA overrides everything in the CSR except the public key and refuses any request
//! that asks for more than the caller proved (another identity, extra SANs, a CA certificate).
//!
//! The signing key is either a self-signed root the control plane creates on first start
//! ([`CertificateAuthority::load_or_create`]) or an operator-provided intermediate in Istio's
//! `cacerts` layout ([`CertificateAuthority::from_cacerts`]). Renewals check the caller's chain
//! against the roots and the [`revocation`] list, which the `cert revoke` command edits on disk.

mod authority;
pub mod binding;
mod cacerts;
mod csr;
mod files;
mod pem;
pub mod revocation;
mod root;
pub mod token;

use std::path::PathBuf;
use std::time::Duration;

#[cfg(test)]
pub(crate) use authority::tests::write_cacerts as write_test_cacerts;
pub use authority::{CertificateAuthority, IssuedChain};
pub use files::StateFileError;
pub use revocation::Revocations;
pub use token::{TokenClaims, TokenError, TokenSigner};

use meshlite_xds_proto::spiffe::SpiffeIdError;

/// The mesh's trust bundle as PEM text, what sidecars must trust (Istio's `istio-ca-root-cert`
/// ConfigMap): `root-cert.pem` of the `cacerts` directory when the CA is plugged in, else of
/// the state directory, where `serve` created the root. Read only: a missing root is an error
/// (start `serve` first), never a reason to make one.
pub fn trust_bundle(
    state_dir: &std::path::Path,
    cacerts: Option<&std::path::Path>,
) -> Result<String, CaError> {
    let path = cacerts.unwrap_or(state_dir).join(root::ROOT_CERT_FILE);
    let certs = pem::read_certs(&path).map_err(|e| match e {
        CaError::CaFiles { path, message } if message == "file not found" => CaError::CaFiles {
            path,
            message: "file not found: the control plane makes its root when `serve` starts".into(),
        },
        other => other,
    })?;
    Ok(certs.iter().map(|c| pem::cert_pem(c)).collect())
}

/// Writes a credential handed to a workload (a bootstrap token, a trust bundle) to `path`
/// atomically with permission `mode`, so a sidecar starting meanwhile never reads half a file.
pub fn write_credential(path: &std::path::Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    Ok(files::write_atomic(path, contents, mode)?)
}

/// Lifetime of a workload certificate when the caller does not ask for one: Istio's
/// `DEFAULT_WORKLOAD_CERT_TTL` (24 h).
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Longest lifetime the CA grants: Istio's `DefaultMaxWorkloadCertTTL` (90 days).
pub const MAX_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// Shortest lifetime the CA grants; shorter requests are raised to it. Short enough for
/// rotation drills and tests; production lifetimes are hours.
pub const MIN_CERT_TTL: Duration = Duration::from_secs(10);

/// How far back `notBefore` is set, so a peer whose clock is slightly behind accepts a fresh
/// certificate.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// Why the CA could not start, refused to sign, or refused a client certificate.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A state file (root key, certificate, revocation list) could not be read or written.
    #[error(transparent)]
    File(#[from] StateFileError),
    /// The CA's own certificate or key files are unusable.
    #[error("{path}: {message}")]
    CaFiles {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rcgen failed to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The system random number generator failed (serial numbers).
    #[error("system random number generator failed")]
    Random,
    /// The CSR is not a PEM/DER PKCS#10 request.
    #[error("CSR cannot be parsed: {0}")]
    CsrUnparseable(String),
    /// The CSR's self-signature does not verify: the requester does not hold the key.
    #[error("CSR signature does not verify with the key it carries ({0})")]
    CsrBadSignature(String),
    /// The CSR asks for no URI SAN.
    #[error("CSR asks for no identity; it must carry exactly one URI SAN: {caller}")]
    CsrNoIdentity {
        /// The caller's proven identity.
        caller: String,
    },
    /// The CSR asks for more than one SAN.
    #[error(
        "CSR asks for {count} SANs ({requested}); only the caller's identity {caller} may be \
         requested"
    )]
    CsrExtraSans {
        /// How many SANs were requested.
        count: usize,
        /// The SANs, comma-separated (`dns:`, `ip:`, `email:` prefixes for non-URI names).
        requested: String,
        /// The caller's proven identity.
        caller: String,
    },
    /// The CSR asks for an identity other than the one the caller proved.
    #[error("CSR asks for identity {requested}, but the caller proved {caller}")]
    CsrWrongIdentity {
        /// The URI SAN requested.
        requested: String,
        /// The caller's proven identity.
        caller: String,
    },
    /// The CSR asks for a CA certificate or certificate-signing key usage.
    #[error("CSR asks for {what}; the mesh CA issues only leaf certificates and will not grant it")]
    CsrRequestsCa {
        /// Which request: `basicConstraints cA=true`, `keyUsage keyCertSign`, ...
        what: &'static str,
    },
    /// The CSR carries a key type or size the mesh does not accept.
    #[error("CSR key is {found}; accepted: ECDSA P-256, ECDSA P-384, RSA of 2048 bits or more")]
    CsrWeakKey {
        /// The key found.
        found: String,
    },
    /// The identity belongs to another trust domain.
    #[error("identity {id} is not in this CA's trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The identity.
        id: String,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// A SPIFFE ID is malformed.
    #[error(transparent)]
    SpiffeId(#[from] SpiffeIdError),
    /// The signing certificate has expired (or expires within the minimum lifetime).
    #[error("the CA signing certificate expired at {not_after}; rotate the CA")]
    SigningCertExpired {
        /// Its notAfter.
        not_after: time::OffsetDateTime,
    },
    /// No client certificate was presented.
    #[error("no client certificate presented")]
    NoClientCertificate,
    /// The client chain does not lead to this CA's roots.
    #[error("client certificate is not signed by this mesh's CA: {0}")]
    UntrustedChain(String),
    /// The client certificate is outside its validity period.
    #[error("client certificate is expired or not yet valid")]
    ClientCertExpired,
    /// The client presented a CA certificate as its identity.
    #[error("client presented a CA certificate as its identity")]
    ClientIsCa,
    /// The client certificate has no valid single SPIFFE ID.
    #[error("client certificate has no valid SPIFFE identity: {0}")]
    ClientBadSpiffeId(String),
    /// The client certificate was revoked.
    #[error("certificate {serial} of {id} has been revoked")]
    Revoked {
        /// The identity.
        id: String,
        /// The serial, lowercase hex.
        serial: String,
    },
    /// A serial number given for revocation is not hexadecimal.
    #[error("`{0}` is not a certificate serial number (hexadecimal, colons allowed)")]
    BadSerial(String),
    /// The revocation list is unreadable; renewals are refused until it is fixed (fail closed).
    #[error("revocation list {path} is unreadable, refusing renewals until it is fixed: {message}")]
    RevocationList {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl CaError {
    /// A short, stable name for the failure (the `error` label of
    /// `citadel_server_csr_sign_err_count`).
    pub fn reason(&self) -> &'static str {
        match self {
            CaError::File(_) | CaError::CaFiles { .. } | CaError::RevocationList { .. } => {
                "ca_files"
            }
            CaError::Generate(_) | CaError::Random => "cert_gen_error",
            CaError::CsrUnparseable(_) => "csr_unparseable",
            CaError::CsrBadSignature(_) => "csr_bad_signature",
            CaError::CsrNoIdentity { .. } => "no_identity",
            CaError::CsrExtraSans { .. } => "extra_sans",
            CaError::CsrWrongIdentity { .. } => "wrong_identity",
            CaError::CsrRequestsCa { .. } => "ca_requested",
            CaError::CsrWeakKey { .. } => "weak_key",
            CaError::ForeignTrustDomain { .. } => "foreign_trust_domain",
            CaError::SpiffeId(_) => "bad_spiffe_id",
            CaError::SigningCertExpired { .. } => "signing_cert_expired",
            CaError::NoClientCertificate => "no_client_certificate",
            CaError::UntrustedChain(_) => "untrusted_chain",
            CaError::ClientCertExpired => "client_cert_expired",
            CaError::ClientIsCa => "client_is_ca",
            CaError::ClientBadSpiffeId(_) => "client_bad_spiffe_id",
            CaError::Revoked { .. } => "revoked",
            CaError::BadSerial(_) => "bad_serial",
        }
    }

    /// Whether the CSR itself could not be read: it does not parse, or its signature does not
    /// verify with the key it carries (istiod's CSR parsing errors).
    pub fn is_csr_parse_error(&self) -> bool {
        matches!(
            self,
            CaError::CsrUnparseable(_) | CaError::CsrBadSignature(_)
        )
    }
}
