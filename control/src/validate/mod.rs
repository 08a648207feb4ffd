//! Validation of a loaded configuration, the gate before anything reaches a proxy.
//!
//! Checks each resource the way istiod's webhook does (SEMANTICS.md sections 1-5) plus the
//! cross-resource mistakes that Istio tolerates silently but that break traffic in ways users
//! rarely diagnose (a route to an undefined subset is a 503 `NC`; a second VirtualService for a
//! host is dropped). Every problem names file, document, resource and field path. Only a
//! configuration without errors becomes a `ConfigSet`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

pub use crate::model::{CLUSTER_DOMAIN, fqdn};
use crate::model::{
    ConfigSet, ConnectionPoolSettings, Destination, DestinationRule, HttpRoute, IstioDuration,
    LoadBalancerSettings, Named, OutlierDetection, Percent, Resolution, ServiceEntry,
    ServiceLocation, StringMatch, TrafficPolicy, VirtualService, applies_to_sidecars,
    wildcard_matches,
};
use crate::source::{Problem, Resource, ResourceSpec, Severity, load_dir};

pub mod admission;
mod security;
mod sidecar;
mod telemetry;
mod tls;
mod unenforced;

/// Redirect codes Istio accepts (SEMANTICS 2.3).
const REDIRECT_CODES: [u32; 5] = [301, 302, 303, 307, 308];

/// ServiceEntry port protocols meshlite accepts (compared case-insensitively).
const SERVICE_ENTRY_PROTOCOLS: [&str; 9] = [
    "HTTP", "HTTP2", "GRPC", "TCP", "TLS", "HTTPS", "MONGO", "REDIS", "MYSQL",
];

/// The outcome of checking a configuration.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The configuration, present only if no problem is an error.
    pub set: Option<ConfigSet>,
    /// Load and validation problems, loader problems first.
    pub problems: Vec<Problem>,
    /// Every resource that parsed, valid or not, in file order.
    pub resources: Vec<Resource>,
}

impl Report {
    /// True when any problem is an error (and `set` is therefore `None`).
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(Problem::is_error)
    }

    /// The errors.
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| p.is_error())
    }

    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| !p.is_error())
    }
}

/// Loads and validates a config directory, with no hosts known besides those the
/// configuration itself defines.
pub fn check_dir(dir: &Path) -> Report {
    check_dir_with_hosts(dir, &HashSet::new())
}

/// Loads and validates a config directory; `known_hosts` (FQDNs) are services known from
/// elsewhere (e.g. announced by sidecars), so routes to them do not warn.
pub fn check_dir_with_hosts(dir: &Path, known_hosts: &HashSet<String>) -> Report {
    let outcome = load_dir(dir);
    let (set, problems) = validate_with_hosts(&outcome.resources, known_hosts);
    let mut all = outcome.problems;
    all.extend(problems);
    let has_errors = all.iter().any(Problem::is_error);
    Report {
        set: if has_errors { None } else { set },
        problems: all,
        resources: outcome.resources,
    }
}

/// Validates resources with no externally known hosts.
pub fn validate(resources: &[Resource]) -> (Option<ConfigSet>, Vec<Problem>) {
    validate_with_hosts(resources, &HashSet::new())
}

/// Validates resources; returns the config set if no problem is an error.
pub fn validate_with_hosts(
    resources: &[Resource],
    known_hosts: &HashSet<String>,
) -> (Option<ConfigSet>, Vec<Problem>) {
    let index = Index::new(resources, known_hosts);
    let mut c = Checker {
        problems: Vec::new(),
        index: &index,
    };
    for r in resources {
        match &r.spec {
            ResourceSpec::VirtualService(vs) => {
                c.virtual_service(r, vs);
                c.virtual_service_unapplied(r, vs);
            }
            ResourceSpec::DestinationRule(dr) => {
                c.destination_rule(r, dr);
                c.destination_rule_unapplied(r, dr);
            }
            ResourceSpec::ServiceEntry(se) => {
                c.service_entry(r, se);
                c.service_entry_unapplied(r, se);
            }
            ResourceSpec::Sidecar(s) => {
                c.sidecar(r, s);
                c.sidecar_unapplied(r, s);
            }
            ResourceSpec::PeerAuthentication(pa) => c.peer_authentication(r, pa),
            ResourceSpec::AuthorizationPolicy(ap) => c.authorization_policy(r, ap),
            ResourceSpec::RequestAuthentication(ra) => c.request_authentication(r, ra),
            ResourceSpec::Telemetry(t) => c.telemetry(r, t),
            ResourceSpec::MeshConfig(m) => {
                c.mesh_config(r, m);
                c.mesh_config_unapplied(r, m);
            }
        }
    }
    c.conflicts(resources);
    c.duplicate_issuers(resources);
    c.telemetry_scopes(resources);
    c.sidecar_scopes(resources);
    let problems = c.problems;
    if problems.iter().any(Problem::is_error) {
        return (None, problems);
    }
    (Some(build_set(resources)), problems)
}

fn build_set(resources: &[Resource]) -> ConfigSet {
    let mut set = ConfigSet::default();
    for r in resources {
        fn named<T: Clone>(r: &Resource, spec: &T) -> Named<T> {
            Named {
                meta: r.meta.clone(),
                origin: r.origin.clone(),
                spec: spec.clone(),
            }
        }
        match &r.spec {
            ResourceSpec::VirtualService(s) => set.virtual_services.push(named(r, &**s)),
            ResourceSpec::DestinationRule(s) => set.destination_rules.push(named(r, &**s)),
            ResourceSpec::ServiceEntry(s) => set.service_entries.push(named(r, &**s)),
            ResourceSpec::Sidecar(s) => set.sidecars.push(named(r, &**s)),
            ResourceSpec::PeerAuthentication(s) => set.peer_authentications.push(named(r, &**s)),
            ResourceSpec::AuthorizationPolicy(s) => set.authorization_policies.push(named(r, &**s)),
            ResourceSpec::RequestAuthentication(s) => {
                set.request_authentications.push(named(r, &**s))
            }
            ResourceSpec::Telemetry(s) => set.telemetries.push(named(r, &**s)),
            ResourceSpec::MeshConfig(s) => set.mesh_config = Some(named(r, &**s)),
        }
    }
    set
}

/// Cross-resource facts the per-resource checks consult.
struct Index<'a> {
    /// FQDN host → subset names, over all DestinationRules.
    subsets: BTreeMap<String, BTreeSet<String>>,
    /// Hosts defined by ServiceEntries and VirtualServices, completed; may hold wildcards.
    defined_hosts: HashSet<String>,
    known_hosts: &'a HashSet<String>,
    /// Names of the MeshConfig's extension providers, by kind (`envoyExtAuthzGrpc`, ...).
    providers: BTreeMap<String, Vec<&'static str>>,
    /// Hosts of MESH_EXTERNAL ServiceEntries (as written, lowercase, and completed).
    external_hosts: HashSet<String>,
}

impl<'a> Index<'a> {
    fn new(resources: &[Resource], known_hosts: &'a HashSet<String>) -> Self {
        let mut subsets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut defined_hosts = HashSet::new();
        let mut providers = BTreeMap::new();
        let mut external_hosts = HashSet::new();
        for r in resources {
            let ns = &r.meta.namespace;
            match &r.spec {
                ResourceSpec::MeshConfig(m) => {
                    for p in &m.extension_providers {
                        providers.insert(p.name.clone(), p.kinds());
                    }
                }
                ResourceSpec::DestinationRule(dr) => {
                    let names = subsets.entry(fqdn(&dr.host, ns)).or_default();
                    names.extend(dr.subsets.iter().map(|s| s.name.clone()));
                }
                ResourceSpec::ServiceEntry(se) => {
                    let external = se.location != Some(ServiceLocation::MeshInternal);
                    for h in &se.hosts {
                        defined_hosts.insert(h.to_ascii_lowercase());
                        defined_hosts.insert(fqdn(h, ns));
                        if external {
                            external_hosts.insert(h.to_ascii_lowercase());
                            external_hosts.insert(fqdn(h, ns));
                        }
                    }
                }
                ResourceSpec::VirtualService(vs) => {
                    defined_hosts.extend(vs.hosts.iter().map(|h| fqdn(h, ns)));
                }
                _ => {}
            }
        }
        Index {
            subsets,
            defined_hosts,
            known_hosts,
            providers,
            external_hosts,
        }
    }

    /// Subsets defined for `host` (FQDN): the exact host's DRs, else matching wildcard DRs.
    fn subsets_for(&self, host: &str) -> Option<&BTreeSet<String>> {
        self.subsets.get(host).or_else(|| {
            self.subsets
                .iter()
                .find(|(pattern, _)| wildcard_matches(pattern, host))
                .map(|(_, names)| names)
        })
    }

    fn host_is_known(&self, raw: &str, full: &str) -> bool {
        let raw = raw.to_ascii_lowercase();
        [raw.as_str(), full].iter().any(|h| {
            self.known_hosts.contains(*h)
                || self.defined_hosts.contains(*h)
                || self.defined_hosts.iter().any(|p| wildcard_matches(p, h))
        })
    }
}

struct Checker<'a> {
    problems: Vec<Problem>,
    index: &'a Index<'a>,
}

impl Checker<'_> {
    fn error(&mut self, r: &Resource, field: impl Into<String>, message: impl Into<String>) {
        self.problems
            .push(Problem::at(Severity::Error, r, field, message));
    }

    fn warning(&mut self, r: &Resource, field: impl Into<String>, message: impl Into<String>) {
        self.problems
            .push(Problem::at(Severity::Warning, r, field, message));
    }

    // ----- VirtualService -------------------------------------------------------------------

    /// The rate-limit annotations of `r`: valid values, and (on a VirtualService) route names
    /// that exist.
    fn rate_limit_annotations(&mut self, r: &Resource, route_names: Option<&[Option<String>]>) {
        use crate::model::annotations::{
            DESTINATION_ANNOTATION, LocalRateLimit, ROUTE_ANNOTATION_PREFIX,
        };
        for (key, value) in &r.meta.annotations {
            let field = format!("metadata.annotations[\"{key}\"]");
            let applies = match route_names {
                None => key == DESTINATION_ANNOTATION,
                Some(names) => match key.strip_prefix(ROUTE_ANNOTATION_PREFIX) {
                    None => false,
                    Some(route) => {
                        if !names.iter().any(|n| n.as_deref() == Some(route)) {
                            self.error(
                                r,
                                field.clone(),
                                format!("no http route is named `{route}`"),
                            );
                        }
                        true
                    }
                },
            };
            if applies && let Err(e) = value.parse::<LocalRateLimit>() {
                self.error(r, field, e.to_string());
            }
        }
    }

    fn virtual_service(&mut self, r: &Resource, vs: &VirtualService) {
        let names: Vec<Option<String>> = vs.http.iter().map(|h| h.name.clone()).collect();
        self.rate_limit_annotations(r, Some(&names));
        if vs.hosts.is_empty() {
            self.error(r, "spec.hosts", "a VirtualService needs at least one host");
        }
        for (i, host) in vs.hosts.iter().enumerate() {
            if host.trim().is_empty() {
                self.error(r, format!("spec.hosts[{i}]"), "empty host");
            }
        }
        for (i, rule) in vs.http.iter().enumerate() {
            self.http_route(r, rule, &format!("spec.http[{i}]"));
        }
        for (i, rule) in vs.tcp.iter().enumerate() {
            let p = format!("spec.tcp[{i}]");
            if rule.route.is_empty() {
                self.error(
                    r,
                    format!("{p}.route"),
                    "a TCP rule needs at least one route",
                );
            }
            let weights: Vec<i32> = rule.route.iter().map(|d| d.weight).collect();
            self.weights(r, &weights, &format!("{p}.route"));
            for (j, dest) in rule.route.iter().enumerate() {
                self.destination(r, &dest.destination, &format!("{p}.route[{j}].destination"));
            }
            for (j, m) in rule.matches.iter().enumerate() {
                let mp = format!("{p}.match[{j}]");
                for (k, subnet) in m.destination_subnets.iter().enumerate() {
                    if !is_ip_or_cidr(subnet) {
                        self.error(
                            r,
                            format!("{mp}.destinationSubnets[{k}]"),
                            format!("`{subnet}` is not an IP address or CIDR block"),
                        );
                    }
                }
                if let Some(port) = m.port
                    && !(1..=65535).contains(&port)
                {
                    self.error(
                        r,
                        format!("{mp}.port"),
                        format!("port {port} is outside 1..=65535"),
                    );
                }
                if !m.gateways.is_empty() && !crate::model::applies_to_sidecars(&m.gateways) {
                    self.warning(
                        r,
                        format!("{mp}.gateways"),
                        "the match names no `mesh` gateway: sidecars skip it (meshlite has no gateways)",
                    );
                }
            }
        }
    }

    fn http_route(&mut self, r: &Resource, rule: &HttpRoute, p: &str) {
        for (m, cond) in rule.matches.iter().enumerate() {
            let mp = format!("{p}.match[{m}]");
            for (name, sm) in [
                ("uri", &cond.uri),
                ("scheme", &cond.scheme),
                ("method", &cond.method),
                ("authority", &cond.authority),
            ] {
                if let Some(sm) = sm {
                    self.string_match(r, sm, &format!("{mp}.{name}"), false);
                }
            }
            for (map_name, map) in [
                ("headers", &cond.headers),
                ("withoutHeaders", &cond.without_headers),
                ("queryParams", &cond.query_params),
            ] {
                for (key, sm) in map {
                    self.string_match(r, sm, &format!("{mp}.{map_name}.{key}"), true);
                }
            }
        }

        let actions = usize::from(!rule.route.is_empty())
            + usize::from(rule.redirect.is_some())
            + usize::from(rule.direct_response.is_some());
        if let Some(redirect) = &rule.redirect {
            if !rule.route.is_empty() || rule.rewrite.is_some() {
                self.error(
                    r,
                    format!("{p}.redirect"),
                    "redirect cannot be combined with route or rewrite",
                );
            }
            if let Some(code) = redirect.redirect_code
                && !REDIRECT_CODES.contains(&code)
            {
                self.error(
                    r,
                    format!("{p}.redirect.redirectCode"),
                    format!("redirect code {code} is not one of 301, 302, 303, 307, 308"),
                );
            }
        } else if actions > 1 {
            self.error(
                r,
                format!("{p}.directResponse"),
                "directResponse cannot be combined with route",
            );
        }
        if actions == 0 {
            self.error(
                r,
                p.to_owned(),
                "an HTTP rule needs a route, redirect or directResponse",
            );
        }

        let weights: Vec<i32> = rule.route.iter().map(|d| d.weight).collect();
        self.weights(r, &weights, &format!("{p}.route"));
        for (j, dest) in rule.route.iter().enumerate() {
            self.destination(r, &dest.destination, &format!("{p}.route[{j}].destination"));
        }

        if let Some(rewrite) = &rule.rewrite
            && let Some(rr) = &rewrite.uri_regex_rewrite
        {
            self.regex(
                r,
                &rr.pattern,
                &format!("{p}.rewrite.uriRegexRewrite.match"),
            );
        }
        if let Some(t) = &rule.timeout
            && t.is_negative()
        {
            self.error(r, format!("{p}.timeout"), "timeout must not be negative");
        }
        if let Some(retries) = &rule.retries {
            if retries.attempts < 0 {
                self.error(
                    r,
                    format!("{p}.retries.attempts"),
                    "attempts must not be negative",
                );
            }
            self.positive(
                r,
                retries.per_try_timeout,
                &format!("{p}.retries.perTryTimeout"),
            );
        }
        if let Some(fault) = &rule.fault {
            if let Some(delay) = &fault.delay {
                let dp = format!("{p}.fault.delay");
                match delay.fixed_delay {
                    None => self.error(r, format!("{dp}.fixedDelay"), "a delay needs fixedDelay"),
                    Some(d) if d.is_negative() || d.as_std().as_nanos() < 1_000_000 => self.error(
                        r,
                        format!("{dp}.fixedDelay"),
                        "fixedDelay must be at least 1ms",
                    ),
                    Some(_) => {}
                }
                self.percent(r, delay.percentage, &format!("{dp}.percentage.value"));
            }
            if let Some(abort) = &fault.abort {
                let ap = format!("{p}.fault.abort");
                match (abort.http_status, &abort.grpc_status) {
                    (Some(status), _) if !(200..=599).contains(&status) => self.error(
                        r,
                        format!("{ap}.httpStatus"),
                        format!("HTTP status {status} is outside 200..=599"),
                    ),
                    (None, None) => {
                        self.error(r, ap.clone(), "an abort needs httpStatus or grpcStatus")
                    }
                    _ => {}
                }
                if let Some(g) = &abort.grpc_status
                    && crate::model::grpc_code(g).is_none_or(|c| c == 0)
                {
                    self.error(
                        r,
                        format!("{ap}.grpcStatus"),
                        format!("`{g}` is not a gRPC error status name (e.g. UNAVAILABLE)"),
                    );
                }
                self.percent(r, abort.percentage, &format!("{ap}.percentage.value"));
            }
        }
        if let Some(mirror) = &rule.mirror {
            self.destination(r, mirror, &format!("{p}.mirror"));
        }
        self.percent(
            r,
            rule.mirror_percentage,
            &format!("{p}.mirrorPercentage.value"),
        );
        for (k, m) in rule.mirrors.iter().enumerate() {
            self.destination(r, &m.destination, &format!("{p}.mirrors[{k}].destination"));
            self.percent(
                r,
                m.percentage,
                &format!("{p}.mirrors[{k}].percentage.value"),
            );
        }
    }

    /// Weights are relative (Istio ≥ 1.15): none negative, and not all zero when several.
    fn weights(&mut self, r: &Resource, weights: &[i32], p: &str) {
        for (j, w) in weights.iter().enumerate() {
            if *w < 0 {
                self.error(
                    r,
                    format!("{p}[{j}].weight"),
                    format!("weight {w} is negative"),
                );
            }
        }
        if weights.len() > 1 && weights.iter().all(|w| *w == 0) {
            self.error(
                r,
                p.to_owned(),
                "all destinations have weight 0 (weights are relative; give at least one a positive weight)",
            );
        }
    }

    fn destination(&mut self, r: &Resource, dest: &Destination, p: &str) {
        if dest.host.trim().is_empty() {
            self.error(r, format!("{p}.host"), "destination host is empty");
            return;
        }
        let full = fqdn(&dest.host, &r.meta.namespace);
        if let Some(subset) = &dest.subset {
            match self.index.subsets_for(&full) {
                Some(names) if names.contains(subset) => {}
                Some(names) => {
                    let defined: Vec<&str> = names.iter().map(String::as_str).collect();
                    self.error(
                        r,
                        format!("{p}.subset"),
                        format!(
                            "subset `{subset}` of {full} is not defined by any DestinationRule (defined: {}); requests would fail with 503 NC",
                            if defined.is_empty() { "none".to_owned() } else { defined.join(", ") }
                        ),
                    );
                }
                None => self.error(
                    r,
                    format!("{p}.subset"),
                    format!(
                        "subset `{subset}` needs a DestinationRule for {full}, and there is none; requests would fail with 503 NC"
                    ),
                ),
            }
        }
        if !self.index.host_is_known(&dest.host, &full) {
            self.warning(
                r,
                format!("{p}.host"),
                format!(
                    "host {full} is not defined by any ServiceEntry or VirtualService and is not a known service"
                ),
            );
        }
    }

    fn string_match(&mut self, r: &Resource, sm: &StringMatch, p: &str, presence_ok: bool) {
        if sm.set_count() > 1 {
            self.error(r, p.to_owned(), "set only one of exact, prefix, regex");
        }
        if let Some(re) = &sm.regex {
            // `regex: "*"` on a header means "present" in Istio (SEMANTICS 2.2).
            if !(presence_ok && re == "*") {
                self.regex(r, re, &format!("{p}.regex"));
            }
        }
    }

    fn regex(&mut self, r: &Resource, re: &str, p: &str) {
        if let Err(e) = regex::Regex::new(re) {
            let detail = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            self.error(r, p.to_owned(), format!("invalid regex `{re}`: {detail}"));
        }
    }

    fn percent(&mut self, r: &Resource, pct: Option<Percent>, p: &str) {
        if let Some(Percent { value }) = pct
            && !(0.0..=100.0).contains(&value)
        {
            self.error(
                r,
                p.to_owned(),
                format!("percentage {value} is outside 0..=100"),
            );
        }
    }

    /// When set, a duration must be > 0.
    fn positive(&mut self, r: &Resource, d: Option<IstioDuration>, p: &str) {
        if let Some(d) = d
            && (d.is_negative() || d.is_zero())
        {
            self.error(r, p.to_owned(), format!("duration {d} must be positive"));
        }
    }

    // ----- DestinationRule ------------------------------------------------------------------

    fn destination_rule(&mut self, r: &Resource, dr: &DestinationRule) {
        self.rate_limit_annotations(r, None);
        let budget = crate::model::annotations::RETRY_BUDGET_ANNOTATION;
        if let Some(v) = r.meta.annotations.get(budget)
            && let Err(e) = v.parse::<crate::model::annotations::RateRetryBudget>()
        {
            self.error(
                r,
                format!("metadata.annotations[\"{budget}\"]"),
                e.to_string(),
            );
        }
        let algorithm = crate::model::annotations::ALGORITHM_ANNOTATION;
        if let Some(a) = r.meta.annotations.get(algorithm) {
            let field = format!("metadata.annotations[\"{algorithm}\"]");
            let hashing = dr
                .traffic_policy
                .as_ref()
                .and_then(|t| t.load_balancer.as_ref())
                .is_some_and(|l| l.consistent_hash.is_some());
            if a != "PEAK_EWMA" {
                self.error(
                    r,
                    field,
                    format!("unknown algorithm `{a}` (known: PEAK_EWMA)"),
                );
            } else if hashing {
                self.error(r, field, "PEAK_EWMA cannot be combined with consistentHash");
            }
        }
        if dr.host.trim().is_empty() {
            self.error(r, "spec.host", "a DestinationRule needs a host");
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, subset) in dr.subsets.iter().enumerate() {
            let sp = format!("spec.subsets[{i}]");
            if subset.name.is_empty() {
                self.error(r, format!("{sp}.name"), "a subset needs a name");
            } else if let Some(first) = seen.insert(&subset.name, i) {
                self.error(
                    r,
                    format!("{sp}.name"),
                    format!(
                        "subset `{}` is already defined at spec.subsets[{first}]",
                        subset.name
                    ),
                );
            }
            if let Some(tp) = &subset.traffic_policy {
                self.traffic_policy(r, tp, &format!("{sp}.trafficPolicy"));
            }
        }
        if let Some(tp) = &dr.traffic_policy {
            self.traffic_policy(r, tp, "spec.trafficPolicy");
        }
        let host = fqdn(&dr.host, &r.meta.namespace);
        let external = self.index.external_hosts.contains(&host)
            || self
                .index
                .external_hosts
                .contains(&dr.host.to_ascii_lowercase());
        let policies = dr
            .traffic_policy
            .iter()
            .map(|tp| (tp, "spec.trafficPolicy".to_string()))
            .chain(dr.subsets.iter().enumerate().filter_map(|(i, s)| {
                s.traffic_policy
                    .as_ref()
                    .map(|tp| (tp, format!("spec.subsets[{i}].trafficPolicy")))
            }));
        for (tp, p) in policies {
            if let Some(t) = &tp.tls {
                self.client_tls(r, t, external, &format!("{p}.tls"));
            }
            for (k, port) in tp.port_level_settings.iter().enumerate() {
                if let Some(t) = &port.tls {
                    self.client_tls(r, t, external, &format!("{p}.portLevelSettings[{k}].tls"));
                }
            }
        }
    }

    fn traffic_policy(&mut self, r: &Resource, tp: &TrafficPolicy, p: &str) {
        if let Some(b) = &tp.retry_budget {
            let bp = format!("{p}.retryBudget");
            if let Some(pct) = b.percent
                && !(0.0..=100.0).contains(&pct)
            {
                self.error(
                    r,
                    format!("{bp}.percent"),
                    format!("{pct} is outside 0..=100"),
                );
            }
            self.not_negative(r, b.budget_interval, &format!("{bp}.budgetInterval"));
        }
        self.policy_blocks(
            r,
            tp.load_balancer.as_ref(),
            tp.connection_pool.as_ref(),
            tp.outlier_detection.as_ref(),
            p,
        );
        for (k, port) in tp.port_level_settings.iter().enumerate() {
            let pp = format!("{p}.portLevelSettings[{k}]");
            match port.port {
                None => self.error(r, format!("{pp}.port"), "a port-level setting needs a port"),
                Some(sel) if sel.number == 0 || sel.number > 65535 => self.error(
                    r,
                    format!("{pp}.port.number"),
                    format!("port {} is outside 1..=65535", sel.number),
                ),
                Some(_) => {}
            }
            self.policy_blocks(
                r,
                port.load_balancer.as_ref(),
                port.connection_pool.as_ref(),
                port.outlier_detection.as_ref(),
                &pp,
            );
        }
    }

    fn policy_blocks(
        &mut self,
        r: &Resource,
        lb: Option<&LoadBalancerSettings>,
        pool: Option<&ConnectionPoolSettings>,
        od: Option<&OutlierDetection>,
        p: &str,
    ) {
        if let Some(lb) = lb {
            self.load_balancer(r, lb, &format!("{p}.loadBalancer"));
        }
        if let Some(pool) = pool {
            let cp = format!("{p}.connectionPool");
            if let Some(tcp) = &pool.tcp {
                self.positive(r, tcp.connect_timeout, &format!("{cp}.tcp.connectTimeout"));
                self.not_negative(r, tcp.idle_timeout, &format!("{cp}.tcp.idleTimeout"));
            }
            if let Some(http) = &pool.http {
                self.not_negative(r, http.idle_timeout, &format!("{cp}.http.idleTimeout"));
            }
        }
        if let Some(od) = od {
            let op = format!("{p}.outlierDetection");
            for (k, code) in od.outlier_detection_http_error_codes.iter().enumerate() {
                if !(100..=599).contains(code) {
                    self.error(
                        r,
                        format!("{op}.outlierDetectionHttpErrorCodes[{k}]"),
                        format!("{code} is outside 100..=599"),
                    );
                }
            }
            self.positive(r, od.interval, &format!("{op}.interval"));
            self.positive(r, od.base_ejection_time, &format!("{op}.baseEjectionTime"));
            for (name, v) in [
                ("maxEjectionPercent", od.max_ejection_percent),
                ("minHealthPercent", od.min_health_percent),
            ] {
                if let Some(v) = v
                    && !(0..=100).contains(&v)
                {
                    self.error(r, format!("{op}.{name}"), format!("{v} is outside 0..=100"));
                }
            }
        }
    }

    fn not_negative(&mut self, r: &Resource, d: Option<IstioDuration>, p: &str) {
        if let Some(d) = d
            && d.is_negative()
        {
            self.error(
                r,
                p.to_owned(),
                format!("duration {d} must not be negative"),
            );
        }
    }

    fn load_balancer(&mut self, r: &Resource, lb: &LoadBalancerSettings, p: &str) {
        if let Some(w) = &lb.warmup {
            let wp = format!("{p}.warmup");
            self.not_negative(r, w.duration, &format!("{wp}.duration"));
            if let Some(m) = w.minimum_percent
                && !(0.0..=100.0).contains(&m)
            {
                self.error(
                    r,
                    format!("{wp}.minimumPercent"),
                    format!("{m} is outside 0..=100"),
                );
            }
            if let Some(a) = w.aggression
                && !(a.is_finite() && a > 0.0)
            {
                self.error(
                    r,
                    format!("{wp}.aggression"),
                    format!("{a} must be greater than 0"),
                );
            }
        }
        self.not_negative(
            r,
            lb.warmup_duration_secs,
            &format!("{p}.warmupDurationSecs"),
        );
        let Some(ch) = &lb.consistent_hash else {
            return;
        };
        let cp = format!("{p}.consistentHash");
        if lb.simple.is_some() {
            self.error(
                r,
                format!("{p}.simple"),
                "set either simple or consistentHash, not both",
            );
        }
        match ch.key_count() {
            0 => self.error(
                r,
                cp.clone(),
                "set one hash key: httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
            ),
            1 => {}
            n => self.error(
                r,
                cp.clone(),
                format!("{n} hash keys set; set exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName"),
            ),
        }
        if let Some(cookie) = &ch.http_cookie
            && cookie.name.is_empty()
        {
            self.error(
                r,
                format!("{cp}.httpCookie.name"),
                "a hash cookie needs a name",
            );
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            self.error(
                r,
                format!("{cp}.maglev"),
                "set either ringHash or maglev, not both",
            );
        }
        if let Some(size) = ch.maglev.as_ref().and_then(|m| m.table_size)
            && !is_prime(size)
        {
            self.error(
                r,
                format!("{cp}.maglev.tableSize"),
                format!("maglev table size {size} is not prime (default 65537)"),
            );
        }
    }

    // ----- ServiceEntry ---------------------------------------------------------------------

    fn service_entry(&mut self, r: &Resource, se: &ServiceEntry) {
        if se.hosts.is_empty() {
            self.error(r, "spec.hosts", "a ServiceEntry needs at least one host");
        }
        if se.ports.is_empty() {
            self.error(r, "spec.ports", "a ServiceEntry needs at least one port");
        }
        for (i, port) in se.ports.iter().enumerate() {
            let pp = format!("spec.ports[{i}]");
            if port.number == 0 || port.number > 65535 {
                self.error(
                    r,
                    format!("{pp}.number"),
                    format!("port {} is outside 1..=65535", port.number),
                );
            }
            if let Some(proto) = &port.protocol
                && !SERVICE_ENTRY_PROTOCOLS
                    .iter()
                    .any(|known| known.eq_ignore_ascii_case(proto))
            {
                self.error(
                    r,
                    format!("{pp}.protocol"),
                    format!(
                        "unknown protocol `{proto}` (one of {})",
                        SERVICE_ENTRY_PROTOCOLS.join(", ")
                    ),
                );
            }
        }
        if crate::translate::services::pushed_as(se).is_none() {
            let internal = se.location == Some(ServiceLocation::MeshInternal);
            self.warning(
                r,
                "spec.resolution",
                if internal {
                    "a MESH_INTERNAL entry reaches sidecars at fixed addresses: only STATIC \
                     resolution is sent to sidecars; this entry is kept but not pushed"
                } else {
                    "resolution NONE forwards to wherever the app was going, which an explicit \
                     proxy never learns: use STATIC or DNS; this entry is kept but not pushed"
                },
            );
        }
        for (i, h) in se.hosts.iter().enumerate() {
            if h.starts_with('*') {
                self.warning(
                    r,
                    format!("spec.hosts[{i}]"),
                    format!("wildcard host `{h}` is not pushed: sidecars route by exact name"),
                );
            }
        }
        for (i, a) in se.addresses.iter().enumerate() {
            if !is_ip_or_cidr(a.trim()) {
                self.error(
                    r,
                    format!("spec.addresses[{i}]"),
                    format!("`{a}` is not an IP address or a CIDR block"),
                );
            }
        }
        if se.resolution == Some(Resolution::Static) {
            if se.endpoints.is_empty() && se.workload_selector.is_none() {
                self.error(
                    r,
                    "spec.endpoints",
                    "STATIC resolution needs endpoints (or a workloadSelector)",
                );
            }
            for (i, ep) in se.endpoints.iter().enumerate() {
                if !ep.address.starts_with("unix://") && ep.address.parse::<IpAddr>().is_err() {
                    self.error(
                        r,
                        format!("spec.endpoints[{i}].address"),
                        format!(
                            "`{}` is not an IP address, required for STATIC resolution",
                            ep.address
                        ),
                    );
                }
            }
        }
    }

    // ----- Security -------------------------------------------------------------------------

    // ----- Cross-resource -------------------------------------------------------------------

    fn conflicts(&mut self, resources: &[Resource]) {
        let mut vs_hosts: HashMap<String, &Resource> = HashMap::new();
        let mut dr_hosts: HashMap<(String, String), &Resource> = HashMap::new();
        let mut ns_pa: HashMap<&str, &Resource> = HashMap::new();
        let mut mesh_config: Option<&Resource> = None;
        // TCP ports of in-mesh ServiceEntries: explicit-mode sidecars listen on each port
        // for one service only (the first by host name).
        let mut tcp_ports: BTreeMap<u32, Vec<(String, &Resource, usize)>> = BTreeMap::new();
        for r in resources {
            let ns = &r.meta.namespace;
            if let ResourceSpec::ServiceEntry(se) = &r.spec
                && se.location == Some(ServiceLocation::MeshInternal)
            {
                let host = se.hosts.first().map(|h| fqdn(h, ns)).unwrap_or_default();
                for (i, p) in se.ports.iter().enumerate() {
                    let declared = p.protocol.as_deref().or(p.name.as_deref()).unwrap_or("");
                    if crate::translate::services::protocol(declared)
                        == meshlite_xds_proto::v1::Protocol::Tcp
                    {
                        tcp_ports
                            .entry(p.number)
                            .or_default()
                            .push((host.clone(), r, i));
                    }
                }
            }
        }
        for (port, mut claims) in tcp_ports {
            claims.sort_by(|a, b| a.0.cmp(&b.0));
            claims.dedup_by(|a, b| a.0 == b.0);
            if let Some(((winner, _, _), rest)) = claims.split_first() {
                for (host, r, i) in rest {
                    let msg = format!(
                        "TCP port {port} of {host} is also {winner}'s; a sidecar's explicit-mode listener at that port serves {winner} (the first by name), so reach {host} by its address or a static `listen:`"
                    );
                    self.warning(r, format!("spec.ports[{i}].number"), msg);
                }
            }
        }
        for r in resources {
            let ns = &r.meta.namespace;
            match &r.spec {
                ResourceSpec::VirtualService(vs) if applies_to_sidecars(&vs.gateways) => {
                    let mut own = HashSet::new();
                    for (i, h) in vs.hosts.iter().enumerate() {
                        let full = fqdn(h, ns);
                        if !own.insert(full.clone()) {
                            continue;
                        }
                        if let Some(first) = vs_hosts.get(&full) {
                            let msg = format!(
                                "host {full} is already claimed by {} ({}); sidecars would ignore this VirtualService for it",
                                first.label(),
                                first.origin
                            );
                            self.error(r, format!("spec.hosts[{i}]"), msg);
                        } else {
                            vs_hosts.insert(full, r);
                        }
                    }
                }
                ResourceSpec::DestinationRule(dr) if dr.workload_selector.is_none() => {
                    let key = (ns.clone(), fqdn(&dr.host, ns));
                    if let Some(first) = dr_hosts.get(&key) {
                        let msg = format!(
                            "{} ({}) already configures host {} in namespace {ns}; only one would apply",
                            first.label(),
                            first.origin,
                            key.1
                        );
                        self.error(r, "spec.host", msg);
                    } else {
                        dr_hosts.insert(key, r);
                    }
                }
                ResourceSpec::PeerAuthentication(pa) if pa.selector.is_none() => {
                    if let Some(first) = ns_pa.get(ns.as_str()) {
                        let winner = security::oldest(first, r);
                        let msg = format!(
                            "namespace {ns} already has a PeerAuthentication without selector, {} ({}); as in Istio the oldest applies: {}",
                            first.label(),
                            first.origin,
                            winner.label()
                        );
                        self.warning(r, "spec.selector", msg);
                    } else {
                        ns_pa.insert(ns, r);
                    }
                }
                ResourceSpec::MeshConfig(_) => {
                    if let Some(first) = mesh_config {
                        let msg = format!(
                            "a MeshConfig was already read from {} ({}); there can be only one",
                            first.label(),
                            first.origin
                        );
                        self.error(r, "", msg);
                    } else {
                        mesh_config = Some(r);
                    }
                }
                _ => {}
            }
        }
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u64;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod test_support;

/// `10.0.0.1`, `2001:db8::1`, `10.0.0.0/8`, `2001:db8::/32`: what a ServiceEntry's
/// `addresses` may hold.
fn is_ip_or_cidr(a: &str) -> bool {
    let (ip, prefix) = match a.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (a, None),
    };
    match (ip.parse::<IpAddr>(), prefix.map(str::parse::<u8>)) {
        (Ok(_), None) => true,
        (Ok(IpAddr::V4(_)), Some(Ok(p))) => p <= 32,
        (Ok(IpAddr::V6(_)), Some(Ok(p))) => p <= 128,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{check, expect, expect_error, expect_no_error};
    use super::*;

    /// One YAML document of `kind` named `ns/name` with a flow-style `spec`.
    fn res(kind: &str, ns_name: &str, spec: &str) -> String {
        let (ns, name) = ns_name.split_once('/').unwrap_or(("default", ns_name));
        let api = match kind {
            "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication" => {
                "security.istio.io/v1"
            }
            _ => "networking.istio.io/v1",
        };
        format!(
            "---\napiVersion: {api}\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
        )
    }

    const SVC: &str = "{hosts: [api.example.com], ports: [{number: 443, name: tls, protocol: TLS}], resolution: DNS}";

    fn route_vs(route: &str) -> String {
        res(
            "VirtualService",
            "r",
            &format!("{{hosts: [r], http: [{{route: {route}}}]}}"),
        )
    }

    fn http_vs(rule: &str) -> String {
        res(
            "VirtualService",
            "r",
            &format!("{{hosts: [r], http: [{rule}]}}"),
        )
    }

    fn dr_policy(policy: &str) -> String {
        res(
            "DestinationRule",
            "r",
            &format!("{{host: r, trafficPolicy: {policy}}}"),
        )
    }

    #[test]
    fn the_bookinfo_canary_config_is_valid() {
        let report = expect_no_error(&[
            res(
                "VirtualService",
                "bookinfo/reviews",
                "{hosts: [reviews], http: [\
                   {name: jason, match: [{headers: {end-user: {exact: jason}}, uri: {prefix: /reviews}}], \
                    route: [{destination: {host: reviews, subset: v2}}]}, \
                   {name: canary, timeout: 3s, retries: {attempts: 2, perTryTimeout: 1s, retryOn: '5xx,reset'}, \
                    route: [{destination: {host: reviews, subset: v1}, weight: 90}, \
                            {destination: {host: reviews, subset: v3}, weight: 10}]}]}",
            ),
            res(
                "DestinationRule",
                "bookinfo/reviews",
                "{host: reviews.bookinfo.svc.cluster.local, \
                  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}, \
                    connectionPool: {tcp: {maxConnections: 100, connectTimeout: 2s}, http: {http1MaxPendingRequests: 10}}, \
                    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}}, \
                  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}, \
                    {name: v3, labels: {version: v3}, trafficPolicy: {loadBalancer: {consistentHash: {maglev: {tableSize: 65537}, httpHeaderName: x-user}}}}]}",
            ),
            res(
                "PeerAuthentication",
                "bookinfo/default",
                "{mtls: {mode: STRICT}}",
            ),
            res(
                "AuthorizationPolicy",
                "bookinfo/reviews-viewer",
                "{selector: {matchLabels: {app: reviews}}, action: ALLOW, rules: [\
                   {from: [{source: {principals: [cluster.local/ns/bookinfo/sa/productpage]}}], \
                    to: [{operation: {methods: [GET], paths: ['/reviews/*']}}], \
                    when: [{key: 'request.headers[x-tenant]', values: [acme]}, \
                           {key: 'request.auth.claims[groups][0]', notValues: [banned]}]}]}",
            ),
        ]);
        assert_eq!(report.problems.len(), 0, "{:#?}", report.problems);
        let set = report.set.unwrap();
        assert_eq!(set.len(), 4);
        let vs = set
            .virtual_service_for_host("reviews.bookinfo.svc.cluster.local")
            .unwrap();
        assert_eq!(vs.spec.http[1].route[0].weight, 90);
        let dr = set
            .destination_rule_for_host("reviews.bookinfo.svc.cluster.local", "frontend")
            .unwrap();
        assert_eq!(dr.spec.subsets.len(), 3);
        assert_eq!(set.peer_authentications_in("bookinfo").count(), 1);
    }

    #[test]
    fn warmup_must_have_a_sane_curve() {
        let dr = |lb: &str| {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  \
                 name: r\n  namespace: default\nspec: {{host: r, trafficPolicy: {{loadBalancer: {lb}}}}}\n"
            )
        };
        expect_no_error(&[dr(
            "{warmup: {duration: 30s, minimumPercent: 5, aggression: 1.5}}",
        )]);
        expect_error(
            &[dr("{warmup: {duration: 30s, minimumPercent: 101}}")],
            "spec.trafficPolicy.loadBalancer.warmup.minimumPercent",
        );
        expect_error(
            &[dr("{warmup: {duration: 30s, aggression: 0}}")],
            "spec.trafficPolicy.loadBalancer.warmup.aggression",
        );
        expect_error(
            &[dr("{warmupDurationSecs: -5s}")],
            "spec.trafficPolicy.loadBalancer.warmupDurationSecs",
        );
    }

    #[test]
    fn retry_budgets_must_be_within_their_ranges() {
        let dr = |annotations: &str, policy: &str| {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  \
                 name: r\n  namespace: default\n  annotations: {{{annotations}}}\n\
                 spec: {{host: r, trafficPolicy: {policy}}}\n"
            )
        };
        expect_no_error(&[dr(
            "retrybudget.meshlite.io/rate: 'ratio=0.5,minPerSecond=2,ttl=5s'",
            "{retryBudget: {percent: 25, minRetryConcurrency: 1, budgetInterval: 10s}}",
        )]);
        expect_error(
            &[dr("retrybudget.meshlite.io/rate: 'ratio=2000'", "{}")],
            "metadata.annotations[\"retrybudget.meshlite.io/rate\"]",
        );
        expect_error(
            &[dr("", "{retryBudget: {percent: 120}}")],
            "spec.trafficPolicy.retryBudget.percent",
        );
        expect_error(
            &[dr("", "{retryBudget: {budgetInterval: -1s}}")],
            "spec.trafficPolicy.retryBudget.budgetInterval",
        );
    }

    #[test]
    fn rate_limit_annotations_must_parse_and_name_a_route() {
        let annotated = |kind: &str, annotation: &str, spec: &str| {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata:\n  name: r\n  \
                 namespace: default\n  annotations: {{{annotation}}}\nspec: {spec}\n"
            )
        };
        expect_no_error(&[annotated(
            "DestinationRule",
            "ratelimit.meshlite.io/local: 'maxTokens=10,fillInterval=1s'",
            "{host: r}",
        )]);
        let p = expect_error(
            &[annotated(
                "DestinationRule",
                "ratelimit.meshlite.io/local: 'maxTokens=0,fillInterval=1s'",
                "{host: r}",
            )],
            "metadata.annotations[\"ratelimit.meshlite.io/local\"]",
        );
        assert!(p.message.contains("at least 1"), "{}", p.message);
        let route = "{hosts: [r], http: [{name: api, route: [{destination: {host: r}}]}]}";
        expect_no_error(&[annotated(
            "VirtualService",
            "ratelimit.meshlite.io/local.api: 'maxTokens=1,fillInterval=1m'",
            route,
        )]);
        let p = expect_error(
            &[annotated(
                "VirtualService",
                "ratelimit.meshlite.io/local.web: 'maxTokens=1,fillInterval=1m'",
                route,
            )],
            "metadata.annotations[\"ratelimit.meshlite.io/local.web\"]",
        );
        assert!(p.message.contains("no http route is named `web`"));
        let algorithm = "metadata.annotations[\"loadbalancer.meshlite.io/algorithm\"]";
        expect_no_error(&[annotated(
            "DestinationRule",
            "loadbalancer.meshlite.io/algorithm: PEAK_EWMA",
            "{host: r}",
        )]);
        expect_error(
            &[annotated(
                "DestinationRule",
                "loadbalancer.meshlite.io/algorithm: FASTEST",
                "{host: r}",
            )],
            algorithm,
        );
        expect_error(
            &[annotated(
                "DestinationRule",
                "loadbalancer.meshlite.io/algorithm: PEAK_EWMA",
                "{host: r, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}}",
            )],
            algorithm,
        );
    }

    #[test]
    fn weights_are_relative_but_not_negative_nor_all_zero() {
        expect_no_error(&[route_vs(
            "[{destination: {host: r}, weight: 1}, {destination: {host: r}, weight: 3}]",
        )]);
        let p = expect_error(
            &[route_vs(
                "[{destination: {host: r}, weight: -1}, {destination: {host: r}, weight: 101}]",
            )],
            "spec.http[0].route[0].weight",
        );
        assert!(p.message.contains("negative"));
        expect_error(
            &[route_vs(
                "[{destination: {host: r}}, {destination: {host: r}}]",
            )],
            "spec.http[0].route",
        );
        expect_error(
            &[res(
                "VirtualService",
                "t",
                "{hosts: [t], tcp: [{route: [{destination: {host: t}, weight: 0}, {destination: {host: t}, weight: 0}]}]}",
            )],
            "spec.tcp[0].route",
        );
    }

    #[test]
    fn tcp_matches_are_checked_and_tcp_rules_are_enforced_not_warned_about() {
        let vs = |spec: &str| res("VirtualService", "default/db", spec);
        expect_error(
            &[vs(
                "{hosts: [db], tcp: [{match: [{destinationSubnets: [10.0.0.0/99]}], route: [{destination: {host: db}}]}]}",
            )],
            "spec.tcp[0].match[0].destinationSubnets[0]",
        );
        expect_error(
            &[vs(
                "{hosts: [db], tcp: [{match: [{port: 70000}], route: [{destination: {host: db}}]}]}",
            )],
            "spec.tcp[0].match[0].port",
        );
        let ok = expect_no_error(&[vs(
            "{hosts: [db], tcp: [{match: [{port: 5432, destinationSubnets: [10.1.0.0/16, 10.2.0.1]}], \
             route: [{destination: {host: db}, weight: 80}, {destination: {host: db}, weight: 20}]}]}",
        )]);
        assert!(
            !ok.problems.iter().any(|p| p
                .field
                .as_deref()
                .is_some_and(|f| f.starts_with("spec.tcp"))),
            "{:#?}",
            ok.problems
        );
        let gateway_only = check(&[vs(
            "{hosts: [db], tcp: [{match: [{gateways: [ingress]}], route: [{destination: {host: db}}]}]}",
        )]);
        assert!(
            gateway_only
                .problems
                .iter()
                .any(|p| p.field.as_deref() == Some("spec.tcp[0].match[0].gateways")),
            "{:#?}",
            gateway_only.problems
        );
    }

    #[test]
    fn two_mesh_services_on_one_tcp_port_are_warned_about() {
        let entry = |name: &str| {
            res(
                "ServiceEntry",
                &format!("default/{name}"),
                &format!(
                    "{{hosts: [{name}.internal], location: MESH_INTERNAL, resolution: STATIC, \
                     ports: [{{number: 5432, name: tcp-pg}}], endpoints: [{{address: 10.0.0.1}}]}}"
                ),
            )
        };
        let report = check(&[entry("zeta"), entry("alpha")]);
        let p = expect(&report, Severity::Warning, "spec.ports[0].number");
        assert!(p.message.contains("zeta.internal"), "{}", p.message);
        assert!(
            p.message.contains("is also alpha.internal"),
            "{}",
            p.message
        );
    }

    #[test]
    fn a_route_to_an_undefined_subset_is_an_error() {
        let dr = res(
            "DestinationRule",
            "shop/reviews",
            "{host: reviews, subsets: [{name: v1}]}",
        );
        let vs = |subset: &str| {
            res(
                "VirtualService",
                "shop/reviews",
                &format!(
                    "{{hosts: [reviews], http: [{{route: [{{destination: {{host: reviews, subset: {subset}}}}}]}}]}}"
                ),
            )
        };
        expect_no_error(&[dr.clone(), vs("v1")]);
        let p = expect_error(&[dr, vs("v9")], "spec.http[0].route[0].destination.subset");
        assert!(p.message.contains("defined: v1"), "{p}");
        assert_eq!(p.resource.as_deref(), Some("VirtualService shop/reviews"));
        // No DestinationRule at all.
        expect_error(&[vs("v1")], "spec.http[0].route[0].destination.subset");
        // A DR for the same short name in another namespace is another host.
        expect_error(
            &[
                res(
                    "DestinationRule",
                    "other/reviews",
                    "{host: reviews, subsets: [{name: v1}]}",
                ),
                vs("v1"),
            ],
            "spec.http[0].route[0].destination.subset",
        );
    }

    #[test]
    fn duplicate_subset_names_are_an_error() {
        expect_error(
            &[res(
                "DestinationRule",
                "r",
                "{host: r, subsets: [{name: v1}, {name: v1}]}",
            )],
            "spec.subsets[1].name",
        );
    }

    #[test]
    fn two_virtual_services_for_one_host_are_an_error() {
        let p = expect_error(
            &[
                res(
                    "VirtualService",
                    "shop/a",
                    "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}",
                ),
                res(
                    "VirtualService",
                    "ops/b",
                    "{hosts: [x, reviews.shop.svc.cluster.local], http: [{route: [{destination: {host: reviews.shop}}]}]}",
                ),
            ],
            "spec.hosts[1]",
        );
        assert_eq!(p.resource.as_deref(), Some("VirtualService ops/b"));
        assert!(p.message.contains("VirtualService shop/a"), "{p}");
        // A VS bound only to a gateway does not compete with the sidecar one.
        expect_no_error(&[
            res(
                "VirtualService",
                "shop/a",
                "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}",
            ),
            res(
                "VirtualService",
                "shop/gw",
                "{hosts: [reviews], gateways: [ingress], http: [{route: [{destination: {host: reviews}}]}]}",
            ),
        ]);
    }

    #[test]
    fn two_destination_rules_for_one_host_in_a_namespace_are_an_error() {
        let dr = |ns_name: &str| {
            res(
                "DestinationRule",
                ns_name,
                "{host: reviews.shop.svc.cluster.local}",
            )
        };
        expect_error(&[dr("shop/a"), dr("shop/b")], "spec.host");
        expect_no_error(&[dr("shop/a"), dr("frontend/b")]);
    }

    #[test]
    fn two_namespace_wide_peer_authentications_conflict() {
        let pa = |ns_name: &str| res("PeerAuthentication", ns_name, "{mtls: {mode: STRICT}}");
        let report = check(&[pa("shop/a"), pa("shop/b")]);
        assert!(!report.has_errors(), "Istio applies the oldest: a warning");
        let w = expect(&report, Severity::Warning, "spec.selector");
        assert!(w.message.contains("oldest"), "{w}");
        expect_no_error(&[
            pa("shop/a"),
            pa("other/b"),
            res(
                "PeerAuthentication",
                "shop/db",
                "{selector: {matchLabels: {app: db}}, mtls: {mode: PERMISSIVE}}",
            ),
        ]);
    }

    #[test]
    fn port_level_mtls_needs_a_selector() {
        expect_error(
            &[res(
                "PeerAuthentication",
                "shop/a",
                "{portLevelMtls: {8080: {mode: DISABLE}}}",
            )],
            "spec.portLevelMtls",
        );
    }

    #[test]
    fn redirect_rules_are_checked() {
        expect_no_error(&[http_vs("{redirect: {uri: /new, redirectCode: 308}}")]);
        expect_error(
            &[http_vs(
                "{redirect: {uri: /new}, route: [{destination: {host: r}}]}",
            )],
            "spec.http[0].redirect",
        );
        expect_error(
            &[http_vs("{redirect: {uri: /new}, rewrite: {uri: /x}}")],
            "spec.http[0].redirect",
        );
        expect_error(
            &[http_vs("{redirect: {uri: /new, redirectCode: 300}}")],
            "spec.http[0].redirect.redirectCode",
        );
        expect_error(&[http_vs("{name: nothing}")], "spec.http[0]");
    }

    #[test]
    fn fault_injection_is_checked() {
        let rule = |fault: &str| {
            http_vs(&format!(
                "{{fault: {fault}, route: [{{destination: {{host: r}}}}]}}"
            ))
        };
        expect_no_error(&[rule(
            "{delay: {fixedDelay: 5s, percentage: {value: 0.1}}, abort: {httpStatus: 503, percentage: {value: 100}}}",
        )]);
        expect_error(
            &[rule("{abort: {httpStatus: 503, percentage: {value: 150}}}")],
            "spec.http[0].fault.abort.percentage.value",
        );
        expect_error(
            &[rule("{delay: {fixedDelay: 1s, percentage: {value: -1}}}")],
            "spec.http[0].fault.delay.percentage.value",
        );
        expect_error(
            &[rule("{abort: {httpStatus: 700, percentage: {value: 1}}}")],
            "spec.http[0].fault.abort.httpStatus",
        );
        expect_error(
            &[rule("{abort: {httpStatus: 100, percentage: {value: 1}}}")],
            "spec.http[0].fault.abort.httpStatus",
        );
        expect_error(
            &[rule("{abort: {percentage: {value: 1}}}")],
            "spec.http[0].fault.abort",
        );
        expect_error(
            &[rule("{delay: {fixedDelay: 0s}}")],
            "spec.http[0].fault.delay.fixedDelay",
        );
    }

    #[test]
    fn route_durations_must_not_be_negative() {
        let rule = |extra: &str| {
            http_vs(&format!(
                "{{{extra}, route: [{{destination: {{host: r}}}}]}}"
            ))
        };
        expect_no_error(&[rule("timeout: 0s")]);
        expect_error(&[rule("timeout: -1s")], "spec.http[0].timeout");
        expect_error(
            &[rule("retries: {attempts: 3, perTryTimeout: 0s}")],
            "spec.http[0].retries.perTryTimeout",
        );
        expect_error(
            &[rule("retries: {attempts: -1}")],
            "spec.http[0].retries.attempts",
        );
    }

    #[test]
    fn outlier_detection_is_checked() {
        expect_error(
            &[dr_policy("{outlierDetection: {interval: 0s}}")],
            "spec.trafficPolicy.outlierDetection.interval",
        );
        expect_error(
            &[dr_policy("{outlierDetection: {baseEjectionTime: -5s}}")],
            "spec.trafficPolicy.outlierDetection.baseEjectionTime",
        );
        expect_error(
            &[dr_policy("{outlierDetection: {maxEjectionPercent: 150}}")],
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        );
        expect_error(
            &[dr_policy(
                "{portLevelSettings: [{port: {number: 80}, outlierDetection: {minHealthPercent: -1}}]}",
            )],
            "spec.trafficPolicy.portLevelSettings[0].outlierDetection.minHealthPercent",
        );
        expect_error(
            &[dr_policy("{connectionPool: {tcp: {connectTimeout: 0s}}}")],
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
        );
    }

    #[test]
    fn consistent_hash_is_checked() {
        expect_error(
            &[dr_policy(
                "{loadBalancer: {consistentHash: {httpHeaderName: x-user, useSourceIp: true}}}",
            )],
            "spec.trafficPolicy.loadBalancer.consistentHash",
        );
        expect_error(
            &[dr_policy(
                "{loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65536}}}}",
            )],
            "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
        );
        expect_error(
            &[res(
                "DestinationRule",
                "r",
                "{host: r, subsets: [{name: v1, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}}}}]}",
            )],
            "spec.subsets[0].trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
        );
        expect_no_error(&[dr_policy(
            "{loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}, maglev: {tableSize: 65537}}}}",
        )]);
    }

    #[test]
    fn bad_regexes_are_errors() {
        let matching = |m: &str| {
            http_vs(&format!(
                "{{match: [{m}], route: [{{destination: {{host: r}}}}]}}"
            ))
        };
        expect_error(
            &[matching("{uri: {regex: '/api/(v1'}}")],
            "spec.http[0].match[0].uri.regex",
        );
        expect_error(
            &[matching("{headers: {x-id: {regex: '[0-9'}}}")],
            "spec.http[0].match[0].headers.x-id.regex",
        );
        expect_error(
            &[matching("{uri: {exact: /a, prefix: /b}}")],
            "spec.http[0].match[0].uri",
        );
        // `regex: "*"` on a header means "present".
        expect_no_error(&[matching(
            "{headers: {x-id: {regex: '*'}}, uri: {regex: '/api/v[0-9]+/.*'}}",
        )]);
        expect_error(
            &[http_vs(
                "{rewrite: {uriRegexRewrite: {match: '(', rewrite: /}}, route: [{destination: {host: r}}]}",
            )],
            "spec.http[0].rewrite.uriRegexRewrite.match",
        );
    }

    #[test]
    fn request_authentications_are_checked_as_istio_does() {
        const JWKS: &str = r#"'{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}'"#;
        let ra = |spec: &str| res("RequestAuthentication", "shop/jwt", spec);
        let report = expect_no_error(&[ra(&format!(
            "{{selector: {{matchLabels: {{app: api}}}}, jwtRules: [{{issuer: a, jwks: {JWKS}, \
             fromHeaders: [{{name: x-jwt, prefix: 'Bearer '}}], outputClaimToHeaders: \
             [{{header: x-tenant, claim: tenant}}], timeout: 2s}}, \
             {{issuer: b, jwksUri: 'https://b.example/keys'}}]}}"
        ))]);
        assert_eq!(report.warnings().count(), 0, "{:#?}", report.problems);
        let set = report.set.unwrap();
        assert_eq!(set.request_authentications.len(), 1);
        assert_eq!(
            set.jwks_uris().get("https://b.example/keys"),
            Some(&std::time::Duration::from_secs(5)),
            "Istio's default fetch timeout"
        );
        for (spec, field) in [
            (format!("{{jwtRules: [{{jwks: {JWKS}}}]}}"), "spec.jwtRules[0].issuer"),
            ("{jwtRules: [{issuer: a}]}".to_string(), "spec.jwtRules[0].jwksUri"),
            (
                format!("{{jwtRules: [{{issuer: a, jwks: {JWKS}, jwksUri: 'https://x/k'}}]}}"),
                "spec.jwtRules[0].jwks",
            ),
            ("{jwtRules: [{issuer: a, jwks: 'not json'}]}".to_string(), "spec.jwtRules[0].jwks"),
            ("{jwtRules: [{issuer: a, jwksUri: 'file:///k'}]}".to_string(), "spec.jwtRules[0].jwksUri"),
            (
                "{jwtRules: [{issuer: a, jwksUri: 'https://x/k', fromHeaders: [{name: 'bad name'}]}]}"
                    .to_string(),
                "spec.jwtRules[0].fromHeaders[0].name",
            ),
            (
                "{jwtRules: [{issuer: a, jwksUri: 'https://x/k', outputPayloadToHeader: ''}]}"
                    .to_string(),
                "spec.jwtRules[0].outputPayloadToHeader",
            ),
            (
                "{jwtRules: [{issuer: a, jwksUri: 'https://x/k', audiences: ['']}]}".to_string(),
                "spec.jwtRules[0].audiences[0]",
            ),
            (
                "{jwtRules: [{issuer: a, jwksUri: 'https://x/k', fromParams: ['']}]}".to_string(),
                "spec.jwtRules[0].fromParams[0]",
            ),
            (
                "{selector: {matchLabels: {app: a}}, targetRefs: [{kind: Gateway, name: g}]}"
                    .to_string(),
                "spec.targetRefs",
            ),
        ] {
            let e = expect_error(&[ra(&spec)], field);
            assert!(e.to_string().contains("RequestAuthentication shop/jwt"), "{e}");
        }
        let e = expect_error(
            &[ra("{jwtRules: [{issuer: a}]}")],
            "spec.jwtRules[0].jwksUri",
        );
        assert!(e.message.contains("OpenID discovery"), "{e}");
        // One issuer twice for the same workloads warns.
        let report = expect_no_error(&[
            ra(
                "{jwtRules: [{issuer: a, jwksUri: 'https://x/k'}, {issuer: a, jwksUri: 'https://y/k'}]}",
            ),
            res(
                "RequestAuthentication",
                "istio-system/mesh",
                "{jwtRules: [{issuer: a, jwksUri: 'https://x/k'}]}",
            ),
            res(
                "RequestAuthentication",
                "other/elsewhere",
                "{selector: {matchLabels: {app: b}}, jwtRules: [{issuer: c, jwksUri: 'https://x/k'}]}",
            ),
        ]);
        expect(&report, Severity::Warning, "spec.jwtRules[1].issuer");
        let across = expect(&report, Severity::Warning, "spec.jwtRules[0].issuer");
        assert!(
            across.message.contains("RequestAuthentication shop/jwt"),
            "{across}"
        );
        assert_eq!(
            across.resource.as_deref(),
            Some("RequestAuthentication istio-system/mesh")
        );
        assert_eq!(report.warnings().count(), 2, "{:#?}", report.problems);
        let gateway = expect_no_error(&[ra("{targetRefs: [{kind: Gateway, name: g}]}")]);
        expect(&gateway, Severity::Warning, "spec.targetRefs");
    }

    #[test]
    fn ext_authz_provider_options_are_checked_as_the_sidecars_read_them() {
        let mesh = |http: &str| {
            format!(
                "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n\
                 metadata: {{name: m}}\nspec:\n  meshConfig:\n    extensionProviders:\n    \
                 - name: oauth\n      envoyExtAuthzHttp: {{service: oauth.example.com, port: 80, {http}}}\n"
            )
        };
        let p = "extensionProviders[0].envoyExtAuthzHttp";
        for (http, field) in [
            (
                "includeRequestHeadersInCheck: ['x-*-id']",
                format!("{p}.includeRequestHeadersInCheck[0]"),
            ),
            (
                "headersToUpstreamOnAllow: ['']",
                format!("{p}.headersToUpstreamOnAllow[0]"),
            ),
            (
                "includeAdditionalHeadersInCheck: {'bad header': x}",
                format!("{p}.includeAdditionalHeadersInCheck[bad header]"),
            ),
            ("pathPrefix: check", format!("{p}.pathPrefix")),
            (
                "includeRequestBodyInCheck: {maxRequestBytes: 0}",
                format!("{p}.includeRequestBodyInCheck.maxRequestBytes"),
            ),
        ] {
            expect_error(&[mesh(http)], &field);
        }
        let report = expect_no_error(&[mesh(
            "pathPrefix: /check, includeRequestHeadersInCheck: ['x-user-*', cookie], \
             includeRequestBodyInCheck: {maxRequestBytes: 1048576}",
        )]);
        let w = expect(
            &report,
            Severity::Warning,
            &format!("{p}.includeRequestBodyInCheck.maxRequestBytes"),
        );
        assert!(w.message.contains("65536"), "{w}");
    }

    #[test]
    fn outbound_traffic_policy_takes_istios_modes_only() {
        let mesh = |mode: &str| {
            format!(
                "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n\
                 metadata: {{name: m}}\nspec:\n  meshConfig:\n    outboundTrafficPolicy: {{mode: {mode}}}\n"
            )
        };
        expect_no_error(&[mesh("REGISTRY_ONLY")]);
        expect_no_error(&[mesh("ALLOW_ANY")]);
        let e = expect_error(
            &[mesh("SOMETIMES")],
            "spec.meshConfig.outboundTrafficPolicy.mode",
        );
        assert!(e.message.contains("REGISTRY_ONLY"), "{e:?}");
    }

    #[test]
    fn authorization_policies_are_checked() {
        expect_error(
            &[res(
                "AuthorizationPolicy",
                "ext",
                "{action: CUSTOM, rules: [{}]}",
            )],
            "spec.provider",
        );
        let custom = res(
            "AuthorizationPolicy",
            "ext",
            "{action: CUSTOM, provider: {name: opa}, rules: [{}]}",
        );
        expect_error(std::slice::from_ref(&custom), "spec.provider.name");
        let mesh = "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n\
            metadata: {name: m}\nspec:\n  meshConfig:\n    extensionProviders:\n    - name: opa\n      \
            envoyExtAuthzGrpc: {service: opa.policy.svc.cluster.local, port: 9191}\n"
            .to_string();
        expect_no_error(&[mesh, custom]);
        let ap = |spec: &str| res("AuthorizationPolicy", "p", spec);
        for (spec, field) in [
            (
                "{rules: [{to: [{operation: {paths: ['/a*b']}}]}]}",
                "spec.rules[0].to[0].operation.paths[0]",
            ),
            (
                "{rules: [{to: [{operation: {paths: ['/a/{**}/b']}}]}]}",
                "spec.rules[0].to[0].operation.paths[0]",
            ),
            (
                "{rules: [{to: [{operation: {ports: ['http']}}]}]}",
                "spec.rules[0].to[0].operation.ports[0]",
            ),
            (
                "{rules: [{from: [{source: {ipBlocks: ['10.0.0.0/99']}}]}]}",
                "spec.rules[0].from[0].source.ipBlocks[0]",
            ),
            (
                "{rules: [{from: [{source: {serviceAccounts: ['ns/*']}}]}]}",
                "spec.rules[0].from[0].source.serviceAccounts[0]",
            ),
            (
                "{rules: [{when: [{key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: [x]}]}]}",
                "spec.rules[0].when[0].key",
            ),
            (
                "{rules: [{when: [{key: source.ip, values: ['nope']}]}]}",
                "spec.rules[0].when[0].values[0]",
            ),
            (
                "{selector: {matchLabels: {app: a}}, targetRefs: [{kind: Gateway, name: g}]}",
                "spec.targetRefs",
            ),
        ] {
            expect_error(&[ap(spec)], field);
        }
        let report = check(&[ap(
            "{action: DENY, rules: [{to: [{operation: {methods: [POST], paths: ['/admin']}}]}]}",
        )]);
        assert!(!report.has_errors(), "{:#?}", report.problems);
        let w = expect(&report, Severity::Warning, "spec.rules[0]");
        assert!(w.message.contains("ports"), "{w}");
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.message.contains("`/admin*`")),
            "{:#?}",
            report.problems
        );
        expect_error(
            &[res(
                "AuthorizationPolicy",
                "a",
                "{rules: [{when: [{key: request.header, values: [x]}]}]}",
            )],
            "spec.rules[0].when[0].key",
        );
        expect_error(
            &[res(
                "AuthorizationPolicy",
                "a",
                "{rules: [{when: [{key: source.ip}]}]}",
            )],
            "spec.rules[0].when[0]",
        );
        expect_error(
            &[res(
                "AuthorizationPolicy",
                "a",
                "{action: DENY, rules: [{from: [{source: {serviceAccounts: [shop/web], namespaces: [shop]}}]}]}",
            )],
            "spec.rules[0].from[0].source.serviceAccounts",
        );
    }

    #[test]
    fn service_entry_addresses_are_ips_or_cidrs() {
        expect_no_error(&[res(
            "ServiceEntry",
            "api",
            "{hosts: [api.example.com], addresses: [10.1.2.3, 10.0.0.0/8, '2001:db8::/32'], \
              ports: [{number: 443, name: tls, protocol: TLS}], resolution: DNS}",
        )]);
        for bad in ["api.example.com", "10.0.0.0/33", "10.0.0.1/x"] {
            expect_error(
                &[res(
                    "ServiceEntry",
                    "api",
                    &format!(
                        "{{hosts: [api.example.com], addresses: ['{bad}'], \
                          ports: [{{number: 443, name: tls, protocol: TLS}}], resolution: DNS}}"
                    ),
                )],
                "spec.addresses[0]",
            );
        }
    }

    #[test]
    fn service_entries_are_checked() {
        expect_no_error(&[res("ServiceEntry", "api", SVC)]);
        expect_error(
            &[res(
                "ServiceEntry",
                "se",
                "{ports: [{number: 80, protocol: HTTP}]}",
            )],
            "spec.hosts",
        );
        expect_error(
            &[res("ServiceEntry", "se", "{hosts: [a.example.com]}")],
            "spec.ports",
        );
        expect_error(
            &[res(
                "ServiceEntry",
                "se",
                "{hosts: [a.example.com], ports: [{number: 80, protocol: UDP}]}",
            )],
            "spec.ports[0].protocol",
        );
        expect_no_error(&[res(
            "ServiceEntry",
            "se",
            "{hosts: [a.example.com], ports: [{number: 80, protocol: http}], resolution: STATIC, \
              endpoints: [{address: 10.0.0.1}, {address: 'fd00::1'}]}",
        )]);
        expect_error(
            &[res(
                "ServiceEntry",
                "se",
                "{hosts: [a.example.com], ports: [{number: 80, protocol: HTTP}], resolution: STATIC}",
            )],
            "spec.endpoints",
        );
        expect_error(
            &[res(
                "ServiceEntry",
                "se",
                "{hosts: [a.example.com], ports: [{number: 80, protocol: HTTP}], resolution: STATIC, \
                  endpoints: [{address: 10.0.0.1}, {address: db.example.com}]}",
            )],
            "spec.endpoints[1].address",
        );
    }

    #[test]
    fn service_entries_sidecars_cannot_send_to_are_kept_with_a_warning() {
        let report = check(&[
            res(
                "ServiceEntry",
                "none",
                "{hosts: [a.example.com], ports: [{number: 80, protocol: HTTP}]}",
            ),
            res(
                "ServiceEntry",
                "vm-dns",
                "{hosts: [vm.example.com], location: MESH_INTERNAL, resolution: DNS, \
                  ports: [{number: 80, protocol: HTTP}]}",
            ),
            res(
                "ServiceEntry",
                "wild",
                "{hosts: ['*.example.org'], resolution: DNS, ports: [{number: 80, protocol: HTTP}]}",
            ),
        ]);
        assert!(!report.has_errors(), "{:#?}", report.problems);
        let none = expect(&report, Severity::Warning, "spec.resolution");
        assert!(none.message.contains("not pushed"), "{none}");
        expect(&report, Severity::Warning, "spec.hosts[0]");
        assert_eq!(report.warnings().count(), 3, "{:#?}", report.problems);
    }

    #[test]
    fn unknown_destination_hosts_only_warn() {
        let vs = res(
            "VirtualService",
            "shop/front",
            "{hosts: [front], http: [{route: [{destination: {host: ratings}}]}, \
              {route: [{destination: {host: api.example.com}}]}]}",
        );
        let report = check(&[vs.clone(), res("ServiceEntry", "api", SVC)]);
        assert!(!report.has_errors(), "{:#?}", report.problems);
        let w = expect(
            &report,
            Severity::Warning,
            "spec.http[0].route[0].destination.host",
        );
        assert!(w.message.contains("ratings.shop.svc.cluster.local"), "{w}");
        assert_eq!(report.warnings().count(), 1, "{:#?}", report.problems);

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vs.yaml"), vs).unwrap();
        let known: HashSet<String> = [
            "ratings.shop.svc.cluster.local".to_owned(),
            "api.example.com".to_owned(),
        ]
        .into_iter()
        .collect();
        let report = check_dir_with_hosts(dir.path(), &known);
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
    }

    #[test]
    fn loader_problems_reach_the_report() {
        let report = check(&[
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: c}\n".to_owned(),
            route_vs("[{destination: {host: r}, weight: \"ten\"}]"),
        ]);
        assert!(report.has_errors());
        expect(&report, Severity::Warning, "kind");
        let e = expect(&report, Severity::Error, "spec.http[0].route[0].weight");
        assert_eq!(e.document, Some(2));
        assert!(
            e.to_string()
                .contains("mesh.yaml:2: error: VirtualService default/r"),
            "{e}"
        );
    }

    #[test]
    fn hosts_are_completed_with_the_namespace() {
        assert_eq!(fqdn("reviews", "shop"), "reviews.shop.svc.cluster.local");
        assert_eq!(
            fqdn("reviews.prod", "shop"),
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(
            fqdn("reviews.prod.svc", "shop"),
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(
            fqdn("reviews.prod.svc.cluster.local", "shop"),
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(fqdn("api.eu.example.com", "shop"), "api.eu.example.com");
        assert_eq!(fqdn("*.example.com", "shop"), "*.example.com");
        assert_eq!(fqdn("*", "shop"), "*");
        assert_eq!(fqdn("Reviews", "shop"), "reviews.shop.svc.cluster.local");
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(2) && is_prime(5_000_011));
        assert!(!is_prime(65536) && !is_prime(1) && !is_prime(0) && !is_prime(9));
    }

    #[test]
    fn a_proxy_stats_matcher_regexp_that_does_not_compile_is_refused() {
        let mesh = |regexps: &str| {
            format!(
                "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n\
                 metadata: {{name: m}}\nspec:\n  meshConfig:\n    defaultConfig:\n      \
                 proxyStatsMatcher:\n        inclusionSuffixes: [upstream_rq_retry]\n        \
                 inclusionRegexps: {regexps}\n"
            )
        };
        expect_no_error(&[mesh("['.*outlier_detection.*', '.*circuit_breakers.*']")]);
        expect_error(
            &[mesh("['.*outlier_detection.*', '(']")],
            "defaultConfig.proxyStatsMatcher.inclusionRegexps[1]",
        );
    }
}
