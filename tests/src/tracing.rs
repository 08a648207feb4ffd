//! What trace tests need around the sidecars: the two collectors a mesh reports to, and an
//! application that calls another service the way a traced app must (copying the trace
//! headers and `x-request-id` from the request it serves to the one it makes).
//!
//! - [`OtlpCollector`] serves OpenTelemetry's own `TraceService` (the
//!   `opentelemetry-proto` crate's tonic definitions), so the sidecars' OTLP/gRPC export is
//!   checked against the real protocol;
//! - [`ZipkinCollector`] takes Zipkin v2 JSON on `POST /api/v2/spans`, as Zipkin's and
//!   Jaeger's collectors do;
//! - [`RelayApp`] answers each request by making one through its own sidecar's outbound
//!   listener to the next service.
//!
//! Both collectors reduce what they receive to [`ReceivedSpan`]s, so a test asserts the
//! same way whichever protocol carried the spans.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// One span as a collector received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// The parent span's id; `None` for a root span.
    pub parent_id: Option<String>,
    /// `CLIENT` or `SERVER`.
    pub kind: String,
    /// The operation name.
    pub name: String,
    /// The reporting service (`service.name`, Zipkin's `localEndpoint.serviceName`).
    pub service: String,
    /// Tags (attributes), as text.
    pub tags: BTreeMap<String, String>,
}

impl ReceivedSpan {
    /// Tag `name`, or "" when absent.
    pub fn tag(&self, name: &str) -> &str {
        self.tags.get(name).map(String::as_str).unwrap_or("")
    }
}

type Received = Arc<Mutex<Vec<ReceivedSpan>>>;

fn lock(r: &Received) -> std::sync::MutexGuard<'_, Vec<ReceivedSpan>> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// `bytes` as lowercase hex (trace and span ids).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/gRPC trace collector.
pub struct OtlpCollector {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Received,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Otlp {
    received: Received,
}

/// An OTLP attribute value as text ("" when absent or structured).
pub(crate) fn any_text(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Otlp {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| any_text(a.value.as_ref()))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(ReceivedSpan {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_id: (!s.parent_span_id.is_empty()).then(|| hex(&s.parent_span_id)),
                        kind: match s.kind {
                            2 => "SERVER",
                            3 => "CLIENT",
                            _ => "OTHER",
                        }
                        .to_string(),
                        name: s.name,
                        service: service.clone(),
                        tags: s
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), any_text(a.value.as_ref())))
                            .collect(),
                    });
                }
            }
        }
        lock(&self.received).extend(got);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl OtlpCollector {
    /// Starts a collector on an ephemeral loopback port.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn start() -> Self {
        let received = Received::default();
        let service = TraceServiceServer::new(Otlp {
            received: received.clone(),
        });
        let (addr, task) = crate::grpc::serve_on_loopback(
            tonic::transport::Server::builder().add_service(service),
            "OTLP collector",
        )
        .await;
        Self {
            addr,
            received,
            task,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.received).clone()
    }
}

/// A Zipkin v2 collector (`POST /api/v2/spans`, JSON).
pub struct ZipkinCollector {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Received,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ZipkinCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn zipkin_spans(body: &[u8]) -> Option<Vec<ReceivedSpan>> {
    let list: Vec<serde_json::Value> = serde_json::from_slice(body).ok()?;
    list.iter()
        .map(|s| {
            let text = |k: &str| s.get(k).and_then(|v| v.as_str()).map(str::to_string);
            Some(ReceivedSpan {
                trace_id: text("traceId")?,
                span_id: text("id")?,
                parent_id: text("parentId"),
                kind: text("kind")?,
                name: text("name").unwrap_or_default(),
                service: s
                    .pointer("/localEndpoint/serviceName")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string(),
                tags: s
                    .get("tags")
                    .and_then(|t| t.as_object())
                    .map(|t| {
                        t.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

impl ZipkinCollector {
    /// Starts a collector on an ephemeral loopback port.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind Zipkin collector");
        let addr = listener.local_addr().expect("local addr");
        let received = Received::default();
        let into = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let into = into.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let into = into.clone();
                        async move {
                            let ok = req.method() == http::Method::POST
                                && req.uri().path() == "/api/v2/spans";
                            let body = req.into_body().collect().await?.to_bytes();
                            let status = match zipkin_spans(&body) {
                                Some(spans) if ok => {
                                    lock(&into).extend(spans);
                                    StatusCode::ACCEPTED
                                }
                                _ => StatusCode::BAD_REQUEST,
                            };
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = status;
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.received).clone()
    }
}

/// The `tracing` section of a sidecar's file reporting to `collector` over `provider`
/// (`opentelemetry` or `zipkin`) with `percent` sampling.
pub fn tracing_yaml(provider: &str, collector: SocketAddr, percent: f64) -> String {
    tracing_yaml_to(
        provider,
        &collector.ip().to_string(),
        collector.port(),
        percent,
    )
}

/// [`tracing_yaml`] with the collector named by `host` (a DNS name the proxy resolves).
pub fn tracing_yaml_to(provider: &str, host: &str, port: u16, percent: f64) -> String {
    format!(
        "tracing:\n  provider:\n    {provider}: {{service: \"{host}\", port: {port}}}\n  randomSamplingPercentage: {percent}\n  customTags:\n    tenant: {{header: {{name: x-tenant, defaultValue: none}}}}\n    env: {{literal: {{value: e2e}}}}\n"
    )
}

/// The headers a traced application copies from the request it serves to the requests it
/// makes (Istio's list).
pub const PROPAGATED: &[&str] = &[
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// An application that serves each request by calling `next_host` through its sidecar's
/// outbound listener, copying [`PROPAGATED`] headers, and answers with what it got.
pub struct RelayApp {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RelayApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RelayApp {
    /// Starts the app; `outbound` (its sidecar's outbound listener) is read when a request
    /// arrives, so the app can start before its sidecar.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn start(next_host: &str, outbound: Arc<Mutex<Option<SocketAddr>>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay app");
        let addr = listener.local_addr().expect("local addr");
        let next_host = next_host.to_string();
        let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (client, next_host, outbound) =
                    (client.clone(), next_host.clone(), outbound.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (client, next_host) = (client.clone(), next_host.clone());
                        let outbound = *outbound.lock().unwrap_or_else(|p| p.into_inner());
                        async move {
                            let Some(outbound) = outbound else {
                                let mut r = Response::new(Full::new(Bytes::from("no sidecar")));
                                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                return Ok::<_, hyper::Error>(r);
                            };
                            let mut call =
                                Request::get(format!("http://{outbound}{}", req.uri().path()))
                                    .header("host", next_host.as_str())
                                    .body(Full::new(Bytes::new()))
                                    .expect("request");
                            for name in PROPAGATED {
                                if let Some(v) = req.headers().get(*name) {
                                    call.headers_mut().insert(*name, v.clone());
                                }
                            }
                            let (status, body) = match client.request(call).await {
                                Ok(resp) => {
                                    let status = resp.status();
                                    let body = resp
                                        .into_body()
                                        .collect()
                                        .await
                                        .map(|b| b.to_bytes())
                                        .unwrap_or_default();
                                    (status, body)
                                }
                                Err(e) => (StatusCode::BAD_GATEWAY, Bytes::from(e.to_string())),
                            };
                            let mut r = Response::new(Full::new(body));
                            *r.status_mut() = status;
                            r.headers_mut()
                                .insert("x-relayed-by", HeaderValue::from_static("relay"));
                            Ok(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, task }
    }
}
