//! The mutating admission webhook on port 15017: the API server posts an `admission.k8s.io/v1`
//! AdmissionReview for each pod created in an injected namespace; the answer echoes the
//! request's `uid`, allows the pod, and carries a base64 JSON Patch ([`super::patch`]) from the
//! pod as submitted to the pod as `meshlite-control inject` would write it. A pod the
//! injector refuses (a bad annotation) is refused with the reason, which `kubectl` shows.
//! A body that is not an AdmissionReview gets HTTP 400 and a `Status` saying why; nothing a
//! client sends can make it panic.
//!
//! Served over HTTPS with the control plane's serving certificate (issued by the mesh CA for
//! `meshlite-control.<namespace>.svc`): the MutatingWebhookConfiguration's `caBundle` is the
//! mesh root.

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{InjectOptions, Outcome, inject_object, patch};

/// The path the MutatingWebhookConfiguration names (Istio's).
pub const PATH: &str = "/inject";

/// The largest AdmissionReview read (the API server's own request limit is 3 MiB).
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";

/// An HTTP answer: status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// The JSON body (an AdmissionReview, or a `Status` for a request that is not one).
    pub body: Value,
}

/// A `metav1.Status` for a request that could not be read as an AdmissionReview.
fn bad_request(message: String) -> Answer {
    Answer {
        status: StatusCode::BAD_REQUEST,
        body: json!({
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "code": 400,
            "reason": "BadRequest",
            "message": message,
        }),
    }
}

fn review_answer(uid: &str, response: Value) -> Answer {
    let mut response = response;
    response["uid"] = json!(uid);
    Answer {
        status: StatusCode::OK,
        body: json!({
            "apiVersion": REVIEW_API_VERSION,
            "kind": "AdmissionReview",
            "response": response,
        }),
    }
}

fn refused(uid: &str, code: u16, message: String) -> Answer {
    review_answer(
        uid,
        json!({"allowed": false, "status": {"code": code, "message": message}}),
    )
}

/// Answers one AdmissionReview body.
pub fn review(body: &[u8], opts: &InjectOptions) -> Answer {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("the body is not JSON: {e}")),
    };
    let api_version = value.get("apiVersion").and_then(Value::as_str);
    let kind = value.get("kind").and_then(Value::as_str);
    if api_version != Some(REVIEW_API_VERSION) || kind != Some("AdmissionReview") {
        return bad_request(format!(
            "expected an {REVIEW_API_VERSION} AdmissionReview, got apiVersion {} kind {}",
            api_version.unwrap_or("(none)"),
            kind.unwrap_or("(none)")
        ));
    }
    let Some(request) = value.get("request").and_then(Value::as_object) else {
        return bad_request("the AdmissionReview has no request".into());
    };
    let Some(uid) = request
        .get("uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
    else {
        return bad_request("the AdmissionReview's request has no uid".into());
    };
    let request_kind = request
        .get("kind")
        .and_then(|k| k.get("kind"))
        .and_then(Value::as_str)
        .unwrap_or("(none)");
    if request_kind != "Pod" {
        return refused(
            uid,
            400,
            format!("meshlite-control injects pods; this request is for kind {request_kind}"),
        );
    }
    if let Some(op) = request.get("operation").and_then(Value::as_str)
        && op != "CREATE"
    {
        // Sidecars are added when a pod is created; later changes are not ours to make.
        return review_answer(uid, json!({"allowed": true}));
    }
    let Some(before) = request.get("object").filter(|o| o.is_object()) else {
        return refused(uid, 400, "the request carries no pod object".into());
    };
    let mut after = before.clone();
    match inject_object(&mut after, opts) {
        Ok(outcomes) if outcomes.iter().any(|o| o.changed()) => {
            let ops = patch::diff(before, &after);
            let patch = base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(&ops).unwrap_or_default());
            review_answer(
                uid,
                json!({"allowed": true, "patchType": "JSONPatch", "patch": patch}),
            )
        }
        Ok(outcomes) => {
            let why = outcomes
                .first()
                .copied()
                .unwrap_or(Outcome::NotAWorkload)
                .describe();
            tracing::debug!(uid, "not injected: {why}");
            review_answer(uid, json!({"allowed": true}))
        }
        Err(e) => refused(uid, 400, format!("sidecar injection failed: {e}")),
    }
}

/// The TLS configuration of port 15017: the serving certificate, no client certificate
/// (the API server authenticates the webhook, not the reverse), HTTP/2 or HTTP/1.1.
pub fn server_config(
    cert: Arc<crate::xds::serving::ServingCert>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves the webhook on `listener` until the process exits.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    opts: Arc<InjectOptions>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("webhook accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, opts) = (acceptor.clone(), opts.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, "webhook TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "webhook TLS handshake timed out");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |req| {
                let opts = opts.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, &opts).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn json_response(answer: &Answer) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&answer.body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = answer.status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(req: Request<Incoming>, opts: &InjectOptions) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        let mut a = bad_request(format!("no such path; the webhook is at {PATH}"));
        a.status = StatusCode::NOT_FOUND;
        a.body["code"] = json!(404);
        a.body["reason"] = json!("NotFound");
        return json_response(&a);
    }
    if req.method() != Method::POST {
        let mut a = bad_request(format!("{PATH} takes POST"));
        a.status = StatusCode::METHOD_NOT_ALLOWED;
        a.body["code"] = json!(405);
        a.body["reason"] = json!("MethodNotAllowed");
        return json_response(&a);
    }
    let body = Limited::new(req.into_body(), MAX_BODY);
    let bytes = match tokio::time::timeout(REQUEST_TIMEOUT, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            let too_large = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            let mut a = bad_request(if too_large {
                format!("the body is larger than {MAX_BODY} bytes")
            } else {
                format!("reading the body: {e}")
            });
            if too_large {
                a.status = StatusCode::PAYLOAD_TOO_LARGE;
                a.body["code"] = json!(413);
                a.body["reason"] = json!("RequestEntityTooLarge");
            }
            return json_response(&a);
        }
        Err(_) => return json_response(&bad_request("the body took too long to arrive".into())),
    };
    json_response(&review(&bytes, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> InjectOptions {
        InjectOptions::default()
    }

    fn pod_review(object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": "CREATE",
                "object": object,
            }
        }))
        .unwrap()
    }

    fn decoded_patch(answer: &Answer) -> Vec<Value> {
        let b64 = answer.body["response"]["patch"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn a_pod_gets_a_patch_and_its_uid_back() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "nginx"}]}});
        let a = review(&pod_review(pod.clone()), &opts());
        assert_eq!(a.status, StatusCode::OK);
        let resp = &a.body["response"];
        assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(resp["allowed"], true);
        assert_eq!(resp["patchType"], "JSONPatch");
        let ops = decoded_patch(&a);
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        let names: Vec<&str> = patched["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["meshlite-init", "meshlite-proxy"]);
    }

    #[test]
    fn an_opted_out_pod_is_allowed_without_a_patch() {
        let pod = json!({"kind": "Pod", "metadata": {"name": "x",
            "annotations": {"sidecar.istio.io/inject": "false"}},
            "spec": {"containers": [{"name": "x"}]}});
        let a = review(&pod_review(pod), &opts());
        assert_eq!(a.body["response"]["allowed"], true);
        assert!(a.body["response"].get("patch").is_none());
    }

    #[test]
    fn a_bad_annotation_refuses_the_pod_with_the_reason() {
        let pod = json!({"kind": "Pod", "metadata": {"name": "x",
            "annotations": {"sidecar.istio.io/proxyCPU": "lots"}},
            "spec": {"containers": [{"name": "x"}]}});
        let a = review(&pod_review(pod), &opts());
        let resp = &a.body["response"];
        assert_eq!(resp["allowed"], false);
        assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        let msg = resp["status"]["message"].as_str().unwrap();
        assert!(msg.contains("sidecar.istio.io/proxyCPU"), "{msg}");
    }

    #[test]
    fn what_is_not_an_admission_review_gets_a_400_status() {
        for (body, expect) in [
            (&b"not json"[..], "not JSON"),
            (
                br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#,
                "expected",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
                "no request",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#,
                "no uid",
            ),
            (b"[1,2]", "expected"),
        ] {
            let a = review(body, &opts());
            assert_eq!(a.status, StatusCode::BAD_REQUEST);
            assert_eq!(a.body["kind"], "Status");
            let msg = a.body["message"].as_str().unwrap();
            assert!(msg.contains(expect), "{msg}");
        }
    }

    #[test]
    fn another_kind_or_a_missing_object_is_refused_with_the_uid() {
        let mut r: Value = serde_json::from_slice(&pod_review(json!({}))).unwrap();
        r["request"]["kind"]["kind"] = json!("Deployment");
        let a = review(&serde_json::to_vec(&r).unwrap(), &opts());
        assert_eq!(a.body["response"]["allowed"], false);
        assert!(
            a.body["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("Deployment")
        );
        let a = review(&pod_review(json!(null)), &opts());
        assert_eq!(a.body["response"]["allowed"], false);
        assert_eq!(
            a.body["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        // A pod without containers: refused, not a panic.
        let a = review(
            &pod_review(json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {}})),
            &opts(),
        );
        assert_eq!(a.body["response"]["allowed"], false);
    }
}
