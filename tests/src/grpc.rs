//! A tiny gRPC echo service: hand-written prost messages, a server over hyper's HTTP/2, and a
//! tonic client.
//!
//! The proto it implements, for reference (no code generation: two messages are shorter to write
//! by hand than a build script):
//!
//! ```proto
//! package meshlite.e2e;
//! service Echo { rpc Say(EchoRequest) returns (EchoReply); }
//! message EchoRequest { string message = 1; }
//! message EchoReply { string message = 1; string served_by = 2; }
//! ```
//!
//! The server is hand-rolled so the tests control exactly what travels in trailers: a normal
//! reply ends with `grpc-status: 0` and a custom trailer, the message `"fail"` ends with
//! `grpc-status: 5` (NOT_FOUND) and a `grpc-message`. It also reports the `te` request header it
//! saw, because gRPC servers require `te: trailers` and a proxy must not strip it. On demand
//! ([`GrpcEchoApp::fail_next`]) it answers the next calls with an error status in a
//! trailers-only response, as gRPC servers answer a call that fails before any message (the
//! only form a proxy can retry on, as Envoy does).

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::{TcpListener, TcpStream};

/// The method path of `Echo.Say`.
pub const SAY_PATH: &str = "/meshlite.e2e.Echo/Say";

/// The message that makes the server answer NOT_FOUND.
pub const FAILING_MESSAGE: &str = "fail";

/// The custom trailer a successful call ends with.
pub const ECHO_TRAILER: &str = "x-echo-trailer";

/// The response header in which the server reports the `te` request header it received.
pub const SEEN_TE_HEADER: &str = "x-seen-te";

/// `Echo.Say` request.
#[derive(Clone, PartialEq, Message)]
pub struct EchoRequest {
    /// Text to echo.
    #[prost(string, tag = "1")]
    pub message: String,
}

/// `Echo.Say` reply.
#[derive(Clone, PartialEq, Message)]
pub struct EchoReply {
    /// The request's text.
    #[prost(string, tag = "1")]
    pub message: String,
    /// Name of the server that answered.
    #[prost(string, tag = "2")]
    pub served_by: String,
}

/// A running echo server (h2c, prior knowledge, as a gRPC app behind a sidecar listens).
pub struct GrpcEchoApp {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<GrpcState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct GrpcState {
    /// Calls received.
    calls: AtomicU64,
    /// Calls still to fail...
    failing: AtomicU64,
    /// ...with this status.
    failing_code: AtomicU64,
}

impl Drop for GrpcEchoApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcEchoApp {
    /// Starts the server on an ephemeral loopback port.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gRPC app");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(GrpcState::default());
        let serving = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// Answers the next `calls` calls with `grpc-status: code` (trailers-only).
    pub fn fail_next(&self, calls: u64, code: u32) {
        self.state
            .failing_code
            .store(u64::from(code), Ordering::SeqCst);
        self.state.failing.store(calls, Ordering::SeqCst);
    }

    /// Calls received so far.
    pub fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::SeqCst)
    }
}

type GrpcBody = BoxBody<Bytes, Infallible>;

fn grpc_frame(message: &impl Message) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + message.encoded_len());
    buf.put_u8(0);
    buf.put_u32(message.encoded_len() as u32);
    message.encode(&mut buf).expect("encode into sized buffer");
    buf.freeze()
}

fn reply(headers: HeaderMap, data: Option<Bytes>, trailers: HeaderMap) -> Response<GrpcBody> {
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = Vec::new();
    if let Some(data) = data {
        frames.push(Ok(Frame::data(data)));
    }
    frames.push(Ok(Frame::trailers(trailers)));
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
    let mut response = Response::new(body);
    *response.headers_mut() = headers;
    response
}

fn status_trailers(code: u32, message: Option<&str>) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(code));
    if let Some(message) = message {
        trailers.insert(
            "grpc-message",
            HeaderValue::from_str(message).expect("ascii message"),
        );
    }
    trailers
}

async fn handle(
    state: Arc<GrpcState>,
    request: Request<Incoming>,
) -> Result<Response<GrpcBody>, Infallible> {
    state.calls.fetch_add(1, Ordering::SeqCst);
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    let fail = state
        .failing
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if fail {
        // Trailers-only: the status in the response headers, no body at all.
        let code = u32::try_from(state.failing_code.load(Ordering::SeqCst)).unwrap_or(2);
        headers.extend(status_trailers(code, Some("failing on demand")));
        let mut response = Response::new(http_body_util::Empty::new().boxed());
        *response.headers_mut() = headers;
        return Ok(response);
    }
    let seen_te = request
        .headers()
        .get("te")
        .cloned()
        .unwrap_or(HeaderValue::from_static("(none)"));
    headers.insert(SEEN_TE_HEADER, seen_te);
    if request.uri().path() != SAY_PATH {
        return Ok(reply(
            headers,
            None,
            status_trailers(12, Some("unknown method")),
        ));
    }
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(reply(
                headers,
                None,
                status_trailers(13, Some("body read failed")),
            ));
        }
    };
    let decoded = (body.len() >= 5)
        .then(|| u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize)
        .filter(|len| body.len() == 5 + len)
        .and_then(|_| EchoRequest::decode(&body[5..]).ok());
    let Some(echo) = decoded else {
        return Ok(reply(
            headers,
            None,
            status_trailers(3, Some("malformed request message")),
        ));
    };
    if echo.message == FAILING_MESSAGE {
        return Ok(reply(
            headers,
            None,
            status_trailers(5, Some("no greeting named fail")),
        ));
    }
    let answer = EchoReply {
        message: echo.message,
        served_by: "grpc-echo".into(),
    };
    let mut trailers = status_trailers(0, None);
    trailers.insert(ECHO_TRAILER, HeaderValue::from_static("kept"));
    Ok(reply(headers, Some(grpc_frame(&answer)), trailers))
}

/// Calls `Echo.Say` through the sidecar at `outbound`, with `:authority` set to `authority`.
///
/// The tonic channel's connector ignores the URI and always dials the sidecar, as an app in
/// explicit mode would.
pub async fn say(
    outbound: SocketAddr,
    authority: &str,
    message: &str,
) -> Result<tonic::Response<EchoReply>, tonic::Status> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    let connector = tower::service_fn(move |_: http::Uri| async move {
        let stream = TcpStream::connect(outbound).await?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(TokioIo::new(stream))
    });
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect to sidecar: {e}")))?;
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default();
    let path = http::uri::PathAndQuery::from_static(SAY_PATH);
    client
        .unary(
            tonic::Request::new(EchoRequest {
                message: message.to_string(),
            }),
            path,
            codec,
        )
        .await
}

/// Serves `router` (tonic services the test added) on an ephemeral loopback port until the
/// returned task is aborted: the OTLP collectors' and the gRPC authorizer's server. `what`
/// names it in the panic when the port cannot be bound.
///
/// # Panics
/// If it cannot bind.
pub async fn serve_on_loopback(
    router: tonic::transport::server::Router,
    what: &str,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind {what}: {e}"));
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        let _ = router
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    (addr, task)
}
