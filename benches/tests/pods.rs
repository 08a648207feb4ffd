//! `meshlite-bench --scenario pods`, run for real at a low rate for a short window: two pods
//! (network namespaces), capture rules, sidecars as uid 1337, the explicit pair and the
//! captured pair, checked through the JSON report a user would read; and, without root, a
//! clear refusal instead of a panic.
//!
//! Debug binaries (see `tracing.rs`): only the report's shape is checked, not its figures.
//!
//! ```sh
//! cargo build -p meshlite-proxy && cargo test -p meshlite-bench --test pods
//! ```
#![forbid(unsafe_code)]
// A test: a failed expectation is a failed test, and the child is timed with the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use serde_json::Value;
use std::process::{Command, Stdio};

mod support;

use support::{BenchRun, number, run_bench};

/// Whether pods can be made here; says SKIPPED when not (a failure under
/// `MESHLITE_REQUIRE_PEERS`).
fn can_run() -> bool {
    meshlite_bench::netns::can_run_tests("the pods scenario")
}

#[test]
fn the_pods_scenario_reports_the_explicit_and_the_captured_pair_and_the_pod_start() {
    if !can_run() {
        return;
    }
    let BenchRun {
        pid,
        output,
        report,
    } = run_bench(
        &[
            "--scenario",
            "pods",
            "--rate",
            "50",
            "--duration",
            "1",
            "--warmup",
            "0.5",
            "--repeat",
            "1",
            "--connections",
            "2",
            "--workers",
            "1",
        ],
        "meshlite-bench --scenario pods",
    );
    assert!(
        output.contains("Cost of capture") && output.contains("Pod start to first served"),
        "the text report has the capture cost and the pod start:\n{output}"
    );

    // Both modes ran through the pods, with no error, each with its two sidecars' figures.
    assert!(number(&report, "/direct/requests") > 0.0, "{report:#}");
    assert_eq!(
        number(&report, "/meshed/errors"),
        0.0,
        "explicit: {report:#}"
    );
    assert!(number(&report, "/meshed/requests") > 0.0, "{report:#}");
    assert_eq!(
        report.pointer("/peer/name").and_then(Value::as_str),
        Some("captured")
    );
    assert_eq!(
        number(&report, "/peer/meshed/errors"),
        0.0,
        "captured: {report:#}"
    );
    assert!(number(&report, "/peer/meshed/requests") > 0.0, "{report:#}");
    for pair in ["/sidecars", "/peer/sidecars"] {
        assert_eq!(
            report.pointer(pair).and_then(Value::as_array).map(Vec::len),
            Some(2),
            "{pair}: {report:#}"
        );
    }
    // The difference and the pod start are figures.
    for figure in [
        "/capture_cost/latency/p50_ms",
        "/capture_cost/latency/p99_ms",
        "/capture_cost/client_cpu_ms_per_1k",
        "/capture_cost/server_rss_mb",
    ] {
        number(&report, figure);
    }
    let init = number(&report, "/pod_start/init_ms");
    let ready = number(&report, "/pod_start/ready_ms");
    let served = number(&report, "/pod_start/first_served_ms");
    assert!(
        0.0 < init && init <= ready && ready <= served,
        "init, then ready, then served: {report:#}"
    );
    // The pods are gone (their namespaces carry the bench's pid).
    let ours = format!("{}{pid}-", meshlite_bench::netns::PREFIX);
    let left: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(&ours))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

#[test]
fn without_root_the_pods_scenario_says_what_it_needs() {
    let Some(setpriv) = meshlite_bench::netns::find_tool("setpriv") else {
        eprintln!("SKIPPED: needs setpriv (util-linux) to drop root");
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to drop it");
        return;
    }
    let out = Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_meshlite-bench"))
        .args(["--scenario", "pods", "--rate", "10", "--duration", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("run meshlite-bench as nobody");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("needs") && said.contains("root"), "{said}");
    assert!(!said.contains("panicked"), "{said}");
}
