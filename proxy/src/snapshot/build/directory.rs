//! The directory of the services known and not fetched ([`Directory`]), built from the
//! control plane's list of them, or kept from the previous snapshot while the list is the
//! same one.

use std::collections::HashMap;
use std::sync::Arc;

use super::{ClusterContext, Recipe, index};
use crate::snapshot::AddressIndex;
use crate::snapshot::{Directory, HostPort, LazyCluster, RouteBehaviour, SnapshotError};
use crate::source::ServiceSpec;

/// The directory of `known`: `prev` itself when it was built of the same list with the
/// same cluster context, else built again, keeping `prev`'s host port of every service
/// port whose spec is the same shared one (only the tables are made anew).
pub(super) fn directory(
    known: &Arc<Vec<Arc<ServiceSpec>>>,
    ctx: &Arc<ClusterContext>,
    prev: Option<&Arc<Directory>>,
    default_behaviour: &Arc<RouteBehaviour>,
) -> Result<Arc<Directory>, SnapshotError> {
    let prev = prev.filter(|d| Arc::ptr_eq(&d.ctx, ctx));
    if let Some(d) = prev.filter(|d| Arc::ptr_eq(&d.source, known)) {
        return Ok(d.clone());
    }
    let previous: HashMap<*const ServiceSpec, &Arc<HostPort>> = prev
        .into_iter()
        .flat_map(|d| &d.ports)
        .map(|hp| (Arc::as_ptr(&hp.cluster.recipe.svc), hp))
        .collect();
    // Sized up front, as the snapshot's own table is: in a mesh of thousands, a table
    // doubling as it fills would be the sidecar's peak.
    let mut hosts = HashMap::with_capacity(known.len() * 4);
    let mut addresses = Vec::with_capacity(known.len() * 2);
    let mut ports = Vec::with_capacity(known.len());
    for spec in known.iter() {
        let hp = match previous.get(&Arc::as_ptr(spec)) {
            Some(old) => Arc::clone(old),
            None => {
                let name = Arc::from(format!("outbound|{}||{}", spec.port, spec.hostname));
                let recipe = Recipe::new(ctx, spec.clone(), None, None, None, None)?;
                Arc::new(HostPort {
                    port: spec.port,
                    cluster: Arc::new(LazyCluster::new(name, Arc::from(""), recipe)),
                    routes: None,
                    tcp_routes: None,
                    default_behaviour: default_behaviour.clone(),
                    source: None,
                })
            }
        };
        index(&mut hosts, &mut addresses, spec, &hp);
        ports.push(hp);
    }
    Ok(Arc::new(Directory {
        source: known.clone(),
        ctx: ctx.clone(),
        hosts,
        ports,
        addresses: AddressIndex::build(addresses),
    }))
}
