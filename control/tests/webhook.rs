//! The injection webhook as the API server meets it: a control plane started with `serve`,
//! AdmissionReviews posted over HTTPS to its webhook port with the mesh root as the only
//! trust anchor and the service names the MutatingWebhookConfiguration uses, the returned
//! JSON Patch applied as the API server applies it, and the result compared with what
//! `meshlite-control inject` writes for the same pod.

// Test helpers: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use clap::Parser;
use meshlite_control::inject::{InjectOptions, inject_documents};
use meshlite_control::serve::{ServeOptions, start};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Serve {
    #[command(flatten)]
    opts: ServeOptions,
}

/// A running control plane: its webhook address and mesh root.
struct Plane {
    webhook: SocketAddr,
    root_pem: String,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    _plane: Arc<meshlite_control::plane::ControlPlane>,
}

async fn plane(namespace: &str) -> Plane {
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let serve = Serve::try_parse_from([
        "serve",
        "--config-dir",
        config.path().to_str().unwrap(),
        "--state-dir",
        state.path().to_str().unwrap(),
        "--xds-addr",
        "127.0.0.1:0",
        "--monitoring-addr",
        "127.0.0.1:0",
        "--webhook-addr",
        "127.0.0.1:0",
        "--graph-interval",
        "0s",
        "--namespace",
        namespace,
    ])
    .unwrap();
    let (plane, bound) = start(serve.opts).await.unwrap();
    let root_pem = plane.ca().roots_pem().join("");
    Plane {
        webhook: bound.webhook,
        root_pem,
        _dirs: (config, state),
        _plane: plane,
    }
}

/// Sends one HTTP/1.1 request over TLS to `addr`, verifying the server as `server_name`
/// against `root_pem` only; returns the status and body.
async fn https(
    addr: SocketAddr,
    root_pem: &str,
    server_name: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {server_name}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP head")?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    Ok((status, response[split + 4..].to_vec()))
}

fn review(uid: &str, pod: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": false,
        }
    }))
    .unwrap()
}

/// What `meshlite-control inject` writes for `pod` (as YAML, read back).
fn cli_injected(pod: &Value) -> Value {
    let yaml = serde_saphyr::to_string(pod).unwrap();
    let out = inject_documents(&yaml, &InjectOptions::default())
        .unwrap()
        .yaml;
    serde_saphyr::from_str(&out).unwrap()
}

fn golden(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/inject")
        .join(name);
    serde_saphyr::from_multiple(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Pods as the API server would submit them: a bare pod, and the pod a ReplicaSet of the
/// reviews Deployment creates (generateName, owner reference, template hash label).
fn pods() -> Vec<Value> {
    let bare = golden("pod.in.yaml").remove(0);
    let deployment = golden("deployment.in.yaml")
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let mut from_rs = deployment["spec"]["template"].clone();
    from_rs["apiVersion"] = json!("v1");
    from_rs["kind"] = json!("Pod");
    let meta = from_rs["metadata"].as_object_mut().unwrap();
    meta.insert("generateName".into(), json!("reviews-v1-7d9c8f6b5-"));
    meta.insert("namespace".into(), json!("shop"));
    meta.insert(
        "ownerReferences".into(),
        json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reviews-v1-7d9c8f6b5",
                "uid": "6f1c", "controller": true, "blockOwnerDeletion": true}]),
    );
    meta["labels"]["pod-template-hash"] = json!("7d9c8f6b5");
    vec![bare, from_rs]
}

#[tokio::test]
async fn a_pod_patched_by_the_webhook_equals_the_inject_commands_output() {
    let plane = plane("istio-system").await;
    for (i, pod) in pods().into_iter().enumerate() {
        let uid = format!("0b2c7e1a-{i}");
        let (status, body) = https(
            plane.webhook,
            &plane.root_pem,
            "meshlite-control.istio-system.svc",
            "POST",
            "/inject",
            &review(&uid, &pod),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let response = &answer["response"];
        assert_eq!(response["uid"], uid.as_str());
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        assert_eq!(patched, cli_injected(&pod), "pod {i}");
        // The sidecar announces the Deployment, not the pod, as its workload.
        let args = patched["spec"]["initContainers"][1]["args"].to_string();
        assert!(
            args.contains(if i == 0 {
                "\"debug-shell\""
            } else {
                "\"reviews-v1\""
            }),
            "{args}"
        );
        assert!(!args.contains("pod-template-hash"), "{args}");
    }
}

#[tokio::test]
async fn the_webhook_is_verified_by_the_mesh_root_under_its_service_names() {
    let plane = plane("mesh-system").await;
    let pod = &pods()[0];
    for name in [
        "meshlite-control.mesh-system.svc",
        "meshlite-control.mesh-system.svc.cluster.local",
    ] {
        let (status, _) = https(
            plane.webhook,
            &plane.root_pem,
            name,
            "POST",
            "/inject",
            &review("u", pod),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{name}");
    }
    let wrong = https(
        plane.webhook,
        &plane.root_pem,
        "meshlite-control.istio-system.svc",
        "POST",
        "/inject",
        &review("u", pod),
    )
    .await;
    assert!(
        wrong.is_err(),
        "a name the certificate does not carry was accepted"
    );
    // Another CA's root does not verify it.
    let other = tempfile::tempdir().unwrap();
    let other_ca =
        meshlite_control::ca::CertificateAuthority::load_or_create(other.path(), "cluster.local")
            .unwrap();
    let foreign = https(
        plane.webhook,
        &other_ca.roots_pem().join(""),
        "meshlite-control.mesh-system.svc",
        "POST",
        "/inject",
        &review("u", pod),
    )
    .await;
    assert!(foreign.is_err(), "verified by a foreign root");
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_webhook_keeps_serving() {
    let plane = plane("istio-system").await;
    let name = "meshlite-control.istio-system.svc";
    let call = |method: &'static str, path: &'static str, body: Vec<u8>| {
        let root = plane.root_pem.clone();
        let addr = plane.webhook;
        async move {
            let (status, body) = https(addr, &root, name, method, path, &body).await.unwrap();
            (status, serde_json::from_slice::<Value>(&body).unwrap())
        }
    };
    let (status, body) = call("POST", "/inject", b"{not json".to_vec()).await;
    assert_eq!(status, 400);
    assert_eq!(body["kind"], "Status");
    assert!(
        body["message"].as_str().unwrap().contains("not JSON"),
        "{body}"
    );

    let no_request = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
    let (status, body) = call("POST", "/inject", no_request.to_vec()).await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("no request"),
        "{body}"
    );

    let mut wrong_kind: Value = serde_json::from_slice(&review("k-1", &pods()[0])).unwrap();
    wrong_kind["request"]["kind"]["kind"] = json!("Service");
    let (status, body) = call("POST", "/inject", serde_json::to_vec(&wrong_kind).unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["response"]["uid"], "k-1");
    assert_eq!(body["response"]["allowed"], false);
    assert!(
        body["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("Service"),
        "{body}"
    );

    let (status, _) = call("GET", "/inject", Vec::new()).await;
    assert_eq!(status, 405);
    let (status, _) = call("POST", "/mutate", b"{}".to_vec()).await;
    assert_eq!(status, 404);
    let big = vec![b' '; meshlite_control::inject::webhook::MAX_BODY + 1];
    let (status, _) = call("POST", "/inject", big).await;
    assert_eq!(status, 413);

    // Still serving.
    let (status, body) = call("POST", "/inject", review("after", &pods()[0])).await;
    assert_eq!(status, 200);
    assert_eq!(body["response"]["allowed"], true);
}
