//! SPIFFE IDs as the SPIFFE specification and Istio's profile define them.
//!
//! `spiffe://<trust-domain>/<path>`: the trust domain is lowercase `[a-z0-9._-]`, the path is
//! one or more segments of `[a-zA-Z0-9._-]` with no empty, `.` or `..` segment and no trailing
//! slash; no percent-encoding, query or fragment; at most 2048 bytes. Workload IDs in the mesh
//! follow Istio's `ns/<namespace>/sa/<service-account>` shape. Scheme and trust domain compare
//! case-insensitively, which is why the stored form lowercases them.
#![warn(clippy::all)]

use std::fmt;

/// Why a string is not an acceptable SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// Does not start with `spiffe://`.
    #[error("`{0}` is not a SPIFFE ID: it must start with spiffe://")]
    Scheme(String),
    /// Longer than 2048 bytes.
    #[error("SPIFFE ID is longer than 2048 bytes")]
    TooLong,
    /// Empty trust domain or one with characters outside `[a-z0-9._-]`.
    #[error("`{0}`: invalid trust domain (lowercase letters, digits, `.`, `_`, `-` only)")]
    TrustDomain(String),
    /// Missing path, or a segment that is empty, `.`, `..` or has forbidden characters.
    #[error(
        "`{0}`: invalid path (segments of letters, digits, `.`, `_`, `-`; no empty, `.` or `..` segment)"
    )]
    Path(String),
}

/// A validated SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    uri: String,
    td_len: usize,
}

const SCHEME: &str = "spiffe://";

impl SpiffeId {
    /// Parses and validates `s`. The scheme and trust domain are normalised to lowercase.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > 2048 {
            return Err(SpiffeIdError::TooLong);
        }
        // Compared as bytes: the text may hold a multi-byte character where the scheme ends.
        let scheme = s.as_bytes().get(..SCHEME.len());
        if !scheme.is_some_and(|b| b.eq_ignore_ascii_case(SCHEME.as_bytes())) {
            return Err(SpiffeIdError::Scheme(s.to_string()));
        }
        let rest = &s[SCHEME.len()..];
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let td_lower = td.to_ascii_lowercase();
        if td_lower.is_empty()
            || td_lower.len() > 255
            || !td_lower
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err(SpiffeIdError::TrustDomain(s.to_string()));
        }
        // A workload ID needs a non-root path.
        if path.len() < 2 {
            return Err(SpiffeIdError::Path(s.to_string()));
        }
        for seg in path[1..].split('/') {
            if seg.is_empty()
                || seg == "."
                || seg == ".."
                || !seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(SpiffeIdError::Path(s.to_string()));
            }
        }
        Ok(Self {
            uri: format!("{SCHEME}{td_lower}{path}"),
            td_len: td_lower.len(),
        })
    }

    /// The trust domain, lowercase.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..SCHEME.len() + self.td_len]
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.uri[SCHEME.len() + self.td_len..]
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// Istio's principal form, without the `spiffe://` prefix (used by AuthorizationPolicy and
    /// the `source_principal` metric label).
    pub fn principal(&self) -> &str {
        &self.uri[SCHEME.len()..]
    }

    /// Namespace and service account when the path has Istio's `ns/<ns>/sa/<sa>` shape.
    pub fn namespace_and_account(&self) -> Option<(&str, &str)> {
        let mut it = self.path()[1..].split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_workload_id() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/reviews").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/default/sa/reviews");
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/reviews");
        assert_eq!(id.namespace_and_account(), Some(("default", "reviews")));
    }

    #[test]
    fn scheme_and_trust_domain_are_case_insensitive_path_is_not() {
        let a = SpiffeId::parse("SPIFFE://Cluster.Local/ns/default/sa/Reviews").unwrap();
        assert_eq!(a.as_str(), "spiffe://cluster.local/ns/default/sa/Reviews");
        let b = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/reviews").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "https://cluster.local/ns/a/sa/b",
            "spiffe://",
            "spiffe:///ns/a",
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/ns/a/sa/b/",
            "spiffe://cluster.local/ns/./sa/b",
            "spiffe://cluster.local/ns/../sa/b",
            "spiffe://cluster.local/ns/a%20b/sa/b",
            "spiffe://cluster.local/ns/a/sa/b?x=1",
            "spiffe://cluster.local/ns/a/sa/b#frag",
            "spiffe://user@cluster.local/ns/a",
            "spiffe://cluster.local:8080/ns/a",
            "spiffe://clus ter/ns/a",
            // A multi-byte character across the scheme's end (found by fuzz/spiffe_san).
            "spiffe:/\u{454}lu/ter.local/ns/default/sa/reviews",
            "spiffe://cl\u{fc}ster/ns/a/sa/b",
            "spiffe://td/ns/\u{e4}/sa/b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "accepted {bad:?}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(2048));
        assert_eq!(SpiffeId::parse(&long), Err(SpiffeIdError::TooLong));
    }

    #[test]
    fn non_istio_path_has_no_namespace() {
        let id = SpiffeId::parse("spiffe://example.org/payments/web").unwrap();
        assert_eq!(id.namespace_and_account(), None);
    }
}
