//! What a new inbound connection speaks, from its first bytes (Envoy's TLS and HTTP
//! inspectors, as Istio's PERMISSIVE mode uses them).
//!
//! A TLS ClientHello whose ALPN offers one of the mesh's protocols (`istio`, `istio-*`) is
//! a sidecar speaking mutual TLS; a ClientHello without them is the app's own TLS; an
//! HTTP/1 request line or the HTTP/2 preface is plaintext HTTP; anything else, or nothing
//! within the detection deadline (a server-first protocol waiting for its banner), is opaque
//! TCP. The parser only reads the ClientHello's framing and extensions; it never allocates
//! beyond the caller's buffer and never panics on any input.

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// A ClientHello offering a mesh ALPN protocol.
    MeshTls,
    /// A ClientHello without one (the application's own TLS).
    OtherTls,
    /// An HTTP/1.x request line or the HTTP/2 connection preface.
    PlainHttp,
    /// Something else, or the client sent nothing yet.
    Opaque,
}

/// The verdict so far on `buf` (every byte received): `None` means more bytes are needed.
pub fn detect(buf: &[u8]) -> Option<Detected> {
    let first = *buf.first()?;
    if first == 0x16 {
        return tls(buf);
    }
    http(buf)
}

/// Longest TLS record a ClientHello may come in (2^14 plus the header).
pub const MAX_RECORD: usize = 16 * 1024 + 5;

fn tls(buf: &[u8]) -> Option<Detected> {
    if buf.len() < 5 {
        return None;
    }
    // Record header: type 0x16, legacy version 0x03 0x0?, length.
    if buf[1] != 0x03 {
        return Some(Detected::Opaque);
    }
    let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if len == 0 || len + 5 > MAX_RECORD {
        return Some(Detected::Opaque);
    }
    if buf.len() < 5 + len {
        return None;
    }
    Some(match client_hello_alpn(&buf[5..5 + len]) {
        Some(true) => Detected::MeshTls,
        // Not parseable as a ClientHello: rustls will say why, if it comes to that.
        Some(false) | None => Detected::OtherTls,
    })
}

/// A cursor over a byte slice that fails (`None`) instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

/// Whether the ClientHello in `record` offers a mesh ALPN protocol; `None` if it is not a
/// well-formed ClientHello.
fn client_hello_alpn(record: &[u8]) -> Option<bool> {
    let mut r = Reader(record);
    if r.u8()? != 1 {
        return None;
    }
    let body_len = r.u24()?;
    let mut h = Reader(r.take(body_len.min(r.0.len()))?);
    h.take(2 + 32)?; // legacy_version, random
    let sid = h.u8()?;
    h.take(sid)?;
    let suites = h.u16()?;
    h.take(suites)?;
    let comp = h.u8()?;
    h.take(comp)?;
    if h.0.is_empty() {
        return Some(false);
    }
    let ext_len = h.u16()?;
    let mut ext = Reader(h.take(ext_len)?);
    while !ext.0.is_empty() {
        let kind = ext.u16()?;
        let len = ext.u16()?;
        let data = ext.take(len)?;
        if kind != 16 {
            continue;
        }
        let mut list = Reader(data);
        let list_len = list.u16()?;
        let mut names = Reader(list.take(list_len)?);
        while !names.0.is_empty() {
            let n = names.u8()?;
            if is_mesh_alpn(names.take(n)?) {
                return Some(true);
            }
        }
        return Some(false);
    }
    Some(false)
}

/// `istio`, `istio-peer-exchange`, `istio-http/1.0`, `istio-http/1.1`, `istio-h2`, and the
/// rest of the `istio-` family (SEMANTICS 3).
pub fn is_mesh_alpn(proto: &[u8]) -> bool {
    proto == b"istio" || proto.starts_with(b"istio-")
}

fn http(buf: &[u8]) -> Option<Detected> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let n = buf.len().min(PREFACE.len());
    if buf[..n] == PREFACE[..n] {
        return (n == PREFACE.len()).then_some(Detected::PlainHttp);
    }
    // An HTTP/1 request line starts with a method token (upper-case letters, as every
    // registered method is) and a space.
    const MAX_METHOD: usize = 20;
    for (i, &b) in buf.iter().enumerate().take(MAX_METHOD + 1) {
        match b {
            b' ' if i > 0 => return Some(Detected::PlainHttp),
            b'A'..=b'Z' | b'-' | b'_' if i < MAX_METHOD => {}
            _ => return Some(Detected::Opaque),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello record as rustls writes it, offering `alpn`.
    fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let mut conn = rustls::ClientConnection::new(
            std::sync::Arc::new(cfg),
            "reviews.default.svc.cluster.local".try_into().unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn mesh_tls_is_told_from_app_tls_by_alpn() {
        assert_eq!(
            detect(&client_hello(&[b"istio-http/1.1"])),
            Some(Detected::MeshTls)
        );
        assert_eq!(
            detect(&client_hello(&[b"h2", b"istio-h2"])),
            Some(Detected::MeshTls)
        );
        assert_eq!(detect(&client_hello(&[b"istio"])), Some(Detected::MeshTls));
        assert_eq!(
            detect(&client_hello(&[b"h2", b"http/1.1"])),
            Some(Detected::OtherTls)
        );
        assert_eq!(detect(&client_hello(&[])), Some(Detected::OtherTls));
    }

    #[test]
    fn a_partial_client_hello_asks_for_more() {
        let hello = client_hello(&[b"istio-h2"]);
        for cut in [1, 4, 5, hello.len() - 1] {
            assert_eq!(detect(&hello[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn plaintext_http_and_opaque_bytes() {
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Some(Detected::PlainHttp));
        assert_eq!(detect(b"POST "), Some(Detected::PlainHttp));
        assert_eq!(detect(b"GE"), None);
        assert_eq!(
            detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Detected::PlainHttp)
        );
        assert_eq!(detect(b"PRI * HTTP/2"), None);
        assert_eq!(detect(b"\x00\x00\x00\x01"), Some(Detected::Opaque));
        assert_eq!(detect(b"get / HTTP/1.1"), Some(Detected::Opaque));
        assert_eq!(
            detect(b"*1\r\n$4\r\nPING\r\n"),
            Some(Detected::Opaque),
            "redis"
        );
        assert_eq!(detect(&[b'A'; 40]), Some(Detected::Opaque));
        assert_eq!(detect(b""), None);
    }

    #[test]
    fn malformed_tls_never_panics() {
        assert_eq!(detect(&[0x16, 0x01, 0, 0, 1, 1]), Some(Detected::Opaque));
        assert_eq!(
            detect(&[0x16, 0x03, 0x01, 0xff, 0xff]),
            Some(Detected::Opaque)
        );
        let hello = client_hello(&[b"istio-h2"]);
        // Every truncation of the inner lengths, with the record length kept consistent.
        for cut in 6..hello.len() {
            let mut h = hello[..cut].to_vec();
            let len = (cut - 5) as u16;
            h[3..5].copy_from_slice(&len.to_be_bytes());
            let _ = detect(&h);
        }
        for b in 0..=255u8 {
            let mut h = hello.clone();
            h[9] = b;
            h[45] = b;
            let _ = detect(&h);
        }
    }
}
