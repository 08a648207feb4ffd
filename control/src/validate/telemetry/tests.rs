//! Telemetry validation: what istiod's webhook and `istioctl analyze` refuse is an error at
//! the exact field, what Istio accepts and ignores is a warning.

use crate::source::{Problem, Severity};
use crate::validate::test_support::{check, expect, expect_error, expect_no_error};

fn telemetry(ns_name: &str, spec: &str) -> String {
    let (ns, name) = ns_name.split_once('/').unwrap_or(("default", ns_name));
    format!(
        "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

#[track_caller]
fn expect_warning(docs: &[String], field: &str) -> Problem {
    let report = check(docs);
    assert!(!report.has_errors(), "{:#?}", report.problems);
    expect(&report, Severity::Warning, field).clone()
}

#[test]
fn a_valid_telemetry_passes_without_problems_in_either_api_version() {
    let spec = "{tracing: [{randomSamplingPercentage: 10, customTags: {env: {literal: {value: prod}}, team: {header: {name: x-team, defaultValue: none}}, pod: {environment: {name: POD_NAME}}}}], metrics: [{providers: [{name: prometheus}], overrides: [{match: {metric: REQUEST_COUNT, mode: SERVER}, tagOverrides: {tenant: {value: \"request.headers['x-tenant']\"}, request_protocol: {operation: REMOVE}}}]}], accessLogging: [{providers: [{name: envoy}], filter: {expression: \"response.code >= 400 || request.headers['x-debug'] == 'true'\"}}]}";
    let report = check(&[telemetry("istio-system/mesh-default", spec)]);
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!(report.set.unwrap().telemetries.len(), 1);
    let alpha = telemetry("istio-system/mesh-default", spec)
        .replace("telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1");
    assert!(check(&[alpha]).problems.is_empty());
    let beta = telemetry("istio-system/mesh-default", spec)
        .replace("telemetry.istio.io/v1", "telemetry.istio.io/v1beta1");
    assert!(
        check(&[beta]).has_errors(),
        "not an apiVersion of Telemetry"
    );
}

#[test]
fn expressions_that_are_not_cel_are_errors_naming_the_field() {
    let e = expect_error(
        &[telemetry(
            "istio-system/mesh-default",
            "{accessLogging: [{}, {filter: {expression: \"response.code >= \"}}]}",
        )],
        "spec.accessLogging[1].filter.expression",
    );
    assert!(e.message.starts_with("not a CEL expression"), "{e}");
    assert!(
        e.to_string()
            .contains("Telemetry istio-system/mesh-default"),
        "names the resource: {e}"
    );
    let e = expect_error(
        &[telemetry(
            "shop/default",
            "{metrics: [{overrides: [{}, {tagOverrides: {tenant: {value: \"request.headers['x-tenant'\"}}}]}]}",
        )],
        "spec.metrics[0].overrides[1].tagOverrides.tenant.value",
    );
    assert!(e.message.starts_with("not a CEL expression"), "{e}");
    expect_error(
        &[telemetry(
            "shop/default",
            "{accessLogging: [{filter: {expression: \"  \"}}]}",
        )],
        "spec.accessLogging[0].filter.expression",
    );
}

#[test]
fn tag_overrides_follow_istios_operation_rules() {
    expect_error(
        &[telemetry(
            "shop/default",
            "{metrics: [{overrides: [{tagOverrides: {tenant: {operation: UPSERT}}}]}]}",
        )],
        "spec.metrics[0].overrides[0].tagOverrides.tenant.value",
    );
    let e = expect_error(
        &[telemetry(
            "shop/default",
            "{metrics: [{overrides: [{tagOverrides: {tenant: {operation: REMOVE, value: \"'x'\"}}}]}]}",
        )],
        "spec.metrics[0].overrides[0].tagOverrides.tenant.value",
    );
    assert!(e.message.contains("only"), "{e}");
    // A name that is not a Prometheus label name is exported as one, with a warning.
    let report = expect_no_error(&[telemetry(
        "shop/default",
        "{metrics: [{overrides: [{tagOverrides: {tenant-id: {value: \"'x'\"}}}]}]}",
    )]);
    let w: Vec<_> = report.warnings().collect();
    assert!(w.iter().any(|p| p.message.contains("`tenant_id`")), "{w:?}");
    // A misspelt operation is a load error at the field.
    expect_error(
        &[telemetry(
            "shop/default",
            "{metrics: [{overrides: [{tagOverrides: {tenant: {operation: DELETE}}}]}]}",
        )],
        "spec.metrics[0].overrides[0].tagOverrides.tenant.operation",
    );
}

#[test]
fn sampling_is_a_percentage() {
    for bad in ["150", "-1", "100.5"] {
        let e = expect_error(
            &[telemetry(
                "shop/default",
                &format!("{{tracing: [{{randomSamplingPercentage: {bad}}}]}}"),
            )],
            "spec.tracing[0].randomSamplingPercentage",
        );
        assert!(e.message.contains("not a percentage"), "{e}");
    }
    for ok in ["0", "100", "0.01"] {
        let report = check(&[telemetry(
            "shop/default",
            &format!("{{tracing: [{{randomSamplingPercentage: {ok}}}]}}"),
        )]);
        assert!(!report.has_errors(), "{ok}: {:#?}", report.problems);
    }
}

#[test]
fn custom_tags_need_one_kind_with_its_value() {
    expect_error(
        &[telemetry(
            "shop/default",
            "{tracing: [{customTags: {env: {literal: {value: \"\"}}}}]}",
        )],
        "spec.tracing[0].customTags.env.literal.value",
    );
    expect_error(
        &[telemetry(
            "shop/default",
            "{tracing: [{customTags: {team: {header: {name: \"\"}}}}]}",
        )],
        "spec.tracing[0].customTags.team.header.name",
    );
    expect_error(
        &[telemetry(
            "shop/default",
            "{tracing: [{customTags: {pod: {environment: {name: \"\"}}}}]}",
        )],
        "spec.tracing[0].customTags.pod.environment.name",
    );
    expect_error(
        &[telemetry(
            "shop/default",
            "{tracing: [{customTags: {both: {literal: {value: a}, header: {name: x-a}}}}]}",
        )],
        "spec.tracing[0].customTags.both",
    );
    expect_warning(
        &[telemetry(
            "shop/default",
            "{tracing: [{customTags: {none: {}}}]}",
        )],
        "spec.tracing[0].customTags.none",
    );
}

#[test]
fn providers_are_named_and_looked_up_in_the_mesh_config() {
    let mesh = "---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {name: mesh, namespace: istio-system}
spec:
  meshConfig:
    extensionProviders:
    - {name: opa, envoyExtAuthzGrpc: {service: opa.local, port: 9191}}
"
    .to_string();
    expect_error(
        &[telemetry(
            "shop/default",
            "{tracing: [{providers: [{name: \"\"}]}]}",
        )],
        "spec.tracing[0].providers[0].name",
    );
    let w = expect_warning(
        &[
            mesh.clone(),
            telemetry("shop/default", "{tracing: [{providers: [{name: jaeger}]}]}"),
        ],
        "spec.tracing[0].providers[0].name",
    );
    assert!(w.message.contains("span reporting is off"), "{w}");
    let w = expect_warning(
        &[
            mesh.clone(),
            telemetry(
                "shop/default",
                "{accessLogging: [{providers: [{name: opa}]}]}",
            ),
        ],
        "spec.accessLogging[0].providers[0].name",
    );
    assert!(w.message.contains("envoyExtAuthzGrpc"), "{w}");
    // Built-in providers need no declaration, and names are case-insensitive.
    let report = check(&[
        mesh,
        telemetry(
            "shop/default",
            "{metrics: [{providers: [{name: Prometheus}]}], accessLogging: [{providers: [{name: envoy}]}]}",
        ),
    ]);
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    expect_warning(
        &[telemetry(
            "shop/default",
            "{tracing: [{providers: [{name: a}, {name: b}]}]}",
        )],
        "spec.tracing[0].providers",
    );
    let w = expect_warning(
        &[telemetry(
            "shop/default",
            "{metrics: [{providers: [{name: stackdriver}]}]}",
        )],
        "spec.metrics[0].providers",
    );
    assert!(w.message.contains("Prometheus"), "{w}");
}

#[test]
fn access_log_providers_are_checked_in_the_mesh_config_and_where_they_are_named() {
    let mesh = |providers: &str| {
        format!(
            "---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {{name: mesh, namespace: istio-system}}
spec:
  meshConfig:
    extensionProviders:
{providers}"
        )
    };
    let good = mesh(
        "    - {name: otel-als, envoyOtelAls: {service: collector.monitoring, port: 4317}}
    - {name: audit, envoyFileAccessLog: {path: /var/log/access.log}}
    - {name: http-als, envoyHttpAls: {service: als.monitoring, port: 9000}}
",
    );
    let report = check(&[
        good.clone(),
        telemetry(
            "shop/default",
            "{accessLogging: [{providers: [{name: otel-als}, {name: audit}]}]}",
        ),
    ]);
    assert!(
        !report.problems.iter().any(|p| p
            .field
            .as_deref()
            .is_some_and(|f| f.starts_with("spec.accessLogging")
                || f.contains("envoyOtelAls")
                || f.contains("envoyFileAccessLog"))),
        "{:#?}",
        report.problems
    );
    let w = expect_warning(
        &[
            good,
            telemetry(
                "shop/default",
                "{accessLogging: [{providers: [{name: http-als}]}]}",
            ),
        ],
        "spec.accessLogging[0].providers[0].name",
    );
    assert!(w.message.contains("nothing is logged to it"), "{w}");
    expect_error(
        &[mesh(
            "    - {name: otel-als, envoyOtelAls: {service: collector.monitoring}}\n",
        )],
        "extensionProviders[0].envoyOtelAls.port",
    );
    expect_error(
        &[mesh("    - {name: otel-als, envoyOtelAls: {port: 4317}}\n")],
        "extensionProviders[0].envoyOtelAls.service",
    );
    expect_error(
        &[mesh(
            "    - {name: audit, envoyFileAccessLog: {path: \"\"}}\n",
        )],
        "extensionProviders[0].envoyFileAccessLog.path",
    );
    let defaults = mesh("    - {name: otel, opentelemetry: {service: c, port: 4317}}\n").replace(
        "    extensionProviders:\n",
        "    defaultProviders: {accessLogging: [otel, envoy]}\n    extensionProviders:\n",
    );
    let w = expect_warning(&[defaults], "defaultProviders.accessLogging[0]");
    assert!(w.message.contains("nothing is logged to it"), "{w}");
}

#[test]
fn what_sidecars_do_not_apply_is_a_warning() {
    expect_warning(
        &[telemetry(
            "shop/default",
            "{metrics: [{reportingInterval: 10s}]}",
        )],
        "spec.metrics[0].reportingInterval",
    );
    expect_warning(
        &[telemetry(
            "shop/default",
            "{metrics: [{overrides: [{match: {customMetric: my_metric}, disabled: true}]}]}",
        )],
        "spec.metrics[0].overrides[0].match.customMetric",
    );
    expect_error(
        &[telemetry(
            "shop/default",
            "{metrics: [{overrides: [{match: {customMetric: \"\"}}]}]}",
        )],
        "spec.metrics[0].overrides[0].match.customMetric",
    );
    expect_warning(
        &[telemetry(
            "shop/default",
            "{tracing: [{randomSamplingPercentage: 1}, {disableSpanReporting: true}]}",
        )],
        "spec.tracing",
    );
    expect_warning(
        &[telemetry(
            "shop/gw",
            "{targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]}",
        )],
        "spec.targetRefs",
    );
    expect_error(
        &[telemetry(
            "shop/gw",
            "{selector: {matchLabels: {app: gw}}, targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: gw}}",
        )],
        "spec.targetRefs",
    );
    let w = expect_warning(
        &[telemetry(
            "istio-system/gateways",
            "{selector: {matchLabels: {app: gw}}}",
        )],
        "spec.selector",
    );
    assert!(w.message.contains("not mesh-wide"), "{w}");
    // An unknown field is reported by the loader.
    expect_warning(
        &[telemetry(
            "shop/default",
            "{tracing: [{useRequestIdForTraceSampling: false}]}",
        )],
        "spec.tracing[0].useRequestIdForTraceSampling",
    );
}

#[test]
fn one_telemetry_without_selector_per_namespace_and_one_per_workload_selector() {
    let e = expect_error(
        &[
            telemetry("istio-system/mesh-default", "{}"),
            telemetry("istio-system/other", "{selector: {}}"),
        ],
        "spec.selector",
    );
    assert!(e.message.contains("the root namespace already has"), "{e}");
    assert!(
        e.message.contains("Telemetry istio-system/mesh-default"),
        "{e}"
    );
    assert!(
        e.to_string().contains("Telemetry istio-system/other"),
        "{e}"
    );
    let e = expect_error(
        &[
            telemetry("shop/a", "{}"),
            telemetry("default/b", "{}"),
            telemetry("shop/c", "{}"),
        ],
        "spec.selector",
    );
    assert!(e.message.contains("namespace shop already has"), "{e}");
    expect_error(
        &[
            telemetry("shop/a", "{selector: {matchLabels: {app: api}}}"),
            telemetry("shop/b", "{selector: {matchLabels: {app: api}}}"),
        ],
        "spec.selector",
    );
    let w = expect_warning(
        &[
            telemetry("shop/a", "{selector: {matchLabels: {app: api}}}"),
            telemetry(
                "shop/b",
                "{selector: {matchLabels: {app: api, tier: gold}}}",
            ),
        ],
        "spec.selector",
    );
    assert!(w.message.contains("Telemetry shop/a"), "{w}");
    // Different namespaces, or a Telemetry attached to a gateway: no conflict.
    let report = check(&[
        telemetry("shop/a", "{selector: {matchLabels: {app: api}}}"),
        telemetry("default/a", "{selector: {matchLabels: {app: api}}}"),
        telemetry("default/b", "{}"),
        telemetry(
            "default/gw",
            "{targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]}",
        ),
    ]);
    assert!(!report.has_errors(), "{:#?}", report.problems);
}

#[test]
fn log_formats_are_envoys_format_strings_checked_as_envoy_would() {
    let mesh = |extra: &str| {
        format!(
            "---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {{name: mesh, namespace: istio-system}}
spec:
  meshConfig:
{extra}"
        )
    };
    let providers = |p: &str| mesh(&format!("    extensionProviders:\n{p}"));
    let good = providers(
        "    - {name: otel-als, envoyOtelAls: {service: c, port: 4317, logFormat: {text: \"%REQ(:METHOD)% %RESPONSE_CODE%\", labels: {tenant: \"%REQ(X-TENANT)%\", code: \"%RESPONSE_CODE%\", tier: \"%CEL(request.headers['x-tier'])%\"}}}}
    - {name: audit, envoyFileAccessLog: {path: /var/log/a.log, logFormat: {labels: {start: \"%START_TIME(%s)%\", n: 1}}}}
",
    );
    let report = check(&[good]);
    assert!(report.problems.is_empty(), "{:#?}", report.problems);

    let e = expect_error(
        &[providers(
            "    - {name: audit, envoyFileAccessLog: {path: /a, logFormat: {text: \"%NOPE% x\"}}}\n",
        )],
        "extensionProviders[0].envoyFileAccessLog.logFormat.text",
    );
    assert!(e.message.contains("unknown command operator %NOPE%"), "{e}");
    let e = expect_error(
        &[providers(
            "    - {name: audit, envoyFileAccessLog: {path: /a, logFormat: {text: a, labels: {b: c}}}}\n",
        )],
        "extensionProviders[0].envoyFileAccessLog.logFormat",
    );
    assert!(e.message.contains("not both"), "{e}");
    expect_error(
        &[providers(
            "    - {name: o, envoyOtelAls: {service: c, port: 4317, logFormat: {labels: {x: \"100%\"}}}}\n",
        )],
        "extensionProviders[0].envoyOtelAls.logFormat.labels.x",
    );
    expect_error(
        &[providers(
            "    - {name: o, envoyOtelAls: {service: c, port: 4317, logFormat: {labels: {x: {nested: a}}}}}\n",
        )],
        "extensionProviders[0].envoyOtelAls.logFormat.labels.x",
    );
    let e = expect_error(
        &[providers(
            "    - {name: o, envoyOtelAls: {service: c, port: 4317, logFormat: {labels: {x: \"%CEL(request.headers[)%\"}}}}\n",
        )],
        "extensionProviders[0].envoyOtelAls.logFormat.labels.x",
    );
    assert!(e.message.contains("not a CEL expression"), "{e}");
    let w = expect_warning(
        &[providers(
            "    - {name: audit, envoyFileAccessLog: {path: /a, logFormat: {text: \"%DYNAMIC_METADATA(istio:x)%\"}}}\n",
        )],
        "extensionProviders[0].envoyFileAccessLog.logFormat.text",
    );
    assert!(w.message.contains("written as absent"), "{w}");

    // The built-in provider's MeshConfig fields.
    expect_no_error(&[mesh(
        "    accessLogFile: /dev/stdout\n    accessLogEncoding: JSON\n    accessLogFormat: '{\"code\": \"%RESPONSE_CODE%\"}'\n",
    )]);
    let e = expect_error(
        &[mesh(
            "    accessLogEncoding: JSON\n    accessLogFormat: \"%RESPONSE_CODE%\"\n",
        )],
        "accessLogFormat",
    );
    assert!(e.message.contains("JSON object"), "{e}");
    expect_error(
        &[mesh("    accessLogFormat: \"[%START_TIME\"\n")],
        "accessLogFormat",
    );
}
