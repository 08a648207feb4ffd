//! The proxy's side of the control-plane protocol as a supported API, for programs that act as
//! sidecars without running one: meshlite-bench's `control` scenario simulates a thousand
//! sidecars in one process, each asking the CA for its certificate and holding an xDS stream.
//!
//! What is here is what such a program needs and what a sidecar does: the TLS channel to the
//! control plane ([`ControlEndpoint`]), the certificate request ([`request_certificate`]) and
//! the node metadata keys a sidecar announces its workload with ([`node_metadata`]). The
//! modules behind it (`xds::*`) are the proxy's own and change freely; this surface is kept
//! stable for those callers.

use std::time::Duration;

use crate::identity::spiffe::SpiffeId;

pub use crate::xds::XdsError;
pub use crate::xds::ca_client::{Credential, Issued};
pub use crate::xds::channel::ControlEndpoint;
pub use crate::xds::node::keys as node_metadata;

/// Asks the CA at `endpoint` for a certificate for `id`, valid for `ttl`, as a sidecar does: a
/// fresh P-256 key made here, a CSR for exactly `id`, proven by `credential` (the bootstrap
/// token, or the current SVID for a renewal). The key never leaves the returned [`Issued`].
pub async fn request_certificate(
    endpoint: &ControlEndpoint,
    id: &SpiffeId,
    credential: Credential<'_>,
    ttl: Duration,
) -> Result<Issued, XdsError> {
    crate::xds::ca_client::request(endpoint, id, credential, ttl).await
}
