//! The control plane's Prometheus metrics (port 15014, `/metrics`), named `meshlite_control_*`
//! after istiod's `pilot_*` and `citadel_*` set: connected proxies, pushes and their time,
//! convergence (a change seen until every proxy ACKed it), NACKs, config errors, CSRs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Buckets in seconds, 1 ms to 30 s.
const SECONDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A label set with a type URL.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// Resource type URL.
    pub type_url: String,
}

/// A label set with a result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// What happened.
    pub result: &'static str,
}

/// Every control-plane metric.
#[derive(Debug)]
pub struct ControlMetrics {
    registry: Registry,
    /// `meshlite_control_connected_proxies`.
    pub connected: Gauge,
    /// `meshlite_control_pushes_total{type_url}`: responses sent.
    pub pushes: Family<TypeLabel, Counter>,
    /// `meshlite_control_push_duration_seconds`: computing and sending one proxy's push.
    pub push_time: Histogram,
    /// `meshlite_control_convergence_seconds`: change seen -> every connected proxy ACKed.
    pub convergence: Histogram,
    /// `meshlite_control_nacks_total{type_url}`.
    pub nacks: Family<TypeLabel, Counter>,
    /// `meshlite_control_config_reloads_total{result}`: accepted or refused config edits.
    pub reloads: Family<ResultLabel, Counter>,
    /// `meshlite_control_config_errors`: problems in the config on disk now (0 when it was
    /// accepted).
    pub config_errors: Gauge,
    /// `meshlite_control_csr_total{result}`: signed or refused.
    pub csrs: Family<ResultLabel, Counter>,
    /// `meshlite_control_config_generation`: the generation pushed last.
    pub generation: Gauge,
    /// `meshlite_control_announcements_refused_total{result}`: workload announcements refused
    /// because they claim what the certificate does not grant.
    pub announcements_refused: Family<ResultLabel, Counter>,
    /// `meshlite_control_ca_reloads_total{result}`: plug-in CA changes put in force or
    /// refused.
    pub ca_reloads: Family<ResultLabel, Counter>,
    /// `meshlite_control_jwks_fetch_total{result}`: `jwksUri` fetches that succeeded or
    /// failed (a failure makes every token of that issuer be rejected).
    pub jwks_fetches: Family<ResultLabel, Counter>,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControlMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            connected: Gauge::default(),
            pushes: Family::default(),
            push_time: Histogram::new(SECONDS),
            convergence: Histogram::new(SECONDS),
            nacks: Family::default(),
            reloads: Family::default(),
            config_errors: Gauge::default(),
            csrs: Family::default(),
            generation: Gauge::default(),
            announcements_refused: Family::default(),
            ca_reloads: Family::default(),
            jwks_fetches: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "meshlite_control_connected_proxies",
            "Proxies with an open xDS stream",
            m.connected.clone(),
        );
        registry.register(
            "meshlite_control_pushes",
            "xDS responses sent, by type",
            m.pushes.clone(),
        );
        registry.register(
            "meshlite_control_push_duration_seconds",
            "Time to compute and send one proxy's push",
            m.push_time.clone(),
        );
        registry.register(
            "meshlite_control_convergence_seconds",
            "From a change seen to every connected proxy having ACKed it",
            m.convergence.clone(),
        );
        registry.register(
            "meshlite_control_nacks",
            "Pushes refused by proxies, by type",
            m.nacks.clone(),
        );
        registry.register(
            "meshlite_control_config_reloads",
            "Config edits accepted or refused",
            m.reloads.clone(),
        );
        registry.register(
            "meshlite_control_config_errors",
            "Problems in the config directory now (the last good config is served)",
            m.config_errors.clone(),
        );
        registry.register(
            "meshlite_control_csrs",
            "Certificate requests signed or refused",
            m.csrs.clone(),
        );
        registry.register(
            "meshlite_control_config_generation",
            "Generation of the mesh state pushed last",
            m.generation.clone(),
        );
        registry.register(
            "meshlite_control_announcements_refused",
            "Workload announcements refused: labels or services the certificate does not grant",
            m.announcements_refused.clone(),
        );
        registry.register(
            "meshlite_control_ca_reloads",
            "Plug-in CA changes on disk put in force (accepted) or refused",
            m.ca_reloads.clone(),
        );
        registry.register(
            "meshlite_control_jwks_fetch",
            "jwksUri fetches, by result (success, failure); after a failure with no earlier \
             key set, that issuer's tokens are all rejected",
            m.jwks_fetches.clone(),
        );
        Self { registry, ..m }
    }

    /// Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
