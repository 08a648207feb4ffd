//! What a new snapshot keeps of the previous one, so a push never reconnects, resets a
//! breaker's counts, forgets an ejection or restarts a budget: looked up by cluster name,
//! endpoint address and settings.

use meshlite_xds_proto::v1;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::identity::spiffe::SpiffeId;
use crate::resilience::outlier::HostHealth;
use crate::resilience::rate_limit::TokenBucket;
use crate::resilience::retry::RetryBudget;
use crate::snapshot::{Endpoint, Snapshot};
use crate::telemetry::metrics::Label;

/// Connections carried over from the previous snapshot, so a push does not reconnect.
#[derive(Default)]
pub(crate) struct Reuse {
    pub(super) endpoints: HashMap<(SocketAddr, Box<str>, Vec<SpiffeId>), Arc<Endpoint>>,
    /// Pools of services outside the mesh, by FQDN, port, connect timeout and TLS settings.
    pub(super) external:
        HashMap<(String, u16, Duration, String), crate::transport::external::ExternalClient>,
    /// Circuit-breaker counts by cluster name.
    pub(super) breakers: HashMap<Label, crate::resilience::breaker::Counts>,
    /// Retry budgets by cluster name.
    pub(super) budgets: HashMap<Label, Arc<RetryBudget>>,
    /// Local rate limits by host FQDN (destination) or route key.
    pub(super) rate_limits: HashMap<String, Arc<TokenBucket>>,
    /// Outlier state by cluster name and endpoint address.
    pub(super) health: HashMap<(Label, SocketAddr), Arc<HostHealth>>,
    /// The clusters of the previous snapshot, by name.
    pub(super) cluster_names: std::collections::HashSet<Label>,
    /// When each endpoint joined its cluster (slow start), by cluster name and address.
    pub(super) joined: HashMap<(Label, SocketAddr), Option<tokio::time::Instant>>,
}

impl Reuse {
    pub(super) fn from(prev: Option<&Snapshot>) -> Self {
        let mut r = Self::default();
        let Some(prev) = prev else { return r };
        // A directory's clusters await their fetch: never built.
        for c in prev.fetched_clusters().filter_map(|c| c.built()) {
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
                    .entry(c.labels.service.fqdn.to_string())
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
                        c.labels.service.fqdn.to_string(),
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
    pub(super) fn rate_limit(
        &self,
        key: &str,
        limit: &v1::LocalRateLimit,
    ) -> Option<Arc<TokenBucket>> {
        let limit = &super::wire::resilience::rate_limit(limit);
        match self.rate_limits.get(key) {
            Some(b) if b.is(limit) => Some(b.clone()),
            _ => TokenBucket::new(limit, tokio::time::Instant::now()).map(Arc::new),
        }
    }
}
