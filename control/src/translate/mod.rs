//! Translation: the validated config and the registry become the resources each proxy
//! receives.
//!
//! Most resources are the same for every proxy (services, endpoints, routes without
//! source conditions, destination policies); [`MeshResources`] encodes them once per change.
//! [`MeshResources::view_for`] then adds what is one proxy's own: its inbound policy, routes
//! whose matches depend on who calls (`sourceLabels`, `sourceNamespace`, evaluated here at
//! generation time as Istio does), and DestinationRules found in the caller's namespace.

mod policy;
mod routes;
mod services;

use meshlite_xds_proto::{type_url, v1};
use prost::{Message, Name};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::model::ConfigSet;
use crate::registry::Workload;

/// One encoded resource and its version (a hash of its bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// Content hash, hex.
    pub version: String,
    /// The message as an `Any`.
    pub body: prost_types::Any,
}

impl Versioned {
    /// Encodes `m` and versions it by content.
    pub fn of<M: Message + Name>(m: &M) -> Arc<Self> {
        let value = m.encode_to_vec();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        value.hash(&mut h);
        Arc::new(Self {
            version: format!("{:016x}", h.finish()),
            body: prost_types::Any {
                type_url: M::type_url(),
                value,
            },
        })
    }
}

/// What one proxy should hold: type URL -> resource name -> resource.
pub type ProxyView = BTreeMap<&'static str, BTreeMap<String, Arc<Versioned>>>;

/// The shared part of every proxy's view, built once per change.
#[derive(Debug)]
pub struct MeshResources {
    services: BTreeMap<String, Arc<Versioned>>,
    endpoints: BTreeMap<String, Arc<Versioned>>,
    /// Route tables that are the same for every caller.
    routes: BTreeMap<String, Arc<Versioned>>,
    /// VirtualServices whose matches depend on the caller, by host.
    caller_routes: BTreeMap<String, crate::model::Named<crate::model::VirtualService>>,
    /// DestinationRules by host, then by the namespace they live in.
    policies: BTreeMap<String, Vec<(String, Arc<Versioned>)>>,
    trust: Arc<Versioned>,
    config: Arc<ConfigSet>,
    trust_domain: String,
    /// Hosts known to the mesh, for translation warnings.
    pub hosts: Vec<String>,
}

impl MeshResources {
    /// Translates the shared part of the mesh.
    pub fn build(
        config: Arc<ConfigSet>,
        workloads: &[Workload],
        roots_pem: &[String],
        trust_domain: &str,
    ) -> Self {
        let (services, endpoints) = services::translate(&config, workloads, trust_domain);
        let hosts: Vec<String> = services.keys().cloned().collect();
        let mut routes = BTreeMap::new();
        let mut caller_routes = BTreeMap::new();
        for vs in &config.virtual_services {
            if !crate::model::applies_to_sidecars(&vs.spec.gateways) {
                continue;
            }
            for host in routes::hosts_of(vs, &hosts) {
                // Sidecars do not merge VirtualServices: the first one claiming a host keeps
                // it (validation refuses duplicates, so this only matters for wildcards).
                if routes.contains_key(&host) || caller_routes.contains_key(&host) {
                    continue;
                }
                if routes::depends_on_caller(vs) {
                    caller_routes.insert(host, vs.clone());
                } else {
                    let table = routes::table(vs, &host, None);
                    routes.insert(host, Versioned::of(&table));
                }
            }
        }
        let mut policies: BTreeMap<String, Vec<(String, Arc<Versioned>)>> = BTreeMap::new();
        for dr in &config.destination_rules {
            for host in routes::dr_hosts(dr, &hosts) {
                let p = policy::destination(dr, &host);
                policies
                    .entry(host)
                    .or_default()
                    .push((dr.meta.namespace.clone(), Versioned::of(&p)));
            }
        }
        let trust = Versioned::of(&v1::TrustBundle {
            roots_pem: roots_pem.to_vec(),
        });
        Self {
            services,
            endpoints,
            routes,
            caller_routes,
            policies,
            trust,
            config,
            trust_domain: trust_domain.to_string(),
            hosts,
        }
    }

    /// The full view of one proxy.
    pub fn view_for(&self, me: &Workload) -> ProxyView {
        let mut view = ProxyView::new();
        view.insert(
            type_url::TRUST_BUNDLE,
            BTreeMap::from([("ROOTCA".to_string(), self.trust.clone())]),
        );
        view.insert(type_url::SERVICE, self.services.clone());
        view.insert(type_url::ENDPOINTS, self.endpoints.clone());
        let mut routes = self.routes.clone();
        for (host, vs) in &self.caller_routes {
            let table = routes::table(vs, host, Some(me));
            routes.insert(host.clone(), Versioned::of(&table));
        }
        view.insert(type_url::ROUTE_TABLE, routes);
        // Istio's lookup order: the caller's namespace, the service's, the root namespace.
        let mut policies = BTreeMap::new();
        for (host, candidates) in &self.policies {
            let service_ns = host.split('.').nth(1).unwrap_or("");
            let pick = [
                me.namespace.as_str(),
                service_ns,
                crate::model::ROOT_NAMESPACE,
            ]
            .iter()
            .find_map(|ns| candidates.iter().find(|(n, _)| n == ns));
            if let Some((_, p)) = pick {
                policies.insert(host.clone(), p.clone());
            }
        }
        view.insert(type_url::DESTINATION_POLICY, policies);
        let inbound = policy::inbound(&self.config, me, &self.trust_domain);
        view.insert(
            type_url::INBOUND_POLICY,
            BTreeMap::from([("inbound".to_string(), Versioned::of(&inbound))]),
        );
        view
    }

    /// How many services there are (status).
    pub fn service_count(&self) -> usize {
        self.services.len()
    }
}

/// What changed between what a proxy holds and what it should hold, for one type.
#[derive(Debug, Default, PartialEq)]
pub struct TypeDelta {
    /// Resources new or changed.
    pub upserts: Vec<(String, Arc<Versioned>)>,
    /// Names to remove.
    pub removals: Vec<String>,
}

/// The delta from `held` (name -> version) to `want`.
pub fn diff(held: &HashMap<String, String>, want: &BTreeMap<String, Arc<Versioned>>) -> TypeDelta {
    let upserts = want
        .iter()
        .filter(|(name, r)| held.get(*name) != Some(&r.version))
        .map(|(n, r)| (n.clone(), r.clone()))
        .collect();
    let removals = held
        .keys()
        .filter(|n| !want.contains_key(*n))
        .cloned()
        .collect();
    TypeDelta { upserts, removals }
}

#[cfg(test)]
mod tests;
