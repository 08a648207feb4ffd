//! The monitoring port (15014): Prometheus metrics at `/metrics` (text format 0.0.4, as
//! istiod serves them), the proxy and config status as JSON at `/debug/status` (what
//! `meshlite-control status` prints), readiness at `/ready`, and the live service graph
//! ([`crate::graph`]): JSON at `/graph`, Graphviz DOT at `/graph.dot`, a page drawing it at
//! `/graph.html`.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

use crate::plane::{ConfigStatus, ControlPlane, ProxyStatus};

/// The body of `/debug/status`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Status {
    /// Trust domain.
    pub trust_domain: String,
    /// Generation pushed last.
    pub generation: u64,
    /// Services known.
    pub services: usize,
    /// Connected proxies.
    pub proxies: Vec<ProxyStatus>,
    /// The config directory.
    pub config: ConfigStatus,
}

/// The current status.
pub fn status(plane: &ControlPlane) -> Status {
    let g = plane.generation.borrow().clone();
    Status {
        trust_domain: plane.ca().trust_domain().to_string(),
        generation: g.number,
        services: g.resources.service_count(),
        proxies: plane
            .proxies()
            .values()
            .map(|p| ProxyStatus {
                connected_s: p.connected_at.map_or(0, |t| t.elapsed().as_secs()),
                ..p.clone()
            })
            .collect(),
        config: plane.config_status().clone(),
    }
}

fn respond(plane: &ControlPlane, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics" | "/stats/prometheus") => (
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            plane.metrics.encode(),
        ),
        (&Method::GET, "/debug/status") => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&status(plane))
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
        ),
        (&Method::GET, "/ready") => (StatusCode::OK, "text/plain", "ready\n".into()),
        (&Method::GET, "/graph") => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&*plane.graph.graph())
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
        ),
        (&Method::GET, "/graph.dot") => (
            StatusCode::OK,
            "text/vnd.graphviz; charset=utf-8",
            crate::graph::render::dot(&plane.graph.graph()),
        ),
        (&Method::GET, "/graph.html") => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::graph::PAGE.to_string(),
        ),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    headers.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    if ctype.starts_with("text/html") {
        // The page's own inline script and style, and fetches of /graph: nothing else.
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            http::HeaderValue::from_static(
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'",
            ),
        );
    }
    r
}

/// Serves the monitoring port until the process exits.
pub async fn serve(plane: Arc<ControlPlane>, listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("monitoring accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let plane = plane.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let plane = plane.clone();
                async move { Ok::<_, Infallible>(respond(&plane, &req)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
