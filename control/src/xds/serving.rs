//! The control plane's own certificate on port 15012 (xDS and CA): issued by the mesh CA at
//! start, renewed at half its lifetime and as soon as the CA changes (a rotated plug-in CA),
//! and swapped in for new handshakes without a restart; connections already open keep theirs.

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

use crate::plane::ControlPlane;
use meshlite_xds_proto::spiffe::SpiffeId;

/// How long a failed renewal waits before trying again.
const RETRY: Duration = Duration::from_secs(10);

/// What the serving certificate names.
#[derive(Debug, Clone)]
pub struct ServingIdentity {
    /// The control plane's SPIFFE ID.
    pub id: SpiffeId,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// Lifetime of each certificate issued.
    pub ttl: Duration,
}

/// Why a serving certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    /// The CA refused.
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    /// The issued PEM did not read back.
    #[error("serving certificate: {0}")]
    Pem(String),
    /// rustls refused the key.
    #[error("serving key: {0}")]
    Key(#[from] rustls::Error),
}

/// The certificate the listener presents now.
#[derive(Debug)]
pub struct ServingCert {
    key: ArcSwap<CertifiedKey>,
    not_after: ArcSwap<OffsetDateTime>,
}

impl rustls::server::ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key.load_full())
    }
}

fn issue(
    plane: &ControlPlane,
    who: &ServingIdentity,
) -> Result<(CertifiedKey, OffsetDateTime), ServingError> {
    let (issued, key_pem) = plane.ca().issue_serving_cert(
        &who.id,
        &who.dns,
        &who.ips,
        who.ttl,
        OffsetDateTime::now_utc(),
    )?;
    let chain = issued
        .chain_pem
        .iter()
        .flat_map(|p| CertificateDer::pem_slice_iter(p.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServingError::Pem(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| ServingError::Pem(e.to_string()))?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)?;
    Ok((CertifiedKey::new(chain, signing), issued.not_after))
}

impl ServingCert {
    /// Issues the first certificate.
    pub fn new(plane: &ControlPlane, who: &ServingIdentity) -> Result<Arc<Self>, ServingError> {
        let (key, not_after) = issue(plane, who)?;
        Ok(Arc::new(Self {
            key: ArcSwap::from_pointee(key),
            not_after: ArcSwap::from_pointee(not_after),
        }))
    }

    /// When the certificate presented now expires.
    pub fn not_after(&self) -> OffsetDateTime {
        **self.not_after.load()
    }

    /// Renews the certificate at half its lifetime, and when the CA is replaced; runs until
    /// the process exits.
    pub async fn keep_renewed(self: Arc<Self>, plane: Arc<ControlPlane>, who: ServingIdentity) {
        let mut ca_changes = plane.ca_generation.subscribe();
        loop {
            let half = who.ttl / 2;
            let renew_in = (self.not_after() - OffsetDateTime::now_utc())
                .try_into()
                .unwrap_or(Duration::ZERO)
                .saturating_sub(half);
            tokio::select! {
                _ = tokio::time::sleep(renew_in) => {}
                changed = ca_changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            match issue(&plane, &who) {
                Ok((key, not_after)) => {
                    self.key.store(Arc::new(key));
                    self.not_after.store(Arc::new(not_after));
                    tracing::info!(%not_after, "renewed the control plane's serving certificate");
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot renew the serving certificate, retrying in {RETRY:?}: {e}"
                    );
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}
