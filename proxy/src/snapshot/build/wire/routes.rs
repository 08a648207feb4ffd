//! VirtualService routes from the wire (`meshlite.v1.RouteTable`, as the control plane pushes
//! them) compiled into the route types the request path matches with: regexes compiled and
//! anchored, header names checked, destinations resolved against the snapshot's clusters,
//! faults, rewrites, redirects, mirrors and local rate limits set up. The only place that
//! reads the wire's route messages.

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderName, HeaderValue};
use meshlite_xds_proto::v1;
use regex::Regex;
use std::sync::Arc;
use std::time::Duration;

use crate::resilience::rate_limit::TokenBucket;
use crate::resilience::retry::RetryPolicy;
use crate::route::action::{Abort, Fault, HeaderOps, PerMillion, Redirect, Rewrite, Terminal};
use crate::route::tcp::{L4Match, TcpRouteTable, TcpRule};
use crate::route::{
    Destination, RequestMatch, Route, RouteBehaviour, RouteError, RouteTable, StringMatcher, Target,
};

/// Resolves a route destination to a target; provided by the snapshot builder.
pub trait ResolveDestination<C> {
    /// The cluster for `host`, `port` (0 = the only or the request's port) and `subset`.
    fn resolve(&self, dest: &v1::WeightedDestination, request_port: u16) -> Target<C>;

    /// The token bucket for the route `key` limited by `limit`: the previous snapshot's when
    /// it had the same one (a push does not refill it), else a new, full one.
    fn rate_limit(&self, key: &str, limit: &v1::LocalRateLimit) -> Option<Arc<TokenBucket>> {
        let _ = key;
        TokenBucket::new(
            &super::resilience::rate_limit(limit),
            tokio::time::Instant::now(),
        )
        .map(Arc::new)
    }
}

impl StringMatcher {
    pub(crate) fn compile(
        m: &v1::StringMatch,
        route: &str,
        ignore_case: bool,
    ) -> Result<Self, RouteError> {
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
}

impl RequestMatch {
    pub(crate) fn compile(m: &v1::HttpMatch, route: &str) -> Result<Self, RouteError> {
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
}

impl<C> RouteBehaviour<C> {
    pub(crate) fn compile(
        r: &v1::HttpRoute,
        name: &str,
        origin: &str,
        port: u16,
        resolver: &dyn ResolveDestination<C>,
    ) -> Result<Self, RouteError> {
        let rate_limit = r.local_rate_limit.as_ref().and_then(|l| {
            let key: Box<str> = format!("{origin}/{name}:{port}").into();
            let bucket = resolver.rate_limit(&key, l)?;
            Some((key, bucket))
        });
        Ok(Self {
            rate_limit,
            timeout: super::positive(r.timeout),
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

impl<C> Route<C> {
    /// Compiles one VirtualService rule.
    pub(crate) fn compile(
        index: usize,
        r: &v1::HttpRoute,
        origin: &str,
        port: u16,
        resolver: &dyn ResolveDestination<C>,
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
        let targets: Vec<(Destination<C>, u32)> = if r.route.len() == 1 {
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
}

impl<C> RouteTable<C> {
    /// Compiles a VirtualService's rules for one service port.
    pub fn compile(
        table: &v1::RouteTable,
        port: u16,
        resolver: &dyn ResolveDestination<C>,
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
}

impl<C> TcpRouteTable<C> {
    /// Compiles a VirtualService's tcp rules for one service port; `None` when it has none
    /// (connections go to the service itself).
    pub fn compile(
        table: &v1::RouteTable,
        port: u16,
        resolver: &dyn ResolveDestination<C>,
    ) -> Result<Option<Self>, RouteError> {
        if table.tcp.is_empty() {
            return Ok(None);
        }
        let rules = table
            .tcp
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let name = format!("tcp#{i}");
                let matches = r
                    .matches
                    .iter()
                    .map(|m| L4Match::compile(m, &name))
                    .collect::<Result<Vec<_>, _>>()?;
                let targets = r
                    .route
                    .iter()
                    .map(|d| (resolver.resolve(d, port), d.weight))
                    .collect();
                TcpRule::new(&name, matches, targets)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Self {
            origin: Arc::from(table.origin.as_str()),
            rules,
        }))
    }
}

impl HeaderOps {
    /// Compiles `ops` (absent: nothing to do).
    pub(crate) fn compile(ops: Option<&v1::HeaderOps>, route: &str) -> Result<Self, RouteError> {
        let Some(ops) = ops else {
            return Ok(Self::default());
        };
        let name = |n: &str| {
            HeaderName::try_from(n.to_ascii_lowercase()).map_err(|_| RouteError::HeaderName {
                route: route.to_string(),
                name: n.to_string(),
            })
        };
        let value = |n: &str, v: &str| {
            HeaderValue::try_from(v).map_err(|_| RouteError::HeaderValue {
                route: route.to_string(),
                name: n.to_string(),
            })
        };
        let mut out = Self::default();
        for (map, into_add) in [(&ops.set, false), (&ops.add, true)] {
            for (n, v) in map {
                let lower = n.to_ascii_lowercase();
                if lower == "host" || lower == ":authority" {
                    out.host = Some(value(n, v)?);
                    continue;
                }
                if lower.starts_with(':') {
                    continue;
                }
                let pair = (name(n)?, value(n, v)?);
                if into_add {
                    out.add.push(pair);
                } else {
                    out.set.push(pair);
                }
            }
        }
        out.remove = ops
            .remove
            .iter()
            .filter(|n| !n.starts_with(':'))
            .map(|n| name(n))
            .collect::<Result<_, _>>()?;
        Ok(out)
    }
}

impl Fault {
    /// Compiles `fault`; `None` when it can never fire.
    pub(crate) fn compile(f: Option<&v1::Fault>) -> Option<Self> {
        let f = f?;
        let delay = f.delay.as_ref().and_then(|d| {
            let by = d.fixed_delay.and_then(|d| Duration::try_from(d).ok())?;
            let share = PerMillion::from_percent(d.percentage);
            (share.0 > 0 && !by.is_zero()).then_some((by, share))
        });
        let abort = f.abort.as_ref().and_then(|a| {
            let share = PerMillion::from_percent(a.percentage);
            let abort = if a.grpc_status != 0 {
                Abort::Grpc(a.grpc_status)
            } else {
                Abort::Http(
                    u16::try_from(a.http_status)
                        .ok()
                        .and_then(|s| StatusCode::from_u16(s).ok())?,
                )
            };
            (share.0 > 0).then_some((abort, share))
        });
        (delay.is_some() || abort.is_some()).then_some(Self { delay, abort })
    }
}

impl Rewrite {
    /// Compiles `rewrite`; `None` when it changes nothing.
    pub(crate) fn compile(
        r: Option<&v1::Rewrite>,
        route: &str,
    ) -> Result<Option<Self>, RouteError> {
        let Some(r) = r else { return Ok(None) };
        let authority = if r.authority.is_empty() {
            None
        } else {
            Some(HeaderValue::try_from(r.authority.as_str()).map_err(|_| {
                RouteError::HeaderValue {
                    route: route.to_string(),
                    name: "rewrite.authority".into(),
                }
            })?)
        };
        let uri = (!r.uri.is_empty()).then(|| r.uri.as_str().into());
        Ok((uri.is_some() || authority.is_some()).then_some(Self { uri, authority }))
    }
}

impl Terminal {
    /// Compiles a rule's `redirect` or `directResponse`, when it has one.
    pub(crate) fn compile(r: &v1::HttpRoute) -> Option<Self> {
        if let Some(d) = &r.direct_response {
            let status = u16::try_from(d.status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            return Some(Terminal::Direct(status, Bytes::from(d.body.clone())));
        }
        let rd = r.redirect.as_ref()?;
        let code = match rd.redirect_code {
            0 => StatusCode::MOVED_PERMANENTLY,
            c => u16::try_from(c)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|c| matches!(c.as_u16(), 301 | 302 | 303 | 307 | 308))
                .unwrap_or(StatusCode::MOVED_PERMANENTLY),
        };
        Some(Terminal::Redirect(Redirect {
            uri: (!rd.uri.is_empty()).then(|| rd.uri.clone()),
            authority: (!rd.authority.is_empty()).then(|| rd.authority.clone()),
            scheme: (!rd.scheme.is_empty()).then(|| rd.scheme.clone()),
            port: u16::try_from(rd.port).unwrap_or(0),
            code,
        }))
    }
}
