//! The xDS server on port 15012 (TLS): the delta aggregated discovery stream each sidecar
//! subscribes to, and the certificate service, on one listener. The accept loop
//! (`listener`) is crate-private: it is how this server serves, not an API.

pub mod ads;
pub mod ca_service;
pub(crate) mod listener;
pub mod serving;
pub mod tls;

use std::sync::Arc;
use tokio::net::TcpListener;

use crate::plane::ControlPlane;
use meshlite_xds_proto::discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use meshlite_xds_proto::v1::certificate_service_server::CertificateServiceServer;

/// Serves xDS and the CA on `listener` until the process exits.
pub async fn serve(
    plane: Arc<ControlPlane>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let routes = tonic::service::Routes::new(AggregatedDiscoveryServiceServer::new(ads::Ads::new(
        plane.clone(),
    )))
    .add_service(CertificateServiceServer::new(ca_service::Ca::new(plane)));
    listener::serve(listener, tokio_rustls::TlsAcceptor::from(tls), routes).await;
}
