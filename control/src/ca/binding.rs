//! What a workload may claim about itself: the labels its bootstrap token grants, carried in
//! every certificate the CA issues it.
//!
//! A sidecar announces its workload's labels when it connects, and the `app` label makes it
//! an endpoint of a service, so the labels are a claim, not a fact. The operator states them
//! when minting the token (`token create --label app=reviews`); the CA writes them into the
//! certificate as a non-critical extension, copies them on every renewal (the current
//! certificate is then the credential), and the xDS server checks each announcement against
//! the certificate it arrives on. The extension's value is a DER UTF8String holding the
//! labels as a JSON object, under an OID of the UUID arc (ITU-T X.667), which needs no
//! registration.

use std::collections::BTreeMap;

/// `2.25.<n>`: the extension's OID.
pub const OID: [u64; 3] = [2, 25, 6_139_523_809_442_712_931];

/// Longest extension value accepted when reading (a certificate is attacker-supplied input).
const MAX_VALUE: usize = 4096;

/// Why a label cannot be bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// Not a Kubernetes-style label key.
    #[error(
        "label key `{0}` must be 1-63 letters, digits, `-`, `_`, `.` (with an optional `prefix/`)"
    )]
    Key(String),
    /// Not a Kubernetes-style label value.
    #[error("label value `{0}` must be at most 63 letters, digits, `-`, `_`, `.`")]
    Value(String),
}

fn label_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks a label as Kubernetes defines them.
pub fn check_label(key: &str, value: &str) -> Result<(), LabelError> {
    let name = key.rsplit_once('/').map_or(key, |(prefix, name)| {
        if prefix.is_empty() || prefix.len() > 253 || !label_chars(prefix) {
            ""
        } else {
            name
        }
    });
    if name.is_empty() || name.len() > 63 || !label_chars(name) {
        return Err(LabelError::Key(key.to_string()));
    }
    if value.len() > 63 || !label_chars(value) {
        return Err(LabelError::Value(value.to_string()));
    }
    Ok(())
}

/// The extension's DER content for `labels`.
pub fn encode(labels: &BTreeMap<String, String>) -> Vec<u8> {
    let text = serde_json::to_string(labels).unwrap_or_else(|_| "{}".to_string());
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + 4);
    out.push(0x0c); // UTF8String
    match bytes.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n <= 0xff => out.extend([0x81, n as u8]),
        n => {
            let n = u16::try_from(n).unwrap_or(u16::MAX);
            out.push(0x82);
            out.extend(n.to_be_bytes());
        }
    }
    out.extend_from_slice(bytes);
    out
}

/// The labels bound in certificate `der`: `None` if it binds none (or the extension is
/// malformed, which grants nothing either).
pub fn decode(der: &[u8]) -> Option<BTreeMap<String, String>> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let oid = x509_parser::der_parser::oid::Oid::from(&OID).ok()?;
    let ext = cert.extensions().iter().find(|e| e.oid == oid)?;
    let v = ext.value;
    if v.len() > MAX_VALUE || v.first() != Some(&0x0c) {
        return None;
    }
    let (len, start): (usize, usize) = match v.get(1)? {
        n if *n < 0x80 => (usize::from(*n), 2),
        0x81 => (usize::from(*v.get(2)?), 3),
        0x82 => (usize::from(u16::from_be_bytes([*v.get(2)?, *v.get(3)?])), 4),
        _ => return None,
    };
    let text = std::str::from_utf8(v.get(start..start.checked_add(len)?)?).ok()?;
    let labels: BTreeMap<String, String> = serde_json::from_str(text).ok()?;
    labels
        .iter()
        .all(|(k, v)| check_label(k, v).is_ok())
        .then_some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_kubernetes_syntax() {
        assert!(check_label("app", "reviews").is_ok());
        assert!(check_label("app.kubernetes.io/name", "reviews").is_ok());
        assert!(check_label("version", "").is_ok());
        assert!(check_label("", "x").is_err());
        assert!(check_label("a b", "x").is_err());
        assert!(check_label("app", "x,y").is_err());
        assert!(check_label("/app", "x").is_err());
        assert!(check_label("app", &"v".repeat(64)).is_err());
    }

    #[test]
    fn the_encoding_is_a_der_utf8_string() {
        let labels = BTreeMap::from([("app".to_string(), "reviews".to_string())]);
        let e = encode(&labels);
        assert_eq!(e[0], 0x0c);
        assert_eq!(usize::from(e[1]), e.len() - 2);
        let long: BTreeMap<String, String> = (0..40)
            .map(|i| (format!("key{i}"), "value".to_string()))
            .collect();
        let e = encode(&long);
        assert_eq!(e[1], 0x82, "long form for values over 255 bytes");
    }
}
