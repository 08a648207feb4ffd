//! Large bodies stream through the pair of sidecars in both directions with flat memory.
//!
//! `MESHLITE_E2E_BIG_BYTES` sets the size (default 256 MiB; `1073741824` for the 1 GiB run by
//! hand); `MESHLITE_E2E_MAX_RSS_MB` the peak RSS each sidecar may reach (default 64 MB). A proxy
//! that buffered whole bodies would need at least the body size.

use http_body_util::BodyExt;
use meshlite_tests::clients::{Http1Client, Reply, boxed, empty, h1_request};
use meshlite_tests::deadline::within;
use meshlite_tests::mesh::Mesh;
use meshlite_tests::payload::{PatternBody, PatternCheck};
use std::time::Duration;

const DEFAULT_BIG_BYTES: u64 = 256 * 1024 * 1024;
const DEFAULT_MAX_RSS_MB: u64 = 64;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_streams_both_ways_with_flat_proxy_memory() {
    let len = env_u64("MESHLITE_E2E_BIG_BYTES", DEFAULT_BIG_BYTES);
    let max_rss = env_u64("MESHLITE_E2E_MAX_RSS_MB", DEFAULT_MAX_RSS_MB) * 1_000_000;
    // A bound on the wait, not a speed expectation: generous for a debug build on 2 shared cores.
    let bound = Duration::from_secs(120 + len / (4 * 1024 * 1024));
    let mesh = Mesh::start().await;

    // Upload: the app checks every byte.
    let mut conn = Http1Client::connect(mesh.outbound()).await;
    let request = h1_request("POST", "app", "/sink")
        .body(boxed(PatternBody::streamed(len)))
        .unwrap();
    let reply = within("the upload", bound, async {
        Reply::collect(conn.send(request).await.expect("upload response")).await
    })
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let report = reply.json();
    assert_eq!(
        report["received"], len,
        "the app received a different length: {report}"
    );
    assert!(
        report["first_mismatch"].is_null(),
        "the uploaded body was corrupted: {report}"
    );

    // Download: the test checks every byte as it arrives.
    let request = h1_request("GET", "app", &format!("/source?bytes={len}"))
        .body(empty())
        .unwrap();
    let check = within("the download", bound, async {
        let response = conn.send(request).await.expect("download response");
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut check = PatternCheck::default();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("download body").into_data() {
                check.feed(&data);
            }
        }
        check
    })
    .await;
    assert!(
        check.is_intact(len),
        "downloaded {} of {len} bytes, first mismatch {:?}",
        check.received,
        check.first_mismatch
    );

    for sidecar in [&mesh.client, &mesh.server] {
        let peak = sidecar.peak_rss_bytes();
        eprintln!(
            "{}: peak RSS {:.1} MB after {len} bytes each way",
            sidecar.name,
            peak as f64 / 1e6
        );
        assert!(
            peak < max_rss,
            "{}: peak RSS {:.1} MB is over {} MB: memory grows with the body",
            sidecar.name,
            peak as f64 / 1e6,
            max_rss / 1_000_000
        );
    }
}
