//! Mutual TLS between sidecars: a peer that fails any check is refused, and the refusal says
//! which check failed (client gets 503; the access log, `meshlite_tls_handshake_failures_total`
//! and the proxy's own log say why).

use crate::field_text;
use meshlite_tests::clients;
use meshlite_tests::mesh::{
    APP, AppProtocol, CLIENT_SA, Mesh, SERVER_SA, Sidecar, SidecarSpec, run_proxy_cli, service,
};
use meshlite_tests::pki::{Pki, spiffe_id};
use meshlite_tests::tls_peers::{TlsServerPeer, handshake_as_client};
use meshlite_tests::wire::{Closed, RawConn};
use std::ffi::OsStr;
use std::time::Duration;

const HANDSHAKE_FAILURES: &str = "meshlite_tls_handshake_failures_total";

/// Asserts a request through `client` got a 503 that the sidecar recorded (access log entry
/// with a response flag), and that its outbound handshake-failure counter has a reason containing
/// one of `reason_words`. Returns the reason.
async fn assert_refused(client: &Sidecar, reason_words: &[&str]) -> String {
    let reply = clients::get(client.addrs.outbound, "app", "/headers").await;
    assert_eq!(
        reply.status,
        503,
        "a refused peer must give 503, got: {}",
        reply.text()
    );

    let entry = client
        .access_log_entry("the refused request", |e| {
            field_text(e, "response_code") == "503"
        })
        .await;
    assert_ne!(
        field_text(&entry, "response_flags"),
        "-",
        "a refusal carries a response flag: {entry}"
    );

    let sample = client
        .metric_sample(HANDSHAKE_FAILURES, "an outbound refusal", |s| {
            s.value >= 1.0 && s.label("direction") == "outbound"
        })
        .await;
    let reason = sample.label("reason").to_ascii_lowercase();
    assert!(
        reason_words.iter().any(|w| reason.contains(w)),
        "{HANDSHAKE_FAILURES} reason {reason:?} should say which check failed (one of {reason_words:?})"
    );
    reason
}

/// Asserts `sidecar`'s log mentions one of `words` (case-insensitive).
fn assert_logged(sidecar: &Sidecar, words: &[&str]) {
    let logs = sidecar.logs().to_ascii_lowercase();
    assert!(
        words.iter().any(|w| logs.contains(&w.to_ascii_lowercase())),
        "{}'s log should say why the handshake failed (one of {words:?}); log:\n{logs}",
        sidecar.name
    );
}

const WRONG_CA_WORDS: &[&str] = &[
    "issuer",
    "unknown_ca",
    "unknownca",
    "untrusted",
    "trust",
    "unknown ca",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_by_another_ca_is_refused() {
    let mesh = Mesh::builder()
        .server(|spec, _| {
            let stranger = Pki::named("stranger.example");
            spec.cert = stranger.issue(&spiffe_id(SERVER_SA));
            spec.roots_pem = stranger.root_pem();
        })
        .start()
        .await;
    assert_refused(&mesh.client, WRONG_CA_WORDS).await;
    assert_logged(&mesh.client, WRONG_CA_WORDS);
    assert_eq!(
        mesh.apps.alpha.requests(),
        0,
        "the app must never be reached"
    );
}

/// Two clusters that each made a self-signed root for `cluster.local` have roots with the same
/// name and different keys: the name matches, the signature does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_by_a_foreign_ca_with_the_same_name_is_refused() {
    let mesh = Mesh::builder()
        .server(|spec, _| {
            let twin = Pki::new();
            spec.cert = twin.issue(&spiffe_id(SERVER_SA));
            spec.roots_pem = twin.root_pem();
        })
        .start()
        .await;
    let words = &["unknown_ca"];
    assert_refused(&mesh.client, words).await;
    assert_logged(&mesh.client, words);
    assert_eq!(
        mesh.apps.alpha.requests(),
        0,
        "the app must never be reached"
    );
}

/// The proxy will not start with an expired certificate of its own, so the expired destination
/// is a TLS stand-in presenting a mesh-signed but expired SVID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_server_certificate_is_refused() {
    let pki = Pki::new();
    let peer = TlsServerPeer::start(&pki.issue_expired(&spiffe_id(SERVER_SA))).await;
    let mut spec = SidecarSpec::new(&pki, CLIENT_SA);
    spec.services = vec![service(APP, 80, AppProtocol::Http, peer.addr)];
    let client = Sidecar::start(&spec).await;
    assert_refused(&client, &["expired"]).await;
    assert_logged(&client, &["expired"]);
    assert!(
        peer.connections() >= 1,
        "the sidecar never dialled the destination"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_refused_at_the_inbound() {
    let mesh = Mesh::start().await;
    let inbound = mesh.server.addrs.inbound;
    // The stand-in client is accepted with a valid certificate...
    let valid = mesh.pki.issue(&spiffe_id(CLIENT_SA));
    assert_eq!(
        handshake_as_client(inbound, &valid).await,
        Ok(()),
        "a valid client certificate is accepted"
    );
    // ...and refused with an expired one.
    let expired = mesh.pki.issue_expired(&spiffe_id(CLIENT_SA));
    let refused = handshake_as_client(inbound, &expired).await;
    assert!(
        refused.is_err(),
        "the inbound side accepted an expired client certificate"
    );
    let sample = mesh
        .server
        .metric_sample(HANDSHAKE_FAILURES, "an inbound refusal", |s| {
            s.value >= 1.0 && s.label("direction") == "inbound"
        })
        .await;
    assert!(
        sample.label("reason").contains("expired"),
        "reason should say expired: {sample:?}"
    );
    assert_logged(&mesh.server, &["expired"]);
    assert_eq!(mesh.apps.alpha.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_refuses_to_start_with_an_expired_certificate() {
    let pki = Pki::new();
    let mut spec = SidecarSpec::new(&pki, SERVER_SA);
    spec.cert = pki.issue_expired(&spec.spiffe_id);
    let dir = tempfile::tempdir().unwrap();
    let config = spec.write(dir.path());
    let output = run_proxy_cli(&[OsStr::new("--config"), config.as_os_str()]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a sidecar started with an expired certificate"
    );
    assert!(
        stderr.contains("expired"),
        "the refusal should say the certificate expired: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_spiffe_id_is_refused() {
    let impostor = spiffe_id("impostor");
    let presented = impostor.clone();
    let mesh = Mesh::builder()
        .server(move |spec, pki| {
            spec.cert = pki.issue(&presented);
            spec.spiffe_id = presented;
        })
        .start()
        .await;
    assert_refused(
        &mesh.client,
        &["spiffe", "identity", "san", "naming", "name"],
    )
    .await;
    // The log names the identity that was presented.
    assert_logged(&mesh.client, &[&impostor]);
    assert_eq!(
        mesh.apps.alpha.requests(),
        0,
        "the app must never be reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_the_destination_does_not_trust_is_refused_at_its_inbound() {
    let mesh = Mesh::builder()
        .client(|spec, pki| {
            // The client trusts the mesh (so it accepts the server), but its own certificate
            // comes from a CA the server does not trust.
            let stranger = Pki::new();
            spec.cert = stranger.issue(&spec.spiffe_id);
            spec.roots_pem = format!("{}{}", pki.root_pem(), stranger.root_pem());
        })
        .start()
        .await;
    let reply = clients::get(mesh.outbound(), "app", "/headers").await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(
        mesh.apps.alpha.requests(),
        0,
        "the app must never be reached"
    );
    mesh.server
        .metric_sample(HANDSHAKE_FAILURES, "an inbound refusal", |s| {
            s.value >= 1.0 && s.label("direction") == "inbound"
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_the_inbound_port_never_reaches_the_app() {
    let mesh = Mesh::start().await;
    let mut raw = RawConn::connect(mesh.server.addrs.inbound).await;
    let _ = raw
        .send(b"GET /headers HTTP/1.1\r\nHost: app\r\n\r\n")
        .await;
    match raw.wait_closed(Duration::from_secs(15)).await {
        Closed::Yes { bytes } => {
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains("alpha"),
                "plaintext got an answer from the app: {text}"
            );
        }
        Closed::StillOpen => panic!("the inbound port kept a plaintext connection open"),
    }
    assert_eq!(mesh.apps.alpha.requests(), 0);
}
