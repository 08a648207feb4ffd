//! Opaque TCP services the control plane pushes, in explicit mode: each gets a listener on
//! the caller's sidecar at its service port (Istio's Sidecar egress `bind` with
//! `captureMode: NONE`), opened and closed as pushes add and remove the service, carried over
//! mutual TLS, routed by VirtualService `tcp` rules and authorized by TCP rules.
//!
//! Every sidecar of a test runs on one host, so each caller that listens does so on a
//! loopback IP of its own (`127.0.14.x`), where its outbound listener is too.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use meshlite_tests::apps::{BannerApp, TcpEchoApp};
use meshlite_tests::control::{CONVERGE, ControlPlane, MeshProxy, NAMESPACE, Workload};
use meshlite_tests::deadline::eventually;
use meshlite_tests::mesh::{AppProtocol, InboundPort};

/// How long one exchange may take before it counts as "no answer".
const EXCHANGE: Duration = Duration::from_secs(3);

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 14, last])
}

/// A workload serving opaque TCP on `port` with its app at `target`.
fn tcp_workload(name: &str, port: u16, target: SocketAddr) -> Workload {
    let mut w = Workload::new(name);
    w.inbound.push(InboundPort {
        port,
        target,
        protocol: AppProtocol::Tcp,
    });
    w
}

/// Writes `msg` on `s` and reads until as many bytes came back (or EOF, or the deadline).
async fn exchange(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    if s.write_all(msg).await.is_err() {
        return Vec::new();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(EXCHANGE, async {
        while got.len() < msg.len() {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    got
}

/// A new connection to `addr` echoing `msg`, or what came back instead (empty: refused or
/// closed).
async fn echoed(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    match TcpStream::connect(addr).await {
        Ok(mut s) => exchange(&mut s, msg).await,
        Err(_) => Vec::new(),
    }
}

/// The banner a new connection to `addr` is greeted with, if any.
async fn banner(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    tokio::time::timeout(EXCHANGE, async {
        while !got.contains(&b'\n') {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    let text = String::from_utf8_lossy(&got).trim().to_string();
    (!text.is_empty()).then_some(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_tcp_service_gets_a_listener_that_a_removing_push_closes_without_dropping_connections()
 {
    let app = TcpEchoApp::start().await;
    let control = ControlPlane::start(&[]).await;
    let db_workload = tcp_workload("db", 5432, app.addr);
    let db = MeshProxy::start(&control.access(NAMESPACE, "db").await, &db_workload).await;
    let client_workload = Workload::new("client").with_tcp_listeners(loopback(1));
    let client =
        MeshProxy::start(&control.access(NAMESPACE, "client").await, &client_workload).await;

    // The registry's service (db serves 5432/tcp): no static listen, yet reachable.
    let db_port = SocketAddr::new(loopback(1), 5432);
    let got = eventually("db's pushed TCP port to echo", CONVERGE, || async {
        let got = echoed(db_port, b"ping").await;
        (got == b"ping").then_some(got)
    })
    .await;
    assert_eq!(got, b"ping");
    assert!(app.connections() >= 1, "the bytes reached db's app");
    // Over mutual TLS, counted as TCP by both sidecars.
    let db_fqdn = "db.default.svc.cluster.local";
    assert!(
        client
            .metric(
                "istio_tcp_connections_opened_total",
                &[("reporter", "source"), ("destination_service", db_fqdn)],
            )
            .await
            >= 1.0
    );
    let served = eventually("db's destination report", CONVERGE, || async {
        let n = db
            .metric(
                "istio_tcp_received_bytes_total",
                &[
                    ("reporter", "destination"),
                    ("source_workload", "client"),
                    ("connection_security_policy", "mutual_tls"),
                ],
            )
            .await;
        (n >= 4.0).then_some(n)
    })
    .await;
    assert!(served >= 4.0);

    // A ServiceEntry adds a TCP service on another port, served by db's sidecar.
    let archive = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: archive, namespace: default}}\nspec:\n  \
         hosts: [archive.internal]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  \
         ports: [{{number: 6543, name: tcp-archive, protocol: TCP}}]\n  \
         endpoints: [{{address: 127.0.0.1, ports: {{tcp-archive: {}}}, serviceAccount: db}}]\n",
        db.addrs.inbound.port()
    );
    control.write_config("archive.yaml", &archive);
    let archive_port = SocketAddr::new(loopback(1), 6543);
    let mut held = eventually("the added service's listener", CONVERGE, || async {
        let mut s = TcpStream::connect(archive_port).await.ok()?;
        (exchange(&mut s, b"one").await == b"one").then_some(s)
    })
    .await;
    // The admin dump lists the listeners open now, not those of the start-up line.
    let listeners = tcp_listeners(&client).await;
    assert_eq!(
        listeners.get("archive:6543").and_then(|v| v.as_str()),
        Some(archive_port.to_string().as_str()),
        "{listeners:?}"
    );

    // The push removing it closes the listener; the open connection keeps relaying.
    control.write_config("archive.yaml", "# removed\n");
    eventually(
        "the removed service's listener to close",
        CONVERGE,
        || async {
            TcpStream::connect(archive_port)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        exchange(&mut held, b"two").await,
        b"two",
        "the connection accepted before the push still relays"
    );
    assert_eq!(
        echoed(db_port, b"ping").await,
        b"ping",
        "the other service's listener is untouched"
    );
    let listeners = tcp_listeners(&client).await;
    assert!(
        !listeners.contains_key("archive:6543") && listeners.contains_key("db:5432"),
        "{listeners:?}"
    );
}

/// The `tcp_listeners` of a sidecar's `/config_dump`: `name:port` -> address.
async fn tcp_listeners(proxy: &MeshProxy) -> serde_json::Map<String, serde_json::Value> {
    let dump = meshlite_tests::clients::get(proxy.addrs.admin, "127.0.0.1", "/config_dump").await;
    assert_eq!(dump.status, 200);
    dump.json()["tcp_listeners"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_service_tcp_route_sends_connections_where_its_weights_say() {
    let (v1_app, v2_app) = (
        BannerApp::start(b"v1\n").await,
        BannerApp::start(b"v2\n").await,
    );
    let subsets = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                   metadata: {name: ledger, namespace: default}\nspec:\n  host: ledger\n  \
                   subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]\n";
    let control = ControlPlane::start(&[("dr.yaml", subsets)]).await;
    let route = |w1: u32, w2: u32| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {{name: ledger, namespace: default}}\nspec:\n  hosts: [ledger]\n  \
             tcp:\n  - match: [{{port: 7100}}]\n    route:\n    \
             - {{destination: {{host: ledger, subset: v1}}, weight: {w1}}}\n    \
             - {{destination: {{host: ledger, subset: v2}}, weight: {w2}}}\n"
        )
    };
    control.write_config("vs.yaml", &route(100, 0));
    let version = |v: &str, target| {
        let mut w = tcp_workload(&format!("ledger-{v}"), 7100, target);
        w.service_account = "ledger".into();
        w.app = "ledger".into();
        w.version = Some(v.into());
        w
    };
    let (w1, w2) = (version("v1", v1_app.addr), version("v2", v2_app.addr));
    let access = control.access(NAMESPACE, "ledger").await;
    let _v1 = MeshProxy::start(&access, &w1).await;
    let _v2 = MeshProxy::start(&access, &w2).await;
    let client_workload = Workload::new("teller").with_tcp_listeners(loopback(2));
    let client =
        MeshProxy::start(&control.access(NAMESPACE, "teller").await, &client_workload).await;
    let ledger = SocketAddr::new(loopback(2), 7100);

    for (weights, want, other) in [((100, 0), "v1", "v2"), ((0, 100), "v2", "v1")] {
        control.write_config("vs.yaml", &route(weights.0, weights.1));
        // Both versions are endpoints of the service: only the route keeps one of them out.
        eventually(
            &format!("connections to reach {want}"),
            CONVERGE,
            || async {
                let mut seen = Vec::new();
                for _ in 0..6 {
                    seen.push(banner(ledger).await?);
                }
                seen.iter().all(|b| b == want).then_some(())
            },
        )
        .await;
        for _ in 0..10 {
            assert_eq!(
                banner(ledger).await.as_deref(),
                Some(want),
                "weights {weights:?}: no connection may reach {other}"
            );
        }
        let counted = client
            .metric(
                "istio_tcp_connections_opened_total",
                &[
                    ("reporter", "source"),
                    ("destination_service", "ledger.default.svc.cluster.local"),
                    ("destination_workload", &format!("ledger-{want}")),
                ],
            )
            .await;
        assert!(counted >= 10.0, "metrics label the chosen destination");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_tcp_rules_apply_to_connections_from_pushed_listeners() {
    let app = TcpEchoApp::start().await;
    let only_auditor = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: vault-callers, namespace: default}}\nspec:\n  \
         selector: {{matchLabels: {{app: vault}}}}\n  rules:\n  \
         - from: [{{source: {{principals: [cluster.local/ns/default/sa/auditor]}}}}]\n    \
         to: [{{operation: {{ports: ['{}']}}}}]\n",
        app.addr.port()
    );
    let control = ControlPlane::start(&[("authz.yaml", &only_auditor)]).await;
    let vault = tcp_workload("vault", 8200, app.addr);
    let vault_proxy = MeshProxy::start(&control.access(NAMESPACE, "vault").await, &vault).await;
    let auditor = MeshProxy::start(
        &control.access(NAMESPACE, "auditor").await,
        &Workload::new("auditor").with_tcp_listeners(loopback(3)),
    )
    .await;
    let intruder = MeshProxy::start(
        &control.access(NAMESPACE, "intruder").await,
        &Workload::new("intruder").with_tcp_listeners(loopback(4)),
    )
    .await;
    let allowed = SocketAddr::new(loopback(3), 8200);
    let denied = SocketAddr::new(loopback(4), 8200);
    eventually("the allowed caller's echo", CONVERGE, || async {
        (echoed(allowed, b"ping").await == b"ping").then_some(())
    })
    .await;
    // The intruder's listener is open (same pushed service) but the server refuses it.
    eventually("the intruder to be refused", CONVERGE, || async {
        let open = TcpStream::connect(denied).await.is_ok();
        (open && echoed(denied, b"ping").await.is_empty()).then_some(())
    })
    .await;
    let before = app.connections();
    assert!(
        echoed(denied, b"ping").await.is_empty(),
        "no ALLOW rule for the intruder: closed without echo"
    );
    assert_eq!(
        app.connections(),
        before,
        "a denied connection never reaches the app"
    );
    assert!(
        vault_proxy
            .metric(
                "envoy_tcp_rbac_allowed",
                &[("policy", "default/vault-callers")]
            )
            .await
            >= 1.0
    );
    drop((auditor, intruder));
}
