//! Access logs through Istio's providers: a mesh whose Telemetry sends access logs to an
//! `envoyOtelAls` provider has every sidecar export one OpenTelemetry log record per logged
//! request to the collector, linked to the request's trace, with the Telemetry filter
//! applied; a collector that is gone costs the requests nothing; a provider's `logFormat`
//! shapes the file's line and the collector's record.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_log_formats_shape_the_file_line_and_the_collectors_record() {
    let logs = OtlpLogCollector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("custom.log");
    // A file of JSON fields of the seed's business labels, and a collector whose records
    // carry a text body and one attribute.
    let mesh = format!(
        "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n\
         metadata: {{name: mesh, namespace: istio-system}}\nspec:\n  meshConfig:\n    \
         extensionProviders:\n    \
         - name: custom-file\n      envoyFileAccessLog:\n        path: {}\n        logFormat:\n          \
         labels:\n            code: \"%RESPONSE_CODE%\"\n            tenant: \"%REQ(X-TENANT)%\"\n            \
         id: \"%REQ(X-REQUEST-ID)%\"\n            served_by: \"%RESP(X-SERVED-BY)%\"\n            \
         peer: \"%DOWNSTREAM_PEER_URI_SAN%\"\n            service_time: \"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%\"\n            \
         absent: \"%REQ(X-NOT-SENT)%\"\n            line: \"%REQ(:METHOD)% %REQ_WITHOUT_QUERY(:PATH)% %PROTOCOL%\"\n    \
         - name: otel-custom\n      envoyOtelAls:\n        service: {}\n        port: {}\n        logFormat:\n          \
         text: \"%REQ(:METHOD)% tenant=%REQ(X-TENANT)% %RESPONSE_CODE%\"\n          \
         labels: {{tenant: \"%REQ(X-TENANT)%\", id: \"%REQ(X-REQUEST-ID)%\", code: \"%RESPONSE_CODE%\"}}\n",
        file.display(),
        logs.addr.ip(),
        logs.addr.port(),
    );
    let telemetry = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\n\
         metadata: {name: mesh-default, namespace: istio-system}\nspec:\n  accessLogging:\n  \
         - providers: [{name: custom-file}, {name: otel-custom}]\n";
    let control =
        ControlPlane::start(&[("mesh-config.yaml", &mesh), ("telemetry.yaml", telemetry)]).await;
    let (client, _server, _app) = client_and_echo(&control).await;

    let mut conn = Http1Client::connect(client.outbound()).await;
    let reply = conn
        .exchange(
            h1_request("GET", ECHO_HOST, "/status/201?q=1")
                .header("x-request-id", "e2e-format-1")
                .header("x-tenant", "acme")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 201);

    // Both sidecars write the provider's fields, and nothing else, to the file.
    let lines = eventually("both sidecars' lines in the custom file", SOON, || async {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v["id"] == "e2e-format-1")
            .collect();
        (lines.len() == 2).then_some(lines)
    })
    .await;
    for line in &lines {
        let keys: Vec<&String> = line.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "absent",
                "code",
                "id",
                "line",
                "peer",
                "served_by",
                "service_time",
                "tenant"
            ],
            "{line}"
        );
        assert_eq!(line["code"], 201, "a number: {line}");
        assert_eq!(line["tenant"], "acme");
        assert_eq!(line["served_by"], "echo-a", "a response header: {line}");
        assert!(line["service_time"].is_u64(), "{line}");
        assert_eq!(line["absent"], serde_json::Value::Null);
        assert_eq!(line["line"], "GET /status/201 HTTP/1.1");
    }
    let peers: Vec<&serde_json::Value> = lines.iter().map(|l| &l["peer"]).collect();
    assert!(
        peers.contains(&&serde_json::json!(
            "spiffe://cluster.local/ns/default/sa/client"
        )),
        "the server's line names the verified caller: {peers:?}"
    );
    assert!(
        peers.contains(&&serde_json::Value::Null),
        "the client's line has no downstream peer: {peers:?}"
    );

    // The collector's records: the format's body and attributes only.
    let records = eventually("both sidecars' records", SOON, || async {
        let records: Vec<ReceivedLog> = logs
            .records()
            .into_iter()
            .filter(|r| r.attribute("id") == "e2e-format-1")
            .collect();
        (records.len() == 2).then_some(records)
    })
    .await;
    for r in &records {
        assert_eq!(r.body, "GET tenant=acme 201", "{r:#?}");
        assert_eq!(
            r.attributes.keys().collect::<Vec<_>>(),
            ["code", "id", "tenant"],
            "{r:#?}"
        );
        assert_eq!(r.attribute("tenant"), "acme");
        assert_eq!(r.attribute("code"), "201");
    }
}
