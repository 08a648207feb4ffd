//! The certificate service: signs a CSR for the identity the caller proves, with a bootstrap
//! token (`authorization: Bearer`) or with its current SVID as TLS client certificate.
//! Every refusal says which check failed.

use meshlite_xds_proto::v1::certificate_service_server::CertificateService;
use meshlite_xds_proto::v1::{CertificateRequest, CertificateResponse};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use super::tls::PeerInfo;
use crate::metrics::ErrorLabel;
use crate::plane::ControlPlane;
use meshlite_xds_proto::spiffe::SpiffeId;

/// The service.
pub struct Ca {
    plane: Arc<ControlPlane>,
}

impl Ca {
    /// Serves `plane`'s CA.
    pub fn new(plane: Arc<ControlPlane>) -> Self {
        Self { plane }
    }

    /// Who asks, and the labels their credential grants (the token's, or those the current
    /// certificate carries).
    fn caller<T>(
        &self,
        req: &Request<T>,
        now: OffsetDateTime,
    ) -> Result<(SpiffeId, BTreeMap<String, String>), Status> {
        if let Some(auth) = req.metadata().get("authorization") {
            let token = auth
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
            return self
                .plane
                .tokens
                .verify(token.trim(), now)
                .map(|c| (c.identity, c.labels))
                .map_err(|e| Status::unauthenticated(format!("bootstrap token refused: {e}")));
        }
        let chain = req
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.chain.clone())
            .unwrap_or_default();
        if chain.is_empty() {
            return Err(Status::unauthenticated(
                "no credential: send a bootstrap token or present the current certificate",
            ));
        }
        let id = self
            .plane
            .ca()
            .verify_client_chain(&chain, now)
            .map_err(|e| Status::unauthenticated(format!("client certificate refused: {e}")))?;
        // A renewal keeps exactly what the certificate being renewed granted.
        let labels = chain
            .first()
            .and_then(|leaf| crate::ca::binding::decode(leaf))
            .unwrap_or_default();
        Ok((id, labels))
    }
}

#[tonic::async_trait]
impl CertificateService for Ca {
    async fn create_certificate(
        &self,
        req: Request<CertificateRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        let now = OffsetDateTime::now_utc();
        let metrics = &self.plane.metrics;
        metrics.csrs.inc();
        let (caller, labels) = self.caller(&req, now).inspect_err(|s| {
            metrics.csr_authn_failures.inc();
            tracing::warn!("certificate request refused: {}", s.message());
        })?;
        let body = req.get_ref();
        let ttl = match u64::try_from(body.validity_duration) {
            Ok(s) if s > 0 => Duration::from_secs(s),
            _ => self.plane.cert_ttl,
        };
        match self
            .plane
            .ca()
            .sign_csr(&body.csr, &caller, &labels, ttl, now)
        {
            Ok(issued) => {
                metrics.certs_issued.inc();
                Ok(Response::new(CertificateResponse {
                    cert_chain: issued.chain_pem,
                }))
            }
            Err(e) => {
                if e.is_csr_parse_error() {
                    metrics.csr_parse_errors.inc();
                } else {
                    metrics
                        .csr_sign_errors
                        .get_or_create(&ErrorLabel { error: e.reason() })
                        .inc();
                }
                let s = Status::permission_denied(format!("CSR refused: {e}"));
                tracing::warn!("certificate request refused: {}", s.message());
                Err(s)
            }
        }
    }
}
