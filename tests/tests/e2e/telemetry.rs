//! Telemetry: Istio's standard metrics from both sidecars, and the JSON access log.

use crate::field_text;
use meshlite_tests::clients::{Http1Client, empty, full, h1_request};
use meshlite_tests::mesh::{CLIENT_SA, Mesh};
use meshlite_tests::prometheus::names;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_the_source_and_the_destination_sidecar() {
    let mesh = Mesh::start().await;
    let mut conn = Http1Client::connect(mesh.outbound()).await;
    for _ in 0..3 {
        let reply = conn
            .exchange(h1_request("GET", "app", "/headers").body(empty()).unwrap())
            .await;
        assert_eq!(reply.status, 200);
    }
    let reply = conn
        .exchange(
            h1_request("GET", "app", "/status/404")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 404, "the app's own 404 is passed through");

    let is_app =
        |s: &meshlite_tests::prometheus::Sample| s.label("destination_service").starts_with("app");
    mesh.client
        .metric_sample(
            "istio_requests_total",
            "reporter=source, 3 x 200 to app",
            |s| {
                s.label("reporter") == "source"
                    && s.label("response_code") == "200"
                    && is_app(s)
                    && s.value >= 3.0
            },
        )
        .await;
    mesh.client
        .metric_sample("istio_requests_total", "reporter=source, the 404", |s| {
            s.label("reporter") == "source" && s.label("response_code") == "404" && is_app(s)
        })
        .await;
    let destination = mesh
        .server
        .metric_sample(
            "istio_requests_total",
            "reporter=destination, 3 x 200",
            |s| {
                s.label("reporter") == "destination"
                    && s.label("response_code") == "200"
                    && s.value >= 3.0
            },
        )
        .await;
    assert_eq!(
        destination.label("source_workload"),
        CLIENT_SA,
        "the destination knows who called: {destination:?}"
    );
    assert_eq!(
        destination.label("connection_security_policy"),
        "mutual_tls",
        "the destination saw mutual TLS: {destination:?}"
    );
    for sidecar in [&mesh.client, &mesh.server] {
        let text = sidecar.metrics_text().await;
        assert!(
            names(&text)
                .iter()
                .any(|n| n.starts_with("istio_request_duration_milliseconds")),
            "{} exports istio_request_duration_milliseconds",
            sidecar.name
        );
    }

    // A body of 1,500 bytes is counted by both reporters in istio_request_bytes, and the
    // source learnt the destination's workload and cluster from its answers.
    let reply = conn
        .exchange(
            h1_request("POST", "app", "/echo")
                .body(full(vec![b'x'; 1500]))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 200);
    for (sidecar, reporter) in [(&mesh.client, "source"), (&mesh.server, "destination")] {
        let sum = sidecar
            .metric_sample("istio_request_bytes_sum", reporter, |s| {
                s.label("reporter") == reporter && s.value >= 1500.0
            })
            .await;
        for label in ["source_cluster", "destination_cluster"] {
            assert_eq!(sum.label(label), "Kubernetes", "{label}: {sum:?}");
        }
        sidecar
            .metric_sample("istio_response_bytes_count", reporter, |s| {
                s.label("reporter") == reporter
                    && s.label("response_code") == "200"
                    && s.value >= 4.0
            })
            .await;
    }
    let source = mesh
        .client
        .metric_sample("istio_requests_total", "reporter=source, 200", |s| {
            s.label("reporter") == "source" && s.label("response_code") == "200"
        })
        .await;
    assert_ne!(
        source.label("destination_workload"),
        "unknown",
        "learnt from the destination's peer header: {source:?}"
    );
    assert_eq!(
        source.label("source_canonical_revision"),
        "latest",
        "{source:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sidecars_write_an_access_log_entry_per_request() {
    let mesh = Mesh::start().await;
    let request = h1_request("GET", "app", "/headers?from=e2e")
        .header("x-request-id", "e2e-access-log-1")
        .body(empty())
        .unwrap();
    let reply = Http1Client::connect(mesh.outbound())
        .await
        .exchange(request)
        .await;
    assert_eq!(reply.status, 200);

    let ours = |e: &serde_json::Value| field_text(e, "request_id") == "e2e-access-log-1";
    let client = mesh
        .client
        .access_log_entry("the request on the client side", ours)
        .await;
    let server = mesh
        .server
        .access_log_entry("the request on the server side", ours)
        .await;
    for (side, entry) in [("client", &client), ("server", &server)] {
        assert_eq!(field_text(entry, "response_code"), "200", "{side}: {entry}");
        assert_eq!(field_text(entry, "response_flags"), "-", "{side}: {entry}");
        assert_eq!(field_text(entry, "method"), "GET", "{side}: {entry}");
        assert!(
            field_text(entry, "path").starts_with("/headers"),
            "{side}: {entry}"
        );
        assert!(
            field_text(entry, "authority").starts_with("app"),
            "{side}: {entry}"
        );
        assert!(
            entry.get("duration_ms").is_some_and(|d| d.is_number()),
            "{side}: duration_ms is a number: {entry}"
        );
    }
    assert_eq!(
        field_text(&client, "upstream_host"),
        mesh.server.addrs.inbound.to_string(),
        "the client's upstream is the destination sidecar"
    );
    assert_eq!(
        field_text(&server, "upstream_host"),
        mesh.apps.alpha.addr.to_string(),
        "the server's upstream is the local app"
    );
}

/// Envoy's cluster statistics follow Istio's `proxyStatsMatcher`: none beyond Istio's
/// default set until the MeshConfig includes them, then those it names, under Envoy's
/// Prometheus names, for the clusters the app called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_statistics_follow_the_meshconfigs_proxy_stats_matcher() {
    use meshlite_tests::apps::HttpApp;
    use meshlite_tests::control::{
        ControlPlane, ECHO_HOST, ECHO_PORT, MeshProxy, NAMESPACE, Workload, wait_served_by,
    };
    use meshlite_tests::deadline::SOON;

    let control = ControlPlane::start(&[]).await;
    let app = HttpApp::start("echo-a").await;
    let _server = MeshProxy::start(
        &control.access(NAMESPACE, "echo").await,
        &Workload::version_of("echo", "a", ECHO_PORT, app.addr),
    )
    .await;
    let mut plain = Workload::new("client");
    plain.stats_prefixes.clear();
    let client = MeshProxy::start(&control.access(NAMESPACE, "client").await, &plain).await;
    wait_served_by(client.outbound(), ECHO_HOST, "echo-a", SOON).await;
    let text = client.metrics_text().await;
    assert!(
        !text.contains("envoy_cluster_"),
        "Istio's default set has no cluster statistics: {text}"
    );
    assert!(
        text.contains("# TYPE istio_requests_total counter\n"),
        "{text}"
    );

    control.write_config(
        "mesh-config.yaml",
        "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n\
         metadata: {name: mesh, namespace: istio-system}\nspec:\n  meshConfig:\n    \
         defaultConfig:\n      proxyStatsMatcher:\n        \
         inclusionRegexps: ['.*circuit_breakers.*']\n        \
         inclusionSuffixes: [upstream_rq_active]\n",
    );
    let cluster = "outbound|8080||echo.default.svc.cluster.local";
    let deadline = tokio::time::Instant::now() + SOON;
    let text = loop {
        let text = client.metrics_text().await;
        if text.contains("envoy_cluster_circuit_breakers_default_rq_open{") {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the matcher was never applied: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    for gauge in [
        "envoy_cluster_circuit_breakers_default_rq_open",
        "envoy_cluster_circuit_breakers_default_cx_open",
        "envoy_cluster_upstream_rq_active",
    ] {
        assert!(
            text.contains(&format!("{gauge}{{cluster_name=\"{cluster}\"}} 0\n")),
            "{gauge}: {text}"
        );
    }
    assert!(
        !text.contains("envoy_cluster_upstream_rq_retry"),
        "what the matcher does not name stays out: {text}"
    );
}

/// The admin port changes the log level while the proxy runs, as Envoy's `POST /logging`:
/// a component turned to debug logs what it did not log before; a bad query is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_changes_at_run_time_per_component() {
    use meshlite_tests::clients::{get, post};
    if meshlite_tests::mesh::log_level().is_some() {
        eprintln!("SKIPPED: MESHLITE_E2E_LOG_LEVEL sets the level this test changes");
        return;
    }
    let mesh = Mesh::start().await;
    let admin = mesh.client.addrs.admin;
    let mut conn = Http1Client::connect(mesh.outbound()).await;
    let unknown = || h1_request("GET", "nowhere", "/").body(empty()).unwrap();
    assert_eq!(conn.exchange(unknown()).await.status, 404);
    assert!(
        !mesh.client.logs().contains("outbound request failed"),
        "not logged at the start-up level"
    );

    let reply = post(admin, "127.0.0.1", "/logging?paths=outbound:debug", "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply.text().contains("meshlite_proxy::outbound=debug"),
        "{}",
        reply.text()
    );
    assert!(
        get(admin, "127.0.0.1", "/logging")
            .await
            .text()
            .contains("meshlite_proxy::outbound=debug")
    );
    assert_eq!(conn.exchange(unknown()).await.status, 404);
    let deadline = tokio::time::Instant::now() + meshlite_tests::deadline::SOON;
    while !mesh.client.logs().contains("outbound request failed") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbound component never logged at debug: {}",
            mesh.client.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    for bad in [
        "/logging?paths=nowhere:debug",
        "/logging?level=loud",
        "/logging",
    ] {
        let reply = post(admin, "127.0.0.1", bad, "").await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text());
    }
    let metrics = post(
        mesh.client.addrs.metrics,
        "127.0.0.1",
        "/logging?level=debug",
        "",
    )
    .await;
    assert_eq!(metrics.status, 404, "only the admin port changes levels");
}
