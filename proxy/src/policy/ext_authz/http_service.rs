//! The HTTP protocol of an `envoyExtAuthzHttp` provider, as Envoy's HTTP ext_authz client
//! speaks it for Istio.
//!
//! The check is the original request without its body: same method, path `pathPrefix` +
//! the original path (query included), the headers always sent (`Authorization`, and
//! `Content-Length` of what the check carries), those `includeRequestHeadersInCheck` names
//! (Istio's string forms, case-insensitive) and `includeAdditionalHeadersInCheck`; the
//! original host travels in `x-forwarded-host` (the check's own `:authority` is the
//! provider's, which is where it goes). With `includeRequestBodyInCheck` the buffered body
//! goes too.
//!
//! The answer: a 2xx allows, setting `headersToUpstreamOnAllow` of the provider's response
//! headers on the request (and removing those it lists in `x-envoy-auth-headers-to-remove`)
//! and adding `headersToDownstreamOnAllow` to the caller's response; a 5xx is no answer
//! (Envoy counts it as an error, so `failOpen` applies); anything else denies with that
//! status, the provider's body and its headers (`headersToDownstreamOnDeny`, all of them when
//! the list is empty).

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, Version};
use http_body_util::{BodyExt, Limited};
use meshlite_xds_proto::v1;

use super::CheckSender;
use super::{
    Apply, BufferedBody, Decision, Denial, HeaderChanges, MAX_RESPONSE_BYTES, NoAnswer,
    PARTIAL_BODY, Provider, ProviderError, framing, name_patterns, named,
};
use crate::message::body::ProxyBody;
use crate::message::headers;
use crate::message::uri::request_authority;
use crate::policy::authz::matcher::StrMatch;

/// The response header in which an HTTP authorizer lists request headers to remove
/// (comma-separated), as Envoy reads it.
pub static HEADERS_TO_REMOVE: HeaderName =
    HeaderName::from_static("x-envoy-auth-headers-to-remove");

/// The header carrying the original request's host to the authorizer.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// An `envoyExtAuthzHttp` provider's options, compiled.
#[derive(Debug)]
pub struct HttpService {
    path_prefix: String,
    include: Box<[StrMatch]>,
    additional: Box<[(HeaderName, HeaderValue)]>,
    to_upstream_on_allow: Box<[StrMatch]>,
    to_downstream_on_deny: Box<[StrMatch]>,
    to_downstream_on_allow: Box<[StrMatch]>,
}

impl HttpService {
    /// Compiles the pushed options of provider `name`.
    pub fn compile(name: &str, h: &v1::ext_authz_provider::Http) -> Result<Self, ProviderError> {
        let additional = h
            .include_additional_headers_in_check
            .iter()
            .map(|(k, v)| {
                match (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    (Ok(k), Ok(v)) => Ok((k, v)),
                    _ => Err(ProviderError::Header {
                        provider: name.to_string(),
                        header: k.clone(),
                    }),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            path_prefix: h.path_prefix.clone(),
            include: name_patterns(
                name,
                "includeRequestHeadersInCheck",
                &h.include_request_headers_in_check,
            )?,
            additional,
            to_upstream_on_allow: name_patterns(
                name,
                "headersToUpstreamOnAllow",
                &h.headers_to_upstream_on_allow,
            )?,
            to_downstream_on_deny: name_patterns(
                name,
                "headersToDownstreamOnDeny",
                &h.headers_to_downstream_on_deny,
            )?,
            to_downstream_on_allow: name_patterns(
                name,
                "headersToDownstreamOnAllow",
                &h.headers_to_downstream_on_allow,
            )?,
        })
    }

    /// The check request for `req`, addressed to the provider.
    pub fn check_request(
        &self,
        provider: &Provider,
        req: &Request<ProxyBody>,
        body: Option<&BufferedBody>,
    ) -> Request<ProxyBody> {
        let original = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let target = format!(
            "http://{}{}{original}",
            provider.authority,
            self.path_prefix.trim_end_matches('/')
        );
        let mut check = Request::new(ProxyBody::Empty);
        *check.method_mut() = req.method().clone();
        *check.version_mut() = Version::HTTP_11;
        match target.parse::<http::Uri>() {
            Ok(uri) => *check.uri_mut() = uri,
            // A prefix that makes no URI: the check goes to the original path.
            Err(_) => *check.uri_mut() = original_uri(provider, original),
        }
        let h = check.headers_mut();
        for (name, value) in req.headers() {
            let always = *name == header::AUTHORIZATION;
            if (always || named(&self.include, name)) && !framing(name) {
                h.append(name.clone(), value.clone());
            }
        }
        headers::strip_hop_by_hop(h);
        if let Some(host) = request_authority(req).and_then(|a| HeaderValue::from_str(a).ok()) {
            h.insert(X_FORWARDED_HOST.clone(), host);
        }
        for (name, value) in &self.additional {
            h.insert(name.clone(), value.clone());
        }
        let bytes = body.map(|b| b.bytes.clone()).unwrap_or_default();
        if let Some(b) = body {
            h.insert(
                PARTIAL_BODY.clone(),
                HeaderValue::from_static(if b.partial { "true" } else { "false" }),
            );
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        *check.body_mut() = ProxyBody::full(bytes);
        check
    }

    /// Sends the check to the provider's service and reads its answer.
    pub async fn call(
        &self,
        sender: &impl CheckSender,
        provider: &Provider,
        check: Request<ProxyBody>,
    ) -> Result<Decision, NoAnswer> {
        let resp = sender
            .send(check)
            .await
            .map_err(|e| NoAnswer(format!("check request failed: {e}")))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| NoAnswer(format!("check response body: {e}")))?
            .to_bytes();
        self.decision(provider, Response::from_parts(parts, body))
    }

    /// What the provider's response decides.
    pub fn decision(
        &self,
        provider: &Provider,
        resp: Response<Bytes>,
    ) -> Result<Decision, NoAnswer> {
        let status = resp.status();
        if status.is_server_error() {
            return Err(NoAnswer(format!("the authorizer answered {status}")));
        }
        let (parts, body) = resp.into_parts();
        let from = &parts.headers;
        if status.is_success() {
            let pick = |patterns: &[StrMatch]| HeaderChanges {
                set: from
                    .iter()
                    .filter(|(n, _)| named(patterns, n) && !framing(n))
                    .map(|(n, v)| (n.clone(), v.clone(), Apply::Overwrite))
                    .collect(),
                remove: Vec::new(),
            };
            let mut upstream = pick(&self.to_upstream_on_allow);
            upstream.remove = from
                .get_all(&HEADERS_TO_REMOVE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                .collect();
            return Ok(Decision::Allow {
                upstream,
                downstream: pick(&self.to_downstream_on_allow),
            });
        }
        let mut headers = HeaderMap::new();
        for (n, v) in from {
            let wanted =
                self.to_downstream_on_deny.is_empty() || named(&self.to_downstream_on_deny, n);
            if wanted && !framing(n) && *n != HEADERS_TO_REMOVE {
                headers.append(n.clone(), v.clone());
            }
        }
        Ok(Decision::Deny(Denial {
            provider: provider.name.clone(),
            status,
            headers,
            body,
        }))
    }
}

/// `http://<provider><original>`, the check's URI when the prefix makes none.
fn original_uri(provider: &Provider, original: &str) -> http::Uri {
    format!("http://{}{original}", provider.authority)
        .parse()
        .unwrap_or_default()
}
