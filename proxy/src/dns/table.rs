//! The names the sidecar's DNS proxy answers and the addresses it answers with, built with
//! each snapshot from the services' VIPs.
//!
//! A service in the cluster domain answers to the forms a pod's stub resolver may send after
//! applying its search list (`<ns>.svc.cluster.local svc.cluster.local cluster.local`), as
//! Istio's DNS proxy does: `reviews.shop.svc.cluster.local`, `reviews.shop.svc`,
//! `reviews.shop`, and `reviews` only for a workload in `shop` (a short name means the
//! caller's own namespace). Any other host (a ServiceEntry's) answers to its own names only.
//! Names are keyed by their lower-case text without the final dot (a few dozen bytes each,
//! where a hickory [`Name`] takes over a hundred inline); a query's name is put in that form
//! to be looked up.

use hickory_proto::rr::Name;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::names::CLUSTER_DOMAIN;
use crate::source::ServiceSpec;

/// The addresses one name resolves to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Addresses {
    /// A records.
    pub v4: Vec<Ipv4Addr>,
    /// AAAA records.
    pub v6: Vec<Ipv6Addr>,
}

/// Mesh names and their VIPs, immutable, shared by the snapshots whose services give the
/// same names and addresses.
#[derive(Debug, Default)]
pub struct NameTable {
    names: HashMap<Box<str>, Arc<Addresses>>,
    /// MeshConfig `ISTIO_META_DNS_CAPTURE` is not `false`: mesh names are answered here;
    /// otherwise every query goes upstream.
    capture: bool,
    /// A digest of everything it was built from (see [`NameTable::digest`]).
    digest: [u64; 2],
}

/// The inputs a [`NameTable`] is built from, digested without allocating: a push that leaves
/// every service's names and addresses as they were keeps the table (building one parses and
/// stores every name of the mesh).
fn digest<'a>(
    services: impl IntoIterator<Item = &'a ServiceSpec> + Clone,
    namespace: &str,
    capture: bool,
) -> [u64; 2] {
    use std::hash::{BuildHasher, Hash, Hasher};
    [0x6d65_7368, 0x6c69_7465].map(|seed| {
        let mut h = foldhash::fast::FixedState::with_seed(seed).build_hasher();
        namespace.hash(&mut h);
        capture.hash(&mut h);
        for svc in services.clone() {
            svc.hostname.hash(&mut h);
            svc.name.hash(&mut h);
            svc.namespace.hash(&mut h);
            svc.aliases.hash(&mut h);
            svc.addresses.hash(&mut h);
        }
        h.finish()
    })
}

impl NameTable {
    /// The table for a workload in `namespace` calling `services` (one entry per service
    /// port; a service's addresses are the same on every port). Addresses that are not IP
    /// literals (a ServiceEntry's CIDRs) are not answers; a service with none is left out,
    /// so its name goes upstream as before.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a ServiceSpec> + Clone,
        namespace: &str,
        capture: bool,
    ) -> Self {
        let digest = digest(services.clone(), namespace, capture);
        let mut names: HashMap<Box<str>, Arc<Addresses>> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        let suffix = format!(".{CLUSTER_DOMAIN}");
        for svc in services {
            let host = svc.hostname.to_ascii_lowercase();
            if svc.addresses.is_empty() || !seen.insert(host.clone()) {
                continue;
            }
            let mut addrs = Addresses::default();
            for ip in &svc.addresses {
                match ip {
                    IpAddr::V4(v4) if !addrs.v4.contains(v4) => addrs.v4.push(*v4),
                    IpAddr::V6(v6) if !addrs.v6.contains(v6) => addrs.v6.push(*v6),
                    _ => {}
                }
            }
            let addrs = Arc::new(addrs);
            let mut forms = vec![host.clone()];
            if let Some(name_ns) = host.strip_suffix(&suffix) {
                forms.push(format!("{name_ns}.svc"));
                forms.push(name_ns.to_string());
                if svc.namespace == namespace {
                    forms.push(svc.name.to_ascii_lowercase());
                }
            }
            forms.extend(svc.aliases.iter().map(|a| a.to_ascii_lowercase()));
            for form in forms {
                // A name that is not a valid DNS name (never from a validated config) is
                // simply not answered.
                if let Some(n) = Name::from_ascii(&form).ok().map(|n| key(&n)) {
                    names.entry(n).or_insert_with(|| addrs.clone());
                }
            }
        }
        names.shrink_to_fit();
        Self {
            names,
            capture,
            digest,
        }
    }

    /// [`NameTable::build`], or `prev` itself when the same services would build it.
    pub fn build_or_keep<'a>(
        services: impl IntoIterator<Item = &'a ServiceSpec> + Clone,
        namespace: &str,
        capture: bool,
        prev: Option<&Arc<Self>>,
    ) -> Arc<Self> {
        match prev {
            Some(p) if p.digest == digest(services.clone(), namespace, capture) => p.clone(),
            _ => Arc::new(Self::build(services, namespace, capture)),
        }
    }

    /// The addresses of `name` (a query's, fully qualified), if it is a mesh name this
    /// sidecar answers.
    pub fn lookup(&self, name: &Name) -> Option<&Addresses> {
        if !self.capture {
            return None;
        }
        self.names.get(&*key(name)).map(|a| &**a)
    }

    /// How many names are answered (the admin dump).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no name is answered.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Every name and its addresses, sorted (the admin dump).
    pub fn entries(&self) -> Vec<(String, &Addresses)> {
        let mut v: Vec<(String, &Addresses)> = self
            .names
            .iter()
            .map(|(n, a)| (format!("{n}."), &**a))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// The table's key for `name`: its lower-case text, without the final dot.
fn key(name: &Name) -> Box<str> {
    let mut text = name.to_lowercase().to_ascii();
    if text.ends_with('.') {
        text.pop();
    }
    text.into_boxed_str()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::Protocol;

    pub(crate) fn service(host: &str, ns: &str, addresses: &[&str]) -> ServiceSpec {
        ServiceSpec {
            hostname: host.into(),
            name: host.split('.').next().unwrap_or(host).into(),
            namespace: ns.into(),
            port: 80,
            protocol: Protocol::Http,
            aliases: vec![],
            identities: vec![],
            endpoints: vec![],
            listen: None,
            external: None,
            addresses: addresses.iter().filter_map(|a| a.parse().ok()).collect(),
            detect_protocol: false,
            awaiting: false,
            endpoint_ips: Vec::new(),
        }
    }

    fn q(name: &str) -> Name {
        Name::from_ascii(format!("{name}.")).unwrap_or_default()
    }

    fn v4(t: &NameTable, name: &str) -> Option<Vec<Ipv4Addr>> {
        t.lookup(&q(name)).map(|a| a.v4.clone())
    }

    #[test]
    fn a_table_is_kept_while_names_and_addresses_stay_and_rebuilt_when_one_moves() {
        let mut svcs = vec![
            service("reviews.shop.svc.cluster.local", "shop", &["240.240.0.7"]),
            service("cart.other.svc.cluster.local", "other", &["240.240.0.8"]),
        ];
        let first = Arc::new(NameTable::build(&svcs, "shop", true));
        // What DNS does not read (endpoints, awaiting a fetch) changes nothing.
        svcs[0].awaiting = true;
        let kept = NameTable::build_or_keep(&svcs, "shop", true, Some(&first));
        assert!(Arc::ptr_eq(&kept, &first));
        svcs[1].addresses = vec!["240.240.0.9".parse().unwrap()];
        let moved = NameTable::build_or_keep(&svcs, "shop", true, Some(&first));
        assert!(!Arc::ptr_eq(&moved, &first));
        assert_eq!(
            v4(&moved, "cart.other.svc.cluster.local"),
            Some(vec![Ipv4Addr::new(240, 240, 0, 9)])
        );
        let elsewhere = NameTable::build_or_keep(&svcs, "other", true, Some(&moved));
        assert!(
            !Arc::ptr_eq(&elsewhere, &moved),
            "short names follow the namespace"
        );
    }

    #[test]
    fn cluster_services_answer_their_search_list_forms() {
        let svcs = [
            service("reviews.shop.svc.cluster.local", "shop", &["240.240.0.7"]),
            service("cart.other.svc.cluster.local", "other", &["240.240.0.8"]),
        ];
        let t = NameTable::build(&svcs, "shop", true);
        let vip = Some(vec![Ipv4Addr::new(240, 240, 0, 7)]);
        for name in [
            "reviews",
            "reviews.shop",
            "reviews.shop.svc",
            "reviews.shop.svc.cluster.local",
            "REVIEWS.Shop.SVC.cluster.local",
        ] {
            assert_eq!(v4(&t, name), vip, "{name}");
        }
        // A short name is the caller's namespace only.
        assert_eq!(v4(&t, "cart"), None);
        assert!(v4(&t, "cart.other").is_some());
        assert!(v4(&t, "cart.other.svc.cluster.local").is_some());
        assert_eq!(v4(&t, "reviews.other.svc.cluster.local"), None);
        assert_eq!(v4(&t, "example.com"), None);
    }

    #[test]
    fn service_entry_hosts_answer_their_names_only_and_split_families() {
        let mut pay = service("pay.example.com", "default", &["10.9.9.9", "2001:db8::9"]);
        pay.aliases = vec!["pay".into()];
        let t = NameTable::build(&[pay], "default", true);
        let a = t.lookup(&q("pay.example.com"));
        assert_eq!(
            a,
            Some(&Addresses {
                v4: vec![Ipv4Addr::new(10, 9, 9, 9)],
                v6: vec!["2001:db8::9".parse().unwrap_or(Ipv6Addr::LOCALHOST)],
            })
        );
        assert!(t.lookup(&q("pay")).is_some());
        assert!(t.lookup(&q("pay.example")).is_none());
    }

    #[test]
    fn services_without_addresses_and_capture_off_answer_nothing() {
        let svcs = [service("api.example.com", "default", &[])];
        assert!(NameTable::build(&svcs, "default", true).is_empty());
        let svcs = [service("api.example.com", "default", &["240.240.1.1"])];
        let off = NameTable::build(&svcs, "default", false);
        assert!(off.lookup(&q("api.example.com")).is_none());
    }

    #[test]
    fn one_entry_per_service_however_many_ports() {
        let mut p2 = service("reviews.shop.svc.cluster.local", "shop", &["240.240.0.7"]);
        p2.port = 9090;
        let svcs = [
            service("reviews.shop.svc.cluster.local", "shop", &["240.240.0.7"]),
            p2,
        ];
        let t = NameTable::build(&svcs, "shop", true);
        assert_eq!(t.len(), 4);
        assert_eq!(v4(&t, "reviews"), Some(vec![Ipv4Addr::new(240, 240, 0, 7)]));
    }
}
