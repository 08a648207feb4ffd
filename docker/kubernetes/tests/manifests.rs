//! Every manifest of `docker/kubernetes/` and every pod the injector writes is read as the
//! Kubernetes API type of its kind and written back: the two must be equal, so a field the
//! API does not have (a typo, a wrong level, a wrong type) fails here. The control plane's
//! ConfigMap must also be a config directory `meshlite-control validate` accepts, and the
//! webhook, Service and Deployment must agree on names and ports.

// Test helpers: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn here() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The documents of a multi-document YAML file.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// Reads `doc` as `T` and writes it back; they must be equal.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value, what: &str) {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what} does not read as its API type: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    if &back != doc {
        panic!(
            "{what} loses fields as its API type (a misspelt or misplaced field?)\n\
             written: {}\nread back: {}",
            serde_json::to_string_pretty(doc).unwrap(),
            serde_json::to_string_pretty(&back).unwrap()
        );
    }
}

/// Checks one document by kind; returns the kind.
fn check(doc: &Value, origin: &str) -> String {
    let kind = doc["kind"].as_str().unwrap_or("").to_string();
    let what = format!(
        "{origin}: {kind}/{}",
        doc["metadata"]["name"].as_str().unwrap_or("?")
    );
    match kind.as_str() {
        "Namespace" => round_trip::<Namespace>(doc, &what),
        "ServiceAccount" => round_trip::<ServiceAccount>(doc, &what),
        "ClusterRole" => round_trip::<ClusterRole>(doc, &what),
        "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(doc, &what),
        "ConfigMap" => round_trip::<ConfigMap>(doc, &what),
        "Secret" => round_trip::<Secret>(doc, &what),
        "Deployment" => round_trip::<Deployment>(doc, &what),
        "StatefulSet" => round_trip::<StatefulSet>(doc, &what),
        "DaemonSet" => round_trip::<DaemonSet>(doc, &what),
        "ReplicaSet" => round_trip::<ReplicaSet>(doc, &what),
        "Job" => round_trip::<Job>(doc, &what),
        "CronJob" => round_trip::<CronJob>(doc, &what),
        "Pod" => round_trip::<Pod>(doc, &what),
        "Service" => round_trip::<Service>(doc, &what),
        "MutatingWebhookConfiguration" => round_trip::<MutatingWebhookConfiguration>(doc, &what),
        "List" => {
            for item in doc["items"].as_array().unwrap() {
                check(item, origin);
            }
        }
        other => panic!("{what}: no API type checked for kind {other}"),
    }
    kind
}

fn manifests() -> Vec<(PathBuf, Vec<Value>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(here())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "manifests missing: {files:?}");
    files
        .into_iter()
        .map(|p| {
            let docs = documents(&p);
            (p, docs)
        })
        .collect()
}

fn find<'a>(all: &'a [(PathBuf, Vec<Value>)], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .flat_map(|(_, docs)| docs)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in the manifests"))
}

#[test]
fn every_manifest_reads_as_its_kubernetes_api_type() {
    let mut kinds = Vec::new();
    for (path, docs) in manifests() {
        for doc in &docs {
            kinds.push(check(doc, &path.display().to_string()));
        }
    }
    for expected in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "MutatingWebhookConfiguration",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "no {expected} manifest"
        );
    }
}

#[test]
fn a_misspelt_field_is_caught() {
    let mut doc = find(&manifests(), "Deployment", "meshlite-control").clone();
    doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always".into();
    let caught = std::panic::catch_unwind(|| round_trip::<Deployment>(&doc, "typo"));
    assert!(caught.is_err(), "a misspelt field went through");
}

#[test]
fn the_service_webhook_and_deployment_agree_on_names_and_ports() {
    let all = manifests();
    let deployment: Deployment =
        serde_json::from_value(find(&all, "Deployment", "meshlite-control").clone()).unwrap();
    let service: Service =
        serde_json::from_value(find(&all, "Service", "meshlite-control").clone()).unwrap();
    let webhook: MutatingWebhookConfiguration = serde_json::from_value(
        find(
            &all,
            "MutatingWebhookConfiguration",
            "meshlite-sidecar-injector",
        )
        .clone(),
    )
    .unwrap();

    let ports: Vec<i32> = service
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [15012, 15014, 15017]);
    let pod = deployment.spec.as_ref().unwrap().template.clone();
    let selector = service.spec.as_ref().unwrap().selector.clone().unwrap();
    let labels = pod.metadata.as_ref().unwrap().labels.clone().unwrap();
    for (k, v) in &selector {
        assert_eq!(
            labels.get(k),
            Some(v),
            "the Service selects no control plane pod"
        );
    }
    assert_eq!(
        labels.get("sidecar.istio.io/inject").map(String::as_str),
        Some("false")
    );
    let container = &pod.spec.as_ref().unwrap().containers[0];
    let served: Vec<i32> = container
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(served, [15012, 15014, 15017]);
    let args = container.args.clone().unwrap();
    assert!(
        args.contains(&"--webhook-addr=0.0.0.0:15017".to_string()),
        "{args:?}"
    );
    let sa = pod
        .spec
        .as_ref()
        .unwrap()
        .service_account_name
        .clone()
        .unwrap();
    assert_eq!(sa, "meshlite-control");

    let hook = &webhook.webhooks.as_ref().unwrap()[0];
    let svc = hook.client_config.service.as_ref().unwrap();
    assert_eq!(svc.name, "meshlite-control");
    assert_eq!(svc.namespace, "istio-system");
    assert_eq!(svc.path.as_deref(), Some("/inject"));
    assert_eq!(svc.port, Some(15017));
    assert_eq!(hook.admission_review_versions, ["v1"]);
    let ns = hook
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_labels
        .clone()
        .unwrap();
    assert_eq!(
        ns.get("istio-injection").map(String::as_str),
        Some("enabled")
    );
    let obj = &hook
        .object_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap()[0];
    assert_eq!(obj.key, "sidecar.istio.io/inject");
    assert_eq!(obj.operator, "NotIn");
    assert_eq!(obj.values.as_deref(), Some(&["false".to_string()][..]));
    let rule = &hook.rules.as_ref().unwrap()[0];
    assert_eq!(rule.resources.as_deref(), Some(&["pods".to_string()][..]));
    assert_eq!(
        rule.operations.as_deref(),
        Some(&["CREATE".to_string()][..])
    );

    // The RBAC binding names the Deployment's service account, and allows patching this
    // webhook configuration (its caBundle) and nothing but reading elsewhere.
    let binding: ClusterRoleBinding =
        serde_json::from_value(find(&all, "ClusterRoleBinding", "meshlite-control").clone())
            .unwrap();
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        ("meshlite-control", Some("istio-system"))
    );
    let role: ClusterRole =
        serde_json::from_value(find(&all, "ClusterRole", "meshlite-control").clone()).unwrap();
    for rule in role.rules.as_ref().unwrap() {
        let writes: Vec<&String> = rule
            .verbs
            .iter()
            .filter(|v| !["get", "list", "watch"].contains(&v.as_str()))
            .collect();
        if !writes.is_empty() {
            assert_eq!(
                rule.resources.as_deref(),
                Some(&["mutatingwebhookconfigurations".to_string()][..])
            );
            assert_eq!(
                rule.resource_names.as_deref(),
                Some(&[webhook.metadata.name.clone().unwrap()][..])
            );
        }
    }
    let readable: Vec<String> = role
        .rules
        .as_ref()
        .unwrap()
        .iter()
        .flat_map(|r| r.resources.clone().unwrap_or_default())
        .collect();
    for r in [
        "pods",
        "services",
        "endpointslices",
        "namespaces",
        "configmaps",
        "virtualservices",
        "destinationrules",
        "peerauthentications",
        "authorizationpolicies",
        "telemetries",
    ] {
        assert!(
            readable.iter().any(|x| x == r),
            "the control plane cannot read {r}"
        );
    }
}

#[test]
fn the_mesh_config_map_is_a_config_directory_the_control_plane_accepts() {
    let all = manifests();
    let cm: ConfigMap =
        serde_json::from_value(find(&all, "ConfigMap", "meshlite-config").clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = cm.data.unwrap();
    assert!(data.contains_key("mesh-config.yaml"));
    for (key, text) in data {
        std::fs::write(dir.path().join(key), text).unwrap();
    }
    let report = meshlite_control::validate::check_dir(dir.path());
    let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(report.set.is_some());
}

#[test]
fn injected_workloads_read_as_their_kubernetes_api_types() {
    let golden = here().join("../../control/tests/inject");
    let mut checked = 0;
    for entry in std::fs::read_dir(&golden).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with(".out.yaml") {
            continue;
        }
        for doc in documents(&path) {
            check(&doc, &path.display().to_string());
            checked += 1;
        }
    }
    assert!(checked >= 10, "golden outputs missing ({checked})");
}

#[test]
fn the_credentials_an_injected_pod_mounts_read_as_their_kubernetes_api_types() {
    use meshlite_control::inject::credentials::{root_configmaps, token_secret};
    let roots = root_configmaps(
        &["shop".into(), "books".into()],
        "-----BEGIN CERTIFICATE-----\n",
    );
    assert_eq!(check(&roots, "cert root --format kubernetes"), "List");
    let secret = token_secret("shop", "reviews", "mlt1.x.y");
    assert_eq!(check(&secret, "token create --format kubernetes"), "Secret");
}
