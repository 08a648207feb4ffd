//! Deterministic payloads for large streamed bodies.
//!
//! Byte `i` of every payload is `i % 251` (a prime, so the pattern never lines up with chunk or
//! frame sizes and a dropped, duplicated or reordered chunk is caught). Bodies are produced and
//! checked chunk by chunk, so neither the test nor the apps ever hold a whole body in memory.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

/// Pattern period.
const PERIOD: usize = 251;

/// Size of each produced chunk.
pub const CHUNK: usize = 64 * 1024;

/// `CHUNK + PERIOD` pattern bytes: any chunk at any offset is a slice of it.
fn table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| (0..CHUNK + PERIOD).map(|i| (i % PERIOD) as u8).collect())
}

/// The pattern bytes `[offset, offset + len)`; `len` is at most [`CHUNK`].
pub fn chunk_at(offset: u64, len: usize) -> Bytes {
    assert!(len <= CHUNK, "chunk too large");
    let start = (offset % PERIOD as u64) as usize;
    Bytes::from_static(&table()[start..start + len])
}

/// A request or response body of `len` pattern bytes, produced lazily.
#[derive(Debug)]
pub struct PatternBody {
    sent: u64,
    len: u64,
    exact: bool,
}

impl PatternBody {
    /// A body whose length is announced (`content-length` on HTTP/1.1).
    pub fn sized(len: u64) -> Self {
        Self {
            sent: 0,
            len,
            exact: true,
        }
    }

    /// A body of unknown length (chunked on HTTP/1.1).
    pub fn streamed(len: u64) -> Self {
        Self {
            sent: 0,
            len,
            exact: false,
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let left = self.len - self.sent;
        if left == 0 {
            return Poll::Ready(None);
        }
        let n = left.min(CHUNK as u64) as usize;
        let data = chunk_at(self.sent, n);
        self.sent += n as u64;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.len
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.len - self.sent)
        } else {
            SizeHint::default()
        }
    }
}

/// Checks received bytes against the pattern, chunk by chunk.
#[derive(Debug, Default)]
pub struct PatternCheck {
    /// Bytes seen so far.
    pub received: u64,
    /// Offset of the first byte that did not match, if any.
    pub first_mismatch: Option<u64>,
}

impl PatternCheck {
    /// Feeds the next received bytes.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = data.len().min(CHUNK);
            if self.first_mismatch.is_none() && chunk_at(self.received, n) != data[..n] {
                let expected = chunk_at(self.received, n);
                let at = expected
                    .iter()
                    .zip(&data[..n])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                self.first_mismatch = Some(self.received + at as u64);
            }
            self.received += n as u64;
            data = &data[n..];
        }
    }

    /// True when every byte matched and exactly `len` bytes arrived.
    pub fn is_intact(&self, len: u64) -> bool {
        self.first_mismatch.is_none() && self.received == len
    }
}
