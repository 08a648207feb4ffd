//! `meshlite-bench --scenario scale`, run for real at 1 and 1,000 services (5,000 endpoints):
//! a client sidecar under a real control plane, checked through the JSON report a user reads.
//! What it holds to: the sidecar knows every cluster but builds only the ones its app called
//! (the five probes), a service never called answers its first request, and the memory the
//! 1,000 services add stays under a bound (a bound, not a timing: RSS does not depend on the
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
/// build). Measured 2026-12-07: 13.5 MB (debug), 13.8 MB (release); 21.7 MB before the
/// compact snapshot (shared label sets, decode caches, host ports kept across pushes) and
/// some 65 MB before clusters were built on first use, both of which this bound catches.
const MAX_ADDED_MB_AT_1000: f64 = 20.0;

#[test]
fn a_sidecar_in_a_mesh_of_1000_services_builds_only_what_it_calls_within_a_memory_bound() {
    let BenchRun { output, report, .. } = run_bench(
        &["--scenario", "scale", "--sizes", "1,1000"],
        "meshlite-bench --scenario scale",
    );
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{output}");
    let (one, thousand) = (&runs[0], &runs[1]);
    assert_eq!(number(thousand, "/services"), 1000.0);
    assert_eq!(number(thousand, "/endpoints"), 5000.0);
    // 1,000 service clusters, 2 subsets for each of the 200 routed, echo and 5 probes.
    assert_eq!(number(thousand, "/clusters"), 1406.0, "{output}");
    for run in runs {
        assert_eq!(
            number(run, "/built_clusters"),
            5.0,
            "only the probes were called: {run:#}"
        );
        assert!(number(run, "/first_request_ms/0") > 0.0);
    }
    let added = number(thousand, "/rss_peak_end_mb") - number(one, "/rss_peak_end_mb");
    assert!(
        added <= MAX_ADDED_MB_AT_1000,
        "1,000 services added {added:.1} MB to the sidecar (bound {MAX_ADDED_MB_AT_1000} MB):\n{output}"
    );
}
