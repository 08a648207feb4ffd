//! Request bodies kept for a retry: the first attempt streams the body as it arrives and
//! records the chunks (reference-counted `Bytes`, not copies); a retry plays the recording back,
//! then goes on reading the client where the previous attempt stopped. Past
//! [`MAX_REPLAY_BYTES`] the recording is dropped and the request is no longer retried (Envoy
//! buffers for retries up to a bound the same way), so a large upload streams with flat
//! memory whatever the retry policy.
//!
//! Only the newest attempt reads: making a replay retires the previous attempt's body (a
//! failed stream that hyper may still poll gets end-of-stream), so the client's body is
//! never split between two attempts. The lock is uncontended and held for one frame.

use super::body::BodyError;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use super::body::ProxyBody;

/// The most request body bytes kept for a retry.
pub const MAX_REPLAY_BYTES: usize = 64 * 1024;

#[derive(Debug)]
struct Recording {
    /// The client's body, `None` once it ended.
    source: Option<ProxyBody>,
    chunks: Vec<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
    /// Recording stopped: too large, or the client's body failed.
    unreplayable: bool,
    /// The attempt allowed to read; older ones are retired.
    generation: u64,
}

/// One attempt's view of a recorded request body.
#[derive(Debug)]
pub struct ReplayBody {
    rec: Arc<Mutex<Recording>>,
    /// Next recorded chunk this attempt sends.
    next: usize,
    trailers_sent: bool,
    hint: SizeHint,
    generation: u64,
}

/// Makes replays of a recorded body without being one: kept beside the first attempt to
/// rebuild the request for a retry.
#[derive(Debug)]
pub struct ReplayHandle {
    rec: Arc<Mutex<Recording>>,
    hint: SizeHint,
}

impl ReplayHandle {
    /// A body for another attempt, from the start, retiring the previous attempt's; `None`
    /// when the recording was dropped (the body was too large, or the client's body failed).
    pub fn replay(&self) -> Option<ReplayBody> {
        let mut rec = self.rec.lock().unwrap_or_else(|p| p.into_inner());
        if rec.unreplayable {
            return None;
        }
        rec.generation += 1;
        Some(ReplayBody {
            rec: self.rec.clone(),
            next: 0,
            trailers_sent: false,
            hint: self.hint,
            generation: rec.generation,
        })
    }
}

impl ReplayBody {
    /// Wraps the client's body for the first attempt.
    pub fn new(source: ProxyBody) -> Self {
        let hint = source.size_hint();
        Self {
            rec: Arc::new(Mutex::new(Recording {
                source: Some(source),
                chunks: Vec::new(),
                len: 0,
                trailers: None,
                unreplayable: false,
                generation: 0,
            })),
            next: 0,
            trailers_sent: false,
            hint,
            generation: 0,
        }
    }

    /// The handle that makes replays of this body.
    pub fn handle(&self) -> ReplayHandle {
        ReplayHandle {
            rec: self.rec.clone(),
            hint: self.hint,
        }
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let mut rec = this.rec.lock().unwrap_or_else(|p| p.into_inner());
        if rec.generation != this.generation {
            return Poll::Ready(None);
        }
        if !rec.unreplayable
            && let Some(chunk) = rec.chunks.get(this.next)
        {
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        let Some(source) = rec.source.as_mut() else {
            if !this.trailers_sent
                && let Some(t) = &rec.trailers
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
            }
            return Poll::Ready(None);
        };
        let polled = Pin::new(source).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !rec.unreplayable {
                        rec.len += data.len();
                        if rec.len > MAX_REPLAY_BYTES {
                            rec.unreplayable = true;
                            rec.chunks = Vec::new();
                        } else {
                            rec.chunks.push(data.clone());
                            this.next = rec.chunks.len();
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    rec.trailers = Some(t.clone());
                    this.trailers_sent = true;
                    rec.source = None;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                rec.unreplayable = true;
                rec.source = None;
            }
            Poll::Ready(None) => rec.source = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let rec = self.rec.lock().unwrap_or_else(|p| p.into_inner());
        if rec.generation != self.generation {
            return true;
        }
        let replayed_all = rec.unreplayable || self.next >= rec.chunks.len();
        replayed_all
            && rec.source.as_ref().is_none_or(Body::is_end_stream)
            && (self.trailers_sent || rec.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn collect(b: ReplayBody) -> (Vec<u8>, Option<HeaderMap>) {
        let c = ProxyBody::Replay(b).collect().await.expect("body");
        let trailers = c.trailers().cloned();
        (c.to_bytes().to_vec(), trailers)
    }

    #[tokio::test]
    async fn a_replay_sends_what_the_first_attempt_sent() {
        let first = ReplayBody::new(ProxyBody::full("hello"));
        let handle = first.handle();
        assert_eq!(collect(first).await.0, b"hello");
        assert_eq!(
            collect(handle.replay().expect("replayable")).await.0,
            b"hello"
        );
        assert_eq!(collect(handle.replay().expect("again")).await.0, b"hello");
    }

    #[tokio::test]
    async fn a_replay_made_before_the_end_continues_from_the_source() {
        let first = ReplayBody::new(ProxyBody::full("abc"));
        let again = first.handle().replay().expect("replayable");
        // The first attempt never read anything: the replay reads the source itself, and
        // the retired first attempt reads nothing more.
        assert_eq!(collect(again).await.0, b"abc");
        assert_eq!(collect(first).await.0, b"");
    }

    #[tokio::test]
    async fn a_body_over_the_bound_streams_whole_but_is_not_replayable() {
        let big = vec![7u8; MAX_REPLAY_BYTES + 1];
        let first = ReplayBody::new(ProxyBody::full(big.clone()));
        let (got, _) = collect(first).await;
        assert_eq!(got, big);
        let first = ReplayBody::new(ProxyBody::full(big));
        let handle = first.handle();
        let _ = collect(first).await;
        assert!(
            handle.replay().is_none(),
            "recording dropped past the bound"
        );
    }
}
