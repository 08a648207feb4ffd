//! The control plane is not on the data path: when it dies, sidecars keep serving what they
//! last received (and a restarted sidecar serves what it persisted); when it comes back, they
//! resync and take edits again.

use meshlite_tests::control::{
    Canary, CanaryOptions, ECHO_HOST, Load, RESYNC, call, wait_served_by,
};
use meshlite_tests::deadline::{self, SOON};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_survives_a_control_plane_crash_and_sidecars_resync_when_it_returns() {
    let mut mesh = Canary::start().await;

    mesh.control.kill().await;
    mesh.client
        .wait_ready_saying("control plane unreachable, serving the last good config")
        .await;
    for _ in 0..10 {
        assert_eq!(
            call(mesh.client.outbound(), ECHO_HOST).await,
            Ok("echo-v1".to_string()),
            "traffic must keep flowing on the last good config while the control plane is down"
        );
    }
    assert_eq!(
        mesh.client.metric("meshlite_xds_connected", &[]).await,
        0.0,
        "the client sidecar reports it is disconnected"
    );

    mesh.control.restart().await;
    mesh.control
        .wait_connected(
            &["client.default", "echo-v1.default", "echo-v2.default"],
            RESYNC,
        )
        .await;
    mesh.client
        .wait_ready_saying("ready: control plane connected")
        .await;

    // The control plane is in charge again: an edit made now reaches the sidecars.
    mesh.route(&[("v1", 0), ("v2", 100)]);
    wait_served_by(
        mesh.client.outbound(),
        ECHO_HOST,
        "echo-v2",
        Duration::from_secs(5),
    )
    .await;
    let status = mesh.control.status().await;
    for row in status["proxies"].as_array().into_iter().flatten() {
        assert!(
            row["last_nack"].is_null(),
            "no sidecar may NACK the resynced config: {row}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_restarted_while_the_control_plane_is_down_serves_its_persisted_config() {
    let mut mesh = Canary::start_with(CanaryOptions {
        client_state_dir: true,
        ..CanaryOptions::default()
    })
    .await;
    // Routes that differ from "no VirtualService" so the persisted config is visibly used.
    mesh.route(&[("v1", 0), ("v2", 100)]);
    wait_served_by(
        mesh.client.outbound(),
        ECHO_HOST,
        "echo-v2",
        Duration::from_secs(5),
    )
    .await;
    let state = mesh.client.dir().join("state");
    for file in ["xds-config.pb", "key.pem", "cert-chain.pem"] {
        let meta = std::fs::metadata(state.join(file))
            .unwrap_or_else(|e| panic!("state directory should hold {file}: {e}"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            meta.permissions().mode() & 0o077,
            0,
            "{file} must be private to the proxy"
        );
    }

    mesh.control.kill().await;
    mesh.client.restart().await;

    let ready = mesh
        .client
        .wait_ready_saying("serving persisted config")
        .await;
    assert!(ready.contains("unreachable"), "readiness: {ready}");
    assert_eq!(
        mesh.client
            .metric("meshlite_serving_persisted_config", &[])
            .await,
        1.0
    );
    for _ in 0..10 {
        assert_eq!(
            call(mesh.client.outbound(), ECHO_HOST).await,
            Ok("echo-v2".to_string()),
            "the restarted sidecar routes by the persisted VirtualService"
        );
    }

    // When the control plane returns, the sidecar confirms its config and stops saying
    // "persisted".
    mesh.control.restart().await;
    deadline::eventually("the restarted sidecar to reconnect", RESYNC, || async {
        mesh.client
            .readiness()
            .await
            .filter(|t| t.contains("control plane connected"))
    })
    .await;
    mesh.control
        .wait_connected(&["echo-v1.default", "echo-v2.default"], RESYNC)
        .await;
    wait_served_by(mesh.client.outbound(), ECHO_HOST, "echo-v2", SOON).await;
    assert_eq!(
        mesh.client
            .metric("meshlite_serving_persisted_config", &[])
            .await,
        0.0
    );
}

/// The server sends each proxy what differs from what it holds; a restarted control plane that
/// started with an empty registry would tell the first sidecar to reconnect to remove every
/// service whose sidecars had not reconnected yet (404 until they did). The registry is saved
/// in the state directory and restored as "disconnected now", so nothing is withdrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_restart_does_not_withdraw_services_whose_sidecars_are_still_reconnecting()
{
    let mut mesh = Canary::start_with(CanaryOptions {
        client_state_dir: true,
        ..CanaryOptions::default()
    })
    .await;
    mesh.control.kill().await;
    // Let the echo sidecars' reconnect backoff grow, as it does in any real outage; the client
    // sidecar restarts meanwhile (a rollout), so it reconnects first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    mesh.client.restart().await;
    let load = Load::start(
        mesh.client.outbound(),
        ECHO_HOST,
        2,
        Duration::from_secs(20),
    );
    load.wait_for_requests(10).await;
    mesh.control.restart().await;
    mesh.control
        .wait_connected(
            &["client.default", "echo-v1.default", "echo-v2.default"],
            RESYNC,
        )
        .await;
    load.wait_for_requests(20).await;
    let report = load.stop().await;
    report.assert_no_failures("sidecars reconnect to a restarted control plane");
}
