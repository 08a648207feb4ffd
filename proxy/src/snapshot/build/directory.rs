//! The directory of the services known and not fetched ([`Directory`]), built from the
//! control plane's list of them, kept from the previous snapshot while the list is the same
//! one, and carried over from it when a few services moved, came or left.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, OnceLock};

use super::{ClusterContext, Recipe, addresses_of, names_of, same_names};
use crate::names::{NameIndexBuilder, Realignment, merge_sorted};
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
    // A push that moves, adds or drops a few services leaves the rest as they were: the same
    // specs (the same allocations), in the same order, at new places. They need no second
    // check, and their names and addresses are carried to their new places.
    let realigned = prev
        .filter(|d| Arc::ptr_eq(&d.ctx, ctx))
        .and_then(|d| Realignment::of(d.source.iter(), known.iter()).map(|r| (d, r)));
    // What a first lookup makes must not fail then: refused now, as a fetched service's
    // would be.
    let check = |at: usize| match known.get(at) {
        Some(spec) => Recipe::new(ctx, spec.clone(), None, None, None, None).map(drop),
        None => Ok(()),
    };
    match &realigned {
        Some((_, r)) => r.fresh().iter().try_for_each(|at| check(*at as usize))?,
        None => (0..known.len()).try_for_each(check)?,
    }
    // Every service answering to the names of the one in its place (a pod moved): the name
    // index stays. Else a small change is carried over, and a large one indexed from
    // scratch, which then costs no more.
    let kept_names = realigned
        .as_ref()
        .filter(|(d, r)| {
            r.in_place(|at| {
                d.source
                    .get(at as usize)
                    .zip(known.get(at as usize))
                    .is_some_and(|(o, n)| same_names(o, n))
            })
        })
        .map(|(d, _)| d.names.clone());
    let carried = realigned.filter(|(_, r)| r.worth_carrying());
    let names = kept_names.unwrap_or_else(|| match &carried {
        Some((d, r)) => Arc::new(
            d.names
                .realigned(r, names_at(known, r.fresh().iter().copied())),
        ),
        None => Arc::new(names_at(known, every(known)).build()),
    });
    let addresses = address_table(known, carried.as_ref().map(|(d, r)| (&d.addresses, r)));
    Ok(Arc::new(Directory {
        source: known.clone(),
        ctx: ctx.clone(),
        default_behaviour: default_behaviour.clone(),
        names,
        addresses,
        entries: known.iter().map(|_| OnceLock::new()).collect(),
    }))
}

/// Every place of `known`.
fn every(known: &[Arc<ServiceSpec>]) -> std::ops::Range<u32> {
    0..u32::try_from(known.len()).unwrap_or(u32::MAX)
}

/// The names of the services of `known` at `places`.
fn names_at(known: &[Arc<ServiceSpec>], places: impl Iterator<Item = u32>) -> NameIndexBuilder {
    let mut names = NameIndexBuilder::with_capacity(places.size_hint().0 * 4);
    for at in places {
        let Some(spec) = known.get(at as usize) else {
            break;
        };
        for name in names_of(spec) {
            names.add(&name, at);
        }
    }
    names
}

/// Every address of `known` at its service port's port, sorted by address, the claim that
/// ranks first (a virtual IP over an endpoint, then the first host name in order, then the
/// first in the list) before the others. With `carry`, the previous table and how the list
/// moved since: the claims of the services that stayed are moved to their new places (their
/// order holds), and only the fresh services' claims are sorted and merged in.
fn address_table(
    known: &[Arc<ServiceSpec>],
    carry: Option<(&AddressTable, &Realignment)>,
) -> AddressTable {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let places: Box<dyn Iterator<Item = u32>> = match carry {
        Some((_, r)) => Box::new(r.fresh().iter().copied()),
        None => Box::new(every(known)),
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
    if let Some((prev, r)) = carry {
        let moved = |h: &Held| r.new_place(h.at).map(|at| Held { claim: h.claim, at });
        let kept4 = prev.v4.iter().filter_map(|(k, h)| Some((*k, moved(h)?)));
        let kept6 = prev.v6.iter().filter_map(|(k, h)| Some((*k, moved(h)?)));
        v4 = merge_sorted(kept4, v4, cmp4);
        v6 = merge_sorted(kept6, v6, cmp6);
    }
    AddressTable {
        v4: v4.into_boxed_slice(),
        v6: v6.into_boxed_slice(),
    }
}
