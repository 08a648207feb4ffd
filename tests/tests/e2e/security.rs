//! Mutual TLS between sidecars: a peer that fails any check is refused, and the refusal says
//! which check failed (client gets 503; the access log, `meshlite_tls_handshake_failures_total`
//! and the proxy's own log say why).

use crate::field_text;
use meshlite_tests::clients;
use meshlite_tests::mesh::{Mesh, SERVER_SA};
use meshlite_tests::pki::{Pki, spiffe_id};
use meshlite_tests::wire::{Closed, RawConn};
use std::time::Duration;

const HANDSHAKE_FAILURES: &str = "meshlite_tls_handshake_failures_total";

/// Asserts the client got a 503 that the client sidecar recorded, and that its handshake-failure
/// counter for `direction` has a reason containing one of `reason_words`. Returns the reason.
async fn assert_refused(mesh: &Mesh, reason_words: &[&str]) -> String {
    let reply = clients::get(mesh.outbound(), "app", "/headers").await;
    assert_eq!(
        reply.status,
        503,
        "a refused peer must give 503, got: {}",
        reply.text()
    );
    assert_eq!(
        mesh.apps.alpha.requests(),
        0,
        "the app must never be reached"
    );

    let entry = mesh
        .client
        .access_log_entry("the refused request", |e| {
            field_text(e, "response_code") == "503"
        })
        .await;
    assert_ne!(
        field_text(&entry, "response_flags"),
        "-",
        "a refusal carries a response flag: {entry}"
    );

    let sample = mesh
        .client
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

/// Asserts the client sidecar's log mentions one of `words` (case-insensitive).
fn assert_logged(mesh: &Mesh, words: &[&str]) {
    let logs = mesh.client.logs().to_ascii_lowercase();
    assert!(
        words.iter().any(|w| logs.contains(&w.to_ascii_lowercase())),
        "the client sidecar's log should say why the handshake failed (one of {words:?}); log:\n{logs}"
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
            let stranger = Pki::new();
            spec.cert = stranger.issue(&spiffe_id(SERVER_SA));
            spec.roots_pem = stranger.root_pem();
        })
        .start()
        .await;
    assert_refused(&mesh, WRONG_CA_WORDS).await;
    assert_logged(&mesh, WRONG_CA_WORDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_server_certificate_is_refused() {
    let mesh = Mesh::builder()
        .server(|spec, pki| spec.cert = pki.issue_expired(&spiffe_id(SERVER_SA)))
        .start()
        .await;
    assert_refused(&mesh, &["expired"]).await;
    assert_logged(&mesh, &["expired"]);
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
    assert_refused(&mesh, &["spiffe", "identity", "san", "naming", "name"]).await;
    // The log names the identity that was presented.
    assert_logged(&mesh, &[&impostor]);
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
