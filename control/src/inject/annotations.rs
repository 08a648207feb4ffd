//! What a pod asks of its sidecar, read from the annotations and labels Istio's injector
//! honours: whether to inject at all (`sidecar.istio.io/inject`), the sidecar's resources
//! (`sidecar.istio.io/proxyCPU`, ...), what the capture rules leave alone
//! (`traffic.sidecar.istio.io/*`), the sidecar form (`sidecar.istio.io/nativeSidecar`) and
//! the `proxy.istio.io/config` fields meshlite acts on. Values are checked here, so a typo
//! refuses the injection with the annotation's name instead of producing a pod that fails
//! later.

use serde_json::{Map, Value};
use std::net::IpAddr;

use super::{InjectError, SidecarMode};

/// Istio's opt-out (annotation or label): `"false"` leaves the pod without a sidecar.
pub const INJECT: &str = "sidecar.istio.io/inject";
/// Istio's record of what was injected; its presence makes injection a no-op.
pub const STATUS: &str = "sidecar.istio.io/status";
/// `"true"`: the proxy runs as a Kubernetes native sidecar; `"false"`: as a regular container.
pub const NATIVE_SIDECAR: &str = "sidecar.istio.io/nativeSidecar";
/// The sidecar's CPU request.
pub const PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
/// The sidecar's memory request.
pub const PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
/// The sidecar's CPU limit.
pub const PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
/// The sidecar's memory limit.
pub const PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";
/// Outbound destinations captured (CIDRs, or `*`).
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
/// Outbound destinations never captured (CIDRs).
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
/// Inbound ports captured (numbers, or `*`).
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
/// Inbound ports never captured.
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// Outbound destination ports never captured.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// The workload's ProxyConfig overrides (YAML).
pub const PROXY_CONFIG: &str = "proxy.istio.io/config";

/// Istio's default sidecar CPU request (`global.proxy.resources.requests.cpu`).
pub const DEFAULT_CPU_REQUEST: &str = "100m";
/// Istio's default sidecar memory request.
pub const DEFAULT_MEMORY_REQUEST: &str = "128Mi";
/// Istio's default sidecar CPU limit.
pub const DEFAULT_CPU_LIMIT: &str = "2000m";
/// Istio's default sidecar memory limit.
pub const DEFAULT_MEMORY_LIMIT: &str = "1024Mi";

/// The sidecar's resources: requests and limits, as Kubernetes quantities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    /// `requests.cpu`.
    pub cpu_request: String,
    /// `requests.memory`.
    pub memory_request: String,
    /// `limits.cpu`.
    pub cpu_limit: String,
    /// `limits.memory`.
    pub memory_limit: String,
}

/// What the capture rules of the init container leave alone; `None` keeps the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capture {
    /// `--include-outbound-ip-ranges`.
    pub include_outbound_ip_ranges: Option<String>,
    /// `--exclude-outbound-ip-ranges`.
    pub exclude_outbound_ip_ranges: Option<String>,
    /// `--include-inbound-ports`.
    pub include_inbound_ports: Option<String>,
    /// `--exclude-inbound-ports` (the sidecar's own ports are always added).
    pub exclude_inbound_ports: Option<String>,
    /// `--exclude-outbound-ports`.
    pub exclude_outbound_ports: Option<String>,
}

/// Everything the annotations ask for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSettings {
    /// Native sidecar or regular container.
    pub mode: SidecarMode,
    /// The sidecar's resources.
    pub resources: Resources,
    /// Capture exclusions.
    pub capture: Capture,
    /// `holdApplicationUntilProxyStarts`.
    pub hold_application: bool,
    /// `terminationDrainDuration`, as written (an Istio duration).
    pub drain_duration: Option<String>,
    /// Whether the pod's DNS (port 53) goes to the sidecar: `proxyMetadata`
    /// `ISTIO_META_DNS_CAPTURE`, on unless the pod says `"false"` (meshlite's sidecars answer
    /// mesh names by default, see the control plane's MeshConfig reading).
    pub dns_capture: bool,
    /// `sidecar.istio.io/rewriteAppHTTPProbers` is not `"false"`: the app's probes go
    /// through the sidecar ([`super::probes`]).
    pub rewrite_probes: bool,
}

/// Whether a pod (its metadata) opts out of injection: annotation or label
/// `sidecar.istio.io/inject: "false"` (the label wins, as in Istio).
pub fn opted_out(metadata: Option<&Map<String, Value>>) -> bool {
    let read = |field: &str| {
        metadata
            .and_then(|m| m.get(field))
            .and_then(|v| v.get(INJECT))
            .and_then(Value::as_str)
            .map(|s| s.trim().eq_ignore_ascii_case("false"))
    };
    read("labels")
        .or_else(|| read("annotations"))
        .unwrap_or(false)
}

/// Reads a pod's annotations; `default_mode` applies unless the pod names its own.
pub fn read(
    annotations: Option<&Map<String, Value>>,
    default_mode: SidecarMode,
) -> Result<PodSettings, InjectError> {
    let get = |key: &'static str| -> Result<Option<String>, InjectError> {
        match annotations.and_then(|a| a.get(key)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(other) => Err(InjectError::Annotation {
                key,
                message: format!("must be a string, found {other}"),
            }),
        }
    };
    let mode = match get(NATIVE_SIDECAR)?.as_deref() {
        None => default_mode,
        Some("true") => SidecarMode::Native,
        Some("false") => SidecarMode::Classic,
        Some(other) => {
            return Err(InjectError::Annotation {
                key: NATIVE_SIDECAR,
                message: format!("`{other}` is not \"true\" or \"false\""),
            });
        }
    };
    let quantity = |key: &'static str, default: &str| -> Result<String, InjectError> {
        match get(key)? {
            None => Ok(default.to_string()),
            Some(q) if is_quantity(&q) => Ok(q),
            Some(q) => Err(InjectError::Annotation {
                key,
                message: format!("`{q}` is not a Kubernetes quantity (e.g. 100m, 1, 128Mi)"),
            }),
        }
    };
    let resources = Resources {
        cpu_request: quantity(PROXY_CPU, DEFAULT_CPU_REQUEST)?,
        memory_request: quantity(PROXY_MEMORY, DEFAULT_MEMORY_REQUEST)?,
        cpu_limit: quantity(PROXY_CPU_LIMIT, DEFAULT_CPU_LIMIT)?,
        memory_limit: quantity(PROXY_MEMORY_LIMIT, DEFAULT_MEMORY_LIMIT)?,
    };
    let checked = |key: &'static str, check: fn(&str) -> Result<(), String>| {
        get(key)?
            .map(|v| {
                let v = normalize_list(&v);
                check(&v)
                    .map(|()| v)
                    .map_err(|message| InjectError::Annotation { key, message })
            })
            .transpose()
    };
    let capture = Capture {
        include_outbound_ip_ranges: checked(INCLUDE_OUTBOUND_IP_RANGES, |v| ip_ranges(v, true))?,
        exclude_outbound_ip_ranges: checked(EXCLUDE_OUTBOUND_IP_RANGES, |v| ip_ranges(v, false))?,
        include_inbound_ports: checked(INCLUDE_INBOUND_PORTS, |v| ports(v, true))?,
        exclude_inbound_ports: checked(EXCLUDE_INBOUND_PORTS, |v| ports(v, false))?,
        exclude_outbound_ports: checked(EXCLUDE_OUTBOUND_PORTS, |v| ports(v, false))?,
    };
    let rewrite_probes = match get(super::probes::REWRITE)?.as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(InjectError::Annotation {
                key: super::probes::REWRITE,
                message: format!("`{other}` is not \"true\" or \"false\""),
            });
        }
    };
    let proxy = match get(PROXY_CONFIG)? {
        None => ProxyConfigFields::default(),
        Some(text) => proxy_config(&text)?,
    };
    Ok(PodSettings {
        mode,
        resources,
        capture,
        hold_application: proxy.hold_application,
        drain_duration: proxy.drain_duration,
        dns_capture: proxy.dns_capture,
        rewrite_probes,
    })
}

/// What meshlite reads of a pod's `proxy.istio.io/config`.
struct ProxyConfigFields {
    hold_application: bool,
    drain_duration: Option<String>,
    dns_capture: bool,
}

impl Default for ProxyConfigFields {
    fn default() -> Self {
        Self {
            hold_application: false,
            drain_duration: None,
            dns_capture: true,
        }
    }
}

/// The `proxy.istio.io/config` fields meshlite acts on; the others (Envoy-specific) are
/// accepted and ignored, as the annotation is shared with Istio's own tools.
fn proxy_config(text: &str) -> Result<ProxyConfigFields, InjectError> {
    let err = |message: String| InjectError::Annotation {
        key: PROXY_CONFIG,
        message,
    };
    let value: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_saphyr::from_str(text).map_err(|e| err(format!("not YAML: {e}")))?
    };
    let map = match &value {
        Value::Null => return Ok(ProxyConfigFields::default()),
        Value::Object(m) => m,
        other => return Err(err(format!("must be a ProxyConfig mapping, found {other}"))),
    };
    let hold = match map.get("holdApplicationUntilProxyStarts") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(err(format!(
                "holdApplicationUntilProxyStarts must be true or false, found {other}"
            )));
        }
    };
    let drain = match map.get("terminationDrainDuration") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            meshlite_xds_proto::duration::parse(s)
                .map_err(|e| err(format!("terminationDrainDuration `{s}`: {e}")))?;
            Some(s.trim().to_string())
        }
        Some(other) => {
            return Err(err(format!(
                "terminationDrainDuration must be a duration such as 30s, found {other}"
            )));
        }
    };
    let dns_capture = match map
        .get("proxyMetadata")
        .and_then(|m| m.get(crate::model::DNS_CAPTURE))
    {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("true") => true,
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("false") => false,
        Some(other) => {
            return Err(err(format!(
                "proxyMetadata.{} must be \"true\" or \"false\", found {other}",
                crate::model::DNS_CAPTURE
            )));
        }
    };
    Ok(ProxyConfigFields {
        hold_application: hold,
        drain_duration: drain,
        dns_capture,
    })
}

/// `a, b ,c` -> `a,b,c` (Istio's annotations are comma-separated, spaces tolerated).
fn normalize_list(v: &str) -> String {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

/// Comma-separated CIDRs (or bare addresses); `*` alone when `star` is allowed.
fn ip_ranges(v: &str, star: bool) -> Result<(), String> {
    if star && v == "*" {
        return Ok(());
    }
    for item in v.split(',').filter(|s| !s.is_empty()) {
        let (addr, prefix) = item.split_once('/').unwrap_or((item, ""));
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{item}` is not an IP range (CIDR such as 10.0.0.0/8)"))?;
        if !prefix.is_empty() {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match prefix.parse::<u8>() {
                Ok(p) if p <= max => {}
                _ => return Err(format!("`{item}`: prefix length must be 0-{max}")),
            }
        }
    }
    Ok(())
}

/// Comma-separated port numbers; `*` alone when `star` is allowed.
fn ports(v: &str, star: bool) -> Result<(), String> {
    if star && v == "*" {
        return Ok(());
    }
    for item in v.split(',').filter(|s| !s.is_empty()) {
        match item.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(format!("`{item}` is not a port (1-65535)")),
        }
    }
    Ok(())
}

/// A Kubernetes resource quantity: a decimal number with an optional binary (`Ki`..`Ei`),
/// decimal (`m`, `k`, `M`..`E`) or exponent suffix.
fn is_quantity(q: &str) -> bool {
    let digits = q.strip_prefix(['+', '-']).unwrap_or(q);
    let end = digits
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(digits.len());
    let (number, suffix) = digits.split_at(end);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|exp| {
            let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit())
        })
        .unwrap_or(false);
    number_ok && suffix_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(annotations: Value) -> Result<PodSettings, InjectError> {
        read(annotations.as_object(), SidecarMode::Native)
    }

    #[test]
    fn no_annotations_give_istios_defaults() {
        let s = settings(json!({})).unwrap();
        assert_eq!(s.mode, SidecarMode::Native);
        assert_eq!(s.resources.cpu_request, "100m");
        assert_eq!(s.resources.memory_limit, "1024Mi");
        assert_eq!(s.capture, Capture::default());
        assert!(!s.hold_application);
        assert_eq!(s.drain_duration, None);
        assert!(s.dns_capture);
        assert!(s.rewrite_probes);
        let off = settings(json!({super::super::probes::REWRITE: "false"})).unwrap();
        assert!(!off.rewrite_probes);
        assert!(settings(json!({super::super::probes::REWRITE: "no"})).is_err());
    }

    #[test]
    fn quantities_are_checked() {
        for good in ["100m", "1", "0.5", "128Mi", "1e3", "2G", "+1.5Gi"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "abc", "100mb", "1.2.3", "Mi", ".", "1e", "12 Mi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
        let e = settings(json!({PROXY_MEMORY: "lots"})).unwrap_err();
        assert!(e.to_string().contains(PROXY_MEMORY), "{e}");
    }

    #[test]
    fn capture_lists_are_normalized_and_checked() {
        let s = settings(json!({
            EXCLUDE_OUTBOUND_IP_RANGES: "10.0.0.0/8, 169.254.169.254/32",
            EXCLUDE_INBOUND_PORTS: "8080 ,9090",
            INCLUDE_OUTBOUND_IP_RANGES: "*",
        }))
        .unwrap();
        assert_eq!(
            s.capture.exclude_outbound_ip_ranges.as_deref(),
            Some("10.0.0.0/8,169.254.169.254/32")
        );
        assert_eq!(
            s.capture.exclude_inbound_ports.as_deref(),
            Some("8080,9090")
        );
        assert_eq!(s.capture.include_outbound_ip_ranges.as_deref(), Some("*"));
        for (key, bad) in [
            (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/33"),
            (EXCLUDE_OUTBOUND_IP_RANGES, "*"),
            (INCLUDE_OUTBOUND_IP_RANGES, "example.com"),
            (EXCLUDE_INBOUND_PORTS, "70000"),
            (EXCLUDE_OUTBOUND_PORTS, "0"),
            (INCLUDE_INBOUND_PORTS, "http"),
        ] {
            let e = settings(json!({ key: bad })).unwrap_err();
            assert!(e.to_string().contains(key), "{key}={bad}: {e}");
        }
    }

    #[test]
    fn proxy_config_fields_are_read_and_checked() {
        let s = settings(json!({
            PROXY_CONFIG: "holdApplicationUntilProxyStarts: true\nterminationDrainDuration: 20s\nconcurrency: 2\n"
        }))
        .unwrap();
        assert!(s.hold_application);
        assert_eq!(s.drain_duration.as_deref(), Some("20s"));
        assert!(s.dns_capture);
        let off = "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"false\"\n";
        assert!(!settings(json!({ PROXY_CONFIG: off })).unwrap().dns_capture);
        for bad in [
            "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: sometimes\n",
            "terminationDrainDuration: soon",
            "holdApplicationUntilProxyStarts: maybe",
            "[1, 2]",
            "{unclosed",
        ] {
            let e = settings(json!({ PROXY_CONFIG: bad })).unwrap_err();
            assert!(e.to_string().contains(PROXY_CONFIG), "{bad}: {e}");
        }
    }

    #[test]
    fn the_native_sidecar_annotation_overrides_the_default_mode() {
        let s = settings(json!({NATIVE_SIDECAR: "false"})).unwrap();
        assert_eq!(s.mode, SidecarMode::Classic);
        let s = read(
            json!({NATIVE_SIDECAR: "true"}).as_object(),
            SidecarMode::Classic,
        )
        .unwrap();
        assert_eq!(s.mode, SidecarMode::Native);
        assert!(settings(json!({NATIVE_SIDECAR: "yes"})).is_err());
    }

    #[test]
    fn opting_out_by_label_or_annotation() {
        assert!(opted_out(
            json!({"annotations": {INJECT: "false"}}).as_object()
        ));
        assert!(opted_out(json!({"labels": {INJECT: "False"}}).as_object()));
        assert!(!opted_out(
            json!({"labels": {INJECT: "true"}, "annotations": {INJECT: "false"}}).as_object()
        ));
        assert!(!opted_out(json!({}).as_object()));
        assert!(!opted_out(None));
    }
}
