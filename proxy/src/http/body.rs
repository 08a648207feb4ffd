//! The one body type that flows through the proxy in both directions.
//!
//! Requests and responses are streamed, never buffered: a body is either hyper's `Incoming`
//! (from a client, an upstream or the local app) or a small fixed body the proxy itself produced
//! (an error page). An enum instead of a boxed trait object keeps the per-request path free of an
//! allocation and a virtual call per frame.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

/// A streaming HTTP body.
#[derive(Debug, Default)]
pub enum ProxyBody {
    /// Streamed from a peer.
    Incoming(Incoming),
    /// Streamed from a peer, counting data bytes into the counter (for the access log's
    /// `bytes_received`; only used when the access log is on).
    Counted(Incoming, Arc<AtomicU64>),
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
    /// `body`, counting its data bytes into `counter` when one is given.
    pub fn counted(body: Incoming, counter: Option<Arc<AtomicU64>>) -> Self {
        match counter {
            Some(c) => ProxyBody::Counted(body, c),
            None => ProxyBody::Incoming(body),
        }
    }
}

impl From<Incoming> for ProxyBody {
    fn from(b: Incoming) -> Self {
        ProxyBody::Incoming(b)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Incoming(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Counted(b, counter) => {
                let polled = Pin::new(b).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled
                    && let Some(data) = frame.data_ref()
                {
                    counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                polled
            }
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Replay(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Tee(b) => Pin::new(&mut **b).poll_frame(cx),
            ProxyBody::Pooled(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Incoming(b) | ProxyBody::Counted(b, _) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Replay(b) => b.is_end_stream(),
            ProxyBody::Tee(b) => b.is_end_stream(),
            ProxyBody::Pooled(b) => b.is_end_stream(),
            ProxyBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Incoming(b) | ProxyBody::Counted(b, _) => b.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Replay(b) => b.size_hint(),
            ProxyBody::Tee(b) => b.size_hint(),
            ProxyBody::Pooled(b) => b.size_hint(),
            ProxyBody::Full(None) | ProxyBody::Empty => SizeHint::with_exact(0),
        }
    }
}
