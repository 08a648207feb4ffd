//! The trace collector the pair scenario runs for `--tracing`: an OTLP/gRPC receiver on
//! loopback that the traced sidecars export their spans to, so the cost of tracing is measured
//! with a real export (batches encoded, sent over gRPC, answered) and nothing but this process
//! to talk to.
//!
//! It serves OpenTelemetry's own `TraceService` (the `opentelemetry-proto` crate's tonic
//! definitions), so the sidecars speak the real protocol; it keeps only what the report needs:
//! each span's kind and start time, so the spans that started inside a leg's measured window
//! can be told from those of its warm-up. OTLP rather than Zipkin because decoding protobuf
//! costs the bench machine less than parsing JSON, and OTLP/gRPC is what Istio's
//! `opentelemetry` provider sends.
//!
//! It runs on a thread of its own with a single-threaded tokio runtime, so its CPU can be read
//! from `/proc/self/task/TID/stat` and reported apart: the scenario takes it out of the load
//! generator's figure (same process) and counts it against no sidecar.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

use crate::procfs::{self, ProcError};

/// OTLP's `SpanKind` values (`opentelemetry.proto.trace.v1.Span.SpanKind`).
const KIND_SERVER: i32 = 2;
/// See [`KIND_SERVER`].
const KIND_CLIENT: i32 = 3;

/// How long the collector must see no new span before a leg's spans count as all in: the
/// proxy flushes a batch at most 500 ms after its first span (`BATCH_DELAY` of its exporter),
/// plus the export itself.
pub const FLUSH_QUIET: Duration = Duration::from_millis(1500);
/// The longest wait for the spans of a leg to stop arriving.
pub const FLUSH_MAX: Duration = Duration::from_secs(10);

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// Binding its loopback port failed.
    #[error("trace collector: cannot listen on loopback: {0}")]
    Bind(std::io::Error),
    /// Its thread or runtime could not be started.
    #[error("trace collector: cannot start: {0}")]
    Start(String),
}

/// Span start times as received since the last [`TraceCollector::reset`], nanoseconds since
/// the Unix epoch, by kind.
#[derive(Debug, Default)]
struct Received {
    client: Vec<u64>,
    server: Vec<u64>,
    /// Spans of any other kind.
    other: u64,
    /// Export requests answered.
    batches: u64,
}

type Shared = Arc<Mutex<Received>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Received> {
    // A poisoned lock only means a panic elsewhere mid-push: the counts are still usable.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// The gRPC service: records each span's kind and start time, answers every batch.
struct Service {
    received: Shared,
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let mut r = lock(&self.received);
        r.batches += 1;
        let spans = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans);
        for span in spans {
            match span.kind {
                KIND_CLIENT => r.client.push(span.start_time_unix_nano),
                KIND_SERVER => r.server.push(span.start_time_unix_nano),
                _ => r.other += 1,
            }
        }
        drop(r);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// What the collector received over one leg.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanTally {
    /// Every span received since the leg began (warm-up, window and flush).
    pub received: u64,
    /// CLIENT spans (the source sidecar's) that started inside the measured window.
    pub client_in_window: u64,
    /// SERVER spans (the destination sidecar's) that started inside the measured window.
    pub server_in_window: u64,
    /// Export requests answered.
    pub batches: u64,
}

/// A wall-clock window, nanoseconds since the Unix epoch (spans carry wall-clock times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallWindow {
    /// First nanosecond in the window.
    pub start_ns: u64,
    /// First nanosecond after it.
    pub end_ns: u64,
}

impl WallWindow {
    /// The wall-clock equivalent of the monotonic window `[start, end)`, through one reading of
    /// both clocks.
    pub fn of(start: Instant, end: Instant) -> Self {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let wall_ns = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let at = |t: Instant| -> u64 {
            if t >= now {
                let ahead = u64::try_from((t - now).as_nanos()).unwrap_or(u64::MAX);
                wall_ns.saturating_add(ahead)
            } else {
                let behind = u64::try_from((now - t).as_nanos()).unwrap_or(u64::MAX);
                wall_ns.saturating_sub(behind)
            }
        };
        Self {
            start_ns: at(start),
            end_ns: at(end),
        }
    }

    fn contains(&self, ns: u64) -> bool {
        (self.start_ns..self.end_ns).contains(&ns)
    }
}

/// A running collector; stopped when dropped.
pub struct TraceCollector {
    addr: SocketAddr,
    tid: i32,
    received: Shared,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TraceCollector {
    /// Starts the collector on a free loopback port, its thread pinned to `pin_cpu` if given.
    pub fn start(pin_cpu: Option<usize>) -> Result<Self, CollectorError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(CollectorError::Bind)?;
        let addr = listener.local_addr().map_err(CollectorError::Bind)?;
        listener
            .set_nonblocking(true)
            .map_err(CollectorError::Bind)?;
        let received = Shared::default();
        let service = TraceServiceServer::new(Service {
            received: received.clone(),
        });
        let (shutdown, stop) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<i32, String>>();
        let thread = std::thread::Builder::new()
            .name("trace-collector".into())
            .spawn(move || {
                if let Some(cpu) = pin_cpu {
                    // Best effort: an unpinned collector still counts; only its CPU may land
                    // beside the sidecars'.
                    let _ = crate::load::pin_current_thread(cpu);
                }
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(nix::unistd::gettid().as_raw()));
                    let incoming = tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(Some(true));
                    // The sidecars are stopped before the collector; an error here can only
                    // lose spans of a leg that is over.
                    let _ = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = stop.await;
                        })
                        .await;
                });
            })
            .map_err(|e| CollectorError::Start(e.to_string()))?;
        let tid = match ready_rx.recv() {
            Ok(Ok(tid)) => tid,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(CollectorError::Start(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(CollectorError::Start("its thread ended".into()));
            }
        };
        Ok(Self {
            addr,
            tid,
            received,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Where the sidecars send spans.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forgets what was received so far (a new leg begins).
    pub fn reset(&self) {
        *lock(&self.received) = Received::default();
    }

    /// Spans received since the last reset (any kind, any time).
    pub fn received(&self) -> u64 {
        let r = lock(&self.received);
        (r.client.len() + r.server.len()) as u64 + r.other
    }

    /// Waits until no span has arrived for [`FLUSH_QUIET`] (at most [`FLUSH_MAX`]): the
    /// sidecars have exported what they had queued.
    pub fn wait_quiet(&self) {
        let deadline = Instant::now() + FLUSH_MAX;
        let mut last = self.received();
        let mut last_change = Instant::now();
        while Instant::now() < deadline && last_change.elapsed() < FLUSH_QUIET {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.received();
            if now != last {
                last = now;
                last_change = Instant::now();
            }
        }
    }

    /// What was received since the last reset, spans in `window` counted apart.
    pub fn tally(&self, window: WallWindow) -> SpanTally {
        let r = lock(&self.received);
        let inside = |times: &[u64]| times.iter().filter(|&&t| window.contains(t)).count() as u64;
        SpanTally {
            received: (r.client.len() + r.server.len()) as u64 + r.other,
            client_in_window: inside(&r.client),
            server_in_window: inside(&r.server),
            batches: r.batches,
        }
    }

    /// CPU time the collector's thread has used, in clock ticks.
    pub fn cpu_ticks(&self) -> Result<u64, ProcError> {
        procfs::thread_cpu_ticks(self.tid)
    }
}

impl Drop for TraceCollector {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_window_keeps_the_monotonic_length() {
        let start = Instant::now();
        let end = start + Duration::from_secs(2);
        let w = WallWindow::of(start, end);
        assert_eq!(w.end_ns - w.start_ns, 2_000_000_000);
        assert!(w.contains(w.start_ns) && !w.contains(w.end_ns));
    }
}
