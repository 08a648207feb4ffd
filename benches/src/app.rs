//! The upstream application the benchmark calls: a fixed 200 with an N-byte body.
//!
//! It is a hyper 1 server on a single-threaded runtime (one worker, like the one-worker nginx of
//! the recorded baseline) that detects HTTP/1.1 or h2c per connection (hyper-util's auto builder).
//! A gRPC request (`content-type: application/grpc...`) gets one gRPC-framed message of N bytes
//! and the trailer `grpc-status: 0`. It runs as a separate process (`meshlite-bench app`), prints
//! its bound address as one JSON line, and exits on SIGTERM or when its stdin closes, so it never
//! outlives the benchmark that started it.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::cli::AppArgs;

/// The message the app prints once it listens.
pub const LISTENING_MSG: &str = "meshlite-bench app listening";

/// Why the app could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The runtime could not be built.
    #[error("cannot start the app's runtime: {0}")]
    Runtime(std::io::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Printing the listening line failed (stdout closed).
    #[error("cannot announce the listening address: {0}")]
    Announce(std::io::Error),
    /// Installing the SIGTERM handler failed.
    #[error("cannot install the SIGTERM handler: {0}")]
    Signal(std::io::Error),
}

type GrpcStream = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;
type AppBody = Either<Full<Bytes>, StreamBody<GrpcStream>>;

/// The prepared responses (bodies are cloned, not rebuilt, per request).
#[derive(Clone)]
struct Responses {
    body: Bytes,
    grpc_message: Bytes,
    grpc_trailers: HeaderMap,
}

impl Responses {
    fn new(payload: usize) -> Self {
        let body = Bytes::from(vec![b'x'; payload]);
        let mut framed = BytesMut::with_capacity(payload + 5);
        framed.put_u8(0);
        framed.put_u32(u32::try_from(payload).unwrap_or(u32::MAX));
        framed.put_slice(&body);
        let mut grpc_trailers = HeaderMap::new();
        grpc_trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Self {
            body,
            grpc_message: framed.freeze(),
            grpc_trailers,
        }
    }

    fn answer(&self, is_grpc: bool) -> Response<AppBody> {
        let mut response = if is_grpc {
            let frames = vec![
                Ok(Frame::data(self.grpc_message.clone())),
                Ok(Frame::trailers(self.grpc_trailers.clone())),
            ];
            let mut r = Response::new(Either::Right(StreamBody::new(futures_util::stream::iter(
                frames,
            ))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            r
        } else {
            let mut r = Response::new(Either::Left(Full::new(self.body.clone())));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        };
        *response.status_mut() = StatusCode::OK;
        response
    }
}

async fn handle(
    request: Request<Incoming>,
    responses: Responses,
) -> Result<Response<AppBody>, Infallible> {
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    // Read the request to its end, as a real app would; a broken body still gets the answer.
    let _ = request.into_body().collect().await;
    Ok(responses.answer(is_grpc))
}

/// Serves connections from `listener` until the future is dropped.
pub async fn serve(listener: TcpListener, payload: usize) {
    let responses = Responses::new(payload);
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // EMFILE and the like: back off briefly instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let responses = responses.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, responses.clone()));
            // A client that goes away mid-request is normal during shutdown.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Runs the app process: binds, prints `{"msg":..., "addr":...}`, serves until SIGTERM or EOF on
/// stdin.
pub fn run(args: &AppArgs) -> Result<(), AppError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AppError::Runtime)?;
    runtime.block_on(async {
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: args.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| AppError::Bind {
            addr: args.listen,
            source,
        })?;
        let line = serde_json::json!({ "msg": LISTENING_MSG, "addr": addr.to_string() });
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .map_err(AppError::Announce)?;
        drop(stdout);

        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(AppError::Signal)?;
        let stdin_closed = async {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            // Any read result but data means the parent is gone.
            while let Ok(n) = stdin.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::select! {
            () = serve(listener, args.payload) => {}
            _ = term.recv() => {}
            () = stdin_closed => {}
        }
        Ok(())
    })
}
