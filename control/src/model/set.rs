//! The validated, indexed configuration the rest of the control plane consumes.
//!
//! One `ConfigSet` is a consistent snapshot: every source (files today, xDS or Kubernetes
//! later) produces one, and only after validation found no error. Resources keep their
//! metadata and origin so later stages can still point at the YAML that caused something.

use serde::Serialize;

use super::{
    AuthorizationPolicy, DestinationRule, MeshConfig, ObjectMeta, Origin, PeerAuthentication,
    RequestAuthentication, ServiceEntry, Sidecar, Telemetry, VirtualService,
};

/// A typed spec with the metadata and origin of its resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Named<T> {
    /// Name, namespace, labels, annotations.
    pub meta: ObjectMeta,
    /// File and document it came from.
    pub origin: Origin,
    /// The spec.
    pub spec: T,
}

impl<T> Named<T> {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        self.meta.key()
    }
}

/// All resources of a validated configuration, per kind, in load order (files sorted by
/// name, documents in file order).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConfigSet {
    /// VirtualServices.
    pub virtual_services: Vec<Named<VirtualService>>,
    /// DestinationRules.
    pub destination_rules: Vec<Named<DestinationRule>>,
    /// ServiceEntries.
    pub service_entries: Vec<Named<ServiceEntry>>,
    /// PeerAuthentications.
    pub peer_authentications: Vec<Named<PeerAuthentication>>,
    /// AuthorizationPolicies.
    pub authorization_policies: Vec<Named<AuthorizationPolicy>>,
    /// RequestAuthentications.
    pub request_authentications: Vec<Named<RequestAuthentication>>,
    /// Telemetries.
    pub telemetries: Vec<Named<Telemetry>>,
    /// Sidecars.
    pub sidecars: Vec<Named<Sidecar>>,
    /// The MeshConfig, if the directory holds one (Istio's defaults otherwise).
    pub mesh_config: Option<Named<MeshConfig>>,
}

impl ConfigSet {
    /// Total number of resources.
    pub fn len(&self) -> usize {
        self.virtual_services.len()
            + self.destination_rules.len()
            + self.service_entries.len()
            + self.peer_authentications.len()
            + self.authorization_policies.len()
            + self.request_authentications.len()
            + self.telemetries.len()
            + self.sidecars.len()
            + usize::from(self.mesh_config.is_some())
    }

    /// True when there is no resource at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The VirtualService bound to sidecars that claims `host` (an FQDN), if any. Short names
    /// in the VS are completed with its namespace; exact hosts beat wildcards.
    pub fn virtual_service_for_host(&self, host: &str) -> Option<&Named<VirtualService>> {
        let mesh = self
            .virtual_services
            .iter()
            .filter(|vs| applies_to_sidecars(&vs.spec.gateways));
        let mut wildcard = None;
        for vs in mesh {
            for h in &vs.spec.hosts {
                let full = fqdn(h, &vs.meta.namespace);
                if full == host {
                    return Some(vs);
                }
                if wildcard.is_none() && wildcard_matches(&full, host) {
                    wildcard = Some(vs);
                }
            }
        }
        wildcard
    }

    /// The DestinationRule for `host` (an FQDN) seen by a client in `client_ns`, following
    /// Istio's lookup order: client namespace, then the host's own namespace, then
    /// `istio-system`. Exact hosts beat wildcards within a namespace.
    pub fn destination_rule_for_host(
        &self,
        host: &str,
        client_ns: &str,
    ) -> Option<&Named<DestinationRule>> {
        let service_ns = host.split('.').nth(1).unwrap_or(client_ns);
        for ns in [client_ns, service_ns, ROOT_NAMESPACE] {
            let in_ns = || {
                self.destination_rules
                    .iter()
                    .filter(move |dr| dr.meta.namespace == ns)
            };
            if let Some(dr) = in_ns().find(|dr| fqdn(&dr.spec.host, ns) == host) {
                return Some(dr);
            }
            if let Some(dr) = in_ns().find(|dr| wildcard_matches(&fqdn(&dr.spec.host, ns), host)) {
                return Some(dr);
            }
        }
        None
    }

    /// PeerAuthentications in `namespace`.
    pub fn peer_authentications_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Named<PeerAuthentication>> + 'a {
        self.peer_authentications
            .iter()
            .filter(move |p| p.meta.namespace == namespace)
    }

    /// RequestAuthentications in `namespace` (those in `istio-system` apply mesh-wide).
    pub fn request_authentications_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Named<RequestAuthentication>> + 'a {
        self.request_authentications
            .iter()
            .filter(move |p| p.meta.namespace == namespace)
    }

    /// Telemetries in `namespace` (those in `istio-system` without a selector apply
    /// mesh-wide).
    pub fn telemetries_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Named<Telemetry>> + 'a {
        self.telemetries
            .iter()
            .filter(move |t| t.meta.namespace == namespace)
    }

    /// Every `jwksUri` the configuration names, with the longest fetch timeout any rule
    /// naming it gives (the control plane fetches each once).
    pub fn jwks_uris(&self) -> std::collections::BTreeMap<String, std::time::Duration> {
        let mut out = std::collections::BTreeMap::new();
        for ra in &self.request_authentications {
            for rule in &ra.spec.jwt_rules {
                if rule.jwks.is_some() {
                    continue;
                }
                if let Some(uri) = rule.jwks_uri.as_deref().filter(|u| !u.is_empty()) {
                    let t = rule.fetch_timeout();
                    let e = out.entry(uri.to_string()).or_insert(t);
                    *e = (*e).max(t);
                }
            }
        }
        out
    }

    /// AuthorizationPolicies in `namespace` (policies in `istio-system` apply mesh-wide and
    /// are returned by asking for that namespace).
    pub fn authorization_policies_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Named<AuthorizationPolicy>> + 'a {
        self.authorization_policies
            .iter()
            .filter(move |p| p.meta.namespace == namespace)
    }
}

/// Kubernetes cluster domain used to complete short host names.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Completes a host name the way meshlite resolves short names: `reviews` and `reviews.ns`
/// become `reviews.<ns>.svc.cluster.local` / `reviews.ns.svc.cluster.local`, `reviews.ns.svc`
/// gets the cluster domain; wildcards, `*.svc.cluster.local` names and other names with two or
/// more dots are kept. (Istio itself only completes names without a dot.)
pub fn fqdn(host: &str, namespace: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let suffix = format!(".svc.{CLUSTER_DOMAIN}");
    if host.starts_with('*') || host.ends_with(&suffix) {
        return host;
    }
    match host.matches('.').count() {
        0 => format!("{host}.{namespace}{suffix}"),
        1 => format!("{host}{suffix}"),
        2 if host.ends_with(".svc") => format!("{host}.{CLUSTER_DOMAIN}"),
        _ => host,
    }
}

/// Istio's root namespace: mesh-wide policies live here.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// True when a VS with these `gateways` applies to sidecars (empty or containing `mesh`).
pub fn applies_to_sidecars(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == "mesh")
}

/// `*.foo.com` matches `a.foo.com` and `a.b.foo.com` (never an empty label); `*` matches all.
pub fn wildcard_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => false,
    }
}
