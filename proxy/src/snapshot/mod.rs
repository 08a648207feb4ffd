//! The proxy's configuration as one immutable snapshot, read lock-free on every request.
//!
//! A [`Snapshot`] holds everything the request path needs already resolved: the host table
//! (every name a service answers to, mapped to its clusters by port), each cluster's endpoints
//! with their connection pools and TLS configurations, the inbound port table, and the metric
//! label values as shared strings. It lives behind an `ArcSwap`: a request loads it once; a new
//! snapshot, built from whatever the sources say ([`crate::source`], [`build`]), replaces it
//! without touching open connections.
//!
//! The types here sit below the request path: they hold routing, balancing, resilience and
//! transport state, and import nothing of `inbound`, `outbound` or the config file. Building
//! one (config and wire types in, snapshot out) is [`build`]'s job alone.

mod addresses;
pub mod build;
mod cluster;
mod directory;
mod lazy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::identity::tls::IdentityError;
use crate::message::path::PathNormalization;
use crate::policy::inbound::{InboundSecurity, MtlsMode};
use crate::protocol::Protocol;
use crate::resilience::breaker::Breakers;
use crate::route::{RouteError, RouteMiss, split_host_port};
use crate::source::ServiceSpec;
use crate::telemetry::cluster_stats::ClusterStats;
use crate::telemetry::metrics::Label;
use crate::telemetry::peer::LocalWorkload;
use crate::transport::h1_pool::H1Pool;
use crate::transport::h2::H2Pool;
pub use addresses::{AddressIndex, CaptureTarget, Claim};
pub use cluster::{Cluster, Endpoint, External, ExternalTarget};
pub use directory::Directory;
pub use lazy::LazyCluster;

/// Host ports by every name they answer to. Looked up on every request by a name the
/// request carries: foldhash hashes a name in a third of SipHash's instructions (the table's
/// keys come from the config, so a request cannot grow a chain).
pub(crate) type HostTable = HashMap<Box<str>, Vec<Arc<HostPort>>, NameHasher>;

pub use crate::names::NameHasher;

/// A port of a host the app may call, routing to this snapshot's clusters.
pub type HostPort = crate::route::HostPort<LazyCluster>;
/// Where a route sends a request: one of this snapshot's clusters.
pub type Target = crate::route::Target<LazyCluster>;
/// The outcome of routing one request over this snapshot.
pub type Routed<'a> = crate::route::Routed<'a, LazyCluster>;
/// A host port's compiled VirtualService rules.
pub type RouteTable = crate::route::RouteTable<LazyCluster>;
/// The per-route settings applied around sending a request.
pub type RouteBehaviour = crate::route::RouteBehaviour<LazyCluster>;
/// One weighted destination of a route, leading to one of this snapshot's clusters.
pub type Destination = crate::route::Destination<LazyCluster>;

/// Why a snapshot could not be built; a push causing it is refused (NACK).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// TLS configuration or a name failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A load-balancer setting was refused.
    #[error("load balancer of {host}: {source}")]
    Balance {
        /// The host.
        host: String,
        /// Why.
        source: crate::balance::BalanceError,
    },
    /// An AuthorizationPolicy, a RequestAuthentication rule or an external authorizer did
    /// not compile.
    #[error(transparent)]
    Inbound(#[from] crate::policy::inbound::InboundError),
    /// The TLS a DestinationRule asks for cannot be set up.
    #[error("TLS to {host}: {source}")]
    EgressTls {
        /// The host.
        host: String,
        /// Why.
        source: crate::transport::egress::EgressTlsError,
    },
    /// The workload's Telemetry settings did not compile.
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::workload::TelemetryError),
    /// An access-log provider's `logFormat` did not compile.
    #[error(transparent)]
    LogFormat(#[from] crate::telemetry::access_log::providers::ProviderError),
    /// A `proxyStatsMatcher` regular expression did not compile.
    #[error(transparent)]
    StatsMatcher(#[from] crate::telemetry::stats_matcher::StatsMatcherError),
    /// A route table did not compile.
    #[error("routes of {host}: {source}")]
    Route {
        /// The host.
        host: String,
        /// Why.
        source: RouteError,
    },
}

/// A port the local application serves.
#[derive(Debug)]
pub struct InboundPort {
    /// Where the app listens.
    pub target: SocketAddr,
    /// `target` as a URI authority (the next hop's, made once, not per request).
    pub authority: Option<http::uri::Authority>,
    /// Its protocol.
    pub protocol: Protocol,
    /// h2c pool for `http2`/`grpc` ports (shared with the next snapshot).
    pub h2c: Option<Arc<H2Pool>>,
    /// HTTP/1.1 keep-alive pool for the other HTTP ports (shared with the next snapshot).
    pub http1: Option<Arc<H1Pool>>,
    /// Envoy's name for it, `inbound|<port>||`.
    pub name: Label,
    /// The limits of this workload's own DestinationRule `connectionPool`, which Istio also
    /// applies to the inbound cluster (server sidecar to its app): `http2MaxRequests` for
    /// requests, `tcp.maxConnections` for TCP tunnels. Counts carry across pushes.
    pub breakers: Breakers,
    /// Its Envoy cluster statistics (overflows).
    pub stats: ClusterStats,
    /// How it accepts callers (PeerAuthentication for its workload port, the app's port).
    pub mtls: MtlsMode,
}

/// Everything the request path reads, resolved and immutable.
#[derive(Debug)]
pub struct Snapshot {
    /// Monotonic version, for the admin dump and (next) xDS ACKs.
    pub version: u64,
    /// This workload.
    pub local: Arc<LocalWorkload>,
    /// Host ports by every name they answer to (on demand: the services fetched; the rest
    /// are in `directory`).
    pub(crate) hosts: HostTable,
    /// On demand: the services known and not fetched, shared with the snapshots before and
    /// after while the mesh's list of services is the same. Looked up after `hosts`, whose
    /// entries shadow its entries for the same service.
    pub(crate) directory: Option<Arc<Directory>>,
    /// The ports the local application serves, by service port.
    pub(crate) inbound: HashMap<u16, InboundPort>,
    /// Service clusters in config order, each built on first use (on demand: those of the
    /// services fetched; [`Snapshot::service_clusters`] adds the directory's).
    pub(crate) clusters: Vec<Arc<LazyCluster>>,
    /// Subset clusters, by Envoy name.
    pub subset_clusters: Vec<Arc<LazyCluster>>,
    /// What its clusters are built with (the next snapshot keeps it while it holds).
    pub(crate) cluster_context: Arc<build::ClusterContext>,
    /// Inbound mutual TLS modes and authorization.
    pub security: InboundSecurity,
    /// Which modes the served ports have, for decisions made before a request names one.
    pub inbound_modes: ModeSet,
    /// MeshConfig `pathNormalization`, for routing, authorization and forwarding alike.
    pub path_normalization: PathNormalization,
    /// The workload's Telemetry settings (metrics turned off, access logging).
    pub telemetry: crate::telemetry::workload::WorkloadTelemetry,
    /// The Envoy statistics exported (`proxyStatsMatcher`: the workload's, else the mesh's).
    pub stats_matcher: Arc<crate::telemetry::stats_matcher::StatsMatcher>,
    /// Distributed tracing, per side; a side without a tracer leaves trace headers untouched.
    pub tracing: crate::telemetry::trace::Tracers,
    /// The MeshConfig's access-log providers, ready to take lines (the next snapshot keeps
    /// their writers and exporters while they are unchanged).
    pub access_log_providers: crate::telemetry::access_log::providers::LogProviders,
    /// Service ports by virtual IP and endpoint address, for captured connections (on
    /// demand: of the services fetched; the directory has the rest).
    pub addresses: AddressIndex,
    /// MeshConfig `outboundTrafficPolicy.mode: REGISTRY_ONLY`: a captured connection to an
    /// address no service has is closed instead of passed through (`ALLOW_ANY`).
    pub outbound_registry_only: bool,
    /// The mesh names the DNS proxy answers, with their VIPs.
    pub dns: Arc<crate::dns::table::NameTable>,
}

/// The mutual TLS modes among the ports a workload serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModeSet {
    /// Some port is STRICT.
    pub strict: bool,
    /// Some port is PERMISSIVE.
    pub permissive: bool,
    /// Some port is DISABLE.
    pub disable: bool,
}

impl ModeSet {
    /// Whether some port serves mutual TLS callers.
    pub fn any_mtls(&self) -> bool {
        self.strict || self.permissive
    }

    /// Whether some port serves plaintext callers.
    pub fn any_plaintext(&self) -> bool {
        self.permissive || self.disable
    }
}

impl Snapshot {
    /// The service cluster for `fqdn:port` in this snapshot (TCP listeners look theirs up
    /// per connection, so a push reaches them too).
    pub fn cluster(&self, fqdn: &str, port: u16) -> Option<&Arc<LazyCluster>> {
        self.host_port(fqdn, port)
            .map(|hp| &hp.cluster)
            .filter(|c| &*c.labels.service.fqdn == fqdn)
    }

    /// The host port `fqdn:port` with its routes (explicit TCP listeners look theirs up per
    /// connection, so a push reaches them too).
    pub fn host_port(&self, fqdn: &str, port: u16) -> Option<&Arc<HostPort>> {
        self.named(fqdn, Some(port)).ok()
    }

    /// One host port of service `fqdn` (any port).
    pub fn host_port_of(&self, fqdn: &str) -> Option<&Arc<HostPort>> {
        match self.hosts.get(fqdn) {
            Some(ports) => ports.first(),
            None => self.directory.as_ref()?.any_port_of(fqdn),
        }
    }

    /// Whether service `fqdn` is known but its resources are still to be fetched (on demand).
    pub fn awaiting(&self, fqdn: &str) -> bool {
        match self.hosts.get(fqdn) {
            Some(ports) => ports.iter().any(|hp| hp.cluster.awaiting()),
            None => self.directory.as_ref().is_some_and(|d| d.contains(fqdn)),
        }
    }

    /// Finds the cluster for a request's host (`reviews`, `reviews:9080`, an FQDN, an alias).
    /// Without a port, a host with a single service port matches it; otherwise port 80.
    pub fn route(&self, authority: &str) -> Result<&Arc<HostPort>, RouteMiss> {
        let (host, port) = split_host_port(authority);
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.named(&host.to_ascii_lowercase(), port)
        } else {
            self.named(host, port)
        }
    }

    /// The host port `host` (lowercase) names at `port` (`None`: its only port, else 80): a
    /// fetched service's, else one the directory knows (and that is not fetched).
    #[inline]
    fn named(&self, host: &str, port: Option<u16>) -> Result<&Arc<HostPort>, RouteMiss> {
        let fetched = self.hosts.get(host);
        if let Some(hp) = fetched.and_then(|ports| pick(ports, port)) {
            return Ok(hp);
        }
        match &self.directory {
            None if fetched.is_some() => Err(RouteMiss::UnknownPort),
            None => Err(RouteMiss::UnknownHost),
            Some(d) => self.known(d, host, port, fetched.is_some()),
        }
    }

    /// [`Snapshot::named`] in the directory, for a name the fetched services do not have at
    /// that port (`fetched`: they have it at others).
    #[cold]
    fn known<'a>(
        &'a self,
        d: &'a Directory,
        host: &str,
        port: Option<u16>,
        fetched: bool,
    ) -> Result<&'a Arc<HostPort>, RouteMiss> {
        match d.named(host, port) {
            Ok(hp) if !self.holds(hp) => Ok(hp),
            Err(RouteMiss::UnknownHost) if !fetched => Err(RouteMiss::UnknownHost),
            _ => Err(RouteMiss::UnknownPort),
        }
    }

    /// Whether the fetched services have `hp`'s service port (a directory entry for it is
    /// stale).
    fn holds(&self, hp: &HostPort) -> bool {
        self.holds_port(&hp.cluster.labels.service.fqdn, hp.port)
    }

    /// Whether the fetched services have service port `fqdn:port`.
    fn holds_port(&self, fqdn: &str, port: u16) -> bool {
        self.hosts
            .get(fqdn)
            .is_some_and(|ports| ports.iter().any(|o| o.port == port))
    }

    /// The service port a captured connection to `dst` was meant for.
    pub fn captured(&self, dst: SocketAddr) -> Option<&CaptureTarget> {
        let fetched = self.addresses.find_claimed(dst);
        let Some(d) = &self.directory else {
            return fetched.map(|(_, t)| t);
        };
        let known = d.captured(dst).filter(|(_, t)| !self.holds(&t.host));
        match (fetched, known) {
            (Some(f), Some(k)) => Some(if addresses::stronger(k, f) { k.1 } else { f.1 }),
            (f, k) => f.or(k).map(|(_, t)| t),
        }
    }

    /// Where a request on a captured connection to `dst` goes: the host its `:authority`
    /// names, when that host has `dst`'s port (Istio routes by Host within the port's route
    /// configuration), else the service whose address `dst` is (an authority that is an IP,
    /// or a name the mesh does not know).
    pub fn route_captured(
        &self,
        authority: &str,
        dst: SocketAddr,
    ) -> Result<&Arc<HostPort>, RouteMiss> {
        let (host, _) = split_host_port(authority);
        let host = host.strip_suffix('.').unwrap_or(host);
        let named = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.named(&host.to_ascii_lowercase(), Some(dst.port()))
        } else {
            self.named(host, Some(dst.port()))
        };
        if let Ok(hp) = named {
            return Ok(hp);
        }
        self.captured(dst)
            .map(|t| &t.host)
            .ok_or(RouteMiss::UnknownHost)
    }

    /// Every port the workload serves: service port and where it goes.
    pub fn inbound_ports(&self) -> impl Iterator<Item = (u16, &InboundPort)> {
        self.inbound.iter().map(|(p, ip)| (*p, ip))
    }

    /// The local port serving requests addressed to `port`; with no port, or when only one
    /// port is served, that one.
    pub fn inbound_port(&self, port: Option<u16>) -> Option<(u16, &InboundPort)> {
        if let Some(p) = port
            && let Some(ip) = self.inbound.get(&p)
        {
            return Some((p, ip));
        }
        if self.inbound.len() == 1 {
            return self.inbound.iter().next().map(|(p, ip)| (*p, ip));
        }
        None
    }

    /// Every service cluster: the fetched services', then (on demand) those of the
    /// directory's services not fetched.
    /// Of the directory's, only those a lookup made (the rest: [`Snapshot::awaiting_specs`]).
    pub fn service_clusters(&self) -> impl Iterator<Item = &Arc<LazyCluster>> {
        let known = self.directory.iter().flat_map(|d| d.ports());
        let made = known.filter_map(|(_, made)| made.filter(|hp| !self.holds(hp)));
        self.clusters.iter().chain(made.map(|hp| &hp.cluster))
    }

    /// The directory's service ports no lookup made and the fetched services do not hold:
    /// known by their spec alone, awaiting their fetch.
    pub fn awaiting_specs(&self) -> impl Iterator<Item = &Arc<ServiceSpec>> {
        let known = self.directory.iter().flat_map(|d| d.ports());
        known
            .filter(|(spec, made)| made.is_none() && !self.holds_port(&spec.hostname, spec.port))
            .map(|(spec, _)| spec)
    }

    /// Clusters awaiting their fetch made for the service ports of
    /// [`Snapshot::awaiting_specs`] (for the admin dump, which shows them without keeping
    /// them).
    pub fn awaiting_previews(&self) -> Vec<Arc<LazyCluster>> {
        let Some(d) = &self.directory else {
            return Vec::new();
        };
        d.ports()
            .enumerate()
            .filter(|(_, (spec, made))| {
                made.is_none() && !self.holds_port(&spec.hostname, spec.port)
            })
            .filter_map(|(i, _)| d.make(i).map(|t| t.host.cluster.clone()))
            .collect()
    }

    /// The clusters of the services this snapshot holds apart from its directory (all of
    /// them, without one), with their subsets: the ones a snapshot build carries over.
    pub(crate) fn fetched_clusters(&self) -> impl Iterator<Item = &Arc<LazyCluster>> {
        self.clusters.iter().chain(&self.subset_clusters)
    }

    /// Every cluster: the service clusters, then the subset clusters.
    pub fn all_clusters(&self) -> impl Iterator<Item = &Arc<LazyCluster>> {
        self.service_clusters().chain(&self.subset_clusters)
    }

    /// How many clusters something used (built); the rest cost only their recipe.
    pub fn built_clusters(&self) -> usize {
        self.all_clusters().filter(|c| c.built().is_some()).count()
    }

    /// How many host names route somewhere (for the admin dump and benchmarks).
    pub fn host_count(&self) -> usize {
        let known = self.directory.as_ref();
        self.hosts.len() + known.map_or(0, |d| d.names_outside(self.hosts.keys().map(|k| &**k)))
    }
}

/// Of a host's ports, `port`; with none named, its only one, else 80.
fn pick(ports: &[Arc<HostPort>], port: Option<u16>) -> Option<&Arc<HostPort>> {
    pick_by(ports, port, |h| Some(h.port))
}

/// Of a host's service ports (`port_of` reads one's number), the first at `port`; with none
/// named, its only port (the first, when all have one number), else 80. The fetched
/// services' table and the directory pick alike.
pub(crate) fn pick_by<T>(
    ports: &[T],
    port: Option<u16>,
    port_of: impl Fn(&T) -> Option<u16>,
) -> Option<&T> {
    match (port, ports) {
        (Some(p), _) => ports.iter().find(|h| port_of(h) == Some(p)),
        (None, [only]) => Some(only),
        (None, [first, rest @ ..]) if rest.iter().all(|h| port_of(h) == port_of(first)) => {
            Some(first)
        }
        (None, _) => ports.iter().find(|h| port_of(h) == Some(80)),
    }
}

/// Istio's `connectionPool.http.idleTimeout` default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Default connect timeout for the local app (the app is on loopback: fail fast).
pub const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
