//! HTTP routing as a VirtualService describes it: rules evaluated in order, the first whose
//! match holds wins; inside a rule the `match` entries are ORed and the fields of one entry
//! ANDed; a rule without matches matches everything. The winning rule's destinations are
//! picked by relative weight (weights need not sum to 100, as in Istio ≥ 1.15). A host with
//! route rules where none matches gets 404 `NR` (no fall-through, as Envoy does).
//!
//! Everything is compiled once per snapshot (regexes included); a request only compares.

pub mod action;

use regex::Regex;
use std::sync::Arc;

use action::{Fault, HeaderOps, PerMillion, Rewrite, Terminal};

use meshlite_xds_proto::v1;

use crate::resilience::rate_limit::TokenBucket;
use crate::resilience::retry::RetryPolicy;
use crate::snapshot::Cluster;

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
    fn compile(m: &v1::StringMatch, route: &str, ignore_case: bool) -> Result<Self, RouteError> {
        use v1::string_match::Kind;
        let fold = |s: &str| {
            if ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.to_string()
            }
        };
        Ok(match &m.kind {
            Some(Kind::Exact(s)) => Self::Exact(fold(s).into()),
            Some(Kind::Prefix(s)) => Self::Prefix(fold(s).into()),
            Some(Kind::Regex(r)) => {
                // Istio matches the whole string: anchor the pattern.
                let anchored = format!("^(?:{r})$");
                Self::Regex(Regex::new(&anchored).map_err(|e| RouteError::Regex {
                    route: route.to_string(),
                    regex: r.clone(),
                    message: e.to_string(),
                })?)
            }
            Some(Kind::Present(_)) | None => Self::Present,
        })
    }

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
    uri: Option<StringMatcher>,
    ignore_uri_case: bool,
    method: Option<StringMatcher>,
    authority: Option<StringMatcher>,
    headers: Vec<(http::HeaderName, StringMatcher)>,
    without_headers: Vec<(http::HeaderName, StringMatcher)>,
    query: Vec<(Box<str>, StringMatcher)>,
    port: u16,
}

impl RequestMatch {
    fn compile(m: &v1::HttpMatch, route: &str) -> Result<Self, RouteError> {
        let opt = |s: &Option<v1::StringMatch>, ic| {
            s.as_ref()
                .map(|s| StringMatcher::compile(s, route, ic))
                .transpose()
        };
        let headers = |map: &std::collections::BTreeMap<String, v1::StringMatch>| {
            let mut out = map
                .iter()
                .map(|(k, v)| {
                    let name =
                        http::HeaderName::try_from(k.to_ascii_lowercase()).map_err(|_| {
                            RouteError::HeaderName {
                                route: route.to_string(),
                                name: k.clone(),
                            }
                        })?;
                    Ok((name, StringMatcher::compile(v, route, false)?))
                })
                .collect::<Result<Vec<_>, RouteError>>()?;
            out.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
            Ok::<_, RouteError>(out)
        };
        let mut query = m
            .query_params
            .iter()
            .map(|(k, v)| Ok((k.as_str().into(), StringMatcher::compile(v, route, false)?)))
            .collect::<Result<Vec<_>, RouteError>>()?;
        query.sort_by(|a: &(Box<str>, _), b| a.0.cmp(&b.0));
        Ok(Self {
            uri: opt(&m.uri, m.ignore_uri_case)?,
            ignore_uri_case: m.ignore_uri_case,
            method: opt(&m.method, false)?,
            authority: opt(&m.authority, false)?,
            headers: headers(&m.headers)?,
            without_headers: headers(&m.without_headers)?,
            query,
            port: u16::try_from(m.port).unwrap_or(0),
        })
    }

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

/// Where a chosen route sends the request.
#[derive(Debug, Clone)]
pub enum Target {
    /// A cluster of the snapshot.
    Cluster(Arc<Cluster>),
    /// A destination (host/subset) this proxy has no cluster for: 503 `NC`, as Envoy does.
    Missing(Arc<str>),
}

/// One compiled rule.
#[derive(Debug)]
pub struct Route {
    /// Name, for logs.
    pub name: Arc<str>,
    matches: Vec<RequestMatch>,
    targets: Vec<(Destination, u32)>,
    total_weight: u32,
    /// What happens on the way to the destination.
    pub behaviour: RouteBehaviour,
}

/// One weighted destination of a rule, with its own header operations (applied after the
/// rule's, so a destination's `set` wins).
#[derive(Debug)]
pub struct Destination {
    /// Where it sends.
    pub target: Target,
    /// `headers.request` of the destination.
    pub request_headers: HeaderOps,
    /// `headers.response` of the destination.
    pub response_headers: HeaderOps,
}

/// A rule chosen for a request.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'a> {
    /// The rule.
    pub route: &'a Route,
    /// Its destination picked by weight; `None` for a redirect or direct response.
    pub destination: Option<&'a Destination>,
    /// How much of the path a `rewrite.uri` replaces (see
    /// [`RequestMatch::rewrite_prefix_len`]).
    pub prefix_len: Option<usize>,
}

/// The per-route settings applied around sending the request.
#[derive(Debug, Clone, Default)]
pub struct RouteBehaviour {
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
    pub mirror: Option<(Target, PerMillion)>,
    /// The route's local rate limit, with its key (`<origin>/<route>:<port>`) for reuse.
    pub rate_limit: Option<(Box<str>, Arc<TokenBucket>)>,
}

impl RouteBehaviour {
    /// A route without VirtualService settings: no timeout, Istio's default retries.
    pub fn istio_default() -> Self {
        Self {
            timeout: None,
            retry: RetryPolicy::from_proto(None, false),
            ..Self::default()
        }
    }

    fn compile(
        r: &v1::HttpRoute,
        name: &str,
        origin: &str,
        port: u16,
        resolver: &dyn ResolveDestination,
    ) -> Result<Self, RouteError> {
        let rate_limit = r.local_rate_limit.as_ref().and_then(|l| {
            let key: Box<str> = format!("{origin}/{name}:{port}").into();
            let bucket = resolver.rate_limit(&key, l)?;
            Some((key, bucket))
        });
        Ok(Self {
            rate_limit,
            timeout: r
                .timeout
                .and_then(|d| std::time::Duration::try_from(d).ok())
                .filter(|d| !d.is_zero()),
            retry: RetryPolicy::from_proto(r.retries.as_ref(), false),
            fault: Fault::compile(r.fault.as_ref()),
            request_headers: HeaderOps::compile(r.request_headers.as_ref(), name)?,
            response_headers: HeaderOps::compile(r.response_headers.as_ref(), name)?,
            rewrite: Rewrite::compile(r.rewrite.as_ref(), name)?,
            terminal: Terminal::compile(r),
            mirror: r.mirror.as_ref().and_then(|m| {
                let share = PerMillion::from_percent(m.percentage);
                let dest = m.destination.as_ref()?;
                (share != PerMillion::from_percent(0.0))
                    .then(|| (resolver.resolve(dest, port), share))
            }),
        })
    }
}

/// Resolves a route destination to a target; provided by the snapshot builder.
pub trait ResolveDestination {
    /// The cluster for `host`, `port` (0 = the only or the request's port) and `subset`.
    fn resolve(&self, dest: &v1::WeightedDestination, request_port: u16) -> Target;

    /// The token bucket for the route `key` limited by `limit`: the previous snapshot's when
    /// it had the same one (a push does not refill it), else a new, full one.
    fn rate_limit(&self, key: &str, limit: &v1::LocalRateLimit) -> Option<Arc<TokenBucket>> {
        let _ = key;
        TokenBucket::new(limit, tokio::time::Instant::now()).map(Arc::new)
    }
}

impl Route {
    /// Compiles one VirtualService rule.
    pub fn compile(
        index: usize,
        r: &v1::HttpRoute,
        origin: &str,
        port: u16,
        resolver: &dyn ResolveDestination,
    ) -> Result<Self, RouteError> {
        let name: Arc<str> = if r.name.is_empty() {
            Arc::from(format!("#{index}"))
        } else {
            Arc::from(r.name.as_str())
        };
        let matches = r
            .matches
            .iter()
            .map(|m| RequestMatch::compile(m, &name))
            .collect::<Result<Vec<_>, _>>()?;
        let destination = |d: &v1::WeightedDestination| {
            Ok::<_, RouteError>(Destination {
                target: resolver.resolve(d, port),
                request_headers: HeaderOps::compile(d.request_headers.as_ref(), &name)?,
                response_headers: HeaderOps::compile(d.response_headers.as_ref(), &name)?,
            })
        };
        // One destination gets everything whatever its weight; several keep only weight > 0.
        let targets: Vec<(Destination, u32)> = if r.route.len() == 1 {
            vec![(destination(&r.route[0])?, 1)]
        } else {
            r.route
                .iter()
                .filter(|d| d.weight > 0)
                .map(|d| Ok((destination(d)?, d.weight)))
                .collect::<Result<_, RouteError>>()?
        };
        if !r.route.is_empty() && targets.is_empty() {
            return Err(RouteError::ZeroWeights(name.to_string()));
        }
        let total_weight = targets.iter().map(|(_, w)| *w).sum();
        if let Some(retries) = &r.retries {
            let (_, unknown) = crate::resilience::retry::RetryOn::parse(&retries.retry_on);
            if !unknown.is_empty() {
                tracing::warn!(route = %name, ?unknown, "retryOn conditions not supported; ignored");
            }
        }
        let behaviour = RouteBehaviour::compile(r, &name, origin, port, resolver)?;
        Ok(Self {
            name,
            matches,
            targets,
            total_weight,
            behaviour,
        })
    }

    /// Picks a destination by weight; `roll` is uniform in `0..total_weight`.
    fn pick(&self, roll: u32) -> Option<&Destination> {
        let mut left = roll;
        for (t, w) in &self.targets {
            if left < *w {
                return Some(t);
            }
            left -= w;
        }
        self.targets.last().map(|(t, _)| t)
    }
}

/// The compiled rules of one host and port.
#[derive(Debug)]
pub struct RouteTable {
    /// `namespace/name` of the VirtualService.
    pub origin: Arc<str>,
    routes: Vec<Route>,
}

impl RouteTable {
    /// The route rate limits, by key (handed to the next snapshot).
    pub fn rate_limits(&self) -> impl Iterator<Item = (&str, &Arc<TokenBucket>)> {
        self.routes
            .iter()
            .filter_map(|r| r.behaviour.rate_limit.as_ref())
            .map(|(k, b)| (&**k, b))
    }

    /// Compiles a VirtualService's rules for one service port.
    pub fn compile(
        table: &v1::RouteTable,
        port: u16,
        resolver: &dyn ResolveDestination,
    ) -> Result<Self, RouteError> {
        let routes = table
            .http
            .iter()
            .enumerate()
            .map(|(i, r)| Route::compile(i, r, &table.origin, port, resolver))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            origin: Arc::from(table.origin.as_str()),
            routes,
        })
    }

    /// The first matching rule and its destination, picked by weight; `None` when no rule
    /// matches (or the matching one has no destination and does not answer itself).
    pub fn select(&self, req: Head<'_>, authority: &str, port: u16) -> Option<Selected<'_>> {
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
    use v1::string_match::Kind;

    /// Names destinations `host/subset` so tests can see which one was chosen.
    struct ByName;

    impl ResolveDestination for ByName {
        fn resolve(&self, dest: &v1::WeightedDestination, _port: u16) -> Target {
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

    fn chosen(t: Option<Selected<'_>>) -> String {
        match t.and_then(|s| s.destination).map(|d| &d.target) {
            Some(Target::Missing(n)) => n.to_string(),
            Some(Target::Cluster(c)) => c.name.to_string(),
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

    fn table(http: Vec<v1::HttpRoute>) -> RouteTable {
        RouteTable::compile(
            &v1::RouteTable {
                hostname: "reviews".into(),
                http,
                origin: "default/reviews".into(),
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
