//! Checks of DestinationRule `tls` (ClientTLSSettings, SEMANTICS 1.5): what Istio rejects is an
//! error; what the sidecar would not apply as written is a warning that says so.

use crate::model::{ClientTlsMode, ClientTlsSettings};
use crate::source::Resource;

use super::Checker;

impl Checker<'_> {
    /// `external`: the host is a service outside the mesh (a MESH_EXTERNAL ServiceEntry), where
    /// the sidecar originates this TLS; between sidecars, auto mutual TLS decides instead.
    pub(super) fn client_tls(
        &mut self,
        r: &Resource,
        t: &ClientTlsSettings,
        external: bool,
        p: &str,
    ) {
        let mode = t.mode.unwrap_or(ClientTlsMode::Disable);
        let cert_fields = [
            ("clientCertificate", &t.client_certificate),
            ("privateKey", &t.private_key),
            ("caCertificates", &t.ca_certificates),
            ("credentialName", &t.credential_name),
        ];
        match mode {
            ClientTlsMode::IstioMutual => {
                for (name, v) in cert_fields {
                    if v.is_some() {
                        self.error(
                            r,
                            format!("{p}.{name}"),
                            "ISTIO_MUTUAL uses the workload's own certificate: no certificate fields",
                        );
                    }
                }
            }
            ClientTlsMode::Mutual => {
                let files = t.client_certificate.is_some() && t.private_key.is_some();
                if !files && t.credential_name.is_none() {
                    self.error(
                        r,
                        p.to_string(),
                        "MUTUAL needs clientCertificate and privateKey (or credentialName)",
                    );
                } else if t.client_certificate.is_some() != t.private_key.is_some() {
                    self.error(
                        r,
                        p.to_string(),
                        "clientCertificate and privateKey go together",
                    );
                }
            }
            ClientTlsMode::Simple | ClientTlsMode::Disable => {}
        }
        if t.credential_name.is_some() {
            self.warning(
                r,
                format!("{p}.credentialName"),
                "not applied: sidecars read certificates from the files named by clientCertificate, privateKey and caCertificates",
            );
        }
        if t.ca_crl.is_some() {
            self.warning(
                r,
                format!("{p}.caCrl"),
                "not applied: the sidecar does not check a CRL for servers outside the mesh",
            );
        }
        if t.insecure_skip_verify == Some(true) {
            self.warning(
                r,
                format!("{p}.insecureSkipVerify"),
                "the server's certificate is not verified: anyone on the path can impersonate it",
            );
        }
        if !external
            && matches!(
                mode,
                ClientTlsMode::Simple | ClientTlsMode::Mutual | ClientTlsMode::Disable
            )
            && t.mode.is_some()
        {
            self.warning(
                r,
                format!("{p}.mode"),
                "not applied: this host is served by sidecars, which talk mutual TLS as their PeerAuthentication says (auto mutual TLS); the sidecar originates `tls` only to services outside the mesh (MESH_EXTERNAL ServiceEntries)",
            );
        }
    }
}
