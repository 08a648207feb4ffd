//! Telemetry (`telemetry.istio.io`): how a workload's traces, metrics and access logs are
//! produced.
//!
//! Mirrors `istio.telemetry.v1.Telemetry` (v1alpha1 is the same schema). A resource in the
//! root namespace without a selector is the mesh-wide default, one without a selector in a
//! namespace overrides it there, one with a selector overrides both for the workloads it
//! selects; `translate::telemetry` resolves the three for each workload as istiod does.
//! Optional scalars stay `Option` because "not set" means "inherit from the parent scope",
//! which differs from an explicit `false` or `0`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{IstioDuration, PolicyTargetReference, WorkloadSelector};

/// Providers every Istio mesh has without declaring them (Istio's default MeshConfig), by
/// name, with their kind.
pub const BUILT_IN_PROVIDERS: [(&str, &str); 3] = [
    ("prometheus", "prometheus"),
    ("stackdriver", "stackdriver"),
    ("envoy", "envoyFileAccessLog"),
];

/// Istio's built-in access-log provider: its name and the file it writes (standard output,
/// the container convention).
pub const BUILT_IN_ACCESS_LOG_PROVIDER: (&str, &str) = ("envoy", "/dev/stdout");

/// The metrics providers in force where no Telemetry names one: Istio's install default
/// (`defaultProviders.metrics: [prometheus]`).
pub const DEFAULT_METRICS_PROVIDERS: [&str; 1] = ["prometheus"];

/// Provider kinds (MeshConfig `extensionProviders` YAML names) that export traces.
pub const TRACING_PROVIDER_KINDS: [&str; 6] = [
    "zipkin",
    "opentelemetry",
    "datadog",
    "lightstep",
    "skywalking",
    "stackdriver",
];

/// Provider kinds that export metrics.
pub const METRICS_PROVIDER_KINDS: [&str; 2] = ["prometheus", "stackdriver"];

/// Provider kinds that write access logs.
pub const ACCESS_LOG_PROVIDER_KINDS: [&str; 5] = [
    "envoyFileAccessLog",
    "envoyOtelAls",
    "envoyHttpAls",
    "envoyTcpAls",
    "stackdriver",
];

/// The kinds of the provider called `name`, looked up as istiod does (case-insensitively):
/// among the MeshConfig's `extensionProviders` (`declared`: name and kinds), else among
/// Istio's built-in providers. `None`: no such provider.
pub fn provider_kinds<'a>(
    declared: impl IntoIterator<Item = (&'a str, Vec<&'static str>)>,
    name: &str,
) -> Option<Vec<&'static str>> {
    declared
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, kinds)| kinds)
        .or_else(|| {
            BUILT_IN_PROVIDERS
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, k)| vec![*k])
        })
}

/// Telemetry spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Telemetry {
    /// Workloads the resource applies to; absent (or without labels): the whole namespace,
    /// or the mesh in the root namespace.
    pub selector: Option<WorkloadSelector>,
    /// Gateways or waypoints the resource attaches to instead; sidecars do not apply such
    /// resources (Istio's behaviour).
    pub target_refs: Vec<PolicyTargetReference>,
    /// The single-target form of `targetRefs`.
    pub target_ref: Option<PolicyTargetReference>,
    /// Tracing settings, applied in order (a later entry's fields override an earlier one's).
    pub tracing: Vec<Tracing>,
    /// Metrics settings.
    pub metrics: Vec<Metrics>,
    /// Access logging settings.
    pub access_logging: Vec<AccessLogging>,
}

impl Telemetry {
    /// True when the resource is attached by `targetRef(s)` (not applied by sidecars).
    pub fn is_targeted(&self) -> bool {
        !self.target_refs.is_empty() || self.target_ref.is_some()
    }

    /// The labels of its selector, if it has a selector with labels. Istio treats a
    /// selector without labels as no selector: the resource applies namespace-wide.
    pub fn selector_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
    }
}

/// A reference to a MeshConfig `extensionProviders` entry (or a built-in provider).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProviderRef {
    /// The provider's name.
    pub name: String,
}

/// Which side of a request a setting applies to (Istio `WorkloadMode`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    /// Both: requests the workload makes and requests it serves.
    #[default]
    ClientAndServer,
    /// Requests the workload makes (outbound; the source's report).
    Client,
    /// Requests the workload serves (inbound; the destination's report).
    Server,
}

impl WorkloadMode {
    /// True when a setting with this mode applies on `side` (`Client` or `Server`).
    pub fn covers(self, side: WorkloadMode) -> bool {
        self == WorkloadMode::ClientAndServer || self == side
    }
}

/// `match` of a tracing or access logging entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ModeSelector {
    /// The side the entry applies to.
    pub mode: WorkloadMode,
}

/// One `tracing` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Tracing {
    /// The side it applies to; absent: both.
    #[serde(rename = "match")]
    pub matches: Option<ModeSelector>,
    /// Trace collectors; Istio uses the first one. Empty: inherited.
    pub providers: Vec<ProviderRef>,
    /// Span attributes added to every span; replaces the inherited map as a whole.
    pub custom_tags: Option<BTreeMap<String, CustomTag>>,
    /// `true`: no spans are reported (the trace context is still propagated).
    pub disable_span_reporting: Option<bool>,
    /// Percentage (0-100) of requests without a sampling decision that start a trace.
    pub random_sampling_percentage: Option<f64>,
}

impl Tracing {
    /// The side it applies to.
    pub fn mode(&self) -> WorkloadMode {
        self.matches.as_ref().map(|m| m.mode).unwrap_or_default()
    }
}

/// One `customTags` value: exactly one of the three kinds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CustomTag {
    /// A fixed value.
    pub literal: Option<LiteralTag>,
    /// A request header's value.
    pub header: Option<HeaderTag>,
    /// An environment variable of the proxy.
    pub environment: Option<EnvironmentTag>,
}

/// `customTags.<tag>.literal`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LiteralTag {
    /// The value.
    pub value: String,
}

/// `customTags.<tag>.header`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderTag {
    /// Request header name.
    pub name: String,
    /// Value when the header is absent.
    pub default_value: Option<String>,
}

/// `customTags.<tag>.environment`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EnvironmentTag {
    /// Environment variable name.
    pub name: String,
    /// Value when the variable is unset.
    pub default_value: Option<String>,
}

/// One `metrics` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Metrics {
    /// Metrics providers the overrides are for. Empty: inherited.
    pub providers: Vec<ProviderRef>,
    /// Changes to the standard metrics, applied in order.
    pub overrides: Vec<MetricsOverrides>,
    /// How often TCP metrics are reported (read, not applied: sidecars are scraped).
    pub reporting_interval: Option<IstioDuration>,
}

/// One `metrics[].overrides` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MetricsOverrides {
    /// The metrics and side it applies to; absent: every metric, both sides.
    #[serde(rename = "match")]
    pub matches: Option<MetricSelector>,
    /// `true`: the selected metrics are not recorded; absent: inherited.
    pub disabled: Option<bool>,
    /// Label name -> what to do with it.
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

/// `metrics[].overrides[].match`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MetricSelector {
    /// One of Istio's standard metrics (or all of them).
    pub metric: Option<IstioMetric>,
    /// A metric by its name (not a standard one): not supported by meshlite's sidecars.
    pub custom_metric: Option<String>,
    /// The side it applies to.
    pub mode: WorkloadMode,
}

/// Istio's standard metrics, as `MetricSelector.metric` names them.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IstioMetric {
    /// Every standard metric.
    #[default]
    AllMetrics,
    /// `istio_requests_total`.
    RequestCount,
    /// `istio_request_duration_milliseconds`.
    RequestDuration,
    /// `istio_request_bytes`.
    RequestSize,
    /// `istio_response_bytes`.
    ResponseSize,
    /// `istio_tcp_connections_opened_total`.
    TcpOpenedConnections,
    /// `istio_tcp_connections_closed_total`.
    TcpClosedConnections,
    /// `istio_tcp_sent_bytes_total`.
    TcpSentBytes,
    /// `istio_tcp_received_bytes_total`.
    TcpReceivedBytes,
    /// `istio_request_messages_total`.
    GrpcRequestMessages,
    /// `istio_response_messages_total`.
    GrpcResponseMessages,
}

impl IstioMetric {
    /// Every single metric (`ALL_METRICS` excluded), in Istio's enum order.
    pub const EACH: [IstioMetric; 10] = [
        IstioMetric::RequestCount,
        IstioMetric::RequestDuration,
        IstioMetric::RequestSize,
        IstioMetric::ResponseSize,
        IstioMetric::TcpOpenedConnections,
        IstioMetric::TcpClosedConnections,
        IstioMetric::TcpSentBytes,
        IstioMetric::TcpReceivedBytes,
        IstioMetric::GrpcRequestMessages,
        IstioMetric::GrpcResponseMessages,
    ];
}

/// `tagOverrides.<name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TagOverride {
    /// Add (or replace) the label, or remove it.
    pub operation: TagOperation,
    /// For UPSERT: a CEL expression over the request's attributes giving the label's value.
    pub value: Option<String>,
}

/// `tagOverrides.<name>.operation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagOperation {
    /// Insert or update the label with `value`.
    #[default]
    Upsert,
    /// Remove the label.
    Remove,
}

/// One `accessLogging` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AccessLogging {
    /// The side it applies to; absent: both.
    #[serde(rename = "match")]
    pub matches: Option<ModeSelector>,
    /// Access log providers. Empty: inherited (or the default provider).
    pub providers: Vec<ProviderRef>,
    /// `true`: nothing is logged to these providers.
    pub disabled: Option<bool>,
    /// Which requests are logged.
    pub filter: Option<AccessLogFilter>,
}

impl AccessLogging {
    /// The side it applies to.
    pub fn mode(&self) -> WorkloadMode {
        self.matches.as_ref().map(|m| m.mode).unwrap_or_default()
    }
}

/// `accessLogging[].filter`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AccessLogFilter {
    /// A CEL expression over the request's attributes; a line is written when it is true.
    pub expression: String,
}
