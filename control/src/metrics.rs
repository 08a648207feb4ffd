//! The control plane's Prometheus metrics (port 15014, `/metrics`), under istiod's names, label
//! names and types wherever istiod has an equivalent, so the dashboards and alerts written for
//! istiod work unchanged: `pilot_*` for xDS, `galley_validation_*` for config validation,
//! `citadel_server_*` for the CA, `pilot_jwks_resolver_*` for `jwksUri` fetches. What istiod
//! has no name for is `meshlite_control_*`. Nothing is exported under two names.
//!
//! The exposition is Prometheus text format 0.0.4, the one istiod serves. istiod's counters
//! carry no `_total` suffix (its OpenTelemetry exporter is set up without counter suffixes:
//! `pilot_xds_pushes{type="cds"} 12` under `# TYPE pilot_xds_pushes counter`), whereas
//! prometheus-client's [`Counter`] appends `_total` to every sample. Counters here are therefore
//! [`PlainCounter`]s, exported under exactly the registered name; the `meshlite_control_*`
//! counters are registered with their `_total` name, so their samples are named as before and
//! their `# TYPE` line names the samples, as 0.0.4 expects. (OpenMetrics requires `_total` on
//! counter samples, which is why this is not served as OpenMetrics.)
//!
//! Differences from istiod, by necessity:
//! - `pilot_xds` has no `version` label: istiod labels it with the version each proxy reports
//!   in its node metadata, and meshlite's proxies report none.
//! - `type` is the short name of the Envoy xDS type that carries the same configuration under
//!   Istio ([`xds_type`]): meshlite's resources are its own protos.
//! - Histograms have istiod's bucket bounds plus finer ones where meshlite's timings fall
//!   (every istiod `le` is present, so a query on one of them means the same here).
//! - `galley_validation_*` count the resources of the config directory (see
//!   [`crate::validate::admission`]) and are labelled `group` and `resource` (no `version`:
//!   the loader does not keep the apiVersion a resource was written with).

use meshlite_xds_proto::type_url;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// istiod's bounds of `pilot_proxy_convergence_time`, seconds (pilot/pkg/xds/monitoring.go).
pub const ISTIOD_CONVERGENCE_BUCKETS: [f64; 8] = [0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];

/// istiod's bounds of `pilot_xds_push_time`, seconds (pilot/pkg/xds/monitoring.go).
pub const ISTIOD_PUSH_TIME_BUCKETS: [f64; 8] = [0.01, 0.1, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];

/// Bounds of `pilot_proxy_convergence_time`: istiod's, plus finer ones from 10 ms to 300 ms,
/// where a change lands with the default 100 ms debounce.
pub const CONVERGENCE_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0,
];

/// Bounds of `pilot_xds_push_time`: istiod's, plus finer ones from 1 ms, where one proxy's
/// push of one type usually lands.
pub const PUSH_TIME_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0,
];

/// A counter exported under exactly the name it is registered with, as istiod's counters are:
/// `# TYPE <name> counter` and `<name>{...} <value>`, no `_total` appended.
#[derive(Clone, Debug, Default)]
pub struct PlainCounter(Counter);

impl PlainCounter {
    /// Adds one; returns the previous value.
    pub fn inc(&self) -> u64 {
        self.0.inc()
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl TypedMetric for PlainCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for PlainCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The sample line of a gauge is the name, the labels and the value: what a counter of
        // text format 0.0.4 looks like. The `# TYPE` line comes from `metric_type`.
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// istiod's `type` label of its xDS metrics for a meshlite type URL: the short name of the
/// Envoy xDS type that carries the same configuration in an Istio mesh. Services and their
/// DestinationRule policy are clusters (`cds`), endpoints `eds`, route tables `rds`, inbound
/// policy (PeerAuthentication, AuthorizationPolicy) and mesh-wide settings are listener
/// configuration (`lds`), the trust bundle is Istio's `ROOTCA` secret (`sds`).
pub fn xds_type(type_url: &str) -> &'static str {
    match type_url {
        type_url::SERVICE | type_url::DESTINATION_POLICY => "cds",
        type_url::ENDPOINTS => "eds",
        type_url::ROUTE_TABLE => "rds",
        type_url::INBOUND_POLICY | type_url::MESH_CONFIG => "lds",
        type_url::TRUST_BUNDLE => "sds",
        _ => "unknown",
    }
}

/// istiod's `type` label: an xDS type's short name ([`xds_type`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// `cds`, `eds`, `lds`, `rds` or `sds`.
    pub r#type: &'static str,
}

impl TypeLabel {
    /// The label of a meshlite type URL.
    pub fn of(type_url: &str) -> Self {
        Self {
            r#type: xds_type(type_url),
        }
    }
}

/// A label set with a result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// What happened.
    pub result: &'static str,
}

/// The labels of `galley_validation_*`: the resource's API group and plural resource name, as
/// Kubernetes names them (`networking.istio.io`, `virtualservices`); both empty for a file or
/// document that did not parse into a resource.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// API group.
    pub group: &'static str,
    /// Plural resource name.
    pub resource: &'static str,
}

/// The `error` label of `citadel_server_csr_sign_err_count`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    /// Why the CSR was refused ([`crate::ca::CaError::reason`]).
    pub error: &'static str,
}

/// `jwksUri` fetches (istiod's JWKS resolver's two counters).
#[derive(Clone, Debug, Default)]
pub struct JwksFetches {
    /// `pilot_jwks_resolver_network_fetch_success_total`.
    pub success: PlainCounter,
    /// `pilot_jwks_resolver_network_fetch_fail_total`: after a failure with no earlier key
    /// set, that issuer's tokens are all rejected.
    pub failure: PlainCounter,
}

type HistogramFamily = Family<TypeLabel, Histogram, fn() -> Histogram>;

fn push_time_histogram() -> Histogram {
    Histogram::new(PUSH_TIME_BUCKETS)
}

/// Every control-plane metric.
#[derive(Debug)]
pub struct ControlMetrics {
    registry: Registry,
    /// `pilot_xds`: proxies with an open xDS stream.
    pub connected: Gauge,
    /// `pilot_xds_pushes{type}`: xDS responses sent.
    pub pushes: Family<TypeLabel, PlainCounter>,
    /// `pilot_xds_push_time{type}`: computing and sending one proxy's change of one type.
    pub push_time: HistogramFamily,
    /// `pilot_proxy_convergence_time`: per proxy, a change seen -> that proxy ACKed all of it.
    pub convergence: Histogram,
    /// `pilot_total_xds_rejects{type}`: responses NACKed by proxies.
    pub rejects: Family<TypeLabel, PlainCounter>,
    /// `galley_validation_passed{group,resource}`: resources put in force by a config edit.
    pub validation_passed: Family<ResourceLabels, PlainCounter>,
    /// `galley_validation_failed{group,resource}`: resources (or unparsable documents) that
    /// made a config edit be refused.
    pub validation_failed: Family<ResourceLabels, PlainCounter>,
    /// `citadel_server_csr_count`: certificate requests received.
    pub csrs: PlainCounter,
    /// `citadel_server_authentication_failure_count`: requests whose credential (bootstrap
    /// token or client certificate) was refused.
    pub csr_authn_failures: PlainCounter,
    /// `citadel_server_csr_parsing_err_count`: CSRs that do not parse or whose signature does
    /// not verify.
    pub csr_parse_errors: PlainCounter,
    /// `citadel_server_csr_sign_err_count{error}`: CSRs refused for what they ask, or that
    /// could not be signed.
    pub csr_sign_errors: Family<ErrorLabel, PlainCounter>,
    /// `citadel_server_success_cert_issuance_count`: certificates issued.
    pub certs_issued: PlainCounter,
    /// `citadel_server_root_cert_expiry_timestamp`: Unix seconds of the root's notAfter.
    pub root_expiry: Gauge,
    /// `citadel_server_cert_chain_expiry_timestamp`: Unix seconds of the earliest notAfter of
    /// the signing chain (no certificate is issued beyond it).
    pub chain_expiry: Gauge,
    /// `pilot_jwks_resolver_network_fetch_{success,fail}_total`.
    pub jwks_fetches: JwksFetches,
    /// `meshlite_control_config_errors`: problems in the config on disk now (0 when it was
    /// accepted).
    pub config_errors: Gauge,
    /// `meshlite_control_config_generation`: the generation pushed last.
    pub generation: Gauge,
    /// `meshlite_control_announcements_refused_total{result}`: workload announcements refused
    /// because they claim what the certificate does not grant.
    pub announcements_refused: Family<ResultLabel, PlainCounter>,
    /// `meshlite_control_ca_reloads_total{result}`: plug-in CA changes put in force or
    /// refused.
    pub ca_reloads: Family<ResultLabel, PlainCounter>,
    /// `meshlite_control_graph_scrapes_total{result}`: reads of sidecars' metrics for the
    /// service graph (`ok`, `connect_error`, `timeout`, `http_error`, `too_large`,
    /// `parse_error`).
    pub graph_scrapes: Family<ResultLabel, PlainCounter>,
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
            push_time: Family::new_with_constructor(push_time_histogram as fn() -> Histogram),
            convergence: Histogram::new(CONVERGENCE_BUCKETS),
            rejects: Family::default(),
            validation_passed: Family::default(),
            validation_failed: Family::default(),
            csrs: PlainCounter::default(),
            csr_authn_failures: PlainCounter::default(),
            csr_parse_errors: PlainCounter::default(),
            csr_sign_errors: Family::default(),
            certs_issued: PlainCounter::default(),
            root_expiry: Gauge::default(),
            chain_expiry: Gauge::default(),
            jwks_fetches: JwksFetches::default(),
            config_errors: Gauge::default(),
            generation: Gauge::default(),
            announcements_refused: Family::default(),
            ca_reloads: Family::default(),
            graph_scrapes: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "pilot_xds",
            "Proxies connected to this control plane over xDS",
            m.connected.clone(),
        );
        registry.register(
            "pilot_xds_pushes",
            "xDS responses sent to proxies, by type",
            m.pushes.clone(),
        );
        registry.register(
            "pilot_xds_push_time",
            "Seconds to compute and send one proxy's change of one type",
            m.push_time.clone(),
        );
        registry.register(
            "pilot_proxy_convergence_time",
            "Seconds from a config or registry change being seen to a proxy having ACKed all \
             of it, one observation per proxy and change",
            m.convergence.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "xDS responses proxies refused (NACK), by type",
            m.rejects.clone(),
        );
        registry.register(
            "galley_validation_passed",
            "Config resources that passed validation and were put in force by an edit",
            m.validation_passed.clone(),
        );
        registry.register(
            "galley_validation_failed",
            "Config resources or documents that failed validation (the edit is refused)",
            m.validation_failed.clone(),
        );
        registry.register(
            "citadel_server_csr_count",
            "Certificate signing requests received by the CA",
            m.csrs.clone(),
        );
        registry.register(
            "citadel_server_authentication_failure_count",
            "Certificate requests whose bootstrap token or client certificate was refused",
            m.csr_authn_failures.clone(),
        );
        registry.register(
            "citadel_server_csr_parsing_err_count",
            "Certificate requests whose CSR did not parse or verify",
            m.csr_parse_errors.clone(),
        );
        registry.register(
            "citadel_server_csr_sign_err_count",
            "CSRs refused for what they ask, or that could not be signed, by reason",
            m.csr_sign_errors.clone(),
        );
        registry.register(
            "citadel_server_success_cert_issuance_count",
            "Workload certificates issued",
            m.certs_issued.clone(),
        );
        registry.register(
            "citadel_server_root_cert_expiry_timestamp",
            "Unix time in seconds when the root certificate the CA signs under expires",
            m.root_expiry.clone(),
        );
        registry.register(
            "citadel_server_cert_chain_expiry_timestamp",
            "Unix time in seconds when the first certificate of the CA's signing chain expires",
            m.chain_expiry.clone(),
        );
        registry.register(
            "pilot_jwks_resolver_network_fetch_success_total",
            "jwksUri fetches that succeeded",
            m.jwks_fetches.success.clone(),
        );
        registry.register(
            "pilot_jwks_resolver_network_fetch_fail_total",
            "jwksUri fetches that failed; with no earlier key set, that issuer's tokens are \
             all rejected",
            m.jwks_fetches.failure.clone(),
        );
        registry.register(
            "meshlite_control_config_errors",
            "Problems in the config directory now (the last good config is served)",
            m.config_errors.clone(),
        );
        registry.register(
            "meshlite_control_config_generation",
            "Generation of the mesh state pushed last",
            m.generation.clone(),
        );
        registry.register(
            "meshlite_control_announcements_refused_total",
            "Workload announcements refused: labels or services the certificate does not grant",
            m.announcements_refused.clone(),
        );
        registry.register(
            "meshlite_control_ca_reloads_total",
            "Plug-in CA changes on disk put in force (accepted) or refused",
            m.ca_reloads.clone(),
        );
        registry.register(
            "meshlite_control_graph_scrapes_total",
            "Reads of sidecars' metrics for the service graph, by result",
            m.graph_scrapes.clone(),
        );
        Self { registry, ..m }
    }

    /// Records the CA in force: its root's and its signing chain's expiry.
    pub fn set_ca_expiry(&self, root_not_after: i64, chain_not_after: i64) {
        self.root_expiry.set(root_not_after);
        self.chain_expiry.set(chain_not_after);
    }

    /// Prometheus text format 0.0.4 (what `/metrics` serves as [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        out
    }
}

/// The content type of [`ControlMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[track_caller]
    fn assert_has(text: &str, line: &str) {
        assert!(
            lines(text).contains(&line),
            "missing line {line:?} in:\n{text}"
        );
    }

    /// A populated registry, as after a proxy connected, got its config, NACKed a route
    /// table, and the CA signed and refused CSRs.
    fn populated() -> ControlMetrics {
        let m = ControlMetrics::new();
        m.connected.inc();
        m.pushes
            .get_or_create(&TypeLabel::of(type_url::SERVICE))
            .inc();
        m.pushes
            .get_or_create(&TypeLabel::of(type_url::DESTINATION_POLICY))
            .inc();
        m.pushes
            .get_or_create(&TypeLabel::of(type_url::ROUTE_TABLE))
            .inc();
        m.push_time
            .get_or_create(&TypeLabel::of(type_url::ENDPOINTS))
            .observe(0.002);
        m.convergence.observe(0.12);
        m.rejects
            .get_or_create(&TypeLabel::of(type_url::ROUTE_TABLE))
            .inc();
        m.validation_passed
            .get_or_create(&ResourceLabels {
                group: "networking.istio.io",
                resource: "virtualservices",
            })
            .inc();
        m.validation_failed
            .get_or_create(&ResourceLabels {
                group: "networking.istio.io",
                resource: "destinationrules",
            })
            .inc();
        for _ in 0..3 {
            m.csrs.inc();
        }
        m.certs_issued.inc();
        m.csr_authn_failures.inc();
        m.csr_sign_errors
            .get_or_create(&ErrorLabel {
                error: "wrong_identity",
            })
            .inc();
        m.set_ca_expiry(2_000_000_000, 1_900_000_000);
        m.jwks_fetches.success.inc();
        m.ca_reloads
            .get_or_create(&ResultLabel { result: "accepted" })
            .inc();
        m
    }

    #[test]
    fn istiod_names_types_and_labels_are_exported_exactly() {
        let text = populated().encode();
        for line in [
            "# TYPE pilot_xds gauge",
            "pilot_xds 1",
            "# TYPE pilot_xds_pushes counter",
            "pilot_xds_pushes{type=\"cds\"} 2",
            "pilot_xds_pushes{type=\"rds\"} 1",
            "# TYPE pilot_xds_push_time histogram",
            "pilot_xds_push_time_bucket{le=\"0.0025\",type=\"eds\"} 1",
            "pilot_xds_push_time_count{type=\"eds\"} 1",
            "# TYPE pilot_proxy_convergence_time histogram",
            "pilot_proxy_convergence_time_bucket{le=\"0.1\"} 0",
            "pilot_proxy_convergence_time_bucket{le=\"0.15\"} 1",
            "pilot_proxy_convergence_time_bucket{le=\"+Inf\"} 1",
            "pilot_proxy_convergence_time_count 1",
            "# TYPE pilot_total_xds_rejects counter",
            "pilot_total_xds_rejects{type=\"rds\"} 1",
            "# TYPE galley_validation_passed counter",
            "galley_validation_passed{group=\"networking.istio.io\",resource=\"virtualservices\"} 1",
            "# TYPE galley_validation_failed counter",
            "galley_validation_failed{group=\"networking.istio.io\",resource=\"destinationrules\"} 1",
            "# TYPE citadel_server_csr_count counter",
            "citadel_server_csr_count 3",
            "# TYPE citadel_server_success_cert_issuance_count counter",
            "citadel_server_success_cert_issuance_count 1",
            "# TYPE citadel_server_authentication_failure_count counter",
            "citadel_server_authentication_failure_count 1",
            "citadel_server_csr_parsing_err_count 0",
            "# TYPE citadel_server_csr_sign_err_count counter",
            "citadel_server_csr_sign_err_count{error=\"wrong_identity\"} 1",
            "# TYPE citadel_server_root_cert_expiry_timestamp gauge",
            "citadel_server_root_cert_expiry_timestamp 2000000000",
            "# TYPE citadel_server_cert_chain_expiry_timestamp gauge",
            "citadel_server_cert_chain_expiry_timestamp 1900000000",
            "# TYPE pilot_jwks_resolver_network_fetch_success_total counter",
            "pilot_jwks_resolver_network_fetch_success_total 1",
            "pilot_jwks_resolver_network_fetch_fail_total 0",
            "# TYPE meshlite_control_ca_reloads_total counter",
            "meshlite_control_ca_reloads_total{result=\"accepted\"} 1",
            "# TYPE meshlite_control_config_generation gauge",
            "# TYPE meshlite_control_config_errors gauge",
        ] {
            assert_has(&text, line);
        }
    }

    #[test]
    fn no_sample_carries_a_suffix_its_type_line_does_not_declare() {
        // Text format 0.0.4: a counter's samples are named exactly as its `# TYPE` line; a
        // histogram's add `_bucket`, `_sum` and `_count`; no OpenMetrics `# EOF`.
        let text = populated().encode();
        let mut types: Vec<(&str, &str)> = Vec::new();
        for line in lines(&text) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.push((name, kind));
                }
                continue;
            }
            assert!(!line.starts_with("# EOF"), "OpenMetrics EOF in 0.0.4 text");
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let declared = types.iter().any(|(family, kind)| match *kind {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(family)),
                _ => name == *family,
            });
            assert!(
                declared,
                "sample {name} has no matching # TYPE line:\n{text}"
            );
        }
        assert!(
            !text.contains("meshlite_control_connected_proxies")
                && !text.contains("meshlite_control_pushes")
                && !text.contains("meshlite_control_convergence")
                && !text.contains("meshlite_control_csrs")
                && !text.contains("meshlite_control_jwks"),
            "a metric istiod names is exported once, under istiod's name:\n{text}"
        );
    }

    #[test]
    fn every_meshlite_type_has_one_of_istiods_short_names() {
        for t in type_url::ALL {
            assert!(
                ["cds", "eds", "lds", "rds", "sds"].contains(&xds_type(t)),
                "{t} -> {}",
                xds_type(t)
            );
        }
        assert_eq!(xds_type(type_url::SERVICE), "cds");
        assert_eq!(xds_type(type_url::ENDPOINTS), "eds");
        assert_eq!(xds_type(type_url::ROUTE_TABLE), "rds");
        assert_eq!(xds_type(type_url::INBOUND_POLICY), "lds");
        assert_eq!(xds_type(type_url::TRUST_BUNDLE), "sds");
    }

    #[test]
    fn histograms_keep_every_istiod_bucket_bound() {
        for b in ISTIOD_CONVERGENCE_BUCKETS {
            assert!(CONVERGENCE_BUCKETS.contains(&b), "convergence lacks {b}");
        }
        for b in ISTIOD_PUSH_TIME_BUCKETS {
            assert!(PUSH_TIME_BUCKETS.contains(&b), "push time lacks {b}");
        }
        assert!(CONVERGENCE_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        assert!(PUSH_TIME_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }
}
