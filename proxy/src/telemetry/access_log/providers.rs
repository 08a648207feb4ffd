//! Where access-log lines go: the access-log providers of the pushed MeshConfig (Istio's
//! `extensionProviders` of kind `envoyFileAccessLog` and `envoyOtelAls`, and the built-in
//! `envoy`), each made ready to take lines once per push and kept by the next push while it
//! is unchanged (a file keeps its writer thread, a collector its export task).
//!
//! A Telemetry `accessLogging` entry names providers; each provider it turns on for a
//! reporter becomes a [`LogRoute`] (a [`Destination`] and the entry's filter), and a request
//! logged by that reporter carries the list ([`LogRoutes`], one `Arc` clone). Istio's rules:
//! a provider the MeshConfig does not define gets nothing; an entry without providers uses
//! `defaultProviders.accessLogging`, and without those the sidecar's own default (its
//! `--access-log` target, else standard output). `/dev/stdout` is the container convention:
//! a file provider writing there (the built-in `envoy` is one) writes where the sidecar's own
//! log goes, which is standard output unless the sidecar was started with `--access-log`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use meshlite_xds_proto::v1;

use super::format::{LineFormat, LineFormatError};
use super::otlp::{LogCollector, OtelLogSink};
use super::{AccessLog, AccessLogStats, AccessLogTarget};
use crate::telemetry::trace::LocalTags;
use crate::telemetry::workload::LogFilter;

/// Istio's built-in access-log provider: a file provider writing to standard output.
pub const BUILT_IN_PROVIDER: &str = "envoy";

/// The file that is standard output.
pub const STDOUT_PATH: &str = "/dev/stdout";

/// Where one line goes.
#[derive(Clone, Debug)]
pub enum Destination {
    /// The sidecar's own log: its `--access-log` target, else standard output.
    Own,
    /// A file provider's writer.
    File(AccessLog),
    /// An OpenTelemetry collector.
    Otel(OtelLogSink),
}

/// One destination of a reporter's lines, with the filter a line must pass to reach it.
#[derive(Clone, Debug)]
pub struct LogRoute {
    /// Where.
    pub destination: Destination,
    /// The provider's `logFormat` (`None`: the default fields).
    pub format: Option<Arc<LineFormat>>,
    /// The Telemetry entry's `filter.expression` (`None`: every line).
    pub filter: Option<Arc<LogFilter>>,
}

/// Where one request's line goes.
#[derive(Clone, Debug, Default)]
pub enum LogRoutes {
    /// The sidecar's own log, every line (no Telemetry configures access logging).
    #[default]
    Own,
    /// The destinations chosen by Telemetry resources or the MeshConfig's default providers.
    Routed(Arc<[LogRoute]>),
}

impl LogRoutes {
    /// Whether a filter or a format of some destination reads the request's headers (they
    /// are then kept with the line).
    pub fn reads_request_headers(&self) -> bool {
        match self {
            LogRoutes::Own => false,
            LogRoutes::Routed(routes) => routes.iter().any(|r| {
                r.filter.is_some() || r.format.as_ref().is_some_and(|f| f.reads_request_headers())
            }),
        }
    }

    /// Whether a format of some destination reads the response's headers.
    pub fn reads_response_headers(&self) -> bool {
        match self {
            LogRoutes::Own => false,
            LogRoutes::Routed(routes) => routes.iter().any(|r| {
                r.format
                    .as_ref()
                    .is_some_and(|f| f.reads_response_headers())
            }),
        }
    }
}

/// A provider ready to take lines: where they go and how they are written.
#[derive(Clone, Debug)]
struct Provider {
    destination: Destination,
    format: Option<Arc<LineFormat>>,
}

/// What a provider writes to: a destination is kept by the next push while this is equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Sink {
    File(PathBuf),
    Otel(LogCollector),
}

/// The MeshConfig's access-log providers, by name, ready to take lines.
#[derive(Debug, Default)]
pub struct LogProviders {
    /// By lowercase name (Istio looks providers up case-insensitively).
    by_name: HashMap<String, Provider>,
    /// `defaultProviders.accessLogging`.
    defaults: Vec<String>,
    /// The destinations made, by what they write to.
    made: HashMap<Sink, Destination>,
}

impl LogProviders {
    /// The providers of `mesh`, keeping `prev`'s writers and exporters that still apply.
    /// `local` names this sidecar in the records sent to collectors. A file that cannot be
    /// opened is warned about and its lines are counted as failed writes; a provider with
    /// no usable port is left out (validation refuses both before a push). A `logFormat`
    /// that does not compile refuses the push.
    pub fn build(
        mesh: Option<&v1::MeshConfig>,
        local: &LocalTags,
        stats: &AccessLogStats,
        prev: Option<&LogProviders>,
    ) -> Result<Self, ProviderError> {
        let mut out = LogProviders {
            defaults: mesh
                .map(|m| m.default_access_log_providers.clone())
                .unwrap_or_default(),
            ..Default::default()
        };
        for p in mesh.iter().flat_map(|m| &m.access_log_providers) {
            use v1::access_log_provider::Kind;
            let format = match &p.kind {
                Some(Kind::File(v1::access_log_provider::File { format, .. }))
                | Some(Kind::Opentelemetry(v1::access_log_provider::OpenTelemetry {
                    format,
                    ..
                })) => format.as_ref(),
                None => None,
            };
            let format = format
                .map(LineFormat::compile)
                .transpose()
                .map_err(|source| ProviderError {
                    provider: p.name.clone(),
                    source,
                })?
                .flatten()
                .map(Arc::new);
            let sink = match &p.kind {
                Some(Kind::File(f)) if f.path == STDOUT_PATH => None,
                Some(Kind::File(f)) => Some(Sink::File(PathBuf::from(&f.path))),
                Some(Kind::Opentelemetry(o)) => {
                    let Some(port) = u16::try_from(o.port).ok().filter(|p| *p != 0) else {
                        tracing::warn!(provider = %p.name, port = o.port, "access log provider left out: not a port");
                        continue;
                    };
                    Some(Sink::Otel(LogCollector::new(&o.service, port, &o.log_name)))
                }
                None => continue,
            };
            let destination = match sink {
                None => Destination::Own,
                Some(sink) => {
                    let kept = out
                        .made
                        .get(&sink)
                        .or_else(|| prev.and_then(|p| p.made.get(&sink)))
                        .cloned();
                    let Some(d) = kept.or_else(|| make(&sink, &p.name, local, stats)) else {
                        continue;
                    };
                    out.made.insert(sink, d.clone());
                    d
                }
            };
            out.by_name.insert(
                p.name.to_ascii_lowercase(),
                Provider {
                    destination,
                    format,
                },
            );
        }
        Ok(out)
    }

    /// The route of provider `name`'s lines that pass `filter`: `""` is the sidecar's own
    /// default, `envoy` is standard output unless the MeshConfig defines its own; `None`: no
    /// such provider (its lines go nowhere, as in Istio).
    pub fn route(&self, name: &str, filter: Option<Arc<LogFilter>>) -> Option<LogRoute> {
        let own = || LogRoute {
            destination: Destination::Own,
            format: None,
            filter: filter.clone(),
        };
        if name.is_empty() {
            return Some(own());
        }
        let name = name.to_ascii_lowercase();
        match self.by_name.get(&name) {
            Some(p) => Some(LogRoute {
                destination: p.destination.clone(),
                format: p.format.clone(),
                filter,
            }),
            None => (name == BUILT_IN_PROVIDER).then(own),
        }
    }

    /// `defaultProviders.accessLogging`: where lines go when no Telemetry entry says (empty:
    /// the sidecar's own `--access-log` setting).
    pub fn defaults(&self) -> &[String] {
        &self.defaults
    }
}

/// A provider whose `logFormat` does not compile.
#[derive(Debug, thiserror::Error)]
#[error("access log provider {provider:?}: logFormat {source}")]
pub struct ProviderError {
    /// The provider's name.
    pub provider: String,
    /// Why its format was refused.
    #[source]
    pub source: LineFormatError,
}

/// Starts what writes to `sink`; `None` when an exporter cannot start (outside a runtime).
fn make(
    sink: &Sink,
    provider: &str,
    local: &LocalTags,
    stats: &AccessLogStats,
) -> Option<Destination> {
    match sink {
        Sink::File(path) => {
            let target = AccessLogTarget::File(path.clone());
            let log = AccessLog::start_counting(
                target,
                stats.queue_full.clone(),
                stats.write_failed.clone(),
            )
            .unwrap_or_else(|e| {
                tracing::warn!(provider, path = %path.display(), "access log file cannot be opened, its lines are dropped: {e}");
                AccessLog::failed(stats.write_failed.clone())
            });
            Some(Destination::File(log))
        }
        Sink::Otel(collector) => {
            OtelLogSink::start(collector.clone(), local, stats).map(Destination::Otel)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use v1::access_log_provider::{File, Kind, OpenTelemetry};

    fn file(name: &str, path: &str) -> v1::AccessLogProvider {
        v1::AccessLogProvider {
            name: name.into(),
            kind: Some(Kind::File(File {
                path: path.into(),
                format: None,
            })),
        }
    }

    fn otel(name: &str, port: u32) -> v1::AccessLogProvider {
        v1::AccessLogProvider {
            name: name.into(),
            kind: Some(Kind::Opentelemetry(OpenTelemetry {
                service: "collector.monitoring".into(),
                port,
                log_name: String::new(),
                format: None,
            })),
        }
    }

    fn destination(p: &LogProviders, name: &str) -> Option<Destination> {
        p.route(name, None).map(|r| r.destination)
    }

    fn mesh(providers: Vec<v1::AccessLogProvider>) -> v1::MeshConfig {
        v1::MeshConfig {
            access_log_providers: providers,
            default_access_log_providers: vec!["otel-als".into()],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn providers_become_destinations_and_a_push_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let m = mesh(vec![
            file("envoy", STDOUT_PATH),
            file("Audit-File", path.to_str().unwrap()),
            otel("otel-als", 4317),
            otel("no-port", 0),
        ]);
        let stats = AccessLogStats::default();
        let local = LocalTags::default();
        let p = LogProviders::build(Some(&m), &local, &stats, None).unwrap();
        assert!(matches!(destination(&p, "envoy"), Some(Destination::Own)));
        assert!(matches!(destination(&p, ""), Some(Destination::Own)));
        assert!(matches!(
            destination(&p, "audit-file"),
            Some(Destination::File(_))
        ));
        let Some(Destination::Otel(sink)) = destination(&p, "OTEL-ALS") else {
            panic!("otel-als is an OpenTelemetry collector");
        };
        assert_eq!(sink.collector().log_name, "otel_envoy_accesslog");
        assert!(destination(&p, "no-port").is_none(), "left out");
        assert!(destination(&p, "nowhere").is_none());
        assert_eq!(p.defaults(), ["otel-als"]);

        // The next push keeps the exporter (same queue) for the same collector.
        let next = LogProviders::build(Some(&m), &local, &stats, Some(&p)).unwrap();
        let Some(Destination::Otel(kept)) = destination(&next, "otel-als") else {
            panic!("still a collector");
        };
        assert!(kept.same_queue(&sink));
    }

    #[test]
    fn without_a_mesh_config_envoy_and_the_default_are_the_sidecars_own_log() {
        let p =
            LogProviders::build(None, &LocalTags::default(), &Default::default(), None).unwrap();
        assert!(matches!(destination(&p, "envoy"), Some(Destination::Own)));
        assert!(matches!(destination(&p, ""), Some(Destination::Own)));
        assert!(destination(&p, "otel-als").is_none());
        assert!(p.defaults().is_empty());
    }

    #[test]
    fn a_file_that_cannot_be_opened_counts_its_lines_as_failed_writes() {
        let m = mesh(vec![file("broken", "/nonexistent-dir/meshlite/access.log")]);
        let stats = AccessLogStats::default();
        let p = LogProviders::build(Some(&m), &LocalTags::default(), &stats, None).unwrap();
        let Some(Destination::File(log)) = destination(&p, "broken") else {
            panic!("a file destination");
        };
        log.send("{}".into());
        assert_eq!(stats.write_failed.get(), 1);
    }

    #[test]
    fn a_providers_format_goes_with_its_routes_and_a_broken_one_refuses_the_push() {
        let format = |text: &str| v1::LogFormat {
            text: text.into(),
            labels: Default::default(),
        };
        let with_format = |f: v1::LogFormat| {
            mesh(vec![v1::AccessLogProvider {
                name: "custom".into(),
                kind: Some(Kind::File(File {
                    path: STDOUT_PATH.into(),
                    format: Some(f),
                })),
            }])
        };
        let stats = AccessLogStats::default();
        let local = LocalTags::default();
        let m = with_format(format("%REQ(X-TENANT)% %RESPONSE_CODE%"));
        let p = LogProviders::build(Some(&m), &local, &stats, None).unwrap();
        let route = p.route("custom", None).unwrap();
        let routes = LogRoutes::Routed(vec![route.clone()].into());
        assert!(route.format.is_some());
        assert!(
            routes.reads_request_headers(),
            "x-tenant is kept for the format"
        );
        assert!(!routes.reads_response_headers());
        assert!(p.route("envoy", None).unwrap().format.is_none());

        let broken = with_format(format("%REQ(X-TENANT) 100%"));
        let err = LogProviders::build(Some(&broken), &local, &stats, None).unwrap_err();
        assert!(err.to_string().contains("\"custom\""), "{err}");
    }
}
