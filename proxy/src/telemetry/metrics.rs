//! Prometheus metrics with Istio's standard names and labels.
//!
//! Istio's standard families ([`super::istio`]) carry the exact label names Istio's
//! dashboards query (SEMANTICS.md §7.1); `envoy_*` statistics keep Envoy's names; `meshlite_*`
//! metrics cover the proxy's internals. Label values are `Arc<str>` shared with the snapshot,
//! so recording clones pointers, not strings.

use crate::telemetry::prom::Counter;
use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

use super::cluster_stats::ClusterStatsRegistry;
use super::istio::{IstioMetrics, TcpEvent, TcpReport};
use super::series::SeriesLimits;
use super::stats_matcher::StatsMatcher;

/// A shared label value.
pub type Label = Arc<str>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsFailureLabels {
    direction: &'static str,
    reason: &'static str,
}

/// Counts refused TLS handshakes by direction and the check that failed.
#[derive(Clone, Debug, Default)]
pub struct TlsFailureCounter(Family<TlsFailureLabels, Counter>);

impl TlsFailureCounter {
    /// Records one refusal.
    pub fn inc(&self, direction: &'static str, reason: &'static str) {
        self.0
            .get_or_create(&TlsFailureLabels { direction, reason })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Every metric the proxy exports, registered once at start-up.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The `proxyStatsMatcher` the HTTP filters' statistics follow.
    stats_gate: StatsGate,
    /// Istio's standard request and TCP families.
    pub istio: Arc<IstioMetrics>,
    /// `meshlite_metric_series_dropped_total`: records not kept because their family held
    /// as many series as it may.
    pub series_dropped: Counter,
    /// `meshlite_tls_handshake_failures_total{direction,reason}`.
    pub tls_failures: TlsFailureCounter,
    /// `meshlite_downstream_connections_active`.
    pub downstream_active: Gauge,
    /// `meshlite_downstream_connections_resting`: open HTTP/1.1 connections idle with their
    /// buffers given back ([`crate::server::conn`]).
    pub downstream_resting: Gauge,
    /// `meshlite_upstream_connections_total`: connections opened to destination sidecars.
    pub upstream_connects: Counter,
    /// `meshlite_access_log_dropped_total{reason}` and `meshlite_access_log_exported_total`.
    pub access_log: super::access_log::AccessLogStats,
    /// `meshlite_draining`: 1 while the proxy drains before exiting.
    pub draining: Gauge,
    closed_by_reason: Family<ReasonLabels, Counter>,
    /// Control-plane connection and config state.
    pub control: ControlMetrics,
    /// Per-cluster statistics (circuit breakers, outlier detection, retries).
    pub clusters: Arc<ClusterStatsRegistry>,
    /// Inbound security: authorization decisions, refused connections, the audit log.
    pub security: SecurityMetrics,
    /// Spans exported and dropped.
    pub traces: super::trace::TraceStats,
    /// The DNS proxy's queries, forwards and failures.
    pub dns: crate::dns::metrics::DnsMetrics,
}

/// The `policy` label of Envoy's RBAC statistics (`namespace/name`, or `none` for a decision
/// no policy made: allowed without ALLOW policies, denied for lack of a match).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// `namespace/name`.
    pub policy: String,
}

/// Envoy's RBAC statistics for one filter kind (`http` requests or `tcp` connections).
#[derive(Debug, Clone, Default)]
struct RbacFamilies {
    allowed: Family<PolicyLabels, Counter>,
    denied: Family<PolicyLabels, Counter>,
    shadow_allowed: Family<PolicyLabels, Counter>,
    shadow_denied: Family<PolicyLabels, Counter>,
    logged: Family<PolicyLabels, Counter>,
}

impl RbacFamilies {
    fn register(registry: &mut Registry, kind: &str, what: &str) -> Self {
        let f = Self::default();
        for (stat, help, family) in [
            ("allowed", "allowed", &f.allowed),
            ("denied", "denied", &f.denied),
            (
                "shadow_allowed",
                "a dry-run policy would have allowed",
                &f.shadow_allowed,
            ),
            (
                "shadow_denied",
                "a dry-run policy would have denied",
                &f.shadow_denied,
            ),
            (
                "logged",
                "an AUDIT policy marked for the audit log",
                &f.logged,
            ),
        ] {
            registry.register(
                format!("envoy_{kind}_rbac_{stat}"),
                format!("{what} {help}, by the policy that decided"),
                family.clone(),
            );
        }
        f
    }

    fn counters(&self, l: &PolicyLabels) -> crate::policy::authz::Counters {
        crate::policy::authz::Counters {
            allowed: self.allowed.get_or_create(l).clone(),
            denied: self.denied.get_or_create(l).clone(),
            shadow_allowed: self.shadow_allowed.get_or_create(l).clone(),
            shadow_denied: self.shadow_denied.get_or_create(l).clone(),
            logged: self.logged.get_or_create(l).clone(),
        }
    }
}

/// The `provider` label of the ext_authz statistics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// The extension provider's name.
    pub provider: String,
}

/// Envoy's ext_authz statistics (`envoy_http_ext_authz_*`), by provider.
#[derive(Debug, Clone, Default)]
struct ExtAuthzFamilies {
    ok: Family<ProviderLabels, Counter>,
    denied: Family<ProviderLabels, Counter>,
    error: Family<ProviderLabels, Counter>,
    failure_mode_allowed: Family<ProviderLabels, Counter>,
}

impl ExtAuthzFamilies {
    fn register(registry: &mut Registry, gate: &StatsGate) -> Self {
        let f = Self::default();
        for (stat, help, family) in [
            (
                "ok",
                "Checks the external authorizer allowed, by provider",
                &f.ok,
            ),
            (
                "denied",
                "Checks the external authorizer denied, by provider",
                &f.denied,
            ),
            (
                "error",
                "Checks the external authorizer gave no answer to (unreachable, timeout, \
                 error), by provider",
                &f.error,
            ),
            (
                "failure_mode_allowed",
                "Requests allowed by failOpen although the external authorizer gave no \
                 answer, by provider",
                &f.failure_mode_allowed,
            ),
        ] {
            gate.register(
                registry,
                format!("envoy_http_ext_authz_{stat}"),
                help,
                format!("http.{INBOUND_STAT_PREFIX}.ext_authz.{stat}"),
                family.clone(),
            );
        }
        f
    }
}

/// The stat prefix of Istio's inbound HTTP connection manager, under which Envoy names the
/// statistics of its HTTP filters (`http.inbound_0.0.0.0_15006.ext_authz.ok`).
const INBOUND_STAT_PREFIX: &str = "inbound_0.0.0.0_15006";

/// The `proxyStatsMatcher` in force, shared by the statistics it selects at each scrape.
#[derive(Clone, Debug, Default)]
pub struct StatsGate(Arc<ArcSwap<StatsMatcher>>);

impl StatsGate {
    /// Puts `matcher` in force for the next scrapes.
    pub fn set(&self, matcher: Arc<StatsMatcher>) {
        self.0.store(matcher);
    }

    /// Registers `metric` under `name`, exported only while the matcher includes its Envoy
    /// name `envoy`.
    fn register<M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static>(
        &self,
        registry: &mut Registry,
        name: impl Into<String>,
        help: &'static str,
        envoy: String,
        metric: M,
    ) {
        registry.register_collector(Box::new(Gated {
            name: name.into(),
            help,
            envoy,
            metric,
            gate: self.clone(),
        }));
    }
}

/// One Envoy statistic (or family) that Istio exports only when `proxyStatsMatcher`
/// includes it.
#[derive(Debug)]
struct Gated<M> {
    name: String,
    help: &'static str,
    envoy: String,
    metric: M,
    gate: StatsGate,
}

impl<M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static> Collector for Gated<M> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if !self.gate.0.load().matches(&self.envoy) {
            return Ok(());
        }
        let family =
            encoder.encode_descriptor(&self.name, self.help, None, self.metric.metric_type())?;
        self.metric.encode(family)
    }
}

/// Metrics of the inbound security checks.
#[derive(Debug, Clone, Default)]
pub struct SecurityMetrics {
    http: RbacFamilies,
    tcp: RbacFamilies,
    ext_authz: ExtAuthzFamilies,
    refused: Family<ReasonLabels, Counter>,
    /// `meshlite_audit_log_dropped_total`: audit lines dropped because the writer fell
    /// behind.
    pub audit_log_dropped: Counter,
    /// `envoy_http_jwt_authn_{allowed,denied}_total`: RequestAuthentication outcomes.
    jwt: crate::policy::jwt::JwtStats,
}

impl SecurityMetrics {
    fn register(registry: &mut Registry, gate: &StatsGate) -> Self {
        let mut m = Self {
            http: RbacFamilies::register(registry, "http", "HTTP requests"),
            tcp: RbacFamilies::register(registry, "tcp", "TCP connections"),
            ext_authz: ExtAuthzFamilies::register(registry, gate),
            ..Default::default()
        };
        m.refused = Family::default();
        registry.register(
            "meshlite_inbound_connections_refused_total",
            "Inbound connections closed without an answer, by reason (plaintext under STRICT, \
             mutual TLS under DISABLE, no port to serve)",
            m.refused.clone(),
        );
        registry.register(
            "meshlite_audit_log_dropped_total",
            "Audit log lines dropped because the writer fell behind",
            m.audit_log_dropped.clone(),
        );
        gate.register(
            registry,
            "envoy_http_jwt_authn_allowed",
            "Requests RequestAuthentication let through: a verified JWT, or none presented",
            format!("http.{INBOUND_STAT_PREFIX}.jwt_authn.allowed"),
            m.jwt.allowed.clone(),
        );
        gate.register(
            registry,
            "envoy_http_jwt_authn_denied",
            "Requests RequestAuthentication refused with 401: a JWT presented and not valid",
            format!("http.{INBOUND_STAT_PREFIX}.jwt_authn.denied"),
            m.jwt.denied.clone(),
        );
        m
    }

    /// Counts an inbound connection refused before any answer.
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }
}

impl crate::policy::authz::StatsSource for SecurityMetrics {
    fn jwt_authn(&self) -> crate::policy::jwt::JwtStats {
        self.jwt.clone()
    }

    fn stats(&self, policy: &str) -> crate::policy::authz::PolicyStats {
        let l = PolicyLabels {
            policy: policy.to_string(),
        };
        crate::policy::authz::PolicyStats {
            http: self.http.counters(&l),
            tcp: self.tcp.counters(&l),
        }
    }

    fn ext_authz(&self, provider: &str) -> crate::policy::ext_authz::Stats {
        let l = ProviderLabels {
            provider: provider.to_string(),
        };
        let f = &self.ext_authz;
        crate::policy::ext_authz::Stats {
            ok: f.ok.get_or_create(&l).clone(),
            denied: f.denied.get_or_create(&l).clone(),
            error: f.error.get_or_create(&l).clone(),
            failure_mode_allowed: f.failure_mode_allowed.get_or_create(&l).clone(),
        }
    }
}

/// `meshlite_xds_*` and `meshlite_cert_*`: how this proxy stands with its control plane.
#[derive(Debug, Default, Clone)]
pub struct ControlMetrics {
    /// `meshlite_xds_connected`: 1 while the xDS stream is up.
    pub connected: Gauge,
    /// `meshlite_xds_updates_total{type_url,result}`: pushes accepted (ack) or refused (nack).
    pub updates: Family<UpdateLabels, Counter>,
    /// `meshlite_config_version`: the snapshot version serving now.
    pub config_version: Gauge,
    /// `meshlite_serving_persisted_config`: 1 while serving config restored from the state
    /// directory, not yet confirmed by a control plane.
    pub persisted: Gauge,
    /// `meshlite_cert_expiry_timestamp_seconds`: when the current certificate expires.
    pub cert_expiry: Gauge,
    /// `meshlite_cert_rotations_total{result}`.
    pub rotations: Family<ResultLabels, Counter>,
}

/// `istio_agent_cert_expiry_seconds`, as Istio's agent exports it: the seconds left before
/// the workload certificate expires, computed when scraped.
#[derive(Debug)]
struct CertRemaining(Gauge);

impl prometheus_client::collector::Collector for CertRemaining {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let expiry = self.0.get();
        if expiry == 0 {
            return Ok(());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let remaining = Gauge::<i64>::default();
        remaining.set(expiry - now);
        let metric = encoder.encode_descriptor(
            "istio_agent_cert_expiry_seconds",
            "Seconds left before the workload certificate expires",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        prometheus_client::encoding::EncodeMetric::encode(&remaining, metric)
    }
}

/// Labels of `meshlite_xds_updates_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpdateLabels {
    /// Resource type URL.
    pub type_url: String,
    /// `ack` or `nack`.
    pub result: &'static str,
}

/// A `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

impl ControlMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "meshlite_xds_connected",
            "1 while the xDS stream to the control plane is up",
            m.connected.clone(),
        );
        registry.register(
            "meshlite_xds_updates_total",
            "Config pushes accepted (ack) or refused (nack), by type",
            m.updates.clone(),
        );
        registry.register(
            "meshlite_config_version",
            "Version of the configuration snapshot serving now",
            m.config_version.clone(),
        );
        registry.register(
            "meshlite_serving_persisted_config",
            "1 while serving config restored from the state directory",
            m.persisted.clone(),
        );
        registry.register(
            "meshlite_cert_expiry_timestamp_seconds",
            "When the workload certificate expires (Unix time)",
            m.cert_expiry.clone(),
        );
        registry.register_collector(Box::new(CertRemaining(m.cert_expiry.clone())));
        registry.register(
            "meshlite_cert_rotations_total",
            "Certificate renewals, by result",
            m.rotations.clone(),
        );
        m
    }
}

/// How often idle series are swept: a series untouched for two sweeps (10 to 15 minutes,
/// several scrape intervals) is removed.
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// Sweeps the idle series of Istio's families every [`SWEEP_INTERVAL`] for as long as the
/// proxy's telemetry exists.
pub async fn sweep_idle_series(telemetry: std::sync::Weak<super::Telemetry>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(t) = telemetry.upgrade() else { return };
        let removed = t.metrics.istio.sweep();
        if removed > 0 {
            tracing::debug!(removed, "idle metric series removed");
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Relays a TCP stream both ways until either side closes, and records the connection's
    /// close under `labels` with its bytes: `caller` to `destination` in
    /// `istio_tcp_received_bytes_total`, back in `istio_tcp_sent_bytes_total`. Bytes of a
    /// relay that ends in an error are not counted.
    pub async fn relay<A, B>(
        &self,
        report: &TcpReport,
        caller: &mut A,
        destination: &mut B,
    ) -> std::io::Result<()>
    where
        A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
        B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    {
        let relayed = tokio::io::copy_bidirectional(caller, destination).await;
        let (received, sent) = relayed.as_ref().map_or((0, 0), |r| *r);
        self.istio
            .record_tcp(report, TcpEvent::Closed { received, sent });
        relayed.map(|_| ())
    }

    /// Creates every metric with the default series limits.
    pub fn new() -> Self {
        Self::with_limits(SeriesLimits::default())
    }

    /// Creates and registers every metric; Istio's families hold at most `limits`.
    pub fn with_limits(limits: SeriesLimits) -> Self {
        let mut registry = Registry::default();
        let series_dropped = Counter::default();
        registry.register(
            "meshlite_metric_series_dropped_total",
            "Records not kept because their metric family held as many series as it may",
            series_dropped.clone(),
        );
        let istio = Arc::new(IstioMetrics::new(limits, series_dropped.clone()));
        registry.register_collector(Box::new(istio.clone()));
        let tls_failures = TlsFailureCounter::default();
        registry.register(
            "meshlite_tls_handshake_failures_total",
            "TLS handshakes refused, by direction and the check that failed",
            tls_failures.0.clone(),
        );
        let downstream_active = Gauge::default();
        registry.register(
            "meshlite_downstream_connections_active",
            "Open downstream connections",
            downstream_active.clone(),
        );
        let downstream_resting = Gauge::default();
        registry.register(
            "meshlite_downstream_connections_resting",
            "Open downstream HTTP/1.1 connections idle with their buffers given back",
            downstream_resting.clone(),
        );
        let upstream_connects = Counter::default();
        registry.register(
            "meshlite_upstream_connections_total",
            "Connections opened to destination sidecars",
            upstream_connects.clone(),
        );
        let access_log = super::access_log::AccessLogStats::register(&mut registry);
        let draining = Gauge::default();
        registry.register(
            "meshlite_draining",
            "1 while the proxy drains before exit",
            draining.clone(),
        );
        let closed_by_reason = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "meshlite_downstream_connections_closed_by_proxy_total",
            "Downstream connections the proxy closed, by reason (idle, header_timeout, drain)",
            closed_by_reason.clone(),
        );
        let control = ControlMetrics::register(&mut registry);
        let clusters = Arc::new(ClusterStatsRegistry::default());
        registry.register_collector(Box::new(clusters.clone()));
        let stats_gate = StatsGate::default();
        let security = SecurityMetrics::register(&mut registry, &stats_gate);
        let traces = super::trace::TraceStats::register(&mut registry);
        let dns = crate::dns::metrics::DnsMetrics::register(&mut registry);
        Self {
            dns,
            stats_gate,
            traces,
            security,
            control,
            clusters,
            registry,
            istio,
            series_dropped,
            tls_failures,
            downstream_active,
            downstream_resting,
            upstream_connects,
            access_log,
            draining,
            closed_by_reason,
        }
    }

    /// Puts the `proxyStatsMatcher` of the snapshot serving now in force for the next
    /// scrapes: which cluster and HTTP filter statistics are exported.
    pub fn set_stats_matcher(&self, matcher: Arc<StatsMatcher>) {
        self.clusters.set_matcher(matcher.clone());
        self.stats_gate.set(matcher);
    }

    /// Counts a downstream connection the proxy closed on purpose.
    pub fn closed_by_proxy(&self, reason: &'static str) {
        self.closed_by_reason
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Renders the registry in Prometheus text format 0.0.4 ([`super::prom`]).
    pub fn encode(&self) -> String {
        super::prom::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::authz::StatsSource;
    use crate::telemetry::stats_matcher::StatsInclusions;

    #[test]
    fn http_filter_statistics_follow_the_stats_matcher_as_istio_exports_them() {
        let m = Metrics::new();
        m.security.ext_authz("opa").denied.inc();
        m.security.jwt_authn().allowed.inc();
        let text = m.encode();
        assert!(
            !text.contains("envoy_http_ext_authz") && !text.contains("envoy_http_jwt_authn"),
            "Istio's default set leaves the HTTP filters' statistics out: {text}"
        );
        let only_ext_authz = StatsMatcher::new(&StatsInclusions {
            regexps: vec![".*ext_authz.*".into()],
            ..Default::default()
        })
        .unwrap();
        m.set_stats_matcher(Arc::new(only_ext_authz));
        let text = m.encode();
        assert!(
            text.contains("envoy_http_ext_authz_denied{provider=\"opa\"} 1"),
            "{text}"
        );
        assert!(!text.contains("envoy_http_jwt_authn"), "{text}");
        let by_suffix = StatsMatcher::new(&StatsInclusions {
            suffixes: vec!["jwt_authn.allowed".into()],
            ..Default::default()
        })
        .unwrap();
        m.set_stats_matcher(Arc::new(by_suffix));
        let text = m.encode();
        assert!(text.contains("envoy_http_jwt_authn_allowed 1"), "{text}");
        assert!(!text.contains("envoy_http_jwt_authn_denied"), "{text}");
    }
}
