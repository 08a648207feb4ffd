//! `meshlite-bench --tracing`, run for real: the bench binary, its app, an untraced meshlite
//! pair and two traced ones (0 % and 100 % sampling) exporting to the bench's own collector,
//! at a low rate for a short window, checked through the JSON report a user would read.
//!
//! It runs the debug `meshlite-proxy` (debug figures mean nothing; only the spans and the
//! report's shape are checked), as the end-to-end tests do: `MESHLITE_PROXY_BIN` names it,
//! else `target/debug/meshlite-proxy`, which is built with `cargo build -p meshlite-proxy`
//! when missing. Build it first to keep the test short:
//!
//! ```sh
//! cargo build -p meshlite-proxy && cargo test -p meshlite-bench --test tracing
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

mod support;

use support::{BenchRun, number, run_bench};

#[test]
fn traced_pairs_report_spans_at_100_percent_and_none_at_0() {
    let BenchRun { output, report, .. } = run_bench(
        &[
            "--rate",
            "100",
            "--duration",
            "1.5",
            "--warmup",
            "0.5",
            "--repeat",
            "1",
            "--connections",
            "4",
            "--workers",
            "1",
            "--tracing",
            "0,100",
        ],
        "meshlite-bench --tracing 0,100",
    );
    assert!(
        output.contains("Tracing: both sidecars report spans"),
        "the text report has the tracing table:\n{output}"
    );

    assert!(
        report.pointer("/meshed").is_some_and(|m| !m.is_null()),
        "the untraced pair ran:\n{output}"
    );
    let runs = report
        .pointer("/tracing/runs")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("tracing.runs in the report:\n{report:#}"));
    assert_eq!(runs.len(), 2, "{report:#}");
    let (zero, full) = (&runs[0], &runs[1]);

    assert_eq!(number(zero, "/sampling_percent"), 0.0);
    assert!(
        zero.pointer("/failure").is_some_and(Value::is_null),
        "{zero:#}"
    );
    assert_eq!(
        number(zero, "/spans/received"),
        0.0,
        "0 % sampling sends no span:\n{zero:#}"
    );
    assert_eq!(zero.pointer("/spans_off"), Some(&Value::Bool(false)));

    assert_eq!(number(full, "/sampling_percent"), 100.0);
    assert!(
        full.pointer("/failure").is_some_and(Value::is_null),
        "{full:#}"
    );
    let requests = number(full, "/meshed/requests");
    let client = number(full, "/spans/client_in_window");
    let server = number(full, "/spans/server_in_window");
    assert!(
        number(full, "/spans/received") > 0.0 && client > 0.0 && server > 0.0,
        "100 % sampling sends spans from both sidecars:\n{full:#}"
    );
    assert!(
        (client - requests).abs() <= 5.0 + 0.01 * requests,
        "one CLIENT span per request in the window ({client} for {requests}):\n{full:#}"
    );
    assert_eq!(
        full.pointer("/spans_off"),
        Some(&Value::Bool(false)),
        "{full:#}"
    );
    assert_eq!(number(full, "/spans/dropped"), 0.0, "{full:#}");
    for run in [zero, full] {
        assert!(
            run.pointer("/vs_untraced/cpu_per_request_pct")
                .is_some_and(Value::is_number),
            "each traced pair is compared with the untraced one:\n{run:#}"
        );
        assert!(number(run, "/collector_cpu_cores") >= 0.0);
        assert_eq!(
            run.pointer("/sidecars")
                .and_then(Value::as_array)
                .map(Vec::len),
            Some(2)
        );
    }
}
