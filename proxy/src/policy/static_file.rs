//! AuthorizationPolicies written in the proxy's own config file (`inbound.authorization`), for
//! a sidecar run without a control plane: the same fields as Istio's AuthorizationPolicy spec
//! (`action`, `rules` of `from`/`to`/`when`), turned into the resource the control plane would
//! push, so both sources meet in one [`crate::policy::inbound::InboundSecurity`].

use meshlite_xds_proto::v1;
use serde::Deserialize;

/// One policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticPolicy {
    /// Its name in metrics, access and audit logs (`static/<name>`).
    pub name: String,
    /// `ALLOW` (the default), `DENY` or `AUDIT`.
    #[serde(default)]
    pub action: StaticAction,
    /// Rules, ORed; none: matches nothing (an ALLOW without rules allows nothing).
    #[serde(default)]
    pub rules: Vec<StaticRule>,
    /// Evaluated and reported, never enforced (Istio's `istio.io/dry-run`).
    #[serde(default)]
    pub dry_run: bool,
}

/// A policy's action.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StaticAction {
    /// Allow matching requests, deny the rest.
    #[default]
    Allow,
    /// Deny matching requests.
    Deny,
    /// Mark matching requests for the audit log.
    Audit,
}

/// A rule: any source, any operation, all conditions.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StaticRule {
    /// `- source: {...}` entries.
    pub from: Vec<StaticFrom>,
    /// `- operation: {...}` entries.
    pub to: Vec<StaticTo>,
    /// Conditions.
    pub when: Vec<StaticCondition>,
}

/// `from` entry.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StaticFrom {
    /// The source.
    pub source: StaticSource,
}

/// `to` entry.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StaticTo {
    /// The operation.
    pub operation: StaticOperation,
}

/// Istio's `Source`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct StaticSource {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub request_principals: Vec<String>,
    pub not_request_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub ip_blocks: Vec<String>,
    pub not_ip_blocks: Vec<String>,
    pub remote_ip_blocks: Vec<String>,
    pub not_remote_ip_blocks: Vec<String>,
    pub trust_domains: Vec<String>,
    pub not_trust_domains: Vec<String>,
}

/// Istio's `Operation`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct StaticOperation {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    pub ports: Vec<String>,
    pub not_ports: Vec<String>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
}

/// Istio's `Condition`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct StaticCondition {
    /// The attribute (`request.headers[x-debug]`, `source.ip`, ...).
    pub key: String,
    /// Any of these.
    pub values: Vec<String>,
    /// None of these.
    pub not_values: Vec<String>,
}

impl StaticPolicy {
    /// The resource the control plane would push for it.
    pub fn to_wire(&self) -> v1::AuthorizationPolicy {
        use v1::authorization_policy::Action;
        v1::AuthorizationPolicy {
            origin: format!("static/{}", self.name),
            action: match self.action {
                StaticAction::Allow => Action::Allow,
                StaticAction::Deny => Action::Deny,
                StaticAction::Audit => Action::Audit,
            } as i32,
            rules: self
                .rules
                .iter()
                .map(|r| v1::Rule {
                    from: r
                        .from
                        .iter()
                        .map(|f| {
                            let s = f.source.clone();
                            v1::Source {
                                principals: s.principals,
                                not_principals: s.not_principals,
                                request_principals: s.request_principals,
                                not_request_principals: s.not_request_principals,
                                namespaces: s.namespaces,
                                not_namespaces: s.not_namespaces,
                                ip_blocks: s.ip_blocks,
                                not_ip_blocks: s.not_ip_blocks,
                                remote_ip_blocks: s.remote_ip_blocks,
                                not_remote_ip_blocks: s.not_remote_ip_blocks,
                                trust_domains: s.trust_domains,
                                not_trust_domains: s.not_trust_domains,
                            }
                        })
                        .collect(),
                    to: r
                        .to
                        .iter()
                        .map(|t| {
                            let o = t.operation.clone();
                            v1::Operation {
                                hosts: o.hosts,
                                not_hosts: o.not_hosts,
                                ports: o.ports,
                                not_ports: o.not_ports,
                                methods: o.methods,
                                not_methods: o.not_methods,
                                paths: o.paths,
                                not_paths: o.not_paths,
                            }
                        })
                        .collect(),
                    when: r
                        .when
                        .iter()
                        .map(|c| v1::Condition {
                            key: c.key.clone(),
                            values: c.values.clone(),
                            not_values: c.not_values.clone(),
                        })
                        .collect(),
                })
                .collect(),
            provider: String::new(),
            dry_run: self.dry_run,
        }
    }
}
