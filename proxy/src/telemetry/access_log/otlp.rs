//! Access-log records for an OpenTelemetry collector (Istio's `envoyOtelAls` provider), as
//! Envoy's OpenTelemetry access logger sends them: `LogsService/Export` over gRPC
//! (OTLP, the collector's port 4317), one `LogRecord` per logged request.
//!
//! A record's body is the provider's `logFormat.text`, else the line of Istio's default text
//! format; its attributes are the provider's `logFormat.labels`, else the JSON line's fields
//! under the same names (`method`, `path`, `response_code`, ...; absent fields left out,
//! numbers as integers) ([`super::format`]); its time is the request's start, and a traced request carries its
//! `trace_id` and `span_id`, so a log view links to the trace. The resource names the sidecar
//! as Envoy's built-in labels do (`log_name`, `zone_name`, `cluster_name`, `node_name`) plus
//! `service.name`, as the span exporter's.
//!
//! The request path only queues the finished entry ([`OtelLogSink::submit`], never
//! blocking); building records and exporting them happen on the collector's task
//! ([`crate::telemetry::batch`]), so a slow or dead collector costs requests nothing: what it
//! does not take is dropped and counted.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::mpsc;

use super::format::LineFormat;
use super::{AccessLogEntry, AccessLogStats};
use crate::telemetry::batch::{self, BatchExport, CONNECT_TIMEOUT, Delivery, EXPORT_TIMEOUT};
use crate::telemetry::prom::Counter;
use crate::telemetry::trace::LocalTags;

/// Istio's `logName` when the provider sets none (the `log_name` resource attribute).
pub const DEFAULT_LOG_NAME: &str = "otel_envoy_accesslog";

/// W3C trace flags of a sampled request (`LogRecord.flags`).
const SAMPLED: u32 = 1;

/// A collector and the log name its records carry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LogCollector {
    /// A DNS name or an IP address.
    pub host: String,
    /// Its OTLP/gRPC port.
    pub port: u16,
    /// `log_name` (Istio's default when the provider sets none).
    pub log_name: String,
}

impl LogCollector {
    /// The collector at `host:port`; an empty `log_name` is Istio's default.
    pub fn new(host: &str, port: u16, log_name: &str) -> Self {
        Self {
            host: host.to_string(),
            port,
            log_name: if log_name.is_empty() {
                DEFAULT_LOG_NAME.to_string()
            } else {
                log_name.to_string()
            },
        }
    }

    /// `http://host:port` (IPv6 addresses bracketed).
    fn endpoint(&self) -> String {
        if self.host.parse::<std::net::Ipv6Addr>().is_ok() {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

/// The request path's end of a collector's queue. Cloning shares the queue.
#[derive(Clone, Debug)]
pub struct OtelLogSink {
    tx: mpsc::Sender<OtelEntry>,
    queue_full: Counter,
    collector: LogCollector,
}

/// A finished entry on its way to a collector, with its provider's `logFormat` (`None`:
/// Istio's default text line as body, the default fields as attributes).
#[derive(Debug)]
pub struct OtelEntry {
    /// The line.
    pub entry: Box<AccessLogEntry>,
    /// How the record is made of it.
    pub format: Option<Arc<LineFormat>>,
}

impl OtelLogSink {
    /// Starts the export task for `collector` on the telemetry export thread
    /// ([`batch::start`]); `None` when it cannot run (the records would have nowhere to
    /// go). `local` names this sidecar.
    pub fn start(
        collector: LogCollector,
        local: &LocalTags,
        stats: &AccessLogStats,
    ) -> Option<Self> {
        let delivery = Delivery {
            exported: stats.exported.shared(),
            export_failed: stats.export_failed.shared(),
        };
        let (target, local) = (collector.clone(), local.clone());
        let tx = batch::start(
            move || LogExporter::new(&target, &local),
            batch::QUEUE,
            delivery,
        )?;
        Some(Self {
            tx,
            queue_full: stats.queue_full.clone(),
            collector,
        })
    }

    /// A sink of `capacity` entries and the queue's other end, for a consumer of one's own
    /// (tests read the entries themselves).
    pub fn queue(
        collector: LogCollector,
        stats: &AccessLogStats,
        capacity: usize,
    ) -> (Self, mpsc::Receiver<OtelEntry>) {
        let (tx, rx) = mpsc::channel(capacity);
        let sink = Self {
            tx,
            queue_full: stats.queue_full.clone(),
            collector,
        };
        (sink, rx)
    }

    /// The collector this queue leads to.
    pub fn collector(&self) -> &LogCollector {
        &self.collector
    }

    /// Whether `other` feeds the same export task.
    pub fn same_queue(&self, other: &OtelLogSink) -> bool {
        self.tx.same_channel(&other.tx)
    }

    /// Queues a finished entry to be recorded as `format` says; drops and counts it when the
    /// queue is full. Kept headers the format does not read are let go first.
    pub fn submit(&self, mut entry: Box<AccessLogEntry>, format: Option<Arc<LineFormat>>) {
        let reads = format.as_deref().map_or((false, false), |f| {
            (f.reads_request_headers(), f.reads_response_headers())
        });
        if !reads.0 {
            entry.request_headers = None;
        }
        if !reads.1 {
            entry.response_headers = None;
        }
        if self.tx.try_send(OtelEntry { entry, format }).is_err() {
            self.queue_full.inc();
        }
    }
}

/// A collector's `LogsService` client, with what every batch to it carries.
struct LogExporter {
    client: Result<LogsServiceClient<tonic::transport::Channel>, String>,
    resource: Resource,
    scope: InstrumentationScope,
    endpoint: String,
}

impl LogExporter {
    /// A client connecting lazily (on the first export, again after a failure).
    fn new(collector: &LogCollector, local: &LocalTags) -> Self {
        let endpoint = collector.endpoint();
        let client = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .map(|e| {
                let channel = e
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(EXPORT_TIMEOUT)
                    .connect_lazy();
                LogsServiceClient::new(channel)
            })
            .map_err(|e| e.to_string());
        Self {
            client,
            resource: resource(collector, local),
            scope: InstrumentationScope {
                name: "meshlite-proxy".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            },
            endpoint,
        }
    }
}

impl BatchExport<OtelEntry> for LogExporter {
    fn describe(&self) -> String {
        format!("otlp logs {}", self.endpoint)
    }

    fn export(
        &mut self,
        batch: Vec<OtelEntry>,
    ) -> impl Future<Output = Result<u64, String>> + Send {
        let observed = SystemTime::now();
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(self.scope.clone()),
                    log_records: batch
                        .iter()
                        .map(|e| log_record(&e.entry, e.format.as_deref(), observed))
                        .collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let client = self.client.clone();
        async move {
            let mut client = client?;
            let reply = client
                .export(request)
                .await
                .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
            let refused = reply
                .into_inner()
                .partial_success
                .map_or(0, |p| u64::try_from(p.rejected_log_records).unwrap_or(0));
            Ok(refused)
        }
    }
}

fn text(value: impl Into<String>) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(value.into())),
    })
}

fn key_value(key: &str, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value,
        ..Default::default()
    }
}

/// The resource of every record: `service.name` and Envoy's built-in labels.
fn resource(collector: &LogCollector, local: &LocalTags) -> Resource {
    let tag = |name: &str| {
        local
            .tags
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("", |(_, v)| v.as_str())
    };
    Resource {
        attributes: vec![
            key_value("service.name", text(&local.service_name)),
            key_value("log_name", text(&collector.log_name)),
            key_value("zone_name", text(tag("zone"))),
            // Istio's service cluster: `<canonical service>.<namespace>`.
            key_value("cluster_name", text(&local.service_name)),
            key_value("node_name", text(tag("node_id"))),
        ],
        ..Default::default()
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// One entry as a log record, made as `format` says (`None`: the defaults).
pub fn log_record(
    e: &AccessLogEntry,
    format: Option<&LineFormat>,
    observed: SystemTime,
) -> LogRecord {
    let traced = e.trace_id.is_some() && e.span_id.is_some();
    let body = format
        .and_then(|f| f.body(e))
        .or_else(|| LineFormat::istio_default_text().body(e));
    let attributes = format
        .and_then(|f| f.attributes(e))
        .unwrap_or_else(|| default_attributes(e));
    LogRecord {
        time_unix_nano: unix_nanos(e.start_time.0),
        observed_time_unix_nano: unix_nanos(observed),
        body: body.and_then(text),
        attributes,
        flags: if traced { SAMPLED } else { 0 },
        trace_id: e.trace_id.map(|t| t.0.to_vec()).unwrap_or_default(),
        span_id: e.span_id.map(|s| s.0.to_vec()).unwrap_or_default(),
        ..Default::default()
    }
}

/// The JSON line's fields, by the same names; absent ones left out.
fn default_attributes(e: &AccessLogEntry) -> Vec<KeyValue> {
    use serde_json::Value;
    let Ok(Value::Object(fields)) = serde_json::to_value(e) else {
        return Vec::new();
    };
    fields
        .into_iter()
        .filter_map(|(key, v)| {
            let value = match v {
                Value::String(s) => any_value::Value::StringValue(s),
                Value::Bool(b) => any_value::Value::BoolValue(b),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => any_value::Value::IntValue(i),
                    None => any_value::Value::DoubleValue(n.as_f64()?),
                },
                Value::Null | Value::Array(_) | Value::Object(_) => return None,
            };
            Some(KeyValue {
                key,
                value: Some(AnyValue { value: Some(value) }),
                ..Default::default()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::access_log::StartTime;
    use crate::telemetry::trace::propagation::{SpanId, TraceId};
    use std::time::Duration;

    fn entry() -> AccessLogEntry {
        AccessLogEntry {
            start_time: StartTime(SystemTime::UNIX_EPOCH + Duration::from_millis(1_500)),
            direction: "outbound",
            method: "GET".into(),
            path: "/reviews/1".into(),
            protocol: "HTTP/1.1",
            response_code: 503,
            response_flags: crate::message::response_flags::ResponseFlags::UF,
            upstream_transport_failure_reason: Some("connection_refused"),
            bytes_sent: 91,
            duration: 4,
            duration_ms: 4,
            user_agent: Some("curl/8".into()),
            request_id: Some("req-1".into()),
            authority: Some("reviews:9080".into()),
            upstream_host: Some("10.0.0.9:15006".into()),
            upstream_cluster: Some("outbound|9080||reviews.default.svc.cluster.local".into()),
            downstream_remote_address: "127.0.0.1:40000".into(),
            ..Default::default()
        }
    }

    fn attribute<'a>(r: &'a LogRecord, key: &str) -> Option<&'a any_value::Value> {
        r.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    #[test]
    fn a_record_carries_the_fields_as_attributes_and_istios_text_line_as_body() {
        let r = log_record(
            &entry(),
            None,
            SystemTime::UNIX_EPOCH + Duration::from_secs(2),
        );
        assert_eq!(r.time_unix_nano, 1_500_000_000, "the request's start");
        assert_eq!(r.observed_time_unix_nano, 2_000_000_000);
        assert_eq!(
            attribute(&r, "method"),
            Some(&any_value::Value::StringValue("GET".into()))
        );
        assert_eq!(
            attribute(&r, "response_code"),
            Some(&any_value::Value::IntValue(503))
        );
        assert_eq!(
            attribute(&r, "response_flags"),
            Some(&any_value::Value::StringValue("UF".into()))
        );
        assert_eq!(
            attribute(&r, "start_time"),
            Some(&any_value::Value::StringValue(
                "1970-01-01T00:00:01.500Z".into()
            ))
        );
        assert_eq!(attribute(&r, "x_forwarded_for"), None, "absent: left out");
        assert_eq!(attribute(&r, "trace_id"), None);
        assert!(r.trace_id.is_empty() && r.span_id.is_empty());
        assert_eq!(r.flags, 0);
        let Some(any_value::Value::StringValue(body)) = r.body.and_then(|b| b.value) else {
            panic!("a text body");
        };
        assert_eq!(
            body,
            "[1970-01-01T00:00:01.500Z] \"GET /reviews/1 HTTP/1.1\" 503 UF - - \"connection_refused\" \
             0 91 4 - \"-\" \"curl/8\" \"req-1\" \"reviews:9080\" \"10.0.0.9:15006\" \
             outbound|9080||reviews.default.svc.cluster.local - - 127.0.0.1:40000 - -"
        );
    }

    #[test]
    fn a_traced_request_links_its_record_to_the_trace() {
        let mut e = entry();
        e.trace_id = Some(TraceId([7; 16]));
        e.span_id = Some(SpanId([9; 8]));
        e.upstream_service_time = Some(3);
        let r = log_record(&e, None, SystemTime::UNIX_EPOCH);
        assert_eq!(r.trace_id, vec![7; 16]);
        assert_eq!(r.span_id, vec![9; 8]);
        assert_eq!(r.flags, SAMPLED);
        assert_eq!(
            attribute(&r, "trace_id"),
            Some(&any_value::Value::StringValue("07".repeat(16)))
        );
        assert_eq!(
            attribute(&r, "upstream_service_time"),
            Some(&any_value::Value::IntValue(3))
        );
    }

    #[test]
    fn the_resource_names_the_sidecar_as_envoys_built_in_labels_do() {
        let local = LocalTags {
            service_name: "reviews.default".into(),
            tags: vec![
                (
                    "node_id",
                    "sidecar~10.0.0.9~reviews-v1.default~default.svc.cluster.local".into(),
                ),
                ("zone", "eu-west-1a".into()),
            ],
        };
        let r = resource(&LogCollector::new("collector", 4317, ""), &local);
        let get = |k: &str| {
            r.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        let s = |v: &str| Some(any_value::Value::StringValue(v.into()));
        assert_eq!(get("service.name"), s("reviews.default"));
        assert_eq!(get("log_name"), s(DEFAULT_LOG_NAME));
        assert_eq!(get("cluster_name"), s("reviews.default"));
        assert_eq!(get("zone_name"), s("eu-west-1a"));
        assert_eq!(
            get("node_name"),
            s("sidecar~10.0.0.9~reviews-v1.default~default.svc.cluster.local")
        );
        assert_eq!(
            LogCollector::new("::1", 4317, "mine").endpoint(),
            "http://[::1]:4317"
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let stats = AccessLogStats::default();
        let (sink, _rx) = OtelLogSink::queue(LogCollector::new("c", 4317, ""), &stats, 1);
        for _ in 0..3 {
            sink.submit(Box::new(entry()), None);
        }
        assert_eq!(stats.queue_full.get(), 2);
    }
}
