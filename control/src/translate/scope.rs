//! Sidecar scopes: the part of the mesh a proxy is told about when a `Sidecar` resource
//! applies to its workload, as istiod's `SidecarScope` computes it.
//!
//! Selection (istiod's `getSidecarScope`): in the workload's namespace, a Sidecar whose
//! `workloadSelector` selects it; else that namespace's Sidecar without selector; else the
//! root namespace's Sidecar without selector (the mesh-wide default, where `.` then means the
//! workload's namespace). Several candidates at one level: the oldest (creation time, then
//! name), as istiod sorts them; `validate` warns about them. No Sidecar: the whole mesh.
//!
//! Effect: a service is sent when one egress listener's hosts import it (and, for a listener
//! with a port, it has that port); a VirtualService when its namespace and one of its hosts
//! match, which brings its routes and the services its routes send to (as istiod infers
//! them). DestinationRules follow the hosts sent. `outboundTrafficPolicy` replaces
//! MeshConfig's. A scope depends only on the Sidecar and the workload's namespace, so it is
//! computed once per (Sidecar, namespace) and generation and shared by all the proxies in it;
//! its maps are shared with the previous generation's when equal, so editing one Sidecar
//! pushes only the proxies it scopes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use meshlite_xds_proto::v1;

use super::services::ServiceFacts;
use super::{ResourceMap, Versioned};
use crate::model::{
    ConfigSet, EgressHost, Named, OutboundTrafficMode, ROOT_NAMESPACE, Sidecar, VirtualService,
    applies_to_sidecars,
};
use crate::registry::Workload;
use crate::validate::fqdn;

/// The Sidecars of a configuration by namespace, oldest first: built once per generation.
#[derive(Debug, Default)]
pub struct SidecarIndex {
    /// Namespace -> indexes into `ConfigSet::sidecars`, oldest first.
    by_namespace: HashMap<String, Vec<usize>>,
}

impl SidecarIndex {
    /// Indexes `config`'s Sidecars.
    pub fn new(config: &ConfigSet) -> Self {
        let mut by_namespace: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in config.sidecars.iter().enumerate() {
            by_namespace
                .entry(s.meta.namespace.clone())
                .or_default()
                .push(i);
        }
        for list in by_namespace.values_mut() {
            list.sort_by(|&a, &b| {
                config.sidecars[a]
                    .meta
                    .age_key()
                    .cmp(&config.sidecars[b].meta.age_key())
            });
        }
        Self { by_namespace }
    }

    /// The Sidecar that applies to a workload of `namespace` carrying `labels`, if any.
    pub fn select<'c>(
        &self,
        config: &'c ConfigSet,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<&'c Named<Sidecar>> {
        let in_ns = |ns: &str| {
            self.by_namespace
                .get(ns)
                .into_iter()
                .flatten()
                .map(|&i| &config.sidecars[i])
        };
        in_ns(namespace)
            .find(|s| {
                s.spec
                    .workload_selector
                    .as_ref()
                    .is_some_and(|sel| sel.selects(labels))
            })
            .or_else(|| in_ns(namespace).find(|s| s.spec.workload_selector.is_none()))
            .or_else(|| in_ns(ROOT_NAMESPACE).find(|s| s.spec.workload_selector.is_none()))
    }
}

/// Which scope a proxy is in: the Sidecar (`namespace/name`) and the workload's namespace.
pub type ScopeKey = (String, String);

/// What the proxies of one scope hold, besides what every proxy holds.
#[derive(Debug)]
pub struct ScopeMaps {
    /// Services.
    pub services: ResourceMap,
    /// Their endpoints.
    pub endpoints: ResourceMap,
    /// Route tables that are the same for every caller.
    pub routes: ResourceMap,
    /// Hosts whose routes depend on the caller and are in scope.
    pub caller_hosts: BTreeSet<String>,
    /// DestinationRules.
    pub policies: ResourceMap,
    /// The MeshConfig resource (with the Sidecar's `outboundTrafficPolicy`, if it has one).
    pub mesh: ResourceMap,
}

/// The parts of a generation a scope is cut from.
pub struct Whole<'a> {
    /// The configuration.
    pub config: &'a ConfigSet,
    /// Every service's namespace and ports.
    pub facts: &'a BTreeMap<String, ServiceFacts>,
    /// Every service.
    pub services: &'a ResourceMap,
    /// Every service's endpoints.
    pub endpoints: &'a ResourceMap,
    /// Every caller-independent route table.
    pub routes: &'a ResourceMap,
    /// Host -> index of the VirtualService whose routes it gets (both kinds of routes).
    pub route_owner: &'a BTreeMap<String, usize>,
    /// The DestinationRules a caller in the scope's namespace sees.
    pub policies: ResourceMap,
    /// The mesh-wide MeshConfig resource and its message.
    pub mesh: (&'a ResourceMap, &'a v1::MeshConfig),
}

/// One egress listener: its port, if any, and its hosts.
struct Listener {
    port: Option<u32>,
    hosts: Vec<EgressHost>,
}

/// Every host a VirtualService's rules send (or mirror) to, completed with its namespace.
pub fn destination_hosts(vs: &Named<VirtualService>) -> BTreeSet<String> {
    let ns = &vs.meta.namespace;
    let http = vs.spec.http.iter().flat_map(|r| {
        r.route
            .iter()
            .map(|d| &d.destination)
            .chain(r.mirror.as_ref())
            .chain(r.mirrors.iter().map(|m| &m.destination))
    });
    let tcp = vs
        .spec
        .tcp
        .iter()
        .flat_map(|r| r.route.iter().map(|d| &d.destination));
    http.chain(tcp).map(|d| fqdn(&d.host, ns)).collect()
}

/// `map` restricted to `keep`.
fn only(map: &ResourceMap, keep: &BTreeSet<String>) -> ResourceMap {
    if keep.len() >= map.len() && map.keys().all(|k| keep.contains(k)) {
        return map.clone();
    }
    Arc::new(
        map.iter()
            .filter(|(k, _)| keep.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

/// The scope of `sidecar` for a workload in `own` (its namespace).
pub fn compute(whole: &Whole<'_>, sidecar: &Named<Sidecar>, own: &str) -> ScopeMaps {
    let listeners: Vec<Listener> = sidecar
        .spec
        .egress
        .iter()
        .map(|l| Listener {
            port: l.port.as_ref().map(|p| p.number),
            // `validate` refused the config if one did not parse.
            hosts: l
                .hosts
                .iter()
                .filter_map(|h| EgressHost::parse(h).ok())
                .collect(),
        })
        .collect();
    let mesh = match &sidecar.spec.outbound_traffic_policy {
        Some(otp) => {
            let mut m = whole.mesh.1.clone();
            m.outbound_registry_only = otp.mode == OutboundTrafficMode::RegistryOnly;
            Arc::new(BTreeMap::from([("mesh".to_string(), Versioned::of(&m))]))
        }
        None => whole.mesh.0.clone(),
    };
    if listeners.is_empty() {
        // No egress: every service, as without a Sidecar.
        return ScopeMaps {
            services: whole.services.clone(),
            endpoints: whole.endpoints.clone(),
            routes: whole.routes.clone(),
            caller_hosts: whole
                .route_owner
                .keys()
                .filter(|h| !whole.routes.contains_key(*h))
                .cloned()
                .collect(),
            policies: whole.policies.clone(),
            mesh,
        };
    }
    let mut hosts: BTreeSet<String> = whole
        .facts
        .iter()
        .filter(|(host, f)| {
            listeners.iter().any(|l| {
                l.port.is_none_or(|p| f.ports.contains(&p))
                    && l.hosts
                        .iter()
                        .any(|e| e.imports_service(&f.namespace, host, own))
            })
        })
        .map(|(host, _)| host.clone())
        .collect();
    let mut selected = BTreeSet::new();
    for (i, vs) in whole.config.virtual_services.iter().enumerate() {
        if !applies_to_sidecars(&vs.spec.gateways) {
            continue;
        }
        let ns = &vs.meta.namespace;
        let imported = vs.spec.hosts.iter().any(|h| {
            let h = fqdn(h, ns);
            listeners
                .iter()
                .flat_map(|l| &l.hosts)
                .any(|e| e.imports_virtual_service(ns, &h, own))
        });
        if imported {
            selected.insert(i);
            hosts.extend(
                destination_hosts(vs)
                    .into_iter()
                    .filter(|h| whole.facts.contains_key(h)),
            );
        }
    }
    let route_hosts: BTreeSet<String> = whole
        .route_owner
        .iter()
        .filter(|(_, i)| selected.contains(*i))
        .map(|(h, _)| h.clone())
        .collect();
    let caller_hosts = route_hosts
        .iter()
        .filter(|h| !whole.routes.contains_key(*h))
        .cloned()
        .collect();
    let mut known = hosts.clone();
    known.extend(route_hosts.iter().cloned());
    ScopeMaps {
        services: only(whole.services, &hosts),
        endpoints: only(whole.endpoints, &hosts),
        routes: only(whole.routes, &route_hosts),
        caller_hosts,
        policies: only(&whole.policies, &known),
        mesh,
    }
}

/// The scope `w` is in, if a Sidecar applies to it.
pub fn key_for(index: &SidecarIndex, config: &ConfigSet, w: &Workload) -> Option<ScopeKey> {
    index
        .select(config, &w.namespace, &w.labels)
        .map(|s| (s.key(), w.namespace.clone()))
}

impl ScopeMaps {
    /// `self`, keeping `prev`'s maps where the content is the same.
    pub fn sharing_with(self, prev: &ScopeMaps) -> Self {
        Self {
            services: super::share(&self.services, &prev.services),
            endpoints: super::share(&self.endpoints, &prev.endpoints),
            routes: super::share(&self.routes, &prev.routes),
            caller_hosts: self.caller_hosts,
            policies: super::share(&self.policies, &prev.policies),
            mesh: super::share(&self.mesh, &prev.mesh),
        }
    }
}

#[cfg(test)]
mod tests;
