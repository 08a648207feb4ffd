//! PEM and certificate helpers shared by the CA's loaders: read certificates and keys from the
//! CA files with error messages naming the file, and check the relations between them (key
//! matches certificate, certificate is a CA, one certificate signed another).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rcgen::KeyPair;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::Path;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::CaError;
use super::files::{read_private, read_public};

/// A `CaFiles` error for `path`.
pub(crate) fn bad(path: &Path, message: impl Into<String>) -> CaError {
    CaError::CaFiles {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// PEM text of one DER certificate (64-column base64, LF line endings).
pub(crate) fn cert_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Every certificate in a PEM file, in order; absent file or no certificate is an error.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let bytes = read_public(path)?.ok_or_else(|| bad(path, "file not found"))?;
    certs_from_pem(path, &bytes)
}

/// Every certificate in PEM `bytes` (read from `path`, for messages).
pub(crate) fn certs_from_pem(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(path, "no CERTIFICATE block"));
    }
    for c in &certs {
        parse(path, c)?;
    }
    Ok(certs)
}

/// Reads a private key file (permissions checked) in PKCS#8, SEC1 or PKCS#1 PEM.
pub(crate) fn read_key(path: &Path) -> Result<KeyPair, CaError> {
    let bytes = read_private(path)?.ok_or_else(|| bad(path, "file not found"))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| bad(path, "not a PEM file"))?;
    KeyPair::from_pem(text).map_err(|e| bad(path, format!("unusable private key: {e}")))
}

/// Parses a certificate, naming `path` on failure.
pub(crate) fn parse<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, CaError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| bad(path, format!("unparseable certificate: {e}")))
}

/// Checks that `key` is the private key of `cert`.
pub(crate) fn check_key_matches(path: &Path, cert: &[u8], key: &KeyPair) -> Result<(), CaError> {
    let c = parse(path, cert)?;
    if c.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(bad(
            path,
            "the private key does not belong to the CA certificate",
        ));
    }
    Ok(())
}

/// Checks that `cert` is a CA certificate allowed to sign certificates.
pub(crate) fn check_is_ca(path: &Path, cert: &[u8]) -> Result<(), CaError> {
    let c = parse(path, cert)?;
    let is_ca = matches!(c.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    if !is_ca {
        return Err(bad(
            path,
            "not a CA certificate (basicConstraints cA is not true)",
        ));
    }
    if let Ok(Some(ku)) = c.key_usage()
        && !ku.value.key_cert_sign()
    {
        return Err(bad(path, "CA certificate lacks keyUsage keyCertSign"));
    }
    Ok(())
}

/// Whether `child`'s signature verifies with `parent`'s key.
pub(crate) fn signed_by(child: &[u8], parent: &[u8]) -> bool {
    match (
        X509Certificate::from_der(child),
        X509Certificate::from_der(parent),
    ) {
        (Ok((_, c)), Ok((_, p))) => {
            c.issuer() == p.subject() && c.verify_signature(Some(p.public_key())).is_ok()
        }
        _ => false,
    }
}

/// The certificate's notAfter.
pub(crate) fn not_after(path: &Path, cert: &[u8]) -> Result<OffsetDateTime, CaError> {
    Ok(parse(path, cert)?.validity().not_after.to_datetime())
}
