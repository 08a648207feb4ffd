//! HTTP/1.1 as apps really speak it to their sidecar, and as attackers and broken clients do.

use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use meshlite_tests::clients::{self, Http1Client, boxed, empty, h1_request};
use meshlite_tests::deadline::within;
use meshlite_tests::mesh::Mesh;
use meshlite_tests::payload::{PatternBody, PatternCheck};
use meshlite_tests::wire::{Closed, RawConn};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const READ: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_carries_several_requests_on_one_connection() {
    let mesh = Mesh::start().await;
    let mut conn = Http1Client::connect(mesh.outbound()).await;
    for i in 0..5 {
        let reply = conn
            .exchange(h1_request("GET", "app", "/headers").body(empty()).unwrap())
            .await;
        assert_eq!(reply.status, 200, "request {i}");
        assert!(
            !conn.is_closed(),
            "the sidecar closed a keep-alive connection after request {i}"
        );
    }
    assert_eq!(mesh.apps.alpha.requests(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_is_delivered_intact() {
    let mesh = Mesh::start().await;
    // Hand-framed chunks, echoed back.
    let mut raw = RawConn::connect(mesh.outbound()).await;
    raw.send(
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n7;ext=1\r\n, world\r\n1\r\n!\r\n0\r\n\r\n",
    )
    .await
    .expect("send chunked request");
    let response = raw.read_response(READ).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), "hello, world!");

    // A megabyte in many chunks of unknown total length.
    let len = 1024 * 1024 + 7;
    let request = h1_request("POST", "app", "/sink")
        .body(boxed(PatternBody::streamed(len)))
        .unwrap();
    let reply = Http1Client::connect(mesh.outbound())
        .await
        .exchange(request)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let report = reply.json();
    assert_eq!(
        report["received"], len,
        "the app received a different length"
    );
    assert!(
        report["first_mismatch"].is_null(),
        "the body was corrupted: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_of_unknown_length_arrives_intact() {
    let mesh = Mesh::start().await;
    let len = 300_001;
    let mut raw = RawConn::connect(mesh.outbound()).await;
    raw.send(format!("GET /source?bytes={len} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let response = raw.read_response(READ).await;
    assert_eq!(response.status, 200);
    let mut check = PatternCheck::default();
    check.feed(&response.body);
    assert!(
        check.is_intact(len),
        "received {} bytes, first mismatch {:?}",
        check.received,
        check.first_mismatch
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_an_interim_response_then_the_answer() {
    let mesh = Mesh::start().await;
    let mut raw = RawConn::connect(mesh.outbound()).await;
    raw.send(
        b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .expect("send head");
    // A client that honours Expect waits for the 100 before sending its body.
    let interim = raw.read_response(READ).await;
    assert_eq!(
        interim.status, 100,
        "expected 100 Continue before the body is sent"
    );
    raw.send(b"hello world").await.expect("send body");
    let response = raw.read_response(READ).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), "hello world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_echoes_messages_both_ways() {
    let mesh = Mesh::start().await;
    let stream = tokio::net::TcpStream::connect(mesh.outbound())
        .await
        .expect("connect");
    let (mut ws, response) = within(
        "WebSocket handshake",
        READ,
        tokio_tungstenite::client_async("ws://app/ws", stream),
    )
    .await
    .expect("WebSocket handshake through the sidecars");
    assert_eq!(response.status(), 101);
    for message in [
        Message::text("hello through the mesh"),
        Message::binary(vec![0u8, 1, 2, 254, 255]),
        Message::text("x".repeat(100_000)),
    ] {
        ws.send(message.clone()).await.expect("send");
        let echoed = within("echo", READ, ws.next())
            .await
            .expect("stream open")
            .expect("message");
        assert_eq!(echoed, message);
    }
    ws.close(None).await.expect("close");
    let rest = within("close handshake", READ, async {
        let mut rest = Vec::new();
        while let Some(Ok(message)) = ws.next().await {
            rest.push(message);
        }
        rest
    })
    .await;
    assert!(
        rest.iter().all(Message::is_close),
        "unexpected messages after close: {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400() {
    let mesh = Mesh::start().await;
    let cases: [(&str, &[u8]); 5] = [
        ("a header line without a colon", b"GET / HTTP/1.1\r\nHost: app\r\nBad Header Line\r\n\r\n"),
        ("a control character in a header name", b"GET / HTTP/1.1\r\nHost: app\r\nX\x01Y: z\r\n\r\n"),
        (
            "two different content-lengths (smuggling)",
            b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        ),
        ("a non-numeric content-length", b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: abc\r\n\r\n"),
        ("a request line with spaces in the target", b"GET /a b c HTTP/1.1\r\nHost: app\r\n\r\n"),
    ];
    for (what, bytes) in cases {
        let mut raw = RawConn::connect(mesh.outbound()).await;
        raw.send(bytes).await.expect("send");
        let response = raw
            .try_read_response(READ)
            .await
            .unwrap_or_else(|| panic!("{what}: the connection closed without a 400 response"));
        assert_eq!(
            response.status,
            400,
            "{what}: got {} {}",
            response.status,
            response.text()
        );
    }
    assert_eq!(
        mesh.apps.alpha.requests(),
        0,
        "a malformed request reached the app"
    );
    let reply = clients::get(mesh.outbound(), "app", "/headers").await;
    assert_eq!(
        reply.status, 200,
        "the sidecar must keep serving after malformed input"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_the_limit_get_431_and_headers_under_it_pass() {
    let mesh = Mesh::builder()
        .client(|spec, _| spec.limits.max_header_bytes = Some(8192))
        .start()
        .await;

    let under = format!(
        "GET /headers HTTP/1.1\r\nHost: app\r\nX-Big: {}\r\n\r\n",
        "a".repeat(6000)
    );
    let mut raw = RawConn::connect(mesh.outbound()).await;
    raw.send(under.as_bytes()).await.expect("send");
    let response = raw.read_response(READ).await;
    assert_eq!(
        response.status, 200,
        "a 6 KB header is under an 8 KiB limit"
    );

    let over = format!(
        "GET /headers HTTP/1.1\r\nHost: app\r\nX-Big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let mut raw = RawConn::connect(mesh.outbound()).await;
    // The proxy may stop reading once the limit is passed; the status still has to arrive.
    let _ = raw.send(over.as_bytes()).await;
    let response = raw
        .try_read_response(READ)
        .await
        .expect("the connection closed without a 431 response");
    assert_eq!(response.status, 431, "{}", response.text());
    assert_eq!(
        mesh.apps.alpha.requests(),
        1,
        "only the request under the limit may reach the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_off_after_the_header_read_timeout() {
    let mesh = Mesh::builder()
        .client(|spec, _| spec.limits.header_read_timeout = Some("1s".to_string()))
        .start()
        .await;
    let mut raw = RawConn::connect(mesh.outbound()).await;
    raw.send(b"GET /headers HTTP/1.1\r\nHost: app\r\nX-Slow: ")
        .await
        .expect("send");
    // One byte every 100 ms, never finishing the head; 150 rounds is 15 s, far past the 1 s limit.
    let mut closed = false;
    for _ in 0..150 {
        if raw.send(b"a").await.is_err() || raw.is_closed_now().await {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !closed {
        closed = matches!(
            raw.wait_closed(Duration::from_secs(1)).await,
            Closed::Yes { .. }
        );
    }
    assert!(
        closed,
        "a client trickling its headers was still connected 15 s after a 1 s header_read_timeout"
    );
    assert_eq!(
        mesh.apps.alpha.requests(),
        0,
        "the unfinished request must not reach the app"
    );
    let reply = clients::get(mesh.outbound(), "app", "/headers").await;
    assert_eq!(reply.status, 200, "other clients are still served");
}

/// Bodies that stream in both directions at once are relayed without waiting for either end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echo_streams_back_while_the_request_is_still_being_sent() {
    let mesh = Mesh::start().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    let body =
        http_body_util::StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| {
                (
                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b)),
                    rx,
                )
            })
        }));
    let mut conn = Http1Client::connect(mesh.outbound()).await;
    let request = h1_request("POST", "app", "/echo")
        .body(boxed(body))
        .unwrap();
    tx.send(bytes::Bytes::from_static(b"ping-1")).await.unwrap();
    let response = within("response head", READ, conn.send(request))
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    for i in 1..=3 {
        if i > 1 {
            tx.send(bytes::Bytes::from(format!("ping-{i}")))
                .await
                .unwrap();
        }
        let frame = within("echoed chunk", READ, body.frame())
            .await
            .expect("frame")
            .expect("ok");
        assert_eq!(frame.into_data().unwrap(), format!("ping-{i}").as_bytes());
    }
    drop(tx);
    let rest = within("end of echo", READ, body.collect())
        .await
        .expect("body");
    assert!(rest.to_bytes().is_empty());
}

const RESTING: &str = "meshlite_downstream_connections_resting";

/// How many of the client sidecar's downstream connections rest with their buffers given back.
async fn resting(mesh: &Mesh) -> f64 {
    meshlite_tests::prometheus::samples(&mesh.client.metrics_text().await, RESTING)
        .first()
        .map_or(-1.0, |s| s.value)
}

/// Waits until `count` connections rest (a connection gives its buffers back within a second
/// of going quiet).
async fn until_resting(mesh: &Mesh, count: f64, what: &str) {
    mesh.client
        .metric_sample(RESTING, what, |s| s.value == count)
        .await;
}

/// A keep-alive connection that goes quiet gives hyper's buffers back; what the client sends
/// next (even two requests at once, or a head split across writes) is served on the same
/// connection, and a request body or a response still being sent keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_connection_gives_its_buffers_back_and_loses_nothing() {
    let mesh = Mesh::start().await;
    // A small receive buffer: a response of a few tens of KiB not read fills the sidecar's
    // socket, and hyper still holds its end when the app's body has ended.
    let mut raw = RawConn::connect_with_recv_buffer(mesh.outbound(), 4096).await;
    let get = b"GET /headers HTTP/1.1\r\nHost: app\r\n\r\n";
    raw.send(get).await.expect("send");
    assert_eq!(raw.read_response(READ).await.status, 200);
    until_resting(&mesh, 1.0, "the quiet connection at rest").await;

    // Two requests in one write wake it: both answered, in order.
    raw.send(b"GET /headers HTTP/1.1\r\nHost: app\r\nX-N: 1\r\n\r\nGET /status/201 HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .expect("send two");
    assert_eq!(raw.read_response(READ).await.status, 200);
    assert_eq!(raw.read_response(READ).await.status, 201);
    until_resting(&mesh, 1.0, "at rest again").await;

    // A head split across writes, the second long after the first.
    raw.send(b"GET /headers HTTP/1.1\r\n").await.expect("send");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    raw.send(b"Host: app\r\n\r\n").await.expect("send");
    assert_eq!(raw.read_response(READ).await.status, 200);
    until_resting(&mesh, 1.0, "at rest after the split head").await;

    // A body that pauses past the rest delay: the connection keeps reading it.
    raw.send(b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .expect("send half a body");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        resting(&mesh).await,
        0.0,
        "a connection reading a request body gave its buffers back"
    );
    raw.send(b"world").await.expect("send the rest");
    let echoed = raw.read_response(READ).await;
    assert_eq!(echoed.status, 200, "{}", echoed.text());
    assert_eq!(echoed.text(), "helloworld");

    // Responses larger than the socket buffers, not read for a while: nothing of them is
    // lost, whether the app's body ended before the pause (hyper still holds the tail) or
    // is still streaming.
    for len in [96 * 1024, 8 * 1024 * 1024] {
        raw.send(format!("GET /source?bytes={len} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let big = raw.read_response(READ).await;
        assert_eq!(big.status, 200);
        let mut check = PatternCheck::default();
        check.feed(&big.body);
        assert_eq!(
            (check.received, check.first_mismatch),
            (len as u64, None),
            "a response of {len} bytes arrived cut or changed"
        );
    }
    raw.send(get).await.expect("send");
    assert_eq!(raw.read_response(READ).await.status, 200);
    until_resting(&mesh, 1.0, "at rest after the large response").await;
    assert_eq!(mesh.apps.alpha.requests(), 8);

    // A connection at rest that the client closes is gone.
    drop(raw);
    until_resting(&mesh, 0.0, "none at rest once the client closed").await;
}
