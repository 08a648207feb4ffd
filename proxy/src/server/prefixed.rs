//! A connection whose first bytes were already read (to see what it speaks): they are
//! replayed to whoever reads it next, then reads go to the socket.

use bytes::{Buf, Bytes};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Moves as much of `prefix` into `buf` as fits; `false` when there was nothing to replay.
/// Once replayed whole, the prefix's memory is given back: it is never needed again.
pub fn replay(prefix: &mut Bytes, buf: &mut ReadBuf<'_>) -> bool {
    if prefix.is_empty() {
        return false;
    }
    let n = prefix.len().min(buf.remaining());
    buf.put_slice(&prefix[..n]);
    prefix.advance(n);
    if prefix.is_empty() {
        *prefix = Bytes::new();
    }
    true
}

pin_project_lite::pin_project! {
    /// `io` with `prefix` in front of its read side.
    pub struct Prefixed<IO> {
        prefix: Bytes,
        #[pin]
        io: IO,
    }
}

impl<IO> Prefixed<IO> {
    /// Replays `prefix` before reading from `io`.
    pub fn new(prefix: Vec<u8>, io: IO) -> Self {
        Self {
            prefix: prefix.into(),
            io,
        }
    }

    /// The underlying connection.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead> AsyncRead for Prefixed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        if replay(this.prefix, buf) {
            return Poll::Ready(Ok(()));
        }
        this.io.poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite> AsyncWrite for Prefixed<IO> {
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
        self.project().io.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_prefix_comes_first_then_the_socket() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b" world").await.unwrap();
        drop(b);
        let mut p = Prefixed::new(b"hello".to_vec(), a);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
