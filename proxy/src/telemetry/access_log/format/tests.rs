use super::*;
use crate::identity::spiffe::SpiffeId;
use crate::message::response_flags::ResponseFlags;
use crate::telemetry::access_log::StartTime;
use crate::telemetry::trace::propagation::TraceId;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn entry() -> AccessLogEntry {
    AccessLogEntry {
        start_time: StartTime(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250)),
        method: "POST".into(),
        path: "/orders?id=7".into(),
        protocol: "HTTP/1.1",
        response_code: 503,
        response_flags: ResponseFlags::UF,
        bytes_received: 12,
        bytes_sent: 91,
        duration: 4,
        user_agent: Some("curl/8".into()),
        request_id: Some("req-1".into()),
        authority: Some("orders:9080".into()),
        upstream_cluster: Some("outbound|9080||orders.default.svc.cluster.local".into()),
        downstream_remote_address: "10.1.2.3:40000".into(),
        downstream_peer_principal: Some("spiffe://cluster.local/ns/default/sa/web".into()),
        upstream_peer_principal: SpiffeId::parse("spiffe://cluster.local/ns/default/sa/orders")
            .ok()
            .map(Arc::new),
        request_headers: Some(vec![
            ("x-tenant".into(), "acme".into()),
            ("x-priority".into(), "high".into()),
        ]),
        response_headers: Some(vec![("x-cache".into(), "miss".into())]),
        ..Default::default()
    }
}

fn format(text: &str, labels: &[(&str, &str)]) -> LineFormat {
    LineFormat::compile(&v1::LogFormat {
        text: text.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
    .expect("compiles")
    .expect("sets something")
}

#[test]
fn a_text_format_fills_operators_and_dashes_what_is_absent() {
    let f = format(
        "%REQ(:METHOD)% %REQ_WITHOUT_QUERY(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% \
         tenant=%REQ(X-TENANT)% missing=%REQ(X-NONE)% ua=%REQ(USER-AGENT):3% \
         cache=%RESP(X-CACHE)% st=%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \
         peer=%DOWNSTREAM_PEER_URI_SAN% up=%UPSTREAM_PEER_URI_SAN% \
         ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% meta=%DYNAMIC_METADATA(istio:x)%\n",
        &[],
    );
    assert_eq!(
        f.line(&entry()),
        "POST /orders 503 UF tenant=acme missing=- ua=cur cache=miss st=- \
         peer=spiffe://cluster.local/ns/default/sa/web \
         up=spiffe://cluster.local/ns/default/sa/orders ip=10.1.2.3 meta=-",
        "the format's newline is the writer's"
    );
    assert!(f.reads_request_headers(), "x-tenant is kept for it");
    assert!(f.reads_response_headers(), "x-cache is kept for it");
}

#[test]
fn labels_make_a_json_line_with_typed_single_operator_fields() {
    let f = format(
        "",
        &[
            ("code", "%RESPONSE_CODE%"),
            ("bytes", "%BYTES_SENT%"),
            ("tenant", "%REQ(X-TENANT)%"),
            ("absent", "%REQ(X-NONE)%"),
            ("mixed", "%REQ(:METHOD)% %RESPONSE_CODE% %REQ(X-NONE)%"),
            ("literal", "mesh"),
            ("start", "%START_TIME%"),
            ("service_time", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"),
        ],
    );
    let mut e = entry();
    e.upstream_service_time = Some(3);
    let v: serde_json::Value = serde_json::from_str(&f.line(&e)).expect("a JSON line");
    assert_eq!(
        v,
        serde_json::json!({
            "code": 503,
            "bytes": 91,
            "tenant": "acme",
            "absent": null,
            "mixed": "POST 503 -",
            "literal": "mesh",
            "start": "2023-11-14T22:13:20.250Z",
            "service_time": 3,
        })
    );
}

#[test]
fn a_format_reading_only_what_every_line_carries_keeps_no_headers() {
    let f = format(
        "%REQ(:AUTHORITY)% %REQ(X-REQUEST-ID)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESP(:STATUS)%",
        &[],
    );
    assert!(!f.reads_request_headers());
    assert!(!f.reads_response_headers());
    let mut e = entry();
    e.request_headers = None;
    e.response_headers = None;
    assert_eq!(f.line(&e), "orders:9080 req-1 /orders?id=7 503");
}

#[test]
fn cel_fields_read_the_exchange() {
    let f = format(
        "",
        &[
            (
                "tier",
                "%CEL(request.headers['x-priority'] == 'high' ? 'gold' : 'std')%",
            ),
            ("big", "%CEL(response.size > 50)%"),
            ("code", "%CEL(response.code)%"),
            ("broken", "%CEL(request.headers['x-none'])%"),
        ],
    );
    assert!(f.reads_request_headers());
    let v: serde_json::Value = serde_json::from_str(&f.line(&entry())).unwrap();
    assert_eq!(v["tier"], "gold");
    assert_eq!(v["big"], "true");
    assert_eq!(v["code"], 503);
    assert_eq!(v["broken"], serde_json::Value::Null, "an error is absent");
}

#[test]
fn istios_default_text_is_the_line_istio_writes() {
    let mut e = entry();
    e.upstream_transport_failure_reason = Some("connection_refused");
    e.upstream_host = Some("10.0.0.9:15006".into());
    e.trace_id = Some(TraceId([1; 16]));
    let body = LineFormat::istio_default_text().body(&e).unwrap();
    assert_eq!(
        body,
        "[2023-11-14T22:13:20.250Z] \"POST /orders?id=7 HTTP/1.1\" 503 UF - - \
         \"connection_refused\" 12 91 4 - \"-\" \"curl/8\" \"req-1\" \"orders:9080\" \
         \"10.0.0.9:15006\" outbound|9080||orders.default.svc.cluster.local - - \
         10.1.2.3:40000 - -"
    );
    // A response from upstream says so, as Envoy's router does.
    e.upstream_service_time = Some(7);
    let body = LineFormat::istio_default_text().body(&e).unwrap();
    assert!(body.contains(" 503 UF via_upstream - "), "{body}");
    assert!(body.contains(" 12 91 4 7 "), "{body}");
}

#[test]
fn otel_attributes_are_the_labels_typed_and_absent_ones_left_out() {
    let f = format(
        "%REQ(:METHOD)% %RESPONSE_CODE%",
        &[
            ("code", "%RESPONSE_CODE%"),
            ("tenant", "%REQ(X-TENANT)%"),
            ("none", "%REQ(X-NONE)%"),
        ],
    );
    assert_eq!(f.body(&entry()).as_deref(), Some("POST 503"));
    let attributes = f.attributes(&entry()).unwrap();
    let got: Vec<(&str, &any_value::Value)> = attributes
        .iter()
        .map(|a| {
            (
                a.key.as_str(),
                a.value.as_ref().and_then(|v| v.value.as_ref()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("code", &any_value::Value::IntValue(503)),
            ("tenant", &any_value::Value::StringValue("acme".into())),
        ]
    );
    let text_only = format("%RESPONSE_CODE%", &[]);
    assert!(
        text_only.attributes(&entry()).is_none(),
        "the defaults then"
    );
}

#[test]
fn formats_that_do_not_compile_are_refused_and_empty_ones_are_unset() {
    let bad = |text: &str| {
        LineFormat::compile(&v1::LogFormat {
            text: text.into(),
            labels: Default::default(),
        })
        .err()
        .map(|e| e.to_string())
    };
    assert!(
        bad("%NOPE%")
            .unwrap()
            .contains("unknown command operator %NOPE%")
    );
    assert!(bad("%CEL(request.headers[)%").unwrap().contains("CEL"));
    assert!(bad("50%").is_some());
    assert!(
        LineFormat::compile(&v1::LogFormat::default())
            .unwrap()
            .is_none()
    );
}

#[test]
fn start_time_takes_envoys_strftime_forms() {
    let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
    assert_eq!(
        strftime(t, "%Y-%m-%dT%H:%M:%S.%3f%z"),
        "2023-11-14T22:13:20.123+0000"
    );
    assert_eq!(
        strftime(t, "%s %F %T %6f %j %%"),
        "1700000000 2023-11-14 22:13:20 123456 318 %"
    );
    assert_eq!(
        strftime(t, "%Q%"),
        "%Q%",
        "unknown and trailing stay as written"
    );
    let f = format("%START_TIME(%s)%", &[]);
    assert_eq!(f.line(&entry()), "1700000000");
}
