//! What a workload may claim about itself is bound by the control plane: the bootstrap token
//! grants its labels (`token create --label app=reviews`), the CA carries them in every
//! certificate it issues, and an announcement claiming anything else is refused, so an
//! impostor never becomes an endpoint of a service it was not granted and callers' secure
//! naming never accepts its identity for that service.

use meshlite_tests::apps::HttpApp;
use meshlite_tests::clients;
use meshlite_tests::control::{ControlPlane, MeshProxy, NAMESPACE, Workload, wait_served_by};
use meshlite_tests::deadline::{SOON, eventually};

const PORT: u16 = 9080;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_with_another_services_token_cannot_join_its_endpoints() {
    let control = ControlPlane::start(&[]).await;
    let (reviews_app, impostor_app) = (
        HttpApp::start("reviews").await,
        HttpApp::start("impostor").await,
    );
    let _reviews = MeshProxy::start(
        &control.access(NAMESPACE, "reviews").await,
        &Workload::new("reviews").serving(PORT, reviews_app.addr),
    )
    .await;
    // `ratings`' token (granting app=ratings) on a sidecar announcing app=reviews.
    let mut fake = Workload::new("ratings").serving(PORT, impostor_app.addr);
    fake.app = "reviews".into();
    let impostor = MeshProxy::start(&control.access(NAMESPACE, "ratings").await, &fake).await;
    let productpage = MeshProxy::caller(&control, "productpage").await;
    wait_served_by(productpage.outbound(), "reviews", "reviews", SOON).await;

    let refused = eventually("the refused announcement to be counted", SOON, || async {
        let n = control
            .metric(
                "meshlite_control_announcements_refused_total",
                &[("result", "label_not_granted")],
            )
            .await;
        (n >= 1.0).then_some(n)
    })
    .await;
    assert!(refused >= 1.0);
    assert!(
        control
            .logs()
            .contains("announces label app=reviews, but its certificate grants app=ratings"),
        "the control plane says why"
    );
    eventually(
        "the impostor's sidecar to log the refusal",
        SOON,
        || async {
            impostor
                .logs()
                .contains("announcement refused")
                .then_some(())
        },
    )
    .await;
    for _ in 0..40 {
        let reply = clients::get(productpage.outbound(), "reviews", "/").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("x-served-by"), Some("reviews"));
    }
    assert_eq!(impostor_app.requests(), 0, "the impostor gets no traffic");
    let status = control.status().await;
    let endpoints = status.to_string();
    assert!(
        !endpoints.contains("ratings.default"),
        "the impostor is not a connected proxy: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_needs_a_granted_app_label_and_renewals_keep_the_grant() {
    let control = ControlPlane::start(&[]).await;
    let app = HttpApp::start("details").await;
    // A token granting nothing: the workload may call, not serve.
    let ungranted = control.access_granting(NAMESPACE, "details", &[]).await;
    let _refused = MeshProxy::start(
        &ungranted,
        &Workload::new("details").serving(PORT, app.addr),
    )
    .await;
    eventually("the ungranted service to be refused", SOON, || async {
        (control
            .metric(
                "meshlite_control_announcements_refused_total",
                &[("result", "service_not_granted")],
            )
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    // Granted, with a certificate lifetime short enough to renew during the test: the renewed
    // certificate keeps the grant, and the workload keeps serving.
    let granted = control
        .access_granting(NAMESPACE, "details", &["app=details", "version=v1"])
        .await;
    let mut w = Workload::new("details-v1").serving(PORT, app.addr);
    w.service_account = "details".into();
    w.app = "details".into();
    w.version = Some("v1".into());
    let w = w.with_cert_ttl("12s").with_state_dir();
    let details = MeshProxy::start(&granted, &w).await;
    let caller = MeshProxy::caller(&control, "caller").await;
    wait_served_by(caller.outbound(), "details", "details", SOON).await;
    eventually(
        "a certificate renewal",
        std::time::Duration::from_secs(30),
        || async {
            (details
                .metric("meshlite_cert_rotations_total", &[("result", "ok")])
                .await
                >= 1.0)
                .then_some(())
        },
    )
    .await;
    // Restarted, it reconnects with the renewed certificate from its state directory (the
    // token is no longer read): the grant came with it, and it still serves.
    let mut details = details;
    std::fs::write(details.dir().join("token"), "mlt1.revoked.token").expect("spoil the token");
    details.restart().await;
    control.wait_connected(&["details-v1.default"], SOON).await;
    wait_served_by(caller.outbound(), "details", "details", SOON).await;
    assert!(
        !details.logs().contains("announcement refused"),
        "the renewed certificate's announcement was accepted"
    );
}
