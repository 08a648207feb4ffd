//! The mapping between a request and the ext_authz protocols, both ways: what a check
//! carries, and what each kind of answer does to the request and the caller's response.

use super::*;
use crate::policy::authz::PolicyStats;
use meshlite_xds_proto::auth::{CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response};
use meshlite_xds_proto::envoy::config::core::v3::{
    HeaderValue as WireHeader, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use meshlite_xds_proto::envoy::r#type::v3::HttpStatus;
use meshlite_xds_proto::google::rpc::Status;

struct NoStats;
impl StatsSource for NoStats {
    fn stats(&self, _: &str) -> PolicyStats {
        Default::default()
    }
}

fn grpc_wire() -> v1::ExtAuthzProvider {
    v1::ExtAuthzProvider {
        name: "opa".into(),
        service: "opa.policy.svc.cluster.local".into(),
        port: 9191,
        kind: Some(v1::ext_authz_provider::Kind::Grpc(Default::default())),
        ..Default::default()
    }
}

fn grpc_provider() -> Provider {
    Provider::compile(&grpc_wire(), &NoStats).unwrap()
}

fn http_provider(h: v1::ext_authz_provider::Http) -> Provider {
    Provider::compile(
        &v1::ExtAuthzProvider {
            name: "oauth".into(),
            service: "oauth.example.com".into(),
            port: 8000,
            kind: Some(v1::ext_authz_provider::Kind::Http(h)),
            ..Default::default()
        },
        &NoStats,
    )
    .unwrap()
}

fn http_of(p: &Provider) -> &http_service::HttpService {
    match &p.service {
        Service::Http(h) => h,
        Service::Grpc => panic!("not an HTTP provider"),
    }
}

fn option(
    key: &str,
    value: &str,
    append: Option<bool>,
    action: HeaderAppendAction,
) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(WireHeader {
            key: key.into(),
            value: value.into(),
            raw_value: vec![],
        }),
        append,
        append_action: action as i32,
        keep_empty_value: false,
    }
}

fn local() -> crate::telemetry::peer::LocalWorkload {
    use crate::identity::spiffe::SpiffeId;
    let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/llm").unwrap();
    crate::telemetry::peer::LocalWorkload {
        principal: id.principal().into(),
        id,
        metadata: Arc::new(crate::telemetry::peer::WorkloadMetadata::from_labels(
            "llm-v1",
            "default",
            &std::collections::BTreeMap::from([
                ("app".to_string(), "llm".to_string()),
                ("version".to_string(), "v1".to_string()),
            ]),
            "",
        )),
        services: crate::telemetry::labels::DestinationServices::new(
            "llm".into(),
            "default".into(),
        ),
        peer_header: HeaderValue::from_static("llm-v1;default;llm;v1"),
        locality: Default::default(),
        labels: [("app".to_string(), "llm".to_string())].into(),
    }
}

fn request() -> Request<ProxyBody> {
    Request::builder()
        .method("POST")
        .uri("/api/v1/process?model=small")
        .header("host", "llm:8080")
        .header("x-request-id", "req-1")
        .header("authorization", "Bearer t")
        .header("x-user-id", "u1")
        .header("accept", "a")
        .header("accept", "b")
        .header("content-length", "2")
        .body(ProxyBody::full("{}"))
        .unwrap()
}

#[test]
fn a_grpc_check_carries_envoys_attributes() {
    let p = grpc_provider();
    let connection = Connection {
        source: "10.0.0.1:40000".parse().unwrap(),
        source_principal: Some("spiffe://cluster.local/ns/default/sa/intent"),
        destination: "10.0.0.2:15006".parse().unwrap(),
        sni: None,
    };
    let body = BufferedBody {
        bytes: Bytes::from_static(b"{}"),
        partial: false,
    };
    let check = grpc_service::check_request(&local(), connection, &request(), Some(&body), &p);
    let a = check.attributes.unwrap();
    let source = a.source.unwrap();
    assert_eq!(
        source.principal,
        "spiffe://cluster.local/ns/default/sa/intent"
    );
    let destination = a.destination.unwrap();
    assert_eq!(
        destination.principal,
        "spiffe://cluster.local/ns/default/sa/llm"
    );
    assert_eq!(destination.service, "llm");
    let http = a.request.unwrap().http.unwrap();
    assert_eq!(http.id, "req-1");
    assert_eq!(http.method, "POST");
    assert_eq!(
        http.path, "/api/v1/process?model=small",
        "Envoy's path keeps the query"
    );
    assert_eq!(http.query, "", "and leaves query empty");
    assert_eq!(http.host, "llm:8080");
    assert_eq!(http.scheme, "https", "a mutual TLS caller");
    assert_eq!(http.protocol, "HTTP/1.1");
    assert_eq!(http.size, 2);
    assert_eq!(http.headers["accept"], "a,b", "several values joined");
    assert_eq!(http.headers["authorization"], "Bearer t");
    assert_eq!(http.headers["x-envoy-auth-partial-body"], "false");
    assert_eq!(http.body, "{}");
    assert!(http.raw_body.is_empty());
    use meshlite_xds_proto::envoy::config::core::v3::{address, socket_address};
    let Some(address::Address::SocketAddress(sa)) = source.address.unwrap().address else {
        panic!("a socket address")
    };
    assert_eq!(sa.address, "10.0.0.1");
    assert_eq!(
        sa.port_specifier,
        Some(socket_address::PortSpecifier::PortValue(40000))
    );
}

#[test]
fn a_grpc_ok_changes_the_request_and_the_response() {
    let p = grpc_provider();
    let resp = CheckResponse {
        status: Some(Status::default()),
        http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![
                option(
                    "x-user",
                    "alice",
                    None,
                    HeaderAppendAction::AppendIfExistsOrAdd,
                ),
                option(
                    "accept",
                    "c",
                    Some(true),
                    HeaderAppendAction::AppendIfExistsOrAdd,
                ),
                option("x-absent", "1", None, HeaderAppendAction::OverwriteIfExists),
                option("x-user-id", "kept", None, HeaderAppendAction::AddIfAbsent),
                option(
                    ":path",
                    "/evil",
                    Some(false),
                    HeaderAppendAction::AppendIfExistsOrAdd,
                ),
            ],
            headers_to_remove: vec!["authorization".into(), ":authority".into(), "host".into()],
            response_headers_to_add: vec![option(
                "x-authz",
                "done",
                None,
                HeaderAppendAction::AppendIfExistsOrAdd,
            )],
        })),
    };
    let Decision::Allow {
        upstream,
        downstream,
    } = grpc_service::decision(&p, resp)
    else {
        panic!("allowed")
    };
    let mut req = request();
    upstream.apply(req.headers_mut());
    let h = req.headers();
    assert_eq!(h["x-user"], "alice", "append unset: set");
    assert_eq!(h["accept"], "a,c", "append true: comma-joined");
    assert!(
        !h.contains_key("x-absent"),
        "OVERWRITE_IF_EXISTS adds nothing"
    );
    assert_eq!(h["x-user-id"], "u1", "ADD_IF_ABSENT keeps the value there");
    assert!(!h.contains_key("authorization"), "removed");
    assert_eq!(h["host"], "llm:8080", "host is never removed");
    assert_eq!(
        req.uri().path(),
        "/api/v1/process",
        "pseudo-headers are not headers"
    );
    let mut response = HeaderMap::new();
    downstream.apply(&mut response);
    assert_eq!(response["x-authz"], "done");
}

#[test]
fn a_grpc_denial_gives_the_callers_answer_with_403_by_default() {
    let p = grpc_provider();
    let denied = |status: Option<HttpStatus>| CheckResponse {
        status: Some(Status {
            code: 7,
            ..Default::default()
        }),
        http_response: Some(check_response::HttpResponse::DeniedResponse(
            DeniedHttpResponse {
                status,
                headers: vec![
                    option(
                        "x-reason",
                        "teapot",
                        None,
                        HeaderAppendAction::AppendIfExistsOrAdd,
                    ),
                    option(
                        "content-length",
                        "999",
                        None,
                        HeaderAppendAction::AppendIfExistsOrAdd,
                    ),
                ],
                body: "no tea".into(),
            },
        )),
    };
    let Decision::Deny(d) = grpc_service::decision(&p, denied(Some(HttpStatus { code: 418 })))
    else {
        panic!("denied")
    };
    assert_eq!(
        d.status.as_u16(),
        418,
        "codes the enum does not list decode"
    );
    assert_eq!(d.headers["x-reason"], "teapot");
    assert!(
        !d.headers.contains_key("content-length"),
        "the proxy frames its reply"
    );
    assert_eq!(d.body, "no tea");
    let Decision::Deny(d) = grpc_service::decision(&p, denied(None)) else {
        panic!("denied")
    };
    assert_eq!(d.status, StatusCode::FORBIDDEN);
    let bare = CheckResponse {
        status: Some(Status {
            code: 16,
            ..Default::default()
        }),
        http_response: None,
    };
    assert!(
        matches!(grpc_service::decision(&p, bare), Decision::Deny(d) if d.status == StatusCode::FORBIDDEN && d.body.is_empty()),
        "a non-OK status alone denies"
    );
}

#[test]
fn the_callers_answer_to_a_denial_is_the_authorizers() {
    let denial = Denial {
        provider: "opa".into(),
        status: StatusCode::IM_A_TEAPOT,
        headers: [(
            HeaderName::from_static("x-reason"),
            HeaderValue::from_static("teapot"),
        )]
        .into_iter()
        .collect(),
        body: Bytes::from_static(b"no tea"),
    };
    let e = ProxyError::ExtAuthzDenied(Box::new(denial));
    assert_eq!(e.flag().to_string(), "UAEX");
    assert_eq!(e.details().as_deref(), Some("ext_authz_denied"));
    let resp = e.reply(false);
    assert_eq!(resp.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(resp.headers()["x-reason"], "teapot");
    let grpc = e.reply(true);
    assert_eq!(grpc.headers()["grpc-message"], "no tea");
    assert_eq!(grpc.headers()["x-reason"], "teapot");
    let down = ProxyError::ExtAuthzError {
        provider: "opa".into(),
        status: StatusCode::SERVICE_UNAVAILABLE,
        reason: "connect refused".into(),
    };
    assert_eq!(
        (down.status().as_u16(), down.flag().to_string().as_str()),
        (503, "UAEX")
    );
}

fn http_options() -> v1::ext_authz_provider::Http {
    v1::ext_authz_provider::Http {
        path_prefix: "/check/".into(),
        include_request_headers_in_check: vec!["X-User-*".into()],
        include_additional_headers_in_check: [("x-from".to_string(), "mesh".to_string())].into(),
        headers_to_upstream_on_allow: vec!["x-auth-*".into()],
        headers_to_downstream_on_deny: vec![],
        headers_to_downstream_on_allow: vec!["x-trace".into()],
    }
}

#[test]
fn an_http_check_is_the_request_under_the_prefix_with_the_included_headers() {
    let p = http_provider(http_options());
    let check = http_of(&p).check_request(&p, &request(), None);
    assert_eq!(check.method(), "POST");
    assert_eq!(
        check.uri().to_string(),
        "http://oauth.example.com:8000/check/api/v1/process?model=small"
    );
    let h = check.headers();
    assert_eq!(h["authorization"], "Bearer t", "always sent");
    assert_eq!(
        h["x-user-id"], "u1",
        "included by pattern, case-insensitive"
    );
    assert!(!h.contains_key("accept"), "not included");
    assert_eq!(h["x-from"], "mesh", "additional header");
    assert_eq!(h["x-forwarded-host"], "llm:8080");
    assert_eq!(h["content-length"], "0", "no body unless asked for");

    let body = BufferedBody {
        bytes: Bytes::from_static(b"{}"),
        partial: true,
    };
    let check = http_of(&p).check_request(&p, &request(), Some(&body));
    assert_eq!(check.headers()["content-length"], "2");
    assert_eq!(check.headers()["x-envoy-auth-partial-body"], "true");
}

fn answer(status: u16, headers: &[(&str, &str)], body: &'static str) -> http::Response<Bytes> {
    let mut r = http::Response::new(Bytes::from_static(body.as_bytes()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        r.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    r
}

#[test]
fn an_http_answer_allows_on_2xx_denies_otherwise_and_5xx_is_no_answer() {
    let p = http_provider(http_options());
    let h = http_of(&p);
    let ok = answer(
        200,
        &[
            ("x-auth-user", "alice"),
            ("x-trace", "t1"),
            ("x-other", "dropped"),
            ("x-envoy-auth-headers-to-remove", "authorization, x-user-id"),
        ],
        "",
    );
    let Ok(Decision::Allow {
        upstream,
        downstream,
    }) = h.decision(&p, ok)
    else {
        panic!("allowed")
    };
    let mut req = request();
    upstream.apply(req.headers_mut());
    assert_eq!(req.headers()["x-auth-user"], "alice");
    assert!(!req.headers().contains_key("x-other"));
    assert!(!req.headers().contains_key("authorization"));
    assert!(!req.headers().contains_key("x-user-id"));
    let mut resp = HeaderMap::new();
    downstream.apply(&mut resp);
    assert_eq!(resp.len(), 1);
    assert_eq!(resp["x-trace"], "t1");

    let teapot = answer(
        418,
        &[("x-reason", "teapot"), ("content-length", "6")],
        "no tea",
    );
    let Ok(Decision::Deny(d)) = h.decision(&p, teapot) else {
        panic!("denied")
    };
    assert_eq!(d.status.as_u16(), 418);
    assert_eq!(
        d.headers["x-reason"], "teapot",
        "every header when the list is empty"
    );
    assert!(!d.headers.contains_key("content-length"));
    assert_eq!(d.body, "no tea");

    let limited = http_provider(v1::ext_authz_provider::Http {
        headers_to_downstream_on_deny: vec!["location".into()],
        ..http_options()
    });
    let redirect = answer(302, &[("location", "/login"), ("x-reason", "x")], "");
    let Ok(Decision::Deny(d)) = http_of(&limited).decision(&limited, redirect) else {
        panic!("denied")
    };
    assert_eq!(d.headers.len(), 1);
    assert_eq!(d.headers["location"], "/login");

    assert!(h.decision(&p, answer(503, &[], "down")).is_err());
}

#[test]
fn no_answer_fails_open_or_closed_and_is_counted() {
    let mut p = grpc_provider();
    let mut req = request();
    let no_answer = || Err(NoAnswer("refused".into()));
    let err = decided(&p, no_answer(), Some(req.headers_mut())).unwrap_err();
    assert_eq!(
        err.status(),
        StatusCode::FORBIDDEN,
        "statusOnError's default"
    );
    assert_eq!(err.flag().to_string(), "UAEX");
    p.fail_open = true;
    assert!(
        decided(&p, no_answer(), Some(req.headers_mut()))
            .unwrap()
            .is_none()
    );
    assert_eq!(p.stats.error.get(), 2);
    assert_eq!(p.stats.failure_mode_allowed.get(), 1);
    let allow = Decision::Allow {
        upstream: HeaderChanges::default(),
        downstream: HeaderChanges::default(),
    };
    assert!(
        decided(&p, Ok(allow), Some(req.headers_mut()))
            .unwrap()
            .is_none()
    );
    assert_eq!(p.stats.ok.get(), 1);
}

#[test]
fn providers_compile_with_istios_defaults_and_refuse_bad_patterns() {
    let p = grpc_provider();
    assert_eq!(p.timeout, DEFAULT_TIMEOUT);
    assert_eq!(p.status_on_error, StatusCode::FORBIDDEN);
    assert_eq!(p.authority.as_str(), "opa.policy.svc.cluster.local:9191");
    let bad = v1::ExtAuthzProvider {
        name: "bad".into(),
        service: "x.example.com".into(),
        port: 80,
        kind: Some(v1::ext_authz_provider::Kind::Http(
            v1::ext_authz_provider::Http {
                include_request_headers_in_check: vec!["x-*-id".into()],
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    assert!(matches!(
        Provider::compile(&bad, &NoStats),
        Err(ProviderError::Pattern {
            field: "includeRequestHeadersInCheck",
            ..
        })
    ));
    let no_port = v1::ExtAuthzProvider { port: 0, ..bad };
    assert!(Provider::compile(&no_port, &NoStats).is_err());
    let with_body = Provider::compile(
        &v1::ExtAuthzProvider {
            include_request_body_in_check: Some(v1::ext_authz_provider::BodyInCheck {
                max_request_bytes: 10 * 1024 * 1024,
                ..Default::default()
            }),
            timeout: Some(prost_types::Duration {
                seconds: 0,
                nanos: 500_000_000,
            }),
            status_on_error: 503,
            ..grpc_wire()
        },
        &NoStats,
    )
    .unwrap();
    assert_eq!(with_body.body.map(|b| b.max_bytes), Some(MAX_REPLAY_BYTES));
    assert_eq!(with_body.timeout, Duration::from_millis(500));
    assert_eq!(with_body.status_on_error, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_buffered_body_is_sent_in_the_check_and_still_reaches_the_app() {
    let limit = BodyInCheck {
        max_bytes: 4,
        allow_partial: false,
        as_bytes: false,
    };
    let mut req = request();
    let b = buffer_body(&mut req, limit).await.unwrap();
    assert_eq!((&b.bytes[..], b.partial), (&b"{}"[..], false));
    let rest = req.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"{}", "played back to the app");

    let long = || {
        Request::builder()
            .uri("/")
            .body(ProxyBody::full("0123456789"))
            .unwrap()
    };
    let mut req = long();
    assert!(matches!(
        buffer_body(&mut req, limit).await,
        Err(ProxyError::PayloadTooLarge)
    ));
    let mut req = long();
    let partial = BodyInCheck {
        allow_partial: true,
        ..limit
    };
    let b = buffer_body(&mut req, partial).await.unwrap();
    assert_eq!((&b.bytes[..], b.partial), (&b"0123"[..], true));
    let rest = req.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"0123456789", "the whole body reaches the app");
}

#[test]
fn a_policy_naming_an_unknown_provider_denies() {
    let providers = Providers::compile(
        Some(&v1::MeshConfig {
            ext_authz_providers: vec![grpc_wire()],
            ..Default::default()
        }),
        &NoStats,
    )
    .unwrap();
    assert!(provider(&providers, Some(&"opa".into())).is_ok());
    for name in [Some("nope"), None] {
        let label: Option<Label> = name.map(Into::into);
        let Err(e) = provider(&providers, label.as_ref()) else {
            panic!("{name:?} must deny")
        };
        assert_eq!(
            (e.status(), e.flag().to_string().as_str()),
            (StatusCode::FORBIDDEN, "UAEX"),
            "{name:?}"
        );
    }
}

/// A provider's service as the request path would reach it, answering every check with
/// `answer` (after `delay`) and keeping what it was sent.
#[derive(Clone)]
struct FakeSender {
    answer: fn() -> http::Response<ProxyBody>,
    delay: Duration,
    sent: Arc<std::sync::Mutex<Vec<http::request::Parts>>>,
}

impl FakeSender {
    fn new(answer: fn() -> http::Response<ProxyBody>) -> Self {
        Self {
            answer,
            delay: Duration::ZERO,
            sent: Default::default(),
        }
    }
}

impl CheckSender for FakeSender {
    async fn send(&self, req: Request<ProxyBody>) -> Result<http::Response<ProxyBody>, ProxyError> {
        let (parts, _) = req.into_parts();
        self.sent.lock().unwrap().push(parts);
        tokio::time::sleep(self.delay).await;
        Ok((self.answer)())
    }
}

fn providers(p: v1::ExtAuthzProvider) -> Providers {
    Providers::compile(
        Some(&v1::MeshConfig {
            ext_authz_providers: vec![p],
            ..Default::default()
        }),
        &NoStats,
    )
    .unwrap()
}

fn connection() -> Connection<'static> {
    Connection {
        source: "10.0.0.1:40000".parse().unwrap(),
        source_principal: None,
        destination: "10.0.0.2:8080".parse().unwrap(),
        sni: None,
    }
}

fn http_wire() -> v1::ExtAuthzProvider {
    v1::ExtAuthzProvider {
        name: "oauth".into(),
        service: "oauth.example.com".into(),
        port: 8000,
        kind: Some(v1::ext_authz_provider::Kind::Http(http_options())),
        ..Default::default()
    }
}

fn status(code: u16) -> http::Response<ProxyBody> {
    http::Response::builder()
        .status(code)
        .body(ProxyBody::full("no"))
        .unwrap()
}

#[tokio::test]
async fn authorize_sends_the_check_through_the_request_paths_sender() {
    let local = local();
    let ps = providers(http_wire());
    let oauth: Label = "oauth".into();
    let allow = FakeSender::new(|| status(200));
    let authorizer = Authorizer {
        providers: &ps,
        local: &local,
        sender_for: |host: &str| {
            assert_eq!(host, "oauth.example.com:8000", "the provider's service");
            Some(allow.clone())
        },
    };
    let r = authorize(authorizer, Some(&oauth), connection(), &mut request()).await;
    assert!(r.is_ok(), "a 2xx allows: {r:?}");
    let sent: Vec<_> = allow.sent.lock().unwrap().drain(..).collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].uri.path_and_query().map(|p| p.as_str()),
        Some("/check/api/v1/process?model=small")
    );

    let deny = FakeSender::new(|| status(401));
    let authorizer = Authorizer {
        providers: &ps,
        local: &local,
        sender_for: |_: &str| Some(deny.clone()),
    };
    let e = authorize(authorizer, Some(&oauth), connection(), &mut request())
        .await
        .unwrap_err();
    assert_eq!(
        (e.status(), e.flag().to_string()),
        (StatusCode::UNAUTHORIZED, "UAEX".into()),
        "the provider's status reaches the caller"
    );
}

#[tokio::test]
async fn a_grpc_check_goes_through_the_sender_and_an_error_status_is_no_answer() {
    let local = local();
    let ps = providers(grpc_wire());
    // Trailers-only, as a gRPC server answers a call it refuses.
    let unavailable = FakeSender::new(|| {
        http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "14")
            .body(ProxyBody::Empty)
            .unwrap()
    });
    let authorizer = Authorizer {
        providers: &ps,
        local: &local,
        sender_for: |host: &str| {
            assert_eq!(host, "opa.policy.svc.cluster.local:9191");
            Some(unavailable.clone())
        },
    };
    let opa: Label = "opa".into();
    let e = authorize(authorizer, Some(&opa), connection(), &mut request())
        .await
        .unwrap_err();
    assert_eq!(
        e.status(),
        StatusCode::FORBIDDEN,
        "statusOnError, fail closed"
    );
    let sent = unavailable.sent.lock().unwrap();
    assert_eq!(
        sent[0].uri.path(),
        "/envoy.service.auth.v3.Authorization/Check"
    );
    let p = provider(&ps, Some(&opa)).unwrap();
    assert_eq!(p.stats.error.get(), 1);
}

#[tokio::test]
async fn a_provider_this_proxy_cannot_reach_is_no_answer() {
    let local = local();
    let ps = providers(grpc_wire());
    let authorizer = Authorizer {
        providers: &ps,
        local: &local,
        sender_for: |_: &str| None::<FakeSender>,
    };
    let opa: Label = "opa".into();
    let e = authorize(authorizer, Some(&opa), connection(), &mut request())
        .await
        .unwrap_err();
    assert_eq!(e.status(), StatusCode::FORBIDDEN, "fails closed");
}

#[tokio::test(start_paused = true)]
async fn a_provider_slower_than_its_timeout_is_no_answer_and_fail_open_lets_through() {
    let local = local();
    let mut wire = http_wire();
    wire.timeout = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    wire.fail_open = true;
    let ps = providers(wire);
    let mut slow = FakeSender::new(|| status(403));
    slow.delay = Duration::from_secs(5);
    let authorizer = Authorizer {
        providers: &ps,
        local: &local,
        sender_for: |_: &str| Some(slow.clone()),
    };
    let oauth: Label = "oauth".into();
    let started = tokio::time::Instant::now();
    let r = authorize(authorizer, Some(&oauth), connection(), &mut request()).await;
    assert!(
        r.is_ok(),
        "failOpen: the denial that came too late is not read"
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "gave up at the timeout"
    );
    let p = provider(&ps, Some(&oauth)).unwrap();
    assert_eq!(
        (p.stats.error.get(), p.stats.failure_mode_allowed.get()),
        (1, 1)
    );
}

#[tokio::test]
async fn a_tcp_connection_goes_to_grpc_providers_only() {
    let local = local();
    let ps = providers(http_wire());
    let never = FakeSender::new(|| unreachable!("an HTTP provider is not asked about TCP"));
    let authorizer = Authorizer {
        providers: &ps,
        local: &local,
        sender_for: |_: &str| Some(never.clone()),
    };
    let oauth: Label = "oauth".into();
    assert!(
        authorize_connection(authorizer, Some(&oauth), connection())
            .await
            .is_ok()
    );
    assert!(never.sent.lock().unwrap().is_empty());
}
