//! The two objects an injected sidecar mounts from its namespace, as Kubernetes JSON that
//! `kubectl apply -f -` takes: the ConfigMap `istio-ca-root-cert` (the mesh root, Istio's name
//! and key) and the Secret `meshlite-token-<service account>` (its bootstrap token). The
//! control plane has no Kubernetes client to write them itself; `meshlite-control cert root
//! --format kubernetes` and `token create --format kubernetes` print them instead.

use serde_json::{Value, json};

use super::template::{ROOT_CERT_CONFIGMAP, TOKEN_SECRET_PREFIX};

/// The label every object meshlite writes carries, so they can be listed and removed.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "meshlite-control");

/// The ConfigMap holding the mesh root in each of `namespaces` (one object, or a `List`).
pub fn root_configmaps(namespaces: &[String], root_pem: &str) -> Value {
    let one = |ns: &str| {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": ROOT_CERT_CONFIGMAP,
                "namespace": ns,
                "labels": {MANAGED_BY.0: MANAGED_BY.1},
            },
            "data": {"root-cert.pem": root_pem},
        })
    };
    list(namespaces.iter().map(|ns| one(ns)).collect())
}

/// The Secret holding `service_account`'s bootstrap token in `namespace`.
pub fn token_secret(namespace: &str, service_account: &str, token: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": format!("{TOKEN_SECRET_PREFIX}{service_account}"),
            "namespace": namespace,
            "labels": {MANAGED_BY.0: MANAGED_BY.1},
        },
        "stringData": {"token": token},
    })
}

/// One object as itself, several as a `v1` `List`.
fn list(mut items: Vec<Value>) -> Value {
    if items.len() == 1 {
        return items.remove(0);
    }
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_objects_have_the_names_and_keys_the_injected_pod_mounts() {
        let one = root_configmaps(&["shop".into()], "PEM");
        assert_eq!(one["kind"], "ConfigMap");
        assert_eq!(one["metadata"]["name"], ROOT_CERT_CONFIGMAP);
        assert_eq!(one["metadata"]["namespace"], "shop");
        assert_eq!(one["data"]["root-cert.pem"], "PEM");
        let two = root_configmaps(&["a".into(), "b".into()], "PEM");
        assert_eq!(two["kind"], "List");
        assert_eq!(two["items"][1]["metadata"]["namespace"], "b");
        let s = token_secret("shop", "reviews", "TOKEN");
        assert_eq!(s["metadata"]["name"], "meshlite-token-reviews");
        assert_eq!(s["stringData"]["token"], "TOKEN");
    }
}
