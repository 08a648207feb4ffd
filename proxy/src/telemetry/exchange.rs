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
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::time::Instant;

use super::Telemetry;
use super::access_log::AccessLogEntry;
use super::labels::grpc_status_label;
use super::metrics::RequestLabels;
use crate::message::body::ProxyBody;
use crate::message::response_flags::ResponseFlags;
use crate::server::conn::InFlight;

/// What is recorded when a request completes.
#[derive(Debug)]
pub struct Exchange {
    telemetry: Arc<Telemetry>,
    labels: RequestLabels,
    start: Instant,
    log: Option<Box<AccessLogEntry>>,
    received: Option<Arc<AtomicU64>>,
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
        labels: RequestLabels,
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
            _in_flight: in_flight,
            _permits: BreakerPermits::default(),
        }
    }

    /// Keeps `permits` taken until the exchange finishes.
    pub fn hold(&mut self, permits: BreakerPermits) {
        self._permits = permits;
    }

    /// Reads the request body's byte count from `counter` when the exchange finishes (the
    /// access log's `bytes_received`).
    pub fn count_received(&mut self, counter: Option<Arc<AtomicU64>>) {
        self.received = counter;
    }

    fn finish(mut self, bytes_sent: u64, complete: bool) {
        if !complete && self.labels.response_flags.is_empty() {
            self.labels.response_flags = ResponseFlags::DC;
        }
        let elapsed = self.start.elapsed();
        let ms = elapsed.as_secs_f64() * 1000.0;
        let m = &self.telemetry.metrics;
        m.record_request(&self.labels, ms);
        if let (Some(mut entry), Some(log)) = (self.log.take(), self.telemetry.access_log.as_ref())
        {
            entry.response_flags = self.labels.response_flags;
            entry.bytes_sent = bytes_sent;
            if let Some(received) = &self.received {
                entry.bytes_received = received.load(Ordering::Relaxed);
            }
            entry.duration = elapsed.as_millis() as u64;
            entry.duration_ms = entry.duration;
            log.log(&entry);
        }
    }
}

/// A response body that finishes its [`Exchange`] when the stream ends or is dropped.
#[derive(Debug)]
pub struct TrackedBody {
    inner: ProxyBody,
    exchange: Option<Exchange>,
    bytes: u64,
}

impl TrackedBody {
    /// Wraps `inner`; `exchange` is finished when the stream ends.
    pub fn new(inner: ProxyBody, exchange: Option<Exchange>) -> Self {
        Self {
            inner,
            exchange,
            bytes: 0,
        }
    }

    fn complete(&mut self, ok: bool) {
        if let Some(ex) = self.exchange.take() {
            ex.finish(self.bytes, ok);
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
                    this.bytes += d.len() as u64;
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
