//! The builder through its public surface: a view in, a snapshot out, and what a second
//! build keeps of the first.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use meshlite_xds_proto::v1;

use super::{LocalSettings, WorkloadSettings};
use crate::identity::dev_pki::DevCa;
use crate::identity::spiffe::SpiffeId;
use crate::identity::tls::Identity;
use crate::policy::inbound::MtlsMode;
use crate::protocol::Protocol;
use crate::route::{Head, RouteMiss};
use crate::snapshot::{Snapshot, Target};
use crate::source::{EndpointSpec, MeshView, ServiceSpec};
use crate::telemetry::metrics::Metrics;

const FQDN: &str = "reviews.default.svc.cluster.local";

fn identity(dir: &std::path::Path, metrics: &Metrics) -> Arc<Identity> {
    let ca = DevCa::new("cluster.local").expect("ca");
    let id = "spiffe://cluster.local/ns/default/sa/productpage";
    let (cert, key) = ca
        .issue(id)
        .expect("leaf")
        .write(dir, "leaf")
        .expect("write");
    let roots = ca.write_root(dir).expect("root");
    let id = SpiffeId::parse(id).expect("id");
    Arc::new(
        Identity::from_files(&id, &cert, &key, &roots, metrics.tls_failures.clone())
            .expect("identity"),
    )
}

fn local() -> LocalSettings {
    LocalSettings {
        workload: WorkloadSettings {
            name: "productpage-v1".into(),
            app: Some("productpage".into()),
            version: Some("v1".into()),
            locality: Default::default(),
            labels: BTreeMap::new(),
        },
        inbound_ports: Vec::new(),
        default_mtls: MtlsMode::Strict,
        upstream: Default::default(),
        stats_inclusions: None,
        tracing: None,
        node_ip: None,
    }
}

fn endpoint(port: u16, version: &str) -> EndpointSpec {
    EndpointSpec {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        labels: Arc::new([("version", version)].into_iter().collect()),
        locality: Default::default(),
        weight: 1,
        plaintext: false,
        workload: None,
    }
}

fn service(host: &str, endpoints: Vec<EndpointSpec>) -> Arc<ServiceSpec> {
    Arc::new(ServiceSpec {
        hostname: host.into(),
        name: host.split('.').next().unwrap_or(host).into(),
        namespace: "default".into(),
        port: 9080,
        protocol: Protocol::Http,
        aliases: vec![],
        identities: vec![
            SpiffeId::parse("spiffe://cluster.local/ns/default/sa/reviews").expect("id"),
        ],
        endpoints,
        listen: None,
        external: None,
        addresses: vec![],
        detect_protocol: false,
        awaiting: false,
        endpoint_ips: Vec::new(),
    })
}

fn subsets() -> v1::DestinationPolicy {
    let subset = |name: &str| v1::Subset {
        name: name.into(),
        labels: [("version".to_string(), name.to_string())].into(),
        traffic_policy: None,
    };
    v1::DestinationPolicy {
        hostname: FQDN.into(),
        subsets: vec![subset("v1"), subset("v2")],
        ..Default::default()
    }
}

fn all_to_v2() -> v1::RouteTable {
    v1::RouteTable {
        hostname: FQDN.into(),
        origin: "default/reviews".into(),
        tcp: Vec::new(),
        http: vec![v1::HttpRoute {
            route: vec![v1::WeightedDestination {
                host: FQDN.into(),
                subset: "v2".into(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn routes_lead_to_subset_clusters_holding_only_their_endpoints() {
    let dir = tempfile::tempdir().expect("dir");
    let metrics = Metrics::new();
    let identity = identity(dir.path(), &metrics);
    let view = MeshView {
        services: vec![service(
            FQDN,
            vec![
                endpoint(9001, "v1"),
                endpoint(9002, "v2"),
                endpoint(9003, "v2"),
            ],
        )],
        routes: [(FQDN.to_string(), Arc::new(all_to_v2()))].into(),
        policies: [(FQDN.to_string(), Arc::new(subsets()))].into(),
        ..Default::default()
    };
    let snap = Snapshot::build(&local(), &view, &identity, &metrics, 1, None).expect("builds");
    let req = http::Request::get("/").body(()).expect("request");
    for name in ["reviews", "reviews.default", "reviews.default.svc", FQDN] {
        let hp = snap.route(&format!("{name}:9080")).expect("routes");
        let routed = hp.select(Head::of(&req), name).expect("selected");
        let cluster = routed.cluster.expect("a cluster");
        assert_eq!(
            &*cluster.name,
            "outbound|9080|v2|reviews.default.svc.cluster.local"
        );
        let ports: Vec<u16> = cluster.endpoints.iter().map(|e| e.addr.port()).collect();
        assert_eq!(ports, [9002, 9003], "the subset holds only version=v2");
        assert_eq!(routed.service.endpoints.len(), 3, "the service keeps all");
    }
    assert_eq!(snap.subset_clusters.len(), 2);
    assert!(matches!(
        snap.route("ratings:9080"),
        Err(RouteMiss::UnknownHost)
    ));
    assert!(matches!(
        snap.route("reviews:9090"),
        Err(RouteMiss::UnknownPort)
    ));
}

#[tokio::test]
async fn a_route_to_a_subset_nobody_defines_is_a_missing_cluster() {
    let dir = tempfile::tempdir().expect("dir");
    let metrics = Metrics::new();
    let identity = identity(dir.path(), &metrics);
    let view = MeshView {
        services: vec![service(FQDN, vec![endpoint(9001, "v1")])],
        routes: [(FQDN.to_string(), Arc::new(all_to_v2()))].into(),
        ..Default::default()
    };
    let snap = Snapshot::build(&local(), &view, &identity, &metrics, 1, None).expect("builds");
    let req = http::Request::get("/").body(()).expect("request");
    let hp = snap.route("reviews:9080").expect("routes");
    assert!(matches!(
        hp.select(Head::of(&req), "reviews"),
        Err(RouteMiss::NoCluster(name)) if &*name == "outbound|9080|v2|reviews.default.svc.cluster.local"
    ));
    let table = hp.routes.as_ref().expect("table");
    let first = table.select(Head::of(&req), "reviews", 9080).expect("rule");
    assert!(matches!(
        first.destination.map(|d| &d.target),
        Some(Target::Missing(_))
    ));
}

#[tokio::test]
async fn a_push_keeps_the_endpoints_it_still_has_and_drops_the_rest() {
    let dir = tempfile::tempdir().expect("dir");
    let metrics = Metrics::new();
    let identity = identity(dir.path(), &metrics);
    let first = MeshView {
        services: vec![
            service(FQDN, vec![endpoint(9001, "v1"), endpoint(9002, "v1")]),
            service(
                "ratings.default.svc.cluster.local",
                vec![endpoint(9101, "v1")],
            ),
        ],
        ..Default::default()
    };
    let one = Snapshot::build(&local(), &first, &identity, &metrics, 1, None).expect("builds");
    // Called once: built, so the push below builds its successor at once, carrying state.
    one.cluster(FQDN, 9080).expect("cluster").get();
    let second = MeshView {
        services: vec![service(
            FQDN,
            vec![endpoint(9002, "v1"), endpoint(9003, "v1")],
        )],
        ..Default::default()
    };
    let two =
        Snapshot::build(&local(), &second, &identity, &metrics, 2, Some(&one)).expect("builds");
    let before = &one.cluster(FQDN, 9080).expect("cluster").endpoints;
    let after = &two.cluster(FQDN, 9080).expect("cluster").endpoints;
    assert!(
        Arc::ptr_eq(&before[1], &after[0]),
        "9002 is the same endpoint: its pools and counters go on"
    );
    assert_eq!(after[1].addr.port(), 9003);
    assert!(
        two.route("ratings:9080").is_err(),
        "a removed service is gone"
    );
    assert_eq!(two.version, 2);
}

#[tokio::test]
async fn a_bad_route_refuses_the_whole_snapshot() {
    let dir = tempfile::tempdir().expect("dir");
    let metrics = Metrics::new();
    let identity = identity(dir.path(), &metrics);
    let mut table = all_to_v2();
    table.http[0].matches = vec![v1::HttpMatch {
        uri: Some(v1::StringMatch {
            kind: Some(v1::string_match::Kind::Regex("(unclosed".into())),
        }),
        ..Default::default()
    }];
    let view = MeshView {
        services: vec![service(FQDN, vec![endpoint(9001, "v1")])],
        routes: [(FQDN.to_string(), Arc::new(table))].into(),
        ..Default::default()
    };
    let err = Snapshot::build(&local(), &view, &identity, &metrics, 1, None)
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("routes of reviews.default.svc.cluster.local"),
        "{err}"
    );
    assert!(err.contains("invalid regex"), "{err}");
}

#[tokio::test]
async fn captured_destinations_find_their_service_by_virtual_ip_or_pod_ip() {
    let dir = tempfile::tempdir().expect("dir");
    let metrics = Metrics::new();
    let identity = identity(dir.path(), &metrics);
    let pod = |ip: [u8; 4]| EndpointSpec {
        addr: SocketAddr::from((ip, 15006)),
        ..endpoint(15006, "v1")
    };
    let mut reviews = service(FQDN, vec![pod([10, 1, 0, 7])]);
    Arc::make_mut(&mut reviews).addresses = vec!["10.96.0.9".parse().expect("ip")];
    // A second service claims the same pod IP and reviews' virtual IP as an endpoint:
    // the virtual IP stays reviews'.
    let mut ratings = service(
        "ratings.default.svc.cluster.local",
        vec![pod([10, 96, 0, 9])],
    );
    Arc::make_mut(&mut ratings).detect_protocol = true;
    let mut other = service("aaa.default.svc.cluster.local", vec![pod([10, 1, 0, 7])]);
    Arc::make_mut(&mut other).port = 7000;
    let view = MeshView {
        services: vec![reviews, ratings, other],
        ..Default::default()
    };
    let snap = Snapshot::build(&local(), &view, &identity, &metrics, 1, None).expect("builds");
    let service_at = |addr: &str| {
        snap.captured(addr.parse().expect("addr"))
            .map(|t| (t.host.cluster.labels.service.fqdn.to_string(), t.detect))
    };
    assert_eq!(service_at("10.96.0.9:9080"), Some((FQDN.into(), false)));
    assert_eq!(
        service_at("[::ffff:10.96.0.9]:9080"),
        Some((FQDN.into(), false))
    );
    assert_eq!(service_at("10.1.0.7:9080"), Some((FQDN.into(), false)));
    assert_eq!(
        service_at("10.1.0.7:7000"),
        Some(("aaa.default.svc.cluster.local".into(), false)),
        "the port picks among a pod's services"
    );
    assert_eq!(service_at("10.96.0.9:9081"), None, "not a service port");
    assert_eq!(service_at("10.1.0.8:9080"), None, "nobody's address");

    // Requests on a captured connection: a Host naming a service on that port wins (Istio's
    // per-port route configuration); an IP or unknown name is the address's service.
    let dst: SocketAddr = "10.96.0.9:9080".parse().expect("addr");
    let routed = |authority: &str| {
        snap.route_captured(authority, dst)
            .map(|hp| hp.cluster.labels.service.fqdn.to_string())
    };
    assert_eq!(routed("10.96.0.9:9080"), Ok(FQDN.into()));
    assert_eq!(routed("example.com"), Ok(FQDN.into()));
    assert_eq!(routed(""), Ok(FQDN.into()));
    assert_eq!(
        routed("ratings"),
        Ok("ratings.default.svc.cluster.local".into())
    );
    assert_eq!(routed("aaa:7000"), Ok(FQDN.into()), "aaa has no port 9080");
    assert_eq!(
        snap.route_captured("x", "10.9.9.9:80".parse().expect("addr"))
            .map(|_| ()),
        Err(RouteMiss::UnknownHost)
    );
}

/// A TCP service on `port` (no static listener).
fn tcp_service(host: &str, port: u16, endpoints: Vec<EndpointSpec>) -> Arc<ServiceSpec> {
    Arc::new(ServiceSpec {
        port,
        protocol: Protocol::Tcp,
        ..(*service(host, endpoints)).clone()
    })
}

#[tokio::test]
async fn tcp_rules_pick_subset_clusters_and_leave_http_ports_their_default_route() {
    use crate::route::TcpChoice;
    let dir = tempfile::tempdir().expect("dir");
    let metrics = Metrics::new();
    let identity = identity(dir.path(), &metrics);
    let tcp_only = v1::RouteTable {
        hostname: FQDN.into(),
        origin: "default/reviews".into(),
        tcp: vec![v1::TcpRoute {
            matches: vec![v1::L4Match {
                port: 7000,
                ..Default::default()
            }],
            route: vec![
                v1::WeightedDestination {
                    host: FQDN.into(),
                    subset: "v1".into(),
                    weight: 0,
                    ..Default::default()
                },
                v1::WeightedDestination {
                    host: FQDN.into(),
                    subset: "v2".into(),
                    weight: 100,
                    ..Default::default()
                },
            ],
        }],
        ..Default::default()
    };
    let view = MeshView {
        services: vec![
            service(FQDN, vec![endpoint(9001, "v1"), endpoint(9002, "v2")]),
            tcp_service(FQDN, 7000, vec![endpoint(9001, "v1"), endpoint(9002, "v2")]),
        ],
        routes: [(FQDN.to_string(), Arc::new(tcp_only))].into(),
        policies: [(FQDN.to_string(), Arc::new(subsets()))].into(),
        ..Default::default()
    };
    let snap = Snapshot::build(&local(), &view, &identity, &metrics, 1, None).expect("builds");
    let tcp = snap.host_port(FQDN, 7000).expect("the tcp port");
    for _ in 0..20 {
        match tcp.select_tcp(None) {
            TcpChoice::Cluster(c) => {
                assert_eq!(
                    &*c.name,
                    "outbound|7000|v2|reviews.default.svc.cluster.local"
                );
            }
            TcpChoice::Missing(n) => panic!("missing {n}"),
        }
    }
    // The HTTP port of the same host: the VirtualService has no http rules for it.
    let http = snap.route("reviews:9080").expect("http port");
    assert!(http.routes.is_none());
    let req = http::Request::get("/").body(()).expect("request");
    let routed = http
        .select(Head::of(&req), "reviews")
        .expect("default route");
    assert_eq!(routed.cluster.map(|c| c.endpoints.len()), Some(2));
}

#[tokio::test]
async fn tcp_listeners_skip_own_and_served_ports_and_settle_conflicts_by_name() {
    use crate::outbound::tcp_listeners::ListenerSettings;
    let dir = tempfile::tempdir().expect("dir");
    let metrics = Metrics::new();
    let identity = identity(dir.path(), &metrics);
    let mut with_listen = tcp_service("cache.default.svc.cluster.local", 6379, vec![]);
    Arc::make_mut(&mut with_listen).listen = Some(SocketAddr::from(([127, 0, 0, 1], 16379)));
    let view = MeshView {
        services: vec![
            tcp_service("zeta.default.svc.cluster.local", 5432, vec![]),
            tcp_service("alpha.default.svc.cluster.local", 5432, vec![]),
            tcp_service("admin.default.svc.cluster.local", 15000, vec![]),
            tcp_service("mine.default.svc.cluster.local", 8000, vec![]),
            service(FQDN, vec![]),
            with_listen,
        ],
        ..Default::default()
    };
    let mut settings = local();
    settings.inbound_ports = vec![crate::config::InboundPortConfig {
        port: 8000,
        target: SocketAddr::from(([127, 0, 0, 1], 18000)),
        protocol: Protocol::Tcp,
    }];
    let snap = Snapshot::build(&settings, &view, &identity, &metrics, 1, None).expect("builds");
    let outbound = SocketAddr::from(([127, 0, 0, 1], 15001));
    let plan = ListenerSettings::new(outbound, true, &[]).plan(&snap);
    assert_eq!(
        plan,
        [
            ("127.0.0.1:5432".to_string(), "alpha:5432".to_string()),
            ("127.0.0.1:16379".to_string(), "cache:6379".to_string()),
        ],
        "first by name wins 5432; 15000 is the proxy's, 8000 the workload's; HTTP gets none"
    );
    let off = ListenerSettings::new(outbound, false, &[]).plan(&snap);
    assert_eq!(
        off,
        [("127.0.0.1:16379".to_string(), "cache:6379".to_string())],
        "off: static listeners only"
    );
}

#[tokio::test]
async fn clusters_are_built_on_first_use_and_a_push_leaves_the_unchanged_ones_alone() {
    let dir = tempfile::tempdir().expect("dir");
    let metrics = Metrics::new();
    let identity = identity(dir.path(), &metrics);
    const RATINGS: &str = "ratings.default.svc.cluster.local";
    let view = |reviews_port: u16| MeshView {
        services: vec![
            service(FQDN, vec![endpoint(reviews_port, "v1")]),
            service(RATINGS, vec![endpoint(9101, "v1")]),
        ],
        ..Default::default()
    };
    let one = Snapshot::build(&local(), &view(9001), &identity, &metrics, 1, None).expect("builds");
    let reviews = one.cluster(FQDN, 9080).expect("reviews");
    let ratings = one.cluster(RATINGS, 9080).expect("ratings");
    assert!(reviews.built().is_none() && ratings.built().is_none());
    assert_eq!(reviews.endpoint_count(), 1, "counted without building");
    assert_eq!(reviews.get().endpoints[0].addr.port(), 9001);
    assert!(reviews.built().is_some() && ratings.built().is_none());

    // reviews' endpoint moves: its cluster is new, built at once (it was in use), and
    // ratings' is the very same, still unbuilt.
    let two =
        Snapshot::build(&local(), &view(9002), &identity, &metrics, 2, Some(&one)).expect("builds");
    let reviews2 = two.cluster(FQDN, 9080).expect("reviews");
    assert!(!Arc::ptr_eq(reviews, reviews2));
    assert_eq!(
        reviews2.built().expect("built at once").endpoints[0]
            .addr
            .port(),
        9002
    );
    let ratings2 = two.cluster(RATINGS, 9080).expect("ratings");
    assert!(Arc::ptr_eq(ratings, ratings2) && ratings2.built().is_none());

    // The same view again: every cluster carried over as it is.
    let three =
        Snapshot::build(&local(), &view(9002), &identity, &metrics, 3, Some(&two)).expect("builds");
    assert!(Arc::ptr_eq(
        reviews2,
        three.cluster(FQDN, 9080).expect("reviews")
    ));
}

#[tokio::test]
async fn an_idle_sweep_frees_built_clusters_nothing_used_since_the_last_one() {
    let dir = tempfile::tempdir().expect("dir");
    let metrics = Metrics::new();
    let identity = identity(dir.path(), &metrics);
    const RATINGS: &str = "ratings.default.svc.cluster.local";
    let view = MeshView {
        services: vec![
            service(FQDN, vec![endpoint(9001, "v1")]),
            service(RATINGS, vec![endpoint(9101, "v1")]),
        ],
        ..Default::default()
    };
    let sweep = |prev: &Snapshot| {
        Snapshot::build_swept(&local(), &view, &identity, &metrics, 1, Some(prev), true)
            .expect("builds")
    };
    let one = Snapshot::build(&local(), &view, &identity, &metrics, 1, None).expect("builds");
    one.cluster(FQDN, 9080).expect("reviews").get();
    one.cluster(RATINGS, 9080).expect("ratings").get();
    // Both were used since the start: the first sweep keeps both.
    let two = sweep(&one);
    assert!(two.cluster(FQDN, 9080).expect("reviews").built().is_some());
    assert!(
        two.cluster(RATINGS, 9080)
            .expect("ratings")
            .built()
            .is_some()
    );
    // Only reviews is used before the next sweep, which frees ratings.
    two.cluster(FQDN, 9080).expect("reviews").get();
    let three = sweep(&two);
    assert!(
        three
            .cluster(FQDN, 9080)
            .expect("reviews")
            .built()
            .is_some()
    );
    let ratings = three.cluster(RATINGS, 9080).expect("ratings");
    assert!(
        ratings.built().is_none(),
        "idle since the last sweep: freed"
    );
    // Called again, it is built again, from nothing.
    assert_eq!(ratings.get().endpoints[0].addr.port(), 9101);
}

#[tokio::test]
async fn a_push_keeps_host_ports_it_left_alone_and_reroutes_those_whose_destinations_moved() {
    let dir = tempfile::tempdir().expect("dir");
    let metrics = Metrics::new();
    let identity = identity(dir.path(), &metrics);
    const RATINGS: &str = "ratings.default.svc.cluster.local";
    let view = |v2_port: u16, ratings_port: u16| MeshView {
        services: vec![
            service(FQDN, vec![endpoint(9001, "v1"), endpoint(v2_port, "v2")]),
            service(RATINGS, vec![endpoint(ratings_port, "v1")]),
        ],
        routes: [(FQDN.to_string(), Arc::new(all_to_v2()))].into(),
        policies: [(FQDN.to_string(), Arc::new(subsets()))].into(),
        ..Default::default()
    };
    let v2 = |s: &Snapshot| {
        let req = http::Request::get("/").body(()).expect("request");
        let hp = s.route("reviews:9080").expect("routes");
        let routed = hp.select(Head::of(&req), "reviews").expect("selected");
        let cluster = routed.cluster.expect("a cluster");
        cluster
            .endpoints
            .iter()
            .map(|e| e.addr.port())
            .collect::<Vec<_>>()
    };
    let one =
        Snapshot::build(&local(), &view(9002, 9101), &identity, &metrics, 1, None).expect("builds");
    assert_eq!(v2(&one), [9002]);

    // Only ratings moved: reviews' host port (its compiled routes) is the same one.
    let two = Snapshot::build(
        &local(),
        &view(9002, 9102),
        &identity,
        &metrics,
        2,
        Some(&one),
    )
    .expect("builds");
    let same = |a: &Snapshot, b: &Snapshot, host: &str| {
        Arc::ptr_eq(
            a.route(host).expect("routes"),
            b.route(host).expect("routes"),
        )
    };
    assert!(same(&one, &two, "reviews:9080"));
    assert!(!same(&one, &two, "ratings:9080"), "ratings changed");

    // reviews' v2 endpoint moved: the table did not change, but the subset cluster it
    // leads to is a new one, so the routes are compiled again and lead to it.
    let three = Snapshot::build(
        &local(),
        &view(9003, 9102),
        &identity,
        &metrics,
        3,
        Some(&two),
    )
    .expect("builds");
    assert!(!same(&two, &three, "reviews:9080"));
    assert_eq!(v2(&three), [9003]);
    assert!(same(&two, &three, "ratings:9080"));

    // The table itself changes (all to v1 now): compiled again.
    let mut to_v1 = view(9003, 9102);
    let mut table = all_to_v2();
    table.http[0].route[0].subset = "v1".into();
    to_v1.routes.insert(FQDN.to_string(), Arc::new(table));
    let four =
        Snapshot::build(&local(), &to_v1, &identity, &metrics, 4, Some(&three)).expect("builds");
    assert!(!same(&three, &four, "reviews:9080"));
    assert_eq!(v2(&four), [9001]);
}

/// A view on demand knowing `list`.
fn known_view(list: &[Arc<ServiceSpec>]) -> MeshView {
    MeshView {
        known: Some(Arc::new(list.to_vec())),
        ..Default::default()
    }
}

/// The snapshot of a push of `pushed` after `first`, and the same built from nothing.
fn after_and_from_scratch(
    first: &Snapshot,
    pushed: &[Arc<ServiceSpec>],
    identity: &Arc<Identity>,
    metrics: &Metrics,
) -> (Snapshot, Snapshot) {
    let view = known_view(pushed);
    let after = Snapshot::build(&local(), &view, identity, metrics, 2, Some(first));
    let scratch = Snapshot::build(&local(), &view, identity, metrics, 2, None);
    (after.expect("builds"), scratch.expect("builds"))
}

/// `spec` as a sidecar on demand knows it before its fetch: no endpoints, their IPs only.
fn known(spec: &Arc<ServiceSpec>, vip: &str) -> Arc<ServiceSpec> {
    let mut k = (**spec).clone();
    k.endpoint_ips = k.endpoints.drain(..).map(|e| e.addr.ip()).collect();
    k.awaiting = true;
    k.addresses = vec![vip.parse().expect("vip")];
    Arc::new(k)
}

#[tokio::test]
async fn on_demand_a_push_that_moves_a_few_services_patches_the_address_table_as_a_build_would() {
    let dir = tempfile::tempdir().expect("dir");
    let metrics = Metrics::new();
    let identity = identity(dir.path(), &metrics);
    // Sixteen services, each with a virtual IP and a pod; s09 also lists s03's pod, which s03
    // holds (equal claims: the first host name).
    let pod = |i: u8| EndpointSpec {
        addr: SocketAddr::from(([10, 1, 1, i], 15006)),
        ..endpoint(15006, "v1")
    };
    let member = |i: u8, pods: Vec<EndpointSpec>| {
        known(
            &service(&format!("s{i:02}.default.svc.cluster.local"), pods),
            &format!("10.96.1.{i}"),
        )
    };
    let list: Vec<_> = (0..16u8)
        .map(|i| match i {
            9 => member(9, vec![pod(9), pod(3)]),
            i => member(i, vec![pod(i)]),
        })
        .collect();
    let first = Snapshot::build(&local(), &known_view(&list), &identity, &metrics, 1, None)
        .expect("builds");
    // A push: s03's pod moves, and s12 takes s05's virtual IP as its pod's (a virtual IP
    // still beats it). The rest are the same specs at the same places.
    let mut pushed = list.clone();
    pushed[3] = member(
        3,
        vec![EndpointSpec {
            addr: SocketAddr::from(([10, 1, 9, 9], 15006)),
            ..endpoint(15006, "v1")
        }],
    );
    pushed[12] = member(
        12,
        vec![EndpointSpec {
            addr: SocketAddr::from(([10, 96, 1, 5], 15006)),
            ..endpoint(15006, "v1")
        }],
    );
    let (patched, scratch) = after_and_from_scratch(&first, &pushed, &identity, &metrics);
    let held = |snap: &Snapshot, addr: String| {
        snap.captured(addr.parse().expect("addr"))
            .map(|t| t.host.cluster.labels.service.fqdn.to_string())
    };
    let mut addrs: Vec<String> = (0..16)
        .flat_map(|i| [format!("10.96.1.{i}:9080"), format!("10.1.1.{i}:9080")])
        .collect();
    addrs.push("10.1.9.9:9080".into());
    for addr in addrs {
        assert_eq!(
            held(&patched, addr.clone()),
            held(&scratch, addr.clone()),
            "{addr}: the patched table answers as one built whole"
        );
    }
    assert_eq!(
        held(&patched, "10.1.1.3:9080".into()).as_deref(),
        Some("s09.default.svc.cluster.local"),
        "s03 left its pod: the next claim holds it"
    );
    assert_eq!(
        held(&patched, "10.1.9.9:9080".into()).as_deref(),
        Some("s03.default.svc.cluster.local")
    );
    assert_eq!(
        held(&patched, "10.96.1.5:9080".into()).as_deref(),
        Some("s05.default.svc.cluster.local"),
        "a virtual IP beats a pod IP"
    );
    assert_eq!(
        held(&patched, "10.1.1.12:9080".into()),
        None,
        "s12's old pod"
    );
}

#[tokio::test]
async fn on_demand_a_push_that_adds_and_drops_services_carries_the_directory_as_a_build_would() {
    let dir = tempfile::tempdir().expect("dir");
    let metrics = Metrics::new();
    let identity = identity(dir.path(), &metrics);
    let member = |i: u8, pods: &[String]| {
        let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
        spec_at(
            &format!("s{i:02}.default.svc.cluster.local"),
            9080,
            &[&format!("10.96.1.{i}")],
            &pods,
        )
    };
    let pod = |i: u8| format!("10.1.1.{i}");
    // Twenty-four services; s09 also lists s03's pod.
    let list: Vec<_> = (0..24u8)
        .map(|i| match i {
            9 => member(9, &[pod(9), pod(3)]),
            i => member(i, &[pod(i)]),
        })
        .collect();
    let first = Snapshot::build(&local(), &known_view(&list), &identity, &metrics, 1, None)
        .expect("builds");
    // A push: s03 leaves (s09 then holds its pod), and a new service comes between s05 and
    // s06 whose virtual IP is s07's pod's address (a virtual IP beats a pod IP) and whose pod
    // is s20's pod (equal claims: s20's name comes after "s05a").
    let mut pushed = list.clone();
    pushed.remove(3);
    let newcomer = spec_at(
        "s05a.default.svc.cluster.local",
        9080,
        &["10.1.1.7"],
        &["10.1.1.20"],
    );
    pushed.insert(5, newcomer);
    let (carried, scratch) = after_and_from_scratch(&first, &pushed, &identity, &metrics);
    let held = |snap: &Snapshot, addr: &str| {
        snap.captured(addr.parse().expect("addr"))
            .map(|t| t.host.cluster.labels.service.fqdn.to_string())
    };
    let named = |snap: &Snapshot, host: &str| {
        snap.route(host)
            .ok()
            .map(|h| h.cluster.labels.service.fqdn.to_string())
    };
    for i in 0..24u8 {
        for addr in [format!("10.96.1.{i}:9080"), format!("10.1.1.{i}:9080")] {
            assert_eq!(
                held(&carried, &addr),
                held(&scratch, &addr),
                "{addr}: the carried table answers as one built whole"
            );
        }
        for host in [
            format!("s{i:02}:9080"),
            format!("s{i:02}.default.svc.cluster.local:9080"),
        ] {
            assert_eq!(named(&carried, &host), named(&scratch, &host), "{host}");
        }
    }
    assert_eq!(
        held(&carried, "10.1.1.3:9080").as_deref(),
        Some("s09.default.svc.cluster.local"),
        "s03 left: the next claim holds its pod"
    );
    assert_eq!(
        held(&carried, "10.1.1.7:9080").as_deref(),
        Some("s05a.default.svc.cluster.local"),
        "a virtual IP beats a pod IP"
    );
    assert_eq!(
        held(&carried, "10.1.1.20:9080").as_deref(),
        Some("s05a.default.svc.cluster.local"),
        "equal claims: the first host name"
    );
    assert_eq!(named(&carried, "s03:9080"), None, "s03 left");
    assert_eq!(
        named(&carried, "s05a:9080").as_deref(),
        Some("s05a.default.svc.cluster.local")
    );
    assert_eq!(
        named(&carried, "s23:9080").as_deref(),
        Some("s23.default.svc.cluster.local"),
        "a service after the change, at its new place"
    );
}

#[tokio::test]
async fn on_demand_the_directory_answers_for_services_not_fetched_and_fetched_ones_shadow_it() {
    let dir = tempfile::tempdir().expect("dir");
    let metrics = Metrics::new();
    let identity = identity(dir.path(), &metrics);
    let ratings_fqdn = "ratings.default.svc.cluster.local";
    let pod = SocketAddr::from(([10, 1, 0, 7], 15006));
    let reviews = service(
        FQDN,
        vec![EndpointSpec {
            addr: pod,
            ..endpoint(15006, "v1")
        }],
    );
    let ratings = service(ratings_fqdn, vec![endpoint(15006, "v1")]);
    let list = Arc::new(vec![
        known(&reviews, "10.96.0.9"),
        known(&ratings, "10.96.0.10"),
    ]);
    let view = MeshView {
        known: Some(list.clone()),
        ..Default::default()
    };
    let first = Snapshot::build(&local(), &view, &identity, &metrics, 1, None).expect("builds");
    let fqdn_at = |snap: &Snapshot, addr: &str| {
        snap.captured(addr.parse().expect("addr")).map(|t| {
            (
                t.host.cluster.labels.service.fqdn.to_string(),
                t.host.cluster.awaiting(),
            )
        })
    };
    assert!(first.awaiting(FQDN) && first.awaiting(ratings_fqdn));
    assert_eq!(
        first.service_clusters().count(),
        0,
        "nothing made before a lookup"
    );
    assert_eq!(first.awaiting_specs().count(), 2);
    let hp = first
        .route("reviews:9080")
        .expect("known by its short name");
    assert!(hp.cluster.awaiting());
    assert_eq!(
        first.service_clusters().count(),
        1,
        "a lookup makes what it returns"
    );
    assert_eq!(first.awaiting_specs().count(), 1);
    assert_eq!(
        first.route("nobody").map(|_| ()),
        Err(RouteMiss::UnknownHost)
    );
    assert_eq!(fqdn_at(&first, "10.96.0.9:9080"), Some((FQDN.into(), true)));
    assert_eq!(
        fqdn_at(&first, "10.1.0.7:9080"),
        Some((FQDN.into(), true)),
        "a pod IP"
    );
    assert!(first.service_clusters().all(|c| c.awaiting()));
    assert_eq!(
        first.awaiting_previews().len(),
        1,
        "ratings, shown, not kept"
    );
    assert_eq!(first.awaiting_specs().count(), 1);
    let hosts = first.host_count();

    // reviews is fetched; a service of the mesh claims ratings' virtual IP as its pod's.
    let mut squatter = service("aaa.default.svc.cluster.local", vec![]);
    Arc::make_mut(&mut squatter).endpoints = vec![EndpointSpec {
        addr: SocketAddr::from(([10, 96, 0, 10], 9080)),
        ..endpoint(9080, "v1")
    }];
    let fetched = MeshView {
        services: vec![reviews.clone(), squatter],
        known: Some(list.clone()),
        ..Default::default()
    };
    let second =
        Snapshot::build(&local(), &fetched, &identity, &metrics, 2, Some(&first)).expect("builds");
    let (a, b) = (first.directory.as_ref(), second.directory.as_ref());
    assert!(
        a.zip(b).is_some_and(|(a, b)| Arc::ptr_eq(a, b)),
        "the same list: the same directory, nothing rebuilt for the fetch"
    );
    assert!(!second.awaiting(FQDN) && second.awaiting(ratings_fqdn));
    let hp = second.route("reviews").expect("fetched");
    assert!(
        !hp.cluster.awaiting(),
        "the fetched service shadows the directory's"
    );
    assert_eq!(hp.cluster.endpoint_count(), 1);
    assert_eq!(
        fqdn_at(&second, "10.1.0.7:9080"),
        Some((FQDN.into(), false))
    );
    assert_eq!(
        fqdn_at(&second, "10.96.0.10:9080"),
        Some((ratings_fqdn.into(), true)),
        "a virtual IP in the directory beats a fetched service's pod IP"
    );
    let clusters: Vec<(String, bool)> = second
        .service_clusters()
        .map(|c| (c.labels.service.fqdn.to_string(), c.awaiting()))
        .collect();
    assert_eq!(
        clusters,
        [
            (FQDN.to_string(), false),
            ("aaa.default.svc.cluster.local".to_string(), false),
            (ratings_fqdn.to_string(), true),
        ],
        "each service once: the stale directory entry for reviews is left out"
    );
    assert_eq!(
        second.host_count(),
        hosts + 4,
        "aaa's four names; reviews' are counted once"
    );

    // A new list (a Service pushed) makes a new directory.
    let moved = Arc::new(vec![list[0].clone(), known(&ratings, "10.96.0.11")]);
    let view = MeshView {
        known: Some(moved),
        ..Default::default()
    };
    let third =
        Snapshot::build(&local(), &view, &identity, &metrics, 3, Some(&first)).expect("builds");
    assert!(!Arc::ptr_eq(
        first.directory.as_ref().expect("directory"),
        third.directory.as_ref().expect("directory")
    ));
    assert!(third.route(FQDN).expect("known").cluster.awaiting());
    assert_eq!(
        fqdn_at(&third, "10.96.0.11:9080"),
        Some((ratings_fqdn.into(), true))
    );
    assert_eq!(fqdn_at(&third, "10.96.0.10:9080"), None);
    let names = |s: &Snapshot| s.directory.as_ref().expect("directory").names.clone();
    assert!(
        Arc::ptr_eq(&names(&first), &names(&third)),
        "an address moved, no name: the name index is kept"
    );

    // A name added (an alias) makes the name index again.
    let mut aliased = (*known(&ratings, "10.96.0.11")).clone();
    aliased.aliases = vec!["stars".into()];
    let renamed = Arc::new(vec![list[0].clone(), Arc::new(aliased)]);
    let view = MeshView {
        known: Some(renamed),
        ..Default::default()
    };
    let fourth =
        Snapshot::build(&local(), &view, &identity, &metrics, 4, Some(&third)).expect("builds");
    assert!(!Arc::ptr_eq(&names(&third), &names(&fourth)));
    let hp = fourth.route("stars:9080").expect("the alias");
    assert_eq!(&*hp.cluster.labels.service.fqdn, ratings_fqdn);
    assert!(third.route("stars:9080").is_err());
}

/// A service port for the directory's comparison: `host` (its name and namespace from it)
/// at `port`, with virtual IPs and pod IPs.
fn spec_at(host: &str, port: u16, vips: &[&str], pods: &[&str]) -> Arc<ServiceSpec> {
    let mut s = (*service(host, vec![])).clone();
    let mut parts = host.split('.');
    s.name = parts.next().unwrap_or(host).into();
    s.namespace = parts.next().unwrap_or("default").into();
    s.port = port;
    s.addresses = vips.iter().map(|a| a.parse().expect("vip")).collect();
    s.endpoint_ips = pods.iter().map(|a| a.parse().expect("pod")).collect();
    Arc::new(s)
}

#[tokio::test]
async fn on_demand_the_directory_answers_every_name_and_address_as_the_fetched_table_would() {
    let dir = tempfile::tempdir().expect("dir");
    let metrics = Metrics::new();
    let identity = identity(dir.path(), &metrics);
    let mut pay = (*spec_at("pay.example.com", 443, &["10.96.0.3", "fd00::3"], &[])).clone();
    pay.aliases = vec!["PAY".into(), "pay.internal".into()];
    let specs = vec![
        spec_at(
            "reviews.shop.svc.cluster.local",
            9080,
            &["10.96.0.1"],
            &["10.1.0.1"],
        ),
        spec_at(
            "reviews.shop.svc.cluster.local",
            80,
            &["10.96.0.1"],
            &["10.1.0.1"],
        ),
        // The same short name in another namespace, at the same port; its pod shares an IP
        // with the first (equal claims: the first host name in order holds it).
        spec_at(
            "reviews.other.svc.cluster.local",
            9080,
            &["10.96.0.2"],
            &["10.1.0.1"],
        ),
        // Claims the first's virtual IP as a pod IP: the virtual IP wins.
        spec_at("aaa.shop.svc.cluster.local", 9080, &[], &["10.96.0.1"]),
        Arc::new(pay),
    ];
    let fetched = MeshView {
        services: specs.clone(),
        ..Default::default()
    };
    let known = MeshView {
        known: Some(Arc::new(specs)),
        ..Default::default()
    };
    let whole = Snapshot::build(&local(), &fetched, &identity, &metrics, 1, None).expect("builds");
    let lazy = Snapshot::build(&local(), &known, &identity, &metrics, 1, None).expect("builds");
    assert!(lazy.directory.is_some() && whole.directory.is_none());
    let named = |s: &Snapshot, q: &str| {
        s.route(q)
            .map(|hp| (hp.cluster.labels.service.fqdn.to_string(), hp.port))
    };
    for q in [
        "reviews",
        "reviews:9080",
        "reviews:80",
        "reviews:7000",
        "Reviews.Shop",
        "reviews.shop.svc",
        "reviews.shop.svc.cluster.local:80",
        "reviews.shop.svc.cluster.local.",
        "reviews.other",
        "reviews.other.svc:9080",
        "reviews.shop.svc.cluster",
        "reviewsx",
        "pay",
        "PAY:443",
        "pay.internal",
        "pay.example.com",
        "pay.example",
        "nobody",
        "",
    ] {
        assert_eq!(named(&lazy, q), named(&whole, q), "{q}");
    }
    assert_eq!(
        named(&lazy, "reviews"),
        Ok(("reviews.shop.svc.cluster.local".into(), 80)),
        "two ports: 80"
    );
    let at = |s: &Snapshot, a: &str| {
        s.captured(a.parse().expect("addr"))
            .map(|t| (t.host.cluster.labels.service.fqdn.to_string(), t.host.port))
    };
    for a in [
        "10.96.0.1:9080",
        "10.96.0.1:80",
        "10.1.0.1:9080",
        "10.1.0.1:80",
        "10.96.0.2:9080",
        "[::ffff:10.96.0.2]:9080",
        "10.96.0.3:443",
        "[fd00::3]:443",
        "[fd00::3]:80",
        "10.9.9.9:9080",
    ] {
        assert_eq!(at(&lazy, a), at(&whole, a), "{a}");
    }
    assert_eq!(
        at(&lazy, "10.1.0.1:9080"),
        Some(("reviews.other.svc.cluster.local".into(), 9080))
    );
    assert_eq!(
        at(&lazy, "10.96.0.1:9080"),
        Some(("reviews.shop.svc.cluster.local".into(), 9080))
    );
    assert_eq!(lazy.host_count(), whole.host_count());
}

#[test]
fn a_service_answers_to_exactly_the_names_it_is_indexed_by() {
    let mut pay = (*spec_at("pay.example.com", 443, &[], &[])).clone();
    pay.aliases = vec!["Pay.Alias".into()];
    let specs = [
        spec_at("reviews.shop.svc.cluster.local", 9080, &[], &[]),
        Arc::new(pay),
    ];
    for s in &specs {
        for name in super::names_of(s) {
            assert!(super::answers_to(s, &name), "{name}");
        }
    }
    let (reviews, pay) = (&specs[0], &specs[1]);
    for name in [
        "reviews.shop.svc.cluster",
        "reviews.shop.sv",
        "reviews.sho",
        "reviews.",
        "review",
        "reviews.shop.svc.cluster.local.",
        "shop",
    ] {
        assert!(!super::answers_to(reviews, name), "{name}");
    }
    assert!(super::answers_to(pay, "pay.alias"));
    for name in ["Pay.Alias", "pay", "pay.example", "pay.alia"] {
        assert!(!super::answers_to(pay, name), "{name}");
    }
}
