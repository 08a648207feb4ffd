//! A throw-away certificate authority for development, benchmarks and tests.
//!
//! Until `meshlite-control` issues identities, the examples, `meshlite-bench` and the end-to-end
//! tests need a root and SPIFFE leaf certificates shaped exactly like the ones the real CA will
//! sign (ECDSA P-256, one URI SAN, `cA=false`, serverAuth + clientAuth). Keeping that recipe in one
//! place means every harness exercises the same certificate profile the proxy verifies.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;

/// Why a development certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum DevPkiError {
    /// rcgen refused the parameters (bad SAN, key generation failure...).
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing a PEM file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file that could not be written.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

/// A PEM certificate chain (leaf first) and its PEM PKCS#8 private key.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// Leaf certificate followed by nothing else: the dev CA is a single-level root.
    pub cert_pem: String,
    /// PKCS#8 PEM private key of the leaf.
    pub key_pem: String,
}

impl IssuedCert {
    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key` (0600) and returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), DevPkiError> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        write_file(&cert, &self.cert_pem, false)?;
        write_file(&key, &self.key_pem, true)?;
        Ok((cert, key))
    }

    /// Certificate and key concatenated, the single-file form HAProxy's `crt` expects.
    pub fn combined_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }
}

/// Options for one leaf certificate.
#[derive(Clone, Debug, Default)]
pub struct LeafOptions {
    /// DNS SANs besides the SPIFFE URI (HAProxy checks a DNS name; the mesh does not).
    pub dns_names: Vec<String>,
    /// Extra URI SANs: only for tests that must see a multi-URI certificate refused.
    pub extra_uris: Vec<String>,
    /// Shift both validity bounds into the past by this much (expired-certificate tests).
    pub expired_by: Option<Duration>,
    /// Validity length; default 24 h, the mesh's default SVID lifetime.
    pub validity: Option<Duration>,
    /// Mark the leaf as a CA (tests that a CA certificate is never accepted as a peer identity).
    pub is_ca: bool,
}

/// A self-signed ECDSA P-256 root that signs SPIFFE leaf certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
}

impl DevCa {
    /// Creates a new root for `trust_domain`, valid for ten years.
    pub fn new(trust_domain: &str) -> Result<Self, DevPkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, trust_domain);
        params
            .distinguished_name
            .push(DnType::CommonName, "meshlite development root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let root = params.self_signed(&key)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            root_pem: root.pem(),
        })
    }

    /// The root certificate in PEM: the trust bundle every proxy is given.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Issues an X.509-SVID for `spiffe_id` with the mesh's default profile.
    pub fn issue(&self, spiffe_id: &str) -> Result<IssuedCert, DevPkiError> {
        self.issue_with(spiffe_id, &LeafOptions::default())
    }

    /// Issues a leaf certificate with explicit options.
    pub fn issue_with(
        &self,
        spiffe_id: &str,
        opts: &LeafOptions,
    ) -> Result<IssuedCert, DevPkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let mut sans = vec![SanType::URI(spiffe_id.try_into()?)];
        for uri in &opts.extra_uris {
            sans.push(SanType::URI(uri.as_str().try_into()?));
        }
        for dns in &opts.dns_names {
            sans.push(SanType::DnsName(dns.as_str().try_into()?));
        }
        params.subject_alt_names = sans;
        params.use_authority_key_identifier_extension = true;
        if opts.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let validity = opts.validity.unwrap_or(Duration::from_secs(24 * 3600));
        let mut not_before = OffsetDateTime::now_utc() - time::Duration::minutes(5);
        if let Some(back) = opts.expired_by {
            not_before -= time::Duration::try_from(validity + back).unwrap_or(time::Duration::DAY);
        }
        params.not_before = not_before;
        params.not_after =
            not_before + time::Duration::try_from(validity).unwrap_or(time::Duration::DAY);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the root as `<dir>/root.crt`.
    pub fn write_root(&self, dir: &Path) -> Result<PathBuf, DevPkiError> {
        let path = dir.join("root.crt");
        write_file(&path, &self.root_pem, false)?;
        Ok(path)
    }
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), DevPkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        opts.mode(0o600);
    }
    let write = |opts: &std::fs::OpenOptions| -> std::io::Result<()> {
        let mut f = opts.open(path)?;
        f.write_all(contents.as_bytes())
    };
    write(&opts).map_err(|source| DevPkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}
