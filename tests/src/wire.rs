//! Raw HTTP/1.1 on a TCP socket.
//!
//! Well-behaved clients refuse to send malformed requests, oversized heads, byte-at-a-time
//! headers or hand-framed chunked bodies, so the tests that need those write bytes themselves and
//! read the answer with this small reader. Every read is bounded by a deadline.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound on a response head this reader accepts.
const MAX_HEAD: usize = 256 * 1024;

/// A parsed response head.
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header names (lowercased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (empty for interim responses).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What happened when a test waited for the peer to close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The peer closed (EOF or reset); `bytes` is whatever it sent first (e.g. a 408 response).
    Yes {
        /// Bytes received before the close.
        bytes: Vec<u8>,
    },
    /// Still open when the deadline passed.
    StillOpen,
}

/// A client connection that writes raw bytes and parses HTTP/1.1 responses.
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects to `addr`.
    ///
    /// # Panics
    /// If the connection fails.
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Self::over(stream)
    }

    fn over(stream: TcpStream) -> Self {
        stream.set_nodelay(true).ok();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects to `addr` with a receive buffer of about `recv_buffer` bytes, so that a
    /// response the test does not read soon fills the sender's buffers quickly.
    ///
    /// # Panics
    /// If the socket cannot be made or the connection fails.
    pub async fn connect_with_recv_buffer(addr: SocketAddr, recv_buffer: u32) -> Self {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("socket");
        socket.set_recv_buffer_size(recv_buffer).expect("SO_RCVBUF");
        let stream = socket
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Self::over(stream)
    }

    /// Writes all of `bytes`.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads one complete response (head and body, framed by content-length, chunked encoding or
    /// close). Interim (1xx) responses are returned on their own, without a body.
    ///
    /// # Panics
    /// When the deadline passes, the head is unparsable, or the peer closes before a response.
    pub async fn read_response(&mut self, within: Duration) -> RawResponse {
        tokio::time::timeout(within, self.read_response_inner())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no complete response within {within:?}; got so far: {:?}",
                    self.peek_text()
                )
            })
            .unwrap_or_else(|e| panic!("reading response: {e}; got so far: {:?}", self.peek_text()))
    }

    /// Like [`RawConn::read_response`] but returns `None` instead of panicking when the peer
    /// closes or resets before sending a complete response.
    pub async fn try_read_response(&mut self, within: Duration) -> Option<RawResponse> {
        tokio::time::timeout(within, self.read_response_inner())
            .await
            .unwrap_or_else(|_| panic!("no response or close within {within:?}"))
            .ok()
    }

    fn peek_text(&self) -> String {
        String::from_utf8_lossy(&self.buf[..self.buf.len().min(2048)]).into_owned()
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn read_response_inner(&mut self) -> std::io::Result<RawResponse> {
        let (status, headers, head_len) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 128];
            let mut parsed = httparse::Response::new(&mut slots);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = parsed.code.unwrap_or(0);
                    let headers = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>();
                    break (status, headers, len);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(std::io::Error::other(format!("bad response head: {e}"))),
            }
            if self.buf.len() > MAX_HEAD {
                return Err(std::io::Error::other("response head too large"));
            }
            if self.fill().await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before a complete response head",
                ));
            }
        };
        self.buf.drain(..head_len);
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(response);
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            response.body = self.read_chunked().await?;
        } else if let Some(len) = response.header("content-length") {
            let len: usize = len
                .trim()
                .parse()
                .map_err(|_| std::io::Error::other(format!("bad content-length {len:?}")))?;
            while self.buf.len() < len {
                if self.fill().await? == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "short body",
                    ));
                }
            }
            response.body = self.buf.drain(..len).collect();
        } else {
            // Close-delimited body.
            while self.fill().await.unwrap_or(0) != 0 {}
            response.body = std::mem::take(&mut self.buf);
        }
        Ok(response)
    }

    async fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                // Trailers, then an empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            while self.buf.len() < size + 2 {
                if self.fill().await? == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "short chunk",
                    ));
                }
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    async fn read_line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(std::io::Error::other("line too long"));
            }
            if self.fill().await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed mid-line",
                ));
            }
        }
    }

    /// Reads until the peer closes or resets the connection, up to `within`.
    pub async fn wait_closed(&mut self, within: Duration) -> Closed {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Err(_) => return Closed::StillOpen,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return Closed::Yes {
                        bytes: std::mem::take(&mut self.buf),
                    };
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Checks whether the peer has closed, without waiting: true if a read returns EOF or an
    /// error right now. Data that arrives is kept for the next read.
    pub async fn is_closed_now(&mut self) -> bool {
        match tokio::time::timeout(Duration::from_millis(1), self.fill()).await {
            Err(_) => false,
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => false,
        }
    }
}
