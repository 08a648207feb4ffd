//! The route-rules stage with fake rules and a fake next stage: what reaches the next stage,
//! what is answered before it, and the flags on the way.

use super::*;
use crate::route::action::{Fault, HeaderOps, Rewrite, Terminal};
use meshlite_xds_proto::v1;
use std::cell::Cell;
use std::time::Duration;

fn request() -> Request<ProxyBody> {
    Request::builder()
        .uri("/api/users?id=1")
        .header(header::HOST, "reviews:9080")
        .body(ProxyBody::Empty)
        .unwrap()
}

fn rule(behaviour: &RouteBehaviour) -> Rule<'_> {
    Rule {
        behaviour,
        destination: None,
        prefix_len: None,
        host_rate_limit: None,
    }
}

fn fault(delay_ms: i32, http_status: u32, grpc_status: u32) -> Option<Fault> {
    Fault::compile(Some(&v1::Fault {
        delay: (delay_ms > 0).then(|| v1::fault::Delay {
            fixed_delay: Some(prost_types::Duration {
                seconds: 0,
                nanos: delay_ms * 1_000_000,
            }),
            percentage: 100.0,
        }),
        abort: (http_status > 0 || grpc_status > 0).then_some(v1::fault::Abort {
            http_status,
            grpc_status,
            percentage: 100.0,
        }),
    }))
}

/// What the next stage saw of a request: its URI, `Host` and `x-envoy-original-path`.
type Seen = Cell<Option<(String, Option<String>, Option<String>)>>;

/// A next stage that answers `status` and records the request it got.
fn answering(
    seen: &Seen,
    status: u16,
) -> impl FnOnce(Request<ProxyBody>) -> std::future::Ready<Dispatched<()>> + '_ {
    move |req: Request<ProxyBody>| {
        let header = |n: &str| {
            req.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_string())
        };
        seen.set(Some((
            req.uri().to_string(),
            header("host"),
            header("x-envoy-original-path"),
        )));
        let mut resp = Response::new(ProxyBody::Empty);
        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
        std::future::ready(Dispatched {
            result: Ok((resp, Some(()))),
            flags: ResponseFlags::NONE,
        })
    }
}

fn status<E>(d: &Dispatched<E>) -> Result<u16, String> {
    match &d.result {
        Ok((resp, _)) => Ok(resp.status().as_u16()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn a_rule_without_settings_hands_the_request_on_unchanged() {
    let b = RouteBehaviour::default();
    let seen = Cell::new(None);
    let d = apply(rule(&b), request(), || 0, answering(&seen, 200)).await;
    assert_eq!(status(&d), Ok(200));
    assert_eq!(d.flags, ResponseFlags::NONE);
    let (uri, host, original) = seen.take().unwrap();
    assert_eq!(uri, "/api/users?id=1");
    assert_eq!(host.as_deref(), Some("reviews:9080"));
    assert_eq!(original, None);
}

#[tokio::test]
async fn an_abort_answers_locally_with_fi_and_never_reaches_the_next_stage() {
    let b = RouteBehaviour {
        fault: fault(0, 503, 0),
        ..RouteBehaviour::default()
    };
    let seen = Cell::new(None);
    let d = apply(rule(&b), request(), || 0, answering(&seen, 200)).await;
    assert_eq!(status(&d), Ok(503));
    assert_eq!(d.flags, ResponseFlags::FI);
    assert!(seen.take().is_none());
}

#[tokio::test]
async fn a_grpc_caller_gets_the_abort_as_a_grpc_status() {
    let b = RouteBehaviour {
        fault: fault(0, 503, 0),
        ..RouteBehaviour::default()
    };
    let mut req = request();
    req.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let d = apply(rule(&b), req, || 0, answering(&Cell::new(None), 200)).await;
    let (resp, _) = d.result.unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
    assert_eq!(resp.headers()["grpc-status"], "14");
    assert_eq!(resp.headers()["grpc-message"], "fault filter abort");
}

#[tokio::test]
async fn a_delay_then_an_abort_is_di_fi_and_a_delay_alone_is_di() {
    let b = RouteBehaviour {
        fault: fault(1, 0, 8),
        ..RouteBehaviour::default()
    };
    let d = apply(rule(&b), request(), || 0, answering(&Cell::new(None), 200)).await;
    assert_eq!(d.flags, ResponseFlags::DI | ResponseFlags::FI);
    let (resp, _) = d.result.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "8");

    let b = RouteBehaviour {
        fault: fault(1, 0, 0),
        ..RouteBehaviour::default()
    };
    let d = apply(rule(&b), request(), || 0, answering(&Cell::new(None), 200)).await;
    assert_eq!(status(&d), Ok(200));
    assert_eq!(d.flags, ResponseFlags::DI);
}

#[tokio::test]
async fn a_roll_outside_the_share_injects_nothing() {
    let mut b = RouteBehaviour {
        fault: fault(0, 503, 0),
        ..RouteBehaviour::default()
    };
    b.fault = Fault::compile(Some(&v1::Fault {
        delay: None,
        abort: Some(v1::fault::Abort {
            http_status: 503,
            grpc_status: 0,
            percentage: 50.0,
        }),
    }));
    let d = apply(
        rule(&b),
        request(),
        || 999_999,
        answering(&Cell::new(None), 200),
    )
    .await;
    assert_eq!(status(&d), Ok(200));
}

#[tokio::test]
async fn an_empty_rate_limit_bucket_is_a_429() {
    let limit = crate::resilience::rate_limit::RateLimit {
        max_tokens: 1,
        tokens_per_fill: 1,
        fill_interval: Some(std::time::Duration::from_secs(60)),
    };
    let bucket = TokenBucket::new(&limit, tokio::time::Instant::now()).unwrap();
    let b = RouteBehaviour::default();
    let mut r = rule(&b);
    r.host_rate_limit = Some(&bucket);
    let d = apply(r, request(), || 0, answering(&Cell::new(None), 200)).await;
    assert_eq!(status(&d), Ok(200), "the first takes the only token");
    let d = apply(r, request(), || 0, answering(&Cell::new(None), 200)).await;
    assert_eq!(status(&d), Err("local_rate_limited".to_string()));
    assert_eq!(d.result.unwrap_err().flag(), ResponseFlags::RL);
}

#[tokio::test]
async fn a_redirect_answers_itself() {
    let route = v1::HttpRoute {
        redirect: Some(v1::Redirect {
            uri: "/new".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let b = RouteBehaviour {
        terminal: Terminal::compile(&route),
        ..RouteBehaviour::default()
    };
    let seen = Cell::new(None);
    let d = apply(rule(&b), request(), || 0, answering(&seen, 200)).await;
    let (resp, endpoint) = d.result.unwrap();
    assert_eq!(resp.status(), http::StatusCode::MOVED_PERMANENTLY);
    assert_eq!(resp.headers()["location"], "http://reviews:9080/new");
    assert!(endpoint.is_none());
    assert!(seen.take().is_none());
}

#[tokio::test]
async fn a_rewrite_changes_path_and_authority_and_keeps_the_original_path() {
    let b = RouteBehaviour {
        rewrite: Rewrite::compile(
            Some(&v1::Rewrite {
                uri: "/v2/".into(),
                authority: "ratings".into(),
            }),
            "r",
        )
        .unwrap(),
        ..RouteBehaviour::default()
    };
    let mut r = rule(&b);
    r.prefix_len = Some("/api/".len());
    let seen = Cell::new(None);
    let d = apply(r, request(), || 0, answering(&seen, 200)).await;
    assert_eq!(status(&d), Ok(200));
    let (uri, host, original) = seen.take().unwrap();
    assert_eq!(uri, "/v2/users?id=1");
    assert_eq!(host.as_deref(), Some("ratings"));
    assert_eq!(original.as_deref(), Some("/api/users"));
}

#[tokio::test]
async fn a_rewrite_to_an_invalid_target_is_a_500_not_the_upstreams_fault() {
    let b = RouteBehaviour {
        rewrite: Rewrite::compile(
            Some(&v1::Rewrite {
                uri: "/bad path".into(),
                authority: String::new(),
            }),
            "r",
        )
        .unwrap(),
        ..RouteBehaviour::default()
    };
    let seen = Cell::new(None);
    let d = apply(rule(&b), request(), || 0, answering(&seen, 200)).await;
    let e = d.result.unwrap_err();
    assert!(matches!(e, ProxyError::InvalidRewrite(_)), "{e:?}");
    assert_eq!(e.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(e.flag(), ResponseFlags::NONE);
    assert!(seen.take().is_none());
}

#[tokio::test]
async fn a_destinations_host_operation_wins_over_the_rules() {
    let ops = |host: &str| {
        HeaderOps::compile(
            Some(&v1::HeaderOps {
                set: [("host".to_string(), host.to_string())].into(),
                ..Default::default()
            }),
            "r",
        )
        .unwrap()
    };
    let b = RouteBehaviour {
        request_headers: ops("from-rule"),
        ..RouteBehaviour::default()
    };
    let destination = Destination {
        target: crate::route::Target::Missing("none".into()),
        request_headers: ops("from-destination"),
        response_headers: HeaderOps::default(),
    };
    let mut r = rule(&b);
    r.destination = Some(&destination);
    let seen = Cell::new(None);
    apply(r, request(), || 0, answering(&seen, 200)).await;
    let (_, host, _) = seen.take().unwrap();
    assert_eq!(host.as_deref(), Some("from-destination"));
}

#[tokio::test]
async fn the_rules_timeout_cuts_the_next_stage_with_ut() {
    let b = RouteBehaviour {
        timeout: Some(Duration::from_millis(20)),
        ..RouteBehaviour::default()
    };
    let d: Dispatched<()> = apply(rule(&b), request(), || 0, |_req| std::future::pending()).await;
    let e = d.result.unwrap_err();
    assert!(matches!(e, ProxyError::Timeout));
    assert_eq!(e.flag(), ResponseFlags::UT);
}

#[tokio::test]
async fn the_next_stages_retry_flag_replaces_the_delay_flag() {
    let b = RouteBehaviour {
        fault: fault(1, 0, 0),
        ..RouteBehaviour::default()
    };
    let d: Dispatched<()> = apply(
        rule(&b),
        request(),
        || 0,
        |_req| {
            std::future::ready(Dispatched {
                result: Err(ProxyError::UpstreamReset("reset".into())),
                flags: ResponseFlags::URX,
            })
        },
    )
    .await;
    assert_eq!(d.flags, ResponseFlags::URX);
    let e = d.result.unwrap_err();
    assert_eq!(e.flag_after_retries(d.flags).to_string(), "UR,URX");
}
