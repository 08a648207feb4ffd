//! What a VirtualService rule does besides choosing a backend, pushed from the control plane:
//! header matches and weighted splits, fault injection (abort and delay), redirect, direct
//! response, URI rewrite with header operations, and mirroring to a shadow service.

use meshlite_tests::apps::HttpApp;
use meshlite_tests::clients::{Http1Client, empty, h1_request, try_get};
use meshlite_tests::control::{
    ControlPlane, ECHO_HOST, ECHO_PORT, MeshProxy, NAMESPACE, Workload, echo_subsets,
    wait_served_by,
};
use meshlite_tests::deadline::SOON;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

const RULES: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo]
  http:
  - match: [{headers: {x-user-type: {exact: premium}}}]
    route: [{destination: {host: echo, subset: v2}}]
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: echo}}]
  - match: [{uri: {prefix: /slow}}]
    fault: {delay: {fixedDelay: 400ms, percentage: {value: 100}}}
    route: [{destination: {host: echo, subset: v1}}]
  - match: [{uri: {exact: /old}}]
    redirect: {uri: /new, redirectCode: 302}
  - match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: short and stout}}
  - match: [{uri: {prefix: /api/}}]
    rewrite: {uri: /v2/}
    headers:
      request: {set: {x-route: api}, remove: [x-drop]}
      response: {add: {x-served-via: api}}
    mirror: {host: shadow}
    route: [{destination: {host: echo, subset: v1}}]
  - route:
    - {destination: {host: echo, subset: v1}, weight: 80}
    - {destination: {host: echo, subset: v2}, weight: 20}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_service_rules_match_split_inject_faults_redirect_rewrite_and_mirror() {
    let control =
        ControlPlane::start(&[("echo-dr.yaml", &echo_subsets()), ("echo-vs.yaml", RULES)]).await;
    let (v1, v2, shadow) = (
        HttpApp::start("echo-v1").await,
        HttpApp::start("echo-v2").await,
        HttpApp::start("shadow").await,
    );
    let echo = control.access(NAMESPACE, "echo").await;
    let _s1 = MeshProxy::start(
        &echo,
        &Workload::version_of("echo", "v1", ECHO_PORT, v1.addr),
    )
    .await;
    let _s2 = MeshProxy::start(
        &echo,
        &Workload::version_of("echo", "v2", ECHO_PORT, v2.addr),
    )
    .await;
    let _ss = MeshProxy::start(
        &control.access(NAMESPACE, "shadow").await,
        &Workload::version_of("shadow", "a", ECHO_PORT, shadow.addr),
    )
    .await;
    let client = MeshProxy::caller(&control, "client").await;
    wait_served_by(client.outbound(), ECHO_HOST, "echo-v1", SOON).await;
    wait_served_by(client.outbound(), ECHO_HOST, "echo-v2", SOON).await;
    let out = client.outbound();
    let mut conn = Http1Client::connect(out).await;
    let mut get = async |path: &str, headers: &[(&str, &str)]| {
        let mut req = h1_request("GET", ECHO_HOST, path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        conn.exchange(req.body(empty()).expect("request")).await
    };

    // Header match: premium users always reach v2.
    for _ in 0..20 {
        let r = get("/", &[("x-user-type", "premium")]).await;
        assert_eq!(r.header("x-served-by"), Some("echo-v2"));
    }

    // Weighted split 80/20 over 1,000 requests (a 5-point band is 4 standard deviations).
    let mut by = BTreeMap::new();
    for _ in 0..1000 {
        let r = get("/", &[]).await;
        *by.entry(r.header("x-served-by").unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    let v1_share = f64::from(by.get("echo-v1").copied().unwrap_or(0)) / 1000.0;
    assert!(
        (0.75..=0.85).contains(&v1_share),
        "80/20 split came out {by:?}"
    );

    // Abort: answered by the client sidecar, never sent.
    let before = v1.requests() + v2.requests();
    let r = get("/abort", &[]).await;
    assert_eq!(r.status, 418);
    assert_eq!(
        v1.requests() + v2.requests(),
        before,
        "an abort never reaches a backend"
    );
    let fi = client.requests_flagged(418, "FI").await;
    assert_eq!(fi, 1.0);

    // Delay: the request waits, then is served.
    let started = Instant::now();
    let r = get("/slow", &[]).await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(400), "delayed");

    // Redirect and direct response.
    let r = get("/old?x=1", &[]).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://echo:8080/new"));
    let r = get("/teapot", &[]).await;
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "short and stout");

    // Rewrite, header operations and the mirror.
    let shadow_before = shadow.requests();
    let r = get("/api/users?id=7", &[("x-drop", "secret")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-served-via"), Some("api"));
    let seen = r.json();
    assert_eq!(seen["path"], "/v2/users");
    assert_eq!(seen["query"], "id=7");
    assert_eq!(seen["headers"]["x-route"][0], "api");
    assert_eq!(seen["headers"]["x-envoy-original-path"][0], "/api/users");
    assert!(seen["headers"].get("x-drop").is_none(), "removed: {seen}");
    let deadline = Instant::now() + SOON;
    while shadow.requests() == shadow_before {
        assert!(
            Instant::now() < deadline,
            "the shadow never saw the mirrored request"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A request with a body is shadowed with its body, once the body is complete.
    let shadow_bytes = shadow.body_bytes();
    let payload = "x".repeat(3000);
    let post = h1_request("POST", ECHO_HOST, "/api/upload")
        .header("content-length", payload.len())
        .body(meshlite_tests::clients::full(payload.clone()))
        .expect("request");
    let r = conn.exchange(post).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["body_bytes"],
        3000,
        "the original got its whole body"
    );
    let deadline = Instant::now() + SOON;
    while shadow.body_bytes() < shadow_bytes + 3000 {
        assert!(Instant::now() < deadline, "the shadow never got the body");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(shadow.body_bytes(), shadow_bytes + 3000);
    // The shadow's failure does not touch the original.
    shadow.fail_with(Some(500));
    let r = try_get(out, ECHO_HOST, "/api/again")
        .await
        .expect("response");
    assert_eq!(r.status, 200);
}
