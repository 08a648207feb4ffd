//! The client to services outside the mesh: hyper-util's pooled client (names resolved per
//! connection, TLS originated when a DestinationRule asks, [`super::egress`]), speaking
//! HTTP/1.1, or HTTP/2 with prior knowledge (h2c, or h2 over originated TLS) when the
//! service's port says so. Mesh traffic never uses it: it goes over mutual TLS to sidecars.

use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

use super::egress::{EgressConnector, EgressTls};
use crate::message::body::ProxyBody;

/// A pooled plaintext (or originated TLS) client to services outside the mesh: HTTP/1.1,
/// or HTTP/2 with prior knowledge (names in the URI are resolved per connection by the
/// connector).
pub type ExternalClient = Client<EgressConnector, ProxyBody>;

/// Builds a pooled client: HTTP/1.1, or HTTP/2 with prior knowledge (`h2c`, or `h2` over
/// originated TLS) when `http2_only`; plaintext, or `tls`. The request's Host header is sent
/// as the app gave it.
pub fn egress_client(
    idle_timeout: Duration,
    connect_timeout: Duration,
    http2_only: bool,
    tls: Option<EgressTls>,
) -> ExternalClient {
    let connector = EgressConnector::new(connect_timeout, tls);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle_timeout)
        .http2_only(http2_only)
        .set_host(false)
        .build(connector)
}
