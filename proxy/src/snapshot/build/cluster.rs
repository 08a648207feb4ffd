//! What a cluster (a service port, or a subset of it) is built from, checked when the
//! snapshot is built; the cluster itself, built from it with the previous snapshot's
//! connections and state; and route destinations resolved against the snapshot's clusters.

use meshlite_xds_proto::v1;
use rustls_pki_types::ServerName;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use super::reuse::Reuse;
use super::wire::positive;
use super::wire::resilience::{budget_spec, pool_limits};
use super::wire::routes::ResolveDestination;
use super::wire::{
    balance_policy, locality_setting, port_block, slow_start_of, upstream_idle_timeout,
};
use crate::balance::host_set::{HostSet, PlacedEndpoint, Placements, warming_shares};
use crate::balance::locality::Locality;
use crate::config::UpstreamConfig;
use crate::identity::spiffe::SpiffeId;
use crate::identity::tls::{ALPN_MESH_H2, ALPN_MESH_HTTP1, Identity, IdentityError};
use crate::protocol::Protocol;
use crate::resilience::breaker::Breakers;
use crate::resilience::outlier::{Detector, OutlierConfig};
use crate::resilience::rate_limit::TokenBucket;
use crate::resilience::retry::{BudgetParams, RetryBudget};
use crate::snapshot::Target;
use crate::snapshot::{Cluster, Endpoint, External, ExternalTarget, LazyCluster, SnapshotError};
use crate::source::{EndpointSpec, ServiceSpec};
use crate::telemetry::cluster_stats::ClusterStatsRegistry;
use crate::telemetry::labels::ServiceLabels;
use crate::telemetry::metrics::Label;
use crate::telemetry::peer::{LocalWorkload, unknown};
use crate::telemetry::prom::Counter;
use crate::transport::connect::{PoolTarget, VerifiedPeer};
use crate::transport::egress::EgressTls;
use crate::transport::h1_pool::H1Pool;
use crate::transport::h2::H2Pool;

/// What every cluster of a snapshot is made with: this proxy's upstream settings, identity,
/// statistics and place. One per snapshot, carried to the next while it is unchanged, so a
/// recipe that did not change is recognised by pointer.
#[derive(Debug)]
pub(crate) struct ClusterContext {
    /// How HTTP travels to other sidecars, and the connection timeouts.
    pub(crate) upstream: UpstreamConfig,
    /// This workload's identity (its client TLS configurations are made from it).
    pub(crate) identity: Arc<Identity>,
    /// Where each cluster's Envoy statistics are registered.
    pub(crate) stats: Arc<ClusterStatsRegistry>,
    /// Counts every upstream connection opened.
    pub(crate) connects: Counter,
    /// This workload's locality (locality balancing is relative to it).
    pub(crate) locality: Locality,
    /// This workload's labels (`failoverPriority` compares them).
    pub(crate) labels: BTreeMap<String, String>,
}

impl ClusterContext {
    /// Whether `self` makes the same clusters as a context of these parts would.
    pub(super) fn same(
        &self,
        upstream: &UpstreamConfig,
        identity: &Arc<Identity>,
        local: &LocalWorkload,
    ) -> bool {
        self.upstream == *upstream
            && Arc::ptr_eq(&self.identity, identity)
            && self.locality == local.locality
            && self.labels == local.labels
    }
}

/// Everything one cluster (a service port, or a subset of it) is built from, checked when
/// the snapshot is built, so that building the cluster on its first request cannot fail.
#[derive(Debug)]
pub(crate) struct Recipe {
    /// What every cluster of the snapshot is built with.
    pub(crate) ctx: Arc<ClusterContext>,
    /// The service port (shared by its subsets' recipes).
    pub(crate) svc: Arc<ServiceSpec>,
    /// The subset's labels, selecting among the service's endpoints; `None`: all of them.
    pub(crate) subset: Option<BTreeMap<String, String>>,
    /// The DestinationRule's traffic policy (a subset's merged over the service's).
    /// Boxed: most services have none, and an unboxed one is 600 bytes in every recipe.
    pub(crate) tp: Option<Box<v1::TrafficPolicy>>,
    /// The host's DestinationRule this was made from (a push handing the same one, with the
    /// same service, makes the same recipe: see [`Recipe::made_of`]).
    pub(crate) policy: Option<Arc<v1::DestinationPolicy>>,
    /// The host's local rate limit, shared by its clusters.
    pub(crate) rate_limit: Option<Arc<TokenBucket>>,
    /// The SNI, the service's FQDN (checked when the snapshot is built).
    pub(crate) server_name: ServerName<'static>,
    /// `fqdn:port`, the `:authority` between sidecars (checked when the snapshot is built).
    pub(crate) authority: http::uri::Authority,
    /// For a service outside the mesh: the TLS its DestinationRule originates (made here, as
    /// it can be refused) and the settings it was made from.
    pub(crate) external_tls: Option<(Option<EgressTls>, String)>,
}

impl Recipe {
    /// Checks what can be refused in a cluster's settings and keeps what building it takes.
    pub(crate) fn new(
        ctx: &Arc<ClusterContext>,
        svc: Arc<ServiceSpec>,
        subset: Option<BTreeMap<String, String>>,
        tp: Option<v1::TrafficPolicy>,
        policy: Option<&Arc<v1::DestinationPolicy>>,
        rate_limit: Option<Arc<TokenBucket>>,
    ) -> Result<Self, SnapshotError> {
        let fqdn = &svc.hostname;
        let server_name = ServerName::try_from(fqdn.clone())
            .map_err(|e| IdentityError::Invalid(format!("service name {fqdn}: {e}")))?;
        let authority = http::uri::Authority::try_from(format!("{fqdn}:{}", svc.port))
            .map_err(|e| IdentityError::Invalid(format!("service {fqdn}: {e}")))?;
        let lb = port_block(tp.as_ref(), svc.port, |p| p.load_balancer.as_ref());
        let (policy_kind, _) = balance_policy(lb);
        crate::balance::Balancer::check(policy_kind).map_err(|source| SnapshotError::Balance {
            host: fqdn.clone(),
            source,
        })?;
        // The TLS a DestinationRule asks the sidecar to originate to a service outside the
        // mesh (plaintext without one).
        let external_tls = match &svc.external {
            None => None,
            Some(_) => {
                let tls = port_block(tp.as_ref(), svc.port, |p| p.tls.as_ref());
                let alpn: &[u8] = if matches!(svc.protocol, Protocol::Http2 | Protocol::Grpc) {
                    b"h2"
                } else {
                    b"http/1.1"
                };
                let allowed: Arc<[SpiffeId]> = svc.identities.clone().into();
                let egress = match tls {
                    Some(t) => EgressTls::from_policy(t, &ctx.identity, &allowed, alpn).map_err(
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
        Ok(Self {
            ctx: ctx.clone(),
            policy: policy.cloned(),
            svc,
            subset,
            tp: tp.map(Box::new),
            rate_limit,
            server_name,
            authority,
            external_tls,
        })
    }

    /// The endpoints of the cluster: the service's, or those of them the subset selects.
    pub(crate) fn endpoints(&self) -> impl Iterator<Item = &EndpointSpec> {
        self.svc.endpoints.iter().filter(|e| {
            self.subset
                .as_ref()
                .is_none_or(|selector| e.labels.selected_by(selector))
        })
    }

    /// Whether this recipe was made from these very inputs (by identity: the push handed the
    /// same shared service and policy), so a new one would be the same; cheaper than making
    /// one to compare with [`Recipe::same`].
    pub(crate) fn made_of(
        &self,
        ctx: &Arc<ClusterContext>,
        svc: &Arc<ServiceSpec>,
        policy: Option<&Arc<v1::DestinationPolicy>>,
        rate_limit: Option<&Arc<TokenBucket>>,
    ) -> bool {
        Arc::ptr_eq(&self.ctx, ctx)
            && Arc::ptr_eq(&self.svc, svc)
            && same_shared(self.policy.as_ref(), policy)
            && same_shared(self.rate_limit.as_ref(), rate_limit)
    }

    /// `retrybudget.meshlite.io/rate` of the host, from its DestinationRule.
    fn rate_budget(&self) -> Option<v1::RateRetryBudget> {
        self.policy.as_ref().and_then(|p| p.rate_retry_budget)
    }

    /// Whether `other` builds the same cluster (a push that left it alone).
    pub(crate) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ctx, &other.ctx)
            && (Arc::ptr_eq(&self.svc, &other.svc) || *self.svc == *other.svc)
            && self.subset == other.subset
            && self.tp == other.tp
            && self.rate_budget() == other.rate_budget()
            && same_shared(self.rate_limit.as_ref(), other.rate_limit.as_ref())
            && self.external_tls.as_ref().map(|t| &t.1) == other.external_tls.as_ref().map(|t| &t.1)
    }

    /// The cluster's metric labels, made once when the snapshot is built (they name it before
    /// it is first called) and shared with the cluster built from it.
    pub(crate) fn labels(&self) -> ServiceLabels {
        let svc = &self.svc;
        let principal: Label = svc
            .identities
            .first()
            .map(|i| Arc::from(i.principal()))
            .unwrap_or_else(unknown);
        ServiceLabels::new(
            Arc::from(svc.hostname.as_str()),
            Arc::from(svc.name.as_str()),
            Arc::from(svc.namespace.as_str()),
            principal,
        )
    }

    /// Builds the cluster `name`: its endpoints with their pools, balancer, breakers,
    /// outlier state and statistics, keeping what `reuse` holds of the previous snapshot's.
    pub(crate) fn build(
        &self,
        name: &Label,
        subset: &Label,
        labels: &ServiceLabels,
        reuse: &Reuse,
    ) -> Arc<Cluster> {
        let svc = &*self.svc;
        let tp = self.tp.as_deref();
        let ctx = &*self.ctx;
        let lb = port_block(tp, svc.port, |p| p.load_balancer.as_ref());
        let pool = port_block(tp, svc.port, |p| p.connection_pool.as_ref());
        // `tcp.connectTimeout` (Istio's default: the mesh's, here the proxy's setting) and
        // `http.maxRequestsPerConnection` shape the endpoints' connections.
        let connect_timeout =
            positive(pool.and_then(|p| p.connect_timeout)).unwrap_or(ctx.upstream.connect_timeout);
        let max_requests = pool.map_or(0, |p| p.max_requests_per_connection);
        let idle_timeout = upstream_idle_timeout(pool);
        // HTTP/1.1 connections without an idle timeout of their own keep the proxy's.
        let h1_idle = idle_timeout.or(Some(ctx.upstream.idle_timeout));
        let allowed: Arc<[SpiffeId]> = svc.identities.clone().into();
        let fqdn = &svc.hostname;
        let server_name = self.server_name.clone();
        let server_name_str: Box<str> = fqdn.as_str().into();
        let tls_h2 = ctx.identity.client_config(allowed.clone(), ALPN_MESH_H2);
        let tls_http1 = ctx.identity.client_config(allowed.clone(), ALPN_MESH_HTTP1);
        let ids = allowed.to_vec();
        let specs: Vec<&EndpointSpec> = self.endpoints().collect();
        let endpoints = specs
            .iter()
            .map(|ep| {
                let key = (ep.addr, server_name_str.clone(), ids.clone());
                if let Some(e) = reuse.endpoints.get(&key)
                    && e.labels == ep.labels
                    && e.plaintext == ep.plaintext
                    && e.h2.settings() == (connect_timeout, max_requests, idle_timeout)
                    && e.h1.settings() == (connect_timeout, h1_idle, max_requests)
                {
                    return e.clone();
                }
                let verified = Arc::new(VerifiedPeer::default());
                let target = |tls: &Arc<rustls::ClientConfig>| match ep.plaintext {
                    true => PoolTarget::Plain { addr: ep.addr },
                    false => PoolTarget::Mesh {
                        addr: ep.addr,
                        tls: tls.clone(),
                        server_name: server_name.clone(),
                        verified: verified.clone(),
                    },
                };
                Arc::new(Endpoint {
                    addr: ep.addr,
                    addr_label: Arc::from(ep.addr.to_string()),
                    plaintext: ep.plaintext,
                    h2: H2Pool::new(target(&tls_h2), connect_timeout, Some(ctx.connects.clone()))
                        .with_max_requests(max_requests)
                        .with_idle_timeout(idle_timeout),
                    h1: H1Pool::new(
                        target(&tls_http1),
                        connect_timeout,
                        h1_idle,
                        Some(ctx.connects.clone()),
                    )
                    .with_max_requests(max_requests),
                    // Described by the control plane, else learnt from its first answer.
                    peer: arc_swap::ArcSwapOption::new(ep.workload.clone()),
                    labels: ep.labels.clone(),
                    active: Arc::default(),
                    latency: Default::default(),
                    verified: verified.clone(),
                })
            })
            .collect::<Vec<Arc<Endpoint>>>();
        let (policy, hash_on) = balance_policy(lb);
        let outlier = port_block(tp, svc.port, |p| p.outlier_detection.as_ref()).map(|o| {
            let hosts = endpoints
                .iter()
                .map(|e| {
                    reuse
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
        let placed: Vec<PlacedEndpoint<'_>> = specs
            .iter()
            .map(|e| PlacedEndpoint {
                locality: &e.locality,
                labels: &e.labels,
                weight: e.weight,
            })
            .collect();
        let placements = match locality {
            Some(l) if l.disabled => Placements::flat(&placed),
            _ => Placements::located(
                &locality_setting(locality),
                (&ctx.locality, &ctx.labels),
                &placed,
                outlier.is_some(),
            ),
        };
        // Slow start: an endpoint new to an existing cluster warms up from now; those of a
        // cluster seen for the first time start warm, as none is colder than the others.
        let slow_start = slow_start_of(lb, policy);
        let now = tokio::time::Instant::now();
        let existed = reuse.cluster_names.contains(name);
        let joined: Vec<Option<tokio::time::Instant>> = endpoints
            .iter()
            .map(|e| match reuse.joined.get(&(name.clone(), e.addr)) {
                Some(at) => *at,
                None => existed.then_some(now),
            })
            .collect();
        let warming = warming_shares(slow_start.as_ref(), &joined, now);
        let keys: Vec<&str> = endpoints.iter().map(|e| &*e.addr_label).collect();
        let hosts = HostSet::build(policy, &keys, &placements, &members, warming.as_deref())
            .unwrap_or_else(|e| {
                // The policy was checked when the snapshot was built; this is a bug.
                tracing::error!(cluster = %name, "balancer refused: {e}; no endpoint is used");
                HostSet::empty()
            });
        // Istio's `retryBudget` is not a port-level block: the top level's (or the subset's).
        let concurrency_budget = tp.and_then(|t| t.retry_budget.as_ref());
        let breakers = Breakers::new(
            &pool_limits(pool),
            concurrency_budget.map(budget_spec).as_ref(),
            &reuse.breakers.get(name).cloned().unwrap_or_default(),
        );
        let stats = ctx.stats.stats(name);
        stats.watch(&breakers);
        if let Some(d) = &outlier {
            stats
                .ejections_active
                .set(i64::try_from(d.ejected_count()).unwrap_or(i64::MAX));
        }
        let retry_budget = BudgetParams::for_destination(
            self.rate_budget().as_ref(),
            concurrency_budget.is_some(),
        )
        .map(|params| match reuse.budgets.get(name) {
            Some(b) if b.params() == params => b.clone(),
            _ => Arc::new(RetryBudget::from_params(params).unwrap_or_else(|e| {
                tracing::warn!(cluster = %name, error = %e, "retry budget refused, default used");
                RetryBudget::default()
            })),
        });
        let cluster = Arc::new(Cluster {
            rate_limit: self.rate_limit.clone(),
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
            name: name.clone(),
            subset: subset.clone(),
            labels: labels.clone(),
            authority: self.authority.clone(),
            endpoints,
            hash_on,
            upstream: ctx.upstream.protocol,
            tls_http1,
            server_name,
            listen: svc.listen,
            allowed,
            server_name_str,
            external: self.external_tls.as_ref().map(|(tls, tls_key)| {
                let targets = svc.external.as_deref().unwrap_or_default();
                let client = reuse
                    .external
                    .get(&(fqdn.clone(), svc.port, connect_timeout, tls_key.clone()))
                    .cloned()
                    .unwrap_or_else(|| {
                        crate::transport::external::egress_client(
                            ctx.upstream.idle_timeout,
                            connect_timeout,
                            matches!(svc.protocol, Protocol::Http2 | Protocol::Grpc),
                            tls.clone(),
                        )
                    });
                Arc::new(External {
                    tls_key: tls_key.clone(),
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
        cluster
    }
}

/// Resolves route destinations against the clusters being built.
pub(super) struct Resolver<'a> {
    pub(super) by_fqdn: &'a HashMap<&'a str, Vec<Arc<LazyCluster>>>,
    pub(super) subsets: &'a HashMap<(String, u16, String), Arc<LazyCluster>>,
    pub(super) reuse: &'a Reuse,
}

/// Whether both are absent or both are the same shared value (by identity).
fn same_shared<T>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// A [`Resolver`] that notes every destination it resolved, for the host port's
/// [`RoutesSource`](crate::route::RoutesSource).
pub(super) struct Recording<'a> {
    pub(super) inner: &'a Resolver<'a>,
    pub(super) seen: std::cell::RefCell<Vec<(v1::WeightedDestination, Target)>>,
}

impl ResolveDestination<LazyCluster> for Recording<'_> {
    fn rate_limit(&self, key: &str, limit: &v1::LocalRateLimit) -> Option<Arc<TokenBucket>> {
        self.inner.rate_limit(key, limit)
    }

    fn resolve(&self, dest: &v1::WeightedDestination, request_port: u16) -> Target {
        let target = self.inner.resolve(dest, request_port);
        self.seen.borrow_mut().push((dest.clone(), target.clone()));
        target
    }
}

impl ResolveDestination<LazyCluster> for Resolver<'_> {
    fn rate_limit(&self, key: &str, limit: &v1::LocalRateLimit) -> Option<Arc<TokenBucket>> {
        self.reuse.rate_limit(key, limit)
    }

    fn resolve(&self, dest: &v1::WeightedDestination, request_port: u16) -> Target {
        // Named as Envoy names the cluster it would want: the port resolved as below.
        let missing = |port: u16| {
            Target::Missing(Arc::from(format!(
                "outbound|{port}|{}|{}",
                dest.subset, dest.host
            )))
        };
        let entries = self.by_fqdn.get(dest.host.as_str());
        let port = match u16::try_from(dest.port) {
            Ok(p) if p != 0 => p,
            _ => match entries.map(Vec::as_slice) {
                Some([only]) => only.port,
                _ => request_port,
            },
        };
        let Some(cluster) = entries.into_iter().flatten().find(|c| c.port == port) else {
            return missing(port);
        };
        if dest.subset.is_empty() {
            return Target::Cluster(cluster.clone());
        }
        match self
            .subsets
            .get(&(dest.host.clone(), port, dest.subset.clone()))
        {
            Some(c) => Target::Cluster(c.clone()),
            None => missing(port),
        }
    }
}
