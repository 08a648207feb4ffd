//! The file source: a directory of Istio YAML manifests.
//!
//! Every `*.yaml`/`*.yml` file directly in the directory is read in name order (hidden files
//! and editor leftovers are skipped), each possibly holding several `---`-separated documents.
//! A document is parsed to a JSON value first, so `kind`/`apiVersion` pick the typed spec;
//! the typed parse then reports unknown fields as warnings (with their path) and type errors
//! as errors (with their path), instead of silently dropping either.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{LoadOutcome, Problem, Resource, ResourceSpec, Severity};
use crate::model::{DEFAULT_NAMESPACE, Kind, ObjectMeta, Origin};

/// Top-level fields of a Kubernetes object that meshlite accepts and ignores without warning.
const IGNORED_TOP_LEVEL: &[&str] = &["status"];

/// Metadata fields Kubernetes adds (e.g. in `kubectl get -o yaml` output) that carry no config.
const IGNORED_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "managedFields",
    "ownerReferences",
    "finalizers",
    "generateName",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Reads every YAML file in `dir` (non-recursive, sorted by name) into resources and problems.
pub fn load_dir(dir: &Path) -> LoadOutcome {
    let mut out = LoadOutcome::default();
    let files = match yaml_files(dir) {
        Ok(files) => files,
        Err(e) => {
            out.problems.push(Problem::file(
                Severity::Error,
                dir,
                format!("cannot read directory: {e}"),
            ));
            return out;
        }
    };
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => load_str(&file, &text, &mut out),
            Err(e) => out.problems.push(Problem::file(
                Severity::Error,
                &file,
                format!("cannot read file: {e}"),
            )),
        }
    }
    out
}

/// True for names the loader reads: `*.yaml`/`*.yml`, not hidden, not an editor backup.
pub(crate) fn is_config_file_name(name: &str) -> bool {
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    let Some((_, ext)) = name.rsplit_once('.') else {
        return false;
    };
    ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml")
}

fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        // `metadata` follows symlinks, as ConfigMap mounts use them.
        if is_config_file_name(name) && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// One `---`-separated document of a file.
struct RawDocument {
    /// 1-based line of the document's first line in the file.
    first_line: usize,
    text: String,
}

/// Splits a YAML stream at document markers, keeping line numbers. A `---` at the very start
/// (or right after `...`) opens the first document rather than ending an empty one.
fn split_documents(text: &str) -> Vec<RawDocument> {
    let mut docs = vec![RawDocument {
        first_line: 1,
        text: String::new(),
    }];
    // Whether the current document was opened by a marker or holds content.
    let mut explicit = false;
    let mut has_content = false;
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let marker = |m: &str| {
            line.strip_prefix(m)
                .filter(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        };
        if let Some(rest) = marker("---") {
            if explicit || has_content {
                docs.push(RawDocument {
                    first_line: line_no,
                    text: String::new(),
                });
            } else if let Some(doc) = docs.last_mut() {
                // Keep directives and comments seen so far; line numbers restart here.
                doc.first_line = line_no;
                doc.text.clear();
            }
            explicit = true;
            has_content = !rest.trim().is_empty() && !rest.trim_start().starts_with('#');
            if let Some(doc) = docs.last_mut() {
                doc.text.push_str(rest);
                doc.text.push('\n');
            }
            continue;
        }
        if marker("...").is_some() {
            docs.push(RawDocument {
                first_line: line_no + 1,
                text: String::new(),
            });
            explicit = false;
            has_content = false;
            continue;
        }
        let trimmed = line.trim();
        if !trimmed.is_empty() && !trimmed.starts_with('#') && !trimmed.starts_with('%') {
            has_content = true;
        }
        if let Some(doc) = docs.last_mut() {
            doc.text.push_str(line);
            doc.text.push('\n');
        }
    }
    // A trailing implicit document with nothing in it is not a document.
    if !explicit && !has_content && docs.len() > 1 {
        docs.pop();
    }
    docs
}

/// Parses one file's text, appending its resources and problems.
pub(crate) fn load_str(file: &Path, text: &str, out: &mut LoadOutcome) {
    for (index, raw) in split_documents(text).into_iter().enumerate() {
        let origin = Origin {
            file: file.to_path_buf(),
            document: index + 1,
        };
        if !has_content(&raw.text) {
            continue; // empty document
        }
        let value = match serde_saphyr::from_str::<Value>(&raw.text) {
            Ok(value) => value,
            Err(e) => {
                out.problems.push(yaml_error(&origin, raw.first_line, &e));
                continue;
            }
        };
        load_value(value, origin, out);
    }
}

/// True when the text holds more than blank lines, comments and directives.
fn has_content(text: &str) -> bool {
    text.lines().any(|line| {
        let t = line.trim();
        !t.is_empty() && !t.starts_with('#') && !t.starts_with('%')
    })
}

fn yaml_error(origin: &Origin, first_line: usize, e: &serde_saphyr::Error) -> Problem {
    // The first line of saphyr's message is the message; the rest is a source snippet with
    // document-relative line numbers, which would mislead.
    let text = e.to_string();
    let mut message = text.lines().next().unwrap_or("invalid YAML").trim();
    message = message.strip_prefix("error: ").unwrap_or(message);
    // Drop saphyr's own document-relative "line N column M: " prefix.
    if message.starts_with("line ")
        && let Some((_, rest)) = message.split_once(": ")
    {
        message = rest;
    }
    let at = e
        .location()
        .map(|loc| {
            let line = usize::try_from(loc.line()).unwrap_or(0) + first_line.saturating_sub(1);
            format!(" at line {line}, column {}", loc.column())
        })
        .unwrap_or_default();
    Problem {
        severity: Severity::Error,
        file: origin.file.clone(),
        document: Some(origin.document),
        resource: None,
        field: None,
        message: format!("invalid YAML{at}: {message}"),
    }
}

/// `Kind ns/name` from an untyped document, as far as it can be read.
fn untyped_label(kind: &str, value: &Value) -> Option<String> {
    let meta = value.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_NAMESPACE);
    Some(format!("{kind} {ns}/{name}"))
}

fn load_value(value: Value, origin: Origin, out: &mut LoadOutcome) {
    let problem =
        |severity, resource: Option<String>, field: Option<&str>, message: String| Problem {
            severity,
            file: origin.file.clone(),
            document: Some(origin.document),
            resource,
            field: field.map(str::to_owned),
            message,
        };
    if value.is_null() {
        return; // empty document
    }
    if !value.is_object() {
        out.problems.push(problem(
            Severity::Error,
            None,
            None,
            "document is not a mapping (expected a Kubernetes resource)".to_owned(),
        ));
        return;
    }
    let Some(kind_name) = value.get("kind").and_then(Value::as_str).map(str::to_owned) else {
        out.problems.push(problem(
            Severity::Warning,
            None,
            Some("kind"),
            "document has no `kind`; skipped".to_owned(),
        ));
        return;
    };
    let label = untyped_label(&kind_name, &value);
    if kind_name == "IstioOperator" || kind_name == "ConfigMap" {
        load_mesh_config(value, &kind_name, label, origin, out);
        return;
    }
    let Some(kind) = Kind::from_name(&kind_name) else {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        out.problems.push(problem(
            Severity::Warning,
            label,
            Some("kind"),
            format!(
                "unknown kind `{kind_name}`; skipped (meshlite reads {})",
                known.join(", ")
            ),
        ));
        return;
    };
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !kind.api_versions().contains(&api_version) {
        out.problems.push(problem(
            Severity::Error,
            label,
            Some("apiVersion"),
            format!(
                "`{api_version}` is not an apiVersion of {kind} (expected one of {})",
                kind.api_versions().join(", ")
            ),
        ));
        return;
    }
    let parsed = match kind {
        Kind::VirtualService => {
            typed(value).map(|(m, s, i)| (m, ResourceSpec::VirtualService(Box::new(s)), i))
        }
        Kind::DestinationRule => {
            typed(value).map(|(m, s, i)| (m, ResourceSpec::DestinationRule(Box::new(s)), i))
        }
        Kind::ServiceEntry => {
            typed(value).map(|(m, s, i)| (m, ResourceSpec::ServiceEntry(Box::new(s)), i))
        }
        Kind::Sidecar => typed(value).map(|(m, s, i)| (m, ResourceSpec::Sidecar(Box::new(s)), i)),
        Kind::PeerAuthentication => {
            typed(value).map(|(m, s, i)| (m, ResourceSpec::PeerAuthentication(Box::new(s)), i))
        }
        Kind::AuthorizationPolicy => {
            typed(value).map(|(m, s, i)| (m, ResourceSpec::AuthorizationPolicy(Box::new(s)), i))
        }
        Kind::RequestAuthentication => {
            typed(value).map(|(m, s, i)| (m, ResourceSpec::RequestAuthentication(Box::new(s)), i))
        }
        Kind::Telemetry => {
            typed(value).map(|(m, s, i)| (m, ResourceSpec::Telemetry(Box::new(s)), i))
        }
        // Never a `kind:` of its own (see `load_mesh_config`).
        Kind::MeshConfig => Err(TypedError {
            field: Some("kind".into()),
            message: "MeshConfig is read from an IstioOperator or the `istio` ConfigMap".into(),
        }),
    };
    match parsed {
        Ok((meta, spec, ignored)) => {
            let resource = Resource {
                kind,
                meta,
                spec,
                origin: origin.clone(),
            };
            for field in ignored {
                out.problems.push(Problem::at(
                    Severity::Warning,
                    &resource,
                    field,
                    "unknown field, ignored (not an Istio field, or not supported by meshlite)",
                ));
            }
            out.resources.push(resource);
        }
        Err(TypedError { field, message }) => {
            out.problems
                .push(problem(Severity::Error, label, field.as_deref(), message));
        }
    }
}

/// MeshConfig from the two documents Istio keeps it in: an IstioOperator's
/// `spec.meshConfig`, or the `istio` ConfigMap's `data.mesh` (a YAML string). Other
/// ConfigMaps are skipped with a warning; the rest of an IstioOperator (install settings) is
/// not read.
fn load_mesh_config(
    value: Value,
    kind_name: &str,
    label: Option<String>,
    origin: Origin,
    out: &mut LoadOutcome,
) {
    let problem = |severity, field: Option<&str>, message: String| Problem {
        severity,
        file: origin.file.clone(),
        document: Some(origin.document),
        resource: label.clone(),
        field: field.map(str::to_owned),
        message,
    };
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let (expected, prefix) = if kind_name == "IstioOperator" {
        ("install.istio.io/v1alpha1", "spec.meshConfig")
    } else {
        ("v1", "data.mesh")
    };
    if api_version != expected {
        out.problems.push(problem(
            Severity::Error,
            Some("apiVersion"),
            format!("`{api_version}` is not the apiVersion of {kind_name} (expected {expected})"),
        ));
        return;
    }
    let mesh = if kind_name == "IstioOperator" {
        value
            .get("spec")
            .and_then(|s| s.get("meshConfig"))
            .cloned()
            .unwrap_or(Value::Null)
    } else {
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str);
        if name != Some("istio") {
            out.problems.push(problem(
                Severity::Warning,
                Some("metadata.name"),
                "a ConfigMap other than `istio` (Istio's mesh config) is not read; skipped".into(),
            ));
            return;
        }
        match value.get("data").and_then(|d| d.get("mesh")) {
            None => Value::Null,
            Some(Value::String(text)) => match serde_saphyr::from_str::<Value>(text) {
                Ok(v) => v,
                Err(e) => {
                    out.problems.push(problem(
                        Severity::Error,
                        Some("data.mesh"),
                        format!("invalid YAML: {e}"),
                    ));
                    return;
                }
            },
            Some(_) => {
                out.problems.push(problem(
                    Severity::Error,
                    Some("data.mesh"),
                    "must be a string holding the MeshConfig YAML".into(),
                ));
                return;
            }
        }
    };
    let mut doc = serde_json::Map::new();
    doc.insert("apiVersion".into(), Value::from(api_version));
    doc.insert("kind".into(), Value::from(kind_name));
    doc.insert(
        "metadata".into(),
        value
            .get("metadata")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({"name": "mesh"})),
    );
    if !mesh.is_null() {
        doc.insert("spec".into(), mesh);
    }
    let relocate = |f: String| match f.strip_prefix("spec") {
        Some(rest) => format!("{prefix}{rest}"),
        None => f,
    };
    match typed::<crate::model::MeshConfig>(Value::Object(doc)) {
        Ok((meta, spec, ignored)) => {
            let resource = Resource {
                kind: Kind::MeshConfig,
                meta,
                spec: ResourceSpec::MeshConfig(Box::new(spec)),
                origin: origin.clone(),
            };
            for field in ignored {
                if field.starts_with("spec") {
                    out.problems.push(Problem::at(
                        Severity::Warning,
                        &resource,
                        relocate(field),
                        "unknown field, ignored (not a MeshConfig field, or not supported by meshlite)",
                    ));
                }
            }
            out.resources.push(resource);
        }
        Err(TypedError { field, message }) => out.problems.push(problem(
            Severity::Error,
            field.map(relocate).as_deref(),
            message,
        )),
    }
}

/// The typed shape of a document.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document<S> {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    metadata: ObjectMeta,
    #[serde(default)]
    spec: S,
}

struct TypedError {
    field: Option<String>,
    message: String,
}

/// Deserializes the typed document, collecting unknown field paths.
fn typed<S: DeserializeOwned + Default>(
    value: Value,
) -> Result<(ObjectMeta, S, Vec<String>), TypedError> {
    let mut ignored = Vec::new();
    let mut on_ignored = |path: serde_ignored::Path<'_>| {
        let mut text = String::new();
        ignored_path(&path, &mut text);
        if !is_tolerated(&text) {
            ignored.push(text);
        }
    };
    let de = serde_ignored::Deserializer::new(value, &mut on_ignored);
    match serde_path_to_error::deserialize::<_, Document<S>>(de) {
        Ok(doc) => Ok((doc.metadata, doc.spec, ignored)),
        Err(e) => {
            let path = e.path().to_string();
            Err(TypedError {
                field: Some(path).filter(|p| p != "."),
                message: e.inner().to_string(),
            })
        }
    }
}

fn is_tolerated(path: &str) -> bool {
    if IGNORED_TOP_LEVEL.contains(&path) {
        return true;
    }
    path.strip_prefix("metadata.")
        .is_some_and(|rest| IGNORED_METADATA.contains(&rest))
}

/// Formats a serde_ignored path as `spec.http[0].rout`.
fn ignored_path(path: &serde_ignored::Path<'_>, out: &mut String) {
    use serde_ignored::Path as P;
    match path {
        P::Root => {}
        P::Seq { parent, index } => {
            ignored_path(parent, out);
            out.push_str(&format!("[{index}]"));
        }
        P::Map { parent, key } => {
            ignored_path(parent, out);
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(key);
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AuthzAction, MtlsMode, Resolution};

    const ALL_KINDS: &str = r#"
# a comment before the first marker
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: shop
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
  - timeout: 1.5s
    route:
    - destination: {host: reviews, subset: v1}
      weight: 90
    - destination: {host: reviews, subset: v3}
      weight: 10
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, interval: 10s, baseEjectionTime: 30s}
    connectionPool:
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 100}
  subsets:
  - {name: v1, labels: {version: v1}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-frontend, namespace: shop}
spec:
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/shop/sa/frontend"]}
---

---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: payments}
spec:
  hosts: [api.payments.example]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
"#;

    fn load(text: &str) -> LoadOutcome {
        let mut out = LoadOutcome::default();
        load_str(Path::new("cfg/mesh.yaml"), text, &mut out);
        out
    }

    #[test]
    fn a_multi_document_file_loads_every_kind_typed() {
        let out = load(ALL_KINDS);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let kinds: Vec<Kind> = out.resources.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::VirtualService,
                Kind::DestinationRule,
                Kind::PeerAuthentication,
                Kind::AuthorizationPolicy,
                Kind::ServiceEntry
            ]
        );
        // The empty document between the policy and the ServiceEntry still counts.
        let docs: Vec<usize> = out.resources.iter().map(|r| r.origin.document).collect();
        assert_eq!(docs, [1, 2, 3, 4, 6]);
        let ResourceSpec::VirtualService(vs) = &out.resources[0].spec else {
            panic!("not a VS")
        };
        assert_eq!(out.resources[0].meta.namespace, "shop");
        assert_eq!(vs.http[1].route[0].weight, 90);
        assert_eq!(
            vs.http[1].timeout.map(|t| t.as_std()),
            Some(std::time::Duration::from_millis(1500))
        );
        assert_eq!(
            vs.http[0].matches[0].headers["end-user"].exact.as_deref(),
            Some("jason")
        );
        let ResourceSpec::DestinationRule(dr) = &out.resources[1].spec else {
            panic!("not a DR")
        };
        let tp = dr.traffic_policy.as_ref().unwrap();
        assert_eq!(
            tp.outlier_detection
                .as_ref()
                .unwrap()
                .consecutive_5xx_errors,
            Some(3)
        );
        let ResourceSpec::PeerAuthentication(pa) = &out.resources[2].spec else {
            panic!("not a PA")
        };
        assert_eq!(pa.mtls.as_ref().map(|m| m.mode), Some(MtlsMode::Strict));
        let ResourceSpec::AuthorizationPolicy(ap) = &out.resources[3].spec else {
            panic!("not an AP")
        };
        assert_eq!(ap.action, AuthzAction::Allow);
        assert_eq!(ap.rules[0].from[0].source.principals.len(), 1);
        let ResourceSpec::ServiceEntry(se) = &out.resources[4].spec else {
            panic!("not an SE")
        };
        assert_eq!(se.resolution, Some(Resolution::Dns));
        assert_eq!(out.resources[4].meta.namespace, "default");
    }

    #[test]
    fn an_unknown_field_warns_with_file_document_resource_and_path() {
        let out = load(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {name: reviews, uid: abc}\nspec:\n  hosts: [reviews]\n  http:\n  \
             - rout:\n    - destination: {host: reviews}\nstatus: {}\n",
        );
        assert_eq!(out.resources.len(), 1);
        let warn = out
            .problems
            .iter()
            .find(|p| p.field.as_deref() == Some("spec.http[0].rout"))
            .expect("warning for spec.http[0].rout");
        assert_eq!(warn.severity, Severity::Warning);
        assert_eq!(warn.document, Some(2));
        assert_eq!(
            warn.to_string(),
            "cfg/mesh.yaml:2: warning: VirtualService default/reviews: spec.http[0].rout: \
             unknown field, ignored (not an Istio field, or not supported by meshlite)"
        );
        // Kubernetes bookkeeping (metadata.uid, status) is not reported.
        assert_eq!(out.problems.len(), 2, "{:?}", out.problems);
    }

    #[test]
    fn mesh_config_comes_from_an_istio_operator_or_the_istio_config_map() {
        let out = load(
            "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: seed}\n\
             spec:\n  profile: default\n  meshConfig:\n    trustDomainAliases: [old.example]\n    \
             pathNormalization: {normalization: MERGE_SLASHES}\n    extensionProviders:\n    \
             - name: opa\n      envoyExtAuthzGrpc: {service: opa.policy.svc.cluster.local, port: 9191}\n    \
             colour: blue\n",
        );
        let [r] = &out.resources[..] else {
            panic!("{:?}", out.problems)
        };
        let ResourceSpec::MeshConfig(m) = &r.spec else {
            panic!("not a MeshConfig: {r:?}")
        };
        assert_eq!(m.trust_domain_aliases, ["old.example"]);
        assert_eq!(m.extension_providers[0].name, "opa");
        let [p] = &out.problems[..] else {
            panic!("{:?}", out.problems)
        };
        assert_eq!(p.field.as_deref(), Some("spec.meshConfig.colour"), "{p}");

        let out = load(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n\
             data:\n  mesh: |\n    pathNormalization: {normalization: NONE}\n",
        );
        let ResourceSpec::MeshConfig(m) = &out.resources[0].spec else {
            panic!("{out:?}")
        };
        assert_eq!(
            m.path_normalization.as_ref().map(|p| p.normalization),
            Some(crate::model::PathNormalization::None)
        );
        let out = load("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\ndata: {x: y}\n");
        assert!(out.resources.is_empty());
        assert_eq!(out.problems[0].severity, Severity::Warning);
    }

    #[test]
    fn a_telemetry_loads_typed_in_either_api_version() {
        use crate::model::{IstioMetric, TagOperation, WorkloadMode};
        let text = "apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata: {name: api, namespace: shop}
spec:
  selector:
    matchLabels: {app: api}
  tracing:
  - match: {mode: SERVER}
    providers: [{name: otel}]
    randomSamplingPercentage: 25.5
    disableSpanReporting: false
    customTags:
      env: {literal: {value: prod}}
      team: {header: {name: x-team, defaultValue: none}}
  metrics:
  - providers: [{name: prometheus}]
    reportingInterval: 15s
    overrides:
    - match: {metric: REQUEST_COUNT, mode: CLIENT}
      disabled: true
      tagOverrides:
        tenant: {value: \"request.headers['x-tenant']\"}
        request_protocol: {operation: REMOVE}
  accessLogging:
  - providers: [{name: envoy}]
    match: {mode: CLIENT_AND_SERVER}
    disabled: false
    filter: {expression: \"response.code >= 400\"}
";
        let out = load(text);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let ResourceSpec::Telemetry(t) = &out.resources[0].spec else {
            panic!("not a Telemetry: {:?}", out.resources)
        };
        assert_eq!(out.resources[0].kind, Kind::Telemetry);
        assert_eq!(t.selector_labels().map(|l| l["app"].as_str()), Some("api"));
        let tr = &t.tracing[0];
        assert_eq!(tr.mode(), WorkloadMode::Server);
        assert_eq!(tr.providers[0].name, "otel");
        assert_eq!(tr.random_sampling_percentage, Some(25.5));
        assert_eq!(tr.disable_span_reporting, Some(false));
        let tags = tr.custom_tags.as_ref().unwrap();
        assert_eq!(tags["env"].literal.as_ref().unwrap().value, "prod");
        let header = tags["team"].header.as_ref().unwrap();
        assert_eq!(
            (header.name.as_str(), header.default_value.as_deref()),
            ("x-team", Some("none"))
        );
        let m = &t.metrics[0];
        assert_eq!(m.reporting_interval.map(|d| d.as_std().as_secs()), Some(15));
        let o = &m.overrides[0];
        let sel = o.matches.as_ref().unwrap();
        assert_eq!(
            (sel.metric, sel.mode),
            (Some(IstioMetric::RequestCount), WorkloadMode::Client)
        );
        assert_eq!(o.disabled, Some(true));
        assert_eq!(o.tag_overrides["tenant"].operation, TagOperation::Upsert);
        assert_eq!(
            o.tag_overrides["tenant"].value.as_deref(),
            Some("request.headers['x-tenant']")
        );
        assert_eq!(
            o.tag_overrides["request_protocol"].operation,
            TagOperation::Remove
        );
        let l = &t.access_logging[0];
        assert_eq!(l.providers[0].name, "envoy");
        assert_eq!(l.disabled, Some(false));
        assert_eq!(
            l.filter.as_ref().unwrap().expression,
            "response.code >= 400"
        );
        // The same under telemetry.istio.io/v1.
        let v1 = load(&text.replace("v1alpha1", "v1"));
        assert_eq!(v1.resources[0].spec, out.resources[0].spec);
        // A misspelt enum value is an error at its field.
        let bad = load(&text.replace("REQUEST_COUNT", "REQUESTS"));
        assert_eq!(
            bad.problems[0].field.as_deref(),
            Some("spec.metrics[0].overrides[0].match.metric")
        );
    }

    #[test]
    fn an_unknown_kind_warns_and_is_skipped() {
        let out =
            load("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x, namespace: a}\n");
        assert!(out.resources.is_empty());
        let p = &out.problems[0];
        assert_eq!(p.severity, Severity::Warning);
        assert_eq!(p.document, Some(1));
        assert_eq!(p.resource.as_deref(), Some("Deployment a/x"));
        assert!(p.message.contains("unknown kind `Deployment`"), "{p}");
    }

    #[test]
    fn a_type_error_is_an_error_naming_the_field() {
        let out = load(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\n\
             spec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n    \
             - destination: {host: r}\n      weight: ten\n",
        );
        assert!(out.resources.is_empty());
        let p = &out.problems[0];
        assert_eq!(p.severity, Severity::Error);
        assert_eq!(p.field.as_deref(), Some("spec.http[0].route[1].weight"));
        assert_eq!(p.resource.as_deref(), Some("VirtualService default/r"));
        assert!(p.message.contains("ten"), "{p}");
    }

    #[test]
    fn a_misspelt_enum_value_is_an_error_naming_the_field() {
        let out = load(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: d}\n\
             spec:\n  mtls: {mode: STRICTT}\n",
        );
        let p = &out.problems[0];
        assert_eq!(p.severity, Severity::Error);
        assert_eq!(p.field.as_deref(), Some("spec.mtls.mode"));
        assert!(p.message.contains("STRICT"), "{p}");
    }

    #[test]
    fn a_bad_duration_is_an_error_naming_the_field() {
        let out = load(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\n\
             spec:\n  hosts: [r]\n  http:\n  - timeout: 10\n    route: [{destination: {host: r}}]\n",
        );
        let p = &out.problems[0];
        assert_eq!(p.field.as_deref(), Some("spec.http[0].timeout"));
        assert_eq!(p.severity, Severity::Error);
    }

    #[test]
    fn invalid_yaml_is_an_error_naming_file_and_line() {
        let out = load(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\n\
             ---\nkind: [unclosed\nmetadata: x\n",
        );
        assert_eq!(out.resources.len(), 1);
        let p = &out.problems[0];
        assert_eq!(p.severity, Severity::Error);
        assert_eq!(p.file, Path::new("cfg/mesh.yaml"));
        assert_eq!(p.document, Some(2));
        assert!(p.message.starts_with("invalid YAML at line"), "{p}");
    }

    #[test]
    fn a_wrong_api_version_is_an_error() {
        let out =
            load("apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: r}\n");
        assert_eq!(out.problems[0].severity, Severity::Error);
        assert_eq!(out.problems[0].field.as_deref(), Some("apiVersion"));
    }

    #[test]
    fn port_level_mtls_keys_are_port_numbers() {
        let out = load(
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: p}\n\
             spec:\n  selector: {matchLabels: {app: db}}\n  portLevelMtls:\n    5432: {mode: DISABLE}\n",
        );
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let ResourceSpec::PeerAuthentication(pa) = &out.resources[0].spec else {
            panic!("not a PA")
        };
        assert_eq!(pa.port_level_mtls[&5432].mode, MtlsMode::Disable);
    }

    #[test]
    fn documents_split_at_markers_with_line_numbers() {
        let docs = split_documents("a: 1\n---\nb: 2\n...\n---\nc: 3\n--- # tail\n");
        let firsts: Vec<usize> = docs.iter().map(|d| d.first_line).collect();
        assert_eq!(firsts, [1, 2, 5, 7]);
        assert!(!has_content(&docs[3].text));
        assert_eq!(split_documents("---\nx: 1\n").len(), 1);
    }

    #[test]
    fn the_directory_is_read_in_name_order_skipping_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let pa = |name: &str| {
            format!(
                "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}}}\n"
            )
        };
        std::fs::write(dir.path().join("b.yml"), pa("b")).unwrap();
        std::fs::write(dir.path().join("a.yaml"), pa("a")).unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), pa("hidden")).unwrap();
        std::fs::write(dir.path().join("c.yaml~"), pa("backup")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
        std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
        std::fs::write(dir.path().join("empty.yaml"), "# nothing here\n").unwrap();
        let out = load_dir(dir.path());
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let names: Vec<&str> = out.resources.iter().map(|r| r.meta.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(out.resources[1].origin.file, dir.path().join("b.yml"));
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let out = load_dir(Path::new("/nonexistent/meshlite-config"));
        assert!(out.problems[0].is_error());
    }
}
