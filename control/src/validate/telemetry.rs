//! Checks of Telemetry resources (`telemetry.istio.io`).
//!
//! What istiod's webhook refuses is an error (empty provider names, a sampling percentage
//! outside 0-100, empty custom tag values, an UPSERT without a value, a filter that is not
//! CEL); meshlite also compiles every `tagOverrides` value as CEL, since the sidecars evaluate
//! them as such. What `istioctl analyze` reports is reported with its level: two Telemetries
//! without a selector in one namespace (IST0160) or two selecting the same workloads
//! (IST0159) are errors. What Istio accepts but then ignores (a provider the MeshConfig does
//! not define, a selector in the root namespace, `targetRefs`) is a warning that says so.

use std::collections::BTreeMap;

use crate::model::{
    ACCESS_LOG_PROVIDER_KINDS, AccessLogging, CustomTag, METRICS_PROVIDER_KINDS, Metrics,
    ProviderRef, ROOT_NAMESPACE, TRACING_PROVIDER_KINDS, TagOperation, Telemetry, Tracing,
    provider_kinds,
};
use crate::source::{Resource, ResourceSpec};

use super::Checker;

/// The access-log provider kinds sidecars deliver to.
const SIDECAR_LOG_KINDS: [&str; 2] = ["envoyFileAccessLog", "envoyOtelAls"];

/// The signal a provider is named for.
#[derive(Clone, Copy)]
enum Signal {
    Tracing,
    Metrics,
    AccessLogging,
}

impl Signal {
    fn kinds(self) -> &'static [&'static str] {
        match self {
            Signal::Tracing => &TRACING_PROVIDER_KINDS,
            Signal::Metrics => &METRICS_PROVIDER_KINDS,
            Signal::AccessLogging => &ACCESS_LOG_PROVIDER_KINDS,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Signal::Tracing => "tracing",
            Signal::Metrics => "metrics",
            Signal::AccessLogging => "access logging",
        }
    }

    /// What Istio does with a provider it cannot find.
    fn when_missing(self) -> &'static str {
        match self {
            Signal::Tracing => {
                "span reporting is off for the workloads this entry applies to, as in Istio"
            }
            Signal::Metrics => "these overrides configure nothing, as in Istio",
            Signal::AccessLogging => "nothing is logged to it, as in Istio",
        }
    }
}

/// Why `expression` is not CEL, if it is not.
pub(crate) fn cel_error(expression: &str) -> Option<String> {
    if expression.trim().is_empty() {
        return Some("an empty expression is not CEL".into());
    }
    cel::Program::compile(expression)
        .err()
        .map(|e| format!("not a CEL expression: {}", one_line(&e.to_string())))
}

/// Checks one access-log format string (Envoy command operators): `Err` when a sidecar
/// would refuse it (Envoy refuses the same) or a `%CEL(...)%` operator is not CEL; else the
/// warnings: operators Envoy knows whose value a meshlite sidecar never has, written as
/// absent.
pub(crate) fn log_format_problems(format: &str) -> Result<Vec<String>, String> {
    use meshlite_xds_proto::log_format::{Command, Piece, parse};
    let pieces = parse(format).map_err(|e| e.to_string())?;
    let mut warnings = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Operator {
                command: Command::Cel(expression),
                ..
            } => {
                if let Some(e) = cel_error(&expression) {
                    return Err(format!("%CEL({expression})%: {e}"));
                }
            }
            Piece::Operator {
                command: Command::Unavailable(name),
                ..
            } => warnings.push(format!(
                "%{name}% has no value in a meshlite sidecar: written as absent (`-`, or null)"
            )),
            Piece::Operator {
                command: Command::ResponseTrailer(_),
                ..
            } => warnings.push(
                "response trailers are not kept for access logs: written as absent".to_string(),
            ),
            _ => {}
        }
    }
    Ok(warnings)
}

/// The parser's message on one line (it appends a source snippet on the next lines).
fn one_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or(text)
        .trim_start_matches("ERROR: ")
        .to_string()
}

impl Checker<'_> {
    pub(super) fn telemetry(&mut self, r: &Resource, t: &Telemetry) {
        self.target_refs(r, t.is_targeted(), t.selector.is_some());
        if let Some(s) = &t.selector {
            if s.match_labels.is_empty() {
                self.warning(
                    r,
                    "spec.selector",
                    "a selector without matchLabels selects nothing in particular: the Telemetry applies to the whole namespace, as in Istio",
                );
            } else if r.meta.namespace == ROOT_NAMESPACE {
                self.warning(
                    r,
                    "spec.selector",
                    format!("in the root namespace ({ROOT_NAMESPACE}) a Telemetry with a selector is not mesh-wide: it applies only to the workloads of {ROOT_NAMESPACE} it selects, as in Istio"),
                );
            }
            for (k, v) in &s.match_labels {
                if k.is_empty() {
                    self.error(r, "spec.selector.matchLabels", "empty label name");
                } else if v.contains('*') || k.contains('*') {
                    self.error(
                        r,
                        format!("spec.selector.matchLabels.{k}"),
                        "wildcards are not supported in selectors",
                    );
                }
            }
        }
        if t.tracing.len() > 1 {
            self.warning(
                r,
                "spec.tracing",
                "several tracing entries: Istio warns that it supports one; meshlite applies them in order, each field an entry sets overriding the earlier entries'",
            );
        }
        for (i, tr) in t.tracing.iter().enumerate() {
            self.tracing(r, tr, &format!("spec.tracing[{i}]"));
        }
        for (i, m) in t.metrics.iter().enumerate() {
            self.metrics(r, m, &format!("spec.metrics[{i}]"));
        }
        for (i, l) in t.access_logging.iter().enumerate() {
            self.access_logging(r, l, &format!("spec.accessLogging[{i}]"));
        }
    }

    /// The kinds of the provider called `name` (the MeshConfig's, else a built-in one).
    fn provider_kinds(&self, name: &str) -> Option<Vec<&'static str>> {
        provider_kinds(
            self.index
                .providers
                .iter()
                .map(|(n, k)| (n.as_str(), k.clone())),
            name,
        )
    }

    fn providers(&mut self, r: &Resource, providers: &[ProviderRef], p: &str, signal: Signal) {
        for (i, provider) in providers.iter().enumerate() {
            let field = format!("{p}.providers[{i}].name");
            let name = provider.name.trim();
            if name.is_empty() {
                self.error(r, field, "a provider needs a name");
                continue;
            }
            match self.provider_kinds(name) {
                None => self.warning(
                    r,
                    field,
                    format!(
                        "no extension provider `{name}` in the MeshConfig (nor a built-in one: prometheus, stackdriver, envoy); {}",
                        signal.when_missing()
                    ),
                ),
                Some(kinds) if !kinds.iter().any(|k| signal.kinds().contains(k)) => self.warning(
                    r,
                    field,
                    format!(
                        "`{name}` is a provider of kind {}, not a {} provider; istiod ignores it here",
                        kinds.join(", "),
                        signal.name()
                    ),
                ),
                Some(_) => {}
            }
        }
    }

    fn tracing(&mut self, r: &Resource, t: &Tracing, p: &str) {
        if t.providers.len() > 1 {
            self.warning(
                r,
                format!("{p}.providers"),
                "only the first provider is used (Istio supports one tracing provider per workload)",
            );
        }
        self.providers(r, &t.providers, p, Signal::Tracing);
        if let Some(s) = t.random_sampling_percentage
            && !(0.0..=100.0).contains(&s)
        {
            self.error(
                r,
                format!("{p}.randomSamplingPercentage"),
                format!("{s} is not a percentage (0-100)"),
            );
        }
        for (name, tag) in t.custom_tags.iter().flatten() {
            self.custom_tag(r, name, tag, &format!("{p}.customTags.{name}"));
        }
    }

    fn custom_tag(&mut self, r: &Resource, name: &str, tag: &CustomTag, p: &str) {
        if name.is_empty() {
            self.error(r, p.to_string(), "a custom tag needs a name");
        }
        let set = [
            tag.literal.is_some(),
            tag.header.is_some(),
            tag.environment.is_some(),
        ]
        .into_iter()
        .filter(|s| *s)
        .count();
        match set {
            0 => self.warning(
                r,
                p.to_string(),
                "neither literal, header nor environment is set: the tag is not added (Istio skips it too)",
            ),
            1 => {}
            _ => self.error(
                r,
                p.to_string(),
                "set exactly one of literal, header and environment",
            ),
        }
        if let Some(l) = &tag.literal
            && l.value.is_empty()
        {
            self.error(
                r,
                format!("{p}.literal.value"),
                "a literal tag needs a value",
            );
        }
        if let Some(h) = &tag.header {
            self.header_name(r, &h.name, &format!("{p}.header.name"));
        }
        if let Some(e) = &tag.environment
            && e.name.is_empty()
        {
            self.error(
                r,
                format!("{p}.environment.name"),
                "an environment tag needs a variable name",
            );
        }
    }

    fn metrics(&mut self, r: &Resource, m: &Metrics, p: &str) {
        self.providers(r, &m.providers, p, Signal::Metrics);
        let named: Vec<Option<Vec<&'static str>>> = m
            .providers
            .iter()
            .filter(|x| !x.name.trim().is_empty())
            .map(|x| self.provider_kinds(x.name.trim()))
            .collect();
        if !named.is_empty()
            && !named
                .iter()
                .any(|k| k.as_ref().is_some_and(|k| k.contains(&"prometheus")))
        {
            self.warning(
                r,
                format!("{p}.providers"),
                "names no prometheus provider, and meshlite's sidecars export Prometheus metrics only: these overrides apply to nothing, and where this list is the most specific one the sidecars export no metrics (Istio's provider selection)",
            );
        }
        if m.reporting_interval.is_some() {
            self.warning(
                r,
                format!("{p}.reportingInterval"),
                "read but not applied by meshlite's sidecars: Prometheus scrapes their metrics when it wants them",
            );
        }
        for (i, o) in m.overrides.iter().enumerate() {
            let op = format!("{p}.overrides[{i}]");
            if let Some(sel) = &o.matches {
                match (&sel.metric, &sel.custom_metric) {
                    (Some(_), Some(_)) => self.error(
                        r,
                        format!("{op}.match"),
                        "set either metric or customMetric, not both",
                    ),
                    (None, Some(c)) if c.is_empty() => self.error(
                        r,
                        format!("{op}.match.customMetric"),
                        "customMetric may not be empty",
                    ),
                    (None, Some(c)) => self.warning(
                        r,
                        format!("{op}.match.customMetric"),
                        format!("meshlite's sidecars record Istio's standard metrics only; the override of `{c}` is not applied"),
                    ),
                    _ => {}
                }
            }
            for (name, tag) in &o.tag_overrides {
                let tp = format!("{op}.tagOverrides.{name}");
                if name.is_empty() {
                    self.warning(r, tp.clone(), "a tag override without a label name");
                } else if let Some(label) = prometheus_label(name) {
                    self.warning(
                        r,
                        tp.clone(),
                        format!("not a Prometheus label name: exported as `{label}`"),
                    );
                }
                match (tag.operation, tag.value.as_deref()) {
                    (TagOperation::Upsert, None | Some("")) => self.error(
                        r,
                        format!("{tp}.value"),
                        "a value (a CEL expression) is required when the operation is UPSERT",
                    ),
                    (TagOperation::Upsert, Some(v)) => {
                        if let Some(e) = cel_error(v) {
                            self.error(r, format!("{tp}.value"), e);
                        }
                    }
                    (TagOperation::Remove, Some(v)) if !v.is_empty() => self.error(
                        r,
                        format!("{tp}.value"),
                        "a value may only be set when the operation is UPSERT",
                    ),
                    (TagOperation::Remove, _) => {}
                }
            }
        }
    }

    fn access_logging(&mut self, r: &Resource, l: &AccessLogging, p: &str) {
        self.providers(r, &l.providers, p, Signal::AccessLogging);
        for (i, provider) in l.providers.iter().enumerate() {
            let name = provider.name.trim();
            let Some(kinds) = self.provider_kinds(name) else {
                continue;
            };
            if let Some(kind) = kinds
                .iter()
                .find(|k| ACCESS_LOG_PROVIDER_KINDS.contains(k) && !SIDECAR_LOG_KINDS.contains(k))
            {
                self.warning(
                    r,
                    format!("{p}.providers[{i}].name"),
                    format!("`{name}` is a provider of kind {kind}, which meshlite's sidecars do not export to (they write files and standard output, and export OpenTelemetry logs): nothing is logged to it"),
                );
            }
        }
        if let Some(f) = &l.filter
            && let Some(e) = cel_error(&f.expression)
        {
            self.error(r, format!("{p}.filter.expression"), e);
        }
    }

    /// At most one Telemetry without a selector per namespace (istioctl analyze IST0160,
    /// an error), and no two with the same selector in a namespace (IST0159: they select
    /// the same workloads, an error). Istio then applies the oldest; which one that is, is
    /// said. Selectors of which one includes the other may select the same workloads: a
    /// warning.
    pub(super) fn telemetry_scopes(&mut self, resources: &[Resource]) {
        let telemetries: Vec<(&Resource, &Telemetry)> = resources
            .iter()
            .filter_map(|r| match &r.spec {
                ResourceSpec::Telemetry(t) if !t.is_targeted() => Some((r, &**t)),
                _ => None,
            })
            .collect();
        let mut wide: BTreeMap<&str, &Resource> = BTreeMap::new();
        for (j, &(r, t)) in telemetries.iter().enumerate() {
            let ns = r.meta.namespace.as_str();
            let Some(labels) = t.selector_labels() else {
                if let Some(first) = wide.get(ns) {
                    let winner = super::security::oldest(first, r);
                    let scope = if ns == ROOT_NAMESPACE {
                        "the root namespace".to_string()
                    } else {
                        format!("namespace {ns}")
                    };
                    self.error(
                        r,
                        "spec.selector",
                        format!(
                            "{scope} already has a Telemetry without selector, {} ({}); only one may apply there (Istio would apply the oldest: {})",
                            first.label(),
                            first.origin,
                            winner.label()
                        ),
                    );
                } else {
                    wide.insert(ns, r);
                }
                continue;
            };
            for &(earlier, et) in &telemetries[..j] {
                if earlier.meta.namespace != r.meta.namespace {
                    continue;
                }
                let Some(other) = et.selector_labels() else {
                    continue;
                };
                let includes = |a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
                    a.iter().all(|(k, v)| b.get(k) == Some(v))
                };
                let winner = super::security::oldest(earlier, r);
                if other == labels {
                    self.error(
                        r,
                        "spec.selector",
                        format!(
                            "{} ({}) has the same selector: two Telemetries may not select the same workloads (Istio would apply the oldest: {})",
                            earlier.label(),
                            earlier.origin,
                            winner.label()
                        ),
                    );
                } else if includes(other, labels) || includes(labels, other) {
                    self.warning(
                        r,
                        "spec.selector",
                        format!(
                            "one of this selector and that of {} ({}) includes the other: the workloads the narrower one selects are selected by both, and two Telemetries may not select the same workload (Istio applies the oldest: {})",
                            earlier.label(),
                            earlier.origin,
                            winner.label()
                        ),
                    );
                }
            }
        }
    }
}

/// The name a sidecar exports tag `name` under when it is not a Prometheus label name (the
/// characters Envoy's Prometheus output replaces become `_`); `None` when it is one.
fn prometheus_label(name: &str) -> Option<String> {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    (out != name).then_some(out)
}

#[cfg(test)]
mod tests;
