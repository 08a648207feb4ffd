//! Header hygiene shared by both directions, following Envoy's sidecar conventions.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy `keep-alive` and `proxy-connection`)
//! never cross the proxy; `te` survives only as `te: trailers` (gRPC needs it). `x-request-id`
//! is generated (UUIDv4) when absent and otherwise passed on untouched. Three internal headers
//! travel between meshlite sidecars and are removed before anything reaches an application.
//!
//! Each hop a request or a response crosses has one function here ([`to_sidecar`],
//! [`to_external`], [`to_app`], [`to_downstream`]), so what the proxy removes and adds is
//! written once and reads side by side.

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
/// Internal: the service port when the app's authority has none, so the destination's
/// sidecar knows which of its ports the request is for.
pub static DESTINATION_PORT: HeaderName = HeaderName::from_static("x-meshlite-port");
/// `keep-alive` (legacy hop-by-hop).
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `proxy-connection` (legacy hop-by-hop).
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The names header hygiene acts on, one bit each. A hop reads the names a message carries
/// in one pass ([`present`]) and looks up or removes only those it has: a hashed lookup per
/// name, most of which miss (an ordinary request carries none of the hop-by-hop or internal
/// headers), cost more than the rest of the hop's header work together.
mod bit {
    pub(super) const CONNECTION: u32 = 1 << 0;
    pub(super) const KEEP_ALIVE: u32 = 1 << 1;
    pub(super) const PROXY_CONNECTION: u32 = 1 << 2;
    pub(super) const TRANSFER_ENCODING: u32 = 1 << 3;
    pub(super) const UPGRADE: u32 = 1 << 4;
    pub(super) const PROXY_AUTHENTICATE: u32 = 1 << 5;
    pub(super) const PROXY_AUTHORIZATION: u32 = 1 << 6;
    pub(super) const TE: u32 = 1 << 7;
    pub(super) const ORIG_PROTO: u32 = 1 << 8;
    pub(super) const PEER_METADATA: u32 = 1 << 9;
    pub(super) const DESTINATION_PORT: u32 = 1 << 10;
    pub(super) const EXPECT: u32 = 1 << 11;
    pub(super) const X_REQUEST_ID: u32 = 1 << 12;
    pub(super) const X_FORWARDED_PROTO: u32 = 1 << 13;
    pub(super) const X_FORWARDED_CLIENT_CERT: u32 = 1 << 14;
    pub(super) const SERVER: u32 = 1 << 15;
    pub(super) const VIA: u32 = 1 << 16;
    pub(super) const HOST: u32 = 1 << 17;
}

/// The bit of `name` in [`bit`], 0 for the names hygiene leaves alone.
fn bit_of(name: &HeaderName) -> u32 {
    match name.as_str() {
        "connection" => bit::CONNECTION,
        "keep-alive" => bit::KEEP_ALIVE,
        "proxy-connection" => bit::PROXY_CONNECTION,
        "transfer-encoding" => bit::TRANSFER_ENCODING,
        "upgrade" => bit::UPGRADE,
        "proxy-authenticate" => bit::PROXY_AUTHENTICATE,
        "proxy-authorization" => bit::PROXY_AUTHORIZATION,
        "te" => bit::TE,
        "x-meshlite-orig-proto" => bit::ORIG_PROTO,
        "x-meshlite-peer" => bit::PEER_METADATA,
        "x-meshlite-port" => bit::DESTINATION_PORT,
        "expect" => bit::EXPECT,
        "x-request-id" => bit::X_REQUEST_ID,
        "x-forwarded-proto" => bit::X_FORWARDED_PROTO,
        "x-forwarded-client-cert" => bit::X_FORWARDED_CLIENT_CERT,
        "server" => bit::SERVER,
        "via" => bit::VIA,
        "host" => bit::HOST,
        _ => 0,
    }
}

/// The [`bit`]s of the names `headers` holds: one pass over its names.
fn present(headers: &HeaderMap) -> u32 {
    headers.keys().fold(0, |found, name| found | bit_of(name))
}

/// Removes `name` when `found` says the map has it.
fn remove_if(headers: &mut HeaderMap, found: u32, bit: u32, name: impl header::AsHeaderName) {
    if found & bit != 0 {
        headers.remove(name);
    }
}

/// Removes hop-by-hop headers, including any named in `Connection`. `te: trailers` is kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let found = present(headers);
    strip_hop_by_hop_found(headers, found);
}

/// [`strip_hop_by_hop`] on a map whose names' [`bit`]s are `found`; returns the [`bit`]s of
/// the names left (read again when `Connection` listed names of its own, which may be any).
fn strip_hop_by_hop_found(headers: &mut HeaderMap, mut found: u32) -> u32 {
    const HOP_BY_HOP: u32 = bit::CONNECTION
        | bit::KEEP_ALIVE
        | bit::PROXY_CONNECTION
        | bit::TRANSFER_ENCODING
        | bit::UPGRADE
        | bit::PROXY_AUTHENTICATE
        | bit::PROXY_AUTHORIZATION
        | bit::TE;
    if found & HOP_BY_HOP == 0 {
        return found;
    }
    if found & bit::CONNECTION != 0
        && let Some(conn) = headers.get(header::CONNECTION)
    {
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
        found = present(headers);
    }
    remove_if(headers, found, bit::KEEP_ALIVE, &KEEP_ALIVE);
    remove_if(headers, found, bit::PROXY_CONNECTION, &PROXY_CONNECTION);
    remove_if(
        headers,
        found,
        bit::TRANSFER_ENCODING,
        header::TRANSFER_ENCODING,
    );
    remove_if(headers, found, bit::UPGRADE, header::UPGRADE);
    remove_if(
        headers,
        found,
        bit::PROXY_AUTHENTICATE,
        header::PROXY_AUTHENTICATE,
    );
    remove_if(
        headers,
        found,
        bit::PROXY_AUTHORIZATION,
        header::PROXY_AUTHORIZATION,
    );
    if found & bit::TE != 0
        && let Some(te) = headers.get(header::TE)
    {
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
            found &= !bit::TE;
        }
    }
    found & !(HOP_BY_HOP & !bit::TE)
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
    let found = present(headers);
    strip_hop_by_hop_keep_upgrade_found(headers, found);
}

/// [`strip_hop_by_hop_keep_upgrade`] on a map whose names' [`bit`]s are `found`; returns the
/// [`bit`]s of the names left.
fn strip_hop_by_hop_keep_upgrade_found(headers: &mut HeaderMap, found: u32) -> u32 {
    let upgrade = headers.get(header::UPGRADE).cloned();
    let mut left = strip_hop_by_hop_found(headers, found);
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        left |= bit::UPGRADE | bit::CONNECTION;
    }
    left
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
    /// Two lower-case hex digits per byte value: one table read per byte, not per digit.
    const HEX_PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [HEX[i >> 4], HEX[i & 0xf]];
            i += 1;
        }
        t
    };
    let mut bits = fastrand::u128(..);
    bits = (bits & !(0xf << 76)) | (0x4 << 76); // version 4
    bits = (bits & !(0x3 << 62)) | (0x2 << 62); // RFC 4122 variant
    let bytes = bits.to_be_bytes();
    let mut out = [b'-'; 36];
    // Where each byte's two digits go: 8-4-4-4-12 digits, dashes at 8, 13, 18 and 23.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    for (byte, at) in bytes.iter().zip(AT) {
        let [hi, lo] = HEX_PAIRS[usize::from(*byte)];
        out[at] = hi;
        out[at + 1] = lo;
    }
    // Only hex digits and dashes: always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Removes the headers only meshlite sidecars may set, so an application cannot spoof them.
pub fn strip_internal(headers: &mut HeaderMap) {
    let found = present(headers);
    strip_internal_found(headers, found);
}

/// [`strip_internal`] on a map whose names' [`bit`]s are `found`.
fn strip_internal_found(headers: &mut HeaderMap, found: u32) {
    remove_if(headers, found, bit::ORIG_PROTO, &ORIG_PROTO);
    remove_if(headers, found, bit::PEER_METADATA, &PEER_METADATA);
}

/// What every forwarded request loses whatever its next hop: hop-by-hop headers (the
/// upgrade handshake kept when `upgrade`), the headers only sidecars may set, and `Expect`
/// where the hop is another proxy (this one answers `100-continue` itself: hyper sends it
/// when the body is read). `found`: the [`bit`]s of the map's names; returns those of the
/// names left.
fn sanitize_request(h: &mut HeaderMap, upgrade: bool, found: u32) -> u32 {
    let found = if upgrade {
        strip_hop_by_hop_keep_upgrade_found(h, found)
    } else {
        strip_hop_by_hop_found(h, found)
    };
    strip_internal_found(h, found);
    remove_if(h, found, bit::DESTINATION_PORT, &DESTINATION_PORT);
    found & !(bit::ORIG_PROTO | bit::PEER_METADATA | bit::DESTINATION_PORT)
}

/// `x-forwarded-proto: proto` unless the request already says (`found`: the [`bit`]s of
/// the map's names).
fn default_forwarded_proto(h: &mut HeaderMap, proto: &'static str, found: u32) {
    if found & bit::X_FORWARDED_PROTO == 0 {
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
}

/// [`ensure_request_id`] without the lookup when `found` says there is no `x-request-id`.
fn ensure_request_id_found(h: &mut HeaderMap, found: u32) {
    if found & bit::X_REQUEST_ID == 0 {
        h.insert(X_REQUEST_ID.clone(), uuid_v4());
    } else {
        ensure_request_id(h);
    }
}

/// An app's request on its way to another sidecar over mutual TLS: sanitised, with a
/// request id, `x-forwarded-proto: http`, this workload's `peer` metadata, the app's
/// original protocol when HTTP/1.1 travels as HTTP/2 (`http1_as_h2`), and the service
/// port when the request's authority has none (`port`).
pub fn to_sidecar(
    h: &mut HeaderMap,
    peer: &HeaderValue,
    upgrade: bool,
    http1_as_h2: bool,
    port: Option<&HeaderValue>,
) {
    let found = sanitize_request(h, upgrade, present(h));
    remove_if(h, found, bit::EXPECT, header::EXPECT);
    ensure_request_id_found(h, found);
    default_forwarded_proto(h, "http", found);
    h.insert(PEER_METADATA.clone(), peer.clone());
    if http1_as_h2 {
        h.insert(ORIG_PROTO.clone(), HeaderValue::from_static("HTTP/1.1"));
    }
    if let Some(port) = port {
        h.insert(DESTINATION_PORT.clone(), port.clone());
    }
}

/// An app's request on its way to a service outside the mesh: sanitised, nothing of the
/// mesh's (no peer metadata), `x-forwarded-proto: http`, and a `Host` from the URI's
/// `authority` when the request has none (the app's own Host is kept).
pub fn to_external(h: &mut HeaderMap, authority: Option<&http::uri::Authority>) {
    let found = sanitize_request(h, false, present(h));
    remove_if(h, found, bit::EXPECT, header::EXPECT);
    default_forwarded_proto(h, "http", found);
    if found & bit::HOST == 0
        && let Some(a) = authority
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        h.insert(header::HOST, v);
    }
}

/// A caller's request on its way to the local app: sanitised, the caller's certificate in
/// `x-forwarded-client-cert` (Istio's SANITIZE_SET: the caller's own claim is never passed
/// on; a plaintext caller, `xfcc` `None`, has no certificate to vouch for),
/// `x-forwarded-proto: https`, a request id.
pub fn to_app(h: &mut HeaderMap, xfcc: Option<&HeaderValue>, upgrade: bool) {
    let found = sanitize_request(h, upgrade, present(h));
    match xfcc {
        Some(xfcc) => {
            h.insert(X_FORWARDED_CLIENT_CERT.clone(), xfcc.clone());
        }
        None => remove_if(
            h,
            found,
            bit::X_FORWARDED_CLIENT_CERT,
            &X_FORWARDED_CLIENT_CERT,
        ),
    }
    default_forwarded_proto(h, "https", found);
    ensure_request_id_found(h, found);
}

/// A response on its way back to the one who asked (the app outbound, the calling sidecar
/// inbound): hop-by-hop headers (the handshake kept when it switches protocols) and internal
/// ones removed, `server` and `via` as the proxy's options say.
pub fn response_to_downstream<B>(resp: &mut http::Response<B>, options: &HeaderOptions) {
    let upgrading = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    to_downstream(
        resp.headers_mut(),
        options.server_name.as_deref(),
        options.via.as_deref(),
        upgrading,
    );
}

/// [`response_to_downstream`] on a header map: `server` replaced by `server_name` (or
/// removed), `via` appended when configured (or removed).
pub fn to_downstream(
    h: &mut HeaderMap,
    server_name: Option<&str>,
    via: Option<&str>,
    upgrading: bool,
) {
    let found = if upgrading {
        strip_hop_by_hop_keep_upgrade_found(h, present(h))
    } else {
        strip_hop_by_hop_found(h, present(h))
    };
    strip_internal_found(h, found);
    match server_name {
        Some(name) => {
            if let Ok(v) = HeaderValue::from_str(name) {
                h.insert(header::SERVER, v);
            }
        }
        None => remove_if(h, found, bit::SERVER, header::SERVER),
    }
    match via {
        Some(via) => {
            if let Ok(v) = HeaderValue::from_str(via) {
                h.append(header::VIA, v);
            }
        }
        None => remove_if(h, found, bit::VIA, header::VIA),
    }
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
        for _ in 0..100 {
            let v = uuid_v4();
            let s = v.to_str().unwrap();
            for (i, c) in s.bytes().enumerate() {
                match i {
                    8 | 13 | 18 | 23 => assert_eq!(c, b'-', "{s}"),
                    _ => assert!(matches!(c, b'0'..=b'9' | b'a'..=b'f'), "{s}"),
                }
            }
        }
    }

    /// Headers an app or a caller might send that no next hop may see as they are.
    fn dirty() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(&PEER_METADATA, HeaderValue::from_static("forged"));
        h.insert(&ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
        h.insert(&DESTINATION_PORT, HeaderValue::from_static("1"));
        h.insert(&X_FORWARDED_CLIENT_CERT, HeaderValue::from_static("forged"));
        h.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        h
    }

    #[test]
    fn to_a_sidecar_the_mesh_headers_are_ours_alone() {
        let mut h = dirty();
        let peer = HeaderValue::from_static("productpage-v1;default;productpage;v1");
        let port = HeaderValue::from_static("9080");
        to_sidecar(&mut h, &peer, false, true, Some(&port));
        assert!(!h.contains_key("x-hop") && !h.contains_key(header::CONNECTION));
        assert!(!h.contains_key(header::EXPECT));
        assert_eq!(h[&PEER_METADATA], peer);
        assert_eq!(h[&ORIG_PROTO], "HTTP/1.1");
        assert_eq!(h[&DESTINATION_PORT], "9080");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert!(h.contains_key(&X_REQUEST_ID));
        let mut h = dirty();
        to_sidecar(&mut h, &peer, false, false, None);
        assert!(!h.contains_key(&ORIG_PROTO) && !h.contains_key(&DESTINATION_PORT));
    }

    #[test]
    fn to_a_service_outside_the_mesh_nothing_of_the_mesh_goes() {
        let mut h = dirty();
        let authority = http::uri::Authority::from_static("api.example.com");
        to_external(&mut h, Some(&authority));
        assert!(!h.contains_key(&PEER_METADATA) && !h.contains_key(&ORIG_PROTO));
        assert!(!h.contains_key(&DESTINATION_PORT) && !h.contains_key(header::EXPECT));
        assert_eq!(h[header::HOST], "api.example.com");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        // The app's own Host is kept.
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("mine"));
        to_external(&mut h, Some(&authority));
        assert_eq!(h[header::HOST], "mine");
    }

    #[test]
    fn to_the_app_the_callers_certificate_replaces_any_claim() {
        let xfcc = HeaderValue::from_static("By=spiffe://a;URI=spiffe://b");
        let mut h = dirty();
        to_app(&mut h, Some(&xfcc), false);
        assert_eq!(h[&X_FORWARDED_CLIENT_CERT], xfcc);
        assert!(!h.contains_key(&PEER_METADATA) && !h.contains_key(&DESTINATION_PORT));
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert!(h.contains_key(&X_REQUEST_ID));
        // Expect is the app's to answer.
        assert!(h.contains_key(header::EXPECT));
        let mut h = dirty();
        to_app(&mut h, None, false);
        assert!(!h.contains_key(&X_FORWARDED_CLIENT_CERT));
    }

    #[test]
    fn to_downstream_server_and_via_are_the_proxys() {
        let mut h = dirty();
        h.insert(header::SERVER, HeaderValue::from_static("app"));
        h.insert(header::VIA, HeaderValue::from_static("1.1 app"));
        to_downstream(&mut h, None, None, false);
        assert!(!h.contains_key(header::SERVER) && !h.contains_key(header::VIA));
        assert!(!h.contains_key(&PEER_METADATA) && !h.contains_key("x-hop"));
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        to_downstream(&mut h, Some("meshlite"), Some("1.1 meshlite"), true);
        assert_eq!(h[header::SERVER], "meshlite");
        assert_eq!(h[header::VIA], "1.1 meshlite");
        assert_eq!(h[header::UPGRADE], "websocket");
    }

    #[test]
    fn a_header_connection_lists_is_removed_and_the_proxys_own_set_again() {
        // Hygiene reads the names once; a name `Connection` lists may be one the hop then
        // sets itself, which must be there at the end.
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-forwarded-proto, x-request-id, host"),
        );
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("ftp"));
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("forged"));
        h.insert(header::HOST, HeaderValue::from_static("elsewhere"));
        let authority = http::uri::Authority::from_static("api.example.com");
        to_external(&mut h, Some(&authority));
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[header::HOST], "api.example.com");
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-request-id, x-forwarded-proto"),
        );
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("forged"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("ftp"));
        to_app(&mut h, None, false);
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_REQUEST_ID].len(), 36);
    }

    #[test]
    fn every_name_hygiene_reads_has_its_own_bit() {
        let names = [
            header::CONNECTION,
            KEEP_ALIVE.clone(),
            PROXY_CONNECTION.clone(),
            header::TRANSFER_ENCODING,
            header::UPGRADE,
            header::PROXY_AUTHENTICATE,
            header::PROXY_AUTHORIZATION,
            header::TE,
            ORIG_PROTO.clone(),
            PEER_METADATA.clone(),
            DESTINATION_PORT.clone(),
            header::EXPECT,
            X_REQUEST_ID.clone(),
            X_FORWARDED_PROTO.clone(),
            X_FORWARDED_CLIENT_CERT.clone(),
            header::SERVER,
            header::VIA,
            header::HOST,
        ];
        let mut all = 0;
        for name in &names {
            let b = bit_of(name);
            assert_eq!(b.count_ones(), 1, "{name}");
            assert_eq!(all & b, 0, "{name}");
            all |= b;
        }
        assert_eq!(bit_of(&HeaderName::from_static("x-other")), 0);
    }
}
