//! meshlite in containers: the images `docker/build.sh` makes and the compose mesh of
//! `docker/compose.yaml`, on the machine's Docker engine.
//!
//! The images are built from the binaries the other tests run (debug builds, stripped of their
//! debug info: no second build), under a tag of this process, and removed afterwards; the
//! compose project is named after this process and taken down with its volumes and network
//! even when the test fails. Without `docker` or `docker-compose` the test says it skipped,
//! unless `MESHLITE_REQUIRE_PEERS` is set (CI installs them), where that fails. Run with:
//!
//! ```sh
//! cargo test -p meshlite-tests --test docker -- --nocapture
//! ```
#![forbid(unsafe_code)]
// Tests: a failed expectation is a failed test, and real processes are timed with the real
// clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use meshlite_bench::probe;
use meshlite_tests::compose::{ComposeProject, DockerTools, IMAGES, Images};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The caller's identity as the reviews sidecars report it (Istio's `source_principal`: the
/// SPIFFE ID without its scheme).
const PRODUCTPAGE_ID: &str = "cluster.local/ns/default/sa/productpage";

/// What a user checks on a sidecar's metrics: requests it served to productpage over mutual
/// TLS with status 200 (Istio's destination reporter).
fn mtls_requests_from_productpage(metrics: SocketAddr) -> f64 {
    let text = probe::get_ok(metrics, "/stats/prometheus").unwrap_or_default();
    probe::metric_sum(
        &text,
        "istio_requests_total",
        &[
            ("reporter", "destination"),
            ("source_principal", PRODUCTPAGE_ID),
            ("connection_security_policy", "mutual_tls"),
            ("response_code", "200"),
        ],
    )
    .unwrap_or(0.0)
}

/// `GET /` from productpage (which calls reviews through the mesh): its status, 0 when the
/// request itself failed.
fn call_productpage(addr: SocketAddr) -> u16 {
    probe::get(addr, "productpage", "/").map_or(0, |r| r.status)
}

/// Calls productpage until `wanted` calls in a row answer 200, within `within`; the calls that
/// did not answer 200 on the way.
fn until_consecutive_ok(addr: SocketAddr, wanted: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let (mut in_a_row, mut failed) = (0, 0);
    while in_a_row < wanted {
        assert!(
            Instant::now() < deadline,
            "productpage did not answer {wanted} calls in a row with 200 within {within:?} \
             ({failed} failed)"
        );
        if call_productpage(addr) == 200 {
            in_a_row += 1;
        } else {
            in_a_row = 0;
            failed += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    failed
}

/// The binaries the images are made of: the ones the other tests run.
fn binaries() -> Vec<PathBuf> {
    let proxy = meshlite_tests::mesh::proxy_binary().to_path_buf();
    let control = meshlite_tests::control::control_binary().to_path_buf();
    let bench = meshlite_tests::mesh::workspace_binary(
        "MESHLITE_BENCH_BIN",
        proxy.with_file_name("meshlite-bench"),
    );
    vec![proxy, control, bench]
}

#[test]
fn the_compose_mesh_calls_by_name_over_mutual_tls_and_survives_a_stopped_pod() {
    let Some(tools) = DockerTools::find() else {
        return;
    };
    let started = Instant::now();
    let id = std::process::id();
    let binaries = binaries();
    let binaries: Vec<&std::path::Path> = binaries.iter().map(PathBuf::as_path).collect();
    let images = Images::build(&tools, &format!("e2e-{id}"), &binaries);
    eprintln!("{}", images.report.trim_end());

    // The images: from nothing, labelled, not root, no shell.
    for image in IMAGES {
        let inspect = images.inspect(image);
        let config = &inspect["Config"];
        let labels = &config["Labels"];
        assert_eq!(
            labels["org.opencontainers.image.version"],
            env!("CARGO_PKG_VERSION"),
            "{image}"
        );
        assert!(
            labels["org.opencontainers.image.revision"]
                .as_str()
                .is_some_and(|r| r.len() >= 40),
            "{image} names its git revision: {labels}"
        );
        let title = labels["org.opencontainers.image.title"]
            .as_str()
            .unwrap_or("");
        assert!(title.starts_with("meshlite-"), "{image}: title {title:?}");
        let user = config["User"].as_str().unwrap_or("");
        let uid = user.split(':').next().unwrap_or("");
        assert!(!uid.is_empty() && uid != "0", "{image} runs as {user:?}");
        if image == "meshlite/proxy" {
            assert_eq!(user, "1337:1337", "the sidecar runs as Istio's proxy uid");
        }
        let size = inspect["Size"].as_u64().unwrap_or(u64::MAX);
        assert!(size < 100_000_000, "{image} is {size} bytes");
        // No shell: running `sh` in the image fails.
        let mut sh = tools.docker();
        sh.args(["run", "--rm", "--entrypoint", "/bin/sh"])
            .arg(format!("{image}:{}", images.tag))
            .args(["-c", "true"]);
        let output = meshlite_tests::compose::run(sh, meshlite_tests::compose::COMMAND_TIMEOUT);
        assert!(!output.status.success(), "{image} has a shell");
    }
    let built = started.elapsed();

    // The mesh: control plane, credential jobs, three pods; `up` returns once every sidecar is
    // ready (the apps wait for their sidecars' health checks).
    let project = ComposeProject::up(
        &tools,
        &format!("meshlite-e2e-{id}"),
        &[
            ("MESHLITE_TAG", images.tag.as_str()),
            ("MESHLITE_PRODUCTPAGE_PORT", "127.0.0.1:"),
            ("MESHLITE_CONTROL_PORT", "127.0.0.1:"),
        ],
    );
    let up = started.elapsed();
    let productpage = project.published("productpage", 9080);
    let v1_metrics = project.published("reviews-v1", 15020);
    let v2_metrics = project.published("reviews-v2", 15020);
    let control = project.published("meshlite-control", 15014);

    // Every sidecar got its certificate and config from the control plane.
    let status: serde_json::Value = serde_json::from_str(
        &probe::get_ok(control, "/debug/status").expect("the control plane's status"),
    )
    .expect("status JSON");
    let identities: Vec<&str> = status["proxies"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["identity"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(identities.len(), 3, "three sidecars connected: {status}");

    // productpage's app calls reviews by its name: only the mesh knows it (no container is
    // called `reviews`), so its sidecar's DNS proxy answers with the service's virtual IP and
    // the init container's rules redirect the connection to the sidecar (the reviews apps
    // listen on loopback only, so an uncaptured call would fail). Once both reviews pods are
    // endpoints, every call succeeds and both versions serve over mutual TLS, seeing
    // productpage's SPIFFE identity.
    until_consecutive_ok(productpage, 5, Duration::from_secs(60));
    let dns = probe::get_ok(project.published("productpage", 15020), "/stats/prometheus")
        .expect("productpage's sidecar metrics");
    let answered = dns
        .lines()
        .find_map(|l| l.strip_prefix("istio_agent_dns_requests_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(answered >= 1.0, "the app's DNS went to its sidecar: {dns}");
    for _ in 0..40 {
        assert_eq!(call_productpage(productpage), 200);
    }
    let (v1_before, v2_before) = (
        mtls_requests_from_productpage(v1_metrics),
        mtls_requests_from_productpage(v2_metrics),
    );
    assert!(
        v1_before >= 10.0 && v2_before >= 10.0,
        "round robin over mutual TLS: reviews-v1 served {v1_before}, reviews-v2 {v2_before}"
    );

    // A pod stops (app, sidecar, then the pod itself): traffic moves to the other version.
    project.compose(&[
        "stop",
        "--timeout",
        "5",
        "reviews-v2-app",
        "reviews-v2-proxy",
        "reviews-v2",
    ]);
    let failed = until_consecutive_ok(productpage, 20, Duration::from_secs(45));
    let v1_after = mtls_requests_from_productpage(v1_metrics);
    assert!(
        v1_after - v1_before >= 20.0,
        "reviews-v1 took the traffic: {v1_before} -> {v1_after}"
    );
    eprintln!("reviews-v2 stopped: {failed} call(s) failed before traffic recovered");

    // The pod comes back (a new network namespace, a new sidecar that gets a new certificate)
    // and gets its share again.
    project.compose(&[
        "start",
        "reviews-v2",
        "reviews-v2-init",
        "reviews-v2-proxy",
        "reviews-v2-app",
    ]);
    let v2_metrics = project.published("reviews-v2", 15020);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        call_productpage(productpage);
        if mtls_requests_from_productpage(v2_metrics) > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted reviews-v2 got no request within 90 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    until_consecutive_ok(productpage, 10, Duration::from_secs(30));
    eprintln!(
        "images built in {:.0?}, mesh up in {:.0?}, test done in {:.0?}",
        built,
        up - built,
        started.elapsed()
    );
    drop(project);
    drop(images);
}
