//! Request path normalisation, as MeshConfig `pathNormalization` sets it (SEMANTICS 4.2).
//!
//! The normalised path is the one authorization checks, routes match and the app receives,
//! so a policy on `/admin` cannot be walked around with `/x/../admin` or `/%61dmin`. The
//! steps, in Envoy's order: with `DECODE_AND_MERGE_SLASHES`, `%2F` and `%5C` are decoded
//! first; `BASE` (the default) rejects `%00`, decodes percent-encoded unreserved characters,
//! upper-cases the hex of other escapes, turns `\` into `/` and removes `.` and `..`
//! segments (RFC 3986 5.2.4); `MERGE_SLASHES` then merges runs of `/`. `NONE` leaves the
//! path as received. A path that needs none of this (the common case) is checked in one
//! pass and not copied.

use std::borrow::Cow;

/// MeshConfig `pathNormalization.normalization`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PathNormalization {
    /// Forward what was received.
    None,
    /// RFC 3986 normalisation with Envoy's extras (Istio's default).
    #[default]
    Base,
    /// `Base`, then adjacent slashes merged.
    MergeSlashes,
    /// `%2F`/`%5C` decoded, then `MergeSlashes`.
    DecodeAndMergeSlashes,
}

/// Why a path is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%00` in the path.
    #[error("the request path holds an encoded NUL (%00)")]
    EncodedNul,
    /// A `%` not followed by two hex digits: refused rather than guessed at (kept, it would
    /// decode differently on the next normalisation, e.g. `%%33`).
    #[error("the request path holds a malformed percent-encoding")]
    BadEncoding,
    /// The normalised path is not a valid request target.
    #[error("the normalised request path is not a valid request target")]
    Unrepresentable,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether `path` could change under `mode`: anything percent-encoded, a backslash, a dot
/// segment, or (when merging) a double slash.
fn needs_work(path: &[u8], merge: bool) -> bool {
    let mut prev = b'/';
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'%' | b'\\' => return true,
            b'.' if prev == b'/' => {
                let next = path.get(i + 1).copied();
                let after = path.get(i + 2).copied();
                if matches!(next, None | Some(b'/'))
                    || (next == Some(b'.') && matches!(after, None | Some(b'/')))
                {
                    return true;
                }
            }
            b'/' if merge && prev == b'/' && i > 0 => return true,
            _ => {}
        }
        prev = b;
    }
    false
}

/// Normalises the path part of a request target (no query). Returns the path unchanged
/// (borrowed) when there is nothing to do.
pub fn normalize(path: &str, mode: PathNormalization) -> Result<Cow<'_, str>, PathError> {
    if mode == PathNormalization::None || !path.starts_with('/') {
        return Ok(Cow::Borrowed(path));
    }
    let merge = matches!(
        mode,
        PathNormalization::MergeSlashes | PathNormalization::DecodeAndMergeSlashes
    );
    if !needs_work(path.as_bytes(), merge) {
        return Ok(Cow::Borrowed(path));
    }
    let decode_slashes = mode == PathNormalization::DecodeAndMergeSlashes;
    // Percent-decoding of unreserved characters (and, if asked, slashes and backslashes);
    // every other escape is kept with upper-case hex.
    let src = path.as_bytes();
    let mut decoded = Vec::with_capacity(src.len());
    let mut i = 0;
    while i < src.len() {
        let b = src[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (
                src.get(i + 1).copied().and_then(hex),
                src.get(i + 2).copied().and_then(hex),
            )
        {
            let c = h << 4 | l;
            if c == 0 {
                return Err(PathError::EncodedNul);
            }
            if unreserved(c) {
                decoded.push(c);
            } else if decode_slashes && (c == b'/' || c == b'\\') {
                // A decoded backslash is a slash too, as a literal one is.
                decoded.push(b'/');
            } else {
                decoded.push(b'%');
                decoded.push(src[i + 1].to_ascii_uppercase());
                decoded.push(src[i + 2].to_ascii_uppercase());
            }
            i += 3;
            continue;
        }
        if b == b'%' {
            return Err(PathError::BadEncoding);
        }
        decoded.push(if b == b'\\' { b'/' } else { b });
        i += 1;
    }
    let mut out = remove_dot_segments(&decoded);
    if merge {
        out.dedup_by(|a, b| *a == b'/' && *b == b'/');
    }
    // Only ASCII bytes were added or removed around the input's own UTF-8 sequences.
    Ok(Cow::Owned(String::from_utf8(out).unwrap_or_else(|e| {
        String::from_utf8_lossy(e.as_bytes()).into_owned()
    })))
}

/// Normalises the path of a request target in place (its query is kept); an unchanged path
/// costs one scan and no copy.
pub fn normalize_uri(uri: &mut http::Uri, mode: PathNormalization) -> Result<(), PathError> {
    let Cow::Owned(path) = normalize(uri.path(), mode)? else {
        return Ok(());
    };
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    // A normalised path is made of the bytes of a valid one; should it not parse, the
    // request is refused rather than forwarded un-normalised.
    let pq = http::uri::PathAndQuery::try_from(pq).map_err(|_| PathError::Unrepresentable)?;
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(pq);
    *uri = http::Uri::from_parts(parts).map_err(|_| PathError::Unrepresentable)?;
    Ok(())
}

/// RFC 3986 section 5.2.4 on an absolute path.
fn remove_dot_segments(input: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(input.len());
    let mut segments = input[1..].split(|b| *b == b'/').peekable();
    out.push(b'/');
    // `.` or `..` as the last segment leaves the trailing slash `out` already has.
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            b"." => {}
            b".." => {
                // Drop the previous segment, keeping the leading slash.
                if out.len() > 1 {
                    out.pop();
                    while out.last().is_some_and(|b| *b != b'/') {
                        out.pop();
                    }
                }
            }
            s => {
                out.extend_from_slice(s);
                if !last {
                    out.push(b'/');
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str, m: PathNormalization) -> String {
        normalize(p, m).unwrap().into_owned()
    }

    #[test]
    fn ordinary_paths_are_not_copied() {
        for p in ["/", "/api/v1/process", "/a.b/c..d/.e", "/x/y.txt"] {
            assert!(
                matches!(
                    normalize(p, PathNormalization::MergeSlashes),
                    Ok(Cow::Borrowed(_))
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn base_removes_dot_segments_and_decodes_unreserved() {
        let b = PathNormalization::Base;
        assert_eq!(n("/a/../b", b), "/b");
        assert_eq!(n("/a/./b/.", b), "/a/b/");
        assert_eq!(n("/../../admin", b), "/admin");
        assert_eq!(n("/a/b/..", b), "/a/");
        assert_eq!(n("/%61dmin", b), "/admin");
        assert_eq!(n("/%2e%2e/admin", b), "/admin", "encoded dots are dots");
        assert_eq!(n("/a%2fb", b), "/a%2Fb", "BASE keeps an encoded slash");
        assert_eq!(n("/a%3cb", b), "/a%3Cb", "other escapes get upper-case hex");
        assert_eq!(n("\\da", b), "\\da", "not a path: left alone");
        assert_eq!(n("/x\\..\\admin", b), "/admin", "backslashes are slashes");
        assert_eq!(n("/a//b", b), "/a//b", "BASE does not merge");
        assert_eq!(normalize("/a%00b", b), Err(PathError::EncodedNul));
        assert_eq!(normalize("/a%zz", b), Err(PathError::BadEncoding));
        assert_eq!(normalize("/a%4", b), Err(PathError::BadEncoding));
    }

    #[test]
    fn a_uri_keeps_its_query_and_authority() {
        let mut uri: http::Uri = "http://reviews:9080/a/../b%2e?x=/../y".parse().unwrap();
        normalize_uri(&mut uri, PathNormalization::Base).unwrap();
        assert_eq!(uri.to_string(), "http://reviews:9080/b.?x=/../y");
        let mut origin: http::Uri = "/a//b".parse().unwrap();
        normalize_uri(&mut origin, PathNormalization::MergeSlashes).unwrap();
        assert_eq!(origin, "/a/b");
    }

    #[test]
    fn normalisation_is_idempotent() {
        // Found by the fuzzer (fuzz/corpus/http_head): a stray `%` before an escape made
        // the next normalisation decode again.
        for p in [
            "/*e=RR@eeee@%%3333----%3333332---",
            "/%%33",
            "/a/%2e%2e/%2e/b//c",
        ] {
            for m in [
                PathNormalization::Base,
                PathNormalization::MergeSlashes,
                PathNormalization::DecodeAndMergeSlashes,
            ] {
                if let Ok(once) = normalize(p, m) {
                    assert_eq!(normalize(&once, m).unwrap(), once, "{p} under {m:?}");
                }
            }
        }
        assert_eq!(
            normalize("/%%33", PathNormalization::Base),
            Err(PathError::BadEncoding)
        );
    }

    #[test]
    fn merge_and_decode() {
        assert_eq!(n("/a//b///c", PathNormalization::MergeSlashes), "/a/b/c");
        assert_eq!(n("//admin", PathNormalization::MergeSlashes), "/admin");
        let d = PathNormalization::DecodeAndMergeSlashes;
        assert_eq!(n("/a%2fb", d), "/a/b");
        assert_eq!(n("/a%2F%2Fb", d), "/a/b");
        assert_eq!(n("/x%5c..%5cadmin", d), "/admin");
        assert_eq!(n("/a/../b", PathNormalization::None), "/a/../b");
    }
}
