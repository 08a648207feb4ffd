//! The one place where failures become responses.
//!
//! Every layer returns a typed [`ProxyError`]; this module decides the status code, Envoy's
//! response flag and the short body, so `503 UF` means the same thing everywhere. It also
//! builds every response the proxy answers itself ([`local_reply`], [`fault_abort`],
//! [`ProxyError::reply`]): a gRPC caller gets a trailers-only response with the
//! `grpc-status` Envoy would send ([`grpc_status_for`]) instead of an HTTP error page.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::ProxyBody;
use super::response_flags::ResponseFlags;
use crate::resilience::retry::Outcome;
use crate::transport::connect::ConnectError;

/// Why the proxy answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No configured service matches the request's host (Envoy `NR`).
    #[error("no route for host `{0}`")]
    NoRoute(String),
    /// The request has no host to route on.
    #[error("request has no :authority or Host header")]
    NoHost,
    /// The inbound side does not serve the requested port (Envoy `NR`).
    #[error("this workload serves no port {0}")]
    NoInboundPort(u16),
    /// A tunnel (CONNECT) to a port that is not declared `tcp`.
    #[error("port {0} is not declared tcp; CONNECT refused")]
    NotTcpPort(u16),
    /// Connecting to the upstream failed (Envoy `UF`).
    #[error("upstream connect error: {0}")]
    Connect(#[from] ConnectError),
    /// The upstream connection broke before a response (Envoy `UC`).
    #[error("upstream connection terminated: {0}")]
    UpstreamTerminated(String),
    /// The upstream reset the stream (Envoy `UR`).
    #[error("upstream reset the stream: {0}")]
    UpstreamReset(String),
    /// The destination cluster has no endpoint (Envoy `UH`).
    #[error("no healthy upstream in {0}")]
    NoHealthyUpstream(String),
    /// The route names a cluster this proxy does not have, e.g. an undefined subset
    /// (Envoy `NC`).
    #[error("no cluster {0}")]
    NoCluster(String),
    /// A circuit breaker of the cluster is open: too many requests in flight (Envoy `UO`,
    /// with `x-envoy-overloaded: true`). Never queued, never retried.
    #[error("upstream overflow in {0}: too many requests in flight")]
    Overflow(String),
    /// The route's `timeout` expired before the response (Envoy `UT`, 504).
    #[error("upstream request timeout")]
    Timeout,
    /// One attempt's `perTryTimeout` expired (Envoy `UT`, 504, when it is the last).
    #[error("upstream per-try timeout")]
    PerTryTimeout,
    /// A local rate limit refused the request (Envoy `RL`, 429).
    #[error("local_rate_limited")]
    RateLimited,
    /// The upstream refused the stream before processing it (HTTP/2 `REFUSED_STREAM`).
    #[error("upstream refused the stream: {0}")]
    RefusedStream(String),
    /// An AuthorizationPolicy denied the request (403 `RBAC: access denied`); the policy
    /// that matched, or `None` when no ALLOW policy did.
    #[error("RBAC: access denied")]
    AccessDenied(Option<crate::telemetry::metrics::Label>),
    /// RequestAuthentication refused the request's JWT (401, Envoy's jwt_authn message).
    #[error("{0}")]
    Unauthenticated(crate::policy::jwt::JwtError),
    /// The request path cannot be normalised (400).
    #[error("{0}")]
    BadPath(#[from] crate::message::path::PathError),
    /// The client's request body was malformed (a bad chunk, a body shorter than announced):
    /// 400, the connection closed.
    #[error("malformed request body: {0}")]
    BadRequestBody(String),
    /// The client sent its request body slower than the minimum rate: 408, the connection
    /// closed.
    #[error("{0}")]
    SlowRequestBody(String),
    /// A request that must not be forwarded as it is (400): smuggling-prone framing, several
    /// Host headers, an absolute-form target naming another authority.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A transfer coding the proxy does not implement (501).
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    /// The external authorizer of a CUSTOM policy denied the request: the caller gets its
    /// status, headers and body (Envoy `UAEX`).
    #[error("denied by external authorizer {}", .0.provider)]
    ExtAuthzDenied(Box<crate::policy::ext_authz::Denial>),
    /// The external authorizer gave no answer (unreachable, timeout, error) and does not
    /// fail open, or the policy names no provider: `statusOnError`, 403 by default (Envoy
    /// `UAEX` too).
    #[error("external authorizer `{provider}` gave no answer: {reason}")]
    ExtAuthzError {
        /// The provider's name.
        provider: crate::telemetry::metrics::Label,
        /// `statusOnError`.
        status: StatusCode,
        /// What went wrong, for the log.
        reason: String,
    },
    /// The request body is longer than an authorizer may buffer (413).
    #[error("request body larger than the authorizer's maxRequestBytes")]
    PayloadTooLarge,
    /// The caller's connection failed while the proxy read its request (Envoy `DC`).
    #[error("downstream connection terminated: {0}")]
    DownstreamTerminated(String),
    /// A route's rewrite produced a request target that is not a valid URI (500): the
    /// configuration's fault, not the upstream's.
    #[error("rewritten request target is invalid: {0}")]
    InvalidRewrite(String),
    /// The request's target could not be rebuilt for the next hop (500).
    #[error("request target cannot be forwarded: {0}")]
    InvalidTarget(String),
    /// A broken internal invariant (500): a bug of this proxy, never the upstream's fault.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl ProxyError {
    /// What this failure of one attempt is to a retry policy. `unsent`: the request never
    /// left this proxy (it is still in hand).
    pub fn retry_outcome(&self, unsent: bool) -> Outcome {
        match self {
            ProxyError::Connect(_) => Outcome::ConnectFailure,
            ProxyError::RefusedStream(_) => Outcome::RefusedStream,
            ProxyError::UpstreamReset(_) | ProxyError::UpstreamTerminated(_) => Outcome::Reset {
                before_request: unsent,
            },
            ProxyError::PerTryTimeout => Outcome::PerTryTimeout,
            ProxyError::Overflow(_) => Outcome::CircuitBreakerOverflow,
            ProxyError::BadRequestBody(_)
            | ProxyError::SlowRequestBody(_)
            | ProxyError::DownstreamTerminated(_) => Outcome::DownstreamFailure,
            // Decisions and failures of this proxy (no host, a bad target, a bug...).
            _ => Outcome::LocalFailure,
        }
    }

    /// The status outlier detection counts this failure as (Envoy maps a local-origin
    /// failure without a response to 503, a timeout to 504).
    pub fn outlier_status(&self) -> u16 {
        match self {
            ProxyError::Connect(ConnectError::Timeout(_)) | ProxyError::PerTryTimeout => {
                crate::resilience::outlier::LOCAL_TIMEOUT_STATUS
            }
            _ => crate::resilience::outlier::LOCAL_FAILURE_STATUS,
        }
    }

    /// The error for a request that found no destination.
    pub fn from_miss(miss: crate::route::RouteMiss, authority: &str) -> Self {
        use crate::route::RouteMiss;
        match miss {
            RouteMiss::UnknownHost | RouteMiss::UnknownPort | RouteMiss::NoMatchingRoute => {
                ProxyError::NoRoute(authority.to_string())
            }
            RouteMiss::NoCluster(name) => ProxyError::NoCluster(name.to_string()),
        }
    }

    /// HTTP status sent to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute(_) | ProxyError::NoInboundPort(_) => StatusCode::NOT_FOUND,
            ProxyError::NoHost
            | ProxyError::BadPath(_)
            | ProxyError::BadRequestBody(_)
            | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::SlowRequestBody(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::NotTcpPort(_) | ProxyError::AccessDenied(_) => StatusCode::FORBIDDEN,
            ProxyError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ProxyError::Connect(_)
            | ProxyError::UpstreamTerminated(_)
            | ProxyError::UpstreamReset(_)
            | ProxyError::NoHealthyUpstream(_)
            | ProxyError::NoCluster(_)
            | ProxyError::RefusedStream(_)
            | ProxyError::Overflow(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout | ProxyError::PerTryTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::ExtAuthzDenied(d) => d.status,
            ProxyError::ExtAuthzError { status, .. } => *status,
            ProxyError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::DownstreamTerminated(_) => StatusCode::BAD_REQUEST,
            ProxyError::InvalidRewrite(_)
            | ProxyError::InvalidTarget(_)
            | ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Envoy response flag for access logs and the `response_flags` label.
    pub fn flag(&self) -> ResponseFlags {
        match self {
            ProxyError::NoRoute(_) | ProxyError::NoInboundPort(_) => ResponseFlags::NR,
            ProxyError::NoHost
            | ProxyError::BadPath(_)
            | ProxyError::BadRequestBody(_)
            | ProxyError::BadRequest(_)
            | ProxyError::UnsupportedTransferCoding => ResponseFlags::DPE,
            // Envoy's stream idle timeout: the client's stream stopped making progress.
            ProxyError::SlowRequestBody(_) => ResponseFlags::SI,
            // Envoy's RBAC and jwt_authn filters set no flag; the details say why.
            ProxyError::AccessDenied(_) | ProxyError::Unauthenticated(_) => ResponseFlags::NONE,
            ProxyError::NotTcpPort(_) => ResponseFlags::NR,
            ProxyError::Connect(_) => ResponseFlags::UF,
            ProxyError::UpstreamTerminated(_) => ResponseFlags::UC,
            ProxyError::UpstreamReset(_) | ProxyError::RefusedStream(_) => ResponseFlags::UR,
            ProxyError::Timeout | ProxyError::PerTryTimeout => ResponseFlags::UT,
            ProxyError::RateLimited => ResponseFlags::RL,
            ProxyError::NoHealthyUpstream(_) => ResponseFlags::UH,
            ProxyError::NoCluster(_) => ResponseFlags::NC,
            ProxyError::Overflow(_) => ResponseFlags::UO,
            ProxyError::ExtAuthzDenied(_) | ProxyError::ExtAuthzError { .. } => ResponseFlags::UAEX,
            ProxyError::PayloadTooLarge => ResponseFlags::NONE,
            ProxyError::DownstreamTerminated(_) => ResponseFlags::DC,
            // Envoy sets no flag on an internal error; the log line says what broke.
            ProxyError::InvalidRewrite(_)
            | ProxyError::InvalidTarget(_)
            | ProxyError::Internal(_) => ResponseFlags::NONE,
        }
    }

    /// The flags of a failure after the retry loop ended with `retry` (`URX` or `UO`):
    /// Envoy adds them to an upstream failure (`UF,URX`, `UT,UO`); any other failure keeps
    /// its own flag alone.
    pub fn flag_after_retries(&self, retry: ResponseFlags) -> ResponseFlags {
        let base = self.flag();
        let upstream =
            ResponseFlags::UF | ResponseFlags::UC | ResponseFlags::UR | ResponseFlags::UT;
        if base.intersects(upstream) {
            base | (retry & (ResponseFlags::URX | ResponseFlags::UO))
        } else {
            base
        }
    }

    /// Envoy's `response_code_details` for local replies that have them.
    pub fn details(&self) -> Option<String> {
        match self {
            ProxyError::AccessDenied(p) => Some(format!(
                "rbac_access_denied_matched_policy[{}]",
                p.as_deref().unwrap_or("none")
            )),
            ProxyError::BadPath(_) => Some("path_normalization_failed".into()),
            ProxyError::Unauthenticated(e) => Some(e.details()),
            ProxyError::ExtAuthzDenied(_) => Some("ext_authz_denied".into()),
            ProxyError::ExtAuthzError { .. } => Some("ext_authz_error".into()),
            ProxyError::PayloadTooLarge => Some("request_payload_too_large".into()),
            _ => None,
        }
    }

    /// The gRPC status a gRPC caller gets for this failure.
    pub fn grpc_status(&self) -> u32 {
        grpc_status_for(self.status())
    }

    /// The TLS/TCP failure reason when the error is a connect failure.
    pub fn transport_reason(&self) -> Option<&'static str> {
        match self {
            ProxyError::Connect(e) => Some(e.transport_reason()),
            _ => None,
        }
    }

    /// Whether the client's connection must be closed after this answer: its byte stream
    /// can no longer be trusted to frame the next request.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequestBody(_)
                | ProxyError::SlowRequestBody(_)
                | ProxyError::BadRequest(_)
                | ProxyError::UnsupportedTransferCoding
        )
    }

    /// Classifies a hyper client error on an established connection. A failure of the
    /// request body being sent is the client's (a malformed or too slow body), not the
    /// upstream's.
    pub fn from_upstream(err: &hyper::Error) -> Self {
        use std::error::Error as _;
        let mut src = err.source();
        while let Some(s) = src {
            if let Some(body) = s.downcast_ref::<crate::message::body::BodyError>() {
                return match body {
                    crate::message::body::BodyError::TooSlow { .. } => {
                        ProxyError::SlowRequestBody(body.to_string())
                    }
                    crate::message::body::BodyError::Hyper(e) => {
                        ProxyError::BadRequestBody(e.to_string())
                    }
                };
            }
            src = s.source();
        }
        let mut src = err.source();
        while let Some(s) = src {
            if let Some(h2) = s.downcast_ref::<h2_reason::H2Error>()
                && h2.is_reset()
            {
                if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                    return ProxyError::RefusedStream(err.to_string());
                }
                return ProxyError::UpstreamReset(err.to_string());
            }
            src = s.source();
        }
        ProxyError::UpstreamTerminated(err.to_string())
    }

    /// Classifies a failure of an HTTP/1.1 pool of `cluster` (its name for an overflow).
    pub fn from_h1(err: crate::transport::h1_pool::H1Error, cluster: &str) -> Self {
        use crate::transport::h1_pool::H1Error;
        match err {
            H1Error::Connect(c) => ProxyError::Connect(c),
            H1Error::Upstream(h) => ProxyError::from_upstream(&h),
            H1Error::Overflow => ProxyError::Overflow(cluster.to_string()),
        }
    }

    /// Maps a failure of the plaintext pool to a service outside the mesh (`target` is the
    /// endpoint as configured, possibly a name).
    pub fn from_direct(err: hyper_util::client::legacy::Error, target: &str) -> Self {
        use std::error::Error as _;
        let mut src = err.source();
        while let Some(s) = src {
            if let Some(crate::transport::egress::EgressError::Tls { reason, message }) =
                s.downcast_ref::<crate::transport::egress::EgressError>()
            {
                return ProxyError::Connect(ConnectError::EgressTls {
                    target: target.into(),
                    reason,
                    message: message.clone(),
                });
            }
            src = s.source();
        }
        if err.is_connect() {
            // hyper-util's connect error wraps the OS error (or the resolver's).
            let mut src = err.source();
            let mut kind = std::io::ErrorKind::Other;
            while let Some(s) = src {
                if let Some(io) = s.downcast_ref::<std::io::Error>() {
                    kind = io.kind();
                    break;
                }
                src = s.source();
            }
            let message = match err.source() {
                Some(s) => s.to_string(),
                None => err.to_string(),
            };
            return ProxyError::Connect(ConnectError::Direct {
                target: target.into(),
                source: std::io::Error::new(kind, message),
            });
        }
        let mut src = err.source();
        while let Some(s) = src {
            if let Some(h) = s.downcast_ref::<hyper::Error>() {
                return ProxyError::from_upstream(h);
            }
            src = s.source();
        }
        ProxyError::UpstreamTerminated(err.to_string())
    }

    /// The response the client receives: for a gRPC caller (`grpc`), a trailers-only
    /// response carrying the [`ProxyError::grpc_status`] and the message, as Envoy sends.
    pub fn reply(&self, grpc: bool) -> Response<ProxyBody> {
        if grpc {
            let message = match self {
                // The authorizer's own words, when it gave some.
                ProxyError::ExtAuthzDenied(d) if !d.body.is_empty() => {
                    String::from_utf8_lossy(&d.body).into_owned()
                }
                other => other.to_string(),
            };
            let mut resp = grpc_reply(self.grpc_status(), &message);
            if let ProxyError::ExtAuthzDenied(d) = self {
                authorizer_headers(resp.headers_mut(), &d.headers);
            }
            if matches!(self, ProxyError::Overflow(_)) {
                resp.headers_mut().insert(
                    http::HeaderName::from_static("x-envoy-overloaded"),
                    http::HeaderValue::from_static("true"),
                );
            }
            return resp;
        }
        self.into_response()
    }

    /// The plain-text response the client receives.
    pub fn into_response(&self) -> Response<ProxyBody> {
        if let ProxyError::ExtAuthzDenied(d) = self {
            let mut resp = Response::new(ProxyBody::full(d.body.clone()));
            *resp.status_mut() = d.status;
            if !d.body.is_empty() {
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            }
            authorizer_headers(resp.headers_mut(), &d.headers);
            return resp;
        }
        let body = match self {
            // The reason goes to the log and the access log, not to the caller.
            ProxyError::ExtAuthzError { provider, .. } => {
                format!("meshlite: external authorizer `{provider}` unavailable\n")
            }
            ProxyError::AccessDenied(_) => "RBAC: access denied".to_string(),
            ProxyError::Unauthenticated(e) => e.to_string(),
            ProxyError::Connect(e) => format!(
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: {}: {e}\n",
                e.transport_reason()
            ),
            other => format!("meshlite: {other}\n"),
        };
        let mut resp = local_reply(self.status(), Bytes::from(body));
        if self.closes_connection() {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if matches!(self, ProxyError::Unauthenticated(_)) {
            // RFC 6750, as Envoy's jwt_authn answers.
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        if matches!(self, ProxyError::Overflow(_)) {
            resp.headers_mut().insert(
                http::HeaderName::from_static("x-envoy-overloaded"),
                http::HeaderValue::from_static("true"),
            );
        }
        resp
    }
}

/// The headers an external authorizer gave for its denial, on the proxy's reply (its own
/// values win over the reply's defaults).
fn authorizer_headers(to: &mut http::HeaderMap, from: &http::HeaderMap) {
    for name in from.keys() {
        to.remove(name);
    }
    for (name, value) in from {
        to.append(name.clone(), value.clone());
    }
}

/// A response generated by the proxy itself: plain text, never cached.
pub fn local_reply(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The `grpc-status` a gRPC caller gets in place of an HTTP status the proxy answers with,
/// after Envoy's HTTP-to-gRPC mapping: 503 (and 502) UNAVAILABLE, 504 (`UT`)
/// DEADLINE_EXCEEDED, 429 RESOURCE_EXHAUSTED, 403 PERMISSION_DENIED, 401 UNAUTHENTICATED,
/// 404 and 501 UNIMPLEMENTED, 400 and 500 INTERNAL, anything else UNKNOWN.
pub fn grpc_status_for(status: StatusCode) -> u32 {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::INTERNAL_SERVER_ERROR => grpc::INTERNAL,
        StatusCode::UNAUTHORIZED => grpc::UNAUTHENTICATED,
        StatusCode::FORBIDDEN => grpc::PERMISSION_DENIED,
        StatusCode::NOT_FOUND | StatusCode::NOT_IMPLEMENTED => grpc::UNIMPLEMENTED,
        StatusCode::TOO_MANY_REQUESTS => grpc::RESOURCE_EXHAUSTED,
        StatusCode::GATEWAY_TIMEOUT => grpc::DEADLINE_EXCEEDED,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => grpc::UNAVAILABLE,
        _ => grpc::UNKNOWN,
    }
}

/// The local reply of a fault-injection abort (`fault filter abort`): the rule's HTTP status,
/// or for a gRPC caller a trailers-only response (the rule's gRPC status when it gives one,
/// else the HTTP status mapped by [`grpc_status_for`]).
pub fn fault_abort(abort: crate::route::action::Abort, grpc: bool) -> Response<ProxyBody> {
    use crate::route::action::Abort;
    const MESSAGE: &str = "fault filter abort";
    match abort {
        Abort::Grpc(code) => grpc_reply(code, MESSAGE),
        Abort::Http(status) if grpc => grpc_reply(grpc_status_for(status), MESSAGE),
        Abort::Http(status) => local_reply(status, Bytes::from_static(MESSAGE.as_bytes())),
    }
}

/// The gRPC status codes local replies use.
pub mod grpc {
    /// UNKNOWN.
    pub const UNKNOWN: u32 = 2;
    /// DEADLINE_EXCEEDED.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// PERMISSION_DENIED.
    pub const PERMISSION_DENIED: u32 = 7;
    /// RESOURCE_EXHAUSTED.
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// UNIMPLEMENTED.
    pub const UNIMPLEMENTED: u32 = 12;
    /// INTERNAL.
    pub const INTERNAL: u32 = 13;
    /// UNAVAILABLE.
    pub const UNAVAILABLE: u32 = 14;
    /// UNAUTHENTICATED.
    pub const UNAUTHENTICATED: u32 = 16;
}

/// Whether a request is gRPC (`content-type: application/grpc[+proto|...]`).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A trailers-only gRPC response: HTTP 200, `grpc-status` and `grpc-message` in the
/// headers, no body (the message percent-encoded as the gRPC spec asks).
pub fn grpc_reply(status: u32, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Empty);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        http::HeaderName::from_static("grpc-status"),
        HeaderValue::from(status),
    );
    let mut encoded = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        h.insert(http::HeaderName::from_static("grpc-message"), v);
    }
    resp
}

/// The h2 crate's error, reached through hyper's error sources.
mod h2_reason {
    /// Re-export so the downcast above names one type.
    pub type H2Error = h2::Error;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::jwt::JwtError;

    #[test]
    fn a_refused_token_is_a_401_with_envoys_message_and_unauthenticated_for_grpc() {
        let e = ProxyError::Unauthenticated(JwtError::Expired);
        let resp = e.reply(false);
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
        assert_eq!(e.to_string(), "Jwt is expired");
        assert_eq!(
            e.details().as_deref(),
            Some("jwt_authn_access_denied{Jwt_is_expired}")
        );
        let grpc = e.reply(true);
        assert_eq!(grpc.headers()["grpc-status"], "16");
        assert_eq!(grpc.headers()["grpc-message"], "Jwt is expired");
    }

    #[test]
    fn a_grpc_caller_gets_a_trailers_only_reply_with_envoys_grpc_status() {
        let cases: [(ProxyError, u16, &str); 8] = [
            (ProxyError::NoHealthyUpstream("c".into()), 503, "14"),
            (ProxyError::Timeout, 504, "4"),
            (ProxyError::RateLimited, 429, "8"),
            (ProxyError::AccessDenied(None), 403, "7"),
            (
                ProxyError::Unauthenticated(crate::policy::jwt::JwtError::Expired),
                401,
                "16",
            ),
            (ProxyError::NoRoute("h".into()), 404, "12"),
            (ProxyError::UnsupportedTransferCoding, 501, "12"),
            (ProxyError::InvalidRewrite("bad".into()), 500, "13"),
        ];
        for (e, http, grpc) in cases {
            assert_eq!(e.reply(false).status().as_u16(), http, "{e}");
            let r = e.reply(true);
            assert_eq!(r.status(), StatusCode::OK, "{e}");
            assert_eq!(r.headers()["grpc-status"], grpc, "{e}");
            assert!(r.headers().contains_key("grpc-message"), "{e}");
            assert!(http_body::Body::is_end_stream(r.body()), "{e}: no body");
        }
    }

    #[test]
    fn a_fault_abort_is_the_rules_status_or_a_grpc_status() {
        use crate::route::action::Abort;
        let plain = fault_abort(Abort::Http(StatusCode::IM_A_TEAPOT), false);
        assert_eq!(plain.status(), StatusCode::IM_A_TEAPOT);
        let grpc = fault_abort(Abort::Http(StatusCode::SERVICE_UNAVAILABLE), true);
        assert_eq!(grpc.headers()["grpc-status"], "14");
        let code = fault_abort(Abort::Grpc(8), false);
        assert_eq!(code.status(), StatusCode::OK);
        assert_eq!(code.headers()["grpc-status"], "8");
        assert_eq!(code.headers()["grpc-message"], "fault filter abort");
    }

    #[test]
    fn retry_flags_join_only_an_upstream_failure() {
        let retry = ResponseFlags::URX;
        let e = ProxyError::UpstreamReset("r".into());
        assert_eq!(e.flag_after_retries(retry).to_string(), "UR,URX");
        let e = ProxyError::Timeout;
        assert_eq!(e.flag_after_retries(ResponseFlags::UO).to_string(), "UT,UO");
        let e = ProxyError::NoHealthyUpstream("c".into());
        assert_eq!(e.flag_after_retries(retry).to_string(), "UH");
        // A delay flag never joins a failure's.
        let e = ProxyError::Timeout;
        assert_eq!(e.flag_after_retries(ResponseFlags::DI).to_string(), "UT");
    }
}
