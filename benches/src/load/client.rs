//! One load-generator connection: HTTP/1.1 keep-alive, h2c with prior knowledge, or gRPC over h2c.
//!
//! Each [`Session`] owns one TCP connection (reopened after a failure, on the next request) and
//! sends one request at a time: the generator's open-loop schedule decides *when* a request is due,
//! and a session that is still busy sends the next one as soon as it can, its latency still counted
//! from the intended time. A response counts as a success only if it is 2xx, its body was read to
//! the end, and, for gRPC, its `grpc-status` is `0`.

use bytes::Bytes;
use clap::ValueEnum;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// What the load generator speaks to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive, `GET /`.
    Http1,
    /// Cleartext HTTP/2 with prior knowledge, `GET /`.
    H2c,
    /// gRPC unary call over h2c (`POST /meshlite.bench.Echo/Call`, framed, trailers checked).
    Grpc,
}

impl Protocol {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Path of the gRPC method the generator calls (the app answers any path).
pub const GRPC_PATH: &str = "/meshlite.bench.Echo/Call";

/// An empty gRPC message: uncompressed flag 0, length 0.
const GRPC_EMPTY_MESSAGE: [u8; 5] = [0, 0, 0, 0, 0];

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// TCP connect failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Target address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The HTTP handshake (h2 preface/settings) failed.
    #[error("handshake: {0}")]
    Handshake(hyper::Error),
    /// Sending the request or receiving the response head failed.
    #[error("request: {0}")]
    Send(hyper::Error),
    /// Reading the response body failed.
    #[error("response body: {0}")]
    Body(hyper::Error),
    /// The response status was not 2xx.
    #[error("status {0}")]
    Status(u16),
    /// The gRPC status was missing or not 0.
    #[error("grpc-status {0}")]
    Grpc(String),
    /// The request could not be built (bad authority).
    #[error("cannot build request: {0}")]
    Build(#[from] http::Error),
    /// No answer within the request timeout.
    #[error("timed out")]
    Timeout,
}

enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

/// One connection of the load generator, reconnecting lazily after a failure.
pub struct Session {
    target: SocketAddr,
    authority: String,
    protocol: Protocol,
    sender: Option<Sender>,
    /// HTTP/1.1 only: every request says `Connection: close` and the next one opens a new
    /// connection (connection churn).
    close_each: bool,
    /// Connections opened so far.
    opened: u64,
}

impl Session {
    /// A session that will connect to `target` and name `authority` in Host / `:authority`.
    pub fn new(target: SocketAddr, authority: &str, protocol: Protocol) -> Self {
        Self {
            target,
            authority: authority.to_string(),
            protocol,
            sender: None,
            close_each: false,
            opened: 0,
        }
    }

    /// The same session sending `Connection: close` on every HTTP/1.1 request, so each
    /// request opens a new connection (the first one too: nothing is opened before it).
    pub fn closing(mut self) -> Self {
        self.close_each = self.protocol == Protocol::Http1;
        self
    }

    /// Opens the connection now (the generator connects every session before the schedule starts).
    pub async fn connect(&mut self) -> Result<(), RequestError> {
        let stream =
            TcpStream::connect(self.target)
                .await
                .map_err(|source| RequestError::Connect {
                    addr: self.target,
                    source,
                })?;
        stream
            .set_nodelay(true)
            .map_err(|source| RequestError::Connect {
                addr: self.target,
                source,
            })?;
        let io = TokioIo::new(stream);
        let sender = match self.protocol {
            Protocol::Http1 => {
                let (sender, conn) = http1::handshake(io)
                    .await
                    .map_err(RequestError::Handshake)?;
                tokio::spawn(async move {
                    // The connection's end is observed through the sender; its error adds nothing.
                    let _ = conn.await;
                });
                Sender::Http1(sender)
            }
            Protocol::H2c | Protocol::Grpc => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(RequestError::Handshake)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::Http2(sender)
            }
        };
        self.sender = Some(sender);
        self.opened += 1;
        Ok(())
    }

    fn build_request(&self) -> Result<Request<Full<Bytes>>, http::Error> {
        match self.protocol {
            Protocol::Http1 if self.close_each => Request::get("/")
                .header(header::HOST, self.authority.as_str())
                .header(header::CONNECTION, HeaderValue::from_static("close"))
                .body(Full::new(Bytes::new())),
            Protocol::Http1 => Request::get("/")
                .header(header::HOST, self.authority.as_str())
                .body(Full::new(Bytes::new())),
            Protocol::H2c => {
                Request::get(format!("http://{}/", self.authority)).body(Full::new(Bytes::new()))
            }
            Protocol::Grpc => Request::post(format!("http://{}{GRPC_PATH}", self.authority))
                .header(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                )
                .header(header::TE, HeaderValue::from_static("trailers"))
                .body(Full::new(Bytes::from_static(&GRPC_EMPTY_MESSAGE))),
        }
    }

    /// Sends one request and reads the whole response. On a connection-level failure the
    /// connection is dropped and the next call reconnects.
    pub async fn request(&mut self) -> Result<(), RequestError> {
        if self.sender.is_none() {
            self.connect().await?;
        }
        let request = self.build_request()?;
        let result = self.exchange(request).await;
        if self.close_each
            || matches!(
                result,
                Err(RequestError::Send(_) | RequestError::Body(_) | RequestError::Handshake(_))
            )
        {
            self.sender = None;
        }
        result
    }

    /// Connections this session opened so far (1 for a session that kept its first one).
    pub fn opened(&self) -> u64 {
        self.opened
    }

    /// Forgets the connection (after a timeout the exchange may be stuck half-way).
    pub fn reset(&mut self) {
        self.sender = None;
    }

    async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Result<(), RequestError> {
        let response = match self.sender.as_mut() {
            Some(Sender::Http1(sender)) => {
                sender.ready().await.map_err(RequestError::Send)?;
                sender
                    .send_request(request)
                    .await
                    .map_err(RequestError::Send)?
            }
            Some(Sender::Http2(sender)) => {
                sender.ready().await.map_err(RequestError::Send)?;
                sender
                    .send_request(request)
                    .await
                    .map_err(RequestError::Send)?
            }
            None => return Err(RequestError::Timeout),
        };
        let status = response.status();
        let grpc_in_headers = response.headers().get("grpc-status").cloned();
        let collected = response
            .into_body()
            .collect()
            .await
            .map_err(RequestError::Body)?;
        if !status.is_success() {
            return Err(RequestError::Status(status.as_u16()));
        }
        if self.protocol == Protocol::Grpc {
            let grpc_status = collected
                .trailers()
                .and_then(|t| t.get("grpc-status").cloned())
                .or(grpc_in_headers);
            match grpc_status {
                Some(value) if value.as_bytes() == b"0" => {}
                Some(value) => {
                    return Err(RequestError::Grpc(
                        String::from_utf8_lossy(value.as_bytes()).into(),
                    ));
                }
                None => return Err(RequestError::Grpc("missing".into())),
            }
        }
        Ok(())
    }
}
