//! A workload's Telemetry (`telemetry.istio.io`), resolved as istiod resolves it
//! (`pilot/pkg/model/telemetry.go`) into the [`v1::WorkloadTelemetry`] of its inbound policy.
//!
//! Which resources apply: the oldest Telemetry without a selector in the root namespace
//! (mesh-wide), then the oldest without a selector in the workload's namespace, then the
//! oldest whose selector matches the workload's labels in its namespace; a selector without
//! labels counts as none, and resources attached by `targetRef(s)` are for gateways and
//! waypoints, not sidecars. Their entries are then applied in that order, root first, so
//! the more specific wins:
//!
//! - `tracing`: per side (client, server; `match.mode`), each field an entry sets replaces
//!   the inherited one (providers, sampling, `disableSpanReporting`, `customTags` as a whole
//!   map). A provider that is not a tracing provider of the MeshConfig turns span reporting
//!   off, as istiod does.
//! - `metrics`: the providers in force are the most specific list named (else
//!   `prometheus`); an entry without providers inherits the previous entry's. Overrides of
//!   entries that reach a prometheus provider in force are merged per side and metric,
//!   `disabled` when set, tags by name (a later one replacing an earlier one). With no
//!   prometheus provider in force the sidecar exports no metrics (one `ALL_METRICS` override,
//!   disabled). One difference from istiod: an `ALL_METRICS` `disabled` override is kept per
//!   side and undone only by a later `disabled: false`, where istiod drops the provider on
//!   both sides and lets any later override bring it back.
//! - `accessLogging`: the providers in force are the most specific resource's (else the
//!   MeshConfig's `defaultProviders.accessLogging`, else the sidecar's own default, sent as
//!   an entry without providers); per provider and side, the most specific entry that
//!   applies wins, with its `disabled` and its `filter` (istiod takes the filter of the last
//!   entry that names the provider explicitly; meshlite also takes it from an entry that
//!   inherits the provider). A provider in force that no entry enables on a side is off
//!   there, as in istiod.

use std::collections::{BTreeMap, BTreeSet};

use meshlite_xds_proto::v1;

use crate::model::{
    ConfigSet, CustomTag, DEFAULT_METRICS_PROVIDERS, IstioMetric, MeshConfig, Named, ProviderRef,
    ROOT_NAMESPACE, TRACING_PROVIDER_KINDS, TagOperation, Telemetry, WorkloadMode, provider_kinds,
};
use crate::registry::Workload;

/// The two sides a workload reports and traces from.
const SIDES: [WorkloadMode; 2] = [WorkloadMode::Client, WorkloadMode::Server];

/// Index of `side` in [`SIDES`].
fn side_index(side: WorkloadMode) -> usize {
    usize::from(side == WorkloadMode::Server)
}

/// The Telemetry resources that apply to `w`, least specific first.
pub(super) fn applicable<'a>(config: &'a ConfigSet, w: &'a Workload) -> Vec<&'a Named<Telemetry>> {
    let oldest =
        |a: &&Named<Telemetry>, b: &&Named<Telemetry>| a.meta.age_key().cmp(&b.meta.age_key());
    let wide = |ns: &'a str| {
        config
            .telemetries_in(ns)
            .filter(|t| !t.spec.is_targeted() && t.spec.selector_labels().is_none())
            .min_by(oldest)
    };
    let mut out: Vec<&Named<Telemetry>> = wide(ROOT_NAMESPACE).into_iter().collect();
    if w.namespace != ROOT_NAMESPACE {
        out.extend(wide(&w.namespace));
    }
    let selecting = config
        .telemetries_in(&w.namespace)
        .filter(|t| {
            !t.spec.is_targeted()
                && t.spec
                    .selector_labels()
                    .is_some_and(|l| l.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
        })
        .min_by(oldest);
    out.extend(selecting);
    out
}

/// The Telemetry in force for `w`; `None` when no Telemetry applies to it.
pub fn resolve(config: &ConfigSet, w: &Workload) -> Option<v1::WorkloadTelemetry> {
    let levels = applicable(config, w);
    if levels.is_empty() {
        return None;
    }
    let mesh = config.mesh_config.as_ref().map(|m| &m.spec);
    let specs: Vec<&Telemetry> = levels.iter().map(|t| &t.spec).collect();
    let (tracing, server_tracing) = tracing(&specs, mesh);
    Some(v1::WorkloadTelemetry {
        tracing,
        server_tracing,
        metric_overrides: metric_overrides(&specs, mesh),
        access_logging: access_logging(&specs, mesh),
        sources: levels.iter().map(|t| t.key()).collect(),
    })
}

/// Names of `providers` (trimmed; empty names are refused by validation).
fn names(providers: &[ProviderRef]) -> Vec<String> {
    providers
        .iter()
        .map(|p| p.name.trim().to_string())
        .collect()
}

/// The kinds of the provider called `name` in `mesh` (or built in).
fn kinds(mesh: Option<&MeshConfig>, name: &str) -> Option<Vec<&'static str>> {
    let declared = mesh.into_iter().flat_map(|m| {
        m.extension_providers
            .iter()
            .map(|p| (p.name.as_str(), p.kinds()))
    });
    provider_kinds(declared, name)
}

/// One side's tracing, as the entries applied so far leave it.
#[derive(Debug, Clone, Default, PartialEq)]
struct TraceSpec {
    providers: Vec<String>,
    sampling: Option<f64>,
    disabled: Option<bool>,
    tags: Option<BTreeMap<String, CustomTag>>,
}

impl TraceSpec {
    fn settings(&self, mesh: Option<&MeshConfig>) -> v1::TracingSettings {
        // istiod: a provider that is not found (or cannot trace) leaves the side without a
        // tracer: no spans are reported.
        let unusable = self.providers.first().is_some_and(|p| {
            !kinds(mesh, p).is_some_and(|k| k.iter().any(|k| TRACING_PROVIDER_KINDS.contains(k)))
        });
        v1::TracingSettings {
            providers: self.providers.clone(),
            random_sampling_percentage: self.sampling,
            disable_span_reporting: unusable || self.disabled.unwrap_or(false),
            custom_tags: self
                .tags
                .iter()
                .flatten()
                .filter_map(|(name, tag)| Some((name.clone(), custom_tag(tag)?)))
                .collect(),
        }
    }
}

fn custom_tag(tag: &CustomTag) -> Option<v1::CustomTag> {
    use v1::custom_tag::Kind;
    let kind = if let Some(l) = &tag.literal {
        Kind::Literal(l.value.clone())
    } else if let Some(h) = &tag.header {
        Kind::Header(v1::HeaderTag {
            name: h.name.clone(),
            default_value: h.default_value.clone().unwrap_or_default(),
        })
    } else {
        let e = tag.environment.as_ref()?;
        Kind::Environment(v1::EnvironmentTag {
            name: e.name.clone(),
            default_value: e.default_value.clone().unwrap_or_default(),
        })
    };
    Some(v1::CustomTag { kind: Some(kind) })
}

/// `tracing` (the client side's when the sides differ) and `server_tracing` (only when they
/// differ).
fn tracing(
    levels: &[&Telemetry],
    mesh: Option<&MeshConfig>,
) -> (Option<v1::TracingSettings>, Option<v1::TracingSettings>) {
    let mut sides = [TraceSpec::default(), TraceSpec::default()];
    let mut any = false;
    for entry in levels.iter().flat_map(|t| &t.tracing) {
        any = true;
        let providers = names(&entry.providers);
        for side in SIDES {
            if !entry.mode().covers(side) {
                continue;
            }
            let spec = &mut sides[side_index(side)];
            if !providers.is_empty() {
                spec.providers = providers.clone();
            }
            if let Some(s) = entry.random_sampling_percentage {
                spec.sampling = Some(s);
            }
            if let Some(d) = entry.disable_span_reporting {
                spec.disabled = Some(d);
            }
            if let Some(tags) = &entry.custom_tags {
                spec.tags = Some(tags.clone());
            }
        }
    }
    if !any {
        return (None, None);
    }
    let [client, server] = sides;
    let server = (server != client).then(|| server.settings(mesh));
    (Some(client.settings(mesh)), server)
}

fn wire_mode(m: WorkloadMode) -> v1::WorkloadMode {
    match m {
        WorkloadMode::ClientAndServer => v1::WorkloadMode::ClientAndServer,
        WorkloadMode::Client => v1::WorkloadMode::Client,
        WorkloadMode::Server => v1::WorkloadMode::Server,
    }
}

fn wire_metric(m: IstioMetric) -> v1::MetricSelector {
    use v1::MetricSelector as S;
    match m {
        IstioMetric::AllMetrics => S::AllMetrics,
        IstioMetric::RequestCount => S::RequestCount,
        IstioMetric::RequestDuration => S::RequestDuration,
        IstioMetric::RequestSize => S::RequestSize,
        IstioMetric::ResponseSize => S::ResponseSize,
        IstioMetric::TcpOpenedConnections => S::TcpOpenedConnections,
        IstioMetric::TcpClosedConnections => S::TcpClosedConnections,
        IstioMetric::TcpSentBytes => S::TcpSentBytes,
        IstioMetric::TcpReceivedBytes => S::TcpReceivedBytes,
        IstioMetric::GrpcRequestMessages => S::GrpcRequestMessages,
        IstioMetric::GrpcResponseMessages => S::GrpcResponseMessages,
    }
}

/// One metric on one side, as the overrides applied so far leave it.
#[derive(Debug, Clone, Default, PartialEq)]
struct MetricState {
    disabled: bool,
    tags: BTreeMap<String, v1::TagOverride>,
}

fn metric_override(metric: IstioMetric, mode: WorkloadMode, s: &MetricState) -> v1::MetricOverride {
    v1::MetricOverride {
        metric: wire_metric(metric) as i32,
        mode: wire_mode(mode) as i32,
        disabled: s.disabled,
        tag_overrides: s.tags.clone(),
    }
}

/// The merged `metrics[].overrides` for the Prometheus metrics the sidecar exports.
fn metric_overrides(levels: &[&Telemetry], mesh: Option<&MeshConfig>) -> Vec<v1::MetricOverride> {
    let entries: Vec<_> = levels.iter().flat_map(|t| &t.metrics).collect();
    if entries.is_empty() {
        return Vec::new();
    }
    let default: Vec<String> = DEFAULT_METRICS_PROVIDERS
        .iter()
        .map(|p| p.to_string())
        .collect();
    // The most specific list named is in force; a provider is compared case-insensitively.
    let in_force: BTreeSet<String> = entries
        .iter()
        .map(|m| names(&m.providers))
        .rfind(|n| !n.is_empty())
        .unwrap_or_else(|| default.clone())
        .into_iter()
        .filter(|n| kinds(mesh, n).is_some_and(|k| k.contains(&"prometheus")))
        .map(|n| n.to_ascii_lowercase())
        .collect();
    if in_force.is_empty() {
        let off = MetricState {
            disabled: true,
            tags: BTreeMap::new(),
        };
        return vec![metric_override(
            IstioMetric::AllMetrics,
            WorkloadMode::ClientAndServer,
            &off,
        )];
    }
    // [side][metric]: None until an override touches it.
    let mut state: [[Option<MetricState>; 10]; 2] = Default::default();
    let mut parent = default;
    for entry in entries {
        let named = names(&entry.providers);
        let providers = if named.is_empty() {
            parent.clone()
        } else {
            named
        };
        let applies = providers
            .iter()
            .any(|p| in_force.contains(&p.to_ascii_lowercase()));
        parent = providers;
        if !applies {
            continue;
        }
        for o in &entry.overrides {
            let sel = o.matches.clone().unwrap_or_default();
            if sel.custom_metric.is_some() {
                continue; // not a standard metric: reported by validation, not applied
            }
            let metrics: Vec<usize> = match sel.metric.unwrap_or_default() {
                IstioMetric::AllMetrics => (0..IstioMetric::EACH.len()).collect(),
                m => IstioMetric::EACH
                    .iter()
                    .position(|x| *x == m)
                    .into_iter()
                    .collect(),
            };
            for side in SIDES {
                if !sel.mode.covers(side) {
                    continue;
                }
                for &i in &metrics {
                    let s = state[side_index(side)][i].get_or_insert_with(MetricState::default);
                    if let Some(d) = o.disabled {
                        s.disabled = d;
                    }
                    for (name, tag) in &o.tag_overrides {
                        let remove = tag.operation == TagOperation::Remove;
                        s.tags.insert(
                            name.clone(),
                            v1::TagOverride {
                                remove,
                                value: if remove {
                                    String::new()
                                } else {
                                    tag.value.clone().unwrap_or_default()
                                },
                            },
                        );
                    }
                }
            }
        }
    }
    emit_metrics(&state)
}

/// The merged state as few overrides as say it exactly: one `ALL_METRICS` entry for a side
/// (or both) where every metric is in the same state, else one entry per metric (for both
/// sides where they agree). Entries never overlap.
fn emit_metrics(state: &[[Option<MetricState>; 10]; 2]) -> Vec<v1::MetricOverride> {
    let uniform = |side: &[Option<MetricState>; 10]| -> Option<MetricState> {
        let first = side[0].clone()?;
        side.iter()
            .all(|s| s.as_ref() == Some(&first))
            .then_some(first)
    };
    let [client, server] = state;
    let (all_client, all_server) = (uniform(client), uniform(server));
    let mut out = Vec::new();
    match (&all_client, &all_server) {
        (Some(c), Some(s)) if c == s => {
            out.push(metric_override(
                IstioMetric::AllMetrics,
                WorkloadMode::ClientAndServer,
                c,
            ));
            return out;
        }
        _ => {}
    }
    if let Some(c) = &all_client {
        out.push(metric_override(
            IstioMetric::AllMetrics,
            WorkloadMode::Client,
            c,
        ));
    }
    if let Some(s) = &all_server {
        out.push(metric_override(
            IstioMetric::AllMetrics,
            WorkloadMode::Server,
            s,
        ));
    }
    for (i, metric) in IstioMetric::EACH.into_iter().enumerate() {
        let c = client[i].as_ref().filter(|_| all_client.is_none());
        let s = server[i].as_ref().filter(|_| all_server.is_none());
        match (c, s) {
            (Some(c), Some(s)) if c == s => {
                out.push(metric_override(metric, WorkloadMode::ClientAndServer, c));
            }
            (c, s) => {
                if let Some(c) = c {
                    out.push(metric_override(metric, WorkloadMode::Client, c));
                }
                if let Some(s) = s {
                    out.push(metric_override(metric, WorkloadMode::Server, s));
                }
            }
        }
    }
    out
}

/// One provider on one side: off, or on with a filter (empty: every request).
#[derive(Debug, Clone, PartialEq)]
enum LogState {
    Off,
    On(String),
}

/// The resolved `accessLogging`, per provider and side. Entries without providers use the
/// MeshConfig's `defaultProviders.accessLogging`, or without those the sidecar's own default
/// (`""`: its `--access-log` target, else standard output).
fn access_logging(levels: &[&Telemetry], mesh: Option<&MeshConfig>) -> Vec<v1::AccessLogging> {
    if levels.iter().all(|t| t.access_logging.is_empty()) {
        return Vec::new();
    }
    let defaults: Vec<String> = mesh
        .and_then(|m| m.default_providers.as_ref())
        .map(|d| {
            d.access_logging
                .iter()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .filter(|d: &Vec<String>| !d.is_empty())
        .unwrap_or_else(|| vec![String::new()]);
    // The providers in force: those named by the most specific resource that names any.
    let in_force: BTreeSet<String> = levels
        .iter()
        .map(|t| {
            t.access_logging
                .iter()
                .flat_map(|l| names(&l.providers))
                .collect::<BTreeSet<String>>()
        })
        .rfind(|n| !n.is_empty())
        .unwrap_or_else(|| defaults.iter().cloned().collect());
    let mut state: BTreeMap<&str, [LogState; 2]> = in_force
        .iter()
        .map(|p| (p.as_str(), [LogState::Off, LogState::Off]))
        .collect();
    let mut parent = defaults.clone();
    for entry in levels.iter().flat_map(|t| &t.access_logging) {
        let named = names(&entry.providers);
        let providers = if named.is_empty() {
            parent.clone()
        } else {
            named
        };
        for p in &providers {
            let Some(sides) = state.get_mut(p.as_str()) else {
                continue; // not in force: a more specific resource chose other providers
            };
            for side in SIDES {
                if !entry.mode().covers(side) {
                    continue;
                }
                sides[side_index(side)] = if entry.disabled == Some(true) {
                    LogState::Off
                } else {
                    LogState::On(
                        entry
                            .filter
                            .as_ref()
                            .map(|f| f.expression.clone())
                            .unwrap_or_default(),
                    )
                };
            }
        }
        parent = providers;
    }
    let mut out = Vec::new();
    for (provider, [client, server]) in state {
        let entry = |s: &LogState, mode: WorkloadMode| v1::AccessLogging {
            providers: if provider.is_empty() {
                Vec::new()
            } else {
                vec![provider.to_string()]
            },
            disabled: *s == LogState::Off,
            filter: match s {
                LogState::On(f) => f.clone(),
                LogState::Off => String::new(),
            },
            mode: wire_mode(mode) as i32,
        };
        if client == server {
            out.push(entry(&client, WorkloadMode::ClientAndServer));
        } else {
            out.push(entry(&client, WorkloadMode::Client));
            out.push(entry(&server, WorkloadMode::Server));
        }
    }
    out
}

#[cfg(test)]
mod tests;
