//! Large bodies over one HTTP/1.1 keep-alive connection, one at a time: uploads (`POST /` with
//! a body of N bytes; the app names the bytes it received in `x-bench-received`) and downloads
//! (`GET /bytes/N`; the bytes read here are counted). A transfer succeeds only when the byte
//! count matches exactly. Bodies are streamed in 64 KiB chunks on both sides, never held whole.
//!
//! Bounded in count (`count` transfers) and time (`deadline`: no new transfer starts after it,
//! and each transfer has its own timeout).

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Either, Empty, StreamBody};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

use super::LoadError;
use crate::app::{BYTES_PATH, RECEIVED_HEADER, SizedStream};

/// Which way the body goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Request body (app to its sidecar to the server).
    Upload,
    /// Response body.
    Download,
}

impl Direction {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
        }
    }
}

/// What to transfer.
#[derive(Debug, Clone)]
pub struct TransferSpec {
    /// Where to connect.
    pub target: SocketAddr,
    /// Host of every request.
    pub authority: String,
    /// Which way.
    pub direction: Direction,
    /// Bytes per body.
    pub size: u64,
    /// Transfers to make, one after the other.
    pub count: u32,
    /// No transfer starts after this.
    pub deadline: Instant,
    /// Bound on one transfer.
    pub timeout: Duration,
}

/// What a transfer run did.
#[derive(Debug, Clone, Default)]
pub struct TransferResult {
    /// Transfers whose byte count matched.
    pub ok: u32,
    /// Transfers that failed or came short.
    pub errors: u32,
    /// Body bytes moved by the successful transfers.
    pub bytes: u64,
    /// Wall time of all transfers, seconds.
    pub seconds: f64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

type Sender = http1::SendRequest<Either<StreamBody<SizedStream>, Empty<Bytes>>>;

async fn connect(target: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One transfer; the body bytes it moved.
async fn one(sender: &mut Sender, spec: &TransferSpec) -> Result<u64, String> {
    let request = match spec.direction {
        Direction::Upload => Request::post("/")
            .header(header::HOST, spec.authority.as_str())
            .header(header::CONTENT_LENGTH, HeaderValue::from(spec.size))
            .body(Either::Left(StreamBody::new(SizedStream::new(spec.size)))),
        Direction::Download => Request::get(format!("{BYTES_PATH}{}", spec.size))
            .header(header::HOST, spec.authority.as_str())
            .body(Either::Right(Empty::new())),
    }
    .map_err(|e| format!("build request: {e}"))?;
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let received_header = response
        .headers()
        .get(RECEIVED_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = response.into_body();
    let mut read = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("response body after {read} bytes: {e}"))?;
        if let Some(data) = frame.data_ref() {
            read += data.len() as u64;
        }
    }
    if !status.is_success() {
        return Err(format!("status {}", status.as_u16()));
    }
    let moved = match spec.direction {
        Direction::Upload => received_header.unwrap_or(0),
        Direction::Download => read,
    };
    if moved != spec.size {
        return Err(format!(
            "{} of {} bytes: {moved} arrived",
            spec.direction.name(),
            spec.size
        ));
    }
    Ok(moved)
}

/// Runs the transfers on a fresh single-threaded runtime (blocking the caller).
pub fn run(spec: &TransferSpec) -> Result<TransferResult, LoadError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(LoadError::Start)?;
    Ok(runtime.block_on(async {
        let mut result = TransferResult::default();
        let start = Instant::now();
        let mut sender: Option<Sender> = None;
        for _ in 0..spec.count {
            if Instant::now() >= spec.deadline {
                break;
            }
            let attempt = async {
                if sender.is_none() {
                    sender = Some(connect(spec.target).await?);
                }
                match sender.as_mut() {
                    Some(s) => one(s, spec).await,
                    None => Err("no connection".to_string()),
                }
            };
            let outcome = tokio::time::timeout(spec.timeout, attempt)
                .await
                .unwrap_or_else(|_| Err(format!("timed out after {:?}", spec.timeout)));
            match outcome {
                Ok(bytes) => {
                    result.ok += 1;
                    result.bytes += bytes;
                }
                Err(e) => {
                    result.errors += 1;
                    result.first_error.get_or_insert(e);
                    sender = None;
                }
            }
        }
        result.seconds = start.elapsed().as_secs_f64();
        result
    }))
}
