//! The xDS client: one delta aggregated stream to the control plane, over mutual TLS with
//! the workload's SVID.
//!
//! On connect it subscribes to every meshlite type (wildcard), telling the server which
//! resource versions it already holds. Each response is applied to a copy of the state,
//! turned into a new snapshot and swapped in atomically; then ACKed. If anything in it is
//! malformed or does not build, it is NACKed with the reason and nothing changes. When the
//! stream breaks, the proxy keeps serving and reconnects with exponential backoff and jitter.

use futures_util::FutureExt as _;
use meshlite_xds_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meshlite_xds_proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use meshlite_xds_proto::google::rpc::Status;
use meshlite_xds_proto::type_url;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::channel::ControlEndpoint;
use super::demand;
use super::state::{StateDir, XdsState, files};
use super::{Backoff, ControlStatus, XdsError};
use crate::context::ProxyContext;
use crate::snapshot::Snapshot;
use crate::snapshot::build::LocalSettings;
use crate::source::MeshView;
use crate::source::merge::merge;
use crate::telemetry::metrics::UpdateLabels;

/// google.rpc.Code INVALID_ARGUMENT, sent in a NACK.
const INVALID_ARGUMENT: i32 = 3;
/// At most this many already-received responses are applied as one snapshot.
const MAX_BATCH: usize = 64;
/// How long the rest of an on-demand answer (one response per type) is waited for before
/// applying what came.
const ANSWER_WAIT: Duration = Duration::from_millis(50);
/// A stream that lived this long resets the reconnect backoff.
const HEALTHY_STREAM: Duration = Duration::from_secs(30);
/// The shortest period between idle-cluster sweeps, whatever the setting.
const MIN_SWEEP: Duration = Duration::from_millis(100);

/// Sends `req` on the stream's request channel.
async fn send(
    tx: &mpsc::Sender<DeltaDiscoveryRequest>,
    req: DeltaDiscoveryRequest,
) -> Result<(), XdsError> {
    tx.send(req)
        .await
        .map_err(|_| XdsError::Stream("request channel closed".into()))
}

/// What every snapshot the client builds takes besides the control plane's state: the
/// proxy's own settings, and the mesh of its own file (the other source).
#[derive(Debug)]
pub struct StaticInputs {
    /// The proxy's own settings.
    pub local: Arc<LocalSettings>,
    /// The mesh of the proxy's own file, completing the control plane's.
    pub file: MeshView,
}

/// The running client.
pub struct XdsClient {
    ctx: Arc<ProxyContext>,
    inputs: StaticInputs,
    endpoint: ControlEndpoint,
    node: Node,
    state: XdsState,
    state_dir: Option<StateDir>,
    status: Arc<ControlStatus>,
    /// On demand: wanted hosts found idle at the last sweep (let go if still idle at the
    /// next).
    idle: BTreeSet<String>,
}

impl XdsClient {
    /// A client starting from `state` (empty, or restored from the state directory).
    pub fn new(
        ctx: Arc<ProxyContext>,
        inputs: StaticInputs,
        endpoint: ControlEndpoint,
        node: Node,
        state: XdsState,
        state_dir: Option<StateDir>,
        status: Arc<ControlStatus>,
    ) -> Self {
        Self {
            ctx,
            inputs,
            endpoint,
            node,
            state,
            state_dir,
            status,
            idle: BTreeSet::new(),
        }
    }

    /// Runs until the process exits.
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
        loop {
            let started = tokio::time::Instant::now();
            match self.stream_once().await {
                Ok(()) => tracing::info!("control plane closed the xDS stream"),
                Err(e) => tracing::warn!(
                    control = %self.endpoint.describe(),
                    "xDS: {e}; serving the last good config (version {})",
                    self.ctx.snapshot.load().version
                ),
            }
            self.status.connected.store(false, Ordering::Relaxed);
            self.ctx.telemetry.metrics.control.connected.set(0);
            if started.elapsed() > HEALTHY_STREAM {
                backoff.reset();
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    async fn stream_once(&mut self) -> Result<(), XdsError> {
        let channel = self.endpoint.connect(Some(&self.ctx.identity)).await?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
        // On demand, a per-host type is subscribed by name once some host is wanted (an
        // empty first request would subscribe to every resource).
        // This workload's own service is wanted from the first request: its DestinationRule
        // limits the inbound side.
        let own = self
            .ctx
            .snapshot
            .load()
            .local
            .services
            .get(None)
            .fqdn
            .clone();
        if let Some(w) = self.state.wanted_mut() {
            w.add(&own);
        }
        let mut subscribed: Vec<&'static str> = Vec::new();
        let mut node = Some(self.node.clone());
        for t in type_url::ALL {
            let mut req = DeltaDiscoveryRequest {
                type_url: t.to_string(),
                initial_resource_versions: self.state.versions(t),
                ..Default::default()
            };
            if let Some(w) = self.state.wanted()
                && demand::TYPES.contains(&t)
            {
                if w.hosts().is_empty() {
                    continue;
                }
                req.resource_names_subscribe = w.hosts().iter().cloned().collect();
                subscribed.push(t);
            }
            req.node = node.take();
            send(&tx, req).await?;
        }
        let mut responses = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(|s| XdsError::Stream(format!("{:?}: {}", s.code(), s.message())))?
            .into_inner();
        self.status.connected.store(true, Ordering::Relaxed);
        self.ctx.telemetry.metrics.control.connected.set(1);
        tracing::info!(control = %self.endpoint.describe(), "xDS stream up");
        let stream_error =
            |s: tonic::Status| XdsError::Stream(format!("{:?}: {}", s.code(), s.message()));
        let idle = self.inputs.local.upstream.cluster_idle_timeout;
        let mut sweeps = tokio::time::interval_at(
            tokio::time::Instant::now() + idle.max(MIN_SWEEP),
            idle.max(MIN_SWEEP),
        );
        sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let demand = self
            .ctx
            .demand
            .clone()
            .filter(|_| self.state.wanted().is_some());
        // Hosts implied by the state restored or held (no request waits on them).
        let implied = self.state.take_implied();
        self.subscribe(&tx, &mut subscribed, implied).await?;
        loop {
            // `message` is cancel safe: a sweep between two responses loses none; so is
            // `asked`, which takes the hosts only when it returns.
            let next = tokio::select! {
                next = responses.message() => next,
                _ = sweeps.tick(), if !idle.is_zero() => {
                    let forget = self.idle_hosts();
                    if !forget.is_empty() {
                        self.unsubscribe(&tx, &subscribed, forget).await?;
                    }
                    self.sweep_idle_clusters();
                    continue;
                }
                asked = async {
                    match &demand {
                        Some(d) => d.asked().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let hosts = asked.into_iter().map(String::from).collect();
                    self.subscribe(&tx, &mut subscribed, hosts).await?;
                    continue;
                }
            };
            let first = match next {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(()),
                Err(s) => return Err(stream_error(s)),
            };
            // Responses that have already arrived (a large set comes in several) are applied
            // together: one snapshot for the burst instead of one per response.
            let mut batch = vec![first];
            let mut ended = None;
            while batch.len() < MAX_BATCH {
                match responses.message().now_or_never() {
                    Some(Ok(Some(r))) => batch.push(r),
                    Some(Ok(None)) => {
                        ended = Some(Ok(()));
                        break;
                    }
                    Some(Err(s)) => {
                        ended = Some(Err(stream_error(s)));
                        break;
                    }
                    None => break,
                }
            }
            // An on-demand answer comes as one response per type: the rest of it is waited
            // for (briefly) so the host costs one snapshot, not one per type.
            let waiting_since = tokio::time::Instant::now();
            while ended.is_none() && batch.len() < MAX_BATCH && self.answers_pending(&batch) {
                let left = ANSWER_WAIT.saturating_sub(waiting_since.elapsed());
                match tokio::time::timeout(left, responses.message()).await {
                    Err(_) => break,
                    Ok(Ok(Some(r))) => batch.push(r),
                    Ok(Ok(None)) => ended = Some(Ok(())),
                    Ok(Err(s)) => ended = Some(Err(stream_error(s))),
                }
            }
            for reply in self.handle_batch(&batch) {
                send(&tx, reply).await?;
            }
            let implied = self.state.take_implied();
            self.subscribe(&tx, &mut subscribed, implied).await?;
            if let Some(end) = ended {
                return end;
            }
        }
    }

    /// The snapshot `view` makes, following the one in force (whose connections it keeps).
    fn snapshot_of(&self, view: &MeshView) -> Result<Snapshot, XdsError> {
        let current = self.ctx.snapshot.load();
        Snapshot::build(
            &self.inputs.local,
            view,
            &self.ctx.identity,
            &self.ctx.telemetry.metrics,
            current.version + 1,
            Some(&current),
        )
        .map_err(|e| XdsError::Invalid(e.to_string()))
    }

    /// Subscribes to the per-host types of `hosts` not wanted yet: the first subscription of
    /// a type on this stream names every wanted host (with the versions held), later ones
    /// only the new hosts.
    async fn subscribe(
        &mut self,
        tx: &mpsc::Sender<DeltaDiscoveryRequest>,
        subscribed: &mut Vec<&'static str>,
        hosts: Vec<String>,
    ) -> Result<(), XdsError> {
        let Some(w) = self.state.wanted_mut() else {
            return Ok(());
        };
        let new: Vec<String> = hosts.into_iter().filter(|h| w.add(h)).collect();
        if new.is_empty() {
            return Ok(());
        }
        let all: Vec<String> = w.hosts().iter().cloned().collect();
        tracing::debug!(hosts = ?new, "subscribing on demand");
        for t in demand::TYPES {
            let req = if subscribed.contains(&t) {
                DeltaDiscoveryRequest {
                    type_url: t.to_string(),
                    resource_names_subscribe: new.clone(),
                    ..Default::default()
                }
            } else {
                subscribed.push(t);
                DeltaDiscoveryRequest {
                    type_url: t.to_string(),
                    resource_names_subscribe: all.clone(),
                    initial_resource_versions: self.state.versions(t),
                    ..Default::default()
                }
            };
            send(tx, req).await?;
        }
        Ok(())
    }

    /// On demand: the wanted hosts found idle at this sweep and the one before, now let go.
    /// A host is idle when none of its clusters is built (a sweep unbuilt them, and nothing
    /// called them since), nor any its routes lead to; the sidecar's own service, services
    /// without a virtual IP and the destinations of hosts in use are kept.
    fn idle_hosts(&mut self) -> Vec<String> {
        let Some(w) = self.state.wanted() else {
            return Vec::new();
        };
        let snap = self.ctx.snapshot.load();
        let built: HashSet<&str> = snap
            .all_clusters()
            .filter(|c| c.built().is_some())
            .map(|c| &*c.labels.service.fqdn)
            .collect();
        let own = snap.local.services.get(None).fqdn.clone();
        let mut kept: HashSet<&str> = HashSet::new();
        for h in w.hosts() {
            let eager = snap
                .host_port_of(h)
                .is_some_and(|hp| !hp.cluster.has_virtual_ip());
            let destinations = self.state.destinations_of(h);
            let used = built.contains(h.as_str()) || destinations.iter().any(|d| built.contains(d));
            if used || eager || **h == *own {
                kept.insert(h);
                kept.extend(destinations);
            }
        }
        let idle: BTreeSet<String> = w
            .hosts()
            .iter()
            .filter(|h| !kept.contains(h.as_str()))
            .cloned()
            .collect();
        let (forget, wait): (Vec<String>, Vec<String>) =
            idle.into_iter().partition(|h| self.idle.contains(h));
        self.idle = wait.into_iter().collect();
        forget
    }

    /// Lets `hosts` go: unsubscribed, their resources dropped, a snapshot without them.
    async fn unsubscribe(
        &mut self,
        tx: &mpsc::Sender<DeltaDiscoveryRequest>,
        subscribed: &[&'static str],
        hosts: Vec<String>,
    ) -> Result<(), XdsError> {
        tracing::debug!(hosts = ?hosts, "letting idle on-demand services go");
        let mut next = self.state.clone();
        next.take_caches(&mut self.state);
        next.forget(&hosts);
        let built = next
            .view()
            .and_then(|v| self.snapshot_of(&merge(v, self.inputs.file.clone())));
        match built {
            Ok(snapshot) => {
                self.ctx.swap_snapshot(Arc::new(snapshot));
                self.state = next;
            }
            Err(e) => {
                // Kept as they were: nothing is unsubscribed.
                tracing::warn!("idle services kept: {e}");
                self.state.take_caches(&mut next);
                return Ok(());
            }
        }
        for t in demand::TYPES.iter().filter(|t| subscribed.contains(t)) {
            let req = DeltaDiscoveryRequest {
                type_url: t.to_string(),
                resource_names_unsubscribe: hosts.clone(),
                ..Default::default()
            };
            send(tx, req).await?;
        }
        Ok(())
    }

    /// Whether a wanted host would still miss an answer of some type after `batch`, while
    /// the batch answers some: the rest of that answer is on its way.
    fn answers_pending(&self, batch: &[DeltaDiscoveryResponse]) -> bool {
        let Some(w) = self.state.wanted() else {
            return false;
        };
        if !w.incomplete() {
            return false;
        }
        let mut after = w.clone();
        let answers = batch.iter().fold(false, |any, r| after.record(r) | any);
        answers && after.incomplete()
    }

    /// Applies a burst of responses as one snapshot and ACKs each; if the burst as a whole
    /// does not apply, each response is applied (ACKed or NACKed) on its own, so one bad
    /// response never costs the good ones.
    fn handle_batch(&mut self, batch: &[DeltaDiscoveryResponse]) -> Vec<DeltaDiscoveryRequest> {
        let outcomes: Vec<(&DeltaDiscoveryResponse, Result<(), XdsError>)> =
            if batch.len() > 1 && self.apply(batch).is_ok() {
                batch.iter().map(|r| (r, Ok(()))).collect()
            } else {
                batch
                    .iter()
                    .map(|r| (r, self.apply(std::slice::from_ref(r))))
                    .collect()
            };
        self.tell_demand(&outcomes);
        outcomes.iter().map(|(r, res)| self.reply(r, res)).collect()
    }

    /// On demand: the wanted hosts whose answer was refused fail their requests now (until
    /// an answer for them applies); those answered and applied are no longer refused.
    fn tell_demand(&self, outcomes: &[(&DeltaDiscoveryResponse, Result<(), XdsError>)]) {
        let (Some(demand), Some(wanted)) = (&self.ctx.demand, self.state.wanted()) else {
            return;
        };
        let mut refused: BTreeMap<&str, String> = BTreeMap::new();
        let mut applied: BTreeSet<&str> = BTreeSet::new();
        for (resp, result) in outcomes {
            if !demand::TYPES.contains(&resp.type_url.as_str()) {
                continue;
            }
            let names = resp
                .removed_resources
                .iter()
                .chain(resp.resources.iter().map(|r| &r.name))
                .filter(|n| wanted.hosts().contains(*n));
            for name in names {
                match result {
                    Ok(()) => {
                        applied.insert(name);
                    }
                    Err(e) => {
                        refused.insert(name, e.to_string());
                    }
                }
            }
        }
        demand.accept(applied.into_iter().filter(|h| !refused.contains_key(h)));
        for (host, reason) in &refused {
            demand.refuse([*host], reason);
        }
    }

    /// The ACK (or NACK, with the reason) for `resp`, counted.
    fn reply(
        &self,
        resp: &DeltaDiscoveryResponse,
        result: &Result<(), XdsError>,
    ) -> DeltaDiscoveryRequest {
        let (label, error_detail) = match result {
            Ok(()) => ("ack", None),
            Err(e) => {
                tracing::warn!(type_url = %resp.type_url, nonce = %resp.nonce, "NACK: {e}");
                (
                    "nack",
                    Some(Status {
                        code: INVALID_ARGUMENT,
                        message: e.to_string(),
                        details: vec![],
                    }),
                )
            }
        };
        self.ctx
            .telemetry
            .metrics
            .control
            .updates
            .get_or_create(&UpdateLabels {
                type_url: resp.type_url.clone(),
                result: label,
            })
            .inc();
        DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail,
            ..Default::default()
        }
    }

    /// Applies `batch` to `next` (a copy of the state in force holding its decode caches)
    /// and builds the snapshot it makes; the trust bundle, when one came, is checked and put
    /// in force. Nothing is swapped here.
    fn applied(
        &self,
        next: &mut XdsState,
        batch: &[DeltaDiscoveryResponse],
    ) -> Result<
        (
            Snapshot,
            Option<Vec<rustls_pki_types::CertificateDer<'static>>>,
        ),
        XdsError,
    > {
        for resp in batch {
            next.merge(resp)?;
        }
        let view = merge(next.view()?, self.inputs.file.clone());
        let trust = next.trust_bundle()?;
        if let Some(roots) = &trust {
            // Checked before anything is swapped; the bundle holds old and new roots during a
            // root rotation, so both keep verifying.
            self.ctx
                .identity
                .check_roots(roots)
                .map_err(|e| XdsError::Invalid(format!("trust bundle: {e}")))?;
        }
        let snapshot = self.snapshot_of(&view)?;
        if let Some(roots) = &trust
            && next.versions(type_url::TRUST_BUNDLE) != self.state.versions(type_url::TRUST_BUNDLE)
        {
            self.ctx
                .identity
                .set_roots(roots)
                .map_err(|e| XdsError::Invalid(format!("trust bundle: {e}")))?;
            tracing::info!(roots = roots.len(), "trust bundle updated");
        }
        Ok((snapshot, trust))
    }

    fn apply(&mut self, batch: &[DeltaDiscoveryResponse]) -> Result<(), XdsError> {
        let started = tokio::time::Instant::now();
        let mut next = self.state.clone();
        next.take_caches(&mut self.state);
        // Decoding and building a mesh of thousands takes milliseconds: on a multi-threaded
        // runtime this worker hands its other tasks (requests) to another thread meanwhile,
        // instead of making them wait for the push. A single-threaded runtime has no other.
        let multi_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let applied = if multi_threaded {
            tokio::task::block_in_place(|| self.applied(&mut next, batch))
        } else {
            self.applied(&mut next, batch)
        };
        if applied.is_err() {
            // Refused: the state in force keeps what its views decoded.
            self.state.take_caches(&mut next);
        }
        let (snapshot, trust) = applied?;
        let version = snapshot.version;
        self.ctx.swap_snapshot(Arc::new(snapshot));
        self.state = next;
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.status.last_apply_micros.store(took, Ordering::Relaxed);
        self.status.applies.fetch_add(1, Ordering::Relaxed);
        let m = &self.ctx.telemetry.metrics.control;
        m.config_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        m.persisted.set(0);
        self.status.persisted.store(false, Ordering::Relaxed);
        tracing::debug!(responses = batch.len(), version, "applied push");
        self.persist(trust.as_deref());
        Ok(())
    }

    /// Best effort: a state directory that fails is logged, never fails a push.
    /// Rebuilds the snapshot from the config in force, leaving out (unbuilt) the clusters
    /// built earlier and unused since the last sweep, which frees them once the requests
    /// still holding them finish. Nothing happens while no cluster is built.
    fn sweep_idle_clusters(&mut self) {
        let current = self.ctx.snapshot.load();
        let before = current.built_clusters();
        if before == 0 {
            return;
        }
        let view = match self.state.view() {
            Ok(v) => merge(v, self.inputs.file.clone()),
            Err(e) => {
                tracing::warn!("idle sweep skipped: {e}");
                return;
            }
        };
        match Snapshot::build_swept(
            &self.inputs.local,
            &view,
            &self.ctx.identity,
            &self.ctx.telemetry.metrics,
            current.version,
            Some(&current),
            true,
        ) {
            Ok(next) => {
                let after = next.built_clusters();
                if after < before {
                    tracing::debug!(freed = before - after, kept = after, "idle clusters freed");
                }
                self.ctx.swap_snapshot(Arc::new(next));
            }
            Err(e) => tracing::warn!("idle sweep skipped: {e}"),
        }
    }

    fn persist(&self, roots: Option<&[rustls_pki_types::CertificateDer<'static>]>) {
        let Some(dir) = &self.state_dir else { return };
        if let Err(e) = dir.write(files::CONFIG, &self.state.encode()) {
            tracing::warn!("cannot persist config: {e}");
        }
        if let Some(roots) = roots {
            let pem: String = roots.iter().map(super::bootstrap::pem_cert).collect();
            if let Err(e) = dir.write(files::ROOTS, pem.as_bytes()) {
                tracing::warn!("cannot persist trust bundle: {e}");
            }
        }
    }
}
