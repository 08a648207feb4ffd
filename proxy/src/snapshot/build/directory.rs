//! The directory of the services known and not fetched ([`Directory`]), built from the
//! control plane's list of them, or kept from the previous snapshot while the list is the
//! same one.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use super::{ClusterContext, Recipe, addresses_of, names_of, same_names};
use crate::names::NameIndexBuilder;
use crate::snapshot::addresses::rank;
use crate::snapshot::directory::{AddressTable, Held, v4_key};
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
    // A push that moves some services (a pod's IP, a port) leaves the rest as they were:
    // the same specs, at the same places in the list, need no second check, and when every
    // service keeps its names the name index is the previous one.
    let checked_by = prev.filter(|d| Arc::ptr_eq(&d.ctx, ctx));
    for (i, spec) in known.iter().enumerate() {
        // What a first lookup makes must not fail then: refused now, as a fetched
        // service's would be.
        let checked = checked_by
            .and_then(|d| d.source.get(i))
            .is_some_and(|p| Arc::ptr_eq(p, spec));
        if !checked {
            Recipe::new(ctx, spec.clone(), None, None, None, None)?;
        }
    }
    let names = match prev {
        Some(d)
            if d.source.len() == known.len()
                && d.source
                    .iter()
                    .zip(known.iter())
                    .all(|(p, s)| same_names(p, s)) =>
        {
            d.names.clone()
        }
        _ => {
            let mut names = NameIndexBuilder::with_capacity(known.len() * 4);
            for (i, spec) in known.iter().enumerate() {
                let Ok(i) = u32::try_from(i) else { break };
                for name in names_of(spec) {
                    names.add(&name, i);
                }
            }
            Arc::new(names.build())
        }
    };
    Ok(Arc::new(Directory {
        source: known.clone(),
        ctx: ctx.clone(),
        default_behaviour: default_behaviour.clone(),
        names,
        addresses: address_table(known),
        entries: known.iter().map(|_| OnceLock::new()).collect(),
    }))
}

/// Every address of `known` at its service port's port, held by the claim that ranks first
/// (a virtual IP over an endpoint, then the first host name in order, then the first in
/// the list).
fn address_table(known: &[Arc<ServiceSpec>]) -> AddressTable {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let claims = known.iter().enumerate().flat_map(|(i, spec)| {
        let at = u32::try_from(i).ok();
        addresses_of(spec)
            .filter_map(move |(ip, claim)| Some((ip, spec.port, Held { claim, at: at? })))
    });
    for (ip, port, held) in claims {
        match ip.to_canonical() {
            IpAddr::V4(a) => v4.push((v4_key(a, port), held)),
            IpAddr::V6(a) => v6.push(((a, port), held)),
        }
    }
    let host = |h: &Held| known[h.at as usize].hostname.as_str();
    let order =
        |a: &Held, b: &Held| rank((a.claim, host(a)), (b.claim, host(b))).then(a.at.cmp(&b.at));
    v4.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| order(&a.1, &b.1)));
    v4.dedup_by_key(|e| e.0);
    v6.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| order(&a.1, &b.1)));
    v6.dedup_by_key(|e| e.0);
    AddressTable {
        v4: v4.into_boxed_slice(),
        v6: v6.into_boxed_slice(),
    }
}
