//! Telemetry `metrics[].overrides[].tagOverrides`: labels added to, changed on or removed
//! from Istio's standard metrics, per metric and reporter (the seed's intent type, priority
//! and tenant, read from request headers, as metric labels).
//!
//! The control plane sends, per reporter and metric, the tag map in force. Metrics with the
//! same map form a group; a request is recorded once per group, under its standard labels
//! changed by the group's map ([`TagValues`]), into that group's metrics only, and once
//! under the plain labels into the metrics no override touches. A workload without
//! overrides pays nothing: no headers are kept and no expression runs.
//!
//! Values are CEL expressions over the request's attributes (those of an access-log
//! filter, [`LogAttributes`]), compiled at push time. The two forms users write almost
//! always, a quoted literal and `request.headers['name']`, are read directly rather than
//! through the interpreter. An expression that fails on a request (a header that is not
//! there) gives `unknown`, as Istio's stats filter prints. Each new value is a new series,
//! so values are cut at [`MAX_VALUE_LEN`] bytes and the family's series cap (with its
//! dropped counter) bounds what a tag of many values can cost.

use std::sync::Arc;

use meshlite_xds_proto::v1;

use super::attributes::{LogAttributes, cel_context, cel_text, truncate};
use super::istio::MetricSet;
use super::istio::{IstioLabels, STANDARD_LABELS, TagValues, TcpReport};

/// Why a `tagOverrides` entry cannot be applied.
#[derive(Debug, thiserror::Error)]
#[error("tagOverrides `{expression}`: {message}")]
pub struct TagError {
    /// The value's expression, or the label name.
    pub expression: String,
    /// What is wrong.
    pub message: String,
}

/// The longest value a tag keeps, in bytes.
pub const MAX_VALUE_LEN: usize = 128;

/// Istio's value for an attribute that cannot be read.
const UNKNOWN: &str = "unknown";

/// How one tag's value is found.
#[derive(Debug)]
enum TagValue {
    /// A quoted literal: always this.
    Literal(String),
    /// `request.headers['name']` (name lowercase).
    Header(String),
    /// Any other expression.
    Expression(cel::Program),
}

impl TagValue {
    fn compile(expression: &str) -> Result<Self, TagError> {
        let e = expression.trim();
        let quoted = |s: &str| {
            let inner = s
                .strip_prefix('\'')
                .and_then(|s| s.strip_suffix('\''))
                .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))?;
            (!inner.contains(['\'', '"', '\\'])).then(|| inner.to_string())
        };
        if let Some(literal) = quoted(e) {
            return Ok(Self::Literal(literal));
        }
        if let Some(name) = e
            .strip_prefix("request.headers[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(quoted)
        {
            return Ok(Self::Header(name.to_ascii_lowercase()));
        }
        cel::Program::compile(e)
            .map(Self::Expression)
            .map_err(|err| TagError {
                expression: expression.to_string(),
                message: err.to_string(),
            })
    }

    fn value(
        &self,
        a: &LogAttributes<'_>,
        context: &mut Option<cel::Context<'static, 'static>>,
    ) -> String {
        let mut v = match self {
            TagValue::Literal(v) => v.clone(),
            TagValue::Header(name) => a
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map_or_else(|| UNKNOWN.to_string(), |(_, v)| v.clone()),
            TagValue::Expression(program) => {
                let context = context.get_or_insert_with(|| cel_context(a));
                program
                    .execute(context)
                    .ok()
                    .and_then(|v| cel_text(&v))
                    .unwrap_or_else(|| UNKNOWN.to_string())
            }
        };
        truncate(&mut v, MAX_VALUE_LEN);
        v
    }
}

/// The metrics of one reporter that share a tag map, and the map compiled.
#[derive(Debug)]
struct TagGroup {
    /// The metrics recorded under these labels.
    metrics: MetricSet,
    /// Standard labels removed (a bit per [`STANDARD_LABELS`] index), those upserted
    /// included: an upserted standard label is printed with the extra labels.
    removed: u32,
    /// Labels set, by name, in name order.
    upserts: Vec<(Arc<str>, TagValue)>,
}

/// One reporter's tag overrides, compiled: the groups of metrics whose labels change.
#[derive(Debug)]
pub struct TagOverrides {
    groups: Vec<TagGroup>,
    /// The metrics of all groups: recorded only under their group's labels.
    covered: MetricSet,
    /// Whether a value reads the request's headers (they are then kept with the request).
    reads_headers: bool,
}

/// `name` as a Prometheus label name, the way Envoy's Prometheus output writes tag names:
/// every character that may not appear becomes `_`, and a leading digit gets a `_` before
/// it. `None` for an empty name (nothing to label).
fn label_name(name: &str) -> Option<String> {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    (!out.is_empty()).then_some(out)
}

impl TagOverrides {
    /// The overrides of `reporter`'s side among `overrides` (the control plane's merged
    /// entries, which never overlap); `None` when none changes a label there.
    pub fn compile(
        overrides: &[v1::MetricOverride],
        selects: impl Fn(i32) -> bool,
    ) -> Result<Option<Self>, TagError> {
        let mut groups: Vec<(
            &std::collections::BTreeMap<String, v1::TagOverride>,
            MetricSet,
        )> = Vec::new();
        for o in overrides
            .iter()
            .filter(|o| !o.tag_overrides.is_empty() && selects(o.mode))
        {
            let metrics = MetricSet::of(v1::MetricSelector::try_from(o.metric).unwrap_or_default());
            match groups
                .iter_mut()
                .find(|(tags, _)| **tags == o.tag_overrides)
            {
                Some((_, set)) => *set = set.union(metrics),
                None => groups.push((&o.tag_overrides, metrics)),
            }
        }
        if groups.is_empty() {
            return Ok(None);
        }
        let mut compiled = Vec::with_capacity(groups.len());
        let mut covered = MetricSet::NONE;
        let mut reads_headers = false;
        for (tags, metrics) in groups {
            let mut removed = 0u32;
            let mut upserts = Vec::new();
            for (name, o) in tags {
                let Some(name) = label_name(name) else {
                    continue;
                };
                if let Some(i) = STANDARD_LABELS.iter().position(|l| *l == name) {
                    removed |= 1 << i;
                }
                if !o.remove {
                    let value = TagValue::compile(&o.value)?;
                    reads_headers |= !matches!(value, TagValue::Literal(_));
                    upserts.push((Arc::from(name), value));
                }
            }
            covered = covered.union(metrics);
            compiled.push(TagGroup {
                metrics,
                removed,
                upserts,
            });
        }
        Ok(Some(Self {
            groups: compiled,
            covered,
            reads_headers,
        }))
    }

    /// Whether the values read the request (its headers are then kept until it ends).
    pub fn reads_request(&self) -> bool {
        self.reads_headers
    }

    /// The label sets one exchange is recorded under, each with the metrics it is not
    /// recorded into: the plain labels for the metrics no override touches, then one set
    /// per group. `skipped` are the metrics turned off.
    pub fn label_sets(
        &self,
        labels: &IstioLabels,
        attributes: &LogAttributes<'_>,
        skipped: MetricSet,
    ) -> Vec<(IstioLabels, MetricSet)> {
        let mut sets = Vec::with_capacity(self.groups.len() + 1);
        sets.push((labels.clone(), skipped.union(self.covered)));
        let mut context = None;
        for (index, g) in self.groups.iter().enumerate() {
            let extra = g
                .upserts
                .iter()
                .map(|(name, v)| (name.clone(), v.value(attributes, &mut context)))
                .collect();
            let changed = IstioLabels {
                tags: Some(Arc::new(TagValues {
                    group: u8::try_from(index).unwrap_or(u8::MAX),
                    removed: g.removed,
                    extra,
                })),
                ..labels.clone()
            };
            sets.push((changed, skipped.union(g.metrics.complement())));
        }
        sets
    }
}

/// The TCP report of a connection with `labels`, minus the families `skipped`, recorded
/// also under the label sets `tags` make (values read from the connection: no request, so
/// header values are `unknown`).
pub fn tcp_report(
    labels: IstioLabels,
    skipped: MetricSet,
    tags: Option<&TagOverrides>,
) -> TcpReport {
    let Some(tags) = tags else {
        return TcpReport::new(labels, skipped);
    };
    let attributes = LogAttributes {
        protocol: super::istio::TCP,
        ..Default::default()
    };
    let mut sets = tags.label_sets(&labels, &attributes, skipped).into_iter();
    match sets.next() {
        Some((labels, skipped)) => TcpReport {
            labels,
            skipped,
            tagged: sets.collect(),
        },
        None => TcpReport::new(labels, skipped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(value: &str) -> v1::TagOverride {
        v1::TagOverride {
            remove: false,
            value: value.into(),
        }
    }

    fn removed() -> v1::TagOverride {
        v1::TagOverride {
            remove: true,
            value: String::new(),
        }
    }

    fn entry(metric: v1::MetricSelector, tags: &[(&str, v1::TagOverride)]) -> v1::MetricOverride {
        v1::MetricOverride {
            metric: metric as i32,
            mode: v1::WorkloadMode::ClientAndServer as i32,
            disabled: false,
            tag_overrides: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn values_are_literals_headers_or_cel_and_unknown_when_absent() {
        let headers = vec![
            ("x-tenant".to_string(), "acme".to_string()),
            ("x-long".to_string(), "é".repeat(100)),
        ];
        let a = LogAttributes {
            headers: &headers,
            method: "POST",
            code: 503,
            ..Default::default()
        };
        let mut ctx = None;
        let v = |e: &str, ctx: &mut Option<_>| TagValue::compile(e).unwrap().value(&a, ctx);
        assert_eq!(v("'gold'", &mut ctx), "gold");
        assert_eq!(v("request.headers['X-Tenant']", &mut ctx), "acme");
        assert_eq!(v("request.headers['x-missing']", &mut ctx), "unknown");
        assert!(ctx.is_none(), "the common forms never build a CEL context");
        assert_eq!(
            v("request.method + '-' + string(response.code)", &mut ctx),
            "POST-503"
        );
        assert_eq!(v("response.code >= 500", &mut ctx), "true");
        assert_eq!(v("request.headers['x-missing'] + 'x'", &mut ctx), "unknown");
        let long = v("request.headers['x-long']", &mut ctx);
        assert!(long.len() <= MAX_VALUE_LEN && long.chars().all(|c| c == 'é'));
        assert!(TagValue::compile("request.headers[").is_err());
    }

    #[test]
    fn metrics_with_the_same_map_share_a_group_and_names_are_made_label_names() {
        use v1::MetricSelector as M;
        let tenant = [("tenant", tag("request.headers['x-tenant']"))];
        let o = TagOverrides::compile(
            &[
                entry(M::RequestCount, &tenant),
                entry(M::RequestDuration, &tenant),
                entry(M::RequestSize, &[("source_principal", removed())]),
                entry(M::ResponseSize, &[]),
            ],
            |_| true,
        )
        .unwrap()
        .unwrap();
        assert_eq!(o.groups.len(), 2);
        assert!(o.groups[0].metrics.contains(M::RequestCount));
        assert!(o.groups[0].metrics.contains(M::RequestDuration));
        assert!(!o.covered.contains(M::ResponseSize));
        assert!(o.reads_request());
        let principal = STANDARD_LABELS
            .iter()
            .position(|l| *l == "source_principal")
            .unwrap();
        assert_eq!(o.groups[1].removed, 1 << principal);
        // The other side's entries, or none at all: nothing to do.
        assert!(
            TagOverrides::compile(&[entry(M::RequestCount, &tenant)], |_| false)
                .unwrap()
                .is_none()
        );
        // Names as Envoy's Prometheus output writes them; an empty one labels nothing.
        let o = TagOverrides::compile(
            &[entry(
                M::RequestCount,
                &[
                    ("tenant-id", tag("'a'")),
                    ("9lives", tag("'b'")),
                    ("", tag("'c'")),
                ],
            )],
            |_| true,
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = o.groups[0].upserts.iter().map(|(n, _)| &**n).collect();
        assert_eq!(names, ["_9lives", "tenant_id"]);
    }
}
