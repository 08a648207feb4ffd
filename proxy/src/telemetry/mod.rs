//! Telemetry: Istio-compatible Prometheus metrics, JSON access logs and distributed traces.

pub mod access_log;
pub mod exchange;
pub mod istio;
pub mod labels;
pub mod metrics;
pub mod peer;
pub mod series;
pub mod trace;

/// Metrics plus the optional access log, shared by every connection.
#[derive(Debug)]
pub struct Telemetry {
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// The access log, when enabled.
    pub access_log: Option<access_log::AccessLog>,
    /// The authorization audit log.
    pub audit: crate::policy::audit::AuditLog,
}

/// Installs the process's own log output (stderr, human-readable) with `filter`, e.g. `info`
/// or `meshlite_proxy=debug`; an unparsable filter falls back to `info`. Shared by the
/// meshlite binaries so their logs look alike.
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
