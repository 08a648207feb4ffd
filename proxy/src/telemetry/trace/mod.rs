//! Distributed traces: a span per request on each sidecar, as Envoy's tracer makes them in
//! an Istio mesh, reported to an OpenTelemetry (OTLP/gRPC) or Zipkin collector.
//!
//! The source sidecar records a CLIENT span for an app's request, the destination sidecar a
//! SERVER span; each writes its own span id into the headers it forwards ([`propagation`]:
//! W3C `traceparent` and B3, in the formats that arrived plus the provider's own), so the
//! next hop's span is its child. The sampling decision travels with the context: an
//! incoming decision is obeyed, and a request that arrives without one is sampled at the
//! configured percentage (Istio's default, 1 %), the decision being written downstream
//! either way so the destination never starts a trace of its own.
//!
//! The request path pays for traces only when a request is sampled: an unsampled request
//! reads a few headers, rolls a number and may write one header; nothing is allocated for
//! it beyond that header. A sampled request carries an [`ActiveSpan`] (boxed, beside its
//! metrics) that is finished with the response stream and handed to a bounded queue; a
//! background task ([`export`]) batches and exports, so a collector that is slow or gone
//! costs requests nothing: spans it cannot take are dropped and counted
//! (`meshlite_spans_dropped_total{reason}`).
//!
//! Tags follow Envoy's HTTP tracer (`source/common/tracing/http_tracer_impl.cc`,
//! `tracer_impl.cc`) and the custom tags Istio adds (`istio.canonical_service`, ...), so
//! trace views and queries built for an Istio mesh read meshlite's spans unchanged.

pub mod export;
pub mod propagation;

use http::Request;
use http::header::HeaderValue;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::config::tracing::{TracingConfig, host_of};
use crate::message::response_flags::ResponseFlags;
use crate::telemetry::peer::LocalWorkload;
use meshlite_xds_proto::v1;
use propagation::{Extracted, Formats, Outgoing, SpanId, TraceId};

/// Istio's default `randomSamplingPercentage`.
pub const DEFAULT_SAMPLING_PERCENT: f64 = 1.0;

/// Envoy's default `max_path_tag_length`: the longest `http.url` tag.
pub const DEFAULT_MAX_PATH_TAG_LENGTH: usize = 256;

/// The sampling roll's resolution: percentages down to 0.0001 %.
const PER_MILLION: u32 = 1_000_000;

/// How a collector takes spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CollectorKind {
    /// OTLP over gRPC (`opentelemetry` provider).
    Otlp,
    /// Zipkin v2 JSON over HTTP (`zipkin` provider).
    Zipkin,
}

impl CollectorKind {
    /// The trace header format this provider's tracer speaks natively (Envoy's OpenTelemetry
    /// tracer writes W3C, its Zipkin tracer B3).
    fn native_formats(self) -> Formats {
        match self {
            CollectorKind::Otlp => Formats::W3C,
            CollectorKind::Zipkin => Formats::B3_MULTI,
        }
    }
}

/// Where spans go.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Collector {
    /// The protocol.
    pub kind: CollectorKind,
    /// A DNS name or an IP address.
    pub host: String,
    /// Its port.
    pub port: u16,
}

/// Where a custom tag's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagSource {
    /// Always this value.
    Literal(String),
    /// The first value of a request header, else the default (no tag without one).
    Header(http::HeaderName, Option<String>),
    /// The value an environment variable had when the settings were made (no tag when
    /// unset and without a default).
    Environment(Option<String>),
}

/// One custom tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomTag {
    /// The tag's name.
    pub tag: String,
    /// Its value's source.
    pub source: TagSource,
}

/// The tracing settings in force for one side (client or server spans): what the file's
/// `tracing` section, the pushed MeshConfig and the workload's Telemetry `tracing` resolve
/// to. `None` anywhere means tracing is off and no trace header is touched.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSettings {
    /// The collector.
    pub collector: Collector,
    /// Percentage of requests without a decision that start a trace.
    pub sampling_percent: f64,
    /// Extra tags.
    pub custom_tags: Vec<CustomTag>,
    /// The longest `http.url` tag.
    pub max_path_tag_length: usize,
    /// Whether sampled spans are reported (Telemetry's `disableSpanReporting` turns it off:
    /// decisions are still made and propagated, as Istio documents, but nothing is sent).
    pub report_spans: bool,
}

impl TraceSettings {
    /// The settings of one side, each field taken from the most specific source that sets
    /// it: the workload's Telemetry `tracing` (`telemetry`, as the control plane resolved
    /// it), then the file's `tracing` section, then the MeshConfig.
    ///
    /// - collector: the first of Telemetry's `providers` the MeshConfig defines, else the
    ///   file's provider, else the first of `defaultProviders.tracing` it defines; a
    ///   Telemetry that names providers the mesh does not define turns tracing off, as
    ///   istiod leaves such a workload without a tracer;
    /// - sampling: Telemetry's `randomSamplingPercentage`, else the file's, else
    ///   `defaultConfig.tracing.sampling`, else 1 % (a value outside 0-100 is passed over);
    /// - custom tags: Telemetry's map when it has one, else the file's.
    ///
    /// `None` without a collector.
    pub fn resolve(
        file: Option<&TracingConfig>,
        mesh: Option<&v1::MeshConfig>,
        telemetry: Option<&v1::TracingSettings>,
    ) -> Option<Self> {
        let own = file.and_then(|f| f.provider.as_ref()).and_then(|p| {
            let (kind, c) = match (&p.opentelemetry, &p.zipkin) {
                (Some(c), _) => (CollectorKind::Otlp, c),
                (None, Some(c)) => (CollectorKind::Zipkin, c),
                (None, None) => return None,
            };
            let collector = Collector {
                kind,
                host: host_of(&c.service).to_string(),
                port: c.port,
            };
            Some((collector, c.max_tag_length))
        });
        let named = |names: &[String]| {
            let m = mesh?;
            names.iter().find_map(|name| {
                let p = m.tracing_providers.iter().find(|p| &p.name == name)?;
                pushed_collector(p)
            })
        };
        let (collector, max_tag) = match telemetry.filter(|t| !t.providers.is_empty()) {
            Some(t) => named(&t.providers)?,
            None => own.or_else(|| named(mesh?.default_tracing_providers.as_slice()))?,
        };
        let valid = |p: Option<f64>| p.filter(|p| (0.0..=100.0).contains(p));
        let sampling_percent = valid(telemetry.and_then(|t| t.random_sampling_percentage))
            .or_else(|| valid(file.and_then(|f| f.random_sampling_percentage)))
            .or_else(|| valid(mesh.and_then(|m| m.tracing_sampling)))
            .unwrap_or(DEFAULT_SAMPLING_PERCENT);
        let custom_tags = match telemetry.filter(|t| !t.custom_tags.is_empty()) {
            Some(t) => t
                .custom_tags
                .iter()
                .filter_map(|(tag, c)| pushed_tag(tag, c))
                .collect(),
            None => file.map(file_tags).unwrap_or_default(),
        };
        Some(Self {
            collector,
            sampling_percent,
            custom_tags,
            max_path_tag_length: max_tag
                .and_then(|m| usize::try_from(m).ok())
                .unwrap_or(DEFAULT_MAX_PATH_TAG_LENGTH),
            report_spans: !telemetry.is_some_and(|t| t.disable_span_reporting),
        })
    }
}

/// The collector of a MeshConfig provider, with its `maxTagLength` when set; `None` for a
/// provider without a kind or port.
fn pushed_collector(p: &v1::TracingProvider) -> Option<(Collector, Option<u32>)> {
    use v1::tracing_provider::Kind;
    let kind = match p.kind.as_ref()? {
        Kind::Opentelemetry(_) => CollectorKind::Otlp,
        Kind::Zipkin(_) => CollectorKind::Zipkin,
    };
    let port = u16::try_from(p.port).ok().filter(|p| *p != 0)?;
    let collector = Collector {
        kind,
        host: host_of(&p.service).to_string(),
        port,
    };
    Some((
        collector,
        (p.max_tag_length != 0).then_some(p.max_tag_length),
    ))
}

/// A tag value read from the environment now, else the default.
fn environment(name: &str, default: Option<&str>) -> TagSource {
    TagSource::Environment(
        std::env::var(name)
            .ok()
            .or_else(|| default.map(str::to_string)),
    )
}

/// The file's `customTags`.
fn file_tags(f: &TracingConfig) -> Vec<CustomTag> {
    f.custom_tags
        .iter()
        .filter_map(|(tag, c)| {
            let source = if let Some(l) = &c.literal {
                TagSource::Literal(l.value.clone())
            } else if let Some(h) = &c.header {
                let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
                TagSource::Header(name, h.default_value.clone())
            } else {
                let e = c.environment.as_ref()?;
                environment(&e.name, e.default_value.as_deref())
            };
            Some(CustomTag {
                tag: tag.clone(),
                source,
            })
        })
        .collect()
}

/// One pushed `customTags` entry (an empty default is no default, as proto3 cannot tell
/// them apart).
fn pushed_tag(tag: &str, c: &v1::CustomTag) -> Option<CustomTag> {
    use v1::custom_tag::Kind;
    let default = |d: &str| (!d.is_empty()).then(|| d.to_string());
    let source = match c.kind.as_ref()? {
        Kind::Literal(v) => TagSource::Literal(v.clone()),
        Kind::Header(h) => TagSource::Header(
            http::HeaderName::from_bytes(h.name.as_bytes()).ok()?,
            default(&h.default_value),
        ),
        Kind::Environment(e) => environment(&e.name, default(&e.default_value).as_deref()),
    };
    Some(CustomTag {
        tag: tag.to_string(),
        source,
    })
}

/// The tracers of this workload's two sides: CLIENT spans of the app's outbound requests
/// and SERVER spans of the requests it serves. A Telemetry resource with `match.mode` can
/// make them differ; without one both are the same tracer.
#[derive(Clone, Debug, Default)]
pub struct Tracers {
    /// The source sidecar's side.
    pub client: Option<std::sync::Arc<Tracer>>,
    /// The destination sidecar's side.
    pub server: Option<std::sync::Arc<Tracer>>,
}

impl Tracers {
    /// The tracer of `kind`'s side, if tracing is on there.
    pub fn of(&self, kind: SpanKind) -> Option<&Tracer> {
        match kind {
            SpanKind::Client => self.client.as_deref(),
            SpanKind::Server => self.server.as_deref(),
        }
    }

    /// Reads the request's trace context on `kind`'s side, decides and writes the decision
    /// downstream ([`Tracer::start`]); nothing when tracing is off there.
    pub fn start<B>(
        &self,
        kind: SpanKind,
        req: &mut Request<B>,
        remote: SocketAddr,
    ) -> Option<Box<ActiveSpan>> {
        self.of(kind)?.start(kind, req, remote)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropReason {
    reason: &'static str,
}

/// The span counters: what was exported and what was dropped, and why.
#[derive(Clone, Debug, Default)]
pub struct TraceStats {
    /// `meshlite_spans_exported_total`: spans the collector accepted.
    pub exported: Counter,
    /// `meshlite_spans_dropped_total{reason="queue_full"}`: spans the export queue had no
    /// room for (the collector is slower than the traffic, or gone).
    pub queue_full: Counter,
    /// `meshlite_spans_dropped_total{reason="export_failed"}`: spans in batches the
    /// collector did not take (unreachable, refused, timed out).
    pub export_failed: Counter,
}

impl TraceStats {
    /// Registers the counters in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let exported = Counter::default();
        registry.register(
            "meshlite_spans_exported",
            "Spans the trace collector accepted",
            exported.clone(),
        );
        let dropped = Family::<DropReason, Counter>::default();
        registry.register(
            "meshlite_spans_dropped",
            "Spans not delivered to the trace collector, by reason (queue_full: the export \
             queue was full; export_failed: the collector did not take the batch)",
            dropped.clone(),
        );
        let reason = |reason| dropped.get_or_create(&DropReason { reason }).clone();
        Self {
            exported,
            queue_full: reason("queue_full"),
            export_failed: reason("export_failed"),
        }
    }
}

/// Which side of the exchange a span describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// The source sidecar's span of an app's outbound request.
    Client,
    /// The destination sidecar's span of a caller's request.
    Server,
}

/// A finished span, as the exporters take it.
#[derive(Clone, Debug)]
pub struct SpanRecord {
    /// Its trace.
    pub trace: TraceId,
    /// Its id.
    pub span: SpanId,
    /// Its parent, when it has one.
    pub parent: Option<SpanId>,
    /// Client or server.
    pub kind: SpanKind,
    /// The operation: Istio's route decorator, `<host>:<port>/*`.
    pub name: String,
    /// When the request arrived.
    pub start: SystemTime,
    /// From arrival to the end of the response stream.
    pub duration: Duration,
    /// Envoy's tags and the custom ones.
    pub tags: Vec<(Cow<'static, str>, String)>,
    /// Envoy's `error` tag: a 5xx, or no response at all.
    pub error: bool,
}

/// This proxy's own tags, the same on every span (Envoy's `node_id` and `zone`, the
/// `istio.*` tags Istio configures), kept by the exporter rather than copied per span.
#[derive(Clone, Debug, Default)]
pub struct LocalTags {
    /// The collector's `service.name` (Istio: `<canonical service>.<namespace>`).
    pub service_name: String,
    /// `(tag, value)` pairs.
    pub tags: Vec<(&'static str, String)>,
}

impl LocalTags {
    /// This workload's tags: Istio's node id, its zone, canonical service and revision,
    /// namespace, mesh and cluster.
    pub fn of(local: &LocalWorkload, node_ip: Option<std::net::IpAddr>) -> Self {
        let m = &local.metadata;
        let ip = node_ip.map_or_else(|| "127.0.0.1".to_string(), |ip| ip.to_string());
        let node_id = format!(
            "sidecar~{ip}~{}.{}~{}.svc.cluster.local",
            m.workload, m.namespace, m.namespace
        );
        Self {
            service_name: format!("{}.{}", m.canonical_service, m.namespace),
            tags: vec![
                ("node_id", node_id),
                ("zone", local.locality.zone.to_string()),
                ("istio.canonical_service", m.canonical_service.to_string()),
                ("istio.canonical_revision", m.canonical_revision.to_string()),
                ("istio.namespace", m.namespace.to_string()),
                ("istio.mesh_id", local.id.trust_domain().to_string()),
                ("istio.cluster_id", m.cluster.to_string()),
            ],
        }
    }
}

/// The tracer of one set of settings: decides per request and hands finished spans to its
/// collector's exporter. Lives in the snapshot; a push that keeps the settings keeps it.
#[derive(Debug)]
pub struct Tracer {
    settings: TraceSettings,
    /// Requests without a decision are sampled when a roll below one million is under this.
    threshold: u32,
    sink: export::SpanSink,
}

impl Tracer {
    /// A tracer for `settings` reporting through `sink`.
    pub fn new(settings: TraceSettings, sink: export::SpanSink) -> Self {
        let threshold = (settings.sampling_percent / 100.0 * f64::from(PER_MILLION)).round() as u32;
        Self {
            settings,
            threshold,
            sink,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &TraceSettings {
        &self.settings
    }

    /// The exporter's queue (shared by the next tracer when the collector stays).
    pub fn sink(&self) -> &export::SpanSink {
        &self.sink
    }

    /// Whether a request without a decision starts a trace, given a roll in `0..1_000_000`.
    pub fn samples(&self, roll: u32) -> bool {
        roll < self.threshold
    }

    /// Reads the request's trace context, decides, and writes the decision (with this hop's
    /// span id when sampled) into the headers the request is forwarded with. `Some` when the
    /// request is recorded: the span is finished with the response ([`ActiveSpan::finish`]).
    /// `remote` is the downstream peer's address (`peer.address`).
    pub fn start<B>(
        &self,
        kind: SpanKind,
        req: &mut Request<B>,
        remote: SocketAddr,
    ) -> Option<Box<ActiveSpan>> {
        self.start_with(kind, req, remote, fastrand::u32(..PER_MILLION))
    }

    /// [`Tracer::start`] with the sampling roll given (tests, benches).
    pub fn start_with<B>(
        &self,
        kind: SpanKind,
        req: &mut Request<B>,
        remote: SocketAddr,
        roll: u32,
    ) -> Option<Box<ActiveSpan>> {
        let incoming = propagation::extract(req.headers());
        let native = self.settings.collector.kind.native_formats();
        let sampled = match incoming.sampled {
            // The caller decided: its headers already say so downstream.
            Some(false) => return None,
            Some(true) => true,
            None => self.samples(roll),
        };
        if !sampled {
            not_sampled(req.headers_mut(), &incoming, native);
            return None;
        }
        let (trace, parent) = match incoming.parent {
            Some((trace, parent)) => (trace, Some(parent)),
            None => {
                // A new trace: vendor state of another (or of an invalid context) is not its.
                req.headers_mut().remove(&propagation::TRACESTATE);
                (TraceId::random(), None)
            }
        };
        let span = SpanId::random();
        let out = Outgoing {
            trace,
            span,
            parent,
            sampled: true,
            debug: incoming.debug,
        };
        propagation::inject(req.headers_mut(), &out, incoming.formats.union(native));
        if !self.settings.report_spans {
            // `disableSpanReporting`: this hop's id travels on, its span is not sent.
            return None;
        }
        Some(Box::new(ActiveSpan::begin(
            self, kind, req, remote, trace, span, parent,
        )))
    }
}

/// Writes a "not sampled" decision downstream for a request that arrived without one.
fn not_sampled(headers: &mut http::HeaderMap, incoming: &Extracted, native: Formats) {
    match incoming.parent {
        // B3 that deferred: its ids stay, the decision is added.
        Some(_) => {
            if incoming.formats.b3_multi {
                headers.insert(
                    propagation::X_B3_SAMPLED.clone(),
                    HeaderValue::from_static("0"),
                );
            }
            if let (true, Some(v)) = (incoming.formats.b3_single, headers.get(&propagation::B3)) {
                let mut with = v.as_bytes().to_vec();
                with.extend_from_slice(b"-0");
                if let Ok(v) = HeaderValue::from_bytes(&with) {
                    headers.insert(propagation::B3.clone(), v);
                }
            }
        }
        // No context: a new trace id carrying "not sampled", in the provider's format.
        None => {
            headers.remove(&propagation::TRACESTATE);
            if native.b3_multi {
                headers.insert(
                    propagation::X_B3_SAMPLED.clone(),
                    HeaderValue::from_static("0"),
                );
            } else {
                let out = Outgoing {
                    trace: TraceId::random(),
                    span: SpanId::random(),
                    parent: None,
                    sampled: false,
                    debug: false,
                };
                propagation::inject(headers, &out, native);
            }
        }
    }
}

/// The request's protocol as Envoy's `http.protocol` tag writes it.
fn protocol_tag(v: http::Version) -> &'static str {
    crate::telemetry::access_log::version_label(v)
}

/// A sampled request's span while it is served.
#[derive(Debug)]
pub struct ActiveSpan {
    record: SpanRecord,
    sink: export::SpanSink,
}

impl ActiveSpan {
    /// The span's request-side tags, read from the request as it arrived (Envoy's
    /// `finalizeDownstreamSpan`): request id, URL, method, user agent, protocol, peer
    /// address, the custom tags.
    fn begin<B>(
        tracer: &Tracer,
        kind: SpanKind,
        req: &Request<B>,
        remote: SocketAddr,
        trace: TraceId,
        span: SpanId,
        parent: Option<SpanId>,
    ) -> Self {
        let h = req.headers();
        let text = |name: &str| {
            h.get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let host = crate::message::uri::request_authority(req).unwrap_or("");
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let max = tracer.settings.max_path_tag_length;
        let path = match path.char_indices().nth(max) {
            Some((cut, _)) => &path[..cut],
            None => path,
        };
        let scheme = h
            .get(&crate::message::headers::X_FORWARDED_PROTO)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("http");
        let mut tags: Vec<(Cow<'static, str>, String)> =
            Vec::with_capacity(16 + tracer.settings.custom_tags.len());
        let mut tag = |k: &'static str, v: String| tags.push((Cow::Borrowed(k), v));
        if let Some(id) = text("x-request-id") {
            tag("guid:x-request-id", id);
        }
        tag("http.url", format!("{scheme}://{host}{path}"));
        tag("http.method", req.method().as_str().to_string());
        tag("downstream_cluster", "-".into());
        tag(
            "user_agent",
            text("user-agent").unwrap_or_else(|| "-".into()),
        );
        tag("http.protocol", protocol_tag(req.version()).into());
        tag("peer.address", remote.ip().to_string());
        for c in &tracer.settings.custom_tags {
            let value = match &c.source {
                TagSource::Literal(v) => Some(v.clone()),
                TagSource::Header(name, default) => h
                    .get(name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .or_else(|| default.clone()),
                TagSource::Environment(v) => v.clone(),
            };
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                tags.push((Cow::Owned(c.tag.clone()), v));
            }
        }
        let name = match kind {
            SpanKind::Client => format!("egress {host}"),
            SpanKind::Server => "ingress".to_string(),
        };
        Self {
            record: SpanRecord {
                trace,
                span,
                parent,
                kind,
                name,
                start: SystemTime::now(),
                duration: Duration::ZERO,
                tags,
                error: false,
            },
            sink: tracer.sink.clone(),
        }
    }

    /// This span's trace and id.
    pub fn ids(&self) -> (TraceId, SpanId) {
        (self.record.trace, self.record.span)
    }

    /// Names the span after the service and port the request went to, as Istio's route
    /// decorator does (`reviews.default.svc.cluster.local:9080/*`), and tags its upstream
    /// cluster (`upstream_cluster`, `upstream_cluster.name`).
    pub fn route(&mut self, service: &str, port: u16, cluster: &str) {
        self.record.name = format!("{service}:{port}/*");
        self.tag("upstream_cluster", cluster.to_string());
        self.tag("upstream_cluster.name", cluster.to_string());
    }

    /// Adds a tag.
    pub fn tag(&mut self, key: &'static str, value: String) {
        self.record.tags.push((Cow::Borrowed(key), value));
    }

    /// Ends the span with how the exchange went and queues it for export (dropped and
    /// counted when the queue is full).
    pub fn finish(mut self, outcome: &SpanOutcome) {
        let r = &mut self.record;
        r.duration = outcome.duration;
        let mut tag = |k: &'static str, v: String| r.tags.push((Cow::Borrowed(k), v));
        tag("request_size", outcome.request_bytes.to_string());
        tag("response_size", outcome.response_bytes.to_string());
        tag("component", "proxy".into());
        tag("http.status_code", outcome.status.to_string());
        tag("response_flags", outcome.flags.to_string());
        if let Some(grpc) = outcome.grpc_status.filter(|s| !s.is_empty()) {
            tag("grpc.status_code", grpc.to_string());
        }
        r.error = outcome.status == 0 || outcome.status >= 500;
        if r.error {
            tag("error", "true".into());
        }
        let Self { record, sink } = self;
        sink.submit(record);
    }
}

/// How a traced exchange ended.
#[derive(Clone, Copy, Debug)]
pub struct SpanOutcome<'a> {
    /// Status sent downstream (0: none).
    pub status: u16,
    /// Envoy's response flags.
    pub flags: ResponseFlags,
    /// The gRPC status, for gRPC exchanges.
    pub grpc_status: Option<&'a str>,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// From arrival to the end of the response stream.
    pub duration: Duration,
}

#[cfg(test)]
mod tests;
