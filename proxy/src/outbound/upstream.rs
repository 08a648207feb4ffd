//! The cluster stage of the outbound path: a routed request enters its destination cluster
//! under the cluster's circuit breaker (`http2MaxRequests`), is hashed when the cluster
//! balances by consistent hashing (a hashing cookie issued when the rule gives it a TTL),
//! and goes through the route's retry loop ([`crate::resilience::retry_loop`]), whose next
//! stage, [`ClusterHosts`], picks each attempt's host with the cluster's balancer, sends it
//! with the forwarder ([`crate::transport::forward`]) and reports how it ended to outlier
//! detection and to a latency-aware balancer.

use futures_util::future::Either;
use futures_util::{FutureExt, TryFutureExt};
use http::header::{self, HeaderValue};
use http::{Request, Response};
use std::sync::Arc;

use super::route_rules::Dispatched;
use crate::context::ProxyContext;
use crate::message::body::ProxyBody;
use crate::message::errors::ProxyError;
use crate::policy::ext_authz::CheckSender;
use crate::resilience::retry::RetryPolicy;
use crate::resilience::retry_loop::{RetryLoop, Upstream};
use crate::snapshot::{Cluster, Endpoint, ExternalTarget, Snapshot};
use crate::telemetry::access_log::AccessLogEntry;
use crate::telemetry::exchange::BreakerPermits;
use crate::transport::forward::{self, SendError};

/// Where an outbound request comes from: this proxy and the app that sent it.
#[derive(Clone, Copy)]
pub struct Origin<'a> {
    /// Shared proxy state.
    pub ctx: &'a ProxyContext,
    /// This workload's peer metadata, from the snapshot the request loaded.
    pub peer_header: &'a HeaderValue,
    /// The app's address (a consistent-hash source).
    pub remote: std::net::IpAddr,
}

/// Sends `req` from `origin` to `cluster` under its circuit breakers and the route's `retry`
/// policy (Envoy's router). What must stay counted until the response stream ends goes into
/// `permits`; the response comes with the mesh endpoint that gave it (`None` for a service
/// outside the mesh).
///
/// Not an `async fn`: the retry loop's own future is returned, not wrapped (a wrapper would
/// store the request once more in every request's state).
pub fn dispatch<'a>(
    origin: Origin<'a>,
    cluster: &'a Arc<Cluster>,
    retry: Option<&'a RetryPolicy>,
    req: Request<ProxyBody>,
    mut log: Option<&'a mut AccessLogEntry>,
    permits: &'a mut BreakerPermits,
) -> impl Future<Output = Dispatched<Arc<Endpoint>>> + 'a {
    cluster.stats.mark_used();
    // `http2MaxRequests`: the request counts from here to the end of its response stream.
    let Some(permit) = cluster.breakers.requests.try_acquire() else {
        cluster.stats.pending_overflow.inc();
        let e = ProxyError::Overflow(cluster.name.to_string());
        return Either::Left(std::future::ready(Dispatched::failed(e)));
    };
    permits.request = Some(permit);
    if let Some(l) = log.as_deref_mut() {
        l.upstream_cluster = Some(cluster.name.to_string());
    }
    // The request's hash; a hashing cookie it lacks is issued when the rule gives it a TTL.
    let (hash, issued) = match cluster.hash_on.as_ref() {
        None => (None, None),
        Some(h) => match h.hash(&req, origin.remote) {
            Some(hash) => (Some(hash), None),
            None => h
                .issue_cookie()
                .map_or((None, None), |(hash, c)| (Some(hash), Some(c))),
        },
    };
    let upgrade = forward::is_upgrade(&req);
    cluster.breakers.record_request();
    let retries = RetryLoop {
        policy: retry.filter(|_| !upgrade),
        budget: cluster.retry_budget.as_deref(),
        breakers: &cluster.breakers,
        stats: &cluster.stats,
        hashed: hash.is_some(),
        rng: crate::balance::ThreadRandom,
    };
    let hosts = ClusterHosts {
        ctx: origin.ctx,
        peer_header: origin.peer_header,
        cluster,
        hash,
        log,
        permits,
        sent_at: None,
    };
    Either::Right(retries.run(hosts, req).map(move |mut retried| {
        if let (Ok((resp, _)), Some(cookie)) = (&mut retried.result, issued) {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
        Dispatched {
            result: retried.result.map(|(resp, host)| (resp, host.endpoint())),
            flags: retried.flags,
        }
    }))
}

/// Where one attempt goes.
pub enum Host<'a> {
    /// A mesh endpoint.
    Mesh(Arc<Endpoint>),
    /// An endpoint of a service outside the mesh.
    External(&'a ExternalTarget),
}

impl Host<'_> {
    /// The access log's `upstream_host`.
    fn label(&self) -> &str {
        match self {
            Host::Mesh(e) => &e.addr_label,
            Host::External(t) => &t.label,
        }
    }

    /// The mesh endpoint, if it is one.
    fn endpoint(self) -> Option<Arc<Endpoint>> {
        match self {
            Host::Mesh(e) => Some(e),
            Host::External(_) => None,
        }
    }
}

/// The hosts of one cluster as the retry loop's next stage: picks with the cluster's
/// balancer, sends with the forwarder, reports each attempt.
pub struct ClusterHosts<'a, 'l> {
    ctx: &'a ProxyContext,
    peer_header: &'a HeaderValue,
    cluster: &'a Cluster,
    /// The request's consistent hash, when the cluster balances by one.
    hash: Option<u64>,
    log: Option<&'l mut AccessLogEntry>,
    permits: &'l mut BreakerPermits,
    /// When the current attempt was sent, for a latency-aware balancer.
    sent_at: Option<tokio::time::Instant>,
}

impl<'a> Upstream for ClusterHosts<'a, '_> {
    type Host = Host<'a>;

    fn cluster(&self) -> &str {
        &self.cluster.name
    }

    fn pick(&mut self, excluded_priorities: &[u32]) -> Option<(usize, Host<'a>)> {
        let cluster = self.cluster;
        match &cluster.external {
            None => cluster
                .pick_excluding(self.hash, excluded_priorities)
                .map(|(i, e)| (i, Host::Mesh(e))),
            Some(ext) => ext.pick().map(|(i, t)| (i, Host::External(t))),
        }
    }

    fn gives_back_unsent(&self, req: &Request<ProxyBody>) -> bool {
        // HTTP/1.1 upstreams (and services outside the mesh) connect inside the pool, which
        // has taken the request by then.
        self.cluster.external.is_none()
            && forward::wire_protocol(self.cluster, req) != crate::protocol::UpstreamProtocol::Http1
    }

    fn send(
        &mut self,
        host: &Host<'a>,
        req: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, SendError>> {
        if let Some(l) = self.log.as_deref_mut() {
            l.upstream_host = Some(host.label().to_string());
            l.sending_upstream();
        }
        let cluster = self.cluster;
        if let Host::Mesh(endpoint) = host {
            // In flight for least request until the response stream ends.
            self.permits.endpoint = Some(endpoint.outstanding());
            self.sent_at = cluster.observes_latency().then(tokio::time::Instant::now);
        }
        // The forwarder's own future, not one wrapping it: each layer would store the
        // request again.
        match host {
            Host::Mesh(endpoint) => Either::Left(forward::to_sidecar(
                self.ctx,
                self.peer_header,
                cluster,
                endpoint,
                req,
            )),
            Host::External(target) => Either::Right(match &cluster.external {
                Some(ext) => Either::Left(forward::to_external(ext, target, req).err_into()),
                None => Either::Right(std::future::ready(Err(SendError::unsent(
                    ProxyError::Internal("an external host in a mesh cluster"),
                    req,
                )))),
            }),
        }
    }

    fn ended(
        &mut self,
        host: &Host<'a>,
        index: usize,
        result: &Result<Response<ProxyBody>, ProxyError>,
    ) {
        if let (Some(l), Ok(_)) = (self.log.as_deref_mut(), result) {
            l.upstream_answered();
            l.upstream_peer_principal = match host {
                Host::Mesh(endpoint) => endpoint.verified.principal(),
                Host::External(_) => None,
            };
        }
        let Host::Mesh(endpoint) = host else {
            return;
        };
        // Responses and timeouts are timed; a fast failure must not make an endpoint look
        // fast (outlier detection deals with failures).
        if let Some(at) = self.sent_at.take()
            && matches!(result, Ok(_) | Err(ProxyError::PerTryTimeout))
        {
            endpoint.latency.observe(
                at.elapsed(),
                crate::balance::ewma::clock_ns(),
                crate::balance::ewma::DEFAULT_DECAY,
            );
        }
        report(self.cluster, index, result);
    }

    fn retrying(&mut self) {
        self.permits.endpoint = None;
    }

    fn priority_of(&self, index: usize) -> Option<u32> {
        self.cluster.priority_of(index)
    }
}

/// Tells outlier detection how a request to endpoint `index` of `cluster` ended.
fn report(cluster: &Cluster, index: usize, result: &Result<Response<ProxyBody>, ProxyError>) {
    match result {
        Ok(resp) => cluster.report(index, resp.status().as_u16()),
        // A local overflow says nothing about the host.
        Err(ProxyError::Overflow(_)) => {}
        Err(e) => cluster.report_local_failure(index, e.outlier_status()),
    }
}

/// The way requests this proxy makes itself (external authorization checks) reach a
/// service: an endpoint of its cluster that the balancer picks, as an app's request to that
/// service travels (over mutual TLS to the endpoint's sidecar, or in plaintext to a service
/// outside the mesh). No route rules, retries or request telemetry apply; responses feed
/// outlier detection as any other.
#[derive(Debug, Clone)]
pub struct ClusterSender {
    ctx: Arc<ProxyContext>,
    /// The service's cluster, as the snapshot resolving it held it.
    cluster: Arc<crate::snapshot::LazyCluster>,
    /// The authority it was resolved from (resolved again once fetched on demand).
    authority: Box<str>,
    /// This workload's peer metadata.
    peer_header: HeaderValue,
}

impl ClusterSender {
    /// A sender to the service of `authority` in `snap`; `None` when the snapshot has none.
    pub fn resolve(ctx: &Arc<ProxyContext>, snap: &Snapshot, authority: &str) -> Option<Self> {
        let hp = snap.route(authority).ok()?;
        Some(Self {
            ctx: ctx.clone(),
            cluster: hp.cluster.clone(),
            authority: authority.into(),
            peer_header: snap.local.peer_header.clone(),
        })
    }

    /// Sends `req` to an endpoint of the cluster (fetched first if it is still awaiting its
    /// resources).
    pub async fn send(&self, req: Request<ProxyBody>) -> Result<Response<ProxyBody>, ProxyError> {
        let fetched;
        let cluster: &Cluster = if self.cluster.awaiting() {
            let snap = self.ctx.fetch(&self.cluster.labels.service.fqdn).await?;
            let hp = snap
                .route(&self.authority)
                .map_err(|miss| ProxyError::from_miss(miss, &self.authority))?;
            fetched = hp.cluster.get().clone();
            &fetched
        } else {
            self.cluster.get()
        };
        match &cluster.external {
            Some(ext) => match ext.pick() {
                None => Err(ProxyError::NoHealthyUpstream(cluster.name.to_string())),
                Some((_, target)) => forward::to_external(ext, target, req).await,
            },
            None => match cluster.pick_excluding(None, &[]) {
                None => Err(ProxyError::NoHealthyUpstream(cluster.name.to_string())),
                Some((index, endpoint)) => {
                    let _in_flight = endpoint.outstanding();
                    let result =
                        forward::to_sidecar(&self.ctx, &self.peer_header, cluster, &endpoint, req)
                            .await
                            .map_err(|e| e.error);
                    report(cluster, index, &result);
                    result
                }
            },
        }
    }
}

impl CheckSender for ClusterSender {
    fn send(
        &self,
        req: Request<ProxyBody>,
    ) -> impl std::future::Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send {
        ClusterSender::send(self, req)
    }
}
