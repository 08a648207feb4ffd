//! The exposition format the sidecar serves, as Envoy serves it to Istio's Prometheus:
//! text format 0.0.4, counters named exactly as registered.
//!
//! prometheus-client writes OpenMetrics, whose counter samples always end in `_total`. Envoy's
//! do not always: its statistics are exported under their own names
//! (`envoy_cluster_upstream_rq_retry`, `envoy_cluster_outlier_detection_ejections_enforced_total`)
//! and Istio's under theirs (`istio_requests_total`). [`Counter`] is therefore a counter whose
//! samples carry exactly the registered name, with a `# TYPE <name> counter` line, and the
//! registry is encoded without OpenMetrics' `# EOF`.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A monotonic counter exported under exactly its registered name.
#[derive(Clone, Debug, Default)]
pub struct Counter(prometheus_client::metrics::counter::Counter);

impl Counter {
    /// Adds one; returns the previous value.
    pub fn inc(&self) -> u64 {
        self.0.inc()
    }

    /// Adds `v`; returns the previous value.
    pub fn inc_by(&self, v: u64) -> u64 {
        self.0.inc_by(v)
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.get()
    }

    /// The same count as prometheus-client's counter type (for code that takes that type):
    /// adding to either adds to both.
    pub fn shared(&self) -> prometheus_client::metrics::counter::Counter {
        self.0.clone()
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // A 0.0.4 counter sample is the name, the labels and the value: what the encoder
        // writes for a gauge. The `# TYPE` line comes from `metric_type`.
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Renders `registry` in text format 0.0.4.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_is_exported_under_its_exact_name_with_no_eof() {
        let mut r = Registry::default();
        let plain = Counter::default();
        let total = Counter::default();
        r.register("envoy_cluster_upstream_rq_retry", "Retries", plain.clone());
        r.register("istio_requests_total", "Requests", total.clone());
        plain.inc_by(3);
        total.inc();
        let text = encode(&r);
        assert!(text.contains("# TYPE envoy_cluster_upstream_rq_retry counter\nenvoy_cluster_upstream_rq_retry 3\n"), "{text}");
        assert!(
            text.contains("# TYPE istio_requests_total counter\nistio_requests_total 1\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
    }
}
