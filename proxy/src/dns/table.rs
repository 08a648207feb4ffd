//! The names the sidecar's DNS proxy answers and the addresses it answers with, built with
//! each snapshot from the services' VIPs.
//!
//! A service in the cluster domain answers to the forms a pod's stub resolver may send after
//! applying its search list (`<ns>.svc.cluster.local svc.cluster.local cluster.local`), as
//! Istio's DNS proxy does: `reviews.shop.svc.cluster.local`, `reviews.shop.svc`,
//! `reviews.shop`, and `reviews` only for a workload in `shop` (a short name means the
//! caller's own namespace). Any other host (a ServiceEntry's) answers to its own names only.
//! A name's key is its lower-case text without the final dot; the table keeps only the key's
//! hash ([`NameIndex`], 12 bytes a name where a copied key took a few dozen and a hickory
//! [`Name`] over a hundred), and a query's key is checked against the forms of the services
//! its hash leads to.

use hickory_proto::rr::Name;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::names::{CLUSTER_DOMAIN, NameIndex, NameIndexBuilder, Realignment};
use crate::source::ServiceSpec;

/// The addresses one name resolves to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Addresses {
    /// A records.
    pub v4: Vec<Ipv4Addr>,
    /// AAAA records.
    pub v6: Vec<Ipv6Addr>,
}

/// A shared list of services (the known services on demand, shared with the snapshot's
/// directory).
pub type ServiceList = Arc<Vec<Arc<ServiceSpec>>>;

/// Mesh names and their VIPs, immutable. It stores no name: its index holds their hashes,
/// leading to the services, whose names are checked when a query's hash matches.
#[derive(Debug, Default)]
pub struct NameTable {
    /// The services answered for: the known list (shared), then the proxy's own.
    known: Option<ServiceList>,
    /// Services outside the known list (the proxy's file's; every service without a known
    /// list).
    own: Box<[Arc<ServiceSpec>]>,
    /// Names by hash, leading to their service (index into known, then own). Shared by the
    /// tables of services with the same names in the same places, and carried over to the
    /// next table when a few services move, come or go.
    index: Arc<NameIndex>,
    /// The workload's namespace (short names are answered for its services).
    namespace: Box<str>,
    /// MeshConfig `ISTIO_META_DNS_CAPTURE` is not `false`: mesh names are answered here;
    /// otherwise every query goes upstream.
    capture: bool,
}

/// Whether `a` and `b` are ports of one service (a service's names are indexed once, at its
/// first port).
fn same_service(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    a.hostname.eq_ignore_ascii_case(&b.hostname) && a.name == b.name && a.namespace == b.namespace
}

/// Whether `a` and `b` answer to the same names (one of them replacing the other in place).
fn same_answers(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    same_service(a, b)
        && a.hostname == b.hostname
        && a.aliases == b.aliases
        && a.addresses.is_empty() == b.addresses.is_empty()
}

/// The names (table keys) `svc` answers to for a workload in `namespace`.
fn forms(svc: &ServiceSpec, namespace: &str) -> Vec<Box<str>> {
    let host = svc.hostname.to_ascii_lowercase();
    let mut forms = Vec::with_capacity(4 + svc.aliases.len());
    if let Some(name_ns) = host.strip_suffix(&format!(".{CLUSTER_DOMAIN}")) {
        forms.push(format!("{name_ns}.svc"));
        forms.push(name_ns.to_string());
        if svc.namespace == namespace {
            forms.push(svc.name.to_ascii_lowercase());
        }
    }
    forms.push(host);
    forms.extend(svc.aliases.iter().map(|a| a.to_ascii_lowercase()));
    // A name that is not a valid DNS name (never from a validated config) is simply not
    // answered.
    forms.iter().filter_map(|f| key_of(f)).collect()
}

/// `form` (lower case) as a table key, as a query naming it would be keyed; `None` when it is
/// not a DNS name. A plain host name (letters, digits and hyphens, no label starting with
/// one, labels of 1-63 bytes, at most 253 bytes) is its own key, checked here without
/// parsing: the index is made of every service's forms whenever the mesh's names move.
/// Anything else (an escape, a wildcard) is parsed as a `Name`.
fn key_of(form: &str) -> Option<Box<str>> {
    let plain = form.strip_suffix('.').unwrap_or(form);
    let is_plain = plain.len() <= 253
        && plain.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if is_plain {
        return Some(plain.into());
    }
    Name::from_ascii(form).ok().map(|n| key(&n))
}

impl NameTable {
    /// The table for a workload in `namespace` calling the `known` services and `own` (one
    /// entry per service port; a service's addresses are the same on every port; on a
    /// name two services give, the first answers). Addresses that are not IP literals (a
    /// ServiceEntry's CIDRs) are not answers; a service with none is left out, so its name
    /// goes upstream as before. `prev`'s index is kept, or carried over, when it can be
    /// ([`NameTable::carried_index`]).
    pub fn build(
        known: Option<&ServiceList>,
        own: Vec<Arc<ServiceSpec>>,
        namespace: &str,
        capture: bool,
        prev: Option<&Self>,
    ) -> Self {
        let mut table = Self {
            known: known.cloned(),
            own: own.into_boxed_slice(),
            index: Arc::default(),
            namespace: namespace.into(),
            capture,
        };
        table.index = prev
            .filter(|p| *p.namespace == *namespace)
            .and_then(|p| table.carried_index(p))
            .unwrap_or_else(|| {
                let every = 0..u32::try_from(table.services().count()).unwrap_or(u32::MAX);
                Arc::new(table.names_at(every).build())
            });
        table
    }

    /// [`NameTable::build`], or `prev` itself when built of the same lists, namespace and
    /// capture setting (a push that moved no service).
    pub fn build_or_keep(
        known: Option<&ServiceList>,
        own: Vec<Arc<ServiceSpec>>,
        namespace: &str,
        capture: bool,
        prev: Option<&Arc<Self>>,
    ) -> Arc<Self> {
        if let Some(p) = prev
            && p.known.as_ref().map(Arc::as_ptr) == known.map(Arc::as_ptr)
            && p.own.len() == own.len()
            && p.own.iter().zip(&own).all(|(a, b)| Arc::ptr_eq(a, b))
            && *p.namespace == *namespace
            && p.capture == capture
        {
            return p.clone();
        }
        Arc::new(Self::build(
            known,
            own,
            namespace,
            capture,
            prev.map(|p| &**p),
        ))
    }

    /// `prev`'s index carried over to these services: the same one when every service
    /// answers to the names of the one in its place (a pod moved), else moved to the
    /// services' new places with only the fresh ones' names made and hashed. `None` when
    /// building it whole costs no more (a large change), or when a service that stayed
    /// became its service's first port or stopped being it.
    fn carried_index(&self, prev: &Self) -> Option<Arc<NameIndex>> {
        let r = Realignment::of(prev.services(), self.services())?;
        let same_answers_at = |at| {
            prev.service(at)
                .zip(self.service(at))
                .is_some_and(|(p, s)| same_answers(p, s))
        };
        if r.in_place(same_answers_at) {
            return Some(prev.index.clone());
        }
        if !r.worth_carrying() {
            return None;
        }
        // A service's neighbour changes only next to a change: a service that stayed has a
        // new one before it when the old one left or a fresh one came.
        let neighbours_hold = r.kept().all(|(i, j)| {
            let new_neighbour =
                (i > 0 && r.new_place(i - 1).is_none()) || (j > 0 && r.is_fresh(j - 1));
            !new_neighbour || prev.indexed(i) == self.indexed(j)
        });
        neighbours_hold.then(|| {
            let fresh = self.names_at(r.fresh().iter().copied());
            Arc::new(prev.index.realigned(&r, fresh))
        })
    }

    /// Every service answered for, in order.
    fn services(&self) -> impl Iterator<Item = &Arc<ServiceSpec>> {
        self.known
            .iter()
            .flat_map(|k| k.iter())
            .chain(self.own.iter())
    }

    /// How many services the known list holds.
    fn known_len(&self) -> usize {
        self.known.as_ref().map_or(0, |k| k.len())
    }

    /// The service at `i` of [`NameTable::services`].
    fn service(&self, i: u32) -> Option<&ServiceSpec> {
        let i = usize::try_from(i).ok()?;
        match i.checked_sub(self.known_len()) {
            None => self.known.as_ref()?.get(i).map(|s| &**s),
            Some(j) => self.own.get(j).map(|s| &**s),
        }
    }

    /// Whether the service at `i` has its names in the index: it has addresses to answer
    /// with, and it is its service's first port (one entry a service, however many ports).
    fn indexed(&self, i: u32) -> bool {
        self.service(i).is_some_and(|svc| {
            !svc.addresses.is_empty()
                && (i == 0 || self.service(i - 1).is_none_or(|p| !same_service(p, svc)))
        })
    }

    /// The names of the services at `places` that are indexed.
    fn names_at(&self, places: impl Iterator<Item = u32>) -> NameIndexBuilder {
        let mut index = NameIndexBuilder::with_capacity(places.size_hint().0 * 4);
        for i in places {
            if let Some(svc) = self.service(i).filter(|_| self.indexed(i)) {
                for form in forms(svc, &self.namespace) {
                    index.add(&form, i);
                }
            }
        }
        index
    }

    /// The service answering to `key` (a table key), the first of those that do.
    fn first_answering(&self, key: &str) -> Option<(u32, &ServiceSpec)> {
        self.index.candidates(key).iter().find_map(|i| {
            let svc = self.service(*i)?;
            forms(svc, &self.namespace)
                .iter()
                .any(|f| **f == *key)
                .then_some((*i, svc))
        })
    }

    /// The addresses of `name` (a query's, fully qualified), if it is a mesh name this
    /// sidecar answers.
    pub fn lookup(&self, name: &Name) -> Option<Addresses> {
        if !self.capture {
            return None;
        }
        self.first_answering(&key(name))
            .map(|(_, svc)| addresses(svc))
    }

    /// How many names are answered (the admin dump).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no name is answered.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Every name and its addresses, sorted (the admin dump and tests).
    pub fn entries(&self) -> Vec<(String, Addresses)> {
        let mut v = Vec::new();
        for (i, svc) in self.services().enumerate() {
            let Ok(i) = u32::try_from(i) else { break };
            for form in forms(svc, &self.namespace) {
                if self.first_answering(&form).is_some_and(|(at, _)| at == i) {
                    v.push((format!("{form}."), addresses(svc)));
                }
            }
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        v
    }
}

/// The A and AAAA answers of `svc`: its addresses, each once.
fn addresses(svc: &ServiceSpec) -> Addresses {
    let mut addrs = Addresses::default();
    for ip in &svc.addresses {
        match ip {
            IpAddr::V4(v4) if !addrs.v4.contains(v4) => addrs.v4.push(*v4),
            IpAddr::V6(v6) if !addrs.v6.contains(v6) => addrs.v6.push(*v6),
            _ => {}
        }
    }
    addrs
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

    #[test]
    fn a_plain_name_is_keyed_as_the_dns_parser_keys_it() {
        let long_label = "a".repeat(63);
        let too_long_label = "a".repeat(64);
        let name_253 = [
            &*"b".repeat(61),
            &*"c".repeat(63),
            &*"d".repeat(63),
            &*"e".repeat(63),
        ]
        .join(".");
        let name_254 = format!("x{name_253}");
        let cases = [
            "reviews",
            "reviews.shop",
            "reviews.shop.svc",
            "reviews.shop.svc.cluster.local",
            "reviews.shop.svc.cluster.local.",
            "api-v2.example.com",
            "-leading.example",
            "trailing-.example",
            "123.456",
            "10.96.0.1",
            "a..b",
            ".",
            "",
            ".leading.dot",
            "under_score.example",
            "*.example.com",
            "sp ace.example",
            &long_label,
            &too_long_label,
            &name_253,
            &name_254,
        ];
        for form in cases {
            let parsed = Name::from_ascii(form).ok().map(|n| key(&n));
            assert_eq!(key_of(form), parsed, "{form:?}");
        }
    }
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

    /// The table of `svcs` alone (no known list).
    pub(crate) fn table_of(svcs: &[ServiceSpec], ns: &str, capture: bool) -> NameTable {
        NameTable::build(
            None,
            svcs.iter().cloned().map(Arc::new).collect(),
            ns,
            capture,
            None,
        )
    }

    fn q(name: &str) -> Name {
        Name::from_ascii(format!("{name}.")).unwrap_or_default()
    }

    fn v4(t: &NameTable, name: &str) -> Option<Vec<Ipv4Addr>> {
        t.lookup(&q(name)).map(|a| a.v4)
    }

    #[test]
    fn the_index_is_kept_while_names_stay_and_carried_when_services_come_and_go() {
        let mut svcs: Vec<Arc<ServiceSpec>> = vec![
            Arc::new(service(
                "reviews.shop.svc.cluster.local",
                "shop",
                &["240.240.0.7"],
            )),
            Arc::new(service(
                "cart.other.svc.cluster.local",
                "other",
                &["240.240.0.8"],
            )),
        ];
        let known: ServiceList = Arc::new(svcs.clone());
        let first = Arc::new(NameTable::build(Some(&known), vec![], "shop", true, None));
        let same = NameTable::build_or_keep(Some(&known), vec![], "shop", true, Some(&first));
        assert!(
            Arc::ptr_eq(&same, &first),
            "the same inputs: the same table"
        );
        // What DNS does not read (endpoints, awaiting a fetch) keeps the index.
        Arc::make_mut(&mut svcs[0]).awaiting = true;
        let pushed: ServiceList = Arc::new(svcs.clone());
        let kept = NameTable::build_or_keep(Some(&pushed), vec![], "shop", true, Some(&first));
        assert!(!Arc::ptr_eq(&kept, &first) && Arc::ptr_eq(&kept.index, &first.index));
        assert!(
            Arc::ptr_eq(kept.known.as_ref().expect("known"), &pushed),
            "the table holds the new list, not the old one"
        );
        // A new address answers at once; the names lead where they led.
        Arc::make_mut(&mut svcs[1]).addresses = vec!["240.240.0.9".parse().unwrap()];
        let pushed: ServiceList = Arc::new(svcs.clone());
        let moved = NameTable::build_or_keep(Some(&pushed), vec![], "shop", true, Some(&kept));
        assert!(Arc::ptr_eq(&moved.index, &first.index));
        assert_eq!(
            v4(&moved, "cart.other.svc.cluster.local"),
            Some(vec![Ipv4Addr::new(240, 240, 0, 9)])
        );
        let elsewhere =
            NameTable::build_or_keep(Some(&pushed), vec![], "other", true, Some(&moved));
        assert!(
            !Arc::ptr_eq(&elsewhere.index, &moved.index),
            "short names follow the namespace"
        );
        assert_eq!(
            v4(&elsewhere, "cart"),
            Some(vec![Ipv4Addr::new(240, 240, 0, 9)])
        );
        assert_eq!(v4(&elsewhere, "reviews"), None);
        // A service of the proxy's own, after the known list.
        let own = Arc::new(service("pay.example.com", "shop", &["10.9.9.9"]));
        let both = NameTable::build_or_keep(Some(&pushed), vec![own], "shop", true, Some(&moved));
        assert_eq!(
            v4(&both, "pay.example.com"),
            Some(vec![Ipv4Addr::new(10, 9, 9, 9)])
        );
        assert_eq!(
            v4(&both, "reviews"),
            Some(vec![Ipv4Addr::new(240, 240, 0, 7)])
        );
        assert_eq!(both.len(), moved.len() + 1);
    }

    #[test]
    fn services_added_and_dropped_carry_the_index_and_it_answers_as_one_built_whole() {
        let svc = |i: u32| {
            Arc::new(service(
                &format!("s{i:02}.shop.svc.cluster.local"),
                "shop",
                &[&format!("240.240.1.{i}")],
            ))
        };
        let old: Vec<_> = (0..40).map(svc).collect();
        let first = NameTable::build(Some(&Arc::new(old.clone())), vec![], "shop", true, None);
        // s00 leaves, s10a comes, s15 changes its name.
        let mut new = old.clone();
        new.remove(0);
        let mut added = service("s10a.shop.svc.cluster.local", "shop", &["240.240.2.1"]);
        added.aliases = vec!["ten-a.example".into()];
        new.insert(10, Arc::new(added));
        new[15] = Arc::new(service(
            "t15.shop.svc.cluster.local",
            "shop",
            &["240.240.1.15"],
        ));
        let new: ServiceList = Arc::new(new);
        let carried = NameTable::build(Some(&new), vec![], "shop", true, Some(&first));
        let whole = NameTable::build(Some(&new), vec![], "shop", true, None);
        assert!(!Arc::ptr_eq(&carried.index, &first.index));
        assert_eq!(carried.entries(), whole.entries());
        assert_eq!(carried.len(), whole.len());
        assert_eq!(v4(&carried, "s00"), None, "s00 left");
        assert_eq!(
            v4(&carried, "ten-a.example"),
            Some(vec![Ipv4Addr::new(240, 240, 2, 1)])
        );
        assert_eq!(
            v4(&carried, "t15.shop"),
            Some(vec![Ipv4Addr::new(240, 240, 1, 15)])
        );
        assert_eq!(v4(&carried, "s15.shop"), None);
        assert_eq!(
            v4(&carried, "s19"),
            Some(vec![Ipv4Addr::new(240, 240, 1, 19)])
        );
    }

    #[test]
    fn a_port_left_behind_by_its_service_s_first_port_still_answers() {
        // One service on two ports (its names indexed once, at the first), then others.
        let port = |p: u16| {
            let mut s = service("multi.shop.svc.cluster.local", "shop", &["240.240.3.1"]);
            s.port = p;
            Arc::new(s)
        };
        let mut old = vec![port(80), port(443)];
        old.extend((0..20).map(|i| {
            Arc::new(service(
                &format!("o{i:02}.shop.svc.cluster.local"),
                "shop",
                &["240.240.3.2"],
            ))
        }));
        let first = NameTable::build(Some(&Arc::new(old.clone())), vec![], "shop", true, None);
        // The first port goes and the second stays (the same allocation): it is now the one
        // that carries the service's names.
        let new: ServiceList = Arc::new(old[1..].to_vec());
        let carried = NameTable::build(Some(&new), vec![], "shop", true, Some(&first));
        assert_eq!(
            v4(&carried, "multi"),
            Some(vec![Ipv4Addr::new(240, 240, 3, 1)])
        );
        let whole = NameTable::build(Some(&new), vec![], "shop", true, None);
        assert_eq!(carried.entries(), whole.entries());
    }

    #[test]
    fn a_name_two_services_give_is_the_first_ones_and_listed_once() {
        let mut second = service("api.other.svc.cluster.local", "other", &["240.240.0.2"]);
        second.aliases = vec!["API.shared".into()];
        let mut first = service("web.shop.svc.cluster.local", "shop", &["240.240.0.1"]);
        first.aliases = vec!["api.shared".into()];
        let t = table_of(&[first, second], "shop", true);
        assert_eq!(
            v4(&t, "api.shared"),
            Some(vec![Ipv4Addr::new(240, 240, 0, 1)])
        );
        assert_eq!(
            v4(&t, "api.other"),
            Some(vec![Ipv4Addr::new(240, 240, 0, 2)])
        );
        let names: Vec<String> = t.entries().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "api.other.",
                "api.other.svc.",
                "api.other.svc.cluster.local.",
                "api.shared.",
                "web.",
                "web.shop.",
                "web.shop.svc.",
                "web.shop.svc.cluster.local.",
            ]
        );
        assert_eq!(t.len(), names.len());
    }

    #[test]
    fn cluster_services_answer_their_search_list_forms() {
        let svcs = [
            service("reviews.shop.svc.cluster.local", "shop", &["240.240.0.7"]),
            service("cart.other.svc.cluster.local", "other", &["240.240.0.8"]),
        ];
        let t = table_of(&svcs, "shop", true);
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
        let t = table_of(&[pay], "default", true);
        let a = t.lookup(&q("pay.example.com"));
        assert_eq!(
            a,
            Some(Addresses {
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
        assert!(table_of(&svcs, "default", true).is_empty());
        let svcs = [service("api.example.com", "default", &["240.240.1.1"])];
        let off = table_of(&svcs, "default", false);
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
        let t = table_of(&svcs, "shop", true);
        assert_eq!(t.len(), 4);
        assert_eq!(v4(&t, "reviews"), Some(vec![Ipv4Addr::new(240, 240, 0, 7)]));
    }
}
