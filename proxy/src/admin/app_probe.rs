//! The application's health probes, run by the sidecar for the kubelet (Istio's probe
//! rewrite). With inbound capture, a kubelet probe to the app's port would land on the
//! inbound listener, where mutual TLS (STRICT) refuses it; so the injector points each app
//! probe at the sidecar's 15020 (`/app-health/<container>/livez|readyz|startupz`) and hands the
//! sidecar the original probes in `ISTIO_KUBE_APP_PROBERS`, Istio's JSON:
//!
//! ```json
//! {"/app-health/web/readyz": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"},
//!                            "timeoutSeconds": 1}}
//! ```
//!
//! `httpGet` (HTTP, or HTTPS without verifying the certificate, as the kubelet does),
//! `tcpSocket` and `grpc` (grpc.health.v1) probes are run against the app from the sidecar's
//! uid, which capture leaves alone, at `host` or 127.0.0.1. The answer is the kubelet's
//! verdict: 200 when the app passed (HTTP 200-399, a connection, `SERVING`), otherwise the
//! app's HTTP status, or 500 with the reason.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// The path prefix the injector rewrites probes to.
pub const PATH_PREFIX: &str = "/app-health/";

/// The kubelet's default probe timeout (`timeoutSeconds: 1`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why `ISTIO_KUBE_APP_PROBERS` was refused.
#[derive(Debug, thiserror::Error)]
pub enum AppProbeError {
    /// Not the JSON shape Istio writes.
    #[error("ISTIO_KUBE_APP_PROBERS is not a map of probe paths to probes: {0}")]
    Json(#[from] serde_json::Error),
    /// A probe path outside `/app-health/`.
    #[error("ISTIO_KUBE_APP_PROBERS: `{0}` does not start with /app-health/")]
    Path(String),
    /// A probe with no handler, or more than one.
    #[error("ISTIO_KUBE_APP_PROBERS: `{0}` needs exactly one of httpGet, tcpSocket, grpc")]
    Handler(String),
    /// A named port the injector should have resolved.
    #[error("ISTIO_KUBE_APP_PROBERS: `{path}`: port `{port}` is not a number")]
    Port {
        /// The probe.
        path: String,
        /// What was given.
        port: String,
    },
}

/// A port as Kubernetes writes it: a number, or (unresolved) a name.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PortValue {
    Number(u16),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpHeaderSpec {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpGetSpec {
    #[serde(default)]
    path: Option<String>,
    port: PortValue,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<HttpHeaderSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TcpSocketSpec {
    port: PortValue,
    #[serde(default)]
    host: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GrpcSpec {
    port: u16,
    #[serde(default)]
    service: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProbeSpec {
    #[serde(default)]
    http_get: Option<HttpGetSpec>,
    #[serde(default)]
    tcp_socket: Option<TcpSocketSpec>,
    #[serde(default)]
    grpc: Option<GrpcSpec>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
}

/// What one probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    /// GET `path` over HTTP or HTTPS, with extra headers.
    Http {
        tls: bool,
        path: String,
        headers: Vec<(String, String)>,
    },
    /// A TCP connection.
    Tcp,
    /// grpc.health.v1.Health/Check for `service`.
    Grpc { service: String },
}

/// One rewritten probe.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Prober {
    host: String,
    port: u16,
    check: Check,
    timeout: Duration,
}

/// The probes of a pod's app containers, by the path the kubelet now asks the sidecar.
#[derive(Debug, Default)]
pub struct AppProbers {
    by_path: HashMap<String, Prober>,
}

fn port_number(path: &str, port: &PortValue) -> Result<u16, AppProbeError> {
    match port {
        PortValue::Number(n) if *n > 0 => Ok(*n),
        PortValue::Number(n) => Err(AppProbeError::Port {
            path: path.to_string(),
            port: n.to_string(),
        }),
        PortValue::Text(t) => {
            t.parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| AppProbeError::Port {
                    path: path.to_string(),
                    port: t.clone(),
                })
        }
    }
}

fn host_or_loopback(host: Option<String>) -> String {
    host.filter(|h| !h.is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_string())
}

impl AppProbers {
    /// Reads Istio's `ISTIO_KUBE_APP_PROBERS` JSON; empty text is no probes.
    pub fn parse(json: &str) -> Result<Self, AppProbeError> {
        if json.trim().is_empty() {
            return Ok(Self::default());
        }
        let specs: HashMap<String, ProbeSpec> = serde_json::from_str(json)?;
        let mut by_path = HashMap::with_capacity(specs.len());
        for (path, spec) in specs {
            if !path.starts_with(PATH_PREFIX) {
                return Err(AppProbeError::Path(path));
            }
            let timeout = spec
                .timeout_seconds
                .filter(|s| *s > 0)
                .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
            let prober = match (spec.http_get, spec.tcp_socket, spec.grpc) {
                (Some(h), None, None) => Prober {
                    port: port_number(&path, &h.port)?,
                    host: host_or_loopback(h.host),
                    check: Check::Http {
                        tls: h.scheme.is_some_and(|s| s.eq_ignore_ascii_case("https")),
                        path: h
                            .path
                            .filter(|p| p.starts_with('/'))
                            .unwrap_or_else(|| "/".to_string()),
                        headers: h
                            .http_headers
                            .into_iter()
                            .map(|h| (h.name, h.value))
                            .collect(),
                    },
                    timeout,
                },
                (None, Some(t), None) => Prober {
                    port: port_number(&path, &t.port)?,
                    host: host_or_loopback(t.host),
                    check: Check::Tcp,
                    timeout,
                },
                (None, None, Some(g)) => Prober {
                    port: port_number(&path, &PortValue::Number(g.port))?,
                    host: "127.0.0.1".to_string(),
                    check: Check::Grpc {
                        service: g.service.unwrap_or_default(),
                    },
                    timeout,
                },
                _ => return Err(AppProbeError::Handler(path)),
            };
            by_path.insert(path, prober);
        }
        Ok(Self { by_path })
    }

    /// How many probes there are.
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// Runs the probe the kubelet asked for at `path`: `None` when there is none, else the
    /// status to answer with and a short reason.
    pub async fn run(&self, path: &str) -> Option<(StatusCode, String)> {
        let prober = self.by_path.get(path)?;
        let outcome = tokio::time::timeout(prober.timeout, prober.check()).await;
        Some(match outcome {
            Ok(Ok(())) => (StatusCode::OK, "ok\n".to_string()),
            Ok(Err(ProbeFailure::Status(s))) => (s, format!("the app answered {s}\n")),
            Ok(Err(ProbeFailure::Other(why))) => (StatusCode::INTERNAL_SERVER_ERROR, why + "\n"),
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("no answer within {:?}\n", prober.timeout),
            ),
        })
    }
}

/// How a probe failed.
enum ProbeFailure {
    /// The app answered with a failing HTTP status.
    Status(StatusCode),
    /// Anything else: refused, reset, not serving.
    Other(String),
}

impl Prober {
    async fn connect(&self) -> Result<TcpStream, ProbeFailure> {
        let target = match self.host.parse::<IpAddr>() {
            Ok(ip) => TcpStream::connect((ip, self.port)).await,
            Err(_) => TcpStream::connect((self.host.as_str(), self.port)).await,
        };
        target.map_err(|e| {
            ProbeFailure::Other(format!("connecting to {}:{}: {e}", self.host, self.port))
        })
    }

    async fn check(&self) -> Result<(), ProbeFailure> {
        let stream = self.connect().await?;
        match &self.check {
            Check::Tcp => Ok(()),
            Check::Http {
                tls: false,
                path,
                headers,
            } => self.http_get(TokioIo::new(stream), path, headers).await,
            Check::Http {
                tls: true,
                path,
                headers,
            } => {
                let name = rustls_pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| ProbeFailure::Other(format!("host `{}`: {e}", self.host)))?;
                let config =
                    unverified_tls().map_err(|e| ProbeFailure::Other(format!("TLS: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, stream)
                    .await
                    .map_err(|e| ProbeFailure::Other(format!("TLS: {e}")))?;
                self.http_get(TokioIo::new(tls), path, headers).await
            }
            Check::Grpc { service } => self.grpc(stream, service).await,
        }
    }

    async fn http_get<IO>(
        &self,
        io: TokioIo<IO>,
        path: &str,
        headers: &[(String, String)],
    ) -> Result<(), ProbeFailure>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let other = |e: &dyn std::fmt::Display| ProbeFailure::Other(format!("HTTP: {e}"));
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| other(&e))?;
        tokio::spawn(conn);
        let mut req = Request::get(path)
            .header(http::header::HOST, format!("{}:{}", self.host, self.port))
            .header(http::header::USER_AGENT, "kube-probe/meshlite");
        for (name, value) in headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let req = req.body(Full::new(Bytes::new())).map_err(|e| other(&e))?;
        let resp = send.send_request(req).await.map_err(|e| other(&e))?;
        let status = resp.status();
        if (200..400).contains(&status.as_u16()) {
            Ok(())
        } else {
            Err(ProbeFailure::Status(status))
        }
    }

    async fn grpc(&self, stream: TcpStream, service: &str) -> Result<(), ProbeFailure> {
        use prost::Message as _;
        let other = |e: &dyn std::fmt::Display| ProbeFailure::Other(format!("gRPC: {e}"));
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| other(&e))?;
        tokio::spawn(conn);
        let message = HealthCheckRequest {
            service: service.to_string(),
        }
        .encode_to_vec();
        let mut body = Vec::with_capacity(5 + message.len());
        body.push(0);
        body.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
        body.extend_from_slice(&message);
        let uri = format!(
            "http://{}:{}/grpc.health.v1.Health/Check",
            self.host, self.port
        );
        let req = Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| other(&e))?;
        let resp = send.send_request(req).await.map_err(|e| other(&e))?;
        let head_status = resp.headers().get("grpc-status").cloned();
        let collected = resp.into_body().collect().await.map_err(|e| other(&e))?;
        let status = head_status.or_else(|| {
            collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .cloned()
        });
        if status.as_ref().is_some_and(|s| s != "0") {
            return Err(ProbeFailure::Other(format!(
                "gRPC status {}",
                status.as_ref().and_then(|s| s.to_str().ok()).unwrap_or("?")
            )));
        }
        let bytes = collected.to_bytes();
        let answer = bytes
            .get(5..)
            .and_then(|m| HealthCheckResponse::decode(m).ok())
            .ok_or_else(|| ProbeFailure::Other("gRPC: no HealthCheckResponse".into()))?;
        if answer.status == SERVING {
            Ok(())
        } else {
            Err(ProbeFailure::Other(format!(
                "gRPC health status {} (not SERVING)",
                answer.status
            )))
        }
    }
}

/// grpc.health.v1.HealthCheckRequest.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// grpc.health.v1.HealthCheckResponse.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `ServingStatus.SERVING`.
const SERVING: i32 = 1;

/// A TLS client that takes any certificate: the kubelet does not verify HTTPS probes either,
/// and the app's certificate is not the mesh's to check.
fn unverified_tls() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    static CONFIG: std::sync::LazyLock<Result<Arc<rustls::ClientConfig>, rustls::Error>> =
        std::sync::LazyLock::new(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(
                    crate::transport::egress::AnyCertificate(provider),
                ))
                .with_no_client_auth();
            Ok(Arc::new(config))
        });
    CONFIG.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP/1.1 server answering every request with `status`.
    async fn http_app(status: u16) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                });
            }
        });
        port
    }

    fn probers(json: &str) -> AppProbers {
        AppProbers::parse(json).unwrap()
    }

    #[test]
    fn istios_json_is_read_and_checked() {
        let p = probers(
            r#"{"/app-health/web/livez": {"httpGet": {"path": "/healthz", "port": 8080,
                 "scheme": "HTTPS", "httpHeaders": [{"name": "x-probe", "value": "1"}]},
                 "timeoutSeconds": 3},
                "/app-health/db/readyz": {"tcpSocket": {"port": "5432"}},
                "/app-health/rpc/startupz": {"grpc": {"port": 9090, "service": "svc"}}}"#,
        );
        assert_eq!(p.len(), 3);
        let web = &p.by_path["/app-health/web/livez"];
        assert_eq!(web.port, 8080);
        assert_eq!(web.host, "127.0.0.1");
        assert_eq!(web.timeout, Duration::from_secs(3));
        assert_eq!(
            web.check,
            Check::Http {
                tls: true,
                path: "/healthz".into(),
                headers: vec![("x-probe".into(), "1".into())]
            }
        );
        assert_eq!(p.by_path["/app-health/db/readyz"].check, Check::Tcp);
        assert_eq!(p.by_path["/app-health/db/readyz"].timeout, DEFAULT_TIMEOUT);
        assert!(AppProbers::parse("").unwrap().is_empty());
        for bad in [
            "[]",
            r#"{"/healthz": {"tcpSocket": {"port": 1}}}"#,
            r#"{"/app-health/a/livez": {}}"#,
            r#"{"/app-health/a/livez": {"tcpSocket": {"port": "http"}}}"#,
            r#"{"/app-health/a/livez": {"tcpSocket": {"port": 1}, "grpc": {"port": 1}}}"#,
        ] {
            assert!(AppProbers::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn http_probes_pass_on_2xx_3xx_and_carry_the_apps_failure() {
        let ok = http_app(204).await;
        let failing = http_app(503).await;
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let p = probers(&format!(
            r#"{{"/app-health/a/livez": {{"httpGet": {{"path": "/", "port": {ok}}}}},
                "/app-health/a/readyz": {{"httpGet": {{"path": "/", "port": {failing}}}}},
                "/app-health/a/startupz": {{"tcpSocket": {{"port": {closed}}}}},
                "/app-health/b/readyz": {{"tcpSocket": {{"port": {ok}}}}}}}"#
        ));
        let run = |path: &'static str| {
            let p = &p;
            async move { p.run(path).await.map(|(s, _)| s.as_u16()) }
        };
        assert_eq!(run("/app-health/a/livez").await, Some(200));
        assert_eq!(run("/app-health/a/readyz").await, Some(503));
        assert_eq!(run("/app-health/a/startupz").await, Some(500));
        assert_eq!(run("/app-health/b/readyz").await, Some(200));
        assert_eq!(run("/app-health/c/readyz").await, None);
    }
}
