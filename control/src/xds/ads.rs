//! The delta aggregated discovery stream, one per sidecar.
//!
//! The stream authenticates with the sidecar's SVID (mutual TLS) and its first request
//! carries the node, which registers the workload (its namespace and service account must be
//! the certificate's). For every subscribed type the server sends what differs between the
//! proxy's view and what the proxy holds (it tells us on reconnect, in
//! `initial_resource_versions`), each response with a fresh nonce. The proxy ACKs or NACKs;
//! a NACK is recorded with its reason and not retried until something changes (resending a
//! refused config is an xDS bug). SotW is not served: meshlite's proxies speak delta.

use meshlite_xds_proto::discovery::aggregated_discovery_service_server::AggregatedDiscoveryService;
use meshlite_xds_proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use meshlite_xds_proto::type_url;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::tls::PeerInfo;
use crate::metrics::TypeLabel;
use crate::plane::{ControlPlane, Generation, ProxyStatus};
use crate::registry::Workload;
use crate::translate::Held;

/// Resources are batched into responses of about this many bytes at most.
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024;

/// Responses queued per stream before the stream waits for the connection to take them: a
/// proxy that reads slowly holds back its own stream, not the control plane's memory.
pub const RESPONSE_QUEUE: usize = 2;

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
            .ca
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
        let workload = Workload::from_node(node, &identity)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let plane = self.plane.clone();
        let id = plane.next_stream_id();
        plane.proxies().insert(
            id,
            ProxyStatus {
                id: node.id.clone(),
                identity: identity.as_str().to_string(),
                address: workload.address.to_string(),
                cert_expiry,
                connected_at: Some(tokio::time::Instant::now()),
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
            let mut stream = Stream {
                plane: plane.clone(),
                id,
                workload,
                tx,
                held: HashMap::new(),
                pending: HashMap::new(),
                nonce: 0,
            };
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

/// One stream's state.
struct Stream {
    plane: Arc<ControlPlane>,
    id: u64,
    workload: Workload,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    /// What the proxy holds (or was sent and refused), per type.
    held: HashMap<String, Held>,
    /// Nonces awaiting ACK/NACK -> (type, generation).
    pending: HashMap<String, (String, u64)>,
    nonce: u64,
}

impl Stream {
    async fn run(
        &mut self,
        first: DeltaDiscoveryRequest,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
    ) -> Result<(), Status> {
        let mut generations = self.plane.generation.subscribe();
        self.request(first).await?;
        loop {
            tokio::select! {
                msg = inbound.message() => match msg? {
                    Some(req) => self.request(req).await?,
                    None => return Ok(()),
                },
                changed = generations.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let g = generations.borrow_and_update().clone();
                    self.push(&g, None).await?;
                }
            }
        }
    }

    async fn request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Status> {
        if !type_url::ALL.contains(&req.type_url.as_str()) {
            return Err(Status::invalid_argument(format!(
                "unknown type {}",
                req.type_url
            )));
        }
        if req.response_nonce.is_empty() {
            // A subscription (wildcard): remember what the proxy already holds and send the
            // rest now.
            self.held.insert(
                req.type_url.clone(),
                Held::Initial(req.initial_resource_versions),
            );
            let g = self.plane.generation.borrow().clone();
            return self.push(&g, Some(&req.type_url)).await;
        }
        let Some((type_url, generation)) = self.pending.remove(&req.response_nonce) else {
            // A stale nonce (superseded response): ignored, as the protocol says.
            return Ok(());
        };
        if let Some(err) = &req.error_detail {
            tracing::warn!(
                proxy = %self.workload.key,
                type_url = %type_url,
                "NACK: {}",
                err.message
            );
            self.plane
                .metrics
                .nacks
                .get_or_create(&TypeLabel {
                    type_url: type_url.clone(),
                })
                .inc();
            if let Some(p) = self.plane.proxies().get_mut(&self.id) {
                p.last_nack = Some(format!("{type_url}: {}", err.message));
            }
        }
        if !self.pending.values().any(|(_, g)| *g == generation) {
            self.plane.acked(self.id, generation);
        }
        Ok(())
    }

    /// Sends what changed for every subscribed type (or just `only`).
    async fn push(&mut self, g: &Generation, only: Option<&str>) -> Result<(), Status> {
        let started = std::time::Instant::now();
        let view = g.resources.view_for(&self.workload);
        let mut sent_any = false;
        for t in type_url::ALL {
            if only.is_some_and(|o| o != t) {
                continue;
            }
            let Some(held) = self.held.get_mut(t) else {
                continue;
            };
            let Some(want) = view.get(t) else {
                continue;
            };
            let delta = held.diff(want);
            // What is sent is what the proxy holds from now on (or refused: a NACKed config
            // is not sent again until something changes).
            *held = Held::Sent(want.clone());
            // A subscription is answered even when nothing is to be sent.
            if delta.upserts.is_empty() && delta.removals.is_empty() && only.is_none() {
                continue;
            }
            // Large sets go out in several responses of bounded size: every buffer on the
            // way (gRPC encoder, HTTP/2, TLS, the proxy's decoder) keeps the capacity of
            // the largest message it carried, per connection.
            let mut removals = Some(delta.removals);
            let mut upserts = delta.upserts.into_iter().peekable();
            loop {
                let mut resources = Vec::new();
                let mut bytes = 0;
                while let Some((name, r)) = upserts.next_if(|(_, r)| {
                    resources.is_empty() || bytes + r.body.value.len() <= MAX_RESPONSE_BYTES
                }) {
                    bytes += r.body.value.len() + name.len();
                    resources.push(Resource {
                        name,
                        version: r.version.clone(),
                        resource: Some(r.body.clone()),
                        ..Default::default()
                    });
                }
                self.nonce += 1;
                let nonce = format!("{}-{}", g.number, self.nonce);
                let resp = DeltaDiscoveryResponse {
                    system_version_info: g.number.to_string(),
                    type_url: t.to_string(),
                    nonce: nonce.clone(),
                    resources,
                    removed_resources: removals.take().unwrap_or_default(),
                };
                self.pending.insert(nonce, (t.to_string(), g.number));
                self.tx
                    .send(Ok(resp))
                    .await
                    .map_err(|_| Status::cancelled("proxy went away"))?;
                self.plane
                    .metrics
                    .pushes
                    .get_or_create(&TypeLabel {
                        type_url: t.to_string(),
                    })
                    .inc();
                if upserts.peek().is_none() {
                    break;
                }
            }
            sent_any = true;
        }
        if let Some(p) = self.plane.proxies().get_mut(&self.id) {
            p.sent = p.sent.max(g.number);
        }
        if sent_any {
            self.plane
                .metrics
                .push_time
                .observe(started.elapsed().as_secs_f64());
        } else if self.pending.is_empty() {
            self.plane.acked(self.id, g.number);
        }
        Ok(())
    }
}
