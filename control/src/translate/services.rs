//! Services and their endpoints: one service per (namespace, `app` label) of the registered
//! workloads, plus the ServiceEntries of the config: MESH_INTERNAL with STATIC endpoints
//! (sidecars outside the registry, e.g. on VMs), and MESH_EXTERNAL ones (services without a
//! sidecar, reached directly: STATIC addresses or DNS names).

use meshlite_xds_proto::v1;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::Versioned;
use crate::model::{ConfigSet, Resolution, ServiceLocation};
use crate::registry::Workload;
use crate::validate::fqdn;

/// A port's protocol from its declared protocol or name, as Istio selects it: the name's
/// prefix before `-` (`http-web`, `grpc-api`, `tcp-db`); a name that declares nothing leaves
/// it unspecified, and sidecars detect it on captured connections (HTTP in explicit mode).
pub(crate) fn protocol(name: &str) -> v1::Protocol {
    let name = name.to_ascii_lowercase();
    if name == "grpc-web" {
        return v1::Protocol::Grpc;
    }
    match name.split('-').next().unwrap_or("") {
        "http" => v1::Protocol::Http,
        "http2" => v1::Protocol::Http2,
        "grpc" => v1::Protocol::Grpc,
        "tcp" | "tls" | "mongo" | "redis" | "mysql" | "https" => v1::Protocol::Tcp,
        _ => v1::Protocol::Unspecified,
    }
}

type Maps = (
    BTreeMap<String, Arc<Versioned>>,
    BTreeMap<String, Arc<Versioned>>,
);

/// What a Sidecar's egress hosts are matched against, per service hostname.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceFacts {
    /// The namespace the service belongs to (its workloads', or its ServiceEntry's).
    pub namespace: String,
    /// Its port numbers.
    pub ports: Vec<u32>,
}

/// Services and endpoints by FQDN, the VIPs allocated this generation, and each service's
/// [`ServiceFacts`].
pub struct Translated {
    /// Services and endpoints, encoded.
    pub maps: Maps,
    /// Hostname -> allocated VIP.
    pub vips: super::vips::Allocations,
    /// Hostname -> namespace and ports.
    pub facts: BTreeMap<String, ServiceFacts>,
}

/// The service ports where `w`'s PeerAuthentication is DISABLE (its workload port, the
/// app's, decides, as `portLevelMtls` keys are workload ports).
fn plaintext_ports(config: &ConfigSet, w: &Workload) -> Vec<u32> {
    let (mode, by_port) = super::policy::peer_authentication(config, w);
    let disable = v1::MtlsMode::Disable as i32;
    w.ports
        .iter()
        .filter(|p| {
            let target = u32::from(p.target_port.unwrap_or(p.port));
            by_port.get(&target).copied().unwrap_or(mode as i32) == disable
        })
        .map(|p| u32::from(p.port))
        .collect()
}

/// Services and endpoints by FQDN, and the VIPs allocated to services without addresses of
/// their own (keeping those in `held`; none when `auto_allocate` is off).
pub fn translate(
    config: &ConfigSet,
    workloads: &[Workload],
    trust_domain: &str,
    held: &super::vips::Allocations,
    auto_allocate: bool,
) -> Translated {
    let mut services: BTreeMap<String, v1::Service> = BTreeMap::new();
    let mut endpoints: BTreeMap<String, v1::Endpoints> = BTreeMap::new();
    for w in workloads.iter().filter(|w| !w.ports.is_empty()) {
        let host = fqdn(w.service_name(), &w.namespace);
        let svc = services.entry(host.clone()).or_insert_with(|| v1::Service {
            hostname: host.clone(),
            namespace: w.namespace.clone(),
            name: w.service_name().to_string(),
            ..Default::default()
        });
        for p in &w.ports {
            if !svc.ports.iter().any(|sp| sp.number == u32::from(p.port)) {
                svc.ports.push(v1::ServicePort {
                    number: u32::from(p.port),
                    protocol: protocol(&p.protocol) as i32,
                    name: p.protocol.clone(),
                });
            }
        }
        if !svc.identities.contains(&w.identity) {
            svc.identities.push(w.identity.clone());
        }
        endpoints
            .entry(host.clone())
            .or_insert_with(|| v1::Endpoints {
                hostname: host.clone(),
                endpoints: vec![],
            })
            .endpoints
            .push(v1::Endpoint {
                address: w.address.to_string(),
                identity: w.identity.clone(),
                labels: w.labels.clone().into_iter().collect(),
                locality: Some(v1::Locality {
                    region: w.locality[0].clone(),
                    zone: w.locality[1].clone(),
                    sub_zone: w.locality[2].clone(),
                }),
                weight: 1,
                workload: w.name.clone(),
                namespace: w.namespace.clone(),
                service_port: 0,
                plaintext_ports: plaintext_ports(config, w),
            });
    }

    for se in &config.service_entries {
        let Some(kind) = pushed_as(&se.spec) else {
            // Validation warned about it: nothing a sidecar could send to.
            continue;
        };
        let external = kind == EntryKind::External;
        let ns = &se.meta.namespace;
        for h in se.spec.hosts.iter().filter(|h| !h.starts_with('*')) {
            let host = fqdn(h, ns);
            let mut ids: BTreeSet<String> = se.spec.subject_alt_names.iter().cloned().collect();
            let mut eps = Vec::new();
            // DNS resolution without endpoints: the host itself is the endpoint.
            let own = [crate::model::WorkloadEntry {
                address: h.clone(),
                ..Default::default()
            }];
            let entries = if se.spec.endpoints.is_empty() && kind != EntryKind::Internal {
                &own[..]
            } else {
                &se.spec.endpoints[..]
            };
            for e in entries {
                // A service outside the mesh has no sidecar to present an identity.
                let id = e
                    .service_account
                    .as_ref()
                    .filter(|_| !external)
                    .map(|sa| format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}"));
                if let Some(id) = &id {
                    ids.insert(id.clone());
                }
                for p in &se.spec.ports {
                    let port = p
                        .name
                        .as_ref()
                        .and_then(|n| e.ports.get(n))
                        .copied()
                        .or(p.target_port)
                        .unwrap_or(p.number);
                    let addr = if e.address.contains(':') {
                        format!("[{}]:{port}", e.address)
                    } else {
                        format!("{}:{port}", e.address)
                    };
                    let mut loc = e.locality.as_deref().unwrap_or("").split('/');
                    eps.push(v1::Endpoint {
                        address: addr,
                        identity: id.clone().unwrap_or_default(),
                        labels: e.labels.clone().into_iter().collect(),
                        locality: Some(v1::Locality {
                            region: loc.next().unwrap_or("").into(),
                            zone: loc.next().unwrap_or("").into(),
                            sub_zone: loc.next().unwrap_or("").into(),
                        }),
                        weight: e.weight.unwrap_or(1),
                        workload: se.meta.name.clone(),
                        namespace: ns.clone(),
                        service_port: if external { p.number } else { 0 },
                        plaintext_ports: vec![],
                    });
                }
            }
            let name = h.split('.').next().unwrap_or(h).to_string();
            services.insert(
                host.clone(),
                v1::Service {
                    hostname: host.clone(),
                    namespace: ns.clone(),
                    name,
                    aliases: if h != &host { vec![h.clone()] } else { vec![] },
                    ports: se
                        .spec
                        .ports
                        .iter()
                        .map(|p| v1::ServicePort {
                            number: p.number,
                            protocol: protocol(
                                p.protocol.as_deref().or(p.name.as_deref()).unwrap_or(""),
                            ) as i32,
                            name: p.name.clone().unwrap_or_default(),
                        })
                        .collect(),
                    identities: if external {
                        Vec::new()
                    } else {
                        ids.into_iter().collect()
                    },
                    mesh_external: external,
                    addresses: se
                        .spec
                        .addresses
                        .iter()
                        .map(|a| a.trim().to_string())
                        .collect(),
                    endpoint_ips: Vec::new(),
                },
            );
            endpoints.insert(
                host.clone(),
                v1::Endpoints {
                    hostname: host,
                    endpoints: eps,
                },
            );
        }
    }
    let allocated = if auto_allocate {
        let taken: Vec<std::net::IpAddr> = services
            .values()
            .flat_map(|s| super::vips::declared_ips(&s.addresses))
            .collect();
        let wanting: BTreeSet<String> = services
            .values()
            .filter(|s| s.addresses.is_empty())
            .map(|s| s.hostname.clone())
            .collect();
        super::vips::allocate(&wanting, held, &taken)
    } else {
        super::vips::Allocations::new()
    };
    for (host, ip) in &allocated {
        if let Some(s) = services.get_mut(host) {
            s.addresses = vec![ip.to_string()];
        }
    }
    for (host, eps) in &endpoints {
        if let Some(s) = services.get_mut(host).filter(|s| !s.mesh_external) {
            s.endpoint_ips = endpoint_ips(&eps.endpoints);
        }
    }
    let facts = services
        .iter()
        .map(|(host, s)| {
            let f = ServiceFacts {
                namespace: s.namespace.clone(),
                ports: s.ports.iter().map(|p| p.number).collect(),
            };
            (host.clone(), f)
        })
        .collect();
    let maps = (
        services
            .into_iter()
            .map(|(k, v)| (k, Versioned::of(&v)))
            .collect(),
        endpoints
            .into_iter()
            .map(|(k, v)| (k, Versioned::of(&v)))
            .collect(),
    );
    Translated {
        maps,
        vips: allocated,
        facts,
    }
}

/// The distinct IPs of `endpoints` (`ip:port` each), sorted.
fn endpoint_ips(endpoints: &[v1::Endpoint]) -> Vec<String> {
    let ips: BTreeSet<std::net::IpAddr> = endpoints
        .iter()
        .filter_map(|e| e.address.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.ip())
        .collect();
    ips.into_iter().map(|ip| ip.to_string()).collect()
}

/// How a ServiceEntry reaches sidecars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// `MESH_INTERNAL`, `STATIC`: workloads with sidecars at fixed addresses, over mTLS.
    Internal,
    /// `MESH_EXTERNAL` (Istio's default location), `STATIC` or `DNS`: sent to directly,
    /// without mTLS.
    External,
}

/// What a ServiceEntry becomes for sidecars, or `None` when there is nothing they could
/// send to (validation says why): `resolution: NONE` means "wherever the app was going",
/// which an explicit proxy never learns, and a sidecar in the mesh is reached at an address,
/// not a name.
pub fn pushed_as(se: &crate::model::ServiceEntry) -> Option<EntryKind> {
    let internal = se.location == Some(ServiceLocation::MeshInternal);
    match se.resolution {
        Some(Resolution::Static) if internal => Some(EntryKind::Internal),
        Some(Resolution::Static | Resolution::Dns | Resolution::DnsRoundRobin) if !internal => {
            Some(EntryKind::External)
        }
        _ => None,
    }
}
