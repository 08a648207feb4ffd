//! Access logs through Istio's providers: a mesh whose Telemetry sends access logs to an
//! `envoyOtelAls` provider has every sidecar export one OpenTelemetry log record per logged
//! request to the collector, linked to the request's trace, with the Telemetry filter
//! applied; a collector that is gone costs the requests nothing.

use meshlite_tests::apps::{HttpApp, closed_port};
use meshlite_tests::clients::{Http1Client, empty, h1_request};
use meshlite_tests::control::{
    ControlPlane, ECHO_HOST, ECHO_PORT, MeshProxy, NAMESPACE, Workload, wait_served_by,
};
use meshlite_tests::deadline::{SOON, eventually};
use meshlite_tests::log_collector::{OtlpLogCollector, ReceivedLog};
use meshlite_tests::tracing::OtlpCollector;
use std::net::SocketAddr;
use std::time::Duration;

/// A MeshConfig with an `envoyOtelAls` provider `otel-als` at `logs`, and, when `traces` is
/// given, every request traced to an `opentelemetry` collector there.
fn mesh_config(logs: SocketAddr, traces: Option<SocketAddr>) -> String {
    let mut yaml = "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n\
                    metadata: {name: mesh, namespace: istio-system}\nspec:\n  meshConfig:\n"
        .to_string();
    if traces.is_some() {
        yaml += "    defaultConfig: {tracing: {sampling: 100}}\n    \
                 defaultProviders: {tracing: [otel]}\n";
    }
    yaml += "    extensionProviders:\n";
    yaml += &format!(
        "    - {{name: otel-als, envoyOtelAls: {{service: {}, port: {}}}}}\n",
        logs.ip(),
        logs.port()
    );
    if let Some(t) = traces {
        yaml += &format!(
            "    - {{name: otel, opentelemetry: {{service: {}, port: {}}}}}\n",
            t.ip(),
            t.port()
        );
    }
    yaml
}

/// Mesh-wide access logging to `otel-als`, through `filter` when given.
fn telemetry(filter: Option<&str>) -> String {
    let filter = filter.map_or_else(String::new, |f| {
        format!("\n    filter: {{expression: \"{f}\"}}")
    });
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\n\
         metadata: {{name: mesh-default, namespace: istio-system}}\nspec:\n  accessLogging:\n  \
         - providers: [{{name: otel-als}}]{filter}\n"
    )
}

/// A client workload's sidecar and an `echo` workload's sidecar in front of an HTTP app,
/// joined through `control`; returns once the client's routes to echo are in.
async fn client_and_echo(control: &ControlPlane) -> (MeshProxy, MeshProxy, HttpApp) {
    let app = HttpApp::start("echo-a").await;
    let server = MeshProxy::start(
        &control.access(NAMESPACE, "echo").await,
        &Workload::version_of("echo", "a", ECHO_PORT, app.addr),
    )
    .await;
    let client = MeshProxy::caller(control, "client").await;
    wait_served_by(client.outbound(), ECHO_HOST, "echo-a", SOON).await;
    (client, server, app)
}

fn request_id(i: usize) -> String {
    format!("e2e-als-{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telemetry_sending_access_logs_to_an_otel_provider_exports_one_record_per_logged_request()
{
    let logs = OtlpLogCollector::start().await;
    let traces = OtlpCollector::start().await;
    let control = ControlPlane::start(&[
        (
            "mesh-config.yaml",
            &mesh_config(logs.addr, Some(traces.addr)),
        ),
        ("telemetry.yaml", &telemetry(Some("response.code >= 400"))),
    ])
    .await;
    let (client, server, _app) = client_and_echo(&control).await;

    let mut conn = Http1Client::connect(client.outbound()).await;
    let codes = [200, 404, 201, 503, 200];
    for (i, code) in codes.iter().enumerate() {
        let reply = conn
            .exchange(
                h1_request("GET", ECHO_HOST, &format!("/status/{code}"))
                    .header("x-request-id", request_id(i))
                    .header("user-agent", "e2e-als")
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status.as_u16(), *code);
    }
    let ours = |r: &ReceivedLog| r.attribute("request_id").starts_with("e2e-als-");
    // Two requests pass the filter, each logged by both sidecars.
    eventually(
        "the four records of the two failed requests",
        SOON,
        || async { (logs.records().iter().filter(|r| ours(r)).count() >= 4).then_some(()) },
    )
    .await;
    // Whatever else was coming has arrived (one export batch waits at most 500 ms).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let records: Vec<ReceivedLog> = logs.records().into_iter().filter(ours).collect();
    assert_eq!(records.len(), 4, "{records:#?}");
    for (i, code) in codes.iter().enumerate() {
        let id = request_id(i);
        let of: Vec<&ReceivedLog> = records
            .iter()
            .filter(|r| r.attribute("request_id") == id)
            .collect();
        if *code < 400 {
            assert!(of.is_empty(), "the filter drops {id} ({code}): {of:#?}");
            continue;
        }
        let side = |direction: &str| {
            let found: Vec<&&ReceivedLog> = of
                .iter()
                .filter(|r| r.attribute("direction") == direction)
                .collect();
            assert_eq!(found.len(), 1, "one {direction} record of {id}: {of:#?}");
            *found[0]
        };
        let (outbound, inbound) = (side("outbound"), side("inbound"));
        for r in [outbound, inbound] {
            assert_eq!(r.attribute("method"), "GET", "{r:#?}");
            assert_eq!(r.attribute("path"), format!("/status/{code}"));
            assert_eq!(r.attribute("response_code"), code.to_string());
            assert_eq!(r.attribute("user_agent"), "e2e-als");
            assert_eq!(r.attribute("protocol"), "HTTP/1.1");
            assert_eq!(r.trace_id.len(), 32, "traced: {r:#?}");
            assert_eq!(r.attribute("trace_id"), r.trace_id);
            assert_eq!(r.attribute("span_id"), r.span_id);
            assert_eq!(r.resource["log_name"], "otel_envoy_accesslog");
            assert!(
                r.body.starts_with('[')
                    && r.body
                        .contains(&format!("\"GET /status/{code} HTTP/1.1\" {code}")),
                "Istio's text line: {}",
                r.body
            );
            assert!(r.time_unix_nano > 0);
        }
        assert_eq!(outbound.trace_id, inbound.trace_id, "one trace per request");
        assert_ne!(outbound.span_id, inbound.span_id, "each sidecar's own span");
        assert_eq!(outbound.resource["service.name"], "client.default");
        assert_eq!(inbound.resource["service.name"], "echo.default");
        assert_eq!(
            outbound.attribute("upstream_cluster"),
            "outbound|8080||echo.default.svc.cluster.local"
        );
        assert_eq!(
            outbound.attribute("upstream_peer_principal"),
            "spiffe://cluster.local/ns/default/sa/echo",
            "the identity the client's sidecar verified"
        );
        assert_eq!(
            inbound.attribute("downstream_peer_principal"),
            "spiffe://cluster.local/ns/default/sa/client"
        );
        for r in [outbound, inbound] {
            assert!(
                r.attribute("upstream_service_time").parse::<u64>().is_ok(),
                "{r:#?}"
            );
        }
        // The record's span is the one the trace collector got.
        let span = outbound.span_id.clone();
        eventually("the client's span of the request", SOON, || async {
            traces
                .spans()
                .iter()
                .any(|s| s.span_id == span && s.kind == "CLIENT")
                .then_some(())
        })
        .await;
    }
    // The Telemetry names only otel-als: the sidecars' own files get nothing.
    for sidecar in [&client, &server] {
        let file = std::fs::read_to_string(sidecar.dir().join("access.log")).unwrap_or_default();
        assert!(!file.contains("e2e-als-"), "{file}");
        let exported = sidecar
            .metric("meshlite_access_log_exported_total", &[])
            .await;
        assert!(exported >= 2.0, "exported: {exported}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_log_collector_costs_the_requests_nothing_and_its_records_are_counted_as_dropped() {
    let dead = closed_port();
    let control = ControlPlane::start(&[
        ("mesh-config.yaml", &mesh_config(dead, None)),
        ("telemetry.yaml", &telemetry(None)),
    ])
    .await;
    let (client, _server, _app) = client_and_echo(&control).await;
    let mut conn = Http1Client::connect(client.outbound()).await;
    let started = tokio::time::Instant::now();
    for _ in 0..300 {
        let reply = conn
            .exchange(
                h1_request("GET", ECHO_HOST, "/status/200")
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "300 requests took {took:?} with the collector gone"
    );
    eventually("records counted as export_failed", SOON * 2, || async {
        let failed = client
            .metric(
                "meshlite_access_log_dropped_total",
                &[("reason", "export_failed")],
            )
            .await;
        (failed >= 1.0).then_some(())
    })
    .await;
    assert_eq!(
        client
            .metric("meshlite_access_log_exported_total", &[])
            .await,
        0.0
    );
}
