//! Sidecar scope tests: Sidecars (YAML, as users write them) and workloads go in; which
//! Sidecar applies, and what each proxy's view holds, come out.

use std::sync::Arc;

use meshlite_xds_proto::{type_url, v1};

use super::SidecarIndex;
use crate::registry::Workload;
use crate::translate::tests::{config, decode, doc, mesh, workload};
use crate::translate::{Held, MeshResources, ProxyView};

const REVIEWS: &str = "reviews.shop.svc.cluster.local";
const RATINGS: &str = "ratings.shop.svc.cluster.local";
const DETAILS: &str = "details.web.svc.cluster.local";
const CONFIG: &str = "config.istio-system.svc.cluster.local";
const API: &str = "api.example.com";

/// A Sidecar named `ns/name`, created at `created` (RFC 3339) if given.
fn sidecar_at(ns_name: &str, created: Option<&str>, spec: &str) -> String {
    let (ns, name) = ns_name.split_once('/').unwrap_or(("default", ns_name));
    let created = created
        .map(|c| format!(", creationTimestamp: \"{c}\""))
        .unwrap_or_default();
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\n\
         metadata: {{name: {name}, namespace: {ns}{created}}}\nspec: {spec}\n"
    )
}

fn sidecar(ns_name: &str, spec: &str) -> String {
    sidecar_at(ns_name, None, spec)
}

/// A workload of service `app` in `ns`, serving 9080.
fn serving(app: &str, ns: &str, ip: u8) -> Workload {
    workload(app, ns, app, &[("app", app)], &format!("10.0.0.{ip}:15006"))
}

/// The mesh every translation test runs: reviews and ratings in `shop`, details in `web`,
/// config in `istio-system`, and a ServiceEntry `api.example.com` in `ext`.
fn workloads() -> Vec<Workload> {
    vec![
        serving("reviews", "shop", 1),
        serving("ratings", "shop", 2),
        serving("details", "web", 3),
        serving("config", "istio-system", 4),
    ]
}

fn api_entry() -> String {
    doc(
        "ServiceEntry",
        "ext/api",
        "{hosts: [api.example.com], location: MESH_EXTERNAL, resolution: DNS, ports: [{number: 443, name: tls, protocol: TLS}]}",
    )
}

/// The names a view holds of type `t`.
fn names(view: &ProxyView, t: &str) -> Vec<String> {
    view[t].keys().cloned().collect()
}

fn build(docs: &[String]) -> MeshResources {
    let mut all = vec![api_entry()];
    all.extend_from_slice(docs);
    mesh(config(&all), &workloads())
}

/// Which Sidecar (`ns/name`) applies to a workload of `ns` with `labels`.
fn applied(docs: &[String], ns: &str, labels: &[(&str, &str)]) -> Option<String> {
    let cfg = config(docs);
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    SidecarIndex::new(&cfg)
        .select(&cfg, ns, &labels)
        .map(|s| s.key())
}

#[test]
fn a_selecting_sidecar_beats_the_namespace_one_which_beats_the_root_one() {
    let any = "{egress: [{hosts: ['*/*']}]}";
    let docs = [
        sidecar("istio-system/default", any),
        sidecar("shop/default", any),
        sidecar(
            "shop/ratings",
            "{workloadSelector: {labels: {app: ratings}}, egress: [{hosts: ['*/*']}]}",
        ),
        sidecar(
            "istio-system/gateway",
            "{workloadSelector: {labels: {app: ratings}}, egress: [{hosts: ['*/*']}]}",
        ),
    ];
    let ratings = [("app", "ratings"), ("version", "v1")];
    assert_eq!(
        applied(&docs, "shop", &ratings).as_deref(),
        Some("shop/ratings")
    );
    assert_eq!(
        applied(&docs, "shop", &[("app", "reviews")]).as_deref(),
        Some("shop/default")
    );
    assert_eq!(
        applied(&docs, "web", &ratings).as_deref(),
        Some("istio-system/default"),
        "a namespace without its own falls back to the root's; a selector there selects only its own workloads"
    );
    assert_eq!(
        applied(&docs[1..], "web", &ratings),
        None,
        "no Sidecar: none applies"
    );
    assert_eq!(
        applied(&docs, "istio-system", &ratings).as_deref(),
        Some("istio-system/gateway")
    );
}

#[test]
fn among_sidecars_of_one_level_the_oldest_applies_then_the_first_name() {
    let any = "{egress: [{hosts: ['*/*']}]}";
    let docs = [
        sidecar_at("shop/b", Some("2026-01-01T00:00:00Z"), any),
        sidecar_at("shop/c", Some("2026-03-01T00:00:00Z"), any),
        sidecar_at("shop/a", None, any),
    ];
    assert_eq!(applied(&docs, "shop", &[]).as_deref(), Some("shop/b"));
    let docs = [sidecar("shop/zeta", any), sidecar("shop/alpha", any)];
    assert_eq!(applied(&docs, "shop", &[]).as_deref(), Some("shop/alpha"));
}

#[test]
fn a_scoped_proxy_gets_only_the_services_its_egress_hosts_import() {
    let m = build(&[sidecar(
        "shop/default",
        "{egress: [{hosts: ['./*', 'istio-system/*']}]}",
    )]);
    let cart = serving("cart", "shop", 9);
    let view = m.view_for(&cart);
    let want = vec![CONFIG.to_string(), RATINGS.into(), REVIEWS.into()];
    assert_eq!(names(&view, type_url::SERVICE), want);
    assert_eq!(names(&view, type_url::ENDPOINTS), want);
    // A workload elsewhere, with no Sidecar, still sees everything.
    let outside = serving("cart", "web", 8);
    let all = m.view_for(&outside);
    assert!(names(&all, type_url::SERVICE).contains(&API.to_string()));
    assert!(names(&all, type_url::SERVICE).contains(&DETAILS.to_string()));
}

#[test]
fn the_root_default_means_each_workloads_own_namespace_by_dot() {
    let m = build(&[sidecar(
        "istio-system/default",
        "{egress: [{hosts: ['./*']}]}",
    )]);
    let in_web = m.view_for(&serving("cart", "web", 9));
    assert_eq!(names(&in_web, type_url::SERVICE), vec![DETAILS.to_string()]);
    let in_shop = m.view_for(&serving("cart", "shop", 8));
    assert!(names(&in_shop, type_url::SERVICE).contains(&REVIEWS.to_string()));
    assert!(!names(&in_shop, type_url::SERVICE).contains(&DETAILS.to_string()));
}

#[test]
fn wildcards_fqdns_ports_and_nothing() {
    let only = |hosts: &str| {
        let m = build(&[sidecar("shop/default", hosts)]);
        names(&m.view_for(&serving("cart", "shop", 9)), type_url::SERVICE)
    };
    assert_eq!(
        only("{egress: [{hosts: ['*/*.example.com']}]}"),
        vec![API.to_string()]
    );
    assert_eq!(
        only(&format!("{{egress: [{{hosts: ['*/{DETAILS}']}}]}}")),
        vec![DETAILS.to_string()]
    );
    assert_eq!(
        only("{egress: [{hosts: ['web/reviews.shop.svc.cluster.local']}]}"),
        Vec::<String>::new(),
        "the namespace must be the service's"
    );
    assert_eq!(
        only("{egress: [{port: {number: 443}, hosts: ['*/*']}]}"),
        vec![API.to_string()],
        "a listener with a port imports the services that have it"
    );
    assert_eq!(only("{egress: [{hosts: ['~/*']}]}"), Vec::<String>::new());
}

#[test]
fn an_imported_virtual_service_brings_its_routes_and_destinations() {
    let vs = doc(
        "VirtualService",
        "web/details",
        "{hosts: [details], http: [{route: [{destination: {host: reviews.shop.svc.cluster.local}}]}]}",
    );
    let elsewhere = doc(
        "VirtualService",
        "ops/ratings",
        "{hosts: [ratings.shop.svc.cluster.local], http: [{route: [{destination: {host: ratings.shop.svc.cluster.local}, weight: 100}]}]}",
    );
    let dr = doc(
        "DestinationRule",
        "shop/reviews",
        "{host: reviews, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}",
    );
    let dr_ratings = doc(
        "DestinationRule",
        "shop/ratings",
        "{host: ratings, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}",
    );
    let m = build(&[
        vs,
        elsewhere,
        dr,
        dr_ratings,
        sidecar("istio-system/default", "{egress: [{hosts: ['./*']}]}"),
    ]);
    let view = m.view_for(&serving("cart", "web", 9));
    // details's VirtualService lives in web: imported, with reviews, its destination.
    assert_eq!(
        names(&view, type_url::ROUTE_TABLE),
        vec![DETAILS.to_string()]
    );
    let services = names(&view, type_url::SERVICE);
    assert!(services.contains(&REVIEWS.to_string()), "{services:?}");
    assert!(!services.contains(&RATINGS.to_string()), "{services:?}");
    // DestinationRules follow the hosts sent.
    assert_eq!(
        names(&view, type_url::DESTINATION_POLICY),
        vec![REVIEWS.to_string()]
    );
    let _: v1::DestinationPolicy = decode(&view, type_url::DESTINATION_POLICY, REVIEWS);
    // In shop, the ops VirtualService for ratings is not imported: no route for it.
    let view = m.view_for(&serving("cart", "shop", 8));
    assert!(
        names(&view, type_url::ROUTE_TABLE).is_empty(),
        "{:?}",
        names(&view, type_url::ROUTE_TABLE)
    );
    assert_eq!(
        names(&view, type_url::DESTINATION_POLICY),
        vec![RATINGS.to_string(), REVIEWS.to_string()]
    );
}

#[test]
fn the_sidecars_outbound_policy_replaces_mesh_configs_for_its_workloads_only() {
    let mesh_config = "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n\
         metadata: {name: mesh, namespace: istio-system}\nspec:\n  meshConfig:\n    \
         outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n    trustDomainAliases: [old.example]\n"
        .to_string();
    let m = build(&[
        mesh_config,
        sidecar(
            "shop/cart",
            "{workloadSelector: {labels: {app: cart}}, outboundTrafficPolicy: {mode: ALLOW_ANY}}",
        ),
    ]);
    let cart: v1::MeshConfig = decode(
        &m.view_for(&serving("cart", "shop", 9)),
        type_url::MESH_CONFIG,
        "mesh",
    );
    assert!(!cart.outbound_registry_only);
    assert_eq!(
        cart.trust_domain_aliases,
        ["old.example"],
        "the rest of MeshConfig stays"
    );
    let other: v1::MeshConfig = decode(
        &m.view_for(&serving("reviews", "shop", 1)),
        type_url::MESH_CONFIG,
        "mesh",
    );
    assert!(other.outbound_registry_only);
    // Without egress, the Sidecar scopes nothing else: the whole mesh is sent.
    let view = m.view_for(&serving("cart", "shop", 9));
    assert!(names(&view, type_url::SERVICE).contains(&DETAILS.to_string()));
}

#[test]
fn editing_one_sidecar_changes_the_views_of_its_workloads_only() {
    let shop = |hosts: &str| {
        sidecar(
            "shop/default",
            &format!("{{egress: [{{hosts: [{hosts}]}}]}}"),
        )
    };
    let web = sidecar("web/default", "{egress: [{hosts: ['./*']}]}");
    let cart = serving("cart", "shop", 9);
    let in_web = serving("cart", "web", 8);
    let outside = serving("cart", "default", 7);
    let first = build(&[shop("'./*'"), web.clone()]);
    let before = [
        first.view_for(&cart),
        first.view_for(&in_web),
        first.view_for(&outside),
    ];
    let next = build(&[shop(&format!("'./{REVIEWS}'")), web]).sharing_with(&first);
    let after = [
        next.view_for(&cart),
        next.view_for(&in_web),
        next.view_for(&outside),
    ];
    for t in [
        type_url::SERVICE,
        type_url::ENDPOINTS,
        type_url::ROUTE_TABLE,
        type_url::DESTINATION_POLICY,
        type_url::MESH_CONFIG,
    ] {
        for i in [1, 2] {
            assert!(
                Held::Sent(before[i][t].clone()).is(&after[i][t]),
                "{t} of an unaffected proxy must be the very map it holds (nothing pushed)"
            );
        }
    }
    // The scoped proxy is told what left.
    let delta = Held::Sent(before[0][type_url::SERVICE].clone()).diff(&after[0][type_url::SERVICE]);
    assert!(delta.upserts.is_empty(), "{:?}", delta.upserts);
    let mut removed = delta.removals.clone();
    removed.sort();
    assert_eq!(removed, vec![RATINGS.to_string()]);
    let delta =
        Held::Sent(before[0][type_url::ENDPOINTS].clone()).diff(&after[0][type_url::ENDPOINTS]);
    assert_eq!(delta.removals, vec![RATINGS.to_string()]);
    // Removing the Sidecar gives the whole mesh back.
    let last = build(&[]).sharing_with(&next);
    let delta = Held::Sent(after[0][type_url::SERVICE].clone())
        .diff(&last.view_for(&cart)[type_url::SERVICE]);
    assert!(delta.removals.is_empty());
    assert_eq!(delta.upserts.len(), last.service_count() - 1);
}

#[test]
fn proxies_of_one_scope_share_its_maps() {
    let m = build(&[sidecar("shop/default", "{egress: [{hosts: ['./*']}]}")]);
    let a = m.view_for(&serving("cart", "shop", 9));
    let b = m.view_for(&serving("reviews", "shop", 1));
    for t in [
        type_url::SERVICE,
        type_url::ENDPOINTS,
        type_url::DESTINATION_POLICY,
    ] {
        assert!(Arc::ptr_eq(&a[t], &b[t]), "{t}");
    }
}

#[test]
fn routes_that_depend_on_the_caller_follow_the_scope_too() {
    let vs = doc(
        "VirtualService",
        "shop/reviews",
        "{hosts: [reviews], http: [{match: [{sourceLabels: {app: cart}}], route: [{destination: {host: reviews}}]}]}",
    );
    let m = build(&[
        vs,
        sidecar("istio-system/default", "{egress: [{hosts: ['./*']}]}"),
    ]);
    let in_shop = m.view_for(&serving("cart", "shop", 9));
    assert_eq!(
        names(&in_shop, type_url::ROUTE_TABLE),
        vec![REVIEWS.to_string()]
    );
    let table: v1::RouteTable = decode(&in_shop, type_url::ROUTE_TABLE, REVIEWS);
    assert!(!table.http.is_empty(), "the cart caller's rule is kept");
    let in_web = m.view_for(&serving("cart", "web", 8));
    assert!(names(&in_web, type_url::ROUTE_TABLE).is_empty());
}
