//! What a VirtualService rule does besides choosing a destination, compiled once per snapshot:
//! header operations, fault injection, URI and authority rewrites, redirects and direct
//! responses (SEMANTICS.md §2.3, §2.5).

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode, Uri};
use std::time::Duration;

/// Envoy keeps the path from before a rewrite in this header.
pub static ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");

/// One direction's `headers.request` / `headers.response` operations: `set` overwrites,
/// `add` appends, `remove` deletes. A `set` or `add` of `host`/`:authority` is a host rewrite
/// (Envoy's `host_rewrite`); other pseudo-headers are ignored, as in Istio.
#[derive(Debug, Default, Clone)]
pub struct HeaderOps {
    pub(crate) set: Vec<(HeaderName, HeaderValue)>,
    pub(crate) add: Vec<(HeaderName, HeaderValue)>,
    pub(crate) remove: Vec<HeaderName>,
    /// The authority a `host` operation sets.
    pub host: Option<HeaderValue>,
}

impl HeaderOps {
    /// Whether there is nothing to do (the common case: checked before touching headers).
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty() && self.host.is_none()
    }

    /// Applies the operations, in Envoy's order: remove, then set, then add.
    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }
}

/// A share of requests, in Envoy's parts per million (percentage resolution 1e-4 %).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerMillion(pub(crate) u32);

impl PerMillion {
    /// From Istio's `percentage.value` (0-100, clamped).
    pub fn from_percent(p: f64) -> Self {
        let clamped = if p.is_finite() {
            p.clamp(0.0, 100.0)
        } else {
            0.0
        };
        Self((clamped * 10_000.0).round() as u32)
    }

    /// Whether this request is in the share; `roll` uniform in `0..1_000_000`.
    pub fn hit(self, roll: u32) -> bool {
        roll < self.0
    }
}

/// The abort a fault injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// An HTTP status.
    Http(StatusCode),
    /// A gRPC status (HTTP 200 with `grpc-status`).
    Grpc(u32),
}

/// VirtualService `fault`: a delay, then an abort, each on its own share of requests;
/// `percentage` absent means 0 % (istio/istio#36303).
#[derive(Debug, Clone, Default)]
pub struct Fault {
    pub(crate) delay: Option<(Duration, PerMillion)>,
    pub(crate) abort: Option<(Abort, PerMillion)>,
}

impl Fault {
    /// The delay to inject for a request whose roll is `roll` (uniform in `0..1_000_000`).
    pub fn delay(&self, roll: u32) -> Option<Duration> {
        self.delay.filter(|(_, p)| p.hit(roll)).map(|(d, _)| d)
    }

    /// The abort to inject for a request whose roll is `roll`.
    pub fn abort(&self, roll: u32) -> Option<Abort> {
        self.abort.filter(|(_, p)| p.hit(roll)).map(|(a, _)| a)
    }
}

/// `rewrite`: the URI (Envoy's `prefix_rewrite`: the matched prefix is replaced; after an
/// exact or regex match, or no URI match, the whole path) and the authority.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    pub(crate) uri: Option<Box<str>>,
    /// The new authority (`Host`).
    pub authority: Option<HeaderValue>,
}

impl Rewrite {
    /// The rewritten path and query of `uri`, given the length of the URI prefix the rule
    /// matched on (`None`: replace the whole path); `None` when the URI is not rewritten.
    pub fn path(&self, uri: &Uri, matched_prefix: Option<usize>) -> Option<String> {
        let new = self.uri.as_deref()?;
        let path = uri.path();
        let rest = matched_prefix.and_then(|n| path.get(n..)).unwrap_or("");
        let mut out = String::with_capacity(new.len() + rest.len() + 16);
        out.push_str(new);
        out.push_str(rest);
        if let Some(q) = uri.query() {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }
}

/// What answers a rule itself, without a destination.
#[derive(Debug, Clone)]
pub enum Terminal {
    /// `redirect`.
    Redirect(Redirect),
    /// `directResponse`.
    Direct(StatusCode, Bytes),
}

impl Terminal {}

/// `redirect`: the parts of the request URL it replaces.
#[derive(Debug, Clone)]
pub struct Redirect {
    pub(crate) uri: Option<String>,
    pub(crate) authority: Option<String>,
    pub(crate) scheme: Option<String>,
    pub(crate) port: u16,
    /// 301 unless configured (301, 302, 303, 307 or 308).
    pub code: StatusCode,
}

impl Redirect {
    /// The `Location` for a request to `authority` with `uri` (the app speaks plain HTTP to
    /// its sidecar, so the scheme defaults to `http`). The default port of the scheme is
    /// left out.
    pub fn location(&self, uri: &Uri, authority: &str) -> String {
        let scheme = self.scheme.as_deref().unwrap_or("http");
        let (host, old_port) = crate::names::split_host_port(authority);
        let host = match &self.authority {
            Some(a) => crate::names::split_host_port(a).0.to_string(),
            None => host.to_string(),
        };
        let port = match (self.port, &self.authority) {
            (0, Some(a)) => crate::names::split_host_port(a).1,
            (0, None) => old_port,
            (p, _) => Some(p),
        };
        let port = port.filter(|p| !matches!((scheme, p), ("http", 80) | ("https", 443)));
        let path = match &self.uri {
            Some(u) => u.clone(),
            None => uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        };
        match port {
            Some(p) => format!("{scheme}://{host}:{p}{path}"),
            None => format!("{scheme}://{host}{path}"),
        }
    }
}

/// The response for a terminal rule.
pub fn terminal_response(
    t: &Terminal,
    uri: &Uri,
    authority: &str,
) -> http::Response<crate::message::body::ProxyBody> {
    use crate::message::body::ProxyBody;
    match t {
        Terminal::Direct(status, body) => {
            let mut r = http::Response::new(ProxyBody::full(body.clone()));
            *r.status_mut() = *status;
            r
        }
        Terminal::Redirect(rd) => {
            let mut r = http::Response::new(ProxyBody::Empty);
            *r.status_mut() = rd.code;
            if let Ok(v) = HeaderValue::try_from(rd.location(uri, authority)) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshlite_xds_proto::v1;

    fn ops(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> v1::HeaderOps {
        v1::HeaderOps {
            set: set
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            add: add
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn header_ops_remove_then_set_then_add_and_host_is_a_rewrite() {
        let o = HeaderOps::compile(
            Some(&ops(
                &[("x-a", "1"), ("Host", "other")],
                &[("x-b", "2"), (":path", "/no")],
                &["x-c"],
            )),
            "r",
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("0"));
        h.insert("x-b", HeaderValue::from_static("1"));
        h.insert("x-c", HeaderValue::from_static("gone"));
        o.apply(&mut h);
        assert_eq!(h.get("x-a").unwrap(), "1");
        assert_eq!(h.get_all("x-b").iter().count(), 2);
        assert!(h.get("x-c").is_none());
        assert_eq!(o.host.as_ref().unwrap(), "other");
        assert!(HeaderOps::compile(None, "r").unwrap().is_empty());
    }

    #[test]
    fn fault_percentages_are_per_million_and_absent_means_never() {
        let f = Fault::compile(Some(&v1::Fault {
            delay: Some(v1::fault::Delay {
                fixed_delay: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                percentage: 0.5,
            }),
            abort: Some(v1::fault::Abort {
                http_status: 503,
                grpc_status: 0,
                percentage: 0.0,
            }),
        }))
        .unwrap();
        assert_eq!(f.delay(4_999), Some(Duration::from_secs(1)));
        assert_eq!(f.delay(5_000), None, "0.5% is 5,000 per million");
        assert_eq!(f.abort(0), None, "0% never aborts");
        assert!(Fault::compile(Some(&v1::Fault::default())).is_none());
    }

    #[test]
    fn rewrite_replaces_the_matched_prefix_and_keeps_the_query() {
        let r = Rewrite::compile(
            Some(&v1::Rewrite {
                uri: "/v2/".into(),
                authority: String::new(),
            }),
            "r",
        )
        .unwrap()
        .unwrap();
        let uri: Uri = "/api/users?id=1".parse().unwrap();
        assert_eq!(r.path(&uri, Some("/api/".len())).unwrap(), "/v2/users?id=1");
        assert_eq!(
            r.path(&uri, None).unwrap(),
            "/v2/?id=1",
            "exact or regex: whole path"
        );
        // Istio's documented trap: prefix `/api` + rewrite `/` gives `//users`.
        let slash = Rewrite::compile(
            Some(&v1::Rewrite {
                uri: "/".into(),
                authority: String::new(),
            }),
            "r",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            slash.path(&uri, Some("/api".len())).unwrap(),
            "//users?id=1"
        );
    }

    #[test]
    fn redirect_location_replaces_only_what_it_names() {
        let rd = |uri: &str, authority: &str, port: u32, code: u32| {
            let route = v1::HttpRoute {
                redirect: Some(v1::Redirect {
                    uri: uri.into(),
                    authority: authority.into(),
                    redirect_code: code,
                    scheme: String::new(),
                    port,
                }),
                ..Default::default()
            };
            match Terminal::compile(&route) {
                Some(Terminal::Redirect(r)) => r,
                other => panic!("{other:?}"),
            }
        };
        let uri: Uri = "/old?x=1".parse().unwrap();
        let r = rd("/new", "", 0, 0);
        assert_eq!(r.code, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(r.location(&uri, "reviews:9080"), "http://reviews:9080/new");
        let r = rd("", "ratings", 0, 302);
        assert_eq!(r.code, StatusCode::FOUND);
        assert_eq!(r.location(&uri, "reviews:9080"), "http://ratings/old?x=1");
        let r = rd("", "", 80, 399);
        assert_eq!(r.code, StatusCode::MOVED_PERMANENTLY, "invalid code: 301");
        assert_eq!(r.location(&uri, "reviews:9080"), "http://reviews/old?x=1");
    }
}
