//! Inspection of a workload's PKCS#10 CSR before anything is signed.
//!
//! Istio's rule: the CA must verify the caller owns every SAN in the CSR. Here that is stricter
//! and simpler: the CSR must ask for exactly one SAN, a URI equal to the identity the caller
//! proved. Requests for a CA certificate are refused rather than silently dropped, so a
//! misbehaving or compromised client is visible in the logs. Only the public key is carried over
//! into the certificate; every other field is set by the CA.

use meshlite_xds_proto::spiffe::SpiffeId;
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_NAME_CONSTRAINTS,
    OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::*;

use super::CaError;

/// Largest CSR accepted; a P-256 CSR is well under 1 KiB, RSA 4096 under 2 KiB.
const MAX_CSR_PEM_BYTES: usize = 16 * 1024;

/// Smallest RSA modulus accepted (NIST SP 800-57, Istio's default key size).
const MIN_RSA_BITS: usize = 2048;

/// The part of a checked CSR that goes into the certificate.
pub(crate) struct CheckedCsr {
    /// The requester's public key, ready for rcgen.
    pub(crate) key: rcgen::SubjectPublicKeyInfo,
}

/// Parses `csr_pem`, verifies its self-signature, key and requested extensions, and checks that
/// it asks for exactly `caller`.
pub(crate) fn check_csr(csr_pem: &str, caller: &SpiffeId) -> Result<CheckedCsr, CaError> {
    if csr_pem.len() > MAX_CSR_PEM_BYTES {
        return Err(CaError::CsrUnparseable(format!(
            "{} bytes, larger than the {MAX_CSR_PEM_BYTES}-byte limit",
            csr_pem.len()
        )));
    }
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| CaError::CsrUnparseable(format!("no PEM CERTIFICATE REQUEST block: {e}")))?;
    let (rest, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| CaError::CsrUnparseable(format!("not a PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(CaError::CsrUnparseable(
            "trailing bytes after the request".into(),
        ));
    }
    // Key first: a weak key would also fail signature verification (ring refuses RSA < 2048),
    // and "RSA 1024 bits" tells the user more than "bad signature".
    check_key(&csr.certification_request_info.subject_pki)?;
    csr.verify_signature()
        .map_err(|e| CaError::CsrBadSignature(e.to_string()))?;

    let mut sans = Vec::new();
    for attr in csr.certification_request_info.iter_attributes() {
        if let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() {
            for ext in &req.extensions {
                check_extension(ext, &mut sans)?;
            }
        }
    }
    check_sans(&sans, caller)?;

    let key = rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|e| CaError::CsrWeakKey {
            found: format!("encoded in a form the CA cannot reuse ({e})"),
        })?;
    Ok(CheckedCsr { key })
}

fn check_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<(), CaError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| x509_parser::der_parser::oid::Oid::try_from(p).ok());
        return match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => Ok(()),
            Some(c) => Err(CaError::CsrWeakKey {
                found: format!("ECDSA on curve {c}"),
            }),
            None => Err(CaError::CsrWeakKey {
                found: "ECDSA without a named curve".into(),
            }),
        };
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => rsa_bits(rsa.modulus),
            _ => 0,
        };
        if bits < MIN_RSA_BITS {
            return Err(CaError::CsrWeakKey {
                found: format!("RSA {bits} bits"),
            });
        }
        return Ok(());
    }
    Err(CaError::CsrWeakKey {
        found: format!("key algorithm {alg}"),
    })
}

/// Bit length of a big-endian unsigned integer (leading zero bytes ignored).
fn rsa_bits(modulus: &[u8]) -> usize {
    let trimmed = match modulus.iter().position(|b| *b != 0) {
        Some(i) => &modulus[i..],
        None => return 0,
    };
    let lead = trimmed[0];
    (trimmed.len() - 1) * 8 + (8 - lead.leading_zeros() as usize)
}

fn check_extension(ext: &X509Extension<'_>, sans: &mut Vec<String>) -> Result<(), CaError> {
    match ext.parsed_extension() {
        ParsedExtension::SubjectAlternativeName(san) => {
            sans.extend(san.general_names.iter().map(describe_name));
        }
        ParsedExtension::BasicConstraints(bc) if bc.ca => {
            return Err(CaError::CsrRequestsCa {
                what: "a CA certificate (basicConstraints cA=true)",
            });
        }
        ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() => {
            return Err(CaError::CsrRequestsCa {
                what: "certificate signing (keyUsage keyCertSign)",
            });
        }
        ParsedExtension::KeyUsage(ku) if ku.crl_sign() => {
            return Err(CaError::CsrRequestsCa {
                what: "CRL signing (keyUsage cRLSign)",
            });
        }
        ParsedExtension::NameConstraints(_) => {
            return Err(CaError::CsrRequestsCa {
                what: "name constraints (a CA-only extension)",
            });
        }
        ParsedExtension::ParseError { error } => {
            let oid = &ext.oid;
            if *oid == OID_X509_EXT_SUBJECT_ALT_NAME
                || *oid == OID_X509_EXT_BASIC_CONSTRAINTS
                || *oid == OID_X509_EXT_KEY_USAGE
                || *oid == OID_X509_EXT_NAME_CONSTRAINTS
            {
                return Err(CaError::CsrUnparseable(format!(
                    "malformed requested extension {oid}: {error}"
                )));
            }
        }
        // Everything else (extKeyUsage, subject key id, unknown extensions) is overridden by
        // the CA's own profile and not copied.
        _ => {}
    }
    Ok(())
}

/// A SAN as shown in error messages: URIs as they are, other kinds prefixed.
fn describe_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::URI(u) => (*u).to_string(),
        GeneralName::DNSName(d) => format!("dns:{d}"),
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::IPAddress(b) => match b.len() {
            4 => {
                let a: [u8; 4] = [b[0], b[1], b[2], b[3]];
                format!("ip:{}", std::net::Ipv4Addr::from(a))
            }
            16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                format!("ip:{}", std::net::Ipv6Addr::from(a))
            }
            _ => "ip:<malformed>".into(),
        },
        GeneralName::DirectoryName(n) => format!("dirname:{n}"),
        GeneralName::OtherName(oid, _) => format!("othername:{oid}"),
        GeneralName::RegisteredID(oid) => format!("rid:{oid}"),
        _ => "<unsupported name>".into(),
    }
}

fn check_sans(sans: &[String], caller: &SpiffeId) -> Result<(), CaError> {
    match sans {
        [] => Err(CaError::CsrNoIdentity {
            caller: caller.to_string(),
        }),
        [only] => match SpiffeId::parse(only) {
            Ok(id) if id == *caller => Ok(()),
            _ => Err(CaError::CsrWrongIdentity {
                requested: only.clone(),
                caller: caller.to_string(),
            }),
        },
        many => Err(CaError::CsrExtraSans {
            count: many.len(),
            requested: many.join(", "),
            caller: caller.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_bit_length_ignores_leading_zero() {
        assert_eq!(rsa_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(rsa_bits(&[0x01, 0x00]), 9);
        assert_eq!(rsa_bits(&[0x00]), 0);
        let mut m = vec![0u8; 257];
        m[1] = 0xc1;
        assert_eq!(rsa_bits(&m), 2048);
    }
}
