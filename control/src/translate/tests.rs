//! Translation tests: a validated config (YAML, as users write it) and hand-made workloads go
//! in; the resources each proxy would receive come out, decoded as the proxy decodes them.

use meshlite_xds_proto::{type_url, v1};
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Held, MeshResources, ProxyView, Versioned};

/// The delta from what a (re)connecting proxy says it holds to `want`.
fn diff(held: &BTreeMap<String, String>, want: &super::ResourceMap) -> super::TypeDelta {
    Held::Initial(held.clone()).diff(want)
}
use crate::model::ConfigSet;
use crate::registry::{Workload, WorkloadPort};

const TD: &str = "cluster.local";

/// One YAML document.
pub(super) fn doc(kind: &str, ns_name: &str, spec: &str) -> String {
    let (ns, name) = ns_name.split_once('/').unwrap_or(("default", ns_name));
    let api = match kind {
        "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication" => {
            "security.istio.io/v1"
        }
        "Telemetry" => "telemetry.istio.io/v1",
        _ => "networking.istio.io/v1",
    };
    format!(
        "---\napiVersion: {api}\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

/// Loads `docs` from a config directory and validates them; any error fails the test.
#[track_caller]
pub(super) fn config(docs: &[String]) -> ConfigSet {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), docs.concat()).unwrap();
    let report = crate::validate::check_dir(dir.path());
    assert!(!report.has_errors(), "{:#?}", report.problems);
    report.set.expect("a valid config")
}

/// The `reviews` workload of namespace `shop` most tests call from or to.
fn reviews_workload() -> Workload {
    workload(
        "reviews",
        "shop",
        "reviews",
        &[("app", "reviews")],
        "10.0.0.1:15006",
    )
}

pub(super) fn workload(
    name: &str,
    ns: &str,
    sa: &str,
    labels: &[(&str, &str)],
    addr: &str,
) -> Workload {
    Workload {
        key: format!("{name}.{ns}@{addr}"),
        name: name.into(),
        namespace: ns.into(),
        service_account: sa.into(),
        identity: format!("spiffe://{TD}/ns/{ns}/sa/{sa}"),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        address: addr.parse().unwrap(),
        ports: vec![WorkloadPort {
            port: 9080,
            protocol: "http".into(),
            target_port: Some(19080),
        }],
        locality: Default::default(),
    }
}

pub(super) fn mesh(config: ConfigSet, workloads: &[Workload]) -> MeshResources {
    MeshResources::build(
        Arc::new(config),
        workloads,
        &["ROOT PEM".to_string()],
        TD,
        &Default::default(),
    )
}

/// Decodes resource `name` of type `t` from a view.
#[track_caller]
pub(super) fn decode<M: Message + Default>(view: &ProxyView, t: &str, name: &str) -> M {
    let r = view.get(t).and_then(|m| m.get(name)).unwrap_or_else(|| {
        panic!(
            "{t} {name} missing; have {:?}",
            view.get(t).map(|m| m.keys())
        )
    });
    M::decode(r.body.value.as_slice()).expect("decodes")
}

/// The MeshConfig a sidecar (`cart` in `shop`) receives when the config holds `mesh_config`.
#[track_caller]
fn pushed_mesh_config(mesh_config: String) -> v1::MeshConfig {
    let caller = workload("cart", "shop", "cart", &[("app", "cart")], "10.0.0.2:15006");
    let m = mesh(config(&[mesh_config]), std::slice::from_ref(&caller));
    decode(&m.view_for(&caller), type_url::MESH_CONFIG, "mesh")
}

fn version(view: &ProxyView, t: &str, name: &str) -> String {
    view[t][name].version.clone()
}

fn inbound(view: &ProxyView) -> v1::InboundPolicy {
    decode(view, type_url::INBOUND_POLICY, "inbound")
}

const REVIEWS: &str = "reviews.shop.svc.cluster.local";

fn reviews_dr(ns: &str, subsets: &[&str]) -> String {
    let subsets: Vec<String> = subsets
        .iter()
        .map(|s| format!("{{name: {s}, labels: {{version: {s}}}}}"))
        .collect();
    doc(
        "DestinationRule",
        &format!("{ns}/reviews"),
        &format!(
            "{{host: reviews.shop.svc.cluster.local, subsets: [{}]}}",
            subsets.join(", ")
        ),
    )
}

#[test]
fn workloads_with_one_app_label_become_one_service_with_every_port_identity_and_endpoint() {
    let mut v1w = workload(
        "reviews-v1",
        "shop",
        "reviews",
        &[("app", "reviews"), ("version", "v1")],
        "10.0.0.1:15006",
    );
    v1w.locality = ["eu".into(), "eu-west-1a".into(), "rack4".into()];
    let mut v2w = workload(
        "reviews-v2",
        "shop",
        "reviews-v2",
        &[("app", "reviews"), ("version", "v2")],
        "10.0.0.2:15006",
    );
    v2w.ports.push(WorkloadPort {
        port: 9090,
        protocol: "grpc".into(),
        target_port: None,
    });
    // Same app label, other namespace: another service.
    let other_ns = workload(
        "reviews",
        "staging",
        "reviews",
        &[("app", "reviews")],
        "10.0.1.1:15006",
    );
    // No served port: a pure client, not an endpoint.
    let mut client = workload(
        "load",
        "shop",
        "load",
        &[("app", "reviews")],
        "10.0.0.9:15006",
    );
    client.ports.clear();
    let m = mesh(ConfigSet::default(), &[v1w, v2w, other_ns, client.clone()]);
    let view = m.view_for(&client);

    let services = &view[type_url::SERVICE];
    assert_eq!(
        services.keys().collect::<Vec<_>>(),
        [REVIEWS, "reviews.staging.svc.cluster.local"]
    );
    let svc: v1::Service = decode(&view, type_url::SERVICE, REVIEWS);
    assert_eq!(
        (svc.name.as_str(), svc.namespace.as_str()),
        ("reviews", "shop")
    );
    let ports: Vec<(u32, i32)> = svc.ports.iter().map(|p| (p.number, p.protocol)).collect();
    assert_eq!(
        ports,
        [
            (9080, v1::Protocol::Http as i32),
            (9090, v1::Protocol::Grpc as i32)
        ]
    );
    assert_eq!(
        svc.identities,
        [
            "spiffe://cluster.local/ns/shop/sa/reviews",
            "spiffe://cluster.local/ns/shop/sa/reviews-v2"
        ]
    );

    let eps: v1::Endpoints = decode(&view, type_url::ENDPOINTS, REVIEWS);
    assert_eq!(
        eps.endpoints.len(),
        2,
        "one endpoint per workload, not per port"
    );
    let first = &eps.endpoints[0];
    assert_eq!(first.address, "10.0.0.1:15006");
    assert_eq!(first.identity, "spiffe://cluster.local/ns/shop/sa/reviews");
    assert_eq!(first.labels.get("version").map(String::as_str), Some("v1"));
    assert_eq!(first.workload, "reviews-v1");
    assert_eq!(
        first.locality,
        Some(v1::Locality {
            region: "eu".into(),
            zone: "eu-west-1a".into(),
            sub_zone: "rack4".into()
        })
    );
    assert_eq!(eps.endpoints[1].address, "10.0.0.2:15006");
    assert_eq!(
        eps.endpoints[1].labels.get("version").map(String::as_str),
        Some("v2")
    );
}

#[test]
fn a_weighted_virtual_service_becomes_a_route_table_with_full_hosts_and_weights() {
    let cfg = config(&[
        doc(
            "VirtualService",
            "shop/reviews",
            "{hosts: [reviews], http: [{route: [\
               {destination: {host: reviews, subset: v1}, weight: 90}, \
               {destination: {host: reviews, subset: v2}, weight: 10}]}]}",
        ),
        reviews_dr("shop", &["v1", "v2"]),
    ]);
    let a = workload("a", "shop", "a", &[("app", "a")], "10.0.0.1:15006");
    let b = workload("b", "other", "b", &[("app", "b")], "10.0.0.2:15006");
    let m = mesh(cfg, &[a.clone(), b.clone()]);
    let view = m.view_for(&a);
    let table: v1::RouteTable = decode(&view, type_url::ROUTE_TABLE, REVIEWS);
    assert_eq!(table.hostname, REVIEWS);
    assert_eq!(table.origin, "shop/reviews");
    assert_eq!(table.http.len(), 1);
    let dests: Vec<(&str, &str, u32)> = table.http[0]
        .route
        .iter()
        .map(|d| (d.host.as_str(), d.subset.as_str(), d.weight))
        .collect();
    assert_eq!(dests, [(REVIEWS, "v1", 90), (REVIEWS, "v2", 10)]);
    // Nothing about it depends on the caller: every proxy gets the same resource.
    assert!(Arc::ptr_eq(
        &view[type_url::ROUTE_TABLE][REVIEWS],
        &m.view_for(&b)[type_url::ROUTE_TABLE][REVIEWS]
    ));
}

#[test]
fn source_label_matches_are_kept_only_for_the_callers_they_name() {
    let cfg = config(&[
        doc(
            "VirtualService",
            "shop/reviews",
            "{hosts: [reviews], http: [\
               {match: [{sourceLabels: {app: productpage}, uri: {prefix: /api}}], \
                route: [{destination: {host: reviews, subset: v2}}]}, \
               {route: [{destination: {host: reviews, subset: v1}}]}]}",
        ),
        reviews_dr("shop", &["v1", "v2"]),
    ]);
    let productpage = workload(
        "productpage",
        "shop",
        "productpage",
        &[("app", "productpage")],
        "10.0.0.1:15006",
    );
    let ratings = workload(
        "ratings",
        "shop",
        "ratings",
        &[("app", "ratings")],
        "10.0.0.2:15006",
    );
    let m = mesh(cfg, &[productpage.clone(), ratings.clone()]);

    let pv = m.view_for(&productpage);
    let named: v1::RouteTable = decode(&pv, type_url::ROUTE_TABLE, REVIEWS);
    assert_eq!(named.http.len(), 2);
    assert_eq!(named.http[0].matches.len(), 1);
    assert_eq!(named.http[0].route[0].subset, "v2");
    assert_eq!(named.http[1].route[0].subset, "v1");

    let rv = m.view_for(&ratings);
    let other: v1::RouteTable = decode(&rv, type_url::ROUTE_TABLE, REVIEWS);
    assert_eq!(
        other.http.len(),
        1,
        "the rule naming productpage is dropped"
    );
    assert!(other.http[0].matches.is_empty());
    assert_eq!(other.http[0].route[0].subset, "v1");

    assert_ne!(
        version(&pv, type_url::ROUTE_TABLE, REVIEWS),
        version(&rv, type_url::ROUTE_TABLE, REVIEWS),
        "per-caller tables are different resources"
    );
}

#[test]
fn tcp_rules_are_pushed_with_their_ports_subnets_and_weights_per_caller() {
    let cfg = config(&[
        doc(
            "VirtualService",
            "shop/reviews",
            "{hosts: [reviews], tcp: [\
               {match: [{port: 9090, destinationSubnets: [10.1.0.0/16]}, {sourceLabels: {app: productpage}}], \
                route: [{destination: {host: reviews, subset: v2, port: {number: 9090}}, weight: 100}, \
                        {destination: {host: reviews, subset: v1}, weight: 0}]}, \
               {match: [{gateways: [ingress]}], route: [{destination: {host: reviews, subset: v2}}]}, \
               {route: [{destination: {host: reviews, subset: v1}}]}]}",
        ),
        reviews_dr("shop", &["v1", "v2"]),
    ]);
    let productpage = workload(
        "productpage",
        "shop",
        "productpage",
        &[("app", "productpage")],
        "10.0.0.1:15006",
    );
    let ratings = workload(
        "ratings",
        "shop",
        "ratings",
        &[("app", "ratings")],
        "10.0.0.2:15006",
    );
    let m = mesh(cfg, &[productpage.clone(), ratings.clone()]);
    let pushed: v1::RouteTable = decode(&m.view_for(&productpage), type_url::ROUTE_TABLE, REVIEWS);
    assert!(pushed.http.is_empty());
    // The rule matching only `gateways: [ingress]` is not for sidecars.
    assert_eq!(pushed.tcp.len(), 2, "{:#?}", pushed.tcp);
    let first = &pushed.tcp[0];
    assert_eq!(
        first.matches.len(),
        2,
        "productpage qualifies for both matches"
    );
    assert_eq!(first.matches[0].port, 9090);
    assert_eq!(first.matches[0].destination_subnets, ["10.1.0.0/16"]);
    let dests: Vec<(&str, &str, u32, u32)> = first
        .route
        .iter()
        .map(|d| (d.host.as_str(), d.subset.as_str(), d.port, d.weight))
        .collect();
    assert_eq!(dests, [(REVIEWS, "v2", 9090, 100), (REVIEWS, "v1", 0, 0)]);
    assert!(pushed.tcp[1].matches.is_empty());

    let other: v1::RouteTable = decode(&m.view_for(&ratings), type_url::ROUTE_TABLE, REVIEWS);
    assert_eq!(
        other.tcp[0].matches.len(),
        1,
        "the sourceLabels match is dropped for ratings"
    );
}

#[test]
fn a_destination_rule_in_the_callers_namespace_wins_over_the_services() {
    let cfg = config(&[
        reviews_dr("shop", &["v1", "v2"]),
        reviews_dr("frontend", &["v3"]),
    ]);
    let in_frontend = workload(
        "web",
        "frontend",
        "web",
        &[("app", "web")],
        "10.0.0.1:15006",
    );
    let in_shop = workload("cart", "shop", "cart", &[("app", "cart")], "10.0.0.2:15006");
    let elsewhere = workload(
        "batch",
        "jobs",
        "batch",
        &[("app", "batch")],
        "10.0.0.3:15006",
    );
    let m = mesh(
        cfg,
        &[in_frontend.clone(), in_shop.clone(), elsewhere.clone()],
    );

    let p: v1::DestinationPolicy = decode(
        &m.view_for(&in_frontend),
        type_url::DESTINATION_POLICY,
        REVIEWS,
    );
    assert_eq!(
        p.origin, "frontend/reviews",
        "the caller's namespace comes first"
    );
    assert_eq!(p.subsets.len(), 1);
    assert_eq!(p.subsets[0].name, "v3");

    for caller in [&in_shop, &elsewhere] {
        let p: v1::DestinationPolicy =
            decode(&m.view_for(caller), type_url::DESTINATION_POLICY, REVIEWS);
        assert_eq!(
            p.origin, "shop/reviews",
            "{}: the service's namespace",
            caller.name
        );
        assert_eq!(p.hostname, REVIEWS);
        let subsets: Vec<(&str, Option<&str>)> = p
            .subsets
            .iter()
            .map(|s| (s.name.as_str(), s.labels.get("version").map(String::as_str)))
            .collect();
        assert_eq!(subsets, [("v1", Some("v1")), ("v2", Some("v2"))]);
    }
}

#[test]
fn peer_authentication_resolves_mesh_then_namespace_then_workload() {
    let cfg = config(&[
        doc(
            "PeerAuthentication",
            "istio-system/default",
            "{mtls: {mode: STRICT}}",
        ),
        doc(
            "PeerAuthentication",
            "legacy/default",
            "{mtls: {mode: PERMISSIVE}}",
        ),
        doc(
            "PeerAuthentication",
            "legacy/db",
            "{selector: {matchLabels: {app: db}}, mtls: {mode: UNSET}, \
              portLevelMtls: {5432: {mode: DISABLE}}}",
        ),
        doc(
            "PeerAuthentication",
            "strictish/default",
            "{mtls: {mode: UNSET}}",
        ),
    ]);
    let db = workload("db", "legacy", "db", &[("app", "db")], "10.0.0.1:15006");
    let web = workload("web", "legacy", "web", &[("app", "web")], "10.0.0.2:15006");
    let shop = workload("cart", "shop", "cart", &[("app", "cart")], "10.0.0.3:15006");
    let unset = workload("x", "strictish", "x", &[("app", "x")], "10.0.0.4:15006");
    let m = mesh(cfg, &[]);

    let p = inbound(&m.view_for(&db));
    assert_eq!(
        p.mtls_mode,
        v1::MtlsMode::Permissive as i32,
        "UNSET inherits the namespace"
    );
    assert_eq!(
        p.port_mtls,
        BTreeMap::from([(5432, v1::MtlsMode::Disable as i32)])
    );

    let p = inbound(&m.view_for(&web));
    assert_eq!(p.mtls_mode, v1::MtlsMode::Permissive as i32);
    assert!(
        p.port_mtls.is_empty(),
        "port-level modes only from the workload's own policy"
    );

    let p = inbound(&m.view_for(&shop));
    assert_eq!(
        p.mtls_mode,
        v1::MtlsMode::Strict as i32,
        "the mesh-wide policy"
    );
    let p = inbound(&m.view_for(&unset));
    assert_eq!(
        p.mtls_mode,
        v1::MtlsMode::Strict as i32,
        "namespace UNSET inherits the mesh"
    );

    // Nothing configured: PERMISSIVE, as Istio's default.
    let p = inbound(&mesh(ConfigSet::default(), &[]).view_for(&shop));
    assert_eq!(p.mtls_mode, v1::MtlsMode::Permissive as i32);
    assert!(p.authorization.is_empty());
}

#[test]
fn authorization_policies_apply_by_namespace_and_selector_with_accounts_as_principals() {
    let cfg = config(&[
        doc(
            "AuthorizationPolicy",
            "istio-system/deny-evil",
            "{action: DENY, rules: [{from: [{source: {namespaces: [evil]}}]}]}",
        ),
        doc(
            "AuthorizationPolicy",
            "shop/reviews-callers",
            "{selector: {matchLabels: {app: reviews}}, action: ALLOW, rules: [{from: [{source: \
               {serviceAccounts: [productpage, ops/debugger]}}], \
               to: [{operation: {methods: [GET]}}]}]}",
        ),
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: trial, namespace: shop, annotations: {istio.io/dry-run: \"true\"}}\n\
         spec: {action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}\n"
            .to_string(),
        doc(
            "AuthorizationPolicy",
            "other/everything",
            "{action: ALLOW, rules: [{}]}",
        ),
    ]);
    let reviews = reviews_workload();
    let cart = workload("cart", "shop", "cart", &[("app", "cart")], "10.0.0.2:15006");
    let far = workload("far", "faraway", "far", &[("app", "far")], "10.0.0.3:15006");
    let m = mesh(cfg, &[]);

    let origins = |w: &Workload| -> Vec<String> {
        inbound(&m.view_for(w))
            .authorization
            .into_iter()
            .map(|a| a.origin)
            .collect()
    };
    assert_eq!(
        origins(&reviews),
        [
            "istio-system/deny-evil",
            "shop/reviews-callers",
            "shop/trial"
        ]
    );
    assert_eq!(
        origins(&cart),
        ["istio-system/deny-evil", "shop/trial"],
        "selector filters"
    );
    assert_eq!(
        origins(&far),
        ["istio-system/deny-evil"],
        "root namespace applies everywhere"
    );

    let p = inbound(&m.view_for(&reviews));
    let allow = &p.authorization[1];
    assert_eq!(allow.action, v1::authorization_policy::Action::Allow as i32);
    assert!(!allow.dry_run);
    assert_eq!(
        allow.rules[0].from[0].principals,
        [
            "cluster.local/ns/shop/sa/productpage",
            "cluster.local/ns/ops/sa/debugger"
        ]
    );
    assert_eq!(allow.rules[0].to[0].methods, ["GET"]);
    let trial = &p.authorization[2];
    assert!(trial.dry_run, "istio.io/dry-run: \"true\"");
    assert_eq!(trial.action, v1::authorization_policy::Action::Deny as i32);
    assert_eq!(
        p.authorization[0].action,
        v1::authorization_policy::Action::Deny as i32
    );
}

#[test]
fn mesh_internal_static_service_entries_become_services_with_their_endpoints() {
    let cfg = config(&[
        doc(
            "ServiceEntry",
            "data/db",
            "{hosts: [db.data.internal], location: MESH_INTERNAL, resolution: STATIC, \
              ports: [{number: 5432, name: pg, protocol: TCP}], \
              endpoints: [\
                {address: 10.1.0.1, serviceAccount: db, labels: {role: primary}, locality: eu/west/a}, \
                {address: 'fd00::1', ports: {pg: 6432}, serviceAccount: db-replica}]}",
        ),
        doc(
            "ServiceEntry",
            "data/api",
            "{hosts: [api.example.com], location: MESH_EXTERNAL, resolution: STATIC, \
              ports: [{number: 443, name: https, protocol: TLS}], endpoints: [{address: 1.2.3.4}]}",
        ),
    ]);
    let me = workload("app", "data", "app", &[("app", "app")], "10.0.0.1:15006");
    let m = mesh(cfg, &[]);
    let view = m.view_for(&me);
    let api: v1::Service = decode(&view, type_url::SERVICE, "api.example.com");
    assert!(api.mesh_external && api.identities.is_empty());
    let svc: v1::Service = decode(&view, type_url::SERVICE, "db.data.internal");
    assert!(!svc.mesh_external);
    assert_eq!(svc.namespace, "data");
    assert_eq!(svc.ports.len(), 1);
    assert_eq!(svc.ports[0].number, 5432);
    assert_eq!(svc.ports[0].protocol, v1::Protocol::Tcp as i32);
    assert_eq!(
        svc.identities,
        [
            "spiffe://cluster.local/ns/data/sa/db",
            "spiffe://cluster.local/ns/data/sa/db-replica"
        ]
    );
    let eps: v1::Endpoints = decode(&view, type_url::ENDPOINTS, "db.data.internal");
    let got: Vec<(&str, &str)> = eps
        .endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.identity.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("10.1.0.1:5432", "spiffe://cluster.local/ns/data/sa/db"),
            (
                "[fd00::1]:6432",
                "spiffe://cluster.local/ns/data/sa/db-replica"
            )
        ]
    );
    assert_eq!(
        eps.endpoints[0].labels.get("role").map(String::as_str),
        Some("primary")
    );
    assert_eq!(
        eps.endpoints[0].locality.as_ref().map(|l| l.zone.as_str()),
        Some("west")
    );
}

#[test]
fn a_named_part_is_the_held_map_itself_while_its_names_do_not_change() {
    let r = |n: u32| {
        Versioned::of(&v1::TrustBundle {
            roots_pem: vec![n.to_string()],
        })
    };
    let all: super::ResourceMap = Arc::new(
        [("a", 1), ("b", 2), ("c", 3)]
            .map(|(k, v)| (k.to_string(), r(v)))
            .into(),
    );
    let names: std::collections::BTreeSet<String> = ["a", "c", "missing"].map(String::from).into();
    let part = Held::Initial(BTreeMap::new()).part_of(&all, &names);
    assert_eq!(part.keys().collect::<Vec<_>>(), ["a", "c"]);
    let mut held = Held::Sent(part.clone());

    // `b` changes (a new map, as a new generation makes): the part is the same map.
    let mut next = (*all).clone();
    next.insert("b".into(), r(20));
    let next: super::ResourceMap = Arc::new(next);
    assert!(held.is(&held.part_of(&next, &names)));
    // `c` changes, or `missing` appears: a new part, with just that difference.
    let next: super::ResourceMap = Arc::new(
        [("a", 1), ("c", 30)]
            .map(|(k, v)| (k.to_string(), r(v)))
            .into(),
    );
    let changed = held.part_of(&next, &names);
    assert!(!held.is(&changed));
    assert_eq!(held.diff(&changed).upserts.len(), 1);
    let mut appeared = (*all).clone();
    appeared.insert("missing".into(), r(4));
    let appeared = held.part_of(&Arc::new(appeared), &names);
    assert_eq!(appeared.len(), 3);

    // A name forgotten is no longer held: neither removed nor compared any more.
    held.forget(&["a".to_string()].into());
    assert!(held.removals(&Arc::new(BTreeMap::new())) == ["c"]);
}

#[test]
fn diff_sends_only_what_changed_and_lists_removals() {
    let r = |n: u32| {
        Versioned::of(&v1::TrustBundle {
            roots_pem: vec![n.to_string()],
        })
    };
    let want: super::ResourceMap =
        Arc::new([("a".to_string(), r(1)), ("b".to_string(), r(2))].into());
    let first = diff(&BTreeMap::new(), &want);
    assert_eq!(first.upserts.len(), 2);
    assert!(first.removals.is_empty());

    let mut held: BTreeMap<String, String> = want
        .iter()
        .map(|(n, v)| (n.clone(), v.version.clone()))
        .collect();
    assert_eq!(
        diff(&held, &want),
        super::TypeDelta::default(),
        "in sync: nothing"
    );

    held.insert("gone".into(), "1234".into());
    held.insert("b".into(), "stale".into());
    let d = diff(&held, &want);
    assert_eq!(
        d.upserts
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    assert_eq!(d.removals, ["gone"]);
}

#[test]
fn a_resource_version_changes_exactly_when_its_content_does() {
    let vs = |w1: u32| {
        doc(
            "VirtualService",
            "shop/reviews",
            &format!(
                "{{hosts: [reviews], http: [{{route: [\
                   {{destination: {{host: reviews, subset: v1}}, weight: {w1}}}, \
                   {{destination: {{host: reviews, subset: v2}}, weight: {}}}]}}]}}",
                100 - w1
            ),
        )
    };
    let dr = reviews_dr("shop", &["v1", "v2"]);
    let w = workload(
        "reviews",
        "shop",
        "reviews",
        &[("app", "reviews")],
        "10.0.0.1:15006",
    );
    let before = mesh(config(&[vs(90), dr.clone()]), std::slice::from_ref(&w)).view_for(&w);
    let again = mesh(config(&[vs(90), dr.clone()]), std::slice::from_ref(&w)).view_for(&w);
    let after = mesh(config(&[vs(50), dr]), std::slice::from_ref(&w)).view_for(&w);

    for t in type_url::ALL {
        for (name, r) in before[t].iter() {
            assert_eq!(
                r.version, again[t][name].version,
                "{t} {name}: same content"
            );
        }
    }
    assert_ne!(
        version(&before, type_url::ROUTE_TABLE, REVIEWS),
        version(&after, type_url::ROUTE_TABLE, REVIEWS)
    );
    for t in type_url::ALL
        .iter()
        .filter(|t| **t != type_url::ROUTE_TABLE)
    {
        for (name, r) in before[t].iter() {
            assert_eq!(r.version, after[t][name].version, "{t} {name}: untouched");
        }
    }
    // And a delta from `before` to `after` carries exactly the route table.
    let held: BTreeMap<String, String> = before[type_url::ROUTE_TABLE]
        .iter()
        .map(|(n, r)| (n.clone(), r.version.clone()))
        .collect();
    let d = diff(&held, &after[type_url::ROUTE_TABLE]);
    assert_eq!(d.upserts.len(), 1);
    assert_eq!(d.upserts[0].0, REVIEWS);
    // The same from a map sent earlier: only the route table, nothing removed.
    let sent = Held::Sent(before[type_url::ROUTE_TABLE].clone());
    let d = sent.diff(&after[type_url::ROUTE_TABLE]);
    assert_eq!(d.upserts.len(), 1);
    assert!(d.removals.is_empty());
    // A map that is the one already sent costs nothing.
    assert_eq!(
        sent.diff(&before[type_url::ROUTE_TABLE]),
        super::TypeDelta::default()
    );
}

#[test]
fn proxies_share_the_maps_of_one_generation() {
    let w = |name: &str, ns: &str| crate::registry::Workload {
        key: name.into(),
        name: name.into(),
        namespace: ns.into(),
        service_account: name.into(),
        identity: format!("spiffe://cluster.local/ns/{ns}/sa/{name}"),
        labels: Default::default(),
        address: "127.0.0.1:1".parse().unwrap(),
        ports: vec![],
        locality: Default::default(),
    };
    let m = mesh(ConfigSet::default(), &[]);
    let (a, b, c) = (w("a", "shop"), w("b", "shop"), w("c", "other"));
    let (va, vb, vc) = (m.view_for(&a), m.view_for(&b), m.view_for(&c));
    for t in [
        type_url::SERVICE,
        type_url::ENDPOINTS,
        type_url::ROUTE_TABLE,
    ] {
        assert!(
            Arc::ptr_eq(&va[t], &vb[t]) && Arc::ptr_eq(&va[t], &vc[t]),
            "{t}"
        );
    }
    // Destination policies are shared per caller namespace.
    assert!(Arc::ptr_eq(
        &va[type_url::DESTINATION_POLICY],
        &vb[type_url::DESTINATION_POLICY]
    ));
}

#[test]
fn the_same_content_encodes_to_the_same_version_whatever_the_map_order() {
    // Maps (labels here) encode in key order: a version that followed a hash map's random
    // iteration order would change on every translation and resend every endpoint.
    let labels = [
        ("app", "reviews"),
        ("version", "v1"),
        ("team", "books"),
        ("tier", "backend"),
        ("zone", "west"),
        ("track", "stable"),
    ];
    let w = workload("reviews", "shop", "reviews", &labels, "10.0.0.1:15006");
    let mut reversed = labels;
    reversed.reverse();
    let w2 = workload("reviews", "shop", "reviews", &reversed, "10.0.0.1:15006");
    let first = mesh(config(&[]), std::slice::from_ref(&w)).view_for(&w);
    for _ in 0..8 {
        let again = mesh(config(&[]), std::slice::from_ref(&w2)).view_for(&w2);
        for t in type_url::ALL {
            for (name, r) in first[t].iter() {
                assert_eq!(r.version, again[t][name].version, "{t} {name}");
            }
        }
    }
}

#[test]
fn a_new_generation_with_unchanged_content_shares_the_previous_maps() {
    let w = workload(
        "productpage",
        "shop",
        "productpage",
        &[("app", "productpage")],
        "10.0.0.9:15006",
    );
    let docs = [reviews_dr("shop", &["v1", "v2"])];
    let first = mesh(config(&docs), std::slice::from_ref(&w));
    let before = first.view_for(&w);
    let next = mesh(config(&docs), std::slice::from_ref(&w)).sharing_with(&first);
    let after = next.view_for(&w);
    for t in [
        type_url::SERVICE,
        type_url::ENDPOINTS,
        type_url::ROUTE_TABLE,
        type_url::DESTINATION_POLICY,
        type_url::TRUST_BUNDLE,
    ] {
        assert!(Arc::ptr_eq(&before[t], &after[t]), "{t}: same map");
    }
    assert!(!before[type_url::DESTINATION_POLICY].is_empty());
}

#[test]
fn mesh_external_entries_are_pushed_without_identities_and_dns_names_stay_names() {
    let cfg = config(&[
        doc(
            "ServiceEntry",
            "shop/payments",
            "{hosts: [payments.example.com], resolution: DNS, \
              ports: [{number: 80, name: http, protocol: HTTP}], \
              endpoints: [{address: pay-1.example.net, serviceAccount: ignored}, {address: 192.0.2.7}]}",
        ),
        doc(
            "ServiceEntry",
            "shop/maps",
            "{hosts: [maps.example.com], location: MESH_EXTERNAL, resolution: DNS, \
              ports: [{number: 8080, name: http, protocol: HTTP}]}",
        ),
        doc(
            "ServiceEntry",
            "shop/anything",
            "{hosts: [anything.example.com], ports: [{number: 80, name: http, protocol: HTTP}]}",
        ),
    ]);
    let me = workload("app", "shop", "app", &[("app", "app")], "10.0.0.1:15006");
    let view = mesh(cfg, &[]).view_for(&me);
    let pay: v1::Service = decode(&view, type_url::SERVICE, "payments.example.com");
    assert!(
        pay.mesh_external,
        "location defaults to MESH_EXTERNAL, as in Istio"
    );
    assert!(pay.identities.is_empty());
    let eps: v1::Endpoints = decode(&view, type_url::ENDPOINTS, "payments.example.com");
    let got: Vec<(&str, &str)> = eps
        .endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.identity.as_str()))
        .collect();
    assert_eq!(got, [("pay-1.example.net:80", ""), ("192.0.2.7:80", "")]);
    // DNS without endpoints: the host itself.
    let eps: v1::Endpoints = decode(&view, type_url::ENDPOINTS, "maps.example.com");
    assert_eq!(eps.endpoints.len(), 1);
    assert_eq!(eps.endpoints[0].address, "maps.example.com:8080");
    // resolution NONE (the default) has nothing to send to: kept, not pushed.
    assert!(!view[type_url::SERVICE].contains_key("anything.example.com"));
}

#[test]
fn retry_budgets_are_pushed_with_istios_defaults_and_the_annotation_parsed() {
    let dr = |annotation: &str, policy: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  \
             name: reviews\n  namespace: shop\n  annotations: {{{annotation}}}\n\
             spec: {{host: {REVIEWS}, trafficPolicy: {policy}, \
             subsets: [{{name: v1, labels: {{version: v1}}, \
             trafficPolicy: {{retryBudget: {{percent: 50, budgetInterval: 2s}}}}}}]}}\n"
        )
    };
    let caller = workload("cart", "shop", "cart", &[("app", "cart")], "10.0.0.2:15006");
    let policy = |annotation: &str, policy: &str| -> v1::DestinationPolicy {
        let m = mesh(
            config(&[dr(annotation, policy)]),
            std::slice::from_ref(&caller),
        );
        decode(&m.view_for(&caller), type_url::DESTINATION_POLICY, REVIEWS)
    };

    let p = policy("", "{retryBudget: {}}");
    let top = p.traffic_policy.and_then(|t| t.retry_budget);
    assert_eq!(
        top,
        Some(v1::ConcurrencyRetryBudget {
            percent: 20.0,
            min_retry_concurrency: 3,
            budget_interval: None,
        }),
        "Istio's defaults filled in"
    );
    let subset = p.subsets[0]
        .traffic_policy
        .as_ref()
        .and_then(|t| t.retry_budget);
    assert_eq!(
        subset,
        Some(v1::ConcurrencyRetryBudget {
            percent: 50.0,
            min_retry_concurrency: 3,
            budget_interval: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0
            }),
        })
    );
    assert_eq!(
        p.rate_retry_budget, None,
        "no annotation: the proxy's default"
    );

    let p = policy("retrybudget.meshlite.io/rate: 'ratio=0.5,ttl=20s'", "{}");
    assert_eq!(
        p.rate_retry_budget,
        Some(v1::RateRetryBudget {
            ratio: 0.5,
            min_per_second: 10,
            ttl: Some(prost_types::Duration {
                seconds: 20,
                nanos: 0
            }),
            disabled: false,
        })
    );
    let p = policy("retrybudget.meshlite.io/rate: 'off'", "{}");
    assert!(p.rate_retry_budget.is_some_and(|b| b.disabled));
}

#[test]
fn warmup_is_pushed_with_istios_defaults_from_either_field() {
    let caller = workload("cart", "shop", "cart", &[("app", "cart")], "10.0.0.2:15006");
    let warmup_of = |lb: &str| {
        let dr = doc(
            "DestinationRule",
            "shop/reviews",
            &format!("{{host: {REVIEWS}, trafficPolicy: {{loadBalancer: {lb}}}}}"),
        );
        let m = mesh(config(&[dr]), std::slice::from_ref(&caller));
        let p: v1::DestinationPolicy =
            decode(&m.view_for(&caller), type_url::DESTINATION_POLICY, REVIEWS);
        p.traffic_policy
            .and_then(|t| t.load_balancer)
            .and_then(|l| l.warmup)
    };
    let secs = |s| {
        Some(prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
    };
    assert_eq!(
        warmup_of("{simple: ROUND_ROBIN, warmupDurationSecs: 30s}"),
        Some(v1::load_balancer::Warmup {
            duration: secs(30),
            minimum_percent: 10.0,
            aggression: 1.0,
        })
    );
    assert_eq!(
        warmup_of("{warmup: {duration: 1m, minimumPercent: 5, aggression: 2}}"),
        Some(v1::load_balancer::Warmup {
            duration: secs(60),
            minimum_percent: 5.0,
            aggression: 2.0,
        })
    );
    assert_eq!(warmup_of("{simple: ROUND_ROBIN}"), None);
}

#[test]
fn request_authentications_reach_the_workloads_they_target_with_key_sets_inline() {
    const INLINE: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"i","x":"AA","y":"AA"}]}"#;
    const FETCHED: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"f","x":"AA","y":"AA"}]}"#;
    let cfg = config(&[
        doc(
            "RequestAuthentication",
            "istio-system/mesh-idp",
            "{jwtRules: [{issuer: 'https://idp.example', jwksUri: 'https://idp.example/keys'}]}",
        ),
        doc(
            "RequestAuthentication",
            "shop/reviews",
            &format!(
                "{{selector: {{matchLabels: {{app: reviews}}}}, jwtRules: [{{issuer: partner, \
                 audiences: [shop], jwks: '{INLINE}', fromHeaders: [{{name: x-jwt, prefix: 'T '}}], \
                 fromParams: [tok], forwardOriginalToken: true, outputPayloadToHeader: x-payload, \
                 outputClaimToHeaders: [{{header: x-tenant, claim: tenant}}], \
                 spaceDelimitedClaims: [roles]}}, \
                 {{issuer: down, jwksUri: 'http://down.example/keys'}}]}}"
            ),
        ),
        doc(
            "RequestAuthentication",
            "shop/gateway-only",
            "{targetRefs: [{kind: Gateway, name: g}], jwtRules: [{issuer: gw, jwksUri: 'https://gw/k'}]}",
        ),
    ]);
    let reviews = reviews_workload();
    let cart = workload("cart", "shop", "cart", &[("app", "cart")], "10.0.0.2:15006");
    let jwks = crate::jwks::ResolvedJwks::from([(
        "https://idp.example/keys".to_string(),
        Arc::from(FETCHED),
    )]);
    let m = MeshResources::build(Arc::new(cfg), &[], &[], TD, &jwks);

    let rules = inbound(&m.view_for(&reviews)).jwt_rules;
    let issuers: Vec<&str> = rules.iter().map(|r| r.issuer.as_str()).collect();
    assert_eq!(
        issuers,
        ["https://idp.example", "partner", "down"],
        "root namespace first; no targetRefs"
    );
    assert_eq!(rules[0].jwks, FETCHED, "the fetched set, inline");
    assert_eq!(rules[0].origin, "istio-system/mesh-idp");
    let partner = &rules[1];
    assert_eq!(partner.jwks, INLINE);
    assert_eq!(
        (partner.origin.as_str(), partner.index),
        ("shop/reviews", 0)
    );
    assert_eq!(partner.audiences, ["shop"]);
    assert_eq!(partner.from_headers[0].name, "x-jwt");
    assert_eq!(partner.from_headers[0].prefix, "T ");
    assert_eq!(partner.from_params, ["tok"]);
    assert!(partner.forward_original_token);
    assert_eq!(partner.output_payload_to_header, "x-payload");
    assert_eq!(partner.output_claim_to_headers[0].claim, "tenant");
    assert_eq!(partner.space_delimited_claims, ["roles"]);
    assert_eq!(
        rules[2].jwks,
        crate::jwks::FAIL_CLOSED_JWKS,
        "not fetched: fail closed"
    );
    assert_eq!(rules[2].index, 1);

    let rules = inbound(&m.view_for(&cart)).jwt_rules;
    assert_eq!(
        rules.len(),
        1,
        "the selector leaves cart with the mesh-wide rule"
    );
}

#[test]
fn the_oldest_peer_authentication_of_a_scope_wins_and_plaintext_ports_are_marked() {
    let pa = |name: &str, created: &str, mode: &str| {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
             metadata: {{name: {name}, namespace: shop, creationTimestamp: '{created}'}}\n\
             spec: {{mtls: {{mode: {mode}}}}}\n"
        )
    };
    let cfg = config(&[
        pa("newer", "2026-02-01T00:00:00Z", "STRICT"),
        pa("older", "2025-01-01T00:00:00Z", "PERMISSIVE"),
        doc(
            "PeerAuthentication",
            "shop/db",
            "{selector: {matchLabels: {app: db}}, portLevelMtls: {15432: {mode: DISABLE}}}",
        ),
    ]);
    let mut db = workload("db", "shop", "db", &[("app", "db")], "10.0.0.1:15006");
    db.ports[0].target_port = Some(15432);
    let m = mesh(cfg, std::slice::from_ref(&db));
    let p = inbound(&m.view_for(&db));
    assert_eq!(
        p.mtls_mode,
        v1::MtlsMode::Permissive as i32,
        "the oldest wins"
    );
    let eps: v1::Endpoints = decode(
        &m.view_for(&db),
        type_url::ENDPOINTS,
        "db.shop.svc.cluster.local",
    );
    assert_eq!(
        eps.endpoints[0].plaintext_ports,
        [9080],
        "the service port of the DISABLE workload port"
    );
}

#[test]
fn a_header_regex_star_is_pushed_as_present() {
    let cfg = config(&[doc(
        "VirtualService",
        "shop/reviews",
        "{hosts: [reviews], http: [{match: [{headers: {x-id: {regex: '*'}}}], \
           route: [{destination: {host: reviews}}]}]}",
    )]);
    let a = workload("a", "shop", "a", &[("app", "a")], "10.0.0.1:15006");
    let table: v1::RouteTable = decode(
        &mesh(cfg, std::slice::from_ref(&a)).view_for(&a),
        type_url::ROUTE_TABLE,
        REVIEWS,
    );
    assert_eq!(
        table.http[0].matches[0].headers["x-id"].kind,
        Some(v1::string_match::Kind::Present(true))
    );
}

#[test]
fn ext_authz_providers_reach_every_sidecar_with_their_options() {
    let mesh_config = "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n\
        metadata: {name: seed, namespace: istio-system}\nspec:\n  meshConfig:\n    \
        extensionProviders:\n    \
        - name: opa\n      envoyExtAuthzGrpc:\n        service: policy/opa.policy.svc.cluster.local\n        \
        port: 9191\n        timeout: 250ms\n        failOpen: true\n        \
        includeRequestBodyInCheck: {maxRequestBytes: 4096, packAsBytes: true}\n    \
        - name: oauth\n      envoyExtAuthzHttp:\n        service: oauth.example.com\n        port: 80\n        \
        statusOnError: \"503\"\n        pathPrefix: /check\n        \
        includeRequestHeadersInCheck: [cookie, 'x-user-*']\n        \
        includeAdditionalHeadersInCheck: {x-from: mesh}\n        \
        headersToUpstreamOnAllow: [x-user]\n        headersToDownstreamOnDeny: [location]\n    \
        - name: zipkin\n      zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}\n"
        .to_string();
    let pushed = pushed_mesh_config(mesh_config);
    use v1::ext_authz_provider::{BodyInCheck, Grpc, Http, Kind};
    assert_eq!(
        pushed.ext_authz_providers,
        vec![
            v1::ExtAuthzProvider {
                name: "opa".into(),
                // `namespace/` only disambiguates in Istio's registry: the host is resolved.
                service: "opa.policy.svc.cluster.local".into(),
                port: 9191,
                timeout: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 250_000_000,
                }),
                fail_open: true,
                status_on_error: 0,
                include_request_body_in_check: Some(BodyInCheck {
                    max_request_bytes: 4096,
                    allow_partial_message: false,
                    pack_as_bytes: true,
                }),
                kind: Some(Kind::Grpc(Grpc {})),
            },
            v1::ExtAuthzProvider {
                name: "oauth".into(),
                service: "oauth.example.com".into(),
                port: 80,
                timeout: None,
                fail_open: false,
                status_on_error: 503,
                include_request_body_in_check: None,
                kind: Some(Kind::Http(Http {
                    path_prefix: "/check".into(),
                    include_request_headers_in_check: vec!["cookie".into(), "x-user-*".into()],
                    include_additional_headers_in_check: [("x-from".into(), "mesh".into())].into(),
                    headers_to_upstream_on_allow: vec!["x-user".into()],
                    headers_to_downstream_on_deny: vec!["location".into()],
                    headers_to_downstream_on_allow: vec![],
                })),
            },
        ],
        "tracing providers are not authorizers"
    );
}

#[test]
fn tracing_providers_and_the_default_sampling_reach_every_sidecar() {
    let mesh_config = "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n\
        metadata: {name: seed, namespace: istio-system}\nspec:\n  meshConfig:\n    \
        defaultConfig:\n      tracing: {sampling: 10}\n    \
        defaultProviders:\n      tracing: [otel]\n    \
        extensionProviders:\n    \
        - name: jaeger\n      zipkin: {service: tracing/jaeger-collector.tracing, port: 9411, maxTagLength: 99}\n    \
        - name: otel\n      opentelemetry: {service: opentelemetry-collector.monitoring, port: 4317}\n"
        .to_string();
    let pushed = pushed_mesh_config(mesh_config);
    use v1::tracing_provider::{Kind, OpenTelemetry, Zipkin};
    assert_eq!(
        pushed.tracing_providers,
        vec![
            v1::TracingProvider {
                name: "jaeger".into(),
                service: "jaeger-collector.tracing".into(),
                port: 9411,
                max_tag_length: 99,
                kind: Some(Kind::Zipkin(Zipkin {})),
            },
            v1::TracingProvider {
                name: "otel".into(),
                service: "opentelemetry-collector.monitoring".into(),
                port: 4317,
                max_tag_length: 0,
                kind: Some(Kind::Opentelemetry(OpenTelemetry {})),
            },
        ]
    );
    assert_eq!(pushed.default_tracing_providers, ["otel"]);
    assert_eq!(pushed.tracing_sampling, Some(10.0));
    assert!(pushed.ext_authz_providers.is_empty());
}

#[test]
fn access_log_providers_and_the_default_ones_reach_every_sidecar_with_the_built_in_envoy() {
    let mesh_config = "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n\
        metadata: {name: seed, namespace: istio-system}\nspec:\n  meshConfig:\n    \
        defaultProviders:\n      accessLogging: [otel-als]\n    \
        extensionProviders:\n    \
        - name: otel-als\n      envoyOtelAls: {service: monitoring/opentelemetry-collector.monitoring.svc.cluster.local, port: 4317}\n    \
        - name: audit\n      envoyFileAccessLog: {path: /var/log/mesh/access.log}\n    \
        - name: named-als\n      envoyOtelAls: {service: otel.monitoring, port: 4317, logName: mesh-access}\n    \
        - name: otel\n      opentelemetry: {service: opentelemetry-collector.monitoring, port: 4317}\n"
        .to_string();
    let pushed = pushed_mesh_config(mesh_config);
    use v1::access_log_provider::{File, Kind, OpenTelemetry};
    let provider = |name: &str, kind: Kind| v1::AccessLogProvider {
        name: name.into(),
        kind: Some(kind),
    };
    assert_eq!(
        pushed.access_log_providers,
        vec![
            provider(
                "otel-als",
                Kind::Opentelemetry(OpenTelemetry {
                    service: "opentelemetry-collector.monitoring.svc.cluster.local".into(),
                    port: 4317,
                    log_name: String::new(),
                    format: None,
                })
            ),
            provider(
                "audit",
                Kind::File(File {
                    path: "/var/log/mesh/access.log".into(),
                    format: None,
                })
            ),
            provider(
                "named-als",
                Kind::Opentelemetry(OpenTelemetry {
                    service: "otel.monitoring".into(),
                    port: 4317,
                    log_name: "mesh-access".into(),
                    format: None,
                })
            ),
            provider(
                "envoy",
                Kind::File(File {
                    path: "/dev/stdout".into(),
                    format: None,
                })
            ),
        ],
        "trace collectors are not access-log providers; Istio's built-in envoy is added"
    );
    assert_eq!(pushed.default_access_log_providers, ["otel-als"]);

    // A MeshConfig that defines its own `envoy` replaces the built-in one.
    let own_envoy = "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n\
        metadata: {name: seed, namespace: istio-system}\nspec:\n  meshConfig:\n    \
        extensionProviders:\n    \
        - name: envoy\n      envoyFileAccessLog: {path: /dev/stderr}\n"
        .to_string();
    let pushed = pushed_mesh_config(own_envoy);
    assert_eq!(
        pushed.access_log_providers,
        vec![provider(
            "envoy",
            Kind::File(File {
                path: "/dev/stderr".into(),
                format: None,
            })
        )]
    );
    assert!(pushed.default_access_log_providers.is_empty());
}

#[test]
fn log_formats_and_the_built_in_providers_mesh_fields_reach_sidecars() {
    let head = "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n\
        metadata: {name: seed, namespace: istio-system}\nspec:\n  meshConfig:\n";
    use v1::access_log_provider::{File, Kind, OpenTelemetry};
    let pushed = pushed_mesh_config(format!(
        "{head}    extensionProviders:\n    \
        - name: otel-als\n      envoyOtelAls: {{service: c, port: 4317, logFormat: {{text: \"%RESPONSE_CODE%\", labels: {{tenant: \"%REQ(X-TENANT)%\", n: 2, gone: null}}}}}}\n"
    ));
    let Some(Kind::Opentelemetry(OpenTelemetry {
        format: Some(f), ..
    })) = &pushed.access_log_providers[0].kind
    else {
        panic!("{:?}", pushed.access_log_providers);
    };
    assert_eq!(f.text, "%RESPONSE_CODE%");
    assert_eq!(
        f.labels.iter().collect::<Vec<_>>(),
        [
            (&"n".to_string(), &"2".to_string()),
            (&"tenant".to_string(), &"%REQ(X-TENANT)%".to_string())
        ]
    );
    let built_in = |yaml: &str| {
        let pushed = pushed_mesh_config(format!("{head}{yaml}"));
        let envoy = pushed
            .access_log_providers
            .iter()
            .find(|p| p.name == "envoy")
            .cloned();
        let Some(v1::AccessLogProvider {
            kind: Some(Kind::File(File { path, format })),
            ..
        }) = envoy
        else {
            panic!("the built-in provider");
        };
        (path, format, pushed.default_access_log_providers)
    };
    // accessLogFile turns the built-in provider on for every sidecar, as in Istio.
    let (path, format, defaults) = built_in(
        "    accessLogFile: /var/log/mesh.log\n    accessLogFormat: \"%REQ(:METHOD)% %RESPONSE_CODE%\"\n",
    );
    assert_eq!(path, "/var/log/mesh.log");
    assert_eq!(format.unwrap().text, "%REQ(:METHOD)% %RESPONSE_CODE%");
    assert_eq!(defaults, ["envoy"]);
    let (_, format, _) = built_in(
        "    accessLogFile: /dev/stdout\n    accessLogEncoding: JSON\n    accessLogFormat: '{\"code\": \"%RESPONSE_CODE%\"}'\n",
    );
    let format = format.unwrap();
    assert!(format.text.is_empty());
    assert_eq!(format.labels["code"], "%RESPONSE_CODE%");
    let (_, format, _) = built_in("    accessLogEncoding: TEXT\n");
    assert_eq!(
        format.unwrap().text,
        meshlite_xds_proto::log_format::ISTIO_DEFAULT_TEXT,
        "Istio's default text line"
    );
    let (path, format, defaults) = built_in("    accessLogEncoding: JSON\n");
    assert_eq!(path, "/dev/stdout");
    assert!(format.is_none(), "the default JSON line");
    assert!(
        defaults.is_empty(),
        "no accessLogFile: the sidecars' own setting"
    );
}

#[test]
fn a_workloads_telemetry_reaches_it_in_its_inbound_policy_and_a_change_is_pushed_to_it() {
    let mesh_wide = doc(
        "Telemetry",
        "istio-system/mesh-default",
        "{tracing: [{randomSamplingPercentage: 10}], accessLogging: [{filter: {expression: \"response.code >= 400\"}}]}",
    );
    let critical = |pct: u32| {
        doc(
            "Telemetry",
            "shop/reviews",
            &format!(
                "{{selector: {{matchLabels: {{app: reviews}}}}, tracing: [{{randomSamplingPercentage: {pct}}}]}}"
            ),
        )
    };
    let reviews = reviews_workload();
    let ratings = workload(
        "ratings",
        "shop",
        "ratings",
        &[("app", "ratings")],
        "10.0.0.2:15006",
    );
    let workloads = [reviews.clone(), ratings.clone()];

    // No Telemetry at all: nothing in the inbound policy.
    let bare = mesh(config(&[]), &workloads);
    assert_eq!(inbound(&bare.view_for(&reviews)).telemetry, None);

    let before = mesh(config(&[mesh_wide.clone(), critical(25)]), &workloads);
    let t = inbound(&before.view_for(&reviews))
        .telemetry
        .expect("resolved");
    assert_eq!(t.sources, ["istio-system/mesh-default", "shop/reviews"]);
    assert_eq!(t.tracing.unwrap().random_sampling_percentage, Some(25.0));
    assert_eq!(t.access_logging[0].filter, "response.code >= 400");
    let t = inbound(&before.view_for(&ratings))
        .telemetry
        .expect("resolved");
    assert_eq!(t.sources, ["istio-system/mesh-default"]);
    assert_eq!(t.tracing.unwrap().random_sampling_percentage, Some(10.0));

    // The workload Telemetry changes: reviews' inbound policy is pushed again, ratings' is not.
    let after = mesh(config(&[mesh_wide, critical(50)]), &workloads);
    let held = |view: &ProxyView| -> BTreeMap<String, String> {
        BTreeMap::from([(
            "inbound".to_string(),
            version(view, type_url::INBOUND_POLICY, "inbound"),
        )])
    };
    let pushed = diff(
        &held(&before.view_for(&reviews)),
        &after.view_for(&reviews)[type_url::INBOUND_POLICY],
    );
    assert_eq!(pushed.upserts.len(), 1, "reviews gets its new telemetry");
    let t = inbound(&after.view_for(&reviews)).telemetry.unwrap();
    assert_eq!(t.tracing.unwrap().random_sampling_percentage, Some(50.0));
    let untouched = diff(
        &held(&before.view_for(&ratings)),
        &after.view_for(&ratings)[type_url::INBOUND_POLICY],
    );
    assert_eq!(
        untouched,
        super::TypeDelta::default(),
        "ratings is not concerned"
    );
}

#[test]
fn service_entry_addresses_and_port_names_reach_sidecars_for_transparent_capture() {
    let cfg = config(&[doc(
        "ServiceEntry",
        "data/cache",
        "{hosts: [cache.data.internal], location: MESH_INTERNAL, resolution: STATIC, \
          addresses: [10.96.0.20, 'fd00:96::20/128', 10.97.0.0/16], \
          ports: [{number: 6379, name: tcp-redis}, {number: 8080, name: http-admin}, \
                  {number: 9000, name: web}, {number: 9001, name: x, protocol: GRPC}], \
          endpoints: [{address: 10.1.0.9, serviceAccount: cache}]}",
    )]);
    let me = workload("app", "data", "app", &[("app", "app")], "10.0.0.1:15006");
    let view = mesh(cfg, &[]).view_for(&me);
    let svc: v1::Service = decode(&view, type_url::SERVICE, "cache.data.internal");
    // The entry's own addresses, as written (sidecars take the single ones as virtual IPs).
    assert_eq!(
        svc.addresses,
        ["10.96.0.20", "fd00:96::20/128", "10.97.0.0/16"]
    );
    let protocols: Vec<(u32, i32)> = svc.ports.iter().map(|p| (p.number, p.protocol)).collect();
    assert_eq!(
        protocols,
        [
            (6379, v1::Protocol::Tcp as i32),
            (8080, v1::Protocol::Http as i32),
            // A name that declares nothing: sidecars detect the protocol.
            (9000, v1::Protocol::Unspecified as i32),
            // `protocol` wins over the name.
            (9001, v1::Protocol::Grpc as i32),
        ]
    );
}

#[test]
fn outbound_traffic_policy_registry_only_reaches_every_sidecar() {
    let istio = |policy: &str| {
        format!(
            "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n\
             metadata: {{name: seed, namespace: istio-system}}\nspec:\n  meshConfig:\n    {policy}\n"
        )
    };
    let only = pushed_mesh_config(istio("outboundTrafficPolicy: {mode: REGISTRY_ONLY}"));
    assert!(only.outbound_registry_only);
    let any = pushed_mesh_config(istio("outboundTrafficPolicy: {mode: ALLOW_ANY}"));
    assert!(!any.outbound_registry_only);
    let default = pushed_mesh_config(istio("trustDomainAliases: [old.local]"));
    assert!(
        !default.outbound_registry_only,
        "Istio's default is ALLOW_ANY"
    );
}

/// The VIPs a sidecar receives for `host`.
fn addresses_of(m: &MeshResources, me: &Workload, host: &str) -> Vec<String> {
    let svc: v1::Service = decode(&m.view_for(me), type_url::SERVICE, host);
    svc.addresses
}

fn external_entry(ns_name: &str, host: &str, extra: &str) -> String {
    doc(
        "ServiceEntry",
        ns_name,
        &format!(
            "{{hosts: [{host}], resolution: DNS, ports: [{{number: 80, name: http, protocol: HTTP}}]{extra}}}"
        ),
    )
}

#[test]
fn services_without_addresses_get_a_vip_from_istios_range_and_entries_keep_their_own() {
    let cfg = config(&[
        external_entry("default/api", "api.example.com", ""),
        external_entry(
            "default/pay",
            "pay.example.com",
            ", addresses: [10.9.9.9, 10.10.0.0/16]",
        ),
        doc(
            "ServiceEntry",
            "default/any",
            "{hosts: ['*.example.org'], resolution: DNS, ports: [{number: 80, name: http, protocol: HTTP}]}",
        ),
    ]);
    let reviews = reviews_workload();
    let m = mesh(cfg, std::slice::from_ref(&reviews));
    for host in [REVIEWS, "api.example.com"] {
        let vips = addresses_of(&m, &reviews, host);
        assert_eq!(vips.len(), 1, "{host}: {vips:?}");
        assert!(vips[0].starts_with("240.240."), "{host}: {vips:?}");
    }
    assert_ne!(
        addresses_of(&m, &reviews, REVIEWS),
        addresses_of(&m, &reviews, "api.example.com")
    );
    assert_eq!(
        addresses_of(&m, &reviews, "pay.example.com"),
        ["10.9.9.9", "10.10.0.0/16"]
    );
    // Wildcard hosts are not pushed, so never allocated.
    assert!(m.vips().keys().all(|h| !h.contains('*')));
    assert!(!m.vips().contains_key("pay.example.com"));
}

#[test]
fn vips_are_stable_across_pushes_and_a_new_service_moves_none() {
    let reviews = reviews_workload();
    let first = mesh(
        config(&[external_entry("default/api", "api.example.com", "")]),
        std::slice::from_ref(&reviews),
    );
    let again = mesh(
        config(&[external_entry("default/api", "api.example.com", "")]),
        std::slice::from_ref(&reviews),
    );
    assert_eq!(first.vips(), again.vips());
    let ratings = workload(
        "ratings",
        "shop",
        "ratings",
        &[("app", "ratings")],
        "10.0.0.2:15006",
    );
    let next = MeshResources::build_keeping(
        Arc::new(config(&[
            external_entry("default/api", "api.example.com", ""),
            external_entry("default/a", "a.example.com", ""),
        ])),
        &[reviews.clone(), ratings],
        &["ROOT PEM".to_string()],
        TD,
        &Default::default(),
        first.vips(),
    );
    for (host, ip) in first.vips() {
        assert_eq!(next.vips().get(host), Some(ip), "{host} moved");
    }
    assert_eq!(next.vips().len(), 4);
}

#[test]
fn auto_allocation_and_dns_capture_follow_proxy_metadata() {
    let mesh_config = "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n\
        metadata: {name: seed, namespace: istio-system}\nspec:\n  meshConfig:\n    \
        defaultConfig:\n      proxyMetadata:\n        ISTIO_META_DNS_AUTO_ALLOCATE: \"false\"\n        \
        ISTIO_META_DNS_CAPTURE: \"false\"\n";
    let reviews = reviews_workload();
    let m = mesh(
        config(&[mesh_config.to_string()]),
        std::slice::from_ref(&reviews),
    );
    assert!(addresses_of(&m, &reviews, REVIEWS).is_empty());
    assert!(m.vips().is_empty());
    let pushed = pushed_mesh_config(mesh_config.to_string());
    assert!(pushed.dns_capture_disabled);
    // Unset: both on.
    let default_mesh = mesh(config(&[]), std::slice::from_ref(&reviews));
    assert_eq!(addresses_of(&default_mesh, &reviews, REVIEWS).len(), 1);
    let pushed: v1::MeshConfig = decode(
        &default_mesh.view_for(&reviews),
        type_url::MESH_CONFIG,
        "mesh",
    );
    assert!(!pushed.dns_capture_disabled);
}
