//! What a captured outbound connection speaks, when its service port does not say: the
//! first bytes are read for an HTTP/1 request line, the HTTP/2 preface or a TLS ClientHello
//! (Envoy's HTTP and TLS inspectors, as Istio's protocol selection uses them for ports
//! without a protocol prefix or `appProtocol`).
//!
//! The app may also be waiting for the server to speak first (MySQL, SMTP, ...): a client
//! silent for [`DETECTION_TIMEOUT`] is taken for opaque TCP, so such protocols are delayed
//! by that much and never stall. Bytes read are handed back to be replayed.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::inbound::detect::{Detected, MAX_RECORD, detect};

/// How long the client may stay silent before its connection is treated as opaque TCP:
/// MeshConfig `protocolDetectionTimeout`, 100 ms (Istio's value until it made the default
/// "no timeout"; meshlite keeps it so server-first protocols work without declaring them).
pub const DETECTION_TIMEOUT: Duration = Duration::from_millis(100);

/// The verdict on a connection's first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// An HTTP/1.x request line or the HTTP/2 connection preface.
    Http,
    /// A TLS ClientHello (the app's own TLS: relayed as TCP).
    Tls,
    /// Other bytes, or none before the deadline: opaque TCP.
    Opaque,
    /// The client closed (or failed) before sending anything.
    Closed,
}

/// Reads `io` until its first bytes decide, or until `within` has passed (then: opaque).
/// Returns the verdict and every byte read.
pub async fn sniff<IO: AsyncRead + Unpin>(io: &mut IO, within: Duration) -> (Sniffed, Vec<u8>) {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = Vec::with_capacity(1024);
    loop {
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_) => return (Sniffed::Opaque, buf),
            Ok(Ok(0)) | Ok(Err(_)) => {
                let verdict = if buf.is_empty() {
                    Sniffed::Closed
                } else {
                    Sniffed::Opaque
                };
                return (verdict, buf);
            }
            Ok(Ok(_)) => {}
        }
        match detect(&buf) {
            Some(Detected::PlainHttp) => return (Sniffed::Http, buf),
            Some(Detected::MeshTls | Detected::OtherTls) => return (Sniffed::Tls, buf),
            Some(Detected::Opaque) => return (Sniffed::Opaque, buf),
            None if buf.len() >= MAX_RECORD => return (Sniffed::Opaque, buf),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn sniffed_after(writes: &[&[u8]]) -> (Sniffed, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        for w in writes {
            client.write_all(w).await.unwrap();
        }
        sniff(&mut server, DETECTION_TIMEOUT).await
    }

    #[tokio::test(start_paused = true)]
    async fn http1_request_lines_and_the_h2_preface_are_http() {
        let (v, bytes) = sniffed_after(&[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]).await;
        assert_eq!(v, Sniffed::Http);
        assert!(
            bytes.starts_with(b"GET / "),
            "the bytes read are handed back"
        );
        assert_eq!(
            sniffed_after(&[b"DELETE /x HTTP/1.1\r\n"]).await.0,
            Sniffed::Http
        );
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(sniffed_after(&[preface]).await.0, Sniffed::Http);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_line_in_pieces_waits_for_the_rest() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let sniffing = tokio::spawn(async move { sniff(&mut server, DETECTION_TIMEOUT).await });
        client.write_all(b"PO").await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        client.write_all(b"ST /x HTTP/1.1\r\n").await.unwrap();
        let (v, bytes) = sniffing.await.unwrap();
        assert_eq!(v, Sniffed::Http);
        assert_eq!(&bytes[..4], b"POST");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_hello_is_tls() {
        let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            std::sync::Arc::new(cfg),
            "db.example.com".try_into().unwrap(),
        )
        .unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        assert_eq!(sniffed_after(&[&hello]).await.0, Sniffed::Tls);
    }

    #[tokio::test(start_paused = true)]
    async fn other_bytes_are_opaque_at_once() {
        let start = tokio::time::Instant::now();
        let redis = b"*1\r\n$4\r\nPING\r\n";
        assert_eq!(
            sniffed_after(&[redis]).await,
            (Sniffed::Opaque, redis.to_vec())
        );
        assert_eq!(sniffed_after(&[b"\x00\x01binary"]).await.0, Sniffed::Opaque);
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "no waiting on a clear verdict"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_of_a_server_first_protocol_is_opaque_after_the_deadline() {
        // A MySQL or SMTP client waits for the server's greeting: it writes nothing.
        let (_client, mut server) = tokio::io::duplex(1024);
        let start = tokio::time::Instant::now();
        let (v, bytes) = sniff(&mut server, DETECTION_TIMEOUT).await;
        assert_eq!(v, Sniffed::Opaque);
        assert!(bytes.is_empty());
        assert_eq!(start.elapsed(), DETECTION_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn an_undecided_prefix_is_opaque_at_the_deadline() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GE").await.unwrap();
        let (v, bytes) = sniff(&mut server, DETECTION_TIMEOUT).await;
        assert_eq!((v, bytes.as_slice()), (Sniffed::Opaque, &b"GE"[..]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_closes_at_once_is_closed() {
        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        assert_eq!(
            sniff(&mut server, DETECTION_TIMEOUT).await.0,
            Sniffed::Closed
        );
    }
}
