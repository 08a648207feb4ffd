//! The control plane's own self-signed root, created on first start.
//!
//! With no operator-provided `cacerts`, the control plane is its own root, as istiod is with its
//! self-signed `istio-ca-secret`: ECDSA P-256, CN "meshlite root CA", O the trust domain, URI SAN
//! `spiffe://<td>` (a SPIFFE signing certificate carries the trust domain with no path), valid 10
//! years. `root-cert.pem` (0644) and `root-key.pem` (0600) persist it in the state directory.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use std::path::Path;
use time::OffsetDateTime;

use super::CaError;
use super::authority::SigningMaterial;
use super::files::{ensure_private_dir, write_atomic};
use super::pem::{bad, cert_pem, check_is_ca, check_key_matches, not_after, read_certs, read_key};

/// Root certificate file in the state directory.
pub(crate) const ROOT_CERT_FILE: &str = "root-cert.pem";
/// Root key file in the state directory.
pub(crate) const ROOT_KEY_FILE: &str = "root-key.pem";

/// Validity of a created root: 10 years, istiod's self-signed root default.
const ROOT_VALIDITY: time::Duration = time::Duration::days(3650);

/// Loads the root from `state_dir`, or creates and persists one if neither file exists.
pub(crate) fn load_or_create(
    state_dir: &Path,
    trust_domain: &str,
    serial: [u8; 16],
) -> Result<SigningMaterial, CaError> {
    ensure_private_dir(state_dir)?;
    let cert_path = state_dir.join(ROOT_CERT_FILE);
    let key_path = state_dir.join(ROOT_KEY_FILE);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => load(&cert_path, &key_path),
        (false, false) => create(&cert_path, &key_path, trust_domain, serial),
        (true, false) => Err(bad(
            &key_path,
            "root-cert.pem exists but its key is missing; restore the key, or remove both files \
             to create a new root (every workload will then need new certificates)",
        )),
        (false, true) => Err(bad(
            &cert_path,
            "root-key.pem exists but the root certificate is missing; restore it, or remove both \
             files to create a new root",
        )),
    }
}

fn load(cert_path: &Path, key_path: &Path) -> Result<SigningMaterial, CaError> {
    let certs = read_certs(cert_path)?;
    let key = read_key(key_path)?;
    let root = certs
        .first()
        .ok_or_else(|| bad(cert_path, "no certificate"))?
        .clone();
    check_is_ca(cert_path, &root)?;
    check_key_matches(key_path, &root, &key)?;
    let cap = not_after(cert_path, &root)?;
    let issuer = Issuer::from_ca_cert_der(&root, key)
        .map_err(|e| bad(cert_path, format!("cannot sign with this certificate: {e}")))?;
    tracing::info!(path = %cert_path.display(), not_after = %cap, "loaded mesh root CA");
    Ok(SigningMaterial {
        issuer,
        not_after_cap: cap,
        chain: vec![root],
        roots: certs,
    })
}

fn create(
    cert_path: &Path,
    key_path: &Path,
    trust_domain: &str,
    serial: [u8; 16],
) -> Result<SigningMaterial, CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, "meshlite root CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{trust_domain}").as_str().try_into()?,
    )];
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + ROOT_VALIDITY;
    let cert = params.self_signed(&key)?;
    // Key first: a crash before the certificate is written leaves an error to fix, never a
    // certificate whose key is lost.
    write_atomic(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(cert_path, cert_pem(cert.der()).as_bytes(), 0o644)?;
    tracing::info!(path = %cert_path.display(), trust_domain, "created mesh root CA");
    let der = cert.der().clone();
    Ok(SigningMaterial {
        not_after_cap: params.not_after,
        issuer: Issuer::new(params, key),
        chain: vec![der.clone()],
        roots: vec![der],
    })
}
