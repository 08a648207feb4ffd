//! Istio's probe rewrite: with inbound capture, the kubelet's probes of an app port would
//! reach the sidecar's inbound listener, which refuses plaintext under STRICT mutual TLS. So
//! each app container's `httpGet`, `tcpSocket` and `grpc` probe is pointed at the sidecar's
//! metrics port (`/app-health/<container>/livez|readyz|startupz` on 15020), and the original
//! probes go to the sidecar as JSON in `ISTIO_KUBE_APP_PROBERS` (named ports resolved), which
//! it runs against the app when the kubelet asks. `exec` probes are left alone; the pod
//! annotation `sidecar.istio.io/rewriteAppHTTPProbers: "false"` turns the rewrite off.

use serde_json::{Map, Value, json};

use super::InjectError;
use super::template::METRICS_PORT;

/// The pod annotation that turns the rewrite off (`"false"`).
pub const REWRITE: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
/// The sidecar's environment variable holding the original probes (Istio's name).
pub const ENV: &str = "ISTIO_KUBE_APP_PROBERS";

/// The probes of a container and the path suffix each is served at.
const PROBES: [(&str, &str); 3] = [
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];
/// The handlers the sidecar can run.
const HANDLERS: [&str; 3] = ["httpGet", "tcpSocket", "grpc"];

/// Rewrites the probes of `containers` (the app's) in place and returns the JSON the sidecar
/// gets, or `None` when no probe was rewritten.
pub fn rewrite(containers: &mut [Value]) -> Result<Option<String>, InjectError> {
    let mut probers = Map::new();
    for container in containers.iter_mut() {
        let name = container
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ports = container.get("ports").cloned().unwrap_or(Value::Null);
        let Some(c) = container.as_object_mut() else {
            continue;
        };
        for (field, suffix) in PROBES {
            let Some(probe) = c.get_mut(field).and_then(Value::as_object_mut) else {
                continue;
            };
            let Some(handler) = HANDLERS.into_iter().find(|h| probe.contains_key(*h)) else {
                continue;
            };
            let mut original = probe.remove(handler).unwrap_or(Value::Null);
            if let Some(port) = original.get_mut("port") {
                *port = json!(resolve_port(port, &ports).map_err(|message| {
                    InjectError::Malformed(format!(
                        "container {name}: {field}.{handler}.port: {message}"
                    ))
                })?);
            }
            let path = format!("/app-health/{name}/{suffix}");
            let mut prober = Map::new();
            prober.insert(handler.to_string(), original);
            if let Some(t) = probe.get("timeoutSeconds") {
                prober.insert("timeoutSeconds".into(), t.clone());
            }
            probers.insert(path.clone(), Value::Object(prober));
            probe.insert(
                "httpGet".into(),
                json!({"path": path, "port": METRICS_PORT, "scheme": "HTTP"}),
            );
        }
    }
    Ok((!probers.is_empty()).then(|| Value::Object(probers).to_string()))
}

/// A probe's port as a number: given, or the container port of that name.
fn resolve_port(port: &Value, ports: &Value) -> Result<u16, String> {
    let number = |v: &Value| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
    };
    if let Some(n) = number(port) {
        return Ok(n);
    }
    let name = port
        .as_str()
        .ok_or_else(|| format!("`{port}` is not a port"))?;
    ports
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|p| p.get("containerPort"))
        .and_then(number)
        .ok_or_else(|| format!("no container port is named `{name}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_tcp_and_grpc_probes_go_to_the_sidecar_and_exec_stays() {
        let mut containers = vec![
            json!({
                "name": "web",
                "ports": [{"name": "http", "containerPort": 8080}],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                                  "timeoutSeconds": 3, "periodSeconds": 5},
                "readinessProbe": {"tcpSocket": {"port": 8080}},
                "startupProbe": {"exec": {"command": ["true"]}},
            }),
            json!({
                "name": "rpc",
                "readinessProbe": {"grpc": {"port": 9090}},
            }),
        ];
        let env = rewrite(&mut containers).unwrap().expect("rewritten");
        let web = &containers[0];
        assert_eq!(
            web["livenessProbe"],
            json!({"httpGet": {"path": "/app-health/web/livez", "port": 15020, "scheme": "HTTP"},
                   "timeoutSeconds": 3, "periodSeconds": 5})
        );
        assert_eq!(
            web["readinessProbe"]["httpGet"]["path"],
            "/app-health/web/readyz"
        );
        assert!(web["readinessProbe"].get("tcpSocket").is_none());
        assert_eq!(web["startupProbe"], json!({"exec": {"command": ["true"]}}));
        assert_eq!(
            containers[1]["readinessProbe"]["httpGet"]["path"],
            "/app-health/rpc/readyz"
        );
        let probers: Value = serde_json::from_str(&env).unwrap();
        assert_eq!(
            probers,
            json!({
                "/app-health/web/livez": {"httpGet": {"path": "/healthz", "port": 8080},
                                          "timeoutSeconds": 3},
                "/app-health/web/readyz": {"tcpSocket": {"port": 8080}},
                "/app-health/rpc/readyz": {"grpc": {"port": 9090}},
            })
        );
    }

    #[test]
    fn nothing_to_rewrite_is_none_and_an_unknown_port_name_is_an_error() {
        let mut plain = vec![json!({"name": "a", "livenessProbe": {"exec": {"command": ["x"]}}})];
        assert_eq!(rewrite(&mut plain).unwrap(), None);
        let mut bad = vec![json!({"name": "a", "readinessProbe": {"httpGet": {"port": "web"}}})];
        let e = rewrite(&mut bad).unwrap_err().to_string();
        assert!(
            e.contains("readinessProbe.httpGet.port") && e.contains("`web`"),
            "{e}"
        );
    }
}
