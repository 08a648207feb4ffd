//! MeshConfig: the mesh-wide settings Istio keeps in its `istio` ConfigMap or in an
//! IstioOperator's `spec.meshConfig`.
//!
//! Mirrors `istio.mesh.v1alpha1.MeshConfig` for the fields meshlite applies: trust domain
//! aliases, path normalisation, the number of trusted proxies in front of callers, the
//! extension providers AuthorizationPolicy CUSTOM actions name, and the trace collectors
//! (`opentelemetry`, `zipkin` providers, `defaultProviders.tracing`,
//! `defaultConfig.tracing.sampling`), and the access-log providers (`envoyFileAccessLog`,
//! `envoyOtelAls` with their `logFormat`, `defaultProviders.accessLogging`, and the built-in
//! provider's `accessLogFile` / `accessLogFormat` / `accessLogEncoding`). Providers of other kinds are read so a
//! user's file loads without errors.

use serde::{Deserialize, Serialize};

use super::IstioDuration;

/// The MeshConfig fields meshlite reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshConfig {
    /// The mesh's trust domain (meshlite-control's `--trust-domain` is authoritative; a
    /// different value here is reported).
    pub trust_domain: Option<String>,
    /// Other names of the trust domain: principals in them match local workloads.
    pub trust_domain_aliases: Vec<String>,
    /// How request paths are normalised before routing and authorization.
    pub path_normalization: Option<PathNormalizationSetting>,
    /// Proxy defaults.
    pub default_config: Option<ProxyDefaults>,
    /// External services sidecars may call on the mesh's behalf.
    pub extension_providers: Vec<ProviderConfig>,
    /// `root namespace` of policies (meshlite uses `istio-system`; another value is
    /// reported).
    pub root_namespace: Option<String>,
    /// The providers used when no Telemetry resource says otherwise.
    pub default_providers: Option<DefaultProviders>,
    /// `accessLogFile`: where Istio's built-in `envoy` provider writes; set, every sidecar
    /// logs there unless `defaultProviders.accessLogging` or a Telemetry resource says
    /// otherwise (as in Istio).
    pub access_log_file: Option<String>,
    /// `accessLogFormat`: the built-in provider's format (Envoy command operators): a line
    /// of text, or with `accessLogEncoding: JSON` a JSON object of field -> format.
    pub access_log_format: Option<String>,
    /// `accessLogEncoding`: `TEXT` or `JSON` (unset: meshlite's JSON line of Envoy's
    /// default fields, where Istio writes its default text line).
    pub access_log_encoding: Option<AccessLogEncoding>,
    /// Where captured connections to destinations no service has may go.
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// `accessLogEncoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccessLogEncoding {
    /// A line of text: `accessLogFormat`, else Istio's default text line.
    Text,
    /// A JSON object per line: `accessLogFormat`'s fields, else Envoy's default fields.
    Json,
}

/// `outboundTrafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutboundTrafficPolicy {
    /// The mode; Istio's default is `ALLOW_ANY`.
    pub mode: OutboundTrafficMode,
}

/// `outboundTrafficPolicy.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficMode {
    /// Unknown destinations are reached as they are (Envoy's PassthroughCluster).
    #[default]
    AllowAny,
    /// Only services of the registry (and ServiceEntries) are reached (BlackHoleCluster).
    RegistryOnly,
}

/// `defaultProviders`: the extension providers in force by default, by signal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DefaultProviders {
    /// Trace collectors, by provider name (the first one defined is used).
    pub tracing: Vec<String>,
    /// Metrics providers (read, not used).
    pub metrics: Vec<String>,
    /// Access log providers: where every sidecar logs when no Telemetry resource
    /// configures access logging, and what an `accessLogging` entry without providers uses.
    pub access_logging: Vec<String>,
}

/// `pathNormalization`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PathNormalizationSetting {
    /// The scheme.
    pub normalization: PathNormalization,
}

/// `pathNormalization.normalization` (SEMANTICS 4.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    /// BASE.
    #[default]
    Default,
    /// No normalisation.
    None,
    /// RFC 3986 with Envoy's extras.
    Base,
    /// BASE and merged slashes.
    MergeSlashes,
    /// `%2F`/`%5C` decoded, then MERGE_SLASHES.
    DecodeAndMergeSlashes,
}

/// `defaultConfig` (ProxyConfig): the part meshlite reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyDefaults {
    /// `gatewayTopology`.
    pub gateway_topology: Option<Topology>,
    /// `tracing`: the part meshlite reads.
    pub tracing: Option<ProxyTracing>,
    /// `proxyStatsMatcher`: Envoy statistics exported besides Istio's default set.
    pub proxy_stats_matcher: Option<ProxyStatsMatcher>,
}

/// `proxyStatsMatcher` (ProxyConfig): inclusions by Envoy statistic name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyStatsMatcher {
    /// Names starting with one of these.
    pub inclusion_prefixes: Vec<String>,
    /// Names ending with one of these.
    pub inclusion_suffixes: Vec<String>,
    /// Names one of these regular expressions (RE2) matches whole.
    pub inclusion_regexps: Vec<String>,
}

/// `defaultConfig.tracing`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyTracing {
    /// Percentage of requests without a sampling decision that start a trace (Istio's
    /// default, 1).
    pub sampling: Option<f64>,
}

/// `gatewayTopology`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Topology {
    /// Proxies in front of the caller trusted to have appended to `x-forwarded-for`.
    pub num_trusted_proxies: Option<u32>,
}

/// One `extensionProviders` entry: a name and exactly one kind of provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProviderConfig {
    /// The name policies refer to.
    pub name: String,
    /// External authorization over Envoy's gRPC protocol.
    pub envoy_ext_authz_grpc: Option<ExtAuthzGrpc>,
    /// External authorization over HTTP.
    pub envoy_ext_authz_http: Option<ExtAuthzHttp>,
    /// Prometheus metrics: read, not used by sidecars (they serve Istio's metrics anyway).
    pub prometheus: Option<serde_json::Value>,
    /// Zipkin tracing: spans as Zipkin v2 JSON to `service:port/api/v2/spans`.
    pub zipkin: Option<TracingCollector>,
    /// OpenTelemetry tracing: spans over OTLP/gRPC to `service:port`.
    pub opentelemetry: Option<TracingCollector>,
    /// Envoy file access log: lines appended to a file (`/dev/stdout`: standard output).
    pub envoy_file_access_log: Option<FileAccessLog>,
    /// OpenTelemetry access log: log records over OTLP/gRPC to a collector.
    pub envoy_otel_als: Option<OtelAccessLog>,
    /// Envoy HTTP gRPC access log.
    pub envoy_http_als: Option<serde_json::Value>,
    /// Envoy TCP gRPC access log.
    pub envoy_tcp_als: Option<serde_json::Value>,
    /// SkyWalking.
    pub skywalking: Option<serde_json::Value>,
    /// Stackdriver.
    pub stackdriver: Option<serde_json::Value>,
    /// Datadog.
    pub datadog: Option<serde_json::Value>,
    /// Lightstep.
    pub lightstep: Option<serde_json::Value>,
}

impl ProviderConfig {
    /// The kinds set on this entry, by their YAML names.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut k = Vec::new();
        let mut add = |set: bool, name| {
            if set {
                k.push(name);
            }
        };
        add(self.envoy_ext_authz_grpc.is_some(), "envoyExtAuthzGrpc");
        add(self.envoy_ext_authz_http.is_some(), "envoyExtAuthzHttp");
        add(self.prometheus.is_some(), "prometheus");
        add(self.zipkin.is_some(), "zipkin");
        add(self.opentelemetry.is_some(), "opentelemetry");
        add(self.envoy_file_access_log.is_some(), "envoyFileAccessLog");
        add(self.envoy_otel_als.is_some(), "envoyOtelAls");
        add(self.envoy_http_als.is_some(), "envoyHttpAls");
        add(self.envoy_tcp_als.is_some(), "envoyTcpAls");
        add(self.skywalking.is_some(), "skywalking");
        add(self.stackdriver.is_some(), "stackdriver");
        add(self.datadog.is_some(), "datadog");
        add(self.lightstep.is_some(), "lightstep");
        k
    }
}

/// A trace collector of an `opentelemetry` or `zipkin` provider (the fields sidecars use;
/// others, e.g. `http` or `resourceDetectors`, are read and ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TracingCollector {
    /// `[<namespace>/]<hostname>` of the collector.
    pub service: String,
    /// Its port (4317 for OTLP/gRPC, 9411 for Zipkin).
    pub port: u32,
    /// The longest `http.url` tag (Envoy's default, 256).
    pub max_tag_length: Option<u32>,
}

/// `envoyFileAccessLog`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FileAccessLog {
    /// The file; `/dev/stdout` is standard output (Istio's built-in `envoy` provider).
    pub path: String,
    /// `logFormat` (`text` or `labels`, one of them); unset: the JSON line of Envoy's
    /// default fields.
    pub log_format: Option<LogFormat>,
}

/// An access-log provider's `logFormat`: Envoy command operators (`%REQ(X-TENANT)%`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LogFormat {
    /// `text`: a line of text (a file) or the record's body (OpenTelemetry).
    pub text: Option<String>,
    /// `labels`: field name -> format string (Istio's API types it as a Struct: numbers and
    /// booleans are written as their text; nested values are refused by `validate`).
    pub labels: Option<serde_json::Map<String, serde_json::Value>>,
}

impl LogFormat {
    /// Each label's format string, or `Err` for a value that has none (an object, a list).
    pub fn label_formats(&self) -> impl Iterator<Item = (&str, Result<String, ()>)> {
        self.labels.iter().flatten().filter_map(|(name, v)| {
            use serde_json::Value;
            let format = match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                Value::Null => return None,
                Value::Array(_) | Value::Object(_) => Err(()),
            };
            Some((name.as_str(), format))
        })
    }
}

/// `envoyOtelAls`: Envoy's OpenTelemetry access logger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OtelAccessLog {
    /// `[<namespace>/]<hostname>` of the collector.
    pub service: String,
    /// Its OTLP/gRPC port (4317).
    pub port: u32,
    /// The records' `log_name` (Istio's default `otel_envoy_accesslog`).
    pub log_name: Option<String>,
    /// `logFormat`: `text` is the record's body, `labels` its attributes; unset: Istio's
    /// default text line as body and Envoy's default fields as attributes.
    pub log_format: Option<LogFormat>,
}

/// `envoyExtAuthzGrpc`: Envoy's `envoy.service.auth.v3.Authorization/Check` over gRPC.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtAuthzGrpc {
    /// The authorizer's host: a mesh service or a ServiceEntry host.
    pub service: String,
    /// Its port.
    pub port: u32,
    /// Per check; Istio's default 600 s is far too long for a request path, meshlite's is
    /// the same unless set.
    pub timeout: Option<IstioDuration>,
    /// Allow the request when the authorizer cannot be reached or errs.
    pub fail_open: bool,
    /// Status sent when the authorizer cannot be reached (default 403).
    pub status_on_error: Option<String>,
    /// Send the request body (buffered up to `maxRequestBytes`).
    pub include_request_body_in_check: Option<BodyInCheck>,
}

/// `envoyExtAuthzHttp`: a plain HTTP check request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtAuthzHttp {
    /// The authorizer's host.
    pub service: String,
    /// Its port.
    pub port: u32,
    /// Per check.
    pub timeout: Option<IstioDuration>,
    /// Prefix of the check request's path (the original path follows).
    pub path_prefix: Option<String>,
    /// Allow when the authorizer cannot be reached.
    pub fail_open: bool,
    /// Status sent when the authorizer cannot be reached (default 403).
    pub status_on_error: Option<String>,
    /// Request headers sent in the check (besides Host, Method, Path, Content-Length and
    /// Authorization, always sent).
    pub include_request_headers_in_check: Vec<String>,
    /// Headers added to the check request.
    pub include_additional_headers_in_check: std::collections::BTreeMap<String, String>,
    /// Authorizer response headers copied onto the request when it allows.
    pub headers_to_upstream_on_allow: Vec<String>,
    /// Authorizer response headers sent to the caller when it denies.
    pub headers_to_downstream_on_deny: Vec<String>,
    /// Authorizer response headers sent to the caller when it allows.
    pub headers_to_downstream_on_allow: Vec<String>,
    /// Send the request body.
    pub include_request_body_in_check: Option<BodyInCheck>,
}

/// `includeRequestBodyInCheck`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BodyInCheck {
    /// Bytes buffered at most.
    pub max_request_bytes: u32,
    /// Send what there is when the body is larger, instead of 413.
    pub allow_partial_message: bool,
    /// Send it as bytes (gRPC `raw_body`).
    pub pack_as_bytes: bool,
}
