//! Protocols beyond HTTP/1.1: h2c with prior knowledge, gRPC with trailers, opaque TCP.

use meshlite_tests::clients::{H2cClient, empty, h2_request};
use meshlite_tests::deadline::within;
use meshlite_tests::grpc::{self, ECHO_TRAILER, FAILING_MESSAGE, SEEN_TE_HEADER};
use meshlite_tests::mesh::{DB, DB_PORT, ECHO, ECHO_PORT, Mesh, OTHER, OTHER_PORT};
use meshlite_tests::payload::{CHUNK, PatternCheck, chunk_at};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CALL: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_prior_knowledge_client_is_served_and_streams_are_routed_separately() {
    let mesh = Mesh::start().await;
    let client = H2cClient::connect(mesh.outbound()).await;
    let other = format!("{OTHER}:{OTHER_PORT}");
    // Two concurrent streams on one connection, to two services.
    let (mut a, mut b) = (client.clone(), client.clone());
    let (to_app, to_other) = tokio::join!(
        a.exchange(h2_request("GET", "app", "/headers").body(empty()).unwrap()),
        b.exchange(h2_request("GET", &other, "/headers").body(empty()).unwrap()),
    );
    for (reply, app) in [(to_app, "alpha"), (to_other, "beta")] {
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            reply.version,
            http::Version::HTTP_2,
            "the sidecar must answer h2c in HTTP/2"
        );
        assert_eq!(reply.json()["app"], app);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_carries_the_reply_and_its_trailers() {
    let mesh = Mesh::start().await;
    let authority = format!("{ECHO}:{ECHO_PORT}");
    let response = within(
        "gRPC call",
        CALL,
        grpc::say(mesh.outbound(), &authority, "hello mesh"),
    )
    .await
    .unwrap_or_else(|status| panic!("gRPC call failed: {status:?}"));
    let metadata = response.metadata().clone();
    let reply = response.into_inner();
    assert_eq!(reply.message, "hello mesh");
    assert_eq!(reply.served_by, "grpc-echo");
    assert_eq!(
        metadata.get(ECHO_TRAILER).and_then(|v| v.to_str().ok()),
        Some("kept"),
        "the server's custom trailer must reach the client; metadata: {metadata:?}"
    );
    assert_eq!(
        metadata.get(SEEN_TE_HEADER).and_then(|v| v.to_str().ok()),
        Some("trailers"),
        "gRPC servers need `te: trailers`; the sidecars must pass it on"
    );

    // The FQDN routes too.
    let fqdn = format!("{ECHO}.default.svc.cluster.local:{ECHO_PORT}");
    let response = within(
        "gRPC call by FQDN",
        CALL,
        grpc::say(mesh.outbound(), &fqdn, "by fqdn"),
    )
    .await;
    assert_eq!(
        response.expect("gRPC call by FQDN").into_inner().message,
        "by fqdn"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_error_status_reaches_the_client() {
    let mesh = Mesh::start().await;
    let authority = format!("{ECHO}:{ECHO_PORT}");
    let status = within(
        "gRPC call",
        CALL,
        grpc::say(mesh.outbound(), &authority, FAILING_MESSAGE),
    )
    .await
    .expect_err("the server answers NOT_FOUND");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "no greeting named fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_bytes_are_echoed_through_the_tunnel() {
    let mesh = Mesh::start().await;
    let listener = mesh.client.tcp_listener(DB, DB_PORT);
    for round in 0..2 {
        let stream = tokio::net::TcpStream::connect(listener)
            .await
            .expect("connect to tcp listener");
        let (mut read, mut write) = stream.into_split();
        let len: u64 = 1024 * 1024 + 3;
        let writer = tokio::spawn(async move {
            let mut sent = 0u64;
            while sent < len {
                let n = (len - sent).min(CHUNK as u64) as usize;
                write.write_all(&chunk_at(sent, n)).await?;
                sent += n as u64;
            }
            write.shutdown().await
        });
        let mut check = PatternCheck::default();
        within("the echo to come back and close", CALL, async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = read.read(&mut buf).await.expect("read echo");
                if n == 0 {
                    break;
                }
                check.feed(&buf[..n]);
            }
        })
        .await;
        writer
            .await
            .expect("writer task")
            .expect("write through tunnel");
        assert!(
            check.is_intact(len),
            "round {round}: echoed {} of {len} bytes, first mismatch {:?}",
            check.received,
            check.first_mismatch
        );
    }
    assert_eq!(
        mesh.apps.tcp.connections(),
        2,
        "each client connection is one app connection"
    );
}
