//! The Telemetry API settings in force for this workload (Istio's `Telemetry` resources,
//! resolved by the control plane and pushed in the workload's policy), compiled once per
//! push: which standard metrics each reporter records, which labels they carry
//! (`tagOverrides`, [`super::tag_overrides`]), and whether, when and where a request is
//! access-logged (`accessLogging`: `disabled`, a CEL `filter.expression` over the request and
//! response, the providers the line goes to). Tracing settings are resolved into the tracers
//! by the snapshot builder ([`super::trace::TraceSettings::resolve`]).
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

use super::access_log::providers::{LogProviders, LogRoute};

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

/// Whether a reporter writes access-log lines, and where.
#[derive(Clone, Debug, Default)]
pub enum AccessLogging {
    /// Neither a Telemetry resource nor the MeshConfig's default providers say: the proxy's
    /// own `--access-log` setting.
    #[default]
    Default,
    /// Not logged (`disabled: true`, or only providers that do not exist).
    Off,
    /// Logged to each route whose filter (if any) holds.
    On(Arc<[LogRoute]>),
}

/// One provider's state on one reporter, as the entries applied so far leave it.
#[derive(Clone)]
enum ProviderState {
    Off,
    On(Option<Arc<LogFilter>>),
}

impl AccessLogging {
    /// The routes of the providers `on`; `Off` when none of them exists.
    fn to(providers: &LogProviders, on: &[(String, ProviderState)]) -> Self {
        let routes: Vec<LogRoute> = on
            .iter()
            .filter_map(|(name, state)| match state {
                ProviderState::Off => None,
                ProviderState::On(filter) => providers.route(name, filter.clone()),
            })
            .collect();
        if routes.is_empty() {
            AccessLogging::Off
        } else {
            AccessLogging::On(routes.into())
        }
    }
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
    /// Compiles `pushed` (none: no Telemetry applies), sending access-log lines to
    /// `providers`.
    pub fn compile(
        pushed: Option<&v1::WorkloadTelemetry>,
        providers: &LogProviders,
    ) -> Result<Self, TelemetryError> {
        let Some(p) = pushed else {
            let logging = default_logging(providers);
            return Ok(Self {
                logging: [logging.clone(), logging],
                ..Self::default()
            });
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
        // Per reporter, each provider's state; entries come least specific first, so a later
        // one for the same provider and reporter wins. An entry without providers is for the
        // default ones.
        let mut states: [Vec<(String, ProviderState)>; 2] = Default::default();
        let mut decided = [false, false];
        let own = [String::new()];
        for entry in &p.access_logging {
            let state = if entry.disabled {
                ProviderState::Off
            } else if entry.filter.is_empty() {
                ProviderState::On(None)
            } else {
                ProviderState::On(Some(Arc::new(LogFilter::compile(&entry.filter)?)))
            };
            let names = match (&entry.providers[..], providers.defaults()) {
                ([], []) => &own[..],
                ([], defaults) => defaults,
                (named, _) => named,
            };
            for r in [Reporter::Source, Reporter::Destination] {
                if !r.selected_by(entry.mode) {
                    continue;
                }
                decided[r.index()] = true;
                let on = &mut states[r.index()];
                for name in names {
                    match on.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                        Some((_, s)) => *s = state.clone(),
                        None => on.push((name.clone(), state.clone())),
                    }
                }
            }
        }
        let logging = [Reporter::Source, Reporter::Destination].map(|r| {
            if decided[r.index()] {
                AccessLogging::to(providers, &states[r.index()])
            } else {
                default_logging(providers)
            }
        });
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

    /// Whether, when and where `reporter` writes access-log lines.
    pub fn access_logging(&self, reporter: Reporter) -> &AccessLogging {
        &self.logging[reporter.index()]
    }
}

/// Where lines go when no Telemetry entry says: the MeshConfig's default providers, else the
/// proxy's own setting.
fn default_logging(providers: &LogProviders) -> AccessLogging {
    match providers.defaults() {
        [] => AccessLogging::Default,
        defaults => AccessLogging::to(
            providers,
            &defaults
                .iter()
                .map(|name| (name.clone(), ProviderState::On(None)))
                .collect::<Vec<_>>(),
        ),
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
        let t = WorkloadTelemetry::compile(Some(&pushed), &LogProviders::default()).unwrap();
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
            AccessLogging::On(routes) if routes.len() == 1 && routes[0].filter.is_some()
        ));
        assert!(
            WorkloadTelemetry::compile(
                Some(&v1::WorkloadTelemetry {
                    access_logging: vec![v1::AccessLogging {
                        filter: "((".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                &LogProviders::default()
            )
            .is_err()
        );
    }

    fn log(providers: &[&str], filter: &str, mode: v1::WorkloadMode) -> v1::AccessLogging {
        v1::AccessLogging {
            providers: providers.iter().map(|p| p.to_string()).collect(),
            filter: filter.into(),
            mode: mode as i32,
            disabled: false,
        }
    }

    /// A MeshConfig with a file provider (`audit`), an OpenTelemetry collector (`otel-als`)
    /// and the built-in `envoy`, and `defaults` as `defaultProviders.accessLogging`.
    fn mesh_providers(defaults: &[&str]) -> (LogProviders, tempfile::TempDir) {
        use v1::access_log_provider::{File, Kind, OpenTelemetry};
        let dir = tempfile::tempdir().unwrap();
        let mesh = v1::MeshConfig {
            access_log_providers: vec![
                v1::AccessLogProvider {
                    name: "envoy".into(),
                    kind: Some(Kind::File(File {
                        path: "/dev/stdout".into(),
                        format: None,
                    })),
                },
                v1::AccessLogProvider {
                    name: "audit".into(),
                    kind: Some(Kind::File(File {
                        path: dir.path().join("audit.log").display().to_string(),
                        format: None,
                    })),
                },
                v1::AccessLogProvider {
                    name: "otel-als".into(),
                    kind: Some(Kind::Opentelemetry(OpenTelemetry {
                        service: "127.0.0.1".into(),
                        port: 4317,
                        log_name: String::new(),
                        format: None,
                    })),
                },
            ],
            default_access_log_providers: defaults.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        };
        let p = LogProviders::build(
            Some(&mesh),
            &crate::telemetry::trace::LocalTags::default(),
            &Default::default(),
            None,
        )
        .unwrap();
        (p, dir)
    }

    /// The kinds of `reporter`'s destinations, with whether each is filtered.
    fn routes(t: &WorkloadTelemetry, reporter: Reporter) -> Option<Vec<(&'static str, bool)>> {
        use crate::telemetry::access_log::providers::Destination;
        match t.access_logging(reporter) {
            AccessLogging::Default => None,
            AccessLogging::Off => Some(Vec::new()),
            AccessLogging::On(routes) => Some(
                routes
                    .iter()
                    .map(|r| {
                        let kind = match r.destination {
                            Destination::Own => "own",
                            Destination::File(_) => "file",
                            Destination::Otel(_) => "otel",
                        };
                        (kind, r.filter.is_some())
                    })
                    .collect(),
            ),
        }
    }

    #[tokio::test]
    async fn each_provider_an_entry_names_gets_the_line_with_its_own_filter() {
        use v1::WorkloadMode as Side;
        let (providers, _dir) = mesh_providers(&[]);
        let pushed = v1::WorkloadTelemetry {
            access_logging: vec![
                log(&["envoy"], "", Side::ClientAndServer),
                log(&["otel-als"], "response.code >= 400", Side::ClientAndServer),
                log(&["audit"], "", Side::Server),
                log(&["nowhere"], "", Side::Client),
            ],
            ..Default::default()
        };
        let t = WorkloadTelemetry::compile(Some(&pushed), &providers).unwrap();
        assert_eq!(
            routes(&t, Reporter::Source),
            Some(vec![("own", false), ("otel", true)]),
            "a provider the mesh does not define gets nothing"
        );
        assert_eq!(
            routes(&t, Reporter::Destination),
            Some(vec![("own", false), ("otel", true), ("file", false)])
        );
        let only_missing = v1::WorkloadTelemetry {
            access_logging: vec![log(&["nowhere"], "", Side::ClientAndServer)],
            ..Default::default()
        };
        let t = WorkloadTelemetry::compile(Some(&only_missing), &providers).unwrap();
        assert_eq!(routes(&t, Reporter::Source), Some(vec![]), "off");
    }

    #[tokio::test]
    async fn without_telemetry_the_mesh_default_providers_log_every_request() {
        let (providers, _dir) = mesh_providers(&["otel-als"]);
        let t = WorkloadTelemetry::compile(None, &providers).unwrap();
        for r in [Reporter::Source, Reporter::Destination] {
            assert_eq!(routes(&t, r), Some(vec![("otel", false)]));
        }
        // An entry without providers is for the default ones.
        let pushed = v1::WorkloadTelemetry {
            access_logging: vec![log(&[], "response.code >= 500", v1::WorkloadMode::Server)],
            ..Default::default()
        };
        let t = WorkloadTelemetry::compile(Some(&pushed), &providers).unwrap();
        assert_eq!(
            routes(&t, Reporter::Destination),
            Some(vec![("otel", true)])
        );
        assert_eq!(
            routes(&t, Reporter::Source),
            Some(vec![("otel", false)]),
            "a reporter no entry covers keeps the default"
        );
        // No default providers: the proxy's own setting, as before.
        let (none, _dir) = mesh_providers(&[]);
        let t = WorkloadTelemetry::compile(None, &none).unwrap();
        assert_eq!(routes(&t, Reporter::Source), None);
        let t = WorkloadTelemetry::compile(Some(&pushed), &none).unwrap();
        assert_eq!(routes(&t, Reporter::Destination), Some(vec![("own", true)]));
    }
}
