//! Resilience set by DestinationRules and VirtualServices pushed from the control plane: a
//! burst over `http2MaxRequests` fails fast with 503 `UO` while the backend never holds more
//! than the limit; a backend answering 503 is ejected, then returns; a hanging one is cut by
//! `perTryTimeout` and ejected; requests stranded on a killed sidecar are retried elsewhere;
//! retries hide a 30 % failing backend and retry gRPC calls on the codes named, while the
//! budgets (the default, one set by annotation, Istio's `retryBudget`) bound them in an
//! outage; route timeouts; local rate limits; `maxRequestsPerConnection`; and pushes of all
//! these under load drop nothing.

use meshlite_tests::apps::HttpApp;
use meshlite_tests::clients::try_get;
use meshlite_tests::control::{
    ControlPlane, ECHO_HOST, ECHO_PORT, Load, MeshProxy, NAMESPACE, Workload, wait_served_by,
};
use meshlite_tests::deadline::SOON;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

const RULE_FILE: &str = "echo-resilience.yaml";

fn rule(traffic_policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{name: echo, namespace: {NAMESPACE}}}\n\
         spec:\n  host: echo\n  trafficPolicy: {traffic_policy}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_http2_max_requests_fails_fast_with_uo_and_never_reaches_the_backend() {
    const LIMIT: u64 = 3;
    const BURST: usize = 12;
    let limited = rule(&format!(
        "{{connectionPool: {{http: {{http2MaxRequests: {LIMIT}}}}}}}"
    ));
    let (_control, app, _server, client) = one_backend(&[(RULE_FILE, &limited)]).await;

    // A burst of requests the backend holds until released.
    let outbound = client.outbound();
    let started = Instant::now();
    let burst: Vec<_> = (0..BURST)
        .map(|_| tokio::spawn(async move { try_get(outbound, ECHO_HOST, "/gate").await }))
        .collect();
    // Everything over the limit is answered while the backend still holds the rest.
    let deadline = Instant::now() + SOON;
    while app.held_at_gate() < LIMIT {
        assert!(
            Instant::now() < deadline,
            "the backend never got {LIMIT} requests"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused_early = burst.iter().filter(|t| t.is_finished()).count();
    app.open_gate();
    let mut statuses = BTreeMap::new();
    for task in burst {
        let reply = task.await.expect("join").expect("a response");
        if reply.status == 503 {
            assert_eq!(reply.header("x-envoy-overloaded"), Some("true"));
        }
        *statuses.entry(reply.status.as_u16()).or_insert(0usize) += 1;
    }
    let overflowed = BURST - LIMIT as usize;
    assert_eq!(
        statuses,
        BTreeMap::from([(200, LIMIT as usize), (503, overflowed)]),
        "exactly the limit gets through"
    );
    assert_eq!(
        refused_early, overflowed,
        "the overflow is refused at once, not queued behind the held requests"
    );
    assert_eq!(
        app.peak_at_gate(),
        LIMIT,
        "the backend never held more than the limit"
    );
    assert!(started.elapsed() < SOON);
    let uo = client.requests_flagged(503, "UO").await;
    assert_eq!(
        uo, overflowed as f64,
        "istio_requests_total counts them as UO"
    );
    let stat = client
        .metric(
            "envoy_cluster_upstream_rq_pending_overflow",
            &[(
                "cluster_name",
                "outbound|8080||echo.default.svc.cluster.local",
            )],
        )
        .await;
    assert_eq!(stat, overflowed as f64);
    // The slots were given back: a request now passes.
    let reply = try_get(outbound, ECHO_HOST, "/").await.expect("response");
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_sidecar_applies_its_own_services_pool_limit_across_all_callers() {
    const LIMIT: u64 = 2;
    let limited = rule(&format!(
        "{{connectionPool: {{http: {{http2MaxRequests: {LIMIT}}}}}}}"
    ));
    let (_control, app, server, _callers, calls) = two_callers_at_the_gate(&limited, LIMIT).await;
    let deadline = Instant::now() + SOON;
    while calls.iter().filter(|c| c.is_finished()).count() < LIMIT as usize {
        assert!(Instant::now() < deadline, "the server refused nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.held_at_gate(), LIMIT, "the app holds the limit");
    app.open_gate();
    let mut statuses = BTreeMap::new();
    for call in calls {
        let reply = call.await.expect("join").expect("a response");
        *statuses.entry(reply.status.as_u16()).or_insert(0u64) += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(200, LIMIT), (503, LIMIT)]));
    assert_eq!(app.peak_at_gate(), LIMIT, "the app never held more");
    let refused = server
        .metric(
            "envoy_cluster_upstream_rq_pending_overflow",
            &[("cluster_name", "inbound|8080||")],
        )
        .await;
    assert_eq!(
        refused, LIMIT as f64,
        "the server sidecar refused the overflow"
    );
    assert_eq!(server.requests_flagged(503, "UO").await, LIMIT as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_sidecar_bounds_its_apps_http1_connections_across_all_callers() {
    const LIMIT: u64 = 2;
    let limited = rule(&format!(
        "{{connectionPool: {{tcp: {{maxConnections: {LIMIT}}}}}}}"
    ));
    let (_control, app, _server, _callers, calls) = two_callers_at_the_gate(&limited, LIMIT).await;
    let deadline = Instant::now() + SOON;
    while app.held_at_gate() < LIMIT {
        assert!(
            Instant::now() < deadline,
            "the app never got {LIMIT} requests"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One request per HTTP/1.1 connection: the others wait at the server sidecar.
    assert_eq!(
        app.held_at_gate(),
        LIMIT,
        "the app holds one per connection"
    );
    assert_eq!(calls.iter().filter(|c| c.is_finished()).count(), 0);
    app.open_gate();
    for call in calls {
        let reply = call.await.expect("join").expect("a response");
        assert_eq!(
            reply.status, 200,
            "the waiting requests went on the freed connections"
        );
    }
    assert_eq!(app.peak_at_gate(), LIMIT, "the app never held more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answering_503_is_ejected_and_returns_after_its_ejection_time() {
    let control = ControlPlane::start(&[(
        RULE_FILE,
        &rule(
            "{loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: {consecutive5xxErrors: 3, \
             interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 50}}",
        ),
    )])
    .await;
    let apps = [
        HttpApp::start("echo-a").await,
        HttpApp::start("echo-b").await,
        HttpApp::start("echo-c").await,
    ];
    let echo = control.access(NAMESPACE, "echo").await;
    let mut servers = Vec::new();
    for (app, v) in apps.iter().zip(["a", "b", "c"]) {
        servers.push(
            MeshProxy::start(&echo, &Workload::version_of("echo", v, ECHO_PORT, app.addr)).await,
        );
    }
    let client = MeshProxy::caller(&control, "client").await;
    for app in ["echo-a", "echo-b", "echo-c"] {
        wait_served_by(client.outbound(), ECHO_HOST, app, SOON).await;
    }

    let flaky = &apps[2];
    flaky.fail_with(Some(503));
    let before = flaky.requests();
    let mut failures = 0;
    let mut served_after_ejection = BTreeMap::new();
    for i in 0..60 {
        let reply = try_get(client.outbound(), ECHO_HOST, "/")
            .await
            .expect("response");
        if reply.status == 503 {
            failures += 1;
        } else if i >= 30 {
            let by = reply.header("x-served-by").unwrap_or("?").to_string();
            *served_after_ejection.entry(by).or_insert(0) += 1;
        }
    }
    assert_eq!(
        flaky.requests() - before,
        3,
        "the flaky backend got exactly consecutive5xxErrors requests before its ejection"
    );
    assert_eq!(failures, 3, "the client saw only those three");
    assert_eq!(
        served_after_ejection
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["echo-a", "echo-b"],
        "traffic went to the healthy two"
    );
    assert_eq!(ejections_enforced(&client).await, 1.0);
    assert_eq!(
        client
            .metric(
                "envoy_cluster_outlier_detection_ejections_active",
                &ECHO_CLUSTER
            )
            .await,
        1.0
    );
    assert!(client.logs().contains("outlier detection ejected a host"));

    // Healthy again: back within its ejection time (2 s) plus a tick (1 s).
    flaky.fail_with(None);
    wait_served_by(
        client.outbound(),
        ECHO_HOST,
        "echo-c",
        Duration::from_secs(6),
    )
    .await;
    assert_eq!(
        client
            .metric(
                "envoy_cluster_outlier_detection_ejections_active",
                &ECHO_CLUSTER
            )
            .await,
        0.0
    );
}

fn virtual_service(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{name: echo, namespace: {NAMESPACE}}}\n\
         spec:\n  hosts: [echo]\n  http: {http}\n"
    )
}

/// A control plane with `files`, one echo backend behind its sidecar, and a client sidecar
/// that reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http1_max_connections_bounds_the_connections_and_pending_requests_wait_for_them() {
    const CONNECTIONS: u64 = 2;
    const PENDING: usize = 3;
    const BURST: usize = 8;
    let limited = rule(&format!(
        "{{connectionPool: {{tcp: {{maxConnections: {CONNECTIONS}}}, \
         http: {{http1MaxPendingRequests: {PENDING}}}}}}}"
    ));
    let control = ControlPlane::start(&[(RULE_FILE, &limited)]).await;
    let app = HttpApp::start("echo-a").await;
    let _server = MeshProxy::start(
        &control.access(NAMESPACE, "echo").await,
        &Workload::version_of("echo", "a", ECHO_PORT, app.addr),
    )
    .await;
    let mut caller = Workload::new("client");
    caller.upstream_protocol = Some("http1".to_string());
    let client = MeshProxy::start(&control.access(NAMESPACE, "client").await, &caller).await;
    wait_served_by(client.outbound(), ECHO_HOST, "echo-a", SOON).await;

    let outbound = client.outbound();
    let burst: Vec<_> = (0..BURST)
        .map(|_| tokio::spawn(async move { try_get(outbound, ECHO_HOST, "/gate").await }))
        .collect();
    let deadline = Instant::now() + SOON;
    while app.held_at_gate() < CONNECTIONS {
        assert!(
            Instant::now() < deadline,
            "the backend never got {CONNECTIONS} requests"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One HTTP/1.1 request per connection: the backend holds as many as there are
    // connections; of the rest, the pending limit waits and the others are refused at once.
    let refused_early = burst.iter().filter(|t| t.is_finished()).count();
    assert_eq!(refused_early, BURST - CONNECTIONS as usize - PENDING);
    app.open_gate();
    let mut statuses = BTreeMap::new();
    for task in burst {
        let reply = task.await.expect("join").expect("a response");
        *statuses.entry(reply.status.as_u16()).or_insert(0usize) += 1;
    }
    assert_eq!(
        statuses,
        BTreeMap::from([
            (200, CONNECTIONS as usize + PENDING),
            (503, BURST - CONNECTIONS as usize - PENDING)
        ]),
        "the pending requests went on the freed connections"
    );
    assert_eq!(app.peak_at_gate(), CONNECTIONS);
    let overflow = client
        .metric("envoy_cluster_upstream_rq_pending_overflow", &ECHO_CLUSTER)
        .await;
    assert_eq!(overflow, (BURST - CONNECTIONS as usize - PENDING) as f64);
    let cx_overflow = client
        .metric("envoy_cluster_upstream_cx_overflow", &ECHO_CLUSTER)
        .await;
    assert!(
        cx_overflow >= (BURST - CONNECTIONS as usize) as f64,
        "every request past the connections met the limit: {cx_overflow}"
    );
    // The connections are kept alive and reused: a run of requests opens no more.
    let connects_before = client
        .metric("meshlite_upstream_connections_total", &[])
        .await;
    for _ in 0..20 {
        let reply = try_get(outbound, ECHO_HOST, "/").await.expect("response");
        assert_eq!(reply.status, 200);
    }
    let connects_after = client
        .metric("meshlite_upstream_connections_total", &[])
        .await;
    assert_eq!(connects_after, connects_before);
}

/// One backend under `rule` and two callers, each sending `each` requests the backend holds
/// at its gate (each caller within its own limit, together twice it).
async fn two_callers_at_the_gate(
    rule: &str,
    each: u64,
) -> (
    ControlPlane,
    HttpApp,
    MeshProxy,
    [MeshProxy; 2],
    Vec<tokio::task::JoinHandle<Option<meshlite_tests::clients::Reply>>>,
) {
    let (control, app, server, first) = one_backend(&[(RULE_FILE, rule)]).await;
    let second = MeshProxy::caller(&control, "client-2").await;
    wait_served_by(second.outbound(), ECHO_HOST, "echo-a", SOON).await;
    let calls = [first.outbound(), second.outbound()]
        .into_iter()
        .flat_map(|outbound| {
            (0..each).map(move |_| {
                tokio::spawn(async move { try_get(outbound, ECHO_HOST, "/gate").await })
            })
        })
        .collect();
    (control, app, server, [first, second], calls)
}

async fn one_backend(files: &[(&str, &str)]) -> (ControlPlane, HttpApp, MeshProxy, MeshProxy) {
    let control = ControlPlane::start(files).await;
    let app = HttpApp::start("echo-a").await;
    let server = MeshProxy::start(
        &control.access(NAMESPACE, "echo").await,
        &Workload::version_of("echo", "a", ECHO_PORT, app.addr),
    )
    .await;
    let client = MeshProxy::caller(&control, "client").await;
    wait_served_by(client.outbound(), ECHO_HOST, "echo-a", SOON).await;
    (control, app, server, client)
}

const ECHO_CLUSTER: [(&str, &str); 1] = [(
    "cluster_name",
    "outbound|8080||echo.default.svc.cluster.local",
)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_turn_a_30_percent_failing_backend_into_no_client_errors() {
    const REQUESTS: u64 = 200;
    let vs = virtual_service(
        "[{route: [{destination: {host: echo}}], retries: {attempts: 3, retryOn: 5xx}}]",
    );
    let (_control, app, _server, client) = one_backend(&[("echo-vs.yaml", &vs)]).await;
    // Three arrivals in ten fail, never two in a row.
    app.fail_some_with(503, &[0, 3, 6]);
    let before = app.requests();
    let mut client_errors = 0;
    for _ in 0..REQUESTS {
        let reply = try_get(client.outbound(), ECHO_HOST, "/")
            .await
            .expect("response");
        if reply.status != 200 {
            client_errors += 1;
        }
    }
    let attempts = app.requests() - before;
    let retries = client
        .metric("envoy_cluster_upstream_rq_retry", &ECHO_CLUSTER)
        .await;
    assert_eq!(client_errors, 0, "every failure was retried into a success");
    assert_eq!(
        attempts,
        REQUESTS + retries as u64,
        "each retry reached the backend"
    );
    // About 3 in 10 attempts failed and each was retried once.
    let share = retries / attempts as f64;
    assert!(
        (0.25..=0.35).contains(&share),
        "retried {retries} of {attempts}"
    );
}

/// What a full outage of the backend made of `REQUESTS` requests from 20 callers, each
/// with `attempts: 3` on 5xx: attempts that reached the backend, retries sent, retries
/// refused, and requests flagged `UO`.
struct Outage {
    attempts: u64,
    retries: u64,
    refused: f64,
    flagged_uo: f64,
}

const OUTAGE_REQUESTS: u64 = 1000;

async fn full_outage(rule: Option<&str>) -> Outage {
    const CALLERS: u64 = 20;
    let vs = virtual_service(
        "[{route: [{destination: {host: echo}}], retries: {attempts: 3, retryOn: 5xx}}]",
    );
    let mut files = vec![("echo-vs.yaml", vs.as_str())];
    files.extend(rule.map(|r| (RULE_FILE, r)));
    let (_control, app, _server, client) = one_backend(&files).await;
    app.fail_with(Some(503));
    let before = app.requests();
    let outbound = client.outbound();
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..OUTAGE_REQUESTS / CALLERS {
                    let reply = try_get(outbound, ECHO_HOST, "/").await.expect("response");
                    statuses.push(reply.status.as_u16());
                }
                statuses
            })
        })
        .collect();
    for caller in callers {
        let statuses = caller.await.expect("join");
        assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    }
    let outage = Outage {
        attempts: app.requests() - before,
        retries: client
            .metric("envoy_cluster_upstream_rq_retry", &ECHO_CLUSTER)
            .await as u64,
        refused: client
            .metric("envoy_cluster_upstream_rq_retry_overflow", &ECHO_CLUSTER)
            .await,
        flagged_uo: client.requests_flagged(503, "UO").await,
    };
    assert_eq!(outage.attempts, OUTAGE_REQUESTS + outage.retries);
    assert!(outage.refused > 0.0, "retries over the budget were refused");
    assert_eq!(
        outage.flagged_uo, outage.refused,
        "a request whose retry was refused is flagged UO"
    );
    outage
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_bounds_upstream_load_during_a_full_outage() {
    let Outage { retries, .. } = full_outage(None).await;
    // Without a budget: 3 retries each, 4,000 attempts. The default budget (ratio 0.2 of
    // requests plus a reserve of 10/s over its 10 s window) allows at most 0.2 × 1,000 + 100.
    assert!(
        retries <= OUTAGE_REQUESTS / 5 + 100,
        "{retries} retries for {OUTAGE_REQUESTS} requests"
    );
    assert!(
        retries >= OUTAGE_REQUESTS / 5,
        "the budget's share was used: {retries}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_budget_set_by_annotation_keeps_retries_to_its_ratio() {
    let rule = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata:\n  name: echo\n  namespace: {NAMESPACE}\n  annotations:\n    \
         retrybudget.meshlite.io/rate: 'ratio=0.5,minPerSecond=1,ttl=10s'\n\
         spec: {{host: echo}}\n"
    );
    let Outage { retries, .. } = full_outage(Some(&rule)).await;
    // Half a retry per request plus a reserve of 1/s over 10 s: 510 at most.
    assert!(
        (OUTAGE_REQUESTS / 2..=OUTAGE_REQUESTS / 2 + 10).contains(&retries),
        "{retries} retries for {OUTAGE_REQUESTS} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istios_retry_budget_caps_retries_in_flight() {
    const REQUESTS: usize = 8;
    let vs = virtual_service(
        "[{route: [{destination: {host: echo}}], retries: {attempts: 3, retryOn: 5xx}}]",
    );
    // No share of requests, a floor of one retry in flight; maxRetries would allow 100.
    let dr = rule(
        "{connectionPool: {http: {maxRetries: 100}}, \
         retryBudget: {percent: 0, minRetryConcurrency: 1}}",
    );
    let (_control, app, _server, client) =
        one_backend(&[("echo-vs.yaml", &vs), (RULE_FILE, &dr)]).await;
    // The admin dump shows what the rule set: Envoy's budget alone, maxRetries kept.
    let dump = client.config_dump().await;
    let policy = dump["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == ECHO_CLUSTER[0].1))
        .map(|c| c["policy"].clone())
        .expect("echo cluster in the dump");
    assert_eq!(
        policy["concurrency_retry_budget"]["percent"], 0.0,
        "{policy}"
    );
    assert_eq!(
        policy["concurrency_retry_budget"]["min_retry_concurrency"],
        1
    );
    assert!(policy["rate_retry_budget"].is_null(), "{policy}");
    assert_eq!(policy["limits"]["max_retries"], 100);
    // Every attempt fails after 300 ms, so the first failures of all requests overlap.
    app.fail_with(Some(503));
    app.slow_by(Duration::from_millis(300));
    let before = app.requests();
    let outbound = client.outbound();
    let calls: Vec<_> = (0..REQUESTS)
        .map(|_| {
            tokio::spawn(async move {
                try_get(outbound, ECHO_HOST, "/")
                    .await
                    .expect("response")
                    .status
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.expect("join"), 503);
    }
    let attempts = app.requests() - before;
    let refused = client
        .metric("envoy_cluster_upstream_rq_retry_overflow", &ECHO_CLUSTER)
        .await;
    // One request wins the one retry slot and makes its 3 retries (each over before the
    // next starts); the other seven are refused at their first failure.
    assert_eq!(refused, (REQUESTS - 1) as f64, "refused retries");
    assert_eq!(
        attempts,
        REQUESTS as u64 + 3,
        "attempts reaching the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_timeout_answers_504_ut_and_istios_default_does_not_retry_a_503() {
    let vs = virtual_service(
        "[{match: [{uri: {prefix: /gate}}], route: [{destination: {host: echo}}], timeout: 300ms}, \
         {route: [{destination: {host: echo}}]}]",
    );
    let (_control, app, _server, client) = one_backend(&[("echo-vs.yaml", &vs)]).await;
    let started = Instant::now();
    let reply = try_get(client.outbound(), ECHO_HOST, "/gate")
        .await
        .expect("response");
    assert_eq!(reply.status, 504, "body: {}", reply.text());
    assert!(started.elapsed() < Duration::from_secs(5));
    let ut = client.requests_flagged(504, "UT").await;
    assert_eq!(ut, 1.0);
    // The default policy (Istio 1.24+) retries connect failures, not a 503 answer.
    app.fail_with(Some(503));
    let before = app.requests();
    let reply = try_get(client.outbound(), ECHO_HOST, "/")
        .await
        .expect("response");
    assert_eq!(reply.status, 503);
    assert_eq!(app.requests() - before, 1, "not retried");
    app.open_gate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_rate_limits_on_a_destination_and_a_route_answer_429_rl_over_the_bucket() {
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
              metadata:\n  name: echo\n  namespace: default\n  annotations:\n    \
              ratelimit.meshlite.io/local: maxTokens=6,tokensPerFill=1,fillInterval=1h\n\
              spec: {host: echo}\n";
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
              metadata:\n  name: echo\n  namespace: default\n  annotations:\n    \
              ratelimit.meshlite.io/local.small: maxTokens=2,fillInterval=1h\n\
              spec:\n  hosts: [echo]\n  http:\n  \
              - {name: small, match: [{uri: {prefix: /small}}], route: [{destination: {host: echo}}]}\n  \
              - {route: [{destination: {host: echo}}]}\n";
    let (control, app, _server, client) = one_backend(&[]).await;
    // `one_backend` spent requests finding the backend: the rules come only now.
    control.write_config("echo-dr.yaml", dr);
    control.write_config("echo-vs.yaml", vs);
    let status = async |path: &str| {
        try_get(client.outbound(), ECHO_HOST, path)
            .await
            .expect("response")
            .status
            .as_u16()
    };
    // Wait for the route limit to be in force (the route bucket is the smaller).
    let deadline = Instant::now() + SOON;
    while status("/small").await != 429 {
        assert!(Instant::now() < deadline, "the rate limit never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = app.requests();
    let small: Vec<u16> = [status("/small").await, status("/small").await].into();
    assert_eq!(small, [429, 429], "the route's bucket stays empty");
    // The destination's bucket of 6 is shared by every route to the host; the /small
    // requests that got through took some.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(status("/").await);
    }
    let passed = statuses.iter().filter(|s| **s == 200).count() as u64;
    assert!(
        passed < 6 && statuses.ends_with(&[429, 429]),
        "{statuses:?}"
    );
    assert_eq!(
        app.requests() - before,
        passed,
        "refused requests never left"
    );
    let rl = client.requests_flagged(429, "RL").await;
    assert!(rl >= 4.0, "429 RL counted: {rl}");
    // A push lifting the limits takes effect.
    control.write_config(
        "echo-dr.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {name: echo, namespace: default}\nspec: {host: echo}\n",
    );
    let deadline = Instant::now() + SOON;
    while status("/").await != 200 {
        assert!(Instant::now() < deadline, "lifting the limit never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_opens_a_new_upstream_connection_after_n_requests() {
    let (control, _app, _server, client) = one_backend(&[]).await;
    let connections = async || {
        client
            .metric("meshlite_upstream_connections_total", &[])
            .await
    };
    // Without a limit the connection is reused.
    let before = connections().await;
    for _ in 0..10 {
        let r = try_get(client.outbound(), ECHO_HOST, "/")
            .await
            .expect("response");
        assert_eq!(r.status, 200);
    }
    assert_eq!(connections().await, before, "one shared connection");
    control.write_config(
        RULE_FILE,
        &rule("{connectionPool: {http: {maxRequestsPerConnection: 2}}}"),
    );
    // The push swaps in endpoints with the new setting; wait for its first new connection.
    let deadline = Instant::now() + SOON;
    let mut start = connections().await;
    while start == before {
        assert!(Instant::now() < deadline, "the push never applied");
        let _ = try_get(client.outbound(), ECHO_HOST, "/").await;
        start = connections().await;
    }
    // Spend what is left of the current connection, then count.
    let _ = try_get(client.outbound(), ECHO_HOST, "/").await;
    let _ = try_get(client.outbound(), ECHO_HOST, "/").await;
    let base = connections().await;
    for _ in 0..10 {
        let r = try_get(client.outbound(), ECHO_HOST, "/")
            .await
            .expect("response");
        assert_eq!(r.status, 200);
    }
    let opened = connections().await - base;
    assert!(
        (4.0..=6.0).contains(&opened),
        "10 requests at 2 per connection opened {opened}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_changing_balancing_pools_and_ejection_drop_no_request_under_load() {
    let (control, _app, _server, client) = one_backend(&[]).await;
    let load = Load::start(client.outbound(), ECHO_HOST, 4, Duration::from_secs(30));
    load.wait_for_requests(50).await;
    for (i, policy) in [
        "{loadBalancer: {simple: ROUND_ROBIN}}",
        "{connectionPool: {tcp: {connectTimeout: 2s}, http: {http2MaxRequests: 1000, \
         maxRequestsPerConnection: 20}}}",
        "{outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 5s}, \
         loadBalancer: {consistentHash: {httpHeaderName: x-user}}}",
        "{loadBalancer: {simple: LEAST_REQUEST}}",
    ]
    .into_iter()
    .enumerate()
    {
        control.write_config(RULE_FILE, &rule(policy));
        let seen = load.completed();
        load.wait_for_requests(seen + 100).await;
        tokio::time::sleep(Duration::from_millis(300 + 100 * i as u64)).await;
    }
    let report = load.stop().await;
    report.assert_no_failures("DestinationRule pushes");
    assert!(report.ok > 400, "the load kept flowing: {}", report.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_upstream_connection_is_let_go_after_idle_timeout() {
    let (control, _app, _server, client) = one_backend(&[]).await;
    let connections = async || {
        client
            .metric("meshlite_upstream_connections_total", &[])
            .await
    };
    let ok = async || {
        let r = try_get(client.outbound(), ECHO_HOST, "/")
            .await
            .expect("response");
        assert_eq!(r.status, 200);
    };
    control.write_config(
        RULE_FILE,
        &rule("{connectionPool: {http: {idleTimeout: 1s}}}"),
    );
    // The push swaps in endpoints with the new setting: their first request connects.
    let before = connections().await;
    let deadline = Instant::now() + SOON;
    while connections().await == before {
        assert!(Instant::now() < deadline, "the push never applied");
        ok().await;
    }
    // Busy: the connection is kept.
    let busy = connections().await;
    for _ in 0..5 {
        ok().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(connections().await, busy, "a connection in use is kept");
    // Idle past the timeout: the next request needs a new connection.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ok().await;
    assert_eq!(
        connections().await,
        busy + 1.0,
        "the idle connection was let go"
    );
}

/// Ejections outlier detection enforced on the echo service, as `client` counts them.
async fn ejections_enforced(client: &MeshProxy) -> f64 {
    client
        .metric(
            "envoy_cluster_outlier_detection_ejections_enforced_total",
            &ECHO_CLUSTER,
        )
        .await
}

/// Outlier detection that ejects a host at its first gateway error (5xx ejection off), for
/// long enough to outlast the test; 100 % so one of two hosts may go.
const EJECT_ON_GATEWAY_ERROR: &str = "{outlierDetection: {consecutiveGatewayErrors: 1, \
     consecutive5xxErrors: 0, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_backend_is_cut_by_per_try_timeout_retried_elsewhere_and_ejected() {
    const REQUESTS: u64 = 20;
    let vs = virtual_service(
        "[{route: [{destination: {host: echo}}], \
         retries: {attempts: 2, perTryTimeout: 200ms, retryOn: gateway-error}}]",
    );
    let dr = rule(EJECT_ON_GATEWAY_ERROR);
    let mesh = crate::control_balance::two_backends_with(
        &[("echo-vs.yaml", &vs), (RULE_FILE, &dr)],
        ["a", "b"],
    )
    .await;
    let [hanging, healthy] = &mesh.apps;
    hanging.slow_by(Duration::from_secs(30));
    let (hung_before, healthy_before) = (hanging.requests(), healthy.requests());
    for i in 0..REQUESTS {
        let reply = try_get(mesh.client.outbound(), ECHO_HOST, "/")
            .await
            .expect("response");
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
        assert_eq!(reply.header("x-served-by"), Some("echo-b"));
    }
    // The hanging backend held one attempt until its per-try timeout (a gateway error, as
    // Envoy counts a timeout) and was ejected; the retry went to the other one.
    assert_eq!(
        hanging.requests() - hung_before,
        1,
        "attempts to the hanging one"
    );
    assert_eq!(healthy.requests() - healthy_before, REQUESTS);
    let ejected = ejections_enforced(&mesh.client).await;
    assert_eq!(ejected, 1.0);
    assert_eq!(
        mesh.client
            .metric("envoy_cluster_upstream_rq_retry", &ECHO_CLUSTER)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_to_a_killed_sidecar_are_retried_elsewhere_and_it_is_ejected() {
    const IN_FLIGHT: usize = 6;
    let vs = virtual_service(
        "[{route: [{destination: {host: echo}}], \
         retries: {attempts: 2, retryOn: 'reset,connect-failure'}}]",
    );
    let dr = rule(EJECT_ON_GATEWAY_ERROR);
    let mut mesh = crate::control_balance::two_backends_with(
        &[("echo-vs.yaml", &vs), (RULE_FILE, &dr)],
        ["a", "b"],
    )
    .await;
    // Requests reaching `a` stay there until its sidecar dies under them.
    mesh.apps[0].slow_by(Duration::from_secs(30));
    let before = mesh.apps[0].requests();
    let outbound = mesh.client.outbound();
    let calls: Vec<_> = (0..IN_FLIGHT)
        .map(|_| tokio::spawn(async move { try_get(outbound, ECHO_HOST, "/").await }))
        .collect();
    let deadline = Instant::now() + SOON;
    while mesh.apps[0].requests() == before {
        assert!(Instant::now() < deadline, "no request reached echo-a");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Least request spreads the concurrent calls; give the rest a moment to be sent.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stranded = mesh.apps[0].requests() - before;
    mesh.servers[0].kill().await;
    for call in calls {
        let reply = call.await.expect("join").expect("response");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("x-served-by"), Some("echo-b"));
    }
    // New requests: the dead host is ejected (or refuses connections, retried elsewhere).
    for _ in 0..10 {
        let reply = try_get(outbound, ECHO_HOST, "/").await.expect("response");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let retries = mesh
        .client
        .metric("envoy_cluster_upstream_rq_retry", &ECHO_CLUSTER)
        .await;
    assert!(
        retries >= stranded as f64,
        "each of the {stranded} stranded requests was retried: {retries}"
    );
    let ejected = ejections_enforced(&mesh.client).await;
    assert_eq!(ejected, 1.0, "the killed host was ejected once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_retried_on_the_status_codes_retry_on_names_and_only_those() {
    use meshlite_tests::grpc::{self, GrpcEchoApp};
    use meshlite_tests::mesh::{AppProtocol, InboundPort};
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {name: greeter, namespace: default}\n\
         spec:\n  hosts: [greeter]\n  http: [{route: [{destination: {host: greeter}}], \
         retries: {attempts: 3, retryOn: 'unavailable,resource-exhausted'}}]\n";
    let control = ControlPlane::start(&[("greeter-vs.yaml", vs)]).await;
    let app = GrpcEchoApp::start().await;
    let mut workload = Workload::new("greeter");
    workload.inbound.push(InboundPort {
        port: ECHO_PORT,
        target: app.addr,
        protocol: AppProtocol::Grpc,
    });
    let _server = MeshProxy::start(&control.access(NAMESPACE, "greeter").await, &workload).await;
    let client = MeshProxy::caller(&control, "client").await;
    let authority = format!("greeter:{ECHO_PORT}");
    let deadline = Instant::now() + SOON;
    while grpc::say(client.outbound(), &authority, "ready?")
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "greeter never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // UNAVAILABLE then RESOURCE_EXHAUSTED: both named, both retried, the third call answers.
    app.fail_next(1, 14);
    let before = app.calls();
    let first = grpc::say(client.outbound(), &authority, "one").await;
    assert_eq!(
        first.expect("retried into a reply").get_ref().message,
        "one"
    );
    app.fail_next(2, 8);
    let second = grpc::say(client.outbound(), &authority, "two").await;
    assert_eq!(
        second.expect("retried into a reply").get_ref().message,
        "two"
    );
    assert_eq!(app.calls() - before, 2 + 3, "each failure was retried once");

    // NOT_FOUND is not named: the caller gets it from the first attempt.
    app.fail_next(1, 5);
    let before = app.calls();
    let status = grpc::say(client.outbound(), &authority, "three")
        .await
        .expect_err("not retried");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(app.calls() - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_local_origin_errors_eject_a_dead_host_but_not_one_answering_503() {
    let dr = rule(
        "{loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: \
         {splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2, \
         consecutive5xxErrors: 0, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}}",
    );
    // No retries, so every attempt's outcome reaches the caller.
    let vs = virtual_service("[{route: [{destination: {host: echo}}], retries: {attempts: 0}}]");
    let mut mesh = crate::control_balance::two_backends_with(
        &[(RULE_FILE, &dr), ("echo-vs.yaml", &vs)],
        ["a", "b"],
    )
    .await;
    // a answers 503 to everything: HTTP statuses are not local-origin errors.
    mesh.apps[0].fail_with(Some(503));
    for _ in 0..20 {
        try_get(mesh.client.outbound(), ECHO_HOST, "/")
            .await
            .expect("response");
    }
    assert_eq!(ejections_enforced(&mesh.client).await, 0.0);

    // b's sidecar dies: connection failures, two in a row eject it.
    mesh.servers[1].kill().await;
    let mut refused = 0;
    for _ in 0..20 {
        let reply = try_get(mesh.client.outbound(), ECHO_HOST, "/")
            .await
            .expect("response");
        if reply.header("x-served-by").is_none() {
            refused += 1;
        }
    }
    assert_eq!(ejections_enforced(&mesh.client).await, 1.0, "b was ejected");
    assert!(
        (2..=3).contains(&refused),
        "two connect failures (one more if a connection was still draining): {refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_counts_only_the_http_error_codes_listed() {
    let dr = rule(
        "{loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: \
         {outlierDetectionHttpErrorCodes: [429], consecutive5xxErrors: 2, interval: 1s, \
         baseEjectionTime: 60s, maxEjectionPercent: 100}}",
    );
    let vs = virtual_service("[{route: [{destination: {host: echo}}], retries: {attempts: 0}}]");
    let mesh = crate::control_balance::two_backends_with(
        &[(RULE_FILE, &dr), ("echo-vs.yaml", &vs)],
        ["a", "b"],
    )
    .await;
    let get = async || {
        try_get(mesh.client.outbound(), ECHO_HOST, "/")
            .await
            .expect("response")
    };
    // 503 is not listed: a success as far as ejection goes.
    mesh.apps[0].fail_with(Some(503));
    for _ in 0..10 {
        get().await;
    }
    assert_eq!(ejections_enforced(&mesh.client).await, 0.0);
    // 429 is: two in a row eject a.
    mesh.apps[0].fail_with(Some(429));
    for _ in 0..4 {
        get().await;
    }
    assert_eq!(ejections_enforced(&mesh.client).await, 1.0);
    for _ in 0..10 {
        assert_eq!(get().await.header("x-served-by"), Some("echo-b"));
    }
}
