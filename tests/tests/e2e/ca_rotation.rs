//! The CA's own lifecycle: the control plane renews its serving certificate without a
//! restart, and an operator's plug-in CA is rotated (old root -> old and new -> new only)
//! while traffic flows, with no restart and no failed request; proxies' xDS channels trust
//! the pushed trust bundle, not only their bootstrap root file.

use meshlite_tests::apps::HttpApp;
use meshlite_tests::control::{
    CONVERGE, ControlAccess, ControlPlane, Load, MeshProxy, NAMESPACE, Workload, wait_served_by,
};
use meshlite_tests::deadline::{SOON, eventually};
use meshlite_tests::pki::PluginCa;
use meshlite_tests::tls_peers::server_certificate;
use std::time::Duration;

/// The leaf's notAfter (Unix seconds) and its issuer's name.
fn leaf_facts(der: &[u8]) -> (i64, String) {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).expect("certificate");
    (
        cert.validity().not_after.timestamp(),
        cert.issuer().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_certificate_is_renewed_before_it_expires_and_proxies_keep_their_stream() {
    let control = ControlPlane::start_with(&[], &["--serving-cert-ttl", "12s"]).await;
    let app = HttpApp::start("echo").await;
    let _echo = MeshProxy::start(
        &control.access(NAMESPACE, "echo").await,
        &Workload::new("echo").serving(9080, app.addr),
    )
    .await;
    let client = MeshProxy::caller(&control, "client").await;
    wait_served_by(client.outbound(), "echo", "echo", SOON).await;
    let (first, _) = leaf_facts(&server_certificate(control.xds).await);
    let renewed = eventually(
        "a renewed serving certificate",
        Duration::from_secs(30),
        || async {
            let (now, _) = leaf_facts(&server_certificate(control.xds).await);
            (now > first).then_some(now)
        },
    )
    .await;
    assert!(renewed > first);
    // Past the first certificate's expiry, a new workload still joins (the CA and xDS answer
    // with the renewed certificate) and the mesh still routes to it.
    eventually(
        "the first serving certificate to expire",
        Duration::from_secs(30),
        || async { (time::OffsetDateTime::now_utc().unix_timestamp() > first).then_some(()) },
    )
    .await;
    let other = HttpApp::start("other").await;
    let _other = MeshProxy::start(
        &control.access(NAMESPACE, "other").await,
        &Workload::new("other").serving(9080, other.addr),
    )
    .await;
    wait_served_by(client.outbound(), "other", "other", SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plug_in_root_is_rotated_under_load_without_a_restart_or_a_failed_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cacerts = dir.path().join("cacerts");
    let (old, new) = (PluginCa::new("old"), PluginCa::new("new"));
    old.write_cacerts(&cacerts, &[&old]);
    let bootstrap_root = dir.path().join("old-root.pem");
    std::fs::write(&bootstrap_root, old.root_pem()).expect("root file");
    let cacerts_arg = cacerts.display().to_string();
    let mut control = ControlPlane::start_with(
        &[],
        &[
            "--cacerts",
            &cacerts_arg,
            "--cacerts-poll",
            "200ms",
            "--cert-ttl",
            "10s",
        ],
    )
    .await;
    // Every proxy's bootstrap root file holds the old root only.
    let access = |token: String| ControlAccess {
        address: control.address(),
        root_cert: bootstrap_root.clone(),
        token,
    };
    let app = HttpApp::start("echo").await;
    let echo = MeshProxy::start(
        &access(control.token(NAMESPACE, "echo").await),
        &Workload::new("echo")
            .serving(9080, app.addr)
            .with_cert_ttl("10s"),
    )
    .await;
    let client = MeshProxy::start(
        &access(control.token(NAMESPACE, "client").await),
        &Workload::new("client").with_cert_ttl("10s"),
    )
    .await;
    wait_served_by(client.outbound(), "echo", "echo", SOON).await;
    let load = Load::start(client.outbound(), "echo", 4, Duration::from_secs(120));
    load.wait_for_requests(50).await;

    // Step 1: the new intermediate signs; both roots are trusted.
    new.write_cacerts(&cacerts, &[&old, &new]);
    eventually(
        "the control plane to sign with the new CA",
        CONVERGE,
        || async {
            let (_, issuer) = leaf_facts(&server_certificate(control.xds).await);
            issuer.contains("new intermediate").then_some(())
        },
    )
    .await;
    // Every workload renews (10 s certificates renew at about 5 s) onto the new CA.
    async fn rotations(p: &MeshProxy) -> f64 {
        p.metric("meshlite_cert_rotations_total", &[("result", "ok")])
            .await
    }
    let (e0, c0) = (rotations(&echo).await, rotations(&client).await);
    eventually(
        "both workloads to renew twice on the new CA",
        Duration::from_secs(40),
        || async {
            (rotations(&echo).await >= e0 + 2.0 && rotations(&client).await >= c0 + 2.0)
                .then_some(())
        },
    )
    .await;
    load.wait_for_requests(50).await;

    // Step 2: the old root leaves the bundle.
    new.write_cacerts(&cacerts, &[&new]);
    eventually("the new bundle to be pushed", CONVERGE, || async {
        (control
            .metric(
                "meshlite_control_ca_reloads_total",
                &[("result", "accepted")],
            )
            .await
            >= 2.0)
            .then_some(())
    })
    .await;
    load.wait_for_requests(100).await;
    // Proxies reconnect to a restarted control plane whose certificate chains to the new root
    // only, which their bootstrap files do not hold: the pushed bundle is what they trust.
    control.restart().await;
    control
        .wait_connected(&["echo.default", "client.default"], Duration::from_secs(40))
        .await;
    load.wait_for_requests(100).await;
    let report = load.stop().await;
    report.assert_no_failures("the mesh root is rotated");
}
