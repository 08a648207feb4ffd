//! The JSON Patch (RFC 6902) that turns one JSON value into another: what the admission
//! webhook returns. Objects are compared key by key; a list that only gained items at its
//! start or end (the injected init containers, the appended volumes) gets `add` operations
//! at those positions, so the API server merges them with nothing else touched; any other
//! change to a list replaces it.

use serde_json::{Value, json};

/// The operations that turn `before` into `after` (empty when they are equal).
pub fn diff(before: &Value, after: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    diff_at(&mut String::new(), before, after, &mut ops);
    ops
}

/// A JSON Pointer reference token (RFC 6901): `~` and `/` escaped.
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn diff_at(path: &mut String, before: &Value, after: &Value, ops: &mut Vec<Value>) {
    if before == after {
        return;
    }
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().filter(|k| !b.contains_key(*k)) {
                ops.push(json!({"op": "remove", "path": format!("{path}/{}", escape(key))}));
            }
            for (key, new) in b {
                let len = path.len();
                path.push('/');
                path.push_str(&escape(key));
                match a.get(key) {
                    None => ops.push(json!({"op": "add", "path": path.as_str(), "value": new})),
                    Some(old) => diff_at(path, old, new, ops),
                }
                path.truncate(len);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() == b.len() {
                for (i, (old, new)) in a.iter().zip(b).enumerate() {
                    let len = path.len();
                    path.push_str(&format!("/{i}"));
                    diff_at(path, old, new, ops);
                    path.truncate(len);
                }
                return;
            }
            let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
            let room = a.len().min(b.len()) - prefix;
            let suffix = a
                .iter()
                .rev()
                .zip(b.iter().rev())
                .take(room)
                .take_while(|(x, y)| x == y)
                .count();
            if prefix + suffix == a.len() {
                // Only insertions, between the common prefix and suffix.
                for (i, item) in b.iter().enumerate().take(b.len() - suffix).skip(prefix) {
                    ops.push(json!({"op": "add", "path": format!("{path}/{i}"), "value": item}));
                }
            } else {
                ops.push(json!({"op": "replace", "path": path.as_str(), "value": after}));
            }
        }
        _ => ops.push(json!({"op": "replace", "path": path.as_str(), "value": after})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(before: &Value, ops: &[Value]) -> Value {
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.to_vec())).unwrap();
        let mut doc = before.clone();
        json_patch::patch(&mut doc, &patch).unwrap();
        doc
    }

    fn roundtrip(before: Value, after: Value) -> Vec<Value> {
        let ops = diff(&before, &after);
        assert_eq!(apply(&before, &ops), after, "ops: {ops:#?}");
        ops
    }

    #[test]
    fn equal_values_need_no_operation() {
        assert!(diff(&json!({"a": [1, {"b": 2}]}), &json!({"a": [1, {"b": 2}]})).is_empty());
    }

    #[test]
    fn keys_with_slashes_and_tildes_are_escaped() {
        let ops = roundtrip(
            json!({"metadata": {"annotations": {"x": "1"}}}),
            json!({"metadata": {"annotations": {"x": "1", "prometheus.io/port": "15020", "a~b": "c"}}}),
        );
        let paths: Vec<&str> = ops.iter().filter_map(|o| o["path"].as_str()).collect();
        assert!(
            paths.contains(&"/metadata/annotations/prometheus.io~1port"),
            "{paths:?}"
        );
        assert!(paths.contains(&"/metadata/annotations/a~0b"), "{paths:?}");
    }

    #[test]
    fn prepended_and_appended_items_are_added_in_place() {
        for (before, after, at) in [
            (
                json!({"l": ["c", "d"]}),
                json!({"l": ["a", "b", "c", "d"]}),
                ["/l/0", "/l/1"],
            ),
            (
                json!({"l": ["a", "b"]}),
                json!({"l": ["a", "b", "c", "d"]}),
                ["/l/2", "/l/3"],
            ),
            (
                json!({"l": ["a", "d"]}),
                json!({"l": ["a", "b", "c", "d"]}),
                ["/l/1", "/l/2"],
            ),
        ] {
            let ops = roundtrip(before, after);
            assert!(ops.iter().all(|o| o["op"] == "add"), "{ops:?}");
            let paths: Vec<&str> = ops.iter().filter_map(|o| o["path"].as_str()).collect();
            assert_eq!(paths, at);
        }
        roundtrip(json!({"l": []}), json!({"l": ["a"]}));
        // Items added at both ends: the list is replaced (still correct, only coarser).
        let ops = roundtrip(json!({"l": ["c"]}), json!({"l": ["a", "c", "e"]}));
        assert_eq!(ops.len(), 1);
    }

    #[test]
    fn other_list_changes_replace_the_list() {
        let ops = roundtrip(json!({"l": ["a", "b", "c"]}), json!({"l": ["b", "x"]}));
        assert_eq!(
            ops,
            [json!({"op": "replace", "path": "/l", "value": ["b", "x"]})]
        );
        roundtrip(json!({"l": ["a", "b"]}), json!({"l": ["b"]}));
    }

    #[test]
    fn missing_containers_are_added_whole_and_removed_keys_removed() {
        roundtrip(
            json!({"spec": {"containers": [{"name": "app"}]}, "gone": 1}),
            json!({"spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "i"}]}}),
        );
        roundtrip(json!({"a": 1}), json!([1, 2]));
        roundtrip(json!({"a": {"b": 1}}), json!({"a": "text"}));
    }
}
