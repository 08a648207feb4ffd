//! One request's telemetry, completed when its response stream ends.
//!
//! Istio measures a request from its start to the end of the response stream, so the record is
//! carried inside the response body ([`TrackedBody`]) and finished when the last frame is sent —
//! or when the body is dropped early, which is a downstream disconnect (`DC`).

use crate::message::body::BodyError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use tokio::time::Instant;

use super::Telemetry;
use super::access_log::AccessLogEntry;
use super::attributes::LogAttributes;
use super::istio::MetricSet;
use super::istio::{IstioLabels, RequestSample};
use super::labels::grpc_status_label;
use super::tag_overrides::TagOverrides;
use crate::message::body::{BodyCount, ProxyBody};
use crate::message::grpc_frames::GrpcFrames;
use crate::message::response_flags::ResponseFlags;
use crate::server::conn::InFlight;

/// What is recorded when a request completes.
#[derive(Debug)]
pub struct Exchange {
    telemetry: Arc<Telemetry>,
    labels: IstioLabels,
    start: Instant,
    log: Option<Box<AccessLogEntry>>,
    received: Option<Arc<BodyCount>>,
    /// Whether the caller speaks gRPC (`request_protocol="grpc"`, messages counted).
    grpc: bool,
    /// Standard metrics a Telemetry resource turned off for this reporter.
    skipped: MetricSet,
    /// The request's span, when it is traced.
    span: Option<Box<super::trace::ActiveSpan>>,
    /// The reporter's `tagOverrides`, with what of the request their values read.
    tags: Option<(Arc<TagOverrides>, Option<Box<TagInput>>)>,
    _in_flight: InFlight,
    _permits: BreakerPermits,
}

/// The circuit-breaker permit a request carries with its telemetry until its response
/// stream ends (the cluster's `http2MaxRequests` slot), with its endpoint's in-flight count
/// (least request): Envoy counts a request as active until its last byte, not until its
/// headers, so both are released when the [`Exchange`] finishes.
#[derive(Debug, Default)]
pub struct BreakerPermits {
    /// The cluster's `http2MaxRequests` slot.
    pub request: Option<crate::resilience::breaker::Permit>,
    /// The endpoint's in-flight count.
    pub endpoint: Option<crate::balance::Outstanding>,
}

impl Exchange {
    /// Sets the gRPC status when it arrives in the response headers (trailers-only responses).
    pub fn set_grpc_status(&mut self, headers: &http::HeaderMap) {
        if let Some(status) = headers.get("grpc-status") {
            self.labels.grpc_response_status = grpc_status_label(status.as_bytes());
        }
    }

    /// Starts tracking; `log` is present only when the access log is on.
    pub fn new(
        telemetry: Arc<Telemetry>,
        labels: IstioLabels,
        start: Instant,
        log: Option<Box<AccessLogEntry>>,
        in_flight: InFlight,
    ) -> Self {
        Self {
            telemetry,
            labels,
            start,
            log,
            received: None,
            grpc: false,
            skipped: MetricSet::NONE,
            span: None,
            tags: None,
            _in_flight: in_flight,
            _permits: BreakerPermits::default(),
        }
    }

    /// Finishes `span` with the exchange (a traced request).
    pub fn trace(&mut self, span: Option<Box<super::trace::ActiveSpan>>) {
        self.span = span;
    }

    /// Keeps `permits` taken until the exchange finishes.
    pub fn hold(&mut self, permits: BreakerPermits) {
        self._permits = permits;
    }

    /// Reads what the request body brought from `counter` when the exchange finishes
    /// (`None`: a request without a body).
    pub fn count_received(&mut self, counter: Option<Arc<BodyCount>>) {
        self.received = counter;
    }

    /// Leaves `metrics` unrecorded (a Telemetry resource's `disabled` overrides).
    pub fn skip_metrics(&mut self, metrics: MetricSet) {
        self.skipped = metrics;
    }

    /// Records the metrics also under the labels `tags` make, their values read from
    /// `input` (the request, kept when a value reads it) when the exchange finishes.
    pub fn override_tags(&mut self, tags: Arc<TagOverrides>, input: Option<Box<TagInput>>) {
        self.tags = Some((tags, input));
    }

    /// Marks a gRPC caller: reported as `request_protocol="grpc"`, whatever the service's
    /// declared protocol (Istio reads it from the request), with its messages counted.
    pub fn set_grpc(&mut self, grpc: bool) {
        self.grpc = grpc;
        if grpc {
            self.labels.request_protocol = "grpc";
        }
    }

    fn finish(mut self, sent: &Sent, complete: bool) {
        if !complete && self.labels.response_flags.is_empty() {
            self.labels.response_flags = ResponseFlags::DC;
        }
        let elapsed = self.start.elapsed();
        let (request_bytes, request_messages) = self.received.as_ref().map_or((0, 0), |c| {
            (
                c.bytes.load(Ordering::Relaxed),
                c.messages.load(Ordering::Relaxed),
            )
        });
        let sample = RequestSample {
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            request_bytes,
            response_bytes: sent.bytes,
            request_messages,
            response_messages: sent.grpc.map_or(0, |g| g.messages()),
        };
        // The ids the access log carries, read before the span is handed over.
        let traced = self.log.as_ref().and(self.span.as_ref()).map(|s| s.ids());
        if let Some(span) = self.span.take() {
            (*span).finish(&super::trace::SpanOutcome {
                status: self.labels.response_code,
                flags: self.labels.response_flags,
                grpc_status: self.grpc.then_some(self.labels.grpc_response_status),
                request_bytes,
                response_bytes: sent.bytes,
                duration: elapsed,
            });
        }
        let m = &self.telemetry.metrics;
        match &self.tags {
            None => m.istio.record_request(&self.labels, &sample, self.skipped),
            Some((tags, input)) => {
                let flags = self.labels.response_flags.to_string();
                let empty = TagInput::default();
                let input = input.as_deref().unwrap_or(&empty);
                let attributes = input.attributes(
                    self.labels.response_code,
                    elapsed.as_millis() as u64,
                    flags,
                    sent.bytes,
                );
                for (labels, skipped) in tags.label_sets(&self.labels, &attributes, self.skipped) {
                    m.istio.record_request(&labels, &sample, skipped);
                }
            }
        }
        if let Some(mut entry) = self.log.take() {
            entry.response_flags = self.labels.response_flags;
            entry.bytes_sent = sent.bytes;
            entry.bytes_received = request_bytes;
            entry.duration = elapsed.as_millis() as u64;
            entry.duration_ms = entry.duration;
            if let Some((trace, span)) = traced {
                entry.trace_id = Some(trace);
                entry.span_id = Some(span);
            }
            self.telemetry.deliver(entry);
        }
    }
}

/// What `tagOverrides` values may read of a request, kept from its arrival to the end of
/// its response (only for a workload whose overrides read the request).
#[derive(Debug, Default)]
pub struct TagInput {
    headers: Vec<(String, String)>,
    method: String,
    path: String,
    host: String,
    id: String,
    user_agent: String,
    protocol: &'static str,
}

impl TagInput {
    /// The attributes of `req` as it arrived.
    pub fn of<B>(req: &http::Request<B>) -> Self {
        let h = req.headers();
        let text = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        Self {
            headers: super::attributes::header_pairs(h),
            method: req.method().as_str().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            host: crate::message::uri::request_authority(req)
                .unwrap_or("")
                .to_string(),
            id: text("x-request-id"),
            user_agent: text("user-agent"),
            protocol: super::access_log::version_label(req.version()),
        }
    }

    fn attributes(
        &self,
        code: u16,
        duration_ms: u64,
        flags: String,
        size: u64,
    ) -> LogAttributes<'_> {
        LogAttributes {
            headers: &self.headers,
            method: &self.method,
            path: &self.path,
            host: &self.host,
            id: &self.id,
            user_agent: &self.user_agent,
            protocol: self.protocol,
            code,
            duration_ms,
            flags,
            size,
        }
    }
}

/// What a response body has sent so far.
#[derive(Debug, Default)]
struct Sent {
    bytes: u64,
    /// The gRPC framing, for gRPC exchanges.
    grpc: Option<GrpcFrames>,
}

/// A response body that finishes its [`Exchange`] when the stream ends or is dropped.
#[derive(Debug)]
pub struct TrackedBody {
    inner: ProxyBody,
    exchange: Option<Exchange>,
    sent: Sent,
}

impl TrackedBody {
    /// Wraps `inner`; `exchange` is finished when the stream ends.
    pub fn new(inner: ProxyBody, exchange: Option<Exchange>) -> Self {
        let grpc = exchange.as_ref().is_some_and(|e| e.grpc);
        Self {
            inner,
            exchange,
            sent: Sent {
                bytes: 0,
                grpc: grpc.then(GrpcFrames::default),
            },
        }
    }

    fn complete(&mut self, ok: bool) {
        if let Some(ex) = self.exchange.take() {
            ex.finish(&self.sent, ok);
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        let ended = self.inner.is_end_stream();
        self.complete(ended);
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent.bytes += d.len() as u64;
                    if let Some(g) = &mut this.sent.grpc {
                        g.feed(d);
                    }
                } else if let (Some(t), Some(ex)) = (frame.trailers_ref(), this.exchange.as_mut())
                    && let Some(status) = t.get("grpc-status")
                {
                    ex.labels.grpc_response_status = grpc_status_label(status.as_bytes());
                }
                if this.inner.is_end_stream() {
                    this.complete(true);
                }
            }
            Poll::Ready(None) => this.complete(true),
            Poll::Ready(Some(Err(_))) => this.complete(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
