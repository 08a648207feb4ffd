//! The applications behind the sidecars: what a workload's own process would be.
//!
//! - [`HttpApp`] speaks HTTP/1.1 and h2c on one port (hyper's auto server) and answers by path:
//!   - `/echo`: streams the request body back;
//!   - `/sink`: consumes the body, checking it against [`crate::payload`], and reports;
//!   - `/source?bytes=N`: streams `N` pattern bytes without a content-length;
//!   - `/gate`: holds the response until the test opens the gate ([`HttpApp::open_gate`]);
//!   - `/status/NNN`: answers with that status;
//!   - `/ws`: a WebSocket echo (HTTP/1.1 Upgrade);
//!   - anything else: a JSON description of the request it received (method, path, version,
//!     headers), so tests can assert what the sidecars forwarded.
//!
//!   Every response carries `server: meshlite-test-app` and `keep-alive` (which the sidecars must
//!   not pass on) and `x-served-by: <name>`.
//! - [`TcpEchoApp`] echoes bytes and half-closes when the client does.

use crate::clients::BoxError;
use crate::payload::{PatternBody, PatternCheck};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The `server` header every app response carries; sidecars must not leak it to callers.
pub const APP_SERVER_HEADER: &str = "meshlite-test-app";

/// Name of the header that says which app answered.
pub const SERVED_BY: &str = "x-served-by";

type AppBody = UnsyncBoxBody<Bytes, BoxError>;

struct AppState {
    name: String,
    requests: AtomicU64,
    at_gate: AtomicU64,
    peak_at_gate: AtomicU64,
    gate: tokio::sync::watch::Sender<bool>,
    /// When non-zero, requests are answered with this status (a failing backend)...
    failing: AtomicU64,
    /// ...those whose arrival number modulo 10 has its bit set here (all when 0).
    failing_pattern: AtomicU64,
    /// Milliseconds every response waits before it is sent.
    delay_ms: AtomicU64,
    /// Request body bytes received on the describing path (`/` and others not listed).
    body_bytes: AtomicU64,
    /// Every request target received, in order.
    targets: std::sync::Mutex<Vec<String>>,
}

/// A running HTTP application (HTTP/1.1 and h2c on one port).
pub struct HttpApp {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<AppState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpApp {
    /// Starts an app called `name` on an ephemeral loopback port.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn start(name: &str) -> Self {
        Self::start_serving(name, None).await
    }

    /// Starts an app called `name` that speaks HTTPS only, with `tls` (a server that also
    /// asks for client certificates when `tls` does).
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn start_tls(name: &str, tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start_serving(name, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    /// Starts an app called `name` on `listener` (one bound elsewhere, e.g. in a pod's
    /// network namespace).
    ///
    /// # Panics
    /// If the listener has no local address.
    pub fn start_on(name: &str, listener: TcpListener) -> Self {
        Self::serve(name, listener, None)
    }

    async fn start_serving(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind HTTP app");
        Self::serve(name, listener, tls)
    }

    fn serve(name: &str, listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let (gate, _) = tokio::sync::watch::channel(false);
        let state = Arc::new(AppState {
            name: name.to_string(),
            requests: AtomicU64::new(0),
            at_gate: AtomicU64::new(0),
            peak_at_gate: AtomicU64::new(0),
            gate,
            failing: AtomicU64::new(0),
            failing_pattern: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
            targets: std::sync::Mutex::new(Vec::new()),
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = serving.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Self { addr, state, task }
    }

    /// Every request target this app received, in order (did anything smuggled arrive?).
    pub fn targets(&self) -> Vec<String> {
        self.state
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many requests reached this app.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// How many `/gate` requests are currently held.
    pub fn held_at_gate(&self) -> u64 {
        self.state.at_gate.load(Ordering::SeqCst)
    }

    /// The most `/gate` requests ever held at once.
    pub fn peak_at_gate(&self) -> u64 {
        self.state.peak_at_gate.load(Ordering::SeqCst)
    }

    /// From now on answers every request with `status` (`None`: serves normally again).
    pub fn fail_with(&self, status: Option<u16>) {
        self.state.failing_pattern.store(0, Ordering::SeqCst);
        self.state
            .failing
            .store(status.map_or(0, u64::from), Ordering::SeqCst);
    }

    /// Request body bytes received so far on the describing path.
    pub fn body_bytes(&self) -> u64 {
        self.state.body_bytes.load(Ordering::SeqCst)
    }

    /// From now on waits `delay` before answering each request (a slow backend).
    pub fn slow_by(&self, delay: std::time::Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// From now on answers with `status` the requests whose arrival number (counted from
    /// the app's start) modulo 10 is in `of_ten`: `[0, 3, 6]` fails 30 %, never twice in a
    /// row.
    pub fn fail_some_with(&self, status: u16, of_ten: &[u64]) {
        let mask = of_ten.iter().fold(0u64, |m, i| m | 1 << (i % 10));
        self.state.failing_pattern.store(mask, Ordering::SeqCst);
        self.state
            .failing
            .store(u64::from(status), Ordering::SeqCst);
    }

    /// Releases every held and future `/gate` request.
    pub fn open_gate(&self) {
        self.state.gate.send_replace(true);
    }
}

fn full_body(bytes: impl Into<Bytes>) -> AppBody {
    Full::new(bytes.into())
        .map_err(|never| -> BoxError { match never {} })
        .boxed_unsync()
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<AppBody>, BoxError> {
    let arrival = state.requests.fetch_add(1, Ordering::SeqCst);
    state
        .targets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(req.uri().to_string());
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let path = req.uri().path().to_string();
    let pattern = state.failing_pattern.load(Ordering::SeqCst);
    let failing = if pattern == 0 || pattern & (1 << (arrival % 10)) != 0 {
        state.failing.load(Ordering::SeqCst)
    } else {
        0
    };
    let mut response = if failing != 0 {
        let mut response = Response::new(full_body(format!("{} failing\n", state.name)));
        *response.status_mut() = u16::try_from(failing)
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        response
    } else if path == "/ws" {
        websocket(req)
    } else if path == "/echo" {
        Response::new(req.into_body().map_err(BoxError::from).boxed_unsync())
    } else if path == "/sink" {
        let mut body = req.into_body();
        let mut check = PatternCheck::default();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                check.feed(&data);
            }
        }
        let report = serde_json::json!({
            "received": check.received,
            "first_mismatch": check.first_mismatch,
        });
        Response::new(full_body(report.to_string()))
    } else if path == "/source" {
        let bytes = query_param(&req, "bytes")
            .and_then(|b| b.parse().ok())
            .unwrap_or(0);
        Response::new(
            PatternBody::streamed(bytes)
                .map_err(|never| -> BoxError { match never {} })
                .boxed_unsync(),
        )
    } else if path == "/gate" {
        let held = state.at_gate.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak_at_gate.fetch_max(held, Ordering::SeqCst);
        let mut gate = state.gate.subscribe();
        let opened = gate.wait_for(|open| *open).await.is_ok();
        state.at_gate.fetch_sub(1, Ordering::SeqCst);
        let mut response =
            Response::new(full_body(if opened { "released" } else { "gate dropped" }));
        if !opened {
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        response
    } else if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok());
        let mut response = Response::new(full_body(format!("status {code}\n")));
        *response.status_mut() = status.unwrap_or(StatusCode::BAD_REQUEST);
        response
    } else {
        let mut headers = serde_json::Map::new();
        for name in req.headers().keys() {
            let values: Vec<serde_json::Value> = req
                .headers()
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned().into())
                .collect();
            headers.insert(name.as_str().to_string(), values.into());
        }
        let (parts, body) = req.into_parts();
        let body_bytes = body
            .collect()
            .await
            .map_or(0, |b| b.to_bytes().len() as u64);
        state.body_bytes.fetch_add(body_bytes, Ordering::SeqCst);
        let description = serde_json::json!({
            "app": state.name,
            "method": parts.method.as_str(),
            "path": path,
            "query": parts.uri.query(),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body_bytes": body_bytes,
        });
        let mut response = Response::new(full_body(description.to_string()));
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        response
    };
    let headers = response.headers_mut();
    headers.insert("server", HeaderValue::from_static(APP_SERVER_HEADER));
    headers.insert(
        SERVED_BY,
        HeaderValue::from_str(&state.name).expect("ascii app name"),
    );
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response
            .headers_mut()
            .insert("keep-alive", HeaderValue::from_static("timeout=5"));
    }
    Ok(response)
}

/// Accepts a WebSocket upgrade and echoes every text and binary message.
fn websocket(mut req: Request<Incoming>) -> Response<AppBody> {
    let key = req.headers().get("sec-websocket-key").cloned();
    let upgrading = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let (Some(key), true) = (key, upgrading) else {
        let mut response = Response::new(full_body("expected a WebSocket upgrade\n"));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            if message.is_close() {
                break;
            }
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                break;
            }
        }
        let _ = ws.close(None).await;
    });
    let mut response = Response::new(full_body(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert("upgrade", HeaderValue::from_static("websocket"));
    headers.insert("connection", HeaderValue::from_static("upgrade"));
    let accept = derive_accept_key(key.as_bytes());
    headers.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept).expect("base64"),
    );
    response
}

/// A TCP echo server: every byte read is written back; EOF is answered with EOF.
pub struct TcpEchoApp {
    /// Where it listens.
    pub addr: SocketAddr,
    connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpEchoApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpEchoApp {
    /// Starts the echo server on an ephemeral loopback port.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind TCP echo");
        let addr = listener.local_addr().expect("local addr");
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut write).await;
                });
            }
        });
        Self {
            addr,
            connections,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A server-first TCP app, as an SMTP or MySQL server is: it greets every connection with its
/// greeting before reading anything, then echoes what it reads.
pub struct BannerApp {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BannerApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BannerApp {
    /// Starts it on an ephemeral loopback port.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn start(greeting: &[u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the banner app");
        Self::start_on(listener, greeting)
    }

    /// Starts it on `listener` (e.g. one bound inside a pod).
    ///
    /// # Panics
    /// If the listener has no local address.
    pub fn start_on(listener: TcpListener, greeting: &[u8]) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = listener.local_addr().expect("local addr");
        let greeting = Bytes::copy_from_slice(greeting);
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let greeting = greeting.clone();
                tokio::spawn(async move {
                    if s.write_all(&greeting).await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 256];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { addr, task }
    }
}

/// An address on loopback where nothing listens: a connection to it is refused.
///
/// The port stays bound (without listening) for the rest of the test process, so no other
/// socket of the machine (a sidecar's admin port in a test running beside, say) can take it
/// and answer in its place.
///
/// # Panics
/// If binding fails.
pub fn closed_port() -> SocketAddr {
    static HELD: std::sync::Mutex<Vec<tokio::net::TcpSocket>> = std::sync::Mutex::new(Vec::new());
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let addr = socket.local_addr().expect("local addr");
    HELD.lock().unwrap_or_else(|p| p.into_inner()).push(socket);
    addr
}
