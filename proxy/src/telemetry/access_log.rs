//! JSON access log lines, one per request, written off the request path.
//!
//! Field names follow Istio's JSON access log format and Envoy's command operators
//! (`start_time`, `response_flags`, `upstream_service_time`,
//! `upstream_transport_failure_reason`, ...), so existing log pipelines parse them. The
//! request path only fills the entry; when the response stream ends the entry goes to each
//! provider its Telemetry names ([`providers`]): a JSON line to a file or standard output
//! through a bounded channel and a writer thread ([`AccessLog`]), or a record to an
//! OpenTelemetry collector ([`otlp`]). When a writer or an exporter falls behind, lines are
//! dropped and counted (`meshlite_access_log_dropped_total{reason}`) rather than blocking
//! requests.

pub mod format;
pub mod otlp;
pub mod providers;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Serialize, Serializer};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::identity::spiffe::SpiffeId;
use crate::telemetry::prom::Counter;
use crate::telemetry::trace::propagation::{SpanId, TraceId};

/// Lines buffered before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// Where the log goes.
#[derive(Clone, Debug)]
pub enum AccessLogTarget {
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

/// The `reason` label of dropped lines.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropReason {
    reason: &'static str,
}

/// What became of access-log lines that were not delivered, and of records the
/// OpenTelemetry collector took.
#[derive(Clone, Debug, Default)]
pub struct AccessLogStats {
    /// `meshlite_access_log_dropped_total{reason="queue_full"}`: a writer's or exporter's
    /// queue had no room (the file, the terminal or the collector is slower than the traffic).
    pub queue_full: Counter,
    /// `{reason="write_failed"}`: the file could not be opened or written (its writer stopped).
    pub write_failed: Counter,
    /// `{reason="export_failed"}`: records in batches the collector did not take
    /// (unreachable, refused, timed out).
    pub export_failed: Counter,
    /// `meshlite_access_log_exported_total`: records the OpenTelemetry collector accepted.
    pub exported: Counter,
}

impl AccessLogStats {
    /// Registers the counters in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let dropped = Family::<DropReason, Counter>::default();
        registry.register(
            "meshlite_access_log_dropped_total",
            "Access log lines not delivered, by reason (queue_full: the writer or exporter fell \
             behind; write_failed: the file could not be written; export_failed: the \
             OpenTelemetry collector did not take the batch)",
            dropped.clone(),
        );
        let exported = Counter::default();
        registry.register(
            "meshlite_access_log_exported_total",
            "Access log records the OpenTelemetry collector accepted",
            exported.clone(),
        );
        let reason = |reason| dropped.get_or_create(&DropReason { reason }).clone();
        Self {
            queue_full: reason("queue_full"),
            write_failed: reason("write_failed"),
            export_failed: reason("export_failed"),
            exported,
        }
    }
}

/// Headers a line keeps for what reads them when it is complete (Telemetry filters, a
/// provider's `logFormat`): lowercase names, text values.
pub type KeptHeaders = Vec<(String, String)>;

/// When the request started: serialised as RFC 3339 UTC with milliseconds (Envoy's
/// `%START_TIME%`), formatted only when the line is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartTime(pub SystemTime);

impl Default for StartTime {
    fn default() -> Self {
        Self(SystemTime::UNIX_EPOCH)
    }
}

impl Serialize for StartTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&rfc3339(self.0))
    }
}

fn hex_trace<S: Serializer>(id: &Option<TraceId>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(&id.to_hex_string()),
        None => s.serialize_none(),
    }
}

fn hex_span<S: Serializer>(id: &Option<SpanId>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(&id.to_hex_string()),
        None => s.serialize_none(),
    }
}

fn spiffe_uri<S: Serializer>(id: &Option<Arc<SpiffeId>>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(id.as_str()),
        None => s.serialize_none(),
    }
}

/// One request's log line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AccessLogEntry {
    /// RFC 3339 UTC time the request started.
    pub start_time: StartTime,
    /// `outbound` (client side, reporter=source) or `inbound`.
    pub direction: &'static str,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
    /// Status sent downstream (0 when none).
    pub response_code: u16,
    /// Envoy response flags, `-` when none.
    pub response_flags: crate::message::response_flags::ResponseFlags,
    /// Why the upstream connection failed, when it did.
    pub upstream_transport_failure_reason: Option<&'static str>,
    /// Request body bytes received from downstream.
    pub bytes_received: u64,
    /// Response body bytes sent downstream.
    pub bytes_sent: u64,
    /// Milliseconds from request start to the end of the response (Istio's `duration`).
    pub duration: u64,
    /// Same value under an explicit name.
    pub duration_ms: u64,
    /// Milliseconds from sending the request upstream (the destination sidecar, or the local
    /// app) to its response headers, retries included (Envoy's
    /// `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%`); absent without an upstream response.
    pub upstream_service_time: Option<u64>,
    /// `x-forwarded-for` as received.
    pub x_forwarded_for: Option<String>,
    /// `user-agent`.
    pub user_agent: Option<String>,
    /// `x-request-id`.
    pub request_id: Option<String>,
    /// `:authority` / Host.
    pub authority: Option<String>,
    /// The upstream address used.
    pub upstream_host: Option<String>,
    /// The upstream cluster (`outbound|9080||reviews.default.svc.cluster.local`).
    pub upstream_cluster: Option<String>,
    /// Client address.
    pub downstream_remote_address: String,
    /// The caller's verified SPIFFE ID (inbound, over mutual TLS; Envoy's
    /// `%DOWNSTREAM_PEER_URI_SAN%`).
    pub downstream_peer_principal: Option<String>,
    /// The destination sidecar's verified SPIFFE ID (outbound, over mutual TLS; Envoy's
    /// `%UPSTREAM_PEER_URI_SAN%`).
    #[serde(serialize_with = "spiffe_uri")]
    pub upstream_peer_principal: Option<Arc<SpiffeId>>,
    /// Why the proxy answered itself, when it did (Envoy's `%RESPONSE_CODE_DETAILS%`, e.g.
    /// `rbac_access_denied_matched_policy[default/deny-debug]`).
    pub response_code_details: Option<String>,
    /// The request's trace (32 hex digits) when it is traced (Envoy's `%TRACE_ID%`).
    #[serde(serialize_with = "hex_trace")]
    pub trace_id: Option<TraceId>,
    /// This sidecar's span of the request (16 hex digits) when it is traced.
    #[serde(serialize_with = "hex_span")]
    pub span_id: Option<SpanId>,
    /// Where the line goes, and the filter of each destination.
    #[serde(skip)]
    pub routes: providers::LogRoutes,
    /// The request headers a filter or a format of [`Self::routes`] reads (`None`: none
    /// does).
    #[serde(skip)]
    pub request_headers: Option<KeptHeaders>,
    /// The response headers a format of [`Self::routes`] reads (`None`: none does).
    #[serde(skip)]
    pub response_headers: Option<KeptHeaders>,
    /// When the request was sent upstream (for `upstream_service_time`).
    #[serde(skip)]
    pub sent_upstream: Option<tokio::time::Instant>,
}

impl AccessLogEntry {
    /// The line of a request arriving at `reporter`'s edge, if it is logged: the proxy's
    /// access log setting, as the workload's Telemetry settings `t` change it.
    pub fn begin<B>(
        telemetry: &super::Telemetry,
        t: &super::workload::WorkloadTelemetry,
        reporter: super::workload::Reporter,
        req: &http::Request<B>,
        remote: std::net::SocketAddr,
    ) -> Option<Box<Self>> {
        let routes = telemetry.access_log_for(t, reporter)?;
        let direction = match reporter {
            super::workload::Reporter::Source => "outbound",
            super::workload::Reporter::Destination => "inbound",
        };
        let mut entry = Box::new(Self::for_request(req, direction, remote));
        if routes.reads_request_headers() {
            entry.request_headers = Some(super::attributes::header_pairs(req.headers()));
        }
        entry.routes = routes;
        Some(entry)
    }

    /// Notes the response sent downstream: its status, and its headers when a format of the
    /// line's destinations reads them.
    pub fn responded<B>(&mut self, resp: &http::Response<B>) {
        self.response_code = resp.status().as_u16();
        if self.routes.reads_response_headers() {
            self.response_headers = Some(super::attributes::header_pairs(resp.headers()));
        }
    }

    /// Notes that the request is being sent upstream now (the first attempt's send: the
    /// service time includes retries, as Envoy's does).
    pub fn sending_upstream(&mut self) {
        if self.sent_upstream.is_none() {
            self.sent_upstream = Some(tokio::time::Instant::now());
        }
    }

    /// Notes that the upstream's response headers arrived: `upstream_service_time`.
    pub fn upstream_answered(&mut self) {
        if let Some(at) = self.sent_upstream {
            self.upstream_service_time = Some(at.elapsed().as_millis() as u64);
        }
    }

    /// Whether the complete line passes `filter` (no filter: yes).
    pub fn passes(&self, filter: Option<&super::workload::LogFilter>) -> bool {
        filter.is_none_or(|f| f.allows(&self.attributes()))
    }

    /// The exchange as CEL expressions read it (filters, `%CEL(...)%` in a format).
    pub fn attributes(&self) -> super::attributes::LogAttributes<'_> {
        super::attributes::LogAttributes {
            headers: self.request_headers.as_deref().unwrap_or(&[]),
            method: &self.method,
            path: &self.path,
            host: self.authority.as_deref().unwrap_or(""),
            id: self.request_id.as_deref().unwrap_or(""),
            user_agent: self.user_agent.as_deref().unwrap_or(""),
            protocol: self.protocol,
            code: self.response_code,
            duration_ms: self.duration,
            flags: self.response_flags.to_string(),
            size: self.bytes_sent,
        }
    }

    /// The request-side fields of a line, taken when the request arrives; the rest is filled
    /// in as the exchange goes on. `direction` is `outbound` or `inbound`.
    pub fn for_request<B>(
        req: &http::Request<B>,
        direction: &'static str,
        remote: std::net::SocketAddr,
    ) -> Self {
        let h = req.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        Self {
            start_time: StartTime(SystemTime::now()),
            direction,
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            protocol: version_label(req.version()),
            x_forwarded_for: get("x-forwarded-for"),
            user_agent: get("user-agent"),
            request_id: get("x-request-id"),
            authority: crate::message::uri::request_authority(req).map(str::to_string),
            downstream_remote_address: remote.to_string(),
            ..Default::default()
        }
    }
}

/// `HTTP/1.1`, `HTTP/2`... for access logs.
pub fn version_label(v: http::Version) -> &'static str {
    use http::Version;
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// Sender side of one JSON-lines writer (a file, or standard output). Cloning shares it.
#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: mpsc::Sender<String>,
    /// Counts lines the writer had no room for.
    queue_full: Counter,
    /// Counts lines sent after the writer stopped (the target could not be written).
    write_failed: Counter,
}

impl AccessLog {
    /// Starts the writer thread for `target`; lines it has no room for are counted in
    /// `dropped` (a failed target's too).
    pub fn start(target: AccessLogTarget, dropped: Counter) -> std::io::Result<Self> {
        Self::start_counting(target, dropped.clone(), dropped)
    }

    /// [`AccessLog::start`] counting lines dropped for want of room (`queue_full`) apart
    /// from lines a stopped writer could not take (`write_failed`).
    pub fn start_counting(
        target: AccessLogTarget,
        queue_full: Counter,
        write_failed: Counter,
    ) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = match &target {
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        // A plain thread: writes may block, and they must not stall a runtime worker.
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                while let Some(line) = rx.blocking_recv() {
                    buf.extend_from_slice(line.as_bytes());
                    buf.push(b'\n');
                    while let Ok(more) = rx.try_recv() {
                        buf.extend_from_slice(more.as_bytes());
                        buf.push(b'\n');
                        if buf.len() > 60 * 1024 {
                            break;
                        }
                    }
                    if out.write_all(&buf).and_then(|()| out.flush()).is_err() {
                        // The log target is gone (closed pipe, full disk): stop writing, keep
                        // serving; later lines are counted as write failures.
                        return;
                    }
                    buf.clear();
                }
            })?;
        Ok(Self {
            tx,
            queue_full,
            write_failed,
        })
    }

    /// A writer whose target could not be opened: every line is counted in `write_failed`.
    pub fn failed(write_failed: Counter) -> Self {
        let (tx, _) = mpsc::channel(1);
        Self {
            tx,
            queue_full: write_failed.clone(),
            write_failed,
        }
    }

    /// Queues one entry; drops it (and counts) when the writer is behind.
    pub fn log(&self, entry: &AccessLogEntry) {
        self.write(entry);
    }

    /// Queues any JSON line (the audit log shares the writer); dropped and counted when the
    /// writer is behind.
    pub fn write<T: Serialize>(&self, entry: &T) {
        match serde_json::to_string(entry) {
            Ok(line) => self.send(line),
            Err(_) => {
                self.queue_full.inc();
            }
        }
    }

    /// Queues a line already made; dropped and counted when the writer is behind or gone.
    pub fn send(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.queue_full.inc();
            }
            Err(TrySendError::Closed(_)) => {
                self.write_failed.inc();
            }
        }
    }
}

/// Formats a time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_epoch() {
        assert_eq!(rfc3339(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn entry_serialises_with_istio_field_names() {
        let e = AccessLogEntry {
            response_code: 503,
            response_flags: crate::message::response_flags::ResponseFlags::UF,
            ..Default::default()
        };
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(v["response_code"], 503);
        assert_eq!(v["response_flags"], "UF");
        assert_eq!(v["start_time"], "1970-01-01T00:00:00.000Z");
        assert!(v.get("upstream_transport_failure_reason").is_some());
        for absent in [
            "upstream_service_time",
            "upstream_peer_principal",
            "trace_id",
            "span_id",
        ] {
            assert_eq!(v[absent], serde_json::Value::Null, "{absent}");
        }
        for internal in [
            "routes",
            "request_headers",
            "response_headers",
            "sent_upstream",
        ] {
            assert!(v.get(internal).is_none(), "{internal}");
        }
    }

    #[test]
    fn a_traced_request_over_mutual_tls_logs_its_ids_peer_and_service_time() {
        let peer = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/reviews").map(Arc::new);
        let e = AccessLogEntry {
            upstream_service_time: Some(12),
            upstream_peer_principal: peer.ok(),
            downstream_peer_principal: Some("spiffe://cluster.local/ns/default/sa/web".into()),
            trace_id: Some(TraceId([0x4b; 16])),
            span_id: Some(SpanId([0x0a, 0, 0, 0, 0, 0, 0, 0xb7])),
            ..Default::default()
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["upstream_service_time"], 12);
        assert_eq!(
            v["upstream_peer_principal"],
            "spiffe://cluster.local/ns/default/sa/reviews"
        );
        assert_eq!(
            v["downstream_peer_principal"],
            "spiffe://cluster.local/ns/default/sa/web"
        );
        assert_eq!(v["trace_id"], "4b".repeat(16));
        assert_eq!(v["span_id"], "0a000000000000b7");
    }

    #[tokio::test(start_paused = true)]
    async fn the_service_time_runs_from_the_first_send_to_the_response_headers() {
        let mut e = AccessLogEntry::default();
        e.upstream_answered();
        assert_eq!(e.upstream_service_time, None, "never sent");
        e.sending_upstream();
        tokio::time::advance(std::time::Duration::from_millis(30)).await;
        // A retry is sent later; the time still counts from the first attempt.
        e.sending_upstream();
        tokio::time::advance(std::time::Duration::from_millis(12)).await;
        e.upstream_answered();
        assert_eq!(e.upstream_service_time, Some(42));
    }

    #[test]
    fn a_writer_whose_file_could_not_be_opened_counts_every_line() {
        let failed = Counter::default();
        let log = AccessLog::failed(failed.clone());
        log.log(&AccessLogEntry::default());
        log.send("{}".into());
        assert_eq!(failed.get(), 2);
    }
}
