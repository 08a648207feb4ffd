//! Where a token is read from, and how it is removed before the request goes on.
//!
//! As Istio configures Envoy: a rule without `fromHeaders`, `fromParams` and `fromCookies`
//! reads `Authorization: Bearer <token>`, then the `access_token` query parameter. A header
//! location with a prefix takes the token right after the prefix (Envoy looks for the
//! prefix in the value and reads the JWT characters that follow it). Unless the rule says
//! `forwardOriginalToken`, the token is removed from where it was found: the header, the
//! query parameter, or the cookie.

use http::HeaderName;
use http::header::{AUTHORIZATION, COOKIE, HeaderValue};

/// Istio's default header prefix.
const BEARER: &str = "Bearer ";

/// Istio's default query parameter.
const ACCESS_TOKEN: &str = "access_token";

/// One place a rule reads tokens from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A header, with the text before the token (may be empty).
    Header {
        /// The header.
        name: HeaderName,
        /// E.g. `Bearer `.
        prefix: Box<str>,
    },
    /// A query parameter.
    Param(Box<str>),
    /// A cookie.
    Cookie(Box<str>),
}

impl Location {
    /// The locations a rule without any reads.
    pub fn defaults() -> Vec<Location> {
        vec![
            Location::Header {
                name: AUTHORIZATION,
                prefix: BEARER.into(),
            },
            Location::Param(ACCESS_TOKEN.into()),
        ]
    }

    /// The token at this location of `req`, if there is one.
    pub fn find<'r, B>(&self, req: &'r http::Request<B>) -> Option<&'r str> {
        match self {
            Location::Header { name, prefix } => req
                .headers()
                .get_all(name)
                .iter()
                .find_map(|v| after_prefix(v.to_str().ok()?, prefix)),
            Location::Param(name) => query_param(req.uri().query()?, name),
            Location::Cookie(name) => req
                .headers()
                .get_all(COOKIE)
                .iter()
                .find_map(|v| cookie(v.to_str().ok()?, name)),
        }
    }

    /// Removes the token from this location of `req` (the whole header, the parameter, the
    /// cookie), so the application never sees the credential.
    pub fn remove<B>(&self, req: &mut http::Request<B>) {
        match self {
            Location::Header { name, .. } => {
                req.headers_mut().remove(name);
            }
            Location::Param(name) => {
                let Some(query) = req.uri().query() else {
                    return;
                };
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| pair.split('=').next() != Some(&**name))
                    .collect();
                let path = req.uri().path();
                let path_and_query = if kept.is_empty() {
                    path.to_string()
                } else {
                    format!("{path}?{}", kept.join("&"))
                };
                let mut parts = req.uri().clone().into_parts();
                match path_and_query.parse() {
                    Ok(pq) => parts.path_and_query = Some(pq),
                    Err(_) => return,
                }
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
            Location::Cookie(name) => {
                let values: Vec<String> = req
                    .headers()
                    .get_all(COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(|v| {
                        v.split(';')
                            .map(str::trim)
                            .filter(|c| c.split('=').next() != Some(&**name))
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .filter(|v| !v.is_empty())
                    .collect();
                let h = req.headers_mut();
                h.remove(COOKIE);
                for v in values {
                    if let Ok(v) = HeaderValue::from_str(&v) {
                        h.append(COOKIE, v);
                    }
                }
            }
        }
    }
}

/// Whether `c` can be part of a JWT (base64url and the dots between its sections).
fn jwt_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=')
}

/// The token after `prefix` in a header value, as Envoy's extractor reads it.
fn after_prefix<'v>(value: &'v str, prefix: &str) -> Option<&'v str> {
    let rest = if prefix.is_empty() {
        value.trim_start()
    } else {
        let at = value.find(prefix)?;
        &value[at + prefix.len()..]
    };
    let end = rest.find(|c| !jwt_char(c)).unwrap_or(rest.len());
    let token = &rest[..end];
    (!token.is_empty()).then_some(token)
}

fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name && !v.is_empty()).then_some(v)
    })
}

fn cookie<'v>(header: &'v str, name: &str) -> Option<&'v str> {
    header.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name && !v.is_empty()).then_some(v.trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn defaults_read_a_bearer_header_then_the_access_token_parameter() {
        let [header, param] = &Location::defaults()[..] else {
            panic!("two defaults")
        };
        let r = req(
            "/a?x=1&access_token=p.q.r",
            &[("authorization", "Bearer a.b.c")],
        );
        assert_eq!(header.find(&r), Some("a.b.c"));
        assert_eq!(param.find(&r), Some("p.q.r"));
        let basic = req("/a", &[("authorization", "Basic dXNlcjpwdw==")]);
        assert_eq!(header.find(&basic), None, "not a bearer token");
    }

    #[test]
    fn custom_headers_cookies_and_removal() {
        let h = Location::Header {
            name: HeaderName::from_static("x-jwt"),
            prefix: "".into(),
        };
        let c = Location::Cookie("session".into());
        let p = Location::Param("token".into());
        let mut r = req(
            "/p?a=1&token=t.u.v&b=2",
            &[("x-jwt", "h.i.j"), ("cookie", "a=1; session=k.l.m; b=2")],
        );
        assert_eq!(h.find(&r), Some("h.i.j"));
        assert_eq!(c.find(&r), Some("k.l.m"));
        assert_eq!(p.find(&r), Some("t.u.v"));
        h.remove(&mut r);
        c.remove(&mut r);
        p.remove(&mut r);
        assert!(r.headers().get("x-jwt").is_none());
        assert_eq!(r.headers()["cookie"], "a=1; b=2");
        assert_eq!(r.uri(), "/p?a=1&b=2");
        let mut only = req("/p?token=t.u.v", &[("cookie", "session=k.l.m")]);
        p.remove(&mut only);
        c.remove(&mut only);
        assert_eq!(only.uri(), "/p");
        assert!(only.headers().get("cookie").is_none());
    }
}
