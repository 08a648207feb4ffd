//! Named (on-demand) subscriptions: the stream's logic driven request by request against a
//! real control plane's generations, then one proxy's story through the real gRPC server over
//! mutual TLS, beside a wildcard subscriber.

use super::*;
use crate::ca::{CertificateAuthority, TokenSigner};
use crate::model::ConfigSet;
use crate::plane::DEFAULT_DEBOUNCE;
use crate::registry::{Registry, WorkloadPort};
use meshlite_xds_proto::discovery::Node;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

const NS: &str = "default";

/// How long the gRPC test waits for anything.
const WAIT: Duration = Duration::from_secs(10);

/// The hostname of service `svc`: the name its SERVICE and ENDPOINTS resources have.
fn host(svc: &str) -> String {
    crate::validate::fqdn(svc, NS)
}

/// A fresh instance of service `svc` (a new endpoint: its ENDPOINTS resource changes).
fn instance(svc: &str) -> Workload {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{svc}-{n}");
    let [_, _, hi, lo] = n.to_be_bytes();
    let address = SocketAddr::from(([10, 0, hi, lo], 15006));
    Workload {
        key: format!("{name}.{NS}@{address}"),
        name,
        namespace: NS.into(),
        service_account: svc.into(),
        identity: format!("spiffe://cluster.local/ns/{NS}/sa/{svc}"),
        labels: BTreeMap::from([("app".to_string(), svc.to_string())]),
        address,
        ports: vec![WorkloadPort {
            port: 8080,
            protocol: "http".into(),
            target_port: None,
        }],
        locality: Default::default(),
    }
}

/// A control plane whose registry has one instance of each service.
struct Mesh {
    plane: Arc<ControlPlane>,
    _state: tempfile::TempDir,
}

impl Mesh {
    fn new<S: AsRef<str>>(services: &[S]) -> Self {
        let state = tempfile::tempdir().expect("a temporary directory");
        let plane = ControlPlane::new(
            CertificateAuthority::load_or_create(state.path(), "cluster.local").expect("a CA"),
            TokenSigner::load_or_create(state.path()).expect("a token key"),
            ConfigSet::default(),
            // No grace: a removed service is gone at the next publication.
            Registry::new(Duration::ZERO),
            DEFAULT_DEBOUNCE,
            Duration::from_secs(3600),
            None,
        );
        for s in services {
            plane.registry.connect(instance(s.as_ref()));
        }
        plane.publish(Instant::now());
        Self {
            plane,
            _state: state,
        }
    }

    fn generation(&self) -> Generation {
        self.plane.generation.borrow().clone()
    }

    /// One more instance of `svc` (the service appears if it did not exist), published.
    fn scale_up(&self, svc: &str) {
        self.plane.registry.connect(instance(svc));
        self.plane.publish(Instant::now());
    }

    /// Every instance of `svc` gone, published.
    fn remove(&self, svc: &str) {
        for w in self.plane.registry.workloads() {
            if w.service_name() == svc {
                self.plane.registry.disconnect(&w.key);
            }
        }
        self.plane.registry.sweep();
        self.plane.publish(Instant::now());
    }

    /// The version of `svc`'s endpoints now.
    fn endpoints_version(&self, svc: &str) -> String {
        let g = self.generation();
        let view = g.resources.view_for(&client_workload());
        view[type_url::ENDPOINTS][&host(svc)].version.clone()
    }

    /// A stream of a proxy with no service of its own, driven by hand (no connection).
    fn stream(&self) -> Stream {
        let (tx, _) = mpsc::channel(RESPONSE_QUEUE);
        let id = self.plane.next_stream_id();
        self.plane.proxies().insert(
            id,
            ProxyStatus {
                connected_at: Some(Instant::now()),
                ..Default::default()
            },
        );
        Stream::new(self.plane.clone(), id, client_workload(), tx)
    }

    /// What the generation watch makes a stream do.
    fn deliver(&self, s: &mut Stream) {
        s.queue(&self.generation(), None);
    }

    /// The generation `s` has answered all of.
    fn acked(&self, s: &Stream) -> u64 {
        self.plane.proxies()[&s.id].acked
    }
}

fn client_workload() -> Workload {
    Workload {
        key: "client.default@10.9.9.9:15006".into(),
        name: "client".into(),
        namespace: NS.into(),
        service_account: "client".into(),
        identity: format!("spiffe://cluster.local/ns/{NS}/sa/client"),
        labels: BTreeMap::new(),
        address: SocketAddr::from(([10, 9, 9, 9], 15006)),
        ports: Vec::new(),
        locality: Default::default(),
    }
}

/// Every response the stream has to send now.
fn drain(s: &mut Stream) -> Vec<DeltaDiscoveryResponse> {
    std::iter::from_fn(|| s.next_response()).collect()
}

fn resource_names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|r| r.name.clone()).collect()
}

fn hosts(svcs: &[&str]) -> Vec<String> {
    svcs.iter().map(|s| host(s)).collect()
}

/// A request subscribing `svcs`' endpoints by name.
fn subscribe(svcs: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url::ENDPOINTS.into(),
        resource_names_subscribe: hosts(svcs),
        ..Default::default()
    }
}

/// A request unsubscribing `svcs`' endpoints.
fn unsubscribe(svcs: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url::ENDPOINTS.into(),
        resource_names_unsubscribe: hosts(svcs),
        ..Default::default()
    }
}

/// The ACK of `r`.
fn ack(r: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: r.type_url.clone(),
        response_nonce: r.nonce.clone(),
        ..Default::default()
    }
}

/// The one response the stream has to send now, ACKed.
fn one_acked(s: &mut Stream) -> DeltaDiscoveryResponse {
    let mut out = drain(s);
    assert_eq!(out.len(), 1, "one response: {out:?}");
    let r = out.remove(0);
    assert_eq!(r.type_url, type_url::ENDPOINTS);
    s.request(ack(&r)).expect("the ACK is taken");
    r
}

#[test]
fn a_named_subscription_gets_the_names_that_exist_and_hears_the_others_do_not() {
    let mesh = Mesh::new(&["a", "b", "c"]);
    let mut s = mesh.stream();
    s.request(subscribe(&["a", "missing"]))
        .expect("a subscription");
    let r = one_acked(&mut s);
    assert_eq!(resource_names(&r), hosts(&["a"]));
    assert_eq!(r.removed_resources, hosts(&["missing"]));
    assert_eq!(mesh.acked(&s), mesh.generation().number);

    // A later name rides on an ACK: that ACK counts, and the name is answered alone.
    s.request(subscribe(&["c"])).expect("a subscription");
    let mut out = drain(&mut s);
    assert_eq!(out.len(), 1);
    let r = out.remove(0);
    let mut next = ack(&r);
    next.resource_names_subscribe = hosts(&["b"]);
    s.request(next).expect("an ACK and a subscription");
    let r = one_acked(&mut s);
    assert_eq!(resource_names(&r), hosts(&["b"]));
    assert!(r.removed_resources.is_empty());
    assert!(s.pending.is_empty(), "both responses were ACKed");

    // A name subscribed again is sent again (every subscribed name is answered).
    s.request(subscribe(&["a"])).expect("a subscription");
    let r = one_acked(&mut s);
    assert_eq!(resource_names(&r), hosts(&["a"]));

    // Only the subscribed type is answered.
    assert_eq!(s.subscriptions.len(), 1);
}

#[test]
fn a_named_subscriber_hears_only_of_changes_to_its_names() {
    let mesh = Mesh::new(&["a", "b", "c"]);
    let mut s = mesh.stream();
    s.request(subscribe(&["a", "m"])).expect("a subscription");
    one_acked(&mut s);

    // Another service changes: nothing is sent, and the generation still counts as answered.
    mesh.scale_up("c");
    mesh.deliver(&mut s);
    assert!(drain(&mut s).is_empty(), "nothing for an unsubscribed name");
    assert_eq!(mesh.acked(&s), mesh.generation().number);

    // Its own name changes: that resource alone.
    mesh.scale_up("a");
    mesh.deliver(&mut s);
    let r = one_acked(&mut s);
    assert_eq!(resource_names(&r), hosts(&["a"]));
    assert!(r.removed_resources.is_empty());
    assert_eq!(r.resources[0].version, mesh.endpoints_version("a"));
    assert_eq!(mesh.acked(&s), mesh.generation().number);

    // A subscribed name that appears is sent; one that disappears is removed.
    mesh.scale_up("m");
    mesh.deliver(&mut s);
    let r = one_acked(&mut s);
    assert_eq!(resource_names(&r), hosts(&["m"]));
    mesh.remove("a");
    mesh.deliver(&mut s);
    let r = one_acked(&mut s);
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, hosts(&["a"]));

    // A generation that changes nothing of the type at all costs nothing either.
    mesh.plane.publish(Instant::now());
    mesh.deliver(&mut s);
    assert!(drain(&mut s).is_empty());
    assert_eq!(mesh.acked(&s), mesh.generation().number);
}

#[test]
fn an_unsubscribed_name_is_forgotten_and_sent_again_when_subscribed_again() {
    let mesh = Mesh::new(&["a", "b"]);
    let mut s = mesh.stream();
    s.request(subscribe(&["a", "b"])).expect("a subscription");
    let r = one_acked(&mut s);
    assert_eq!(resource_names(&r), hosts(&["a", "b"]));

    // Dropping a name needs no answer; its changes and its removal are not sent.
    s.request(unsubscribe(&["a"])).expect("an unsubscription");
    assert!(drain(&mut s).is_empty());
    mesh.scale_up("a");
    mesh.deliver(&mut s);
    assert!(drain(&mut s).is_empty());
    mesh.remove("a");
    mesh.deliver(&mut s);
    assert!(drain(&mut s).is_empty());
    assert_eq!(mesh.acked(&s), mesh.generation().number);

    // Subscribed again, it is answered again (here: it no longer exists).
    s.request(subscribe(&["a"])).expect("a subscription");
    let r = one_acked(&mut s);
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, hosts(&["a"]));
    mesh.scale_up("a");
    mesh.deliver(&mut s);
    let r = one_acked(&mut s);
    assert_eq!(resource_names(&r), hosts(&["a"]));

    // A name both dropped and subscribed in one request stays subscribed and is answered.
    let mut both = subscribe(&["b"]);
    both.resource_names_unsubscribe = hosts(&["b"]);
    s.request(both).expect("a change of names");
    let r = one_acked(&mut s);
    assert_eq!(resource_names(&r), hosts(&["b"]));
}

#[test]
fn initial_versions_spare_what_the_proxy_holds_and_concern_only_subscribed_names() {
    let mesh = Mesh::new(&["a", "b", "c"]);
    let mut s = mesh.stream();
    let mut first = subscribe(&["a", "b", "m"]);
    first.initial_resource_versions = BTreeMap::from([
        (host("a"), mesh.endpoints_version("a")),
        (host("b"), "stale".to_string()),
        // Held from an earlier life but not subscribed: neither removed nor sent.
        (host("c"), "whatever".to_string()),
        (host("x"), "gone".to_string()),
    ]);
    s.request(first).expect("a subscription");
    let r = one_acked(&mut s);
    // `a` is held at the current version: it is listed nowhere (see the module docs).
    assert_eq!(resource_names(&r), hosts(&["b"]));
    assert_eq!(r.removed_resources, hosts(&["m"]));

    // A resubscription (empty nonce, no names) answers every name again.
    s.request(DeltaDiscoveryRequest {
        type_url: type_url::ENDPOINTS.into(),
        ..Default::default()
    })
    .expect("a resubscription");
    let r = one_acked(&mut s);
    assert_eq!(resource_names(&r), hosts(&["a", "b"]));
    assert_eq!(r.removed_resources, hosts(&["m"]));
}

#[test]
fn an_answer_in_several_batches_names_every_subscribed_name_exactly_once() {
    let services: Vec<String> = (0..200).map(|i| format!("svc-{i:03}")).collect();
    let mesh = Mesh::new(&services);
    let mut s = mesh.stream();
    let mut wanted: Vec<&str> = services.iter().take(150).map(String::as_str).collect();
    let missing: Vec<String> = (0..30).map(|i| format!("nope-{i:02}")).collect();
    wanted.extend(missing.iter().map(String::as_str));
    s.request(subscribe(&wanted)).expect("a subscription");
    let out = drain(&mut s);
    assert!(out.len() > 1, "150 endpoints need several batches");
    let mut answered = Vec::new();
    for (i, r) in out.iter().enumerate() {
        if i > 0 {
            assert!(
                r.removed_resources.is_empty(),
                "removals ride the first batch"
            );
        }
        answered.extend(resource_names(r));
        answered.extend(r.removed_resources.iter().cloned());
    }
    answered.sort();
    let mut expected = hosts(&wanted);
    expected.sort();
    assert_eq!(
        answered, expected,
        "each name once, as a resource or a removal"
    );
    assert_eq!(
        out[0].removed_resources,
        hosts(&missing.iter().map(String::as_str).collect::<Vec<_>>())
    );
}

#[test]
fn names_dropped_while_an_answer_is_going_out_are_not_sent() {
    let services: Vec<String> = (0..200).map(|i| format!("svc-{i:03}")).collect();
    let names: Vec<&str> = services.iter().map(String::as_str).collect();
    let mesh = Mesh::new(&services);
    let mut s = mesh.stream();
    let mut all = subscribe(&names);
    all.resource_names_subscribe.push(host("nope"));
    s.request(all).expect("a subscription");
    let first = s.next_response().expect("a first batch");
    assert_eq!(first.removed_resources, hosts(&["nope"]));
    let mut sent = resource_names(&first);
    let dropped: Vec<&str> = names[150..].to_vec();
    s.request(unsubscribe(&dropped)).expect("an unsubscription");
    for r in drain(&mut s) {
        sent.extend(resource_names(&r));
    }
    sent.sort();
    assert_eq!(sent, hosts(&names[..150]));
}

#[test]
fn wildcard_subscriptions_are_as_before() {
    let mesh = Mesh::new(&["a", "b", "c"]);
    for first in [
        DeltaDiscoveryRequest {
            type_url: type_url::ENDPOINTS.into(),
            ..Default::default()
        },
        subscribe(&["*"]),
    ] {
        let mut s = mesh.stream();
        s.request(first).expect("a subscription");
        let r = one_acked(&mut s);
        assert_eq!(resource_names(&r), hosts(&["a", "b", "c"]));

        // Names subscribed on a wildcard subscription get an answer and change nothing.
        s.request(subscribe(&["a", "m"])).expect("names");
        let r = one_acked(&mut s);
        assert!(r.resources.is_empty());
        assert_eq!(r.removed_resources, hosts(&["m"]));
        s.request(unsubscribe(&["a"])).expect("names");
        assert!(drain(&mut s).is_empty());
        assert!(s.subscriptions[type_url::ENDPOINTS].names.is_none());

        // It still gets every change.
        mesh.scale_up("c");
        mesh.deliver(&mut s);
        let r = one_acked(&mut s);
        assert_eq!(resource_names(&r), hosts(&["c"]));
    }
}

#[test]
fn subscribing_the_wildcard_on_a_named_subscription_makes_it_wildcard() {
    let mesh = Mesh::new(&["a", "b", "c"]);
    let mut s = mesh.stream();
    s.request(subscribe(&["a"])).expect("a subscription");
    one_acked(&mut s);
    s.request(subscribe(&["*"])).expect("the wildcard");
    let r = one_acked(&mut s);
    assert_eq!(resource_names(&r), hosts(&["b", "c"]));
    mesh.scale_up("c");
    mesh.deliver(&mut s);
    let r = one_acked(&mut s);
    assert_eq!(resource_names(&r), hosts(&["c"]));
}

// ------------------------------------------------------------ through the gRPC server

/// A raw delta xDS client with its own SVID, over mutual TLS.
struct Client {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: Streaming<DeltaDiscoveryResponse>,
}

impl Client {
    /// Connects as workload `name` (its own service account, no ports) and sends `first`.
    async fn connect(
        plane: &ControlPlane,
        addr: SocketAddr,
        name: &str,
        mut first: DeltaDiscoveryRequest,
    ) -> Self {
        use meshlite_xds_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
        use prost_types::{Struct, Value, value::Kind};
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

        let id = meshlite_xds_proto::spiffe::SpiffeId::parse(&format!(
            "spiffe://cluster.local/ns/{NS}/sa/{name}"
        ))
        .expect("a SPIFFE ID");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            id.as_str().try_into().expect("a URI SAN"),
        )];
        let csr = params
            .serialize_request(&key)
            .and_then(|c| c.pem())
            .expect("a CSR");
        let issued = plane
            .ca()
            .sign_csr(
                &csr,
                &id,
                &BTreeMap::new(),
                Duration::from_secs(3600),
                OffsetDateTime::now_utc(),
            )
            .expect("an SVID");
        let chain = issued
            .chain_pem
            .iter()
            .flat_map(|p| CertificateDer::pem_slice_iter(p.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .expect("the chain reads back");
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("the key");
        let mut roots = rustls::RootCertStore::empty();
        for r in plane.ca().roots_der() {
            roots.add(r.clone()).expect("a root");
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("a client certificate");
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("an endpoint")
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let connector = connector.clone();
                async move {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    let tls = connector.connect(ServerName::from(addr.ip()), tcp).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            }))
            .await
            .expect("a connection");

        let text = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_string())),
        };
        first.node = Some(Node {
            id: format!("{name}.{NS}"),
            metadata: Some(Struct {
                fields: BTreeMap::from([
                    ("NAME".to_string(), text(name)),
                    ("NAMESPACE".to_string(), text(NS)),
                    ("SERVICE_ACCOUNT".to_string(), text(name)),
                    ("INBOUND_ADDRESS".to_string(), text("127.0.0.1:15006")),
                ]),
            }),
            ..Default::default()
        });
        let (requests, rx) = mpsc::channel(16);
        requests.send(first).await.expect("the first request");
        let responses = AggregatedDiscoveryServiceClient::new(channel)
            .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("the stream opens")
            .into_inner();
        Self {
            requests,
            responses,
        }
    }

    /// The next response (within [`WAIT`]).
    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("a response in time")
            .expect("the stream is healthy")
            .expect("the stream is open")
    }

    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.requests.send(req).await.expect("the request goes out");
    }

    /// Whether nothing arrives for a while.
    async fn quiet(&mut self) -> bool {
        tokio::time::timeout(Duration::from_millis(300), self.responses.message())
            .await
            .is_err()
    }
}

/// Waits until the stream of node `node` has answered generation `n`.
async fn answered(plane: &ControlPlane, node: &str, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let acked = plane
            .proxies()
            .values()
            .find(|p| p.id == node)
            .map(|p| p.acked);
        if acked >= Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node} did not answer generation {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_proxy_fetches_endpoints_by_name_over_mutual_tls_beside_a_wildcard_proxy() {
    let mesh = Mesh::new(&["a", "b", "c"]);
    let plane = mesh.plane.clone();
    let who = crate::xds::serving::ServingIdentity {
        id: meshlite_xds_proto::spiffe::SpiffeId::parse(
            "spiffe://cluster.local/ns/istio-system/sa/meshlite-control",
        )
        .expect("a SPIFFE ID"),
        dns: vec!["localhost".into()],
        ips: vec![[127, 0, 0, 1].into()],
        ttl: Duration::from_secs(3600),
    };
    let serving = crate::xds::serving::ServingCert::new(&plane, &who).expect("a serving cert");
    let tls = crate::xds::tls::server_config(serving).expect("a TLS config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    let server = tokio::spawn(crate::xds::serve(plane.clone(), listener, tls));

    // On demand: an existing service and a missing one.
    let mut named = Client::connect(&plane, addr, "ondemand", subscribe(&["a", "m"])).await;
    let r = named.next().await;
    assert_eq!(r.type_url, type_url::ENDPOINTS);
    assert_eq!(resource_names(&r), hosts(&["a"]));
    assert_eq!(r.removed_resources, hosts(&["m"]));

    // Later, one more name, with the ACK.
    let mut more = ack(&r);
    more.resource_names_subscribe = hosts(&["b"]);
    named.send(more).await;
    let r = named.next().await;
    assert_eq!(resource_names(&r), hosts(&["b"]));
    assert!(r.removed_resources.is_empty());
    named.send(ack(&r)).await;

    // A wildcard proxy on the same plane gets everything.
    let mut wildcard = Client::connect(
        &plane,
        addr,
        "everything",
        DeltaDiscoveryRequest {
            type_url: type_url::ENDPOINTS.into(),
            ..Default::default()
        },
    )
    .await;
    let r = wildcard.next().await;
    assert_eq!(resource_names(&r), hosts(&["a", "b", "c"]));
    wildcard.send(ack(&r)).await;

    // A change to a service it did not subscribe: the named proxy gets nothing, yet the
    // generation counts as answered; the wildcard proxy gets it.
    mesh.scale_up("c");
    let n = mesh.generation().number;
    let r = wildcard.next().await;
    assert_eq!(resource_names(&r), hosts(&["c"]));
    wildcard.send(ack(&r)).await;
    answered(&plane, "ondemand.default", n).await;
    answered(&plane, "everything.default", n).await;
    assert!(named.quiet().await, "nothing for an unsubscribed service");

    // A change to a subscribed one: both get it.
    mesh.scale_up("a");
    let r = named.next().await;
    assert_eq!(resource_names(&r), hosts(&["a"]));
    assert!(r.removed_resources.is_empty());
    named.send(ack(&r)).await;
    let r = wildcard.next().await;
    assert_eq!(resource_names(&r), hosts(&["a"]));
    wildcard.send(ack(&r)).await;
    answered(&plane, "ondemand.default", mesh.generation().number).await;

    server.abort();
}
