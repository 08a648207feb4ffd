//! The proxy's configuration as one immutable snapshot, read lock-free on every request.
//!
//! A [`Snapshot`] holds everything the request path needs already resolved: the host table
//! (every name a service answers to, mapped to its clusters by port), each cluster's endpoints
//! with their connection pools and TLS configurations, the inbound port table, and the metric
//! label values as shared strings. It lives behind an `ArcSwap`: a request loads it once; a new
//! snapshot (from the file now, from xDS next) replaces it without touching open connections.

use http::HeaderValue;
use meshlite_xds_proto::v1;
use rustls_pki_types::ServerName;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::balance::locality::{Locality, LocalitySetting, Placement};
use crate::balance::slow_start::{self, SlowStart};
use crate::config::{Protocol, ProxyConfig, UpstreamProtocol};
use crate::http::path::PathNormalization;
use crate::identity::spiffe::SpiffeId;
use crate::identity::tls::{ALPN_MESH_H2, ALPN_MESH_HTTP1, Identity, IdentityError};
use crate::policy::inbound::{InboundSecurity, MtlsMode};
use crate::resilience::breaker::Breakers;
use crate::resilience::outlier::{Change, Detector, HostHealth, OutlierConfig};
use crate::resilience::rate_limit::TokenBucket;
use crate::resilience::retry::{BudgetParams, RetryBudget};
use crate::route::{ResolveDestination, RouteError, RouteTable, Target};
use crate::telemetry::labels::DestinationServices;
use crate::telemetry::metrics::{ClusterStats, Label, Metrics};
use crate::transport::connect::PoolTarget;
use crate::transport::egress::EgressTls;
use crate::transport::h1_pool::H1Pool;
use crate::transport::h2::H2Pool;

/// Istio's cluster DNS suffix.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// Label value for anything the proxy does not know (Istio's convention).
pub fn unknown() -> Label {
    static UNKNOWN: std::sync::LazyLock<Label> = std::sync::LazyLock::new(|| Arc::from("unknown"));
    UNKNOWN.clone()
}

/// This workload, as it appears in metric labels and the peer-metadata header.
#[derive(Debug)]
pub struct LocalWorkload {
    /// SPIFFE ID.
    pub id: SpiffeId,
    /// Workload name.
    pub workload: Label,
    /// Namespace (from the SPIFFE ID).
    pub namespace: Label,
    /// Principal (SPIFFE ID without scheme).
    pub principal: Label,
    /// Canonical service (`app`).
    pub app: Label,
    /// The destination service labels of the names inbound requests give this workload
    /// (its own service is `<app>.<namespace>.svc.cluster.local`).
    pub services: DestinationServices,
    /// Canonical revision (`version`).
    pub version: Label,
    /// Value of the peer-metadata header this sidecar sends.
    pub peer_header: HeaderValue,
    /// Its locality (locality-aware balancing is relative to it).
    pub locality: Locality,
    /// Its labels (`failoverPriority` compares them).
    pub labels: BTreeMap<String, String>,
}

/// A peer workload's labels, learnt from its peer-metadata header.
#[derive(Clone, Debug)]
pub struct PeerWorkload {
    /// Workload name.
    pub workload: Label,
    /// Namespace.
    pub namespace: Label,
    /// Canonical service.
    pub app: Label,
    /// Canonical revision.
    pub version: Label,
}

impl PeerWorkload {
    /// The labels used when the peer did not say who it is.
    pub fn unknown() -> Self {
        let u = unknown();
        Self {
            workload: u.clone(),
            namespace: u.clone(),
            app: u.clone(),
            version: u,
        }
    }

    /// The peer cached in `slot`, or else parsed from the peer-metadata header and cached there:
    /// a peer says who it is once per connection or endpoint, not on every request.
    pub fn learn(
        slot: &arc_swap::ArcSwapOption<PeerWorkload>,
        headers: &http::HeaderMap,
    ) -> Option<Arc<PeerWorkload>> {
        if let Some(p) = slot.load_full() {
            return Some(p);
        }
        let parsed = Arc::new(Self::parse(
            headers.get(&crate::http::headers::PEER_METADATA)?,
        )?);
        slot.store(Some(parsed.clone()));
        Some(parsed)
    }

    /// Parses `workload;namespace;app;version`.
    pub fn parse(v: &HeaderValue) -> Option<Self> {
        let s = v.to_str().ok()?;
        let mut it = s.split(';');
        let (w, n, a, ver) = (it.next()?, it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || w.is_empty() || w.len() > 253 || s.len() > 1024 {
            return None;
        }
        Some(Self {
            workload: Arc::from(w),
            namespace: Arc::from(n),
            app: Arc::from(a),
            version: Arc::from(ver),
        })
    }
}

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
    pub peer: arc_swap::ArcSwapOption<PeerWorkload>,
    /// The workload's labels (subset selection).
    pub labels: BTreeMap<String, String>,
    /// Requests sent to it and not yet answered (least request reads it); kept across
    /// snapshots with the endpoint.
    pub active: std::sync::atomic::AtomicU64,
    /// Its response-time estimate (peak EWMA reads it).
    pub latency: crate::balance::ewma::PeakEwma,
}

/// Counts a request as in flight to an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    /// Starts counting a request to `endpoint`.
    pub fn start(endpoint: Arc<Endpoint>) -> Self {
        endpoint.active.fetch_add(1, Ordering::Relaxed);
        Self(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Metric label values of a destination service, computed once.
#[derive(Debug)]
pub struct ServiceLabels {
    /// FQDN.
    pub fqdn: Label,
    /// Short name.
    pub name: Label,
    /// Namespace.
    pub namespace: Label,
    /// Principal of the expected identity (the first allowed one).
    pub principal: Label,
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
    policy: crate::balance::Policy,
    /// Each endpoint's priority and weight (locality, registry weights).
    placements: Placements,
    /// Slow start (`warmup`), for round robin and least request.
    slow_start: Option<SlowStart>,
    /// When each endpoint joined this cluster (`None`: it was there when the cluster was
    /// made, so it starts warm), for slow start.
    joined: Vec<Option<tokio::time::Instant>>,
    /// The endpoints balanced over now and their balancer: all of them, less those outlier
    /// detection ejected. Swapped whole when an ejection starts or ends.
    hosts: arc_swap::ArcSwap<HostSet>,
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
    server_name_str: Box<str>,
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
    rr: AtomicUsize,
    /// Pooled client (HTTP/1.1, or HTTP/2 for HTTP2/GRPC ports), plaintext or originating
    /// the DestinationRule's TLS.
    pub client: crate::transport::http1::LocalHttp1Client,
    /// The TLS settings the client was made for (a push that changes them makes a new one).
    tls_key: String,
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

/// The endpoints a cluster balances over at one moment: by priority (locality failover;
/// one level without it), each level with its balancer and its share of traffic.
#[derive(Debug)]
pub struct HostSet {
    /// The hosts outlier detection allowed when this was built.
    allowed: Vec<usize>,
    levels: Vec<Level>,
    /// Cumulative traffic percentages of the levels (the last is 100 when any host is up).
    cumulative: Vec<u32>,
    /// `(healthy, total)` hosts of each level, to recompute the loads without some levels.
    health: Vec<(usize, usize)>,
}

/// One priority level of a [`HostSet`].
#[derive(Debug)]
struct Level {
    /// Indices into the cluster's `endpoints`, in order.
    members: Vec<usize>,
    /// `None` when `members` is empty.
    balancer: Option<crate::balance::Balancer>,
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

/// Nanoseconds since this process first asked: the clock of the latency estimates.
pub fn clock_ns() -> u64 {
    static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(tokio::time::Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// How a cluster places its endpoints: priority and weight of each (`None`: never used,
/// e.g. a locality `distribute` leaves out).
#[derive(Debug, Clone)]
pub struct Placements(Vec<Option<(Placement, u32)>>);

impl Placements {
    /// Every endpoint at priority 0 with its own weight.
    fn flat(endpoints: &[EndpointSpec]) -> Self {
        Self(
            endpoints
                .iter()
                .map(|e| {
                    Some((
                        Placement {
                            priority: 0,
                            locality_weight: None,
                        },
                        e.weight.max(1),
                    ))
                })
                .collect(),
        )
    }

    /// Places `endpoints` for the caller `local` under `setting`; a `distribute` weight is
    /// shared among the endpoints of its locality (Envoy picks the locality by weight, then a
    /// host in it; spreading the weight over the hosts gives the same shares).
    fn located(
        setting: &LocalitySetting,
        local: &LocalWorkload,
        endpoints: &[EndpointSpec],
        failover_on: bool,
    ) -> Self {
        let view: Vec<(Locality, &BTreeMap<String, String>)> = endpoints
            .iter()
            .map(|e| (e.locality.clone(), &e.labels))
            .collect();
        let placed = crate::balance::locality::place(
            setting,
            &local.locality,
            &local.labels,
            &view,
            failover_on,
        );
        let mut per_locality: HashMap<&Locality, u32> = HashMap::new();
        for (p, e) in placed.iter().zip(endpoints) {
            if p.is_some_and(|p| p.locality_weight.is_some()) {
                *per_locality.entry(&e.locality).or_default() += 1;
            }
        }
        Self(
            placed
                .iter()
                .zip(endpoints)
                .map(|(p, e)| {
                    let p = (*p)?;
                    let weight = match p.locality_weight {
                        None => e.weight.max(1),
                        Some(w) => {
                            let n = per_locality.get(&e.locality).copied().unwrap_or(1).max(1);
                            (w.saturating_mul(1000) / n)
                                .max(1)
                                .saturating_mul(e.weight.max(1))
                        }
                    };
                    Some((p, weight))
                })
                .collect(),
        )
    }
}

impl HostSet {
    /// Builds the levels over `members` (the hosts outlier detection allows) of `endpoints`;
    /// `warming` scales each endpoint's weight by its slow-start share, in thousandths
    /// (`None` for a host at full weight).
    fn build(
        policy: crate::balance::Policy,
        endpoints: &[Arc<Endpoint>],
        placements: &Placements,
        members: &[usize],
        warming: Option<&[Option<u32>]>,
    ) -> Result<Self, crate::balance::BalanceError> {
        let depth = placements
            .0
            .iter()
            .flatten()
            .map(|(p, _)| p.priority + 1)
            .max()
            .unwrap_or(1) as usize;
        let mut health = vec![(0usize, 0usize); depth];
        for (p, _) in placements.0.iter().flatten() {
            health[p.priority as usize].1 += 1;
        }
        let mut by_level: Vec<Vec<usize>> = vec![Vec::new(); depth];
        for &m in members {
            if let Some(Some((p, _))) = placements.0.get(m) {
                by_level[p.priority as usize].push(m);
                health[p.priority as usize].0 += 1;
            }
        }
        let loads = crate::balance::locality::priority_loads(&health);
        let mut cumulative = Vec::with_capacity(depth);
        let mut sum = 0;
        for l in &loads {
            sum += l;
            cumulative.push(sum);
        }
        let levels = by_level
            .into_iter()
            .map(|members| {
                // Weights as u64 (a slow-start share multiplies them by up to 1000), brought
                // back into u32 by one common shift, which keeps their ratios.
                let weights: Vec<u64> = members
                    .iter()
                    .map(|&i| {
                        let weight = placements.0.get(i).copied().flatten().map_or(1, |p| p.1);
                        let share =
                            warming.map_or(1, |w| w.get(i).copied().flatten().unwrap_or(1000));
                        u64::from(weight) * u64::from(share)
                    })
                    .collect();
                let top = weights.iter().copied().max().unwrap_or(1);
                let shift = (64 - top.leading_zeros()).saturating_sub(32);
                let keys: Vec<crate::balance::Endpoint<'_>> = members
                    .iter()
                    .zip(&weights)
                    .filter_map(|(&i, &w)| {
                        let weight = u32::try_from(w >> shift).unwrap_or(u32::MAX).max(1);
                        endpoints
                            .get(i)
                            .map(|e| crate::balance::Endpoint::new(&e.addr_label, weight))
                    })
                    .collect();
                let balancer = if keys.is_empty() {
                    None
                } else {
                    Some(crate::balance::Balancer::new(
                        policy,
                        &keys,
                        &mut crate::balance::ThreadRandom,
                    )?)
                };
                Ok(Level { members, balancer })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            allowed: members.to_vec(),
            levels,
            cumulative,
            health,
        })
    }

    /// The level a retry goes to when the levels `tried` were attempted already (Envoy's
    /// previous-priorities retry priority): they count as unhealthy, so their load spills to
    /// the others by the usual rule; when that leaves no level, none is excluded.
    fn level_excluding(&self, hash: Option<u64>, tried: &[u32]) -> Option<&Level> {
        if tried.is_empty() || self.levels.len() == 1 {
            return self.level(hash);
        }
        let health: Vec<(usize, usize)> = self
            .health
            .iter()
            .enumerate()
            .map(|(i, &(healthy, total))| {
                let excluded = u32::try_from(i).is_ok_and(|i| tried.contains(&i));
                (if excluded { 0 } else { healthy }, total)
            })
            .collect();
        let loads = crate::balance::locality::priority_loads(&health);
        if loads.iter().all(|l| *l == 0) {
            return self.level(hash);
        }
        let roll = level_roll(hash);
        let mut sum = 0;
        let i = loads.iter().position(|l| {
            sum += l;
            roll < sum
        })?;
        self.levels.get(i)
    }

    /// The level a request goes to: by its hash when it has one (so consistent hashing
    /// stays consistent), else at random, in proportion to the levels' loads.
    fn level(&self, hash: Option<u64>) -> Option<&Level> {
        if self.levels.len() == 1 {
            return self.levels.first();
        }
        let roll = level_roll(hash);
        let i = self.cumulative.iter().position(|c| roll < *c)?;
        self.levels.get(i)
    }
}

/// Where in 0..100 a request falls among priority loads: by its hash when it has one (so
/// consistent hashing stays consistent), else at random.
fn level_roll(hash: Option<u64>) -> u32 {
    match hash {
        Some(h) => (h % 100) as u32,
        None => fastrand::u32(..100),
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
        let balancer = level.balancer.as_ref()?;
        let load = LevelLoad {
            members: &level.members,
            endpoints: &self.endpoints,
        };
        let i = balancer.pick(hash, &load, &mut crate::balance::ThreadRandom)?;
        let m = *level.members.get(i)?;
        Some((m, self.endpoints.get(m)?.clone()))
    }

    /// What the cluster's DestinationRule made of it, for the admin `/config_dump`: the
    /// balancer, the limits in force, outlier detection with the hosts ejected now, the
    /// retry budgets and the hosts still warming up.
    pub fn policy_view(&self) -> serde_json::Value {
        let limit =
            |l: &crate::resilience::breaker::Limit| (l.max() != u64::MAX).then_some(l.max());
        let addr = |i: usize| self.endpoints.get(i).map(|e| e.addr.to_string());
        serde_json::json!({
            "load_balancer": format!("{:?}", self.policy),
            "connect_timeout_ms": self.connect_timeout.as_millis() as u64,
            "hash_on": self.hash_on.as_ref().map(|h| format!("{h:?}")),
            "limits": {
                "max_requests": limit(&self.breakers.requests),
                "max_pending_requests": limit(&self.breakers.pending),
                "max_retries": limit(&self.breakers.retries),
                "max_connections": limit(&self.breakers.connections),
            },
            "concurrency_retry_budget": self.breakers.retry_budget.as_ref().map(|b| serde_json::json!({
                "percent": b.percent(),
                "min_retry_concurrency": b.min_retry_concurrency(),
                "interval_ms": b.interval().map(|i| i.as_millis() as u64),
            })),
            "rate_retry_budget": self.retry_budget.as_ref().map(|b| {
                let p = b.params();
                serde_json::json!({
                    "ratio": p.ratio,
                    "min_per_second": p.min_per_sec,
                    "ttl_ms": p.ttl.as_millis() as u64,
                })
            }),
            "outlier_detection": self.outlier.as_ref().map(|d| serde_json::json!({
                "config": format!("{:?}", d.config()),
                "ejected": (0..self.endpoints.len())
                    .filter(|&i| d.is_ejected(i))
                    .filter_map(addr)
                    .collect::<Vec<_>>(),
            })),
            "warming": self
                .warming(tokio::time::Instant::now())
                .map(|shares| {
                    shares
                        .iter()
                        .enumerate()
                        .filter_map(|(i, s)| Some((addr(i)?, (*s)?)))
                        .map(|(a, permille)| serde_json::json!({"endpoint": a, "weight_permille": permille}))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
            "rate_limited": self.rate_limit.is_some(),
        })
    }

    /// The priority (locality level) endpoint `index` is placed at.
    pub fn priority_of(&self, index: usize) -> Option<u32> {
        self.placements
            .0
            .get(index)
            .copied()
            .flatten()
            .map(|(p, _)| p.priority)
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

    /// The slow-start share of each endpoint now, in thousandths; `None` when none warms.
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
        if !always && self.hosts.load().allowed == members {
            return;
        }
        let warming = self.warming(tokio::time::Instant::now());
        match HostSet::build(
            self.policy,
            &self.endpoints,
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
    fn spawn_slow_start_timer(cluster: &Arc<Cluster>) {
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
    fn spawn_outlier_timer(cluster: &Arc<Cluster>) {
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

/// The request property a consistent-hash load balancer hashes (DestinationRule
/// `consistentHash`). A request without it gets a random endpoint, as in Envoy.
#[derive(Clone, Debug)]
pub enum HashOn {
    /// `httpHeaderName`.
    Header(http::HeaderName),
    /// `httpCookie`.
    Cookie(CookieHash),
    /// `useSourceIp`: the downstream (app) address.
    SourceIp,
    /// `httpQueryParameterName`.
    Query(String),
}

impl HashOn {
    /// The request's hash, if it carries the property.
    pub fn hash<B>(&self, req: &http::Request<B>, source: std::net::IpAddr) -> Option<u64> {
        use crate::balance::hash_key;
        match self {
            HashOn::Header(name) => req.headers().get(name).map(|v| hash_key(v.as_bytes())),
            HashOn::Cookie(CookieHash { name, .. }) => req
                .headers()
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| {
                    let (k, v) = c.trim().split_once('=')?;
                    (k == name).then(|| hash_key(v.as_bytes()))
                }),
            HashOn::SourceIp => Some(hash_key(source.to_string().as_bytes())),
            HashOn::Query(name) => req.uri().query().and_then(|q| {
                q.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == name).then(|| hash_key(v.as_bytes()))
                })
            }),
        }
    }
}

/// `consistentHash.httpCookie`: the cookie hashed, and how to issue it to a client that has
/// none (Envoy: only when a TTL is given; a zero TTL issues a session cookie).
#[derive(Clone, Debug)]
pub struct CookieHash {
    /// Cookie name.
    pub name: String,
    /// Its `Path` attribute when issued (empty: none).
    pub path: String,
    /// Its lifetime when issued; `None`: never issued (the request is balanced at random).
    pub ttl: Option<Duration>,
}

impl HashOn {
    /// For a hashing cookie the request lacks: a new random value's hash and the
    /// `Set-Cookie` that gives it to the client, so its next requests land on the same
    /// endpoint; `None` when nothing is to be issued.
    pub fn issue_cookie(&self) -> Option<(u64, HeaderValue)> {
        let HashOn::Cookie(c) = self else { return None };
        let ttl = c.ttl?;
        let value = format!("{:016x}", fastrand::u64(..));
        let mut set = format!("{}=\"{value}\"", c.name);
        if !ttl.is_zero() {
            set.push_str(&format!("; Max-Age={}", ttl.as_secs().max(1)));
        }
        if !c.path.is_empty() {
            set.push_str(&format!("; Path={}", c.path));
        }
        set.push_str("; HttpOnly");
        let header = HeaderValue::try_from(set).ok()?;
        // The client will send the value back quoted as issued; hash what it will send.
        Some((
            crate::balance::hash_key(format!("\"{value}\"").as_bytes()),
            header,
        ))
    }
}

/// The pushed `localityLbSetting` as the locality functions take it (none: the mesh
/// default, failover by region and zone).
fn locality_setting(l: Option<&v1::load_balancer::LocalityLbSetting>) -> LocalitySetting {
    let Some(l) = l else {
        return LocalitySetting::default();
    };
    LocalitySetting {
        distribute: l
            .distribute
            .iter()
            .map(|d| {
                (
                    d.from.clone(),
                    d.to.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                )
            })
            .collect(),
        failover: l
            .failover
            .iter()
            .map(|f| (f.from.clone(), f.to.clone()))
            .collect(),
        failover_priority: l.failover_priority.clone(),
    }
}

/// How long an upstream HTTP connection may stay unused: `http.idleTimeout`, else
/// `tcp.idleTimeout` (as Istio falls back), else Istio's 1 h; `0s` disables it.
fn upstream_idle_timeout(pool: Option<&v1::ConnectionPool>) -> Option<Duration> {
    match pool.and_then(|p| p.idle_timeout.or(p.tcp_idle_timeout)) {
        None => Some(DEFAULT_IDLE_TIMEOUT),
        Some(d) => Duration::try_from(d).ok().filter(|d| !d.is_zero()),
    }
}

/// Each endpoint's slow-start share at `now`, in thousandths (`None`: full weight), given
/// when each joined; `None` when no endpoint warms.
fn warming_shares(
    slow_start: Option<&SlowStart>,
    joined: &[Option<tokio::time::Instant>],
    now: tokio::time::Instant,
) -> Option<Vec<Option<u32>>> {
    let s = slow_start?;
    let shares: Vec<Option<u32>> = joined
        .iter()
        .map(|j| j.and_then(|at| s.permille(now.saturating_duration_since(at))))
        .collect();
    shares.iter().any(Option::is_some).then_some(shares)
}

/// The slow start a `loadBalancer` sets; Envoy applies it to round robin and least request
/// only.
fn slow_start_of(
    lb: Option<&v1::LoadBalancer>,
    policy: crate::balance::Policy,
) -> Option<SlowStart> {
    use crate::balance::Policy;
    if !matches!(policy, Policy::RoundRobin | Policy::LeastRequest(_)) {
        return None;
    }
    let w = lb?.warmup.as_ref()?;
    let window = w.duration.and_then(|d| Duration::try_from(d).ok())?;
    SlowStart::new(window, w.minimum_percent, w.aggression)
}

/// One block of `tp` in force for `port`: a `portLevelSettings` entry for the port replaces
/// the top-level blocks wholesale (blocks it omits are not inherited from the top level).
fn port_block<T>(
    tp: Option<&v1::TrafficPolicy>,
    port: u16,
    block: impl Fn(&v1::TrafficPolicy) -> Option<&T>,
) -> Option<&T> {
    let tp = tp?;
    match tp.port_level.get(&u32::from(port)) {
        Some(p) => block(p),
        None => block(tp),
    }
}

/// A subset's traffic policy over its service's: each block the subset sets replaces the
/// service's (Istio merges subset policies block by block).
fn merged(
    subset: Option<&v1::TrafficPolicy>,
    service: Option<&v1::TrafficPolicy>,
) -> Option<v1::TrafficPolicy> {
    match (subset, service) {
        (None, None) => None,
        (Some(s), None) => Some(s.clone()),
        (None, Some(p)) => Some(p.clone()),
        (Some(s), Some(p)) => Some(v1::TrafficPolicy {
            load_balancer: s.load_balancer.clone().or_else(|| p.load_balancer.clone()),
            connection_pool: s.connection_pool.or(p.connection_pool),
            outlier_detection: s
                .outlier_detection
                .clone()
                .or_else(|| p.outlier_detection.clone()),
            retry_budget: s.retry_budget.or(p.retry_budget),
            tls: s.tls.clone().or_else(|| p.tls.clone()),
            port_level: if s.port_level.is_empty() {
                p.port_level.clone()
            } else {
                s.port_level.clone()
            },
        }),
    }
}

/// The balancing policy and hash input of a `loadBalancer` (none: least request, Istio's
/// default). PASSTHROUGH (the original destination) has no meaning for an explicit proxy and
/// falls back to the default.
fn balance_policy(lb: Option<&v1::LoadBalancer>) -> (crate::balance::Policy, Option<HashOn>) {
    use crate::balance::{LeastRequestConfig, MaglevConfig, Policy, RingHashConfig};
    use v1::load_balancer::consistent_hash::Key;
    let Some(lb) = lb else {
        return (Policy::LeastRequest(LeastRequestConfig::default()), None);
    };
    if let Some(ch) = &lb.consistent_hash {
        let hash_on = match &ch.key {
            Some(Key::HttpHeaderName(h)) => http::HeaderName::try_from(h.as_str())
                .ok()
                .map(HashOn::Header),
            Some(Key::HttpCookie(c)) => Some(HashOn::Cookie(CookieHash {
                name: c.name.clone(),
                path: c.path.clone(),
                ttl: c.ttl.and_then(|d| Duration::try_from(d).ok()),
            })),
            Some(Key::UseSourceIp(true)) => Some(HashOn::SourceIp),
            Some(Key::HttpQueryParameterName(q)) => Some(HashOn::Query(q.clone())),
            _ => None,
        };
        let policy = if ch.maglev_table_size > 0 {
            Policy::Maglev(MaglevConfig {
                table_size: ch.maglev_table_size,
            })
        } else {
            let mut cfg = RingHashConfig::default();
            if ch.minimum_ring_size > 0 {
                cfg.minimum_ring_size = ch.minimum_ring_size;
            }
            Policy::RingHash(cfg)
        };
        return (policy, hash_on);
    }
    match v1::load_balancer::Simple::try_from(lb.simple) {
        Ok(v1::load_balancer::Simple::RoundRobin) => (Policy::RoundRobin, None),
        Ok(v1::load_balancer::Simple::Random) => (Policy::Random, None),
        Ok(v1::load_balancer::Simple::PeakEwma) => (Policy::PeakEwma, None),
        _ => (Policy::LeastRequest(LeastRequestConfig::default()), None),
    }
}

/// One port of a host the app may call: its service cluster and, when a VirtualService
/// claims the host, the compiled routes.
#[derive(Debug)]
pub struct HostPort {
    /// Service port.
    pub port: u16,
    /// The service's own cluster (all endpoints).
    pub cluster: Arc<Cluster>,
    /// VirtualService routes for this host and port.
    pub routes: Option<RouteTable>,
    /// What requests get when no VirtualService claims the host.
    pub default_behaviour: crate::route::RouteBehaviour,
}

/// The outcome of routing one request.
#[derive(Debug, Clone, Copy)]
pub struct Routed<'a> {
    /// The host's own service cluster (for telemetry when the rule answers itself).
    pub service: &'a Arc<Cluster>,
    /// Where the request goes; `None` when the rule answers itself (redirect, direct
    /// response).
    pub cluster: Option<&'a Arc<Cluster>>,
    /// What the rule does on the way.
    pub behaviour: &'a crate::route::RouteBehaviour,
    /// The weighted destination chosen, with its header operations.
    pub destination: Option<&'a crate::route::Destination>,
    /// How much of the path a `rewrite.uri` replaces.
    pub prefix_len: Option<usize>,
}

/// Why a request found no destination.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteMiss {
    /// No service has this name.
    UnknownHost,
    /// The service exists, but not on the requested port.
    UnknownPort,
    /// The host has route rules and none matched (404 `NR`).
    NoMatchingRoute,
    /// The chosen route names a subset or host this proxy has no cluster for (503 `NC`).
    NoCluster(Arc<str>),
}

impl HostPort {
    /// Where a request goes (its VirtualService's choice, else the service itself) and what
    /// its rule does on the way.
    pub fn select(
        &self,
        req: crate::route::Head<'_>,
        authority: &str,
    ) -> Result<Routed<'_>, RouteMiss> {
        let Some(table) = &self.routes else {
            return Ok(Routed {
                service: &self.cluster,
                cluster: Some(&self.cluster),
                behaviour: &self.default_behaviour,
                destination: None,
                prefix_len: None,
            });
        };
        let selected = table
            .select(req, authority, self.port)
            .ok_or(RouteMiss::NoMatchingRoute)?;
        let cluster = match selected.destination.map(|d| &d.target) {
            None => None,
            Some(Target::Cluster(c)) => Some(c),
            Some(Target::Missing(name)) => return Err(RouteMiss::NoCluster(name.clone())),
        };
        Ok(Routed {
            service: &self.cluster,
            cluster,
            behaviour: &selected.route.behaviour,
            destination: selected.destination,
            prefix_len: selected.prefix_len,
        })
    }
}

/// A service as the snapshot builder takes it, from the static file or from xDS.
#[derive(Clone, Debug)]
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
}

impl ServiceSpec {
    /// The FQDN.
    pub fn fqdn(&self) -> String {
        self.hostname.clone()
    }
}

/// An endpoint as the snapshot builder takes it.
#[derive(Clone, Debug)]
pub struct EndpointSpec {
    /// The destination sidecar's inbound address.
    pub addr: SocketAddr,
    /// Its workload's labels.
    pub labels: BTreeMap<String, String>,
    /// Its workload's locality.
    pub locality: Locality,
    /// Load-balancing weight (1 unless the registry says otherwise).
    pub weight: u32,
    /// Its PeerAuthentication on this port is DISABLE: reached in plaintext, as Istio's auto
    /// mutual TLS does.
    pub plaintext: bool,
}

/// Everything about the mesh a snapshot is built from: services with their endpoints,
/// VirtualService routes and DestinationRule subsets, by FQDN.
#[derive(Clone, Debug, Default)]
pub struct MeshView {
    /// One entry per service port.
    pub services: Vec<ServiceSpec>,
    /// Route tables by FQDN.
    pub routes: HashMap<String, v1::RouteTable>,
    /// Destination policies (subsets) by FQDN.
    pub policies: HashMap<String, v1::DestinationPolicy>,
    /// This workload's inbound policy (PeerAuthentication, AuthorizationPolicy); `None`
    /// until a control plane sends one.
    pub inbound: Option<v1::InboundPolicy>,
    /// Mesh-wide settings (MeshConfig); `None`: Istio's defaults.
    pub mesh: Option<v1::MeshConfig>,
}

impl MeshView {
    /// The services of a static configuration file.
    pub fn from_static(cfg: &ProxyConfig) -> Self {
        let services = cfg
            .services
            .iter()
            .map(|s| ServiceSpec {
                hostname: format!("{}.{}.{CLUSTER_DOMAIN}", s.name, s.namespace),
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                port: s.port,
                protocol: s.protocol,
                aliases: s.aliases.clone(),
                identities: s
                    .identities
                    .iter()
                    .filter_map(|i| SpiffeId::parse(i).ok())
                    .collect(),
                endpoints: s
                    .endpoints
                    .iter()
                    .map(|a| EndpointSpec {
                        addr: *a,
                        labels: BTreeMap::new(),
                        locality: Locality::default(),
                        weight: 1,
                        plaintext: false,
                    })
                    .collect(),
                listen: s.listen,
                external: None,
            })
            .collect();
        Self {
            services,
            inbound: Some(cfg.inbound.policy()),
            ..Default::default()
        }
    }
}

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
    hosts: HashMap<Box<str>, Vec<Arc<HostPort>>>,
    inbound: HashMap<u16, InboundPort>,
    /// Service clusters in config order (for TCP listeners and the admin dump).
    pub clusters: Vec<Arc<Cluster>>,
    /// Subset clusters, by Envoy name.
    pub subset_clusters: Vec<Arc<Cluster>>,
    /// Inbound mutual TLS modes and authorization.
    pub security: InboundSecurity,
    /// Which modes the served ports have, for decisions made before a request names one.
    pub inbound_modes: ModeSet,
    /// MeshConfig `pathNormalization`, for routing, authorization and forwarding alike.
    pub path_normalization: PathNormalization,
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

/// MeshConfig's path normalisation, from the wire form.
fn path_normalization(mesh: Option<&v1::MeshConfig>) -> PathNormalization {
    use v1::mesh_config::PathNormalization as W;
    match mesh.and_then(|m| W::try_from(m.path_normalization).ok()) {
        Some(W::None) => PathNormalization::None,
        Some(W::MergeSlashes) => PathNormalization::MergeSlashes,
        Some(W::DecodeAndMergeSlashes) => PathNormalization::DecodeAndMergeSlashes,
        Some(W::Base | W::Default) | None => PathNormalization::Base,
    }
}

/// Connections carried over from the previous snapshot, so a push does not reconnect.
#[derive(Default)]
struct Reuse {
    endpoints: HashMap<(SocketAddr, Box<str>, Vec<SpiffeId>), Arc<Endpoint>>,
    /// Pools of services outside the mesh, by FQDN, port, connect timeout and TLS settings.
    external: HashMap<(String, u16, Duration, String), crate::transport::http1::LocalHttp1Client>,
    /// Circuit-breaker counts by cluster name.
    breakers: HashMap<Label, crate::resilience::breaker::Counts>,
    /// Retry budgets by cluster name.
    budgets: HashMap<Label, Arc<RetryBudget>>,
    /// Local rate limits by host FQDN (destination) or route key.
    rate_limits: HashMap<String, Arc<TokenBucket>>,
    /// Outlier state by cluster name and endpoint address.
    health: HashMap<(Label, SocketAddr), Arc<HostHealth>>,
    /// The clusters of the previous snapshot, by name.
    cluster_names: std::collections::HashSet<Label>,
    /// When each endpoint joined its cluster (slow start), by cluster name and address.
    joined: HashMap<(Label, SocketAddr), Option<tokio::time::Instant>>,
}

impl Reuse {
    fn from(prev: Option<&Snapshot>) -> Self {
        let mut r = Self::default();
        let Some(prev) = prev else { return r };
        for c in prev.clusters.iter().chain(&prev.subset_clusters) {
            r.cluster_names.insert(c.name.clone());
            for (e, at) in c.endpoints.iter().zip(&c.joined) {
                r.joined.insert((c.name.clone(), e.addr), *at);
            }
            let ids = c.allowed.to_vec();
            for e in &c.endpoints {
                r.endpoints
                    .entry((e.addr, c.server_name_str.clone(), ids.clone()))
                    .or_insert_with(|| e.clone());
            }
            r.breakers
                .entry(c.name.clone())
                .or_insert_with(|| c.breakers.counts());
            if let Some(b) = &c.retry_budget {
                r.budgets.entry(c.name.clone()).or_insert_with(|| b.clone());
            }
            if let Some(b) = &c.rate_limit {
                r.rate_limits
                    .entry(c.labels.fqdn.to_string())
                    .or_insert_with(|| b.clone());
            }
            if let Some(d) = &c.outlier {
                for (e, h) in c.endpoints.iter().zip(d.hosts()) {
                    r.health
                        .entry((c.name.clone(), e.addr))
                        .or_insert_with(|| h.clone());
                }
            }
            if let Some(x) = &c.external {
                r.external
                    .entry((
                        c.labels.fqdn.to_string(),
                        c.port,
                        c.connect_timeout,
                        x.tls_key.clone(),
                    ))
                    .or_insert_with(|| x.client.clone());
            }
        }
        for table in prev
            .hosts
            .values()
            .flatten()
            .filter_map(|hp| hp.routes.as_ref())
        {
            for (key, bucket) in table.rate_limits() {
                r.rate_limits.insert(key.to_string(), bucket.clone());
            }
        }
        r
    }

    /// The bucket for `key` limited by `limit`: the previous one if it is the same limit.
    fn rate_limit(&self, key: &str, limit: &v1::LocalRateLimit) -> Option<Arc<TokenBucket>> {
        match self.rate_limits.get(key) {
            Some(b) if b.is(limit) => Some(b.clone()),
            _ => TokenBucket::new(limit, tokio::time::Instant::now()).map(Arc::new),
        }
    }
}

impl Snapshot {
    /// Builds a snapshot from a validated configuration (its local settings) and a view of
    /// the mesh (from the same file, or from the control plane). Connections of `prev` to
    /// endpoints that are still there are kept.
    pub fn build(
        cfg: &ProxyConfig,
        view: &MeshView,
        identity: &Arc<Identity>,
        metrics: &Metrics,
        version: u64,
        prev: Option<&Snapshot>,
    ) -> Result<Self, SnapshotError> {
        let local = Arc::new(local_workload(cfg, identity));
        let reuse = Reuse::from(prev);
        let destination_limits: HashMap<String, Arc<TokenBucket>> = view
            .policies
            .iter()
            .filter_map(|(fqdn, p)| {
                let limit = p.local_rate_limit.as_ref()?;
                Some((fqdn.clone(), reuse.rate_limit(fqdn, limit)?))
            })
            .collect();
        let builder = ClusterBuilder {
            cfg,
            identity,
            metrics,
            reuse: &reuse,
            destination_limits: &destination_limits,
            policies: &view.policies,
            local: &local,
        };
        let mut hosts: HashMap<Box<str>, Vec<Arc<HostPort>>> = HashMap::new();
        let mut clusters = Vec::with_capacity(view.services.len());
        let mut by_fqdn: HashMap<String, Vec<(Arc<Cluster>, &ServiceSpec)>> = HashMap::new();
        for svc in &view.services {
            let tp = view
                .policies
                .get(&svc.fqdn())
                .and_then(|p| p.traffic_policy.as_ref());
            let cluster = builder.cluster(svc, "", &svc.endpoints, tp)?;
            by_fqdn
                .entry(svc.fqdn())
                .or_default()
                .push((cluster.clone(), svc));
            clusters.push(cluster);
        }

        // Subset clusters, for every subset a DestinationPolicy defines.
        let mut subsets: HashMap<(String, u16, String), Arc<Cluster>> = HashMap::new();
        let mut subset_clusters = Vec::new();
        for (fqdn, policy) in &view.policies {
            for (cluster, svc) in by_fqdn.get(fqdn).into_iter().flatten() {
                for subset in &policy.subsets {
                    let eps: Vec<EndpointSpec> = svc
                        .endpoints
                        .iter()
                        .filter(|e| {
                            subset
                                .labels
                                .iter()
                                .all(|(k, v)| e.labels.get(k) == Some(v))
                        })
                        .cloned()
                        .collect();
                    // A subset's own policy wins over the service's for the blocks it sets.
                    let tp = merged(
                        subset.traffic_policy.as_ref(),
                        policy.traffic_policy.as_ref(),
                    );
                    let c = builder.cluster(svc, &subset.name, &eps, tp.as_ref())?;
                    subsets.insert((fqdn.clone(), cluster.port, subset.name.clone()), c.clone());
                    subset_clusters.push(c);
                }
            }
        }

        let resolver = Resolver {
            by_fqdn: &by_fqdn,
            subsets: &subsets,
            reuse: &reuse,
        };
        for (fqdn, entries) in &by_fqdn {
            for (cluster, svc) in entries {
                let routes = match view.routes.get(fqdn) {
                    Some(t) => Some(RouteTable::compile(t, cluster.port, &resolver).map_err(
                        |source| SnapshotError::Route {
                            host: fqdn.clone(),
                            source,
                        },
                    )?),
                    None => None,
                };
                let hp = Arc::new(HostPort {
                    port: cluster.port,
                    cluster: cluster.clone(),
                    routes,
                    default_behaviour: crate::route::RouteBehaviour::istio_default(),
                });
                // Cluster services answer to their short forms too; other hosts (ServiceEntry)
                // only to the names they were given.
                let mut names = vec![fqdn.clone()];
                if fqdn.ends_with(CLUSTER_DOMAIN) {
                    names.extend([
                        svc.name.clone(),
                        format!("{}.{}", svc.name, svc.namespace),
                        format!("{}.{}.svc", svc.name, svc.namespace),
                    ]);
                }
                names.extend(svc.aliases.iter().map(|a| a.to_ascii_lowercase()));
                for name in names {
                    let entry = hosts.entry(name.into_boxed_str()).or_default();
                    if !entry.iter().any(|h| h.port == hp.port) {
                        entry.push(hp.clone());
                    }
                }
            }
        }

        let security = InboundSecurity::new(
            view.inbound.as_ref(),
            view.mesh.as_ref(),
            cfg.inbound.mtls,
            identity.id().trust_domain(),
            &metrics.security,
        )?;
        let connect_timeout = cfg.upstream.connect_timeout;
        // This workload's own service: its DestinationRule's connectionPool applies inbound.
        let own_policy = view
            .policies
            .get(&format!(
                "{}.{}.{CLUSTER_DOMAIN}",
                local.app, local.namespace
            ))
            .and_then(|p| p.traffic_policy.as_ref());
        let inbound: HashMap<u16, InboundPort> = cfg
            .inbound
            .ports
            .iter()
            .map(|p| {
                let name: Label = Arc::from(format!("inbound|{}||", p.port));
                let pool = port_block(own_policy, p.port, |t| t.connection_pool.as_ref());
                let counts = prev
                    .and_then(|s| s.inbound.get(&p.port))
                    .map(|ip| ip.breakers.counts())
                    .unwrap_or_default();
                let breakers = Breakers::new(pool, None, &counts);
                let stats = metrics.clusters.stats(&name);
                // The app's pools are kept while the port still leads to the same address.
                let kept = prev
                    .and_then(|s| s.inbound.get(&p.port))
                    .filter(|ip| ip.target == p.target);
                let h2c = matches!(p.protocol, Protocol::Http2 | Protocol::Grpc).then(|| {
                    kept.and_then(|ip| ip.h2c.clone()).unwrap_or_else(|| {
                        Arc::new(H2Pool::new(
                            PoolTarget::Plain { addr: p.target },
                            connect_timeout,
                            None,
                        ))
                    })
                });
                let local_idle = Some(cfg.upstream.idle_timeout);
                let http1 = (p.protocol == Protocol::Http).then(|| {
                    kept.and_then(|ip| ip.http1.clone())
                        .filter(|pool| pool.settings() == (LOCAL_CONNECT_TIMEOUT, local_idle, 0))
                        .unwrap_or_else(|| {
                            Arc::new(H1Pool::new(
                                PoolTarget::Plain { addr: p.target },
                                LOCAL_CONNECT_TIMEOUT,
                                local_idle,
                                None,
                            ))
                        })
                });
                (
                    p.port,
                    InboundPort {
                        http1,
                        target: p.target,
                        authority: http::uri::Authority::try_from(p.target.to_string()).ok(),
                        protocol: p.protocol,
                        h2c,
                        name,
                        breakers,
                        stats,
                        mtls: security.mode(p.target.port()),
                    },
                )
            })
            .collect();
        let inbound_modes = inbound.values().fold(ModeSet::default(), |mut m, p| {
            match p.mtls {
                MtlsMode::Strict => m.strict = true,
                MtlsMode::Permissive => m.permissive = true,
                MtlsMode::Disable => m.disable = true,
            }
            m
        });
        Ok(Self {
            version,
            local,
            hosts,
            inbound,
            clusters,
            subset_clusters,
            security,
            inbound_modes,
            path_normalization: path_normalization(view.mesh.as_ref()),
        })
    }

    /// The service cluster for `fqdn:port` in this snapshot (TCP listeners look theirs up
    /// per connection, so a push reaches them too).
    pub fn cluster(&self, fqdn: &str, port: u16) -> Option<&Arc<Cluster>> {
        self.clusters
            .iter()
            .find(|c| c.port == port && &*c.labels.fqdn == fqdn)
    }

    /// Finds the cluster for a request's host (`reviews`, `reviews:9080`, an FQDN, an alias).
    /// Without a port, a host with a single service port matches it; otherwise port 80.
    pub fn route(&self, authority: &str) -> Result<&Arc<HostPort>, RouteMiss> {
        let (host, port) = split_host_port(authority);
        let host = host.strip_suffix('.').unwrap_or(host);
        let found = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.hosts.get(host.to_ascii_lowercase().as_str())
        } else {
            self.hosts.get(host)
        };
        let ports = found.ok_or(RouteMiss::UnknownHost)?;
        match port {
            Some(p) => ports.iter().find(|h| h.port == p),
            None if ports.len() == 1 => ports.first(),
            None => ports.iter().find(|h| h.port == 80),
        }
        .ok_or(RouteMiss::UnknownPort)
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

    /// How many host names route somewhere (for the admin dump and benchmarks).
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }
}

fn local_workload(cfg: &ProxyConfig, identity: &Identity) -> LocalWorkload {
    let id = identity.id().clone();
    let namespace: Label = Arc::from(
        id.namespace_and_account()
            .map(|(ns, _)| ns)
            .unwrap_or("default"),
    );
    let workload: Label = Arc::from(cfg.identity.workload.as_str());
    let app: Label = Arc::from(
        cfg.identity
            .app
            .as_deref()
            .unwrap_or(&cfg.identity.workload),
    );
    let version_label: Label = Arc::from(cfg.identity.version.as_deref().unwrap_or("latest"));
    let peer_header =
        HeaderValue::from_str(&format!("{workload};{namespace};{app};{version_label}"))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown;unknown;unknown;unknown"));
    LocalWorkload {
        services: DestinationServices::new(app.clone(), namespace.clone()),
        principal: Arc::from(id.principal()),
        id,
        workload,
        namespace,
        app,
        version: version_label,
        peer_header,
        locality: cfg
            .identity
            .locality
            .as_deref()
            .map(Locality::parse)
            .unwrap_or_default(),
        labels: cfg.identity.labels.clone(),
    }
}

/// Builds clusters, reusing the previous snapshot's connections where the endpoint and its
/// expected identities are unchanged.
struct ClusterBuilder<'a> {
    cfg: &'a ProxyConfig,
    identity: &'a Arc<Identity>,
    metrics: &'a Metrics,
    reuse: &'a Reuse,
    /// Destination rate limits by host FQDN, shared by the host's clusters.
    destination_limits: &'a HashMap<String, Arc<TokenBucket>>,
    /// Destination policies by host FQDN.
    policies: &'a HashMap<String, v1::DestinationPolicy>,
    /// This workload (locality balancing is relative to it).
    local: &'a LocalWorkload,
}

impl ClusterBuilder<'_> {
    fn cluster(
        &self,
        svc: &ServiceSpec,
        subset: &str,
        endpoints: &[EndpointSpec],
        tp: Option<&v1::TrafficPolicy>,
    ) -> Result<Arc<Cluster>, SnapshotError> {
        let lb = port_block(tp, svc.port, |p| p.load_balancer.as_ref());
        let pool = port_block(tp, svc.port, |p| p.connection_pool.as_ref());
        let cfg = self.cfg;
        // `tcp.connectTimeout` (Istio's default: the mesh's, here the proxy's setting) and
        // `http.maxRequestsPerConnection` shape the endpoints' connections.
        let connect_timeout = pool
            .and_then(|p| p.connect_timeout)
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(cfg.upstream.connect_timeout);
        let max_requests = pool.map_or(0, |p| p.max_requests_per_connection);
        let idle_timeout = upstream_idle_timeout(pool);
        // HTTP/1.1 connections without an idle timeout of their own keep the proxy's.
        let h1_idle = idle_timeout.or(Some(cfg.upstream.idle_timeout));
        let allowed: Arc<[SpiffeId]> = svc.identities.clone().into();
        let fqdn = svc.fqdn();
        let server_name = ServerName::try_from(fqdn.clone())
            .map_err(|e| IdentityError::Invalid(format!("service name {fqdn}: {e}")))?;
        let server_name_str: Box<str> = fqdn.as_str().into();
        let tls_h2 = self.identity.client_config(allowed.clone(), ALPN_MESH_H2)?;
        let tls_http1 = self
            .identity
            .client_config(allowed.clone(), ALPN_MESH_HTTP1)?;
        let ids = allowed.to_vec();
        let specs = endpoints;
        let endpoints = endpoints
            .iter()
            .map(|ep| {
                let key = (ep.addr, server_name_str.clone(), ids.clone());
                if let Some(e) = self.reuse.endpoints.get(&key)
                    && e.labels == ep.labels
                    && e.plaintext == ep.plaintext
                    && e.h2.settings() == (connect_timeout, max_requests, idle_timeout)
                    && e.h1.settings() == (connect_timeout, h1_idle, max_requests)
                {
                    return e.clone();
                }
                let target = |tls: &Arc<rustls::ClientConfig>| match ep.plaintext {
                    true => PoolTarget::Plain { addr: ep.addr },
                    false => PoolTarget::Mesh {
                        addr: ep.addr,
                        tls: tls.clone(),
                        server_name: server_name.clone(),
                    },
                };
                Arc::new(Endpoint {
                    addr: ep.addr,
                    addr_label: Arc::from(ep.addr.to_string()),
                    plaintext: ep.plaintext,
                    h2: H2Pool::new(
                        target(&tls_h2),
                        connect_timeout,
                        Some(self.metrics.upstream_connects.clone()),
                    )
                    .with_max_requests(max_requests)
                    .with_idle_timeout(idle_timeout),
                    h1: H1Pool::new(
                        target(&tls_http1),
                        connect_timeout,
                        h1_idle,
                        Some(self.metrics.upstream_connects.clone()),
                    )
                    .with_max_requests(max_requests),
                    peer: arc_swap::ArcSwapOption::empty(),
                    labels: ep.labels.clone(),
                    active: std::sync::atomic::AtomicU64::new(0),
                    latency: Default::default(),
                })
            })
            .collect::<Vec<Arc<Endpoint>>>();
        let (policy, hash_on) = balance_policy(lb);
        let name: Label = Arc::from(format!("outbound|{}|{subset}|{fqdn}", svc.port));
        let outlier = port_block(tp, svc.port, |p| p.outlier_detection.as_ref()).map(|o| {
            let hosts = endpoints
                .iter()
                .map(|e| {
                    self.reuse
                        .health
                        .get(&(name.clone(), e.addr))
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
            Detector::new(OutlierConfig::from_proto(o), hosts)
        });
        let members = match &outlier {
            Some(d) => d.balanced_hosts(),
            None => (0..endpoints.len()).collect(),
        };
        // Locality balancing is on by default in the mesh; `enabled: false` turns it off.
        let locality = lb.and_then(|l| l.locality_lb_setting.as_ref());
        let placements = match locality {
            Some(l) if l.disabled => Placements::flat(specs),
            _ => Placements::located(
                &locality_setting(locality),
                self.local,
                specs,
                outlier.is_some(),
            ),
        };
        // Slow start: an endpoint new to an existing cluster warms up from now; those of a
        // cluster seen for the first time start warm, as none is colder than the others.
        let slow_start = slow_start_of(lb, policy);
        let now = tokio::time::Instant::now();
        let existed = self.reuse.cluster_names.contains(&name);
        let joined: Vec<Option<tokio::time::Instant>> = endpoints
            .iter()
            .map(|e| match self.reuse.joined.get(&(name.clone(), e.addr)) {
                Some(at) => *at,
                None => existed.then_some(now),
            })
            .collect();
        let warming = warming_shares(slow_start.as_ref(), &joined, now);
        let hosts = HostSet::build(
            policy,
            &endpoints,
            &placements,
            &members,
            warming.as_deref(),
        )
        .map_err(|source| SnapshotError::Balance {
            host: fqdn.clone(),
            source,
        })?;
        let authority = http::uri::Authority::try_from(format!("{fqdn}:{}", svc.port))
            .map_err(|e| IdentityError::Invalid(format!("service {fqdn}: {e}")))?;
        let principal: Label = allowed
            .first()
            .map(|i| Arc::from(i.principal()))
            .unwrap_or_else(unknown);
        // Istio's `retryBudget` is not a port-level block: the top level's (or the subset's).
        let concurrency_budget = tp.and_then(|t| t.retry_budget.as_ref());
        let breakers = Breakers::new(
            pool,
            concurrency_budget,
            &self.reuse.breakers.get(&name).cloned().unwrap_or_default(),
        );
        let stats = self.metrics.clusters.stats(&name);
        if let Some(d) = &outlier {
            stats
                .ejections_active
                .set(i64::try_from(d.ejected_count()).unwrap_or(i64::MAX));
        }
        let rate = self
            .policies
            .get(&fqdn)
            .and_then(|p| p.rate_retry_budget.as_ref());
        let retry_budget = BudgetParams::for_destination(rate, concurrency_budget.is_some())
            .map(|params| match self.reuse.budgets.get(&name) {
                Some(b) if b.params() == params => b.clone(),
                _ => Arc::new(RetryBudget::from_params(params).unwrap_or_else(|e| {
                    tracing::warn!(cluster = %name, error = %e, "retry budget refused, default used");
                    RetryBudget::default()
                })),
            });
        // The TLS a DestinationRule asks the sidecar to originate to a service outside the
        // mesh (plaintext without one).
        let external_tls = match &svc.external {
            None => None,
            Some(_) => {
                let tls = port_block(tp, svc.port, |p| p.tls.as_ref());
                let alpn: &[u8] = if matches!(svc.protocol, Protocol::Http2 | Protocol::Grpc) {
                    b"h2"
                } else {
                    b"http/1.1"
                };
                let egress = match tls {
                    Some(t) => EgressTls::from_policy(t, self.identity, &allowed, alpn).map_err(
                        |source| SnapshotError::EgressTls {
                            host: fqdn.clone(),
                            source,
                        },
                    )?,
                    None => None,
                };
                Some((egress, tls.map(|t| format!("{t:?}")).unwrap_or_default()))
            }
        };
        let cluster = Arc::new(Cluster {
            rate_limit: self.destination_limits.get(&fqdn).cloned(),
            retry_budget,
            breakers,
            outlier,
            stats,
            policy,
            placements,
            slow_start,
            joined,
            connect_timeout,
            hosts: arc_swap::ArcSwap::from_pointee(hosts),
            port: svc.port,
            port_header: http::HeaderValue::from(svc.port),
            protocol: svc.protocol,
            name,
            subset: Arc::from(subset),
            labels: ServiceLabels {
                fqdn: Arc::from(fqdn.as_str()),
                name: Arc::from(svc.name.as_str()),
                namespace: Arc::from(svc.namespace.as_str()),
                principal,
            },
            authority,
            endpoints,
            hash_on,
            upstream: cfg.upstream.protocol,
            tls_http1,
            server_name,
            listen: svc.listen,
            allowed,
            server_name_str,
            external: external_tls.map(|(tls, tls_key)| {
                let targets = svc.external.as_deref().unwrap_or_default();
                let client = self
                    .reuse
                    .external
                    .get(&(fqdn.clone(), svc.port, connect_timeout, tls_key.clone()))
                    .cloned()
                    .unwrap_or_else(|| {
                        crate::transport::http1::egress_client(
                            cfg.upstream.idle_timeout,
                            connect_timeout,
                            matches!(svc.protocol, Protocol::Http2 | Protocol::Grpc),
                            tls,
                        )
                    });
                Arc::new(External {
                    tls_key,
                    targets: targets
                        .iter()
                        .map(|a| ExternalTarget {
                            label: Arc::from(a.as_str()),
                            authority: a.clone(),
                        })
                        .collect(),
                    rr: AtomicUsize::new(fastrand::usize(..)),
                    client,
                })
            }),
        });
        Cluster::spawn_outlier_timer(&cluster);
        Cluster::spawn_slow_start_timer(&cluster);
        Ok(cluster)
    }
}

/// Resolves route destinations against the clusters being built.
struct Resolver<'a> {
    by_fqdn: &'a HashMap<String, Vec<(Arc<Cluster>, &'a ServiceSpec)>>,
    subsets: &'a HashMap<(String, u16, String), Arc<Cluster>>,
    reuse: &'a Reuse,
}

impl ResolveDestination for Resolver<'_> {
    fn rate_limit(&self, key: &str, limit: &v1::LocalRateLimit) -> Option<Arc<TokenBucket>> {
        self.reuse.rate_limit(key, limit)
    }

    fn resolve(&self, dest: &v1::WeightedDestination, request_port: u16) -> Target {
        let missing = || {
            Target::Missing(Arc::from(format!(
                "outbound|{}|{}|{}",
                dest.port, dest.subset, dest.host
            )))
        };
        let Some(entries) = self.by_fqdn.get(&dest.host) else {
            return missing();
        };
        let port = match u16::try_from(dest.port) {
            Ok(p) if p != 0 => p,
            _ if entries.len() == 1 => entries[0].0.port,
            _ => request_port,
        };
        let Some((cluster, _)) = entries.iter().find(|(c, _)| c.port == port) else {
            return missing();
        };
        if dest.subset.is_empty() {
            return Target::Cluster(cluster.clone());
        }
        match self
            .subsets
            .get(&(dest.host.clone(), port, dest.subset.clone()))
        {
            Some(c) => Target::Cluster(c.clone()),
            None => missing(),
        }
    }
}

/// Splits `host[:port]`, tolerating IPv6 literals in brackets.
pub fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[')
        && let Some(end) = rest.find(']')
    {
        let port = rest[end + 1..]
            .strip_prefix(':')
            .and_then(|p| p.parse().ok());
        return (&rest[..end], port);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

/// Istio's `connectionPool.http.idleTimeout` default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Default connect timeout for the local app (the app is on loopback: fail fast).
pub const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_host_port_handles_names_ports_and_ipv6() {
        assert_eq!(split_host_port("reviews"), ("reviews", None));
        assert_eq!(split_host_port("reviews:9080"), ("reviews", Some(9080)));
        assert_eq!(split_host_port("[::1]:80"), ("::1", Some(80)));
        assert_eq!(
            split_host_port("reviews:notaport"),
            ("reviews:notaport", None)
        );
    }

    #[test]
    fn peer_metadata_parses_four_fields_only() {
        let v = HeaderValue::from_static("reviews-v1;default;reviews;v1");
        let p = PeerWorkload::parse(&v).unwrap();
        assert_eq!(&*p.workload, "reviews-v1");
        assert_eq!(&*p.version, "v1");
        assert!(PeerWorkload::parse(&HeaderValue::from_static("a;b;c")).is_none());
        assert!(PeerWorkload::parse(&HeaderValue::from_static("a;b;c;d;e")).is_none());
    }

    #[test]
    fn an_issued_cookie_hashes_like_the_cookie_the_client_sends_back() {
        let on = |ttl: Option<Duration>| {
            HashOn::Cookie(CookieHash {
                name: "lb".into(),
                path: "/".into(),
                ttl,
            })
        };
        assert!(on(None).issue_cookie().is_none(), "no TTL: never issued");
        let (hash, set) = on(Some(Duration::from_secs(3600))).issue_cookie().unwrap();
        let set = set.to_str().unwrap();
        assert!(set.contains("; Max-Age=3600; Path=/; HttpOnly"), "{set}");
        let pair = set.split(';').next().unwrap();
        let back = http::Request::get("/")
            .header("cookie", format!("other=1; {pair}"))
            .body(())
            .unwrap();
        let ip: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(on(None).hash(&back, ip), Some(hash));
        let (_, session) = on(Some(Duration::ZERO)).issue_cookie().unwrap();
        assert!(
            !session.to_str().unwrap().contains("Max-Age"),
            "a session cookie"
        );
    }

    #[test]
    fn hash_inputs_come_from_the_named_header_cookie_query_or_source() {
        let req = http::Request::get("/p?a=1&user=alice&b")
            .header("x-user", "bob")
            .header("cookie", "theme=dark; session=s-42")
            .body(())
            .unwrap();
        let ip: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        let h = crate::balance::hash_key;
        let on = |k: HashOn| k.hash(&req, ip);
        assert_eq!(
            on(HashOn::Header(http::HeaderName::from_static("x-user"))),
            Some(h(b"bob"))
        );
        let cookie = |name: &str| {
            HashOn::Cookie(CookieHash {
                name: name.into(),
                path: String::new(),
                ttl: None,
            })
        };
        assert_eq!(on(cookie("session")), Some(h(b"s-42")));
        assert_eq!(on(HashOn::Query("user".into())), Some(h(b"alice")));
        assert_eq!(on(HashOn::SourceIp), Some(h(b"10.1.2.3")));
        assert_eq!(on(cookie("missing")), None);
        assert_eq!(on(HashOn::Query("missing".into())), None);
    }

    #[test]
    fn a_request_goes_to_a_priority_level_in_proportion_to_its_load() {
        let set = HostSet {
            allowed: vec![0, 1],
            levels: vec![
                Level {
                    members: vec![0],
                    balancer: None,
                },
                Level {
                    members: vec![1],
                    balancer: None,
                },
            ],
            cumulative: vec![70, 100],
            health: vec![(1, 1), (1, 1)],
        };
        let first = |h: u64| set.level(Some(h)).map(|l| l.members[0]);
        assert_eq!(first(69), Some(0));
        assert_eq!(first(70), Some(1));
        assert_eq!(first(199), Some(1), "hash modulo 100");
        let to_first = (0..10_000)
            .filter(|_| set.level(None).is_some_and(|l| l.members[0] == 0))
            .count();
        assert!((6_500..7_500).contains(&to_first), "{to_first}");
    }

    #[test]
    fn a_retry_leaving_tried_priorities_goes_to_the_others_and_to_all_when_none_is_left() {
        let level = |m| Level {
            members: vec![m],
            balancer: None,
        };
        let set = HostSet {
            allowed: vec![0, 1, 2],
            levels: vec![level(0), level(1), level(2)],
            cumulative: vec![100, 100, 100],
            health: vec![(1, 1), (1, 1), (1, 1)],
        };
        let first =
            |tried: &[u32], h: u64| set.level_excluding(Some(h), tried).map(|l| l.members[0]);
        for h in [0, 42, 99] {
            assert_eq!(first(&[], h), Some(0), "all traffic to the first priority");
            assert_eq!(first(&[0], h), Some(1), "the next priority takes it all");
            assert_eq!(first(&[0, 1], h), Some(2));
            assert_eq!(
                first(&[0, 1, 2], h),
                Some(0),
                "every level tried: none excluded"
            );
        }
    }

    #[test]
    fn the_http_idle_timeout_falls_back_to_the_tcp_one_then_to_an_hour() {
        let secs = |s| {
            Some(prost_types::Duration {
                seconds: s,
                nanos: 0,
            })
        };
        let pool = |http, tcp| v1::ConnectionPool {
            idle_timeout: http,
            tcp_idle_timeout: tcp,
            ..Default::default()
        };
        let idle = |p: v1::ConnectionPool| upstream_idle_timeout(Some(&p));
        assert_eq!(idle(pool(secs(5), secs(9))), Some(Duration::from_secs(5)));
        assert_eq!(idle(pool(None, secs(9))), Some(Duration::from_secs(9)));
        assert_eq!(idle(pool(secs(0), secs(9))), None, "0s disables");
        assert_eq!(idle(pool(None, None)), Some(DEFAULT_IDLE_TIMEOUT));
        assert_eq!(upstream_idle_timeout(None), Some(DEFAULT_IDLE_TIMEOUT));
    }

    #[test]
    fn a_port_level_or_subset_load_balancer_wins_and_none_means_least_request() {
        use crate::balance::Policy;
        let lb = |simple: v1::load_balancer::Simple| v1::LoadBalancer {
            simple: simple as i32,
            ..Default::default()
        };
        let tp = v1::TrafficPolicy {
            load_balancer: Some(lb(v1::load_balancer::Simple::Random)),
            port_level: [(
                9080,
                v1::TrafficPolicy {
                    load_balancer: Some(lb(v1::load_balancer::Simple::RoundRobin)),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        };
        let policy =
            |port| balance_policy(port_block(Some(&tp), port, |p| p.load_balancer.as_ref())).0;
        assert_eq!(policy(8080), Policy::Random);
        assert_eq!(policy(9080), Policy::RoundRobin);
        assert!(matches!(balance_policy(None).0, Policy::LeastRequest(_)));
        let maglev = v1::LoadBalancer {
            simple: 0,
            consistent_hash: Some(v1::load_balancer::ConsistentHash {
                key: Some(v1::load_balancer::consistent_hash::Key::UseSourceIp(true)),
                minimum_ring_size: 0,
                maglev_table_size: 65537,
            }),
            ..Default::default()
        };
        let (p, on) = balance_policy(Some(&maglev));
        assert!(matches!(p, Policy::Maglev(_)));
        assert!(matches!(on, Some(HashOn::SourceIp)));
    }
}
