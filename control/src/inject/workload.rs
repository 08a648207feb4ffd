//! Where the pod template sits in each kind of workload (Pod, Deployment, StatefulSet,
//! DaemonSet, ReplicaSet, ReplicationController, Job, CronJob's `jobTemplate`, and a `List`
//! of them), and the workload name a pod's sidecar announces (its controller's, as Istio
//! derives it from owner references).

use serde_json::{Map, Value};
use std::collections::BTreeMap;

use super::template::{AppPort, protocol_of_port_name};

/// Labels the controllers add to each pod: not the workload's, so not announced (a pod made
/// by a Deployment and the Deployment's template give the sidecar the same labels).
const CONTROLLER_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "controller-uid",
    "job-name",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "pod-template-generation",
    super::annotations::INJECT,
];

/// Where a kind keeps its pod template, as a path of object keys; `Some(&[])` is the object
/// itself (a Pod), `None` a kind that runs no pods.
pub fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// The value at `path` under `v`, if every step is an object holding the next key.
pub fn at_path_mut<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, key| v.get_mut(*key))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, key| v.get(*key))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The name a bare pod's sidecar announces: its controller's workload (a ReplicaSet's name
/// less its hash is the Deployment's; a Job's name less its schedule suffix is the
/// CronJob's), else the pod's own name or `generateName` stem.
pub fn pod_workload_name(pod: &Value) -> Option<String> {
    let owners = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array);
    let owner = owners.and_then(|o| {
        o.iter()
            .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
            .or_else(|| o.first())
    });
    if let Some(owner) = owner
        && let Some(name) = str_at(owner, &["name"])
    {
        let kind = str_at(owner, &["kind"]).unwrap_or("");
        let name = match kind {
            "ReplicaSet" => strip_suffix_if(name, |s| s.chars().all(|c| c.is_ascii_alphanumeric())),
            "Job" => strip_suffix_if(name, |s| s.chars().all(|c| c.is_ascii_digit())),
            _ => name,
        };
        return Some(name.to_string());
    }
    str_at(pod, &["metadata", "name"])
        .map(str::to_string)
        .or_else(|| {
            str_at(pod, &["metadata", "generateName"])
                .map(|g| g.trim_end_matches('-').to_string())
                .filter(|g| !g.is_empty())
        })
}

/// `name` without its last `-segment` when that segment passes `generated`.
fn strip_suffix_if(name: &str, generated: impl Fn(&str) -> bool) -> &str {
    match name.rsplit_once('-') {
        Some((stem, suffix)) if !stem.is_empty() && !suffix.is_empty() && generated(suffix) => stem,
        _ => name,
    }
}

/// The pod's labels the sidecar announces (controller-added ones left out).
pub fn workload_labels(metadata: Option<&Map<String, Value>>) -> BTreeMap<String, String> {
    metadata
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter(|(k, _)| !CONTROLLER_LABELS.contains(&k.as_str()))
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The TCP ports the application containers declare, each once, in port order.
pub fn app_ports(containers: &[Value]) -> Vec<AppPort> {
    let mut ports: BTreeMap<u16, Option<&'static str>> = BTreeMap::new();
    for p in containers
        .iter()
        .filter_map(|c| c.get("ports").and_then(Value::as_array))
        .flatten()
    {
        let tcp = p
            .get("protocol")
            .and_then(Value::as_str)
            .is_none_or(|proto| proto == "TCP");
        let Some(port) = p
            .get("containerPort")
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
        else {
            continue;
        };
        if !tcp {
            continue;
        }
        let protocol = p
            .get("name")
            .and_then(Value::as_str)
            .and_then(protocol_of_port_name);
        let entry = ports.entry(port).or_insert(protocol);
        if entry.is_none() {
            *entry = protocol;
        }
    }
    ports
        .into_iter()
        .map(|(port, protocol)| AppPort { port, protocol })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pods_workload_is_its_controllers() {
        let rs = json!({"metadata": {"generateName": "reviews-v1-7d9c8f6b5-", "ownerReferences": [
            {"kind": "ReplicaSet", "name": "reviews-v1-7d9c8f6b5", "controller": true}]}});
        assert_eq!(pod_workload_name(&rs).as_deref(), Some("reviews-v1"));
        let job = json!({"metadata": {"name": "x", "ownerReferences": [
            {"kind": "Job", "name": "backup-28930560", "controller": true}]}});
        assert_eq!(pod_workload_name(&job).as_deref(), Some("backup"));
        let sts = json!({"metadata": {"name": "db-0", "ownerReferences": [
            {"kind": "StatefulSet", "name": "db", "controller": true}]}});
        assert_eq!(pod_workload_name(&sts).as_deref(), Some("db"));
        let bare = json!({"metadata": {"name": "debug"}});
        assert_eq!(pod_workload_name(&bare).as_deref(), Some("debug"));
        let generated = json!({"metadata": {"generateName": "tool-"}});
        assert_eq!(pod_workload_name(&generated).as_deref(), Some("tool"));
        assert_eq!(pod_workload_name(&json!({"metadata": {}})), None);
    }

    #[test]
    fn app_ports_are_tcp_deduplicated_and_named_by_istios_convention() {
        let containers = vec![
            json!({"ports": [
                {"containerPort": 9080, "name": "http-web"},
                {"containerPort": 53, "protocol": "UDP"},
                {"containerPort": 7070, "name": "grpc"},
            ]}),
            json!({"ports": [{"containerPort": 9080}, {"containerPort": 5432, "name": "tcp-pg"},
                             {"containerPort": 8000, "name": "metrics"}]}),
        ];
        let flags: Vec<String> = app_ports(&containers).iter().map(AppPort::flag).collect();
        assert_eq!(flags, ["5432/tcp", "7070/grpc", "8000", "9080/http"]);
    }

    #[test]
    fn controller_labels_are_not_announced() {
        let meta =
            json!({"labels": {"app": "reviews", "version": "v1", "pod-template-hash": "abc"}});
        let labels = workload_labels(meta.as_object());
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["app"], "reviews");
    }
}
