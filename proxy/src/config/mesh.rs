//! The static mesh in a proxy's file: the services it may call and its inbound policy. One
//! source of the mesh beside the control plane ([`crate::source::file`](mod@crate::source::file) reads it into a
//! [`crate::source::MeshView`]); the control plane's view wins where both name a service.

use serde::Deserialize;
use std::net::SocketAddr;

use super::InboundPortConfig;
use crate::protocol::Protocol;

/// Inbound side: which local ports the sidecar forwards to.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Service ports this workload serves and where the app listens for each.
    #[serde(default)]
    pub ports: Vec<InboundPortConfig>,
    /// How callers must connect while no control plane has sent this workload's
    /// PeerAuthentication: `STRICT` (the default: a sidecar configured by hand accepts
    /// mutual TLS only), `PERMISSIVE` or `DISABLE`.
    #[serde(default)]
    pub mtls: crate::policy::inbound::MtlsMode,
    /// AuthorizationPolicies of this workload while no control plane sends its own (Istio's
    /// spec fields: `name`, `action`, `rules` of `from`/`to`/`when`, `dry_run`).
    #[serde(default)]
    pub authorization: Vec<crate::policy::static_file::StaticPolicy>,
}

impl InboundConfig {
    /// The inbound policy this file states: its mode and policies, as a control plane would
    /// push them.
    pub fn policy(&self) -> meshlite_xds_proto::v1::InboundPolicy {
        use crate::policy::inbound::MtlsMode;
        use meshlite_xds_proto::v1::MtlsMode as W;
        meshlite_xds_proto::v1::InboundPolicy {
            mtls_mode: match self.mtls {
                MtlsMode::Strict => W::Strict,
                MtlsMode::Permissive => W::Permissive,
                MtlsMode::Disable => W::Disable,
            } as i32,
            port_mtls: Default::default(),
            authorization: self.authorization.iter().map(|p| p.to_wire()).collect(),
            jwt_rules: Vec::new(),
            telemetry: None,
        }
    }
}

/// A destination service this workload may call.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Short name (`reviews`).
    pub name: String,
    /// Namespace; the FQDN is `<name>.<namespace>.svc.cluster.local`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Service port.
    pub port: u16,
    /// Protocol on that port.
    #[serde(default)]
    pub protocol: Protocol,
    /// Extra host names that route here (besides name, name.ns, name.ns.svc, FQDN).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// SPIFFE IDs the destination's sidecars may present (secure naming).
    pub identities: Vec<String>,
    /// Destination sidecars' inbound addresses.
    pub endpoints: Vec<SocketAddr>,
    /// Opaque TCP only: a local address the outbound side listens on for this service
    /// (explicit mode; transparent capture uses the original destination instead). Without
    /// it, the service gets the per-service listener at its port on the outbound listener's
    /// IP, unless `listeners.tcp_services` is off.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Virtual addresses of the service (ClusterIP) for transparent capture.
    #[serde(default)]
    pub addresses: Vec<std::net::IpAddr>,
}

fn default_namespace() -> String {
    "default".to_string()
}
