//! A stand-in control plane that pushes whatever the test tells it to, valid or not.
//!
//! The real `meshlite-control` validates everything before it reaches a proxy, so it can
//! never send the malformed push a proxy must NACK. [`FakeControl`] speaks the same contract
//! on one TLS port (gRPC over HTTP/2, served here with hyper, not with the control plane's
//! internals): the delta ADS stream (`envoy.service.discovery.v3`) and meshlite's
//! certificate service. Its CA is a fresh rcgen root that signs any CSR as asked (no token
//! check: the tests that need the real checks use the real control plane); its ADS records
//! every request (subscriptions, ACKs, NACKs) by node id and sends a node exactly the
//! responses the test pushes.

use crate::control::ControlAccess;
use crate::deadline::{SOON, eventually};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshlite_xds_proto::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use meshlite_xds_proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use meshlite_xds_proto::v1::certificate_service_server::{
    CertificateService, CertificateServiceServer,
};
use meshlite_xds_proto::v1::{CertificateRequest, CertificateResponse};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tower::ServiceExt as _;

type Responses = mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>;

struct Shared {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    /// The open stream of each node id.
    streams: Mutex<HashMap<String, Responses>>,
    /// Every request received, with the node id of its stream.
    requests: Mutex<Vec<(String, DeltaDiscoveryRequest)>>,
    signed: AtomicU64,
}

/// A running fake control plane. Stops when dropped.
pub struct FakeControl {
    /// Its TLS address (ADS and CA).
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    shared: Arc<Shared>,
    nonces: AtomicU64,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeControl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeControl {
    /// Makes a root, a serving certificate for 127.0.0.1 signed by it, and starts serving on
    /// an ephemeral loopback port.
    ///
    /// # Panics
    /// If key generation, TLS configuration or binding fails.
    pub async fn start() -> FakeControl {
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("root key");
        let mut root_params = CertificateParams::default();
        root_params
            .distinguished_name
            .push(DnType::CommonName, "meshlite-tests fake control plane CA");
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let root = root_params
            .self_signed(&root_key)
            .expect("root certificate");
        let issuer = Issuer::new(root_params, root_key);

        let serving_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut serving = CertificateParams::default();
        serving.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        serving.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        serving.is_ca = IsCa::ExplicitNoCa;
        let serving_cert = serving
            .signed_by(&serving_key, &issuer)
            .expect("serving certificate");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(
                vec![serving_cert.der().clone(), root.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(serving_key.serialize_der())),
            )
            .expect("serving TLS config");
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let dir = tempfile::Builder::new()
            .prefix("meshlite-e2e-fake-control-")
            .tempdir()
            .expect("temp dir");
        std::fs::write(dir.path().join("root-cert.pem"), root.pem()).expect("write root");
        let shared = Arc::new(Shared {
            issuer,
            root_pem: root.pem(),
            streams: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            signed: AtomicU64::new(0),
        });

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake control plane");
        let addr = listener.local_addr().expect("local addr");
        let routes = tonic::service::Routes::new(AggregatedDiscoveryServiceServer::new(Ads {
            shared: shared.clone(),
        }))
        .add_service(CertificateServiceServer::new(Ca {
            shared: shared.clone(),
        }));
        let task = tokio::spawn(serve(listener, acceptor, routes));
        FakeControl {
            addr,
            dir,
            shared,
            nonces: AtomicU64::new(0),
            task,
        }
    }

    /// What a proxy needs to join it (any token will do).
    pub fn access(&self) -> ControlAccess {
        ControlAccess {
            address: format!("https://{}", self.addr),
            root_cert: self.root_cert(),
            token: "fake-token-accepted-as-is".to_string(),
        }
    }

    /// The root PEM file proxies trust.
    pub fn root_cert(&self) -> PathBuf {
        self.dir.path().join("root-cert.pem")
    }

    /// Certificates signed so far.
    pub fn signed(&self) -> u64 {
        self.shared.signed.load(Ordering::SeqCst)
    }

    /// Waits until node `node_id` has an open ADS stream.
    ///
    /// # Panics
    /// If it does not within [`SOON`].
    pub async fn wait_stream(&self, node_id: &str) {
        let what = format!("{node_id} to open its ADS stream");
        eventually(&what, SOON, || async {
            self.shared
                .streams
                .lock()
                .expect("lock")
                .get(node_id)
                .is_some_and(|s| !s.is_closed())
                .then_some(())
        })
        .await;
    }

    /// Sends node `node_id` one delta response of `type_url` holding `resources` (name,
    /// message), each at `version`; returns the nonce to find the ACK or NACK by.
    ///
    /// # Panics
    /// If the node has no open stream.
    pub fn push<M: prost::Name>(
        &self,
        node_id: &str,
        version: &str,
        resources: &[(&str, M)],
    ) -> String {
        let nonce = format!("fake-{}", self.nonces.fetch_add(1, Ordering::SeqCst) + 1);
        let response = DeltaDiscoveryResponse {
            system_version_info: version.to_string(),
            type_url: M::type_url(),
            nonce: nonce.clone(),
            resources: resources
                .iter()
                .map(|(name, message)| Resource {
                    name: name.to_string(),
                    version: version.to_string(),
                    resource: Some(prost_types::Any {
                        type_url: M::type_url(),
                        value: message.encode_to_vec(),
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let streams = self.shared.streams.lock().expect("lock");
        let stream = streams
            .get(node_id)
            .unwrap_or_else(|| panic!("{node_id} has no ADS stream"));
        stream
            .send(Ok(response))
            .unwrap_or_else(|_| panic!("{node_id}'s ADS stream is closed"));
        nonce
    }

    /// Waits for the node's reply to the response with `nonce`: an ACK has no `error_detail`,
    /// a NACK carries the reason.
    ///
    /// # Panics
    /// If none arrives within [`SOON`].
    pub async fn reply_to(&self, node_id: &str, nonce: &str) -> DeltaDiscoveryRequest {
        let what = format!("{node_id} to ACK or NACK {nonce}");
        eventually(&what, SOON, || async {
            self.shared
                .requests
                .lock()
                .expect("lock")
                .iter()
                .find(|(node, r)| node == node_id && r.response_nonce == nonce)
                .map(|(_, r)| r.clone())
        })
        .await
    }
}

/// Accepts TLS connections on `listener` and serves `routes` over HTTP/2 on each, as the
/// control plane's port 15012 does (without its buffer limits: one proxy at a time here).
async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    routes: tonic::service::Routes,
) {
    let routes = routes.prepare();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (acceptor, routes) = (acceptor.clone(), routes.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request: http::Request<_>| {
                routes.clone().oneshot(request)
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

struct Ads {
    shared: Arc<Shared>,
}

type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "the fake control plane speaks delta ADS only",
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (responses, outbound) = mpsc::unbounded_channel();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let mut node_id = String::new();
            while let Ok(Some(r)) = inbound.message().await {
                if let Some(node) = &r.node {
                    node_id = node.id.clone();
                    shared
                        .streams
                        .lock()
                        .expect("lock")
                        .insert(node_id.clone(), responses.clone());
                }
                shared
                    .requests
                    .lock()
                    .expect("lock")
                    .push((node_id.clone(), r));
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(
            outbound,
        ))))
    }
}

struct Ca {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl CertificateService for Ca {
    async fn create_certificate(
        &self,
        request: Request<CertificateRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        let body = request.into_inner();
        let mut csr = CertificateSigningRequestParams::from_pem(&body.csr)
            .map_err(|e| Status::invalid_argument(format!("fake CA: unreadable CSR: {e}")))?;
        let ttl = Duration::from_secs(u64::try_from(body.validity_duration).unwrap_or(0).max(60));
        let now = time::OffsetDateTime::now_utc();
        csr.params.not_before = now - Duration::from_secs(60);
        csr.params.not_after = now + ttl;
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        csr.params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf = csr
            .signed_by(&self.shared.issuer)
            .map_err(|e| Status::internal(format!("fake CA: cannot sign: {e}")))?;
        self.shared.signed.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(CertificateResponse {
            cert_chain: vec![leaf.pem(), self.shared.root_pem.clone()],
        }))
    }
}
