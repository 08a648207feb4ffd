//! The services a sidecar fetching on demand knows but has not fetched: their names, ports
//! and addresses, each leading to a cluster that awaits its first call.
//!
//! Most of a mesh is never called by a given app, and a fetch or a push of the few it calls
//! must not cost the rest. So the services known before their fetch are one directory, built
//! from the control plane's list of them and shared by every snapshot while that list is the
//! same one (a fetch or an Endpoints push leaves it as it is). A snapshot holds the services
//! it has fetched apart; they are looked up first and shadow the directory's entry for the
//! same service, which stays, stale and unused, until the list changes.
//!
//! An entry is small: indices into the shared list by name and by address. Its host port
//! and awaiting cluster (names, labels, recipe) are made the first time a lookup returns it,
//! which for most services is never.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use super::build::{ClusterContext, Recipe, answers_to};
use super::{CaptureTarget, Claim, HostPort, LazyCluster, RouteBehaviour};
use crate::names::NameIndex;
use crate::route::RouteMiss;
use crate::source::ServiceSpec;

/// Which service port holds an address, and how strongly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    /// Virtual IP or endpoint.
    pub(crate) claim: Claim,
    /// The service port (index into the list).
    pub(crate) at: u32,
}

/// Service ports by `(address, port)`, sorted for a binary search: sixteen bytes an IPv4
/// address where a hash map of `IpAddr` keys spends over sixty. Every claim is kept, the one
/// that holds an address first among its equals, so that a push can take out a moved
/// service's claims and the next claim in rank holds what it held.
#[derive(Debug, Default)]
pub(crate) struct AddressTable {
    /// IPv4 addresses, keyed by [`v4_key`].
    pub(crate) v4: Box<[(u64, Held)]>,
    /// IPv6 addresses.
    pub(crate) v6: Box<[((Ipv6Addr, u16), Held)]>,
}

/// The key of IPv4 address `ip` at `port`.
pub(crate) fn v4_key(ip: std::net::Ipv4Addr, port: u16) -> u64 {
    (u64::from(ip.to_bits()) << 16) | u64::from(port)
}

/// The claim that holds `key` in `table` (sorted by key, the holder first).
fn first_of<K: Ord + Copy>(table: &[(K, Held)], key: K) -> Option<Held> {
    let i = table.partition_point(|e| e.0 < key);
    table.get(i).filter(|e| e.0 == key).map(|e| e.1)
}

impl AddressTable {
    /// The service port holding `ip:port`.
    fn get(&self, ip: IpAddr, port: u16) -> Option<Held> {
        match ip.to_canonical() {
            IpAddr::V4(v4) => first_of(&self.v4, v4_key(v4, port)),
            IpAddr::V6(v6) => first_of(&self.v6, (v6, port)),
        }
    }
}

/// The known services as a snapshot looks them up: by name and by address.
#[derive(Debug)]
pub struct Directory {
    /// The list it was built from (the next snapshot keeps it while its view hands the same
    /// list).
    pub(crate) source: Arc<Vec<Arc<ServiceSpec>>>,
    /// What its clusters are made with (a new one makes it again).
    pub(crate) ctx: Arc<ClusterContext>,
    /// The route behaviour of a host port without routes.
    pub(crate) default_behaviour: Arc<RouteBehaviour>,
    /// Service ports by every name they answer to (hashed: a name is checked against its
    /// service when looked up).
    pub(crate) names: Arc<NameIndex>,
    /// Service ports by virtual IP and endpoint address, with the claim that won it.
    pub(crate) addresses: AddressTable,
    /// Each service port's host port, made on its first lookup (`None`: its recipe was
    /// refused, which the build already checked against).
    pub(crate) entries: Vec<OnceLock<Option<CaptureTarget>>>,
}

impl Directory {
    /// How many service ports it knows.
    pub fn len(&self) -> usize {
        self.source.len()
    }

    /// Whether it knows none.
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    /// Whether `fqdn` is one of its names.
    pub(crate) fn contains(&self, fqdn: &str) -> bool {
        self.answering(fqdn).next().is_some()
    }

    /// The service ports answering to `name`, in the list's order.
    fn answering<'a>(&'a self, name: &'a str) -> impl Iterator<Item = u32> + 'a {
        self.names
            .candidates(name)
            .iter()
            .copied()
            .filter(move |i| self.answers(*i, name))
    }

    /// Whether service port `i` answers to `name` (a candidate may only share its hash).
    fn answers(&self, i: u32, name: &str) -> bool {
        self.spec(i).is_some_and(|s| answers_to(s, name))
    }

    /// The spec of service port `i`.
    fn spec(&self, i: u32) -> Option<&Arc<ServiceSpec>> {
        self.source.get(usize::try_from(i).ok()?)
    }

    /// The service port at `i` of the list, its host port made now if this is its first
    /// lookup.
    fn entry(&self, i: u32) -> Option<&CaptureTarget> {
        let i = usize::try_from(i).ok()?;
        self.entries.get(i)?.get_or_init(|| self.make(i)).as_ref()
    }

    /// The host port of service port `i` with the cluster awaiting its fetch.
    pub(crate) fn make(&self, i: usize) -> Option<CaptureTarget> {
        let spec = self.source.get(i)?;
        let recipe = Recipe::new(&self.ctx, spec.clone(), None, None, None, None).ok()?;
        let name = Arc::from(format!("outbound|{}||{}", spec.port, spec.hostname));
        let host = HostPort {
            port: spec.port,
            cluster: Arc::new(LazyCluster::new(name, Arc::from(""), recipe)),
            routes: None,
            tcp_routes: None,
            default_behaviour: self.default_behaviour.clone(),
            source: None,
        };
        Some(CaptureTarget {
            host: Arc::new(host),
            detect: spec.detect_protocol,
        })
    }

    /// The host port `host` names at `port` (`None`: its only port, else 80); which miss
    /// it is otherwise. Of two service ports with one name and one port number, the first in
    /// the list's order answers.
    pub(crate) fn named(&self, host: &str, port: Option<u16>) -> Result<&Arc<HostPort>, RouteMiss> {
        let candidates = self.names.candidates(host);
        let answers = |i: &u32| self.answers(*i, host);
        // Every candidate answers, unless another name shares the hash.
        let filtered: Vec<u32>;
        let ports = if candidates.iter().all(answers) {
            candidates
        } else {
            filtered = candidates.iter().copied().filter(answers).collect();
            &filtered
        };
        if ports.is_empty() {
            return Err(RouteMiss::UnknownHost);
        }
        super::pick_by(ports, port, |i| self.spec(*i).map(|s| s.port))
            .and_then(|i| self.entry(*i))
            .map(|t| &t.host)
            .ok_or(RouteMiss::UnknownPort)
    }

    /// One host port of service `fqdn` (any port).
    pub(crate) fn any_port_of(&self, fqdn: &str) -> Option<&Arc<HostPort>> {
        let first = self.answering(fqdn).next()?;
        self.entry(first).map(|t| &t.host)
    }

    /// The service port a connection to `dst` was meant for, with how strongly it holds
    /// the address.
    pub(crate) fn captured(&self, dst: SocketAddr) -> Option<(Claim, &CaptureTarget)> {
        let held = self.addresses.get(dst.ip(), dst.port())?;
        Some((held.claim, self.entry(held.at)?))
    }

    /// Every service port with its host port if a lookup made it.
    pub(crate) fn ports(
        &self,
    ) -> impl Iterator<Item = (&Arc<ServiceSpec>, Option<&Arc<HostPort>>)> {
        self.source.iter().zip(&self.entries).map(|(spec, entry)| {
            let made = entry.get().and_then(Option::as_ref).map(|t| &t.host);
            (spec, made)
        })
    }

    /// How many names it answers to that `fetched` (names of the fetched services) does not
    /// hold.
    pub(crate) fn names_outside<'a>(&self, fetched: impl Iterator<Item = &'a str>) -> usize {
        let shared = fetched.filter(|n| self.contains(n)).count();
        self.names.len().saturating_sub(shared)
    }
}
