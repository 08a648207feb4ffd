//! Header hygiene shared by both directions, following Envoy's sidecar conventions.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy `keep-alive` and `proxy-connection`)
//! never cross the proxy; `te` survives only as `te: trailers` (gRPC needs it). `x-request-id`
//! is generated (UUIDv4) when absent and otherwise passed on untouched. Two internal headers
//! travel between meshlite sidecars and are removed before anything reaches an application.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

/// `x-request-id`, Envoy's request correlation header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-forwarded-proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-forwarded-client-cert` (XFCC), set by the inbound side from the verified peer certificate.
pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// Internal: the protocol the app originally spoke when HTTP/1.1 is carried as HTTP/2 between
/// sidecars (Linkerd's `l5d-orig-proto` idea); the inbound side restores it.
pub static ORIG_PROTO: HeaderName = HeaderName::from_static("x-meshlite-orig-proto");
/// Internal: workload metadata exchanged between sidecars for metric labels (Istio's
/// `x-envoy-peer-metadata` role): `workload;namespace;app;version`.
pub static PEER_METADATA: HeaderName = HeaderName::from_static("x-meshlite-peer");
/// `keep-alive` (legacy hop-by-hop).
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `proxy-connection` (legacy hop-by-hop).
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers, including any named in `Connection`. `te: trailers` is kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(conn) = headers.get(header::CONNECTION) {
        // Names listed in Connection are hop-by-hop too (RFC 9110 §7.6.1).
        let listed: Vec<HeaderName> = conn
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            if name != header::TE {
                headers.remove(&name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::UPGRADE);
    headers.remove(header::PROXY_AUTHENTICATE);
    headers.remove(header::PROXY_AUTHORIZATION);
    if let Some(te) = headers.get(header::TE) {
        let trailers_only = te
            .to_str()
            .map(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false);
        if trailers_only {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// True when an HTTP/1.1 request asks to switch protocols (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .map(|s| {
                    s.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                })
                .unwrap_or(false)
        })
}

/// Strips hop-by-hop headers but keeps the upgrade handshake (`Connection: upgrade`, `Upgrade`).
pub fn strip_hop_by_hop_keep_upgrade(headers: &mut HeaderMap) {
    let upgrade = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(headers);
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Returns the request's `x-request-id`, generating a UUIDv4 one when absent or empty.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(v) if !v.is_empty() => v.clone(),
        _ => {
            let v = uuid_v4();
            headers.insert(X_REQUEST_ID.clone(), v.clone());
            v
        }
    }
}

/// A random (version 4, RFC 9562) UUID in its 36-character text form.
pub fn uuid_v4() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits = fastrand::u128(..);
    bits = (bits & !(0xf << 76)) | (0x4 << 76); // version 4
    bits = (bits & !(0x3 << 62)) | (0x2 << 62); // RFC 4122 variant
    let mut out = [0u8; 36];
    let mut nibble = 32;
    for (i, slot) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *slot = b'-';
        } else {
            nibble -= 1;
            *slot = HEX[((bits >> (nibble * 4)) & 0xf) as usize];
        }
    }
    // Only hex digits and dashes: always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Removes the headers only meshlite sidecars may set, so an application cannot spoof them.
pub fn strip_internal(headers: &mut HeaderMap) {
    headers.remove(&ORIG_PROTO);
    headers.remove(&PEER_METADATA);
}

/// Header hygiene options of the bootstrap file: what the proxy says about itself.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderOptions {
    /// Value of a `server` header set on responses; none by default (the app's is removed).
    pub server_name: Option<String>,
    /// Add `via` on forwarded requests and responses (off by default).
    pub via: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_and_connection_listed_ones_too() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn te_trailers_survives_for_grpc() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
    }

    #[test]
    fn upgrade_detection_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!is_upgrade(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(is_upgrade(&h));
        strip_hop_by_hop_keep_upgrade(&mut h);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn request_id_is_generated_once_and_kept() {
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
        assert_eq!(ensure_request_id(&mut h), id);
        assert_ne!(uuid_v4(), uuid_v4());
    }
}
