//! The directory of the services known and not fetched ([`Directory`]), built from the
//! control plane's list of them, or kept from the previous snapshot while the list is the
//! same one.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, OnceLock};

use super::{ClusterContext, Recipe, addresses_of, names_of};
use crate::snapshot::directory::Ports;
use crate::snapshot::{Directory, RouteBehaviour, SnapshotError};
use crate::source::ServiceSpec;

/// The directory of `known`: `prev` itself when it was built of the same list with the
/// same cluster context, else built again (its entries made on their first lookup).
pub(super) fn directory(
    known: &Arc<Vec<Arc<ServiceSpec>>>,
    ctx: &Arc<ClusterContext>,
    prev: Option<&Arc<Directory>>,
    default_behaviour: &Arc<RouteBehaviour>,
) -> Result<Arc<Directory>, SnapshotError> {
    if let Some(d) = prev.filter(|d| Arc::ptr_eq(&d.source, known) && Arc::ptr_eq(&d.ctx, ctx)) {
        return Ok(d.clone());
    }
    // Sized up front: in a mesh of thousands, a table doubling as it fills would be the
    // sidecar's peak.
    let hasher = crate::snapshot::NameHasher::default;
    let mut names: HashMap<Box<str>, Ports, _> =
        HashMap::with_capacity_and_hasher(known.len() * 4, hasher());
    let claims = known.iter().map(|s| addresses_of(s).count()).sum();
    let mut addresses = HashMap::with_capacity_and_hasher(claims, hasher());
    for (i, spec) in known.iter().enumerate() {
        // What a first lookup makes must not fail then: refused now, as a fetched
        // service's would be.
        Recipe::new(ctx, spec.clone(), None, None, None, None)?;
        let Ok(i) = u32::try_from(i) else { break };
        for name in names_of(spec) {
            match names.entry(name.into_boxed_str()) {
                Entry::Vacant(v) => {
                    v.insert(Ports::One(i));
                }
                // A name two service ports share: both, unless they have the same port
                // (the first in order keeps it).
                Entry::Occupied(mut o) => {
                    let held = o.get().as_slice();
                    if held.iter().all(|h| known[*h as usize].port != spec.port) {
                        let many = held.iter().copied().chain([i]).collect();
                        o.insert(Ports::Many(many));
                    }
                }
            }
        }
        for (ip, claim) in addresses_of(spec) {
            // A stronger claim takes an address, then the first host name in order.
            match addresses.entry((ip.to_canonical(), spec.port)) {
                Entry::Vacant(v) => {
                    v.insert((claim, i));
                }
                Entry::Occupied(mut o) => {
                    let (held, at) = *o.get();
                    if (claim, &spec.hostname) < (held, &known[at as usize].hostname) {
                        o.insert((claim, i));
                    }
                }
            }
        }
    }
    Ok(Arc::new(Directory {
        source: known.clone(),
        ctx: ctx.clone(),
        default_behaviour: default_behaviour.clone(),
        names,
        addresses,
        entries: known.iter().map(|_| OnceLock::new()).collect(),
    }))
}
