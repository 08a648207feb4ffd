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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use super::build::{ClusterContext, Recipe};
use super::{CaptureTarget, Claim, HostPort, LazyCluster, RouteBehaviour};
use crate::route::RouteMiss;
use crate::source::ServiceSpec;

/// The service ports (indices into the list) a name leads to: most names lead to one.
#[derive(Debug)]
pub(crate) enum Ports {
    /// One port.
    One(u32),
    /// Several, in the list's order.
    Many(Box<[u32]>),
}

impl Ports {
    pub(crate) fn as_slice(&self) -> &[u32] {
        match self {
            Ports::One(i) => std::slice::from_ref(i),
            Ports::Many(v) => v,
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
    /// Service ports by every name they answer to.
    pub(crate) names: HashMap<Box<str>, Ports, super::NameHasher>,
    /// Service ports by virtual IP and endpoint address, with the claim that won it.
    pub(crate) addresses: HashMap<(IpAddr, u16), (Claim, u32), super::NameHasher>,
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
        self.names.contains_key(fqdn)
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
    /// it is otherwise.
    pub(crate) fn named(&self, host: &str, port: Option<u16>) -> Result<&Arc<HostPort>, RouteMiss> {
        let ports = self
            .names
            .get(host)
            .ok_or(RouteMiss::UnknownHost)?
            .as_slice();
        let port_of = |i: &u32| {
            usize::try_from(*i)
                .ok()
                .and_then(|i| self.source.get(i))
                .map(|s| s.port)
        };
        super::pick_by(ports, port, port_of)
            .and_then(|i| self.entry(*i))
            .map(|t| &t.host)
            .ok_or(RouteMiss::UnknownPort)
    }

    /// One host port of service `fqdn` (any port).
    pub(crate) fn any_port_of(&self, fqdn: &str) -> Option<&Arc<HostPort>> {
        let first = *self.names.get(fqdn)?.as_slice().first()?;
        self.entry(first).map(|t| &t.host)
    }

    /// The service port a connection to `dst` was meant for, with how strongly it holds
    /// the address.
    pub(crate) fn captured(&self, dst: SocketAddr) -> Option<(Claim, &CaptureTarget)> {
        if self.addresses.is_empty() {
            return None;
        }
        let (claim, i) = self.addresses.get(&(dst.ip().to_canonical(), dst.port()))?;
        Some((*claim, self.entry(*i)?))
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

    /// How many names it answers to that `except` does not hold.
    pub(crate) fn names_outside<V, S: std::hash::BuildHasher>(
        &self,
        except: &HashMap<Box<str>, V, S>,
    ) -> usize {
        self.names
            .keys()
            .filter(|n| !except.contains_key(*n))
            .count()
    }
}
