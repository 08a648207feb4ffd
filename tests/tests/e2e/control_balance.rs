//! Load balancing set by a DestinationRule pushed from the control plane: consistent hash on
//! a header keeps a user on one backend, and a push switching the policy takes effect.

use meshlite_tests::apps::HttpApp;
use meshlite_tests::clients::{Http1Client, empty, h1_request, try_get};
use meshlite_tests::control::{
    ControlPlane, ECHO_HOST, ECHO_PORT, MeshProxy, NAMESPACE, Workload, wait_served_by,
};
use meshlite_tests::deadline::SOON;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

const RULE_FILE: &str = "echo-balance.yaml";

fn rule(load_balancer: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{name: echo, namespace: {NAMESPACE}}}\n\
         spec:\n  host: echo\n  trafficPolicy:\n    loadBalancer: {load_balancer}\n"
    )
}

/// Which app served each of `n` requests carrying `x-user: user`.
async fn served(outbound: SocketAddr, user: &str, n: usize) -> HashMap<String, usize> {
    let mut client = Http1Client::connect(outbound).await;
    let mut by = HashMap::new();
    for _ in 0..n {
        let req = h1_request("GET", ECHO_HOST, "/headers")
            .header("x-user", user)
            .body(empty())
            .expect("request");
        let reply = client.exchange(req).await;
        assert_eq!(reply.status, 200, "body: {}", reply.text());
        let app = reply.json()["app"].as_str().unwrap_or_default().to_string();
        *by.entry(app).or_insert(0) += 1;
    }
    by
}

/// A control plane with its config files, two versions of `echo` (`echo-<v>` apps behind
/// their sidecars) and a client sidecar that has seen both answer.
pub(crate) struct TwoBackends {
    pub(crate) control: ControlPlane,
    pub(crate) apps: [HttpApp; 2],
    pub(crate) servers: Vec<MeshProxy>,
    pub(crate) client: MeshProxy,
}

async fn two_backends(rule_yaml: &str, versions: [&str; 2]) -> TwoBackends {
    two_backends_with(&[(RULE_FILE, rule_yaml)], versions).await
}

/// [`TwoBackends`] with the control plane's config `files`.
pub(crate) async fn two_backends_with(files: &[(&str, &str)], versions: [&str; 2]) -> TwoBackends {
    let control = ControlPlane::start(files).await;
    let apps = [
        HttpApp::start(&format!("echo-{}", versions[0])).await,
        HttpApp::start(&format!("echo-{}", versions[1])).await,
    ];
    let access = control.access(NAMESPACE, "echo").await;
    let (w0, w1) = (
        Workload::version_of("echo", versions[0], ECHO_PORT, apps[0].addr),
        Workload::version_of("echo", versions[1], ECHO_PORT, apps[1].addr),
    );
    let (s0, s1) = tokio::join!(
        MeshProxy::start(&access, &w0),
        MeshProxy::start(&access, &w1)
    );
    let client = MeshProxy::caller(&control, "client").await;
    for v in versions {
        wait_served_by(client.outbound(), ECHO_HOST, &format!("echo-{v}"), SOON).await;
    }
    TwoBackends {
        control,
        apps,
        servers: vec![s0, s1],
        client,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_header_keeps_each_user_on_one_backend() {
    let mesh = two_backends(
        &rule("{consistentHash: {httpHeaderName: x-user}}"),
        ["a", "b"],
    )
    .await;
    let (control, client) = (&mesh.control, &mesh.client);

    let mut seen_apps = HashMap::new();
    for u in 0..16 {
        let by = served(client.outbound(), &format!("user-{u}"), 10).await;
        assert_eq!(by.len(), 1, "user-{u} moved between backends: {by:?}");
        for app in by.keys() {
            *seen_apps.entry(app.clone()).or_insert(0) += 1;
        }
    }
    assert_eq!(
        seen_apps.len(),
        2,
        "16 users should land on both backends: {seen_apps:?}"
    );

    // A push to round robin: one user's requests now alternate.
    control.write_config(RULE_FILE, &rule("{simple: ROUND_ROBIN}"));
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let by = served(client.outbound(), "user-0", 10).await;
        if by.len() == 2 {
            // The push may have landed during that batch (part of it still hashed): the next
            // batch is wholly round robin.
            let by = served(client.outbound(), "user-0", 10).await;
            assert!(
                by.values().all(|n| *n == 5),
                "round robin alternates: {by:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ROUND_ROBIN push did not take effect: {by:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashing_cookie_is_issued_when_absent_and_keeps_the_client_on_one_backend() {
    let mesh = two_backends(
        &rule("{consistentHash: {httpCookie: {name: lb, path: /, ttl: 3600s}}}"),
        ["a", "b"],
    )
    .await;
    let client = &mesh.client;

    let mut conn = Http1Client::connect(client.outbound()).await;
    let mut apps = HashMap::new();
    for session in 0..8 {
        let first = conn
            .exchange(
                h1_request("GET", ECHO_HOST, "/")
                    .body(empty())
                    .expect("request"),
            )
            .await;
        let set = first
            .header("set-cookie")
            .expect("a cookie is issued")
            .to_string();
        assert!(
            set.starts_with("lb=") && set.contains("Max-Age=3600"),
            "{set}"
        );
        let cookie = set.split(';').next().unwrap_or_default().to_string();
        let served = first.header("x-served-by").unwrap_or_default().to_string();
        for _ in 0..5 {
            let again = conn
                .exchange(
                    h1_request("GET", ECHO_HOST, "/")
                        .header("cookie", cookie.as_str())
                        .body(empty())
                        .expect("request"),
                )
                .await;
            assert_eq!(
                again.header("x-served-by"),
                Some(served.as_str()),
                "session {session}"
            );
            assert!(again.header("set-cookie").is_none(), "not issued twice");
        }
        *apps.entry(served).or_insert(0) += 1;
    }
    assert!(!apps.is_empty());
}

/// Three versions of `echo`, in `us-east/a`, `us-east/b` and `eu-west/a`, and a client in
/// `us-east/a`, under `rule`.
async fn three_localities(
    rule_yaml: &str,
) -> (ControlPlane, [HttpApp; 3], Vec<MeshProxy>, MeshProxy) {
    three_localities_with(&[(RULE_FILE, rule_yaml)]).await
}

/// [`three_localities`] with the control plane's config `files`.
async fn three_localities_with(
    files: &[(&str, &str)],
) -> (ControlPlane, [HttpApp; 3], Vec<MeshProxy>, MeshProxy) {
    let control = ControlPlane::start(files).await;
    let apps = [
        HttpApp::start("echo-near").await,
        HttpApp::start("echo-zone").await,
        HttpApp::start("echo-far").await,
    ];
    let access = control.access(NAMESPACE, "echo").await;
    let mut servers = Vec::new();
    for (app, (v, loc)) in apps.iter().zip([
        ("near", "us-east/a"),
        ("zone", "us-east/b"),
        ("far", "eu-west/a"),
    ]) {
        let w = Workload::version_of("echo", v, ECHO_PORT, app.addr).in_locality(loc);
        servers.push(MeshProxy::start(&access, &w).await);
    }
    let client = MeshProxy::start(
        &control.access(NAMESPACE, "client").await,
        &Workload::new("client").in_locality("us-east/a"),
    )
    .await;
    (control, apps, servers, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_outlier_detection_traffic_stays_in_the_callers_zone_and_fails_over_by_region() {
    let (_control, apps, _servers, client) = three_localities(&rule(
        "{simple: ROUND_ROBIN}\n    outlierDetection: {consecutive5xxErrors: 2, \
         interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}",
    ))
    .await;
    wait_served_by(client.outbound(), ECHO_HOST, "echo-near", SOON).await;
    let by = served(client.outbound(), "anyone", 50).await;
    assert_eq!(
        by.get("echo-near"),
        Some(&50),
        "all in the caller's zone: {by:?}"
    );
    // The zone's only endpoint fails and is ejected: its region's other zone takes over,
    // not the other region.
    apps[0].fail_with(Some(503));
    let mut client_conn = Http1Client::connect(client.outbound()).await;
    for _ in 0..2 {
        let reply = client_conn
            .exchange(
                h1_request("GET", ECHO_HOST, "/")
                    .body(empty())
                    .expect("request"),
            )
            .await;
        assert_eq!(reply.status, 503);
    }
    let by = served(client.outbound(), "anyone", 30).await;
    assert_eq!(
        by.get("echo-zone"),
        Some(&30),
        "failed over within the region: {by:?}"
    );
    assert_eq!(apps[2].requests(), 0, "the other region was never needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_remote_localities_sends_the_third_attempt_out_of_a_failing_zone() {
    // Outlier detection turns locality priorities on; its 5xx ejection is off so the failing
    // zone keeps its traffic and only retries can leave it.
    let rule = rule(
        "{simple: ROUND_ROBIN}\n    outlierDetection: {consecutive5xxErrors: 0, \
         interval: 1s, baseEjectionTime: 30s}",
    );
    let routes = |remote: bool| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {{name: echo, namespace: {NAMESPACE}}}\n\
             spec:\n  hosts: [echo]\n  http: [{{route: [{{destination: {{host: echo}}}}], \
             retries: {{attempts: 3, retryOn: 5xx, retryRemoteLocalities: {remote}}}}}]\n"
        )
    };
    let (control, apps, _servers, client) =
        three_localities_with(&[(RULE_FILE, &rule), ("echo-vs.yaml", &routes(false))]).await;
    wait_served_by(client.outbound(), ECHO_HOST, "echo-near", SOON).await;
    apps[0].fail_with(Some(503));
    // Without the flag every attempt stays in the caller's zone, whose only host fails.
    let reply = try_get(client.outbound(), ECHO_HOST, "/")
        .await
        .expect("response");
    assert_eq!(reply.status, 503);
    assert_eq!(apps[1].requests() + apps[2].requests(), 0);

    control.write_config("echo-vs.yaml", &routes(true));
    let near_before = apps[0].requests();
    let deadline = Instant::now() + SOON;
    loop {
        let reply = try_get(client.outbound(), ECHO_HOST, "/")
            .await
            .expect("response");
        if reply.status == 200 {
            // Two attempts in the zone, then the zone is left: its region's other zone.
            assert_eq!(reply.header("x-served-by"), Some("echo-zone"));
            break;
        }
        assert!(Instant::now() < deadline, "the retry never left the zone");
    }
    let near = apps[0].requests() - near_before;
    assert!(
        near >= 2 && near % 2 == 0,
        "each request tried its own zone twice first: {near}"
    );
    assert_eq!(apps[2].requests(), 0, "the other region was not needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribute_splits_a_callers_traffic_across_localities_by_weight() {
    let (_control, _apps, _servers, client) = three_localities(&rule(
        "\n      localityLbSetting:\n        distribute:\n        - from: us-east/*\n          \
         to: {\"us-east/a\": 60, \"eu-west/*\": 40}",
    ))
    .await;
    wait_served_by(client.outbound(), ECHO_HOST, "echo-near", SOON).await;
    let by = served(client.outbound(), "anyone", 1000).await;
    let near = by.get("echo-near").copied().unwrap_or(0);
    let far = by.get("echo-far").copied().unwrap_or(0);
    assert_eq!(by.get("echo-zone"), None, "us-east/b is not named: {by:?}");
    assert!(
        (550..=650).contains(&near) && near + far == 1000,
        "60/40: {by:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_sends_most_traffic_to_the_faster_backend() {
    let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                metadata:\n  name: echo\n  namespace: default\n  annotations:\n    \
                loadbalancer.meshlite.io/algorithm: PEAK_EWMA\nspec: {host: echo}\n";
    let mesh = two_backends(rule, ["fast", "slow"]).await;
    let client = &mesh.client;
    mesh.apps[1].slow_by(std::time::Duration::from_millis(40));
    let by = served(client.outbound(), "anyone", 200).await;
    let to_fast = by.get("echo-fast").copied().unwrap_or(0);
    // Each draw of two includes the fast one three times in four, and once the slow one's
    // estimate is 40 ms it loses every such draw.
    // Expected 150 of 200; blind random would give 100 (both are 7 draws' σ from 130).
    assert!(
        to_fast >= 130,
        "the faster backend should take most: {by:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_joins_warms_up_from_a_tenth_of_its_share_to_all_of_it() {
    use meshlite_tests::control::call;
    const WINDOW: Duration = Duration::from_secs(4);
    const N: usize = 200;
    let control = ControlPlane::start(&[(
        RULE_FILE,
        &rule("{simple: ROUND_ROBIN, warmup: {duration: 4s, minimumPercent: 10}}"),
    )])
    .await;
    let apps = [
        HttpApp::start("echo-a").await,
        HttpApp::start("echo-b").await,
    ];
    let access = control.access(NAMESPACE, "echo").await;
    let _a = MeshProxy::start(
        &access,
        &Workload::version_of("echo", "a", ECHO_PORT, apps[0].addr),
    )
    .await;
    let client = MeshProxy::caller(&control, "client").await;
    wait_served_by(client.outbound(), ECHO_HOST, "echo-a", SOON).await;
    // a may itself have joined after the cluster (its endpoint can come in a later push than
    // the cluster): b must join a cluster whose endpoints are all warm.
    let deadline = Instant::now() + WINDOW + SOON;
    loop {
        let dump = client.config_dump().await;
        let warming = &dump["clusters"][0]["policy"]["warming"];
        if warming.as_array().is_none_or(|w| w.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "echo-a never warmed up: {dump}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // b joins the running cluster: its share starts at 10 % of a's.
    let b_sidecar = MeshProxy::start(
        &access,
        &Workload::version_of("echo", "b", ECHO_PORT, apps[1].addr),
    )
    .await;
    let deadline = Instant::now() + SOON;
    while call(client.outbound(), ECHO_HOST).await.as_deref() != Ok("echo-b") {
        assert!(Instant::now() < deadline, "echo-b never served");
    }
    let joined = Instant::now();
    // The admin dump lists b as warming, at a fraction of its weight.
    let dump = client.config_dump().await;
    let warming = &dump["clusters"][0]["policy"]["warming"];
    assert_eq!(
        warming[0]["endpoint"].as_str(),
        Some(b_sidecar.addrs.inbound.to_string().as_str()),
        "{dump}"
    );
    assert!(
        warming[0]["weight_permille"]
            .as_u64()
            .is_some_and(|w| w < 500),
        "{warming}"
    );
    let share_of_b = async || {
        let mut b = 0;
        for _ in 0..N {
            if call(client.outbound(), ECHO_HOST).await.as_deref() == Ok("echo-b") {
                b += 1;
            }
        }
        b as f64 / N as f64
    };
    let early = share_of_b().await;
    let early_took = joined.elapsed();
    // Round robin alone would give b half; warming, its weight is max(0.1, t / 4 s) of a's.
    let most = 0.1f64.max(early_took.as_secs_f64() / WINDOW.as_secs_f64()) + 0.1;
    assert!(
        early > 0.0 && early < most / (1.0 + most),
        "b's share while warming: {early} over the first {early_took:?}"
    );
    tokio::time::sleep_until(joined + WINDOW + Duration::from_millis(500)).await;
    let warm = share_of_b().await;
    assert!(
        (0.45..=0.55).contains(&warm),
        "once warm, round robin alternates: {warm}"
    );
}
