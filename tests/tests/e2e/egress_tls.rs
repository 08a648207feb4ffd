//! TLS origination to services outside the mesh (DestinationRule `trafficPolicy.tls`): the app
//! calls `http://api.example.test/` in plain HTTP and the sidecar carries it over TLS it
//! originates (SIMPLE, verified against the DestinationRule's CA and names; MUTUAL with the
//! user's client certificate); a server that fails the checks is refused with the reason.

use crate::field_text;
use meshlite_tests::apps::HttpApp;
use meshlite_tests::clients;
use meshlite_tests::control::{CONVERGE, ControlPlane, MeshProxy};
use meshlite_tests::deadline::eventually;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const HOST: &str = "api.example.test";

/// A CA, and leaves it signs.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).expect("CA");
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A leaf for DNS name `dns` (server) or a client certificate: (cert PEM, key PEM).
    fn leaf(&self, dns: &str, client: bool) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec![dns.to_string()]).expect("params");
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = p.signed_by(&key, &self.issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).expect("write CA");
        path
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An HTTPS server config for `HOST`, asking for a client certificate from `clients` if given.
fn server_tls(ca: &Ca, clients: Option<&Ca>) -> Arc<rustls::ServerConfig> {
    let (cert, key) = ca.leaf(HOST, false);
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3");
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let mut roots = rustls::RootCertStore::empty();
            for r in CertificateDer::pem_slice_iter(c.pem.as_bytes()) {
                roots.add(r.expect("root")).expect("add root");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .expect("verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_single_cert(chain, key).expect("server cert");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// The ServiceEntry for `HOST` on port 80, whose endpoint serves HTTPS on `https_port`.
fn service_entry(https_port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {https_port}}}]
  endpoints: [{{address: 127.0.0.1}}]
"
    )
}

fn destination_rule(tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api, namespace: default}}
spec:
  host: {HOST}
  trafficPolicy:
    tls: {tls}
"
    )
}

/// Status and the sidecar's transport failure reason for one call to `HOST`.
async fn call(caller: &MeshProxy) -> (u16, String) {
    let reply = clients::get(caller.outbound(), HOST, "/headers").await;
    (reply.status.as_u16(), reply.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_originates_verified_tls_to_a_service_outside_the_mesh() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca, other_ca) = (Ca::new("api CA"), Ca::new("someone else"));
    let ca_file = ca.write(dir.path(), "api-ca.pem");
    let other_file = other_ca.write(dir.path(), "other-ca.pem");
    let app = HttpApp::start_tls("api", server_tls(&ca, None)).await;
    let se = service_entry(app.addr.port());
    // No DestinationRule: plaintext to an HTTPS server fails; nothing leaves unencrypted by
    // accident, but nothing works either until TLS is asked for.
    let control = ControlPlane::start(&[("api-se.yaml", &se)]).await;
    let caller = MeshProxy::caller(&control, "caller").await;
    let status = eventually("the external host to be known", CONVERGE, || async {
        let (s, _) = call(&caller).await;
        (s != 404).then_some(s)
    })
    .await;
    assert_ne!(status, 200, "plaintext must not reach an HTTPS-only server");
    assert_eq!(app.requests(), 0);

    // SIMPLE, verified against the DestinationRule's CA and the SNI's name.
    let simple = format!(
        "{{mode: SIMPLE, caCertificates: {}, sni: {HOST}}}",
        ca_file.display()
    );
    control.write_config("api-dr.yaml", &destination_rule(&simple));
    let seen = eventually("TLS origination to the service", CONVERGE, || async {
        let (s, body) = call(&caller).await;
        (s == 200).then_some(body)
    })
    .await;
    let json: serde_json::Value = serde_json::from_str(&seen).expect("app JSON");
    assert_eq!(
        json["headers"]["host"][0], HOST,
        "the app's Host is kept: {json}"
    );
    assert!(app.requests() >= 1, "the request arrived over TLS");

    // Another CA, or a name the certificate does not carry: refused, with the check named.
    let wrong_ca = format!(
        "{{mode: SIMPLE, caCertificates: {}, sni: {HOST}}}",
        other_file.display()
    );
    control.write_config("api-dr.yaml", &destination_rule(&wrong_ca));
    let (status, _) = eventually("the foreign CA to be refused", CONVERGE, || async {
        let r = call(&caller).await;
        (r.0 == 503).then_some(r)
    })
    .await;
    assert_eq!(status, 503);
    let entry = caller
        .access_log_entry("the refused TLS origination", |e| {
            field_text(e, "response_code") == "503"
                && field_text(e, "response_flags").contains("UF")
        })
        .await;
    assert_eq!(
        field_text(&entry, "upstream_transport_failure_reason"),
        "unknown_ca",
        "{entry}"
    );
    let wrong_name = format!(
        "{{mode: SIMPLE, caCertificates: {}, sni: {HOST}, subjectAltNames: [billing.example.test]}}",
        ca_file.display()
    );
    control.write_config("api-dr.yaml", &destination_rule(&wrong_name));
    eventually(
        "a certificate without the expected name to be refused",
        CONVERGE,
        || async { (call(&caller).await.0 == 503).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_a_service_outside_the_mesh_presents_the_users_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca, clients_ca) = (Ca::new("api CA"), Ca::new("api clients"));
    let ca_file = ca.write(dir.path(), "api-ca.pem");
    let (cert, key) = clients_ca.leaf("caller.example.test", true);
    let (cert_file, key_file) = (dir.path().join("client.pem"), dir.path().join("client.key"));
    std::fs::write(&cert_file, cert).expect("cert");
    std::fs::write(&key_file, key).expect("key");
    let app = HttpApp::start_tls("api", server_tls(&ca, Some(&clients_ca))).await;
    let simple = format!(
        "{{mode: SIMPLE, caCertificates: {}, sni: {HOST}}}",
        ca_file.display()
    );
    let control = ControlPlane::start(&[
        ("api-se.yaml", &service_entry(app.addr.port())),
        ("api-dr.yaml", &destination_rule(&simple)),
    ])
    .await;
    let caller = MeshProxy::caller(&control, "caller").await;
    eventually(
        "the server to refuse a caller without a certificate",
        CONVERGE,
        || async { (call(&caller).await.0 == 503).then_some(()) },
    )
    .await;
    let mutual = format!(
        "{{mode: MUTUAL, caCertificates: {}, sni: {HOST}, clientCertificate: {}, privateKey: {}}}",
        ca_file.display(),
        cert_file.display(),
        key_file.display()
    );
    control.write_config("api-dr.yaml", &destination_rule(&mutual));
    eventually("MUTUAL with the user's certificate", CONVERGE, || async {
        (call(&caller).await.0 == 200).then_some(())
    })
    .await;
}
