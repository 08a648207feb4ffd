//! Building Istio's label set for a request from what the proxy knows at that point.

use std::sync::Arc;

use super::metrics::{Label, RequestLabels};
use crate::config::Protocol;
use crate::snapshot::{Cluster, LocalWorkload, PeerWorkload, unknown};

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

/// Labels reported by the client-side sidecar (`reporter="source"`).
pub fn source_report(
    local: &LocalWorkload,
    cluster: Option<&Cluster>,
    peer: Option<&PeerWorkload>,
    protocol: Protocol,
    response_code: u16,
    response_flags: &'static str,
) -> RequestLabels {
    let u = unknown();
    let dest = peer.cloned().unwrap_or_else(PeerWorkload::unknown);
    let (svc, svc_name, svc_ns, principal): (Label, Label, Label, Label) = match cluster {
        Some(c) => (
            c.labels.fqdn.clone(),
            c.labels.name.clone(),
            c.labels.namespace.clone(),
            c.labels.principal.clone(),
        ),
        None => (u.clone(), u.clone(), u.clone(), u.clone()),
    };
    RequestLabels {
        reporter: "source",
        source_workload: local.workload.clone(),
        source_workload_namespace: local.namespace.clone(),
        source_principal: local.principal.clone(),
        source_app: local.app.clone(),
        source_version: local.version.clone(),
        source_canonical_service: local.app.clone(),
        source_canonical_revision: local.version.clone(),
        destination_workload: dest.workload,
        destination_workload_namespace: dest.namespace,
        destination_principal: principal,
        destination_app: dest.app.clone(),
        destination_version: dest.version.clone(),
        destination_service: svc,
        destination_service_name: svc_name,
        destination_service_namespace: svc_ns,
        destination_canonical_service: dest.app,
        destination_canonical_revision: dest.version,
        request_protocol: protocol.label(),
        response_code,
        grpc_response_status: "",
        response_flags,
        connection_security_policy: "unknown",
    }
}

/// Labels reported by the server-side sidecar (`reporter="destination"`).
pub fn destination_report(
    local: &LocalWorkload,
    source: &PeerWorkload,
    source_principal: &Label,
    service_fqdn: &Label,
    protocol: Protocol,
    response_code: u16,
    response_flags: &'static str,
) -> RequestLabels {
    let (name, ns) = match service_fqdn.split('.').collect::<Vec<_>>().as_slice() {
        [n, ns, ..] => (Arc::from(*n), Arc::from(*ns)),
        _ => (service_fqdn.clone(), local.namespace.clone()),
    };
    RequestLabels {
        reporter: "destination",
        source_workload: source.workload.clone(),
        source_workload_namespace: source.namespace.clone(),
        source_principal: source_principal.clone(),
        source_app: source.app.clone(),
        source_version: source.version.clone(),
        source_canonical_service: source.app.clone(),
        source_canonical_revision: source.version.clone(),
        destination_workload: local.workload.clone(),
        destination_workload_namespace: local.namespace.clone(),
        destination_principal: local.principal.clone(),
        destination_app: local.app.clone(),
        destination_version: local.version.clone(),
        destination_service: service_fqdn.clone(),
        destination_service_name: name,
        destination_service_namespace: ns,
        destination_canonical_service: local.app.clone(),
        destination_canonical_revision: local.version.clone(),
        request_protocol: protocol.label(),
        response_code,
        grpc_response_status: "",
        response_flags,
        connection_security_policy: "mutual_tls",
    }
}
