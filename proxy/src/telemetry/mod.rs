//! Telemetry: Istio-compatible Prometheus metrics, JSON access logs and distributed traces.

pub mod access_log;
pub mod attributes;
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
pub mod tag_overrides;
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
    /// Standard output's access log, started the first time a line goes to the sidecar's
    /// own log (Istio's `envoy` provider) while it was started without `--access-log`.
    pub stdout_log: std::sync::OnceLock<Option<access_log::AccessLog>>,
}

impl Telemetry {
    /// Where `reporter`'s lines go under the Telemetry settings `t`, with the filters they
    /// pass; `None`: not logged. Costs nothing more than a match when lines are off.
    pub fn access_log_for(
        &self,
        t: &workload::WorkloadTelemetry,
        reporter: workload::Reporter,
    ) -> Option<access_log::providers::LogRoutes> {
        use access_log::providers::LogRoutes;
        use workload::AccessLogging;
        match t.access_logging(reporter) {
            AccessLogging::Off => None,
            AccessLogging::Default => self.access_log.as_ref().map(|_| LogRoutes::Own),
            AccessLogging::On(routes) => Some(LogRoutes::Routed(routes.clone())),
        }
    }

    /// The sidecar's own log: its `--access-log` target, else standard output (started on
    /// first use).
    pub fn own_log(&self) -> Option<&access_log::AccessLog> {
        self.access_log.as_ref().or_else(|| {
            self.stdout_log
                .get_or_init(|| {
                    let stats = &self.metrics.access_log;
                    access_log::AccessLog::start_counting(
                        access_log::AccessLogTarget::Stdout,
                        stats.queue_full.clone(),
                        stats.write_failed.clone(),
                    )
                    .ok()
                })
                .as_ref()
        })
    }

    /// Sends a complete line to each of its destinations whose filter it passes: to files
    /// and standard output the provider's format, or the JSON line (serialised once), to
    /// OpenTelemetry collectors the entry itself with the provider's format (their export
    /// tasks make the records).
    pub fn deliver(&self, mut entry: Box<access_log::AccessLogEntry>) {
        use access_log::providers::{Destination, LogRoutes};
        use std::sync::Arc;
        let routes = match std::mem::take(&mut entry.routes) {
            LogRoutes::Own => {
                if let Some(log) = self.own_log() {
                    log.log(&entry);
                }
                return;
            }
            LogRoutes::Routed(routes) => routes,
        };
        let mut json: Option<String> = None;
        let mut line = |entry: &access_log::AccessLogEntry,
                        format: &Option<Arc<access_log::format::LineFormat>>|
         -> Option<String> {
            match format {
                Some(f) => Some(f.line(entry)),
                None => {
                    if json.is_none() {
                        json = serde_json::to_string(entry).ok();
                    }
                    json.clone()
                }
            }
        };
        // Routes of one entry usually share its filter: evaluated once.
        let mut last: Option<(&Arc<workload::LogFilter>, bool)> = None;
        let mut collector: Option<(&access_log::otlp::OtelLogSink, _)> = None;
        for route in routes.iter() {
            let passes = match (&route.filter, last) {
                (None, _) => true,
                (Some(f), Some((seen, verdict))) if Arc::ptr_eq(f, seen) => verdict,
                (Some(f), _) => {
                    let verdict = entry.passes(Some(f));
                    last = Some((f, verdict));
                    verdict
                }
            };
            if !passes {
                continue;
            }
            match &route.destination {
                Destination::Own => {
                    if let (Some(log), Some(l)) = (self.own_log(), line(&entry, &route.format)) {
                        log.send(l);
                    }
                }
                Destination::File(log) => {
                    if let Some(l) = line(&entry, &route.format) {
                        log.send(l);
                    }
                }
                Destination::Otel(sink) => {
                    // The last collector takes the entry itself; any other gets a copy.
                    if let Some((other, format)) = collector.replace((sink, route.format.clone())) {
                        other.submit(Box::new((*entry).clone()), format);
                    }
                }
            }
        }
        if let Some((sink, format)) = collector {
            sink.submit(entry, format);
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

#[cfg(test)]
mod tests {
    use super::access_log::otlp::{LogCollector, OtelLogSink};
    use super::access_log::providers::{Destination, LogRoute, LogRoutes};
    use super::access_log::{AccessLog, AccessLogEntry, AccessLogTarget};
    use super::*;
    use std::sync::Arc;

    fn telemetry() -> Telemetry {
        Telemetry {
            metrics: metrics::Metrics::new(),
            access_log: None,
            audit: crate::policy::audit::AuditLog::new(None, false),
            stdout_log: std::sync::OnceLock::new(),
        }
    }

    fn entry(code: u16, id: &str, routes: &LogRoutes) -> Box<AccessLogEntry> {
        Box::new(AccessLogEntry {
            response_code: code,
            request_id: Some(id.into()),
            routes: routes.clone(),
            request_headers: routes.reads_request_headers().then(Vec::new),
            ..Default::default()
        })
    }

    #[test]
    fn a_line_goes_to_every_provider_whose_filter_it_passes() {
        let t = telemetry();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let file = AccessLog::start(
            AccessLogTarget::File(path.clone()),
            t.metrics.access_log.queue_full.clone(),
        )
        .unwrap();
        let stats = &t.metrics.access_log;
        let (first, mut first_rx) = OtelLogSink::queue(LogCollector::new("a", 4317, ""), stats, 8);
        let (second, mut second_rx) =
            OtelLogSink::queue(LogCollector::new("b", 4317, ""), stats, 8);
        let errors = Arc::new(workload::LogFilter::compile("response.code >= 400").unwrap());
        let routes = LogRoutes::Routed(
            vec![
                LogRoute {
                    destination: Destination::File(file),
                    format: None,
                    filter: None,
                },
                LogRoute {
                    destination: Destination::Otel(first),
                    format: None,
                    filter: Some(errors.clone()),
                },
                LogRoute {
                    destination: Destination::Otel(second),
                    format: None,
                    filter: Some(errors),
                },
            ]
            .into(),
        );
        t.deliver(entry(200, "ok", &routes));
        t.deliver(entry(503, "failed", &routes));
        for rx in [&mut first_rx, &mut second_rx] {
            let got = rx.try_recv().expect("the failed request").entry;
            assert_eq!(got.request_id.as_deref(), Some("failed"));
            assert!(got.request_headers.is_none(), "nothing kept for the filter");
            assert!(
                matches!(got.routes, LogRoutes::Own),
                "no routes travel along"
            );
            assert!(rx.try_recv().is_err(), "the filter kept the success out");
        }
        // The file has both, as JSON lines.
        let deadline = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        let lines = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 || std::time::SystemTime::now() > deadline {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let ids: Vec<String> = lines
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"].to_string()
            })
            .collect();
        assert_eq!(ids, ["\"ok\"", "\"failed\""]);
    }

    #[test]
    fn without_telemetry_a_proxy_without_an_access_log_logs_nothing() {
        let t = telemetry();
        let w = workload::WorkloadTelemetry::default();
        assert!(t.access_log_for(&w, workload::Reporter::Source).is_none());
    }
}
