//! Explicit outbound routing: the app names the service in `Host` / `:authority`.

use meshlite_tests::clients::{self, Http1Client, empty, h1_request};
use meshlite_tests::mesh::{H2APP, H2APP_PORT, Mesh, OTHER, OTHER_PORT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_short_name_the_port_form_and_the_fqdn_all_reach_the_app() {
    let mesh = Mesh::start().await;
    for host in [
        "app",
        "app:80",
        "app.default",
        "app.default.svc",
        "app.default.svc.cluster.local",
        "app.default.svc.cluster.local:80",
    ] {
        let reply = clients::get(mesh.outbound(), host, "/headers").await;
        assert_eq!(reply.status, 200, "Host: {host} -> {}", reply.text());
        assert_eq!(
            reply.json()["app"],
            "alpha",
            "Host: {host} reached the wrong app"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_on_one_connection_is_routed_by_its_own_host() {
    let mesh = Mesh::start().await;
    let mut conn = Http1Client::connect(mesh.outbound()).await;
    let other = format!("{OTHER}:{OTHER_PORT}");
    for (host, app) in [("app", "alpha"), (other.as_str(), "beta"), ("app", "alpha")] {
        let reply = conn
            .exchange(h1_request("GET", host, "/headers").body(empty()).unwrap())
            .await;
        assert_eq!(reply.status, 200, "Host: {host} -> {}", reply.text());
        assert_eq!(
            reply.json()["app"],
            app,
            "Host: {host} reached the wrong app"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_gets_404_naming_it() {
    let mesh = Mesh::start().await;
    let reply = clients::get(mesh.outbound(), "nosuch.example.org", "/").await;
    assert_eq!(reply.status, 404, "body: {}", reply.text());
    assert!(
        reply.text().contains("nosuch.example.org"),
        "the 404 body should name the unknown host, got {:?}",
        reply.text()
    );
    assert_eq!(
        mesh.apps.alpha.requests() + mesh.apps.beta.requests(),
        0,
        "no app may be reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_service_is_spoken_to_over_h2c_by_the_destination_sidecar() {
    let mesh = Mesh::start().await;
    let host = format!("{H2APP}:{H2APP_PORT}");
    let reply = clients::get(mesh.outbound(), &host, "/headers").await;
    assert_eq!(reply.status, 200, "body: {}", reply.text());
    let seen = reply.json();
    assert_eq!(seen["app"], "alpha");
    assert_eq!(
        seen["version"], "HTTP/2.0",
        "the app behind an http2 port must be spoken to in HTTP/2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_http1_between_sidecars_requests_still_flow() {
    requests_flow_with_upstream("http1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_h2_between_sidecars_requests_still_flow() {
    requests_flow_with_upstream("h2").await;
}

/// Three POSTs on one keep-alive connection, echoed, with `upstream.protocol: <protocol>`.
async fn requests_flow_with_upstream(protocol: &str) {
    let protocol = protocol.to_string();
    let mesh = Mesh::builder()
        .client(move |spec, _| spec.upstream_protocol = Some(protocol))
        .start()
        .await;
    let mut conn = Http1Client::connect(mesh.outbound()).await;
    for i in 0..3 {
        let body = format!("request {i}");
        let reply = conn
            .exchange(
                h1_request("POST", "app", "/echo")
                    .body(clients::full(body.clone()))
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), body);
    }
    assert_eq!(mesh.apps.alpha.requests(), 3);
}
