//! The per-request metric handles, found with one fast lookup.
//!
//! Recording a request touches `istio_requests_total` and
//! `istio_request_duration_milliseconds` under the same 24 labels. prometheus-client's
//! `Family` finds a series by hashing every label's text with SipHash behind a read lock, once
//! per family: about 690 ns a request. This cache finds both handles with one lookup hashed
//! by foldhash; equal label sets compare their shared `Arc<str>`s by address first, so the
//! comparison rarely reads the text. Its entries are the families' own series, so the
//! exported metrics are the same; it starts afresh past [`MAX_ENTRIES`] label sets.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::metrics::RequestLabels;

/// Entries kept before the cache starts afresh.
pub const MAX_ENTRIES: usize = 4096;

/// Both handles of one label set.
#[derive(Clone, Debug)]
pub struct RequestHandles {
    /// Its `istio_requests_total` series.
    pub count: Counter,
    /// Its `istio_request_duration_milliseconds` series.
    pub duration: Histogram,
}

/// The cache of one [`super::metrics::Metrics`]: label sets (compared by text, as the
/// families compare them) to both handles.
#[derive(Debug, Default)]
pub struct RequestHandleCache {
    entries: Mutex<HashMap<RequestLabels, RequestHandles, foldhash::fast::FixedState>>,
}

impl RequestHandleCache {
    /// Counts one request of `labels` that took `ms`; `make` (the families' own lookup)
    /// finds the series on a miss.
    pub fn record(
        &self,
        labels: &RequestLabels,
        ms: f64,
        make: impl FnOnce(&RequestLabels) -> RequestHandles,
    ) {
        // A poisoned lock only means a panic elsewhere mid-insert; the map is still a map.
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = entries.get(labels) {
            h.count.inc();
            h.duration.observe(ms);
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        let handles = make(labels);
        handles.count.inc();
        handles.duration.observe(ms);
        entries.insert(labels.clone(), handles);
    }

    /// Entries cached now.
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Metrics;
    use std::sync::Arc;

    fn labels(workload: &str, code: u16) -> RequestLabels {
        let l = |s: &str| -> Arc<str> { Arc::from(s) };
        RequestLabels {
            reporter: "source",
            source_workload: l(workload),
            source_workload_namespace: l("default"),
            source_principal: l("cluster.local/ns/default/sa/web"),
            source_app: l("web"),
            source_version: l("v1"),
            source_canonical_service: l("web"),
            source_canonical_revision: l("v1"),
            destination_workload: l("reviews-v2"),
            destination_workload_namespace: l("default"),
            destination_principal: l("cluster.local/ns/default/sa/reviews"),
            destination_app: l("reviews"),
            destination_version: l("v2"),
            destination_service: l("reviews.default.svc.cluster.local"),
            destination_service_name: l("reviews"),
            destination_service_namespace: l("default"),
            destination_canonical_service: l("reviews"),
            destination_canonical_revision: l("v2"),
            request_protocol: "http",
            response_code: code,
            grpc_response_status: "",
            response_flags: crate::message::response_flags::ResponseFlags::NONE,
            connection_security_policy: "unknown",
        }
    }

    /// The `istio_requests_total` sample lines of `m`.
    fn request_lines(m: &Metrics) -> Vec<String> {
        m.encode()
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn equal_labels_from_other_strings_count_in_the_same_series() {
        let m = Metrics::new();
        let first = labels("web-1", 200);
        m.record_request(&first, 1.0);
        m.record_request(&first, 1.0);
        // Same text, other Arcs (a new snapshot): the same series.
        m.record_request(&labels("web-1", 200), 1.0);
        let lines = request_lines(&m);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].ends_with(" 3"), "{lines:?}");
        // Another status is another series.
        m.record_request(&labels("web-1", 503), 1.0);
        assert_eq!(request_lines(&m).len(), 2);
        let text = m.encode();
        assert!(
            text.contains("istio_request_duration_milliseconds_count{") && text.contains("} 3"),
            "the histogram counted too"
        );
    }

    #[test]
    fn the_cache_starts_afresh_past_its_bound_and_loses_no_count() {
        let m = Metrics::new();
        let cache = RequestHandleCache::default();
        let make = |l: &RequestLabels| RequestHandles {
            count: m.requests.get_or_create(l).clone(),
            duration: m.duration.get_or_create(l).clone(),
        };
        for i in 0..=MAX_ENTRIES {
            cache.record(&labels(&format!("w{i}"), 200), 1.0, make);
        }
        assert_eq!(cache.len(), 1, "cleared at the bound, then the new entry");
        assert_eq!(request_lines(&m).len(), MAX_ENTRIES + 1);
    }
}
