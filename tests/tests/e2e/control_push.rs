//! A sidecar refuses a bad push whole: it NACKs it with the reason and keeps routing on the
//! last good config. The real control plane validates everything, so a stand-in
//! ([`FakeControl`]) sends what it never would.

use meshlite_tests::apps::HttpApp;
use meshlite_tests::control::{ECHO_HOST, ECHO_PORT, MeshProxy, Workload, call, wait_served_by};
use meshlite_tests::deadline::SOON;
use meshlite_tests::fake_control::FakeControl;
use meshlite_xds_proto::v1::{
    Endpoint, Endpoints, HttpMatch, HttpRoute, Protocol, RouteTable, Service, ServicePort,
    StringMatch, WeightedDestination, string_match,
};

const ECHO_FQDN: &str = "echo.default.svc.cluster.local";
const CLIENT_NODE: &str = "client.default";

fn echo_service() -> Service {
    Service {
        hostname: ECHO_FQDN.into(),
        namespace: "default".into(),
        name: "echo".into(),
        ports: vec![ServicePort {
            number: u32::from(ECHO_PORT),
            protocol: Protocol::Http as i32,
            name: "http".into(),
        }],
        identities: vec!["spiffe://cluster.local/ns/default/sa/echo".into()],
        ..Default::default()
    }
}

fn echo_endpoints(address: &str) -> Endpoints {
    Endpoints {
        hostname: ECHO_FQDN.into(),
        endpoints: vec![Endpoint {
            address: address.into(),
            identity: "spiffe://cluster.local/ns/default/sa/echo".into(),
            labels: [("app", "echo"), ("version", "v1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            workload: "echo-v1".into(),
            namespace: "default".into(),
            ..Default::default()
        }],
    }
}

/// Asserts the reply to `nonce` is a NACK whose reason contains every one of `words`.
async fn assert_nacked(fake: &FakeControl, nonce: &str, words: &[&str]) -> String {
    let reply = fake.reply_to(CLIENT_NODE, nonce).await;
    let reason = reply
        .error_detail
        .as_ref()
        .map(|s| s.message.clone())
        .unwrap_or_else(|| panic!("push {nonce} should be NACKed, the sidecar ACKed it"));
    for w in words {
        assert!(
            reason.contains(w),
            "the NACK should name the problem ({w:?}), got {reason:?}"
        );
    }
    reason
}

async fn assert_acked(fake: &FakeControl, nonce: &str) {
    let reply = fake.reply_to(CLIENT_NODE, nonce).await;
    assert!(
        reply.error_detail.is_none(),
        "push {nonce} should be ACKed, got NACK {:?}",
        reply.error_detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_nacks_an_invalid_push_and_keeps_routing_on_the_last_good_config() {
    let fake = FakeControl::start().await;
    let app = HttpApp::start("echo-v1").await;
    let echo = MeshProxy::start(
        &fake.access(),
        &Workload::version_of("echo", "v1", ECHO_PORT, app.addr),
    )
    .await;
    // The fake pushes what the test says, unasked: the client takes the mesh whole (on
    // demand, it would wait for answers to its subscriptions, which the fake never gives).
    let mut client = Workload::new("client");
    client.on_demand = Some(false);
    let client = MeshProxy::start(&fake.access(), &client).await;
    assert!(
        fake.signed() >= 2,
        "both sidecars got their certificate from the fake CA"
    );
    fake.wait_stream(CLIENT_NODE).await;

    let good_address = echo.addrs.inbound.to_string();
    let nonce = fake.push(CLIENT_NODE, "1", &[(ECHO_FQDN, echo_service())]);
    assert_acked(&fake, &nonce).await;
    let nonce = fake.push(
        CLIENT_NODE,
        "1",
        &[(ECHO_FQDN, echo_endpoints(&good_address))],
    );
    assert_acked(&fake, &nonce).await;
    wait_served_by(client.outbound(), ECHO_HOST, "echo-v1", SOON).await;

    // An endpoint whose address is not ip:port.
    let nonce = fake.push(
        CLIENT_NODE,
        "2",
        &[(ECHO_FQDN, echo_endpoints("not-an-address"))],
    );
    assert_nacked(&fake, &nonce, &["not-an-address", "ip:port", ECHO_FQDN]).await;
    for _ in 0..10 {
        assert_eq!(
            call(client.outbound(), ECHO_HOST).await,
            Ok("echo-v1".to_string()),
            "the last good endpoints keep serving after a NACK"
        );
    }

    // A route whose regex does not compile.
    let broken_routes = RouteTable {
        hostname: ECHO_FQDN.into(),
        origin: "default/echo".into(),
        tcp: Vec::new(),
        http: vec![HttpRoute {
            matches: vec![HttpMatch {
                uri: Some(StringMatch {
                    kind: Some(string_match::Kind::Regex("/v(1|2".into())),
                }),
                ..Default::default()
            }],
            route: vec![WeightedDestination {
                host: ECHO_FQDN.into(),
                weight: 100,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let nonce = fake.push(CLIENT_NODE, "3", &[(ECHO_FQDN, broken_routes)]);
    let reason = assert_nacked(&fake, &nonce, &["/v(1|2"]).await;
    assert_eq!(
        call(client.outbound(), ECHO_HOST).await,
        Ok("echo-v1".to_string()),
        "a NACKed route table changes nothing (NACK: {reason})"
    );

    let nacks = client
        .metric("meshlite_xds_updates_total", &[("result", "nack")])
        .await;
    assert_eq!(nacks, 2.0, "each refused push is counted");
    let ready = client.readiness().await.unwrap_or_default();
    assert!(
        ready.contains("control plane connected"),
        "a NACK does not break the stream: {ready}"
    );

    // The stream still works: the next good push is applied.
    let nonce = fake.push(
        CLIENT_NODE,
        "4",
        &[(ECHO_FQDN, echo_endpoints(&good_address))],
    );
    assert_acked(&fake, &nonce).await;
    assert_eq!(
        call(client.outbound(), ECHO_HOST).await,
        Ok("echo-v1".to_string())
    );
}
