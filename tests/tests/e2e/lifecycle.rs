//! Process lifecycle: graceful drain on SIGTERM, readiness, the admin port.

use meshlite_tests::clients::{self, Http1Client, empty, h1_request};
use meshlite_tests::deadline::{SOON, eventually, within};
use meshlite_tests::mesh::{Mesh, Sidecar};
use std::time::Duration;

/// Which sidecar a drain test stops.
#[derive(Clone, Copy)]
enum Side {
    Calling,
    Destination,
}

fn side(mesh: &Mesh, which: Side) -> &Sidecar {
    match which {
        Side::Calling => &mesh.client,
        Side::Destination => &mesh.server,
    }
}

fn side_mut(mesh: &mut Mesh, which: Side) -> &mut Sidecar {
    match which {
        Side::Calling => &mut mesh.client,
        Side::Destination => &mut mesh.server,
    }
}

/// Sends a request held by the app, SIGTERMs one sidecar while it is in flight, and checks that
/// readiness turns 503, the request still completes with 200, and the proxy exits 0.
async fn drain_in_flight(mesh: &mut Mesh, which: Side) {
    let m: &Mesh = mesh;
    eventually("the sidecar to be ready", SOON, || async move {
        (side(m, which).readiness().await == Some(200)).then_some(())
    })
    .await;
    let mut conn = Http1Client::connect(m.outbound()).await;
    let in_flight = tokio::spawn(async move {
        conn.exchange(h1_request("GET", "app", "/gate").body(empty()).unwrap())
            .await
    });
    eventually("the request to reach the app", SOON, || async move {
        (m.apps.alpha.held_at_gate() == 1).then_some(())
    })
    .await;

    side(m, which).sigterm();
    eventually(
        "/healthz/ready to turn 503 while draining",
        SOON,
        || async move { (side(m, which).readiness().await == Some(503)).then_some(()) },
    )
    .await;
    assert!(
        side_mut(mesh, which).is_running(),
        "the proxy exited with a request still in flight"
    );

    mesh.apps.alpha.open_gate();
    let reply = within("the in-flight request", Duration::from_secs(30), in_flight)
        .await
        .expect("request task");
    assert_eq!(
        reply.status,
        200,
        "the in-flight request must finish: {}",
        reply.text()
    );
    assert_eq!(reply.text(), "released");

    let status = side_mut(mesh, which)
        .wait_exit(Duration::from_secs(30))
        .await;
    assert_eq!(
        status.code(),
        Some(0),
        "a drained proxy exits 0, got {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_calling_sidecar_drains_an_in_flight_request_then_exits_zero() {
    let mut mesh = Mesh::builder()
        .client(|spec, _| spec.limits.drain_timeout = Some("30s".to_string()))
        .start()
        .await;
    drain_in_flight(&mut mesh, Side::Calling).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_destination_sidecar_drains_an_in_flight_request_then_exits_zero() {
    let mut mesh = Mesh::builder()
        .server(|spec, _| spec.limits.drain_timeout = Some("30s".to_string()))
        .start()
        .await;
    drain_in_flight(&mut mesh, Side::Destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_dumps_the_config_and_quits_on_request() {
    let mut mesh = Mesh::start().await;
    let dump = clients::get(mesh.client.addrs.admin, "127.0.0.1", "/config_dump").await;
    assert_eq!(dump.status, 200);
    let json = dump.json();
    let text = json.to_string();
    assert!(
        text.contains("app") && text.contains(&mesh.server.addrs.inbound.to_string()),
        "the config dump should show the services and their endpoints: {text}"
    );

    let quit = clients::post(mesh.client.addrs.admin, "127.0.0.1", "/quitquitquit", "").await;
    assert_eq!(quit.status, 200, "{}", quit.text());
    let status = mesh.client.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "quitquitquit exits cleanly, got {status:?}"
    );
}

/// Istio's probe rewrite, through the sidecar binary: the injector hands the app's probes to
/// the sidecar (`ISTIO_KUBE_APP_PROBERS`, here its flag) and the kubelet asks the metrics port
/// for them. The answer is the app's verdict: 200 when it passed, its failing status, 500
/// when it cannot be reached; a probe nobody declared is 404, and the health port does not
/// run probes.
#[tokio::test]
async fn the_metrics_port_runs_the_apps_rewritten_probes_for_the_kubelet() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mesh = Mesh::builder()
        .server(move |spec, _| {
            let app = spec
                .inbound
                .iter()
                .find(|p| p.port == 80)
                .expect("the app's port")
                .target
                .port();
            let probers = serde_json::json!({
                "/app-health/app/livez": {"httpGet": {"path": "/", "port": app}},
                "/app-health/app/readyz": {"httpGet": {"path": "/status/503", "port": app},
                                           "timeoutSeconds": 2},
                "/app-health/app/startupz": {"tcpSocket": {"port": app}},
                "/app-health/gone/livez": {"tcpSocket": {"port": closed}},
            });
            spec.extra_args = vec!["--app-probers".into(), probers.to_string()];
        })
        .start()
        .await;
    let metrics = mesh.server.addrs.metrics;
    let status =
        |path: &'static str| async move { clients::get(metrics, "127.0.0.1", path).await.status };
    assert_eq!(status("/app-health/app/livez").await, 200);
    assert_eq!(status("/app-health/app/readyz").await, 503);
    assert_eq!(status("/app-health/app/startupz").await, 200);
    assert_eq!(status("/app-health/gone/livez").await, 500);
    assert_eq!(status("/app-health/nobody/livez").await, 404);
    let health = clients::get(
        mesh.server.addrs.health,
        "127.0.0.1",
        "/app-health/app/livez",
    )
    .await;
    assert_eq!(health.status, 404);

    // A malformed probe list is refused at start, naming the variable.
    let out = meshlite_tests::mesh::run_proxy_cli(&[
        "--app-probers".as_ref(),
        "{\"/healthz\": {}}".as_ref(),
        "validate".as_ref(),
    ])
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ISTIO_KUBE_APP_PROBERS"), "{stderr}");
}
