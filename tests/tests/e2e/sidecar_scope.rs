//! Istio's `Sidecar` resource, through real processes: a control plane, sidecars on the real
//! delta xDS stream. A workload a Sidecar scopes is told only about the hosts its egress
//! listeners import: the others are absent from its `/config_dump` and a request for one
//! gets the mesh's answer for an unknown host (404 `NR`), while a workload the Sidecar does
//! not select still sees everything. Editing the Sidecar widens or narrows the scope over
//! the live stream (resources leave through `removed_resources`) and pushes nothing to the
//! workloads it does not select; its
//! `outboundTrafficPolicy` replaces MeshConfig's for the workloads it selects only; with
//! transparent capture, REGISTRY_ONLY then closes unknown destinations of those workloads.

use meshlite_tests::apps::{HttpApp, SERVED_BY};
use meshlite_tests::clients;
use meshlite_tests::control::{ControlPlane, MeshProxy, NAMESPACE, Workload, wait_served_by};
use meshlite_tests::deadline::{SOON, eventually};

const REVIEWS: &str = "reviews.default.svc.cluster.local";
const RATINGS: &str = "ratings.default.svc.cluster.local";

/// A Sidecar for the `client` workloads importing `hosts`, with `mode` as outbound policy.
fn scoped(hosts: &[&str], mode: &str) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("'{h}'")).collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\n\
         metadata: {{name: client, namespace: {NAMESPACE}}}\n\
         spec:\n  workloadSelector: {{labels: {{app: client}}}}\n  \
         egress: [{{hosts: [{}]}}]\n  outboundTrafficPolicy: {{mode: {mode}}}\n",
        hosts.join(", ")
    )
}

/// The services a sidecar's `/config_dump` lists clusters for.
async fn known_services(proxy: &MeshProxy) -> Vec<String> {
    let dump = proxy.config_dump().await;
    let mut services: Vec<String> = dump["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["service"].as_str().map(str::to_string))
        .collect();
    services.sort();
    services.dedup();
    services
}

/// Waits until `proxy` knows exactly `want` among reviews and ratings.
async fn wait_knows(proxy: &MeshProxy, want: &[&str]) {
    eventually("the sidecar's scope", SOON, || async {
        let known = known_services(proxy).await;
        let ours: Vec<&str> = known
            .iter()
            .map(String::as_str)
            .filter(|s| *s == REVIEWS || *s == RATINGS)
            .collect();
        (ours == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_sidecar_knows_only_its_egress_hosts_and_its_own_outbound_policy() {
    let reviews_app = HttpApp::start("reviews").await;
    let ratings_app = HttpApp::start("ratings").await;
    let control = ControlPlane::start(&[(
        "sidecar.yaml",
        &scoped(&[&format!("./{REVIEWS}")], "REGISTRY_ONLY"),
    )])
    .await;
    let _reviews = MeshProxy::start(
        &control.access(NAMESPACE, "reviews").await,
        &Workload::new("reviews").serving(9080, reviews_app.addr),
    )
    .await;
    let _ratings = MeshProxy::start(
        &control.access(NAMESPACE, "ratings").await,
        &Workload::new("ratings").serving(9080, ratings_app.addr),
    )
    .await;
    let client = MeshProxy::caller(&control, "client").await;
    let other = MeshProxy::caller(&control, "other").await;

    // A workload no Sidecar selects sees the whole mesh, under MeshConfig's policy.
    wait_served_by(other.outbound(), "ratings:9080", "ratings", SOON).await;
    wait_served_by(other.outbound(), "reviews:9080", "reviews", SOON).await;
    wait_knows(&other, &[RATINGS, REVIEWS]).await;
    assert_eq!(
        other.config_dump().await["outbound_traffic_policy"],
        "ALLOW_ANY"
    );

    // The scoped one reaches reviews, and knows nothing of ratings.
    wait_served_by(client.outbound(), "reviews:9080", "reviews", SOON).await;
    wait_knows(&client, &[REVIEWS]).await;
    let reply = clients::get(client.outbound(), "ratings:9080", "/").await;
    assert_eq!(
        reply.status,
        404,
        "the unknown-host answer: {}",
        reply.text()
    );
    assert!(reply.headers.get(SERVED_BY).is_none(), "no app answered");
    let dump = client.config_dump().await;
    assert_eq!(dump["outbound_traffic_policy"], "REGISTRY_ONLY", "{dump}");
    assert!(
        dump["hosts"].as_u64() < other.config_dump().await["hosts"].as_u64(),
        "the scoped sidecar holds fewer hosts: {dump}"
    );

    // What the unscoped sidecar applied so far: editing the Sidecar must push it nothing.
    let other_version = other.config_dump().await["version"].clone();

    // Narrowing to ratings: reviews leaves the live sidecar (removed over delta xDS) and
    // ratings arrives; ALLOW_ANY now applies to it.
    control.write_config(
        "sidecar.yaml",
        &scoped(&["*/ratings.default.svc.cluster.local"], "ALLOW_ANY"),
    );
    wait_knows(&client, &[RATINGS]).await;
    wait_served_by(client.outbound(), "ratings:9080", "ratings", SOON).await;
    let reply = clients::get(client.outbound(), "reviews:9080", "/").await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    assert_eq!(
        client.config_dump().await["outbound_traffic_policy"],
        "ALLOW_ANY"
    );

    // Removing the Sidecar gives the whole mesh back.
    control.write_config("sidecar.yaml", "");
    wait_knows(&client, &[RATINGS, REVIEWS]).await;
    wait_served_by(client.outbound(), "reviews:9080", "reviews", SOON).await;
    // The other sidecar was pushed none of it: same config, same version.
    wait_knows(&other, &[RATINGS, REVIEWS]).await;
    assert_eq!(
        other.config_dump().await["version"],
        other_version,
        "a Sidecar that does not select a workload must not re-push it"
    );
}
