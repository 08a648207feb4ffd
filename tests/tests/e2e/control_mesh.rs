//! A mesh run by `meshlite-control`: identities from its CA, routes from the Istio YAML in its
//! config directory, edits pushed to every sidecar while traffic flows.

use meshlite_tests::control::{
    Canary, CanaryOptions, ControlPlane, ECHO_HOST, Load, MeshProxy, NAMESPACE, ROUTES_FILE,
    Workload, echo_routes, wait_served_by,
};
use meshlite_tests::{clients, deadline};
use std::time::Duration;

/// Bound of every load loop in this file.
const LOAD_BOUND: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_joining_through_the_control_plane_talk_mtls_with_ca_issued_identities() {
    let mesh = Canary::start().await;

    let reply = clients::get(mesh.client.outbound(), ECHO_HOST, "/headers").await;
    assert_eq!(reply.status, 200, "body: {}", reply.text());
    let seen = reply.json();
    assert_eq!(
        seen["app"], "echo-v1",
        "the VirtualService sends echo to v1"
    );
    let xfcc = seen["headers"]["x-forwarded-client-cert"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/client"),
        "echo must see the client's CA-issued identity, got x-forwarded-client-cert {xfcc:?}"
    );
    assert!(
        xfcc.contains("By=spiffe://cluster.local/ns/default/sa/echo"),
        "and its own sidecar's identity, got {xfcc:?}"
    );

    // Each sidecar holds a certificate from the CA, which the control plane reports too.
    for proxy in [&mesh.client, &mesh.v1, &mesh.v2] {
        let dump = proxy.config_dump().await;
        assert!(
            !dump["cert_expiry"].is_null(),
            "{}: config_dump shows no cert_expiry: {dump}",
            proxy.workload.name
        );
        let expiry = proxy
            .metric("meshlite_cert_expiry_timestamp_seconds", &[])
            .await;
        assert!(
            expiry > 0.0,
            "{}: no certificate expiry metric",
            proxy.workload.name
        );
        // Istio's agent metric: the seconds left, within the certificate's lifetime.
        let left = proxy.metric("istio_agent_cert_expiry_seconds", &[]).await;
        assert!(
            left > 0.0 && left <= 24.0 * 3600.0 + 60.0,
            "{}: istio_agent_cert_expiry_seconds = {left}",
            proxy.workload.name
        );
    }
    let status = mesh.control.status().await;
    let client_row = status["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["id"] == "client.default")
        .unwrap_or_else(|| panic!("status lists no client.default: {status}"))
        .clone();
    assert_eq!(
        client_row["identity"], "spiffe://cluster.local/ns/default/sa/client",
        "status row: {client_row}"
    );
    assert!(
        !client_row["cert_expiry"].is_null(),
        "status should show the client's certificate expiry: {client_row}"
    );
    let cli = mesh.control.status_cli(false).await;
    for id in ["client.default", "echo-v1.default", "echo-v2.default"] {
        assert!(cli.contains(id), "`status` should list {id}:\n{cli}");
    }
    assert!(
        mesh.control
            .metric("citadel_server_success_cert_issuance_count", &[])
            .await
            >= 3.0,
        "the CA signed one certificate per sidecar"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_virtualservice_moves_traffic_without_failing_a_request() {
    let mesh = Canary::start().await;
    let load = Load::start(mesh.client.outbound(), ECHO_HOST, 4, LOAD_BOUND);
    load.wait_for_requests(50).await;

    mesh.route(&[("v1", 0), ("v2", 100)]);
    wait_served_by(
        mesh.client.outbound(),
        ECHO_HOST,
        "echo-v2",
        Duration::from_secs(5),
    )
    .await;
    load.wait_for_requests(50).await;
    let report = load.stop().await;

    report.assert_no_failures("routes change");
    assert!(
        report.count("echo-v1") > 0 && report.count("echo-v2") > 0,
        "traffic should have gone to v1 and then to v2: {:?}",
        report.served_by
    );
    assert!(
        report.last_served_by.iter().all(|app| app == "echo-v2"),
        "after the edit every caller ends on v2: {:?}",
        report.last_served_by
    );
    assert!(
        mesh.control
            .metric(
                "galley_validation_passed",
                &[
                    ("group", "networking.istio.io"),
                    ("resource", "virtualservices")
                ]
            )
            .await
            >= 1.0,
        "the edited VirtualService passed validation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_is_refused_and_the_last_good_routes_keep_serving() {
    let mesh = Canary::start().await;
    mesh.route(&[("v1", 0), ("v2", 100)]);
    wait_served_by(
        mesh.client.outbound(),
        ECHO_HOST,
        "echo-v2",
        Duration::from_secs(5),
    )
    .await;

    // A typo: subset v9 does not exist. Istio would accept it and every request to it would
    // fail with 503 NC; meshlite refuses the whole edit.
    mesh.control
        .write_config(ROUTES_FILE, &echo_routes(&[("v1", 100), ("v9", 0)]));
    let status = deadline::eventually(
        "status to report the refused edit",
        Duration::from_secs(5),
        || async {
            let status = mesh.control.status().await;
            (status["config"]["last_refused"] == true).then_some(status)
        },
    )
    .await;
    let problems = status["config"]["problems"].to_string();
    assert!(
        problems.contains(ROUTES_FILE) && problems.contains("v9"),
        "the problem names the file and the undefined subset: {problems}"
    );
    let cli = mesh.control.status_cli(false).await;
    assert!(
        cli.contains("last edit REFUSED"),
        "`status` should say the last edit was refused:\n{cli}"
    );
    let refused = mesh
        .control
        .metric(
            "galley_validation_failed",
            &[("resource", "virtualservices")],
        )
        .await;
    assert!(refused >= 1.0, "the refused VirtualService is counted");

    // The refused edit would have sent everything to v1; the last good config still says v2.
    for _ in 0..20 {
        let reply = clients::get(mesh.client.outbound(), ECHO_HOST, "/").await;
        assert_eq!(reply.status, 200, "body: {}", reply.text());
        assert_eq!(
            reply.header("x-served-by"),
            Some("echo-v2"),
            "the last good routes must keep serving"
        );
    }
    assert_eq!(
        mesh.client
            .metric("meshlite_xds_updates_total", &[("result", "nack")])
            .await,
        0.0,
        "nothing invalid may reach a sidecar"
    );

    // Fixing the file is accepted again.
    mesh.route(&[("v1", 100), ("v2", 0)]);
    wait_served_by(
        mesh.client.outbound(),
        ECHO_HOST,
        "echo-v1",
        Duration::from_secs(5),
    )
    .await;
    let status = mesh.control.status().await;
    assert_eq!(
        status["config"]["last_refused"], false,
        "a good edit clears the refusal: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_rotate_under_load_without_a_failed_request() {
    let mesh = Canary::start_with(CanaryOptions {
        control_args: vec!["--cert-ttl".into(), "10s".into()],
        cert_ttl: Some("10s".into()),
        ..CanaryOptions::default()
    })
    .await;
    let load = Load::start(mesh.client.outbound(), ECHO_HOST, 4, LOAD_BOUND);
    load.wait_for_requests(20).await;

    // Renewal at half the lifetime: two rotations take ~10 s; the first certificates have
    // expired by then, so the sidecars serve on renewed ones.
    deadline::eventually(
        "both sidecars to rotate their certificate twice",
        Duration::from_secs(25),
        || async {
            let client = mesh
                .client
                .metric("meshlite_cert_rotations_total", &[("result", "ok")])
                .await;
            let server = mesh
                .v1
                .metric("meshlite_cert_rotations_total", &[("result", "ok")])
                .await;
            (client >= 2.0 && server >= 2.0).then_some(())
        },
    )
    .await;
    load.wait_for_requests(20).await;
    let report = load.stop().await;

    report.assert_no_failures("certificates rotate");
    assert!(report.ok > 0 && report.count("echo-v1") == report.ok);
    for proxy in [&mesh.client, &mesh.v1] {
        let failed = proxy
            .metric("meshlite_cert_rotations_total", &[("result", "error")])
            .await;
        assert_eq!(
            failed,
            0.0,
            "{}: no rotation may fail; log:\n{}",
            proxy.workload.name,
            proxy.logs()
        );
    }
    let renewed = mesh
        .control
        .metric("citadel_server_success_cert_issuance_count", &[])
        .await;
    assert!(
        renewed >= 3.0 + 4.0,
        "the CA signed the first certificates and the renewals (got {renewed})"
    );

    // A workload joining now is served with echo's renewed certificate (the first one has
    // expired) and presents its own fresh one.
    let late = MeshProxy::start(
        &mesh.control.access("default", "latecomer").await,
        &Workload::new("latecomer").with_cert_ttl("10s"),
    )
    .await;
    wait_served_by(
        late.outbound(),
        ECHO_HOST,
        "echo-v1",
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_read_the_control_plane_under_istiods_metric_names() {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::{FromDer, X509Certificate};

    let control = ControlPlane::start(&[]).await;
    let mut client = MeshProxy::caller(&control, "client").await;
    control
        .wait_connected(&["client.default"], Duration::from_secs(5))
        .await;
    // A change while the sidecar is connected: a service outside the mesh appears.
    control.write_config(
        "ledger.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: ledger, namespace: {NAMESPACE}}}\n\
             spec:\n  hosts: [ledger.example.com]\n  location: MESH_EXTERNAL\n\
             \x20 resolution: STATIC\n\
             \x20 ports: [{{number: 8080, name: http, protocol: HTTP}}]\n\
             \x20 endpoints: [{{address: 127.0.0.1}}]\n"
        ),
    );
    deadline::eventually(
        "the sidecar to have ACKed the change (one convergence observed)",
        Duration::from_secs(5),
        || async {
            (control
                .metric("pilot_proxy_convergence_time_count", &[])
                .await
                >= 1.0)
                .then_some(())
        },
    )
    .await;

    // The app calls ledger once (nothing answers there): the sidecar fetches its endpoints,
    // routes and policy on demand, so every type is pushed to it.
    let _ = clients::get(client.outbound(), "ledger.example.com:8080", "/").await;
    deadline::eventually(
        "the on-demand answer to be ACKed",
        Duration::from_secs(5),
        || async {
            let text = clients::get(control.monitoring, "127.0.0.1", "/metrics")
                .await
                .text();
            (meshlite_tests::prometheus::samples(&text, "pilot_xds_pushes")
                .iter()
                .any(|s| s.label("type") == "eds"))
            .then_some(())
        },
    )
    .await;

    let reply = clients::get(control.monitoring, "127.0.0.1", "/metrics").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "served as istiod serves it: Prometheus text format, not OpenMetrics"
    );
    let text = reply.text();
    let lines: Vec<&str> = text.lines().collect();
    for line in [
        "# TYPE pilot_xds gauge",
        "pilot_xds 1",
        "# TYPE pilot_xds_pushes counter",
        "# TYPE pilot_proxy_convergence_time histogram",
        "# TYPE pilot_xds_push_time histogram",
        "# TYPE galley_validation_passed counter",
        "# TYPE citadel_server_csr_count counter",
        "# TYPE citadel_server_root_cert_expiry_timestamp gauge",
    ] {
        assert!(
            lines.contains(&line),
            "no line {line:?} in /metrics:\n{text}"
        );
    }
    for gone in [
        "pilot_xds_pushes_total",
        "citadel_server_csr_count_total",
        "meshlite_control_connected_proxies",
        "meshlite_control_pushes_total",
        "meshlite_control_convergence_seconds",
        "meshlite_control_csrs_total",
    ] {
        assert!(
            !text.contains(gone),
            "{gone} is not exported (istiod's name only):\n{text}"
        );
    }
    let sample = |name: &str, labels: &[(&str, &str)]| {
        meshlite_tests::prometheus::samples(&text, name)
            .iter()
            .filter(|s| labels.iter().all(|(k, v)| s.label(k) == *v))
            .map(|s| s.value)
            .sum::<f64>()
    };
    // The sidecar subscribed to every type: each was answered at least once.
    for t in ["cds", "eds", "rds", "lds", "sds"] {
        assert!(
            sample("pilot_xds_pushes", &[("type", t)]) >= 1.0,
            "no pilot_xds_pushes{{type=\"{t}\"}}:\n{text}"
        );
        assert!(
            sample("pilot_xds_push_time_count", &[("type", t)]) >= 1.0,
            "no pilot_xds_push_time{{type=\"{t}\"}}:\n{text}"
        );
    }
    assert!(sample("pilot_proxy_convergence_time_bucket", &[("le", "+Inf")]) >= 1.0);
    assert_eq!(sample("pilot_total_xds_rejects", &[]), 0.0);
    assert_eq!(
        sample(
            "galley_validation_passed",
            &[
                ("group", "networking.istio.io"),
                ("resource", "serviceentries")
            ]
        ),
        1.0,
        "the new ServiceEntry passed validation once"
    );
    assert!(sample("citadel_server_csr_count", &[]) >= 1.0);
    assert!(sample("citadel_server_success_cert_issuance_count", &[]) >= 1.0);

    // The root's expiry is the notAfter of the root the proxies were given.
    let pem = std::fs::read(control.root_cert()).expect("root-cert.pem");
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .expect("a certificate")
        .expect("PEM");
    let (_, root) = X509Certificate::from_der(der.as_ref()).expect("X.509 root");
    let (not_before, not_after) = (
        root.validity().not_before.timestamp(),
        root.validity().not_after.timestamp(),
    );
    let expiry = sample("citadel_server_root_cert_expiry_timestamp", &[]);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(not_before < now && now < not_after, "the root is valid now");
    assert_eq!(expiry, not_after as f64, "root expiry is its notAfter");
    assert!(
        sample("citadel_server_cert_chain_expiry_timestamp", &[]) <= expiry,
        "nothing is signed past the root"
    );

    // The sidecar goes away: no proxy is connected.
    client.kill().await;
    deadline::eventually("pilot_xds to drop to 0", Duration::from_secs(5), || async {
        (control.metric("pilot_xds", &[]).await == 0.0).then_some(())
    })
    .await;
}
