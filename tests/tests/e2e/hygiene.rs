//! Header hygiene: what a proxy must not pass on, and what it adds.

use crate::field_text;
use meshlite_tests::apps::APP_SERVER_HEADER;
use meshlite_tests::clients::{self, Http1Client, empty, h1_request};
use meshlite_tests::mesh::Mesh;
use meshlite_tests::wire::RawConn;
use std::time::Duration;

/// The values of request header `name` the app reported seeing.
fn seen(description: &serde_json::Value, name: &str) -> Vec<String> {
    description["headers"][name]
        .as_array()
        .map(|values| {
            values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let mesh = Mesh::start().await;
    let mut raw = RawConn::connect(mesh.outbound()).await;
    raw.send(
        b"GET /headers HTTP/1.1\r\n\
          Host: app\r\n\
          Connection: keep-alive, X-Drop-Me\r\n\
          Keep-Alive: timeout=30\r\n\
          Proxy-Connection: keep-alive\r\n\
          TE: trailers, deflate\r\n\
          Upgrade: foo/1\r\n\
          X-Drop-Me: nominated by Connection\r\n\
          X-Keep-Me: end-to-end\r\n\
          \r\n",
    )
    .await
    .expect("send");
    let response = raw.read_response(Duration::from_secs(15)).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let description: serde_json::Value = serde_json::from_slice(&response.body).expect("app JSON");

    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
        "x-drop-me",
    ] {
        assert!(
            seen(&description, name).is_empty(),
            "the app received hop-by-hop header {name}: {:?}",
            seen(&description, name)
        );
    }
    let te = seen(&description, "te");
    assert!(
        te.is_empty() || te == ["trailers"],
        "only `te: trailers` may be forwarded, the app saw {te:?}"
    );
    assert_eq!(
        seen(&description, "x-keep-me"),
        ["end-to-end"],
        "end-to-end headers must be forwarded"
    );

    // And on the way back: the app's keep-alive and server headers stay inside the mesh.
    assert_eq!(
        response.header("keep-alive"),
        None,
        "the app's keep-alive header leaked"
    );
    assert_ne!(
        response.header("server"),
        Some(APP_SERVER_HEADER),
        "the app's server header leaked"
    );
    assert_eq!(
        response.header("x-served-by"),
        Some("alpha"),
        "ordinary response headers are kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_generated_when_absent_and_kept_when_present() {
    let mesh = Mesh::start().await;
    let mut conn = Http1Client::connect(mesh.outbound()).await;
    let mut generated = Vec::new();
    for _ in 0..2 {
        let reply = conn
            .exchange(h1_request("GET", "app", "/headers").body(empty()).unwrap())
            .await;
        let ids = seen(&reply.json(), "x-request-id");
        assert_eq!(
            ids.len(),
            1,
            "the app must see exactly one x-request-id, saw {ids:?}"
        );
        assert!(
            !ids[0].trim().is_empty(),
            "a generated x-request-id is not empty"
        );
        generated.push(ids[0].clone());
    }
    assert_ne!(generated[0], generated[1], "each request gets its own id");
    // The generated id is what ties the sidecars' access logs to the app's own logs.
    for sidecar in [&mesh.client, &mesh.server] {
        sidecar
            .access_log_entry("the generated request id", |e| {
                field_text(e, "request_id") == generated[0]
            })
            .await;
    }

    let request = h1_request("GET", "app", "/headers")
        .header("x-request-id", "e2e-given-id-42")
        .body(empty())
        .unwrap();
    let reply = conn.exchange(request).await;
    assert_eq!(
        seen(&reply.json(), "x-request-id"),
        ["e2e-given-id-42"],
        "a caller's request id is propagated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_proto_tells_the_app_the_callers_scheme() {
    let mesh = Mesh::start().await;
    let reply = clients::get(mesh.outbound(), "app", "/headers").await;
    assert_eq!(
        seen(&reply.json(), "x-forwarded-proto"),
        ["http"],
        "the calling app spoke plain http to its sidecar"
    );
}
