//! PeerAuthentication, RequestAuthentication and AuthorizationPolicy (`security.istio.io`):
//! inbound mTLS, end-user JWTs and access.
//!
//! Mirror `istio.security.v1beta1.PeerAuthentication`, `RequestAuthentication` and
//! `AuthorizationPolicy`. Semantics (scope resolution, JWT outcomes, CUSTOM → DENY → ALLOW
//! evaluation, string matching): SEMANTICS.md sections 3, 4 and 5.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{IstioDuration, WorkloadSelector};

/// Istio's default JWKS fetch timeout (`JWTRule.timeout`).
pub const DEFAULT_JWKS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// RequestAuthentication spec: which JWTs the workload accepts. A request without a token
/// passes unauthenticated; one with an invalid token is refused with 401.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RequestAuthentication {
    /// Workloads the policy applies to; absent = the whole namespace (or mesh in the root ns).
    pub selector: Option<WorkloadSelector>,
    /// Gateways or waypoints the policy attaches to instead; sidecars do not apply such
    /// policies (Istio's behaviour).
    pub target_refs: Vec<PolicyTargetReference>,
    /// The single-target form of `targetRefs`.
    pub target_ref: Option<PolicyTargetReference>,
    /// Issuers accepted; any of them may validate a token.
    pub jwt_rules: Vec<JwtRule>,
}

/// One accepted issuer (Istio `JWTRule`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JwtRule {
    /// Must equal the token's `iss`.
    pub issuer: String,
    /// Accepted `aud` values; empty = no audience check.
    pub audiences: Vec<String>,
    /// Where the JWK set is fetched from (by the control plane, then inlined).
    pub jwks_uri: Option<String>,
    /// The JWK set inline, as a JSON string.
    pub jwks: Option<String>,
    /// Headers the token is read from; with `fromParams` and `fromCookies` empty too, the
    /// defaults (`Authorization: Bearer`, `access_token`).
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token is read from.
    pub from_params: Vec<String>,
    /// Cookies the token is read from.
    pub from_cookies: Vec<String>,
    /// Header that receives the verified payload, base64url.
    pub output_payload_to_header: Option<String>,
    /// Keep the token in the request forwarded to the app (default: removed).
    pub forward_original_token: bool,
    /// Claims copied into headers.
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// How long fetching `jwksUri` may take (default 5 s).
    pub timeout: Option<IstioDuration>,
    /// Claims whose string value is split on spaces for `request.auth.claims`.
    pub space_delimited_claims: Vec<String>,
}

impl JwtRule {
    /// The JWKS fetch timeout: `timeout`, or Istio's 5 s.
    pub fn fetch_timeout(&self) -> std::time::Duration {
        self.timeout
            .filter(|t| !t.is_zero() && !t.is_negative())
            .map_or(DEFAULT_JWKS_TIMEOUT, |t| t.as_std())
    }
}

/// A header a token is read from (Istio `JWTHeader`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JwtHeader {
    /// Header name.
    pub name: String,
    /// Text before the token, e.g. `Bearer `.
    pub prefix: String,
}

/// A claim copied into a header (Istio `ClaimToHeader`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClaimToHeader {
    /// The header to set.
    pub header: String,
    /// The claim to copy (strings, numbers and booleans).
    pub claim: String,
}

/// PeerAuthentication spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PeerAuthentication {
    /// Workloads the policy applies to; absent = the whole namespace (or mesh in the root ns).
    pub selector: Option<WorkloadSelector>,
    /// Mode for all ports.
    pub mtls: Option<PeerMtls>,
    /// Per workload port (container port, not Service port); needs a selector.
    pub port_level_mtls: BTreeMap<u32, PeerMtls>,
}

/// mTLS setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PeerMtls {
    /// Mode; UNSET inherits from the parent scope.
    pub mode: MtlsMode,
}

/// Inbound mTLS modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit; PERMISSIVE when nothing is set anywhere.
    #[default]
    Unset,
    /// Plaintext only.
    Disable,
    /// mTLS and plaintext on the same port.
    Permissive,
    /// mTLS only.
    Strict,
}

/// AuthorizationPolicy spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthorizationPolicy {
    /// Workloads the policy applies to; absent = whole namespace.
    pub selector: Option<WorkloadSelector>,
    /// What a match does.
    pub action: AuthzAction,
    /// External authorizer, for CUSTOM.
    pub provider: Option<ExtensionProvider>,
    /// Rules, ORed. No rules: matches nothing.
    pub rules: Vec<Rule>,
    /// Gateways, waypoints or services the policy attaches to instead of a selector; such
    /// policies do not apply to sidecars (Istio's behaviour).
    pub target_refs: Vec<PolicyTargetReference>,
    /// The single-target form of `targetRefs`.
    pub target_ref: Option<PolicyTargetReference>,
}

/// A Kubernetes Gateway API style reference (`group`, `kind`, `name`, `namespace`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PolicyTargetReference {
    /// API group, e.g. `gateway.networking.k8s.io`.
    pub group: String,
    /// Kind, e.g. `Gateway` or `Service`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Namespace (the policy's by default).
    pub namespace: Option<String>,
}

/// Policy action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthzAction {
    /// Allow matching requests (deny the rest once any ALLOW policy applies).
    #[default]
    Allow,
    /// Deny matching requests.
    Deny,
    /// Mark for audit logging only.
    Audit,
    /// Delegate to an external authorizer.
    Custom,
}

/// External authorizer reference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtensionProvider {
    /// Provider name from MeshConfig.
    pub name: String,
}

/// A rule: any `from`, any `to`, all `when`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Rule {
    /// Sources, ORed; empty = any.
    pub from: Vec<RuleFrom>,
    /// Operations, ORed; empty = any.
    pub to: Vec<RuleTo>,
    /// Conditions, ANDed.
    pub when: Vec<Condition>,
}

/// Wrapper of a `source` as in Istio's YAML.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RuleFrom {
    /// Source conditions.
    pub source: Source,
}

/// Wrapper of an `operation` as in Istio's YAML.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RuleTo {
    /// Operation conditions.
    pub operation: Operation,
}

/// Who is calling. Fields ANDed, values in a field ORed, `not*` = none of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Source {
    /// Peer identities `td/ns/<ns>/sa/<sa>`.
    pub principals: Vec<String>,
    /// Excluded peer identities.
    pub not_principals: Vec<String>,
    /// JWT `iss/sub`.
    pub request_principals: Vec<String>,
    /// Excluded JWT principals.
    pub not_request_principals: Vec<String>,
    /// Peer namespaces (needs mTLS).
    pub namespaces: Vec<String>,
    /// Excluded namespaces.
    pub not_namespaces: Vec<String>,
    /// Peer IPs/CIDRs.
    pub ip_blocks: Vec<String>,
    /// Excluded peer IPs.
    pub not_ip_blocks: Vec<String>,
    /// Original client IPs (XFF).
    pub remote_ip_blocks: Vec<String>,
    /// Excluded original client IPs.
    pub not_remote_ip_blocks: Vec<String>,
    /// `ns/sa` or `sa`; exclusive with principals/namespaces.
    pub service_accounts: Vec<String>,
    /// Excluded service accounts.
    pub not_service_accounts: Vec<String>,
    /// Peer trust domains.
    pub trust_domains: Vec<String>,
    /// Excluded trust domains.
    pub not_trust_domains: Vec<String>,
}

/// What is being called. Fields ANDed, values in a field ORed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Operation {
    /// `:authority` (case-insensitive).
    pub hosts: Vec<String>,
    /// Excluded hosts.
    pub not_hosts: Vec<String>,
    /// Destination workload ports.
    pub ports: Vec<String>,
    /// Excluded ports.
    pub not_ports: Vec<String>,
    /// `:method`.
    pub methods: Vec<String>,
    /// Excluded methods.
    pub not_methods: Vec<String>,
    /// Normalised paths.
    pub paths: Vec<String>,
    /// Excluded paths.
    pub not_paths: Vec<String>,
}

/// An attribute condition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    /// Attribute name (SEMANTICS 4.2 lists the accepted keys).
    pub key: String,
    /// Any of these.
    pub values: Vec<String>,
    /// None of these.
    pub not_values: Vec<String>,
}
