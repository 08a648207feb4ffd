//! The one body type that flows through the proxy in both directions.
//!
//! Requests and responses are streamed, never buffered: a body is either hyper's `Incoming`
//! (from a client, an upstream or the local app) or a small fixed body the proxy itself produced
//! (an error page). An enum instead of a boxed trait object keeps the per-request path free of an
//! allocation and a virtual call per frame.
//!
//! A request body from a client is read under a minimum rate (the slow-body guard the request
//! head's deadline does not give): while the proxy waits for it, every window must bring at
//! least `window x rate` bytes, or the body fails with [`BodyError::TooSlow`] and the client gets
//! 408. The timer exists only once a body actually makes the proxy wait; a body that arrives
//! with its head costs nothing.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// Why a body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The peer's stream failed (a malformed chunk, a reset, a closed connection).
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// A client sent its request body slower than the minimum rate.
    #[error("request body slower than {rate} bytes/s over {window:?}")]
    TooSlow {
        /// The minimum rate, bytes per second.
        rate: u32,
        /// The window it is measured over.
        window: Duration,
    },
}

/// The minimum rate a client's request body must keep while the proxy waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    /// Bytes per second; 0 turns the check off.
    pub bytes_per_sec: u32,
    /// The window the rate is measured over.
    pub window: Duration,
}

impl MinRate {
    /// No check.
    pub const OFF: MinRate = MinRate {
        bytes_per_sec: 0,
        window: Duration::from_secs(10),
    };

    fn min_bytes(&self) -> u64 {
        u64::from(self.bytes_per_sec) * self.window.as_secs().max(1)
    }
}

/// What a request body brought, read by its telemetry when the exchange ends
/// (`istio_request_bytes`, `istio_request_messages_total`, the access log's bytes received).
#[derive(Debug, Default)]
pub struct BodyCount {
    /// Data bytes.
    pub bytes: AtomicU64,
    /// gRPC messages begun (gRPC requests only).
    pub messages: AtomicU64,
}

/// A request body from a client: counted and held to a minimum rate.
#[derive(Debug)]
pub struct DownstreamBody {
    inner: Incoming,
    counter: Option<Arc<BodyCount>>,
    /// The gRPC framing, for requests whose messages are counted.
    grpc: Option<super::grpc_frames::GrpcFrames>,
    rate: MinRate,
    /// Bytes received in the current window.
    in_window: u64,
    /// The window's timer, made the first time the body keeps the proxy waiting.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Held until the body ends: its connection keeps hyper's buffers while it reads it.
    open: Option<crate::server::conn::BodyOpen>,
}

impl DownstreamBody {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if self.inner.is_end_stream() {
                    self.open = None;
                }
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    self.in_window += n;
                    if let Some(c) = &self.counter {
                        c.bytes.fetch_add(n, Ordering::Relaxed);
                        if let Some(g) = &mut self.grpc {
                            let before = g.messages();
                            g.feed(data);
                            c.messages
                                .fetch_add(g.messages() - before, Ordering::Relaxed);
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                self.open = None;
                Poll::Ready(other.map(|r| r.map_err(BodyError::from)))
            }
            Poll::Pending if self.rate.bytes_per_sec == 0 || self.rate.window.is_zero() => {
                Poll::Pending
            }
            Poll::Pending => {
                let window = self.rate.window;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(window)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if self.in_window < self.rate.min_bytes() {
                    return Poll::Ready(Some(Err(BodyError::TooSlow {
                        rate: self.rate.bytes_per_sec,
                        window,
                    })));
                }
                // A new window; the timer's waker is registered by polling it again.
                self.in_window = 0;
                timer.as_mut().reset(tokio::time::Instant::now() + window);
                if timer.as_mut().poll(cx).is_ready() {
                    // The clock moved past the whole window at once: look again right away.
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }
}

/// A streaming HTTP body.
#[derive(Debug, Default)]
pub enum ProxyBody {
    /// Streamed from a peer.
    Incoming(Incoming),
    /// A client's request body (counted, rate-checked).
    Downstream(DownstreamBody),
    /// A complete body produced by the proxy (error responses); `None` once sent.
    Full(Option<Bytes>),
    /// A request body recorded so that a retry can send it again.
    Replay(super::replay::ReplayBody),
    /// A request body copied for a mirror.
    Tee(Box<super::tee::TeeBody>),
    /// A response from a pooled HTTP/1.1 connection, which it gives back at its end.
    Pooled(crate::transport::h1_pool::PooledBody),
    /// No body.
    #[default]
    Empty,
}

impl ProxyBody {
    /// A body holding `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let b = bytes.into();
        if b.is_empty() {
            ProxyBody::Empty
        } else {
            ProxyBody::Full(Some(b))
        }
    }
}

impl ProxyBody {
    /// A client's request body: data bytes (and gRPC messages when `grpc`) counted into
    /// `counter` when one is given, held to `rate` while the proxy waits for it, `open`
    /// held until it ends.
    pub fn downstream(
        body: Incoming,
        counter: Option<Arc<BodyCount>>,
        grpc: bool,
        rate: MinRate,
        open: Option<crate::server::conn::BodyOpen>,
    ) -> Self {
        if counter.is_none() && open.is_none() && (rate.bytes_per_sec == 0 || body.is_end_stream())
        {
            return ProxyBody::Incoming(body);
        }
        ProxyBody::Downstream(DownstreamBody {
            inner: body,
            grpc: (grpc && counter.is_some()).then(Default::default),
            counter,
            rate,
            in_window: 0,
            timer: None,
            open,
        })
    }
}

impl From<Incoming> for ProxyBody {
    fn from(b: Incoming) -> Self {
        ProxyBody::Incoming(b)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let hyper_frame = |p: Poll<Option<Result<Frame<Bytes>, hyper::Error>>>| {
            p.map(|o| o.map(|r| r.map_err(BodyError::from)))
        };
        match self.get_mut() {
            ProxyBody::Incoming(b) => hyper_frame(Pin::new(b).poll_frame(cx)),
            ProxyBody::Downstream(b) => b.poll(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Replay(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Tee(b) => Pin::new(&mut **b).poll_frame(cx),
            ProxyBody::Pooled(b) => hyper_frame(Pin::new(b).poll_frame(cx)),
            ProxyBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Incoming(b) => b.is_end_stream(),
            ProxyBody::Downstream(b) => b.inner.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Replay(b) => b.is_end_stream(),
            ProxyBody::Tee(b) => b.is_end_stream(),
            ProxyBody::Pooled(b) => b.is_end_stream(),
            ProxyBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Incoming(b) => b.size_hint(),
            ProxyBody::Downstream(b) => b.inner.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Replay(b) => b.size_hint(),
            ProxyBody::Tee(b) => b.size_hint(),
            ProxyBody::Pooled(b) => b.size_hint(),
            ProxyBody::Full(None) | ProxyBody::Empty => SizeHint::with_exact(0),
        }
    }
}
