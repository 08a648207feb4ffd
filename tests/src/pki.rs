//! Certificates for the test mesh, issued by the proxy's own development CA.
//!
//! Using [`meshlite_proxy::identity::dev_pki`] means the tests exercise exactly the certificate
//! profile the real CA will sign (ECDSA P-256, one SPIFFE URI SAN). Each test makes its own root,
//! so no two tests ever trust each other's identities.

use meshlite_proxy::identity::dev_pki::{DevCa, IssuedCert, LeafOptions};
use std::time::Duration;

/// The trust domain of every test mesh.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// `spiffe://cluster.local/ns/default/sa/<service_account>`.
pub fn spiffe_id(service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{service_account}")
}

/// One mesh's certificate authority.
pub struct Pki {
    ca: DevCa,
}

impl Pki {
    /// A fresh root for [`TRUST_DOMAIN`].
    ///
    /// # Panics
    /// If key generation fails.
    pub fn new() -> Self {
        Self::named(TRUST_DOMAIN)
    }

    /// A fresh root whose subject names `organization` instead of the mesh's trust domain: a CA
    /// that is foreign by name as well as by key.
    ///
    /// # Panics
    /// If key generation fails.
    pub fn named(organization: &str) -> Self {
        Self {
            ca: DevCa::new(organization).expect("create development CA"),
        }
    }

    /// The root in PEM: the trust bundle of every sidecar of this mesh.
    pub fn root_pem(&self) -> String {
        self.ca.root_pem().to_string()
    }

    /// A valid SVID for `spiffe_id`.
    ///
    /// # Panics
    /// If issuing fails.
    pub fn issue(&self, spiffe_id: &str) -> IssuedCert {
        self.ca.issue(spiffe_id).expect("issue certificate")
    }

    /// An SVID for `spiffe_id` whose validity ended an hour ago.
    ///
    /// # Panics
    /// If issuing fails.
    pub fn issue_expired(&self, spiffe_id: &str) -> IssuedCert {
        let opts = LeafOptions {
            expired_by: Some(Duration::from_secs(3600)),
            ..LeafOptions::default()
        };
        self.ca
            .issue_with(spiffe_id, &opts)
            .expect("issue expired certificate")
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// An operator's CA in Istio's plug-in `cacerts` layout: an offline root and the
/// intermediate the control plane signs with.
pub struct PluginCa {
    root_pem: String,
    intermediate_pem: String,
    key_pem: String,
}

impl PluginCa {
    /// A new root (common name `name`) and its intermediate.
    ///
    /// # Panics
    /// If key generation or signing fails.
    pub fn new(name: &str) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
            KeyUsagePurpose,
        };
        let t = time::OffsetDateTime::now_utc();
        let ca_params = |cn: String, constraint| {
            let mut p = CertificateParams::default();
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.is_ca = IsCa::Ca(constraint);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.not_before = t - time::Duration::hours(1);
            p.not_after = t + time::Duration::days(365);
            p
        };
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("root key");
        let rp = ca_params(format!("{name} root"), BasicConstraints::Unconstrained);
        let root = rp.self_signed(&root_key).expect("root");
        let root_issuer = Issuer::new(rp, root_key);
        let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let ip = ca_params(
            format!("{name} intermediate"),
            BasicConstraints::Constrained(0),
        );
        let int = ip.signed_by(&int_key, &root_issuer).expect("intermediate");
        Self {
            root_pem: root.pem(),
            intermediate_pem: int.pem(),
            key_pem: int_key.serialize_pem(),
        }
    }

    /// Its root, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Writes `cacerts` to `dir`: this CA signs; the trust bundle (`root-cert.pem`) holds the
    /// roots of `trusted`. Each file is written to a temporary name and renamed, as a secret
    /// volume updates.
    ///
    /// # Panics
    /// On I/O errors.
    pub fn write_cacerts(&self, dir: &std::path::Path, trusted: &[&PluginCa]) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).expect("cacerts dir");
        let bundle: String = trusted.iter().map(|c| c.root_pem.as_str()).collect();
        let files = [
            ("ca-cert.pem", self.intermediate_pem.clone()),
            ("ca-key.pem", self.key_pem.clone()),
            ("root-cert.pem", bundle),
            (
                "cert-chain.pem",
                format!("{}{}", self.intermediate_pem, self.root_pem),
            ),
        ];
        for (name, text) in files {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).expect("write cacerts file");
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            std::fs::rename(&tmp, dir.join(name)).expect("rename cacerts file");
        }
    }
}
