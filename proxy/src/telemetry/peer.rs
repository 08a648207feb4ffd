//! Who is at each end of a request, as Istio's metric labels describe a workload: this
//! workload ([`LocalWorkload`]) and its peers ([`WorkloadMetadata`]), learnt from the
//! control plane's endpoint data or from the peer-metadata header, with Istio's `unknown`
//! for what nobody said.

use crate::source::labels::LabelLookup;
use http::HeaderValue;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use crate::balance::locality::Locality;
use crate::identity::spiffe::SpiffeId;
use crate::telemetry::labels::DestinationServices;
use crate::telemetry::metrics::Label;

/// The cluster a workload runs in when nothing says otherwise: Istio's default cluster ID.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// Label value for anything the proxy does not know (Istio's convention).
pub fn unknown() -> Label {
    static UNKNOWN: LazyLock<Label> = LazyLock::new(|| Arc::from("unknown"));
    UNKNOWN.clone()
}

/// A workload's identity in metric labels: the `source_*` or `destination_*` half of
/// Istio's label set, derived from its labels as Istio derives it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadMetadata {
    /// Workload name.
    pub workload: Label,
    /// Namespace.
    pub namespace: Label,
    /// `app` label (`app.kubernetes.io/name`), `unknown` when absent.
    pub app: Label,
    /// `version` label (`app.kubernetes.io/version`), `unknown` when absent.
    pub version: Label,
    /// `service.istio.io/canonical-name`, else `app.kubernetes.io/name`, else `app`, else
    /// the workload name.
    pub canonical_service: Label,
    /// `service.istio.io/canonical-revision`, else `app.kubernetes.io/version`, else
    /// `version`, else `latest`.
    pub canonical_revision: Label,
    /// The cluster it runs in.
    pub cluster: Label,
}

/// The first of `keys` present in `labels`.
fn first<'a, L: LabelLookup + ?Sized>(labels: &'a L, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| labels.label(k))
        .filter(|v| !v.is_empty())
}

impl WorkloadMetadata {
    /// A peer nobody described: every field `unknown`, shared.
    pub fn unknown() -> Arc<Self> {
        static UNKNOWN: LazyLock<Arc<WorkloadMetadata>> = LazyLock::new(|| {
            let u = unknown();
            Arc::new(WorkloadMetadata {
                workload: u.clone(),
                namespace: u.clone(),
                app: u.clone(),
                version: u.clone(),
                canonical_service: u.clone(),
                canonical_revision: u.clone(),
                cluster: u,
            })
        });
        UNKNOWN.clone()
    }

    /// The metadata of workload `name` in `namespace` with `labels`, running in `cluster`.
    pub fn from_labels<L: LabelLookup + ?Sized>(
        name: &str,
        namespace: &str,
        labels: &L,
        cluster: &str,
    ) -> Self {
        let or_unknown = |v: Option<&str>| v.map_or_else(unknown, Arc::from);
        Self {
            workload: Arc::from(name),
            namespace: Arc::from(namespace),
            app: or_unknown(first(labels, &["app", "app.kubernetes.io/name"])),
            version: or_unknown(first(labels, &["version", "app.kubernetes.io/version"])),
            canonical_service: Arc::from(
                first(
                    labels,
                    &[
                        "service.istio.io/canonical-name",
                        "app.kubernetes.io/name",
                        "app",
                    ],
                )
                .unwrap_or(name),
            ),
            canonical_revision: Arc::from(
                first(
                    labels,
                    &[
                        "service.istio.io/canonical-revision",
                        "app.kubernetes.io/version",
                        "version",
                    ],
                )
                .unwrap_or("latest"),
            ),
            cluster: Arc::from(if cluster.is_empty() {
                DEFAULT_CLUSTER_ID
            } else {
                cluster
            }),
        }
    }

    /// The peer-metadata header this workload sends:
    /// `workload;namespace;app;version;canonical service;canonical revision;cluster`.
    pub fn header(&self) -> HeaderValue {
        let s = format!(
            "{};{};{};{};{};{};{}",
            self.workload,
            self.namespace,
            self.app,
            self.version,
            self.canonical_service,
            self.canonical_revision,
            self.cluster
        );
        HeaderValue::from_str(&s).unwrap_or_else(|_| {
            HeaderValue::from_static("unknown;unknown;unknown;unknown;unknown;unknown;unknown")
        })
    }

    /// The peer cached in `slot`, or else parsed from the peer-metadata header and cached there:
    /// a peer says who it is once per connection or endpoint, not on every request.
    pub fn learn(
        slot: &arc_swap::ArcSwapOption<WorkloadMetadata>,
        headers: &http::HeaderMap,
    ) -> Option<Arc<WorkloadMetadata>> {
        if let Some(p) = slot.load_full() {
            return Some(p);
        }
        let parsed = Arc::new(Self::parse(
            headers.get(&crate::message::headers::PEER_METADATA)?,
        )?);
        slot.store(Some(parsed.clone()));
        Some(parsed)
    }

    /// Parses the header [`Self::header`] writes; the four-field form of earlier sidecars
    /// (`workload;namespace;app;version`) derives the rest as Istio would.
    pub fn parse(v: &HeaderValue) -> Option<Self> {
        let s = v.to_str().ok()?;
        if s.len() > 1024 {
            return None;
        }
        let fields: Vec<&str> = s.split(';').collect();
        let (w, n, a, ver) = match fields[..] {
            [w, n, a, ver] | [w, n, a, ver, _, _, _] => (w, n, a, ver),
            _ => return None,
        };
        if w.is_empty() || w.len() > 253 {
            return None;
        }
        let (cs, cr, cluster) = match fields[..] {
            [_, _, _, _, cs, cr, c] => (cs, cr, c),
            _ => (a, ver, DEFAULT_CLUSTER_ID),
        };
        Some(Self {
            workload: Arc::from(w),
            namespace: Arc::from(n),
            app: Arc::from(a),
            version: Arc::from(ver),
            canonical_service: Arc::from(cs),
            canonical_revision: Arc::from(cr),
            cluster: Arc::from(cluster),
        })
    }
}

/// This workload, as it appears in metric labels and the peer-metadata header.
#[derive(Debug)]
pub struct LocalWorkload {
    /// SPIFFE ID.
    pub id: SpiffeId,
    /// Principal (SPIFFE ID without scheme).
    pub principal: Label,
    /// Its labels' metric values (workload, namespace, app, version, canonical service and
    /// revision, cluster).
    pub metadata: Arc<WorkloadMetadata>,
    /// The destination service labels of the names inbound requests give this workload
    /// (its own service is `<app>.<namespace>.svc.cluster.local`).
    pub services: DestinationServices,
    /// Value of the peer-metadata header this sidecar sends.
    pub peer_header: HeaderValue,
    /// Its locality (locality-aware balancing is relative to it).
    pub locality: Locality,
    /// Its labels (`failoverPriority` compares them).
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn metadata_is_derived_from_labels_as_istio_derives_it() {
        let m = WorkloadMetadata::from_labels(
            "reviews-v2",
            "shop",
            &labels(&[("app", "reviews"), ("version", "v2")]),
            "",
        );
        assert_eq!(
            (
                &*m.app,
                &*m.version,
                &*m.canonical_service,
                &*m.canonical_revision
            ),
            ("reviews", "v2", "reviews", "v2")
        );
        assert_eq!(&*m.cluster, "Kubernetes");

        let bare = WorkloadMetadata::from_labels("batch-7f9c", "jobs", &labels(&[]), "east");
        assert_eq!(
            (
                &*bare.app,
                &*bare.version,
                &*bare.canonical_service,
                &*bare.canonical_revision
            ),
            ("unknown", "unknown", "batch-7f9c", "latest"),
            "Istio: no app label is unknown, the canonical service falls back to the workload"
        );
        assert_eq!(&*bare.cluster, "east");

        let canonical = WorkloadMetadata::from_labels(
            "web-1",
            "default",
            &labels(&[
                ("app", "web"),
                ("app.kubernetes.io/version", "1.4"),
                ("service.istio.io/canonical-name", "storefront"),
            ]),
            "",
        );
        assert_eq!(
            (
                &*canonical.version,
                &*canonical.canonical_service,
                &*canonical.canonical_revision
            ),
            ("1.4", "storefront", "1.4")
        );
    }

    #[test]
    fn the_header_round_trips_and_the_four_field_form_is_read() {
        let m = WorkloadMetadata::from_labels(
            "reviews-v1",
            "default",
            &labels(&[("app", "reviews"), ("version", "v1")]),
            "",
        );
        assert_eq!(WorkloadMetadata::parse(&m.header()), Some(m));

        let old =
            WorkloadMetadata::parse(&HeaderValue::from_static("reviews-v1;default;reviews;v1"))
                .unwrap();
        assert_eq!(&*old.workload, "reviews-v1");
        assert_eq!(
            (&*old.canonical_service, &*old.canonical_revision),
            ("reviews", "v1")
        );
        for bad in ["a;b;c", "a;b;c;d;e", ";b;c;d"] {
            assert!(
                WorkloadMetadata::parse(&HeaderValue::from_static(bad)).is_none(),
                "{bad}"
            );
        }
    }
}
