//! VirtualService http and tcp rules -> [`v1::RouteTable`]. Destination hosts are completed
//! with the VirtualService's namespace; matches with `sourceLabels`/`sourceNamespace` are kept
//! only for the proxies they name (a rule left with no match for this caller is dropped, as
//! Istio does), which makes such tables per caller. A tcp match whose `gateways` do not name
//! `mesh` is not for sidecars and is dropped the same way (Istio's `matchTCP`).

use meshlite_xds_proto::v1;

use super::duration;

use crate::model::{
    Destination, DestinationRule, HeaderOperations, HttpMatchRequest, HttpRoute, L4MatchAttributes,
    Named, StringMatch, StringMatchKind, TcpRoute, VirtualService, wildcard_matches,
};
use crate::registry::Workload;
use crate::validate::fqdn;

/// The hosts a VirtualService claims among the known ones (its wildcards expanded), plus its
/// exact hosts even when no service backs them yet.
pub fn hosts_of(vs: &Named<VirtualService>, known: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for h in &vs.spec.hosts {
        let full = fqdn(h, &vs.meta.namespace);
        if full.starts_with('*') {
            out.extend(known.iter().filter(|k| wildcard_matches(&full, k)).cloned());
        } else {
            out.push(full);
        }
    }
    out.dedup();
    out
}

/// The hosts a DestinationRule applies to.
pub fn dr_hosts(dr: &Named<DestinationRule>, known: &[String]) -> Vec<String> {
    let full = fqdn(&dr.spec.host, &dr.meta.namespace);
    if full.starts_with('*') {
        known
            .iter()
            .filter(|k| wildcard_matches(&full, k))
            .cloned()
            .collect()
    } else {
        vec![full]
    }
}

/// Whether any match of the VirtualService depends on the calling workload.
pub fn depends_on_caller(vs: &Named<VirtualService>) -> bool {
    let http = vs
        .spec
        .http
        .iter()
        .flat_map(|r| &r.matches)
        .any(|m| !m.source_labels.is_empty() || m.source_namespace.is_some());
    let tcp = vs
        .spec
        .tcp
        .iter()
        .flat_map(|r| &r.matches)
        .any(|m| !m.source_labels.is_empty() || m.source_namespace.is_some());
    http || tcp
}

fn string_match(m: &StringMatch) -> v1::StringMatch {
    use v1::string_match::Kind;
    v1::StringMatch {
        kind: Some(match m.kind() {
            StringMatchKind::Exact(s) => Kind::Exact(s.to_string()),
            StringMatchKind::Prefix(s) => Kind::Prefix(s.to_string()),
            StringMatchKind::Regex(s) => Kind::Regex(s.to_string()),
            StringMatchKind::Present => Kind::Present(true),
        }),
    }
}

fn header_ops(h: Option<&HeaderOperations>) -> Option<v1::HeaderOps> {
    h.map(|h| v1::HeaderOps {
        set: h.set.clone().into_iter().collect(),
        add: h.add.clone().into_iter().collect(),
        remove: h.remove.clone(),
    })
}

fn destination(d: &Destination, ns: &str, weight: u32) -> v1::WeightedDestination {
    v1::WeightedDestination {
        host: fqdn(&d.host, ns),
        subset: d.subset.clone().unwrap_or_default(),
        port: d.port.map(|p| p.number).unwrap_or(0),
        weight,
        ..Default::default()
    }
}

fn http_match(m: &HttpMatchRequest) -> v1::HttpMatch {
    // On headers, `regex: "*"` means "present" in Istio (SEMANTICS 2.2), as validation
    // reads it; sent as a regex it would not even compile.
    let header = |v: &StringMatch| match v.kind() {
        StringMatchKind::Regex("*") => v1::StringMatch {
            kind: Some(v1::string_match::Kind::Present(true)),
        },
        _ => string_match(v),
    };
    let map = |m: &std::collections::BTreeMap<String, StringMatch>| {
        m.iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), header(v)))
            .collect()
    };
    v1::HttpMatch {
        name: m.name.clone().unwrap_or_default(),
        uri: m.uri.as_ref().map(string_match),
        method: m.method.as_ref().map(string_match),
        authority: m.authority.as_ref().map(string_match),
        scheme: m.scheme.as_ref().map(string_match),
        headers: map(&m.headers),
        without_headers: map(&m.without_headers),
        query_params: m
            .query_params
            .iter()
            .map(|(k, v)| (k.clone(), string_match(v)))
            .collect(),
        ignore_uri_case: m.ignore_uri_case,
        port: m.port.unwrap_or(0),
    }
}

fn caller_qualifies(m: &HttpMatchRequest, caller: Option<&Workload>) -> bool {
    source_qualifies(&m.source_labels, m.source_namespace.as_deref(), caller)
}

/// Whether `caller` (any caller when `None`: the table is shared) has the labels and
/// namespace a match asks for.
fn source_qualifies(
    labels: &std::collections::BTreeMap<String, String>,
    namespace: Option<&str>,
    caller: Option<&Workload>,
) -> bool {
    let Some(w) = caller else { return true };
    labels.iter().all(|(k, v)| w.labels.get(k) == Some(v))
        && namespace.is_none_or(|ns| ns == w.namespace)
}

/// Whether a tcp match applies to sidecars: no `gateways`, or `mesh` among them.
fn for_sidecars(m: &L4MatchAttributes) -> bool {
    crate::model::applies_to_sidecars(&m.gateways)
}

/// One tcp rule for `caller`; `None` when it had matches and none applies to this caller.
fn tcp_route(r: &TcpRoute, ns: &str, caller: Option<&Workload>) -> Option<v1::TcpRoute> {
    let matches: Vec<v1::L4Match> = r
        .matches
        .iter()
        .filter(|m| {
            for_sidecars(m)
                && source_qualifies(&m.source_labels, m.source_namespace.as_deref(), caller)
        })
        .map(|m| v1::L4Match {
            port: m.port.unwrap_or(0),
            destination_subnets: m.destination_subnets.clone(),
        })
        .collect();
    if !r.matches.is_empty() && matches.is_empty() {
        return None;
    }
    Some(v1::TcpRoute {
        matches,
        route: r
            .route
            .iter()
            .map(|d| destination(&d.destination, ns, u32::try_from(d.weight).unwrap_or(0)))
            .collect(),
    })
}

fn route(
    r: &HttpRoute,
    ns: &str,
    caller: Option<&Workload>,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Option<v1::HttpRoute> {
    let matches: Vec<v1::HttpMatch> = r
        .matches
        .iter()
        .filter(|m| caller_qualifies(m, caller))
        .map(http_match)
        .collect();
    if !r.matches.is_empty() && matches.is_empty() {
        return None;
    }
    let mut request_headers = header_ops(r.headers.as_ref().and_then(|h| h.request.as_ref()));
    let mut response_headers = header_ops(r.headers.as_ref().and_then(|h| h.response.as_ref()));
    if request_headers == Some(v1::HeaderOps::default()) {
        request_headers = None;
    }
    if response_headers == Some(v1::HeaderOps::default()) {
        response_headers = None;
    }
    Some(v1::HttpRoute {
        name: r.name.clone().unwrap_or_default(),
        matches,
        route: r
            .route
            .iter()
            .map(|d| {
                let mut wd = destination(&d.destination, ns, u32::try_from(d.weight).unwrap_or(0));
                wd.request_headers =
                    header_ops(d.headers.as_ref().and_then(|h| h.request.as_ref()));
                wd.response_headers =
                    header_ops(d.headers.as_ref().and_then(|h| h.response.as_ref()));
                wd
            })
            .collect(),
        timeout: r.timeout.as_ref().map(duration),
        retries: r.retries.as_ref().map(|rt| v1::Retries {
            attempts: u32::try_from(rt.attempts).unwrap_or(0),
            per_try_timeout: rt.per_try_timeout.as_ref().map(duration),
            retry_on: rt
                .retry_on
                .as_deref()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.parse::<u32>().is_err())
                .map(str::to_string)
                .collect(),
            retriable_status_codes: rt
                .retry_on
                .as_deref()
                .unwrap_or("")
                .split(',')
                .filter_map(|s| s.trim().parse().ok())
                .collect(),
            backoff: rt.backoff.as_ref().map(duration),
            keep_previous_hosts: rt.retry_ignore_previous_hosts == Some(false),
            remote_localities: rt.retry_remote_localities == Some(true),
        }),
        fault: r.fault.as_ref().map(|f| v1::Fault {
            delay: f.delay.as_ref().map(|d| v1::fault::Delay {
                fixed_delay: d.fixed_delay.as_ref().map(duration),
                // Absent percentage means 0% (istio/istio#36303); `percent` is the old field.
                percentage: d
                    .percentage
                    .map(|p| p.value)
                    .or(d.percent.map(f64::from))
                    .unwrap_or(0.0),
            }),
            abort: f.abort.as_ref().map(|a| v1::fault::Abort {
                http_status: a
                    .http_status
                    .and_then(|s| u32::try_from(s).ok())
                    .unwrap_or(0),
                grpc_status: a
                    .grpc_status
                    .as_deref()
                    .and_then(crate::model::grpc_code)
                    .unwrap_or(0),
                percentage: a.percentage.map(|p| p.value).unwrap_or(0.0),
            }),
        }),
        request_headers,
        response_headers,
        rewrite: r.rewrite.as_ref().map(|rw| v1::Rewrite {
            uri: rw.uri.clone().unwrap_or_default(),
            authority: rw.authority.clone().unwrap_or_default(),
        }),
        redirect: r.redirect.as_ref().map(|rd| v1::Redirect {
            uri: rd.uri.clone().unwrap_or_default(),
            authority: rd.authority.clone().unwrap_or_default(),
            redirect_code: rd.redirect_code.unwrap_or(301),
            scheme: rd.scheme.clone().unwrap_or_default(),
            port: rd.port.unwrap_or(0),
        }),
        direct_response: r.direct_response.as_ref().map(|d| v1::DirectResponse {
            status: d.status,
            body: d
                .body
                .as_ref()
                .and_then(|b| b.string.clone())
                .unwrap_or_default()
                .into_bytes(),
        }),
        mirror: r.mirror.as_ref().map(|m| v1::Mirror {
            destination: Some(destination(m, ns, 100)),
            percentage: r.mirror_percentage.map(|p| p.value).unwrap_or(100.0),
        }),
        local_rate_limit: r.name.as_ref().and_then(|name| {
            super::local_rate_limit(annotations.get(&format!(
                "{}{name}",
                crate::model::annotations::ROUTE_ANNOTATION_PREFIX
            )))
        }),
    })
}

/// The route table of `host` from `vs`, for `caller` when its matches depend on one.
pub fn table(vs: &Named<VirtualService>, host: &str, caller: Option<&Workload>) -> v1::RouteTable {
    v1::RouteTable {
        hostname: host.to_string(),
        http: vs
            .spec
            .http
            .iter()
            .filter_map(|r| route(r, &vs.meta.namespace, caller, &vs.meta.annotations))
            .collect(),
        origin: vs.key(),
        tcp: vs
            .spec
            .tcp
            .iter()
            .filter_map(|r| tcp_route(r, &vs.meta.namespace, caller))
            .collect(),
    }
}
