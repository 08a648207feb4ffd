//! The Telemetry API settings in force for this workload (Istio's `Telemetry` resources,
//! resolved by the control plane and pushed in the workload's policy), compiled once per
//! push: which standard metrics each reporter records, and whether and when a request is
//! access-logged (`accessLogging`: `disabled`, a CEL `filter.expression` over the request and
//! response), and which labels they carry (`tagOverrides`, [`super::tag_overrides`]).
//! Tracing settings are resolved into the tracers by the snapshot builder
//! ([`super::trace::TraceSettings::resolve`]).
//!
//! A filter is evaluated when a request's log line is complete, against the attributes
//! Envoy's CEL filters read: `request.headers[...]`, `request.method`, `request.path`,
//! `request.host`, `request.id`, `request.useragent`, `request.protocol`, `response.code`,
//! `response.duration` (milliseconds, so the seed's `response.duration > 1000` reads as one
//! second), `response.flags` (the printed flags) and `response.size`.

use std::sync::Arc;

use super::attributes::{LogAttributes, cel_context};
use super::istio::{IstioLabels, MetricSet, TcpReport};
use super::tag_overrides::{TagOverrides, tcp_report};
use meshlite_xds_proto::v1;

/// Why pushed Telemetry settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A `tagOverrides` entry cannot be applied.
    #[error(transparent)]
    Tag(#[from] super::tag_overrides::TagError),
    /// An access-log filter is not CEL.
    #[error("accessLogging filter `{expression}`: {message}")]
    Filter {
        /// The expression.
        expression: String,
        /// The parser's complaint.
        message: String,
    },
}

/// Which sidecar reports: the caller's (`source`, Istio's CLIENT mode) or the callee's
/// (`destination`, SERVER).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reporter {
    /// The caller's sidecar.
    Source,
    /// The callee's sidecar.
    Destination,
}

impl Reporter {
    fn selected_by(self, mode: i32) -> bool {
        match v1::WorkloadMode::try_from(mode) {
            Ok(v1::WorkloadMode::Client) => self == Reporter::Source,
            Ok(v1::WorkloadMode::Server) => self == Reporter::Destination,
            _ => true,
        }
    }

    fn index(self) -> usize {
        match self {
            Reporter::Source => 0,
            Reporter::Destination => 1,
        }
    }
}

/// An access-log filter, compiled.
pub struct LogFilter {
    program: cel::Program,
    source: String,
}

impl std::fmt::Debug for LogFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LogFilter").field(&self.source).finish()
    }
}

impl LogFilter {
    /// Compiles `expression`.
    pub fn compile(expression: &str) -> Result<Self, TelemetryError> {
        let program = cel::Program::compile(expression).map_err(|e| TelemetryError::Filter {
            expression: expression.to_string(),
            message: e.to_string(),
        })?;
        Ok(Self {
            program,
            source: expression.to_string(),
        })
    }

    /// Whether the exchange `a` is logged: the expression is `true`. An expression that
    /// fails on this exchange (a missing header compared, a type error) logs it, as a filter
    /// that cannot decide should not hide a request.
    pub fn allows(&self, a: &LogAttributes<'_>) -> bool {
        match self.program.execute(&cel_context(a)) {
            Ok(cel::objects::Value::Bool(b)) => b,
            Ok(_) | Err(_) => true,
        }
    }
}

/// Whether a reporter writes access-log lines.
#[derive(Clone, Debug, Default)]
pub enum AccessLogging {
    /// No Telemetry says: the proxy's own `--access-log` setting.
    #[default]
    Default,
    /// `disabled: true`.
    Off,
    /// Logged, when the filter (if any) holds.
    On(Option<Arc<LogFilter>>),
}

/// This workload's Telemetry settings, compiled.
#[derive(Debug, Default)]
pub struct WorkloadTelemetry {
    /// Metrics not recorded, by reporter (source, destination).
    disabled: [MetricSet; 2],
    /// Access logging, by reporter.
    logging: [AccessLogging; 2],
    /// `tagOverrides`, by reporter.
    tags: [Option<Arc<TagOverrides>>; 2],
    /// The pushed settings, as they came (for the tracer and `/config_dump`).
    pub pushed: Option<v1::WorkloadTelemetry>,
}

impl WorkloadTelemetry {
    /// Compiles `pushed` (none: no Telemetry applies).
    pub fn compile(pushed: Option<&v1::WorkloadTelemetry>) -> Result<Self, TelemetryError> {
        let Some(p) = pushed else {
            return Ok(Self::default());
        };
        let mut disabled = [MetricSet::NONE; 2];
        for o in &p.metric_overrides {
            let metrics = MetricSet::of(v1::MetricSelector::try_from(o.metric).unwrap_or_default());
            for r in [Reporter::Source, Reporter::Destination] {
                if r.selected_by(o.mode) {
                    disabled[r.index()] = disabled[r.index()].with(metrics, o.disabled);
                }
            }
        }
        let mut logging = [AccessLogging::Default, AccessLogging::Default];
        // Entries come least specific first: a later one for the same reporter wins.
        for entry in &p.access_logging {
            let decided = if entry.disabled {
                AccessLogging::Off
            } else if entry.filter.is_empty() {
                AccessLogging::On(None)
            } else {
                AccessLogging::On(Some(Arc::new(LogFilter::compile(&entry.filter)?)))
            };
            for r in [Reporter::Source, Reporter::Destination] {
                if r.selected_by(entry.mode) {
                    logging[r.index()] = decided.clone();
                }
            }
        }
        let tags = [Reporter::Source, Reporter::Destination].map(|r| {
            TagOverrides::compile(&p.metric_overrides, |mode| r.selected_by(mode))
                .map(|t| t.map(Arc::new))
        });
        let [source, destination] = tags;
        Ok(Self {
            disabled,
            logging,
            tags: [source?, destination?],
            pushed: Some(p.clone()),
        })
    }

    /// The standard metrics `reporter` does not record.
    pub fn disabled_metrics(&self, reporter: Reporter) -> MetricSet {
        self.disabled[reporter.index()]
    }

    /// The labels `reporter`'s metrics change (`tagOverrides`), if any.
    pub fn tag_overrides(&self, reporter: Reporter) -> Option<&Arc<TagOverrides>> {
        self.tags[reporter.index()].as_ref()
    }

    /// The report of a TCP connection `reporter` counts under `labels`: the families it
    /// records and the label sets its tag overrides make.
    pub fn tcp_report(&self, reporter: Reporter, labels: IstioLabels) -> TcpReport {
        tcp_report(
            labels,
            self.disabled_metrics(reporter),
            self.tag_overrides(reporter).map(|t| &**t),
        )
    }

    /// Whether and when `reporter` writes access-log lines.
    pub fn access_logging(&self, reporter: Reporter) -> &AccessLogging {
        &self.logging[reporter.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(code: u16, duration_ms: u64, headers: &[(String, String)]) -> LogAttributes<'_> {
        LogAttributes {
            headers,
            method: "GET",
            path: "/",
            code,
            duration_ms,
            ..Default::default()
        }
    }

    #[test]
    fn the_seeds_filter_logs_errors_slow_requests_and_debug_ones() {
        let f = LogFilter::compile(
            "response.code >= 400 || response.duration > 1000 || \
             request.headers['x-debug'] == 'true'",
        )
        .unwrap();
        let none: Vec<(String, String)> = vec![];
        let debug = vec![("x-debug".to_string(), "true".to_string())];
        assert!(f.allows(&attrs(503, 3, &none)), "an error");
        assert!(f.allows(&attrs(200, 1500, &none)), "slow");
        assert!(f.allows(&attrs(200, 3, &debug)), "asked for");
        let plain = vec![("x-debug".to_string(), "false".to_string())];
        assert!(
            !f.allows(&attrs(200, 3, &plain)),
            "a fast success is not logged"
        );
    }

    #[test]
    fn a_filter_that_is_not_cel_is_refused_and_one_that_errors_logs() {
        assert!(LogFilter::compile("response.code >=").is_err());
        let f = LogFilter::compile("request.headers['x-debug'] == 'true'").unwrap();
        assert!(
            f.allows(&attrs(200, 1, &[])),
            "a missing header cannot be compared: the line is kept"
        );
    }

    #[test]
    fn overrides_disable_metrics_per_reporter_and_the_later_entry_wins() {
        let o = |metric: v1::MetricSelector, mode: v1::WorkloadMode, disabled: bool| {
            v1::MetricOverride {
                metric: metric as i32,
                mode: mode as i32,
                disabled,
                ..Default::default()
            }
        };
        let pushed = v1::WorkloadTelemetry {
            metric_overrides: vec![
                o(
                    v1::MetricSelector::AllMetrics,
                    v1::WorkloadMode::Client,
                    true,
                ),
                o(
                    v1::MetricSelector::RequestCount,
                    v1::WorkloadMode::ClientAndServer,
                    false,
                ),
            ],
            access_logging: vec![
                v1::AccessLogging {
                    disabled: true,
                    ..Default::default()
                },
                v1::AccessLogging {
                    filter: "response.code >= 500".into(),
                    mode: v1::WorkloadMode::Server as i32,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let t = WorkloadTelemetry::compile(Some(&pushed)).unwrap();
        let client = t.disabled_metrics(Reporter::Source);
        assert!(client.contains(v1::MetricSelector::RequestDuration));
        assert!(
            !client.contains(v1::MetricSelector::RequestCount),
            "re-enabled"
        );
        assert_eq!(t.disabled_metrics(Reporter::Destination), MetricSet::NONE);
        assert!(matches!(
            t.access_logging(Reporter::Source),
            AccessLogging::Off
        ));
        assert!(matches!(
            t.access_logging(Reporter::Destination),
            AccessLogging::On(Some(_))
        ));
        assert!(
            WorkloadTelemetry::compile(Some(&v1::WorkloadTelemetry {
                access_logging: vec![v1::AccessLogging {
                    filter: "((".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }))
            .is_err()
        );
    }
}
