//! Multi-document YAML in, multi-document YAML out (what `inject -f` reads and writes).
//! Each document is injected on its own; a document that injection does not change (a
//! Service, an opted-out Deployment, an already injected pod) is copied out as it was written,
//! comments and all, and only a changed one is written anew.

use serde_json::Value;

use super::{InjectError, InjectOptions, Outcome, inject_object};

/// One document's result, for the operator's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `Kind/name` of the document (empty for an empty document).
    pub object: String,
    /// What happened to each pod template in it.
    pub outcomes: Vec<Outcome>,
}

/// The injected manifests and what happened to each document.
#[derive(Debug, Clone)]
pub struct Injected {
    /// The output YAML.
    pub yaml: String,
    /// One entry per input document.
    pub reports: Vec<Report>,
}

/// Splits YAML text at its document markers (`---` at the start of a line), keeping each
/// document's text as written.
pub fn split(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let is_marker = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace));
        if is_marker {
            docs.push(&text[start..offset]);
            // A marker may carry content after it (`--- {a: 1}`): keep it in the next one.
            start = offset + 3;
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    // Text before the first marker that is only whitespace or comments is no document.
    docs.into_iter()
        .enumerate()
        .filter(|(i, d)| *i > 0 || !is_blank(d))
        .map(|(_, d)| d)
        .collect()
}

/// Whether a document holds nothing but whitespace and comments.
fn is_blank(doc: &str) -> bool {
    doc.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#'))
}

/// Injects every document of `text`.
pub fn inject_documents(text: &str, opts: &InjectOptions) -> Result<Injected, InjectError> {
    let mut out: Vec<String> = Vec::new();
    let mut reports = Vec::new();
    for (i, doc) in split(text).into_iter().enumerate() {
        let document = i + 1;
        if is_blank(doc) {
            reports.push(Report {
                object: String::new(),
                outcomes: vec![],
            });
            continue;
        }
        let mut value: Value = serde_saphyr::from_str(doc).map_err(|e| InjectError::Yaml {
            document,
            message: e.to_string(),
        })?;
        let object = format!(
            "{}/{}",
            value.get("kind").and_then(Value::as_str).unwrap_or("?"),
            value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("?")
        );
        let outcomes = inject_object(&mut value, opts).map_err(|e| InjectError::Object {
            object: format!("document {document}"),
            source: Box::new(e),
        })?;
        if outcomes.iter().any(|o| o.changed()) {
            out.push(to_yaml(&value)?);
        } else {
            let kept = doc.trim_start_matches(['\n', '\r']).trim_end();
            out.push(format!("{kept}\n"));
        }
        reports.push(Report { object, outcomes });
    }
    Ok(Injected {
        yaml: out.join("---\n"),
        reports,
    })
}

/// A value as block YAML (strings that would read back as another type are quoted).
pub fn to_yaml(value: &Value) -> Result<String, InjectError> {
    let mut text = serde_saphyr::to_string(value).map_err(|e| InjectError::Emit(e.to_string()))?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_at_markers_only_at_line_start() {
        let text = "# header\n---\na: 1\n---\nb: \"--- not a marker\"\n---   \nc: 3\n";
        let docs = split(text);
        assert_eq!(
            docs,
            ["\na: 1\n", "\nb: \"--- not a marker\"\n", "   \nc: 3\n"]
        );
        assert_eq!(split("a: 1\n"), ["a: 1\n"]);
        assert_eq!(split("a: 1\n---\n"), ["a: 1\n", "\n"]);
    }

    #[test]
    fn strings_that_look_like_other_types_stay_strings() {
        let v = serde_json::json!({"a": "true", "b": "15020", "c": "1.0", "d": "null", "e": "*",
            "f": "$(POD_NAMESPACE)", "g": "{\"x\":1}", "h": "", "i": "10.0.0.0/8,1.2.3.4/32",
            "j": "- x", "k": "a: b", "l": "#c", "m": "yes", "n": "0x1F", "o": "~"});
        let text = to_yaml(&v).unwrap();
        let back: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(back, v, "{text}");
        // YAML 1.1 readers (kubectl's) take these for booleans, numbers or times unquoted.
        for s in [
            "yes",
            "on",
            "off",
            "y",
            "N",
            "1_000",
            "12:30",
            "0o17",
            "2001-12-14",
        ] {
            let text = to_yaml(&serde_json::json!({ "k": s })).unwrap();
            assert_eq!(text, format!("k: \"{s}\"\n"), "{s}");
        }
    }

    #[test]
    fn unchanged_documents_are_copied_as_written() {
        let text = "apiVersion: v1\nkind: Service # keep me\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n";
        let out = inject_documents(text, &InjectOptions::default()).unwrap();
        assert_eq!(out.yaml, text);
        assert_eq!(out.reports[0].outcomes, [Outcome::NotAWorkload]);
    }

    #[test]
    fn a_broken_document_names_its_number() {
        let e = inject_documents("a: 1\n---\nb: [\n", &InjectOptions::default()).unwrap_err();
        assert!(e.to_string().starts_with("document 2:"), "{e}");
    }
}
