//! Resolution tests: Telemetry resources at mesh, namespace and workload scope (YAML, as users
//! write them) and a workload go in; the `WorkloadTelemetry` its sidecar receives comes out.

use std::collections::BTreeMap;

use meshlite_xds_proto::v1;

use super::resolve;
use crate::registry::Workload;
use crate::translate::tests::config;

/// One Telemetry document named `ns/name` with a flow-style `spec` (and an optional
/// creation time, Istio's tie-breaker).
fn telemetry(ns_name: &str, spec: &str) -> String {
    telemetry_at(ns_name, None, spec)
}

fn telemetry_at(ns_name: &str, created: Option<&str>, spec: &str) -> String {
    let (ns, name) = ns_name.split_once('/').unwrap_or(("default", ns_name));
    let created = created
        .map(|c| format!(", creationTimestamp: \"{c}\""))
        .unwrap_or_default();
    format!(
        "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {ns}{created}}}\nspec: {spec}\n"
    )
}

/// A MeshConfig declaring trace collectors `zipkin` and `otel`, and an access log `otel-als`.
const MESH: &str = "---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {name: mesh, namespace: istio-system}
spec:
  meshConfig:
    extensionProviders:
    - {name: zipkin, zipkin: {service: zipkin.tracing.svc.cluster.local, port: 9411}}
    - {name: otel, opentelemetry: {service: collector.monitoring.svc.cluster.local, port: 4317}}
    - {name: otel-als, envoyOtelAls: {service: collector.monitoring.svc.cluster.local, port: 4317}}
";

fn workload(ns: &str, labels: &[(&str, &str)]) -> Workload {
    Workload {
        key: format!("w.{ns}@10.0.0.1:15006"),
        name: "w".into(),
        namespace: ns.into(),
        service_account: "w".into(),
        identity: format!("spiffe://cluster.local/ns/{ns}/sa/w"),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        address: "10.0.0.1:15006".parse().unwrap(),
        ports: Vec::new(),
        locality: Default::default(),
    }
}

#[track_caller]
fn resolved(docs: &[String], w: &Workload) -> v1::WorkloadTelemetry {
    resolve(&config(docs), w).expect("a Telemetry applies")
}

fn header(name: &str) -> v1::CustomTag {
    v1::CustomTag {
        kind: Some(v1::custom_tag::Kind::Header(v1::HeaderTag {
            name: name.into(),
            default_value: String::new(),
        })),
    }
}

fn literal(value: &str) -> v1::CustomTag {
    v1::CustomTag {
        kind: Some(v1::custom_tag::Kind::Literal(value.into())),
    }
}

#[test]
fn nothing_applies_from_other_namespaces_other_workloads_or_target_refs() {
    let docs = [
        telemetry("shop/wide", "{tracing: [{randomSamplingPercentage: 5}]}"),
        telemetry(
            "default/ratings",
            "{selector: {matchLabels: {app: ratings}}, tracing: [{randomSamplingPercentage: 5}]}",
        ),
        telemetry(
            "default/gateway",
            "{targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}], tracing: [{randomSamplingPercentage: 5}]}",
        ),
    ];
    let config = config(&docs);
    assert_eq!(
        resolve(&config, &workload("default", &[("app", "reviews")])),
        None
    );
    assert!(resolve(&config, &workload("shop", &[])).is_some());
}

#[test]
fn tracing_fields_override_one_by_one_from_mesh_to_namespace_to_workload() {
    let docs = [
        MESH.to_string(),
        telemetry(
            "istio-system/mesh-default",
            "{tracing: [{providers: [{name: zipkin}], randomSamplingPercentage: 10, customTags: {env: {literal: {value: prod}}}}]}",
        ),
        telemetry(
            "shop/default",
            "{tracing: [{customTags: {team: {header: {name: x-team}}}}]}",
        ),
        telemetry(
            "shop/critical",
            "{selector: {matchLabels: {app: payments}}, tracing: [{randomSamplingPercentage: 25}]}",
        ),
    ];
    let t = resolved(&docs, &workload("shop", &[("app", "payments")]));
    assert_eq!(
        t.sources,
        ["istio-system/mesh-default", "shop/default", "shop/critical"]
    );
    let tracing = t.tracing.expect("tracing");
    // The workload sets only the sampling; the provider comes from the mesh, the custom tags
    // from the namespace, whose map replaces the mesh's as a whole (istiod's shallow merge).
    assert_eq!(tracing.random_sampling_percentage, Some(25.0));
    assert_eq!(tracing.providers, ["zipkin"]);
    assert_eq!(
        tracing.custom_tags,
        BTreeMap::from([("team".to_string(), header("x-team"))])
    );
    assert!(!tracing.disable_span_reporting);
    assert_eq!(
        t.server_tracing, None,
        "no match.mode: one setting for both sides"
    );

    // Another workload of the namespace: the namespace's and the mesh's settings.
    let other = resolved(&docs, &workload("shop", &[("app", "cart")]));
    assert_eq!(other.sources, ["istio-system/mesh-default", "shop/default"]);
    assert_eq!(
        other.tracing.unwrap().random_sampling_percentage,
        Some(10.0)
    );
    // Another namespace: the mesh's alone.
    let elsewhere = resolved(&docs, &workload("default", &[]));
    assert_eq!(elsewhere.sources, ["istio-system/mesh-default"]);
    let tracing = elsewhere.tracing.unwrap();
    assert_eq!(
        tracing.custom_tags,
        BTreeMap::from([("env".to_string(), literal("prod"))])
    );
    assert!(elsewhere.metric_overrides.is_empty() && elsewhere.access_logging.is_empty());
}

#[test]
fn a_tracing_entry_for_one_side_splits_the_settings() {
    let docs = [
        MESH.to_string(),
        telemetry(
            "istio-system/mesh-default",
            "{tracing: [{providers: [{name: otel}], randomSamplingPercentage: 10}]}",
        ),
        telemetry(
            "shop/api",
            "{selector: {matchLabels: {app: api}}, tracing: [{match: {mode: SERVER}, randomSamplingPercentage: 50}]}",
        ),
    ];
    let t = resolved(&docs, &workload("shop", &[("app", "api")]));
    let client = t.tracing.expect("client side");
    let server = t.server_tracing.expect("server side differs");
    assert_eq!(client.random_sampling_percentage, Some(10.0));
    assert_eq!(server.random_sampling_percentage, Some(50.0));
    assert_eq!(server.providers, ["otel"]);
}

#[test]
fn a_tracing_provider_the_mesh_does_not_define_turns_span_reporting_off() {
    let docs = [
        MESH.to_string(),
        telemetry(
            "istio-system/mesh-default",
            "{tracing: [{providers: [{name: jaeger}], randomSamplingPercentage: 10}]}",
        ),
        telemetry("shop/default", "{tracing: [{providers: [{name: ZIPKIN}]}]}"),
    ];
    let off = resolved(&docs, &workload("default", &[])).tracing.unwrap();
    assert!(off.disable_span_reporting, "jaeger is not a provider");
    // Names are looked up case-insensitively, as istiod does.
    let on = resolved(&docs, &workload("shop", &[])).tracing.unwrap();
    assert!(!on.disable_span_reporting);
    assert_eq!(on.providers, ["ZIPKIN"]);
}

/// The override in force for `metric` on `side`, read as a sidecar reads the list (a later
/// entry wins); the control plane's list has at most one entry for each.
#[track_caller]
fn effective(
    overrides: &[v1::MetricOverride],
    metric: v1::MetricSelector,
    side: v1::WorkloadMode,
) -> Option<(bool, BTreeMap<String, v1::TagOverride>)> {
    let matching: Vec<&v1::MetricOverride> = overrides
        .iter()
        .filter(|o| {
            (o.metric() == v1::MetricSelector::AllMetrics || o.metric() == metric)
                && (o.mode() == v1::WorkloadMode::ClientAndServer || o.mode() == side)
        })
        .collect();
    assert!(matching.len() <= 1, "overlapping overrides: {matching:#?}");
    matching
        .first()
        .map(|o| (o.disabled, o.tag_overrides.clone()))
}

fn upsert(value: &str) -> v1::TagOverride {
    v1::TagOverride {
        remove: false,
        value: value.into(),
    }
}

fn remove() -> v1::TagOverride {
    v1::TagOverride {
        remove: true,
        value: String::new(),
    }
}

#[test]
fn metric_tag_overrides_accumulate_from_mesh_to_workload() {
    use v1::MetricSelector as M;
    use v1::WorkloadMode as Side;
    let docs = [
        telemetry(
            "istio-system/mesh-default",
            "{metrics: [{providers: [{name: prometheus}], overrides: [{tagOverrides: {intent_type: {value: \"request.headers['x-intent-type']\"}, tenant: {value: \"request.headers['x-tenant']\"}}}]}]}",
        ),
        telemetry(
            "shop/default",
            "{metrics: [{overrides: [{match: {metric: REQUEST_COUNT}, tagOverrides: {tenant: {operation: REMOVE}, priority: {value: \"request.headers['x-priority']\"}}}]}]}",
        ),
        telemetry(
            "shop/api",
            "{selector: {matchLabels: {app: api}}, metrics: [{overrides: [{match: {metric: REQUEST_COUNT, mode: SERVER}, disabled: true}]}]}",
        ),
    ];
    let t = resolved(&docs, &workload("shop", &[("app", "api")]));
    let o = &t.metric_overrides;
    let mesh_tags = BTreeMap::from([
        (
            "intent_type".to_string(),
            upsert("request.headers['x-intent-type']"),
        ),
        ("tenant".to_string(), upsert("request.headers['x-tenant']")),
    ]);
    let count_tags = BTreeMap::from([
        (
            "intent_type".to_string(),
            upsert("request.headers['x-intent-type']"),
        ),
        (
            "priority".to_string(),
            upsert("request.headers['x-priority']"),
        ),
        ("tenant".to_string(), remove()),
    ]);
    // The namespace's tags add to the mesh's (and REMOVE replaces the mesh's tenant); the
    // workload's `disabled` keeps them all.
    assert_eq!(
        effective(o, M::RequestCount, Side::Client),
        Some((false, count_tags.clone()))
    );
    assert_eq!(
        effective(o, M::RequestCount, Side::Server),
        Some((true, count_tags))
    );
    for metric in [M::RequestDuration, M::TcpSentBytes, M::GrpcResponseMessages] {
        for side in [Side::Client, Side::Server] {
            assert_eq!(effective(o, metric, side), Some((false, mesh_tags.clone())));
        }
    }

    // The mesh's override alone: one entry for every metric and both sides.
    let mesh_only = resolved(&docs, &workload("default", &[]));
    assert_eq!(
        mesh_only.metric_overrides,
        [v1::MetricOverride {
            metric: M::AllMetrics as i32,
            mode: Side::ClientAndServer as i32,
            disabled: false,
            tag_overrides: mesh_tags,
        }]
    );
}

#[test]
fn disabling_all_metrics_holds_until_a_more_specific_scope_enables_them() {
    use v1::MetricSelector as M;
    use v1::WorkloadMode as Side;
    let docs = [
        telemetry(
            "istio-system/mesh-default",
            "{metrics: [{providers: [{name: prometheus}], overrides: [{match: {metric: ALL_METRICS}, disabled: true}]}]}",
        ),
        telemetry(
            "shop/default",
            "{metrics: [{overrides: [{match: {metric: REQUEST_COUNT, mode: CLIENT}, disabled: false}]}]}",
        ),
    ];
    let t = resolved(&docs, &workload("shop", &[]));
    let o = &t.metric_overrides;
    assert_eq!(
        effective(o, M::RequestCount, Side::Client),
        Some((false, BTreeMap::new()))
    );
    assert_eq!(
        effective(o, M::RequestCount, Side::Server).map(|e| e.0),
        Some(true)
    );
    assert_eq!(
        effective(o, M::RequestDuration, Side::Client).map(|e| e.0),
        Some(true)
    );
}

#[test]
fn metrics_for_other_providers_do_not_apply_and_no_prometheus_provider_means_no_metrics() {
    let docs = [
        telemetry(
            "istio-system/mesh-default",
            "{metrics: [{providers: [{name: prometheus}], overrides: [{tagOverrides: {tenant: {value: \"request.headers['x-tenant']\"}}}]}]}",
        ),
        // Overrides for stackdriver only, then back to the providers in force: prometheus.
        telemetry(
            "shop/default",
            "{metrics: [{providers: [{name: stackdriver}], overrides: [{disabled: true}]}, {providers: [{name: prometheus}]}]}",
        ),
        // The most specific list names stackdriver alone: no Prometheus metrics at all.
        telemetry(
            "shop/legacy",
            "{selector: {matchLabels: {app: legacy}}, metrics: [{providers: [{name: stackdriver}]}]}",
        ),
    ];
    let shop = resolved(&docs, &workload("shop", &[]));
    assert_eq!(shop.metric_overrides.len(), 1);
    assert!(!shop.metric_overrides[0].disabled, "{shop:#?}");
    let legacy = resolved(&docs, &workload("shop", &[("app", "legacy")]));
    assert_eq!(
        legacy.metric_overrides,
        [v1::MetricOverride {
            metric: v1::MetricSelector::AllMetrics as i32,
            mode: v1::WorkloadMode::ClientAndServer as i32,
            disabled: true,
            tag_overrides: BTreeMap::new(),
        }]
    );
}

fn log(provider: &str, filter: &str, mode: v1::WorkloadMode, disabled: bool) -> v1::AccessLogging {
    v1::AccessLogging {
        providers: if provider.is_empty() {
            Vec::new()
        } else {
            vec![provider.into()]
        },
        disabled,
        filter: filter.into(),
        mode: mode as i32,
    }
}

#[test]
fn the_most_specific_access_log_entry_wins_per_provider_and_side() {
    use v1::WorkloadMode as Side;
    let errors = "response.code >= 400";
    let docs = [
        MESH.to_string(),
        telemetry(
            "istio-system/mesh-default",
            &format!(
                "{{accessLogging: [{{providers: [{{name: envoy}}], filter: {{expression: \"{errors}\"}}}}]}}"
            ),
        ),
        // Inherits envoy: outbound requests are not logged in this namespace.
        telemetry(
            "shop/default",
            "{accessLogging: [{match: {mode: CLIENT}, disabled: true}]}",
        ),
        // Everything this workload serves is logged (a filter of its own replaces the mesh's).
        telemetry(
            "shop/api",
            "{selector: {matchLabels: {app: api}}, accessLogging: [{match: {mode: SERVER}, filter: {expression: \"true\"}}]}",
        ),
        // Logs to the OpenTelemetry collector only: envoy is no longer in force.
        telemetry(
            "shop/audited",
            "{selector: {matchLabels: {app: audited}}, accessLogging: [{providers: [{name: otel-als}]}]}",
        ),
    ];
    assert_eq!(
        resolved(&docs, &workload("default", &[])).access_logging,
        [log("envoy", errors, Side::ClientAndServer, false)]
    );
    assert_eq!(
        resolved(&docs, &workload("shop", &[])).access_logging,
        [
            log("envoy", "", Side::Client, true),
            log("envoy", errors, Side::Server, false)
        ]
    );
    assert_eq!(
        resolved(&docs, &workload("shop", &[("app", "api")])).access_logging,
        [
            log("envoy", "", Side::Client, true),
            log("envoy", "true", Side::Server, false)
        ]
    );
    assert_eq!(
        resolved(&docs, &workload("shop", &[("app", "audited")])).access_logging,
        [log("otel-als", "", Side::ClientAndServer, false)]
    );
}

#[test]
fn access_logging_without_providers_is_the_default_providers_and_a_side_left_out_is_off() {
    use v1::WorkloadMode as Side;
    let docs = [telemetry(
        "istio-system/mesh-default",
        "{accessLogging: [{match: {mode: SERVER}, filter: {expression: \"response.code >= 500\"}}]}",
    )];
    assert_eq!(
        resolved(&docs, &workload("default", &[])).access_logging,
        [
            log("", "", Side::Client, true),
            log("", "response.code >= 500", Side::Server, false)
        ]
    );
}

#[test]
fn access_logging_without_providers_uses_the_meshconfigs_default_providers() {
    use v1::WorkloadMode as Side;
    let mesh = MESH.replace(
        "    extensionProviders:\n",
        "    defaultProviders: {accessLogging: [otel-als]}\n    extensionProviders:\n",
    );
    let docs = [
        mesh,
        telemetry(
            "istio-system/mesh-default",
            "{accessLogging: [{filter: {expression: \"response.code >= 400\"}}]}",
        ),
        // Names envoy explicitly: the default provider is no longer in force here.
        telemetry(
            "shop/default",
            "{accessLogging: [{providers: [{name: envoy}]}]}",
        ),
    ];
    assert_eq!(
        resolved(&docs, &workload("default", &[])).access_logging,
        [log(
            "otel-als",
            "response.code >= 400",
            Side::ClientAndServer,
            false
        )]
    );
    assert_eq!(
        resolved(&docs, &workload("shop", &[])).access_logging,
        [log("envoy", "", Side::ClientAndServer, false)]
    );
}

#[test]
fn of_two_telemetries_selecting_a_workload_the_oldest_applies() {
    let docs = [
        telemetry_at(
            "shop/newer",
            Some("2026-02-01T00:00:00Z"),
            "{selector: {matchLabels: {app: api}}, tracing: [{randomSamplingPercentage: 50}]}",
        ),
        telemetry_at(
            "shop/older",
            Some("2026-01-01T00:00:00Z"),
            "{selector: {matchLabels: {app: api, tier: gold}}, tracing: [{randomSamplingPercentage: 20}]}",
        ),
    ];
    let t = resolved(
        &docs,
        &workload("shop", &[("app", "api"), ("tier", "gold")]),
    );
    assert_eq!(t.sources, ["shop/older"]);
    assert_eq!(t.tracing.unwrap().random_sampling_percentage, Some(20.0));
}

#[test]
fn in_the_root_namespace_a_selector_applies_to_its_own_workloads_only() {
    let docs = [
        telemetry(
            "istio-system/mesh-default",
            "{tracing: [{randomSamplingPercentage: 1}]}",
        ),
        telemetry(
            "istio-system/gateways",
            "{selector: {matchLabels: {app: gw}}, tracing: [{randomSamplingPercentage: 100}]}",
        ),
    ];
    let gw = resolved(&docs, &workload("istio-system", &[("app", "gw")]));
    assert_eq!(
        gw.sources,
        ["istio-system/mesh-default", "istio-system/gateways"]
    );
    let elsewhere = resolved(&docs, &workload("shop", &[("app", "gw")]));
    assert_eq!(elsewhere.sources, ["istio-system/mesh-default"]);
}

#[test]
fn the_example_mesh_gives_the_critical_service_25_percent_and_keeps_the_mesh_settings() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh");
    let report = crate::validate::check_dir(&dir);
    let config = report.set.expect("the example mesh is valid");
    let critical = resolve(&config, &workload("default", &[("app", "llm-processor")])).unwrap();
    assert_eq!(
        critical.sources,
        ["istio-system/mesh-default", "default/llm-processor"]
    );
    let tracing = critical.tracing.unwrap();
    assert_eq!(tracing.random_sampling_percentage, Some(25.0));
    assert_eq!(
        tracing.custom_tags.keys().collect::<Vec<_>>(),
        ["intent_type", "priority", "tenant"]
    );
    let [envoy, otel] = &critical.access_logging[..] else {
        panic!("{:#?}", critical.access_logging)
    };
    assert_eq!(envoy.providers, ["envoy"]);
    assert_eq!(otel.providers, ["otel-als"]);
    for log in [envoy, otel] {
        assert_eq!(
            log.filter,
            "response.code >= 400 || response.duration > 1000 || request.headers['x-debug'] == 'true'"
        );
    }
    let other = resolve(&config, &workload("default", &[("app", "reviews")])).unwrap();
    assert_eq!(
        other.tracing.unwrap().random_sampling_percentage,
        Some(10.0)
    );
    let tags = |m| {
        effective(&other.metric_overrides, m, v1::WorkloadMode::Server)
            .map(|e| e.1.into_keys().collect::<Vec<_>>())
    };
    let business = Some(vec![
        "intent_type".to_string(),
        "priority".to_string(),
        "tenant".to_string(),
    ]);
    assert_eq!(tags(v1::MetricSelector::RequestCount), business);
    assert_eq!(tags(v1::MetricSelector::RequestDuration), business);
    assert_eq!(tags(v1::MetricSelector::TcpSentBytes), None);
}
