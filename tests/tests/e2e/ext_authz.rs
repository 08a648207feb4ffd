//! AuthorizationPolicy CUSTOM: the destination sidecar asks the MeshConfig's external
//! authorizer before DENY and ALLOW policies, over Envoy's ext_authz protocols. A gRPC
//! authorizer behind its own sidecar (reached over mutual TLS) and an HTTP one outside the
//! mesh (a MESH_EXTERNAL ServiceEntry, reached in plaintext) allow with the headers they add
//! reaching the app, and deny with their own status, headers and body reaching the caller
//! (flagged `UAEX`, the app never reached); an authorizer that cannot be reached lets requests
//! through with `failOpen` and denies them with 403 without it. TCP connections go to a gRPC
//! authorizer too, with the connection's attributes.

use meshlite_tests::apps::{HttpApp, closed_port};
use meshlite_tests::clients::{Http1Client, Reply, empty, h1_request};
use meshlite_tests::control::{CONVERGE, ControlPlane, MeshProxy, NAMESPACE, Workload};
use meshlite_tests::deadline::eventually;
use meshlite_tests::ext_authz::{
    ALLOW, DECIDING_HEADER, DENIED_BODY, DENIED_STATUS, GrpcAuthz, HttpAuthz, RESPONSE_HEADER,
    RESULT_HEADER, TCP_CALLER,
};
use meshlite_tests::mesh::{AppProtocol, InboundPort};

const PORT: u16 = 8080;
const AUTHZ_PORT: u16 = 9000;

const STRICT_MESH: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
";

/// A MeshConfig (an IstioOperator's) with these `extensionProviders` entries.
fn mesh_config(providers: &str) -> String {
    format!(
        "apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {{name: meshlite, namespace: istio-system}}
spec:
  meshConfig:
    extensionProviders:
{providers}"
    )
}

/// A CUSTOM policy on workloads `app` for paths under `/api/`, asking `provider`.
fn custom_policy(app: &str, provider: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {app}-ext-authz, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{app: {app}}}}}
  action: CUSTOM
  provider: {{name: {provider}}}
  rules:
  - to: [{{operation: {{paths: ['/api/*']}}}}]
"
    )
}

/// A MESH_EXTERNAL ServiceEntry `host:80` whose endpoint is `127.0.0.1:<port>`.
fn outside(name: &str, host: &str, port: u16, protocol: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  hosts: [{host}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: {protocol}, protocol: {protocol}}}]
  endpoints: [{{address: 127.0.0.1, ports: {{{protocol}: {port}}}}}]
"
    )
}

/// `GET path` to `host:8080` through `caller`'s sidecar, asking the authorizer to
/// `decide` (`None`: no deciding header).
async fn get(caller: &MeshProxy, host: &str, path: &str, decide: Option<&str>) -> Reply {
    let mut b = h1_request("GET", &format!("{host}:{PORT}"), path);
    if let Some(d) = decide {
        b = b.header(DECIDING_HEADER, d);
    }
    Http1Client::connect(caller.outbound())
        .await
        .exchange(b.body(empty()).expect("request"))
        .await
}

/// Waits until the authorizer's denial reaches `caller` (the policy and the provider
/// reached the destination's sidecar) and returns it.
async fn denial(caller: &MeshProxy, host: &str) -> Reply {
    eventually("the authorizer's denial", CONVERGE, || async {
        let r = get(caller, host, "/api/v1/process", Some("deny")).await;
        (r.status.as_u16() == DENIED_STATUS).then_some(r)
    })
    .await
}

/// The app's JSON description of what it received.
fn seen_header(reply: &Reply, name: &str) -> serde_json::Value {
    reply.json()["headers"][name][0].clone()
}

/// A gRPC authorizer as a mesh service (`ext-authz`, port `AUTHZ_PORT`) behind its own
/// sidecar, which the callee's sidecar reaches over mutual TLS.
async fn grpc_authz_in_mesh(control: &ControlPlane) -> (GrpcAuthz, MeshProxy) {
    let authz = GrpcAuthz::start().await;
    let mut workload = Workload::new("ext-authz");
    workload.inbound.push(InboundPort {
        port: AUTHZ_PORT,
        target: authz.addr,
        protocol: AppProtocol::Grpc,
    });
    let sidecar = MeshProxy::start(&control.access(NAMESPACE, "ext-authz").await, &workload).await;
    (authz, sidecar)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_authorizer_behind_its_own_sidecar_decides_first_and_its_answers_reach_app_and_caller()
 {
    let providers = format!(
        "    - name: grpc-authz
      envoyExtAuthzGrpc: {{service: ext-authz.{NAMESPACE}.svc.cluster.local, port: {AUTHZ_PORT}, timeout: 5s}}
"
    );
    let control = ControlPlane::start(&[
        ("peer.yaml", STRICT_MESH),
        ("mesh.yaml", &mesh_config(&providers)),
        ("authz.yaml", &custom_policy("llm-processor", "grpc-authz")),
    ])
    .await;
    let (authz, _authz_sidecar) = grpc_authz_in_mesh(&control).await;
    let app = HttpApp::start("llm-processor").await;
    let llm = MeshProxy::start(
        &control.access(NAMESPACE, "llm-processor").await,
        &Workload::new("llm-processor").serving(PORT, app.addr),
    )
    .await;
    let intent = MeshProxy::caller(&control, "intent-controller").await;

    let denied = denial(&intent, "llm-processor").await;
    assert_eq!(denied.text(), DENIED_BODY, "the authorizer's body");
    assert_eq!(denied.header(RESULT_HEADER), Some("denied"));

    let served_before = app.requests();
    let checks_before = authz.checks().len();
    let allowed = get(&intent, "llm-processor", "/api/v1/process", Some(ALLOW)).await;
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    assert_eq!(
        seen_header(&allowed, RESULT_HEADER),
        "allowed",
        "the header the authorizer added reaches the app: {}",
        allowed.text()
    );
    assert!(
        seen_header(&allowed, DECIDING_HEADER).is_null(),
        "the header it removed does not: {}",
        allowed.text()
    );
    assert_eq!(
        allowed.header(RESPONSE_HEADER),
        Some("ok"),
        "its response header reaches the caller"
    );
    let again = get(&intent, "llm-processor", "/api/v1/process", Some("deny")).await;
    assert_eq!(again.status.as_u16(), DENIED_STATUS);
    assert_eq!(
        app.requests(),
        served_before + 1,
        "a denied request never reaches the app"
    );
    let health = get(&intent, "llm-processor", "/health", None).await;
    assert_eq!(health.status, 200, "no CUSTOM rule matches: not asked");
    assert_eq!(
        authz.checks().len(),
        checks_before + 2,
        "asked once per matching request"
    );

    // The check carried Envoy's attributes: who called, whom, what.
    let check = authz.checks().pop().expect("a check");
    let a = check.attributes.expect("attributes");
    assert_eq!(
        a.source.expect("source").principal,
        "spiffe://cluster.local/ns/default/sa/intent-controller"
    );
    assert_eq!(
        a.destination.expect("destination").principal,
        "spiffe://cluster.local/ns/default/sa/llm-processor"
    );
    let http = a.request.and_then(|r| r.http).expect("http");
    assert_eq!(
        (http.method.as_str(), http.path.as_str()),
        ("GET", "/api/v1/process")
    );
    assert!(!http.id.is_empty(), "the request id");

    // Counted under Envoy's names, and the denials flagged UAEX.
    let provider = [("provider", "grpc-authz")];
    assert!(llm.metric("envoy_http_ext_authz_ok", &provider).await >= 1.0);
    assert!(llm.metric("envoy_http_ext_authz_denied", &provider).await >= 2.0);
    assert_eq!(
        llm.metric("envoy_http_ext_authz_error", &provider).await,
        0.0
    );
    let flagged = llm.requests_flagged(DENIED_STATUS, "UAEX").await;
    assert!(flagged >= 2.0, "denials flagged UAEX: {flagged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_authorizer_lets_requests_through_with_fail_open_and_denies_them_without() {
    let gone = closed_port();
    let providers = "    - name: gone-open
      envoyExtAuthzGrpc: {service: gone.example.com, port: 80, timeout: 2s, failOpen: true}
    - name: gone-closed
      envoyExtAuthzGrpc: {service: gone.example.com, port: 80, timeout: 2s}
";
    let policies = format!(
        "{}---\n{}",
        custom_policy("open-app", "gone-open"),
        custom_policy("closed-app", "gone-closed")
    );
    let control = ControlPlane::start(&[
        ("mesh.yaml", &mesh_config(providers)),
        (
            "gone.yaml",
            &outside("gone", "gone.example.com", gone.port(), "GRPC"),
        ),
        ("authz.yaml", &policies),
    ])
    .await;
    let open_app = HttpApp::start("open-app").await;
    let closed_app = HttpApp::start("closed-app").await;
    let open = MeshProxy::start(
        &control.access(NAMESPACE, "open-app").await,
        &Workload::new("open-app").serving(PORT, open_app.addr),
    )
    .await;
    let closed = MeshProxy::start(
        &control.access(NAMESPACE, "closed-app").await,
        &Workload::new("closed-app").serving(PORT, closed_app.addr),
    )
    .await;
    let caller = MeshProxy::caller(&control, "caller").await;

    let refused = eventually("failOpen false: 403", CONVERGE, || async {
        let r = get(&caller, "closed-app", "/api/x", Some(ALLOW)).await;
        (r.status == 403).then_some(r)
    })
    .await;
    assert!(refused.text().contains("gone-closed"), "{}", refused.text());
    assert_eq!(closed_app.requests(), 0, "never reached the app");
    assert!(closed.requests_flagged(403, "UAEX").await >= 1.0);
    let provider = [("provider", "gone-closed")];
    assert!(closed.metric("envoy_http_ext_authz_error", &provider).await >= 1.0);

    // failOpen: allowed, and counted as allowed for the failure.
    let provider = [("provider", "gone-open")];
    eventually("failOpen true: allowed and counted", CONVERGE, || async {
        let r = get(&caller, "open-app", "/api/x", None).await;
        assert_eq!(r.status, 200, "failOpen lets it through: {}", r.text());
        (open
            .metric("envoy_http_ext_authz_failure_mode_allowed", &provider)
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    assert!(open.metric("envoy_http_ext_authz_error", &provider).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_authorizer_outside_the_mesh_gets_the_request_under_its_prefix_and_decides() {
    let authz = HttpAuthz::start().await;
    let providers = format!(
        "    - name: http-authz
      envoyExtAuthzHttp:
        service: authz.example.com
        port: 80
        timeout: 5s
        pathPrefix: /check
        includeRequestHeadersInCheck: [{DECIDING_HEADER}]
        headersToUpstreamOnAllow: [{RESULT_HEADER}]
        headersToDownstreamOnDeny: [{RESULT_HEADER}, content-type]
"
    );
    let control = ControlPlane::start(&[
        ("peer.yaml", STRICT_MESH),
        ("mesh.yaml", &mesh_config(&providers)),
        (
            "authz-service.yaml",
            &outside("authz", "authz.example.com", authz.addr.port(), "HTTP"),
        ),
        ("authz.yaml", &custom_policy("llm-processor", "http-authz")),
    ])
    .await;
    let app = HttpApp::start("llm-processor").await;
    let llm = MeshProxy::start(
        &control.access(NAMESPACE, "llm-processor").await,
        &Workload::new("llm-processor").serving(PORT, app.addr),
    )
    .await;
    let intent = MeshProxy::caller(&control, "intent-controller").await;

    let denied = denial(&intent, "llm-processor").await;
    assert_eq!(denied.text(), DENIED_BODY);
    assert_eq!(denied.header(RESULT_HEADER), Some("denied"));
    assert_eq!(app.requests(), 0, "a denied request never reaches the app");

    let allowed = get(&intent, "llm-processor", "/api/v1/process?q=1", Some(ALLOW)).await;
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    assert_eq!(seen_header(&allowed, RESULT_HEADER), "allowed");
    assert!(
        seen_header(&allowed, "x-not-forwarded").is_null(),
        "only headersToUpstreamOnAllow reach the app: {}",
        allowed.text()
    );
    let check = authz.checks().pop().expect("a check");
    assert_eq!(check.method, "GET");
    assert_eq!(
        check.path, "/check/api/v1/process?q=1",
        "pathPrefix + the original path"
    );
    assert_eq!(check.headers[DECIDING_HEADER], ALLOW, "an included header");
    assert_eq!(check.headers["x-forwarded-host"], "llm-processor:8080");
    assert!(
        !check.headers.contains_key("x-forwarded-client-cert"),
        "headers not included stay out: {:?}",
        check.headers
    );

    let provider = [("provider", "http-authz")];
    assert!(llm.metric("envoy_http_ext_authz_ok", &provider).await >= 1.0);
    assert!(llm.metric("envoy_http_ext_authz_denied", &provider).await >= 1.0);
    assert!(llm.requests_flagged(DENIED_STATUS, "UAEX").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_go_to_a_grpc_authorizer_which_closes_those_it_denies() {
    use crate::tcp_ping;
    use meshlite_tests::apps::TcpEchoApp;
    use meshlite_tests::control::StaticTcp;
    let tcp_app = TcpEchoApp::start().await;
    let providers = format!(
        "    - name: grpc-authz
      envoyExtAuthzGrpc: {{service: ext-authz.{NAMESPACE}.svc.cluster.local, port: {AUTHZ_PORT}, timeout: 5s}}
"
    );
    // `ports` are workload ports: where the app listens.
    let policy = format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: db-ext-authz, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{app: llm-db}}}}
  action: CUSTOM
  provider: {{name: grpc-authz}}
  rules: [{{to: [{{operation: {{ports: ['{}']}}}}]}}]
",
        tcp_app.addr.port()
    );
    let control = ControlPlane::start(&[
        ("peer.yaml", STRICT_MESH),
        ("mesh.yaml", &mesh_config(&providers)),
        ("authz.yaml", &policy),
    ])
    .await;
    let (authz, _authz_sidecar) = grpc_authz_in_mesh(&control).await;
    let mut db = Workload::new("llm-db");
    db.inbound.push(InboundPort {
        port: 5432,
        target: tcp_app.addr,
        protocol: AppProtocol::Tcp,
    });
    let db_sidecar = MeshProxy::start(&control.access(NAMESPACE, "llm-db").await, &db).await;
    let caller = |name: &str| {
        let mut c = Workload::new(name);
        c.static_tcp.push(StaticTcp {
            name: "llm-db".into(),
            port: 5432,
            endpoint: db_sidecar.addrs.inbound,
            identity: db.spiffe_id(),
        });
        c
    };
    let intent = MeshProxy::start(
        &control.access(NAMESPACE, "intent-controller").await,
        &caller("intent-controller"),
    )
    .await;
    let other = MeshProxy::start(&control.access(NAMESPACE, "other").await, &caller("other")).await;
    let tcp_of = |p: &MeshProxy| p.addrs.tcp["llm-db:5432"];

    // The allowed caller's echo shows the authorizer answering (until its service reaches
    // this sidecar, the check has nowhere to go and fails closed).
    eventually("the allowed caller's echo", CONVERGE, || async {
        (tcp_ping(tcp_of(&intent)).await == b"ping").then_some(())
    })
    .await;
    assert!(
        tcp_ping(tcp_of(&other)).await.is_empty(),
        "the authorizer's denial closes the other caller's connection"
    );
    assert_eq!(
        tcp_app.connections(),
        1,
        "only the allowed connection reached the app"
    );
    let principals: Vec<String> = authz
        .checks()
        .iter()
        .filter_map(|c| c.attributes.as_ref())
        .inspect(|a| assert!(a.request.is_none(), "a connection's check has no request"))
        .filter_map(|a| a.source.as_ref().map(|s| s.principal.clone()))
        .collect();
    assert!(principals.iter().any(|p| p == TCP_CALLER), "{principals:?}");
    assert!(
        principals.iter().any(|p| p.ends_with("/sa/other")),
        "{principals:?}"
    );
    let provider = [("provider", "grpc-authz")];
    assert!(
        db_sidecar
            .metric("envoy_http_ext_authz_denied", &provider)
            .await
            >= 1.0
    );
    assert!(
        db_sidecar
            .metric("envoy_http_ext_authz_ok", &provider)
            .await
            >= 1.0
    );
}
