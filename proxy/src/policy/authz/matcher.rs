//! The value matchers of AuthorizationPolicy, compiled once per push.
//!
//! Istio's string forms (SEMANTICS 4.2): `abc` exact, `abc*` prefix, `*abc` suffix, `*` alone
//! "present" (any non-empty value); no infix wildcard. Paths also take URI templates, `{*}`
//! for one segment and `{**}` for one or more (last only). IP fields take addresses or CIDR
//! blocks. A field holds a list of values (any may match) and a `not` list (none may match);
//! a value the request does not have fails the first and passes the second, as Envoy's
//! generated `not_id` matchers do.

use std::net::IpAddr;

/// Why a value of a policy could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// A `*` anywhere but at the start or the end.
    #[error("`{0}`: `*` may only start or end a value (no infix wildcards)")]
    Infix(String),
    /// A path template that is not made of whole-segment `{*}` / `{**}` operators.
    #[error("`{0}`: {1}")]
    Template(String, &'static str),
    /// Not an IP address or CIDR block.
    #[error("`{0}` is not an IP address or CIDR block")]
    Cidr(String),
    /// Not a port number.
    #[error("`{0}` is not a port number")]
    Port(String),
}

/// One of Istio's string forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrMatch {
    /// The whole value.
    Exact(Box<str>),
    /// `abc*`.
    Prefix(Box<str>),
    /// `*abc`.
    Suffix(Box<str>),
    /// `*`: any non-empty value.
    Present,
}

impl StrMatch {
    /// Compiles `s`; with `fold_case` the pattern is kept lowercase for
    /// [`StrMatch::matches_ignore_case`].
    pub fn parse(s: &str, fold_case: bool) -> Result<Self, PatternError> {
        let s = if fold_case {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        };
        if s == "*" {
            return Ok(StrMatch::Present);
        }
        let (kind, body): (fn(Box<str>) -> StrMatch, &str) = if let Some(b) = s.strip_suffix('*') {
            (StrMatch::Prefix, b)
        } else if let Some(b) = s.strip_prefix('*') {
            (StrMatch::Suffix, b)
        } else {
            (StrMatch::Exact, &s)
        };
        if body.contains('*') {
            return Err(PatternError::Infix(s.clone()));
        }
        Ok(kind(body.into()))
    }

    /// Whether `v` matches (case-sensitive).
    pub fn matches(&self, v: &str) -> bool {
        match self {
            StrMatch::Exact(e) => v == &**e,
            StrMatch::Prefix(p) => v.starts_with(&**p),
            StrMatch::Suffix(s) => v.ends_with(&**s),
            StrMatch::Present => !v.is_empty(),
        }
    }

    /// Whether `v` matches ignoring ASCII case (the pattern was compiled lowercase).
    pub fn matches_ignore_case(&self, v: &str) -> bool {
        let v = v.as_bytes();
        match self {
            StrMatch::Exact(e) => v.eq_ignore_ascii_case(e.as_bytes()),
            StrMatch::Prefix(p) => {
                v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            }
            StrMatch::Suffix(s) => {
                v.len() >= s.len() && v[v.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
            StrMatch::Present => !v.is_empty(),
        }
    }
}

/// A path value: one of the string forms, or a URI template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Exact, prefix, suffix or present.
    Str(StrMatch),
    /// `/a/{*}/b`, `/a/{**}`.
    Template(Box<[Segment]>),
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A literal segment.
    Literal(Box<str>),
    /// `{*}`: exactly one non-empty segment.
    One,
    /// `{**}`: one or more segments, the rest of the path.
    Rest,
}

impl PathMatch {
    /// Compiles a path value; values with `{*}` or `{**}` are templates.
    pub fn parse(s: &str) -> Result<Self, PatternError> {
        if !s.contains("{*}") && !s.contains("{**}") {
            return StrMatch::parse(s, false).map(PathMatch::Str);
        }
        let bad = |why| PatternError::Template(s.to_string(), why);
        let rest = s
            .strip_prefix('/')
            .ok_or_else(|| bad("a path template starts with `/`"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segs = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            segs.push(match *p {
                "{*}" => Segment::One,
                "{**}" if i + 1 == parts.len() => Segment::Rest,
                "{**}" => return Err(bad("`{**}` must be the last segment")),
                lit if lit.contains(['{', '}', '*']) => {
                    return Err(bad("`{*}` and `{**}` must be whole segments"));
                }
                lit => Segment::Literal(lit.into()),
            });
        }
        Ok(PathMatch::Template(segs.into()))
    }

    /// Whether the (normalised, query-less) `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Str(m) => m.matches(path),
            PathMatch::Template(segs) => {
                let Some(mut rest) = path.strip_prefix('/') else {
                    return false;
                };
                for (i, seg) in segs.iter().enumerate() {
                    let (head, tail) = match seg {
                        Segment::Rest => return !rest.is_empty(),
                        _ => match rest.split_once('/') {
                            Some((h, t)) => (h, Some(t)),
                            None => (rest, None),
                        },
                    };
                    let ok = match seg {
                        Segment::Literal(l) => head == &**l,
                        _ => !head.is_empty(),
                    };
                    if !ok {
                        return false;
                    }
                    match (tail, i + 1 == segs.len()) {
                        (None, true) => return true,
                        (Some(t), false) => rest = t,
                        // The path is longer or shorter than the template.
                        _ => return false,
                    }
                }
                false
            }
        }
    }
}

/// An address or CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `1.2.3.4`, `2001:db8::/32`.
    pub fn parse(s: &str) -> Result<Self, PatternError> {
        let bad = || PatternError::Cidr(s.to_string());
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return Err(bad());
        }
        Ok(Self { net, bits })
    }

    /// Whether `ip` is inside the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Parses a port value of `ports` / `destination.port`.
pub fn parse_port(s: &str) -> Result<u16, PatternError> {
    s.trim()
        .parse::<u16>()
        .map_err(|_| PatternError::Port(s.to_string()))
}

/// A field of a rule: values (any may match) and `not` values (none may match).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<M> {
    /// Empty: no constraint.
    pub any: Box<[M]>,
    /// Empty: no constraint.
    pub none: Box<[M]>,
}

impl<M> Field<M> {
    /// A field from both lists, each compiled by `f`.
    pub fn compile<E>(
        any: &[String],
        none: &[String],
        f: impl Fn(&str) -> Result<M, E>,
    ) -> Result<Self, E> {
        Ok(Self {
            any: any.iter().map(|s| f(s)).collect::<Result<_, _>>()?,
            none: none.iter().map(|s| f(s)).collect::<Result<_, _>>()?,
        })
    }

    /// Neither list has a value: the field constrains nothing.
    pub fn is_empty(&self) -> bool {
        self.any.is_empty() && self.none.is_empty()
    }

    /// Whether `value` (absent: `None`) satisfies the field, `test` matching one value.
    pub fn check<V: Copy>(&self, value: Option<V>, test: impl Fn(&M, V) -> bool) -> bool {
        if !self.any.is_empty() {
            match value {
                Some(v) if self.any.iter().any(|m| test(m, v)) => {}
                _ => return false,
            }
        }
        match value {
            Some(v) => !self.none.iter().any(|m| test(m, v)),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_string_forms() {
        let m = |p: &str, v: &str| StrMatch::parse(p, false).unwrap().matches(v);
        assert!(m("abc", "abc") && !m("abc", "abcd"));
        assert!(m("abc*", "abc") && m("abc*", "abcd") && !m("abc*", "xabc"));
        assert!(m("*abc", "xabc") && !m("*abc", "abcx"));
        assert!(m("*", "x") && !m("*", ""));
        assert!(matches!(
            StrMatch::parse("a*c", false),
            Err(PatternError::Infix(_))
        ));
        assert!(StrMatch::parse("**", false).is_err());
    }

    #[test]
    fn case_folding_for_hosts() {
        let m = |p: &str, v: &str| StrMatch::parse(p, true).unwrap().matches_ignore_case(v);
        assert!(m("Example.COM", "example.com"));
        assert!(m("*.Example.com", "API.EXAMPLE.COM"));
        assert!(m("api.*", "API.example.com"));
        assert!(
            !m("example.com", "example.com:8080"),
            "SEMANTICS 4.2 edge case 1"
        );
    }

    #[test]
    fn path_templates() {
        let m = |p: &str, v: &str| PathMatch::parse(p).unwrap().matches(v);
        assert!(m("/a/{*}/c", "/a/b/c"));
        assert!(!m("/a/{*}/c", "/a//c"));
        assert!(!m("/a/{*}/c", "/a/b/x/c"));
        assert!(!m("/a/{*}", "/a/b/c"));
        assert!(m("/a/{**}", "/a/b") && m("/a/{**}", "/a/b/c/d"));
        assert!(!m("/a/{**}", "/a") && !m("/a/{**}", "/a/"));
        assert!(m("/{*}/x/{**}", "/p/x/q/r"));
        for bad in ["/a/{**}/b", "/a/x{*}", "a/{*}", "/a/{*}*"] {
            assert!(PathMatch::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidr_blocks() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            Cidr::parse("127.0.0.1")
                .unwrap()
                .contains("127.0.0.1".parse().unwrap())
        );
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "10.0.0", "x", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fields_and_absent_values() {
        let f: Field<StrMatch> = Field::compile(&["a*".into()], &["ab".into()], |s| {
            StrMatch::parse(s, false)
        })
        .unwrap();
        let check = |v: Option<&str>| f.check(v, |m, v| m.matches(v));
        assert!(check(Some("ax")));
        assert!(!check(Some("ab")), "notValues win");
        assert!(!check(Some("b")));
        assert!(!check(None), "an absent value matches no value");
        let not_only: Field<StrMatch> =
            Field::compile(&[], &["x".into()], |s| StrMatch::parse(s, false)).unwrap();
        assert!(
            not_only.check(None, |m, v: &str| m.matches(v)),
            "...and no `not` value"
        );
    }
}
