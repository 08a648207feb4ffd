//! DestinationRule (`networking.istio.io`): policy for traffic to a host once routed.
//!
//! Mirrors `istio.networking.v1alpha3.DestinationRule`: subsets, load balancing, connection
//! pool limits (circuit breaking), outlier detection and client TLS, top-level and per port.
//! Semantics (layering, defaults, Envoy mapping): SEMANTICS.md section 1.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{IstioDuration, PortSelector, WorkloadSelector};

/// DestinationRule spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DestinationRule {
    /// Service host; short names are completed with the DR namespace.
    pub host: String,
    /// Policy for the whole service.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named endpoint subsets.
    pub subsets: Vec<Subset>,
    /// Namespaces the DR is visible in.
    pub export_to: Vec<String>,
    /// Client workloads the DR applies to (same namespace only).
    pub workload_selector: Option<WorkloadSelector>,
}

/// A named group of endpoints with its own policy overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Subset {
    /// Name referenced by VirtualService destinations.
    pub name: String,
    /// Endpoint label filter; empty = all endpoints.
    pub labels: BTreeMap<String, String>,
    /// Blocks set here replace the DR's blocks wholesale.
    pub traffic_policy: Option<TrafficPolicy>,
}

/// The four policy blocks plus per-port overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TrafficPolicy {
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Passive health checking.
    pub outlier_detection: Option<OutlierDetection>,
    /// Client-side TLS.
    pub tls: Option<ClientTlsSettings>,
    /// Per-port replacements of the four blocks (not inherited, see SEMANTICS 1.1).
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Caps retries in flight relative to requests (replaces `maxRetries`).
    pub retry_budget: Option<RetryBudget>,
}

/// Istio's `TrafficPolicy.RetryBudget` (Envoy's cluster retry budget): at most
/// max(`percent` % of the requests counted, `minRetryConcurrency`) retries in flight.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryBudget {
    /// Share of requests that may be retries at once (Istio default 20).
    pub percent: Option<f64>,
    /// The cap never goes below this (Istio default 3).
    pub min_retry_concurrency: Option<u32>,
    /// When set, requests started within this window are counted instead of those in
    /// flight (`0s`, the default: those in flight and pending).
    pub budget_interval: Option<IstioDuration>,
}

/// The four policy blocks for one port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PortTrafficPolicy {
    /// The port.
    pub port: Option<PortSelector>,
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Passive health checking.
    pub outlier_detection: Option<OutlierDetection>,
    /// Client-side TLS.
    pub tls: Option<ClientTlsSettings>,
}

/// Simple load-balancing algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// Istio default: LEAST_REQUEST.
    Unspecified,
    /// Deprecated alias of LEAST_REQUEST.
    LeastConn,
    /// Rotate over hosts.
    RoundRobin,
    /// Uniform random pick.
    Random,
    /// Connect to the original destination.
    Passthrough,
    /// Power of two choices on active requests.
    LeastRequest,
}

/// Load-balancer settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadBalancerSettings {
    /// Simple algorithm.
    pub simple: Option<SimpleLb>,
    /// Hash-based algorithm.
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Locality-aware distribution/failover.
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Deprecated slow-start window.
    pub warmup_duration_secs: Option<IstioDuration>,
    /// Slow-start configuration.
    pub warmup: Option<WarmupConfiguration>,
}

/// Consistent hashing: exactly one hash key plus the ring/maglev table parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsistentHashLb {
    /// Hash a request header.
    pub http_header_name: Option<String>,
    /// Hash a cookie (minted when absent and `ttl` is set).
    pub http_cookie: Option<HttpCookie>,
    /// Hash the source IP.
    pub use_source_ip: Option<bool>,
    /// Hash a query parameter.
    pub http_query_parameter_name: Option<String>,
    /// Ketama ring.
    pub ring_hash: Option<RingHash>,
    /// Maglev table.
    pub maglev: Option<MagLev>,
    /// Deprecated ring size.
    pub minimum_ring_size: Option<u64>,
}

impl ConsistentHashLb {
    /// Number of hash keys set (Istio requires exactly one).
    pub fn key_count(&self) -> usize {
        usize::from(self.http_header_name.is_some())
            + usize::from(self.http_cookie.is_some())
            + usize::from(self.use_source_ip == Some(true))
            + usize::from(self.http_query_parameter_name.is_some())
    }
}

/// Cookie used as hash key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpCookie {
    /// Cookie name.
    pub name: String,
    /// Cookie path.
    pub path: Option<String>,
    /// Lifetime of a minted cookie; `0s` = session cookie.
    pub ttl: Option<IstioDuration>,
}

/// Ring-hash parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RingHash {
    /// Minimum ring entries (default 1024).
    pub minimum_ring_size: Option<u64>,
}

/// Maglev parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MagLev {
    /// Table size, prime (default 65537).
    pub table_size: Option<u64>,
}

/// Locality-aware load balancing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalityLbSetting {
    /// On/off; replaces the mesh setting when present.
    pub enabled: Option<bool>,
    /// Explicit weights per client locality.
    pub distribute: Vec<LocalityDistribute>,
    /// Region failover pairs.
    pub failover: Vec<LocalityFailover>,
    /// Ordered labels used for failover priority.
    pub failover_priority: Vec<String>,
}

/// Weights for clients in `from`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalityDistribute {
    /// Client locality (wildcards allowed).
    pub from: String,
    /// Locality to weight.
    pub to: BTreeMap<String, u32>,
}

/// Failover from one region to another.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalityFailover {
    /// Client region.
    pub from: String,
    /// Region to fail over to.
    pub to: String,
}

/// Slow start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WarmupConfiguration {
    /// Window.
    pub duration: Option<IstioDuration>,
    /// Starting weight percentage (default 10).
    pub minimum_percent: Option<f64>,
    /// Curve (default 1.0).
    pub aggression: Option<f64>,
}

/// Circuit-breaking limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConnectionPoolSettings {
    /// TCP limits.
    pub tcp: Option<TcpSettings>,
    /// HTTP limits.
    pub http: Option<HttpSettings>,
}

/// TCP connection limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpSettings {
    /// Max connections to the cluster.
    pub max_connections: Option<i32>,
    /// Connect timeout (Istio default 10s).
    pub connect_timeout: Option<IstioDuration>,
    /// Socket keepalive.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Max lifetime of a connection.
    pub max_connection_duration: Option<IstioDuration>,
    /// Idle timeout when the HTTP one is unset.
    pub idle_timeout: Option<IstioDuration>,
}

/// Socket keepalive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpKeepalive {
    /// Probes before the connection is dead.
    pub probes: Option<u32>,
    /// Idle time before probing.
    pub time: Option<IstioDuration>,
    /// Time between probes.
    pub interval: Option<IstioDuration>,
}

/// Whether to upgrade HTTP/1.1 to HTTP/2 upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// Mesh default.
    Default,
    /// Keep HTTP/1.1.
    DoNotUpgrade,
    /// Upgrade.
    Upgrade,
}

/// HTTP limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpSettings {
    /// Max queued requests.
    pub http1_max_pending_requests: Option<i32>,
    /// Max concurrent requests.
    pub http2_max_requests: Option<i32>,
    /// Requests per connection; 1 disables keep-alive.
    pub max_requests_per_connection: Option<i32>,
    /// Max concurrent retries.
    pub max_retries: Option<i32>,
    /// Idle timeout (default 1h).
    pub idle_timeout: Option<IstioDuration>,
    /// HTTP/2 upgrade.
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Use the client's protocol upstream.
    pub use_client_protocol: Option<bool>,
    /// Max concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: Option<i32>,
}

/// Passive health checking (outlier ejection).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutlierDetection {
    /// Consecutive 5xx before ejection.
    pub consecutive_5xx_errors: Option<u32>,
    /// Consecutive 502/503/504 before ejection.
    pub consecutive_gateway_errors: Option<u32>,
    /// Consecutive local-origin failures (when split).
    pub consecutive_local_origin_failures: Option<u32>,
    /// Count local-origin failures separately.
    pub split_external_local_origin_errors: Option<bool>,
    /// Analysis interval (default 10s).
    pub interval: Option<IstioDuration>,
    /// Base ejection time (default 30s).
    pub base_ejection_time: Option<IstioDuration>,
    /// Max ejected share of hosts (default 10).
    pub max_ejection_percent: Option<i32>,
    /// Panic threshold (Istio default 0).
    pub min_health_percent: Option<i32>,
    /// When set, only responses with these codes count as errors (default: every 5xx).
    pub outlier_detection_http_error_codes: Vec<u32>,
}

/// Client TLS modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    /// Plaintext.
    Disable,
    /// TLS to the upstream.
    Simple,
    /// TLS with a client certificate.
    Mutual,
    /// Mesh mTLS with the workload identity.
    IstioMutual,
}

/// Client-side TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientTlsSettings {
    /// Mode.
    pub mode: Option<ClientTlsMode>,
    /// Client certificate file (MUTUAL).
    pub client_certificate: Option<String>,
    /// Client key file (MUTUAL).
    pub private_key: Option<String>,
    /// CA bundle file.
    pub ca_certificates: Option<String>,
    /// Secret name holding the certificates.
    pub credential_name: Option<String>,
    /// Accepted server SANs.
    pub subject_alt_names: Vec<String>,
    /// SNI to send.
    pub sni: Option<String>,
    /// Skip server verification.
    pub insecure_skip_verify: Option<bool>,
    /// CRL file.
    pub ca_crl: Option<String>,
}
