//! When the other end is gone: the caller gets a 503 that says so (Envoy's `UF` flag, with
//! `URX` once Istio's default retry policy has retried the connect failure twice).

use crate::field_text;
use meshlite_tests::apps::closed_port;
use meshlite_tests::clients;
use meshlite_tests::mesh::{APP, Mesh, OTHER, OTHER_PORT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_destination_sidecar_gets_503_with_flag_uf() {
    let mesh = Mesh::builder()
        .client(|spec, _| spec.service_mut(APP).endpoints = vec![closed_port()])
        .start()
        .await;
    let reply = clients::get(mesh.outbound(), "app", "/headers").await;
    assert_eq!(reply.status, 503, "{}", reply.text());

    let entry = mesh
        .client
        .access_log_entry("the failed request", |e| {
            field_text(e, "response_code") == "503"
        })
        .await;
    assert_eq!(
        field_text(&entry, "response_flags"),
        "UF,URX",
        "access log entry: {entry}"
    );
    mesh.client
        .metric_sample("istio_requests_total", "a 503 UF,URX", |s| {
            s.label("reporter") == "source"
                && s.label("response_code") == "503"
                && s.label("response_flags") == "UF,URX"
        })
        .await;
    mesh.client
        .metric_sample("envoy_cluster_upstream_rq_retry", "two retries", |s| {
            s.label("cluster_name") == "outbound|80||app.default.svc.cluster.local"
                && s.value == 2.0
        })
        .await;

    // Other services are unaffected.
    let reply = clients::get(
        mesh.outbound(),
        &format!("{OTHER}:{OTHER_PORT}"),
        "/headers",
    )
    .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_app_gets_503_from_its_own_sidecar() {
    let mesh = Mesh::builder()
        .server(|spec, _| {
            let port = spec
                .inbound
                .iter_mut()
                .find(|p| p.port == 80)
                .expect("port 80");
            port.target = closed_port();
        })
        .start()
        .await;
    let reply = clients::get(mesh.outbound(), "app", "/headers").await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    let entry = mesh
        .server
        .access_log_entry("the failed request", |e| {
            field_text(e, "response_code") == "503"
        })
        .await;
    assert_eq!(
        field_text(&entry, "response_flags"),
        "UF",
        "server access log entry: {entry}"
    );
}
