//! Serving one downstream connection: HTTP/1.1 or HTTP/2, with the timeouts that protect the
//! proxy from idle, slow and abusive clients, and with graceful drain.
//!
//! hyper parses the protocol; this module adds what a production edge needs around it:
//! - a header-read deadline (slowloris): an HTTP/1.1 client that started a request head must
//!   finish it within `header_read_timeout`, or the connection is closed;
//! - an idle timeout: a connection with nothing in flight for `idle_timeout` is closed (HTTP/2:
//!   GOAWAY first);
//! - drain: on shutdown each connection finishes its in-flight requests and closes;
//! - rest: an HTTP/1.1 connection the watchdog finds idle gives its hyper connection (an
//!   8 KiB read buffer, an 8 KiB header buffer, the dispatcher) back and waits for its next
//!   bytes with none of it and no tick, only its idle deadline; all is made again when the
//!   client speaks. A mesh's apps keep many keep-alive connections open and mostly quiet.
//!
//! Activity is tracked with a few atomics in [`ConnState`] that the I/O wrapper and the request
//! path update; a coarse per-connection tick checks them, so no timer is reset per read.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
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
    /// Request bodies still being received (hyper is reading them).
    bodies_open: AtomicU32,
    /// The last write or flush could not finish (hyper still holds bytes to send).
    write_blocked: AtomicBool,
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

    /// Marks a request body as being received; the returned guard marks it done when the
    /// body ends or is dropped. A connection reading a body never gives its buffers back.
    pub fn open_body(self: &Arc<Self>) -> BodyOpen {
        self.bodies_open.fetch_add(1, Ordering::AcqRel);
        BodyOpen(self.clone())
    }

    /// Whether hyper's connection may be taken apart now: nothing in flight or being read,
    /// no head begun, nothing left to write.
    /// Asked only right after the connection returned `Pending`, so hyper has acted on
    /// everything that happened (a body dropped unread is drained or the connection closed).
    /// Only the HTTP/1.1 loop asks: an HTTP/2 connection never rests.
    fn may_release(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self.bodies_open.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == 0
            && !self.write_blocked.load(Ordering::Acquire)
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

    fn note_write(&self, blocked: bool) {
        self.write_blocked.store(blocked, Ordering::Release);
    }

    /// Whether a request head on this connection ended a line with a bare LF: hyper
    /// tolerates it, the proxy refuses to forward what it merely tolerated.
    pub fn saw_bare_lf(&self) -> bool {
        self.bare_lf.load(Ordering::Relaxed)
    }

    /// When an idle connection's idle timeout ends.
    fn idle_deadline(&self, limits: &Limits) -> Instant {
        let since = self.idle_since.load(Ordering::Acquire).saturating_sub(1);
        epoch() + Duration::from_millis(since) + limits.idle_timeout
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

/// A request body being received on a connection ([`ConnState::open_body`]).
#[derive(Debug)]
pub struct BodyOpen(Arc<ConnState>);

impl Drop for BodyOpen {
    fn drop(&mut self) {
        self.0.bodies_open.fetch_sub(1, Ordering::AcqRel);
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
        // Bytes read before hyper's connection was made (the HTTP/2 preface check, a
        // released connection's first bytes), handed to it first.
        prefix: Bytes,
    }
}

/// How much a connection waiting with released buffers reads at once: its next request
/// head, usually whole; hyper reads the rest.
const WAKE_READ: usize = 4096;

impl<IO: AsyncRead + Unpin> Monitored<IO> {
    fn new(io: IO, state: Arc<ConnState>) -> Self {
        Self {
            io,
            state,
            scratch: Vec::new(),
            prefix: Bytes::new(),
        }
    }

    /// Reads what the client sends next onto the prefix, through a buffer on the stack (a
    /// waiting connection holds none). `Ok(0)`: the client closed.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let mut stack = [0u8; WAKE_READ];
        let mut buf = ReadBuf::new(&mut stack);
        std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let read = buf.filled();
        if !read.is_empty() {
            self.state.on_read(read);
            self.prefix = if self.prefix.is_empty() {
                Bytes::copy_from_slice(read)
            } else {
                let mut joined = Vec::with_capacity(self.prefix.len() + read.len());
                joined.extend_from_slice(&self.prefix);
                joined.extend_from_slice(read);
                joined.into()
            };
        }
        Poll::Ready(Ok(read.len()))
    }

    /// Gives back what only a served connection needs.
    fn release(&mut self) {
        self.scratch = Vec::new();
    }
}

impl<IO: AsyncRead> AsyncRead for Monitored<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        // The prefix was reported when it was read.
        if super::prefixed::replay(this.prefix, buf) {
            return Poll::Ready(Ok(()));
        }
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
        let this = self.project();
        let res = this.io.poll_write(cx, buf);
        this.state.note_write(res.is_pending());
        res
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let res = this.io.poll_flush(cx);
        this.state.note_write(res.is_pending());
        res
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
        let res = crate::transport::coalesce::poll_write_coalesced(this.io, cx, bufs, this.scratch);
        this.state.note_write(res.is_pending());
        res
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// What the client's first bytes are when it speaks HTTP/2 without ALPN (prior knowledge).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The hyper server configurations shared by every downstream connection of a listener:
/// HTTP/2 when ALPN or the client's preface says so, else HTTP/1.1.
#[derive(Clone, Debug)]
pub struct HttpServer {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

/// The server configuration for downstream connections under `limits`.
pub fn http_builder(limits: &Limits) -> HttpServer {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        // The head must fit in the read buffer: this is the header size limit (431 beyond).
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true)
        // Our watchdog enforces header-read and idle deadlines (hyper's would also close
        // idle keep-alive connections at the header deadline).
        .header_read_timeout(None);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(Some(1024))
        .initial_stream_window_size(Some(1024 * 1024))
        .initial_connection_window_size(Some(4 * 1024 * 1024))
        // No keep-alive pings downstream (Envoy's default too): the watchdog closes idle
        // connections, and hyper's pinger takes a lock and reads the clock on every frame
        // received (about 4 % of a sidecar's CPU with h2c from the app, measured).
        .keep_alive_interval(None);
    HttpServer { h1, h2 }
}

/// Serves one connection until it closes, the watchdog closes it, or drain completes it.
/// `make_service` receives the connection's state (to mark requests in flight).
pub async fn serve<IO, S, F>(
    io: IO,
    h2_by_alpn: Option<bool>,
    server: &HttpServer,
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
        + Unpin
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _guard = drain.track();
    metrics.downstream_active.inc();
    let state = ConnState::new(h2_by_alpn.unwrap_or(false), h2_by_alpn.is_some());
    let service = make_service(state.clone());
    let mut io = Monitored::new(io, state.clone());
    let mut watch = Watchdog::new(&state, limits, drain, metrics);
    let h2 = match h2_by_alpn {
        Some(true) => Some(true),
        // A connection is sniffed for the HTTP/2 preface (as hyper-util's `auto` does).
        _ => watch.sniff_h2(&mut io).await,
    };
    match h2 {
        Some(true) => {
            // Boxed: held inline, it would size every connection's task, HTTP/1.1 or not.
            let mut conn = Box::pin(server.h2.serve_connection(TokioIo::new(io), service));
            watch
                .drive(conn.as_mut(), |c| c.graceful_shutdown(), Rest::Never)
                .await;
        }
        // HTTP/1.1, giving hyper's connection back while the client is quiet and making it
        // again from the bytes that wake it.
        Some(false) => {
            let mut service = service;
            // A new connection, and one that rested long, rests as soon as it is idle: its client
            // speaks seldom (a slow keep-alive connection costs no buffers between requests). One
            // woken soon after resting rests at the watchdog's tick, so a busy connection is not
            // taken apart between its requests.
            let mut rest = Rest::WhenIdle;
            loop {
                // Boxed, so that giving it back frees it.
                let mut conn = Box::pin(
                    server
                        .h1
                        .serve_connection(TokioIo::new(io), service)
                        .with_upgrades(),
                );
                if watch
                    .drive(conn.as_mut(), |c| c.graceful_shutdown(), rest)
                    .await
                    == Ended::Closed
                {
                    break;
                }
                // Idle, nothing in flight or unsent: only unread bytes (a head's start) are kept.
                let Some(parts) = Pin::into_inner(conn).into_parts() else {
                    break;
                };
                io = parts.io.into_inner();
                service = parts.service;
                // Taken out of `parts`, so that it is freed now rather than when the rest ends
                // (hyper's read buffer, 8 KiB, even when empty).
                let unread = parts.read_buf;
                if !unread.is_empty() {
                    io.prefix = unread;
                    continue;
                }
                drop(unread);
                io.release();
                watch.metrics.downstream_resting.inc();
                let rested = Instant::now();
                let woken = watch.wait_for_bytes(&mut io).await;
                watch.metrics.downstream_resting.dec();
                if !woken {
                    break;
                }
                rest = if rested.elapsed() >= LONG_REST {
                    Rest::WhenIdle
                } else {
                    Rest::AtTick
                };
            }
        }
        None => {}
    }
    metrics.downstream_active.dec();
}

/// A rest at least this long marks a connection whose client speaks seldom.
const LONG_REST: Duration = Duration::from_secs(1);

/// When a served connection may rest ([`Watchdog::drive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rest {
    /// Never (HTTP/2).
    Never,
    /// When a tick of the watchdog finds it idle.
    AtTick,
    /// As soon as it is idle.
    WhenIdle,
}

/// How [`Watchdog::drive`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The connection closed (by either side, the watchdog or drain).
    Closed,
    /// The connection is idle and may be taken apart.
    Idle,
}

/// The deadlines and drain that watch one connection, whichever hyper connection serves it.
struct Watchdog<'a> {
    state: &'a Arc<ConnState>,
    limits: &'a Limits,
    metrics: &'a Metrics,
    drain_rx: tokio::sync::watch::Receiver<bool>,
    tick: tokio::time::Interval,
    shutting_down: bool,
}

impl<'a> Watchdog<'a> {
    fn new(
        state: &'a Arc<ConnState>,
        limits: &'a Limits,
        drain: &Arc<Drain>,
        metrics: &'a Metrics,
    ) -> Self {
        let tick_every = limits
            .header_read_timeout
            .min(limits.idle_timeout)
            .min(Duration::from_secs(1))
            / 2;
        let mut tick = tokio::time::interval(tick_every.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            state,
            limits,
            metrics,
            drain_rx: drain.watch(),
            tick,
            shutting_down: false,
        }
    }

    /// Whether the watchdog closes the connection now (counted), and why.
    fn expired(&self) -> bool {
        match self.state.verdict(self.limits) {
            Some(reason) => {
                self.metrics.closed_by_proxy(reason);
                tracing::debug!(reason, "closing downstream connection");
                true
            }
            None => false,
        }
    }

    /// Whether drain began (counted once); `false` also when drain can no longer begin.
    fn draining(&mut self, changed: Result<(), tokio::sync::watch::error::RecvError>) -> bool {
        if changed.is_ok() && *self.drain_rx.borrow() {
            self.shutting_down = true;
            self.metrics.closed_by_proxy("drain");
            return true;
        }
        if changed.is_err() {
            self.shutting_down = true;
        }
        false
    }

    /// Reads the client's first bytes: `Some(true)` for the HTTP/2 preface, `Some(false)`
    /// for anything else, `None` when the connection ended first.
    async fn sniff_h2<IO: AsyncRead + Unpin>(&mut self, io: &mut Monitored<IO>) -> Option<bool> {
        loop {
            if !self.wait_for_bytes(io).await {
                return None;
            }
            let n = io.prefix.len().min(H2_PREFACE.len());
            if io.prefix[..n] != H2_PREFACE[..n] {
                return Some(false);
            }
            if n == H2_PREFACE.len() {
                return Some(true);
            }
        }
    }

    /// Waits, holding no buffer and no tick, until the client sends more (onto `io`'s
    /// prefix): `false` when it closed, failed, stayed idle past its deadline or drain began.
    /// Nothing is in flight, so only the idle deadline can pass.
    async fn wait_for_bytes<IO: AsyncRead + Unpin>(&mut self, io: &mut Monitored<IO>) -> bool {
        loop {
            tokio::select! {
                read = std::future::poll_fn(|cx| io.poll_more(cx)) => {
                    return matches!(read, Ok(n) if n > 0);
                }
                changed = self.drain_rx.changed(), if !self.shutting_down => {
                    if self.draining(changed) {
                        return false;
                    }
                }
                _ = tokio::time::sleep_until(self.state.idle_deadline(self.limits)) => {
                    if self.expired() {
                        return false;
                    }
                }
            }
        }
    }

    /// Runs `conn` until it ends, the watchdog or drain closes it, or it is found idle when
    /// `rest` allows, to be taken apart.
    async fn drive<C>(
        &mut self,
        mut conn: Pin<&mut C>,
        graceful_shutdown: impl Fn(Pin<&mut C>),
        rest: Rest,
    ) -> Ended
    where
        C: Future<Output = hyper::Result<()>> + ?Sized,
    {
        // Set by a tick: the next time the connection is pending, see whether it is idle.
        let mut check_idle = false;
        loop {
            tokio::select! {
                res = std::future::poll_fn(|cx| match conn.as_mut().poll(cx) {
                    Poll::Ready(res) => Poll::Ready(Some(res)),
                    Poll::Pending if check_idle || rest == Rest::WhenIdle => {
                        check_idle = false;
                        if rest != Rest::Never && !self.shutting_down && self.state.may_release() {
                            Poll::Ready(None)
                        } else {
                            Poll::Pending
                        }
                    }
                    Poll::Pending => Poll::Pending,
                }) => {
                    match res {
                        None => return Ended::Idle,
                        Some(Err(e)) => tracing::debug!("downstream connection ended: {e}"),
                        Some(Ok(())) => {}
                    }
                    return Ended::Closed;
                }
                changed = self.drain_rx.changed(), if !self.shutting_down => {
                    if self.draining(changed) {
                        graceful_shutdown(conn.as_mut());
                    }
                }
                _ = self.tick.tick() => {
                    if self.expired() {
                        return Ended::Closed;
                    }
                    check_idle = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::body::ProxyBody;
    use crate::telemetry::exchange::TrackedBody;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Serves `io` with a service that answers every request with `body`, its request marked
    /// finished as soon as the response is handed over (the state hyper is in when the app's
    /// body ended but the client has not read it all).
    fn spawn_server(io: DuplexStream, body: Bytes) -> Arc<Metrics> {
        let metrics = Arc::new(Metrics::new());
        let m = metrics.clone();
        tokio::spawn(async move {
            // Ticks every 50 ms: a quiet connection rests within 50 ms.
            let limits = Limits {
                header_read_timeout: Duration::from_millis(100),
                ..Limits::default()
            };
            let server = http_builder(&limits);
            let drain = Arc::new(Drain::new());
            serve(io, None, &server, &limits, &drain, &m, |state| {
                hyper::service::service_fn(move |_req| {
                    let finished = state.start_request();
                    let body = body.clone();
                    async move {
                        drop(finished);
                        let body = TrackedBody::new(ProxyBody::full(body), None);
                        Ok::<_, std::convert::Infallible>(http::Response::new(body))
                    }
                })
            })
            .await;
        });
        metrics
    }

    /// Reads one response with a `content-length` and returns its body.
    async fn read_response(io: &mut DuplexStream, buf: &mut Vec<u8>) -> Vec<u8> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut parsed = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = parsed.parse(buf) {
                let len: usize = parsed
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                    .expect("content-length");
                while buf.len() < head + len {
                    let mut chunk = [0u8; 8192];
                    let n = io.read(&mut chunk).await.expect("read body");
                    assert!(
                        n > 0,
                        "closed after {} of {len} body bytes",
                        buf.len() - head
                    );
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = buf[head..head + len].to_vec();
                buf.drain(..head + len);
                return body;
            }
            let mut chunk = [0u8; 8192];
            let n = io.read(&mut chunk).await.expect("read head");
            assert!(n > 0, "closed before a response head");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn resting_after(metrics: &Metrics, wait: Duration) -> i64 {
        tokio::time::sleep(wait).await;
        metrics.downstream_resting.get()
    }

    #[tokio::test]
    async fn a_response_the_client_has_not_read_keeps_the_connection_awake() {
        // 16 KiB between client and server: hyper still holds most of the body when the
        // request is finished.
        let (mut client, server_io) = tokio::io::duplex(16 * 1024);
        let body: Bytes = (0..256 * 1024)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let metrics = spawn_server(server_io, body.clone());
        let request = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n";
        client.write_all(request).await.expect("write");
        assert_eq!(
            resting_after(&metrics, Duration::from_millis(600)).await,
            0,
            "the connection rested with a response still to send"
        );
        let mut buf = Vec::new();
        let got = read_response(&mut client, &mut buf).await;
        assert!(
            got == body,
            "the response arrived changed ({} bytes)",
            got.len()
        );

        // Quiet now: it rests, and the next request wakes it.
        assert_eq!(resting_after(&metrics, Duration::from_millis(600)).await, 1);
        client.write_all(request).await.expect("write");
        let got = read_response(&mut client, &mut buf).await;
        assert!(got == body, "the second response arrived changed");
        assert_eq!(resting_after(&metrics, Duration::from_millis(600)).await, 1);
        drop(client);
        assert_eq!(resting_after(&metrics, Duration::from_millis(300)).await, 0);
    }
}
