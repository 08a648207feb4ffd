//! Telemetry: Istio-compatible Prometheus metrics and JSON access logs.

pub mod access_log;
pub mod exchange;
pub mod labels;
pub mod metrics;

/// Metrics plus the optional access log, shared by every connection.
#[derive(Debug)]
pub struct Telemetry {
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// The access log, when enabled.
    pub access_log: Option<access_log::AccessLog>,
}
