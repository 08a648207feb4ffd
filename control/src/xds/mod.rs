//! The xDS server on port 15012 (TLS): the delta aggregated discovery stream each sidecar
//! subscribes to, and the certificate service, on one listener.

pub mod ads;
pub mod ca_service;
pub mod tls;

use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;

use crate::plane::ControlPlane;
use meshlite_xds_proto::discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use meshlite_xds_proto::v1::certificate_service_server::CertificateServiceServer;

/// Serves xDS and the CA on `listener` until the process exits.
pub async fn serve(
    plane: Arc<ControlPlane>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> Result<(), tonic::transport::Error> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener)
        .filter_map(|r| match r {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                None
            }
        })
        .then(move |tcp| {
            let acceptor = acceptor.clone();
            async move {
                let _ = tcp.set_nodelay(true);
                let peer = tcp.peer_addr().ok();
                match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(s)) => Some(tls::TlsConn(s)),
                    Ok(Err(e)) => {
                        tracing::info!(?peer, "TLS handshake refused: {e}");
                        None
                    }
                    Err(_) => {
                        tracing::info!(?peer, "TLS handshake timed out");
                        None
                    }
                }
            }
        })
        .filter_map(|c| c.map(Ok::<_, std::io::Error>));
    tonic::transport::Server::builder()
        .add_service(AggregatedDiscoveryServiceServer::new(ads::Ads::new(
            plane.clone(),
        )))
        .add_service(CertificateServiceServer::new(ca_service::Ca::new(plane)))
        .serve_with_incoming(incoming)
        .await
}
