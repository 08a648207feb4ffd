//! Zero trust, enforced by the destination sidecar: the decision record's own policies pushed
//! by a real control plane (STRICT mutual TLS mesh-wide; `llm-processor` callable only by
//! `intent-controller` with `POST /api/v1/process`; a DENY on a header that wins over the
//! ALLOW), PERMISSIVE ports serving mutual TLS and plaintext side by side, a tightening push
//! under load, dry-run and AUDIT policies with the audit log.

use crate::{field_text, tcp_ping};
use meshlite_tests::apps::HttpApp;
use meshlite_tests::clients::{self, Http1Client, full, h1_request};
use meshlite_tests::control::{CONVERGE, ControlPlane, Load, MeshProxy, NAMESPACE, Workload};
use meshlite_tests::deadline::{SOON, eventually};
use meshlite_tests::wire::{Closed, RawConn};
use std::time::Duration;
use tokio::time::Instant;

const HOST: &str = "llm-processor";
const PORT: u16 = 8080;
/// Bound of every load loop in this file.
const LOAD_BOUND: Duration = Duration::from_secs(30);

const STRICT_MESH: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
";

const PERMISSIVE_MESH: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: PERMISSIVE}}
";

/// The decision record's authorization: one caller, one method, one path; a debug header is
/// refused whoever sends it.
const DECISION_RECORD: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: llm-processor, namespace: default}
spec:
  selector: {matchLabels: {app: llm-processor}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/intent-controller]}}]
    to: [{operation: {methods: [POST], paths: [/api/v1/process]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: block-debug, namespace: default}
spec:
  selector: {matchLabels: {app: llm-processor}}
  action: DENY
  rules:
  - when: [{key: 'request.headers[x-debug]', values: ['*']}]
";

/// `llm-processor` behind its sidecar, and two callers with their own identities.
struct Mesh {
    control: ControlPlane,
    llm: MeshProxy,
    app: HttpApp,
    intent: MeshProxy,
    other: MeshProxy,
}

impl Mesh {
    async fn start(files: &[(&str, &str)]) -> Mesh {
        let control = ControlPlane::start(files).await;
        let app = HttpApp::start("llm-processor").await;
        let mut w = Workload::new("llm-processor").serving(PORT, app.addr);
        w.audit_all = true;
        let llm = MeshProxy::start(&control.access(NAMESPACE, "llm-processor").await, &w).await;
        let intent = MeshProxy::caller(&control, "intent-controller").await;
        let other = MeshProxy::caller(&control, "other").await;
        control
            .wait_connected(
                &[
                    "llm-processor.default",
                    "intent-controller.default",
                    "other.default",
                ],
                SOON,
            )
            .await;
        Mesh {
            control,
            llm,
            app,
            intent,
            other,
        }
    }
}

/// `method path` through `caller`'s sidecar with extra headers; status and body.
async fn send(
    caller: &MeshProxy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut b = h1_request(method, &format!("{HOST}:{PORT}"), path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let reply = Http1Client::connect(caller.outbound())
        .await
        .exchange(b.body(full("{}")).expect("request"))
        .await;
    (reply.status.as_u16(), reply.text())
}

/// Waits until `caller` gets `status` for `method path` (the policy reached the sidecar).
async fn wait_status(caller: &MeshProxy, method: &str, path: &str, status: u16) {
    let what = format!(
        "{} to get {status} for {method} {path}",
        caller.workload.name
    );
    eventually(&what, CONVERGE, || async {
        (send(caller, method, path, &[]).await.0 == status).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_records_policy_admits_one_caller_one_method_one_path() {
    let mesh = Mesh::start(&[("peer.yaml", STRICT_MESH), ("authz.yaml", DECISION_RECORD)]).await;
    wait_status(&mesh.intent, "POST", "/api/v1/process", 200).await;
    wait_status(&mesh.other, "POST", "/api/v1/process", 403).await;
    let served_before = mesh.app.requests();

    let refused = [
        (
            &mesh.other,
            "POST",
            "/api/v1/process",
            &[][..],
            "another principal",
        ),
        (
            &mesh.intent,
            "GET",
            "/api/v1/process",
            &[],
            "another method",
        ),
        (&mesh.intent, "POST", "/api/v1/other", &[], "another path"),
        (
            &mesh.intent,
            "POST",
            "/api/v1/process/../../admin",
            &[],
            "a path walking out",
        ),
        (
            &mesh.intent,
            "POST",
            "/api/v1/process",
            &[("x-debug", "1")],
            "the blocked header",
        ),
    ];
    for (caller, method, path, headers, what) in refused {
        let (status, body) = send(caller, method, path, headers).await;
        assert_eq!(status, 403, "{what} must be refused, got {status}: {body}");
        assert_eq!(body, "RBAC: access denied", "{what}: Envoy's body");
    }
    let (status, body) = send(&mesh.intent, "POST", "/api/v1/process", &[]).await;
    assert_eq!(status, 200, "the allowed call: {body}");
    assert_eq!(
        mesh.app.requests(),
        served_before + 1,
        "a denial never reaches the app"
    );

    // Counted per policy under Envoy's RBAC names.
    let llm = &mesh.llm;
    let allowed = llm
        .metric(
            "envoy_http_rbac_allowed",
            &[("policy", "default/llm-processor")],
        )
        .await;
    assert!(allowed >= 2.0, "allowed by the ALLOW policy: {allowed}");
    let by_header = llm
        .metric(
            "envoy_http_rbac_denied",
            &[("policy", "default/block-debug")],
        )
        .await;
    assert_eq!(by_header, 1.0, "the DENY policy denied once");
    let unmatched = llm
        .metric("envoy_http_rbac_denied", &[("policy", "none")])
        .await;
    assert!(unmatched >= 4.0, "no ALLOW rule matched: {unmatched}");

    // The audit log (every decision, on this workload) names caller, target, policy, rule.
    let audit = eventually("the audit line of the header denial", SOON, || async {
        llm.audit_entries()
            .into_iter()
            .find(|e| e["policy"] == "default/block-debug")
    })
    .await;
    assert_eq!(audit["decision"], "deny", "{audit}");
    assert_eq!(audit["rule"], 0, "{audit}");
    assert_eq!(
        audit["source_principal"], "cluster.local/ns/default/sa/intent-controller",
        "{audit}"
    );
    assert_eq!(audit["destination_workload"], "llm-processor", "{audit}");
    assert_eq!(audit["method"], "POST", "{audit}");
    let other = llm
        .audit_entries()
        .into_iter()
        .find(|e| e["source_principal"] == "cluster.local/ns/default/sa/other")
        .expect("the other caller's denial is audited");
    assert_eq!(other["reason"], "no_allow_match", "{other}");
    assert!(
        llm.audit_entries()
            .iter()
            .any(|e| e["decision"] == "allow" && e["policy"] == "default/llm-processor"),
        "allowed decisions are audited too"
    );

    // The access log says which policy refused.
    let entry = eventually("the access log line of the header denial", SOON, || async {
        std::fs::read_to_string(llm.dir().join("access.log"))
            .ok()?
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| field_text(e, "response_code_details").contains("block-debug"))
    })
    .await;
    assert_eq!(
        field_text(&entry, "response_code_details"),
        "rbac_access_denied_matched_policy[default/block-debug]"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_a_strict_workload_gets_no_answer_and_is_counted() {
    let mesh = Mesh::start(&[("peer.yaml", STRICT_MESH)]).await;
    wait_status(&mesh.intent, "GET", "/", 200).await;
    let served = mesh.app.requests();
    let mut raw = RawConn::connect(mesh.llm.addrs.inbound).await;
    let _ = raw
        .send(b"GET / HTTP/1.1\r\nHost: llm-processor:8080\r\n\r\n")
        .await;
    match raw.wait_closed(Duration::from_secs(10)).await {
        Closed::Yes { bytes } => assert!(
            bytes.is_empty(),
            "STRICT closes without an answer, got {:?}",
            String::from_utf8_lossy(&bytes)
        ),
        Closed::StillOpen => panic!("the STRICT inbound port kept a plaintext connection open"),
    }
    assert_eq!(mesh.app.requests(), served, "the app is never reached");
    let refused = mesh
        .llm
        .metric(
            "meshlite_inbound_connections_refused_total",
            &[("reason", "plaintext_under_strict")],
        )
        .await;
    assert_eq!(refused, 1.0);
    assert!(
        mesh.llm.logs().contains("plaintext_under_strict"),
        "the refusal is logged with its reason"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_serves_mutual_tls_and_plaintext_on_one_port_until_strict_is_pushed() {
    let mesh = Mesh::start(&[("peer.yaml", PERMISSIVE_MESH)]).await;
    wait_status(&mesh.intent, "GET", "/", 200).await;

    // Plaintext straight to the inbound port: served, without an identity, and a forged
    // client-certificate header never reaches the app.
    let request = h1_request("GET", "llm-processor:8080", "/headers")
        .header(
            "x-forwarded-client-cert",
            "URI=spiffe://cluster.local/ns/default/sa/admin",
        )
        .body(clients::empty())
        .expect("request");
    let mut plain = Http1Client::connect(mesh.llm.addrs.inbound).await;
    let reply = plain.exchange(request).await;
    assert_eq!(
        reply.status,
        200,
        "PERMISSIVE serves plaintext: {}",
        reply.text()
    );
    let seen = reply.json();
    assert!(
        seen["headers"]["x-forwarded-client-cert"].is_null(),
        "a plaintext caller's claimed identity is dropped: {seen}"
    );
    // Over mutual TLS through a sidecar: served with the caller's identity.
    let mtls = clients::get(mesh.intent.outbound(), HOST, "/headers")
        .await
        .json();
    let xfcc = mtls["headers"]["x-forwarded-client-cert"][0]
        .as_str()
        .unwrap_or_default();
    assert!(xfcc.contains("sa/intent-controller"), "{mtls}");
    let llm = &mesh.llm;
    assert!(
        llm.metric(
            "istio_requests_total",
            &[("connection_security_policy", "none")]
        )
        .await
            >= 1.0
    );
    assert!(
        llm.metric(
            "istio_requests_total",
            &[("connection_security_policy", "mutual_tls")]
        )
        .await
            >= 1.0
    );

    // STRICT pushed: a new plaintext connection gets nothing; mutual TLS keeps working.
    mesh.control.write_config("peer.yaml", STRICT_MESH);
    let what = "plaintext to be refused after STRICT";
    eventually(what, CONVERGE, || async {
        let mut raw = RawConn::connect(llm.addrs.inbound).await;
        let _ = raw
            .send(b"GET / HTTP/1.1\r\nHost: llm-processor:8080\r\n\r\n")
            .await;
        matches!(raw.wait_closed(Duration::from_secs(2)).await, Closed::Yes { bytes } if bytes.is_empty())
            .then_some(())
    })
    .await;
    assert_eq!(send(&mesh.intent, "GET", "/", &[]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tightening_push_under_load_denies_the_other_caller_and_drops_no_allowed_request() {
    let allow_both = DECISION_RECORD.replace(
        "principals: [cluster.local/ns/default/sa/intent-controller]",
        "principals: [cluster.local/ns/default/sa/intent-controller, cluster.local/ns/default/sa/other]",
    );
    let mesh = Mesh::start(&[("peer.yaml", STRICT_MESH), ("authz.yaml", &allow_both)]).await;
    wait_status(&mesh.other, "POST", "/api/v1/process", 200).await;
    let allowed = Load::sending(
        mesh.intent.outbound(),
        HOST,
        ("POST", "/api/v1/process"),
        4,
        LOAD_BOUND,
    );
    allowed.wait_for_requests(50).await;

    let pushed = Instant::now();
    mesh.control.write_config("authz.yaml", DECISION_RECORD);
    wait_status(&mesh.other, "POST", "/api/v1/process", 403).await;
    let took = pushed.elapsed();
    allowed.wait_for_requests(50).await;
    let report = allowed.stop().await;
    report.assert_no_failures("the policy is tightened");
    eprintln!("tightening push: the other caller denied {took:?} after the file was written");
    assert!(
        took < CONVERGE,
        "denied within the convergence bound: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_audit_policies_report_and_never_enforce() {
    // `ports` are workload ports: where the app listens, as Istio's are container ports.
    let app = HttpApp::start("llm-processor").await;
    let policies = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: would-deny-posts
  namespace: default
  annotations: {istio.io/dry-run: 'true'}
spec:
  selector: {matchLabels: {app: llm-processor}}
  action: DENY
  rules: [{to: [{operation: {methods: [POST], ports: ['APP_PORT']}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-posts, namespace: default}
spec:
  selector: {matchLabels: {app: llm-processor}}
  action: AUDIT
  rules: [{to: [{operation: {methods: [POST], ports: ['APP_PORT']}}]}]
"
    .replace("APP_PORT", &app.addr.port().to_string());
    let control = ControlPlane::start(&[("authz.yaml", &policies)]).await;
    let llm = MeshProxy::start(
        &control.access(NAMESPACE, "llm-processor").await,
        &Workload::new("llm-processor").serving(PORT, app.addr),
    )
    .await;
    let intent = MeshProxy::caller(&control, "intent-controller").await;
    wait_status(&intent, "POST", "/api/v1/process", 200).await;
    let marked = eventually("an audited POST", CONVERGE, || async {
        assert_eq!(
            send(&intent, "POST", "/api/v1/process", &[]).await.0,
            200,
            "dry run never denies"
        );
        llm.audit_entries()
            .into_iter()
            .find(|e| e["audit_policy"] == "default/audit-posts")
    })
    .await;
    assert_eq!(marked["decision"], "allow", "{marked}");
    assert_eq!(
        marked["dry_run"]["deny_engine"]["decision"], "deny",
        "{marked}"
    );
    assert_eq!(
        marked["dry_run"]["deny_engine"]["policy"], "default/would-deny-posts",
        "{marked}"
    );
    assert_eq!(send(&intent, "GET", "/", &[]).await.0, 200);
    assert!(
        llm.audit_entries().iter().all(|e| e["method"] == "POST"),
        "without --audit-log-all only AUDIT-marked requests are written"
    );
    assert!(
        llm.metric(
            "envoy_http_rbac_shadow_denied",
            &[("policy", "default/would-deny-posts")]
        )
        .await
            >= 1.0
    );
    assert!(
        llm.metric(
            "envoy_http_rbac_logged",
            &[("policy", "default/audit-posts")]
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_port_takes_plaintext_and_callers_send_it_plaintext_while_the_rest_stays_strict()
{
    // SEMANTICS B.6: namespace STRICT, the workload's policy UNSET but its 8080 workload port
    // DISABLE.
    let (plain_app, strict_app) = (
        HttpApp::start("plain-port").await,
        HttpApp::start("strict-port").await,
    );
    let policies = format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: llm, namespace: default}}
spec:
  selector: {{matchLabels: {{app: llm-processor}}}}
  portLevelMtls:
    {}: {{mode: DISABLE}}
",
        plain_app.addr.port()
    );
    let control = ControlPlane::start(&[("peer.yaml", &policies)]).await;
    let llm = MeshProxy::start(
        &control.access(NAMESPACE, "llm-processor").await,
        &Workload::new("llm-processor")
            .serving(8080, plain_app.addr)
            .serving(9090, strict_app.addr),
    )
    .await;
    let intent = MeshProxy::caller(&control, "intent-controller").await;
    let through = |port: u16| {
        let outbound = intent.outbound();
        async move {
            clients::try_get(outbound, &format!("{HOST}:{port}"), "/headers")
                .await
                .filter(|r| r.status == 200)
                .map(|r| r.json())
        }
    };
    let disabled = eventually("the DISABLE port through the sidecar", CONVERGE, || {
        through(8080)
    })
    .await;
    assert!(
        disabled["headers"]["x-forwarded-client-cert"].is_null(),
        "auto mutual TLS sends plaintext to a DISABLE port: {disabled}"
    );
    let strict = eventually("the STRICT port through the sidecar", CONVERGE, || {
        through(9090)
    })
    .await;
    assert!(
        strict["headers"]["x-forwarded-client-cert"][0]
            .as_str()
            .is_some_and(|x| x.contains("intent-controller")),
        "the other port stays mutual TLS: {strict}"
    );

    // Directly, in plaintext: the DISABLE port answers, the STRICT one closes the connection.
    let reply = clients::get(llm.addrs.inbound, &format!("{HOST}:8080"), "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let mut raw = RawConn::connect(llm.addrs.inbound).await;
    let _ = raw
        .send(format!("GET / HTTP/1.1\r\nHost: {HOST}:9090\r\n\r\n").as_bytes())
        .await;
    assert_eq!(
        raw.wait_closed(Duration::from_secs(10)).await,
        Closed::Yes { bytes: vec![] },
        "plaintext to the STRICT port gets no answer"
    );
    assert!(
        llm.metric(
            "istio_requests_total",
            &[
                ("connection_security_policy", "none"),
                ("response_code", "200")
            ]
        )
        .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_grpc_caller_gets_permission_denied() {
    use meshlite_tests::grpc::{self, GrpcEchoApp, SAY_PATH};
    use meshlite_tests::mesh::{AppProtocol, InboundPort};
    let policy = format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: greeter, namespace: default}}
spec:
  selector: {{matchLabels: {{app: greeter}}}}
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/default/sa/intent-controller]}}}}]
    to: [{{operation: {{methods: [POST], paths: ['{SAY_PATH}']}}}}]
"
    );
    let control = ControlPlane::start(&[("authz.yaml", &policy)]).await;
    let app = GrpcEchoApp::start().await;
    let mut workload = Workload::new("greeter");
    workload.inbound.push(InboundPort {
        port: PORT,
        target: app.addr,
        protocol: AppProtocol::Grpc,
    });
    let _greeter = MeshProxy::start(&control.access(NAMESPACE, "greeter").await, &workload).await;
    let intent = MeshProxy::caller(&control, "intent-controller").await;
    let other = MeshProxy::caller(&control, "other").await;
    let authority = format!("greeter:{PORT}");
    let reply = eventually("the allowed gRPC call", CONVERGE, || async {
        grpc::say(intent.outbound(), &authority, "hello").await.ok()
    })
    .await;
    assert_eq!(reply.get_ref().message, "hello");
    let calls = app.calls();
    let status = eventually("the denied gRPC call's status", CONVERGE, || async {
        grpc::say(other.outbound(), &authority, "hello")
            .await
            .err()
            .filter(|s| s.code() == tonic::Code::PermissionDenied)
    })
    .await;
    assert!(status.message().contains("RBAC"), "{status:?}");
    assert_eq!(app.calls(), calls, "a denied call never reaches the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_ports_get_tcp_rules_and_http_only_fields_follow_istio() {
    use meshlite_tests::apps::TcpEchoApp;
    use meshlite_tests::control::StaticTcp;
    use meshlite_tests::mesh::{AppProtocol, InboundPort};
    let (http_app, tcp_app) = (
        HttpApp::start("llm-processor").await,
        TcpEchoApp::start().await,
    );
    // SEMANTICS B.7: a DENY on POST without `ports` denies every TCP connection.
    let deny_posts = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-posts, namespace: default}
spec:
  selector: {matchLabels: {app: llm-processor}}
  action: DENY
  rules: [{to: [{operation: {methods: [POST]}}]}]
";
    let control = ControlPlane::start(&[("authz.yaml", deny_posts)]).await;
    let mut w = Workload::new("llm-processor").serving(PORT, http_app.addr);
    w.inbound.push(InboundPort {
        port: 5432,
        target: tcp_app.addr,
        protocol: AppProtocol::Tcp,
    });
    let llm = MeshProxy::start(&control.access(NAMESPACE, "llm-processor").await, &w).await;
    let caller = |name: &str| {
        let mut c = Workload::new(name);
        c.static_tcp.push(StaticTcp {
            name: "llm-db".into(),
            port: 5432,
            endpoint: llm.addrs.inbound,
            identity: w.spiffe_id(),
        });
        c
    };
    let intent = MeshProxy::start(
        &control.access(NAMESPACE, "intent-controller").await,
        &caller("intent-controller"),
    )
    .await;
    let other = MeshProxy::start(&control.access(NAMESPACE, "other").await, &caller("other")).await;
    wait_status(&intent, "GET", "/", 200).await;
    let tcp_of = |p: &MeshProxy| p.addrs.tcp["llm-db:5432"];
    eventually("the DENY to reach the TCP port", CONVERGE, || async {
        (llm.metric("envoy_tcp_rbac_denied", &[("policy", "default/deny-posts")])
            .await
            >= 1.0
            || tcp_ping(tcp_of(&intent)).await.is_empty())
        .then_some(())
    })
    .await;
    assert!(
        tcp_ping(tcp_of(&intent)).await.is_empty(),
        "denied: closed without echo"
    );
    assert_eq!(
        tcp_app.connections(),
        0,
        "a denied connection never reaches the app"
    );
    assert_eq!(
        send(&intent, "GET", "/", &[]).await.0,
        200,
        "HTTP GET is not a POST"
    );
    assert_eq!(send(&intent, "POST", "/", &[]).await.0, 403);

    // Scoped to the TCP port, an ALLOW for one principal: it gets through, the other not.
    let allow_intent = format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: db-clients, namespace: default}}
spec:
  selector: {{matchLabels: {{app: llm-processor}}}}
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/default/sa/intent-controller]}}}}]
    to: [{{operation: {{ports: ['{}']}}}}]
",
        tcp_app.addr.port()
    );
    mesh_write(&control, &allow_intent);
    let echoed = eventually("the allowed TCP caller's echo", CONVERGE, || async {
        let got = tcp_ping(tcp_of(&intent)).await;
        (got == b"ping").then_some(got)
    })
    .await;
    assert_eq!(echoed, b"ping");
    assert!(
        tcp_ping(tcp_of(&other)).await.is_empty(),
        "no ALLOW rule for the other principal"
    );
    assert!(
        llm.metric(
            "envoy_tcp_rbac_allowed",
            &[("policy", "default/db-clients")]
        )
        .await
            >= 1.0
    );
}

fn mesh_write(control: &ControlPlane, yaml: &str) {
    control.write_config("authz.yaml", yaml);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_first_protocol_is_not_stalled_by_permissive_detection() {
    use meshlite_tests::mesh::{AppProtocol, InboundPort};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An SMTP-like app: it speaks first.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let banner_addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 mail ready\r\n").await;
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf).await;
            });
        }
    });
    let control = ControlPlane::start(&[("peer.yaml", PERMISSIVE_MESH)]).await;
    let mut w = Workload::new("mail");
    w.inbound.push(InboundPort {
        port: 25,
        target: banner_addr,
        protocol: AppProtocol::Tcp,
    });
    let mail = MeshProxy::start(&control.access(NAMESPACE, "mail").await, &w).await;
    let banner = eventually(
        "the banner through the PERMISSIVE port",
        CONVERGE,
        || async {
            let mut s = tokio::net::TcpStream::connect(mail.addrs.inbound)
                .await
                .ok()?;
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
        },
    )
    .await;
    assert_eq!(
        banner, "220 mail ready\r\n",
        "relayed after the detection deadline"
    );
    server.abort();
}
