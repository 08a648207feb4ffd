//! Sidecar (`networking.istio.io`): which services a workload's proxy is told about, and
//! what it does with destinations it does not know.
//!
//! Mirrors `istio.networking.v1alpha3.Sidecar`. What meshlite applies follows istiod's
//! sidecar scope (`pilot/pkg/model/sidecar.go`): each `egress[].hosts` entry is
//! `namespace/dnsName`, where the namespace is a name, `.` (the namespace of the workload
//! the Sidecar is applied to), `*` (any namespace) or `~` (none), and `dnsName` is `*`, a
//! `*.suffix` wildcard or an FQDN, matched as written (no short-name completion). A service
//! is imported when its namespace and hostname match one entry; a VirtualService when its
//! namespace and one of its hosts do (a wildcard on either side that covers the other is a
//! match). `outboundTrafficPolicy` replaces MeshConfig's for the selected workloads.
//! `ingress`, `bind`, `captureMode`, `inboundConnectionPool` and `egressProxy` are read so
//! a user's YAML loads; `validate` says they are not applied.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{OutboundTrafficMode, wildcard_matches};

/// Sidecar spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Sidecar {
    /// Workloads of the Sidecar's namespace it applies to; none: the whole namespace (or,
    /// in the root namespace, every namespace without a Sidecar of its own).
    pub workload_selector: Option<SidecarWorkloadSelector>,
    /// Inbound listeners (read, not applied).
    pub ingress: Vec<IngressListener>,
    /// Outbound listeners: together, the hosts the workload's proxy is told about. Empty:
    /// every service, as without a Sidecar.
    pub egress: Vec<EgressListener>,
    /// Replaces MeshConfig's `outboundTrafficPolicy` for the selected workloads.
    pub outbound_traffic_policy: Option<SidecarOutboundTrafficPolicy>,
    /// Connection pool of inbound connections (read, not applied).
    pub inbound_connection_pool: Option<serde_json::Value>,
}

/// The networking `WorkloadSelector`: labels, all of which a workload must carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SidecarWorkloadSelector {
    /// Label name -> value.
    pub labels: BTreeMap<String, String>,
}

impl SidecarWorkloadSelector {
    /// Whether a workload with `labels` is selected (every selector label present with the
    /// same value).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// `SidecarPort` (Istio's `Port` in older releases).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SidecarPort {
    /// Port number.
    pub number: u32,
    /// Protocol (HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP, TLS, ...).
    pub protocol: Option<String>,
    /// Port name.
    pub name: Option<String>,
    /// Deprecated in Istio; read.
    pub target_port: Option<u32>,
}

/// `captureMode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureMode {
    /// The environment's default.
    #[default]
    Default,
    /// iptables redirection.
    Iptables,
    /// No capture: the app sends to the listener explicitly.
    None,
}

/// `IstioEgressListener`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EgressListener {
    /// With a port, only services that have this port are imported through this listener.
    pub port: Option<SidecarPort>,
    /// Address or Unix socket to bind (read, not applied).
    pub bind: Option<String>,
    /// How traffic reaches the listener (read, not applied).
    pub capture_mode: Option<CaptureMode>,
    /// `namespace/dnsName` entries.
    pub hosts: Vec<String>,
}

/// `IstioIngressListener` (read, not applied).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IngressListener {
    /// The port.
    pub port: Option<SidecarPort>,
    /// Address to bind.
    pub bind: Option<String>,
    /// How traffic reaches the listener.
    pub capture_mode: Option<CaptureMode>,
    /// Where traffic is forwarded (`127.0.0.1:PORT`, `unix:///path`).
    pub default_endpoint: Option<String>,
    /// Server TLS settings.
    pub tls: Option<serde_json::Value>,
    /// Connection pool.
    pub connection_pool: Option<serde_json::Value>,
}

/// The Sidecar's `outboundTrafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SidecarOutboundTrafficPolicy {
    /// `ALLOW_ANY` (Istio's default) or `REGISTRY_ONLY`.
    pub mode: OutboundTrafficMode,
    /// Where `ALLOW_ANY` traffic goes instead of its destination (read, not applied).
    pub egress_proxy: Option<serde_json::Value>,
}

/// The namespace part of an egress host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostNamespace {
    /// `*`: any namespace.
    Any,
    /// `.`: the namespace of the workload the Sidecar applies to.
    Own,
    /// `~`: no namespace (the entry imports nothing).
    Nothing,
    /// A namespace by name.
    Named(String),
}

/// Why an egress host entry cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressHostError {
    /// No `/` between namespace and hostname.
    #[error("`{0}` is not `namespace/dnsName` (e.g. `./*`, `prod/*`, `*/api.example.com`)")]
    NoNamespace(String),
    /// The namespace part is empty.
    #[error("`{0}` has an empty namespace; use `*` for any namespace or `.` for the own one")]
    EmptyNamespace(String),
    /// The hostname part is empty.
    #[error("`{0}` has an empty dnsName; use `*` for every host of the namespace")]
    EmptyHost(String),
    /// A `*` anywhere but as the whole name or its first label.
    #[error(
        "`{0}`: a wildcard must be the whole dnsName (`*`) or its first label (`*.example.com`)"
    )]
    BadWildcard(String),
}

/// One `egress[].hosts` entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressHost {
    /// Where the imported services live.
    pub namespace: HostNamespace,
    /// `*`, `*.suffix` or an FQDN, lowercase.
    pub host: String,
}

impl EgressHost {
    /// Reads `namespace/dnsName`.
    pub fn parse(text: &str) -> Result<Self, EgressHostError> {
        let (ns, host) = text
            .split_once('/')
            .ok_or_else(|| EgressHostError::NoNamespace(text.to_string()))?;
        let (ns, host) = (ns.trim(), host.trim().trim_end_matches('.'));
        if ns.is_empty() {
            return Err(EgressHostError::EmptyNamespace(text.to_string()));
        }
        if host.is_empty() {
            return Err(EgressHostError::EmptyHost(text.to_string()));
        }
        if host.rfind('*').is_some_and(|i| i > 0)
            || (host.starts_with('*') && host.len() > 1 && !host.starts_with("*."))
        {
            return Err(EgressHostError::BadWildcard(text.to_string()));
        }
        let namespace = match ns {
            "*" => HostNamespace::Any,
            "." => HostNamespace::Own,
            "~" => HostNamespace::Nothing,
            other => HostNamespace::Named(other.to_string()),
        };
        Ok(Self {
            namespace,
            host: host.to_ascii_lowercase(),
        })
    }

    /// Whether the entry's namespace part takes resources of `namespace`, for a workload in
    /// `own`.
    pub fn takes_namespace(&self, namespace: &str, own: &str) -> bool {
        match &self.namespace {
            HostNamespace::Any => true,
            HostNamespace::Own => namespace == own,
            HostNamespace::Nothing => false,
            HostNamespace::Named(n) => n == namespace,
        }
    }

    /// Whether a service `host` (an FQDN) of `namespace` is imported, for a workload in
    /// `own`.
    pub fn imports_service(&self, namespace: &str, host: &str, own: &str) -> bool {
        self.takes_namespace(namespace, own)
            && (self.host == host || wildcard_matches(&self.host, host))
    }

    /// Whether a VirtualService of `namespace` claiming `host` (completed; may be a
    /// wildcard) is imported, for a workload in `own`: the two names overlap.
    pub fn imports_virtual_service(&self, namespace: &str, host: &str, own: &str) -> bool {
        self.takes_namespace(namespace, own)
            && (self.host == host
                || wildcard_matches(&self.host, host)
                || wildcard_matches(host, &self.host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str) -> EgressHost {
        EgressHost::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    const REVIEWS: &str = "reviews.shop.svc.cluster.local";

    #[test]
    fn namespace_forms_mean_what_istio_says() {
        assert!(host("./*").imports_service("shop", REVIEWS, "shop"));
        assert!(
            !host("./*").imports_service("shop", REVIEWS, "web"),
            "`.` is the workload's own namespace"
        );
        assert!(host("*/*").imports_service("shop", REVIEWS, "web"));
        assert!(host("shop/*").imports_service("shop", REVIEWS, "web"));
        assert!(
            !host("shop/*").imports_service("other", REVIEWS, "web"),
            "the service's namespace decides, not its name"
        );
        assert!(
            !host("~/*").imports_service("shop", REVIEWS, "shop"),
            "`~` imports nothing"
        );
    }

    #[test]
    fn host_forms_are_exact_or_leading_wildcards_matched_as_written() {
        assert!(host(&format!("*/{REVIEWS}")).imports_service("shop", REVIEWS, "web"));
        assert!(host("*/Reviews.Shop.svc.cluster.local.").imports_service("shop", REVIEWS, "web"));
        assert!(
            !host("*/reviews").imports_service("shop", REVIEWS, "web"),
            "no short-name completion"
        );
        assert!(host("*/*.shop.svc.cluster.local").imports_service("shop", REVIEWS, "web"));
        assert!(
            !host("*/*.reviews.shop.svc.cluster.local").imports_service("shop", REVIEWS, "web"),
            "a wildcard never matches an empty label"
        );
        assert!(host("*/*.example.com").imports_service("ext", "api.example.com", "web"));
        assert!(!host("*/*.example.com").imports_service("ext", "example.com", "web"));
    }

    #[test]
    fn virtual_services_are_imported_when_their_hosts_overlap() {
        let h = host("shop/*.example.com");
        assert!(h.imports_virtual_service("shop", "api.example.com", "web"));
        assert!(h.imports_virtual_service("shop", "*.example.com", "web"));
        assert!(h.imports_virtual_service("shop", "*.api.example.com", "web"));
        assert!(
            host("shop/api.example.com").imports_virtual_service("shop", "*.example.com", "web"),
            "a wildcard VirtualService host covers the listener's"
        );
        assert!(!h.imports_virtual_service("other", "api.example.com", "web"));
        assert!(!host("shop/api.example.com").imports_virtual_service(
            "shop",
            "web.example.com",
            "web"
        ));
    }

    #[test]
    fn malformed_entries_say_what_is_wrong() {
        for (text, want) in [
            ("reviews.shop.svc.cluster.local", "namespace/dnsName"),
            ("/foo.com", "empty namespace"),
            ("shop/", "empty dnsName"),
            ("shop/foo.*.com", "wildcard"),
            ("shop/*foo.com", "wildcard"),
        ] {
            let e = EgressHost::parse(text).expect_err(text).to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn a_selector_selects_workloads_carrying_all_its_labels() {
        let s = SidecarWorkloadSelector {
            labels: BTreeMap::from([("app".into(), "ratings".into())]),
        };
        let mut labels = BTreeMap::from([("app".to_string(), "ratings".to_string())]);
        assert!(s.selects(&labels));
        labels.insert("version".into(), "v1".into());
        assert!(s.selects(&labels));
        labels.insert("app".into(), "reviews".into());
        assert!(!s.selects(&labels));
    }
}
