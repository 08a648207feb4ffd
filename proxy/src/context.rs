//! What every connection of a running proxy shares: the current snapshot, identity,
//! telemetry, limits and drain state. Built once at start-up; the snapshot inside is swapped
//! atomically when configuration changes.

use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;

use crate::identity::tls::Identity;
use crate::message::headers::HeaderOptions;
use crate::server::drain::Drain;
use crate::server::limits::Limits;
use crate::snapshot::Snapshot;
use crate::telemetry::Telemetry;

/// Shared state of a running proxy.
#[derive(Debug)]
pub struct ProxyContext {
    /// The control-plane connection's state, when the proxy has one.
    pub control: Option<Arc<crate::xds::ControlStatus>>,
    /// Current configuration; load once per request. Replace it with
    /// [`ProxyContext::swap_snapshot`], which tells [`ProxyContext::snapshot_swapped`].
    pub snapshot: ArcSwap<Snapshot>,
    /// The version of each snapshot swapped in, for what follows the configuration outside
    /// the request path (the explicit TCP listeners).
    pub snapshot_swapped: tokio::sync::watch::Sender<u64>,
    /// This workload's key pair and trust bundle.
    pub identity: Arc<Identity>,
    /// Metrics and access log.
    pub telemetry: Arc<Telemetry>,
    /// Downstream protection limits.
    pub limits: Limits,
    /// Header hygiene options.
    pub headers: HeaderOptions,
    /// Drain state.
    pub drain: Arc<Drain>,
    /// Connect timeout towards upstream sidecars.
    pub connect_timeout: Duration,
    /// Server configuration for downstream connections.
    pub http_builder: crate::server::conn::HttpServer,
    /// Where requests ask for services fetched on demand; `None` when everything is pushed
    /// whole (no control plane, or on-demand turned off).
    pub demand: Option<Arc<crate::xds::demand::Demand>>,
}

impl ProxyContext {
    /// Fetches `host`'s resources on demand and returns the snapshot holding them; the
    /// error is the request's 503 (`NC`) when the control plane does not answer in time.
    pub async fn fetch(
        &self,
        host: &str,
    ) -> Result<Arc<Snapshot>, crate::message::errors::ProxyError> {
        let Some(d) = &self.demand else {
            return Ok(self.snapshot.load_full());
        };
        d.fetch(self, host).await.map_err(|e| {
            tracing::warn!("{e}");
            crate::message::errors::ProxyError::NoCluster(e.to_string())
        })
    }

    /// Makes `snapshot` the current configuration and tells the followers.
    pub fn swap_snapshot(&self, snapshot: Arc<Snapshot>) {
        let version = snapshot.version;
        self.snapshot.store(snapshot);
        self.snapshot_swapped.send_replace(version);
    }
}

/// Checks that the request path can cross threads: a compile-time guard, no runtime cost.
#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<ProxyContext>();
}
