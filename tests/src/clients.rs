//! Real HTTP clients pointed at a sidecar: HTTP/1.1 (keep-alive) and HTTP/2 with prior knowledge.
//!
//! In explicit mode an app sends plain HTTP to its sidecar's outbound address and names the
//! service in `Host` (HTTP/1.1) or `:authority` (HTTP/2); these helpers do exactly that. Every
//! exchange is bounded by [`EXCHANGE_TIMEOUT`].

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Upper bound for one request/response exchange in a test (not a latency expectation).
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Boxed error of request bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body type every client here sends.
pub type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

/// An empty request body.
pub fn empty() -> ReqBody {
    Empty::<Bytes>::new()
        .map_err(|never| -> BoxError { match never {} })
        .boxed_unsync()
}

/// A request body with fixed contents.
pub fn full(bytes: impl Into<Bytes>) -> ReqBody {
    Full::new(bytes.into())
        .map_err(|never| -> BoxError { match never {} })
        .boxed_unsync()
}

/// Boxes any body with `Bytes` data.
pub fn boxed<B>(body: B) -> ReqBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// An HTTP/1.1 request for `path` with `Host: host`.
pub fn h1_request(method: &str, host: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host)
}

/// An HTTP/2 request for `http://authority/path` (the authority becomes `:authority`).
pub fn h2_request(method: &str, authority: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("http://{authority}{path}"))
        .version(Version::HTTP_2)
}

/// A fully received response.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// HTTP version of the response.
    pub version: Version,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// Collects `response`'s body.
    ///
    /// # Panics
    /// If the body fails mid-way.
    pub async fn collect(response: Response<Incoming>) -> Self {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("read response body").to_bytes();
        Self {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        }
    }

    /// Value of header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    ///
    /// # Panics
    /// If it is not JSON; the message shows the status and body.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response {} is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// One HTTP/1.1 connection to a sidecar; requests on it reuse the connection (keep-alive).
pub struct Http1Client {
    sender: hyper::client::conn::http1::SendRequest<ReqBody>,
    connection: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Http1Client {
    /// Connects and performs the (trivial) HTTP/1.1 handshake.
    ///
    /// # Panics
    /// If the connection fails.
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).ok();
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        let connection = tokio::spawn(conn.with_upgrades());
        Self { sender, connection }
    }

    /// Sends `request` and returns the response head; the body streams.
    pub async fn send(
        &mut self,
        request: Request<ReqBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        self.sender.ready().await?;
        self.sender.send_request(request).await
    }

    /// Sends `request` and collects the whole response.
    ///
    /// # Panics
    /// If the exchange fails or exceeds [`EXCHANGE_TIMEOUT`].
    pub async fn exchange(&mut self, request: Request<ReqBody>) -> Reply {
        let what = format!("{} {}", request.method(), request.uri());
        crate::deadline::within(&what, EXCHANGE_TIMEOUT, async {
            let response = self
                .send(request)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            Reply::collect(response).await
        })
        .await
    }

    /// True once the server has closed this connection.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed() || self.connection.is_finished()
    }
}

/// One HTTP/2 connection with prior knowledge (h2c) to a sidecar.
#[derive(Clone)]
pub struct H2cClient {
    sender: hyper::client::conn::http2::SendRequest<ReqBody>,
}

impl H2cClient {
    /// Connects and performs the HTTP/2 handshake (connection preface, SETTINGS).
    ///
    /// # Panics
    /// If the connection or handshake fails.
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).ok();
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        Self { sender }
    }

    /// Sends `request` and returns the response head; the body streams.
    pub async fn send(
        &mut self,
        request: Request<ReqBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        self.sender.ready().await?;
        self.sender.send_request(request).await
    }

    /// Sends `request` and collects the whole response.
    ///
    /// # Panics
    /// If the exchange fails or exceeds [`EXCHANGE_TIMEOUT`].
    pub async fn exchange(&mut self, request: Request<ReqBody>) -> Reply {
        let what = format!("{} {}", request.method(), request.uri());
        crate::deadline::within(&what, EXCHANGE_TIMEOUT, async {
            let response = self
                .send(request)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            Reply::collect(response).await
        })
        .await
    }
}

/// `GET path` with `Host: host` on a fresh HTTP/1.1 connection to `addr`.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    let request = h1_request("GET", host, path)
        .body(empty())
        .expect("request");
    Http1Client::connect(addr).await.exchange(request).await
}

/// Like [`get`] but returns `None` when the connection cannot be made or the exchange fails
/// (probing an address that may not be serving).
pub async fn try_get(addr: SocketAddr, host: &str, path: &str) -> Option<Reply> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, ReqBody>(TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let request = h1_request("GET", host, path).body(empty()).ok()?;
    let exchange = async {
        let response = sender.send_request(request).await.ok()?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()?
}

/// `POST path` with a fixed body on a fresh HTTP/1.1 connection.
pub async fn post(addr: SocketAddr, host: &str, path: &str, body: impl Into<Bytes>) -> Reply {
    let request = h1_request("POST", host, path)
        .body(full(body))
        .expect("request");
    Http1Client::connect(addr).await.exchange(request).await
}
