//! End-to-end tests of `meshlite-proxy`: real proxy processes on loopback, real clients.
//!
//! Each test builds its own small mesh with [`meshlite_tests::mesh`] (a client workload's
//! sidecar calling a server workload's sidecar, which fronts the test apps), tells one user story
//! through it and asserts what that user would check: the status, the bytes, the headers the app
//! saw, the access log, the metrics. Run with:
//!
//! ```sh
//! cargo build -p meshlite-proxy && cargo test -p meshlite-tests
//! ```
//!
//! Knobs: `MESHLITE_PROXY_BIN` and `MESHLITE_CONTROL_BIN` (binaries under test), `MESHLITE_E2E_BIG_BYTES` (size of the large
//! streamed body, default 256 MiB), `MESHLITE_E2E_MAX_RSS_MB` (peak RSS allowed per sidecar
//! during it, default 64), `MESHLITE_E2E_LOG_LEVEL` (`--log-level` for the proxies),
//! `MESHLITE_E2E_KEEP` (keep a failing test's sidecar directories).
#![forbid(unsafe_code)]
// Tests and their helpers: a failed expectation is a failed test, and real processes are timed
// with the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod abuse;
mod access_logs;
mod ca_rotation;
mod config_cli;
mod control_balance;
mod control_ca;
mod control_external;
mod control_mesh;
mod control_outage;
mod control_push;
mod control_resilience;
mod control_routing;
mod dashboards;
mod dns;
mod egress_tls;
mod ext_authz;
mod failures;
mod graph;
mod http1;
mod hygiene;
mod identity_binding;
mod jwt;
mod lifecycle;
mod on_demand;
mod pods;
mod pods_churn;
mod protocols;
mod routing;
mod security;
mod sidecar_scope;
mod streaming;
mod tcp_services;
mod telemetry;
mod telemetry_api;
mod tracing;
mod zero_trust;

/// The path of `program` on `PATH`.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A peer program a test runs against (one of `names`, the first found on `PATH`). Missing,
/// the test says it skipped (`None`), unless `MESHLITE_REQUIRE_PEERS` is set (`.ci/run`
/// installs the peers and sets it), where a missing peer fails the test.
pub fn peer(names: &[&str], package: &str) -> Option<std::path::PathBuf> {
    let found = names.iter().find_map(|n| which(n));
    if found.is_none() {
        assert!(
            std::env::var("MESHLITE_REQUIRE_PEERS").is_err(),
            "MESHLITE_REQUIRE_PEERS is set and none of {names:?} is installed"
        );
        eprintln!("SKIPPED: none of {names:?} on PATH (Debian's {package} package)");
    }
    found
}

/// Reads an access-log field that may be a JSON number or string as text.
pub fn field_text(entry: &serde_json::Value, name: &str) -> String {
    match entry.get(name) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// Writes `ping` on a new connection to `addr` and returns what comes back before EOF.
pub async fn tcp_ping(addr: std::net::SocketAddr) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(b"ping").await;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.len() >= 4 {
                break;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the TCP connection neither answered nor closed"
    );
    got
}
