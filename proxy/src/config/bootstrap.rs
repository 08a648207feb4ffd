//! The proxy's own settings in its file: who it is and where its certificate comes from,
//! where it listens, the ports its application serves, how it connects to other sidecars,
//! and the control plane to ask. Never pushed: they become
//! [`crate::snapshot::build::LocalSettings`] and the proxy's context.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::duration_str;
use crate::protocol::{Protocol, UpstreamProtocol};

/// Where the control plane is and how this proxy proves who it is.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// `https://HOST:PORT` of meshlite-control's xDS + CA port (15012).
    pub address: String,
    /// PEM root(s) the control plane's serving certificate chains to; also the initial mesh
    /// trust bundle until the control plane sends its own.
    pub root_cert: PathBuf,
    /// File holding the bootstrap token for the first certificate.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Where the last good config, key and certificate are kept (0600) so a restarted proxy
    /// can serve before the control plane is back. Off unless set; meant for a memory-backed
    /// volume.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Requested certificate lifetime (the CA may shorten it).
    #[serde(default = "default_cert_ttl", with = "duration_str")]
    pub cert_ttl: Duration,
    /// The address other sidecars reach this one's inbound listener at; defaults to the
    /// inbound listener's address, or 127.0.0.1 with its port when it listens on all.
    #[serde(default)]
    pub inbound_address: Option<SocketAddr>,
    /// Fetch a service's endpoints, routes and policy when the app first calls it (and
    /// services without a virtual IP at once), instead of the whole mesh up front: memory
    /// follows what the app calls, not the mesh's size. Service names and addresses still
    /// come whole.
    #[serde(default = "default_on_demand")]
    pub on_demand: bool,
    /// How long a first request waits for its service's resources before it is answered
    /// 503 (`NC`).
    #[serde(default = "default_on_demand_timeout", with = "duration_str")]
    pub on_demand_timeout: Duration,
}

fn default_on_demand() -> bool {
    true
}

fn default_on_demand_timeout() -> Duration {
    crate::xds::demand::DEFAULT_TIMEOUT
}

/// Istio's default workload certificate lifetime: 24 h.
fn default_cert_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// The workload this sidecar runs beside.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The workload's SPIFFE ID, `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    pub spiffe_id: String,
    /// Workload name (Istio's `source_workload` / `destination_workload` label).
    pub workload: String,
    /// Canonical service name (`app` label); defaults to the workload name.
    #[serde(default)]
    pub app: Option<String>,
    /// Canonical revision (`version` label); defaults to `latest`.
    #[serde(default)]
    pub version: Option<String>,
    /// PEM certificate chain, leaf first (static identity; not with `control`).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// PEM trust bundle: the mesh root(s).
    #[serde(default)]
    pub roots: Option<PathBuf>,
    /// Workload labels, announced to the control plane (subsets select on them).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// `region/zone/subzone`, announced to the control plane.
    #[serde(default)]
    pub locality: Option<String>,
}

/// Listening addresses (Istio's ports by default).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenersConfig {
    /// Outbound: the local app sends here (explicit mode) or iptables redirects here.
    pub outbound: SocketAddr,
    /// Inbound: other sidecars connect here over mutual TLS.
    pub inbound: SocketAddr,
    /// Admin: config dump, readiness, quit.
    pub admin: SocketAddr,
    /// Prometheus metrics at `/stats/prometheus`.
    pub metrics: SocketAddr,
    /// Health at `/healthz/ready`.
    pub health: SocketAddr,
    /// Explicit mode: every `tcp` service port gets a listener on the outbound listener's
    /// IP at the service port, following pushes (Istio's Sidecar egress `bind` with
    /// `captureMode: NONE`). Turn off where outbound TCP is captured transparently; static
    /// `listen:` addresses are opened either way.
    pub tcp_services: bool,
}

impl Default for ListenersConfig {
    fn default() -> Self {
        Self {
            outbound: SocketAddr::from(([127, 0, 0, 1], 15001)),
            inbound: SocketAddr::from(([0, 0, 0, 0], 15006)),
            admin: SocketAddr::from(([127, 0, 0, 1], 15000)),
            metrics: SocketAddr::from(([0, 0, 0, 0], 15020)),
            health: SocketAddr::from(([0, 0, 0, 0], 15021)),
            tcp_services: true,
        }
    }
}

/// One served port.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundPortConfig {
    /// The service port callers address (the port in `:authority`, or the CONNECT target port).
    pub port: u16,
    /// Where the local application listens for it.
    pub target: SocketAddr,
    /// Application protocol on this port.
    #[serde(default)]
    pub protocol: Protocol,
}

/// How long a built destination cluster may go unused before it is freed: long enough that
/// a service called every few minutes keeps its connections (Linkerd's proxy drops an idle
/// destination's stack after about a minute).
pub const DEFAULT_CLUSTER_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How HTTP travels between sidecars.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `http1` (default): HTTP/1.1 requests over a bounded pool of keep-alive mTLS
    /// connections, as Istio's default, HTTP/2 and gRPC over HTTP/2 (measured cheaper and
    /// faster than carrying everything as HTTP/2, see the README); `h2`: every request
    /// multiplexed over one HTTP/2 mTLS connection per endpoint, as Linkerd does.
    pub protocol: UpstreamProtocol,
    /// TCP connect timeout to a destination sidecar.
    #[serde(with = "duration_str")]
    pub connect_timeout: Duration,
    /// Idle pooled connections are closed after this long.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// A destination cluster this proxy built (on its first call) and has not used for
    /// this long (up to twice it) is freed: its connections, balancer, outlier state and
    /// statistics. A later call builds it again. `0s` keeps every cluster once built.
    #[serde(with = "duration_str")]
    pub cluster_idle_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            protocol: UpstreamProtocol::Http1,
            // Envoy/Istio default connect timeout: 10 s.
            connect_timeout: Duration::from_secs(10),
            // Istio's default HTTP idle timeout: 1 h.
            idle_timeout: Duration::from_secs(3600),
            cluster_idle_timeout: DEFAULT_CLUSTER_IDLE_TIMEOUT,
        }
    }
}
