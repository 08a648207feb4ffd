//! A destination service as the request path sees it: its endpoints with their connection
//! pools, its balancer over the hosts outlier detection allows, its circuit breakers, budgets
//! and statistics; and the timers (outlier return, slow start) that keep its host set current.

use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::balance::Outstanding;
use crate::balance::hash_on::HashOn;
use crate::balance::host_set::{HostSet, Placements, warming_shares};
use crate::balance::slow_start::{self, SlowStart};
use crate::identity::spiffe::SpiffeId;
use crate::protocol::{Protocol, UpstreamProtocol};
use crate::resilience::breaker::Breakers;
use crate::resilience::outlier::{Change, Detector};
use crate::resilience::rate_limit::TokenBucket;
use crate::resilience::retry::RetryBudget;
use crate::telemetry::cluster_stats::ClusterStats;
use crate::telemetry::labels::ServiceLabels;
use crate::telemetry::metrics::Label;
use crate::telemetry::peer::WorkloadMetadata;
use crate::transport::h1_pool::H1Pool;
use crate::transport::h2::H2Pool;

/// One destination sidecar.
#[derive(Debug)]
pub struct Endpoint {
    /// Its inbound address.
    pub addr: SocketAddr,
    /// Its address as a label / access-log value.
    pub addr_label: Label,
    /// Reached in plaintext (its PeerAuthentication is DISABLE on this port).
    pub plaintext: bool,
    /// The multiplexed HTTP/2 connection to it (HTTP in h2 mode, and TCP tunnels).
    pub h2: H2Pool,
    /// Its HTTP/1.1 keep-alive connections (HTTP in http1 mode).
    pub h1: H1Pool,
    /// The peer's workload labels, learnt from its first response.
    pub peer: arc_swap::ArcSwapOption<WorkloadMetadata>,
    /// The workload's labels (subset selection).
    pub labels: crate::source::LabelSet,
    /// Requests sent to it and not yet answered (least request reads it); kept across
    /// snapshots with the endpoint.
    pub active: Arc<std::sync::atomic::AtomicU64>,
    /// Its response-time estimate (peak EWMA reads it).
    pub latency: crate::balance::ewma::PeakEwma,
    /// The identity its mutual TLS handshakes verified (the access log's
    /// `upstream_peer_principal`); shared with its pools, which record it.
    pub verified: Arc<crate::transport::connect::VerifiedPeer>,
}

impl Endpoint {
    /// Counts a request as outstanding to this endpoint until the guard is dropped.
    pub fn outstanding(&self) -> Outstanding {
        Outstanding::start(&self.active)
    }
}

/// A destination service: the unit of routing, balancing and connection pooling.
#[derive(Debug)]
pub struct Cluster {
    /// Service port.
    pub port: u16,
    /// `port` as the value of the internal port header (made once, not per request).
    pub port_header: http::HeaderValue,
    /// Protocol.
    pub protocol: Protocol,
    /// Labels for metrics.
    pub labels: ServiceLabels,
    /// `fqdn:port`, the `:authority` sent between sidecars and the CONNECT target.
    pub authority: http::uri::Authority,
    /// Endpoints (destination sidecars).
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The algorithm (DestinationRule `loadBalancer`; least request by default).
    pub(crate) policy: crate::balance::Policy,
    /// Each endpoint's priority and weight (locality, registry weights).
    pub(crate) placements: Placements,
    /// Slow start (`warmup`), for round robin and least request.
    pub(crate) slow_start: Option<SlowStart>,
    /// When each endpoint joined this cluster (`None`: it was there when the cluster was
    /// made, so it starts warm), for slow start.
    pub(crate) joined: Vec<Option<tokio::time::Instant>>,
    /// The endpoints balanced over now and their balancer: all of them, less those outlier
    /// detection ejected. Swapped whole when an ejection starts or ends.
    pub(crate) hosts: arc_swap::ArcSwap<HostSet>,
    /// What a consistent-hash balancer hashes, when it is one.
    pub hash_on: Option<HashOn>,
    /// Circuit breakers (`connectionPool`).
    pub breakers: Breakers,
    /// Outlier detection (`outlierDetection`), when the DestinationRule has the block.
    pub outlier: Option<Detector>,
    /// Envoy's per-cluster statistics.
    pub stats: ClusterStats,
    /// Keeps retries within a share of requests over time (meshlite's rate budget; shared
    /// across snapshots by name while its parameters hold). None: `off`, or Istio's
    /// `retryBudget` (in `breakers`) stands alone.
    pub retry_budget: Option<Arc<RetryBudget>>,
    /// The host's local rate limit (`ratelimit.meshlite.io/local` on its DestinationRule),
    /// shared by the host's clusters.
    pub rate_limit: Option<Arc<TokenBucket>>,
    /// How HTTP travels to the endpoints.
    pub upstream: UpstreamProtocol,
    /// TCP + TLS connect deadline (`tcp.connectTimeout`, else the proxy's).
    pub connect_timeout: Duration,
    /// TLS configuration with ALPN http/1.1 (upgrades, http1 mode).
    pub tls_http1: Arc<rustls::ClientConfig>,
    /// SNI.
    pub server_name: ServerName<'static>,
    /// Explicit-mode local listener for `tcp` services.
    pub listen: Option<SocketAddr>,
    /// SPIFFE IDs the endpoints may present.
    pub allowed: Arc<[SpiffeId]>,
    /// The SNI as text (the key reused endpoints are matched by).
    pub(crate) server_name_str: Box<str>,
    /// DestinationRule subset this cluster holds, empty for the whole service.
    pub subset: Label,
    /// Envoy's cluster name, `outbound|<port>|<subset>|<fqdn>`.
    pub name: Label,
    /// Set for a service outside the mesh: sent to directly, without mutual TLS.
    pub external: Option<Arc<External>>,
}

/// A service outside the mesh (ServiceEntry `MESH_EXTERNAL`): no sidecar answers for it, so
/// requests go straight to its endpoints in plaintext, as the app would have sent them. DNS
/// names are resolved when a connection opens (Envoy's LOGICAL_DNS behaviour: the name's
/// current answer, no list of resolved hosts kept here).
#[derive(Debug)]
pub struct External {
    /// Endpoints, `ip:port` or `name:port`.
    pub targets: Vec<ExternalTarget>,
    /// Round-robin cursor over `targets`.
    pub(crate) rr: AtomicUsize,
    /// Pooled client (HTTP/1.1, or HTTP/2 for HTTP2/GRPC ports), plaintext or originating
    /// the DestinationRule's TLS.
    pub client: crate::transport::external::ExternalClient,
    /// The TLS settings the client was made for (a push that changes them makes a new one).
    pub(crate) tls_key: String,
}

/// One endpoint of a service outside the mesh.
#[derive(Debug)]
pub struct ExternalTarget {
    /// Where to connect.
    pub authority: http::uri::Authority,
    /// The same, as a label / access-log value.
    pub label: Label,
}

impl External {
    /// Picks the next endpoint, round robin, with its index; `None` when there is none
    /// (503 `UH`).
    pub fn pick(&self) -> Option<(usize, &ExternalTarget)> {
        if self.targets.is_empty() {
            return None;
        }
        let i = self.rr.fetch_add(1, Ordering::Relaxed) % self.targets.len();
        Some((i, self.targets.get(i)?))
    }
}

/// The load of a level's endpoints as the balancers read it.
struct LevelLoad<'a> {
    members: &'a [usize],
    endpoints: &'a [Arc<Endpoint>],
}

impl LevelLoad<'_> {
    fn endpoint(&self, i: usize) -> Option<&Endpoint> {
        self.members
            .get(i)
            .and_then(|&m| self.endpoints.get(m))
            .map(|e| &**e)
    }
}

impl crate::balance::ActiveRequests for LevelLoad<'_> {
    fn active(&self, i: usize) -> u64 {
        self.endpoint(i)
            .map_or(0, |e| e.active.load(Ordering::Relaxed))
    }

    fn cost(&self, i: usize) -> f64 {
        self.endpoint(i).map_or(f64::MAX, |e| {
            e.latency.cost(e.active.load(Ordering::Relaxed))
        })
    }
}

impl Cluster {
    /// Picks an endpoint with the cluster's balancer among the hosts not ejected (`hash`:
    /// the request's, for consistent hashing); `None` when there is none (503 `UH`).
    /// Returns the endpoint's index in `endpoints` with it, for outlier reports.
    pub fn pick(&self, hash: Option<u64>) -> Option<(usize, Arc<Endpoint>)> {
        self.pick_excluding(hash, &[])
    }

    /// [`Self::pick`] for a retry that leaves the priorities (localities) `tried`.
    pub fn pick_excluding(
        &self,
        hash: Option<u64>,
        tried: &[u32],
    ) -> Option<(usize, Arc<Endpoint>)> {
        let set = self.hosts.load();
        let level = set.level_excluding(hash, tried)?;
        let balancer = level.balancer()?;
        let load = LevelLoad {
            members: level.members(),
            endpoints: &self.endpoints,
        };
        let i = balancer.pick(hash, &load, &mut crate::balance::ThreadRandom)?;
        let m = *level.members().get(i)?;
        Some((m, self.endpoints.get(m)?.clone()))
    }

    /// The priority (locality level) endpoint `index` is placed at.
    pub fn priority_of(&self, index: usize) -> Option<u32> {
        self.placements.priority(index)
    }

    /// Whether the balancer reads response times (peak EWMA): only then are they recorded.
    pub fn observes_latency(&self) -> bool {
        self.policy == crate::balance::Policy::PeakEwma
    }

    /// Records one attempt's result on endpoint `index` for outlier detection (`status`: the
    /// response code, or 503/504 for a failure without one), ejecting it when that makes
    /// a streak.
    pub fn report(&self, index: usize, status: u16) {
        let Some(detector) = &self.outlier else {
            return;
        };
        self.on_outlier_change(
            detector,
            detector.report(index, status, tokio::time::Instant::now()),
        );
    }

    /// Records an attempt on endpoint `index` that got no response (connect failure,
    /// reset, timeout; `as_status` is what it counts as unless the rule splits local-origin
    /// errors).
    pub fn report_local_failure(&self, index: usize, as_status: u16) {
        let Some(detector) = &self.outlier else {
            return;
        };
        let change = detector.report_local_failure(index, as_status, tokio::time::Instant::now());
        self.on_outlier_change(detector, change);
    }

    /// Acts on what a report decided: an ejection rebalances, an overflow is counted.
    fn on_outlier_change(&self, detector: &Detector, change: Option<Change>) {
        match change {
            None => {}
            Some(Change::Ejected(i, time)) => {
                self.stats.ejections_enforced.inc();
                let host = self.endpoints.get(i).map(|e| e.addr_label.clone());
                tracing::warn!(
                    cluster = %self.name,
                    host = host.as_deref().unwrap_or("?"),
                    ejected_for_ms = time.as_millis() as u64,
                    "outlier detection ejected a host"
                );
                self.rebalance(detector);
            }
            Some(Change::Overflow(i)) => {
                self.stats.ejections_overflow.inc();
                let host = self.endpoints.get(i).map(|e| e.addr_label.clone());
                tracing::info!(
                    cluster = %self.name,
                    host = host.as_deref().unwrap_or("?"),
                    "outlier detection would eject a host but maxEjectionPercent forbids it"
                );
            }
        }
    }

    /// Publishes the host set outlier detection allows now, if it changed.
    fn rebalance(&self, detector: &Detector) {
        self.stats
            .ejections_active
            .set(i64::try_from(detector.ejected_count()).unwrap_or(i64::MAX));
        self.publish(false);
    }

    /// The balancing algorithm (DestinationRule `loadBalancer`).
    pub fn policy(&self) -> crate::balance::Policy {
        self.policy
    }

    /// The slow-start share of each endpoint now, in thousandths; `None` when none warms.
    pub fn warming_now(&self) -> Option<Vec<Option<u32>>> {
        self.warming(tokio::time::Instant::now())
    }

    /// The slow-start share of each endpoint at `now`, in thousandths; `None` when none warms.
    fn warming(&self, now: tokio::time::Instant) -> Option<Vec<Option<u32>>> {
        warming_shares(self.slow_start.as_ref(), &self.joined, now)
    }

    /// Builds and swaps in the host set for the hosts outlier detection allows and the
    /// slow-start weights of now; unless `always`, only when the allowed hosts changed.
    fn publish(&self, always: bool) {
        let members = match &self.outlier {
            Some(d) => d.balanced_hosts(),
            None => (0..self.endpoints.len()).collect(),
        };
        if !always && self.hosts.load().allowed() == members {
            return;
        }
        let warming = self.warming(tokio::time::Instant::now());
        let keys: Vec<&str> = self.endpoints.iter().map(|e| &*e.addr_label).collect();
        match HostSet::build(
            self.policy,
            &keys,
            &self.placements,
            &members,
            warming.as_deref(),
        ) {
            Ok(set) => self.hosts.store(Arc::new(set)),
            // The same policy already built over a superset; a failure here would be a bug
            // in the balancer, so keep the current set rather than drop traffic.
            Err(e) => tracing::error!(cluster = %self.name, "rebalancing failed: {e}"),
        }
    }

    /// The slow-start timer of this cluster: while an endpoint warms up, rebuilds the
    /// balancer with the weights of the moment every [`slow_start::REFRESH`], then once more
    /// at full weight, and stops.
    pub(crate) fn spawn_slow_start_timer(cluster: &Arc<Cluster>) {
        if cluster.warming(tokio::time::Instant::now()).is_none() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(cluster);
        rt.spawn(async move {
            let mut ticks = tokio::time::interval(slow_start::REFRESH);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(c) = weak.upgrade() else { return };
                c.publish(true);
                if c.warming(tokio::time::Instant::now()).is_none() {
                    return;
                }
            }
        });
    }

    /// The outlier-detection timer of this cluster: returns hosts whose ejection is over,
    /// every `interval`, until the cluster is dropped (replaced by a push).
    pub(crate) fn spawn_outlier_timer(cluster: &Arc<Cluster>) {
        let Some(detector) = &cluster.outlier else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let interval = detector.config().interval;
        let weak = Arc::downgrade(cluster);
        rt.spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(c) = weak.upgrade() else { return };
                let Some(d) = &c.outlier else { return };
                for i in d.tick(tokio::time::Instant::now()) {
                    let host = c.endpoints.get(i).map(|e| e.addr_label.clone());
                    tracing::info!(
                        cluster = %c.name,
                        host = host.as_deref().unwrap_or("?"),
                        "outlier detection returned a host"
                    );
                }
                c.rebalance(d);
            }
        });
    }
}
