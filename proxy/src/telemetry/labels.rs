//! Building Istio's label set for a request from what the proxy knows at that point.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::istio::IstioLabels;
use super::metrics::Label;
use crate::message::response_flags::ResponseFlags;
use crate::names::CLUSTER_DOMAIN;
use crate::protocol::Protocol;
use crate::telemetry::peer::{LocalWorkload, WorkloadMetadata, unknown};

/// gRPC status codes as label values (0-16); anything else is reported as its number elsewhere.
const GRPC_STATUS: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

/// Maps a `grpc-status` header value to a static label.
pub fn grpc_status_label(v: &[u8]) -> &'static str {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .and_then(|n| GRPC_STATUS.get(n).copied())
        .unwrap_or("unknown")
}

/// Metric label values of a destination service, computed once.
#[derive(Clone, Debug)]
pub struct ServiceLabels {
    /// Its `destination_service*` labels.
    pub service: Arc<DestinationService>,
    /// Principal of the expected identity (the first allowed one).
    pub principal: Label,
}

impl ServiceLabels {
    /// The labels of service `fqdn` (short name `name`, in `namespace`) whose endpoints
    /// present `principal`.
    pub fn new(fqdn: Label, name: Label, namespace: Label, principal: Label) -> Self {
        Self {
            service: Arc::new(DestinationService {
                fqdn,
                name,
                namespace,
            }),
            principal,
        }
    }
}

/// The service of a request the source sidecar could not route: every label `unknown`.
fn unknown_service() -> Arc<DestinationService> {
    static UNKNOWN: std::sync::LazyLock<Arc<DestinationService>> = std::sync::LazyLock::new(|| {
        Arc::new(DestinationService {
            fqdn: unknown(),
            name: unknown(),
            namespace: unknown(),
        })
    });
    UNKNOWN.clone()
}

/// Envoy's clusters for captured connections to an address no service has, as Istio's
/// metrics name them: `destination_service` and `destination_service_name` are the cluster's
/// name, the namespace and principal `unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unregistered {
    /// `ALLOW_ANY`: relayed to the original destination.
    Passthrough,
    /// `REGISTRY_ONLY`: refused.
    BlackHole,
}

impl Unregistered {
    /// The cluster's service labels, made once.
    pub fn labels(self) -> &'static ServiceLabels {
        fn make(name: &str) -> ServiceLabels {
            let name: Label = Arc::from(name);
            ServiceLabels::new(name.clone(), name, unknown(), unknown())
        }
        static PASSTHROUGH: std::sync::LazyLock<ServiceLabels> =
            std::sync::LazyLock::new(|| make("PassthroughCluster"));
        static BLACK_HOLE: std::sync::LazyLock<ServiceLabels> =
            std::sync::LazyLock::new(|| make("BlackHoleCluster"));
        match self {
            Unregistered::Passthrough => &PASSTHROUGH,
            Unregistered::BlackHole => &BLACK_HOLE,
        }
    }
}

/// Labels reported by the client-side sidecar (`reporter="source"`): `service` is the
/// routed service (`None` when the request matched none), `peer` the endpoint's workload
/// as the control plane or its answer described it.
pub fn source_report(
    local: &LocalWorkload,
    service: Option<&ServiceLabels>,
    peer: Option<&Arc<WorkloadMetadata>>,
    protocol: Protocol,
    response_code: u16,
    response_flags: ResponseFlags,
) -> IstioLabels {
    let (svc, principal) = match service {
        Some(s) => (s.service.clone(), s.principal.clone()),
        None => (unknown_service(), unknown()),
    };
    IstioLabels {
        reporter: "source",
        source: local.metadata.clone(),
        source_principal: local.principal.clone(),
        destination: peer.cloned().unwrap_or_else(WorkloadMetadata::unknown),
        destination_principal: principal,
        service: svc,
        request_protocol: protocol.label(),
        response_code,
        grpc_response_status: "",
        response_flags,
        connection_security_policy: "unknown",
        tags: None,
    }
}

/// The `destination_service*` labels of a request.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DestinationService {
    /// `destination_service`: an FQDN (a short name is qualified with this namespace).
    pub fqdn: Label,
    /// `destination_service_name`: its first label.
    pub name: Label,
    /// `destination_service_namespace`: its second label, else this workload's namespace.
    pub namespace: Label,
}

impl DestinationService {
    /// The labels of `fqdn` as Istio derives them.
    fn of(fqdn: Label, local_namespace: &Label) -> Self {
        let mut parts = fqdn.split('.');
        let (name, namespace) = match (parts.next(), parts.next()) {
            (Some(n), Some(ns)) => (Arc::from(n), Arc::from(ns)),
            _ => (fqdn.clone(), local_namespace.clone()),
        };
        Self {
            fqdn,
            name,
            namespace,
        }
    }
}

/// Host names past which the interner starts afresh (a caller inventing names cannot grow it).
const MAX_SERVICE_NAMES: usize = 256;

/// What inbound requests name as their service (`:authority` / Host), resolved once into
/// [`DestinationService`] labels: the request path then clones three `Arc`s instead of
/// formatting and splitting strings. The workload's own service, named by its FQDN or its
/// `app`, needs no lookup at all.
#[derive(Debug)]
pub struct DestinationServices {
    own: Arc<DestinationService>,
    app: Label,
    namespace: Label,
    others: Mutex<HashMap<Box<str>, Arc<DestinationService>, foldhash::fast::FixedState>>,
}

impl DestinationServices {
    /// The interner of a workload labelled `app` in `namespace`: its own service is
    /// `<app>.<namespace>.svc.cluster.local`.
    pub fn new(app: Label, namespace: Label) -> Self {
        Self {
            own: Arc::new(DestinationService::of(
                qualify(&app, &namespace),
                &namespace,
            )),
            app,
            namespace,
            others: Mutex::default(),
        }
    }

    /// The labels of a request whose authority names `host` (a host without port); no host
    /// counts as the workload's `app`, as Istio reports it.
    pub fn get(&self, host: Option<&str>) -> Arc<DestinationService> {
        let host = match host {
            Some(h) if !h.is_empty() => h,
            _ => &*self.app,
        };
        if host == &*self.own.fqdn || host == &*self.app {
            return self.own.clone();
        }
        // A poisoned lock only means a panic elsewhere mid-insert; the map is still a map.
        let mut others = self.others.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = others.get(host) {
            return found.clone();
        }
        let fqdn: Label = if host.contains('.') {
            Arc::from(host)
        } else {
            qualify(host, &self.namespace)
        };
        let made = Arc::new(DestinationService::of(fqdn, &self.namespace));
        if others.len() >= MAX_SERVICE_NAMES {
            others.clear();
        }
        others.insert(Box::from(host), made.clone());
        made
    }
}

/// The FQDN of service `name` in `namespace`.
fn qualify(name: &str, namespace: &str) -> Label {
    Arc::from(format!("{name}.{namespace}.{CLUSTER_DOMAIN}"))
}

/// Who called, as the destination sidecar reports it.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The caller's workload (`unknown` when not learnt).
    pub workload: &'a Arc<WorkloadMetadata>,
    /// Its principal (`unknown` for plaintext).
    pub principal: &'a Label,
    /// Whether it came over mutual TLS (`connection_security_policy`).
    pub mutual_tls: bool,
}

/// Labels reported by the server-side sidecar (`reporter="destination"`).
pub fn destination_report(
    local: &LocalWorkload,
    caller: Caller<'_>,
    service: &Arc<DestinationService>,
    protocol: Protocol,
    response_code: u16,
    response_flags: ResponseFlags,
) -> IstioLabels {
    IstioLabels {
        reporter: "destination",
        source: caller.workload.clone(),
        source_principal: caller.principal.clone(),
        destination: local.metadata.clone(),
        destination_principal: local.principal.clone(),
        service: service.clone(),
        request_protocol: protocol.label(),
        response_code,
        grpc_response_status: "",
        response_flags,
        connection_security_policy: if caller.mutual_tls {
            "mutual_tls"
        } else {
            "none"
        },
        tags: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> DestinationServices {
        DestinationServices::new(Arc::from("reviews"), Arc::from("shop"))
    }

    #[test]
    fn the_workloads_own_service_is_one_shared_entry_by_either_name() {
        let s = services();
        let by_app = s.get(Some("reviews"));
        let by_fqdn = s.get(Some("reviews.shop.svc.cluster.local"));
        assert!(Arc::ptr_eq(&by_app, &by_fqdn));
        assert_eq!(&*by_app.fqdn, "reviews.shop.svc.cluster.local");
        assert_eq!(&*by_app.name, "reviews");
        assert_eq!(&*by_app.namespace, "shop");
        assert!(
            Arc::ptr_eq(&s.get(None), &by_app),
            "no host counts as the app"
        );
    }

    #[test]
    fn other_names_are_qualified_split_and_interned() {
        let s = services();
        let short = s.get(Some("ratings"));
        assert_eq!(&*short.fqdn, "ratings.shop.svc.cluster.local");
        assert_eq!((&*short.name, &*short.namespace), ("ratings", "shop"));
        assert!(Arc::ptr_eq(&short, &s.get(Some("ratings"))), "made once");
        let other_ns = s.get(Some("details.books.svc.cluster.local"));
        assert_eq!(
            (&*other_ns.name, &*other_ns.namespace),
            ("details", "books")
        );
    }

    #[test]
    fn invented_names_cannot_grow_the_interner_past_its_bound() {
        let s = services();
        for i in 0..(3 * MAX_SERVICE_NAMES) {
            s.get(Some(&format!("svc-{i}")));
        }
        let held = s.others.lock().map_or(usize::MAX, |o| o.len());
        assert!(held <= MAX_SERVICE_NAMES, "{held}");
    }
}
