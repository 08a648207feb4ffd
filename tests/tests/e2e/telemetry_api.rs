//! The Telemetry API end to end: `Telemetry` resources written to the control plane's
//! config reach the sidecars they select, which trace at the workload's own sampling with
//! its custom tags, stop reporting spans where `disableSpanReporting` says (the trace
//! context still travels), and label Istio's metrics as `tagOverrides` says.

use std::time::Duration;

use meshlite_tests::apps::HttpApp;
use meshlite_tests::clients::{Http1Client, empty, h1_request};
use meshlite_tests::control::{
    ControlPlane, ECHO_HOST, ECHO_PORT, MeshProxy, NAMESPACE, Workload, wait_served_by,
};
use meshlite_tests::deadline::SOON;
use meshlite_tests::tracing::OtlpCollector;

/// A Telemetry document `namespace/name` with a flow-style spec.
fn telemetry(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\n\
         metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )
}

/// Waits until `check` holds for the client sidecar's metrics text; returns it.
async fn metrics_where(proxy: &MeshProxy, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let text = proxy.metrics_text().await;
        if check(&text) {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_resources_set_sampling_tags_span_reporting_and_metric_labels_per_workload() {
    let collector = OtlpCollector::start().await;
    let control = ControlPlane::start(&[]).await;
    control.write_config(
        "mesh-config.yaml",
        &format!(
            "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n\
             metadata: {{name: mesh, namespace: istio-system}}\nspec:\n  meshConfig:\n    \
             extensionProviders:\n    \
             - {{name: otel, opentelemetry: {{service: 127.0.0.1, port: {}}}}}\n",
            collector.addr.port()
        ),
    );
    // The mesh traces to `otel` at 0 %; the client samples everything and tags its spans
    // with the intent header and its metrics with the tenant; the echo service reports no
    // spans of its own.
    control.write_config(
        "telemetry.yaml",
        &[
            telemetry(
                "istio-system",
                "mesh-default",
                "{tracing: [{providers: [{name: otel}], randomSamplingPercentage: 0}]}",
            ),
            telemetry(
                NAMESPACE,
                "client",
                "{selector: {matchLabels: {app: client}}, \
                 tracing: [{randomSamplingPercentage: 100, \
                 customTags: {intent: {header: {name: x-intent-type, defaultValue: none}}}}], \
                 metrics: [{overrides: [{match: {metric: REQUEST_COUNT, mode: CLIENT}, \
                 tagOverrides: {tenant: {value: \"request.headers['x-tenant']\"}, \
                 source_principal: {operation: REMOVE}}}]}]}",
            ),
            telemetry(
                NAMESPACE,
                "echo",
                "{selector: {matchLabels: {app: echo}}, tracing: [{disableSpanReporting: true}]}",
            ),
        ]
        .join("---\n"),
    );
    let app = HttpApp::start("echo-a").await;
    let server = MeshProxy::start(
        &control.access(NAMESPACE, "echo").await,
        &Workload::version_of("echo", "a", ECHO_PORT, app.addr),
    )
    .await;
    let client = MeshProxy::start(
        &control.access(NAMESPACE, "client").await,
        &Workload::new("client"),
    )
    .await;
    wait_served_by(client.outbound(), ECHO_HOST, "echo-a", SOON).await;
    // The Telemetry settings are in force once the client's metrics carry the tenant.
    let mut conn = Http1Client::connect(client.outbound()).await;
    let mut send = async |tenant: &str, path: &str| -> serde_json::Value {
        let reply = conn
            .exchange(
                h1_request("GET", ECHO_HOST, path)
                    .header("x-tenant", tenant)
                    .header("x-intent-type", "payment")
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, 200);
        reply.json()
    };
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        send("warmup", "/").await;
        if client.metrics_text().await.contains("tenant=\"warmup\"") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tagOverrides never applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    const REQUESTS: usize = 20;
    let mut seen = serde_json::Value::Null;
    for i in 0..REQUESTS {
        seen = send(if i % 2 == 0 { "acme" } else { "globex" }, "/traced").await;
    }

    // Metrics: the client's request count by tenant, without the removed label; its other
    // families and the server's reports keep Istio's standard labels.
    let text = metrics_where(&client, "tenants counted", |t| {
        t.lines().any(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("tenant=\"globex\"")
                && l.ends_with(" 10")
        })
    })
    .await;
    let acme: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && l.contains("tenant=\"acme\""))
        .collect();
    assert_eq!(acme.len(), 1, "{text}");
    assert!(acme[0].ends_with(" 10"), "{}", acme[0]);
    assert!(acme[0].contains("reporter=\"source\""), "{}", acme[0]);
    assert!(!acme[0].contains("source_principal="), "{}", acme[0]);
    assert!(
        text.lines()
            .filter(|l| l.starts_with("istio_request_duration_milliseconds_count{"))
            .all(|l| !l.contains("tenant=") && l.contains("source_principal=")),
        "the duration histogram is not overridden: {text}"
    );
    let served = server.metrics_text().await;
    assert!(
        served.contains("istio_requests_total{reporter=\"destination\"")
            && !served.contains("tenant="),
        "the CLIENT override is not the server's: {served}"
    );

    // Traces: every request has the client's span, with the intent tag; the echo sidecar,
    // which does not report, sends none, yet the app sees the client's span as parent.
    // (Spans of the earlier requests may still be on their way: these are told by path.)
    let traced = || -> Vec<_> {
        collector
            .spans()
            .into_iter()
            .filter(|s| s.tag("http.url").ends_with("/traced"))
            .collect()
    };
    let deadline = tokio::time::Instant::now() + SOON;
    let recent = loop {
        let spans = traced();
        if spans.len() >= REQUESTS {
            // Any span beyond one per request would have had time to come.
            tokio::time::sleep(Duration::from_millis(500)).await;
            break traced();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} spans of {REQUESTS} requests",
            spans.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        recent.iter().all(|s| s.kind == "CLIENT"
            && s.service == "client.default"
            && s.tag("intent") == "payment"),
        "{recent:#?}"
    );
    assert_eq!(
        recent.len(),
        REQUESTS,
        "one span per request, none from echo"
    );
    let traceparent = seen["headers"]["traceparent"][0]
        .as_str()
        .expect("the trace context reaches the app");
    assert!(
        recent.iter().any(|s| traceparent.contains(&s.trace_id)),
        "the app's request belongs to a reported trace: {traceparent}"
    );
}
