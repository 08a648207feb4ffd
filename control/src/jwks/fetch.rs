//! Fetching a `jwksUri` over plain HTTP or HTTPS (HTTP/1.1, one GET, no redirects), with
//! the rule's timeout over the whole exchange and a bound on the body. HTTPS verifies the
//! server against Mozilla's roots (compiled in: images built from nothing have no system
//! store) or against the roots a caller gives.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The largest key set accepted (istiod reads whatever comes; a bound keeps a broken
/// server from filling memory).
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URI is not `http://` or `https://` with a host.
    #[error("`{0}` is not an http or https URL")]
    Uri(String),
    /// Connecting, the TLS handshake or the exchange failed.
    #[error("{0}")]
    Io(String),
    /// The server answered something other than 200.
    #[error("the server answered {0}")]
    Status(u16),
    /// The body is larger than [`MAX_JWKS_BYTES`] or could not be read.
    #[error("cannot read the body: {0}")]
    Body(String),
    /// The exchange did not finish within the rule's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The body is not a JWK set.
    #[error("the answer is not a JWK set: {0}")]
    NotJwks(String),
}

/// A way to fetch a key set; the real one is [`HttpFetcher`], tests bring their own.
pub trait Fetch: Send + Sync + 'static {
    /// The body served at `uri` (the caller bounds the time it may take).
    fn fetch<'a>(
        &'a self,
        uri: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<String, FetchError>> + Send + 'a>>;
}

/// Fetches over HTTP/1.1, HTTPS verified against a root store.
#[derive(Clone)]
pub struct HttpFetcher {
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFetcher").finish_non_exhaustive()
    }
}

impl Default for HttpFetcher {
    fn default() -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Self::with_roots(roots)
    }
}

impl HttpFetcher {
    /// HTTPS trusting `roots` only.
    pub fn with_roots(roots: rustls::RootCertStore) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions();
        let mut cfg = match builder {
            Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
            // ring supports the default versions; keep an empty-root config rather than panic.
            Err(_) => rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        }
    }

    async fn get(&self, uri: &str) -> Result<String, FetchError> {
        let bad = || FetchError::Uri(uri.to_string());
        let parsed: http::Uri = uri.parse().map_err(|_| bad())?;
        let https = match parsed.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad()),
        };
        let host = parsed.host().ok_or_else(bad)?.to_string();
        let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = parsed.authority().ok_or_else(bad)?.to_string();
        let path = parsed.path_and_query().map_or("/", |p| p.as_str());
        let bare_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tcp = tokio::net::TcpStream::connect((bare_host.as_str(), port))
            .await
            .map_err(|e| FetchError::Io(format!("connect {host}:{port}: {e}")))?;
        let req = http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "meshlite-control")
            .body(Empty::<Bytes>::new())
            .map_err(|_| bad())?;
        if https {
            let name = ServerName::try_from(bare_host).map_err(|_| bad())?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| FetchError::Io(format!("TLS with {host}: {e}")))?;
            exchange(TokioIo::new(tls), req).await
        } else {
            exchange(TokioIo::new(tcp), req).await
        }
    }
}

async fn exchange<T>(io: T, req: http::Request<Empty<Bytes>>) -> Result<String, FetchError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| FetchError::Io(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| FetchError::Io(e.to_string()))?;
    let status = resp.status();
    if status != http::StatusCode::OK {
        conn.abort();
        return Err(FetchError::Status(status.as_u16()));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| FetchError::Body(e.to_string()))?
        .to_bytes();
    conn.abort();
    String::from_utf8(body.to_vec()).map_err(|e| FetchError::Body(e.to_string()))
}

impl Fetch for HttpFetcher {
    fn fetch<'a>(
        &'a self,
        uri: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<String, FetchError>> + Send + 'a>> {
        Box::pin(self.get(uri))
    }
}
