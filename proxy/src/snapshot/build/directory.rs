//! The directory of the services known and not fetched ([`Directory`]), built from the
//! control plane's list of them, or kept from the previous snapshot while the list is the
//! same one.

use std::net::{IpAddr, Ipv6Addr};
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
    let mut moved = Vec::new();
    for (i, spec) in known.iter().enumerate() {
        // What a first lookup makes must not fail then: refused now, as a fetched
        // service's would be.
        let checked = checked_by
            .and_then(|d| d.source.get(i))
            .is_some_and(|p| Arc::ptr_eq(p, spec));
        if !checked {
            Recipe::new(ctx, spec.clone(), None, None, None, None)?;
            moved.extend(u32::try_from(i).ok());
        }
    }
    // The same places hold the same services but for a few: the previous address table
    // less their claims, plus their new ones. Else (services added or dropped) made again.
    let patched = prev
        .filter(|d| d.source.len() == known.len() && moved.len() <= known.len() / 8)
        .map(|d| (&d.addresses, moved.as_slice()));
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
        addresses: address_table(known, patched),
        entries: known.iter().map(|_| OnceLock::new()).collect(),
    }))
}

/// Every address of `known` at its service port's port, sorted by address, the claim that
/// ranks first (a virtual IP over an endpoint, then the first host name in order, then the
/// first in the list) before the others. With `patch`, the previous table of a list whose
/// services moved only at the (sorted) places given: their claims are taken out of it and
/// their new ones merged in, without sorting the rest again.
fn address_table(
    known: &[Arc<ServiceSpec>],
    patch: Option<(&AddressTable, &[u32])>,
) -> AddressTable {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let every = 0..u32::try_from(known.len()).unwrap_or(u32::MAX);
    let places: Box<dyn Iterator<Item = u32>> = match patch {
        Some((_, moved)) => Box::new(moved.iter().copied()),
        None => Box::new(every),
    };
    for at in places {
        let Some(spec) = known.get(at as usize) else {
            break;
        };
        for (ip, claim) in addresses_of(spec) {
            let held = Held { claim, at };
            match ip.to_canonical() {
                IpAddr::V4(a) => v4.push((v4_key(a, spec.port), held)),
                IpAddr::V6(a) => v6.push(((a, spec.port), held)),
            }
        }
    }
    let host = |h: &Held| known[h.at as usize].hostname.as_str();
    let order =
        |a: &Held, b: &Held| rank((a.claim, host(a)), (b.claim, host(b))).then(a.at.cmp(&b.at));
    let cmp4 = |a: &(u64, Held), b: &(u64, Held)| a.0.cmp(&b.0).then_with(|| order(&a.1, &b.1));
    let cmp6 = |a: &((Ipv6Addr, u16), Held), b: &((Ipv6Addr, u16), Held)| {
        a.0.cmp(&b.0).then_with(|| order(&a.1, &b.1))
    };
    v4.sort_unstable_by(cmp4);
    v6.sort_unstable_by(cmp6);
    if let Some((prev, moved)) = patch {
        let stays = |h: &Held| moved.binary_search(&h.at).is_err();
        v4 = merged(prev.v4.iter().filter(|e| stays(&e.1)), v4, cmp4);
        v6 = merged(prev.v6.iter().filter(|e| stays(&e.1)), v6, cmp6);
    }
    AddressTable {
        v4: v4.into_boxed_slice(),
        v6: v6.into_boxed_slice(),
    }
}

/// The sorted `old` and `new` as one sorted list (of equals, `old`'s first).
fn merged<'a, T: Copy + 'a>(
    old: impl Iterator<Item = &'a T>,
    new: Vec<T>,
    cmp: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> Vec<T> {
    // Sized for every old entry (a filter's upper bound): one allocation, not a doubling one.
    let (lower, upper) = old.size_hint();
    let mut out = Vec::with_capacity(upper.unwrap_or(lower) + new.len());
    let mut new = new.into_iter().peekable();
    for o in old {
        while let Some(n) = new.next_if(|n| cmp(n, o).is_lt()) {
            out.push(n);
        }
        out.push(*o);
    }
    out.extend(new);
    out
}
