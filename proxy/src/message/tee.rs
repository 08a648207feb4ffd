//! A request body copied for a mirror (VirtualService `mirror`): the original streams on
//! untouched while its chunks (reference-counted `Bytes`, not copies) are kept; when it ends,
//! the whole body goes to the shadow request, as Envoy shadows a request once its body is
//! complete. Past [`MAX_MIRROR_BYTES`], or if the client's body fails, the copy is dropped and
//! the shadow request is not sent: a mirror never slows, buffers without bound or alters the
//! original.

use super::body::BodyError;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

use super::body::ProxyBody;

/// The most body bytes kept for a shadow request.
pub const MAX_MIRROR_BYTES: usize = 64 * 1024;

/// Called with the complete body once the original has been read to its end.
pub type OnComplete = Box<dyn FnOnce(Bytes) + Send + Sync>;

/// The original body, with a copy on the side.
pub struct TeeBody {
    inner: ProxyBody,
    kept: Vec<Bytes>,
    len: usize,
    on_complete: Option<OnComplete>,
}

impl std::fmt::Debug for TeeBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeeBody")
            .field("kept", &self.len)
            .field("mirroring", &self.on_complete.is_some())
            .finish()
    }
}

impl TeeBody {
    /// Copies `inner` for `on_complete`.
    pub fn new(inner: ProxyBody, on_complete: OnComplete) -> Self {
        Self {
            inner,
            kept: Vec::new(),
            len: 0,
            on_complete: Some(on_complete),
        }
    }

    fn complete(&mut self) {
        if let Some(done) = self.on_complete.take() {
            let mut body = BytesMut::with_capacity(self.len);
            for chunk in self.kept.drain(..) {
                body.extend_from_slice(&chunk);
            }
            done(body.freeze());
        }
    }

    fn give_up(&mut self) {
        self.on_complete = None;
        self.kept = Vec::new();
    }
}

impl Body for TeeBody {
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
                if let Some(data) = frame.data_ref()
                    && this.on_complete.is_some()
                {
                    this.len += data.len();
                    if this.len > MAX_MIRROR_BYTES {
                        this.give_up();
                    } else {
                        this.kept.push(data.clone());
                    }
                }
                if this.inner.is_end_stream() {
                    this.complete();
                }
            }
            Poll::Ready(Some(Err(_))) => this.give_up(),
            Poll::Ready(None) => this.complete(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    fn tee(body: ProxyBody) -> (TeeBody, Arc<Mutex<Option<Bytes>>>) {
        let got = Arc::new(Mutex::new(None));
        let sink = got.clone();
        let t = TeeBody::new(
            body,
            Box::new(move |b| {
                *sink.lock().unwrap() = Some(b);
            }),
        );
        (t, got)
    }

    #[tokio::test]
    async fn the_copy_is_handed_over_when_the_original_ends() {
        let (t, got) = tee(ProxyBody::full("payload"));
        let original = ProxyBody::Tee(Box::new(t))
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(original, "payload");
        assert_eq!(got.lock().unwrap().as_deref(), Some(&b"payload"[..]));
    }

    #[tokio::test]
    async fn a_body_over_the_bound_is_not_mirrored_but_passes_whole() {
        let big = vec![1u8; MAX_MIRROR_BYTES + 1];
        let (t, got) = tee(ProxyBody::full(big.clone()));
        let original = ProxyBody::Tee(Box::new(t))
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(original.len(), big.len());
        assert!(got.lock().unwrap().is_none());
    }
}
