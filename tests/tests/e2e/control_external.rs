//! Services outside the mesh (ServiceEntry `MESH_EXTERNAL`), pushed by the control plane:
//! the sidecar sends to them directly, without mutual TLS, by address or by DNS name, with
//! the app's Host and nothing of the mesh's headers.

use meshlite_tests::apps::HttpApp;
use meshlite_tests::clients;
use meshlite_tests::control::{ControlPlane, MeshProxy, NAMESPACE, wait_served_by};
use meshlite_tests::deadline::SOON;

fn entries(payments_port: u16, ledger_port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: payments, namespace: {NAMESPACE}}}\n\
         spec:\n  hosts: [payments.example.com]\n  location: MESH_EXTERNAL\n  resolution: DNS\n\
         \x20 ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {payments_port}}}]\n\
         \x20 endpoints: [{{address: localhost}}]\n\
         ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: ledger, namespace: {NAMESPACE}}}\n\
         spec:\n  hosts: [ledger.example.com]\n  resolution: STATIC\n\
         \x20 ports: [{{number: 8080, name: http, protocol: HTTP}}]\n\
         \x20 endpoints: [{{address: 127.0.0.1, ports: {{http: {ledger_port}}}}}]\n\
         ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: gone, namespace: {NAMESPACE}}}\n\
         spec:\n  hosts: [gone.example.com]\n  resolution: STATIC\n\
         \x20 ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 1}}]\n\
         \x20 endpoints: [{{address: 127.0.0.1}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_outside_the_mesh_are_reached_directly_by_name_or_address() {
    let payments = HttpApp::start("payments").await;
    let ledger = HttpApp::start("ledger").await;
    let control = ControlPlane::start(&[(
        "external.yaml",
        &entries(payments.addr.port(), ledger.addr.port()),
    )])
    .await;
    let client = MeshProxy::caller(&control, "client").await;

    // resolution: DNS, endpoint `localhost`, resolved when the sidecar connects.
    wait_served_by(client.outbound(), "payments.example.com", "payments", SOON).await;
    let reply = clients::get(client.outbound(), "payments.example.com", "/headers").await;
    assert_eq!(reply.status, 200, "body: {}", reply.text());
    let seen = reply.json();
    assert_eq!(seen["headers"]["host"][0], "payments.example.com", "{seen}");
    for mesh_only in [
        "x-meshlite-peer",
        "x-forwarded-client-cert",
        "x-meshlite-port",
    ] {
        assert!(
            seen["headers"][mesh_only].is_null(),
            "{mesh_only} must not leave the mesh: {seen}"
        );
    }
    assert!(
        !seen["headers"]["x-request-id"].is_null(),
        "the request id still travels: {seen}"
    );

    // resolution: STATIC, the port mapped by name.
    let reply = clients::get(client.outbound(), "ledger.example.com:8080", "/headers").await;
    assert_eq!(reply.status, 200, "body: {}", reply.text());
    assert_eq!(reply.json()["app"], "ledger");

    // An endpoint that refuses: 503 with the connect failure named, as for mesh upstreams.
    let reply = clients::get(client.outbound(), "gone.example.com", "/").await;
    assert_eq!(reply.status, 503, "body: {}", reply.text());
    assert!(
        reply.text().contains("connection_refused"),
        "body: {}",
        reply.text()
    );

    let requests = client
        .metric(
            "istio_requests_total",
            &[
                ("reporter", "source"),
                ("destination_service", "payments.example.com"),
                ("response_code", "200"),
            ],
        )
        .await;
    assert!(requests >= 2.0, "requests to payments counted: {requests}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_service_outside_the_mesh_are_retried_as_the_route_says() {
    const REQUESTS: usize = 20;
    let app = HttpApp::start("flaky").await;
    let refusing = meshlite_tests::apps::closed_port();
    let entry = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: flaky, namespace: {NAMESPACE}}}\n\
         spec:\n  hosts: [flaky.example.com]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n\
         \x20 ports: [{{number: 80, name: http, protocol: HTTP}}]\n\
         \x20 endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}, \
         {{address: 127.0.0.1, ports: {{http: {}}}}}]\n",
        refusing.port(),
        app.addr.port()
    );
    let control = ControlPlane::start(&[("external.yaml", &entry)]).await;
    let client = MeshProxy::caller(&control, "client").await;
    wait_served_by(client.outbound(), "flaky.example.com", "flaky", SOON).await;
    let all_ok = async || {
        for i in 0..REQUESTS {
            // Round robin: every other first attempt goes to the refusing endpoint.
            let reply = clients::get(client.outbound(), "flaky.example.com", "/").await;
            assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
        }
    };
    let cluster = [("cluster_name", "outbound|80||flaky.example.com")];
    let retries = async || {
        client
            .metric("envoy_cluster_upstream_rq_retry", &cluster)
            .await
    };

    // One endpoint refuses connections: Istio's default policy retries the connect failure
    // on the other endpoint.
    all_ok().await;
    assert!(retries().await >= 1.0, "connect failures were retried");

    // A route retrying 5xx hides an app failing 3 requests in 10.
    control.write_config(
        "flaky-vs.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {{name: flaky, namespace: {NAMESPACE}}}\n\
             spec:\n  hosts: [flaky.example.com]\n  http: [{{route: [{{destination: \
             {{host: flaky.example.com}}}}], retries: {{attempts: 3, \
             retryOn: '5xx,connect-failure'}}, \
             headers: {{response: {{set: {{x-route: retrying}}}}}}}}]\n"
        ),
    );
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let reply = clients::get(client.outbound(), "flaky.example.com", "/").await;
        if reply.header("x-route") == Some("retrying") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the route never applied"
        );
    }
    app.fail_some_with(503, &[0, 3, 6]);
    let before = app.requests();
    all_ok().await;
    assert!(
        app.requests() - before > REQUESTS as u64,
        "some requests needed a second try at the app"
    );
}

/// A listener whose accept queue is full and never drained: connection attempts to it get no
/// answer at all (the kernel drops their SYNs), as with a host that went dark.
async fn blackhole() -> (tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut filling = Vec::new();
    for _ in 0..4 {
        let attempt = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(s)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), attempt).await
        {
            filling.push(s);
        }
    }
    (listener, filling)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_connect_timeout_bounds_the_wait_for_a_host_that_does_not_answer() {
    use std::time::{Duration, Instant};
    let (dark, _held) = blackhole().await;
    let port = dark.local_addr().expect("addr").port();
    let entry = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: dark, namespace: {NAMESPACE}}}\n\
         spec:\n  hosts: [dark.example.com]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n\
         \x20 ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]\n\
         \x20 endpoints: [{{address: 127.0.0.1}}]\n"
    );
    let rule = |timeout: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: dark, namespace: {NAMESPACE}}}\n\
             spec:\n  host: dark.example.com\n  trafficPolicy: \
             {{connectionPool: {{tcp: {{connectTimeout: {timeout}}}}}}}\n"
        )
    };
    let control =
        ControlPlane::start(&[("external.yaml", &entry), ("dark-dr.yaml", &rule("1s"))]).await;
    let client = MeshProxy::caller(&control, "client").await;
    // Until the rule is in force, the proxy's own 10 s would apply: wait for it in the dump.
    let in_force = async |ms: u64| {
        let deadline = Instant::now() + SOON;
        loop {
            let dump = client.config_dump().await;
            let applied = dump["clusters"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["service"] == "dark.example.com" && c["policy"]["connect_timeout_ms"] == ms
                })
            });
            if applied {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "connectTimeout {ms} ms never applied: {dump}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let timed = async || {
        let started = Instant::now();
        let reply = clients::get(client.outbound(), "dark.example.com", "/").await;
        assert_eq!(reply.status, 503, "{}", reply.text());
        started.elapsed()
    };
    // Istio's default policy makes three attempts, each cut at the connect timeout. The
    // first call (once dark is known) fetches its endpoints and policy on demand first.
    let deadline = Instant::now() + SOON;
    while !client.config_dump().await["clusters"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["service"] == "dark.example.com"))
    {
        assert!(Instant::now() < deadline, "dark.example.com never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = timed().await;
    in_force(1000).await;
    assert!(
        (Duration::from_millis(2900)..Duration::from_secs(6)).contains(&took),
        "3 attempts of 1 s: {took:?}"
    );
    // A push shortens it; the pool made with the old timeout is not kept.
    control.write_config("dark-dr.yaml", &rule("200ms"));
    in_force(200).await;
    let took = timed().await;
    assert!(
        (Duration::from_millis(580)..Duration::from_millis(1500)).contains(&took),
        "3 attempts of 200 ms: {took:?}"
    );
}
