//! Telemetry: Istio-compatible Prometheus metrics and JSON access logs.

pub mod access_log;
pub mod cluster_stats;
pub mod exchange;
pub mod istio;
pub mod labels;
pub mod log_level;
pub mod metrics;
pub mod peer;
pub mod prom;
pub mod series;
pub mod stats_matcher;

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
/// or `meshlite_proxy=debug`; an unparsable filter falls back to `info`. The level can be
/// changed while the process runs ([`log_level`]). Shared by the meshlite binaries so their
/// logs look alike.
pub fn init_logging(filter: &str) {
    log_level::init(filter);
}
