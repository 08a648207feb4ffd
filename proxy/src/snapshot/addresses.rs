//! Services by address, for captured connections: the outbound listener learns where a
//! redirected connection was going (an IP and a port) and needs the service that is.
//!
//! Two kinds of address lead to a service port: its virtual IPs (ServiceEntry `addresses`,
//! a Kubernetes ClusterIP) and its endpoints' own addresses (a pod IP called directly, as
//! Istio's sidecar listeners for headless services and pod IPs do). A virtual IP wins where
//! both claim an address; between equal claims the first host name in order keeps it, so
//! every build decides alike, whatever order the services came in. Built once per snapshot;
//! a lookup is one hash probe.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::HostPort;

/// What a captured destination leads to.
#[derive(Clone, Debug)]
pub struct CaptureTarget {
    /// The service port (its cluster and routes).
    pub host: Arc<HostPort>,
    /// The port declares no protocol: the connection's first bytes tell (Istio's protocol
    /// sniffing for ports without a protocol prefix or `appProtocol`).
    pub detect: bool,
}

/// Service ports by `(address, port)`.
#[derive(Debug, Default)]
pub struct AddressIndex {
    by_addr: HashMap<(IpAddr, u16), (Claim, CaptureTarget)>,
}

/// The host name a capture target's service is known by (ties between equal claims go to
/// the first in order).
fn host(t: &CaptureTarget) -> &str {
    &t.host.cluster.labels.service.fqdn
}

/// Whether claim `a` takes an address from the one holding it, `held`: a stronger claim
/// wins, then the first host name in order.
pub fn stronger(a: (Claim, &CaptureTarget), held: (Claim, &CaptureTarget)) -> bool {
    rank((a.0, host(a.1)), (held.0, host(held.1))).is_lt()
}

/// How two claims on one address, each with its service's host name, rank: the stronger
/// claim first, then the first host name in order (the one rule every index settles an
/// address by).
pub fn rank(a: (Claim, &str), b: (Claim, &str)) -> std::cmp::Ordering {
    a.cmp(&b)
}

/// How strongly an address belongs to a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Claim {
    /// A virtual IP of the service.
    Vip,
    /// One of its endpoints' addresses.
    Endpoint,
}

impl AddressIndex {
    /// Builds the index from `(address, port, claim, target)` entries: where two claim the
    /// same address, the stronger claim wins, then the first host name in order (decided
    /// pairwise, so any input order gives the same index, without sorting them all).
    pub fn build(entries: impl IntoIterator<Item = (IpAddr, u16, Claim, CaptureTarget)>) -> Self {
        let entries = entries.into_iter();
        let mut by_addr: HashMap<(IpAddr, u16), (Claim, CaptureTarget)> =
            HashMap::with_capacity(entries.size_hint().0);
        for (ip, port, claim, target) in entries {
            match by_addr.entry((ip.to_canonical(), port)) {
                Entry::Vacant(v) => {
                    v.insert((claim, target));
                }
                Entry::Occupied(mut o) => {
                    let (held, current) = o.get();
                    if stronger((claim, &target), (*held, current)) {
                        o.insert((claim, target));
                    }
                }
            }
        }
        Self { by_addr }
    }

    /// The service port a connection to `dst` was meant for.
    pub fn find(&self, dst: SocketAddr) -> Option<&CaptureTarget> {
        self.find_claimed(dst).map(|(_, t)| t)
    }

    /// [`AddressIndex::find`], with how strongly the target holds the address (to settle
    /// it against another index's).
    pub fn find_claimed(&self, dst: SocketAddr) -> Option<(Claim, &CaptureTarget)> {
        if self.by_addr.is_empty() {
            return None;
        }
        self.by_addr
            .get(&(dst.ip().to_canonical(), dst.port()))
            .map(|(c, t)| (*c, t))
    }

    /// How many addresses lead somewhere (admin dump, tests).
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// Whether no address leads anywhere.
    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }
}
