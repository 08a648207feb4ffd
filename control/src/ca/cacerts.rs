//! Istio's plug-in CA layout (`cacerts` secret), for operators with their own PKI.
//!
//! `ca-cert.pem` is the signing certificate (usually an intermediate), `ca-key.pem` its key,
//! `root-cert.pem` the offline root(s) that form the trust bundle, and `cert-chain.pem` the chain
//! from the signing certificate up to the root. Everything is checked at load, so a mismatched
//! key or a chain that does not reach the root stops the control plane at start instead of
//! producing certificates no peer will accept.

use rcgen::Issuer;
use rustls_pki_types::CertificateDer;
use std::path::Path;

use super::CaError;
use super::authority::SigningMaterial;
use super::files::read_public;
use super::pem::{
    bad, certs_from_pem, check_is_ca, check_key_matches, not_after, read_certs, read_key, signed_by,
};

/// Loads and cross-checks the four `cacerts` files in `dir`. `cert-chain.pem` may be absent
/// when `ca-cert.pem` is itself the root.
pub(crate) fn load(dir: &Path) -> Result<SigningMaterial, CaError> {
    let cert_path = dir.join("ca-cert.pem");
    let key_path = dir.join("ca-key.pem");
    let root_path = dir.join("root-cert.pem");
    let chain_path = dir.join("cert-chain.pem");

    let signing = read_certs(&cert_path)?
        .into_iter()
        .next()
        .ok_or_else(|| bad(&cert_path, "no certificate"))?;
    let key = read_key(&key_path)?;
    check_key_matches(&key_path, &signing, &key)?;
    check_is_ca(&cert_path, &signing)?;
    let roots = read_certs(&root_path)?;
    for r in &roots {
        check_is_ca(&root_path, r)?;
    }
    let listed = match read_public(&chain_path)? {
        Some(bytes) => certs_from_pem(&chain_path, &bytes)?,
        None => Vec::new(),
    };
    let chain = normalize_chain(&chain_path, signing, listed, &roots)?;

    let mut cap = not_after(&cert_path, &chain[0])?;
    for c in &chain {
        cap = cap.min(not_after(&chain_path, c)?);
    }
    let issuer = Issuer::from_ca_cert_der(&chain[0], key).map_err(|e| {
        bad(
            &cert_path,
            format!("cannot sign with this certificate: {e}"),
        )
    })?;
    tracing::info!(dir = %dir.display(), chain_len = chain.len(), not_after = %cap,
        "loaded plug-in CA certificates");
    Ok(SigningMaterial {
        issuer,
        not_after_cap: cap,
        chain,
        roots,
    })
}

/// Builds signing cert .. root from `cert-chain.pem`, tolerating a chain that omits the signing
/// cert at its head or the root at its tail, and checks every link's signature.
fn normalize_chain(
    chain_path: &Path,
    signing: CertificateDer<'static>,
    listed: Vec<CertificateDer<'static>>,
    roots: &[CertificateDer<'static>],
) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let mut chain = listed;
    if chain.first() != Some(&signing) {
        chain.insert(0, signing);
    }
    let last = chain
        .last()
        .cloned()
        .ok_or_else(|| bad(chain_path, "empty chain"))?;
    if !roots.contains(&last) {
        let root = roots.iter().find(|r| signed_by(&last, r)).ok_or_else(|| {
            bad(
                chain_path,
                "the signing certificate does not chain to any certificate in root-cert.pem",
            )
        })?;
        chain.push(root.clone());
    }
    for (i, pair) in chain.windows(2).enumerate() {
        if !signed_by(&pair[0], &pair[1]) {
            return Err(bad(
                chain_path,
                format!(
                    "certificate {} of the chain is not signed by certificate {}",
                    i + 1,
                    i + 2
                ),
            ));
        }
        check_is_ca(chain_path, &pair[1])?;
    }
    Ok(chain)
}
