//! The gRPC protocol of an `envoyExtAuthzGrpc` provider: `envoy.service.auth.v3.Authorization/Check`
//! with Envoy's request attributes, over a tonic client whose transport is the provider's
//! cluster in this proxy's snapshot (so the check travels as any request to that service
//! does: mutual TLS to its sidecar, or plaintext outside the mesh).
//!
//! The answer, as Envoy reads it: status OK allows, with `ok_response`'s header changes for
//! the request (`headers`, `headers_to_remove`) and the caller's response
//! (`response_headers_to_add`); any other status denies with `denied_response`'s status
//! (403 when absent), headers and body; a failed call (transport error, any gRPC error status)
//! is no answer.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, StatusCode, Version};
use http_body_util::BodyExt;
use meshlite_xds_proto::auth::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context, authorization_client,
    check_response,
};
use meshlite_xds_proto::envoy::config::core::v3::{Address, SocketAddress, socket_address};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{
    BufferedBody, CheckSender, Connection, DEFAULT_STATUS, Decision, Denial, HeaderChanges,
    NoAnswer, PARTIAL_BODY, Provider, framing, header_of,
};
use crate::message::body::ProxyBody;
use crate::message::errors::ProxyError;
use crate::message::headers::X_REQUEST_ID;
use crate::message::uri::request_authority;
use crate::telemetry::peer::LocalWorkload;

/// `ip:port` as Envoy's `Address`.
fn address(a: SocketAddr) -> Address {
    use meshlite_xds_proto::envoy::config::core::v3::address;
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: socket_address::Protocol::Tcp as i32,
            address: a.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                a.port(),
            ))),
        })),
    }
}

/// `HTTP/1.1`, `HTTP/2`...: Envoy's protocol strings.
fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Envoy's header map of the check: lower-case names, several values joined with `,`,
/// values that are not text made lossy (Envoy replaces them too).
pub fn header_attributes(headers: &HeaderMap) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::<String, String>::new();
    for (name, value) in headers {
        let v = String::from_utf8_lossy(value.as_bytes());
        out.entry(name.as_str().to_string())
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    out
}

/// The `CheckRequest` for `req`: who calls whom (addresses, SPIFFE IDs, this workload's
/// service and labels) and the request (id, method, headers, path with query, host, scheme,
/// protocol, size, and the buffered body when the provider asks for it).
pub fn check_request(
    local: &LocalWorkload,
    connection: Connection<'_>,
    req: &Request<ProxyBody>,
    body: Option<&BufferedBody>,
    provider: &Provider,
) -> CheckRequest {
    let mut headers = header_attributes(req.headers());
    let size = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(-1);
    let (text, raw) = match body {
        None => (String::new(), Vec::new()),
        Some(b) => {
            headers.insert(PARTIAL_BODY.as_str().to_string(), b.partial.to_string());
            if provider.body.is_some_and(|l| l.as_bytes) {
                (String::new(), b.bytes.to_vec())
            } else {
                (String::from_utf8_lossy(&b.bytes).into_owned(), Vec::new())
            }
        }
    };
    let mut check = connection_check(local, connection);
    if let Some(a) = check.attributes.as_mut() {
        a.request = Some(attribute_context::Request {
            time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            http: Some(attribute_context::HttpRequest {
                id: req
                    .headers()
                    .get(&X_REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                method: req.method().as_str().to_string(),
                headers,
                path: req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string(),
                host: request_authority(req).unwrap_or_default().to_string(),
                scheme: if connection.source_principal.is_some() {
                    "https"
                } else {
                    "http"
                }
                .to_string(),
                size,
                protocol: protocol(req.version()).to_string(),
                body: text,
                raw_body: raw,
                ..Default::default()
            }),
        });
    }
    check
}

/// The `CheckRequest` of a connection: who calls whom (addresses, SPIFFE IDs, this
/// workload's service and labels, the server name), no request.
pub fn connection_check(local: &LocalWorkload, connection: Connection<'_>) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                address: Some(address(connection.source)),
                principal: connection.source_principal.unwrap_or_default().to_string(),
                ..Default::default()
            }),
            destination: Some(attribute_context::Peer {
                address: Some(address(connection.destination)),
                service: local.metadata.canonical_service.to_string(),
                labels: local.labels.clone(),
                principal: local.id.as_str().to_string(),
                certificate: String::new(),
            }),
            tls_session: connection.sni.map(|sni| attribute_context::TlsSession {
                sni: sni.to_string(),
            }),
            ..Default::default()
        }),
    }
}

/// What a `CheckResponse` decides.
pub fn decision(provider: &Provider, resp: CheckResponse) -> Decision {
    let allowed = resp.status.as_ref().is_none_or(|s| s.code == 0);
    if allowed {
        let ok = match resp.http_response {
            Some(check_response::HttpResponse::OkResponse(ok)) => ok,
            _ => Default::default(),
        };
        return Decision::Allow {
            upstream: HeaderChanges {
                set: ok.headers.iter().filter_map(header_of).collect(),
                remove: ok
                    .headers_to_remove
                    .iter()
                    .filter(|h| !h.starts_with(':'))
                    .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                    .collect(),
            },
            downstream: HeaderChanges {
                set: ok
                    .response_headers_to_add
                    .iter()
                    .filter_map(header_of)
                    .collect(),
                remove: Vec::new(),
            },
        };
    }
    let denied = match resp.http_response {
        Some(check_response::HttpResponse::DeniedResponse(d)) => d,
        _ => Default::default(),
    };
    let status = denied
        .status
        .and_then(|s| u16::try_from(s.code).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .filter(|c| c.as_u16() >= 200)
        .unwrap_or(DEFAULT_STATUS);
    let mut headers = HeaderMap::new();
    let changes = HeaderChanges {
        set: denied
            .headers
            .iter()
            .filter_map(header_of)
            .filter(|(n, _, _)| !framing(n))
            .collect(),
        remove: Vec::new(),
    };
    changes.apply(&mut headers);
    Decision::Deny(Denial {
        provider: provider.name.clone(),
        status,
        headers,
        body: Bytes::from(denied.body),
    })
}

/// Calls `Check` on the provider's service through `sender`.
pub async fn call<S: CheckSender>(
    sender: S,
    provider: &Provider,
    check: CheckRequest,
) -> Result<Decision, NoAnswer> {
    let channel = SenderChannel(sender);
    let origin = format!("http://{}", provider.authority)
        .parse::<http::Uri>()
        .map_err(|e| NoAnswer(format!("authority {}: {e}", provider.authority)))?;
    let mut client = authorization_client::AuthorizationClient::with_origin(channel, origin);
    let mut request = tonic::Request::new(check);
    request.set_timeout(provider.timeout);
    match client.check(request).await {
        Ok(resp) => Ok(decision(provider, resp.into_inner())),
        Err(status) => Err(NoAnswer(format!(
            "Check failed: {:?}: {}",
            status.code(),
            status.message()
        ))),
    }
}

/// tonic's transport for one check: the request's body (one encoded message) is collected
/// and handed to the sender.
#[derive(Debug, Clone)]
struct SenderChannel<S>(S);

impl<S: CheckSender> tower::Service<Request<tonic::body::Body>> for SenderChannel<S> {
    type Response = http::Response<ProxyBody>;
    type Error = ProxyError;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<ProxyBody>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let sender = self.0.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "ext_authz: the check request did not encode");
                    ProxyError::Internal("the ext_authz check request did not encode")
                })?
                .to_bytes();
            sender
                .send(Request::from_parts(parts, ProxyBody::full(bytes)))
                .await
        })
    }
}
