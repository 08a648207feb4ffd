//! The delta aggregated discovery stream, one per sidecar.
//!
//! The stream authenticates with the sidecar's SVID (mutual TLS) and its first request
//! carries the node, which registers the workload (its namespace and service account must be
//! the certificate's). For every subscribed type the server sends what differs between the
//! proxy's view and what the proxy holds (it tells us on reconnect, in
//! `initial_resource_versions`), each response with a fresh nonce. The proxy ACKs or NACKs;
//! a NACK is recorded with its reason and not retried until something changes (resending a
//! refused config is an xDS bug). SotW is not served: meshlite's proxies speak delta.
//!
//! A type is subscribed in one of two ways, as delta xDS defines them:
//!
//! - **Wildcard**: the first request of the type has no `resource_names_subscribe`, or has
//!   `*` in it. The proxy gets every resource of its view of the type, and every change to it.
//! - **Named** (on demand, like Envoy's on-demand CDS): the first request names resources.
//!   The proxy gets only those, and only their changes; later requests (ACKs included) add
//!   names with `resource_names_subscribe` and drop them with `resource_names_unsubscribe`.
//!   Every name a request subscribes is answered, in a response sent even when it is empty:
//!   the resource if it exists, its name in `removed_resources` if it does not (the
//!   incremental variant's "does not exist"). The one exception is a name the proxy said it
//!   holds at the current version in `initial_resource_versions` (a reconnect): it is not
//!   sent again, as for a wildcard subscription. A dropped name is forgotten: nothing more
//!   is sent about it (not even its removal), and subscribing it again sends it again. A
//!   name both dropped and subscribed in one request ends up subscribed. Subscribing names
//!   on a wildcard subscription only gets an answer (names it lacks are listed as removed);
//!   subscribing `*` on a named one makes it a wildcard one; unsubscribing `*` is ignored.
//!
//! A request with an empty nonce for a type already subscribed and naming nothing is a
//! resubscription: what the proxy holds is what its `initial_resource_versions` say, and the
//! rest is sent again (for a named subscription, every name is answered again).

use meshlite_xds_proto::discovery::aggregated_discovery_service_server::AggregatedDiscoveryService;
use meshlite_xds_proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use meshlite_xds_proto::type_url;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::tls::PeerInfo;
use crate::metrics::TypeLabel;
use crate::plane::{ControlPlane, Generation, ProxyStatus};
use crate::registry::Workload;
use crate::translate::{Held, ResourceMap};

/// Resources are batched into responses of about this many bytes at most.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024;

/// Responses queued per stream before the stream waits for the connection to take them: a
/// proxy that reads slowly holds back its own stream, not the control plane's memory.
pub const RESPONSE_QUEUE: usize = 1;

/// The ADS service.
pub struct Ads {
    plane: Arc<ControlPlane>,
}

impl Ads {
    /// Serves `plane`.
    pub fn new(plane: Arc<ControlPlane>) -> Self {
        Self { plane }
    }
}

type SotwStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SotwStream>, Status> {
        Err(Status::unimplemented(
            "meshlite-control serves the incremental variant: use DeltaAggregatedResources",
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let now = OffsetDateTime::now_utc();
        let peer = req.extensions().get::<PeerInfo>().cloned();
        let chain = peer.as_ref().map(|p| p.chain.clone()).unwrap_or_default();
        if chain.is_empty() {
            return Err(Status::unauthenticated(
                "xDS needs mutual TLS: present the workload certificate",
            ));
        }
        let identity = self
            .plane
            .ca()
            .verify_client_chain(&chain, now)
            .map_err(|e| Status::unauthenticated(format!("client certificate refused: {e}")))?;
        let cert_expiry = leaf_not_after(&chain);
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before the first request"))?;
        let node = first
            .node
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("the first request must carry the node"))?;
        let granted = chain
            .first()
            .and_then(|leaf| crate::ca::binding::decode(leaf))
            .unwrap_or_default();
        let workload = Workload::from_node(node, &identity, &granted).map_err(|e| {
            self.plane
                .metrics
                .announcements_refused
                .get_or_create(&crate::metrics::ResultLabel { result: e.reason() })
                .inc();
            tracing::warn!(proxy = %node.id, identity = %identity, "announcement refused: {e}");
            Status::permission_denied(format!("announcement refused: {e}"))
        })?;
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let plane = self.plane.clone();
        let id = plane.next_stream_id();
        plane.proxies().insert(
            id,
            ProxyStatus {
                id: node.id.clone(),
                identity: identity.as_str().to_string(),
                address: workload.address.to_string(),
                workload: format!("{}/{}", workload.namespace, workload.name),
                metrics_address: crate::graph::collect::metrics_target(node, workload.address),
                cert_expiry,
                connected_at: Some(Instant::now()),
                ..Default::default()
            },
        );
        plane.metrics.connected.inc();
        if plane.registry.connect(workload.clone()) {
            plane.changed.notify_one();
        }
        tracing::info!(proxy = %node.id, identity = %identity, "xDS stream opened");
        tokio::spawn(async move {
            let key = workload.key.clone();
            let mut stream = Stream::new(plane.clone(), id, workload, tx);
            if let Err(e) = stream.run(first, inbound).await {
                tracing::info!(proxy = %key, "xDS stream ended: {e}");
            } else {
                tracing::info!(proxy = %key, "xDS stream closed");
            }
            plane.registry.disconnect(&key);
            plane.proxies().remove(&id);
            plane.metrics.connected.dec();
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn leaf_not_after(chain: &[rustls_pki_types::CertificateDer<'_>]) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(chain.first()?.as_ref()).ok()?;
    let t = cert.validity().not_after.to_datetime();
    t.format(&::time::format_description::well_known::Rfc3339)
        .ok()
}

/// One type's delta on its way out, sent in batches as the connection takes them.
struct Outgoing {
    type_url: &'static str,
    generation: u64,
    /// When the change that made the generation was first seen (convergence).
    change_seen: Instant,
    /// Time spent computing this delta (push time).
    computed_in: Duration,
    /// When its first response was handed to the connection (push time).
    sending_since: Option<Instant>,
    /// What the proxy should hold.
    want: ResourceMap,
    /// What it held when this delta was computed.
    from: Held,
    /// Resources are sent in name order; the last name sent.
    after: Option<String>,
    /// Sent with the first batch.
    removals: Vec<String>,
    /// A subscription is answered even when there is nothing to send.
    answer_empty: bool,
}

impl Outgoing {
    /// The next response's resources and removals; `None` once everything went out.
    fn next_batch(&mut self) -> Option<(Vec<Resource>, Vec<String>)> {
        let lower = match &self.after {
            Some(a) => Bound::Excluded(a.as_str()),
            None => Bound::Unbounded,
        };
        let mut resources = Vec::new();
        let mut bytes = 0;
        for (name, r) in self.want.range::<str, _>((lower, Bound::Unbounded)) {
            if !self.from.differs(name, r) {
                continue;
            }
            let size = r.body.value.len() + name.len();
            if !resources.is_empty() && bytes + size > MAX_RESPONSE_BYTES {
                break;
            }
            bytes += size;
            resources.push(Resource {
                name: name.clone(),
                version: r.version.clone(),
                resource: Some(r.body.clone()),
                ..Default::default()
            });
        }
        let removals = std::mem::take(&mut self.removals);
        if resources.is_empty() && removals.is_empty() && !std::mem::take(&mut self.answer_empty) {
            return None;
        }
        self.answer_empty = false;
        self.after = resources
            .last()
            .map(|r| r.name.clone())
            .or(self.after.take());
        Some((resources, removals))
    }

    /// Drops `names`, unsubscribed since this delta was computed: what is still to be sent no
    /// longer mentions them.
    fn forget(&mut self, names: &BTreeSet<String>) {
        if names.iter().any(|n| self.want.contains_key(n)) {
            self.want = Arc::new(
                self.want
                    .iter()
                    .filter(|(n, _)| !names.contains(*n))
                    .map(|(n, r)| (n.clone(), r.clone()))
                    .collect(),
            );
        }
        self.removals.retain(|n| !names.contains(n));
    }
}

/// One type a stream subscribed to.
struct Subscription {
    /// What the proxy holds (or was sent and refused). For a named subscription, only
    /// subscribed names.
    held: Held,
    /// The names subscribed; `None` for a wildcard subscription.
    names: Option<BTreeSet<String>>,
    /// Named: the whole map of the type the held part was last taken from. A generation that
    /// keeps this very map changes nothing for the proxy: one pointer comparison, as for a
    /// wildcard subscription.
    taken_from: Option<ResourceMap>,
}

/// A subscription to answer (a response goes out even if there is nothing to send).
struct Answer {
    type_url: &'static str,
    /// Names just subscribed: each one the view lacks is listed in the answer's removals.
    newly: Vec<String>,
}

/// One stream's state.
struct Stream {
    plane: Arc<ControlPlane>,
    id: u64,
    workload: Workload,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    /// The subscribed types, with what the proxy holds of each.
    subscriptions: HashMap<&'static str, Subscription>,
    /// Deltas not yet (entirely) sent, oldest first.
    outbox: VecDeque<Outgoing>,
    /// Responses awaiting ACK/NACK.
    pending: Vec<Pending>,
    /// Generations that sent this proxy something and are not yet all answered, with whether
    /// every answer so far was an ACK: only those count as a convergence (istiod records one
    /// only for the proxies it pushed to), and only if nothing was NACKed.
    pushed: BTreeMap<u64, bool>,
    nonce: u64,
}

/// A response awaiting its ACK or NACK.
struct Pending {
    /// Its nonce's sequence number.
    nonce: u64,
    type_url: &'static str,
    generation: u64,
    /// When the change behind the generation was first seen.
    change_seen: Instant,
}

impl Stream {
    /// The stream `id` of `workload`'s proxy, answering through `tx`, subscribed to nothing.
    fn new(
        plane: Arc<ControlPlane>,
        id: u64,
        workload: Workload,
        tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> Self {
        Self {
            plane,
            id,
            workload,
            tx,
            subscriptions: HashMap::new(),
            outbox: VecDeque::new(),
            pending: Vec::new(),
            pushed: BTreeMap::new(),
            nonce: 0,
        }
    }

    /// Serves the stream: ACKs and NACKs are read while responses go out (a proxy that
    /// answers while it is still being sent to never has its answers pile up in HTTP/2),
    /// and a new generation is looked at once the previous one is out (so a burst of
    /// generations costs the slow proxy one delta to the newest, not one per generation).
    async fn run(
        &mut self,
        first: DeltaDiscoveryRequest,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
    ) -> Result<(), Status> {
        let mut generations = self.plane.generation.subscribe();
        let tx = self.tx.clone();
        self.request(first)?;
        loop {
            let sending = !self.outbox.is_empty();
            tokio::select! {
                msg = inbound.message() => match msg? {
                    Some(req) => self.request(req)?,
                    None => return Ok(()),
                },
                changed = generations.changed(), if !sending => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let g = generations.borrow_and_update().clone();
                    self.queue(&g, None);
                }
                permit = tx.reserve(), if sending => {
                    let permit = permit.map_err(|_| Status::cancelled("proxy went away"))?;
                    if let Some(resp) = self.next_response() {
                        permit.send(Ok(resp));
                    }
                }
            }
        }
    }

    /// Handles one request: a subscription, a resubscription, an ACK or NACK, and/or a change
    /// of the names subscribed (see the module docs).
    fn request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Status> {
        let Some(type_url) = type_url::ALL.iter().copied().find(|t| *t == req.type_url) else {
            return Err(Status::invalid_argument(format!(
                "unknown type {}",
                req.type_url
            )));
        };
        let names_change =
            !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty();
        if req.response_nonce.is_empty() {
            match self.subscriptions.get(type_url) {
                None => {
                    let subscribe = req.resource_names_subscribe;
                    let names = (!subscribe.is_empty() && !subscribe.iter().any(|n| n == "*"))
                        .then(|| {
                            let mut names: BTreeSet<String> = subscribe.into_iter().collect();
                            for n in &req.resource_names_unsubscribe {
                                names.remove(n);
                            }
                            names
                        });
                    self.subscribe(type_url, names, req.initial_resource_versions);
                    return Ok(());
                }
                Some(sub) if !names_change => {
                    let names = sub.names.clone();
                    self.subscribe(type_url, names, req.initial_resource_versions);
                    return Ok(());
                }
                Some(_) => {}
            }
        } else {
            self.answered(&req);
        }
        if names_change {
            self.change_names(
                type_url,
                req.resource_names_subscribe,
                req.resource_names_unsubscribe,
            );
        }
        Ok(())
    }

    /// A (re)subscription to `type_url` (`names`, or wildcard): what the proxy holds is what
    /// `initial` says (of the names subscribed), the rest is sent now, and it is answered even
    /// if nothing is to be sent.
    fn subscribe(
        &mut self,
        type_url: &'static str,
        names: Option<BTreeSet<String>>,
        initial: BTreeMap<String, String>,
    ) {
        let (held, newly) = match &names {
            None => (Held::Initial(initial), Vec::new()),
            Some(names) => (
                Held::Initial(
                    initial
                        .into_iter()
                        .filter(|(n, _)| names.contains(n))
                        .collect(),
                ),
                names.iter().cloned().collect(),
            ),
        };
        self.subscriptions.insert(
            type_url,
            Subscription {
                held,
                names,
                taken_from: None,
            },
        );
        let g = self.plane.generation.borrow().clone();
        self.queue(&g, Some(Answer { type_url, newly }));
    }

    /// Adds and drops names of a subscribed type; names added are answered now.
    fn change_names(
        &mut self,
        type_url: &'static str,
        subscribe: Vec<String>,
        unsubscribe: Vec<String>,
    ) {
        let Some(sub) = self.subscriptions.get_mut(type_url) else {
            // Names for a type never subscribed, on an ACK: nothing to change.
            return;
        };
        let wildcard = subscribe.iter().any(|n| n == "*");
        let newly: BTreeSet<String> = subscribe.into_iter().filter(|n| n != "*").collect();
        if let Some(names) = &mut sub.names {
            let gone: BTreeSet<String> = unsubscribe
                .into_iter()
                .filter(|n| !newly.contains(n) && names.remove(n))
                .collect();
            if !gone.is_empty() {
                sub.held.forget(&gone);
                for out in self.outbox.iter_mut().filter(|o| o.type_url == type_url) {
                    out.forget(&gone);
                }
            }
            if wildcard {
                sub.names = None;
                sub.taken_from = None;
            } else {
                // Every name subscribed is answered, even one subscribed already: it is sent
                // again.
                sub.held.forget(&newly);
                names.extend(newly.iter().cloned());
            }
        }
        if newly.is_empty() && !wildcard {
            // Only names dropped: nothing to answer.
            return;
        }
        let g = self.plane.generation.borrow().clone();
        self.queue(
            &g,
            Some(Answer {
                type_url,
                newly: newly.into_iter().collect(),
            }),
        );
    }

    /// Handles the ACK or NACK a request carries.
    fn answered(&mut self, req: &DeltaDiscoveryRequest) {
        let seq = req
            .response_nonce
            .rsplit_once('-')
            .and_then(|(_, n)| n.parse::<u64>().ok());
        let Some(i) = self.pending.iter().position(|p| Some(p.nonce) == seq) else {
            // A stale or unknown nonce (superseded response): ignored, as the protocol says.
            return;
        };
        let Pending {
            type_url,
            generation,
            change_seen,
            ..
        } = self.pending.swap_remove(i);
        if let Some(err) = &req.error_detail {
            tracing::warn!(
                proxy = %self.workload.key,
                type_url = %type_url,
                "NACK: {}",
                err.message
            );
            self.plane
                .metrics
                .rejects
                .get_or_create(&TypeLabel::of(type_url))
                .inc();
            if let Some(p) = self.plane.proxies().get_mut(&self.id) {
                p.last_nack = Some(format!("{type_url}: {}", err.message));
            }
            if let Some(all_acked) = self.pushed.get_mut(&generation) {
                *all_acked = false;
            }
        }
        self.maybe_acked(generation, change_seen);
    }

    /// Records `generation` as ACKed once nothing of it is pending or still to be sent.
    fn maybe_acked(&mut self, generation: u64, change_seen: Instant) {
        if !self.pending.iter().any(|p| p.generation == generation)
            && !self.outbox.iter().any(|o| o.generation == generation)
        {
            let applied = self.pushed.get(&generation).copied().unwrap_or(false);
            self.pushed.retain(|g, _| *g > generation);
            self.plane.acked(self.id, generation, change_seen, applied);
        }
    }

    /// Queues what changed for every subscribed type, or, for `answer`, what its type needs
    /// now (answered even if that is nothing).
    fn queue(&mut self, g: &Generation, answer: Option<Answer>) {
        let view = g.resources.view_for(&self.workload);
        for t in type_url::ALL {
            if answer.as_ref().is_some_and(|a| a.type_url != t) {
                continue;
            }
            let Some(sub) = self.subscriptions.get_mut(t) else {
                continue;
            };
            let Some(all) = view.get(t) else {
                continue;
            };
            let part;
            let want = match &sub.names {
                None => all,
                Some(names) => {
                    if answer.is_none()
                        && sub.taken_from.as_ref().is_some_and(|f| Arc::ptr_eq(f, all))
                    {
                        continue;
                    }
                    sub.taken_from = Some(all.clone());
                    part = sub.held.part_of(all, names);
                    &part
                }
            };
            if sub.held.is(want) && answer.is_none() {
                continue;
            }
            let started = Instant::now();
            // What is sent is what the proxy holds from now on (or refused: a NACKed config
            // is not sent again until something changes).
            let from = std::mem::replace(&mut sub.held, Held::Sent(want.clone()));
            let mut removals = from.removals(want);
            if let Some(a) = answer.as_ref().filter(|a| !a.newly.is_empty()) {
                // A name subscribed that does not exist is answered as removed.
                removals.extend(a.newly.iter().filter(|n| !want.contains_key(*n)).cloned());
                removals.sort_unstable();
                removals.dedup();
            }
            self.outbox.push_back(Outgoing {
                type_url: t,
                generation: g.number,
                change_seen: g.change_seen,
                computed_in: started.elapsed(),
                sending_since: None,
                removals,
                want: want.clone(),
                from,
                after: None,
                answer_empty: answer.is_some(),
            });
        }
        if let Some(p) = self.plane.proxies().get_mut(&self.id) {
            p.sent = p.sent.max(g.number);
        }
        if self.outbox.is_empty() {
            self.maybe_acked(g.number, g.change_seen);
        }
    }

    /// The next response from the outbox, if it still has something to send.
    fn next_response(&mut self) -> Option<DeltaDiscoveryResponse> {
        while let Some(out) = self.outbox.front_mut() {
            let Some((resources, removed_resources)) = out.next_batch() else {
                let done = self.outbox.pop_front();
                if let Some(done) = done {
                    // Its last response was taken by the connection: that type's push is
                    // over (istiod times each type's push).
                    if let Some(since) = done.sending_since {
                        self.plane
                            .metrics
                            .push_time
                            .get_or_create(&TypeLabel::of(done.type_url))
                            .observe((done.computed_in + since.elapsed()).as_secs_f64());
                    }
                    self.maybe_acked(done.generation, done.change_seen);
                }
                continue;
            };
            out.sending_since.get_or_insert_with(Instant::now);
            let (t, generation, change_seen) = (out.type_url, out.generation, out.change_seen);
            self.nonce += 1;
            self.pushed.entry(generation).or_insert(true);
            self.pending.push(Pending {
                nonce: self.nonce,
                type_url: t,
                generation,
                change_seen,
            });
            self.plane
                .metrics
                .pushes
                .get_or_create(&TypeLabel::of(t))
                .inc();
            return Some(DeltaDiscoveryResponse {
                system_version_info: generation.to_string(),
                type_url: t.to_string(),
                nonce: format!("{generation}-{}", self.nonce),
                resources,
                removed_resources,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::Versioned;
    use meshlite_xds_proto::v1;
    use std::collections::BTreeMap;

    fn map(n: usize, size: usize) -> ResourceMap {
        Arc::new(
            (0..n)
                .map(|i| {
                    let r = Versioned::of(&v1::TrustBundle {
                        roots_pem: vec![format!("{i:0size$}")],
                    });
                    (format!("r{i:04}"), r)
                })
                .collect::<BTreeMap<_, _>>(),
        )
    }

    fn outgoing(want: &ResourceMap, from: Held, answer_empty: bool) -> Outgoing {
        Outgoing {
            type_url: type_url::TRUST_BUNDLE,
            generation: 1,
            change_seen: Instant::now(),
            computed_in: Duration::ZERO,
            sending_since: None,
            removals: from.removals(want),
            want: want.clone(),
            from,
            after: None,
            answer_empty,
        }
    }

    #[test]
    fn a_large_delta_goes_out_in_bounded_batches_covering_every_resource_once() {
        let want = map(300, 100);
        let mut held = BTreeMap::new();
        held.insert("gone".to_string(), "v".to_string());
        let mut out = outgoing(&want, Held::Initial(held), true);
        let mut names = Vec::new();
        let mut batches = 0;
        while let Some((resources, removals)) = out.next_batch() {
            if batches == 0 {
                assert_eq!(removals, ["gone"], "removals ride with the first batch");
            } else {
                assert!(removals.is_empty());
            }
            let bytes: usize = resources
                .iter()
                .map(|r| r.name.len() + r.resource.as_ref().map_or(0, |a| a.value.len()))
                .sum();
            assert!(bytes <= MAX_RESPONSE_BYTES, "batch of {bytes} bytes");
            names.extend(resources.into_iter().map(|r| r.name));
            batches += 1;
        }
        assert!(
            batches > 1,
            "300 resources of ~110 bytes need several batches"
        );
        let expected: Vec<String> = want.keys().cloned().collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn only_changed_resources_are_sent_and_an_unchanged_subscription_is_still_answered() {
        let before = map(10, 10);
        let mut after = (*before).clone();
        let changed = Versioned::of(&v1::TrustBundle {
            roots_pem: vec!["new".into()],
        });
        after.insert("r0003".into(), changed);
        let after: ResourceMap = Arc::new(after);
        let mut out = outgoing(&after, Held::Sent(before.clone()), false);
        let (resources, removals) = out.next_batch().expect("one change");
        assert_eq!(
            resources
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["r0003"]
        );
        assert!(removals.is_empty());
        assert!(out.next_batch().is_none());

        // A proxy resubscribing with exactly what it holds gets one empty answer.
        let versions = before
            .iter()
            .map(|(n, r)| (n.clone(), r.version.clone()))
            .collect();
        let mut out = outgoing(&before, Held::Initial(versions), true);
        let (resources, removals) = out.next_batch().expect("an answer");
        assert!(resources.is_empty() && removals.is_empty());
        assert!(out.next_batch().is_none());
    }
}

#[cfg(test)]
#[path = "ads_named_tests.rs"]
mod named_tests;
