//! External authorizers for the CUSTOM-action tests, speaking Envoy's ext_authz protocols as
//! real ones do:
//!
//! - [`GrpcAuthz`]: `envoy.service.auth.v3.Authorization/Check`, a tonic server generated from
//!   the same protos the sidecars use (so the test exercises the wire format OPA-Envoy and
//!   every other ext_authz server reads);
//! - [`HttpAuthz`]: the HTTP protocol, on hyper.
//!
//! Both decide as Istio's sample ext-authz server does: a request carrying
//! [`DECIDING_HEADER`]` = `[`ALLOW`] is allowed, the request then carrying
//! [`RESULT_HEADER`]` = allowed` (and, over gRPC, the caller's response [`RESPONSE_HEADER`]);
//! any other is denied with [`DENIED_STATUS`], [`RESULT_HEADER`]` = denied` and
//! [`DENIED_BODY`]. A TCP connection (a check without a request) is allowed from
//! [`TCP_CALLER`] only. Each keeps what it was asked.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshlite_xds_proto::auth::authorization_server::{Authorization, AuthorizationServer};
use meshlite_xds_proto::auth::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response,
};
use meshlite_xds_proto::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use meshlite_xds_proto::envoy::r#type::v3::HttpStatus;
use meshlite_xds_proto::google::rpc::Status;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// The request header the authorizers decide on.
pub const DECIDING_HEADER: &str = "x-ext-authz";

/// Its value that allows.
pub const ALLOW: &str = "allow";

/// The header the authorizers add to an allowed request and to a denial.
pub const RESULT_HEADER: &str = "x-ext-authz-check-result";

/// The header the gRPC authorizer adds to the caller's response when it allows.
pub const RESPONSE_HEADER: &str = "x-ext-authz-response";

/// The status of a denial: not 403, so the test sees the authorizer's own choice.
pub const DENIED_STATUS: u16 = 418;

/// The body of a denial.
pub const DENIED_BODY: &str = "denied by ext_authz";

/// The one principal whose TCP connections the gRPC authorizer allows.
pub const TCP_CALLER: &str = "spiffe://cluster.local/ns/default/sa/intent-controller";

fn option(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: vec![],
        }),
        ..Default::default()
    }
}

struct Decider {
    seen: Arc<Mutex<Vec<CheckRequest>>>,
}

#[tonic::async_trait]
impl Authorization for Decider {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let check = request.into_inner();
        let a = check.attributes.as_ref();
        let allowed = match a
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
        {
            Some(http) => http
                .headers
                .get(DECIDING_HEADER)
                .is_some_and(|v| v == ALLOW),
            None => a
                .and_then(|a| a.source.as_ref())
                .is_some_and(|s| s.principal == TCP_CALLER),
        };
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(check);
        let resp = if allowed {
            CheckResponse {
                status: Some(Status::default()),
                http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![option(RESULT_HEADER, "allowed")],
                    headers_to_remove: vec![DECIDING_HEADER.into()],
                    response_headers_to_add: vec![option(RESPONSE_HEADER, "ok")],
                })),
            }
        } else {
            CheckResponse {
                // PERMISSION_DENIED
                status: Some(Status {
                    code: 7,
                    ..Default::default()
                }),
                http_response: Some(check_response::HttpResponse::DeniedResponse(
                    DeniedHttpResponse {
                        status: Some(HttpStatus {
                            code: i32::from(DENIED_STATUS),
                        }),
                        headers: vec![option(RESULT_HEADER, "denied")],
                        body: DENIED_BODY.into(),
                    },
                )),
            }
        };
        Ok(tonic::Response::new(resp))
    }
}

/// A running gRPC authorizer (h2c, as an app behind a sidecar listens).
pub struct GrpcAuthz {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<CheckRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcAuthz {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcAuthz {
    /// Starts it on an ephemeral loopback port.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn start() -> Self {
        let seen: Arc<Mutex<Vec<CheckRequest>>> = Arc::default();
        let service = AuthorizationServer::new(Decider { seen: seen.clone() });
        let (addr, task) = crate::grpc::serve_on_loopback(
            tonic::transport::Server::builder().add_service(service),
            "gRPC authorizer",
        )
        .await;
        Self { addr, seen, task }
    }

    /// The checks it answered so far.
    pub fn checks(&self) -> Vec<CheckRequest> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One check an HTTP authorizer received.
#[derive(Clone, Debug)]
pub struct HttpCheck {
    /// Its method.
    pub method: String,
    /// Its path and query.
    pub path: String,
    /// Its headers.
    pub headers: http::HeaderMap,
}

/// A running HTTP authorizer.
pub struct HttpAuthz {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<HttpCheck>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpAuthz {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn decide_http(
    seen: Arc<Mutex<Vec<HttpCheck>>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let allowed = req
        .headers()
        .get(DECIDING_HEADER)
        .is_some_and(|v| v == ALLOW);
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(HttpCheck {
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            headers: req.headers().clone(),
        });
    let _ = req.into_body().collect().await;
    let resp = if allowed {
        Response::builder()
            .status(200)
            .header(RESULT_HEADER, "allowed")
            .header("x-not-forwarded", "1")
            .body(Full::new(Bytes::new()))
    } else {
        Response::builder()
            .status(DENIED_STATUS)
            .header(RESULT_HEADER, "denied")
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(DENIED_BODY.as_bytes())))
    };
    Ok(resp.unwrap_or_default())
}

impl HttpAuthz {
    /// Starts it on an ephemeral loopback port.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind HTTP authorizer");
        let addr = listener.local_addr().expect("local addr");
        let seen: Arc<Mutex<Vec<HttpCheck>>> = Arc::default();
        let serving = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |r| decide_http(seen.clone(), r));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen, task }
    }

    /// The checks it answered so far.
    pub fn checks(&self) -> Vec<HttpCheck> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
