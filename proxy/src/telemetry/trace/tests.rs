//! Sampling decisions, what each decision writes downstream, and the span a sampled
//! request reports.

use super::export::SpanSink;
use super::propagation::{self, extract};
use super::*;
use crate::config::tracing::{CollectorConfig, ProviderConfig};
use http::HeaderMap;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn remote() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 7], 40000))
}

fn settings(kind: CollectorKind, percent: f64) -> TraceSettings {
    TraceSettings {
        collector: Collector {
            kind,
            host: "collector".into(),
            port: 4317,
        },
        sampling_percent: percent,
        custom_tags: vec![
            CustomTag {
                tag: "tenant".into(),
                source: TagSource::Header(
                    http::HeaderName::from_static("x-tenant"),
                    Some("none".into()),
                ),
            },
            CustomTag {
                tag: "cluster".into(),
                source: TagSource::Literal("eu-1".into()),
            },
            CustomTag {
                tag: "unset".into(),
                source: TagSource::Environment(None),
            },
        ],
        max_path_tag_length: 16,
        report_spans: true,
    }
}

fn tracer(kind: CollectorKind, percent: f64) -> (Tracer, tokio::sync::mpsc::Receiver<SpanRecord>) {
    let s = settings(kind, percent);
    let (sink, rx) = SpanSink::queue(s.collector.clone(), TraceStats::default(), 8);
    (Tracer::new(s, sink), rx)
}

fn request(headers: &[(&str, &str)]) -> Request<()> {
    let mut b =
        Request::get("/productpage?user=a-very-long-query").header("host", "productpage:9080");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

fn tags(r: &SpanRecord) -> std::collections::HashMap<String, String> {
    r.tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[test]
fn an_incoming_decision_is_obeyed_whatever_the_percentage() {
    let (t, _rx) = tracer(CollectorKind::Otlp, 0.0);
    let mut req = request(&[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))]);
    let span = t
        .start_with(SpanKind::Server, &mut req, remote(), 999_999)
        .expect("sampled=1 is traced");
    let (trace, id) = span.ids();
    assert_eq!(trace.to_hex_string(), TRACE);
    // The app sees this hop's span as the parent.
    let out = extract(req.headers());
    assert_eq!(out.parent, Some((trace, id)));
    assert_eq!(span.record.parent.unwrap().to_hex_string(), SPAN);

    let (t, _rx) = tracer(CollectorKind::Otlp, 100.0);
    let unsampled = format!("00-{TRACE}-{SPAN}-00");
    let mut req = request(&[("traceparent", &unsampled)]);
    assert!(
        t.start_with(SpanKind::Client, &mut req, remote(), 0)
            .is_none(),
        "sampled=0 is not traced"
    );
    // ...and the headers go on as they came.
    assert_eq!(req.headers()["traceparent"], unsampled.as_str());
    let mut req = request(&[("b3", "0")]);
    assert!(
        t.start_with(SpanKind::Client, &mut req, remote(), 0)
            .is_none()
    );
    assert_eq!(req.headers()["b3"], "0");
    let mut req = request(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "1"),
    ]);
    assert!(
        t.start_with(SpanKind::Client, &mut req, remote(), 999_999)
            .is_some()
    );
}

#[test]
fn without_a_decision_the_percentage_decides() {
    let (t, _rx) = tracer(CollectorKind::Otlp, 25.0);
    assert!(t.samples(0) && t.samples(249_999));
    assert!(!t.samples(250_000) && !t.samples(999_999));
    let (none, _rx) = tracer(CollectorKind::Otlp, 0.0);
    assert!(!none.samples(0));
    let (all, _rx) = tracer(CollectorKind::Otlp, 100.0);
    assert!(all.samples(999_999));
    let (tiny, _rx) = tracer(CollectorKind::Otlp, 0.01);
    assert!(tiny.samples(99) && !tiny.samples(100));
    // The real roll lands near the percentage.
    let hits = (0..20_000)
        .filter(|_| {
            let mut req = request(&[]);
            t.start(SpanKind::Client, &mut req, remote()).is_some()
        })
        .count();
    assert!((4_500..5_500).contains(&hits), "25 % of 20,000: {hits}");
}

#[test]
fn an_unsampled_request_still_tells_the_next_hop() {
    // No context: a new trace marked not sampled, so the destination does not roll again.
    let (t, _rx) = tracer(CollectorKind::Otlp, 0.0);
    let mut req = request(&[]);
    assert!(
        t.start_with(SpanKind::Client, &mut req, remote(), 0)
            .is_none()
    );
    let out = extract(req.headers());
    assert_eq!(out.sampled, Some(false));
    assert!(out.parent.is_some() && out.formats == propagation::Formats::W3C);
    let (z, _rx) = tracer(CollectorKind::Zipkin, 0.0);
    let mut req = request(&[]);
    assert!(
        z.start_with(SpanKind::Client, &mut req, remote(), 0)
            .is_none()
    );
    assert_eq!(req.headers()["x-b3-sampled"], "0");
    // B3 that deferred keeps its ids and gets the decision.
    let mut req = request(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)]);
    assert!(
        t.start_with(SpanKind::Client, &mut req, remote(), 0)
            .is_none()
    );
    assert_eq!(req.headers()["x-b3-sampled"], "0");
    assert_eq!(req.headers()["x-b3-spanid"], SPAN);
    let mut req = request(&[("b3", &format!("{TRACE}-{SPAN}"))]);
    assert!(
        t.start_with(SpanKind::Client, &mut req, remote(), 0)
            .is_none()
    );
    assert_eq!(extract(req.headers()).sampled, Some(false));
}

#[test]
fn a_sampled_request_is_rewritten_in_every_format_it_came_in_and_the_providers() {
    let (z, _rx) = tracer(CollectorKind::Zipkin, 0.0);
    let mut req = request(&[("b3", &format!("{TRACE}-{SPAN}-1"))]);
    let span = z
        .start_with(SpanKind::Client, &mut req, remote(), 0)
        .unwrap();
    let (trace, id) = span.ids();
    let h = req.headers();
    assert!(
        h["b3"]
            .to_str()
            .unwrap()
            .starts_with(&format!("{TRACE}-{}-1-{SPAN}", id.to_hex_string()))
    );
    assert_eq!(h["x-b3-spanid"], id.to_hex_string().as_str());
    assert_eq!(h["x-b3-parentspanid"], SPAN);
    assert_eq!(h["x-b3-traceid"], trace.to_hex_string().as_str());
    assert!(!h.contains_key("traceparent"));
    // Debug travels on.
    let mut req = request(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-flags", "1"),
    ]);
    assert!(
        z.start_with(SpanKind::Client, &mut req, remote(), 999_999)
            .is_some()
    );
    assert_eq!(req.headers()["x-b3-flags"], "1");
    // A root span starts a new trace with no parent.
    let (t, _rx) = tracer(CollectorKind::Otlp, 100.0);
    let mut req = request(&[("traceparent", "ff-not-valid"), ("tracestate", "vendor=1")]);
    let span = t
        .start_with(SpanKind::Client, &mut req, remote(), 0)
        .unwrap();
    assert!(span.record.parent.is_none());
    assert_eq!(extract(req.headers()).parent, Some(span.ids()));
    assert!(
        !req.headers().contains_key("tracestate"),
        "a new trace has no vendor state"
    );
    // The tracestate of a valid context goes on unchanged.
    let mut req = request(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("tracestate", "vendor=1,other=2"),
    ]);
    assert!(
        t.start_with(SpanKind::Client, &mut req, remote(), 0)
            .is_some()
    );
    assert_eq!(req.headers()["tracestate"], "vendor=1,other=2");
}

#[test]
fn a_finished_span_carries_envoys_tags() {
    let (t, mut rx) = tracer(CollectorKind::Otlp, 100.0);
    let mut req = request(&[
        ("x-request-id", "3e1f6c1a-0000-4000-8000-000000000001"),
        ("user-agent", "curl/8"),
        ("x-tenant", "acme"),
    ]);
    let mut span = t
        .start_with(SpanKind::Client, &mut req, remote(), 0)
        .unwrap();
    span.route(
        "productpage.default.svc.cluster.local",
        9080,
        "outbound|9080||productpage.default.svc.cluster.local",
    );
    span.finish(&SpanOutcome {
        status: 503,
        flags: ResponseFlags::UF,
        grpc_status: None,
        request_bytes: 12,
        response_bytes: 34,
        duration: Duration::from_millis(5),
    });
    let r = rx.try_recv().expect("queued");
    assert_eq!(r.name, "productpage.default.svc.cluster.local:9080/*");
    assert_eq!(r.kind, SpanKind::Client);
    assert!(r.error);
    let tags = tags(&r);
    for (k, v) in [
        ("guid:x-request-id", "3e1f6c1a-0000-4000-8000-000000000001"),
        // The path is cut at `max_path_tag_length` (16 here).
        ("http.url", "http://productpage:9080/productpage?use"),
        ("http.method", "GET"),
        ("user_agent", "curl/8"),
        ("http.protocol", "HTTP/1.1"),
        ("peer.address", "10.0.0.7"),
        ("downstream_cluster", "-"),
        (
            "upstream_cluster",
            "outbound|9080||productpage.default.svc.cluster.local",
        ),
        ("http.status_code", "503"),
        ("response_flags", "UF"),
        ("request_size", "12"),
        ("response_size", "34"),
        ("component", "proxy"),
        ("error", "true"),
        ("tenant", "acme"),
        ("cluster", "eu-1"),
    ] {
        assert_eq!(tags.get(k).map(String::as_str), Some(v), "{k} in {tags:?}");
    }
    assert!(!tags.contains_key("unset"));
    // A header tag without the header takes its default.
    let mut req = request(&[]);
    let span = t
        .start_with(SpanKind::Server, &mut req, remote(), 0)
        .unwrap();
    assert_eq!(span.record.name, "ingress");
    assert!(
        span.record
            .tags
            .iter()
            .any(|(k, v)| k == "tenant" && v == "none")
    );
}

#[test]
fn a_full_queue_drops_and_counts() {
    let s = settings(CollectorKind::Otlp, 100.0);
    let stats = TraceStats::default();
    let (sink, _rx) = SpanSink::queue(s.collector.clone(), stats.clone(), 1);
    let t = Tracer::new(s, sink);
    for _ in 0..3 {
        let mut req = request(&[]);
        let span = t
            .start_with(SpanKind::Client, &mut req, remote(), 0)
            .unwrap();
        span.finish(&SpanOutcome {
            status: 200,
            flags: ResponseFlags::NONE,
            grpc_status: None,
            request_bytes: 0,
            response_bytes: 0,
            duration: Duration::ZERO,
        });
    }
    assert_eq!(stats.queue_full.get(), 2);
}

fn file(provider: Option<ProviderConfig>, percent: Option<f64>) -> TracingConfig {
    TracingConfig {
        provider,
        random_sampling_percentage: percent,
        custom_tags: Default::default(),
    }
}

fn mesh_with_providers() -> v1::MeshConfig {
    v1::MeshConfig {
        tracing_providers: vec![
            v1::TracingProvider {
                name: "zipkin".into(),
                service: "tracing/jaeger-collector.tracing".into(),
                port: 9411,
                max_tag_length: 0,
                kind: Some(v1::tracing_provider::Kind::Zipkin(Default::default())),
            },
            v1::TracingProvider {
                name: "otel".into(),
                service: "opentelemetry-collector.monitoring".into(),
                port: 4317,
                max_tag_length: 99,
                kind: Some(v1::tracing_provider::Kind::Opentelemetry(Default::default())),
            },
        ],
        default_tracing_providers: vec!["missing".into(), "otel".into()],
        tracing_sampling: Some(10.0),
        ..Default::default()
    }
}

#[test]
fn settings_come_from_the_file_then_the_mesh() {
    // Nothing configured: off.
    assert_eq!(TraceSettings::resolve(None, None, None), None);
    assert_eq!(
        TraceSettings::resolve(Some(&file(None, Some(50.0))), None, None),
        None
    );
    // The mesh's default provider and sampling.
    let mesh = mesh_with_providers();
    let s = TraceSettings::resolve(None, Some(&mesh), None).unwrap();
    assert_eq!(s.collector.kind, CollectorKind::Otlp);
    assert_eq!(s.collector.host, "opentelemetry-collector.monitoring");
    assert_eq!((s.sampling_percent, s.max_path_tag_length), (10.0, 99));
    // The file's sampling over the mesh's; the file's provider over the mesh's.
    let s = TraceSettings::resolve(Some(&file(None, Some(25.0))), Some(&mesh), None).unwrap();
    assert_eq!(s.sampling_percent, 25.0);
    let own = ProviderConfig {
        zipkin: Some(CollectorConfig {
            service: "ns/zipkin".into(),
            port: 9411,
            max_tag_length: None,
        }),
        opentelemetry: None,
    };
    let s =
        TraceSettings::resolve(Some(&file(Some(own.clone()), None)), Some(&mesh), None).unwrap();
    assert_eq!(
        (s.collector.kind, s.collector.host.as_str()),
        (CollectorKind::Zipkin, "zipkin")
    );
    assert_eq!(s.max_path_tag_length, DEFAULT_MAX_PATH_TAG_LENGTH);
    // Istio's default sampling.
    let s = TraceSettings::resolve(Some(&file(Some(own), None)), None, None).unwrap();
    assert_eq!(s.sampling_percent, DEFAULT_SAMPLING_PERCENT);
}

fn telemetry(providers: &[&str], percent: Option<f64>) -> v1::TracingSettings {
    v1::TracingSettings {
        providers: providers.iter().map(|p| p.to_string()).collect(),
        random_sampling_percentage: percent,
        ..Default::default()
    }
}

#[test]
fn a_telemetry_resource_overrides_the_file_and_the_mesh_field_by_field() {
    let mesh = mesh_with_providers();
    let own_tags = TracingConfig {
        custom_tags: [(
            "from-file".to_string(),
            crate::config::tracing::CustomTagConfig {
                literal: Some(crate::config::tracing::LiteralTag { value: "x".into() }),
                ..Default::default()
            },
        )]
        .into(),
        ..file(None, Some(50.0))
    };
    // Sampling only: the mesh's provider, Telemetry's percentage, the file's tags.
    let s = TraceSettings::resolve(
        Some(&own_tags),
        Some(&mesh),
        Some(&telemetry(&[], Some(25.0))),
    )
    .unwrap();
    assert_eq!(s.collector.kind, CollectorKind::Otlp);
    assert_eq!(s.sampling_percent, 25.0);
    assert_eq!(s.custom_tags.len(), 1);
    assert!(s.report_spans);
    // A provider by name, and tags of every source replacing the file's.
    let mut t = telemetry(&["zipkin"], None);
    t.custom_tags = [
        (
            "intent".to_string(),
            v1::CustomTag {
                kind: Some(v1::custom_tag::Kind::Header(v1::HeaderTag {
                    name: "x-intent-type".into(),
                    default_value: String::new(),
                })),
            },
        ),
        (
            "region".to_string(),
            v1::CustomTag {
                kind: Some(v1::custom_tag::Kind::Literal("eu-1".into())),
            },
        ),
        (
            "pod".to_string(),
            v1::CustomTag {
                kind: Some(v1::custom_tag::Kind::Environment(v1::EnvironmentTag {
                    name: "MESHLITE_TEST_UNSET_VARIABLE".into(),
                    default_value: "unknown-pod".into(),
                })),
            },
        ),
    ]
    .into();
    let s = TraceSettings::resolve(Some(&own_tags), Some(&mesh), Some(&t)).unwrap();
    assert_eq!(
        (
            s.collector.kind,
            s.collector.host.as_str(),
            s.sampling_percent
        ),
        (CollectorKind::Zipkin, "jaeger-collector.tracing", 50.0)
    );
    let mut tags: Vec<_> = s
        .custom_tags
        .iter()
        .map(|c| (c.tag.as_str(), &c.source))
        .collect();
    tags.sort_by_key(|(t, _)| *t);
    assert_eq!(
        tags,
        vec![
            (
                "intent",
                &TagSource::Header(http::HeaderName::from_static("x-intent-type"), None)
            ),
            ("pod", &TagSource::Environment(Some("unknown-pod".into()))),
            ("region", &TagSource::Literal("eu-1".into())),
        ]
    );
    // A provider the mesh does not define: no tracer, whatever the file says.
    let own = ProviderConfig {
        zipkin: Some(CollectorConfig {
            service: "zipkin".into(),
            port: 9411,
            max_tag_length: None,
        }),
        opentelemetry: None,
    };
    assert_eq!(
        TraceSettings::resolve(
            Some(&file(Some(own), None)),
            Some(&mesh),
            Some(&telemetry(&["nowhere"], None))
        ),
        None
    );
    // An out-of-range percentage is ignored for the next source's.
    let s = TraceSettings::resolve(None, Some(&mesh), Some(&telemetry(&[], Some(150.0)))).unwrap();
    assert_eq!(s.sampling_percent, 10.0);
}

#[test]
fn disabled_span_reporting_still_decides_and_propagates_but_reports_nothing() {
    let mut s = settings(CollectorKind::Otlp, 100.0);
    s.report_spans = false;
    let (sink, mut rx) = SpanSink::queue(s.collector.clone(), TraceStats::default(), 8);
    let t = Tracer::new(s, sink);
    let mut req = request(&[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))]);
    assert!(
        t.start_with(SpanKind::Server, &mut req, remote(), 0)
            .is_none(),
        "no span is recorded"
    );
    let out = extract(req.headers());
    let (trace, parent) = out.parent.expect("the context goes on");
    assert_eq!(trace.to_hex_string(), TRACE);
    assert_ne!(parent.to_hex_string(), SPAN, "with this hop's id");
    assert_eq!(out.sampled, Some(true));
    assert!(rx.try_recv().is_err());
}

#[test]
fn untouched_headers_when_the_request_is_not_traced_by_the_caller() {
    // `sampled=0` from the caller: nothing is written at all.
    let (t, _rx) = tracer(CollectorKind::Zipkin, 100.0);
    let mut req = request(&[("x-b3-sampled", "0")]);
    let before: HeaderMap = req.headers().clone();
    assert!(
        t.start_with(SpanKind::Server, &mut req, remote(), 0)
            .is_none()
    );
    assert_eq!(req.headers(), &before);
}
