//! The per-request cases, written once for both bench targets that run them.
//!
//! `request_path` times them with criterion; `request_instructions` counts their instructions
//! under valgrind's callgrind (a fixed number of iterations, so the count repeats exactly
//! whatever else the machine does). A case says what it measures through [`Harness`] and
//! [`Group`], which mirror criterion's `Bencher` calls, so each target decides how to run it.
//!
//! - `route`: finding the cluster for a request's authority in a snapshot of 200 services;
//! - `headers`: the hygiene every request gets (hop-by-hop removal, request id);
//! - `balance`: one endpoint pick among 100 (each algorithm, equal and mixed weights, with
//!   the request hash precomputed; the aim is under 1 µs);
//! - `resilience`: the per-request checks of circuit breaking (a breaker slot taken and given
//!   back), outlier detection (a success reported), the retry budget (a deposit), a local
//!   rate limit (a token taken) and the retry decision;
//! - `vs-route`: choosing a rule in a VirtualService of 10 header/prefix rules (the last one
//!   matching), with a weighted 90/10 destination;
//! - `authz`: authorizing one request against 20 AuthorizationPolicy rules (5 DENY rules on
//!   headers that do not match, then 15 ALLOW rules of principal, method and path, the last
//!   one matching), and a request no rule allows; `path/normalize`: the path check every
//!   request gets (the ordinary path needs no copy);
//! - `telemetry`: recording one request in `istio_requests_total` and
//!   `istio_request_duration_milliseconds` with Istio's 24 standard labels;
//! - `trace`: the tracer's per-request work on the sidecar's request path (the export is a
//!   background task, drained here by a thread): a request whose caller said "not sampled"
//!   (`unsampled/caller-decided`: headers read, nothing written), one that arrives without a
//!   context and is not sampled (`unsampled/root`: a roll, a "not sampled" `traceparent`
//!   written downstream), and a sampled one (`sampled`: the context rewritten, the span's
//!   tags read from the request, named after its route, finished and queued);
//! - `request`: one full HTTP/1.1 request through a real client sidecar, mutual TLS and a real
//!   server sidecar to an app, all in this process on loopback (the proxies' whole service
//!   stack, without process or scheduler noise from separate binaries).

// Benchmark set-up: a failure to build a fixture is a failed run, reported by expect.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meshlite_bench::load::Protocol;
use meshlite_bench::sidecar::meshlite::{client_config, server_config};
use meshlite_bench::sidecar::pki;
use meshlite_proxy::config::ProxyConfig;
use meshlite_proxy::identity::spiffe::SpiffeId;
use meshlite_proxy::identity::tls::Identity;
use meshlite_proxy::message::headers;
use meshlite_proxy::snapshot::Snapshot;
use meshlite_proxy::snapshot::build::LocalSettings;
use meshlite_proxy::telemetry::metrics::Metrics;
use meshlite_proxy::{RunningProxy, StartOptions};
use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

/// What runs the cases: criterion, which times them, or the instruction counter.
pub trait Harness {
    /// A named group of cases; a case's id is `group/name`, as criterion prints it.
    type Group<'h>: Group
    where
        Self: 'h;

    /// Opens the group `name`.
    fn group(&mut self, name: &str) -> Self::Group<'_>;

    /// The runtime that runs the `request` case's client, sidecars and app. Criterion times
    /// it on a multi-threaded runtime; the instruction counter runs everything on the calling
    /// thread, which callgrind follows and which keeps the order of events fixed.
    fn runtime(&self) -> tokio::runtime::Runtime;
}

/// The cases of one group, each run as criterion's `Bencher` method of the same name would.
pub trait Group {
    /// `routine` is the work of one iteration.
    fn iter<O>(&mut self, name: &str, routine: impl FnMut() -> O);

    /// `setup` makes each iteration's input outside the measurement; `routine` works on it
    /// in place.
    fn iter_batched_ref<I, O>(
        &mut self,
        name: &str,
        setup: impl FnMut() -> I,
        routine: impl FnMut(&mut I) -> O,
    );

    /// `setup` makes each iteration's input outside the measurement; `routine` consumes it.
    fn iter_batched<I, O>(
        &mut self,
        name: &str,
        setup: impl FnMut() -> I,
        routine: impl FnMut(I) -> O,
    );

    /// `routine` makes one iteration's future, driven to completion on `runtime`.
    fn iter_async<O, F: Future<Output = O>>(
        &mut self,
        name: &str,
        runtime: &tokio::runtime::Runtime,
        routine: impl FnMut() -> F,
    );

    /// Closes the group.
    fn finish(self);
}

/// Every case, in the order criterion has always run them (the `request` case last: it
/// starts sidecars that stay up until the end).
pub fn all(h: &mut impl Harness) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki::generate(dir.path()).expect("certificates");
    route(h, dir.path(), &pki);
    header_rewrite(h);
    balance(h);
    resilience(h);
    vs_route(h);
    authz(h);
    jwt(h);
    telemetry(h);
    access_log(h);
    tracing(h);
    full_request(h, dir.path(), &pki);
}

/// A client config with `n` services besides `app`, each with one endpoint.
fn many_services_config(pki: &pki::MeshPki, n: usize) -> String {
    let mut yaml = client_config(
        pki,
        "127.0.0.1:1".parse().expect("addr"),
        Protocol::Http1,
        None,
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "  - name: svc-{i}\n    namespace: ns-{}\n    port: {}\n    protocol: http\n    identities: [\"{}\"]\n    endpoints: [\"127.0.0.1:{}\"]\n",
            i % 7,
            8000 + i % 3,
            pki::SERVER_ID,
            20000 + i
        ));
    }
    yaml
}

fn route(h: &mut impl Harness, dir: &Path, pki: &pki::MeshPki) {
    let cfg = ProxyConfig::parse(&many_services_config(pki, 200), &dir.join("client.yaml"))
        .expect("config parses");
    let metrics = Metrics::new();
    let id = SpiffeId::parse(pki::CLIENT_ID).expect("id");
    let identity = Arc::new(
        Identity::from_files(
            &id,
            &pki.client_cert,
            &pki.client_key,
            &pki.root,
            metrics.tls_failures.clone(),
        )
        .expect("identity"),
    );
    let view = meshlite_proxy::source::file::view(&cfg);
    let local = LocalSettings::from_config(&cfg);
    let snap = Snapshot::build(&local, &view, &identity, &metrics, 1, None).expect("snapshot");
    let mut group = h.group("route");
    for authority in ["app", "svc-150:8000", "svc-150.ns-3.svc.cluster.local:8000"] {
        assert!(snap.route(authority).is_ok(), "{authority} routes");
        group.iter(authority, || snap.route(black_box(authority)).is_ok());
    }
    group.iter("unknown-host", || {
        snap.route(black_box("nowhere:80")).is_err()
    });
    group.finish();
}

fn typical_request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("host", "reviews:9080"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("content-type", "application/json"),
        ("authorization", "Bearer abcdefghijklmnopqrstuvwxyz"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ] {
        h.insert(
            http::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    h
}

fn header_rewrite(h: &mut impl Harness) {
    let template = typical_request_headers();
    let mut group = h.group("headers");
    group.iter_batched_ref(
        "strip-hop-by-hop+request-id",
        || template.clone(),
        |h| {
            headers::strip_hop_by_hop(h);
            headers::ensure_request_id(h)
        },
    );
    group.iter("uuid-v4", headers::uuid_v4);
    group.finish();
}

fn full_request(h: &mut impl Harness, dir: &Path, pki: &pki::MeshPki) {
    let runtime = h.runtime();
    let (client, entry, _proxies) = runtime.block_on(async {
        let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind app");
        let app_addr = app_listener.local_addr().expect("app addr");
        tokio::spawn(meshlite_bench::app::serve(app_listener, 64));
        let server_cfg = ProxyConfig::parse(
            &server_config(pki, app_addr, Protocol::Http1, false),
            &dir.join("server.yaml"),
        )
        .expect("server config");
        let server = RunningProxy::start(server_cfg, StartOptions::default())
            .await
            .expect("server sidecar starts");
        let client_cfg = ProxyConfig::parse(
            &client_config(pki, server.addrs.inbound, Protocol::Http1, None),
            &dir.join("client.yaml"),
        )
        .expect("client config");
        let client_proxy = RunningProxy::start(client_cfg, StartOptions::default())
            .await
            .expect("client sidecar starts");
        let entry = client_proxy.addrs.outbound;
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        (client, entry, (server, client_proxy))
    });
    let send = |client: Client<HttpConnector, Empty<Bytes>>| async move {
        let req = Request::get(format!("http://{entry}/"))
            .header("host", "app")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = client.request(req).await.expect("response");
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.expect("body").to_bytes()
    };
    // One request outside the measurement: the mTLS connection is set up here.
    runtime.block_on(send(client.clone()));
    let mut group = h.group("request");
    group.iter_async("http1-through-mtls-pair", &runtime, || send(client.clone()));
    group.finish();
}

fn balance(h: &mut impl Harness) {
    use meshlite_proxy::balance::{
        Balancer, Endpoint, LeastRequestConfig, MaglevConfig, Policy, RingHashConfig, ThreadRandom,
        hash_key,
    };
    use std::sync::atomic::AtomicU64;
    let keys: Vec<String> = (0..100)
        .map(|i| format!("10.0.{}.{}:15006", i / 250, i % 250))
        .collect();
    let active: Vec<AtomicU64> = (0..100).map(|i| AtomicU64::new(i % 7)).collect();
    let mut group = h.group("balance");
    for (weights, mixed) in [("equal", false), ("mixed", true)] {
        let endpoints: Vec<Endpoint<'_>> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Endpoint::new(k, if mixed { 1 + (i as u32 % 5) } else { 1 }))
            .collect();
        for (name, policy) in [
            ("round-robin", Policy::RoundRobin),
            ("random", Policy::Random),
            (
                "least-request",
                Policy::LeastRequest(LeastRequestConfig::default()),
            ),
            ("ring-hash", Policy::RingHash(RingHashConfig::default())),
            ("maglev", Policy::Maglev(MaglevConfig::default())),
        ] {
            let lb = Balancer::new(policy, &endpoints, &mut ThreadRandom).expect("balancer");
            let mut n = 0u64;
            group.iter(&format!("{name}/{weights}/100"), || {
                n = n.wrapping_add(1);
                let hash = hash_key(&n.to_le_bytes());
                black_box(lb.pick(Some(hash), &active[..], &mut ThreadRandom))
            });
        }
    }
    group.finish();
}

fn resilience(h: &mut impl Harness) {
    use meshlite_proxy::resilience::breaker::Limit;
    use meshlite_proxy::resilience::outlier::{Detector, OutlierConfig};
    use meshlite_proxy::resilience::rate_limit::{RateLimit, TokenBucket};
    use meshlite_proxy::resilience::retry::{Outcome, RetryBudget, RetryPolicy};
    use std::time::Duration;
    use tokio::time::Instant;
    let mut group = h.group("resilience");
    let limit = Limit::new(1024, Arc::default());
    group.iter("breaker-acquire-release", || black_box(limit.try_acquire()));
    let detector = Detector::new(
        OutlierConfig::default(),
        (0..100).map(|_| Arc::default()).collect(),
    );
    let now = Instant::now();
    let mut i = 0usize;
    group.iter("outlier-report-success/100", || {
        i = (i + 1) % 100;
        black_box(detector.report(i, 200, now))
    });
    let budget = RetryBudget::default();
    group.iter("retry-budget-deposit", || budget.deposit(black_box(now)));
    let bucket = TokenBucket::new(
        &RateLimit {
            max_tokens: u32::MAX,
            tokens_per_fill: u32::MAX,
            fill_interval: Some(Duration::from_secs(1)),
        },
        now,
    )
    .expect("bucket");
    group.iter("rate-limit-take", || {
        black_box(bucket.try_take(now + Duration::from_millis(1)))
    });
    let policy = RetryPolicy::istio_default(false);
    let outcome = Outcome::Response {
        status: 200,
        grpc_status: None,
    };
    group.iter("retry-decision", || {
        black_box(policy.retriable(black_box(&outcome)))
    });
    group.finish();
}

fn vs_route(h: &mut impl Harness) {
    use meshlite_proxy::route::{Head, RouteTable, Target};
    use meshlite_proxy::snapshot::build::ResolveDestination;
    use meshlite_xds_proto::v1;
    struct ByName;
    impl ResolveDestination<()> for ByName {
        fn resolve(&self, dest: &v1::WeightedDestination, _port: u16) -> Target<()> {
            Target::Missing(Arc::from(dest.subset.as_str()))
        }
    }
    let header_rule = |i: usize| v1::HttpRoute {
        matches: vec![v1::HttpMatch {
            headers: [(
                "x-user-type".to_string(),
                v1::StringMatch {
                    kind: Some(v1::string_match::Kind::Exact(format!("tier-{i}"))),
                },
            )]
            .into(),
            uri: Some(v1::StringMatch {
                kind: Some(v1::string_match::Kind::Prefix(format!("/api/{i}"))),
            }),
            ..Default::default()
        }],
        route: vec![v1::WeightedDestination {
            host: "reviews".into(),
            subset: format!("v{i}"),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut http: Vec<v1::HttpRoute> = (0..9).map(header_rule).collect();
    http.push(v1::HttpRoute {
        route: vec![
            v1::WeightedDestination {
                host: "reviews".into(),
                subset: "v1".into(),
                weight: 90,
                ..Default::default()
            },
            v1::WeightedDestination {
                host: "reviews".into(),
                subset: "v2".into(),
                weight: 10,
                ..Default::default()
            },
        ],
        ..Default::default()
    });
    let table = RouteTable::<()>::compile(
        &v1::RouteTable {
            hostname: "reviews".into(),
            http,
            origin: "default/reviews".into(),
            tcp: Vec::new(),
        },
        9080,
        &ByName,
    )
    .expect("route table");
    let req = Request::get("/api/products")
        .header("x-user-type", "regular")
        .body(())
        .expect("request");
    let mut group = h.group("vs-route");
    group.iter("10-rules-last-matches", || {
        black_box(table.select(Head::of(&req), "reviews:9080", 9080).is_some())
    });
    group.finish();
}

fn telemetry(h: &mut impl Harness) {
    use meshlite_proxy::message::response_flags::ResponseFlags;
    use meshlite_proxy::telemetry::istio::MetricSet;
    use meshlite_proxy::telemetry::istio::{IstioLabels, RequestSample};
    use meshlite_proxy::telemetry::labels::ServiceLabels;
    use meshlite_proxy::telemetry::peer::WorkloadMetadata;
    let metrics = Metrics::new();
    let l = |s: &str| -> Arc<str> { Arc::from(s) };
    let workload = |name: &str, app: &str, version: &str| {
        let labels = std::collections::BTreeMap::from([
            ("app".to_string(), app.to_string()),
            ("version".to_string(), version.to_string()),
        ]);
        Arc::new(WorkloadMetadata::from_labels(name, "default", &labels, ""))
    };
    let service = ServiceLabels::new(
        l("reviews.default.svc.cluster.local"),
        l("reviews"),
        l("default"),
        l("cluster.local/ns/default/sa/reviews"),
    );
    let labels = IstioLabels {
        reporter: "source",
        source: workload("productpage-v1", "productpage", "v1"),
        source_principal: l("cluster.local/ns/default/sa/productpage"),
        destination: workload("reviews-v2", "reviews", "v2"),
        destination_principal: service.principal.clone(),
        service: service.service.clone(),
        request_protocol: "http",
        response_code: 200,
        grpc_response_status: "",
        response_flags: ResponseFlags::NONE,
        connection_security_policy: "unknown",
        tags: None,
    };
    let sample = RequestSample {
        duration_ms: 0.25,
        request_bytes: 0,
        response_bytes: 1024,
        ..Default::default()
    };
    // Every standard request family: the count, the duration and both sizes.
    let mut group = h.group("telemetry");
    group.iter("record-request", || {
        metrics
            .istio
            .record_request(black_box(&labels), &sample, MetricSet::NONE)
    });
    // Equal labels made of other Arcs (after a push): compared by text.
    let copy = IstioLabels {
        source: Arc::new((*labels.source).clone()),
        destination: Arc::new((*labels.destination).clone()),
        ..labels.clone()
    };
    group.iter("record-request-equal-labels-other-arcs", || {
        metrics
            .istio
            .record_request(black_box(&copy), &sample, MetricSet::NONE)
    });
    let grpc = IstioLabels {
        request_protocol: "grpc",
        grpc_response_status: "0",
        ..labels.clone()
    };
    let grpc_sample = RequestSample {
        request_messages: 1,
        response_messages: 1,
        ..sample
    };
    group.iter("record-request-grpc", || {
        metrics
            .istio
            .record_request(black_box(&grpc), &grpc_sample, MetricSet::NONE)
    });
    // The seed's `tagOverrides`: tenant and priority from request headers on the request
    // count (the values read, the label sets made, both recorded).
    use meshlite_proxy::telemetry::attributes::LogAttributes;
    use meshlite_proxy::telemetry::tag_overrides::TagOverrides;
    use meshlite_xds_proto::v1;
    let tag = |value: &str| v1::TagOverride {
        remove: false,
        value: value.to_string(),
    };
    let overrides = TagOverrides::compile(
        &[v1::MetricOverride {
            metric: v1::MetricSelector::RequestCount as i32,
            tag_overrides: [
                ("tenant".to_string(), tag("request.headers['x-tenant']")),
                ("priority".to_string(), tag("request.headers['x-priority']")),
            ]
            .into(),
            ..Default::default()
        }],
        |_| true,
    )
    .expect("compiles")
    .expect("overrides");
    let headers = vec![
        ("x-tenant".to_string(), "acme".to_string()),
        ("x-priority".to_string(), "high".to_string()),
    ];
    let attributes = LogAttributes {
        headers: &headers,
        method: "GET",
        code: 200,
        ..Default::default()
    };
    group.iter("record-request-tag-overrides", || {
        for (l, skipped) in overrides.label_sets(black_box(&labels), &attributes, MetricSet::NONE) {
            metrics.istio.record_request(&l, &sample, skipped);
        }
    });
    group.finish();
}

fn authz(h: &mut impl Harness) {
    use meshlite_proxy::message::path::{PathNormalization, normalize};
    use meshlite_proxy::policy::authz::{Attributes, Authorizer, Peer, Request, TrustDomains};
    use meshlite_xds_proto::v1;
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut policies = Vec::new();
    for i in 0..5 {
        policies.push(v1::AuthorizationPolicy {
            origin: format!("default/deny-{i}"),
            action: v1::authorization_policy::Action::Deny as i32,
            rules: vec![v1::Rule {
                when: vec![v1::Condition {
                    key: format!("request.headers[x-block-{i}]"),
                    values: s(&["*"]),
                    not_values: vec![],
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    for i in 0..15 {
        policies.push(v1::AuthorizationPolicy {
            origin: format!("default/allow-{i}"),
            action: v1::authorization_policy::Action::Allow as i32,
            rules: vec![v1::Rule {
                from: vec![v1::Source {
                    principals: vec![format!("cluster.local/ns/default/sa/caller-{i}")],
                    ..Default::default()
                }],
                to: vec![v1::Operation {
                    methods: s(&["POST", "PUT"]),
                    paths: vec![format!("/api/v{i}/*")],
                    ..Default::default()
                }],
                when: vec![],
            }],
            ..Default::default()
        });
    }
    let metrics = Metrics::new();
    let tds = TrustDomains {
        local: "cluster.local".into(),
        aliases: vec![],
    };
    let authz = Authorizer::compile(&policies, &tds, &metrics.security).expect("compiles");
    let peer =
        Peer::new(&SpiffeId::parse("spiffe://cluster.local/ns/default/sa/caller-14").expect("id"));
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("x-request-id", HeaderValue::from_static("6c1f2a"));
    let attrs = |path: &'static str| Attributes {
        peer: Some(&peer),
        source_ip: "10.0.0.5".parse().expect("ip"),
        remote_ip: "10.0.0.5".parse().expect("ip"),
        destination_ip: "10.0.0.9".parse().expect("ip"),
        destination_port: 8080,
        sni: None,
        request: Some(Request {
            host: "llm-processor:8080",
            method: "POST",
            path,
            headers: &headers,
            auth: None,
        }),
    };
    let allowed = attrs("/api/v14/process");
    assert!(authz.evaluate(&allowed).allowed);
    let denied = attrs("/admin");
    assert!(!authz.evaluate(&denied).allowed);
    let mut group = h.group("authz");
    group.iter("20-rules-last-allows", || {
        black_box(authz.evaluate(black_box(&allowed)).allowed)
    });
    group.iter("20-rules-none-allows", || {
        black_box(authz.evaluate(black_box(&denied)).allowed)
    });
    group.finish();
    let mut group = h.group("path");
    group.iter("normalize/ordinary", || {
        black_box(normalize(black_box("/api/v1/process"), PathNormalization::Base).is_ok())
    });
    group.iter("normalize/dot-segments", || {
        black_box(
            normalize(
                black_box("/api/v1/../v2/./process"),
                PathNormalization::MergeSlashes,
            )
            .is_ok(),
        )
    });
    group.finish();
}

/// RequestAuthentication on a request carrying a valid token: the per-request cost a
/// workload with `jwtRules` pays (parse, key lookup, signature check, claims).
fn jwt(h: &mut impl Harness) {
    use base64::Engine as _;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
    use meshlite_proxy::policy::jwt::{JwtAuthn, JwtStats};
    use meshlite_xds_proto::v1;
    const NOW: u64 = 1_800_000_000;
    let es256 = {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        (
            EncodingKey::from_ec_der(&pair.serialize_der()),
            Algorithm::ES256,
        )
    };
    let rs256 = {
        use aws_lc_rs::encoding::AsDer;
        let pair =
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
        let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).expect("PKCS#8");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        (
            EncodingKey::from_rsa_pem(pem.as_bytes()).expect("RSA PEM"),
            Algorithm::RS256,
        )
    };
    let mut group = h.group("jwt");
    for (name, (key, alg)) in [("es256-valid", es256), ("rs256-valid", rs256)] {
        let mut jwk = Jwk::from_encoding_key(&key, alg).expect("JWK");
        jwk.common.key_id = Some("k1".into());
        let rule = v1::JwtRule {
            origin: "shop/jwt".into(),
            issuer: "https://issuer.example".into(),
            audiences: vec!["shop".into()],
            jwks: serde_json::json!({ "keys": [jwk] }).to_string(),
            ..Default::default()
        };
        let authn = JwtAuthn::compile(&[rule], JwtStats::default()).expect("rule compiles");
        let mut header = Header::new(alg);
        header.kid = Some("k1".into());
        let claims = serde_json::json!({
            "iss": "https://issuer.example", "sub": "tenant-a/alice", "aud": "shop",
            "exp": NOW + 3600, "tenant": "a", "scope": "read write",
        });
        let token = jsonwebtoken::encode(&header, &claims, &key).expect("token");
        let bearer = HeaderValue::try_from(format!("Bearer {token}")).expect("header");
        let request = || {
            let mut req = http::Request::new(());
            req.headers_mut().insert("authorization", bearer.clone());
            req
        };
        let mut check = request();
        assert!(matches!(authn.authenticate(&mut check, NOW), Ok(Some(_))));
        group.iter_batched(name, request, |mut req| {
            black_box(authn.authenticate(&mut req, NOW).is_ok())
        });
    }
    group.finish();
}

fn tracing(h: &mut impl Harness) {
    use meshlite_proxy::message::response_flags::ResponseFlags;
    use meshlite_proxy::telemetry::trace::export::SpanSink;
    use meshlite_proxy::telemetry::trace::{
        Collector, CollectorKind, SpanKind, SpanOutcome, TraceSettings, TraceStats, Tracer,
    };
    let settings = TraceSettings {
        collector: Collector {
            kind: CollectorKind::Otlp,
            host: "opentelemetry-collector.monitoring".into(),
            port: 4317,
        },
        sampling_percent: 0.0,
        custom_tags: Vec::new(),
        max_path_tag_length: 256,
        report_spans: true,
    };
    let (sink, mut rx) = SpanSink::queue(settings.collector.clone(), TraceStats::default(), 2048);
    // The export task's part: take spans off the queue as they come.
    std::thread::spawn(move || while rx.blocking_recv().is_some() {});
    let tracer = Tracer::new(settings, sink);
    let remote: std::net::SocketAddr = "10.0.0.7:40000".parse().expect("addr");
    let request = |traceparent: Option<&'static str>| {
        let mut req = Request::get("/reviews/0").body(()).expect("request");
        *req.headers_mut() = typical_request_headers();
        req.headers_mut().remove("traceparent");
        req.headers_mut().insert(
            "x-request-id",
            HeaderValue::from_static("3e1f6c1a-0e4c-4187-acb5-b7dfdb552328"),
        );
        if let Some(tp) = traceparent {
            req.headers_mut()
                .insert("traceparent", HeaderValue::from_static(tp));
        }
        req
    };
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut group = h.group("trace");
    group.iter_batched_ref(
        "unsampled/caller-decided",
        || request(Some(unsampled)),
        |req| tracer.start(SpanKind::Client, req, remote).is_none(),
    );
    group.iter_batched_ref(
        "unsampled/root",
        || request(None),
        |req| tracer.start(SpanKind::Client, req, remote).is_none(),
    );
    let outcome = SpanOutcome {
        status: 200,
        flags: ResponseFlags::NONE,
        grpc_status: None,
        request_bytes: 0,
        response_bytes: 441,
        duration: std::time::Duration::from_micros(250),
    };
    group.iter_batched_ref(
        "sampled",
        || request(Some(sampled)),
        |req| {
            let mut span = tracer
                .start(SpanKind::Client, req, remote)
                .expect("sampled");
            span.route(
                "reviews.default.svc.cluster.local",
                9080,
                "outbound|9080||reviews.default.svc.cluster.local",
            );
            (*span).finish(&outcome);
        },
    );
    group.finish();
}

/// Making one access-log line: the default JSON line against a provider's `logFormat` of
/// the seed's business fields (off the request's critical path, but on a worker thread).
fn access_log(h: &mut impl Harness) {
    use meshlite_proxy::telemetry::access_log::AccessLogEntry;
    use meshlite_proxy::telemetry::access_log::format::LineFormat;
    use meshlite_xds_proto::v1;
    let entry = AccessLogEntry {
        method: "GET".into(),
        path: "/reviews/1".into(),
        protocol: "HTTP/1.1",
        response_code: 200,
        bytes_sent: 512,
        duration: 3,
        upstream_service_time: Some(2),
        user_agent: Some("curl/8".into()),
        request_id: Some("4f6c1a0e-8b1d-4f3c-9a6e-2b7d5c1e9f00".into()),
        authority: Some("reviews:9080".into()),
        upstream_host: Some("10.0.0.9:15006".into()),
        upstream_cluster: Some("outbound|9080||reviews.default.svc.cluster.local".into()),
        downstream_remote_address: "127.0.0.1:40000".into(),
        request_headers: Some(vec![
            ("x-tenant".into(), "acme".into()),
            ("x-intent-type".into(), "checkout".into()),
            ("x-priority".into(), "high".into()),
        ]),
        ..Default::default()
    };
    let labels = [
        ("code", "%RESPONSE_CODE%"),
        ("tenant", "%REQ(X-TENANT)%"),
        ("intent", "%REQ(X-INTENT-TYPE)%"),
        ("priority", "%REQ(X-PRIORITY)%"),
        ("took_ms", "%DURATION%"),
        ("start", "%START_TIME%"),
    ];
    let format = LineFormat::compile(&v1::LogFormat {
        text: String::new(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
    .expect("compiles")
    .expect("a format");
    let mut group = h.group("access-log");
    group.iter("default-json-line", || {
        serde_json::to_string(black_box(&entry))
    });
    group.iter("log-format-6-labels", || format.line(black_box(&entry)));
    group.iter("istio-default-text", || {
        LineFormat::istio_default_text().body(black_box(&entry))
    });
    group.finish();
}
