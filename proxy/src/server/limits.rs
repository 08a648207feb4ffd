//! Limits that protect the proxy from its downstream clients: header size, slow heads and
//! bodies, idle connections, and how long a drain waits. Set by the bootstrap file, read by
//! every listener.

use serde::Deserialize;
use std::time::Duration;

/// Limits that protect the proxy from slow, idle or abusive clients.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Maximum total size of request headers; larger requests get 431.
    pub max_header_bytes: usize,
    /// A client must send its complete request head within this time (slowloris guard).
    #[serde(with = "crate::config::duration_str")]
    pub header_read_timeout: Duration,
    /// A downstream connection with no request in flight is closed after this long.
    #[serde(with = "crate::config::duration_str")]
    pub idle_timeout: Duration,
    /// On SIGTERM, in-flight requests get this long to finish.
    #[serde(with = "crate::config::duration_str")]
    pub drain_timeout: Duration,
    /// An HTTP/1.x request body must bring at least this many bytes per second while the
    /// proxy waits for it (0: no check); slower, the client gets 408. gRPC and HTTP/2 streams
    /// are exempt: they may idle legitimately.
    pub min_request_body_rate: u32,
    /// The window that rate is measured over.
    #[serde(with = "crate::config::duration_str")]
    pub request_body_rate_window: Duration,
}

impl Limits {
    /// The minimum body rate for a request of `version`, `grpc` or not.
    pub fn body_rate(&self, version: http::Version, grpc: bool) -> crate::message::body::MinRate {
        if grpc || version >= http::Version::HTTP_2 {
            return crate::message::body::MinRate::OFF;
        }
        crate::message::body::MinRate {
            bytes_per_sec: self.min_request_body_rate,
            window: self.request_body_rate_window,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // Envoy's default max_request_headers_kb is 60 KiB.
            max_header_bytes: 60 * 1024,
            header_read_timeout: Duration::from_secs(10),
            // Istio's default idle timeout for downstream HTTP connections: 1 h; shorter here
            // because a sidecar's clients are local and reconnect cheaply.
            idle_timeout: Duration::from_secs(300),
            // Istio's terminationDrainDuration default: 5 s.
            drain_timeout: Duration::from_secs(5),
            // Lenient for any real client (a sidecar's are local apps and peer sidecars), fatal
            // to a trickle: 10 KiB per 10 s window.
            min_request_body_rate: 1024,
            request_body_rate_window: Duration::from_secs(10),
        }
    }
}
