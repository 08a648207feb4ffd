//! Small writes as one buffer: hyper hands an HTTP/1.1 message over as slices (the head, then
//! each body chunk), which a socket would send with `writev` and rustls would first collect
//! into a new vector. Below a few KiB the slices are copied together and written once, so a
//! TCP socket makes one `send` (cheaper on loopback than `writev`'s VFS path) and TLS makes its
//! record from one slice; larger messages keep the vectored write and are not copied.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Messages up to this size that arrive in pieces are copied together and written as one.
const COALESCE_MAX: usize = 4096;

/// Writes `bufs` to `io` as one plain write when they are one buffer or small together (joined
/// in `scratch`, the connection's own buffer, which keeps its capacity); otherwise as a
/// vectored write.
pub fn poll_write_coalesced<IO: AsyncWrite>(
    io: Pin<&mut IO>,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
    scratch: &mut Vec<u8>,
) -> Poll<std::io::Result<usize>> {
    let mut parts = bufs.iter().filter(|b| !b.is_empty());
    let (Some(first), second) = (parts.next(), parts.next()) else {
        return io.poll_write(cx, &[]);
    };
    let Some(second) = second else {
        return io.poll_write(cx, first);
    };
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    if total > COALESCE_MAX {
        return io.poll_write_vectored(cx, bufs);
    }
    scratch.clear();
    scratch.reserve(total);
    for part in [first, second].into_iter().chain(parts) {
        scratch.extend_from_slice(part);
    }
    io.poll_write(cx, scratch)
}

pin_project_lite::pin_project! {
    /// An upstream connection whose small vectored writes go out as one
    /// ([`poll_write_coalesced`]); reads pass through.
    #[derive(Debug)]
    pub struct Coalesced<IO> {
        #[pin]
        io: IO,
        scratch: Vec<u8>,
    }
}

impl<IO> Coalesced<IO> {
    /// Wraps `io`.
    pub fn new(io: IO) -> Self {
        Self {
            io,
            scratch: Vec::new(),
        }
    }
}

impl<IO: AsyncRead> AsyncRead for Coalesced<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite> AsyncWrite for Coalesced<IO> {
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
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        poll_write_coalesced(this.io, cx, bufs, this.scratch)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A writer that records each write it is given and whether it was vectored.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        vectored: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.vectored += 1;
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = all.len();
            self.writes.push(all);
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_small_head_and_body_go_out_as_one_plain_write_a_large_one_vectored() {
        let mut w = Coalesced::new(Recorder::default());
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
        let slices = [
            IoSlice::new(head),
            IoSlice::new(&[]),
            IoSlice::new(b"hello"),
        ];
        let n = w.write_vectored(&slices).await.unwrap();
        assert_eq!(n, head.len() + 5);
        assert_eq!(w.io.vectored, 0);
        assert_eq!(w.io.writes, vec![[&head[..], b"hello"].concat()]);

        let big = vec![7u8; COALESCE_MAX];
        let n = w
            .write_vectored(&[IoSlice::new(head), IoSlice::new(&big)])
            .await
            .unwrap();
        assert_eq!(n, head.len() + big.len());
        assert_eq!(w.io.vectored, 1);
        w.flush().await.unwrap();
    }
}
