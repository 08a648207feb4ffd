//! Pods coming and going under load: `productpage`'s app calls `http://reviews:9080/` by
//! name (its resolver's query redirected to the sidecar's DNS proxy, the VIP it gets captured
//! by the rules), with no proxy settings, while a `reviews` pod is killed (its sidecar and app
//! die: a crashed pod) or a new one is added. The killed pod is ejected by outlier detection
//! and the calls keep succeeding; the new pod serves without any other process restarting.
//!
//! Needs root, iproute2, util-linux's `setpriv` and Debian's `iptables`; without them the
//! tests say SKIPPED (and fail under `MESHLITE_REQUIRE_PEERS`).

use meshlite_tests::apps::HttpApp;
use meshlite_tests::deadline::{SOON, eventually, within};
use meshlite_tests::netns::{Node, Pod};
use meshlite_tests::pods::{
    NodeControl, Outcome, PodLoad, PodSidecar, Served, can_run, config_dump, metrics, resolve,
};
use meshlite_tests::prometheus::samples;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Callers in the client pod.
const CALLERS: usize = 4;
/// `consecutive5xxErrors` of reviews' DestinationRule.
const CONSECUTIVE_5XX: usize = 3;
/// The service port reviews' apps listen on.
const PORT: u16 = 9080;
/// What the app names.
const HOST: &str = "reviews:9080";
/// The name its resolver asks for (`reviews` expanded by the pod's search list).
const FQDN: &str = "reviews.default.svc.cluster.local.";
/// Bounds of a load: it stops by itself after this many calls per caller or this long.
const LOAD_BOUNDS: (usize, Duration) = (20_000, Duration::from_secs(90));

/// A reviews pod: its app (answering `x-served-by: <name>`) and its sidecar.
struct ReviewsPod {
    pod: Pod,
    app: Option<HttpApp>,
    sidecar: PodSidecar,
}

impl ReviewsPod {
    /// Starts pod `name` of reviews: the app on 9080, init's rules, the sidecar.
    async fn start(node: &Node, control: &NodeControl, name: &str) -> ReviewsPod {
        let pod = node.add_pod(name).expect("reviews pod");
        let any = SocketAddr::from(([0, 0, 0, 0], PORT));
        let app = HttpApp::start_on(name, pod.ns.bind(any).await.expect("bind"));
        let ports = [Served {
            port: PORT,
            protocol: "http",
        }];
        let sidecar =
            PodSidecar::start_workload(&pod, control, ("reviews", name), &ports, &[]).await;
        ReviewsPod {
            pod,
            app: Some(app),
            sidecar,
        }
    }

    /// Its sidecar's inbound address, as the client's endpoints list it.
    fn endpoint(&self) -> String {
        SocketAddr::new(IpAddr::V4(self.pod.ip), 15006).to_string()
    }

    /// The pod crashes: its sidecar is SIGKILLed and its app stops.
    fn kill(&mut self) {
        self.sidecar.kill();
        self.app = None;
    }
}

/// The productpage pod: no app server, init with `--redirect-dns`, its sidecar.
async fn client_pod(node: &Node, control: &NodeControl) -> (Arc<Pod>, PodSidecar) {
    let pod = Arc::new(node.add_pod("productpage").expect("productpage pod"));
    let sidecar = PodSidecar::start(&pod, control, "productpage", &[], &["--redirect-dns"]).await;
    (pod, sidecar)
}

/// What `reviews` resolves to in `pod`, once the control plane allocated its VIP and pushed
/// it; then a call by name answered by `first`.
async fn reviews_by_name(node: &Node, pod: &Pod, first: &str) -> SocketAddr {
    let vip = eventually("reviews to resolve in the client pod", SOON, || async {
        resolve(pod, node, FQDN).await.ok()
    })
    .await;
    let addr = SocketAddr::new(IpAddr::V4(vip), PORT);
    eventually(
        &format!("a call by name served by {first}"),
        SOON,
        || async {
            let reply = meshlite_tests::pods::get(pod, addr, HOST, "/").await.ok()?;
            (reply.status == 200 && reply.header("x-served-by") == Some(first)).then_some(())
        },
    )
    .await;
    addr
}

/// How many of `outcomes` `app` served.
fn served_by(outcomes: &[Outcome], app: &str) -> usize {
    outcomes
        .iter()
        .filter(|o| o.served_by.as_deref() == Ok(app))
        .count()
}

/// Waits until `load` has seen `n` more answers from `app` than `before`.
async fn until_served(load: &PodLoad, app: &str, n: usize) {
    eventually(&format!("{n} calls served by {app}"), SOON, || async {
        (served_by(&load.outcomes(), app) >= n).then_some(())
    })
    .await;
}

/// The sum of `name`'s samples in `text`.
fn total(text: &str, name: &str) -> f64 {
    samples(text, name).iter().map(|s| s.value).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviews_pod_killed_mid_load_is_ejected_and_calls_by_name_keep_succeeding() {
    if !can_run() {
        return;
    }
    within("the killed pod story", Duration::from_secs(180), async {
        let node = Node::create().expect("node");
        // Istio's shape: the VirtualService retries what never reached an app, the
        // DestinationRule ejects a host after consecutive failures (a refused connection
        // counts as a 503, as in Envoy).
        let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  \
             http:\n  - route: [{destination: {host: reviews}}]\n    \
             retries: {attempts: 2, retryOn: 'connect-failure,refused-stream,reset'}\n";
        let dr = format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: reviews, namespace: default}}\nspec:\n  host: reviews\n  \
             trafficPolicy:\n    outlierDetection: {{consecutive5xxErrors: {CONSECUTIVE_5XX}, \
             interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 50}}\n"
        );
        let control = NodeControl::start(&node, &[("vs.yaml", vs), ("dr.yaml", &dr)]).await;
        let mut reviews = Vec::new();
        for name in ["reviews-1", "reviews-2", "reviews-3"] {
            reviews.push(ReviewsPod::start(&node, &control, name).await);
        }
        let (client, client_sidecar) = client_pod(&node, &control).await;
        let addr = reviews_by_name(&node, &client, "reviews-1").await;

        let load = PodLoad::start(client.clone(), addr, HOST, CALLERS, LOAD_BOUNDS);
        // Mid-load: every pod is serving.
        for name in ["reviews-1", "reviews-2", "reviews-3"] {
            until_served(&load, name, 10).await;
        }
        let killed_at = Instant::now();
        reviews[1].kill();
        let dead = reviews[1].endpoint();

        // The client's sidecar ejects it (its admin dump lists the ejected hosts).
        let ejected_at = eventually("reviews-2 to be ejected", SOON, || async {
            let dump = config_dump(&client).await;
            let ejected = dump["clusters"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["policy"]["outlier_detection"]["ejected"].as_array())
                .flatten()
                .any(|e| e.as_str() == Some(dead.as_str()));
            ejected.then(Instant::now)
        })
        .await;
        // The calls go on after it.
        let before = load.outcomes().len();
        eventually("100 calls after the ejection", SOON, || async {
            (load.outcomes().len() >= before + 100).then_some(())
        })
        .await;
        let outcomes = load.stop().await;

        let failures: Vec<&Outcome> = outcomes.iter().filter(|o| o.served_by.is_err()).collect();
        eprintln!(
            "{} calls, {} failed; reviews-2 ejected {:?} after it was killed",
            outcomes.len(),
            failures.len(),
            ejected_at - killed_at
        );
        // Every call sent once the ejection was seen succeeded, on the live pods.
        let after: Vec<&Outcome> = outcomes.iter().filter(|o| o.sent >= ejected_at).collect();
        assert!(
            after.len() >= 50,
            "{} calls after the ejection",
            after.len()
        );
        for o in &after {
            let by = o.served_by.as_deref();
            assert!(
                by == Ok("reviews-1") || by == Ok("reviews-3"),
                "a call after the ejection: {by:?}"
            );
        }
        // The killed pod served nothing sent after it died.
        assert!(
            !outcomes
                .iter()
                .any(|o| o.sent > killed_at && o.served_by.as_deref() == Ok("reviews-2")),
            "reviews-2 answered after it was killed"
        );
        // Bounded failures: at most the calls in flight when it died (one per caller) plus the
        // attempts that found it dead before the ejection, each of which a retry usually
        // saved.
        assert!(
            failures.len() <= CALLERS + CONSECUTIVE_5XX,
            "{} failures: {:?}",
            failures.len(),
            failures.iter().map(|o| &o.served_by).collect::<Vec<_>>()
        );
        let client_metrics = metrics(&client).await;
        let ejections = total(
            &client_metrics,
            "envoy_cluster_outlier_detection_ejections_enforced_total",
        );
        assert_eq!(ejections, 1.0, "one ejection: {client_metrics}");
        assert!(
            client_sidecar
                .log()
                .contains("outlier detection ejected a host"),
            "{}",
            client_sidecar.log()
        );
        drop((reviews, client_sidecar, control));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviews_pod_added_under_load_serves_without_restarting_the_others() {
    if !can_run() {
        return;
    }
    within("the added pod story", Duration::from_secs(180), async {
        let node = Node::create().expect("node");
        let control = NodeControl::start(&node, &[]).await;
        let mut first = ReviewsPod::start(&node, &control, "reviews-1").await;
        let (client, mut client_sidecar) = client_pod(&node, &control).await;
        let addr = reviews_by_name(&node, &client, "reviews-1").await;
        let pids = (client_sidecar.pid(), first.sidecar.pid());

        let load = PodLoad::start(client.clone(), addr, HOST, CALLERS, LOAD_BOUNDS);
        until_served(&load, "reviews-1", 20).await;

        // A new pod: its namespace, app, init rules and sidecar, while the calls go on.
        let added = ReviewsPod::start(&node, &control, "reviews-2").await;
        let started = added.sidecar.started;
        until_served(&load, "reviews-2", 20).await;
        let outcomes = load.stop().await;
        let first_served = outcomes
            .iter()
            .filter(|o| o.served_by.as_deref() == Ok("reviews-2"))
            .map(|o| o.done)
            .min()
            .expect("reviews-2 served");
        eprintln!(
            "pod start to first served request: {:?} (init began -> sidecar ready {:?}; \
             CSR, registration and the push to the client included)",
            first_served - started,
            added.sidecar.ready_after
        );

        // Nothing failed while it joined, and both pods kept serving.
        let failures: Vec<_> = outcomes
            .iter()
            .filter_map(|o| o.served_by.as_ref().err())
            .collect();
        assert!(failures.is_empty(), "{failures:?}");
        assert!(
            outcomes
                .iter()
                .any(|o| o.sent > first_served && o.served_by.as_deref() == Ok("reviews-1")),
            "reviews-1 still serves"
        );
        assert!(added.app.as_ref().is_some_and(|a| a.requests() >= 20));
        // No one else restarted: the same processes, still running.
        assert_eq!(client_sidecar.pid(), pids.0);
        assert_eq!(first.sidecar.pid(), pids.1);
        assert!(client_sidecar.is_running(), "the client's sidecar runs on");
        assert!(first.sidecar.is_running(), "reviews-1's sidecar runs on");
        drop((added, first, client_sidecar, control));
    })
    .await;
}
