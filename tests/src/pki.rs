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
