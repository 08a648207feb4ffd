//! Where the mesh comes from. The static file ([`file`]) and the xDS stream
//! ([`crate::xds::state`]), and later Kubernetes, each produce the same [`MeshView`]; [`merge`]
//! combines them in one place, and the snapshot builder ([`crate::snapshot::build`]) turns the
//! result into what the request path reads.

pub mod file;
pub mod labels;
pub mod merge;

use meshlite_xds_proto::v1;
use std::collections::HashMap;
use std::net::SocketAddr;

use crate::balance::locality::Locality;
use crate::identity::spiffe::SpiffeId;
use crate::protocol::Protocol;
use crate::telemetry::peer::WorkloadMetadata;
use std::sync::Arc;

/// A service as the snapshot builder takes it, from the static file or from xDS.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSpec {
    /// The FQDN it is known by (`reviews.default.svc.cluster.local`, or a ServiceEntry
    /// host such as `payments.example.com`).
    pub hostname: String,
    /// Short name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Port.
    pub port: u16,
    /// Protocol on that port.
    pub protocol: Protocol,
    /// Extra names it answers to.
    pub aliases: Vec<String>,
    /// SPIFFE IDs its endpoints may present.
    pub identities: Vec<SpiffeId>,
    /// Its endpoints.
    pub endpoints: Vec<EndpointSpec>,
    /// Explicit-mode TCP listener.
    pub listen: Option<SocketAddr>,
    /// For a service outside the mesh: its endpoints (`ip:port` or `name:port`), reached
    /// without mutual TLS. `None` for mesh services, whose endpoints are `endpoints`.
    pub external: Option<Vec<http::uri::Authority>>,
    /// Its virtual IPs (a ServiceEntry's `addresses`, or one the control plane allocated):
    /// what the DNS proxy answers for its names. CIDRs are not kept here.
    pub addresses: Vec<std::net::IpAddr>,
    /// The port declares no protocol (`protocol` is then HTTP, the explicit mode's
    /// assumption): a captured connection's first bytes tell what it speaks.
    pub detect_protocol: bool,
    /// Fetched on demand and not answered yet: its endpoints, routes and policy are still
    /// unknown to this sidecar. A request to it asks the control plane for them and waits
    /// for the snapshot that holds them ([`crate::xds::demand`]).
    pub awaiting: bool,
    /// While `awaiting`: its endpoints' IPs (their only part known before they are fetched),
    /// so a connection captured to one is still recognised as this service's.
    pub endpoint_ips: Vec<std::net::IpAddr>,
}

impl ServiceSpec {
    /// The FQDN.
    pub fn fqdn(&self) -> String {
        self.hostname.clone()
    }
}

/// A workload's labels, shared among its endpoints instead of copied into each.
pub type LabelSet = Arc<labels::Labels>;

/// An endpoint as the snapshot builder takes it.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointSpec {
    /// The destination sidecar's inbound address.
    pub addr: SocketAddr,
    /// Its workload's labels, shared: the endpoints of one workload (and the copies of an
    /// endpoint on each service port) hold one map.
    pub labels: LabelSet,
    /// Its workload's locality (shared, as its labels are).
    pub locality: Arc<Locality>,
    /// Load-balancing weight (1 unless the registry says otherwise).
    pub weight: u32,
    /// Its PeerAuthentication on this port is DISABLE: reached in plaintext, as Istio's auto
    /// mutual TLS does.
    pub plaintext: bool,
    /// Its workload's metric labels, when the source names the workload (the control plane
    /// does; a static file does not, and the peer's answers tell).
    pub workload: Option<Arc<WorkloadMetadata>>,
}

/// Everything about the mesh a snapshot is built from: services with their endpoints,
/// VirtualService routes and DestinationRule subsets, by FQDN.
#[derive(Clone, Debug, Default)]
pub struct MeshView {
    /// One entry per service port, shared: a source that keeps its services between views
    /// (the xDS state) hands the snapshot the same ones, and the snapshot's clusters keep
    /// them as their recipe instead of a copy.
    pub services: Vec<Arc<ServiceSpec>>,
    /// On demand: every service of the mesh as known before its fetch (names, ports,
    /// addresses; `awaiting`), one shared list. The snapshot answers for the ones not in
    /// `services` from a directory built of it, kept while the list is the same one.
    /// `None`: the mesh is in `services` whole.
    pub known: Option<Arc<Vec<Arc<ServiceSpec>>>>,
    /// Route tables by FQDN (shared: an unchanged one is the same value push after push).
    pub routes: HashMap<String, Arc<v1::RouteTable>>,
    /// Destination policies (subsets) by FQDN.
    pub policies: HashMap<String, Arc<v1::DestinationPolicy>>,
    /// This workload's inbound policy (PeerAuthentication, AuthorizationPolicy); `None`
    /// until a control plane sends one.
    pub inbound: Option<v1::InboundPolicy>,
    /// Mesh-wide settings (MeshConfig); `None`: Istio's defaults.
    pub mesh: Option<v1::MeshConfig>,
}
