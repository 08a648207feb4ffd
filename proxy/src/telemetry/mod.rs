//! Telemetry: Istio-compatible Prometheus metrics, JSON access logs and distributed traces.

pub mod access_log;
pub mod batch;
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
pub mod trace;
pub mod workload;

/// Metrics plus the optional access log, shared by every connection.
#[derive(Debug)]
pub struct Telemetry {
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// The access log, when enabled.
    pub access_log: Option<access_log::AccessLog>,
    /// The authorization audit log.
    pub audit: crate::policy::audit::AuditLog,
    /// Standard output's access log, started the first time a Telemetry resource turns
    /// access logging on for a proxy started without one (Istio's `envoy` provider).
    pub stdout_log: std::sync::OnceLock<Option<access_log::AccessLog>>,
}

/// Which writer an access-log line goes to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogSink {
    /// The proxy's own `--access-log` target.
    #[default]
    Configured,
    /// Standard output, for a Telemetry resource's default provider.
    Stdout,
}

impl Telemetry {
    /// Where `reporter`'s lines go under the Telemetry settings `t`, and the filter they
    /// pass; `None`: not logged.
    pub fn access_log_for(
        &self,
        t: &workload::WorkloadTelemetry,
        reporter: workload::Reporter,
    ) -> Option<(LogSink, Option<std::sync::Arc<workload::LogFilter>>)> {
        use workload::AccessLogging;
        match t.access_logging(reporter) {
            AccessLogging::Off => None,
            AccessLogging::Default => self
                .access_log
                .as_ref()
                .map(|_| (LogSink::Configured, None)),
            AccessLogging::On(filter) => {
                let sink = if self.access_log.is_some() {
                    LogSink::Configured
                } else {
                    self.writer(LogSink::Stdout)?;
                    LogSink::Stdout
                };
                Some((sink, filter.clone()))
            }
        }
    }

    /// The writer of `sink` (standard output's is started on first use).
    pub fn writer(&self, sink: LogSink) -> Option<&access_log::AccessLog> {
        match sink {
            LogSink::Configured => self.access_log.as_ref(),
            LogSink::Stdout => self
                .stdout_log
                .get_or_init(|| {
                    access_log::AccessLog::start(
                        access_log::AccessLogTarget::Stdout,
                        self.metrics.access_log_dropped.clone(),
                    )
                    .ok()
                })
                .as_ref(),
        }
    }
}

/// Installs the process's own log output (stderr, human-readable) with `filter`, e.g. `info`
/// or `meshlite_proxy=debug`; an unparsable filter falls back to `info`. The level can be
/// changed while the process runs ([`log_level`]). Shared by the meshlite binaries so their
/// logs look alike.
pub fn init_logging(filter: &str) {
    log_level::init(filter);
}
