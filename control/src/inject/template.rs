//! The injected parts of a pod, as Kubernetes JSON: the capture init container
//! (`meshlite-proxy init`, the istio-init of meshlite), the sidecar (a native sidecar, i.e. an
//! init container with `restartPolicy: Always`, or a regular container in the classic form),
//! the volumes they mount, and the pod annotations Istio's injector adds.
//!
//! The image's contract: its entrypoint is `meshlite-proxy` (installed at
//! [`PROXY_BINARY`]); the sidecar is configured by flags and environment only (no file), the
//! way pilot-agent builds Envoy's bootstrap from the pod's environment. Its identity comes
//! from the downward API, its bootstrap token from the Secret `meshlite-token-<service
//! account>`, and the root its control plane's certificate chains to from the ConfigMap
//! `istio-ca-root-cert` (Istio's name), both in the pod's namespace.

use serde_json::{Value, json};
use std::collections::BTreeMap;

use super::InjectOptions;
use super::annotations::PodSettings;

/// Name of the capture init container.
pub const INIT_NAME: &str = "meshlite-init";
/// Name of the sidecar container.
pub const PROXY_NAME: &str = "meshlite-proxy";
/// Where the image installs the proxy binary (the postStart hook runs it by path).
pub const PROXY_BINARY: &str = "/usr/local/bin/meshlite-proxy";
/// The sidecar's user and group: Istio's 1337, which the capture rules exempt.
pub const PROXY_UID: u32 = 1337;
/// Istio's inbound capture port.
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// Istio's outbound capture port.
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Merged Prometheus metrics.
pub const METRICS_PORT: u16 = 15020;
/// Health (`/healthz/ready`).
pub const HEALTH_PORT: u16 = 15021;
/// The path Prometheus scrapes.
pub const METRICS_PATH: &str = "/stats/prometheus";
/// The readiness path.
pub const READY_PATH: &str = "/healthz/ready";
/// The ConfigMap with the mesh root certificate (Istio's name, key `root-cert.pem`).
pub const ROOT_CERT_CONFIGMAP: &str = "istio-ca-root-cert";
/// The prefix of the Secret holding a service account's bootstrap token (key `token`).
pub const TOKEN_SECRET_PREFIX: &str = "meshlite-token-";

const STATE_VOLUME: &str = "meshlite-state";
const ROOT_VOLUME: &str = "meshlite-root";
const TOKEN_VOLUME: &str = "meshlite-token";
const STATE_DIR: &str = "/var/run/meshlite";
const ROOT_DIR: &str = "/var/run/secrets/meshlite/root";
const TOKEN_DIR: &str = "/var/run/secrets/meshlite/token";

/// An application port the sidecar serves: its number and protocol (from Istio's port naming).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AppPort {
    /// The container port.
    pub port: u16,
    /// `http`, `http2`, `grpc` or `tcp`; `None` leaves the proxy's default (HTTP with h2c
    /// detection).
    pub protocol: Option<&'static str>,
}

impl AppPort {
    /// The `--app-port` value: `9080` or `9080/grpc`.
    pub fn flag(&self) -> String {
        match self.protocol {
            Some(p) => format!("{}/{p}", self.port),
            None => self.port.to_string(),
        }
    }
}

/// The protocol Istio's port naming gives a port named `name` (`http-web`, `grpc`, ...).
pub fn protocol_of_port_name(name: &str) -> Option<&'static str> {
    let prefix = name.split('-').next().unwrap_or("").to_ascii_lowercase();
    match prefix.as_str() {
        "http" => Some("http"),
        "http2" => Some("http2"),
        "grpc" => Some("grpc"),
        "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Some("tcp"),
        _ => None,
    }
}

/// What the sidecar is told about its workload.
#[derive(Debug, Clone)]
pub struct WorkloadFacts {
    /// The workload's name (a Deployment's, a bare pod's).
    pub name: String,
    /// The pod's service account (`default` when unset).
    pub service_account: String,
    /// The pod's labels, announced to the control plane.
    pub labels: BTreeMap<String, String>,
    /// Ports the application containers serve.
    pub app_ports: Vec<AppPort>,
    /// The app's original probes for the sidecar to run (`ISTIO_KUBE_APP_PROBERS`), when
    /// they were rewritten.
    pub app_probers: Option<String>,
}

/// The init container that installs the capture rules.
pub fn init_container(opts: &InjectOptions, settings: &PodSettings) -> Value {
    let c = &settings.capture;
    let mut exclude_inbound = format!("{METRICS_PORT},{HEALTH_PORT}");
    if let Some(extra) = c.exclude_inbound_ports.as_deref().filter(|s| !s.is_empty()) {
        exclude_inbound.push(',');
        exclude_inbound.push_str(extra);
    }
    let mut args: Vec<String> = vec![
        "init".into(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
        "--proxy-gid".into(),
        PROXY_UID.to_string(),
        "--inbound-port".into(),
        INBOUND_CAPTURE_PORT.to_string(),
        "--outbound-port".into(),
        OUTBOUND_CAPTURE_PORT.to_string(),
        "--include-outbound-ip-ranges".into(),
        c.include_outbound_ip_ranges
            .clone()
            .unwrap_or_else(|| "*".into()),
        "--include-inbound-ports".into(),
        c.include_inbound_ports
            .clone()
            .unwrap_or_else(|| "*".into()),
        "--exclude-inbound-ports".into(),
        exclude_inbound,
    ];
    for (flag, value) in [
        (
            "--exclude-outbound-ip-ranges",
            &c.exclude_outbound_ip_ranges,
        ),
        ("--exclude-outbound-ports", &c.exclude_outbound_ports),
    ] {
        if let Some(v) = value {
            args.push(flag.into());
            args.push(v.clone());
        }
    }
    if settings.dns_capture {
        // The pod's port 53 to the sidecar's DNS proxy (15053), which answers mesh names.
        args.push("--redirect-dns".into());
    }
    json!({
        "name": INIT_NAME,
        "image": opts.proxy_image,
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "10Mi"},
            "limits": {"cpu": "100m", "memory": "50Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": false,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "runAsUser": 0,
        },
    })
}

/// The sidecar's command line after the image's entrypoint (`meshlite-proxy`). `$(VAR)`
/// references are expanded by the kubelet from the container's environment.
pub fn proxy_args(opts: &InjectOptions, workload: &WorkloadFacts) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--workload".into(),
        workload.name.clone(),
        "--namespace".into(),
        "$(POD_NAMESPACE)".into(),
        "--service-account".into(),
        "$(SERVICE_ACCOUNT)".into(),
        "--trust-domain".into(),
        opts.trust_domain.clone(),
        "--instance-ip".into(),
        "$(INSTANCE_IP)".into(),
        // The pod's outbound TCP is captured: per-service TCP listeners are not needed.
        "--tcp-listeners".into(),
        "off".into(),
    ];
    for p in &workload.app_ports {
        args.push("--app-port".into());
        args.push(p.flag());
    }
    for (k, v) in &workload.labels {
        args.push("--label".into());
        args.push(format!("{k}={v}"));
    }
    args
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}})
}

fn ready_probe() -> Value {
    json!({"httpGet": {"path": READY_PATH, "port": HEALTH_PORT}})
}

/// The sidecar container; `native` adds `restartPolicy: Always` and a startup probe (the
/// kubelet starts the app containers once it passes).
pub fn proxy_container(
    opts: &InjectOptions,
    settings: &PodSettings,
    workload: &WorkloadFacts,
    native: bool,
) -> Value {
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("INSTANCE_IP", "status.podIP"),
        field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        json!({"name": "MESHLITE_CONTROL", "value": opts.control_address}),
        json!({"name": "MESHLITE_ROOT_CERT", "value": format!("{ROOT_DIR}/root-cert.pem")}),
        json!({"name": "MESHLITE_TOKEN_FILE", "value": format!("{TOKEN_DIR}/token")}),
        json!({"name": "MESHLITE_STATE_DIR", "value": STATE_DIR}),
    ];
    if let Some(d) = &settings.drain_duration {
        env.push(json!({"name": "MESHLITE_DRAIN_DURATION", "value": d}));
    }
    if let Some(p) = &workload.app_probers {
        env.push(json!({"name": super::probes::ENV, "value": p}));
    }
    let mut probe = ready_probe();
    probe["periodSeconds"] = json!(2);
    probe["failureThreshold"] = json!(30);
    let r = &settings.resources;
    let mut c = json!({
        "name": PROXY_NAME,
        "image": opts.proxy_image,
        "args": proxy_args(opts, workload),
        "env": env,
        "ports": [{"containerPort": METRICS_PORT, "name": "http-envoy-prom", "protocol": "TCP"}],
        "readinessProbe": probe,
        "resources": {
            "requests": {"cpu": r.cpu_request, "memory": r.memory_request},
            "limits": {"cpu": r.cpu_limit, "memory": r.memory_limit},
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "runAsUser": PROXY_UID,
        },
        "volumeMounts": [
            {"name": STATE_VOLUME, "mountPath": STATE_DIR},
            {"name": ROOT_VOLUME, "mountPath": ROOT_DIR, "readOnly": true},
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
        ],
    });
    if native {
        c["restartPolicy"] = json!("Always");
        let mut startup = ready_probe();
        startup["periodSeconds"] = json!(1);
        startup["failureThreshold"] = json!(600);
        c["startupProbe"] = startup;
    } else if settings.hold_application {
        // The kubelet starts the next container only when postStart returns: the app waits
        // for the proxy's readiness, as pilot-agent's `wait` does in Istio.
        c["lifecycle"] = json!({"postStart": {"exec": {"command": [PROXY_BINARY, "wait"]}}});
    }
    c
}

/// The volumes the sidecar mounts.
pub fn volumes(workload: &WorkloadFacts) -> Vec<Value> {
    vec![
        json!({"name": STATE_VOLUME, "emptyDir": {"medium": "Memory"}}),
        json!({"name": ROOT_VOLUME, "configMap": {"name": ROOT_CERT_CONFIGMAP}}),
        json!({"name": TOKEN_VOLUME, "secret": {
            "secretName": format!("{TOKEN_SECRET_PREFIX}{}", workload.service_account),
        }}),
    ]
}

/// The names of what was injected, recorded in `sidecar.istio.io/status` (Istio's shape).
pub fn status(native: bool) -> String {
    let (init, containers): (Vec<&str>, Vec<&str>) = if native {
        (vec![INIT_NAME, PROXY_NAME], vec![])
    } else {
        (vec![INIT_NAME], vec![PROXY_NAME])
    };
    json!({
        "initContainers": init,
        "containers": containers,
        "volumes": [STATE_VOLUME, ROOT_VOLUME, TOKEN_VOLUME],
    })
    .to_string()
}

/// Pod annotations the injector adds unless the pod already sets them: Prometheus scraping
/// of the merged metrics (as Istio's injector annotates).
pub fn scrape_annotations() -> [(&'static str, String); 3] {
    [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", METRICS_PORT.to_string()),
        ("prometheus.io/path", METRICS_PATH.to_string()),
    ]
}
