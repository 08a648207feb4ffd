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
