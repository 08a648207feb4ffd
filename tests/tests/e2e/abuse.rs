//! Hostile input from an app or a peer, sent with raw sockets and hand-made HTTP/2 frames to
//! real sidecars: every request-smuggling shape is refused (or framed by Transfer-Encoding and
//! the connection closed), nothing smuggled reaches the app, a trickled body is cut with 408,
//! HTTP/2 abuse is refused per stream or answered with GOAWAY, and the sidecar keeps serving
//! normal traffic afterwards.

use meshlite_tests::clients;
use meshlite_tests::mesh::Mesh;
use meshlite_tests::wire::{Closed, RawConn};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const H: &str = "Host: app\r\n";

/// Sends `bytes` on a new connection; the status of the first response (0 when none) and
/// whether the connection was closed right after it.
async fn exchange(mesh: &Mesh, bytes: &[u8]) -> (u16, bool) {
    let mut raw = RawConn::connect(mesh.outbound()).await;
    let _ = raw.send(bytes).await;
    let status = raw
        .try_read_response(Duration::from_secs(10))
        .await
        .map_or(0, |r| r.status);
    let closed = matches!(
        raw.wait_closed(Duration::from_secs(5)).await,
        Closed::Yes { .. }
    );
    (status, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_shapes_are_refused_and_nothing_smuggled_reaches_the_app() {
    let mesh = Mesh::start().await;
    let smuggled = format!("GET /smuggled HTTP/1.1\r\n{H}\r\n");
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "Content-Length then Transfer-Encoding",
            format!(
                "POST / HTTP/1.1\r\n{H}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            200,
        ),
        (
            "Transfer-Encoding then Content-Length",
            format!(
                "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            200,
        ),
        (
            "duplicate Content-Length",
            format!("POST / HTTP/1.1\r\n{H}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            400,
        ),
        (
            "Content-Length list",
            format!("POST / HTTP/1.1\r\n{H}Content-Length: 5, 6\r\n\r\nhello!"),
            400,
        ),
        (
            "signed Content-Length",
            format!("POST / HTTP/1.1\r\n{H}Content-Length: +5\r\n\r\nhello"),
            400,
        ),
        (
            "overflowing Content-Length",
            format!("POST / HTTP/1.1\r\n{H}Content-Length: 99999999999999999999999\r\n\r\nx"),
            400,
        ),
        (
            "bad chunk size",
            format!(
                "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
            400,
        ),
        (
            "overflowing chunk size",
            format!(
                "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nx\r\n0\r\n\r\n"
            ),
            400,
        ),
        (
            "oversized chunk extension",
            format!(
                "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n5;{}\r\nhello\r\n0\r\n\r\n",
                "a".repeat(70_000)
            ),
            400,
        ),
        (
            "transfer coding before chunked",
            format!(
                "POST / HTTP/1.1\r\n{H}Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            501,
        ),
        (
            "chunked not final",
            format!(
                "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            400,
        ),
        (
            "unknown transfer coding",
            format!(
                "POST / HTTP/1.1\r\n{H}Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            400,
        ),
        (
            "bare LF line ends",
            "GET / HTTP/1.1\nHost: app\n\n".to_string(),
            400,
        ),
        (
            "bare CR in a value",
            format!("GET / HTTP/1.1\r\n{H}X-A: a\rb\r\n\r\n"),
            400,
        ),
        (
            "NUL in a value",
            format!("GET / HTTP/1.1\r\n{H}X-A: a\u{0}b\r\n\r\n"),
            400,
        ),
        (
            "control byte in a name",
            format!("GET / HTTP/1.1\r\n{H}X\u{1}A: b\r\n\r\n"),
            400,
        ),
        (
            "obs-fold",
            format!("GET / HTTP/1.1\r\n{H}X-A: a\r\n b\r\n\r\n"),
            400,
        ),
        (
            "whitespace before the colon",
            "GET / HTTP/1.1\r\nHost : app\r\n\r\n".to_string(),
            400,
        ),
        ("HTTP/0.9", "GET /\r\n\r\n".to_string(), 400),
        ("HTTP/1.2", format!("GET / HTTP/1.2\r\n{H}\r\n"), 400),
        (
            "two Host headers",
            "GET / HTTP/1.1\r\nHost: app\r\nHost: other\r\n\r\n".to_string(),
            400,
        ),
        (
            "absolute form naming another authority",
            format!("GET http://other.example/ HTTP/1.1\r\n{H}\r\n"),
            400,
        ),
        (
            "request line too long",
            format!("GET /{} HTTP/1.1\r\n{H}\r\n", "a".repeat(70_000)),
            431,
        ),
        (
            "too many headers",
            format!(
                "GET / HTTP/1.1\r\n{H}{}\r\n",
                (0..200)
                    .map(|i| format!("X-{i}: v\r\n"))
                    .collect::<String>()
            ),
            431,
        ),
        (
            "head too large",
            format!("GET / HTTP/1.1\r\n{H}X-Big: {}\r\n\r\n", "v".repeat(70_000)),
            431,
        ),
    ];
    for (what, bytes, status) in &cases {
        let (got, closed) = exchange(&mesh, bytes.as_bytes()).await;
        assert_eq!(got, *status, "{what}: expected {status}, got {got}");
        assert!(closed, "{what}: the connection must be closed after it");
    }
    // A body on GET stays a body (framed by its Content-Length), never a second request.
    let body = smuggled.as_bytes();
    let get_body = format!(
        "GET / HTTP/1.1\r\n{H}Content-Length: {}\r\n\r\n{smuggled}",
        body.len()
    );
    let mut raw = RawConn::connect(mesh.outbound()).await;
    raw.send(get_body.as_bytes()).await.expect("send");
    assert_eq!(raw.read_response(Duration::from_secs(10)).await.status, 200);
    let targets = mesh.apps.alpha.targets();
    assert!(
        !targets.iter().any(|t| t.contains("smuggled")),
        "a smuggled request reached the app: {targets:?}"
    );
    assert!(
        !targets.iter().any(|t| t.contains("other.example")),
        "an absolute-form target was routed: {targets:?}"
    );
    let reply = clients::get(mesh.outbound(), "app", "/headers").await;
    assert_eq!(
        reply.status,
        200,
        "the sidecar still serves: {}",
        reply.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_body_is_cut_with_408_while_normal_traffic_flows() {
    let mesh = Mesh::start().await;
    let mut slow = tokio::net::TcpStream::connect(mesh.outbound())
        .await
        .expect("connect");
    slow.write_all(
        format!("POST /upload HTTP/1.1\r\n{H}Content-Length: 100000\r\n\r\n").as_bytes(),
    )
    .await
    .expect("head");
    // One byte every 500 ms: far under the default 1 KiB/s; meanwhile others are served.
    let mut answer = Vec::new();
    let started = tokio::time::Instant::now();
    let mut normal = 0;
    while started.elapsed() < Duration::from_secs(25) {
        if slow.write_all(b"x").await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(500), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        let reply = clients::get(mesh.outbound(), "app", "/").await;
        assert_eq!(reply.status, 200, "normal traffic keeps flowing");
        normal += 1;
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "the trickle gets 408, got {text:?}"
    );
    assert!(
        normal >= 5,
        "normal requests were served meanwhile: {normal}"
    );
    // Both sidecars time the body (the server's from the client sidecar's relay of the same
    // trickle); whichever runs out first cuts it and flags its report SI (when the server
    // does, the client relays its 408 and reports it unflagged).
    let cut = |text: &str| {
        meshlite_tests::prometheus::samples(text, "istio_requests_total")
            .iter()
            .any(|s| s.label("response_code") == "408" && s.label("response_flags") == "SI")
    };
    let deadline = tokio::time::Instant::now() + meshlite_tests::deadline::SOON;
    loop {
        let (client, server) = (
            mesh.client.metrics_text().await,
            mesh.server.metrics_text().await,
        );
        if cut(&client) || cut(&server) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sidecar reported the 408 flagged SI:\n{client}\n{server}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP/2 frame: 9-byte header then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small frame");
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK "literal header field without indexing, new name" for short strings.
fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in headers {
        out.push(0x00);
        out.push(u8::try_from(n.len()).expect("short name"));
        out.extend_from_slice(n.as_bytes());
        out.push(u8::try_from(v.len()).expect("short value"));
        out.extend_from_slice(v.as_bytes());
    }
    out
}

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

/// An h2c connection to the sidecar with the preface and an empty SETTINGS sent.
async fn h2c(mesh: &Mesh) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(mesh.outbound())
        .await
        .expect("connect");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    s.write_all(&frame(SETTINGS, 0, 0, &[]))
        .await
        .expect("settings");
    s
}

/// Reads frames for up to `within`: the (type, stream, first payload bytes) of each, or
/// until the connection closes.
async fn frames(s: &mut tokio::net::TcpStream, within: Duration) -> Vec<(u8, u32, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            out.push((buf[3], stream, buf[9..9 + len.min(8)].to_vec()));
            buf.drain(..9 + len);
        }
    }
    out
}

const BASE: [(&str, &str); 4] = [
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "app"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_abuse_is_refused_and_the_sidecar_stays_healthy() {
    let mesh = Mesh::start().await;
    let served = mesh.apps.alpha.requests();
    // Malformed requests, one stream each: refused (RST_STREAM, or GOAWAY for what breaks
    // the connection's header state), never forwarded.
    let malformed: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no :method", BASE[1..].to_vec()),
        (
            "pseudo-header after a regular one",
            vec![
                (":method", "GET"),
                ("x-a", "1"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "app"),
            ],
        ),
        (
            "unknown pseudo-header",
            [&BASE[..], &[(":foo", "x")]].concat(),
        ),
        (
            "connection-specific header",
            [&BASE[..], &[("connection", "keep-alive")]].concat(),
        ),
        (
            "transfer-encoding",
            [&BASE[..], &[("transfer-encoding", "chunked")]].concat(),
        ),
        (
            "te other than trailers",
            [&BASE[..], &[("te", "gzip")]].concat(),
        ),
        (
            "CRLF in a value",
            [&BASE[..], &[("x-a", "a\r\nx-b: b")]].concat(),
        ),
        ("upper-case name", [&BASE[..], &[("X-Upper", "a")]].concat()),
    ];
    for (what, headers) in malformed {
        let mut s = h2c(&mesh).await;
        s.write_all(&frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &hpack(&headers),
        ))
        .await
        .expect("headers");
        let got = frames(&mut s, Duration::from_secs(3)).await;
        assert!(
            got.iter()
                .any(|(t, id, _)| (*t == RST_STREAM && *id == 1) || *t == GOAWAY),
            "{what}: refused with RST_STREAM or GOAWAY, got {got:?}"
        );
        assert!(
            !got.iter().any(|(t, id, _)| *t == HEADERS && *id == 1),
            "{what}: answered"
        );
    }
    // content-length disagreeing with DATA.
    let mut s = h2c(&mesh).await;
    let post = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "app"),
        ("content-length", "10"),
    ];
    s.write_all(&frame(HEADERS, END_HEADERS, 1, &hpack(&post)))
        .await
        .expect("headers");
    s.write_all(&frame(0, END_STREAM, 1, b"abc"))
        .await
        .expect("data");
    let got = frames(&mut s, Duration::from_secs(3)).await;
    assert!(
        got.iter().any(|(t, _, _)| *t == RST_STREAM || *t == GOAWAY),
        "{got:?}"
    );

    // CONTINUATION flood: cut once the header block passes the size limit.
    let mut s = h2c(&mesh).await;
    s.write_all(&frame(HEADERS, END_STREAM, 1, &hpack(&BASE)))
        .await
        .expect("headers");
    let pad = "v".repeat(100);
    let mut sent = 0;
    for i in 0..5000 {
        let name = format!("x-pad-{i}");
        let block = hpack(&[(name.as_str(), pad.as_str())]);
        if s.write_all(&frame(CONTINUATION, 0, 1, &block))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    let got = frames(&mut s, Duration::from_secs(3)).await;
    assert!(
        sent < 5000 || got.iter().any(|(t, _, _)| *t == GOAWAY),
        "the CONTINUATION flood was never cut ({sent} frames accepted): {got:?}"
    );

    // Rapid reset: GOAWAY past the budget; the reset streams never reach the app.
    let mut s = h2c(&mesh).await;
    let mut opened = 0;
    for id in (1..4000u32).step_by(2) {
        let mut batch = frame(HEADERS, END_STREAM | END_HEADERS, id, &hpack(&BASE));
        batch.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        if s.write_all(&batch).await.is_err() {
            break;
        }
        opened += 1;
    }
    let got = frames(&mut s, Duration::from_secs(3)).await;
    let goaway = got.iter().find(|(t, _, _)| *t == GOAWAY);
    assert!(
        goaway.is_some() || opened < 2000,
        "rapid reset was never stopped: {got:?}"
    );
    if let Some((_, _, payload)) = goaway
        && payload.len() >= 8
    {
        let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        assert_eq!(code, 0xb, "GOAWAY ENHANCE_YOUR_CALM");
    }
    let reached = mesh.apps.alpha.requests() - served;
    assert!(
        reached < 100,
        "cancelled streams were sent upstream: {reached} of {opened}"
    );

    // And the sidecar still serves both protocols.
    let reply = clients::get(mesh.outbound(), "app", "/headers").await;
    assert_eq!(reply.status, 200);
}
