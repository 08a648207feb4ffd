//! The DNS proxy's counters, under the names Istio's agent exports for its own DNS proxy
//! (`istio_agent_dns_*`), so dashboards built for Istio read them unchanged, plus
//! `meshlite_dns_*` for what Istio does not count. Like Istio's, the families appear once
//! the proxy received its first query: a sidecar without DNS exports none of them.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::telemetry::prom::Counter;

/// Buckets of the upstream duration histogram, in seconds (1 ms to 5 s, the deadline).
const DURATION_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Counters of the DNS proxy.
#[derive(Debug, Clone)]
pub struct DnsMetrics {
    /// `istio_agent_dns_requests_total`: queries received (answered here or forwarded).
    pub requests: Counter,
    /// `istio_agent_dns_upstream_requests_total`: queries forwarded upstream.
    pub upstream_requests: Counter,
    /// `istio_agent_dns_upstream_failures_total`: forwarded queries no resolver answered
    /// (the client got SERVFAIL).
    pub upstream_failures: Counter,
    /// `istio_agent_dns_upstream_request_duration_seconds`: how long forwarded queries took.
    pub upstream_duration: Histogram,
    /// `meshlite_dns_malformed_total`: packets that did not parse (FORMERR or dropped).
    pub malformed: Counter,
    /// `meshlite_dns_overload_dropped_total`: queries dropped because as many as the proxy
    /// allows were in flight.
    pub overloaded: Counter,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        Self {
            requests: Counter::default(),
            upstream_requests: Counter::default(),
            upstream_failures: Counter::default(),
            upstream_duration: Histogram::new(DURATION_BUCKETS),
            malformed: Counter::default(),
            overloaded: Counter::default(),
        }
    }
}

impl DnsMetrics {
    /// Creates them and registers their exporter.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register_collector(Box::new(m.clone()));
        m
    }
}

impl Collector for DnsMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.requests.get() == 0 {
            return Ok(());
        }
        let counters = [
            (
                "istio_agent_dns_requests_total",
                "Total number of DNS requests",
                &self.requests,
            ),
            (
                "istio_agent_dns_upstream_requests_total",
                "Total number of DNS requests forwarded to upstream",
                &self.upstream_requests,
            ),
            (
                "istio_agent_dns_upstream_failures_total",
                "Total number of DNS requests forwarded upstream that failed",
                &self.upstream_failures,
            ),
            (
                "meshlite_dns_malformed_total",
                "DNS packets that did not parse",
                &self.malformed,
            ),
            (
                "meshlite_dns_overload_dropped_total",
                "DNS queries dropped because too many were in flight",
                &self.overloaded,
            ),
        ];
        for (name, help, counter) in counters {
            let family = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(family)?;
        }
        let family = encoder.encode_descriptor(
            "istio_agent_dns_upstream_request_duration_seconds",
            "Time taken to get a DNS response from upstream",
            None,
            self.upstream_duration.metric_type(),
        )?;
        self.upstream_duration.encode(family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_appear_with_the_first_query_under_istios_names() {
        let mut r = Registry::default();
        let m = DnsMetrics::register(&mut r);
        assert!(!crate::telemetry::prom::encode(&r).contains("dns"));
        m.requests.inc();
        m.upstream_requests.inc();
        m.upstream_duration.observe(0.002);
        let text = crate::telemetry::prom::encode(&r);
        for line in [
            "istio_agent_dns_requests_total 1",
            "istio_agent_dns_upstream_requests_total 1",
            "istio_agent_dns_upstream_failures_total 0",
            "istio_agent_dns_upstream_request_duration_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
