//! External authorization: AuthorizationPolicy CUSTOM actions (SEMANTICS 4.1), as Envoy's
//! ext_authz filter does it for Istio.
//!
//! A request a CUSTOM policy matches is first put to the policy's provider, one of the
//! MeshConfig `extensionProviders` pushed with the mesh settings: over Envoy's gRPC protocol
//! (`envoy.service.auth.v3.Authorization/Check`, [`grpc_service`]) or as a plain HTTP request
//! ([`http_service`]). The provider is a service of the mesh like any other (a mesh service
//! reached over mutual TLS to its sidecar, or a MESH_EXTERNAL ServiceEntry reached in
//! plaintext), found by its host in this proxy's snapshot and sent to through the outbound
//! path's own sending code, which the request path hands in as a [`CheckSender`] (so this
//! module holds compiled policy and protocol, and imports neither the snapshot nor the
//! request path). Its answer decides before DENY and ALLOW policies do:
//!
//! - allow: the request goes on to DENY/ALLOW evaluation with the provider's header changes
//!   applied (`ok_response` headers, `headersToUpstreamOnAllow`), and the caller's response
//!   gets the headers the provider asked for;
//! - deny: the caller gets the provider's status (403 unless it says otherwise), headers and
//!   body, flagged `UAEX`; the app never sees the request;
//! - no answer (unreachable, timeout, gRPC error, HTTP 5xx): `failOpen` lets the request
//!   through (counted apart), otherwise the caller gets `statusOnError` (403), flagged `UAEX`
//!   too, as Envoy flags it.
//!
//! A TCP connection a CUSTOM rule matches goes to a gRPC provider with the connection's
//! attributes only (Envoy's network ext_authz filter); a denial closes it. A policy naming a
//! provider the MeshConfig does not define denies (fails closed). Counted
//! under Envoy's ext_authz statistics (`ok`, `denied`, `error`, `failure_mode_allowed`). All of
//! this runs only for requests a CUSTOM policy matched: the request path of a workload without
//! CUSTOM policies never reaches this module.

pub mod grpc_service;
pub mod http_service;

use crate::telemetry::prom::Counter;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use meshlite_xds_proto::v1;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::authz::StatsSource;
use super::authz::matcher::{PatternError, StrMatch};
use crate::message::body::ProxyBody;
use crate::message::errors::ProxyError;
use crate::message::replay::{MAX_REPLAY_BYTES, ReplayBody};
use crate::telemetry::metrics::Label;
use crate::telemetry::peer::LocalWorkload;

/// How a check reaches its provider's service. The request path gives one (its own sender
/// over the provider's cluster, so a check travels as any request to that service does);
/// tests give a fake.
pub trait CheckSender: Clone + Send + Sync + 'static {
    /// Sends one check request and gives the provider's response.
    fn send(
        &self,
        req: Request<ProxyBody>,
    ) -> impl std::future::Future<Output = Result<http::Response<ProxyBody>, ProxyError>> + Send;
}

/// What an authorization needs from the request path: this workload's providers, its own
/// description (for the check's attributes) and the way to a provider's host.
pub struct Authorizer<'a, F> {
    /// The MeshConfig's providers, compiled.
    pub providers: &'a Providers,
    /// This workload, as the check describes the destination.
    pub local: &'a LocalWorkload,
    /// A sender to the service of a provider's host, `None` when this proxy does not know it.
    pub sender_for: F,
}

/// An authorizer's `timeout` when MeshConfig sets none: Istio's default, 600 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The status of a denial that names none, and of `statusOnError` unset (Envoy's 403).
pub const DEFAULT_STATUS: StatusCode = StatusCode::FORBIDDEN;

/// The most bytes of an authorizer's HTTP response body read (a denial's body goes to the
/// caller); a longer one is an authorizer error.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The request header telling the authorizer whether the body it got is partial (Envoy's).
pub static PARTIAL_BODY: HeaderName = HeaderName::from_static("x-envoy-auth-partial-body");

/// Why the pushed providers could not be compiled (the push is refused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// A header pattern is not one of Istio's string forms.
    #[error("extension provider `{provider}`: {field}: {source}")]
    Pattern {
        /// The provider's name.
        provider: String,
        /// The MeshConfig field.
        field: &'static str,
        /// What is wrong.
        source: PatternError,
    },
    /// A header to add to the check request is not a valid header.
    #[error(
        "extension provider `{provider}`: includeAdditionalHeadersInCheck `{header}` is not a valid header"
    )]
    Header {
        /// The provider's name.
        provider: String,
        /// The header's name.
        header: String,
    },
    /// The provider has no service or port, or is of no known kind.
    #[error("extension provider `{provider}`: {why}")]
    Invalid {
        /// The provider's name.
        provider: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// Envoy's ext_authz statistics of one provider.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// `envoy_http_ext_authz_ok`: checks that allowed.
    pub ok: Counter,
    /// `envoy_http_ext_authz_denied`: checks that denied.
    pub denied: Counter,
    /// `envoy_http_ext_authz_error`: checks with no answer (unreachable, timeout, error).
    pub error: Counter,
    /// `envoy_http_ext_authz_failure_mode_allowed`: of those, requests `failOpen` let
    /// through.
    pub failure_mode_allowed: Counter,
}

/// `includeRequestBodyInCheck`: how much of the request body the check carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyInCheck {
    /// Bytes buffered at most (bounded by [`MAX_REPLAY_BYTES`]: the buffered bytes are also
    /// the ones played back to the app).
    pub max_bytes: usize,
    /// A larger body sends its first `max_bytes` instead of failing with 413.
    pub allow_partial: bool,
    /// gRPC: as `raw_body` bytes, not `body` text.
    pub as_bytes: bool,
}

/// Which protocol the provider speaks.
#[derive(Debug)]
pub enum Service {
    /// `envoyExtAuthzGrpc`.
    Grpc,
    /// `envoyExtAuthzHttp`.
    Http(http_service::HttpService),
}

/// One external authorizer, compiled from the pushed MeshConfig.
#[derive(Debug)]
pub struct Provider {
    /// The name policies refer to.
    pub name: Label,
    /// `service:port`, resolved in the snapshot per check (a mesh service or a ServiceEntry
    /// host).
    pub authority: http::uri::Authority,
    /// Per check.
    pub timeout: Duration,
    /// Allow when the provider gives no answer.
    pub fail_open: bool,
    /// The caller's status when the provider gives no answer and `fail_open` is off.
    pub status_on_error: StatusCode,
    /// The request body in the check, when asked for.
    pub body: Option<BodyInCheck>,
    /// Its protocol and options.
    pub service: Service,
    /// Its counters.
    pub stats: Stats,
}

impl Provider {
    /// Compiles a pushed provider.
    pub fn compile(
        p: &v1::ExtAuthzProvider,
        stats: &dyn StatsSource,
    ) -> Result<Self, ProviderError> {
        use v1::ext_authz_provider::Kind;
        let invalid = |why| ProviderError::Invalid {
            provider: p.name.clone(),
            why,
        };
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid("the port is not 1-65535"))?;
        if p.service.is_empty() {
            return Err(invalid("no service"));
        }
        let authority = http::uri::Authority::try_from(format!("{}:{port}", p.service))
            .map_err(|_| invalid("the service is not a host name"))?;
        let service = match &p.kind {
            Some(Kind::Grpc(_)) => Service::Grpc,
            Some(Kind::Http(h)) => Service::Http(http_service::HttpService::compile(&p.name, h)?),
            None => return Err(invalid("neither envoyExtAuthzGrpc nor envoyExtAuthzHttp")),
        };
        Ok(Self {
            name: p.name.as_str().into(),
            authority,
            timeout: p
                .timeout
                .as_ref()
                .and_then(|d| Duration::try_from(*d).ok())
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_TIMEOUT),
            fail_open: p.fail_open,
            status_on_error: u16::try_from(p.status_on_error)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(DEFAULT_STATUS),
            body: p
                .include_request_body_in_check
                .as_ref()
                .map(|b| BodyInCheck {
                    max_bytes: usize::try_from(b.max_request_bytes)
                        .unwrap_or(usize::MAX)
                        .min(MAX_REPLAY_BYTES),
                    allow_partial: b.allow_partial_message,
                    as_bytes: b.pack_as_bytes,
                }),
            service,
            stats: stats.ext_authz(&p.name),
        })
    }
}

/// The external authorizers of the mesh, by name (a handful: a linear search).
#[derive(Debug, Default)]
pub struct Providers(Box<[Arc<Provider>]>);

impl Providers {
    /// Compiles the pushed providers; without a MeshConfig there are none.
    pub fn compile(
        mesh: Option<&v1::MeshConfig>,
        stats: &dyn StatsSource,
    ) -> Result<Self, ProviderError> {
        let providers = mesh
            .map(|m| &m.ext_authz_providers[..])
            .unwrap_or_default()
            .iter()
            .map(|p| Provider::compile(p, stats).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(providers.into()))
    }

    /// The provider called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.0.iter().find(|p| &*p.name == name)
    }
}

/// What the authorizer is told about the connection, besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// The caller's address.
    pub source: SocketAddr,
    /// The caller's SPIFFE ID (`spiffe://...`), for a mutual TLS caller.
    pub source_principal: Option<&'a str>,
    /// The address the caller connected to.
    pub destination: SocketAddr,
    /// The TLS server name the caller sent.
    pub sni: Option<&'a str>,
}

/// How one header the authorizer returned is applied (Envoy's `HeaderValueOption`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// Appended to the values there are (comma-joined, as Envoy appends).
    Append,
    /// Added only when the header is absent.
    AddIfAbsent,
    /// Replaces the values there are, or is added.
    Overwrite,
    /// Replaces the values there are; nothing when absent.
    OverwriteIfExists,
}

/// Header changes the authorizer asked for, in its order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderChanges {
    /// Headers set, appended or added.
    pub set: Vec<(HeaderName, HeaderValue, Apply)>,
    /// Headers removed (before `set` applies).
    pub remove: Vec<HeaderName>,
}

impl HeaderChanges {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// Applies the changes to `headers`. Pseudo-headers cannot be named, and `host` is never
    /// removed (Envoy ignores both: the request would be malformed).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            if name != http::header::HOST {
                headers.remove(name);
            }
        }
        for (name, value, how) in &self.set {
            match how {
                Apply::Overwrite => {
                    headers.insert(name.clone(), value.clone());
                }
                Apply::AddIfAbsent => {
                    if !headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
                Apply::OverwriteIfExists => {
                    if headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
                Apply::Append => {
                    let joined = match headers.get(name) {
                        None => value.clone(),
                        Some(old) => {
                            let mut v = BytesMut::with_capacity(old.len() + 1 + value.len());
                            v.extend_from_slice(old.as_bytes());
                            v.extend_from_slice(b",");
                            v.extend_from_slice(value.as_bytes());
                            HeaderValue::from_maybe_shared(v.freeze())
                                .unwrap_or_else(|_| value.clone())
                        }
                    };
                    headers.insert(name.clone(), joined);
                }
            }
        }
    }
}

/// The authorizer's denial, as the caller gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The provider's name.
    pub provider: Label,
    /// The status (403 unless the provider gave another).
    pub status: StatusCode,
    /// The provider's headers for the caller.
    pub headers: HeaderMap,
    /// The provider's body for the caller.
    pub body: Bytes,
}

/// What the authorizer decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The request may go on, with these changes.
    Allow {
        /// To the request before it goes to the app.
        upstream: HeaderChanges,
        /// To the response the caller gets.
        downstream: HeaderChanges,
    },
    /// The caller gets this answer.
    Deny(Denial),
}

/// Why the authorizer gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoAnswer(pub String);

/// The request body as buffered for the check.
#[derive(Debug, Clone, Default)]
pub struct BufferedBody {
    /// The first bytes (all of them unless `partial`).
    pub bytes: Bytes,
    /// The body was longer than the bound.
    pub partial: bool,
}

/// The provider a CUSTOM policy names; a name the MeshConfig lacks (or none) denies.
fn provider<'s>(
    providers: &'s Providers,
    name: Option<&Label>,
) -> Result<&'s Provider, ProxyError> {
    match name.and_then(|n| providers.get(n)) {
        Some(p) => Ok(p),
        None => {
            let name = name.map_or("", |n| &**n);
            tracing::debug!(
                provider = name,
                "a CUSTOM policy names no extension provider of the MeshConfig: denied (fail closed)"
            );
            Err(ProxyError::ExtAuthzError {
                provider: name.into(),
                status: DEFAULT_STATUS,
                reason: "unknown extension provider".into(),
            })
        }
    }
}

/// Puts `req` to the provider named by a CUSTOM policy. `Ok` with the changes for the
/// caller's response when it may go on (the request's own changes already applied);
/// `Err` with the caller's answer when not.
pub async fn authorize<S: CheckSender>(
    authorizer: Authorizer<'_, impl FnOnce(&str) -> Option<S>>,
    provider_name: Option<&Label>,
    connection: Connection<'_>,
    req: &mut Request<ProxyBody>,
) -> Result<Option<Box<HeaderChanges>>, ProxyError> {
    let p = provider(authorizer.providers, provider_name)?;
    let body = match p.body {
        Some(limit) => Some(buffer_body(req, limit).await?),
        None => None,
    };
    let answer = match (authorizer.sender_for)(p.authority.as_str()) {
        None => Err(unresolved(p)),
        Some(sender) => {
            let local = authorizer.local;
            let asked = match &p.service {
                Service::Grpc => {
                    let check =
                        grpc_service::check_request(local, connection, req, body.as_ref(), p);
                    let call = grpc_service::call(sender, p, check);
                    tokio::time::timeout(p.timeout, call).await
                }
                Service::Http(h) => {
                    let check = h.check_request(p, req, body.as_ref());
                    let call = h.call(&sender, p, check);
                    tokio::time::timeout(p.timeout, call).await
                }
            };
            asked.unwrap_or_else(|_| Err(timed_out(p)))
        }
    };
    decided(p, answer, Some(req.headers_mut()))
}

/// Puts a TCP connection (a CONNECT tunnel) to the provider a CUSTOM policy names, as
/// Envoy's network ext_authz filter does: gRPC providers only, with the connection's
/// attributes and no request; a policy naming an HTTP provider does not apply to TCP, as
/// istiod does not apply it.
pub async fn authorize_connection<S: CheckSender>(
    authorizer: Authorizer<'_, impl FnOnce(&str) -> Option<S>>,
    provider_name: Option<&Label>,
    connection: Connection<'_>,
) -> Result<(), ProxyError> {
    let p = provider(authorizer.providers, provider_name)?;
    if !matches!(p.service, Service::Grpc) {
        return Ok(());
    }
    let answer = match (authorizer.sender_for)(p.authority.as_str()) {
        None => Err(unresolved(p)),
        Some(sender) => {
            let check = grpc_service::connection_check(authorizer.local, connection);
            let call = grpc_service::call(sender, p, check);
            tokio::time::timeout(p.timeout, call)
                .await
                .unwrap_or_else(|_| Err(timed_out(p)))
        }
    };
    decided(p, answer, None).map(|_| ())
}

fn unresolved(p: &Provider) -> NoAnswer {
    NoAnswer(format!(
        "no service {} in this proxy's view of the mesh",
        p.authority
    ))
}

fn timed_out(p: &Provider) -> NoAnswer {
    NoAnswer(format!("no answer within {:?}", p.timeout))
}

/// Counts the answer and turns it into the request's fate: an allowed request's `headers`
/// get the provider's changes.
fn decided(
    p: &Provider,
    answer: Result<Decision, NoAnswer>,
    headers: Option<&mut HeaderMap>,
) -> Result<Option<Box<HeaderChanges>>, ProxyError> {
    match answer {
        Ok(Decision::Allow {
            upstream,
            downstream,
        }) => {
            p.stats.ok.inc();
            if let Some(h) = headers {
                upstream.apply(h);
            }
            Ok((!downstream.is_empty()).then(|| Box::new(downstream)))
        }
        Ok(Decision::Deny(denial)) => {
            p.stats.denied.inc();
            Err(ProxyError::ExtAuthzDenied(Box::new(denial)))
        }
        Err(NoAnswer(reason)) => {
            p.stats.error.inc();
            if p.fail_open {
                p.stats.failure_mode_allowed.inc();
                tracing::debug!(provider = %p.name, %reason, "authorizer gave no answer: allowed (failOpen)");
                return Ok(None);
            }
            tracing::debug!(provider = %p.name, %reason, "authorizer gave no answer: denied");
            Err(ProxyError::ExtAuthzError {
                provider: p.name.clone(),
                status: p.status_on_error,
                reason,
            })
        }
    }
}

/// Reads the request body up to the provider's bound, for the check, and puts it back for
/// the app (played back, then the rest streamed). A longer body without `allowPartialMessage`
/// is refused with 413, as Envoy's buffer limit refuses it.
async fn buffer_body(
    req: &mut Request<ProxyBody>,
    limit: BodyInCheck,
) -> Result<BufferedBody, ProxyError> {
    if http_body::Body::is_end_stream(req.body()) {
        return Ok(BufferedBody::default());
    }
    let mut first = ReplayBody::new(std::mem::take(req.body_mut()));
    let handle = first.handle();
    let mut kept = BytesMut::new();
    let mut complete = false;
    while kept.len() <= limit.max_bytes {
        match first.frame().await {
            None => {
                complete = true;
                break;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => kept.extend_from_slice(&data),
                // Trailers: the body is over.
                Err(_) => {
                    complete = true;
                    break;
                }
            },
            Some(Err(e)) => return Err(ProxyError::DownstreamTerminated(e.to_string())),
        }
    }
    drop(first);
    let Some(replay) = handle.replay() else {
        return Err(ProxyError::PayloadTooLarge);
    };
    *req.body_mut() = ProxyBody::Replay(replay);
    let partial = !complete || kept.len() > limit.max_bytes;
    if partial && !limit.allow_partial {
        return Err(ProxyError::PayloadTooLarge);
    }
    kept.truncate(limit.max_bytes);
    Ok(BufferedBody {
        bytes: kept.freeze(),
        partial,
    })
}

/// Compiles header name patterns (Istio's string forms, case-insensitive).
fn name_patterns(
    provider: &str,
    field: &'static str,
    values: &[String],
) -> Result<Box<[StrMatch]>, ProviderError> {
    values
        .iter()
        .map(|v| {
            StrMatch::parse(v, true).map_err(|source| ProviderError::Pattern {
                provider: provider.to_string(),
                field,
                source,
            })
        })
        .collect()
}

/// Whether `name` matches one of `patterns`.
fn named(patterns: &[StrMatch], name: &HeaderName) -> bool {
    patterns
        .iter()
        .any(|p| p.matches_ignore_case(name.as_str()))
}

/// How an authorizer's `HeaderValueOption` applies: the deprecated `append` when set (what
/// most servers send: true appends, false overwrites), else `append_action`, whose default
/// here is to overwrite, as the ext_authz protocol documents for its messages.
fn apply_of(o: &meshlite_xds_proto::envoy::config::core::v3::HeaderValueOption) -> Apply {
    use meshlite_xds_proto::envoy::config::core::v3::header_value_option::HeaderAppendAction as A;
    match (o.append, A::try_from(o.append_action)) {
        (Some(true), _) => Apply::Append,
        (Some(false), _) | (None, Ok(A::AppendIfExistsOrAdd) | Ok(A::OverwriteIfExistsOrAdd)) => {
            Apply::Overwrite
        }
        (None, Ok(A::AddIfAbsent)) => Apply::AddIfAbsent,
        (None, Ok(A::OverwriteIfExists)) => Apply::OverwriteIfExists,
        (None, Err(_)) => Apply::Overwrite,
    }
}

/// The header of a `HeaderValueOption`, if it is a valid, non-pseudo header (`value`, or
/// `raw_value` for servers that send raw bytes). Empty values are dropped unless
/// `keep_empty_value`, as Envoy drops them.
fn header_of(
    o: &meshlite_xds_proto::envoy::config::core::v3::HeaderValueOption,
) -> Option<(HeaderName, HeaderValue, Apply)> {
    let h = o.header.as_ref()?;
    if h.key.starts_with(':') {
        return None;
    }
    let name = HeaderName::from_bytes(h.key.as_bytes()).ok()?;
    let raw: &[u8] = if h.value.is_empty() {
        &h.raw_value
    } else {
        h.value.as_bytes()
    };
    if raw.is_empty() && !o.keep_empty_value {
        return None;
    }
    let value = HeaderValue::from_bytes(raw).ok()?;
    Some((name, value, apply_of(o)))
}

/// Hop-by-hop and framing headers an authorizer's response may carry that the caller must
/// not get from it (the proxy frames its own reply).
fn framing(name: &HeaderName) -> bool {
    use http::header;
    matches!(
        *name,
        header::CONNECTION
            | header::CONTENT_LENGTH
            | header::TRANSFER_ENCODING
            | header::HOST
            | header::TE
            | header::TRAILER
            | header::UPGRADE
            | header::PROXY_AUTHENTICATE
    ) || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

#[cfg(test)]
mod tests;
