//! Checks of the security resources (SEMANTICS 3-5): what istiod's webhook rejects is an
//! error; what Istio silently does in a surprising way is a warning that says so.

use crate::model::{
    AccessLogEncoding, AuthorizationPolicy, AuthzAction, BUILT_IN_ACCESS_LOG_PROVIDER, JwtRule,
    LogFormat, MeshConfig, PeerAuthentication, ROOT_NAMESPACE, RequestAuthentication, Rule,
    WorkloadSelector,
};
use crate::source::{Resource, ResourceSpec};

use super::Checker;

/// Condition keys without brackets Istio accepts (SEMANTICS 4.2).
const WHEN_KEYS: [&str; 12] = [
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "source.trustDomain",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

/// The most request body bytes a sidecar buffers for an external authorizer (the proxy's
/// replay bound, 64 KiB).
const MAX_BODY_IN_CHECK: u32 = 64 * 1024;

/// Of two resources of one scope, the one Istio applies: the oldest (see
/// [`crate::model::ObjectMeta::age_key`]).
pub(super) fn oldest<'r>(a: &'r Resource, b: &'r Resource) -> &'r Resource {
    if b.meta.age_key() < a.meta.age_key() {
        b
    } else {
        a
    }
}

/// What is wrong with a value in Istio's string forms, if anything.
fn string_form(v: &str) -> Option<&'static str> {
    if v.is_empty() {
        return Some("an empty value matches nothing");
    }
    let body = v
        .strip_suffix('*')
        .or_else(|| v.strip_prefix('*'))
        .unwrap_or(v);
    body.contains('*')
        .then_some("`*` may only start or end a value (Istio rejects infix wildcards)")
}

/// What is wrong with a path value (string forms, or a `{*}`/`{**}` template).
fn path_form(v: &str) -> Option<&'static str> {
    if !v.contains("{*}") && !v.contains("{**}") {
        return string_form(v);
    }
    let Some(rest) = v.strip_prefix('/') else {
        return Some("a path template starts with `/`");
    };
    let segs: Vec<&str> = rest.split('/').collect();
    for (i, s) in segs.iter().enumerate() {
        match *s {
            "{*}" => {}
            "{**}" if i + 1 == segs.len() => {}
            "{**}" => return Some("`{**}` must be the last segment"),
            lit if lit.contains(['{', '}', '*']) => {
                return Some("`{*}` and `{**}` must be whole segments");
            }
            _ => {}
        }
    }
    None
}

fn cidr_form(v: &str) -> Option<&'static str> {
    let (addr, bits) = match v.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (v, None),
    };
    let Ok(ip) = addr.parse::<std::net::IpAddr>() else {
        return Some("not an IP address or CIDR block");
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match bits.map(str::parse::<u8>) {
        None => None,
        Some(Ok(b)) if b <= max => None,
        Some(_) => Some("the prefix length is out of range"),
    }
}

fn port_form(v: &str) -> Option<&'static str> {
    match v.parse::<u16>() {
        Ok(p) if p > 0 => None,
        _ => Some("not a port number (1-65535)"),
    }
}

/// Whether `key` is a condition key Istio accepts.
fn known_when_key(key: &str) -> bool {
    if WHEN_KEYS.contains(&key) {
        return true;
    }
    if let Some(rest) = key.strip_prefix("request.headers") {
        return bracket_groups(rest) == Some(1);
    }
    if let Some(rest) = key.strip_prefix("request.auth.claims") {
        return bracket_groups(rest).is_some_and(|n| n >= 1);
    }
    false
}

/// Counts `[x]` groups making up all of `s` (each non-empty); `None` if malformed.
fn bracket_groups(mut s: &str) -> Option<usize> {
    let mut n = 0;
    while !s.is_empty() {
        let inner = s.strip_prefix('[')?;
        let end = inner.find(']')?;
        if end == 0 || inner[..end].contains('[') {
            return None;
        }
        s = &inner[end + 1..];
        n += 1;
    }
    Some(n)
}

/// The form check a condition's values get, by key.
fn when_form(key: &str) -> fn(&str) -> Option<&'static str> {
    match key {
        "source.ip" | "remote.ip" | "destination.ip" => cidr_form,
        "destination.port" => port_form,
        _ => string_form,
    }
}

/// Whether a rule uses a field only HTTP requests have.
fn http_only_fields(rule: &Rule) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut note = |set: bool, name| {
        if set && !out.contains(&name) {
            out.push(name);
        }
    };
    for f in &rule.from {
        let s = &f.source;
        note(
            !s.request_principals.is_empty() || !s.not_request_principals.is_empty(),
            "requestPrincipals",
        );
    }
    for t in &rule.to {
        let o = &t.operation;
        note(!o.hosts.is_empty() || !o.not_hosts.is_empty(), "hosts");
        note(
            !o.methods.is_empty() || !o.not_methods.is_empty(),
            "methods",
        );
        note(!o.paths.is_empty() || !o.not_paths.is_empty(), "paths");
    }
    for c in &rule.when {
        note(
            c.key.starts_with("request.headers") || c.key.starts_with("request.auth."),
            "request conditions",
        );
    }
    out
}

impl Checker<'_> {
    fn forms<'v>(
        &mut self,
        r: &Resource,
        field: &str,
        values: impl IntoIterator<Item = &'v String>,
        check: fn(&str) -> Option<&'static str>,
    ) {
        for (i, v) in values.into_iter().enumerate() {
            if let Some(why) = check(v) {
                self.error(r, format!("{field}[{i}]"), format!("`{v}`: {why}"));
            }
        }
    }

    pub(super) fn peer_authentication(&mut self, r: &Resource, pa: &PeerAuthentication) {
        if !pa.port_level_mtls.is_empty() && pa.selector.is_none() {
            self.error(
                r,
                "spec.portLevelMtls",
                "portLevelMtls needs a selector (it is rejected on namespace- and mesh-wide policies)",
            );
        }
        for port in pa.port_level_mtls.keys() {
            if !(1..=65535).contains(port) {
                self.error(
                    r,
                    format!("spec.portLevelMtls[{port}]"),
                    "not a port number (1-65535)",
                );
            }
        }
        if pa.selector.is_some() && r.meta.namespace == ROOT_NAMESPACE {
            self.warning(
                r,
                "spec.selector",
                "a PeerAuthentication with a selector in the root namespace is ignored, as Istio ignores it; put it in the workload's namespace",
            );
        }
        if !pa.port_level_mtls.is_empty() {
            self.warning(
                r,
                "spec.portLevelMtls",
                "keys are workload (container) ports, where the app listens, not Service ports; a Service port here does nothing (istio/istio#49098)",
            );
        }
    }

    pub(super) fn authorization_policy(&mut self, r: &Resource, ap: &AuthorizationPolicy) {
        match (&ap.action, &ap.provider) {
            (AuthzAction::Custom, None) => {
                self.error(r, "spec.provider", "action CUSTOM needs a provider")
            }
            (AuthzAction::Custom, Some(p)) if p.name.is_empty() => {
                self.error(r, "spec.provider.name", "the CUSTOM provider needs a name")
            }
            (AuthzAction::Custom, Some(p)) => match self.index.providers.get(&p.name) {
                None => self.error(
                    r,
                    "spec.provider.name",
                    format!(
                        "no extension provider `{}` in the MeshConfig (extensionProviders)",
                        p.name
                    ),
                ),
                Some(kinds)
                    if !kinds
                        .iter()
                        .any(|k| *k == "envoyExtAuthzGrpc" || *k == "envoyExtAuthzHttp") =>
                {
                    self.error(
                        r,
                        "spec.provider.name",
                        format!("extension provider `{}` is not an external authorizer (envoyExtAuthzGrpc or envoyExtAuthzHttp)", p.name),
                    )
                }
                Some(_) => {}
            },
            (_, None) => {}
            (_, Some(_)) => self.error(
                r,
                "spec.provider",
                "provider is only allowed with action CUSTOM",
            ),
        }
        let targeted = !ap.target_refs.is_empty() || ap.target_ref.is_some();
        self.target_refs(r, targeted, ap.selector.is_some());
        match r
            .meta
            .annotations
            .get("istio.io/dry-run")
            .map(String::as_str)
        {
            None | Some("false") => {}
            Some("true") if matches!(ap.action, AuthzAction::Custom | AuthzAction::Audit) => {
                self.warning(
                    r,
                    "metadata.annotations[\"istio.io/dry-run\"]",
                    "dry run is supported for ALLOW and DENY only: this policy is not applied at all",
                );
            }
            Some("true") => {}
            Some(other) => self.error(
                r,
                "metadata.annotations[\"istio.io/dry-run\"]",
                format!("`{other}`: must be \"true\" or \"false\""),
            ),
        }
        for (i, rule) in ap.rules.iter().enumerate() {
            self.rule(r, ap, i, rule);
        }
    }

    fn rule(&mut self, r: &Resource, ap: &AuthorizationPolicy, i: usize, rule: &Rule) {
        let rp = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            let s = &from.source;
            let sp = format!("{rp}.from[{j}].source");
            let has_identity = !s.principals.is_empty() || !s.namespaces.is_empty();
            if !s.service_accounts.is_empty() && has_identity {
                self.error(
                    r,
                    format!("{sp}.serviceAccounts"),
                    "serviceAccounts cannot be combined with principals or namespaces",
                );
            }
            for (name, values) in [
                ("serviceAccounts", &s.service_accounts),
                ("notServiceAccounts", &s.not_service_accounts),
            ] {
                for (k, v) in values.iter().enumerate() {
                    if v.contains('*') || v.is_empty() || v.split('/').count() > 2 {
                        self.error(
                            r,
                            format!("{sp}.{name}[{k}]"),
                            format!("`{v}`: a service account is `sa` or `namespace/sa`, without wildcards"),
                        );
                    }
                }
            }
            for (name, values) in [
                ("principals", &s.principals),
                ("notPrincipals", &s.not_principals),
                ("requestPrincipals", &s.request_principals),
                ("notRequestPrincipals", &s.not_request_principals),
                ("namespaces", &s.namespaces),
                ("notNamespaces", &s.not_namespaces),
                ("trustDomains", &s.trust_domains),
                ("notTrustDomains", &s.not_trust_domains),
            ] {
                self.forms(r, &format!("{sp}.{name}"), values, string_form);
            }
            for (name, values) in [
                ("ipBlocks", &s.ip_blocks),
                ("notIpBlocks", &s.not_ip_blocks),
                ("remoteIpBlocks", &s.remote_ip_blocks),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ] {
                self.forms(r, &format!("{sp}.{name}"), values, cidr_form);
            }
        }
        let mut exact_paths = Vec::new();
        let mut has_ports = false;
        for (j, to) in rule.to.iter().enumerate() {
            let o = &to.operation;
            let op = format!("{rp}.to[{j}].operation");
            for (name, values) in [
                ("hosts", &o.hosts),
                ("notHosts", &o.not_hosts),
                ("methods", &o.methods),
                ("notMethods", &o.not_methods),
            ] {
                self.forms(r, &format!("{op}.{name}"), values, string_form);
            }
            for (name, values) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
                self.forms(r, &format!("{op}.{name}"), values, path_form);
            }
            for (name, values) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
                self.forms(r, &format!("{op}.{name}"), values, port_form);
            }
            has_ports |= !o.ports.is_empty();
            exact_paths.extend(o.paths.iter().filter(|p| {
                !p.ends_with('*')
                    && !p.starts_with('*')
                    && !p.contains('{')
                    && p.len() > 1
                    && !p.ends_with('/')
            }));
        }
        for (j, cond) in rule.when.iter().enumerate() {
            let cp = format!("{rp}.when[{j}]");
            if cond.key.starts_with("experimental.envoy.filters.") {
                self.error(
                    r,
                    format!("{cp}.key"),
                    format!("`{}`: Envoy filter metadata is not evaluated by meshlite's sidecars (the rule could never match as written)", cond.key),
                );
            } else if !known_when_key(&cond.key) {
                self.error(
                    r,
                    format!("{cp}.key"),
                    format!("unknown condition key `{}`", cond.key),
                );
            }
            if cond.values.is_empty() && cond.not_values.is_empty() {
                self.error(r, cp.clone(), "a condition needs values or notValues");
            }
            let check = when_form(&cond.key);
            self.forms(r, &format!("{cp}.values"), &cond.values, check);
            self.forms(r, &format!("{cp}.notValues"), &cond.not_values, check);
            has_ports |= cond.key == "destination.port";
        }
        let deny_like = matches!(ap.action, AuthzAction::Deny | AuthzAction::Audit);
        if deny_like && !has_ports {
            let http = http_only_fields(rule);
            if !http.is_empty() {
                self.warning(
                    r,
                    rp.clone(),
                    format!(
                        "uses {} but no `ports`: on a TCP port these HTTP-only fields are dropped and the rule {} every connection (as in Istio); scope it with `ports`",
                        http.join(", "),
                        if ap.action == AuthzAction::Deny { "denies" } else { "marks" }
                    ),
                );
            }
        }
        if ap.action == AuthzAction::Deny {
            for p in exact_paths {
                self.warning(
                    r,
                    rp.clone(),
                    format!("DENY on the exact path `{p}` misses `{p}/` and, without MERGE_SLASHES normalisation, `/{p}`; `{p}*` covers them"),
                );
            }
        }
    }

    /// `targetRefs` beside a selector is refused, as istiod does; alone, it attaches the
    /// policy to something sidecars are not, which is worth a warning.
    pub(super) fn target_refs(&mut self, r: &Resource, targeted: bool, selector: bool) {
        if targeted && selector {
            self.error(
                r,
                "spec.targetRefs",
                "targetRefs and selector cannot both be set",
            );
        } else if targeted {
            self.warning(
                r,
                "spec.targetRefs",
                "a policy with targetRefs attaches to gateways and waypoints; sidecars do not apply it (as in Istio), and meshlite has neither",
            );
        }
    }

    pub(super) fn request_authentication(&mut self, r: &Resource, ra: &RequestAuthentication) {
        let targeted = !ra.target_refs.is_empty() || ra.target_ref.is_some();
        self.target_refs(r, targeted, ra.selector.is_some());
        let mut issuers = std::collections::BTreeMap::new();
        for (i, rule) in ra.jwt_rules.iter().enumerate() {
            let p = format!("spec.jwtRules[{i}]");
            self.jwt_rule(r, rule, &p);
            if !rule.issuer.is_empty()
                && let Some(first) = issuers.insert(rule.issuer.as_str(), i)
            {
                self.warning(
                    r,
                    format!("{p}.issuer"),
                    format!(
                        "issuer `{}` is already accepted by spec.jwtRules[{first}]; Envoy would use only one of them",
                        rule.issuer
                    ),
                );
            }
        }
    }

    fn jwt_rule(&mut self, r: &Resource, rule: &JwtRule, p: &str) {
        if rule.issuer.is_empty() {
            self.error(r, format!("{p}.issuer"), "issuer must be set");
        }
        for (i, a) in rule.audiences.iter().enumerate() {
            if a.is_empty() {
                self.error(
                    r,
                    format!("{p}.audiences[{i}]"),
                    "audience must be a non-empty string",
                );
            }
        }
        match (&rule.jwks, rule.jwks_uri.as_deref()) {
            (Some(_), Some(_)) => self.error(
                r,
                format!("{p}.jwks"),
                "set only one of jwks and jwksUri",
            ),
            (None, None | Some("")) => self.error(
                r,
                format!("{p}.jwksUri"),
                "set jwksUri or jwks (meshlite does not derive jwksUri by OpenID discovery from the issuer)",
            ),
            (Some(jwks), None) => {
                if let Err(e) = serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(jwks) {
                    self.error(r, format!("{p}.jwks"), format!("jwks parse error: {e}"));
                }
            }
            (None, Some(uri)) => {
                let ok = uri.parse::<http::Uri>().is_ok_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https"))
                        && u.host().is_some_and(|h| !h.is_empty())
                });
                if !ok {
                    self.error(
                        r,
                        format!("{p}.jwksUri"),
                        format!("`{uri}` is not an http or https URL with a host"),
                    );
                }
            }
        }
        for (i, h) in rule.from_headers.iter().enumerate() {
            self.header_name(r, &h.name, &format!("{p}.fromHeaders[{i}].name"));
        }
        for (name, list) in [
            ("fromParams", &rule.from_params),
            ("fromCookies", &rule.from_cookies),
        ] {
            for (i, v) in list.iter().enumerate() {
                if v.is_empty() {
                    self.error(
                        r,
                        format!("{p}.{name}[{i}]"),
                        "location must be a non-empty string",
                    );
                }
            }
        }
        if let Some(h) = &rule.output_payload_to_header {
            self.header_name(r, h, &format!("{p}.outputPayloadToHeader"));
        }
        for (i, c) in rule.output_claim_to_headers.iter().enumerate() {
            let cp = format!("{p}.outputClaimToHeaders[{i}]");
            if c.claim.is_empty() {
                self.error(r, format!("{cp}.claim"), "claim must be a non-empty string");
            }
            self.header_name(r, &c.header, &format!("{cp}.header"));
        }
        if let Some(t) = rule.timeout
            && (t.is_negative() || t.is_zero())
        {
            self.error(r, format!("{p}.timeout"), "timeout must be positive");
        }
    }

    pub(super) fn header_name(&mut self, r: &Resource, name: &str, field: &str) {
        if name.is_empty() {
            self.error(
                r,
                field.to_string(),
                "header name must be a non-empty string",
            );
        } else if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.error(
                r,
                field.to_string(),
                format!("`{name}` is not a valid header name"),
            );
        }
    }

    /// Two RequestAuthentications that certainly apply to the same workloads (one mesh- or
    /// namespace-wide, or the same selector) accepting the same issuer: Envoy keeps one
    /// provider per issuer, so which rule's settings win is not defined.
    pub(super) fn duplicate_issuers(&mut self, resources: &[Resource]) {
        let ras: Vec<(&Resource, &RequestAuthentication)> = resources
            .iter()
            .filter_map(|r| match &r.spec {
                ResourceSpec::RequestAuthentication(ra)
                    if ra.target_refs.is_empty() && ra.target_ref.is_none() =>
                {
                    Some((r, &**ra))
                }
                _ => None,
            })
            .collect();
        let overlap = |a: (&Resource, &RequestAuthentication),
                       b: (&Resource, &RequestAuthentication)| {
            let wide = |x: (&Resource, &RequestAuthentication)| x.1.selector.is_none();
            let root = |x: (&Resource, &RequestAuthentication)| {
                x.0.meta.namespace == ROOT_NAMESPACE && wide(x)
            };
            let same_ns = a.0.meta.namespace == b.0.meta.namespace;
            let same_selector = |x: Option<&WorkloadSelector>, y: Option<&WorkloadSelector>| x == y;
            root(a)
                || root(b)
                || (same_ns
                    && (wide(a)
                        || wide(b)
                        || same_selector(a.1.selector.as_ref(), b.1.selector.as_ref())))
        };
        for (j, &later) in ras.iter().enumerate() {
            for &earlier in &ras[..j] {
                if !overlap(earlier, later) {
                    continue;
                }
                for (i, rule) in later.1.jwt_rules.iter().enumerate() {
                    if !rule.issuer.is_empty()
                        && earlier.1.jwt_rules.iter().any(|e| e.issuer == rule.issuer)
                    {
                        self.warning(
                            later.0,
                            format!("spec.jwtRules[{i}].issuer"),
                            format!(
                                "issuer `{}` is also accepted by {} ({}) for the same workloads; Envoy would use only one of the two rules",
                                rule.issuer,
                                earlier.0.label(),
                                earlier.0.origin
                            ),
                        );
                    }
                }
            }
        }
    }

    /// A provider's `logFormat`: every format string must parse (as Envoy's would).
    fn log_format(&mut self, r: &Resource, field: &str, f: &LogFormat) {
        if let Some(text) = &f.text {
            self.format_string(r, format!("{field}.text"), text);
        }
        for (name, format) in f.label_formats() {
            let field = format!("{field}.labels.{name}");
            match format {
                Ok(format) => self.format_string(r, field, &format),
                Err(()) => self.error(
                    r,
                    field,
                    "a label's value is a format string (nested objects and lists are not written)",
                ),
            }
        }
    }

    /// One access-log format string.
    fn format_string(&mut self, r: &Resource, field: String, format: &str) {
        match super::telemetry::log_format_problems(format) {
            Err(e) => self.error(r, field, e),
            Ok(warnings) => {
                for w in warnings {
                    self.warning(r, field.clone(), w);
                }
            }
        }
    }

    /// `accessLogFile`, `accessLogFormat` and `accessLogEncoding`: the built-in provider.
    fn built_in_access_log(&mut self, r: &Resource, m: &MeshConfig) {
        let Some(format) = m
            .access_log_format
            .as_deref()
            .filter(|f| !f.trim().is_empty())
        else {
            return;
        };
        if m.access_log_encoding == Some(AccessLogEncoding::Json) {
            match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(format) {
                Ok(labels) => self.log_format(
                    r,
                    "accessLogFormat",
                    &LogFormat {
                        text: None,
                        labels: Some(labels),
                    },
                ),
                Err(e) => self.error(
                    r,
                    "accessLogFormat",
                    format!("with accessLogEncoding JSON the format is a JSON object of field -> format string: {e}"),
                ),
            }
        } else {
            self.format_string(r, "accessLogFormat".into(), format);
        }
    }

    pub(super) fn mesh_config(&mut self, r: &Resource, m: &MeshConfig) {
        self.built_in_access_log(r, m);
        let tracing = m.default_providers.iter().flat_map(|d| d.tracing.iter());
        for (i, name) in tracing.enumerate() {
            let found = m.extension_providers.iter().find(|p| &p.name == name);
            if !found.is_some_and(|p| p.opentelemetry.is_some() || p.zipkin.is_some()) {
                self.warning(
                    r,
                    format!("defaultProviders.tracing[{i}]"),
                    format!("no opentelemetry or zipkin provider `{name}` in extensionProviders"),
                );
            }
        }
        let logging = m
            .default_providers
            .iter()
            .flat_map(|d| d.access_logging.iter());
        for (i, name) in logging.enumerate() {
            let declared = m
                .extension_providers
                .iter()
                .find(|p| p.name.eq_ignore_ascii_case(name));
            let builtin = name.eq_ignore_ascii_case(BUILT_IN_ACCESS_LOG_PROVIDER.0);
            let logs = declared.map_or(builtin, |p| {
                p.envoy_file_access_log.is_some() || p.envoy_otel_als.is_some()
            });
            if !logs {
                self.warning(
                    r,
                    format!("defaultProviders.accessLogging[{i}]"),
                    format!("no envoyFileAccessLog or envoyOtelAls provider `{name}` in extensionProviders (nor the built-in envoy): nothing is logged to it"),
                );
            }
        }
        if let Some(s) = m
            .default_config
            .as_ref()
            .and_then(|d| d.tracing.as_ref())
            .and_then(|t| t.sampling)
            && !(0.0..=100.0).contains(&s)
        {
            self.error(
                r,
                "defaultConfig.tracing.sampling",
                format!("{s} is not a percentage (0-100)"),
            );
        }
        if let Some(ns) = &m.root_namespace
            && ns != ROOT_NAMESPACE
        {
            self.warning(
                r,
                "rootNamespace",
                format!("meshlite's root namespace is {ROOT_NAMESPACE}; `{ns}` is not applied"),
            );
        }
        let matcher = m
            .default_config
            .as_ref()
            .and_then(|d| d.proxy_stats_matcher.as_ref());
        for (i, re) in matcher
            .map_or(&[][..], |s| &s.inclusion_regexps[..])
            .iter()
            .enumerate()
        {
            if let Err(e) = regex::Regex::new(&format!("^(?:{re})$")) {
                self.error(
                    r,
                    format!("defaultConfig.proxyStatsMatcher.inclusionRegexps[{i}]"),
                    format!("not a regular expression: {e}"),
                );
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in m.extension_providers.iter().enumerate() {
            let fp = format!("extensionProviders[{i}]");
            if p.name.is_empty() {
                self.error(r, format!("{fp}.name"), "a provider needs a name");
            } else if !seen.insert(p.name.as_str()) {
                self.error(
                    r,
                    format!("{fp}.name"),
                    format!("provider `{}` is defined twice", p.name),
                );
            }
            let kinds = p.kinds();
            match kinds.as_slice() {
                [] => self.error(
                    r,
                    fp.clone(),
                    "a provider needs exactly one kind (e.g. envoyExtAuthzGrpc)",
                ),
                [_] => {}
                _ => self.error(
                    r,
                    fp.clone(),
                    format!(
                        "a provider has exactly one kind, this one has {}",
                        kinds.join(", ")
                    ),
                ),
            }
            let ext = p
                .envoy_ext_authz_grpc
                .as_ref()
                .map(|g| (&g.service, g.port, &g.status_on_error, "envoyExtAuthzGrpc"))
                .or_else(|| {
                    p.envoy_ext_authz_http
                        .as_ref()
                        .map(|h| (&h.service, h.port, &h.status_on_error, "envoyExtAuthzHttp"))
                });
            if let Some((service, port, status, kind)) = ext {
                if service.is_empty() {
                    self.error(
                        r,
                        format!("{fp}.{kind}.service"),
                        "the authorizer's service is required",
                    );
                }
                if !(1..=65535).contains(&port) {
                    self.error(
                        r,
                        format!("{fp}.{kind}.port"),
                        "not a port number (1-65535)",
                    );
                }
                if let Some(s) = status
                    && !s.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c))
                {
                    self.error(
                        r,
                        format!("{fp}.{kind}.statusOnError"),
                        format!("`{s}` is not an HTTP status"),
                    );
                }
            }
            if let Some(h) = &p.envoy_ext_authz_http {
                let hp = format!("{fp}.envoyExtAuthzHttp");
                for (name, values) in [
                    (
                        "includeRequestHeadersInCheck",
                        &h.include_request_headers_in_check,
                    ),
                    ("headersToUpstreamOnAllow", &h.headers_to_upstream_on_allow),
                    (
                        "headersToDownstreamOnDeny",
                        &h.headers_to_downstream_on_deny,
                    ),
                    (
                        "headersToDownstreamOnAllow",
                        &h.headers_to_downstream_on_allow,
                    ),
                ] {
                    self.forms(r, &format!("{hp}.{name}"), values, string_form);
                }
                for k in h.include_additional_headers_in_check.keys() {
                    if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                        self.error(
                            r,
                            format!("{hp}.includeAdditionalHeadersInCheck[{k}]"),
                            "not a header name",
                        );
                    }
                }
                if h.path_prefix.as_ref().is_some_and(|p| !p.starts_with('/')) {
                    self.error(
                        r,
                        format!("{hp}.pathPrefix"),
                        "a path prefix starts with `/`",
                    );
                }
            }
            let body = p
                .envoy_ext_authz_grpc
                .as_ref()
                .map(|g| (&g.include_request_body_in_check, "envoyExtAuthzGrpc"))
                .or_else(|| {
                    p.envoy_ext_authz_http
                        .as_ref()
                        .map(|h| (&h.include_request_body_in_check, "envoyExtAuthzHttp"))
                });
            if let Some((Some(b), kind)) = body {
                let field = format!("{fp}.{kind}.includeRequestBodyInCheck.maxRequestBytes");
                if b.max_request_bytes == 0 {
                    self.error(r, field, "must be greater than 0");
                } else if b.max_request_bytes > MAX_BODY_IN_CHECK {
                    self.warning(
                        r,
                        field,
                        format!("meshlite's sidecars buffer at most {MAX_BODY_IN_CHECK} bytes of a body for a check; larger bodies are sent partially or refused with 413 from there"),
                    );
                }
            }
            let collector = p
                .opentelemetry
                .as_ref()
                .map(|c| (c, "opentelemetry"))
                .or_else(|| p.zipkin.as_ref().map(|c| (c, "zipkin")));
            if let Some((c, kind)) = collector {
                if c.service.is_empty() {
                    self.error(
                        r,
                        format!("{fp}.{kind}.service"),
                        "the collector's service is required",
                    );
                }
                if !(1..=65535).contains(&c.port) {
                    self.error(
                        r,
                        format!("{fp}.{kind}.port"),
                        "not a port number (1-65535)",
                    );
                }
            }
            if let Some(o) = &p.envoy_otel_als {
                if o.service.is_empty() {
                    self.error(
                        r,
                        format!("{fp}.envoyOtelAls.service"),
                        "the collector's service is required",
                    );
                }
                if !(1..=65535).contains(&o.port) {
                    self.error(
                        r,
                        format!("{fp}.envoyOtelAls.port"),
                        "not a port number (1-65535)",
                    );
                }
            }
            if let Some(f) = &p.envoy_file_access_log
                && f.path.trim().is_empty()
            {
                self.error(
                    r,
                    format!("{fp}.envoyFileAccessLog.path"),
                    "the file is required (/dev/stdout for standard output)",
                );
            }
            if let Some(f) = p
                .envoy_file_access_log
                .as_ref()
                .and_then(|f| f.log_format.as_ref())
            {
                if f.text.is_some() && f.labels.is_some() {
                    self.error(
                        r,
                        format!("{fp}.envoyFileAccessLog.logFormat"),
                        "set `text` or `labels`, not both (one line format per file)",
                    );
                }
                self.log_format(r, &format!("{fp}.envoyFileAccessLog.logFormat"), f);
            }
            if let Some(f) = p
                .envoy_otel_als
                .as_ref()
                .and_then(|o| o.log_format.as_ref())
            {
                self.log_format(r, &format!("{fp}.envoyOtelAls.logFormat"), f);
            }
            for k in kinds {
                if !matches!(
                    k,
                    "envoyExtAuthzGrpc"
                        | "envoyExtAuthzHttp"
                        | "opentelemetry"
                        | "zipkin"
                        | "envoyFileAccessLog"
                        | "envoyOtelAls"
                ) {
                    self.warning(
                        r,
                        format!("{fp}.{k}"),
                        "read, but no meshlite sidecar uses this provider kind yet",
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_keys_follow_istios_list() {
        for ok in [
            "source.ip",
            "request.headers[User-Agent]",
            "request.auth.claims[iss]",
            "request.auth.claims[groups][admin]",
            "destination.port",
        ] {
            assert!(known_when_key(ok), "{ok}");
        }
        for bad in [
            "request.headers",
            "request.headers[]",
            "request.headers[a][b]",
            "request.auth.claims",
            "source.principals",
            "",
        ] {
            assert!(!known_when_key(bad), "{bad}");
        }
    }

    #[test]
    fn value_forms() {
        assert_eq!(string_form("abc*"), None);
        assert_eq!(string_form("*abc"), None);
        assert_eq!(string_form("*"), None);
        assert!(string_form("a*c").is_some());
        assert!(string_form("").is_some());
        assert_eq!(path_form("/a/{*}/b/{**}"), None);
        assert!(path_form("/a/{**}/b").is_some());
        assert!(path_form("/a/x{*}").is_some());
        assert_eq!(cidr_form("10.0.0.0/8"), None);
        assert!(cidr_form("10.0.0.0/33").is_some());
        assert!(port_form("0").is_some() && port_form("http").is_some());
    }
}
