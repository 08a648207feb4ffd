//! The protocols the proxy tells apart: what an application port speaks (Istio's port naming),
//! and how HTTP travels between two sidecars. Shared by the config file, the control plane's
//! resources and the request path.

use serde::Deserialize;

/// Application protocol of a port, as Istio's port naming declares it.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (the app may also speak h2c; the proxy detects it per connection).
    #[default]
    Http,
    /// HTTP/2 to the app (h2c prior knowledge).
    Http2,
    /// gRPC: HTTP/2 to the app, metrics labelled `grpc`.
    Grpc,
    /// Opaque TCP: bytes are relayed, no HTTP parsing.
    Tcp,
}

impl Protocol {
    /// Istio's `request_protocol` label value.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http | Protocol::Http2 => "http",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }
}

/// Protocol between sidecars for HTTP traffic.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/2, multiplexed over one connection per endpoint.
    H2,
    /// HTTP/1.1 over a keep-alive pool for HTTP/1.1 requests (HTTP/2 and gRPC still travel
    /// as HTTP/2), as Istio carries them by default.
    #[default]
    Http1,
}
