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
    /// Whether some destination has a filter (the request's headers are then kept for it).
    pub fn filtered(&self) -> bool {
        match self {
            LogRoutes::Own => false,
            LogRoutes::Routed(routes) => routes.iter().any(|r| r.filter.is_some()),
        }
    }
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
    by_name: HashMap<String, Destination>,
    /// `defaultProviders.accessLogging`.
    defaults: Vec<String>,
    /// The destinations made, by what they write to.
    made: HashMap<Sink, Destination>,
}

impl LogProviders {
    /// The providers of `mesh`, keeping `prev`'s writers and exporters that still apply.
    /// `local` names this sidecar in the records sent to collectors. A file that cannot be
    /// opened is warned about and its lines are counted as failed writes; a provider with
    /// no usable port is left out (validation refuses both before a push).
    pub fn build(
        mesh: Option<&v1::MeshConfig>,
        local: &LocalTags,
        stats: &AccessLogStats,
        prev: Option<&LogProviders>,
    ) -> Self {
        let mut out = LogProviders {
            defaults: mesh
                .map(|m| m.default_access_log_providers.clone())
                .unwrap_or_default(),
            ..Default::default()
        };
        for p in mesh.iter().flat_map(|m| &m.access_log_providers) {
            use v1::access_log_provider::Kind;
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
            out.by_name.insert(p.name.to_ascii_lowercase(), destination);
        }
        out
    }

    /// The destination of provider `name`: `""` is the sidecar's own default, `envoy` is
    /// standard output unless the MeshConfig defines its own; `None`: no such provider (its
    /// lines go nowhere, as in Istio).
    pub fn destination(&self, name: &str) -> Option<Destination> {
        if name.is_empty() {
            return Some(Destination::Own);
        }
        let name = name.to_ascii_lowercase();
        match self.by_name.get(&name) {
            Some(d) => Some(d.clone()),
            None => (name == BUILT_IN_PROVIDER).then_some(Destination::Own),
        }
    }

    /// `defaultProviders.accessLogging`: where lines go when no Telemetry entry says (empty:
    /// the sidecar's own `--access-log` setting).
    pub fn defaults(&self) -> &[String] {
        &self.defaults
    }
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
            kind: Some(Kind::File(File { path: path.into() })),
        }
    }

    fn otel(name: &str, port: u32) -> v1::AccessLogProvider {
        v1::AccessLogProvider {
            name: name.into(),
            kind: Some(Kind::Opentelemetry(OpenTelemetry {
                service: "collector.monitoring".into(),
                port,
                log_name: String::new(),
            })),
        }
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
        let p = LogProviders::build(Some(&m), &local, &stats, None);
        assert!(matches!(p.destination("envoy"), Some(Destination::Own)));
        assert!(matches!(p.destination(""), Some(Destination::Own)));
        assert!(matches!(
            p.destination("audit-file"),
            Some(Destination::File(_))
        ));
        let Some(Destination::Otel(sink)) = p.destination("OTEL-ALS") else {
            panic!("otel-als is an OpenTelemetry collector");
        };
        assert_eq!(sink.collector().log_name, "otel_envoy_accesslog");
        assert!(p.destination("no-port").is_none(), "left out");
        assert!(p.destination("nowhere").is_none());
        assert_eq!(p.defaults(), ["otel-als"]);

        // The next push keeps the exporter (same queue) for the same collector.
        let next = LogProviders::build(Some(&m), &local, &stats, Some(&p));
        let Some(Destination::Otel(kept)) = next.destination("otel-als") else {
            panic!("still a collector");
        };
        assert!(kept.same_queue(&sink));
    }

    #[test]
    fn without_a_mesh_config_envoy_and_the_default_are_the_sidecars_own_log() {
        let p = LogProviders::build(None, &LocalTags::default(), &Default::default(), None);
        assert!(matches!(p.destination("envoy"), Some(Destination::Own)));
        assert!(matches!(p.destination(""), Some(Destination::Own)));
        assert!(p.destination("otel-als").is_none());
        assert!(p.defaults().is_empty());
    }

    #[test]
    fn a_file_that_cannot_be_opened_counts_its_lines_as_failed_writes() {
        let m = mesh(vec![file("broken", "/nonexistent-dir/meshlite/access.log")]);
        let stats = AccessLogStats::default();
        let p = LogProviders::build(Some(&m), &LocalTags::default(), &stats, None);
        let Some(Destination::File(log)) = p.destination("broken") else {
            panic!("a file destination");
        };
        log.send("{}".into());
        assert_eq!(stats.write_failed.get(), 1);
    }
}
