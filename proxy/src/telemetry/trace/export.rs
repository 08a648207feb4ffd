//! Getting finished spans to the collector without the request path ever waiting for it.
//!
//! Requests hand their span to a bounded queue ([`SpanSink::submit`], never blocking: a
//! full queue drops the span and counts it); one background task per collector batches and
//! exports them ([`crate::telemetry::batch`]: a batch the collector does not take is dropped
//! and counted), so the cost of a dead collector is a counter.
//!
//! Two protocols: OTLP over gRPC through the OpenTelemetry SDK's own exporter
//! (`opentelemetry-otlp` on tonic, fed the SDK's span type), and Zipkin's v2 JSON posted to
//! `/api/v2/spans` (which Jaeger's collector also accepts) with hyper. The task ends when
//! the last sink of its collector is gone (the snapshot that used it was replaced).

use bytes::Bytes;
use http_body_util::Full;
use opentelemetry_sdk::trace::SpanExporter as _;
use std::time::Duration;
use tokio::sync::mpsc;

use super::{Collector, CollectorKind, LocalTags, SpanKind, SpanRecord, TraceStats};
use crate::telemetry::batch::{self, BatchExport, CONNECT_TIMEOUT, Delivery};
pub use crate::telemetry::batch::{BATCH_DELAY, EXPORT_TIMEOUT, MAX_BATCH, QUEUE};

/// The request path's end of a collector's queue. Cloning shares the queue.
#[derive(Clone, Debug)]
pub struct SpanSink {
    tx: mpsc::Sender<SpanRecord>,
    stats: TraceStats,
    collector: Collector,
}

impl SpanSink {
    /// Starts the export task for `collector` on the telemetry export thread
    /// ([`batch::start`]); `None` when it cannot run (the spans would have nowhere to go).
    pub fn start(collector: Collector, local: LocalTags, stats: TraceStats) -> Option<Self> {
        let delivery = Delivery {
            exported: stats.exported.clone(),
            export_failed: stats.export_failed.clone(),
        };
        let target = collector.clone();
        let tx = batch::start(move || Exporter::new(&target, local), QUEUE, delivery)?;
        Some(Self {
            tx,
            stats,
            collector,
        })
    }

    /// A sink of `capacity` spans and the queue's other end, for a consumer of one's own
    /// (tests and benchmarks read the spans themselves).
    pub fn queue(
        collector: Collector,
        stats: TraceStats,
        capacity: usize,
    ) -> (Self, mpsc::Receiver<SpanRecord>) {
        let (tx, rx) = mpsc::channel(capacity);
        let sink = Self {
            tx,
            stats,
            collector,
        };
        (sink, rx)
    }

    /// The collector this queue leads to.
    pub fn collector(&self) -> &Collector {
        &self.collector
    }

    /// Queues a finished span; drops and counts it when the queue is full.
    pub fn submit(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.stats.queue_full.inc();
        }
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The OTLP exporter could not be built or the collector refused the batch.
    #[error("OTLP: {0}")]
    Otlp(String),
    /// The Zipkin request failed.
    #[error("zipkin: {0}")]
    Zipkin(String),
}

/// `host:port` for a URL authority (IPv6 addresses bracketed).
fn authority(host: &str, port: u16) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A collector's client.
enum Exporter {
    Otlp {
        exporter: Result<opentelemetry_otlp::SpanExporter, String>,
        scope: opentelemetry::InstrumentationScope,
        local: LocalTags,
        endpoint: String,
    },
    Zipkin {
        client: hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            Full<Bytes>,
        >,
        uri: http::Uri,
        local: LocalTags,
    },
}

impl Exporter {
    fn new(collector: &Collector, local: LocalTags) -> Self {
        let authority = authority(&collector.host, collector.port);
        match collector.kind {
            CollectorKind::Otlp => {
                let endpoint = format!("http://{authority}");
                Exporter::Otlp {
                    exporter: otlp_exporter(&endpoint, &local),
                    scope: opentelemetry::InstrumentationScope::builder("meshlite-proxy")
                        .with_version(env!("CARGO_PKG_VERSION"))
                        .build(),
                    local,
                    endpoint,
                }
            }
            CollectorKind::Zipkin => {
                let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
                connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
                connector.set_nodelay(true);
                let client = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector);
                let uri = format!("http://{authority}/api/v2/spans")
                    .parse()
                    .unwrap_or_else(|_| {
                        http::Uri::from_static("http://127.0.0.1:9411/api/v2/spans")
                    });
                Exporter::Zipkin { client, uri, local }
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Exporter::Otlp { endpoint, .. } => format!("otlp {endpoint}"),
            Exporter::Zipkin { uri, .. } => format!("zipkin {uri}"),
        }
    }

    async fn send(&self, spans: Vec<SpanRecord>) -> Result<(), ExportError> {
        match self {
            Exporter::Otlp {
                exporter,
                scope,
                local,
                ..
            } => {
                let exporter = exporter
                    .as_ref()
                    .map_err(|e| ExportError::Otlp(e.clone()))?;
                let batch = spans
                    .into_iter()
                    .map(|s| otlp_span(s, scope, local))
                    .collect();
                exporter
                    .export(batch)
                    .await
                    .map_err(|e| ExportError::Otlp(e.to_string()))
            }
            Exporter::Zipkin { client, uri, local } => {
                let body = zipkin_json(&spans, local);
                let req = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .map_err(|e| ExportError::Zipkin(e.to_string()))?;
                let resp = client
                    .request(req)
                    .await
                    .map_err(|e| ExportError::Zipkin(e.to_string()))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(ExportError::Zipkin(format!(
                        "the collector answered {}",
                        resp.status()
                    )))
                }
            }
        }
    }
}

impl BatchExport<SpanRecord> for Exporter {
    fn describe(&self) -> String {
        Exporter::describe(self)
    }

    fn export(
        &mut self,
        batch: Vec<SpanRecord>,
    ) -> impl Future<Output = Result<u64, String>> + Send {
        let sent = self.send(batch);
        async move { sent.await.map(|()| 0).map_err(|e| e.to_string()) }
    }
}

/// The SDK's OTLP/gRPC exporter for `endpoint`: one attempt per batch (a dropped batch is
/// counted, not retried), this proxy's `service.name` as the resource.
fn otlp_exporter(
    endpoint: &str,
    local: &LocalTags,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(EXPORT_TIMEOUT)
        .connect_lazy();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_channel(channel)
        .with_timeout(EXPORT_TIMEOUT)
        .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
        .build()
        .map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(local.service_name.clone())
        .build();
    exporter.set_resource(&resource);
    Ok(exporter)
}

/// A span as the SDK's exporters take it.
fn otlp_span(
    s: SpanRecord,
    scope: &opentelemetry::InstrumentationScope,
    local: &LocalTags,
) -> opentelemetry_sdk::trace::SpanData {
    use opentelemetry::KeyValue;
    use opentelemetry::trace as otel;
    let attributes = local
        .tags
        .iter()
        .map(|(k, v)| KeyValue::new(*k, v.clone()))
        .chain(s.tags.into_iter().map(|(k, v)| KeyValue::new(k, v)))
        .collect();
    opentelemetry_sdk::trace::SpanData {
        span_context: otel::SpanContext::new(
            otel::TraceId::from_bytes(s.trace.0),
            otel::SpanId::from_bytes(s.span.0),
            otel::TraceFlags::SAMPLED,
            false,
            otel::TraceState::default(),
        ),
        parent_span_id: s
            .parent
            .map_or(otel::SpanId::INVALID, |p| otel::SpanId::from_bytes(p.0)),
        parent_span_is_remote: s.parent.is_some(),
        span_kind: match s.kind {
            SpanKind::Client => otel::SpanKind::Client,
            SpanKind::Server => otel::SpanKind::Server,
        },
        name: s.name.into(),
        start_time: s.start,
        end_time: s.start + s.duration,
        attributes,
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status: if s.error {
            otel::Status::error("")
        } else {
            otel::Status::Unset
        },
        instrumentation_scope: scope.clone(),
    }
}

/// Microseconds since the Unix epoch (Zipkin's timestamps).
fn micros(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A batch in Zipkin's v2 JSON: `localEndpoint.serviceName` is this proxy's service name,
/// tags are strings, `error` is a tag (Zipkin's convention).
pub fn zipkin_json(spans: &[SpanRecord], local: &LocalTags) -> Vec<u8> {
    let list: Vec<serde_json::Value> = spans
        .iter()
        .map(|s| {
            let mut tags = serde_json::Map::new();
            for (k, v) in &local.tags {
                tags.insert((*k).to_string(), v.clone().into());
            }
            for (k, v) in &s.tags {
                tags.insert(k.to_string(), v.clone().into());
            }
            let mut span = serde_json::json!({
                "traceId": s.trace.to_hex_string(),
                "id": s.span.to_hex_string(),
                "kind": match s.kind { SpanKind::Client => "CLIENT", SpanKind::Server => "SERVER" },
                "name": s.name,
                "timestamp": micros(s.start),
                // Zipkin rejects a zero duration: a span is at least 1 µs.
                "duration": u64::try_from(s.duration.as_micros()).unwrap_or(u64::MAX).max(1),
                "localEndpoint": {"serviceName": local.service_name},
                "tags": tags,
            });
            if let (Some(p), Some(obj)) = (s.parent, span.as_object_mut()) {
                obj.insert("parentId".into(), p.to_hex_string().into());
            }
            span
        })
        .collect();
    serde_json::to_vec(&list).unwrap_or_else(|_| b"[]".to_vec())
}
