//! The upstream application the benchmark calls: a fixed 200 with an N-byte body.
//!
//! It is a hyper 1 server on a single-threaded runtime (one worker, like the one-worker nginx of
//! the recorded baseline) that detects HTTP/1.1 or h2c per connection (hyper-util's auto builder).
//! A gRPC request (`content-type: application/grpc...`) gets one gRPC-framed message of N bytes
//! and the trailer `grpc-status: 0`. It runs as a separate process (`meshlite-bench app`), prints
//! its bound address as one JSON line, and exits on SIGTERM or when its stdin closes, so it never
//! outlives the benchmark that started it.
//!
//! For the scenarios with more than one service it can also:
//! - fan out (`--call HOST=ADDR`, repeatable): before answering, call every downstream service
//!   concurrently with `GET /` and `Host: HOST` at ADDR (its own sidecar's outbound port in a mesh,
//!   the downstream app itself without one, or a name such as `reviews:9080` that the system
//!   resolves on each new connection, for transparent capture) over pooled HTTP/1.1 keep-alive
//!   connections, as an app calling its dependencies would; a downstream failure makes the
//!   answer a 502;
//! - fail on command: `GET /__bench/fail/503` makes every later request answer 503
//!   (`/__bench/fail/0` heals), the chaos scenario's misbehaving backend;
//! - count: `GET /__bench/stats` answers [`AppStats`] as JSON (requests received, failures
//!   answered, downstream calls), the "what did the upstream really receive" of a scenario.
//!
//! For the `connections` scenario's bodies it also:
//! - answers `GET /bytes/N` with a body of exactly N bytes, streamed in chunks (a 100 MiB
//!   answer is never held in memory);
//! - reads every request body to its end without keeping it, and names the byte count it
//!   received in the response header `x-bench-received` when there was a body.
//!
//! Paths under `/__bench/` are the benchmark's own and are never counted as requests.

pub mod handle;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Either, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::cli::AppArgs;

/// The message the app prints once it listens.
pub const LISTENING_MSG: &str = "meshlite-bench app listening";

/// Prefix of the benchmark's own paths (switches and counters); never counted as requests.
pub const CONTROL_PREFIX: &str = "/__bench/";
/// `GET` answers the app's [`AppStats`] as JSON.
pub const STATS_PATH: &str = "/__bench/stats";
/// `GET /__bench/fail/NNN` makes every later request answer status NNN; `.../fail/0` heals.
pub const FAIL_PATH: &str = "/__bench/fail/";
/// `GET /bytes/N` answers exactly N bytes.
pub const BYTES_PATH: &str = "/bytes/";
/// Response header naming how many request body bytes the app received (when there were any).
pub const RECEIVED_HEADER: &str = "x-bench-received";
/// Size of one chunk of a streamed `/bytes/N` answer.
const STREAM_CHUNK: usize = 64 * 1024;
/// Default bound on one downstream call of a fanning-out app.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// A downstream service's Host is not a valid header value or URI authority.
    #[error("--call {0}: not a usable host")]
    Downstream(String),
}

/// One downstream service a fanning-out app calls: `Host` to name and address to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downstream {
    /// `Host` header of the call (`catalog:8080`): the service, as the sidecar routes it.
    pub host: String,
    /// Where to connect, `HOST:PORT`: the app's sidecar's outbound port, the downstream app
    /// directly, or a name resolved on each new connection (`reviews:9080`).
    pub addr: String,
}

impl Downstream {
    /// The command-line form, `HOST=ADDR`.
    pub fn to_arg(&self) -> String {
        format!("{}={}", self.host, self.addr)
    }
}

/// Why a `--call` argument was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not HOST=ADDR (e.g. `catalog:8080=127.0.0.1:15001` or `catalog:8080=catalog:8080`)"
)]
pub struct DownstreamParseError(String);

/// Parses `HOST=ADDR` (`--call`).
pub fn parse_downstream(text: &str) -> Result<Downstream, DownstreamParseError> {
    let bad = || DownstreamParseError(text.to_string());
    let (host, addr) = text.split_once('=').ok_or_else(bad)?;
    if host.is_empty() || HeaderValue::from_str(host).is_err() {
        return Err(bad());
    }
    // An IP address and port, or a name and port that make a URI authority.
    let named = addr
        .rsplit_once(':')
        .is_some_and(|(name, port)| !name.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
        && addr.parse::<http::uri::Authority>().is_ok();
    if addr.parse::<SocketAddr>().is_err() && !named {
        return Err(bad());
    }
    Ok(Downstream {
        host: host.to_string(),
        addr: addr.to_string(),
    })
}

/// The app's counters, as `GET /__bench/stats` answers them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AppStats {
    /// Requests received (paths under `/__bench/` excluded), failed ones included.
    pub requests: u64,
    /// Requests answered with the injected failure status.
    pub failed: u64,
    /// Downstream calls made (fan-out).
    pub calls: u64,
    /// Downstream calls that failed (transport error, timeout or non-2xx).
    pub call_errors: u64,
    /// The injected failure status, 0 when healthy.
    pub failing_status: u16,
    /// Time from the failure switch to the last failure answered, ms (`None`: none yet).
    pub last_failure_after_ms: Option<f64>,
}

type GrpcStream = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;
type AppBody = Either<Either<Full<Bytes>, StreamBody<GrpcStream>>, StreamBody<SizedStream>>;

/// The chunks of a `/bytes/N` answer: one shared chunk handed out (cloned, not copied) until N
/// bytes went, the last one cut to size.
pub struct SizedStream {
    chunk: Bytes,
    left: u64,
}

impl SizedStream {
    /// `size` bytes of `x`.
    pub fn new(size: u64) -> Self {
        Self {
            chunk: Bytes::from(vec![b'x'; STREAM_CHUNK]),
            left: size,
        }
    }
}

impl futures_util::Stream for SizedStream {
    type Item = Result<Frame<Bytes>, Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let take = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(self.chunk.len());
        self.left -= take as u64;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..take)))))
    }
}

/// An answer of exactly `size` bytes, streamed, with its `content-length`.
fn sized(size: u64) -> Response<AppBody> {
    let mut r = Response::new(Either::Right(StreamBody::new(SizedStream::new(size))));
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

/// Reads a request body to its end without keeping it; the bytes received (a broken body
/// counts what arrived).
async fn drain(mut body: Incoming) -> u64 {
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    received += data.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    received
}

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
            let mut r = Response::new(Either::Left(Either::Right(StreamBody::new(
                futures_util::stream::iter(frames),
            ))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            r
        } else {
            let mut r = Response::new(Either::Left(Either::Left(Full::new(self.body.clone()))));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        };
        *response.status_mut() = StatusCode::OK;
        response
    }
}

/// A short text response with `status`.
fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<AppBody> {
    let mut r = Response::new(Either::Left(Either::Left(Full::new(body.into()))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// The counters and the failure switch (atomics: the runtime is single-threaded, but tasks are
/// `Send`).
struct Counters {
    started: Instant,
    requests: AtomicU64,
    failed: AtomicU64,
    calls: AtomicU64,
    call_errors: AtomicU64,
    failing_status: AtomicU16,
    /// Nanoseconds since `started` (+1, 0 = never) of the failure switch and the last failure.
    fail_since_ns: AtomicU64,
    last_failure_ns: AtomicU64,
}

impl Counters {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            requests: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            call_errors: AtomicU64::new(0),
            failing_status: AtomicU16::new(0),
            fail_since_ns: AtomicU64::new(0),
            last_failure_ns: AtomicU64::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn snapshot(&self) -> AppStats {
        let since = self.fail_since_ns.load(Ordering::Relaxed);
        let last = self.last_failure_ns.load(Ordering::Relaxed);
        AppStats {
            requests: self.requests.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
            call_errors: self.call_errors.load(Ordering::Relaxed),
            failing_status: self.failing_status.load(Ordering::Relaxed),
            last_failure_after_ms: last_failure_after_ms(since, last),
        }
    }

    fn set_failing(&self, status: u16) {
        self.fail_since_ns.store(
            if status == 0 { 0 } else { self.now_ns() },
            Ordering::Relaxed,
        );
        self.last_failure_ns.store(0, Ordering::Relaxed);
        self.failing_status.store(status, Ordering::Relaxed);
    }
}

/// Time from the switch to the last failure in ms, from the two stamps (0 = never).
fn last_failure_after_ms(since_ns: u64, last_ns: u64) -> Option<f64> {
    (since_ns != 0 && last_ns >= since_ns).then(|| (last_ns - since_ns) as f64 / 1e6)
}

/// Downstream calls of a fanning-out app.
struct FanOut {
    client: Client<HttpConnector, Empty<Bytes>>,
    targets: Vec<(Uri, HeaderValue)>,
    timeout: Duration,
}

impl FanOut {
    fn new(calls: &[Downstream], timeout: Duration) -> Result<Option<Self>, AppError> {
        if calls.is_empty() {
            return Ok(None);
        }
        let targets = calls
            .iter()
            .map(|d| {
                let uri: Uri = format!("http://{}/", d.addr)
                    .parse()
                    .map_err(|_| AppError::Downstream(d.to_arg()))?;
                let host =
                    HeaderValue::from_str(&d.host).map_err(|_| AppError::Downstream(d.to_arg()))?;
                Ok((uri, host))
            })
            .collect::<Result<Vec<_>, AppError>>()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Some(Self {
            client,
            targets,
            timeout,
        }))
    }

    /// One `GET /` to one downstream, read to the end; `Err` names what went wrong.
    async fn call(&self, uri: &Uri, host: &HeaderValue) -> Result<(), String> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = uri.clone();
        request.headers_mut().insert(header::HOST, host.clone());
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{host:?}: {e}"))?;
            let status = response.status();
            response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{host:?}: body: {e}"))?;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("{host:?}: status {}", status.as_u16()))
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("{host:?}: timed out"))?
    }

    /// Calls every downstream concurrently; the first failure, if any.
    async fn call_all(&self, counters: &Counters) -> Result<(), String> {
        let outcomes = futures_util::future::join_all(
            self.targets.iter().map(|(uri, host)| self.call(uri, host)),
        )
        .await;
        let calls = outcomes.len() as u64;
        counters.calls.fetch_add(calls, Ordering::Relaxed);
        let mut first = None;
        for outcome in outcomes {
            if let Err(e) = outcome {
                counters.call_errors.fetch_add(1, Ordering::Relaxed);
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Everything a request handler needs.
struct AppState {
    responses: Responses,
    counters: Counters,
    fan_out: Option<FanOut>,
}

impl AppState {
    /// The benchmark's own paths (`rest` is after [`CONTROL_PREFIX`]).
    fn control(&self, rest: &str) -> Response<AppBody> {
        if rest == "stats" {
            return match serde_json::to_vec(&self.counters.snapshot()) {
                Ok(json) => text(StatusCode::OK, json),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
        }
        if let Some(code) = rest.strip_prefix("fail/") {
            return match code.parse::<u16>() {
                Ok(0) => {
                    self.counters.set_failing(0);
                    text(StatusCode::OK, "healthy")
                }
                Ok(status) if StatusCode::from_u16(status).is_ok() => {
                    self.counters.set_failing(status);
                    text(StatusCode::OK, format!("failing with {status}"))
                }
                _ => text(StatusCode::BAD_REQUEST, "fail/NNN takes a status code"),
            };
        }
        text(StatusCode::NOT_FOUND, "unknown /__bench/ path")
    }
}

async fn handle(
    request: Request<Incoming>,
    state: Arc<AppState>,
) -> Result<Response<AppBody>, Infallible> {
    if let Some(rest) = request.uri().path().strip_prefix(CONTROL_PREFIX) {
        return Ok(state.control(rest));
    }
    let counters = &state.counters;
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let sized_answer = request
        .uri()
        .path()
        .strip_prefix(BYTES_PATH)
        .and_then(|n| n.parse::<u64>().ok());
    // Read the request to its end, as a real app would; a broken body still gets the answer.
    let received = drain(request.into_body()).await;
    let failing = counters.failing_status.load(Ordering::Relaxed);
    if failing != 0 {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        counters
            .last_failure_ns
            .store(counters.now_ns(), Ordering::Relaxed);
        let status = StatusCode::from_u16(failing).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return Ok(text(status, "injected failure"));
    }
    if let Some(fan_out) = &state.fan_out
        && let Err(e) = fan_out.call_all(counters).await
    {
        return Ok(text(
            StatusCode::BAD_GATEWAY,
            format!("downstream call failed: {e}"),
        ));
    }
    let mut response = match sized_answer {
        Some(size) => sized(size),
        None => state.responses.answer(is_grpc),
    };
    if received > 0 {
        response
            .headers_mut()
            .insert(RECEIVED_HEADER, HeaderValue::from(received));
    }
    Ok(response)
}

/// Serves connections from `listener` until the future is dropped: a fixed answer of `payload`
/// bytes, no fan-out.
pub async fn serve(listener: TcpListener, payload: usize) {
    let state = Arc::new(AppState {
        responses: Responses::new(payload),
        counters: Counters::new(),
        fan_out: None,
    });
    serve_state(listener, state).await;
}

async fn serve_state(listener: TcpListener, state: Arc<AppState>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // EMFILE and the like: back off briefly instead of spinning.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, state.clone()));
            // A client that goes away mid-request is normal during shutdown.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The address an app's listening line (printed by [`run`]) announces, if it is one.
pub fn announced_addr(line: &str) -> Option<std::net::SocketAddr> {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()?
        .get("addr")?
        .as_str()?
        .parse()
        .ok()
}

/// Runs the app process: binds, prints `{"msg":..., "addr":...}`, serves until SIGTERM, SIGINT
/// or EOF on stdin (unless `--ignore-stdin`).
pub fn run(args: &AppArgs) -> Result<(), AppError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AppError::Runtime)?;
    runtime.block_on(async {
        let state = Arc::new(AppState {
            responses: Responses::new(args.payload),
            counters: Counters::new(),
            fan_out: FanOut::new(&args.calls, args.call_timeout)?,
        });
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
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(AppError::Signal)?;
        let watch_stdin = !args.ignore_stdin;
        let stdin_closed = async {
            if !watch_stdin {
                return std::future::pending().await;
            }
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
            () = serve_state(listener, state) => {}
            _ = term.recv() => {}
            _ = int.recv() => {}
            () = stdin_closed => {}
        }
        Ok(())
    })
}

/// Runs the pause process: holds its network namespace (it does nothing else) until SIGTERM or
/// SIGINT. As a container's process 1 it gets no default signal handling, so both are caught.
pub fn pause() -> Result<(), AppError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AppError::Runtime)?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(AppError::Signal)?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(AppError::Signal)?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downstream_arguments_parse() {
        let d = parse_downstream("catalog:8080=127.0.0.1:15001").ok();
        assert_eq!(
            d.as_ref().map(|d| (d.host.as_str(), d.addr.as_str())),
            Some(("catalog:8080", "127.0.0.1:15001"))
        );
        assert_eq!(
            d.map(|d| d.to_arg()).as_deref(),
            Some("catalog:8080=127.0.0.1:15001")
        );
        assert!(parse_downstream("catalog:8080").is_err());
        assert!(parse_downstream("=127.0.0.1:1").is_err());
        assert!(parse_downstream("a=not-an-addr").is_err());
        assert!(parse_downstream("a=name:0").is_err());
        assert!(parse_downstream("a=:80").is_err());
        assert_eq!(
            parse_downstream("reviews:9080=reviews:9080")
                .ok()
                .map(|d| d.addr),
            Some("reviews:9080".to_string())
        );
    }

    #[test]
    fn the_failure_span_runs_from_the_switch_to_the_last_failure() {
        assert_eq!(last_failure_after_ms(0, 0), None);
        assert_eq!(last_failure_after_ms(1_000_001, 0), None);
        assert_eq!(last_failure_after_ms(1_000_001, 13_000_001), Some(12.0));
    }

    #[test]
    fn the_switch_and_the_counters_answer_on_the_control_paths() {
        let state = AppState {
            responses: Responses::new(4),
            counters: Counters::new(),
            fan_out: None,
        };
        assert_eq!(state.control("fail/503").status(), StatusCode::OK);
        assert_eq!(state.counters.snapshot().failing_status, 503);
        assert_eq!(state.control("fail/abc").status(), StatusCode::BAD_REQUEST);
        assert_eq!(state.control("fail/0").status(), StatusCode::OK);
        assert_eq!(state.counters.snapshot().failing_status, 0);
        assert_eq!(state.control("stats").status(), StatusCode::OK);
        assert_eq!(state.control("nope").status(), StatusCode::NOT_FOUND);
    }
}
