//! Distributed traces: every sidecar on a request's way reports its span to the collector,
//! parented so the trace view shows the call chain; sampling honours the percentage and the
//! caller's decision; a collector that is gone costs the requests nothing.

use meshlite_tests::apps::{HttpApp, closed_port};
use meshlite_tests::clients::{Http1Client, empty, h1_request};
use meshlite_tests::deadline::{SOON, eventually};
use meshlite_tests::mesh::{AppProtocol, InboundPort, Mesh, Service, Sidecar, SidecarSpec};
use meshlite_tests::pki::{Pki, spiffe_id};
use meshlite_tests::tracing::{
    OtlpCollector, ReceivedSpan, RelayApp, ZipkinCollector, tracing_yaml, tracing_yaml_to,
};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const REQUEST_ID: &str = "6c1f0f2e-8d1a-4c55-9a7e-3b1d2c4e5f60";

/// A service `name:80` whose endpoint is the sidecar at `inbound`, presenting `name`'s
/// identity.
fn service(name: &str, inbound: SocketAddr) -> Service {
    Service {
        name: name.to_string(),
        namespace: "default".to_string(),
        port: 80,
        protocol: AppProtocol::Http,
        identities: vec![spiffe_id(name)],
        endpoints: vec![inbound],
        listen: None,
    }
}

fn serving(port_target: SocketAddr) -> Vec<InboundPort> {
    vec![InboundPort {
        port: 80,
        target: port_target,
        protocol: AppProtocol::Http,
    }]
}

fn find<'a>(spans: &'a [ReceivedSpan], service: &str, kind: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| s.service == service && s.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} span from {service} in {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_three_services_is_one_trace_with_a_span_from_every_sidecar() {
    let collector = OtlpCollector::start().await;
    let pki = Pki::new();
    // b: the last service, an ordinary app. Its sidecar samples nothing itself: it only
    // follows the caller's decision.
    let b_app = HttpApp::start("b").await;
    let mut b = SidecarSpec::new(&pki, "b");
    b.inbound = serving(b_app.addr);
    b.extra_yaml = tracing_yaml("opentelemetry", collector.addr, 0.0);
    let b = Sidecar::start(&b).await;
    // a: an app that calls b through its own sidecar, copying the trace headers.
    let a_outbound = Arc::new(Mutex::new(None));
    let relay = RelayApp::start("b", a_outbound.clone()).await;
    let mut a = SidecarSpec::new(&pki, "a");
    a.inbound = serving(relay.addr);
    a.services = vec![service("b", b.addrs.inbound)];
    a.extra_yaml = tracing_yaml("opentelemetry", collector.addr, 0.0);
    let a = Sidecar::start(&a).await;
    *a_outbound.lock().unwrap() = Some(a.addrs.outbound);
    // The calling workload's sidecar starts the trace (100 %).
    let mut client = SidecarSpec::new(&pki, "client");
    client.services = vec![service("a", a.addrs.inbound)];
    client.extra_yaml = tracing_yaml("opentelemetry", collector.addr, 100.0);
    let client = Sidecar::start(&client).await;

    let mut conn = Http1Client::connect(client.addrs.outbound).await;
    let reply = conn
        .exchange(
            h1_request("GET", "a", "/checkout")
                .header("x-request-id", REQUEST_ID)
                .header("x-tenant", "acme")
                .header("user-agent", "e2e-shopper")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen_by_b = reply.json();
    assert_eq!(seen_by_b["app"], "b");
    assert_eq!(
        seen_by_b["headers"]["x-request-id"][0], REQUEST_ID,
        "x-request-id is kept end to end"
    );

    let spans = eventually("a span from each of the four hops", SOON, || async {
        let spans = collector.spans();
        (spans.len() >= 4).then_some(spans)
    })
    .await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let trace = &spans[0].trace_id;
    assert!(
        spans.iter().all(|s| &s.trace_id == trace),
        "one trace: {spans:#?}"
    );
    let root = find(&spans, "client.default", "CLIENT");
    let a_server = find(&spans, "a.default", "SERVER");
    let a_client = find(&spans, "a.default", "CLIENT");
    let b_server = find(&spans, "b.default", "SERVER");
    assert_eq!(root.parent_id, None, "the client sidecar starts the trace");
    assert_eq!(a_server.parent_id.as_ref(), Some(&root.span_id));
    assert_eq!(a_client.parent_id.as_ref(), Some(&a_server.span_id));
    assert_eq!(b_server.parent_id.as_ref(), Some(&a_client.span_id));
    // b's app sees b's sidecar span as its parent.
    let traceparent = seen_by_b["headers"]["traceparent"][0].as_str().unwrap();
    assert_eq!(
        traceparent,
        format!("00-{trace}-{}-01", b_server.span_id),
        "the app is given its sidecar's span"
    );

    // Envoy's tags, Istio's names.
    assert_eq!(root.name, "a.default.svc.cluster.local:80/*");
    assert_eq!(b_server.name, "b.default.svc.cluster.local:80/*");
    for s in &spans {
        assert_eq!(s.tag("guid:x-request-id"), REQUEST_ID, "{s:#?}");
        assert_eq!(s.tag("component"), "proxy");
        assert_eq!(s.tag("http.method"), "GET");
        assert_eq!(s.tag("http.status_code"), "200");
        assert_eq!(s.tag("response_flags"), "-");
        assert_eq!(s.tag("http.protocol"), "HTTP/1.1");
        assert_eq!(s.tag("istio.namespace"), "default");
        assert_eq!(s.tag("istio.mesh_id"), "cluster.local");
        assert_eq!(s.tag("env"), "e2e");
        assert!(s.tag("node_id").starts_with("sidecar~"), "{s:#?}");
        assert!(s.tag("http.url").ends_with("/checkout"), "{s:#?}");
        assert!(!s.tags.contains_key("error"));
    }
    // The relay sends no user agent of its own: Envoy's `-`.
    for (s, agent) in [
        (root, "e2e-shopper"),
        (a_server, "e2e-shopper"),
        (a_client, "-"),
        (b_server, "-"),
    ] {
        assert_eq!(s.tag("user_agent"), agent, "{s:#?}");
    }
    assert_eq!(root.tag("istio.canonical_service"), "client");
    assert_eq!(root.tag("http.url"), "http://a/checkout");
    assert_eq!(root.tag("tenant"), "acme");
    assert_eq!(
        root.tag("upstream_cluster"),
        "outbound|80||a.default.svc.cluster.local"
    );
    assert_eq!(
        a_client.tag("upstream_cluster"),
        "outbound|80||b.default.svc.cluster.local"
    );
    assert_eq!(b_server.tag("upstream_cluster"), "inbound|80||");
    assert_eq!(
        a_server.tag("downstream_principal"),
        "spiffe://cluster.local/ns/default/sa/client"
    );
    assert_eq!(
        b_server.tag("downstream_principal"),
        "spiffe://cluster.local/ns/default/sa/a"
    );
    // The relay did not copy x-tenant: b's sidecar reports the tag's default.
    assert_eq!(b_server.tag("tenant"), "none");
    client
        .metric_sample("meshlite_spans_exported_total", "the root span", |s| {
            s.value >= 1.0
        })
        .await;
}

/// Waits until the collector has received spans and no more arrive for a while.
async fn settled(spans: impl Fn() -> usize) -> usize {
    let deadline = tokio::time::Instant::now() + SOON * 2;
    let mut last = usize::MAX;
    loop {
        let now = spans();
        if now == last && now > 0 {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans did not settle: {now}"
        );
        last = now;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarter_of_the_requests_are_traced_at_25_percent_and_the_destination_follows() {
    let collector = ZipkinCollector::start().await;
    let port = collector.addr.port();
    // The collector by a DNS name, as a Kubernetes service would be named.
    let mesh = Mesh::builder()
        .server(move |s, _| s.extra_yaml = tracing_yaml_to("zipkin", "localhost", port, 25.0))
        .client(move |s, _| s.extra_yaml = tracing_yaml_to("zipkin", "localhost", port, 25.0))
        .start()
        .await;
    const REQUESTS: usize = 2_000;
    let mut conn = Http1Client::connect(mesh.outbound()).await;
    for _ in 0..REQUESTS {
        let reply = conn
            .exchange(
                h1_request("GET", "app", "/status/204")
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, 204);
    }
    settled(|| collector.spans().len()).await;
    let spans = collector.spans();
    let clients: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.kind == "CLIENT").collect();
    let servers: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.kind == "SERVER").collect();
    let traced = clients.len();
    // 25 % of 2,000 is 500; one standard deviation is about 19.
    assert!(
        (440..=560).contains(&traced),
        "{traced} of {REQUESTS} requests traced at 25 %"
    );
    // The destination obeys the source's decision: a server span for every client span,
    // none of its own.
    assert_eq!(servers.len(), traced, "server spans");
    let client_ids: std::collections::HashSet<&str> =
        clients.iter().map(|s| s.span_id.as_str()).collect();
    assert!(
        servers.iter().all(|s| s
            .parent_id
            .as_deref()
            .is_some_and(|p| client_ids.contains(p))),
        "every server span is the child of a client span"
    );
    assert!(clients.iter().all(|s| s.service == "client.default"));
    assert!(servers.iter().all(|s| s.service == "server.default"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_the_requests_nothing_and_its_spans_are_counted_as_dropped() {
    // Both protocols, to a port where nothing listens.
    let dead = closed_port();
    let mesh = Mesh::builder()
        .client(move |s, _| s.extra_yaml = tracing_yaml("opentelemetry", dead, 100.0))
        .server(move |s, _| s.extra_yaml = tracing_yaml("zipkin", dead, 100.0))
        .start()
        .await;
    let mut conn = Http1Client::connect(mesh.outbound()).await;
    for _ in 0..300 {
        let reply = conn
            .exchange(
                h1_request("GET", "app", "/status/200")
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    for sidecar in [&mesh.client, &mesh.server] {
        sidecar
            .metric_sample(
                "meshlite_spans_dropped_total",
                "spans the dead collector did not take",
                |s| s.label("reason") == "export_failed" && s.value >= 1.0,
            )
            .await;
        let text = sidecar.metrics_text().await;
        let exported = meshlite_tests::prometheus::samples(&text, "meshlite_spans_exported_total");
        assert!(
            exported.iter().all(|s| s.value == 0.0),
            "nothing exported: {exported:?}"
        );
    }
}
