//! Istio-compatible configuration resources.
//!
//! The types mirror Istio's CRDs field for field (`camelCase` names, as users write them in
//! YAML), so an Istio manifest loads unchanged. Semantics follow `SEMANTICS.md` sections 1-4:
//! these types only carry what was written; defaults that depend on context (e.g. the LB
//! policy when `simple` is unset) are applied by the code that translates them for proxies.
//! Enums use Istio's `SCREAMING_CASE` names, so a typo is a load error naming the field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod annotations;
mod destination_rule;
mod duration;
mod mesh_config;
mod security;
mod service_entry;
mod set;
mod sidecar;
mod telemetry;
mod virtual_service;

pub use destination_rule::*;
pub use duration::{DurationError, IstioDuration};
pub use mesh_config::*;
pub use security::*;
pub use service_entry::*;
pub use set::{
    CLUSTER_DOMAIN, ConfigSet, Named, ROOT_NAMESPACE, applies_to_sidecars, fqdn, wildcard_matches,
};
pub use sidecar::*;
pub use telemetry::*;
pub use virtual_service::*;

/// Namespace given to resources whose metadata names none (as `kubectl apply` would).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The resource kinds meshlite understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// `networking.istio.io` VirtualService: request routing.
    VirtualService,
    /// `networking.istio.io` DestinationRule: per-destination traffic policy and subsets.
    DestinationRule,
    /// `networking.istio.io` ServiceEntry: services outside the registry.
    ServiceEntry,
    /// `networking.istio.io` Sidecar: the services a workload's proxy is told about.
    Sidecar,
    /// `security.istio.io` PeerAuthentication: inbound mTLS mode.
    PeerAuthentication,
    /// `security.istio.io` AuthorizationPolicy: inbound access control.
    AuthorizationPolicy,
    /// `security.istio.io` RequestAuthentication: end-user JWTs the sidecar verifies.
    RequestAuthentication,
    /// `telemetry.istio.io` Telemetry: traces, metrics and access logs of workloads.
    Telemetry,
    /// Istio's MeshConfig, from an IstioOperator's `spec.meshConfig` or the `istio`
    /// ConfigMap's `data.mesh` (read from those documents, not a `kind` of its own).
    MeshConfig,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 8] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
        Kind::Sidecar,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::Telemetry,
    ];

    /// The `kind:` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Sidecar => "Sidecar",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::Telemetry => "Telemetry",
            Kind::MeshConfig => "MeshConfig",
        }
    }

    /// Looks a `kind:` string up (exact, case-sensitive as in Kubernetes).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The API group the kind belongs to.
    pub fn group(self) -> &'static str {
        match self {
            Kind::VirtualService | Kind::DestinationRule | Kind::ServiceEntry | Kind::Sidecar => {
                "networking.istio.io"
            }
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                "security.istio.io"
            }
            Kind::Telemetry => "telemetry.istio.io",
            Kind::MeshConfig => "install.istio.io",
        }
    }

    /// The `apiVersion` values accepted for this kind (all served versions of Istio's CRDs).
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            Kind::VirtualService | Kind::DestinationRule | Kind::ServiceEntry | Kind::Sidecar => &[
                "networking.istio.io/v1",
                "networking.istio.io/v1beta1",
                "networking.istio.io/v1alpha3",
            ],
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                &["security.istio.io/v1", "security.istio.io/v1beta1"]
            }
            // v1alpha1 is still served by Istio (the same schema).
            Kind::Telemetry => &["telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1"],
            Kind::MeshConfig => &["install.istio.io/v1alpha1", "v1"],
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_owned()
}

/// Kubernetes object metadata: the parts meshlite uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Resource name, unique per kind and namespace.
    pub name: String,
    /// Namespace; `default` when omitted.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Labels (not used for selection of config, kept for tooling).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations, e.g. `istio.io/dry-run`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339 creation time; Istio breaks ties between conflicting resources by age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

impl ObjectMeta {
    /// `namespace/name`, the form used in messages.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Sorting by this puts the oldest resource first, as Istio resolves conflicts: by
    /// creation time (RFC 3339 UTC, which sorts as text; a resource without one counts as
    /// newest), then by name.
    pub fn age_key(&self) -> (bool, &str, &str, &str) {
        (
            self.creation_timestamp.is_none(),
            self.creation_timestamp.as_deref().unwrap_or(""),
            &self.namespace,
            &self.name,
        )
    }
}

/// Where a resource was read from, so every message can point at it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Origin {
    /// The file that held the resource.
    pub file: PathBuf,
    /// 1-based index of the YAML document in that file.
    pub document: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.document)
    }
}

/// Istio `StringMatch`: one of `exact`, `prefix` or `regex` (RE2, whole-string). An empty
/// match (`{}`) means "present" for headers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StringMatch {
    /// Exact, case-sensitive value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// RE2 regular expression matched against the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// The single match a valid `StringMatch` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatchKind<'a> {
    /// `exact`.
    Exact(&'a str),
    /// `prefix`.
    Prefix(&'a str),
    /// `regex`.
    Regex(&'a str),
    /// `{}`: present with any value.
    Present,
}

impl StringMatch {
    /// The match to apply (first set of exact, prefix, regex; validation rejects several).
    pub fn kind(&self) -> StringMatchKind<'_> {
        if let Some(v) = &self.exact {
            StringMatchKind::Exact(v)
        } else if let Some(v) = &self.prefix {
            StringMatchKind::Prefix(v)
        } else if let Some(v) = &self.regex {
            StringMatchKind::Regex(v)
        } else {
            StringMatchKind::Present
        }
    }

    /// How many of exact/prefix/regex are set (Istio allows at most one).
    pub fn set_count(&self) -> usize {
        [&self.exact, &self.prefix, &self.regex]
            .iter()
            .filter(|o| o.is_some())
            .count()
    }
}

/// Label selector choosing the workloads a policy applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// All of these labels must be present with these values.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A port referenced by number (Istio `PortSelector`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSelector {
    /// Port number.
    pub number: u32,
}

/// Istio `Percent`: a double in 0..=100.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Percent {
    /// Percentage, 0 to 100.
    #[serde(default)]
    pub value: f64,
}
