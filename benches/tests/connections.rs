//! `meshlite-bench --scenario connections`, run for real at small sizes through the debug
//! proxy: 2,000 idle connections, a 1-second closed loop, churn, new mTLS connections and a
//! 1 MiB body each way, checked through the JSON report a user reads. What it holds to: every
//! connection is held and every request answered, the client sidecar's memory per idle
//! connection stays under a bound (a bound, not a timing), every body arrives with its exact
//! byte count, each churned request opened its own connection, and a new mutual-TLS
//! connection into a meshlite sidecar resumes the session of an earlier one. No timing is
//! asserted. meshlite only: CI installs no HAProxy.
//!
//! ```sh
//! cargo build -p meshlite-proxy && cargo test -p meshlite-bench --test connections
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

use serde_json::Value;
use support::{BenchRun, number, run_bench};

const IDLE: f64 = 2000.0;

/// The most the client sidecar's RSS may grow per idle keep-alive connection from its app, KB
/// (debug build, 2,000 connections). Measured 2026-12-07: 9.05-9.41 KB. The figure includes
/// the upstream connections the first requests' burst opened and the debug build's larger
/// tasks; the release build at 9,000 connections holds 3.76 KB (the issue's aim is 8), and
/// 19.05 KB before quiet connections gave their buffers back (hyper's 8 KiB read and write
/// buffers each), which this bound catches.
const MAX_CLIENT_KB_PER_IDLE_CONNECTION: f64 = 12.0;
const ROUNDS: f64 = 1.0;
const MIB: f64 = 1024.0 * 1024.0;

#[test]
fn a_pair_holds_idle_connections_carries_churn_and_bodies_and_resumes_tls_sessions() {
    let BenchRun { output, report, .. } = run_bench(
        &[
            "--scenario",
            "connections",
            "--idle-connections",
            "2000",
            "--idle-interval",
            "3s",
            "--idle-rounds",
            "1",
            "--body-mib",
            "1",
            "--duration",
            "1s",
        ],
        "meshlite-bench --scenario connections",
    );
    assert_eq!(report["scenario"], "connections", "{output}");
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "meshlite only:\n{output}");
    let run = &runs[0];
    assert_eq!(run["implementation"], "meshlite");
    assert_eq!(
        run["failures"].as_array().map(Vec::len),
        Some(0),
        "{run:#}\n{output}"
    );

    // Idle: every connection opened, answered its first request and its slow round on the
    // same TCP connection.
    let idle = &run["idle"];
    assert_eq!(number(idle, "/opened"), IDLE, "{idle:#}");
    assert_eq!(number(idle, "/held"), IDLE, "{idle:#}");
    assert_eq!(number(idle, "/errors"), 0.0, "{idle:#}");
    assert_eq!(
        number(idle, "/requests_ok"),
        IDLE * (1.0 + ROUNDS),
        "{idle:#}"
    );
    for side in ["client", "server"] {
        let before = number(idle, &format!("/{side}_rss_before_kb"));
        let held = number(idle, &format!("/{side}_rss_held_kb"));
        assert!(
            before > 1024.0 && held > 1024.0,
            "{side} RSS read: {idle:#}"
        );
        let per = number(idle, &format!("/{side}_kb_per_connection"));
        assert!(
            per.is_finite() && per.abs() < 1024.0,
            "{side}: {per} KB per connection is not plausible: {idle:#}"
        );
    }
    // The app's connections rest (hyper's buffers given back): the client sidecar's memory
    // per idle connection stays under the aim.
    let client_per = number(idle, "/client_kb_per_connection");
    assert!(
        client_per < MAX_CLIENT_KB_PER_IDLE_CONNECTION,
        "the client sidecar holds {client_per:.2} KB per idle connection (at most \
         {MAX_CLIENT_KB_PER_IDLE_CONNECTION}): {idle:#}"
    );

    // Closed loop and churn: answered, nothing failed; churn opened one connection per request.
    let closed = &run["closed_loop"];
    assert!(number(closed, "/ok") > 0.0, "{closed:#}");
    assert_eq!(number(closed, "/errors"), 0.0, "{closed:#}");
    assert_eq!(number(closed, "/connections"), 50.0);
    assert_eq!(number(closed, "/connections_opened"), 0.0, "kept alive");
    let churn = &run["churn"];
    assert!(number(churn, "/ok") > 0.0, "{churn:#}");
    assert_eq!(number(churn, "/errors"), 0.0, "{churn:#}");
    assert_eq!(
        number(churn, "/connections_opened"),
        number(churn, "/ok"),
        "one new connection per request: {churn:#}"
    );

    // New mTLS connections: all answered, and the sessions resume.
    let tls = &run["mtls_handshakes"];
    let ok = number(tls, "/ok");
    assert!(ok >= 2.0, "{tls:#}");
    assert_eq!(number(tls, "/errors"), 0.0, "{tls:#}");
    assert!(
        number(tls, "/resumed") > 0.0,
        "no new mTLS connection resumed a session: {tls:#}"
    );

    // Bodies: one record each way, every transfer whole.
    let bodies = run["bodies"].as_array().expect("bodies");
    let ways: Vec<&str> = bodies
        .iter()
        .map(|b| b["direction"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ways, ["upload", "download"]);
    for body in bodies {
        assert_eq!(number(body, "/size_bytes"), MIB);
        assert_eq!(number(body, "/errors"), 0.0, "{body:#}");
        let transfers = number(body, "/ok");
        assert!(transfers >= 2.0, "{body:#}");
        assert_eq!(number(body, "/bytes"), transfers * MIB, "{body:#}");
        assert!(body_has_figures(body), "{body:#}");
    }
}

/// A body record carries a throughput and the CPU of both sidecars.
fn body_has_figures(body: &Value) -> bool {
    [
        "/gbit_per_s",
        "/client_cpu_s_per_gib",
        "/server_cpu_s_per_gib",
    ]
    .iter()
    .all(|p| {
        body.pointer(p)
            .and_then(Value::as_f64)
            .is_some_and(|v| v >= 0.0)
    }) && number(body, "/gbit_per_s") > 0.0
}
