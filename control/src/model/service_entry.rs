//! ServiceEntry (`networking.istio.io`): services the registry does not know about.
//!
//! Mirrors `istio.networking.v1alpha3.ServiceEntry`: hosts, ports, how endpoints are resolved
//! and (for STATIC) the endpoints themselves.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::WorkloadSelector;

/// ServiceEntry spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceEntry {
    /// Hosts (FQDN or wildcard).
    pub hosts: Vec<String>,
    /// Virtual IPs/CIDRs.
    pub addresses: Vec<String>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Inside or outside the mesh.
    pub location: Option<ServiceLocation>,
    /// How endpoints are found.
    pub resolution: Option<Resolution>,
    /// Endpoints (STATIC, or DNS names).
    pub endpoints: Vec<WorkloadEntry>,
    /// Visibility.
    pub export_to: Vec<String>,
    /// SANs expected from the service's certificates.
    pub subject_alt_names: Vec<String>,
    /// Select mesh workloads as endpoints instead of listing them.
    pub workload_selector: Option<WorkloadSelector>,
}

/// A service port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServicePort {
    /// Port number.
    pub number: u32,
    /// HTTP|HTTP2|GRPC|TCP|TLS|HTTPS|MONGO|REDIS|MYSQL.
    pub protocol: Option<String>,
    /// Port name.
    pub name: Option<String>,
    /// Endpoint port when different.
    pub target_port: Option<u32>,
}

/// Whether the service is part of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceLocation {
    /// Outside the mesh (no mTLS).
    MeshExternal,
    /// Part of the mesh.
    MeshInternal,
}

/// How endpoints are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Forward to the original destination.
    None,
    /// Listed IP endpoints.
    Static,
    /// Resolve names, all addresses used.
    Dns,
    /// Resolve names, one address at a time.
    DnsRoundRobin,
}

/// One endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadEntry {
    /// IP, hostname or `unix://` path.
    pub address: String,
    /// Port name to endpoint port.
    pub ports: BTreeMap<String, u32>,
    /// Labels (for subsets).
    pub labels: BTreeMap<String, String>,
    /// Network.
    pub network: Option<String>,
    /// `region/zone/subzone`.
    pub locality: Option<String>,
    /// LB weight.
    pub weight: Option<u32>,
    /// Service account of the workload.
    pub service_account: Option<String>,
}
