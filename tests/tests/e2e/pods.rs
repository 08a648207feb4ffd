//! Pods for real: apps in network namespaces whose traffic `meshlite-proxy init`'s rules
//! capture, carried by sidecars running as uid 1337 beside them, with a control plane on the
//! node. The apps use plain addresses and no proxy settings, as in a Kubernetes pod.
//!
//! Needs root, iproute2, util-linux's `setpriv` and Debian's `iptables`; without them the
//! tests say SKIPPED (and fail under `MESHLITE_REQUIRE_PEERS`).

use meshlite_tests::apps::{BannerApp, HttpApp, SERVED_BY};
use meshlite_tests::deadline::{SOON, eventually, within};
use meshlite_tests::mesh::proxy_binary;
use meshlite_tests::netns::{Netns, Node, find_tool};
use meshlite_tests::pods::{NodeControl, PodSidecar, Served, can_run, get, metrics};
use meshlite_tests::prometheus::samples;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The greeting of the server-first protocol (as an SMTP server's).
const BANNER: &[u8] = b"220 meshlite banner ready\r\n";

/// What the server of a connection from `ns` to `addr` says first, within `wait`.
async fn greeting(ns: &Netns, addr: SocketAddr, wait: Duration) -> Result<Vec<u8>, String> {
    let mut s = ns.connect(addr).await.map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 128];
    let read = tokio::time::timeout(wait, async {
        while got.len() < BANNER.len() {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    if read.is_err() {
        return Err(format!("no greeting within {wait:?} (got {got:?})"));
    }
    if got.is_empty() {
        return Err("closed without a greeting".into());
    }
    // The connection carries bytes the client writes too.
    s.write_all(b"ping\n").await.map_err(|e| e.to_string())?;
    let n = tokio::time::timeout(wait, s.read(&mut buf))
        .await
        .map_err(|_| "no echo".to_string())?
        .map_err(|e| e.to_string())?;
    if &buf[..n] != b"ping\n" {
        return Err(format!("echo was {:?}", &buf[..n]));
    }
    Ok(got)
}

/// The sum of `name`'s samples whose labels hold every `(key, value)`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .iter()
        .filter(|s| labels.iter().all(|(k, v)| s.label(k) == *v))
        .map(|s| s.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_calling_plain_addresses_are_captured_carried_over_mutual_tls_and_counted() {
    if !can_run() {
        return;
    }
    within("the pods story", Duration::from_secs(150), async {
        let node = Node::create().expect("node");
        let server = node.add_pod("reviews").expect("reviews pod");
        let client = node.add_pod("productpage").expect("productpage pod");
        let legacy = node.add_pod("legacy").expect("legacy pod");
        let vip = node.virtual_ip(0);

        // The apps: reviews serves HTTP on 9080 and a server-first protocol on 9090; a pod
        // outside the mesh (no sidecar, no rules) serves the same protocol on 7000.
        let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
        let app = HttpApp::start_on("reviews", server.ns.bind(any(9080)).await.expect("bind"));
        let banner_on = |listener| BannerApp::start_on(listener, BANNER);
        let _banner = banner_on(server.ns.bind(any(9090)).await.expect("bind"));
        let _undeclared = banner_on(server.ns.bind(any(9091)).await.expect("bind"));
        let _legacy = banner_on(legacy.ns.bind(any(7000)).await.expect("bind"));

        // reviews is also reachable at a virtual IP (a ServiceEntry's address, as a ClusterIP).
        let entry = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: reviews-vip, namespace: default}}\nspec:\n  \
             hosts: [reviews.vip.internal]\n  addresses: [{vip}]\n  location: MESH_INTERNAL\n  \
             resolution: STATIC\n  ports: [{{number: 9080, name: http, targetPort: 15006}}]\n  \
             endpoints: [{{address: {}, serviceAccount: reviews}}]\n",
            server.ip
        );
        // A second address whose ports name no protocol: captured connections are sniffed.
        let sniffed_vip = node.virtual_ip(1);
        let sniffed = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: reviews-sniffed, namespace: default}}\nspec:\n  \
             hosts: [sniffed.vip.internal]\n  addresses: [{sniffed_vip}]\n  location: MESH_INTERNAL\n  \
             resolution: STATIC\n  ports: [{{number: 9080, name: web, targetPort: 15006}}, \
             {{number: 9091, name: greeter, targetPort: 15006}}]\n  \
             endpoints: [{{address: {}, serviceAccount: reviews}}]\n",
            server.ip
        );
        let files = [("vip.yaml", entry.as_str()), ("sniffed.yaml", sniffed.as_str())];
        let control = NodeControl::start(&node, &files).await;
        let served = |port, protocol| Served { port, protocol };
        let ports = [served(9080, "http"), served(9090, "tcp"), served(9091, "tcp")];
        let server_sidecar = PodSidecar::start(&server, &control, "reviews", &ports, &[]).await;
        let client_sidecar = PodSidecar::start(&client, &control, "productpage", &[], &[]).await;

        // The app calls the pod's address: captured, routed as reviews, over mutual TLS.
        let pod_addr = SocketAddr::new(IpAddr::V4(server.ip), 9080);
        let host = pod_addr.to_string();
        // (Until the client's sidecar has the registry, the address is unknown to it and the
        // call passes through in plaintext; the mesh's answer carries the caller's identity.)
        let identity = |r: &meshlite_tests::clients::Reply| {
            r.json()["headers"]["x-forwarded-client-cert"][0]
                .as_str()
                .is_some_and(|x| x.contains("URI=spiffe://cluster.local/ns/default/sa/productpage"))
        };
        let reply = eventually(
            "a captured call to reviews' pod IP over mTLS",
            SOON,
            || async {
                get(&client, pod_addr, &host, "/")
                    .await
                    .ok()
                    .filter(|r| r.status == 200 && identity(r))
            },
        )
        .await;
        assert_eq!(reply.header(SERVED_BY), Some("reviews"));

        // The virtual IP leads to the same service.
        let vip_addr = SocketAddr::new(IpAddr::V4(vip), 9080);
        let reply = get(&client, vip_addr, &vip_addr.to_string(), "/")
            .await
            .expect("vip");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header(SERVED_BY), Some("reviews"));
        assert!(identity(&reply), "over mutual TLS: {}", reply.text());

        // Explicit mode still works in the same pod.
        let explicit = SocketAddr::from(([127, 0, 0, 1], 15001));
        let reply = get(&client, explicit, "reviews:9080", "/")
            .await
            .expect("explicit");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header(SERVED_BY), Some("reviews"));

        // A server-first protocol on a `tcp` port: the greeting comes through the tunnel at
        // once, and the client's bytes go back.
        let started = tokio::time::Instant::now();
        let banner_addr = SocketAddr::new(IpAddr::V4(server.ip), 9090);
        let got = greeting(&client.ns, banner_addr, Duration::from_secs(3))
            .await
            .expect("server-first protocol through capture");
        assert_eq!(got, BANNER);
        assert!(started.elapsed() < Duration::from_secs(2), "no stall");

        // Ports that declare nothing: HTTP is told by its request line; a client waiting
        // for a greeting is taken for opaque TCP after the 100 ms detection timeout.
        let web = SocketAddr::new(IpAddr::V4(sniffed_vip), 9080);
        let reply = get(&client, web, "sniffed.vip.internal", "/").await.expect("sniffed http");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header(SERVED_BY), Some("reviews"));
        assert!(identity(&reply), "over mutual TLS: {}", reply.text());
        let started = tokio::time::Instant::now();
        let greeter = SocketAddr::new(IpAddr::V4(sniffed_vip), 9091);
        let got = greeting(&client.ns, greeter, Duration::from_secs(3))
            .await
            .expect("server-first protocol on a port without a protocol");
        assert_eq!(got, BANNER);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_secs(2),
            "the greeting waited for the detection timeout only: {waited:?}"
        );

        // A destination no service has: passed through as it is (ALLOW_ANY).
        let outside = SocketAddr::new(IpAddr::V4(legacy.ip), 7000);
        let got = greeting(&client.ns, outside, Duration::from_secs(3))
            .await
            .expect("passthrough to an unknown destination");
        assert_eq!(got, BANNER);

        // Inbound capture: a caller without a sidecar reaching reviews' app port lands on
        // its sidecar (PERMISSIVE, Istio's default), which delivers to the port it addressed
        // and knows the caller's address.
        let before = app.requests();
        let reply = get(&legacy, pod_addr, &host, "/")
            .await
            .expect("plaintext caller");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(
            reply.json()["headers"]["x-forwarded-client-cert"].is_null(),
            "no identity for a plaintext caller"
        );
        assert_eq!(app.requests(), before + 1);
        // (The log's writer runs apart from the request: the line follows the answer.)
        let legacy_ip = legacy.ip.to_string();
        eventually(
            "the server's access log to name the caller's address",
            SOON,
            || async {
                let logged = server_sidecar.access_log();
                logged
                    .iter()
                    .any(|e| e.to_string().contains(&legacy_ip))
                    .then_some(())
            },
        )
        .await;

        // Counted as Istio counts them, on both sides.
        let server_metrics = metrics(&server).await;
        let mtls = sum(
            &server_metrics,
            "istio_requests_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "mutual_tls"),
                ("source_workload", "productpage"),
                ("response_code", "200"),
            ],
        );
        assert!(mtls >= 4.0, "{server_metrics}");
        let plaintext = sum(
            &server_metrics,
            "istio_requests_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "none"),
            ],
        );
        assert!(plaintext >= 1.0, "{server_metrics}");
        let client_metrics = metrics(&client).await;
        let sent = sum(
            &client_metrics,
            "istio_requests_total",
            &[
                ("reporter", "source"),
                ("destination_service_name", "reviews"),
            ],
        );
        assert!(sent >= 3.0, "{client_metrics}");
        let tcp = sum(
            &client_metrics,
            "istio_tcp_connections_opened_total",
            &[("reporter", "source"), ("destination_service_name", "reviews")],
        );
        assert!(tcp >= 1.0, "{client_metrics}");
        // The passthrough connection is counted under Envoy's cluster name, as Istio does,
        // with the bytes the banner took back to the app.
        let passthrough = [
            ("reporter", "source"),
            ("destination_service_name", "PassthroughCluster"),
        ];
        let opened = sum(&client_metrics, "istio_tcp_connections_opened_total", &passthrough);
        assert!(opened >= 1.0, "{client_metrics}");
        // Bytes are counted when the relay ends (the greeting closed it).
        eventually("the passthrough's bytes counted", SOON, || async {
            let text = metrics(&client).await;
            let bytes = sum(&text, "istio_tcp_sent_bytes_total", &passthrough);
            (bytes >= BANNER.len() as f64).then_some(())
        })
        .await;

        // REGISTRY_ONLY: the unknown destination is now refused.
        control.write_config(
            "mesh.yaml",
            "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n\
             metadata: {name: mesh, namespace: istio-system}\nspec:\n  meshConfig:\n    \
             outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
        );
        eventually(
            "REGISTRY_ONLY to close unknown destinations",
            SOON,
            || async {
                greeting(&client.ns, outside, Duration::from_millis(500))
                    .await
                    .is_err()
                    .then_some(())
            },
        )
        .await;
        // ...while the mesh's own services are still reached.
        let reply = get(&client, pod_addr, &host, "/")
            .await
            .expect("mesh under REGISTRY_ONLY");
        assert_eq!(reply.status, 200);
        let client_metrics = metrics(&client).await;
        let refused = sum(
            &client_metrics,
            "istio_tcp_connections_closed_total",
            &[
                ("reporter", "source"),
                ("destination_service_name", "BlackHoleCluster"),
            ],
        );
        assert!(refused >= 1.0, "{client_metrics}");
        drop((server_sidecar, client_sidecar, control));
    })
    .await;
}

/// `iptables-save -t nat` (or ip6tables) in `ns`.
async fn nat_rules(ns: &Netns, tool: &str) -> String {
    let bin = find_tool(tool).expect("tool");
    let out = ns
        .run(&bin, &["-t", "nat"], Duration::from_secs(10))
        .await
        .expect("save");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('-') || l.starts_with(':'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_installs_one_rule_set_however_often_it_runs_and_cleanup_removes_exactly_it() {
    if !can_run() {
        return;
    }
    within("init in a namespace", Duration::from_secs(60), async {
        let node = Node::create().expect("node");
        let pod = node.add_pod("init").expect("pod");
        let proxy = proxy_binary();
        let run = |args: Vec<&'static str>| {
            let pod = &pod;
            async move {
                pod.ns
                    .run(proxy, &args, Duration::from_secs(20))
                    .await
                    .expect("run init")
            }
        };
        // Someone else's rule, which init and cleanup must leave alone.
        let iptables = find_tool("iptables").expect("iptables");
        let theirs = [
            "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9", "-j", "RETURN",
        ];
        let out = pod
            .ns
            .run(&iptables, &theirs, Duration::from_secs(10))
            .await
            .expect("iptables");
        assert!(out.status.success());

        let flags = vec!["init", "--redirect-dns", "--exclude-outbound-ports", "22"];
        for _ in 0..2 {
            let out = run(flags.clone()).await;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v4 = nat_rules(&pod.ns, "iptables-save").await;
        assert_eq!(
            v4.matches("-A OUTPUT -p tcp -j MESHLITE_OUTPUT").count(),
            1,
            "{v4}"
        );
        assert_eq!(v4.matches("-j MESHLITE_INBOUND").count(), 1, "{v4}");
        assert_eq!(v4.matches("--dport 22 -j RETURN").count(), 1, "{v4}");
        assert!(v4.contains("--dport 9 -j RETURN"), "{v4}");
        // Ours go first: a rule installed before init (Docker's DNS DNAT is one) does not
        // see the app's packets ahead of capture.
        let ours = v4.find("-A OUTPUT -p tcp -j MESHLITE_OUTPUT");
        let theirs_at = v4.find("-A OUTPUT -p tcp -m tcp --dport 9 -j RETURN");
        assert!(
            ours.is_some() && theirs_at.is_some() && ours < theirs_at,
            "{v4}"
        );
        assert!(v4.contains("--to-ports 15053"), "{v4}");
        let v6 = nat_rules(&pod.ns, "ip6tables-save").await;
        assert!(
            v6.contains("-A MESHLITE_OUTPUT -d ::1/128 -j RETURN"),
            "{v6}"
        );

        // Without CAP_NET_ADMIN (the proxy's own uid): a clear error, nothing changed.
        let status = pod
            .ns
            .command_as(1337, 1337, proxy, &["init"])
            .output()
            .expect("run init as 1337");
        assert_eq!(status.status.code(), Some(1));
        let said = String::from_utf8_lossy(&status.stderr);
        assert!(said.contains("CAP_NET_ADMIN"), "{said}");
        assert_eq!(nat_rules(&pod.ns, "iptables-save").await, v4);

        // Bad flags: refused before anything is read.
        let out = run(vec!["init", "--include-outbound-ip-ranges", "10.0.0.0/99"]).await;
        assert_eq!(out.status.code(), Some(2));

        let out = run(vec!["init", "--cleanup"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let after = nat_rules(&pod.ns, "iptables-save").await;
        assert!(!after.contains("MESHLITE"), "{after}");
        assert!(
            after.contains("--dport 9 -j RETURN"),
            "the other rule stays: {after}"
        );
        assert!(
            !nat_rules(&pod.ns, "ip6tables-save")
                .await
                .contains("MESHLITE")
        );
        // Cleaning a clean namespace is not an error.
        assert!(run(vec!["init", "--cleanup"]).await.status.success());

        let out = run(vec!["init", "--dry-run", "--exclude-inbound-ports", "22"]).await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("-A MESHLITE_INBOUND -p tcp --dport 22 -j RETURN"),
            "{text}"
        );
        assert!(
            !nat_rules(&pod.ns, "iptables-save")
                .await
                .contains("MESHLITE")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_resources_registry_only_closes_unknown_destinations_of_its_workloads_only() {
    if !can_run() {
        return;
    }
    within(
        "a Sidecar's outbound policy",
        Duration::from_secs(90),
        async {
            let node = Node::create().expect("node");
            let scoped = node.add_pod("scoped").expect("scoped pod");
            let free = node.add_pod("free").expect("free pod");
            let legacy = node.add_pod("legacy").expect("legacy pod");
            let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
            let _legacy =
                BannerApp::start_on(legacy.ns.bind(any(7000)).await.expect("bind"), BANNER);
            // MeshConfig keeps Istio's ALLOW_ANY; the Sidecar makes its workloads REGISTRY_ONLY.
            let sidecar = "apiVersion: networking.istio.io/v1\nkind: Sidecar\n\
             metadata: {name: scoped, namespace: default}\nspec:\n  \
             workloadSelector: {labels: {app: scoped}}\n  \
             outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n";
            let control = NodeControl::start(&node, &[("sidecar.yaml", sidecar)]).await;
            let _scoped = PodSidecar::start(&scoped, &control, "scoped", &[], &[]).await;
            let _free = PodSidecar::start(&free, &control, "free", &[], &[]).await;
            let outside = SocketAddr::new(IpAddr::V4(legacy.ip), 7000);
            let wait = Duration::from_millis(500);

            eventually(
                "the scoped pod's unknown destination closed",
                SOON,
                || async {
                    let text = metrics(&scoped).await;
                    let closed = sum(
                        &text,
                        "istio_tcp_connections_closed_total",
                        &[
                            ("reporter", "source"),
                            ("destination_service_name", "BlackHoleCluster"),
                        ],
                    );
                    (greeting(&scoped.ns, outside, wait).await.is_err() && closed >= 1.0)
                        .then_some(())
                },
            )
            .await;
            // The pod the Sidecar does not select still passes through, as MeshConfig says.
            let hello = greeting(&free.ns, outside, wait)
                .await
                .expect("ALLOW_ANY passes through");
            assert_eq!(hello, BANNER);
        },
    )
    .await;
}
