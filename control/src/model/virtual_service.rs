//! VirtualService (`networking.istio.io`): how requests to a host are routed.
//!
//! Mirrors `istio.networking.v1alpha3.VirtualService` for the parts a sidecar mesh uses
//! (HTTP and TCP routes; `tls` routes, CORS and delegation are out of scope for meshlite v1 and
//! are reported as unknown fields). Semantics: SEMANTICS.md section 2.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{IstioDuration, Percent, PortSelector, StringMatch};

/// VirtualService spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VirtualService {
    /// Hosts the routes apply to (short names completed with the VS namespace).
    pub hosts: Vec<String>,
    /// Gateways; empty means `mesh` (all sidecars).
    pub gateways: Vec<String>,
    /// Namespaces the VS is visible in (`.` own, `*` all; empty = all).
    pub export_to: Vec<String>,
    /// HTTP rules, evaluated in order, first match wins.
    pub http: Vec<HttpRoute>,
    /// Opaque TCP rules.
    pub tcp: Vec<TcpRoute>,
}

/// One HTTP rule: match conditions and the action for matching requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRoute {
    /// Rule name, for logs and stats.
    pub name: Option<String>,
    /// Conditions, ORed; empty matches every request.
    #[serde(rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    pub route: Vec<HttpRouteDestination>,
    /// Reply with a redirect instead of forwarding.
    pub redirect: Option<HttpRedirect>,
    /// Reply with a fixed response instead of forwarding.
    pub direct_response: Option<HttpDirectResponse>,
    /// Rewrite path/authority before forwarding.
    pub rewrite: Option<HttpRewrite>,
    /// Overall request timeout including retries; unset = none.
    pub timeout: Option<IstioDuration>,
    /// Retry policy; unset = Istio's default policy.
    pub retries: Option<HttpRetry>,
    /// Fault injection.
    pub fault: Option<HttpFaultInjection>,
    /// Mirror (shadow) destination.
    pub mirror: Option<Destination>,
    /// Share of requests mirrored; unset = 100%.
    pub mirror_percentage: Option<Percent>,
    /// Several mirror destinations, each with its own percentage.
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Header manipulation for the whole rule.
    pub headers: Option<Headers>,
}

/// Conditions ANDed together; a request matches when all set fields match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpMatchRequest {
    /// Match name, prefixed to the rule name in logs.
    pub name: Option<String>,
    /// Path (without query).
    pub uri: Option<StringMatch>,
    /// `:scheme`.
    pub scheme: Option<StringMatch>,
    /// `:method`.
    pub method: Option<StringMatch>,
    /// `:authority`.
    pub authority: Option<StringMatch>,
    /// Request headers (lowercase names).
    pub headers: BTreeMap<String, StringMatch>,
    /// Headers that must NOT match.
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Query parameters.
    pub query_params: BTreeMap<String, StringMatch>,
    /// Case-insensitive `uri` exact/prefix matching.
    pub ignore_uri_case: bool,
    /// Only for client workloads with these labels (evaluated at config time).
    pub source_labels: BTreeMap<String, String>,
    /// Only for client workloads in this namespace (evaluated at config time).
    pub source_namespace: Option<String>,
    /// Only on this service port.
    pub port: Option<u32>,
    /// Only on these gateways.
    pub gateways: Vec<String>,
    /// Stat prefix for this match.
    pub stat_prefix: Option<String>,
}

/// A service (and optionally subset and port) to send traffic to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Destination {
    /// Service host, short names completed with the VS namespace.
    pub host: String,
    /// Subset defined by a DestinationRule for that host.
    pub subset: Option<String>,
    /// Port, needed only for multi-port services.
    pub port: Option<PortSelector>,
}

/// A destination with its relative weight.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteDestination {
    /// Where to send.
    pub destination: Destination,
    /// Relative weight (need not sum to 100); ignored with a single destination.
    pub weight: i32,
    /// Header manipulation applied after the rule-level one.
    pub headers: Option<Headers>,
}

/// How a redirect picks the port of the new location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    /// Omit the port (default port of the scheme).
    FromProtocolDefault,
    /// Use the port the request came in on.
    FromRequestPort,
}

/// Redirect reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRedirect {
    /// New path (replaces the whole path).
    pub uri: Option<String>,
    /// Replace only the matched prefix.
    pub prefix_rewrite: Option<String>,
    /// New authority.
    pub authority: Option<String>,
    /// New port.
    pub port: Option<u32>,
    /// Port derivation instead of a fixed port.
    pub derive_port: Option<RedirectPortSelection>,
    /// New scheme.
    pub scheme: Option<String>,
    /// Status code; default 301, allowed 301/302/303/307/308.
    pub redirect_code: Option<u32>,
}

/// Fixed local reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpDirectResponse {
    /// Status code.
    pub status: u32,
    /// Body.
    pub body: Option<HttpBody>,
}

/// Body of a direct response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpBody {
    /// Text body.
    pub string: Option<String>,
    /// Base64 body.
    pub bytes: Option<String>,
}

/// Path/authority rewrite before forwarding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRewrite {
    /// Replacement for the matched prefix (or the whole path for exact matches).
    pub uri: Option<String>,
    /// New `Host`/`:authority`.
    pub authority: Option<String>,
    /// Regex rewrite of the path.
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// Regex path rewrite (RE2, `\1` groups).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RegexRewrite {
    /// Pattern.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Replacement.
    pub rewrite: String,
}

/// Retry policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRetry {
    /// Retries after the first try; 0 disables retries.
    pub attempts: i32,
    /// Timeout per try.
    pub per_try_timeout: Option<IstioDuration>,
    /// Comma list of Envoy retry conditions and status codes.
    pub retry_on: Option<String>,
    /// Retry in other localities.
    pub retry_remote_localities: Option<bool>,
    /// Avoid hosts already tried (default true).
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base backoff interval (default 25ms).
    pub backoff: Option<IstioDuration>,
}

/// Fault injection: delay then abort.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpFaultInjection {
    /// Added latency.
    pub delay: Option<FaultDelay>,
    /// Local error reply.
    pub abort: Option<FaultAbort>,
}

/// Injected delay.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultDelay {
    /// How long to wait.
    pub fixed_delay: Option<IstioDuration>,
    /// Share of requests delayed; unset = none.
    pub percentage: Option<Percent>,
    /// Deprecated integer percentage, still honoured.
    pub percent: Option<i32>,
}

/// Injected abort.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultAbort {
    /// HTTP status to return.
    pub http_status: Option<i32>,
    /// gRPC status name (e.g. `UNAVAILABLE`).
    pub grpc_status: Option<String>,
    /// Share of requests aborted; unset = none.
    pub percentage: Option<Percent>,
}

/// The code of a gRPC status name (`UNAVAILABLE` -> 14), as a fault's `grpcStatus` names it.
pub fn grpc_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .and_then(|i| u32::try_from(i).ok())
}

/// One mirror destination.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpMirrorPolicy {
    /// Mirror target.
    pub destination: Destination,
    /// Share mirrored; unset = 100%.
    pub percentage: Option<Percent>,
}

/// Request and response header operations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Headers {
    /// Applied to the request before forwarding.
    pub request: Option<HeaderOperations>,
    /// Applied to the response before returning it.
    pub response: Option<HeaderOperations>,
}

/// `set` overwrites, `add` appends, `remove` deletes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderOperations {
    /// Overwrite.
    pub set: BTreeMap<String, String>,
    /// Append.
    pub add: BTreeMap<String, String>,
    /// Delete.
    pub remove: Vec<String>,
}

/// An opaque TCP rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpRoute {
    /// Conditions, ORed.
    #[serde(rename = "match")]
    pub matches: Vec<L4MatchAttributes>,
    /// Weighted destinations.
    pub route: Vec<RouteDestination>,
}

/// L4 match conditions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct L4MatchAttributes {
    /// Destination IPs/CIDRs.
    pub destination_subnets: Vec<String>,
    /// Service port.
    pub port: Option<u32>,
    /// Client workload labels.
    pub source_labels: BTreeMap<String, String>,
    /// Client namespace.
    pub source_namespace: Option<String>,
    /// Gateways.
    pub gateways: Vec<String>,
}

/// A TCP destination with its relative weight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteDestination {
    /// Where to send.
    pub destination: Destination,
    /// Relative weight.
    pub weight: i32,
}
