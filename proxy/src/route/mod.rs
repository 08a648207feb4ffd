//! HTTP routing as a VirtualService describes it: rules evaluated in order, the first whose
//! match holds wins; inside a rule the `match` entries are ORed and the fields of one entry
//! ANDed; a rule without matches matches everything. The winning rule's destinations are
//! picked by relative weight (weights need not sum to 100, as in Istio ≥ 1.15). A host with
//! route rules where none matches gets 404 `NR` (no fall-through, as Envoy does).
//!
//! Everything is compiled once per snapshot (regexes included); a request only compares.

pub mod action;
mod host_port;
pub mod tcp;

use regex::Regex;
use std::sync::Arc;

use action::{Fault, HeaderOps, PerMillion, Rewrite, Terminal};

pub use crate::names::split_host_port;
use crate::resilience::rate_limit::TokenBucket;
use crate::resilience::retry::RetryPolicy;
pub use host_port::{HostPort, RouteMiss, Routed, RoutesSource, TcpChoice};

/// Why a route table could not be compiled (the push carrying it is NACKed).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A regex does not compile.
    #[error("route `{route}`: invalid regex `{regex}`: {message}")]
    Regex {
        /// Route name or index.
        route: String,
        /// The pattern.
        regex: String,
        /// The compiler's message.
        message: String,
    },
    /// A rule has destinations whose weights are all zero.
    #[error("route `{0}`: every destination has weight 0")]
    ZeroWeights(String),
    /// A header value is not a valid HTTP header value.
    #[error("route `{route}`: invalid value for header `{name}`")]
    HeaderValue {
        /// Route name or index.
        route: String,
        /// The header's name.
        name: String,
    },
    /// A tcp match's `destinationSubnets` entry is not an IP or CIDR.
    #[error("tcp route `{route}`: `{subnet}` is not an IP address or CIDR block")]
    Subnet {
        /// Route index.
        route: String,
        /// The entry.
        subnet: String,
    },
    /// A header name is not a valid HTTP header name.
    #[error("route `{route}`: invalid header name `{name}`")]
    HeaderName {
        /// Route name or index.
        route: String,
        /// The name.
        name: String,
    },
}

/// A compiled string matcher.
#[derive(Debug)]
pub enum StringMatcher {
    /// Equal.
    Exact(Box<str>),
    /// Starts with.
    Prefix(Box<str>),
    /// Whole-string RE2-style regex.
    Regex(Regex),
    /// Present with any value.
    Present,
}

impl StringMatcher {
    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == &**s,
            Self::Prefix(s) => value.starts_with(&**s),
            Self::Regex(r) => r.is_match(value),
            Self::Present => true,
        }
    }
}

/// One compiled `match` entry: every set field must hold.
#[derive(Debug, Default)]
pub struct RequestMatch {
    pub(crate) uri: Option<StringMatcher>,
    pub(crate) ignore_uri_case: bool,
    pub(crate) method: Option<StringMatcher>,
    pub(crate) authority: Option<StringMatcher>,
    pub(crate) headers: Vec<(http::HeaderName, StringMatcher)>,
    pub(crate) without_headers: Vec<(http::HeaderName, StringMatcher)>,
    pub(crate) query: Vec<(Box<str>, StringMatcher)>,
    pub(crate) port: u16,
}

impl RequestMatch {
    /// How much of the path a `rewrite.uri` replaces after this entry matched: its prefix;
    /// `/` when it has no URI condition (Istio matches on prefix `/` then); `None` (the whole
    /// path) after an exact or regex match.
    pub fn rewrite_prefix_len(&self) -> Option<usize> {
        match &self.uri {
            Some(StringMatcher::Prefix(p)) => Some(p.len()),
            None => Some(1),
            Some(_) => None,
        }
    }

    /// Whether the request (head only) matches.
    pub fn matches(&self, req: Head<'_>, authority: &str, port: u16) -> bool {
        if self.port != 0 && self.port != port {
            return false;
        }
        if let Some(m) = &self.uri {
            let path = req.uri.path();
            let ok = if self.ignore_uri_case {
                m.matches(&path.to_ascii_lowercase())
            } else {
                m.matches(path)
            };
            if !ok {
                return false;
            }
        }
        if let Some(m) = &self.method
            && !m.matches(req.method.as_str())
        {
            return false;
        }
        if let Some(m) = &self.authority
            && !m.matches(authority)
        {
            return false;
        }
        for (name, m) in &self.headers {
            match req.headers.get(name).and_then(|v| v.to_str().ok()) {
                Some(v) if m.matches(v) => {}
                _ => return false,
            }
        }
        for (name, m) in &self.without_headers {
            // A missing header counts as empty for a value matcher (Istio's semantics).
            let v = req
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .or(match m {
                    StringMatcher::Present => None,
                    _ => Some(""),
                });
            if v.is_some_and(|v| m.matches(v)) {
                return false;
            }
        }
        if !self.query.is_empty() {
            let q = req.uri.query().unwrap_or("");
            for (key, m) in &self.query {
                let found = q.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == &**key).then_some(v)
                });
                match found {
                    Some(v) if m.matches(v) => {}
                    _ => return false,
                }
            }
        }
        true
    }
}

/// The parts of a request that routing reads.
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    /// Method.
    pub method: &'a http::Method,
    /// URI (path and query).
    pub uri: &'a http::Uri,
    /// Headers.
    pub headers: &'a http::HeaderMap,
}

impl<'a> Head<'a> {
    /// The head of `req`.
    pub fn of<B>(req: &'a http::Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
        }
    }
}

/// Where a chosen route sends the request. Generic over the cluster type, so routing
/// depends on no snapshot type (the snapshot names its own: `crate::snapshot::Target`).
#[derive(Debug)]
pub enum Target<C> {
    /// A cluster of the snapshot.
    Cluster(Arc<C>),
    /// A destination (host/subset) this proxy has no cluster for: 503 `NC`, as Envoy does.
    Missing(Arc<str>),
}

impl<C> Target<C> {
    /// Whether `other` is the same cluster (by identity), or names the same missing one.
    pub fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Cluster(a), Self::Cluster(b)) => Arc::ptr_eq(a, b),
            (Self::Missing(a), Self::Missing(b)) => a == b,
            _ => false,
        }
    }
}

impl<C> Clone for Target<C> {
    fn clone(&self) -> Self {
        match self {
            Self::Cluster(c) => Self::Cluster(c.clone()),
            Self::Missing(n) => Self::Missing(n.clone()),
        }
    }
}

/// One compiled rule.
#[derive(Debug)]
pub struct Route<C> {
    /// Name, for logs.
    pub name: Arc<str>,
    pub(crate) matches: Vec<RequestMatch>,
    pub(crate) targets: Vec<(Destination<C>, u32)>,
    pub(crate) total_weight: u32,
    /// What happens on the way to the destination.
    pub behaviour: RouteBehaviour<C>,
}

/// One weighted destination of a rule, with its own header operations (applied after the
/// rule's, so a destination's `set` wins).
#[derive(Debug)]
pub struct Destination<C> {
    /// Where it sends.
    pub target: Target<C>,
    /// `headers.request` of the destination.
    pub request_headers: HeaderOps,
    /// `headers.response` of the destination.
    pub response_headers: HeaderOps,
}

/// A rule chosen for a request.
#[derive(Debug)]
pub struct Selected<'a, C> {
    /// The rule.
    pub route: &'a Route<C>,
    /// Its destination picked by weight; `None` for a redirect or direct response.
    pub destination: Option<&'a Destination<C>>,
    /// How much of the path a `rewrite.uri` replaces (see
    /// [`RequestMatch::rewrite_prefix_len`]).
    pub prefix_len: Option<usize>,
}

impl<C> Clone for Selected<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for Selected<'_, C> {}

/// The per-route settings applied around sending the request.
#[derive(Debug)]
pub struct RouteBehaviour<C> {
    /// The whole request's deadline, retries and backoff included (`timeout`; Istio's
    /// default: none). Expiry answers 504 `UT`.
    pub timeout: Option<std::time::Duration>,
    /// `retries`: Istio's default policy when the route has none, `None` for `attempts: 0`.
    pub retry: Option<RetryPolicy>,
    /// `fault`.
    pub fault: Option<Fault>,
    /// `headers.request` of the rule.
    pub request_headers: HeaderOps,
    /// `headers.response` of the rule.
    pub response_headers: HeaderOps,
    /// `rewrite`.
    pub rewrite: Option<Rewrite>,
    /// `redirect` or `directResponse`: the rule answers itself.
    pub terminal: Option<Terminal>,
    /// `mirror` and its share of requests.
    pub mirror: Option<(Target<C>, PerMillion)>,
    /// The route's local rate limit, with its key (`<origin>/<route>:<port>`) for reuse.
    pub rate_limit: Option<(Box<str>, Arc<TokenBucket>)>,
}

impl<C> Default for RouteBehaviour<C> {
    /// Nothing at all: no timeout, no retries, no rule (what a derive would give, without
    /// asking the cluster type for `Default`).
    fn default() -> Self {
        Self {
            timeout: None,
            retry: None,
            fault: None,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            rewrite: None,
            terminal: None,
            mirror: None,
            rate_limit: None,
        }
    }
}

impl<C> RouteBehaviour<C> {
    /// A route without VirtualService settings: no timeout, Istio's default retries.
    pub fn istio_default() -> Self {
        Self {
            retry: Some(RetryPolicy::istio_default(false)),
            ..Self::default()
        }
    }
}

impl<C> Route<C> {
    /// Picks a destination by weight; `roll` is uniform in `0..total_weight`.
    fn pick(&self, roll: u32) -> Option<&Destination<C>> {
        pick_weighted(&self.targets, roll)
    }
}

/// The target of `targets` (each with its weight) that `roll`, uniform in `0..total weight`,
/// falls on; the last one if `roll` is past the end. Shared by HTTP and TCP routes.
pub(crate) fn pick_weighted<T>(targets: &[(T, u32)], roll: u32) -> Option<&T> {
    let mut left = roll;
    for (t, w) in targets {
        if left < *w {
            return Some(t);
        }
        left -= w;
    }
    targets.last().map(|(t, _)| t)
}

/// The compiled rules of one host and port.
#[derive(Debug)]
pub struct RouteTable<C> {
    /// `namespace/name` of the VirtualService.
    pub origin: Arc<str>,
    pub(crate) routes: Vec<Route<C>>,
}

impl<C> RouteTable<C> {
    /// The route rate limits, by key (handed to the next snapshot).
    pub fn rate_limits(&self) -> impl Iterator<Item = (&str, &Arc<TokenBucket>)> {
        self.routes
            .iter()
            .filter_map(|r| r.behaviour.rate_limit.as_ref())
            .map(|(k, b)| (&**k, b))
    }

    /// The first matching rule and its destination, picked by weight; `None` when no rule
    /// matches (or the matching one has no destination and does not answer itself).
    pub fn select(&self, req: Head<'_>, authority: &str, port: u16) -> Option<Selected<'_, C>> {
        let (route, matched) = self.routes.iter().find_map(|r| {
            if r.matches.is_empty() {
                return Some((r, None));
            }
            let m = r.matches.iter().find(|m| m.matches(req, authority, port))?;
            Some((r, Some(m)))
        })?;
        let prefix_len = matched.map_or(Some(1), RequestMatch::rewrite_prefix_len);
        if route.behaviour.terminal.is_some() {
            return Some(Selected {
                route,
                destination: None,
                prefix_len,
            });
        }
        if route.total_weight == 0 {
            return None;
        }
        let destination = route.pick(fastrand::u32(..route.total_weight))?;
        Some(Selected {
            route,
            destination: Some(destination),
            prefix_len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::build::wire::routes::ResolveDestination;
    use meshlite_xds_proto::v1;
    use v1::string_match::Kind;

    /// Names destinations `host/subset` so tests can see which one was chosen.
    struct ByName;

    /// Routes in these tests lead to names only; no cluster type is needed.
    type NoCluster = ();

    impl ResolveDestination<NoCluster> for ByName {
        fn resolve(&self, dest: &v1::WeightedDestination, _port: u16) -> Target<NoCluster> {
            Target::Missing(Arc::from(format!("{}/{}", dest.host, dest.subset)))
        }
    }

    fn dest(subset: &str, weight: u32) -> v1::WeightedDestination {
        v1::WeightedDestination {
            host: "reviews".into(),
            subset: subset.into(),
            weight,
            ..Default::default()
        }
    }

    fn chosen(t: Option<Selected<'_, NoCluster>>) -> String {
        match t.and_then(|s| s.destination).map(|d| &d.target) {
            Some(Target::Missing(n)) => n.to_string(),
            Some(Target::Cluster(_)) => "a cluster".into(),
            None => "none".into(),
        }
    }

    fn request(path: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder().uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn table(http: Vec<v1::HttpRoute>) -> RouteTable<NoCluster> {
        RouteTable::compile(
            &v1::RouteTable {
                hostname: "reviews".into(),
                http,
                origin: "default/reviews".into(),
                tcp: Vec::new(),
            },
            9080,
            &ByName,
        )
        .unwrap()
    }

    #[test]
    fn first_matching_rule_wins_and_headers_are_anded() {
        let premium = v1::HttpMatch {
            headers: [
                (
                    "x-user-type".to_string(),
                    v1::StringMatch {
                        kind: Some(Kind::Exact("premium".into())),
                    },
                ),
                (
                    "x-region".to_string(),
                    v1::StringMatch {
                        kind: Some(Kind::Regex("eu-.*".into())),
                    },
                ),
            ]
            .into(),
            ..Default::default()
        };
        let t = table(vec![
            v1::HttpRoute {
                matches: vec![premium],
                route: vec![dest("v3", 0)],
                ..Default::default()
            },
            v1::HttpRoute {
                route: vec![dest("v1", 0)],
                ..Default::default()
            },
        ]);
        let pick = |h: &[(&str, &str)]| {
            let r = request("/", h);
            chosen(t.select(Head::of(&r), "reviews", 9080))
        };
        assert_eq!(
            pick(&[("x-user-type", "premium"), ("x-region", "eu-west")]),
            "reviews/v3"
        );
        // Regex is whole-string: `xeu-west` does not match `eu-.*`.
        assert_eq!(
            pick(&[("x-user-type", "premium"), ("x-region", "xeu-west")]),
            "reviews/v1"
        );
        assert_eq!(pick(&[("x-user-type", "premium")]), "reviews/v1");
        assert_eq!(pick(&[]), "reviews/v1");
    }

    #[test]
    fn no_matching_rule_means_no_route() {
        let t = table(vec![v1::HttpRoute {
            matches: vec![v1::HttpMatch {
                uri: Some(v1::StringMatch {
                    kind: Some(Kind::Prefix("/api/".into())),
                }),
                ..Default::default()
            }],
            route: vec![dest("v1", 0)],
            ..Default::default()
        }]);
        let hit = request("/api/x?q=1", &[]);
        let miss = request("/other", &[]);
        assert_eq!(
            chosen(t.select(Head::of(&hit), "reviews", 9080)),
            "reviews/v1"
        );
        assert!(t.select(Head::of(&miss), "reviews", 9080).is_none());
    }

    #[test]
    fn weights_are_relative_and_split_within_one_percent() {
        // 9:1 (not summing to 100) is the same split as 90/10.
        let t = table(vec![v1::HttpRoute {
            route: vec![dest("v1", 9), dest("v2", 1), dest("v3", 0)],
            ..Default::default()
        }]);
        fastrand::seed(7);
        let r = request("/", &[]);
        let mut v2 = 0;
        let n = 10_000;
        for _ in 0..n {
            match chosen(t.select(Head::of(&r), "reviews", 9080)).as_str() {
                "reviews/v2" => v2 += 1,
                "reviews/v1" => {}
                other => panic!("weight-0 destination chosen: {other}"),
            }
        }
        let share = f64::from(v2) / f64::from(n);
        assert!((share - 0.10).abs() < 0.01, "v2 share {share}");
    }

    #[test]
    fn all_zero_weights_and_bad_regexes_are_refused() {
        let zero = v1::RouteTable {
            http: vec![v1::HttpRoute {
                route: vec![dest("v1", 0), dest("v2", 0)],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(matches!(
            RouteTable::compile(&zero, 80, &ByName),
            Err(RouteError::ZeroWeights(_))
        ));
        let bad = v1::RouteTable {
            http: vec![v1::HttpRoute {
                matches: vec![v1::HttpMatch {
                    uri: Some(v1::StringMatch {
                        kind: Some(Kind::Regex("(".into())),
                    }),
                    ..Default::default()
                }],
                route: vec![dest("v1", 1)],
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = RouteTable::compile(&bad, 80, &ByName)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid regex"), "{err}");
    }

    #[test]
    fn without_headers_and_query_params() {
        let m = v1::HttpMatch {
            without_headers: [(
                "x-canary".to_string(),
                v1::StringMatch {
                    kind: Some(Kind::Present(true)),
                },
            )]
            .into(),
            query_params: [(
                "user".to_string(),
                v1::StringMatch {
                    kind: Some(Kind::Exact("jason".into())),
                },
            )]
            .into(),
            ..Default::default()
        };
        let t = table(vec![v1::HttpRoute {
            matches: vec![m],
            route: vec![dest("v2", 0)],
            ..Default::default()
        }]);
        let ok = request("/p?user=jason&x=1", &[]);
        let canary = request("/p?user=jason", &[("x-canary", "1")]);
        let other = request("/p?user=bob", &[]);
        assert_eq!(chosen(t.select(Head::of(&ok), "r", 1)), "reviews/v2");
        assert!(t.select(Head::of(&canary), "r", 1).is_none());
        assert!(t.select(Head::of(&other), "r", 1).is_none());
    }
}
