//! New mutual-TLS connections into a server-side sidecar, one request each: the cost of the
//! handshake between sidecars, and whether TLS session resumption happens.
//!
//! The benchmark plays the client sidecar with meshlite's own TLS client
//! ([`meshlite_proxy::identity::tls::Identity::client_config`]: the client certificate, the
//! SPIFFE check of the server, the resumption cache a sidecar keeps per destination), one
//! configuration for the whole run, so a resumable session from one connection is offered by
//! the next. Each connection sends one HTTP/1.1 `GET /` with `Connection: close`, reads the
//! answer and closes. C connections at a time in a closed loop, bounded in time and count.

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::HandshakeKind;
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::LoadError;

/// What to run.
#[derive(Clone)]
pub struct HandshakeSpec {
    /// The server sidecar's mTLS listener.
    pub target: SocketAddr,
    /// TLS server name (SNI).
    pub server_name: ServerName<'static>,
    /// Host of the request.
    pub authority: String,
    /// The client configuration (one for the run: its session cache is shared).
    pub tls: Arc<rustls::ClientConfig>,
    /// Connections at a time.
    pub concurrency: usize,
    /// How long the loop runs.
    pub duration: Duration,
    /// At most this many connections in all.
    pub max_connections: u64,
    /// Bound on one connection's handshake and request.
    pub timeout: Duration,
}

/// What the run did.
#[derive(Debug, Clone, Default)]
pub struct HandshakeResult {
    /// Connections that completed the handshake and got a 2xx answer.
    pub ok: u64,
    /// Of those, handshakes that resumed an earlier session.
    pub resumed: u64,
    /// Connections that failed.
    pub errors: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

impl HandshakeResult {
    /// Successful new connections per second.
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ok as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// One connection: handshake, one request, close; whether the handshake resumed.
async fn one(spec: &HandshakeSpec) -> Result<bool, String> {
    let tcp = TcpStream::connect(spec.target)
        .await
        .map_err(|e| format!("connect {}: {e}", spec.target))?;
    let _ = tcp.set_nodelay(true);
    let tls = TlsConnector::from(spec.tls.clone())
        .connect(spec.server_name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::get("/")
        .header(header::HOST, spec.authority.as_str())
        .header(header::CONNECTION, HeaderValue::from_static("close"))
        .body(Empty::new())
        .map_err(|e| format!("build request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?;
    drop(sender);
    let _ = conn.await;
    if status.is_success() {
        Ok(resumed)
    } else {
        Err(format!("status {}", status.as_u16()))
    }
}

/// Runs the loop on a fresh single-threaded runtime (blocking the caller).
pub fn run(spec: &HandshakeSpec) -> Result<HandshakeResult, LoadError> {
    if spec.concurrency == 0 || spec.max_connections == 0 {
        return Err(LoadError::Spec(
            "handshakes: concurrency and count must be positive".into(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(LoadError::Start)?;
    Ok(runtime.block_on(async {
        let issued = AtomicU64::new(0);
        let start = Instant::now();
        let end = start + spec.duration;
        let workers = (0..spec.concurrency).map(|_| async {
            let mut part = HandshakeResult::default();
            while Instant::now() < end
                && issued.fetch_add(1, Ordering::Relaxed) < spec.max_connections
            {
                let outcome = tokio::time::timeout(spec.timeout, one(spec))
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()));
                match outcome {
                    Ok(resumed) => {
                        part.ok += 1;
                        part.resumed += u64::from(resumed);
                    }
                    Err(e) => {
                        part.errors += 1;
                        part.first_error.get_or_insert(e);
                    }
                }
            }
            part
        });
        let parts = futures_util::future::join_all(workers).await;
        let mut total = HandshakeResult {
            seconds: start.elapsed().as_secs_f64(),
            ..HandshakeResult::default()
        };
        for p in parts {
            total.ok += p.ok;
            total.resumed += p.resumed;
            total.errors += p.errors;
            if total.first_error.is_none() {
                total.first_error = p.first_error;
            }
        }
        total
    }))
}
