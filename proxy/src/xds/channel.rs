//! The gRPC channel to the control plane: HTTP/2 over TLS 1.3 with ALPN `h2`, the server
//! verified against the configured root and, once the proxy has an identity, the mesh's
//! current trust bundle as the control plane pushed it (hostname or IP checked as for any TLS
//! server), so a rotated root keeps the channel up; that SVID is the client certificate.

use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::XdsError;
use crate::identity::tls::Identity;

/// Where the control plane is and which roots its serving certificate must chain to.
#[derive(Clone, Debug)]
pub struct ControlEndpoint {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    /// The bootstrap roots (`control.root_cert`).
    roots: Vec<CertificateDer<'static>>,
}

/// How long a connection attempt to the control plane may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl ControlEndpoint {
    /// Parses `https://HOST:PORT` and the PEM roots to trust.
    pub fn new(address: &str, roots: &[CertificateDer<'static>]) -> Result<Self, XdsError> {
        let uri: http::Uri = address
            .parse()
            .map_err(|e| XdsError::Config(format!("control address `{address}`: {e}")))?;
        let host = uri
            .host()
            .ok_or_else(|| XdsError::Config(format!("control address `{address}` has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(15012);
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| XdsError::Config(format!("control host `{host}`: {e}")))?;
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            store
                .add(r.clone())
                .map_err(|e| XdsError::Config(format!("control root certificate: {e}")))?;
        }
        Ok(Self {
            host,
            port,
            server_name,
            roots: roots.to_vec(),
        })
    }

    /// `host:port`, for logs.
    pub fn describe(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// A TLS configuration for this endpoint, presenting `identity`'s certificate if given.
    fn tls(&self, identity: Option<&Arc<Identity>>) -> Result<Arc<rustls::ClientConfig>, XdsError> {
        let provider = match identity {
            Some(i) => i.provider().clone(),
            None => Arc::new(rustls::crypto::ring::default_provider()),
        };
        let mut store = rustls::RootCertStore::empty();
        let pushed = identity.map(|i| i.root_certs()).unwrap_or_default();
        for r in self.roots.iter().chain(&pushed) {
            // A root the store cannot use is skipped: the others may still verify.
            let _ = store.add(r.clone());
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| XdsError::Config(format!("TLS 1.3 unavailable: {e}")))?
            .with_root_certificates(Arc::new(store));
        let mut cfg = match identity {
            Some(i) => builder.with_client_cert_resolver(i.client_cert_resolver()),
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Opens a channel; with `identity`, the connection is mutual TLS with its SVID.
    pub async fn connect(
        &self,
        identity: Option<&Arc<Identity>>,
    ) -> Result<tonic::transport::Channel, XdsError> {
        let tls = TlsConnector::from(self.tls(identity)?);
        let target = (self.host.clone(), self.port);
        let server_name = self.server_name.clone();
        // The URI only names the authority; the connector below decides where bytes go.
        let endpoint = tonic::transport::Endpoint::from_shared(format!(
            "http://{}",
            self.describe_authority()
        ))
        .map_err(|e| XdsError::Config(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
        let connector = tower::service_fn(move |_: http::Uri| {
            let tls = tls.clone();
            let target = target.clone();
            let server_name = server_name.clone();
            async move {
                let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target))
                    .await
                    .map_err(|_| std::io::Error::other("connect timed out"))??;
                tcp.set_nodelay(true)?;
                let stream = tls.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| XdsError::Connect(format!("{}: {}", self.describe(), error_chain(&e))))
    }

    fn describe_authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// An error with its sources, on one line (tonic's transport errors hide the cause).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
