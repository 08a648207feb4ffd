//! Virtual IPs: the address each service is reached at when apps resolve its name through
//! the sidecar's DNS proxy and transparent capture maps the connection back to it.
//!
//! A ServiceEntry's own `addresses` are its VIPs. Every other pushed service (registry
//! services, ServiceEntries without `addresses`) gets one allocated from Istio's
//! auto-allocation range, 240.240.0.0/16 (reserved "future use" space, never routed), as
//! Istio does with `ISTIO_META_DNS_AUTO_ALLOCATE`. Istio allocates for ServiceEntries only,
//! since Kubernetes gives Services a cluster IP; meshlite has no cluster DNS or cluster IPs,
//! so its registry services are allocated too. Wildcard hosts and `resolution: NONE` entries
//! are never pushed, so never allocated.
//!
//! An allocation is a hash of the hostname (FNV-1a: stable across builds and restarts) with
//! linear probing over the free addresses. Hosts are placed in order: first those holding an
//! address from the previous generation (they keep it, so a service added later never moves
//! an existing one), then the new ones by name. A control plane that restarts allocates from
//! scratch in name order, which gives every host its previous address unless two hashes
//! collided in the meantime. Addresses ending in `.0` or `.255` are skipped, as Istio does,
//! since some stacks treat them as network or broadcast addresses.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr};

/// Istio's auto-allocation range, 240.240.0.0/16: its first two octets.
const RANGE_PREFIX: [u8; 2] = [240, 240];

/// Usable last octets in each /24 of the range: 1-254.
const PER_BLOCK: u32 = 254;

/// How many addresses the range offers: 256 blocks of 254.
const CAPACITY: u32 = 256 * PER_BLOCK;

/// Hostname -> allocated VIP, the state carried from one generation to the next.
pub type Allocations = BTreeMap<String, Ipv4Addr>;

/// The `index`th usable address of the range.
fn address(index: u32) -> Ipv4Addr {
    let block = index / PER_BLOCK;
    let host = index % PER_BLOCK + 1;
    Ipv4Addr::new(
        RANGE_PREFIX[0],
        RANGE_PREFIX[1],
        u8::try_from(block).unwrap_or(u8::MAX),
        u8::try_from(host).unwrap_or(1),
    )
}

/// Whether `ip` is an address this allocator hands out.
fn in_range(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[..2] == RANGE_PREFIX && o[3] != 0 && o[3] != 255
}

/// FNV-1a (64-bit) of the lowercase hostname: where its probing starts.
fn home(host: &str) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = host.bytes().fold(OFFSET, |h, b| {
        (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(PRIME)
    });
    u32::try_from(hash % u64::from(CAPACITY)).unwrap_or(0)
}

/// Allocates a VIP to each of `hosts`, keeping those `held` from before, avoiding `taken`
/// (addresses services declared themselves). A host left without one (the range is full:
/// 65,024 services) is logged and simply has no VIP.
pub fn allocate(hosts: &BTreeSet<String>, held: &Allocations, taken: &[IpAddr]) -> Allocations {
    let mut used: HashSet<Ipv4Addr> = taken
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) if in_range(*v4) => Some(*v4),
            _ => None,
        })
        .collect();
    let mut out = Allocations::new();
    // Kept first: a host that had an address keeps it while nobody declared it since.
    for host in hosts {
        if let Some(ip) = held.get(host)
            && in_range(*ip)
            && used.insert(*ip)
        {
            out.insert(host.clone(), *ip);
        }
    }
    for host in hosts {
        if out.contains_key(host) {
            continue;
        }
        let start = home(host);
        let free = (0..CAPACITY)
            .map(|step| address((start + step) % CAPACITY))
            .find(|ip| !used.contains(ip));
        match free {
            Some(ip) => {
                used.insert(ip);
                out.insert(host.clone(), ip);
            }
            None => {
                tracing::warn!(%host, "no virtual IP left in 240.240.0.0/16; the service has none");
            }
        }
    }
    out
}

/// The IP literals among a ServiceEntry's `addresses` (CIDRs are left out: they name ranges
/// for capture, not an address to answer a DNS query with).
pub fn declared_ips(addresses: &[String]) -> Vec<IpAddr> {
    addresses
        .iter()
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn allocation_is_deterministic_and_in_range() {
        let h = hosts(&[
            "reviews.default.svc.cluster.local",
            "ratings.default.svc.cluster.local",
            "api.example.com",
        ]);
        let a = allocate(&h, &Allocations::new(), &[]);
        let b = allocate(&h, &Allocations::new(), &[]);
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        for ip in a.values() {
            assert!(in_range(*ip), "{ip}");
            assert_eq!(ip.octets()[..2], [240, 240]);
        }
        let distinct: HashSet<_> = a.values().collect();
        assert_eq!(distinct.len(), 3);
    }

    #[test]
    fn the_range_skips_network_and_broadcast_addresses() {
        assert_eq!(address(0), Ipv4Addr::new(240, 240, 0, 1));
        assert_eq!(address(253), Ipv4Addr::new(240, 240, 0, 254));
        assert_eq!(address(254), Ipv4Addr::new(240, 240, 1, 1));
        assert_eq!(address(CAPACITY - 1), Ipv4Addr::new(240, 240, 255, 254));
        assert!((0..CAPACITY).map(address).all(in_range));
        assert!(!in_range(Ipv4Addr::new(240, 240, 3, 0)));
        assert!(!in_range(Ipv4Addr::new(240, 240, 3, 255)));
    }

    #[test]
    fn a_service_added_later_never_moves_an_existing_one() {
        let first = allocate(&hosts(&["b.example.com"]), &Allocations::new(), &[]);
        // A new host that sorts first and lands on the same home slot.
        let rival = (0..)
            .map(|i| format!("a{i}.example.com"))
            .find(|h| home(h) == home("b.example.com"))
            .unwrap_or_default();
        let both = hosts(&["b.example.com", &rival]);
        let next = allocate(&both, &first, &[]);
        assert_eq!(next["b.example.com"], first["b.example.com"]);
        assert_ne!(next[&rival], next["b.example.com"]);
        // From scratch (a restarted control plane), the name order decides.
        let fresh = allocate(&both, &Allocations::new(), &[]);
        assert_eq!(fresh[&rival], first["b.example.com"]);
    }

    #[test]
    fn collisions_probe_to_the_next_free_address() {
        let h = "reviews.default.svc.cluster.local";
        let home_ip = address(home(h));
        let a = allocate(&hosts(&[h]), &Allocations::new(), &[IpAddr::V4(home_ip)]);
        assert_eq!(a[h], address((home(h) + 1) % CAPACITY));
    }

    #[test]
    fn a_held_address_someone_declared_since_is_given_up() {
        let h = "reviews.default.svc.cluster.local";
        let first = allocate(&hosts(&[h]), &Allocations::new(), &[]);
        let ip = first[h];
        let next = allocate(&hosts(&[h]), &first, &[IpAddr::V4(ip)]);
        assert_ne!(next[h], ip);
    }

    #[test]
    fn removed_hosts_free_their_address() {
        let a = allocate(&hosts(&["x.example.com"]), &Allocations::new(), &[]);
        let b = allocate(&hosts(&[]), &a, &[]);
        assert!(b.is_empty());
    }

    #[test]
    fn declared_addresses_keep_ips_and_drop_cidrs() {
        let ips = declared_ips(&[
            "10.1.2.3".into(),
            "192.168.0.0/16".into(),
            "2001:db8::1".into(),
        ]);
        assert_eq!(
            ips,
            vec![
                IpAddr::from([10, 1, 2, 3]),
                "2001:db8::1"
                    .parse::<IpAddr>()
                    .unwrap_or(IpAddr::from([0; 4]))
            ]
        );
    }
}
