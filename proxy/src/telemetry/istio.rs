//! Istio's standard metrics (SEMANTICS 7.1), both reporters, with every standard label:
//! `istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes`,
//! `istio_response_bytes`, `istio_request_messages_total` / `istio_response_messages_total`
//! (gRPC), and the four `istio_tcp_*` families.
//!
//! A label set is two workload halves ([`WorkloadMetadata`], shared with the snapshot), the
//! destination service and a few statics, so recording clones a handful of `Arc`s. The
//! series live in [`SeriesMap`]s (made on first use, swept when idle, capped) and are
//! encoded by a collector, so what a scrape shows is exactly what is held.

use std::sync::Arc;

use crate::telemetry::prom::Counter;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::histogram::Histogram;

use super::labels::DestinationService;
use super::metrics::Label;
use super::peer::WorkloadMetadata;
use super::series::{SeriesLimits, SeriesMap};
use crate::message::response_flags::ResponseFlags;

/// Envoy's default histogram buckets (Istio uses them unchanged for durations in
/// milliseconds and for sizes in bytes).
pub const DEFAULT_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's `request_protocol` of TCP connections.
pub const TCP: &str = "tcp";

/// A set of standard metrics (by [`meshlite_xds_proto::v1::MetricSelector`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricSet(u16);

impl MetricSet {
    /// No metric.
    pub const NONE: MetricSet = MetricSet(0);

    /// The metrics `selector` names (`ALL_METRICS`: every one).
    pub fn of(selector: meshlite_xds_proto::v1::MetricSelector) -> Self {
        match selector {
            meshlite_xds_proto::v1::MetricSelector::AllMetrics => MetricSet(0x7fe),
            other => MetricSet(1 << (other as u16)),
        }
    }

    /// Whether `metric` is in the set.
    pub fn contains(self, metric: meshlite_xds_proto::v1::MetricSelector) -> bool {
        let m = Self::of(metric).0;
        self.0 & m == m
    }

    /// The metrics in either set.
    pub fn union(self, other: MetricSet) -> Self {
        MetricSet(self.0 | other.0)
    }

    /// The standard metrics not in the set.
    pub fn complement(self) -> Self {
        MetricSet(!self.0 & Self::of(meshlite_xds_proto::v1::MetricSelector::AllMetrics).0)
    }

    /// The set with `other` added (`on`) or taken out.
    pub fn with(self, other: MetricSet, on: bool) -> Self {
        if on {
            MetricSet(self.0 | other.0)
        } else {
            MetricSet(self.0 & !other.0)
        }
    }
}

/// Istio's standard labels of one request or connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct IstioLabels {
    /// `source` (client sidecar) or `destination` (server sidecar).
    pub reporter: &'static str,
    /// The calling workload.
    pub source: Arc<WorkloadMetadata>,
    /// The caller's principal (SPIFFE ID without scheme), `unknown` when not known.
    pub source_principal: Label,
    /// The called workload.
    pub destination: Arc<WorkloadMetadata>,
    /// The called workload's principal.
    pub destination_principal: Label,
    /// The destination service.
    pub service: Arc<DestinationService>,
    /// `http`, `grpc` or `tcp`.
    pub request_protocol: &'static str,
    /// HTTP status, `0` when no response was produced (not a label of TCP metrics).
    pub response_code: u16,
    /// gRPC status for gRPC requests, empty otherwise (not a label of TCP metrics).
    pub grpc_response_status: &'static str,
    /// Envoy response flags, `-` when none.
    pub response_flags: ResponseFlags,
    /// `mutual_tls` / `none` on destination reports, `unknown` on source reports.
    pub connection_security_policy: &'static str,
    /// What a Telemetry resource's `tagOverrides` changed; `None`: the standard labels.
    pub tags: Option<Arc<TagValues>>,
}

/// The standard label names, in the order they are printed (a `tagOverrides` removal is a
/// bit at the name's index).
pub const STANDARD_LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// The labels a Telemetry resource's `tagOverrides` changed on one label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct TagValues {
    /// Which override group made them: label sets of different groups are different series
    /// even when their values agree (each group records into its own metrics).
    pub group: u8,
    /// Standard labels not printed, a bit per [`STANDARD_LABELS`] index.
    pub removed: u32,
    /// Labels added (or standard ones given a new value), printed after the standard ones.
    pub extra: Vec<(Arc<str>, String)>,
}

/// Encodes label `index` of [`STANDARD_LABELS`] unless `removed` has its bit.
fn label<V: prometheus_client::encoding::EncodeLabelValue>(
    e: &mut LabelSetEncoder,
    removed: u32,
    index: usize,
    value: V,
) -> Result<(), std::fmt::Error> {
    if removed & (1 << index) != 0 {
        return Ok(());
    }
    (STANDARD_LABELS[index], value).encode(e.encode_label())
}

impl EncodeLabelSet for IstioLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let (s, d) = (&*self.source, &*self.destination);
        let r = self.tags.as_ref().map_or(0, |t| t.removed);
        label(e, r, 0, self.reporter)?;
        label(e, r, 1, &*s.workload)?;
        label(e, r, 2, &*s.namespace)?;
        label(e, r, 3, &*self.source_principal)?;
        label(e, r, 4, &*s.app)?;
        label(e, r, 5, &*s.version)?;
        label(e, r, 6, &*s.canonical_service)?;
        label(e, r, 7, &*s.canonical_revision)?;
        label(e, r, 8, &*s.cluster)?;
        label(e, r, 9, &*d.workload)?;
        label(e, r, 10, &*d.namespace)?;
        label(e, r, 11, &*self.destination_principal)?;
        label(e, r, 12, &*d.app)?;
        label(e, r, 13, &*d.version)?;
        label(e, r, 14, &*self.service.fqdn)?;
        label(e, r, 15, &*self.service.name)?;
        label(e, r, 16, &*self.service.namespace)?;
        label(e, r, 17, &*d.canonical_service)?;
        label(e, r, 18, &*d.canonical_revision)?;
        label(e, r, 19, &*d.cluster)?;
        label(e, r, 20, self.request_protocol)?;
        if self.request_protocol != TCP {
            label(e, r, 21, self.response_code)?;
            label(e, r, 22, self.grpc_response_status)?;
        }
        label(e, r, 23, self.response_flags)?;
        label(e, r, 24, self.connection_security_policy)?;
        if let Some(t) = &self.tags {
            for (name, value) in &t.extra {
                (&**name, value.as_str()).encode(e.encode_label())?;
            }
        }
        Ok(())
    }
}

/// What one finished request adds to its series.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RequestSample {
    /// From the request's first byte to the end of the response stream.
    pub duration_ms: f64,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// gRPC messages in the request body (gRPC only).
    pub request_messages: u64,
    /// gRPC messages in the response body (gRPC only).
    pub response_messages: u64,
}

/// The series of one request label set: each family the Telemetry settings in force when
/// it was made did not turn off.
#[derive(Debug)]
pub struct RequestSeries {
    requests: Option<Counter>,
    duration: Option<Histogram>,
    request_bytes: Option<Histogram>,
    response_bytes: Option<Histogram>,
    /// gRPC only.
    request_messages: Option<Counter>,
    /// gRPC only.
    response_messages: Option<Counter>,
}

impl RequestSeries {
    fn new(grpc: bool, skipped: MetricSet) -> Self {
        use meshlite_xds_proto::v1::MetricSelector as M;
        let on = |m: M| !skipped.contains(m);
        Self {
            requests: on(M::RequestCount).then(Counter::default),
            duration: on(M::RequestDuration).then(|| Histogram::new(DEFAULT_BUCKETS)),
            request_bytes: on(M::RequestSize).then(|| Histogram::new(DEFAULT_BUCKETS)),
            response_bytes: on(M::ResponseSize).then(|| Histogram::new(DEFAULT_BUCKETS)),
            request_messages: (grpc && on(M::GrpcRequestMessages)).then(Counter::default),
            response_messages: (grpc && on(M::GrpcResponseMessages)).then(Counter::default),
        }
    }

    fn record(&self, s: &RequestSample) {
        if let Some(c) = &self.requests {
            c.inc();
        }
        if let Some(h) = &self.duration {
            h.observe(s.duration_ms);
        }
        if let Some(h) = &self.request_bytes {
            h.observe(s.request_bytes as f64);
        }
        if let Some(h) = &self.response_bytes {
            h.observe(s.response_bytes as f64);
        }
        if let Some(c) = &self.request_messages {
            c.inc_by(s.request_messages);
        }
        if let Some(c) = &self.response_messages {
            c.inc_by(s.response_messages);
        }
    }
}

/// The series of one TCP label set: each family the Telemetry settings in force when it was
/// made did not turn off.
#[derive(Debug, Default)]
pub struct TcpSeries {
    opened: Option<Counter>,
    closed: Option<Counter>,
    sent: Option<Counter>,
    received: Option<Counter>,
}

impl TcpSeries {
    fn new(skipped: MetricSet) -> Self {
        use meshlite_xds_proto::v1::MetricSelector as M;
        let on = |m: M| (!skipped.contains(m)).then(Counter::default);
        Self {
            opened: on(M::TcpOpenedConnections),
            closed: on(M::TcpClosedConnections),
            sent: on(M::TcpSentBytes),
            received: on(M::TcpReceivedBytes),
        }
    }
}

/// A TCP connection's labels and the families its reporter records.
#[derive(Clone, Debug)]
pub struct TcpReport {
    /// Istio's labels (`request_protocol="tcp"`).
    pub labels: IstioLabels,
    /// Families a Telemetry resource turned off for this reporter (or that `tagged` label
    /// sets take).
    pub skipped: MetricSet,
    /// The label sets `tagOverrides` made, each with the families it does not record
    /// ([`crate::telemetry::tag_overrides::TagOverrides::tcp_report`]); empty without them.
    pub tagged: Vec<(IstioLabels, MetricSet)>,
}

impl TcpReport {
    /// The report of `labels`, minus the families `skipped`, without tag overrides.
    pub fn new(labels: IstioLabels, skipped: MetricSet) -> Self {
        Self {
            labels,
            skipped,
            tagged: Vec::new(),
        }
    }
}

/// What happened to a TCP connection, for its series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpEvent {
    /// It opened.
    Opened,
    /// It closed after relaying `received` bytes in the request direction and `sent` back.
    Closed {
        /// Bytes from the caller.
        received: u64,
        /// Bytes to the caller.
        sent: u64,
    },
}

impl TcpEvent {
    /// A close with nothing relayed either way.
    pub const CLOSED_EMPTY: TcpEvent = TcpEvent::Closed {
        received: 0,
        sent: 0,
    };
}

/// Istio's standard families, held and encoded.
#[derive(Debug)]
pub struct IstioMetrics {
    requests: SeriesMap<IstioLabels, RequestSeries>,
    tcp: SeriesMap<IstioLabels, TcpSeries>,
}

impl IstioMetrics {
    /// Empty families bounded by `limits` each, counting records dropped at the cap in
    /// `dropped`.
    pub fn new(limits: SeriesLimits, dropped: Counter) -> Self {
        Self {
            requests: SeriesMap::new(limits, dropped.clone()),
            tcp: SeriesMap::new(limits, dropped),
        }
    }

    /// Records one finished request, except in the families `skipped` names.
    pub fn record_request(&self, labels: &IstioLabels, sample: &RequestSample, skipped: MetricSet) {
        use meshlite_xds_proto::v1::MetricSelector as M;
        let request_families = [
            M::RequestCount,
            M::RequestDuration,
            M::RequestSize,
            M::ResponseSize,
            M::GrpcRequestMessages,
            M::GrpcResponseMessages,
        ];
        if request_families.iter().all(|m| skipped.contains(*m)) {
            return;
        }
        let grpc = labels.request_protocol == "grpc";
        self.requests.with(
            labels,
            || RequestSeries::new(grpc, skipped),
            |s| s.record(sample),
        );
    }

    /// Records a TCP connection opening or closing, under each of its label sets.
    pub fn record_tcp(&self, report: &TcpReport, event: TcpEvent) {
        let inc = |c: &Option<Counter>, by: u64| {
            if let Some(c) = c {
                c.inc_by(by);
            }
        };
        let sets = std::iter::once((&report.labels, report.skipped))
            .chain(report.tagged.iter().map(|(l, s)| (l, *s)));
        for (labels, skipped) in sets {
            if skipped == MetricSet::of(meshlite_xds_proto::v1::MetricSelector::AllMetrics) {
                continue;
            }
            let make = || TcpSeries::new(skipped);
            self.tcp.with(labels, make, |s| match event {
                TcpEvent::Opened => inc(&s.opened, 1),
                TcpEvent::Closed { received, sent } => {
                    inc(&s.closed, 1);
                    inc(&s.received, received);
                    inc(&s.sent, sent);
                }
            });
        }
    }

    /// Records a connection that ended before any byte was relayed: opened and closed, no
    /// bytes (refused, unreachable, or closed by policy).
    pub fn record_tcp_unrelayed(&self, report: &TcpReport) {
        self.record_tcp(report, TcpEvent::Opened);
        self.record_tcp(report, TcpEvent::CLOSED_EMPTY);
    }

    /// Removes the series idle past their limit; returns how many.
    pub fn sweep(&self) -> usize {
        self.requests.sweep() + self.tcp.sweep()
    }

    /// Series held now (request and TCP label sets).
    pub fn len(&self) -> usize {
        self.requests.len() + self.tcp.len()
    }

    /// Whether no series is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One family of the request or TCP map, as encoded.
fn family<V>(
    encoder: &mut DescriptorEncoder,
    map: &SeriesMap<IstioLabels, V>,
    name: &str,
    help: &str,
    metric_type: MetricType,
    metric: impl Fn(&V) -> Option<&dyn EncodeMetric>,
) -> Result<(), std::fmt::Error> {
    let mut any = false;
    map.for_each(|_, v| {
        any |= metric(v).is_some();
        Ok::<(), std::fmt::Error>(())
    })?;
    if !any {
        return Ok(());
    }
    let mut m = encoder.encode_descriptor(name, help, None, metric_type)?;
    map.for_each(|labels, v| match metric(v) {
        Some(metric) => metric.encode(m.encode_family(labels)?),
        None => Ok(()),
    })
}

impl Collector for IstioMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter as C, Histogram as H};
        let r = &self.requests;
        family(
            &mut e,
            r,
            "istio_requests_total",
            "Requests handled",
            C,
            |s| s.requests.as_ref().map(|m| m as &dyn EncodeMetric),
        )?;
        family(
            &mut e,
            r,
            "istio_request_duration_milliseconds",
            "Request duration from first byte received to stream complete",
            H,
            |s| s.duration.as_ref().map(|m| m as &dyn EncodeMetric),
        )?;
        family(
            &mut e,
            r,
            "istio_request_bytes",
            "Request body sizes",
            H,
            |s| s.request_bytes.as_ref().map(|m| m as &dyn EncodeMetric),
        )?;
        family(
            &mut e,
            r,
            "istio_response_bytes",
            "Response body sizes",
            H,
            |s| s.response_bytes.as_ref().map(|m| m as &dyn EncodeMetric),
        )?;
        family(
            &mut e,
            r,
            "istio_request_messages_total",
            "gRPC messages sent by callers",
            C,
            |s| s.request_messages.as_ref().map(|m| m as &dyn EncodeMetric),
        )?;
        family(
            &mut e,
            r,
            "istio_response_messages_total",
            "gRPC messages sent back",
            C,
            |s| s.response_messages.as_ref().map(|m| m as &dyn EncodeMetric),
        )?;
        let t = &self.tcp;
        family(
            &mut e,
            t,
            "istio_tcp_connections_opened_total",
            "TCP connections opened",
            C,
            |s| s.opened.as_ref().map(|m| m as &dyn EncodeMetric),
        )?;
        family(
            &mut e,
            t,
            "istio_tcp_connections_closed_total",
            "TCP connections closed",
            C,
            |s| s.closed.as_ref().map(|m| m as &dyn EncodeMetric),
        )?;
        family(
            &mut e,
            t,
            "istio_tcp_sent_bytes_total",
            "Bytes sent in the response direction",
            C,
            |s| s.sent.as_ref().map(|m| m as &dyn EncodeMetric),
        )?;
        family(
            &mut e,
            t,
            "istio_tcp_received_bytes_total",
            "Bytes received in the request direction",
            C,
            |s| s.received.as_ref().map(|m| m as &dyn EncodeMetric),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::labels::ServiceLabels;
    use crate::telemetry::metrics::Metrics;

    fn workload(name: &str, app: &str, version: &str) -> Arc<WorkloadMetadata> {
        let labels = std::collections::BTreeMap::from([
            ("app".to_string(), app.to_string()),
            ("version".to_string(), version.to_string()),
        ]);
        Arc::new(WorkloadMetadata::from_labels(name, "default", &labels, ""))
    }

    fn labels(protocol: &'static str) -> IstioLabels {
        let s = ServiceLabels::new(
            "reviews.default.svc.cluster.local".into(),
            "reviews".into(),
            "default".into(),
            "cluster.local/ns/default/sa/reviews".into(),
        );
        IstioLabels {
            reporter: "destination",
            source: workload("productpage-v1", "productpage", "v1"),
            source_principal: "cluster.local/ns/default/sa/productpage".into(),
            destination: workload("reviews-v2", "reviews", "v2"),
            destination_principal: s.principal.clone(),
            service: s.service.clone(),
            request_protocol: protocol,
            response_code: 200,
            grpc_response_status: if protocol == "grpc" { "0" } else { "" },
            response_flags: ResponseFlags::NONE,
            connection_security_policy: "mutual_tls",
            tags: None,
        }
    }

    fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn a_request_is_exported_in_every_standard_family_with_every_standard_label() {
        let m = Metrics::new();
        let sample = RequestSample {
            duration_ms: 3.0,
            request_bytes: 20,
            response_bytes: 700,
            ..Default::default()
        };
        m.istio
            .record_request(&labels("http"), &sample, MetricSet::NONE);
        m.istio
            .record_request(&labels("http"), &sample, MetricSet::NONE);
        let text = m.encode();
        let total = lines(&text, "istio_requests_total{");
        assert_eq!(total.len(), 1, "{text}");
        let expected = "istio_requests_total{reporter=\"destination\",\
            source_workload=\"productpage-v1\",source_workload_namespace=\"default\",\
            source_principal=\"cluster.local/ns/default/sa/productpage\",source_app=\"productpage\",\
            source_version=\"v1\",source_canonical_service=\"productpage\",\
            source_canonical_revision=\"v1\",source_cluster=\"Kubernetes\",\
            destination_workload=\"reviews-v2\",destination_workload_namespace=\"default\",\
            destination_principal=\"cluster.local/ns/default/sa/reviews\",destination_app=\"reviews\",\
            destination_version=\"v2\",destination_service=\"reviews.default.svc.cluster.local\",\
            destination_service_name=\"reviews\",destination_service_namespace=\"default\",\
            destination_canonical_service=\"reviews\",destination_canonical_revision=\"v2\",\
            destination_cluster=\"Kubernetes\",request_protocol=\"http\",response_code=\"200\",\
            grpc_response_status=\"\",response_flags=\"-\",\
            connection_security_policy=\"mutual_tls\"} 2";
        assert_eq!(total[0], expected);
        // Envoy's buckets: 700 bytes falls in le="1000".
        let bytes = lines(&text, "istio_response_bytes_bucket{");
        assert_eq!(
            bytes.len(),
            DEFAULT_BUCKETS.len() + 1,
            "one per bucket and +Inf"
        );
        assert!(
            bytes
                .iter()
                .any(|l| l.contains("le=\"500.0\"") && l.ends_with(" 0"))
                && bytes
                    .iter()
                    .any(|l| l.contains("le=\"1000.0\"") && l.ends_with(" 2")),
            "{bytes:?}"
        );
        assert!(text.contains("istio_request_bytes_sum{"));
        assert!(text.contains("istio_request_duration_milliseconds_count{"));
        assert!(
            !text.contains("istio_request_messages"),
            "message counters are for gRPC only"
        );
    }

    #[test]
    fn grpc_requests_count_messages_and_tcp_carries_no_http_labels() {
        let m = Metrics::new();
        let sample = RequestSample {
            request_messages: 1,
            response_messages: 3,
            ..Default::default()
        };
        m.istio
            .record_request(&labels("grpc"), &sample, MetricSet::NONE);
        let tcp = TcpReport::new(labels(TCP), MetricSet::NONE);
        m.istio.record_tcp(&tcp, TcpEvent::Opened);
        m.istio.record_tcp(
            &tcp,
            TcpEvent::Closed {
                received: 10,
                sent: 4000,
            },
        );
        let text = m.encode();
        let req = lines(&text, "istio_request_messages_total{");
        let resp = lines(&text, "istio_response_messages_total{");
        assert!(req.len() == 1 && req[0].ends_with(" 1"), "{text}");
        assert!(resp.len() == 1 && resp[0].ends_with(" 3"), "{text}");
        assert!(req[0].contains("grpc_response_status=\"0\""));
        for (family, value) in [
            ("istio_tcp_connections_opened_total{", " 1"),
            ("istio_tcp_connections_closed_total{", " 1"),
            ("istio_tcp_received_bytes_total{", " 10"),
            ("istio_tcp_sent_bytes_total{", " 4000"),
        ] {
            let l = lines(&text, family);
            assert_eq!(l.len(), 1, "{family}: {text}");
            assert!(l[0].ends_with(value), "{}", l[0]);
            assert!(l[0].contains("destination_workload=\"reviews-v2\""));
            assert!(l[0].contains("source_canonical_service=\"productpage\""));
            assert!(l[0].contains("request_protocol=\"tcp\""));
            assert!(!l[0].contains("response_code"), "{}", l[0]);
        }
    }

    #[test]
    fn nothing_recorded_nothing_exported_and_idle_series_go() {
        let m = Metrics::new();
        assert!(!m.encode().contains("istio_"), "no series before first use");
        m.istio
            .record_request(&labels("http"), &RequestSample::default(), MetricSet::NONE);
        assert!(m.encode().contains("istio_requests_total{"));
        for _ in 0..3 {
            m.istio.sweep();
        }
        assert!(m.istio.is_empty());
        assert!(!m.encode().contains("istio_requests_total{"));
    }

    #[test]
    fn the_cap_drops_new_label_sets_and_counts_them() {
        let m = Metrics::with_limits(SeriesLimits {
            max_series: 1,
            idle_sweeps: 2,
        });
        m.istio
            .record_request(&labels("http"), &RequestSample::default(), MetricSet::NONE);
        let other = IstioLabels {
            response_code: 503,
            ..labels("http")
        };
        m.istio
            .record_request(&other, &RequestSample::default(), MetricSet::NONE);
        let text = m.encode();
        assert_eq!(lines(&text, "istio_requests_total{").len(), 1);
        assert!(
            text.contains("meshlite_metric_series_dropped_total 1"),
            "{text}"
        );
    }

    #[test]
    fn families_a_telemetry_resource_turns_off_are_not_exported() {
        use meshlite_xds_proto::v1::MetricSelector as M;
        let m = Metrics::new();
        let skipped = MetricSet::of(M::RequestDuration);
        m.istio
            .record_request(&labels("http"), &RequestSample::default(), skipped);
        let text = m.encode();
        assert!(text.contains("istio_requests_total{"));
        assert!(
            !text.contains("istio_request_duration_milliseconds"),
            "{text}"
        );
        let all = MetricSet::of(M::AllMetrics);
        let other = IstioLabels {
            response_code: 500,
            ..labels("http")
        };
        m.istio
            .record_request(&other, &RequestSample::default(), all);
        assert!(
            !m.encode().contains("response_code=\"500\""),
            "nothing recorded"
        );
    }

    #[test]
    fn tag_overrides_add_change_and_remove_labels_in_the_metrics_they_select() {
        use crate::telemetry::attributes::LogAttributes;
        use crate::telemetry::tag_overrides::TagOverrides;
        use meshlite_xds_proto::v1;
        let entry = |metric: v1::MetricSelector, tags: &[(&str, bool, &str)]| v1::MetricOverride {
            metric: metric as i32,
            tag_overrides: tags
                .iter()
                .map(|(k, remove, value)| {
                    (
                        k.to_string(),
                        v1::TagOverride {
                            remove: *remove,
                            value: value.to_string(),
                        },
                    )
                })
                .collect(),
            ..Default::default()
        };
        let tags = TagOverrides::compile(
            &[entry(
                v1::MetricSelector::RequestCount,
                &[
                    ("tenant", false, "request.headers['x-tenant']"),
                    ("source_principal", true, ""),
                    ("destination_version", false, "'canary'"),
                ],
            )],
            |_| true,
        )
        .unwrap()
        .unwrap();
        let headers = vec![("x-tenant".to_string(), "acme".to_string())];
        let a = LogAttributes {
            headers: &headers,
            ..Default::default()
        };
        let m = Metrics::new();
        for (l, skipped) in tags.label_sets(&labels("http"), &a, MetricSet::NONE) {
            m.istio
                .record_request(&l, &RequestSample::default(), skipped);
        }
        let text = m.encode();
        let total = lines(&text, "istio_requests_total{");
        assert_eq!(total.len(), 1, "{text}");
        let t = total[0];
        assert!(t.contains(",tenant=\"acme\""), "{t}");
        assert!(t.contains("destination_version=\"canary\""), "{t}");
        assert!(!t.contains("destination_version=\"v2\""), "{t}");
        assert!(!t.contains("source_principal"), "{t}");
        assert!(t.ends_with(" 1"), "{t}");
        // The other families keep the standard labels, once.
        let count = lines(&text, "istio_request_duration_milliseconds_count{");
        assert_eq!(count.len(), 1, "{text}");
        assert!(count[0].contains("source_principal=") && !count[0].contains("tenant"));
    }
}
