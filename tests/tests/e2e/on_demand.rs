//! Services fetched on demand (the proxy's default under a control plane): a sidecar knows
//! every service's names and addresses from the start, and fetches a service's endpoints,
//! routes and policy when its app first calls it, together with the hosts those routes lead
//! to. The first request waits for them and is answered; when the control plane cannot
//! answer, it gets a 503 `NC` after the configured wait, and what was fetched keeps serving;
//! when the sidecar refuses the answer, the 503 comes at once with the reason.

use meshlite_tests::apps::HttpApp;
use meshlite_tests::clients;
use meshlite_tests::control::{ControlPlane, MeshProxy, NAMESPACE, Workload};
use meshlite_tests::deadline::SOON;
use std::time::{Duration, Instant};

const FRONT: &str = "front.default.svc.cluster.local";
const ECHO: &str = "echo.default.svc.cluster.local";
const LONELY: &str = "lonely.example.com";

/// `echo` has subsets; everything sent to `front` goes to `echo`'s `v2`.
fn policies() -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{name: echo, namespace: {NAMESPACE}}}\n\
         spec:\n  host: echo\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n\
         \x20 - {{name: v2, labels: {{version: v2}}}}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{name: front, namespace: {NAMESPACE}}}\n\
         spec:\n  hosts: [front]\n  http:\n  - route:\n    - destination: {{host: echo, subset: v2}}\n"
    )
}

/// A service nobody calls until the control plane is gone.
fn lonely(port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: lonely, namespace: {NAMESPACE}}}\n\
         spec:\n  hosts: [{LONELY}]\n  resolution: STATIC\n\
         \x20 ports: [{{number: 8080, name: http, protocol: HTTP}}]\n\
         \x20 endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]\n"
    )
}

/// The client's dump entry for the service cluster of `host`.
async fn cluster(proxy: &MeshProxy, host: &str) -> Option<serde_json::Value> {
    proxy.config_dump().await["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["service"] == host)
        .cloned()
}

/// Waits until a call to the lonely service through `client` is answered by its app.
async fn lonely_answers(client: &MeshProxy, when: &str) {
    let deadline = Instant::now() + SOON;
    loop {
        let reply = clients::get(client.outbound(), &format!("{LONELY}:8080"), "/").await;
        if reply.status == 200 {
            assert_eq!(reply.json()["app"], "lonely");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lonely never answered {when}: {} {}",
            reply.status,
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_call_fetches_the_service_its_routes_and_where_they_lead_then_keeps_serving() {
    let (v1_app, v2_app, front_app, lonely_app) = tokio::join!(
        HttpApp::start("echo-v1"),
        HttpApp::start("echo-v2"),
        HttpApp::start("front"),
        HttpApp::start("lonely"),
    );
    let mut control = ControlPlane::start(&[
        ("policies.yaml", &policies()),
        ("lonely.yaml", &lonely(lonely_app.addr.port())),
    ])
    .await;
    let echo = control.access(NAMESPACE, "echo").await;
    let front_access = control.access(NAMESPACE, "front").await;
    let v1 = Workload::version_of("echo", "v1", 8080, v1_app.addr);
    let v2 = Workload::version_of("echo", "v2", 8080, v2_app.addr);
    let front = Workload::new("front").serving(8080, front_app.addr);
    let (_v1, _v2, _front) = tokio::join!(
        MeshProxy::start(&echo, &v1),
        MeshProxy::start(&echo, &v2),
        MeshProxy::start(&front_access, &front),
    );
    let mut client = Workload::new("client");
    client.on_demand_timeout = Some("2s".into());
    let client = MeshProxy::start(&control.access(NAMESPACE, "client").await, &client).await;

    // Every service is known by name from the start, none of them fetched.
    let deadline = Instant::now() + SOON;
    loop {
        let known = [
            cluster(&client, FRONT).await,
            cluster(&client, ECHO).await,
            cluster(&client, LONELY).await,
        ];
        if known.iter().all(Option::is_some) {
            for c in known.iter().flatten() {
                assert_eq!(c["awaiting"], true, "nothing was called yet: {c}");
                assert_eq!(c["endpoints"], serde_json::json!([]), "{c}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "the services never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dump = client.config_dump().await;
    assert_eq!(
        dump["subset_clusters"],
        serde_json::json!([]),
        "echo's subsets come with its policy, when it is fetched: {dump}"
    );

    // The very first call to front is answered: front's route, echo (where it leads) with
    // its subsets, fetched while the request waited.
    let reply = clients::get(client.outbound(), "front:8080", "/headers").await;
    assert_eq!(reply.status, 200, "first call: {}", reply.text());
    assert_eq!(reply.json()["app"], "echo-v2", "front's route: echo v2");
    for host in [FRONT, ECHO] {
        let c = cluster(&client, host).await.expect("still known");
        assert_eq!(c["awaiting"], false, "{host} was fetched: {c}");
    }
    let echo_cluster = cluster(&client, ECHO).await.expect("echo");
    assert_eq!(
        echo_cluster["endpoints"].as_array().map(Vec::len),
        Some(2),
        "{echo_cluster}"
    );
    let dump = client.config_dump().await;
    let subsets: Vec<&str> = dump["subset_clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        subsets.contains(&"outbound|8080|v2|echo.default.svc.cluster.local"),
        "{subsets:?}"
    );
    assert_eq!(
        cluster(&client, LONELY).await.expect("lonely")["awaiting"],
        true,
        "a service not called is not fetched"
    );

    // With the control plane gone, what was fetched keeps serving, and a first call to a
    // service never fetched is refused after the wait: 503, NC, the reason said.
    control.kill().await;
    let reply = clients::get(client.outbound(), "front:8080", "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let asked = Instant::now();
    let reply = clients::get(client.outbound(), &format!("{LONELY}:8080"), "/").await;
    let waited = asked.elapsed();
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(
        reply
            .text()
            .contains("sent no config for lonely.example.com"),
        "{}",
        reply.text()
    );
    assert!(
        waited >= Duration::from_millis(1500),
        "the request waited for the control plane first ({waited:?})"
    );
    assert!(client.requests_flagged(503, "NC").await >= 1.0);

    // Back, the control plane answers the next first call.
    control.restart().await;
    lonely_answers(&client, "once the control plane was back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_left_idle_is_let_go_and_fetched_again_on_its_next_call() {
    let app = HttpApp::start("echo-v1").await;
    let control = ControlPlane::start(&[]).await;
    let _echo = MeshProxy::start(
        &control.access(NAMESPACE, "echo").await,
        &Workload::version_of("echo", "v1", 8080, app.addr),
    )
    .await;
    let mut client = Workload::new("client");
    client.cluster_idle_timeout = Some("300ms".into());
    let client = MeshProxy::start(&control.access(NAMESPACE, "client").await, &client).await;

    let awaiting_is = async |want: bool, what: &str| {
        let deadline = Instant::now() + SOON;
        loop {
            let c = cluster(&client, ECHO).await;
            if c.as_ref().is_some_and(|c| c["awaiting"] == want) {
                return c.unwrap_or_default();
            }
            assert!(Instant::now() < deadline, "{what}: {c:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    awaiting_is(true, "echo known, not fetched").await;
    let reply = clients::get(client.outbound(), "echo:8080", "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let fetched = awaiting_is(false, "fetched by the call").await;
    assert_eq!(fetched["endpoints"].as_array().map(Vec::len), Some(1));

    // Unused for two sweeps: its cluster is freed, then its endpoints, routes and policy.
    let let_go = awaiting_is(true, "let go once idle").await;
    assert_eq!(let_go["endpoints"], serde_json::json!([]), "{let_go}");
    let reply = clients::get(client.outbound(), "echo:8080", "/").await;
    assert_eq!(reply.status, 200, "fetched again: {}", reply.text());
    assert_eq!(reply.json()["app"], "echo-v1");
}

/// An external service whose DestinationRule asks for TLS with `ca`.
fn external_with_tls(port: u16, ca: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: lonely, namespace: {NAMESPACE}}}\n\
         spec:\n  hosts: [{LONELY}]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n\
         \x20 ports: [{{number: 8080, name: http, protocol: HTTP}}]\n\
         \x20 endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]\n"
    ) + &policy_for_lonely(&format!("tls: {{mode: SIMPLE, caCertificates: {ca}}}"))
}

/// A DestinationRule for the lonely service with `traffic_policy`.
fn policy_for_lonely(traffic_policy: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{name: lonely, namespace: {NAMESPACE}}}\n\
         spec:\n  host: {LONELY}\n  trafficPolicy: {{{traffic_policy}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_config_the_sidecar_refuses_fails_its_request_at_once_with_the_reason() {
    let app = HttpApp::start("lonely").await;
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("no-such-ca.pem");
    let control = ControlPlane::start(&[(
        "lonely.yaml",
        &external_with_tls(app.addr.port(), &missing.display().to_string()),
    )])
    .await;
    let mut client = Workload::new("client");
    // Long enough that a request waiting it out could not be mistaken for one refused.
    client.on_demand_timeout = Some("60s".into());
    let client = MeshProxy::start(&control.access(NAMESPACE, "client").await, &client).await;
    let deadline = Instant::now() + SOON;
    while cluster(&client, LONELY).await.is_none() {
        assert!(Instant::now() < deadline, "{LONELY} never became known");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Its policy names a CA file the sidecar cannot read: the push is refused (NACK), and
    // the request waiting for it is answered now, with the reason, not at its timeout.
    let reply = clients::get(client.outbound(), &format!("{LONELY}:8080"), "/").await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    let text = reply.text();
    assert!(
        text.contains(&format!(
            "the config the control plane sent for {LONELY} was refused"
        )) && text.contains("no-such-ca.pem"),
        "{text}"
    );
    // A later request is refused the same way, without waiting.
    let again = clients::get(client.outbound(), &format!("{LONELY}:8080"), "/").await;
    assert!(again.text().contains("was refused"), "{}", again.text());
    assert_eq!(app.requests(), 0);

    // Fixed: the next answer applies and the refusal is over.
    control.write_config(
        "lonely.yaml",
        &(lonely(app.addr.port()) + &policy_for_lonely("loadBalancer: {simple: ROUND_ROBIN}")),
    );
    lonely_answers(&client, "once its policy was fixed").await;
}
