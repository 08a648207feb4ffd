//! JSON access log lines, one per request, written off the request path.
//!
//! Field names follow Istio's JSON access log format (`start_time`, `response_flags`,
//! `upstream_transport_failure_reason`, ...), so existing log pipelines parse them. The request
//! path only formats the line and hands it to a bounded channel; a background task writes.
//! When the writer falls behind, lines are dropped and counted rather than blocking requests.

use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use tokio::sync::mpsc;

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

/// A Telemetry filter and the request headers it will read when the line is complete.
pub type PendingFilter = (
    std::sync::Arc<super::workload::LogFilter>,
    Vec<(String, String)>,
);

/// One request's log line.
#[derive(Debug, Default, Serialize)]
pub struct AccessLogEntry {
    /// RFC 3339 UTC time the request started.
    pub start_time: String,
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
    /// The verified peer identity (inbound).
    pub downstream_peer_principal: Option<String>,
    /// Why the proxy answered itself, when it did (Envoy's `%RESPONSE_CODE_DETAILS%`, e.g.
    /// `rbac_access_denied_matched_policy[default/deny-debug]`).
    pub response_code_details: Option<String>,
    /// The writer the line goes to.
    #[serde(skip)]
    pub sink: super::LogSink,
    /// The Telemetry filter the line must pass, with the request headers it reads.
    #[serde(skip)]
    pub filter: Option<PendingFilter>,
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
        let (sink, filter) = telemetry.access_log_for(t, reporter)?;
        let direction = match reporter {
            super::workload::Reporter::Source => "outbound",
            super::workload::Reporter::Destination => "inbound",
        };
        let mut entry = Box::new(Self::for_request(req, direction, remote));
        entry.sink = sink;
        if let Some(f) = filter {
            entry.filtered_by(f, req);
        }
        Some(entry)
    }

    /// Sets the filter the line must pass, keeping the request's headers for it.
    pub fn filtered_by<B>(
        &mut self,
        filter: std::sync::Arc<super::workload::LogFilter>,
        req: &http::Request<B>,
    ) {
        let headers = req
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        self.filter = Some((filter, headers));
    }

    /// Whether the complete line passes its filter (no filter: yes).
    pub fn passes(&self) -> bool {
        let Some((filter, headers)) = &self.filter else {
            return true;
        };
        filter.allows(&super::attributes::LogAttributes {
            headers,
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
        })
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
            start_time: rfc3339(std::time::SystemTime::now()),
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

/// Sender side of the access log.
#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: mpsc::Sender<String>,
    dropped: crate::telemetry::prom::Counter,
}

impl AccessLog {
    /// Starts the writer task for `target`.
    pub fn start(
        target: AccessLogTarget,
        dropped: crate::telemetry::prom::Counter,
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
                        // The log target is gone (closed pipe, full disk): stop writing, keep serving.
                        return;
                    }
                    buf.clear();
                }
            })?;
        Ok(Self { tx, dropped })
    }

    /// Queues one entry; drops it (and counts) when the writer is behind.
    pub fn log(&self, entry: &AccessLogEntry) {
        self.write(entry);
    }

    /// Queues any JSON line (the audit log shares the writer); dropped and counted when the
    /// writer is behind.
    pub fn write<T: Serialize>(&self, entry: &T) {
        match serde_json::to_string(entry) {
            Ok(line) => {
                if self.tx.try_send(line).is_err() {
                    self.dropped.inc();
                }
            }
            Err(_) => {
                self.dropped.inc();
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
        assert!(v.get("upstream_transport_failure_reason").is_some());
    }
}
