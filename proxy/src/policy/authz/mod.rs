//! AuthorizationPolicy, enforced by the destination sidecar (SEMANTICS 4).
//!
//! The control plane pushes every policy that targets this workload; [`Authorizer::compile`]
//! turns them into matchers once per push, so a request costs a walk over a few small arrays
//! and no allocation. Evaluation follows Istio: CUSTOM policies first (the caller asks the
//! external authorizer, see [`Authorizer::custom`]), then any matching DENY denies, then, if
//! any ALLOW policy applies, one must match. AUDIT policies only mark the request. Policies
//! annotated `istio.io/dry-run: "true"` are evaluated in a shadow engine that reports and
//! never enforces. A rule matches if any `from` source, any `to` operation and every `when`
//! condition match; on a TCP connection HTTP-only fields make an ALLOW rule never match and
//! are dropped from DENY and AUDIT rules (the rule gets broader), as istiod compiles them.

mod compile;
pub mod matcher;
#[cfg(test)]
mod tests;

use crate::telemetry::prom::Counter;
use http::HeaderMap;
use std::net::IpAddr;

use crate::identity::spiffe::SpiffeId;
use crate::telemetry::metrics::Label;
use matcher::{Cidr, Field, PathMatch, StrMatch};

pub use compile::{CompileError, TrustDomains};

/// The verified identity of a mesh peer, split once per connection.
#[derive(Debug, Clone)]
pub struct Peer {
    principal: Label,
    td_end: usize,
    ns: Option<(usize, usize)>,
    sa: Option<(usize, usize)>,
}

impl Peer {
    /// The peer presenting `id`.
    pub fn new(id: &SpiffeId) -> Self {
        let principal: Label = id.principal().into();
        let td_end = id.trust_domain().len();
        let (ns, sa) = match id.namespace_and_account() {
            Some((ns, sa)) => {
                // `td/ns/<ns>/sa/<sa>`
                let ns_start = td_end + "/ns/".len();
                let ns_end = ns_start + ns.len();
                let sa_start = ns_end + "/sa/".len();
                (
                    Some((ns_start, ns_end)),
                    Some((sa_start, sa_start + sa.len())),
                )
            }
            None => (None, None),
        };
        Self {
            principal,
            td_end,
            ns,
            sa,
        }
    }

    /// Istio's principal, `td/ns/<ns>/sa/<sa>`.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The principal as a shared label.
    pub fn principal_label(&self) -> &Label {
        &self.principal
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.principal[..self.td_end]
    }

    /// The namespace, for Istio-shaped IDs.
    pub fn namespace(&self) -> Option<&str> {
        self.ns.map(|(a, b)| &self.principal[a..b])
    }

    /// Namespace and service account, for Istio-shaped IDs (`source.serviceAccount`).
    fn namespace_and_account(&self) -> Option<(&str, &str)> {
        let (ns, sa) = (self.ns?, self.sa?);
        Some((&self.principal[ns.0..ns.1], &self.principal[sa.0..sa.1]))
    }
}

/// The claims of a verified JWT (RequestAuthentication), as authorization reads them.
#[derive(Debug, Clone, Default)]
pub struct RequestAuth {
    /// `iss/sub`.
    pub principal: String,
    /// `aud` (a string or a list in the token).
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    /// Every claim of the payload.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// Claims whose string value is split on spaces (`scope`, `permission`, and the rule's
    /// `spaceDelimitedClaims`); shared with the compiled rule.
    pub space_delimited: std::sync::Arc<[String]>,
}

/// The HTTP request being authorized.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `:authority` / Host, as sent (port included if present).
    pub host: &'a str,
    /// `:method`.
    pub method: &'a str,
    /// The normalised path without its query.
    pub path: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The verified JWT, if one was presented.
    pub auth: Option<&'a RequestAuth>,
}

/// What a rule can be checked against, for one request or TCP connection.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// The mTLS peer; `None` for plaintext callers.
    pub peer: Option<&'a Peer>,
    /// The connection's peer address (`source.ip`, `ipBlocks`).
    pub source_ip: IpAddr,
    /// The original client (`remote.ip`, `remoteIpBlocks`): from `x-forwarded-for` with
    /// `numTrustedProxies`, else the connection's peer.
    pub remote_ip: IpAddr,
    /// The address the caller connected to.
    pub destination_ip: IpAddr,
    /// The workload port the request is for (`ports`, `destination.port`).
    pub destination_port: u16,
    /// The TLS server name the caller sent.
    pub sni: Option<&'a str>,
    /// The HTTP request; `None` on a TCP connection.
    pub request: Option<Request<'a>>,
}

/// One check of a rule: a source or operation field, or a `when` condition.
#[derive(Debug, Clone)]
enum Check {
    Principals(Field<StrMatch>),
    Namespaces(Field<StrMatch>),
    TrustDomains(Field<StrMatch>),
    ServiceAccounts(Field<StrMatch>),
    SourceIp(Field<Cidr>),
    RemoteIp(Field<Cidr>),
    DestinationIp(Field<Cidr>),
    Ports(Field<u16>),
    Sni(Field<StrMatch>),
    RequestPrincipals(Field<StrMatch>),
    Hosts(Field<StrMatch>),
    Methods(Field<StrMatch>),
    Paths(Field<PathMatch>),
    Header(http::HeaderName, Field<StrMatch>),
    AuthAudiences(Field<StrMatch>),
    AuthPresenter(Field<StrMatch>),
    AuthClaim(Box<[Box<str>]>, Field<StrMatch>),
}

impl Check {
    /// Fields only an HTTP request has.
    fn http_only(&self) -> bool {
        matches!(
            self,
            Check::RequestPrincipals(_)
                | Check::Hosts(_)
                | Check::Methods(_)
                | Check::Paths(_)
                | Check::Header(..)
                | Check::AuthAudiences(_)
                | Check::AuthPresenter(_)
                | Check::AuthClaim(..)
        )
    }

    fn holds(&self, a: &Attributes<'_>) -> bool {
        let s = |f: &Field<StrMatch>, v: Option<&str>| f.check(v, |m, v| m.matches(v));
        let ip = |f: &Field<Cidr>, v: IpAddr| f.check(Some(v), |m, v| m.contains(v));
        let req = a.request.as_ref();
        let auth = req.and_then(|r| r.auth);
        match self {
            Check::Principals(f) => s(f, a.peer.map(Peer::principal)),
            Check::Namespaces(f) => s(f, a.peer.and_then(Peer::namespace)),
            Check::TrustDomains(f) => s(f, a.peer.map(Peer::trust_domain)),
            Check::ServiceAccounts(f) => {
                let sa = a.peer.and_then(Peer::namespace_and_account);
                f.check(sa, |m, (ns, sa)| {
                    // `ns/sa`, matched without building the string.
                    match m {
                        StrMatch::Exact(e) => {
                            e.split_once('/').is_some_and(|(n, s)| n == ns && s == sa)
                        }
                        _ => false,
                    }
                })
            }
            Check::SourceIp(f) => ip(f, a.source_ip),
            Check::RemoteIp(f) => ip(f, a.remote_ip),
            Check::DestinationIp(f) => ip(f, a.destination_ip),
            Check::Ports(f) => f.check(Some(a.destination_port), |p, v| *p == v),
            Check::Sni(f) => s(f, a.sni),
            Check::RequestPrincipals(f) => s(f, auth.map(|x| x.principal.as_str())),
            Check::Hosts(f) => f.check(req.map(|r| r.host), |m, v| m.matches_ignore_case(v)),
            Check::Methods(f) => s(f, req.map(|r| r.method)),
            Check::Paths(f) => f.check(req.map(|r| r.path), |m, v| m.matches(v)),
            Check::Header(name, f) => header_holds(f, req.map(|r| r.headers), name),
            Check::AuthAudiences(f) => {
                any_of(f, auth.map(|x| x.audiences.iter().map(String::as_str)))
            }
            Check::AuthPresenter(f) => s(f, auth.and_then(|x| x.presenter.as_deref())),
            Check::AuthClaim(path, f) => claim_holds(f, auth, path),
        }
    }
}

/// A field over a list value (JWT audiences, list claims): a value matches if any element
/// does; a `not` value must match no element.
fn any_of<'v>(f: &Field<StrMatch>, values: Option<impl Iterator<Item = &'v str> + Clone>) -> bool {
    let Some(values) = values else {
        return f.check(None::<&str>, |m, v| m.matches(v));
    };
    if !f.any.is_empty() && !values.clone().any(|v| f.any.iter().any(|m| m.matches(v))) {
        return false;
    }
    !values.clone().any(|v| f.none.iter().any(|m| m.matches(v)))
}

/// A `request.headers[...]` condition: several values of one header are joined with `,`,
/// as Envoy's header matcher sees them.
fn header_holds(f: &Field<StrMatch>, headers: Option<&HeaderMap>, name: &http::HeaderName) -> bool {
    let Some(headers) = headers else {
        return f.check(None::<&str>, |m, v| m.matches(v));
    };
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return f.check(None::<&str>, |m, v| m.matches(v));
    };
    match values.next() {
        // A value that is not text matches no pattern; `notValues` still pass it.
        None => f.check(Some(first.to_str().unwrap_or("\u{0}")), |m, v| m.matches(v)),
        Some(_) => {
            let joined: Vec<&str> = headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap_or("\u{0}"))
                .collect();
            let joined = joined.join(",");
            f.check(Some(joined.as_str()), |m, v| m.matches(v))
        }
    }
}

/// A `request.auth.claims[a][b]` condition: nested objects are followed; a list claim
/// matches if any element does; `scope`-like claims are split on spaces.
fn claim_holds(f: &Field<StrMatch>, auth: Option<&RequestAuth>, path: &[Box<str>]) -> bool {
    let Some(auth) = auth else {
        return f.check(None::<&str>, |m, v| m.matches(v));
    };
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let mut value = auth.claims.get(&**first);
    for key in rest {
        value = value.and_then(|v| v.get(&**key));
    }
    match value {
        None => f.check(None::<&str>, |m, v| m.matches(v)),
        Some(serde_json::Value::String(s)) => {
            let split = rest.is_empty() && auth.space_delimited.iter().any(|c| c == &**first);
            if split {
                any_of(f, Some(s.split(' ').filter(|p| !p.is_empty())))
            } else {
                f.check(Some(s.as_str()), |m, v| m.matches(v))
            }
        }
        Some(serde_json::Value::Array(items)) => {
            any_of(f, Some(items.iter().filter_map(serde_json::Value::as_str)))
        }
        Some(serde_json::Value::Bool(b)) => {
            f.check(Some(if *b { "true" } else { "false" }), |m, v| m.matches(v))
        }
        // Numbers and objects match no string pattern.
        Some(_) => f.check(Some("\u{0}"), |m, v| m.matches(v)),
    }
}

/// A compiled rule: any source, any operation, all conditions.
#[derive(Debug, Clone)]
struct Rule {
    index: u32,
    from: Box<[Box<[Check]>]>,
    to: Box<[Box<[Check]>]>,
    when: Box<[Check]>,
}

impl Rule {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        let all = |checks: &[Check]| checks.iter().all(|c| c.holds(a));
        (self.from.is_empty() || self.from.iter().any(|c| all(c)))
            && (self.to.is_empty() || self.to.iter().any(|c| all(c)))
            && all(&self.when)
    }
}

/// The counters of one policy (Envoy's RBAC statistics, per policy).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Requests this policy allowed (or, for `none`, allowed without any ALLOW policy).
    pub allowed: Counter,
    /// Requests this policy denied (for `none`: no ALLOW policy matched).
    pub denied: Counter,
    /// Dry-run: requests it would have allowed.
    pub shadow_allowed: Counter,
    /// Dry-run: requests it would have denied.
    pub shadow_denied: Counter,
    /// AUDIT: requests it marked for the audit log.
    pub logged: Counter,
}

/// The counters of a policy for HTTP requests and for TCP connections.
#[derive(Debug, Clone, Default)]
pub struct PolicyStats {
    /// HTTP requests (`envoy_http_rbac_*`).
    pub http: Counters,
    /// TCP connections (`envoy_tcp_rbac_*`).
    pub tcp: Counters,
}

/// Hands out the counters of a policy by name (`none` for decisions no policy made).
pub trait StatsSource {
    /// The counters of `policy`.
    fn stats(&self, policy: &str) -> PolicyStats;

    /// The counters of RequestAuthentication (Envoy's jwt_authn statistics); unregistered
    /// ones by default.
    fn jwt_authn(&self) -> crate::policy::jwt::JwtStats {
        crate::policy::jwt::JwtStats::default()
    }

    /// The counters of external authorizer `provider` (CUSTOM policies); detached counters
    /// unless the source exports them.
    fn ext_authz(&self, _provider: &str) -> crate::policy::ext_authz::Stats {
        Default::default()
    }
}

/// One compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `namespace/name`.
    pub name: Label,
    /// The external authorizer of a CUSTOM policy.
    pub provider: Option<Label>,
    http: Box<[Rule]>,
    tcp: Box<[Rule]>,
    stats: PolicyStats,
}

impl Policy {
    /// The first rule matching, by index.
    fn first_match(&self, a: &Attributes<'_>) -> Option<u32> {
        let rules = if a.request.is_some() {
            &self.http
        } else {
            &self.tcp
        };
        rules.iter().find(|r| r.matches(a)).map(|r| r.index)
    }

    fn counters(&self, http: bool) -> &Counters {
        if http {
            &self.stats.http
        } else {
            &self.stats.tcp
        }
    }
}

/// A policy and the index of its rule that matched.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'p> {
    /// The policy, `namespace/name`.
    pub policy: &'p Label,
    /// Index of the rule in its policy's `rules`.
    pub rule: u32,
}

/// A CUSTOM policy that matched, and the external authorizer it names.
#[derive(Debug, Clone, Copy)]
pub struct Custom<'p> {
    /// The policy and its rule.
    pub matched: Matched<'p>,
    /// `provider.name`; `None` when the policy names none (the request is then denied).
    pub provider: Option<&'p Label>,
}

/// A dry-run engine's result.
#[derive(Debug, Clone, Copy)]
pub struct Shadow<'p> {
    /// What enforcing the dry-run policies would have done.
    pub allowed: bool,
    /// The dry-run policy that decided, if one matched.
    pub by: Option<Matched<'p>>,
}

/// The decision on one request or connection.
#[derive(Debug, Clone, Copy)]
pub struct Verdict<'p> {
    /// Whether it may proceed.
    pub allowed: bool,
    /// The policy that decided: the DENY or the ALLOW that matched. `None`: allowed with no
    /// ALLOW policy in force, or denied because none matched.
    pub by: Option<Matched<'p>>,
    /// The AUDIT policy that marked it.
    pub audit: Option<Matched<'p>>,
    /// The dry-run DENY engine's result, when dry-run DENY policies exist.
    pub shadow_deny: Option<Shadow<'p>>,
    /// The dry-run ALLOW engine's result, when dry-run ALLOW policies exist.
    pub shadow_allow: Option<Shadow<'p>>,
}

/// Every AuthorizationPolicy of this workload, compiled.
#[derive(Debug, Default)]
pub struct Authorizer {
    custom: Box<[Policy]>,
    deny: Box<[Policy]>,
    allow: Box<[Policy]>,
    audit: Box<[Policy]>,
    shadow_deny: Box<[Policy]>,
    shadow_allow: Box<[Policy]>,
    none: PolicyStats,
}

fn first<'p>(policies: &'p [Policy], a: &Attributes<'_>) -> Option<(&'p Policy, u32)> {
    policies
        .iter()
        .find_map(|p| p.first_match(a).map(|rule| (p, rule)))
}

fn matched(found: Option<(&Policy, u32)>) -> Option<Matched<'_>> {
    found.map(|(p, rule)| Matched {
        policy: &p.name,
        rule,
    })
}

impl Authorizer {
    /// No policy targets the workload: everything is allowed and nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.custom.is_empty()
            && self.deny.is_empty()
            && self.allow.is_empty()
            && self.audit.is_empty()
            && self.shadow_deny.is_empty()
            && self.shadow_allow.is_empty()
    }

    /// Whether an AUDIT policy is in force (the audit log is then written for marked
    /// requests even without the all-decisions switch).
    pub fn has_audit(&self) -> bool {
        !self.audit.is_empty()
    }

    /// The CUSTOM policy whose rules match, if any: its provider decides first.
    pub fn custom(&self, a: &Attributes<'_>) -> Option<Custom<'_>> {
        first(&self.custom, a).map(|(p, rule)| Custom {
            matched: Matched {
                policy: &p.name,
                rule,
            },
            provider: p.provider.as_ref(),
        })
    }

    /// The providers CUSTOM policies name (`None` for one that names none).
    pub fn custom_providers(&self) -> impl Iterator<Item = (&Label, Option<&Label>)> {
        self.custom.iter().map(|p| (&p.name, p.provider.as_ref()))
    }

    /// DENY, then ALLOW, with AUDIT marks and the dry-run engines; counted.
    pub fn evaluate(&self, a: &Attributes<'_>) -> Verdict<'_> {
        let http = a.request.is_some();
        let deny = first(&self.deny, a);
        let (allowed, by) = match deny {
            Some((p, rule)) => {
                p.counters(http).denied.inc();
                (false, Some((p, rule)))
            }
            None if self.allow.is_empty() => {
                self.none.counters(http).allowed.inc();
                (true, None)
            }
            None => match first(&self.allow, a) {
                Some((p, rule)) => {
                    p.counters(http).allowed.inc();
                    (true, Some((p, rule)))
                }
                None => {
                    self.none.counters(http).denied.inc();
                    (false, None)
                }
            },
        };
        let audit = first(&self.audit, a);
        if let Some((p, _)) = audit {
            p.counters(http).logged.inc();
        }
        let shadow_deny = self.shadow(&self.shadow_deny, a, false);
        let shadow_allow = self.shadow(&self.shadow_allow, a, true);
        Verdict {
            allowed,
            by: matched(by),
            audit: matched(audit),
            shadow_deny,
            shadow_allow,
        }
    }

    /// A dry-run engine's decision, counted as Envoy's shadow rules are. `allow_on_match` is
    /// the engine's action: dry-run ALLOW policies allow what they match (and deny the rest),
    /// dry-run DENY policies deny it. `None` when the engine has no policy.
    fn shadow<'p>(
        &'p self,
        engine: &'p [Policy],
        a: &Attributes<'_>,
        allow_on_match: bool,
    ) -> Option<Shadow<'p>> {
        if engine.is_empty() {
            return None;
        }
        let http = a.request.is_some();
        let found = first(engine, a);
        let allowed = found.is_some() == allow_on_match;
        let counters = found.map_or(self.none.counters(http), |(p, _)| p.counters(http));
        if allowed {
            counters.shadow_allowed.inc();
        } else {
            counters.shadow_denied.inc();
        }
        Some(Shadow {
            allowed,
            by: matched(found),
        })
    }
}

impl PolicyStats {
    fn counters(&self, http: bool) -> &Counters {
        if http { &self.http } else { &self.tcp }
    }
}
