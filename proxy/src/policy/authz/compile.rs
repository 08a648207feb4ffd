//! AuthorizationPolicy resources, as the control plane pushes them, compiled into
//! [`Authorizer`] matchers: string forms parsed, principals expanded over the local trust
//! domain and its aliases (`cluster.local` names the local one, SEMANTICS 4.2), `when` keys
//! resolved, and each rule's TCP form derived. Anything that does not compile fails the
//! whole push with the policy, rule and field named: a policy is never half applied.

use meshlite_xds_proto::v1;
use meshlite_xds_proto::v1::authorization_policy::Action;

use super::matcher::{Cidr, Field, PathMatch, PatternError, StrMatch, parse_port};
use super::{Authorizer, Check, Policy, Rule, StatsSource};

/// Istio's name for the local trust domain in policies, whatever the mesh's really is.
const CLUSTER_LOCAL: &str = "cluster.local";

/// Why a policy could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// A value does not parse.
    #[error("AuthorizationPolicy {policy} rule {rule}: `{field}`: {source}")]
    Pattern {
        /// `namespace/name`.
        policy: String,
        /// Index of the rule.
        rule: usize,
        /// The field or `when` key.
        field: String,
        /// Why.
        source: PatternError,
    },
    /// A `when` key meshlite does not evaluate.
    #[error("AuthorizationPolicy {policy} rule {rule}: unsupported `when` key `{key}`")]
    UnknownKey {
        /// `namespace/name`.
        policy: String,
        /// Index of the rule.
        rule: usize,
        /// The key.
        key: String,
    },
    /// A condition with neither `values` nor `notValues`.
    #[error("AuthorizationPolicy {policy} rule {rule}: `when` key `{key}` has no values")]
    EmptyCondition {
        /// `namespace/name`.
        policy: String,
        /// Index of the rule.
        rule: usize,
        /// The key.
        key: String,
    },
    /// An action value this proxy does not know.
    #[error("AuthorizationPolicy {policy}: unknown action {action}")]
    Action {
        /// `namespace/name`.
        policy: String,
        /// The number received.
        action: i32,
    },
}

/// The trust domain of this mesh and its aliases (MeshConfig `trustDomainAliases`): a
/// principal or trust domain in any of them, or in `cluster.local`, matches all of them.
#[derive(Debug, Clone, Default)]
pub struct TrustDomains {
    /// The mesh's own trust domain.
    pub local: String,
    /// Other names it goes by.
    pub aliases: Vec<String>,
}

impl TrustDomains {
    fn is_local(&self, td: &str) -> bool {
        td == CLUSTER_LOCAL || td == self.local || self.aliases.iter().any(|a| a == td)
    }

    fn all(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.local.as_str()).chain(self.aliases.iter().map(String::as_str))
    }

    /// `cluster.local/ns/a/sa/b` -> one principal per local trust domain name.
    fn principals(&self, values: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(values.len());
        for v in values {
            match v.split_once('/') {
                Some((td, rest)) if self.is_local(td) => {
                    out.extend(self.all().map(|d| format!("{d}/{rest}")));
                }
                _ => out.push(v.clone()),
            }
        }
        out
    }

    fn domains(&self, values: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(values.len());
        for v in values {
            if self.is_local(v) {
                out.extend(self.all().map(str::to_string));
            } else {
                out.push(v.clone());
            }
        }
        out
    }
}

struct Ctx<'a> {
    policy: &'a str,
    rule: usize,
    tds: &'a TrustDomains,
}

impl Ctx<'_> {
    fn err(&self, field: &str) -> impl Fn(PatternError) -> CompileError + '_ {
        let field = field.to_string();
        move |source| CompileError::Pattern {
            policy: self.policy.to_string(),
            rule: self.rule,
            field: field.clone(),
            source,
        }
    }

    fn strings(
        &self,
        field: &str,
        any: &[String],
        none: &[String],
        fold_case: bool,
    ) -> Result<Field<StrMatch>, CompileError> {
        Field::compile(any, none, |s| StrMatch::parse(s, fold_case)).map_err(self.err(field))
    }

    fn cidrs(
        &self,
        field: &str,
        any: &[String],
        none: &[String],
    ) -> Result<Field<Cidr>, CompileError> {
        Field::compile(any, none, Cidr::parse).map_err(self.err(field))
    }

    fn ports(
        &self,
        field: &str,
        any: &[String],
        none: &[String],
    ) -> Result<Field<u16>, CompileError> {
        Field::compile(any, none, parse_port).map_err(self.err(field))
    }

    fn source(&self, s: &v1::Source) -> Result<Vec<Check>, CompileError> {
        let tds = self.tds;
        let checks = [
            Check::Principals(self.strings(
                "principals",
                &tds.principals(&s.principals),
                &tds.principals(&s.not_principals),
                false,
            )?),
            Check::RequestPrincipals(self.strings(
                "requestPrincipals",
                &s.request_principals,
                &s.not_request_principals,
                false,
            )?),
            Check::Namespaces(self.strings(
                "namespaces",
                &s.namespaces,
                &s.not_namespaces,
                false,
            )?),
            Check::TrustDomains(self.strings(
                "trustDomains",
                &tds.domains(&s.trust_domains),
                &tds.domains(&s.not_trust_domains),
                false,
            )?),
            Check::SourceIp(self.cidrs("ipBlocks", &s.ip_blocks, &s.not_ip_blocks)?),
            Check::RemoteIp(self.cidrs(
                "remoteIpBlocks",
                &s.remote_ip_blocks,
                &s.not_remote_ip_blocks,
            )?),
        ];
        Ok(checks.into_iter().filter(|c| !is_empty(c)).collect())
    }

    fn operation(&self, o: &v1::Operation) -> Result<Vec<Check>, CompileError> {
        let paths =
            Field::compile(&o.paths, &o.not_paths, PathMatch::parse).map_err(self.err("paths"))?;
        let checks = [
            Check::Hosts(self.strings("hosts", &o.hosts, &o.not_hosts, true)?),
            Check::Ports(self.ports("ports", &o.ports, &o.not_ports)?),
            Check::Methods(self.strings("methods", &o.methods, &o.not_methods, false)?),
            Check::Paths(paths),
        ];
        Ok(checks.into_iter().filter(|c| !is_empty(c)).collect())
    }

    fn condition(&self, c: &v1::Condition) -> Result<Check, CompileError> {
        let key = c.key.as_str();
        if c.values.is_empty() && c.not_values.is_empty() {
            return Err(CompileError::EmptyCondition {
                policy: self.policy.to_string(),
                rule: self.rule,
                key: key.to_string(),
            });
        }
        let unknown = || CompileError::UnknownKey {
            policy: self.policy.to_string(),
            rule: self.rule,
            key: key.to_string(),
        };
        let (v, nv) = (&c.values, &c.not_values);
        let tds = self.tds;
        Ok(match key {
            "source.ip" => Check::SourceIp(self.cidrs(key, v, nv)?),
            "remote.ip" => Check::RemoteIp(self.cidrs(key, v, nv)?),
            "destination.ip" => Check::DestinationIp(self.cidrs(key, v, nv)?),
            "destination.port" => Check::Ports(self.ports(key, v, nv)?),
            "source.namespace" => Check::Namespaces(self.strings(key, v, nv, false)?),
            "source.principal" => Check::Principals(self.strings(
                key,
                &tds.principals(v),
                &tds.principals(nv),
                false,
            )?),
            "source.serviceAccount" => Check::ServiceAccounts(self.strings(key, v, nv, false)?),
            "source.trustDomain" => {
                Check::TrustDomains(self.strings(key, &tds.domains(v), &tds.domains(nv), false)?)
            }
            "request.auth.principal" => Check::RequestPrincipals(self.strings(key, v, nv, false)?),
            "request.auth.audiences" => Check::AuthAudiences(self.strings(key, v, nv, false)?),
            "request.auth.presenter" => Check::AuthPresenter(self.strings(key, v, nv, false)?),
            "connection.sni" => Check::Sni(self.strings(key, v, nv, false)?),
            _ => {
                if let Some(name) = bracketed(key, "request.headers") {
                    let [name] = name.as_slice() else {
                        return Err(unknown());
                    };
                    let header = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                        .map_err(|_| unknown())?;
                    Check::Header(header, self.strings(key, v, nv, false)?)
                } else if let Some(path) = bracketed(key, "request.auth.claims") {
                    if path.is_empty() {
                        return Err(unknown());
                    }
                    Check::AuthClaim(
                        path.into_iter().map(Box::from).collect(),
                        self.strings(key, v, nv, false)?,
                    )
                } else {
                    return Err(unknown());
                }
            }
        })
    }
}

/// `prefix[a][b]` -> `["a", "b"]`; `None` if `key` is not of that shape.
pub(crate) fn bracketed<'k>(key: &'k str, prefix: &str) -> Option<Vec<&'k str>> {
    let mut rest = key.strip_prefix(prefix)?;
    let mut parts = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let part = &inner[..end];
        if part.is_empty() || part.contains('[') {
            return None;
        }
        parts.push(part);
        rest = &inner[end + 1..];
    }
    (!parts.is_empty()).then_some(parts)
}

fn is_empty(c: &Check) -> bool {
    match c {
        Check::Principals(f)
        | Check::Namespaces(f)
        | Check::TrustDomains(f)
        | Check::ServiceAccounts(f)
        | Check::Sni(f)
        | Check::RequestPrincipals(f)
        | Check::Hosts(f)
        | Check::Methods(f)
        | Check::Header(_, f)
        | Check::AuthAudiences(f)
        | Check::AuthPresenter(f)
        | Check::AuthClaim(_, f) => f.is_empty(),
        Check::SourceIp(f) | Check::RemoteIp(f) | Check::DestinationIp(f) => f.is_empty(),
        Check::Ports(f) => f.is_empty(),
        Check::Paths(f) => f.is_empty(),
    }
}

/// The rule as it applies to a TCP connection: an ALLOW rule with an HTTP-only field never
/// matches (`None`); other actions lose the HTTP-only fields and match more.
fn for_tcp(rule: &Rule, allow: bool) -> Option<Rule> {
    let any_http = rule
        .from
        .iter()
        .chain(rule.to.iter())
        .flat_map(|c| c.iter())
        .chain(rule.when.iter())
        .any(Check::http_only);
    if !any_http {
        return Some(rule.clone());
    }
    if allow {
        return None;
    }
    let keep = |checks: &[Check]| -> Box<[Check]> {
        checks.iter().filter(|c| !c.http_only()).cloned().collect()
    };
    Some(Rule {
        index: rule.index,
        from: rule.from.iter().map(|c| keep(c)).collect(),
        to: rule.to.iter().map(|c| keep(c)).collect(),
        when: keep(&rule.when),
    })
}

impl Authorizer {
    /// Compiles the policies that target this workload.
    pub fn compile(
        policies: &[v1::AuthorizationPolicy],
        tds: &TrustDomains,
        stats: &dyn StatsSource,
    ) -> Result<Self, CompileError> {
        let mut out = Authorizer {
            none: stats.stats("none"),
            ..Default::default()
        };
        let (mut custom, mut deny, mut allow, mut audit, mut shadow_deny, mut shadow_allow) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for p in policies {
            let action = Action::try_from(p.action).map_err(|_| CompileError::Action {
                policy: p.origin.clone(),
                action: p.action,
            })?;
            let mut http = Vec::with_capacity(p.rules.len());
            for (i, r) in p.rules.iter().enumerate() {
                let ctx = Ctx {
                    policy: &p.origin,
                    rule: i,
                    tds,
                };
                let from = r
                    .from
                    .iter()
                    .map(|s| ctx.source(s).map(Vec::into_boxed_slice))
                    .collect::<Result<_, _>>()?;
                let to =
                    r.to.iter()
                        .map(|o| ctx.operation(o).map(Vec::into_boxed_slice))
                        .collect::<Result<_, _>>()?;
                let when = r
                    .when
                    .iter()
                    .map(|c| ctx.condition(c))
                    .collect::<Result<_, _>>()?;
                http.push(Rule {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    from,
                    to,
                    when,
                });
            }
            let tcp = http
                .iter()
                .filter_map(|r| for_tcp(r, action == Action::Allow))
                .collect();
            let policy = Policy {
                name: p.origin.as_str().into(),
                provider: (!p.provider.is_empty()).then(|| p.provider.as_str().into()),
                http: http.into(),
                tcp,
                stats: stats.stats(&p.origin),
            };
            match (action, p.dry_run) {
                (Action::Allow, false) => allow.push(policy),
                (Action::Allow, true) => shadow_allow.push(policy),
                (Action::Deny, false) => deny.push(policy),
                (Action::Deny, true) => shadow_deny.push(policy),
                (Action::Audit, false) => audit.push(policy),
                (Action::Custom, false) => custom.push(policy),
                // Istio has no dry run for AUDIT or CUSTOM; validation warns, nothing applies.
                (Action::Audit | Action::Custom, true) => {}
            }
        }
        out.custom = custom.into();
        out.deny = deny.into();
        out.allow = allow.into();
        out.audit = audit.into();
        out.shadow_deny = shadow_deny.into();
        out.shadow_allow = shadow_allow.into();
        Ok(out)
    }
}
