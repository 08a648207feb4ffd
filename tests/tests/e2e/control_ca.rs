//! The mesh CA signs exactly the identity a caller proves and nothing more: every request that
//! asks for more, or proves it with a credential that is no longer good, is refused with a
//! gRPC status that names the check that failed.

use meshlite_tests::control::{
    ClientCert, ControlPlane, CsrAsk, NAMESPACE, leaf_facts, output_text, request_certificate,
};
use std::time::Duration;
use tonic::Code;

fn id(service_account: &str) -> String {
    format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/{service_account}")
}

#[track_caller]
fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: Code,
    words: &[&str],
    story: &str,
) {
    let status = match result {
        Ok(v) => panic!("{story}: the CA signed it: {v:?}"),
        Err(s) => s,
    };
    assert_eq!(status.code(), code, "{story}: {}", status.message());
    for w in words {
        assert!(
            status.message().contains(w),
            "{story}: the refusal should say {w:?}, got {:?}",
            status.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_signs_only_what_the_bootstrap_token_proves() {
    let control = ControlPlane::start(&[]).await;
    let token = control.token(NAMESPACE, "client").await;
    let mut ca = control.ca(None).await;

    // The well-behaved request is signed: exactly one URI SAN, the token's identity.
    let (_, csr) = CsrAsk::identity(&id("client")).make();
    let chain = request_certificate(&mut ca, &csr, Some(&token), 0)
        .await
        .expect("a CSR for the token's own identity is signed");
    let (uris, _, _) = leaf_facts(&chain);
    assert_eq!(uris, vec![id("client")]);
    assert!(chain.len() >= 2, "the chain ends at the root: {chain:?}");

    let (_, csr) = CsrAsk::identity(&id("payments")).make();
    assert_refused(
        request_certificate(&mut ca, &csr, Some(&token), 0).await,
        Code::PermissionDenied,
        &["asks for identity", &id("payments"), &id("client")],
        "a token for client, a CSR for payments",
    );

    let (_, csr) = CsrAsk {
        dns: vec!["payments.example.com".into()],
        ..CsrAsk::identity(&id("client"))
    }
    .make();
    assert_refused(
        request_certificate(&mut ca, &csr, Some(&token), 0).await,
        Code::PermissionDenied,
        &["2 SANs", "payments.example.com"],
        "a CSR with a second SAN",
    );

    let (_, csr) = CsrAsk {
        ca: true,
        ..CsrAsk::identity(&id("client"))
    }
    .make();
    assert_refused(
        request_certificate(&mut ca, &csr, Some(&token), 0).await,
        Code::PermissionDenied,
        &["CA certificate", "cA=true"],
        "a CSR asking to be a CA",
    );

    let (_, csr) = CsrAsk::identity(&id("client")).make();
    assert_refused(
        request_certificate(&mut ca, &csr, None, 0).await,
        Code::Unauthenticated,
        &["no credential"],
        "no token and no client certificate",
    );
    let forged = format!("{token}x");
    assert_refused(
        request_certificate(&mut ca, &csr, Some(&forged), 0).await,
        Code::Unauthenticated,
        &["bootstrap token", "signature"],
        "an altered token",
    );

    // `token create` accepts a lifetime of one second; once it has passed, the token is
    // refused as expired.
    let short = control.token_with_ttl(NAMESPACE, "client", "1s").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_refused(
        request_certificate(&mut ca, &csr, Some(&short), 0).await,
        Code::Unauthenticated,
        &["bootstrap token expired"],
        "an expired token",
    );

    // Counted under istiod's names: every request, the one issued, and each refusal by the
    // check that failed.
    let text = control.metrics_text().await;
    let count = |name: &str, labels: &[(&str, &str)]| {
        meshlite_tests::prometheus::samples(&text, name)
            .iter()
            .filter(|s| labels.iter().all(|(k, v)| s.label(k) == *v))
            .map(|s| s.value)
            .sum::<f64>()
    };
    assert_eq!(count("citadel_server_csr_count", &[]), 7.0, "{text}");
    assert_eq!(
        count("citadel_server_success_cert_issuance_count", &[]),
        1.0,
        "only the well-behaved CSR was signed"
    );
    assert_eq!(
        count("citadel_server_authentication_failure_count", &[]),
        3.0,
        "no credential, an altered token, an expired token"
    );
    for reason in ["wrong_identity", "extra_sans", "ca_requested"] {
        assert_eq!(
            count("citadel_server_csr_sign_err_count", &[("error", reason)]),
            1.0,
            "{reason}: {text}"
        );
    }
    assert_eq!(count("citadel_server_csr_parsing_err_count", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_can_no_longer_renew_itself() {
    let control = ControlPlane::start(&[]).await;
    let token = control.token(NAMESPACE, "client").await;
    let (mut svid, csr) = CsrAsk::identity(&id("client")).make();
    let chain = request_certificate(&mut control.ca(None).await, &csr, Some(&token), 0)
        .await
        .expect("first certificate");
    svid.chain_pem = chain.concat();
    let (_, serial, _) = leaf_facts(&chain);

    // A renewal proves the identity with the current SVID, no token needed.
    let renew = |svid: ClientCert| {
        let control = &control;
        async move {
            let (_, csr) = CsrAsk::identity(&id("client")).make();
            request_certificate(&mut control.ca(Some(&svid)).await, &csr, None, 0).await
        }
    };
    renew(svid.clone())
        .await
        .expect("a valid SVID renews itself");

    let state = control.state_dir();
    let out = control
        .cli(&[
            "cert",
            "revoke",
            "--state-dir",
            state.to_str().expect("UTF-8 path"),
            "--serial",
            &serial,
        ])
        .await;
    assert!(out.status.success(), "cert revoke: {}", output_text(&out));

    assert_refused(
        renew(svid).await,
        Code::Unauthenticated,
        &["client certificate refused", "revoked", &serial],
        "a renewal with a revoked SVID",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_can_no_longer_renew_itself() {
    let control = ControlPlane::start(&[]).await;
    let token = control.token(NAMESPACE, "client").await;
    let (mut svid, csr) = CsrAsk::identity(&id("client")).make();
    // Ten seconds: the shortest lifetime the CA grants.
    let chain = request_certificate(&mut control.ca(None).await, &csr, Some(&token), 10)
        .await
        .expect("short-lived certificate");
    svid.chain_pem = chain.concat();
    let (_, _, not_after) = leaf_facts(&chain);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let lifetime = not_after - now;
    assert!(
        (1..=11).contains(&lifetime),
        "the CA grants the 10 s asked for, got {lifetime} s"
    );

    tokio::time::sleep(Duration::from_secs(lifetime.unsigned_abs() + 1)).await;
    let (_, csr) = CsrAsk::identity(&id("client")).make();
    assert_refused(
        request_certificate(&mut control.ca(Some(&svid)).await, &csr, None, 0).await,
        Code::Unauthenticated,
        &["client certificate refused", "expired"],
        "a renewal with an expired SVID",
    );
}
