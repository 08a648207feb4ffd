//! The edge through its socket, in a proxy started in this process: what it answers itself
//! (no host, an unknown host, a service whose one endpoint refuses connections, framing it
//! refuses), how a gRPC caller gets those answers, and the telemetry it records for them.
//! The stages behind it have their own tests; here the next stage is a service that cannot
//! be reached.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::ProxyConfig;
use crate::identity::dev_pki::DevCa;
use crate::{RunningProxy, StartOptions};

struct Edge {
    proxy: RunningProxy,
    _dir: tempfile::TempDir,
}

/// A proxy whose mesh is one service, `reviews`, whose one endpoint refuses connections.
async fn edge() -> Edge {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("cluster.local").unwrap();
    let id = "spiffe://cluster.local/ns/default/sa/productpage";
    let (cert, key) = ca.issue(id).unwrap().write(dir.path(), "leaf").unwrap();
    let roots = ca.write_root(dir.path()).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = format!(
        "identity:
  spiffe_id: {id}
  workload: productpage-v1
  app: productpage
  cert: {cert}
  key: {key}
  roots: {roots}
listeners:
  outbound: 127.0.0.1:0
  inbound: 127.0.0.1:0
  admin: 127.0.0.1:0
  metrics: 127.0.0.1:0
  health: 127.0.0.1:0
services:
  - name: reviews
    namespace: default
    port: 9080
    protocol: http
    identities: [spiffe://cluster.local/ns/default/sa/reviews]
    endpoints: [\"{closed}\"]
",
        cert = cert.display(),
        key = key.display(),
        roots = roots.display()
    );
    let path = dir.path().join("sidecar.yaml");
    let cfg = ProxyConfig::parse(&yaml, &path).unwrap();
    let proxy = RunningProxy::start(cfg, StartOptions::default())
        .await
        .unwrap();
    Edge { proxy, _dir: dir }
}

impl Edge {
    fn outbound(&self) -> SocketAddr {
        self.proxy.addrs.outbound
    }

    /// Sends one HTTP/1.1 request for `host` (none when `None`) and gives the response.
    async fn get(&self, host: Option<&str>, grpc: bool) -> http::Response<Bytes> {
        let stream = TcpStream::connect(self.outbound()).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::builder().uri("/ratings/1");
        if let Some(h) = host {
            req = req.header("host", h);
        }
        if grpc {
            req = req
                .method("POST")
                .header("content-type", "application/grpc");
        }
        let resp = send
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        http::Response::from_parts(parts, body)
    }

    fn metrics(&self) -> String {
        self.proxy.context().telemetry.metrics.encode()
    }
}

/// The `istio_requests_total` line for a source report of `code` with `flags`, if any.
fn requests_line(metrics: &str, code: u16, flags: &str) -> Option<String> {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"source\"")
                && l.contains(&format!("response_code=\"{code}\""))
                && l.contains(&format!("response_flags=\"{flags}\""))
        })
        .map(str::to_string)
}

#[tokio::test]
async fn an_unknown_host_is_404_nr_and_counted() {
    let e = edge().await;
    let resp = e.get(Some("details:9080"), false).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.headers().get("x-envoy-response-flags"),
        None,
        "flags are telemetry, not response headers"
    );
    let line = requests_line(&e.metrics(), 404, "NR").expect("counted with NR");
    assert!(line.ends_with(" 1"), "{line}");
    assert!(
        line.contains("source_workload=\"productpage-v1\""),
        "{line}"
    );
    assert!(line.contains("destination_service=\"unknown\""), "{line}");
}

#[tokio::test]
async fn an_unreachable_service_is_503_uf_and_a_grpc_caller_gets_unavailable() {
    let e = edge().await;
    let resp = e.get(Some("reviews:9080"), false).await;
    assert_eq!(resp.status(), 503);
    let metrics = e.metrics();
    // The connection failed on every attempt of Istio's default retry policy.
    let line = requests_line(&metrics, 503, "UF,URX")
        .unwrap_or_else(|| panic!("counted with UF,URX in Envoy's order: {metrics}"));
    assert!(
        line.contains("destination_service=\"reviews.default.svc.cluster.local\""),
        "{line}"
    );

    let resp = e.get(Some("reviews:9080"), true).await;
    assert_eq!(
        resp.status(),
        200,
        "gRPC answers trailers-only with HTTP 200"
    );
    assert_eq!(
        resp.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"14"[..]),
        "UNAVAILABLE, as Envoy maps 503"
    );
    assert!(resp.headers().contains_key("grpc-message"));
}

#[tokio::test]
async fn a_request_without_a_host_is_refused_at_the_edge() {
    let e = edge().await;
    // HTTP/1.0 may omit Host; the edge has nothing to route by.
    let mut s = TcpStream::connect(e.outbound()).await.unwrap();
    s.write_all(b"GET /ratings/1 HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let head = String::from_utf8_lossy(&out);
    assert!(
        head.starts_with("HTTP/1.0 400") || head.starts_with("HTTP/1.1 400"),
        "{head}"
    );
}

#[tokio::test]
async fn a_request_line_ending_in_a_bare_lf_is_refused() {
    let e = edge().await;
    let mut s = TcpStream::connect(e.outbound()).await.unwrap();
    s.write_all(b"GET /ratings/1 HTTP/1.1\nHost: reviews:9080\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let head = String::from_utf8_lossy(&out);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(
        !e.metrics().contains("response_code=\"503\""),
        "never routed to the service"
    );
}
