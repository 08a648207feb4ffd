//! Who is at each end of a request, as metric labels and the peer-metadata header carry it:
//! this workload ([`LocalWorkload`]) and the peers it learns from their headers
//! ([`PeerWorkload`]), with Istio's `unknown` for what nobody said.

use http::HeaderValue;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::balance::locality::Locality;
use crate::identity::spiffe::SpiffeId;
use crate::telemetry::labels::DestinationServices;
use crate::telemetry::metrics::Label;

/// Label value for anything the proxy does not know (Istio's convention).
pub fn unknown() -> Label {
    static UNKNOWN: std::sync::LazyLock<Label> = std::sync::LazyLock::new(|| Arc::from("unknown"));
    UNKNOWN.clone()
}

/// This workload, as it appears in metric labels and the peer-metadata header.
#[derive(Debug)]
pub struct LocalWorkload {
    /// SPIFFE ID.
    pub id: SpiffeId,
    /// Workload name.
    pub workload: Label,
    /// Namespace (from the SPIFFE ID).
    pub namespace: Label,
    /// Principal (SPIFFE ID without scheme).
    pub principal: Label,
    /// Canonical service (`app`).
    pub app: Label,
    /// The destination service labels of the names inbound requests give this workload
    /// (its own service is `<app>.<namespace>.svc.cluster.local`).
    pub services: DestinationServices,
    /// Canonical revision (`version`).
    pub version: Label,
    /// Value of the peer-metadata header this sidecar sends.
    pub peer_header: HeaderValue,
    /// Its locality (locality-aware balancing is relative to it).
    pub locality: Locality,
    /// Its labels (`failoverPriority` compares them).
    pub labels: BTreeMap<String, String>,
}

/// A peer workload's labels, learnt from its peer-metadata header.
#[derive(Clone, Debug)]
pub struct PeerWorkload {
    /// Workload name.
    pub workload: Label,
    /// Namespace.
    pub namespace: Label,
    /// Canonical service.
    pub app: Label,
    /// Canonical revision.
    pub version: Label,
}

impl PeerWorkload {
    /// The labels used when the peer did not say who it is.
    pub fn unknown() -> Self {
        let u = unknown();
        Self {
            workload: u.clone(),
            namespace: u.clone(),
            app: u.clone(),
            version: u,
        }
    }

    /// The peer cached in `slot`, or else parsed from the peer-metadata header and cached there:
    /// a peer says who it is once per connection or endpoint, not on every request.
    pub fn learn(
        slot: &arc_swap::ArcSwapOption<PeerWorkload>,
        headers: &http::HeaderMap,
    ) -> Option<Arc<PeerWorkload>> {
        if let Some(p) = slot.load_full() {
            return Some(p);
        }
        let parsed = Arc::new(Self::parse(
            headers.get(&crate::message::headers::PEER_METADATA)?,
        )?);
        slot.store(Some(parsed.clone()));
        Some(parsed)
    }

    /// Parses `workload;namespace;app;version`.
    pub fn parse(v: &HeaderValue) -> Option<Self> {
        let s = v.to_str().ok()?;
        let mut it = s.split(';');
        let (w, n, a, ver) = (it.next()?, it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || w.is_empty() || w.len() > 253 || s.len() > 1024 {
            return None;
        }
        Some(Self {
            workload: Arc::from(w),
            namespace: Arc::from(n),
            app: Arc::from(a),
            version: Arc::from(ver),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_metadata_parses_four_fields_only() {
        let v = HeaderValue::from_static("reviews-v1;default;reviews;v1");
        let p = PeerWorkload::parse(&v).unwrap();
        assert_eq!(&*p.workload, "reviews-v1");
        assert_eq!(&*p.version, "v1");
        assert!(PeerWorkload::parse(&HeaderValue::from_static("a;b;c")).is_none());
        assert!(PeerWorkload::parse(&HeaderValue::from_static("a;b;c;d;e")).is_none());
    }
}
