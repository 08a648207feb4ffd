//! Builds one cluster (a service port, or a subset of it) from its endpoints and traffic
//! policy, reusing the previous snapshot's connections and state; and resolves route
//! destinations against the clusters being built.

use meshlite_xds_proto::v1;
use rustls_pki_types::ServerName;
use std::collections::HashMap;
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
use crate::identity::spiffe::SpiffeId;
use crate::identity::tls::{ALPN_MESH_H2, ALPN_MESH_HTTP1, Identity, IdentityError};
use crate::protocol::Protocol;
use crate::resilience::breaker::Breakers;
use crate::resilience::outlier::{Detector, OutlierConfig};
use crate::resilience::rate_limit::TokenBucket;
use crate::resilience::retry::{BudgetParams, RetryBudget};
use crate::snapshot::Target;
use crate::snapshot::{Cluster, Endpoint, External, ExternalTarget, SnapshotError};
use crate::source::{EndpointSpec, ServiceSpec};
use crate::telemetry::labels::ServiceLabels;
use crate::telemetry::metrics::{Label, Metrics};
use crate::telemetry::peer::{LocalWorkload, unknown};
use crate::transport::connect::{PoolTarget, VerifiedPeer};
use crate::transport::egress::EgressTls;
use crate::transport::h1_pool::H1Pool;
use crate::transport::h2::H2Pool;

/// Builds clusters, reusing the previous snapshot's connections where the endpoint and its
/// expected identities are unchanged.
pub(super) struct ClusterBuilder<'a> {
    pub(super) cfg: &'a super::LocalSettings,
    pub(super) identity: &'a Arc<Identity>,
    pub(super) metrics: &'a Metrics,
    pub(super) reuse: &'a Reuse,
    /// Destination rate limits by host FQDN, shared by the host's clusters.
    pub(super) destination_limits: &'a HashMap<String, Arc<TokenBucket>>,
    /// Destination policies by host FQDN.
    pub(super) policies: &'a HashMap<String, v1::DestinationPolicy>,
    /// This workload (locality balancing is relative to it).
    pub(super) local: &'a LocalWorkload,
}

impl ClusterBuilder<'_> {
    pub(super) fn cluster(
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
        let connect_timeout =
            positive(pool.and_then(|p| p.connect_timeout)).unwrap_or(cfg.upstream.connect_timeout);
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
                (&self.local.locality, &self.local.labels),
                &placed,
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
        let keys: Vec<&str> = endpoints.iter().map(|e| &*e.addr_label).collect();
        let hosts = HostSet::build(policy, &keys, &placements, &members, warming.as_deref())
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
            &pool_limits(pool),
            concurrency_budget.map(budget_spec).as_ref(),
            &self.reuse.breakers.get(&name).cloned().unwrap_or_default(),
        );
        let stats = self.metrics.clusters.stats(&name);
        stats.watch(&breakers);
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
            labels: ServiceLabels::new(
                Arc::from(fqdn.as_str()),
                Arc::from(svc.name.as_str()),
                Arc::from(svc.namespace.as_str()),
                principal,
            ),
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
                        crate::transport::external::egress_client(
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
pub(super) struct Resolver<'a> {
    pub(super) by_fqdn: &'a HashMap<String, Vec<(Arc<Cluster>, &'a ServiceSpec)>>,
    pub(super) subsets: &'a HashMap<(String, u16, String), Arc<Cluster>>,
    pub(super) reuse: &'a Reuse,
}

impl ResolveDestination<Cluster> for Resolver<'_> {
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
        let entries = self.by_fqdn.get(&dest.host);
        let port = match u16::try_from(dest.port) {
            Ok(p) if p != 0 => p,
            _ => match entries.map(Vec::as_slice) {
                Some([(only, _)]) => only.port,
                _ => request_port,
            },
        };
        let Some((cluster, _)) = entries.into_iter().flatten().find(|(c, _)| c.port == port) else {
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
