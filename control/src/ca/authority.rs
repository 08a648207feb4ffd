//! The certificate authority proper: signs workload CSRs, issues the control plane's serving
//! certificate, and verifies renewing clients' SVIDs.
//!
//! Leaf profile (X509-SVID, Istio's workload certificate): random 128-bit serial, empty subject
//! (so the SAN extension is critical, as the SPIFFE spec requires), exactly one URI SAN, cA=false,
//! keyUsage critical digitalSignature + keyEncipherment, extKeyUsage serverAuth + clientAuth,
//! notBefore one minute in the past, notAfter within the signing certificate's lifetime.

use meshlite_xds_proto::spiffe::{SpiffeId, SpiffeIdError};
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::revocation::{RevocationWatch, serial_hex};
use super::{CLOCK_SKEW_ALLOWANCE, CaError, MAX_CERT_TTL, MIN_CERT_TTL, cacerts, csr, root};

/// A signed certificate chain as returned to a workload.
#[derive(Clone, Debug)]
pub struct IssuedChain {
    /// PEM certificates, leaf first, root last (Istio's `cert_chain` order).
    pub chain_pem: Vec<String>,
    /// The leaf's serial number, lowercase hex (the form `cert revoke` takes).
    pub serial_hex: String,
    /// The leaf's notAfter.
    pub not_after: OffsetDateTime,
}

/// What a loader hands the CA: the signing key and certificate, and the trust bundle.
pub(crate) struct SigningMaterial {
    /// Signing certificate's name and key.
    pub(crate) issuer: Issuer<'static, KeyPair>,
    /// No leaf may outlive this (the earliest notAfter along the chain).
    pub(crate) not_after_cap: OffsetDateTime,
    /// Signing certificate up to the root, appended to every leaf.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// The trust bundle.
    pub(crate) roots: Vec<CertificateDer<'static>>,
}

/// The mesh CA. Shareable across tasks (`Send + Sync`); the revocation list is re-read behind a
/// mutex when its file changes.
pub struct CertificateAuthority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    not_after_cap: OffsetDateTime,
    root_not_after: OffsetDateTime,
    chain_pem: Vec<String>,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    revocations: Mutex<RevocationWatch>,
    rng: SystemRandom,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("not_after_cap", &self.not_after_cap)
            .field("chain_len", &self.chain_pem.len())
            .finish_non_exhaustive()
    }
}

/// Validates and lowercases a trust domain.
fn normalize_trust_domain(td: &str) -> Result<String, CaError> {
    let id = SpiffeId::parse(&format!("spiffe://{td}/ca"))?;
    if id.trust_domain().len() != td.len() {
        return Err(SpiffeIdError::TrustDomain(td.to_string()).into());
    }
    Ok(id.trust_domain().to_string())
}

fn random_serial(rng: &SystemRandom) -> Result<[u8; 16], CaError> {
    let mut s = [0u8; 16];
    rng.fill(&mut s).map_err(|_| CaError::Random)?;
    // Positive, and a fixed length of 16 bytes (no leading zero to strip): 126 random bits.
    s[0] = (s[0] & 0x7f) | 0x40;
    Ok(s)
}

impl CertificateAuthority {
    /// Opens the CA kept in `state_dir`, creating its self-signed root on first start (the
    /// directory is created 0700, the key written 0600). Revocations are read from the same
    /// directory.
    pub fn load_or_create(state_dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let td = normalize_trust_domain(trust_domain)?;
        let rng = SystemRandom::new();
        let material = root::load_or_create(state_dir, &td, random_serial(&rng)?)?;
        Self::new(td, material, state_dir, rng)
    }

    /// Opens an operator-provided CA in Istio's `cacerts` layout in `dir`: `ca-cert.pem` (the
    /// signing certificate), `ca-key.pem` (its key, 0600), `root-cert.pem` (the trust bundle)
    /// and `cert-chain.pem` (signing certificate up to the root). The key must match, the
    /// signing certificate must be a CA and chain to a root. Revocations are read from `dir`
    /// too unless [`Self::with_revocations_in`] points elsewhere.
    pub fn from_cacerts(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let td = normalize_trust_domain(trust_domain)?;
        let material = cacerts::load(dir)?;
        Self::new(td, material, dir, SystemRandom::new())
    }

    /// Reads the revocation list from `state_dir` instead (e.g. when `cacerts` is a read-only
    /// mount).
    pub fn with_revocations_in(mut self, state_dir: &Path) -> Result<Self, CaError> {
        self.revocations = Mutex::new(RevocationWatch::new(state_dir)?);
        Ok(self)
    }

    fn new(
        trust_domain: String,
        m: SigningMaterial,
        revocation_dir: &Path,
        rng: SystemRandom,
    ) -> Result<Self, CaError> {
        let anchors = m
            .roots
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| CaError::CaFiles {
                        path: revocation_dir.to_path_buf(),
                        message: format!("root certificate is not a usable trust anchor: {e}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The signing chain ends at the root it was issued under (both loaders check that).
        let root = m
            .chain
            .last()
            .or(m.roots.first())
            .ok_or_else(|| CaError::CaFiles {
                path: revocation_dir.to_path_buf(),
                message: "no root certificate".into(),
            })?;
        let root_not_after = super::pem::not_after(revocation_dir, root)?;
        Ok(Self {
            trust_domain,
            issuer: m.issuer,
            not_after_cap: m.not_after_cap,
            root_not_after,
            chain_pem: m.chain.iter().map(|c| super::pem::cert_pem(c)).collect(),
            roots: m.roots,
            anchors,
            revocations: Mutex::new(RevocationWatch::new(revocation_dir)?),
            rng,
        })
    }

    /// The trust domain this CA issues identities in (lowercase).
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The trust bundle: one PEM certificate per root (Envoy's `ROOTCA`).
    pub fn roots_pem(&self) -> Vec<String> {
        self.roots.iter().map(|c| super::pem::cert_pem(c)).collect()
    }

    /// The trust bundle in DER, for rustls/webpki configurations.
    pub fn roots_der(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The earliest notAfter of the signing chain: no certificate is issued beyond it.
    pub fn signing_not_after(&self) -> OffsetDateTime {
        self.not_after_cap
    }

    /// The notAfter of the root the signing chain leads to (istiod's root certificate
    /// expiry).
    pub fn root_not_after(&self) -> OffsetDateTime {
        self.root_not_after
    }

    fn check_trust_domain(&self, id: &SpiffeId) -> Result<(), CaError> {
        if id.trust_domain() != self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                id: id.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        Ok(())
    }

    /// Signs a workload's PEM CSR for `caller`, the identity the caller has proven (bootstrap
    /// token or current SVID). The CSR must ask for exactly that identity and nothing more;
    /// `ttl` is clamped to [`MIN_CERT_TTL`]..=[`MAX_CERT_TTL`] and to the signing certificate's
    /// lifetime.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        caller: &SpiffeId,
        labels: &std::collections::BTreeMap<String, String>,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedChain, CaError> {
        self.check_trust_domain(caller)?;
        let checked = csr::check_csr(csr_pem, caller)?;
        let san = SanType::URI(caller.as_str().try_into()?);
        let bound = (!labels.is_empty()).then(|| {
            rcgen::CustomExtension::from_oid_content(
                &super::binding::OID,
                super::binding::encode(labels),
            )
        });
        let issued = self.sign_leaf(vec![san], &checked.key, bound, ttl, now)?;
        tracing::info!(identity = %caller, serial = %issued.serial_hex,
            not_after = %issued.not_after, "issued workload certificate");
        Ok(issued)
    }

    /// Issues the control plane's own TLS certificate (port 15012) with a fresh P-256 key:
    /// `spiffe_id` as URI SAN plus the given DNS and IP SANs. Returns the chain and the PKCS#8
    /// PEM key.
    pub fn issue_serving_cert(
        &self,
        spiffe_id: &SpiffeId,
        dns_names: &[String],
        ips: &[IpAddr],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<(IssuedChain, String), CaError> {
        self.check_trust_domain(spiffe_id)?;
        let mut sans = vec![SanType::URI(spiffe_id.as_str().try_into()?)];
        for d in dns_names {
            sans.push(SanType::DnsName(d.as_str().try_into()?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let issued = self.sign_leaf(sans, &key, None, ttl, now)?;
        Ok((issued, key.serialize_pem()))
    }

    fn sign_leaf(
        &self,
        sans: Vec<SanType>,
        public_key: &impl PublicKeyData,
        extension: Option<rcgen::CustomExtension>,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedChain, CaError> {
        let now = now.replace_nanosecond(0).unwrap_or(now);
        let ttl = ttl.clamp(MIN_CERT_TTL, MAX_CERT_TTL);
        let cap = self
            .not_after_cap
            .replace_nanosecond(0)
            .unwrap_or(self.not_after_cap);
        let not_after = (now + ttl).min(cap);
        if not_after <= now {
            return Err(CaError::SigningCertExpired {
                not_after: self.not_after_cap,
            });
        }
        let serial = random_serial(&self.rng)?;
        let mut params = CertificateParams::default();
        // Empty subject: rcgen then marks the SAN extension critical (RFC 5280 §4.2.1.6).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - CLOCK_SKEW_ALLOWANCE;
        params.not_after = not_after;
        params.custom_extensions.extend(extension);
        let cert = params.signed_by(public_key, &self.issuer)?;
        let mut chain_pem = Vec::with_capacity(self.chain_pem.len() + 1);
        chain_pem.push(super::pem::cert_pem(cert.der()));
        chain_pem.extend(self.chain_pem.iter().cloned());
        Ok(IssuedChain {
            chain_pem,
            serial_hex: serial_hex(&serial),
            not_after,
        })
    }

    /// Verifies a renewing client's chain (`chain_der[0]` the leaf) at `now`: path validation
    /// to this CA's roots for client authentication, the X509-SVID leaf rules (not a CA, exactly
    /// one URI SAN holding a SPIFFE ID of this trust domain), and the revocation list (re-read if
    /// its file changed). Returns the proven identity.
    pub fn verify_client_chain(
        &self,
        chain_der: &[CertificateDer<'_>],
        now: OffsetDateTime,
    ) -> Result<SpiffeId, CaError> {
        let (leaf, intermediates) = chain_der
            .split_first()
            .ok_or(CaError::NoClientCertificate)?;
        let ee = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| CaError::UntrustedChain(format!("unparseable certificate: {e}")))?;
        let secs = u64::try_from(now.unix_timestamp()).unwrap_or(0);
        let algs = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all;
        ee.verify_for_usage(
            algs,
            &self.anchors,
            intermediates,
            UnixTime::since_unix_epoch(Duration::from_secs(secs)),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
                CaError::UntrustedChain("unknown CA".into())
            }
            webpki::Error::CertExpired { .. }
            | webpki::Error::CertNotValidYet { .. }
            | webpki::Error::InvalidCertValidity => CaError::ClientCertExpired,
            webpki::Error::CaUsedAsEndEntity => CaError::ClientIsCa,
            other => CaError::UntrustedChain(other.to_string()),
        })?;

        let (id, serial, not_before) = svid_of_leaf(leaf)?;
        self.check_trust_domain(&id)?;
        let mut watch = self
            .revocations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if watch
            .current()?
            .is_revoked(&serial, &id, not_before + CLOCK_SKEW_ALLOWANCE)
        {
            return Err(CaError::Revoked {
                id: id.to_string(),
                serial,
            });
        }
        Ok(id)
    }
}

/// The SPIFFE ID, serial (hex) and notBefore of an X509-SVID leaf, enforcing the leaf rules.
fn svid_of_leaf(leaf: &CertificateDer<'_>) -> Result<(SpiffeId, String, OffsetDateTime), CaError> {
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| CaError::ClientBadSpiffeId(format!("unparseable certificate: {e}")))?;
    if matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca) {
        return Err(CaError::ClientIsCa);
    }
    if let Ok(Some(ku)) = cert.key_usage()
        && (ku.value.key_cert_sign() || ku.value.crl_sign())
    {
        return Err(CaError::ClientIsCa);
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CaError::ClientBadSpiffeId(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| CaError::ClientBadSpiffeId("no subjectAltName".into()))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [one] => *one,
        [] => return Err(CaError::ClientBadSpiffeId("no URI SAN".into())),
        _ => {
            return Err(CaError::ClientBadSpiffeId(format!(
                "{} URI SANs; an SVID has exactly one",
                uris.len()
            )));
        }
    };
    let id = SpiffeId::parse(uri).map_err(|e| CaError::ClientBadSpiffeId(e.to_string()))?;
    Ok((
        id,
        serial_hex(cert.raw_serial()),
        cert.validity().not_before.to_datetime(),
    ))
}

#[cfg(test)]
#[path = "authority_tests.rs"]
pub(crate) mod tests;
