//! Serving one downstream connection: HTTP/1.1 or HTTP/2, with the timeouts that protect the
//! proxy from idle, slow and abusive clients, and with graceful drain.
//!
//! hyper parses the protocol; this module adds what a production edge needs around it:
//! - a header-read deadline (slowloris): an HTTP/1.1 client that started a request head must
//!   finish it within `header_read_timeout`, or the connection is closed;
//! - an idle timeout: a connection with nothing in flight for `idle_timeout` is closed (HTTP/2:
//!   GOAWAY first);
//! - drain: on shutdown each connection finishes its in-flight requests and closes.
//!
//! Activity is tracked with a few atomics in [`ConnState`] that the I/O wrapper and the request
//! path update; a coarse per-connection tick checks them, so no timer is reset per read.

use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::drain::Drain;
use crate::server::limits::Limits;
use crate::telemetry::metrics::Metrics;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds on the proxy's coarse clock (tokio's, so tests can pause time). Never 0.
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// Activity of one downstream connection.
#[derive(Debug, Default)]
pub struct ConnState {
    in_flight: AtomicU32,
    /// When the first byte of a not-yet-complete request head arrived (0: none).
    head_started: AtomicU64,
    /// When the connection last became idle.
    idle_since: AtomicU64,
    /// HTTP/2 (by ALPN or preface): no header-read deadline, only idle.
    h2: AtomicBool,
    sniffed: AtomicBool,
    /// The last byte read (a CR ending one read may pair with an LF starting the next).
    last_byte: AtomicU8,
    /// A request head on this connection used a bare LF line end.
    bare_lf: AtomicBool,
}

impl ConnState {
    fn new(h2: bool, sniffed: bool) -> Arc<Self> {
        let s = Self::default();
        s.h2.store(h2, Ordering::Relaxed);
        s.sniffed.store(sniffed, Ordering::Relaxed);
        s.idle_since.store(now_ms(), Ordering::Relaxed);
        Arc::new(s)
    }

    /// Marks a request as started; the returned guard marks it finished when dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        InFlight(Some(self.clone()))
    }

    fn on_read(&self, bytes: &[u8]) {
        if !self.sniffed.swap(true, Ordering::Relaxed) && bytes.starts_with(b"PRI * HTTP/2.0") {
            self.h2.store(true, Ordering::Relaxed);
        }
        let awaiting_head = self.in_flight.load(Ordering::Acquire) == 0;
        if awaiting_head && self.head_started.load(Ordering::Acquire) == 0 {
            self.head_started.store(now_ms(), Ordering::Release);
        }
        if awaiting_head
            && !self.h2.load(Ordering::Relaxed)
            && crate::message::framing::bare_lf_in_head(
                self.last_byte.load(Ordering::Relaxed),
                bytes,
            )
        {
            self.bare_lf.store(true, Ordering::Relaxed);
        }
        if let Some(b) = bytes.last() {
            self.last_byte.store(*b, Ordering::Relaxed);
        }
    }

    /// Whether a request head on this connection ended a line with a bare LF: hyper
    /// tolerates it, the proxy refuses to forward what it merely tolerated.
    pub fn saw_bare_lf(&self) -> bool {
        self.bare_lf.load(Ordering::Relaxed)
    }

    /// What the watchdog should do now.
    fn verdict(&self, limits: &Limits) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let now = now_ms();
        let head = self.head_started.load(Ordering::Acquire);
        if head != 0 && !self.h2.load(Ordering::Relaxed) {
            if now.saturating_sub(head) > limits.header_read_timeout.as_millis() as u64 {
                return Some("header_timeout");
            }
            return None;
        }
        let idle = self.idle_since.load(Ordering::Acquire);
        (now.saturating_sub(idle) > limits.idle_timeout.as_millis() as u64).then_some("idle")
    }
}

/// A request in flight on a connection; finishing it (drop) may start the idle clock.
#[derive(Debug)]
pub struct InFlight(Option<Arc<ConnState>>);

impl InFlight {
    /// A guard tied to no connection (in-process benchmarks, tunnels).
    pub fn detached() -> Self {
        InFlight(None)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(s) = self.0.take()
            && s.in_flight.fetch_sub(1, Ordering::AcqRel) == 1
        {
            s.idle_since.store(now_ms(), Ordering::Release);
            s.head_started.store(0, Ordering::Release);
        }
    }
}

pin_project_lite::pin_project! {
    /// I/O wrapper that reports reads to the connection's [`ConnState`].
    pub struct Monitored<IO> {
        #[pin]
        io: IO,
        state: Arc<ConnState>,
        // Where small vectored writes are joined ([`crate::transport::coalesce`]).
        scratch: Vec<u8>,
    }
}

impl<IO: AsyncRead> AsyncRead for Monitored<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.io.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                this.state.on_read(read);
            }
        }
        res
    }
}

impl<IO: AsyncWrite> AsyncWrite for Monitored<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // hyper hands a message over as slices: small ones go out as one write.
        let this = self.project();
        crate::transport::coalesce::poll_write_coalesced(this.io, cx, bufs, this.scratch)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The hyper server configuration shared by every downstream connection of a listener.
pub fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The head must fit in the read buffer: this is the header size limit (431 beyond).
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true)
        // Our watchdog enforces header-read and idle deadlines (hyper's would also close
        // idle keep-alive connections at the header deadline).
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(Some(1024))
        .initial_stream_window_size(Some(1024 * 1024))
        .initial_connection_window_size(Some(4 * 1024 * 1024))
        // No keep-alive pings downstream (Envoy's default too): the watchdog closes idle
        // connections, and hyper's pinger takes a lock and reads the clock on every frame
        // received (about 4 % of a sidecar's CPU with h2c from the app, measured).
        .keep_alive_interval(None);
    builder
}

/// Serves one connection until it closes, the watchdog closes it, or drain completes it.
/// `make_service` receives the connection's state (to mark requests in flight).
pub async fn serve<IO, S, F>(
    io: IO,
    h2_by_alpn: Option<bool>,
    builder: &auto::Builder<TokioExecutor>,
    limits: &Limits,
    drain: &Arc<Drain>,
    metrics: &Metrics,
    make_service: F,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(Arc<ConnState>) -> S,
    S: Service<
            http::Request<Incoming>,
            Response = http::Response<crate::telemetry::exchange::TrackedBody>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _guard = drain.track();
    metrics.downstream_active.inc();
    let state = ConnState::new(h2_by_alpn.unwrap_or(false), h2_by_alpn.is_some());
    let service = make_service(state.clone());
    let io = TokioIo::new(Monitored {
        io,
        state: state.clone(),
        scratch: Vec::new(),
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut drain_rx = drain.watch();
    let tick_every = limits
        .header_read_timeout
        .min(limits.idle_timeout)
        .min(Duration::from_secs(1))
        / 2;
    let mut tick = tokio::time::interval(tick_every.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!("downstream connection ended: {e}");
                }
                break;
            }
            changed = drain_rx.changed(), if !shutting_down => {
                if changed.is_ok() && *drain_rx.borrow() {
                    shutting_down = true;
                    metrics.closed_by_proxy("drain");
                    conn.as_mut().graceful_shutdown();
                } else if changed.is_err() {
                    shutting_down = true;
                }
            }
            _ = tick.tick() => {
                if let Some(reason) = state.verdict(limits) {
                    metrics.closed_by_proxy(reason);
                    tracing::debug!(reason, "closing downstream connection");
                    break;
                }
            }
        }
    }
    metrics.downstream_active.dec();
}
