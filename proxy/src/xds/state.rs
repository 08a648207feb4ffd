//! The resources received from the control plane, per type and name, and what they become:
//! a [`MeshView`] the snapshot is built from, and the trust bundle.
//!
//! Applying a delta is done on a copy: the copy is decoded and built into a snapshot, and
//! only if that works does it replace the current state (otherwise the push is NACKed and
//! the last good state stays, as the xDS protocol asks).

use meshlite_xds_proto::discovery::{DeltaDiscoveryResponse, Resource};
use meshlite_xds_proto::{type_url, v1};
use prost::Message;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::XdsError;
use super::demand::Wanted;
use crate::balance::locality::Locality;
use crate::identity::spiffe::SpiffeId;
use crate::protocol::Protocol;
use crate::source::{EndpointSpec, LabelSet, MeshView, ServiceSpec};
use crate::telemetry::peer::{DEFAULT_CLUSTER_ID, WorkloadMetadata};
use std::sync::Arc;

/// One resource as received: its version and encoded body.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// The server's version of it (shared: a copy of the state copies no string).
    pub version: Arc<str>,
    /// The encoded message (the `Any` value).
    /// Shared, so a copy of the state (applying a push works on one) copies no body.
    pub body: bytes::Bytes,
}

/// One type's resources, by name. Names and versions are shared strings, so the copy a push
/// makes of the type it touches (thousands of Services in a large mesh) allocates no string
/// and its drop frees none.
pub(crate) type Resources = BTreeMap<Arc<str>, Stored>;

/// Every resource currently accepted, by type URL, then name.
///
/// Each type's resources are shared between a state and its copies: a push copies only the
/// types it touches (a fetch on demand never copies the mesh's Service resources).
///
/// A clone copies the resources, not what views decoded from them: a copy made to apply a
/// push takes them over with [`XdsState::take_caches`] (and hands them back if the push is
/// refused), so a push never copies the decoded mesh.
#[derive(Debug, Default)]
pub struct XdsState {
    types: BTreeMap<String, Arc<Resources>>,
    /// The services an earlier view decoded, by name: a view decodes only the Service and
    /// Endpoints resources whose versions moved, and hands the snapshot the same shared
    /// specs for the rest (a push of one service costs one service's decoding).
    decoded: BTreeMap<String, Decoded>,
    /// Route tables an earlier view decoded, by name, with their versions (shared with the
    /// views, so the snapshot builder recognises an unchanged one by pointer).
    routes: Cache<v1::RouteTable>,
    /// Destination policies an earlier view decoded, likewise.
    policies: Cache<v1::DestinationPolicy>,
    /// With resources on demand: the hosts subscribed by name and which were answered.
    /// `None`: every type is subscribed whole.
    wanted: Option<Wanted>,
    /// Hosts the last view found needed but not yet wanted: services without a virtual IP
    /// (reached only at their endpoints' addresses, so they cannot wait for a first call),
    /// and the destinations of a wanted host's routes. The client subscribes to them.
    implied: Vec<String>,
    /// On demand: every Service resource as specs awaiting their fetch, made from the
    /// Service resources it names (kept while those are the same shared map).
    known: Option<Known>,
}

/// The services a sidecar on demand knows before fetching them, and what they were made of.
#[derive(Debug)]
struct Known {
    /// The Service resources they were made from.
    source: Arc<Resources>,
    /// Each Service's specs (one per port, awaiting), with the version they were decoded from.
    by_name: BTreeMap<Arc<str>, Versioned<Vec<Arc<ServiceSpec>>>>,
    /// All of them, in name order: the list a view hands the snapshot (the same list while
    /// the Service resources are the same, so the snapshot keeps its directory).
    list: Arc<Vec<Arc<ServiceSpec>>>,
    /// The services without a virtual IP (reached only at their endpoints' addresses).
    without_vip: Vec<Arc<str>>,
}

/// What was decoded from a resource, beside the resource version it was decoded from.
type Versioned<T> = (Arc<str>, T);

/// Messages of one type decoded by an earlier view: name -> (version, message).
type Cache<M> = BTreeMap<Arc<str>, Versioned<Arc<M>>>;

/// The messages of `stored` (one type's resources) as shared values by name, decoding only
/// those whose version is not the one `cache` holds; `cache` becomes what was returned.
fn decode_cached<M: Message + Default>(
    type_url: &str,
    stored: Option<&Resources>,
    cache: &mut Cache<M>,
) -> Result<std::collections::HashMap<String, Arc<M>>, XdsError> {
    let mut next = Cache::new();
    let mut out = std::collections::HashMap::new();
    for (name, s) in stored.into_iter().flatten() {
        let entry = match cache.remove_entry(name) {
            Some(kept) if kept.1.0 == s.version => kept,
            _ => {
                let m = M::decode(s.body.as_ref())
                    .map_err(|e| XdsError::Invalid(format!("{type_url} {name}: {e}")))?;
                (name.clone(), (s.version.clone(), Arc::new(m)))
            }
        };
        out.insert(name.to_string(), entry.1.1.clone());
        next.insert(entry.0, entry.1);
    }
    *cache = next;
    Ok(out)
}

/// One service's specs (one per port) and the resource versions they were decoded from.
#[derive(Clone, Debug)]
struct Decoded {
    service: Arc<str>,
    endpoints: Option<Arc<str>>,
    specs: Vec<Arc<ServiceSpec>>,
}

impl Clone for XdsState {
    fn clone(&self) -> Self {
        Self {
            types: self.types.clone(),
            wanted: self.wanted.clone(),
            ..Default::default()
        }
    }
}

impl PartialEq for XdsState {
    /// The resources held; what was decoded from them is a cache.
    fn eq(&self, other: &Self) -> bool {
        self.types == other.types
    }
}

impl XdsState {
    /// Applies a delta response to a copy of this state; the copy is returned for checking.
    pub fn apply(&self, resp: &DeltaDiscoveryResponse) -> Result<Self, XdsError> {
        let mut next = self.clone();
        next.merge(resp)?;
        Ok(next)
    }

    /// Moves what `other`'s views decoded into this state (its next version), so its next
    /// view decodes only what moved since.
    pub fn take_caches(&mut self, other: &mut Self) {
        self.decoded = std::mem::take(&mut other.decoded);
        self.routes = std::mem::take(&mut other.routes);
        self.policies = std::mem::take(&mut other.policies);
        self.known = other.known.take();
    }

    /// Fetches the per-host types on demand (or, with `false`, whole). A state restored from
    /// disk wants the hosts it holds.
    pub fn set_on_demand(&mut self, on: bool) {
        self.wanted = on.then(|| Wanted::restored(&self.types));
    }

    /// The on-demand record, when resources are fetched on demand.
    pub fn wanted(&self) -> Option<&Wanted> {
        self.wanted.as_ref()
    }

    /// The on-demand record, to subscribe hosts or forget answers.
    pub fn wanted_mut(&mut self) -> Option<&mut Wanted> {
        self.wanted.as_mut()
    }

    /// Stops wanting `hosts`: their endpoints, routes and policies are dropped, and they
    /// await a first call again.
    pub fn forget(&mut self, hosts: &[String]) {
        let Some(w) = &mut self.wanted else { return };
        for h in hosts {
            w.remove(h);
        }
        for t in super::demand::TYPES {
            if let Some(m) = self.types.get_mut(t) {
                let m = Arc::make_mut(m);
                for h in hosts {
                    m.remove(h.as_str());
                }
            }
        }
    }

    /// The hosts `host`'s route table (as the last view decoded it) leads to.
    pub fn destinations_of(&self, host: &str) -> Vec<&str> {
        self.routes
            .get(host)
            .map(|(_, t)| route_destinations(t).collect())
            .unwrap_or_default()
    }

    /// Takes the hosts the last view found needed and not yet wanted.
    pub fn take_implied(&mut self) -> Vec<String> {
        std::mem::take(&mut self.implied)
    }

    /// Applies a delta response to this state in place. On an error the state may hold part
    /// of the response: apply pushes to a copy (see [`XdsState::apply`]).
    pub fn merge(&mut self, resp: &DeltaDiscoveryResponse) -> Result<(), XdsError> {
        if !type_url::ALL.contains(&resp.type_url.as_str()) {
            return Err(XdsError::Invalid(format!(
                "unknown resource type {}",
                resp.type_url
            )));
        }
        let map = Arc::make_mut(self.types.entry(resp.type_url.clone()).or_default());
        if let Some(w) = &mut self.wanted {
            w.record(resp);
        }
        for name in &resp.removed_resources {
            map.remove(name.as_str());
        }
        for r in &resp.resources {
            match &r.resource {
                // A resource without a body does not exist (delta xDS).
                None => {
                    map.remove(r.name.as_str());
                }
                Some(any) => {
                    if any.type_url != resp.type_url {
                        return Err(XdsError::Invalid(format!(
                            "resource {} has type {}, expected {}",
                            r.name, any.type_url, resp.type_url
                        )));
                    }
                    map.insert(
                        Arc::from(r.name.as_str()),
                        Stored {
                            version: Arc::from(r.version.as_str()),
                            body: bytes::Bytes::copy_from_slice(&any.value),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Name -> version of the resources held of one type (sent after a reconnect).
    pub fn versions(&self, type_url: &str) -> std::collections::BTreeMap<String, String> {
        self.types
            .get(type_url)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.to_string(), v.version.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether nothing has been received.
    pub fn is_empty(&self) -> bool {
        self.types.values().all(|m| m.is_empty())
    }

    fn decode<M: Message + Default>(&self, type_url: &str) -> Result<Vec<(String, M)>, XdsError> {
        self.types
            .get(type_url)
            .into_iter()
            .flat_map(|m| m.iter())
            .map(|(name, s)| {
                M::decode(s.body.as_ref())
                    .map(|m| (name.to_string(), m))
                    .map_err(|e| XdsError::Invalid(format!("{type_url} {name}: {e}")))
            })
            .collect()
    }

    /// The trust bundle, if the control plane sent one.
    pub fn trust_bundle(&self) -> Result<Option<Vec<CertificateDer<'static>>>, XdsError> {
        let Some((_, bundle)) = self
            .decode::<v1::TrustBundle>(type_url::TRUST_BUNDLE)?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let mut roots = Vec::new();
        for pem in &bundle.roots_pem {
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.push(c.map_err(|e| XdsError::Invalid(format!("trust bundle: {e}")))?);
            }
        }
        if roots.is_empty() {
            return Err(XdsError::Invalid("trust bundle holds no root".into()));
        }
        Ok(Some(roots))
    }

    /// The inbound policy for this workload, if any.
    pub fn inbound_policy(&self) -> Result<Option<v1::InboundPolicy>, XdsError> {
        Ok(self
            .decode::<v1::InboundPolicy>(type_url::INBOUND_POLICY)?
            .into_iter()
            .next()
            .map(|(_, p)| p))
    }

    /// The services, endpoints, routes and subsets as the snapshot builder takes them.
    /// Anything malformed (an address that does not parse, a bad SPIFFE ID) fails the whole
    /// view, naming the resource.
    ///
    /// On demand, the view's services are the wanted hosts that are ready; every Service
    /// resource is in `known` as well, awaiting its fetch. A view walks the wanted hosts, not
    /// the mesh: `known` is the same list as the last view's while no Service resource moved.
    pub fn view(&mut self) -> Result<MeshView, XdsError> {
        let mut view = MeshView::default();
        let services = self
            .types
            .get(type_url::SERVICE)
            .cloned()
            .unwrap_or_default();
        let endpoints = self
            .types
            .get(type_url::ENDPOINTS)
            .cloned()
            .unwrap_or_default();
        view.routes = decode_cached(
            type_url::ROUTE_TABLE,
            self.types.get(type_url::ROUTE_TABLE).map(|m| &**m),
            &mut self.routes,
        )?;
        let mut cache = SpecCache {
            previous: std::mem::take(&mut self.decoded),
            next: BTreeMap::new(),
            endpoints: &endpoints,
        };
        let mut implied = Vec::new();
        match &self.wanted {
            Some(w) => {
                let known = Known::refresh(self.known.take(), &services)?;
                view.known = Some(known.list.clone());
                // Reached only at their endpoints' addresses: fetched now, not on a first call.
                for host in &known.without_vip {
                    if !w.hosts().contains(&**host) {
                        implied.push(host.to_string());
                    }
                }
                self.known = Some(known);
                // A wanted host's routes lead to other hosts: fetched with it, not by the
                // request that picks them.
                for table in view.routes.values() {
                    for host in route_destinations(table) {
                        if services.contains_key(host)
                            && !w.hosts().contains(host)
                            && !implied.iter().any(|h| h == host)
                        {
                            implied.push(host.to_string());
                        }
                    }
                }
                // A host is ready once it and every host its routes lead to were answered: a
                // request routed there finds every cluster it may pick. Until then it is
                // known only, and a request to it waits for its fetch.
                for name in w.hosts() {
                    let Some(stored) = services.get(name.as_str()) else {
                        continue;
                    };
                    let ready = w.ready(name)
                        && view.routes.get(name).is_none_or(|t| {
                            route_destinations(t).all(|d| !services.contains_key(d) || w.ready(d))
                        });
                    if ready {
                        cache.specs(name, stored, &mut view.services)?;
                    }
                }
            }
            None => {
                self.known = None;
                for (name, stored) in services.iter() {
                    cache.specs(name, stored, &mut view.services)?;
                }
            }
        }
        self.decoded = cache.next;
        self.implied = implied;
        view.policies = decode_cached(
            type_url::DESTINATION_POLICY,
            self.types.get(type_url::DESTINATION_POLICY).map(|m| &**m),
            &mut self.policies,
        )?;
        view.inbound = self.inbound_policy()?;
        view.mesh = self
            .decode::<v1::MeshConfig>(type_url::MESH_CONFIG)?
            .into_iter()
            .next()
            .map(|(_, m)| m);
        Ok(view)
    }

    /// Encodes the whole state (one delta response per type) for the state directory.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (t, m) in &self.types {
            let resp = DeltaDiscoveryResponse {
                type_url: t.clone(),
                resources: m
                    .iter()
                    .map(|(name, s)| Resource {
                        name: name.to_string(),
                        version: s.version.to_string(),
                        resource: Some(prost_types::Any {
                            type_url: t.clone(),
                            value: s.body.to_vec(),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            // Length-delimited: a truncated file fails to decode instead of half-loading.
            let _ = resp.encode_length_delimited(&mut out);
        }
        out
    }

    /// Decodes what [`XdsState::encode`] wrote.
    pub fn decode_persisted(mut bytes: &[u8]) -> Result<Self, XdsError> {
        let mut state = Self::default();
        while !bytes.is_empty() {
            let resp = DeltaDiscoveryResponse::decode_length_delimited(&mut bytes)
                .map_err(|e| XdsError::Invalid(format!("persisted config: {e}")))?;
            state.merge(&resp)?;
        }
        Ok(state)
    }
}

/// The specs a view decoded, carried to the next view: a Service whose resource and
/// endpoints kept their versions hands out the same shared specs.
struct SpecCache<'a> {
    /// What the last view decoded (entries still here at the end were not asked for).
    previous: BTreeMap<String, Decoded>,
    /// What this view decoded or kept.
    next: BTreeMap<String, Decoded>,
    /// The Endpoints resources.
    endpoints: &'a Resources,
}

impl SpecCache<'_> {
    /// Appends to `out` the specs of Service `name` (stored as `stored`) with its endpoints,
    /// decoding them only if a version moved.
    fn specs(
        &mut self,
        name: &str,
        stored: &Stored,
        out: &mut Vec<Arc<ServiceSpec>>,
    ) -> Result<(), XdsError> {
        let eps = self.endpoints.get(name);
        let kept = self.previous.remove_entry(name).filter(|(_, d)| {
            d.service == stored.version && d.endpoints.as_deref() == eps.map(|e| &*e.version)
        });
        let (name, d) = match kept {
            Some(k) => k,
            None => {
                let d = Decoded {
                    service: stored.version.clone(),
                    endpoints: eps.map(|e| e.version.clone()),
                    specs: decode_service(name, stored, eps, false)?,
                };
                (name.to_string(), d)
            }
        };
        out.extend(d.specs.iter().cloned());
        self.next.insert(name, d);
        Ok(())
    }
}

impl Known {
    /// The known services of the Service resources `services`: `prev` itself while they are
    /// the same map, else `prev`'s record updated in place: one merged pass over the two
    /// lists of names (the same strings: compared by pointer first), the Services that left
    /// taken out, the new ones and those whose version moved decoded.
    fn refresh(prev: Option<Known>, services: &Arc<Resources>) -> Result<Known, XdsError> {
        let mut by_name = match prev {
            Some(k) if Arc::ptr_eq(&k.source, services) => return Ok(k),
            Some(k) => k.by_name,
            None => BTreeMap::new(),
        };
        let (gone, came) = name_changes(by_name.keys(), services.keys());
        for name in &gone {
            by_name.remove(name);
        }
        for name in came {
            if let Some(stored) = services.get(&name) {
                let specs = decode_service(&name, stored, None, true)?;
                by_name.insert(name, (stored.version.clone(), specs));
            }
        }
        for ((name, (version, specs)), stored) in by_name.iter_mut().zip(services.values()) {
            if *version != stored.version {
                *specs = decode_service(name, stored, None, true)?;
                *version = stored.version.clone();
            }
        }
        let mut list = Vec::with_capacity(services.len());
        let mut without_vip = Vec::new();
        for (name, (_, specs)) in &by_name {
            list.extend(specs.iter().cloned());
            if specs.first().is_some_and(|s| s.addresses.is_empty()) {
                without_vip.push(name.clone());
            }
        }
        Ok(Known {
            source: services.clone(),
            by_name,
            list: Arc::new(list),
            without_vip,
        })
    }
}

/// The names only in `old` and those only in `new`, both sorted, found in one merged pass.
fn name_changes<'a>(
    old: impl Iterator<Item = &'a Arc<str>>,
    new: impl Iterator<Item = &'a Arc<str>>,
) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
    let (mut gone, mut came) = (Vec::new(), Vec::new());
    let (mut old, mut new) = (old.peekable(), new.peekable());
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(o), Some(n)) if Arc::ptr_eq(o, n) => std::cmp::Ordering::Equal,
            (Some(o), Some(n)) => o.cmp(n),
        };
        match order {
            std::cmp::Ordering::Less => gone.extend(old.next().cloned()),
            std::cmp::Ordering::Greater => came.extend(new.next().cloned()),
            std::cmp::Ordering::Equal => {
                old.next();
                new.next();
            }
        }
    }
    (gone, came)
}

/// The specs (one per port) of Service `name` decoded with its endpoints; `awaiting`: as
/// known before its fetch (no endpoints, their IPs only).
fn decode_service(
    name: &str,
    stored: &Stored,
    eps: Option<&Stored>,
    awaiting: bool,
) -> Result<Vec<Arc<ServiceSpec>>, XdsError> {
    let svc = v1::Service::decode(stored.body.as_ref())
        .map_err(|e| XdsError::Invalid(format!("{} {name}: {e}", type_url::SERVICE)))?;
    let listed = match eps {
        Some(e) => {
            v1::Endpoints::decode(e.body.as_ref())
                .map_err(|e| XdsError::Invalid(format!("{} {name}: {e}", type_url::ENDPOINTS)))?
                .endpoints
        }
        None => Vec::new(),
    };
    service_specs(name, &svc, &listed, awaiting)
}

/// The specs (one per port) of Service `name` with its endpoints `listed`. Anything
/// malformed (an address that does not parse, a bad SPIFFE ID) fails, naming the resource.
fn service_specs(
    name: &str,
    svc: &v1::Service,
    listed: &[v1::Endpoint],
    awaiting: bool,
) -> Result<Vec<Arc<ServiceSpec>>, XdsError> {
    let mut out = Vec::with_capacity(svc.ports.len());
    let bad = |what: String| XdsError::Invalid(format!("Service {name}: {what}"));
    if svc.hostname != name {
        return Err(bad(format!(
            "hostname {} differs from its name",
            svc.hostname
        )));
    }
    let identities = svc
        .identities
        .iter()
        .map(|i| SpiffeId::parse(i).map_err(|e| bad(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let (eps, external) = if svc.mesh_external {
        let targets = listed
            .iter()
            .map(|e| {
                let a = http::uri::Authority::try_from(e.address.as_str())
                    .ok()
                    .filter(|a| a.port_u16().is_some())
                    .ok_or_else(|| {
                        bad(format!("endpoint address `{}` is not host:port", e.address))
                    })?;
                Ok((e.service_port, a))
            })
            .collect::<Result<Vec<_>, XdsError>>()?;
        (Vec::new(), Some(targets))
    } else {
        // The endpoints of one workload share their labels and metric labels: one map and
        // one metadata per workload, not per endpoint.
        let mut shared = Shared::default();
        let eps = listed
            .iter()
            .map(|e| {
                let addr: SocketAddr = e
                    .address
                    .parse()
                    .map_err(|_| bad(format!("endpoint address `{}` is not ip:port", e.address)))?;
                let (labels, workload) = shared.of(e);
                Ok(EndpointSpec {
                    addr,
                    labels,
                    locality: shared.locality(e.locality.as_ref()),
                    weight: e.weight.max(1),
                    plaintext: false,
                    workload,
                })
            })
            .collect::<Result<Vec<_>, XdsError>>()?;
        (eps, None)
    };
    let addresses = vips(&svc.addresses).map_err(bad)?;
    // Before its endpoints are fetched, their addresses are all a capture needs of them.
    let endpoint_ips = if awaiting {
        svc.endpoint_ips
            .iter()
            .map(|ip| {
                ip.parse()
                    .map_err(|_| bad(format!("endpoint IP `{ip}` is not an IP address")))
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    for p in &svc.ports {
        let port = u16::try_from(p.number)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(format!("port {} is out of range", p.number)))?;
        let detect_protocol = p.protocol == v1::Protocol::Unspecified as i32;
        let protocol = match v1::Protocol::try_from(p.protocol) {
            Ok(v1::Protocol::Http) | Ok(v1::Protocol::Unspecified) => Protocol::Http,
            Ok(v1::Protocol::Http2) => Protocol::Http2,
            Ok(v1::Protocol::Grpc) => Protocol::Grpc,
            Ok(v1::Protocol::Tcp) => Protocol::Tcp,
            Err(_) => return Err(bad(format!("unknown protocol {}", p.protocol))),
        };
        out.push(Arc::new(ServiceSpec {
            hostname: svc.hostname.clone(),
            name: svc.name.clone(),
            namespace: svc.namespace.clone(),
            port,
            protocol,
            aliases: svc.aliases.clone(),
            identities: identities.clone(),
            // Auto mutual TLS: plaintext to endpoints whose port is DISABLE.
            endpoints: eps
                .iter()
                .zip(listed)
                .map(|(e, l)| EndpointSpec {
                    plaintext: l.plaintext_ports.contains(&p.number),
                    ..e.clone()
                })
                .collect(),
            listen: None,
            external: external.as_ref().map(|t| {
                t.iter()
                    .filter(|(sp, _)| *sp == 0 || *sp == p.number)
                    .map(|(_, a)| a.clone())
                    .collect()
            }),
            addresses: addresses.clone(),
            detect_protocol,
            awaiting,
            endpoint_ips: endpoint_ips.clone(),
        }));
    }
    Ok(out)
}

/// The hosts a route table sends to (its HTTP and TCP destinations and mirrors).
fn route_destinations(table: &v1::RouteTable) -> impl Iterator<Item = &str> {
    let http = table.http.iter().flat_map(|r| {
        r.route
            .iter()
            .chain(r.mirror.as_ref().and_then(|m| m.destination.as_ref()))
    });
    let tcp = table.tcp.iter().flat_map(|r| r.route.iter());
    http.chain(tcp)
        .map(|d| d.host.as_str())
        .filter(|h| !h.is_empty() && *h != table.hostname)
}

/// The localities, label sets and workload metadata already made for one service's
/// endpoints, so that endpoints of the same workload share them.
#[derive(Default)]
struct Shared {
    localities: Vec<Arc<Locality>>,
    labels: Vec<LabelSet>,
    workloads: Vec<(LabelSet, Arc<WorkloadMetadata>)>,
}

impl Shared {
    /// The locality `l` names, shared with an earlier endpoint's where it is the same.
    fn locality(&mut self, l: Option<&v1::Locality>) -> Arc<Locality> {
        let (region, zone, sub_zone) = l.map_or(("", "", ""), |l| {
            (l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str())
        });
        shared(
            &mut self.localities,
            |k| k.region == region && k.zone == zone && k.sub_zone == sub_zone,
            || {
                Arc::new(Locality {
                    region: region.into(),
                    zone: zone.into(),
                    sub_zone: sub_zone.into(),
                })
            },
        )
    }

    /// The labels and metric labels of endpoint `e`, shared with an earlier endpoint's
    /// where they are the same.
    fn of(&mut self, e: &v1::Endpoint) -> (LabelSet, Option<Arc<WorkloadMetadata>>) {
        let same = |set: &LabelSet| {
            set.len() == e.labels.len()
                && e.labels.iter().all(|(k, v)| set.get(k) == Some(v.as_str()))
        };
        let labels = shared(&mut self.labels, same, || {
            Arc::new(e.labels.iter().collect())
        });
        if e.workload.is_empty() {
            return (labels, None);
        }
        let (_, workload) = shared(
            &mut self.workloads,
            |(set, w)| {
                Arc::ptr_eq(set, &labels)
                    && *w.workload == *e.workload
                    && *w.namespace == *e.namespace
            },
            || {
                let w = WorkloadMetadata::from_labels(
                    &e.workload,
                    &e.namespace,
                    &*labels,
                    DEFAULT_CLUSTER_ID,
                );
                (labels.clone(), Arc::new(w))
            },
        );
        (labels, Some(workload))
    }
}

/// The first of `pool` that `is` accepts, else what `make` makes (kept in `pool` for the
/// next endpoint): how [`Shared`] hands endpoints one value where they would hold equal ones.
fn shared<T: Clone>(pool: &mut Vec<T>, is: impl Fn(&T) -> bool, make: impl FnOnce() -> T) -> T {
    if let Some(known) = pool.iter().find(|t| is(t)) {
        return known.clone();
    }
    let made = make();
    pool.push(made.clone());
    made
}

/// Files of the state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Uses `dir`, creating it 0700 if needed.
    pub fn open(dir: &Path) -> Result<Self, XdsError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| XdsError::State(format!("{}: {e}", dir.display())))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `name` atomically with mode 0600.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), XdsError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.path(&format!(".{name}.tmp"));
        let err = |e: std::io::Error| XdsError::State(format!("{}: {e}", tmp.display()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, self.path(name)).map_err(err)
    }

    /// Reads `name`, `None` if it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, XdsError> {
        match std::fs::read(self.path(name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(XdsError::State(format!(
                "{}: {e}",
                self.path(name).display()
            ))),
        }
    }
}

/// State directory file names.
pub mod files {
    /// The last accepted xDS resources.
    pub const CONFIG: &str = "xds-config.pb";
    /// The current private key (PKCS#8 PEM).
    pub const KEY: &str = "key.pem";
    /// The current certificate chain (PEM, leaf first).
    pub const CHAIN: &str = "cert-chain.pem";
    /// The current trust bundle (PEM).
    pub const ROOTS: &str = "roots.pem";
}

/// A service's VIPs as the DNS proxy answers them: IP literals kept, CIDR blocks (ranges
/// for transparent capture) left out, anything else refused.
fn vips(addresses: &[String]) -> Result<Vec<std::net::IpAddr>, String> {
    let mut out = Vec::with_capacity(addresses.len());
    for a in addresses {
        match a.parse::<std::net::IpAddr>() {
            Ok(ip) => out.push(ip),
            Err(_) => {
                let cidr = a.split_once('/').is_some_and(|(ip, len)| {
                    ip.parse::<std::net::IpAddr>().is_ok() && len.parse::<u8>().is_ok()
                });
                if !cidr {
                    return Err(format!("address `{a}` is neither an IP nor a CIDR block"));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any<M: prost::Name>(m: &M) -> prost_types::Any {
        prost_types::Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        }
    }

    fn service_push(name: &str, ep: &str) -> Vec<DeltaDiscoveryResponse> {
        let svc = v1::Service {
            hostname: name.into(),
            namespace: "default".into(),
            name: "reviews".into(),
            ports: vec![v1::ServicePort {
                number: 9080,
                protocol: v1::Protocol::Http as i32,
                name: "http".into(),
            }],
            identities: vec!["spiffe://cluster.local/ns/default/sa/reviews".into()],
            ..Default::default()
        };
        let eps = v1::Endpoints {
            hostname: name.into(),
            endpoints: vec![v1::Endpoint {
                address: ep.into(),
                ..Default::default()
            }],
        };
        let one = |t: &str, a: prost_types::Any| DeltaDiscoveryResponse {
            type_url: t.into(),
            nonce: "1".into(),
            resources: vec![Resource {
                name: name.into(),
                version: "v1".into(),
                resource: Some(a),
                ..Default::default()
            }],
            ..Default::default()
        };
        vec![
            one(type_url::SERVICE, any(&svc)),
            one(type_url::ENDPOINTS, any(&eps)),
        ]
    }

    #[test]
    fn deltas_build_a_view_and_removals_apply() {
        let host = "reviews.default.svc.cluster.local";
        let mut state = XdsState::default();
        for r in service_push(host, "127.0.0.1:16006") {
            state = state.apply(&r).unwrap();
        }
        let view = state.view().unwrap();
        assert_eq!(view.services.len(), 1);
        assert_eq!(view.services[0].endpoints[0].addr.port(), 16006);
        assert_eq!(state.versions(type_url::SERVICE)[host], "v1");

        let removal = DeltaDiscoveryResponse {
            type_url: type_url::SERVICE.into(),
            removed_resources: vec![host.into()],
            ..Default::default()
        };
        let mut after = state.apply(&removal).unwrap();
        assert!(after.view().unwrap().services.is_empty());
        // The original is untouched: applying works on a copy.
        assert_eq!(state.view().unwrap().services.len(), 1);
    }

    /// A response of `type_url` naming `removed` (answers saying "none").
    fn none_of(type_url: &str, removed: &[&str]) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: type_url.into(),
            nonce: "2".into(),
            removed_resources: removed.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Whether `host`, known to the view (on demand), is still to be fetched: it is then
    /// not among the view's services.
    fn awaiting(view: &MeshView, host: &str) -> bool {
        let known = view
            .known
            .as_deref()
            .expect("on demand: every service is known");
        assert!(known.iter().any(|s| s.hostname == host && s.awaiting));
        match view.services.iter().find(|s| s.hostname == host) {
            Some(fetched) => {
                assert!(!fetched.awaiting);
                false
            }
            None => true,
        }
    }

    #[test]
    fn on_demand_a_service_awaits_until_every_type_answered_it_and_its_routes_destinations() {
        let (front, back) = (
            "front.default.svc.cluster.local",
            "back.default.svc.cluster.local",
        );
        let mut state = XdsState::default();
        state.set_on_demand(true);
        for host in [front, back] {
            let mut push = service_push(host, "127.0.0.1:1");
            // Virtual IPs: both can wait for a first call.
            let mut svc = v1::Service::decode(
                push[0].resources[0]
                    .resource
                    .as_ref()
                    .unwrap()
                    .value
                    .as_slice(),
            )
            .unwrap();
            svc.addresses = vec!["240.240.0.1".into()];
            push[0].resources[0].resource = Some(any(&svc));
            state.merge(&push[0]).unwrap();
        }
        let view = state.view().unwrap();
        assert!(awaiting(&view, front) && awaiting(&view, back));
        assert!(state.take_implied().is_empty(), "nothing called yet");

        // front is asked for: its endpoints come, it has no policy, and its routes lead to
        // back, which is then implied.
        assert!(state.wanted_mut().unwrap().add(front));
        let eps = service_push(front, "127.0.0.1:7");
        state.merge(&eps[1]).unwrap();
        state
            .merge(&none_of(type_url::DESTINATION_POLICY, &[front]))
            .unwrap();
        let table = v1::RouteTable {
            hostname: front.into(),
            http: vec![v1::HttpRoute {
                route: vec![v1::WeightedDestination {
                    host: back.into(),
                    weight: 100,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        state
            .merge(&DeltaDiscoveryResponse {
                type_url: type_url::ROUTE_TABLE.into(),
                nonce: "3".into(),
                resources: vec![Resource {
                    name: front.into(),
                    version: "r1".into(),
                    resource: Some(any(&table)),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .unwrap();
        let view = state.view().unwrap();
        assert!(
            awaiting(&view, front),
            "answered, but its route leads to back, not here yet"
        );
        assert_eq!(state.take_implied(), [back]);

        assert!(state.wanted_mut().unwrap().add(back));
        for t in crate::xds::demand::TYPES {
            state.merge(&none_of(t, &[back])).unwrap();
        }
        let view = state.view().unwrap();
        assert!(!awaiting(&view, front) && !awaiting(&view, back));
        assert!(state.take_implied().is_empty());
        let front_spec = view.services.iter().find(|s| s.hostname == front).unwrap();
        assert_eq!(front_spec.endpoints[0].addr.port(), 7);
    }

    #[test]
    fn name_changes_finds_the_names_that_left_and_came_in_one_pass() {
        let names = |v: &[&str]| v.iter().map(|n| Arc::<str>::from(*n)).collect::<Vec<_>>();
        let old = names(&["a", "c", "d", "f"]);
        let mut new = names(&["b", "c", "e", "f", "g"]);
        new[1] = old[1].clone(); // "c": the same string
        let (gone, came) = name_changes(old.iter(), new.iter());
        assert_eq!(gone, names(&["a", "d"]));
        assert_eq!(came, names(&["b", "e", "g"]));
        let (gone, came) = name_changes(old.iter(), std::iter::empty());
        assert_eq!((gone.len(), came.len()), (4, 0));
    }

    #[test]
    fn on_demand_a_push_that_moves_no_service_keeps_the_known_list_and_copies_no_service() {
        let hosts = ["a.default.svc.cluster.local", "b.default.svc.cluster.local"];
        let mut state = XdsState::default();
        state.set_on_demand(true);
        for host in hosts {
            state.merge(&service_push(host, "127.0.0.1:1")[0]).unwrap();
        }
        let first = state.view().unwrap().known.expect("on demand");
        assert_eq!(first.len(), 2);
        assert!(state.wanted_mut().unwrap().add(hosts[0]));
        // The answer to a's fetch: its endpoints (no route table, no policy).
        let mut next = state
            .apply(&service_push(hosts[0], "127.0.0.1:7")[1])
            .unwrap();
        next.take_caches(&mut state);
        assert!(
            Arc::ptr_eq(
                &state.types[type_url::SERVICE],
                &next.types[type_url::SERVICE]
            ),
            "an Endpoints push shares the Service resources with the state before it"
        );
        let view = next.view().unwrap();
        assert!(
            Arc::ptr_eq(&first, view.known.as_ref().unwrap()),
            "the same known list: a snapshot keeps its directory"
        );
        // A Service that moves makes a new list, re-decoding that Service alone.
        let mut moved = service_push(hosts[1], "127.0.0.1:1");
        moved[0].resources[0].version = "2".into();
        let mut after = next.apply(&moved[0]).unwrap();
        after.take_caches(&mut next);
        let list = after.view().unwrap().known.unwrap();
        assert!(!Arc::ptr_eq(&first, &list));
        assert!(Arc::ptr_eq(&first[0], &list[0]), "a's spec was kept");
        assert!(!Arc::ptr_eq(&first[1], &list[1]));
        // A Service added (a name the record does not hold) is decoded alone and takes its
        // place in name order; the others keep their specs.
        let added = service_push("aa.default.svc.cluster.local", "127.0.0.1:1");
        let mut grown = after.apply(&added[0]).unwrap();
        grown.take_caches(&mut after);
        let grown_list = grown.view().unwrap().known.unwrap();
        let names: Vec<&str> = grown_list.iter().map(|s| s.hostname.as_str()).collect();
        assert_eq!(
            names,
            [hosts[0], "aa.default.svc.cluster.local", hosts[1]],
            "in name order"
        );
        assert!(Arc::ptr_eq(&list[0], &grown_list[0]));
        assert!(Arc::ptr_eq(&list[1], &grown_list[2]));
        // A removed one leaves the list.
        let mut gone = moved[0].clone();
        gone.resources.clear();
        gone.removed_resources = vec!["aa.default.svc.cluster.local".into()];
        let mut shrunk = grown.apply(&gone).unwrap();
        shrunk.take_caches(&mut grown);
        let shrunk_list = shrunk.view().unwrap().known.unwrap();
        assert_eq!(shrunk_list.len(), 2);
        assert!(Arc::ptr_eq(&list[0], &shrunk_list[0]));
        assert!(Arc::ptr_eq(&list[1], &shrunk_list[1]));
    }

    #[test]
    fn on_demand_a_service_without_a_virtual_ip_is_fetched_at_once() {
        let host = "headless.default.svc.cluster.local";
        let mut state = XdsState::default();
        state.set_on_demand(true);
        state.merge(&service_push(host, "127.0.0.1:1")[0]).unwrap();
        let view = state.view().unwrap();
        assert!(awaiting(&view, host));
        assert_eq!(state.take_implied(), [host]);
    }

    #[test]
    fn without_on_demand_nothing_awaits() {
        let host = "reviews.default.svc.cluster.local";
        let mut state = XdsState::default();
        state.merge(&service_push(host, "127.0.0.1:1")[0]).unwrap();
        let view = state.view().unwrap();
        assert!(
            view.known.is_none(),
            "the mesh is whole in the view's services"
        );
        assert!(
            view.services
                .iter()
                .any(|s| s.hostname == host && !s.awaiting)
        );
        assert!(state.take_implied().is_empty());
    }

    #[test]
    fn a_malformed_endpoint_fails_the_view_naming_it() {
        let host = "reviews.default.svc.cluster.local";
        let mut state = XdsState::default();
        for r in service_push(host, "not-an-address") {
            state = state.apply(&r).unwrap();
        }
        let err = state.view().unwrap_err().to_string();
        assert!(err.contains("not-an-address"), "{err}");
    }

    #[test]
    fn persisted_state_round_trips_and_truncation_is_refused() {
        let mut state = XdsState::default();
        for r in service_push("reviews.default.svc.cluster.local", "127.0.0.1:1") {
            state = state.apply(&r).unwrap();
        }
        let bytes = state.encode();
        assert_eq!(XdsState::decode_persisted(&bytes).unwrap(), state);
        assert!(XdsState::decode_persisted(&bytes[..bytes.len() - 3]).is_err());
    }

    #[test]
    fn a_view_decodes_only_the_services_whose_resources_moved() {
        let (reviews, ratings) = (
            "reviews.default.svc.cluster.local",
            "ratings.default.svc.cluster.local",
        );
        let mut state = XdsState::default();
        for r in service_push(reviews, "127.0.0.1:1")
            .iter()
            .chain(&service_push(ratings, "127.0.0.1:2"))
        {
            state = state.apply(r).unwrap();
        }
        let spec = |v: &MeshView, host: &str| {
            v.services
                .iter()
                .find(|s| s.hostname == host)
                .cloned()
                .expect("service")
        };
        let first = state.view().unwrap();
        // ratings' endpoints move (a new version): only ratings is decoded again.
        // As the client applies a push: on a copy that takes the caches over.
        let mut moved = service_push(ratings, "127.0.0.1:3");
        moved[1].resources[0].version = "v2".into();
        let mut next = state.clone();
        next.take_caches(&mut state);
        next.merge(&moved[1]).unwrap();
        let second = next.view().unwrap();
        assert!(Arc::ptr_eq(&spec(&first, reviews), &spec(&second, reviews)));
        assert!(!Arc::ptr_eq(
            &spec(&first, ratings),
            &spec(&second, ratings)
        ));
        assert_eq!(spec(&second, ratings).endpoints[0].addr.port(), 3);
    }
}
