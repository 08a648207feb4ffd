//! `meshlite-bench --scenario scale`, run for real at 1 and 1,000 services (5,000 endpoints):
//! a client sidecar under a real control plane, checked through the JSON report a user reads.
//! It runs both ways a sidecar can get the mesh: fetched on demand (the default) and pushed
//! whole. What it holds to: the sidecar knows every service but builds only the clusters its
//! app called (the five probes), on demand it holds no subsets of services never called, a
//! service never called answers its first request, and the memory the 1,000 services add stays
//! under a bound (a bound, not a timing: RSS does not depend on the
//! machine's speed). The bound is for the debug build and has room; the release figures are in
//! the README.
//!
//! ```sh
//! cargo build -p meshlite-proxy -p meshlite-control && cargo test -p meshlite-bench --test scale
//! ```
#![forbid(unsafe_code)]
// A test: a failed expectation is a failed test, and the child is timed with the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod support;

use support::{BenchRun, number, run_bench};

/// The most 1,000 services may add to the sidecar's peak RSS over one service, MB (debug
/// build). Measured 2026-12-07: 12.0 MB (debug), 11.9 MB (release), with names kept by hash;
/// 13.5-13.8 MB before that, 21.7 MB before the compact snapshot (shared label sets, decode
/// caches, host ports kept across pushes) and some 65 MB before clusters were built on first
/// use, all of which this bound catches.
const MAX_ADDED_MB_AT_1000: f64 = 16.0;

/// The same bound for a sidecar fetching services on demand (its default): it holds every
/// service's name, addresses and ports, and the endpoints, routes and policies of the ones
/// called. Measured 2026-12-07, fourth session: 2.0 MB (debug), 1.9 MB (release), with the
/// services not called in one shared directory whose names (and the DNS table's) are kept by
/// hash; 3.5-3.6 MB with the names as strings, 6.7-7.0 MB with a host port and cluster for
/// each service, and 12.0 MB for the mesh pushed whole: this bound catches any of them.
const MAX_ADDED_MB_AT_1000_ON_DEMAND: f64 = 3.0;

#[test]
fn a_sidecar_in_a_mesh_of_1000_services_builds_only_what_it_calls_within_a_memory_bound() {
    let BenchRun { output, report, .. } = run_bench(
        &[
            "--scenario",
            "scale",
            "--sizes",
            "1,1000",
            "--fetch",
            "both",
        ],
        "meshlite-bench --scenario scale",
    );
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 4, "{output}");
    // On demand first, then the whole mesh, each at 1 and 1,000 services.
    let (demand_one, demand_thousand) = (&runs[0], &runs[1]);
    let (whole_one, whole_thousand) = (&runs[2], &runs[3]);
    for (run, on_demand) in [
        (demand_one, true),
        (demand_thousand, true),
        (whole_one, false),
        (whole_thousand, false),
    ] {
        assert_eq!(run["on_demand"], on_demand, "{output}");
    }
    for thousand in [demand_thousand, whole_thousand] {
        assert_eq!(number(thousand, "/services"), 1000.0);
        assert_eq!(number(thousand, "/endpoints"), 5000.0);
    }
    // 1,000 service clusters, echo and 5 probes; pushed whole, also 2 subsets for each of the
    // 200 routed services (on demand, subsets come with a service's policy when it is called).
    assert_eq!(number(demand_thousand, "/clusters"), 1006.0, "{output}");
    assert_eq!(number(whole_thousand, "/clusters"), 1406.0, "{output}");
    // Every change reached the sidecar and was applied (the apply times are figures, not
    // asserted).
    for run in runs {
        for change in [
            "/change_apply_us",
            "/pod_move_apply_us",
            "/service_add_drop_apply_us",
        ] {
            assert!(number(run, change) > 0.0, "{change}: {run:#}");
        }
    }
    for run in runs {
        assert_eq!(
            number(run, "/built_clusters"),
            5.0,
            "only the probes were called: {run:#}"
        );
        assert!(number(run, "/first_request_ms/0") > 0.0);
        assert!(number(run, "/change_apply_us") > 0.0, "{run:#}");
    }
    let added = |one: &serde_json::Value, thousand: &serde_json::Value| {
        number(thousand, "/rss_peak_end_mb") - number(one, "/rss_peak_end_mb")
    };
    let whole = added(whole_one, whole_thousand);
    assert!(
        whole <= MAX_ADDED_MB_AT_1000,
        "1,000 services pushed whole added {whole:.1} MB to the sidecar (bound {MAX_ADDED_MB_AT_1000} MB):\n{output}"
    );
    let on_demand = added(demand_one, demand_thousand);
    assert!(
        on_demand <= MAX_ADDED_MB_AT_1000_ON_DEMAND,
        "1,000 services fetched on demand added {on_demand:.1} MB to the sidecar (bound {MAX_ADDED_MB_AT_1000_ON_DEMAND} MB):\n{output}"
    );
}
