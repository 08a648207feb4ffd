//! Sidecar injection, as Istio's injector does it: `meshlite-control inject -f app.yaml`
//! rewrites manifests (like `istioctl kube-inject`), and the mutating admission webhook
//! ([`webhook`]) applies the same change to every pod created in a namespace labelled
//! `istio-injection=enabled`.
//!
//! Injection works on generic JSON values, so every field the injector does not know is kept
//! exactly. A pod template gets the capture init container and the sidecar ([`template`]),
//! shaped by the pod's annotations ([`annotations`]); a pod that opts out, runs on the host
//! network or already has a sidecar is left as it is, so injecting twice changes nothing.

pub mod annotations;
pub mod credentials;
pub mod documents;
pub mod patch;
pub mod probes;
pub mod template;
pub mod webhook;
pub mod workload;

use serde_json::{Map, Value, json};

pub use documents::inject_documents;

/// The default sidecar image: `meshlite/proxy:<this version>`.
pub const DEFAULT_PROXY_IMAGE: &str = concat!("meshlite/proxy:", env!("CARGO_PKG_VERSION"));

/// The control plane's xDS + CA port (Istio's 15012).
pub const CONTROL_PORT: u16 = 15012;

/// The control plane's xDS + CA address as sidecars reach it in a cluster.
pub const DEFAULT_CONTROL_ADDRESS: &str = "https://meshlite-control.istio-system.svc:15012";

/// How the sidecar runs beside the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SidecarMode {
    /// A Kubernetes native sidecar (Kubernetes 1.29+): an init container with
    /// `restartPolicy: Always`. It starts (and is ready) before the app, stops after it, and
    /// does not keep a Job's pod running.
    Native,
    /// A regular container beside the app (clusters without native sidecars).
    Classic,
}

/// The injector's settings (flags of `inject` and of `serve` for the webhook).
#[derive(Debug, Clone, clap::Args)]
pub struct InjectOptions {
    /// The sidecar image.
    #[arg(long, default_value = DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// The sidecar form, unless a pod's `sidecar.istio.io/nativeSidecar` annotation says.
    #[arg(long, value_enum, default_value = "native")]
    pub sidecar_mode: SidecarMode,
    /// The control plane address the sidecars dial (xDS + CA).
    #[arg(long = "sidecar-control", default_value = DEFAULT_CONTROL_ADDRESS)]
    pub control_address: String,
    /// The trust domain of the workloads' SPIFFE IDs (`inject --trust-domain`; the CA's for
    /// the webhook).
    #[arg(skip = String::from("cluster.local"))]
    pub trust_domain: String,
}

impl Default for InjectOptions {
    fn default() -> Self {
        Self {
            proxy_image: DEFAULT_PROXY_IMAGE.to_string(),
            sidecar_mode: SidecarMode::Native,
            control_address: DEFAULT_CONTROL_ADDRESS.to_string(),
            trust_domain: "cluster.local".to_string(),
        }
    }
}

/// Why a manifest or pod could not be injected. Each says what and where.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// An annotation's value is unusable.
    #[error("annotation {key}: {message}")]
    Annotation {
        /// The annotation.
        key: &'static str,
        /// What is wrong with its value.
        message: String,
    },
    /// The object does not have the shape its kind requires.
    #[error("{0}")]
    Malformed(String),
    /// A YAML document did not parse.
    #[error("document {document}: {message}")]
    Yaml {
        /// 1-based index of the document in the input.
        document: usize,
        /// The parser's message.
        message: String,
    },
    /// The result could not be written as YAML.
    #[error("writing YAML: {0}")]
    Emit(String),
    /// Injecting one object failed.
    #[error("{object}: {source}")]
    Object {
        /// `Kind/name` (and document number).
        object: String,
        /// What failed.
        source: Box<InjectError>,
    },
}

/// What injection did to one pod template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was added, in this form.
    Injected(SidecarMode),
    /// `sidecar.istio.io/inject: "false"`.
    OptedOut,
    /// A sidecar is there already.
    AlreadyInjected,
    /// The pod shares the node's network: capture would redirect the node's traffic.
    HostNetwork,
    /// The object runs no pods (a Service, a ConfigMap, ...).
    NotAWorkload,
}

impl Outcome {
    /// Whether the object changed.
    pub fn changed(self) -> bool {
        matches!(self, Outcome::Injected(_))
    }

    /// A few words for the operator.
    pub fn describe(self) -> &'static str {
        match self {
            Outcome::Injected(SidecarMode::Native) => "injected (native sidecar)",
            Outcome::Injected(SidecarMode::Classic) => "injected (sidecar container)",
            Outcome::OptedOut => "skipped: sidecar.istio.io/inject is \"false\"",
            Outcome::AlreadyInjected => "unchanged: already injected",
            Outcome::HostNetwork => "skipped: hostNetwork pod",
            Outcome::NotAWorkload => "unchanged: runs no pods",
        }
    }
}

/// Injects one Kubernetes object (any kind; those that run no pods are left alone); a
/// `List` has each item injected. Returns what happened to each pod template.
pub fn inject_object(
    object: &mut Value,
    opts: &InjectOptions,
) -> Result<Vec<Outcome>, InjectError> {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if kind == "List" {
        let mut outcomes = Vec::new();
        if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                outcomes.extend(inject_object(item, opts)?);
            }
        }
        return Ok(outcomes);
    }
    let Some(path) = workload::template_path(&kind) else {
        return Ok(vec![Outcome::NotAWorkload]);
    };
    let name = if kind == "Pod" {
        workload::pod_workload_name(object)
    } else {
        object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let label = format!("{kind}/{}", name.as_deref().unwrap_or("(unnamed)"));
    let wrap = |source: InjectError| InjectError::Object {
        object: label.clone(),
        source: Box::new(source),
    };
    let name = name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| wrap(InjectError::Malformed("metadata.name is missing".into())))?;
    let template = workload::at_path_mut(object, path).ok_or_else(|| {
        wrap(InjectError::Malformed(format!(
            "{kind} has no pod template at {}",
            path.join(".")
        )))
    })?;
    inject_pod(template, &name, opts)
        .map(|o| vec![o])
        .map_err(wrap)
}

/// Injects a pod or pod template (`metadata` + `spec`) in place; `workload` is the name its
/// sidecar announces.
pub fn inject_pod(
    pod: &mut Value,
    workload: &str,
    opts: &InjectOptions,
) -> Result<Outcome, InjectError> {
    let metadata = pod.get("metadata").and_then(Value::as_object);
    if annotations::opted_out(metadata) {
        return Ok(Outcome::OptedOut);
    }
    let pod_annotations = metadata
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object);
    let spec = pod
        .get("spec")
        .and_then(Value::as_object)
        .ok_or_else(|| InjectError::Malformed("the pod has no spec".into()))?;
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .ok_or_else(|| InjectError::Malformed("spec.containers is missing".into()))?;
    if pod_annotations.is_some_and(|a| a.contains_key(annotations::STATUS)) || has_sidecar(spec) {
        return Ok(Outcome::AlreadyInjected);
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::HostNetwork);
    }
    let settings = annotations::read(pod_annotations, opts.sidecar_mode)?;
    let mut facts = template::WorkloadFacts {
        name: workload.to_string(),
        service_account: spec
            .get("serviceAccountName")
            .or_else(|| spec.get("serviceAccount"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string(),
        labels: workload::workload_labels(metadata),
        app_ports: workload::app_ports(containers),
        app_probers: None,
    };
    let default_container = containers
        .first()
        .and_then(|c| c.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    if settings.rewrite_probes {
        let containers = array_at(object_at(pod, "spec")?, "containers")?;
        facts.app_probers = probes::rewrite(containers)?;
    }
    let native = settings.mode == SidecarMode::Native;
    let init = template::init_container(opts, &settings);
    let proxy = template::proxy_container(opts, &settings, &facts, native);

    let spec = object_at(pod, "spec")?;
    let init_list = array_at(spec, "initContainers")?;
    let mut front = vec![init];
    if native {
        front.push(proxy.clone());
    }
    init_list.splice(0..0, front);
    if !native {
        let list = array_at(spec, "containers")?;
        if settings.hold_application {
            list.insert(0, proxy);
        } else {
            list.push(proxy);
        }
    }
    array_at(spec, "volumes")?.extend(template::volumes(&facts));

    let metadata = object_at(pod, "metadata")?;
    let pod_annotations = metadata
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if pod_annotations.is_null() {
        *pod_annotations = Value::Object(Map::new());
    }
    let pod_annotations = pod_annotations
        .as_object_mut()
        .ok_or_else(|| InjectError::Malformed("metadata.annotations is not a mapping".into()))?;
    for (k, v) in template::scrape_annotations() {
        pod_annotations.entry(k).or_insert(json!(v));
    }
    if let Some(name) = default_container {
        pod_annotations
            .entry("kubectl.kubernetes.io/default-container")
            .or_insert(json!(name));
    }
    pod_annotations.insert(
        annotations::STATUS.to_string(),
        json!(template::status(native)),
    );
    Ok(Outcome::Injected(settings.mode))
}

/// Whether a container or init container is already the sidecar.
fn has_sidecar(spec: &Map<String, Value>) -> bool {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .any(|c| c.get("name").and_then(Value::as_str) == Some(template::PROXY_NAME))
}

/// The mapping at `key` of `v` (created when absent or null).
fn object_at<'a>(v: &'a mut Value, key: &str) -> Result<&'a mut Map<String, Value>, InjectError> {
    let outer = v
        .as_object_mut()
        .ok_or_else(|| InjectError::Malformed("the pod is not a mapping".into()))?;
    let slot = outer
        .entry(key)
        .or_insert_with(|| Value::Object(Map::new()));
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
        .ok_or_else(|| InjectError::Malformed(format!("{key} is not a mapping")))
}

/// The list at `key` of `spec` (created when absent or null).
fn array_at<'a>(
    spec: &'a mut Map<String, Value>,
    key: &str,
) -> Result<&'a mut Vec<Value>, InjectError> {
    let slot = spec.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut()
        .ok_or_else(|| InjectError::Malformed(format!("spec.{key} is not a list")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &Value) -> Vec<&str> {
        list.as_array()
            .map(|l| l.iter().filter_map(|c| c["name"].as_str()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn fields_the_injector_does_not_know_are_kept_exactly() {
        let mut pod = json!({"kind": "Pod", "metadata": {"name": "p", "x-future": [1, {"a": null}]},
            "spec": {"futureField": {"deep": [true, 1.5, "s"]},
                     "containers": [{"name": "app", "futureContainerField": {"k": "v"}}]}});
        let before = pod.clone();
        assert_eq!(
            inject_object(&mut pod, &InjectOptions::default()).unwrap(),
            [Outcome::Injected(SidecarMode::Native)]
        );
        assert_eq!(pod["metadata"]["x-future"], before["metadata"]["x-future"]);
        assert_eq!(pod["spec"]["futureField"], before["spec"]["futureField"]);
        assert_eq!(
            pod["spec"]["containers"][0],
            before["spec"]["containers"][0]
        );
        assert_eq!(names(&pod["spec"]["containers"]), ["app"]);
        assert_eq!(
            names(&pod["spec"]["initContainers"]),
            ["meshlite-init", "meshlite-proxy"]
        );
    }

    #[test]
    fn classic_mode_puts_the_sidecar_last_or_first_when_it_holds_the_app() {
        let opts = InjectOptions {
            sidecar_mode: SidecarMode::Classic,
            ..Default::default()
        };
        let pod = |annotations: Value| {
            json!({"kind": "Pod",
            "metadata": {"name": "p", "annotations": annotations},
            "spec": {"containers": [{"name": "app"}]}})
        };
        let mut plain = pod(json!({}));
        inject_object(&mut plain, &opts).unwrap();
        assert_eq!(
            names(&plain["spec"]["containers"]),
            ["app", "meshlite-proxy"]
        );
        assert_eq!(names(&plain["spec"]["initContainers"]), ["meshlite-init"]);
        assert!(plain["spec"]["containers"][1].get("lifecycle").is_none());
        let mut held =
            pod(json!({"proxy.istio.io/config": "holdApplicationUntilProxyStarts: true"}));
        inject_object(&mut held, &opts).unwrap();
        assert_eq!(
            names(&held["spec"]["containers"]),
            ["meshlite-proxy", "app"]
        );
        assert_eq!(
            held["spec"]["containers"][0]["lifecycle"]["postStart"]["exec"]["command"],
            json!([template::PROXY_BINARY, "wait"])
        );
    }

    #[test]
    fn malformed_pods_are_errors_not_panics() {
        let opts = InjectOptions::default();
        for (pod, expect) in [
            (json!({"kind": "Pod", "metadata": {"name": "p"}}), "no spec"),
            (
                json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": {}}}),
                "spec.containers",
            ),
            (
                json!({"kind": "Pod", "metadata": {"name": "p", "annotations": []}, "spec": {"containers": []}}),
                "annotations",
            ),
            (
                json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [], "volumes": 3}}),
                "spec.volumes",
            ),
            (
                json!({"kind": "Deployment", "metadata": {"name": "d"}, "spec": {}}),
                "no pod template",
            ),
            (
                json!({"kind": "Pod", "metadata": {}, "spec": {"containers": []}}),
                "metadata.name",
            ),
        ] {
            let mut p = pod.clone();
            let e = inject_object(&mut p, &opts).unwrap_err().to_string();
            assert!(e.contains(expect), "{pod}: {e}");
        }
    }
}
