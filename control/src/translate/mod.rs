//! Translation: the validated config and the registry become the resources each proxy
//! receives.
//!
//! Most resources are the same for every proxy (services, endpoints, routes without
//! source conditions, destination policies); [`MeshResources`] encodes them once per change
//! into maps shared by every stream, so a thousand proxies cost one copy, not a thousand.
//! [`MeshResources::view_for`] then adds what is one proxy's own: its inbound policy, routes
//! whose matches depend on who calls (`sourceLabels`, `sourceNamespace`, evaluated here at
//! generation time as Istio does), and DestinationRules found in the caller's namespace (one
//! map per namespace, shared by its proxies). A proxy a `Sidecar` resource applies to gets
//! its scope's part of each map instead ([`scope`]: one per Sidecar and namespace).

mod policy;
mod routes;
pub mod scope;
pub mod services;
mod telemetry;
pub mod vips;

use meshlite_xds_proto::{type_url, v1};
use prost::{Message, Name};
use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// Resources of one type by name, shared between the proxies that hold the same set.
pub type ResourceMap = Arc<BTreeMap<String, Arc<Versioned>>>;

/// What one proxy should hold: type URL -> resource name -> resource.
pub type ProxyView = BTreeMap<&'static str, ResourceMap>;

/// The shared part of every proxy's view, built once per change.
#[derive(Debug)]
pub struct MeshResources {
    services: ResourceMap,
    endpoints: ResourceMap,
    /// Route tables that are the same for every caller.
    routes: ResourceMap,
    /// VirtualServices whose matches depend on the caller, by host.
    caller_routes: BTreeMap<String, crate::model::Named<crate::model::VirtualService>>,
    /// DestinationRules by host, then by the namespace they live in.
    policies: BTreeMap<String, Vec<(String, Arc<Versioned>)>>,
    /// The policies a caller in a namespace sees, computed once per namespace.
    policies_by_namespace: std::sync::Mutex<HashMap<String, ResourceMap>>,
    /// The previous generation's per-namespace maps, shared when the content is the same.
    prev_policies: HashMap<String, ResourceMap>,
    trust: ResourceMap,
    /// The MeshConfig resource, the same for every proxy a Sidecar does not override.
    mesh: ResourceMap,
    /// The MeshConfig message `mesh` encodes (scopes override its outbound policy).
    mesh_message: v1::MeshConfig,
    /// Every service's namespace and ports (Sidecar egress hosts match them).
    facts: BTreeMap<String, services::ServiceFacts>,
    /// Host -> index of the VirtualService whose routes it gets.
    route_owner: BTreeMap<String, usize>,
    /// The Sidecars by namespace.
    sidecars: scope::SidecarIndex,
    /// The scopes of the Sidecars in force, computed once per Sidecar and namespace.
    scopes: std::sync::Mutex<HashMap<scope::ScopeKey, Arc<scope::ScopeMaps>>>,
    /// The previous generation's scopes, shared when the content is the same.
    prev_scopes: HashMap<scope::ScopeKey, Arc<scope::ScopeMaps>>,
    config: Arc<ConfigSet>,
    trust_domain: String,
    /// The fetched key sets of `jwksUri` rules.
    jwks: crate::jwks::ResolvedJwks,
    /// Hosts known to the mesh, for translation warnings.
    pub hosts: Vec<String>,
    /// VIPs allocated to services without addresses of their own.
    vips: vips::Allocations,
}

impl MeshResources {
    /// Translates the shared part of the mesh, allocating VIPs from scratch (the first
    /// generation).
    pub fn build(
        config: Arc<ConfigSet>,
        workloads: &[Workload],
        roots_pem: &[String],
        trust_domain: &str,
        jwks: &crate::jwks::ResolvedJwks,
    ) -> Self {
        Self::build_keeping(
            config,
            workloads,
            roots_pem,
            trust_domain,
            jwks,
            &vips::Allocations::new(),
        )
    }

    /// Translates the shared part of the mesh; services that had a VIP in `held` (the
    /// previous generation's [`Self::vips`]) keep it.
    pub fn build_keeping(
        config: Arc<ConfigSet>,
        workloads: &[Workload],
        roots_pem: &[String],
        trust_domain: &str,
        jwks: &crate::jwks::ResolvedJwks,
        held: &vips::Allocations,
    ) -> Self {
        let auto_allocate = config
            .mesh_config
            .as_ref()
            .is_none_or(|m| crate::model::dns_auto_allocate(&m.spec));
        let services::Translated {
            maps: (services, endpoints),
            vips,
            facts,
        } = services::translate(&config, workloads, trust_domain, held, auto_allocate);
        let hosts: Vec<String> = services.keys().cloned().collect();
        let mut routes = BTreeMap::new();
        let mut caller_routes = BTreeMap::new();
        let mut route_owner = BTreeMap::new();
        for (i, vs) in config.virtual_services.iter().enumerate() {
            if !crate::model::applies_to_sidecars(&vs.spec.gateways) {
                continue;
            }
            for host in routes::hosts_of(vs, &hosts) {
                // Sidecars do not merge VirtualServices: the first one claiming a host keeps
                // it (validation refuses duplicates, so this only matters for wildcards).
                if routes.contains_key(&host) || caller_routes.contains_key(&host) {
                    continue;
                }
                route_owner.insert(host.clone(), i);
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
        let mesh_message = policy::mesh(config.mesh_config.as_ref().map(|m| &m.spec));
        let mesh = Versioned::of(&mesh_message);
        Self {
            mesh: Arc::new(BTreeMap::from([("mesh".to_string(), mesh)])),
            mesh_message,
            facts,
            route_owner,
            sidecars: scope::SidecarIndex::new(&config),
            scopes: std::sync::Mutex::new(HashMap::new()),
            prev_scopes: HashMap::new(),
            services: Arc::new(services),
            endpoints: Arc::new(endpoints),
            routes: Arc::new(routes),
            caller_routes,
            policies,
            policies_by_namespace: std::sync::Mutex::new(HashMap::new()),
            prev_policies: HashMap::new(),
            trust: Arc::new(BTreeMap::from([("ROOTCA".to_string(), trust)])),
            config,
            trust_domain: trust_domain.to_string(),
            jwks: jwks.clone(),
            hosts,
            vips,
        }
    }

    /// The VIPs allocated in this generation, by hostname.
    pub fn vips(&self) -> &vips::Allocations {
        &self.vips
    }

    /// Keeps `prev`'s maps and resources wherever the content is the same, so an unchanged
    /// type costs streams a pointer comparison and generations share their memory.
    pub fn sharing_with(mut self, prev: &MeshResources) -> Self {
        self.services = share(&self.services, &prev.services);
        self.endpoints = share(&self.endpoints, &prev.endpoints);
        self.routes = share(&self.routes, &prev.routes);
        self.trust = share(&self.trust, &prev.trust);
        self.mesh = share(&self.mesh, &prev.mesh);
        self.prev_policies = prev
            .policies_by_namespace
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.prev_scopes = prev
            .scopes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self
    }

    /// The scope of the Sidecar applying to `me`, if one does (computed on first use).
    fn scope_for(&self, me: &Workload) -> Option<Arc<scope::ScopeMaps>> {
        let key = scope::key_for(&self.sidecars, &self.config, me)?;
        if let Some(s) = self
            .scopes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Some(s.clone());
        }
        let sidecar = self.config.sidecars.iter().find(|s| s.key() == key.0)?;
        let whole = scope::Whole {
            config: &self.config,
            facts: &self.facts,
            services: &self.services,
            endpoints: &self.endpoints,
            routes: &self.routes,
            route_owner: &self.route_owner,
            policies: self.policies_seen_from(&key.1),
            mesh: (&self.mesh, &self.mesh_message),
        };
        let mut maps = scope::compute(&whole, sidecar, &key.1);
        if let Some(prev) = self.prev_scopes.get(&key) {
            maps = maps.sharing_with(prev);
        }
        // Another stream may have computed it meanwhile: all proxies of a scope share one.
        let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        Some(scopes.entry(key).or_insert_with(|| Arc::new(maps)).clone())
    }

    /// The full view of one proxy: shared maps, plus its own where it has any.
    pub fn view_for(&self, me: &Workload) -> ProxyView {
        let scope = self.scope_for(me);
        let mut view = ProxyView::new();
        view.insert(type_url::TRUST_BUNDLE, self.trust.clone());
        let (mesh, services, endpoints, shared_routes, policies) = match &scope {
            Some(s) => (
                s.mesh.clone(),
                s.services.clone(),
                s.endpoints.clone(),
                &s.routes,
                s.policies.clone(),
            ),
            None => (
                self.mesh.clone(),
                self.services.clone(),
                self.endpoints.clone(),
                &self.routes,
                self.policies_seen_from(&me.namespace),
            ),
        };
        view.insert(type_url::MESH_CONFIG, mesh);
        view.insert(type_url::SERVICE, services);
        view.insert(type_url::ENDPOINTS, endpoints);
        let mine = self.caller_routes.iter().filter(|(host, _)| {
            scope
                .as_ref()
                .is_none_or(|s| s.caller_hosts.contains(*host))
        });
        let routes = if mine.clone().next().is_none() {
            shared_routes.clone()
        } else {
            let mut routes = (**shared_routes).clone();
            for (host, vs) in mine {
                let table = routes::table(vs, host, Some(me));
                routes.insert(host.clone(), Versioned::of(&table));
            }
            Arc::new(routes)
        };
        view.insert(type_url::ROUTE_TABLE, routes);
        view.insert(type_url::DESTINATION_POLICY, policies);
        let inbound = policy::inbound(&self.config, me, &self.trust_domain, &self.jwks);
        view.insert(
            type_url::INBOUND_POLICY,
            Arc::new(BTreeMap::from([(
                "inbound".to_string(),
                Versioned::of(&inbound),
            )])),
        );
        view
    }

    /// The DestinationRules a caller in `namespace` sees, by Istio's lookup order: the
    /// caller's namespace, the service's, the root namespace.
    fn policies_seen_from(&self, namespace: &str) -> ResourceMap {
        let mut cache = self
            .policies_by_namespace
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(m) = cache.get(namespace) {
            return m.clone();
        }
        let mut policies = BTreeMap::new();
        for (host, candidates) in &self.policies {
            let service_ns = host.split('.').nth(1).unwrap_or("");
            let pick = [namespace, service_ns, crate::model::ROOT_NAMESPACE]
                .iter()
                .find_map(|ns| candidates.iter().find(|(n, _)| n == ns));
            if let Some((_, p)) = pick {
                policies.insert(host.clone(), p.clone());
            }
        }
        let mut map = Arc::new(policies);
        if let Some(prev) = self.prev_policies.get(namespace) {
            map = share(&map, prev);
        }
        cache.insert(namespace.to_string(), map.clone());
        map
    }

    /// How many services there are (status).
    pub fn service_count(&self) -> usize {
        self.services.len()
    }
}

/// `new`, with `prev`'s map when identical in content, else with `prev`'s entries where they
/// are.
fn share(new: &ResourceMap, prev: &ResourceMap) -> ResourceMap {
    let same = new.len() == prev.len()
        && new
            .iter()
            .zip(prev.iter())
            .all(|((a, ra), (b, rb))| a == b && ra.version == rb.version);
    if same {
        return prev.clone();
    }
    Arc::new(
        new.iter()
            .map(|(k, v)| match prev.get(k) {
                Some(p) if p.version == v.version => (k.clone(), p.clone()),
                _ => (k.clone(), v.clone()),
            })
            .collect(),
    )
}

/// An Istio duration as the protobuf `Duration` the resources carry.
/// The token bucket an annotation value sets; `None` when absent or invalid (validation
/// refuses a config carrying an invalid one before it gets here).
fn local_rate_limit(value: Option<&String>) -> Option<v1::LocalRateLimit> {
    let l: crate::model::annotations::LocalRateLimit = value?.parse().ok()?;
    Some(v1::LocalRateLimit {
        max_tokens: l.max_tokens,
        tokens_per_fill: l.tokens_per_fill,
        fill_interval: Some(duration(&l.fill_interval)),
    })
}

fn duration(d: &crate::model::IstioDuration) -> prost_types::Duration {
    let std = d.as_std();
    prost_types::Duration {
        seconds: i64::try_from(std.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(std.subsec_nanos()).unwrap_or(0),
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

/// What a proxy holds of one type, as the server knows it.
#[derive(Debug, Clone)]
pub enum Held {
    /// Told by the proxy when it (re)subscribed: name -> version.
    Initial(BTreeMap<String, String>),
    /// The map last sent (shared with other proxies and with the generation it came from).
    Sent(ResourceMap),
}

impl Held {
    /// Whether `want` is the very map already held (the common case when nothing of this
    /// type changed): a pointer comparison.
    pub fn is(&self, want: &ResourceMap) -> bool {
        matches!(self, Held::Sent(prev) if Arc::ptr_eq(prev, want))
    }

    /// Whether resource `name` must be sent for the proxy to hold `r`.
    pub fn differs(&self, name: &str, r: &Arc<Versioned>) -> bool {
        match self {
            Held::Initial(versions) => versions.get(name) != Some(&r.version),
            Held::Sent(prev) => prev
                .get(name)
                .is_none_or(|p| !Arc::ptr_eq(p, r) && p.version != r.version),
        }
    }

    /// Names held that `want` no longer has.
    pub fn removals(&self, want: &ResourceMap) -> Vec<String> {
        let gone = |n: &&String| !want.contains_key(*n);
        match self {
            Held::Initial(versions) => versions.keys().filter(gone).cloned().collect(),
            Held::Sent(prev) if Arc::ptr_eq(prev, want) => Vec::new(),
            Held::Sent(prev) => prev.keys().filter(gone).cloned().collect(),
        }
    }

    /// What a named subscription to `names` should hold of `all`: the resources of `all`
    /// those names have (a name `all` lacks is simply absent). When that is exactly what is
    /// held (same names, same versions), it is the held map itself, so [`Held::is`] holds and
    /// nothing is sent. One lookup per subscribed name: the cost follows the subscription, not
    /// the size of `all`.
    pub fn part_of(&self, all: &ResourceMap, names: &BTreeSet<String>) -> ResourceMap {
        let present = || names.iter().filter_map(|n| all.get_key_value(n));
        if let Held::Sent(prev) = self {
            let mut held = prev.iter();
            let same = present().all(|(n, r)| {
                held.next().is_some_and(|(pn, pr)| {
                    pn == n && (Arc::ptr_eq(pr, r) || pr.version == r.version)
                })
            }) && held.next().is_none();
            if same {
                return prev.clone();
            }
        }
        Arc::new(present().map(|(n, r)| (n.clone(), r.clone())).collect())
    }

    /// Forgets `names` (the proxy unsubscribed from them): they are no longer held, so they
    /// are never removed from the proxy and are sent again if subscribed again.
    pub fn forget(&mut self, names: &BTreeSet<String>) {
        match self {
            Held::Initial(versions) => versions.retain(|n, _| !names.contains(n)),
            Held::Sent(prev) => {
                if names.iter().any(|n| prev.contains_key(n)) {
                    *prev = Arc::new(
                        prev.iter()
                            .filter(|(n, _)| !names.contains(*n))
                            .map(|(n, r)| (n.clone(), r.clone()))
                            .collect(),
                    );
                }
            }
        }
    }

    /// The whole delta from what is held to `want` (the stream sends it lazily, batch by
    /// batch, with [`Held::differs`]; this is the same set at once).
    pub fn diff(&self, want: &ResourceMap) -> TypeDelta {
        if self.is(want) {
            return TypeDelta::default();
        }
        TypeDelta {
            upserts: want
                .iter()
                .filter(|(n, r)| self.differs(n, r))
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect(),
            removals: self.removals(want),
        }
    }
}

#[cfg(test)]
mod tests;
