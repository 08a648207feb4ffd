//! The static mesh source: the services a proxy's own file lists, and its inbound policy, as
//! a [`MeshView`] like any other source's.

use super::{EndpointSpec, MeshView, ServiceSpec};
use crate::config::ProxyConfig;
use crate::identity::spiffe::SpiffeId;
use crate::names::CLUSTER_DOMAIN;
use std::sync::Arc;

/// The mesh a configuration file states: its services (each endpoint a sidecar reached over
/// mutual TLS) and its inbound policy.
pub fn view(cfg: &ProxyConfig) -> MeshView {
    let services = cfg
        .services
        .iter()
        .map(|s| {
            Arc::new(ServiceSpec {
                hostname: format!("{}.{}.{CLUSTER_DOMAIN}", s.name, s.namespace),
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                port: s.port,
                protocol: s.protocol,
                aliases: s.aliases.clone(),
                identities: s
                    .identities
                    .iter()
                    .filter_map(|i| SpiffeId::parse(i).ok())
                    .collect(),
                endpoints: s
                    .endpoints
                    .iter()
                    .map(|a| EndpointSpec {
                        addr: *a,
                        labels: Default::default(),
                        locality: Default::default(),
                        weight: 1,
                        plaintext: false,
                        workload: None,
                    })
                    .collect(),
                listen: s.listen,
                external: None,
                addresses: s.addresses.clone(),
                detect_protocol: false,
                awaiting: false,
                endpoint_ips: Vec::new(),
            })
        })
        .collect();
    MeshView {
        services,
        inbound: Some(cfg.inbound.policy()),
        ..Default::default()
    }
}
