//! Results: the JSON records, medians over repetitions, and the printed tables.
//!
//! One [`RateRecord`] per rate. With several repetitions, every number is the median over the
//! repetitions that were not disturbed (all of them if none was clean), and `spread` gives the
//! range `[min, max]` of each figure by its JSON path (`added.p99_ms`, `sidecars[0].cpu_cores`...):
//! on a shared 2-core machine a tail percentile means little without its spread.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A published figure of the decision record.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Mesh name.
    pub name: &'static str,
    /// Added latency, ms.
    pub added_ms: f64,
    /// CPU per sidecar, cores.
    pub cores: f64,
    /// Memory per sidecar, MB.
    pub rss_mb: f64,
}

/// The decision record's targets, printed beside our figures.
pub const TARGETS: [Target; 3] = [
    Target {
        name: "Istio",
        added_ms: 0.85,
        cores: 0.5,
        rss_mb: 140.0,
    },
    Target {
        name: "Linkerd",
        added_ms: 0.42,
        cores: 0.3,
        rss_mb: 85.0,
    },
    Target {
        name: "Cilium",
        added_ms: 0.38,
        cores: 0.2,
        rss_mb: 75.0,
    },
];

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
}

impl Percentiles {
    /// `self - base`, percentile by percentile.
    pub fn minus(&self, base: &Percentiles) -> Percentiles {
        Percentiles {
            p50_ms: self.p50_ms - base.p50_ms,
            p90_ms: self.p90_ms - base.p90_ms,
            p99_ms: self.p99_ms - base.p99_ms,
            p999_ms: self.p999_ms - base.p999_ms,
        }
    }
}

/// One leg of a run: the load through one path (direct, meshed, or the peer's pair).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LegRecord {
    /// Latency from intended send time.
    #[serde(flatten)]
    pub latency: Percentiles,
    /// Slowest request, ms.
    pub max_ms: f64,
    /// Successful responses completed in the window, per second.
    pub achieved_rps: f64,
    /// Requests due in the window.
    pub requests: u64,
    /// Failed requests due in the window.
    pub errors: u64,
    /// Errors during the warm-up (not in `errors`).
    pub warmup_errors: u64,
    /// CPU of the load generator (this process), cores.
    pub generator_cpu_cores: f64,
    /// CPU of the app, cores.
    pub app_cpu_cores: f64,
    /// CPU used by everything else on the machine, cores.
    pub other_load_cores: f64,
    /// The leg's figures are not trustworthy (see reasons).
    pub disturbed: bool,
    /// Why it is disturbed.
    pub disturbed_reasons: Vec<String>,
    /// A few error messages, as examples.
    pub error_samples: Vec<String>,
    /// How late the generator released requests after their intended time, median, ms.
    #[serde(default)]
    pub pacer_late_p50_ms: f64,
    /// The same at p99, ms.
    #[serde(default)]
    pub pacer_late_p99_ms: f64,
}

/// One sidecar's cost over the measured window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SidecarRecord {
    /// `client` or `server`.
    pub role: String,
    /// Peak resident set (VmHWM), MB (10^6 bytes).
    pub rss_peak_mb: f64,
    /// CPU used, cores.
    pub cpu_cores: f64,
    /// CPU milliseconds per 1,000 requests.
    pub cpu_ms_per_1k_req: f64,
}

/// The peer pair's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Implementation (`haproxy`).
    pub name: String,
    /// Its version line.
    pub version: String,
    /// Threads per sidecar.
    pub threads: u32,
    /// Latency through the peer pair.
    pub meshed: Option<LegRecord>,
    /// Peer minus direct.
    pub added: Option<Percentiles>,
    /// Errors through the peer pair.
    pub errors: u64,
    /// Achieved rate through the peer pair.
    pub achieved_rps: f64,
    /// The peer's two sidecars.
    pub sidecars: Vec<SidecarRecord>,
    /// The peer leg is disturbed.
    pub disturbed: bool,
    /// Why the peer leg could not run, if it could not.
    pub failure: Option<String>,
}

/// `--tracing`: the traced meshlite pairs of a rate, each set beside the untraced pair of the
/// same repetition (the record's `meshed` and `sidecars`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TracingRecord {
    /// How the spans travelled (`otlp-grpc`) and to whom: the bench's own collector on loopback.
    pub collector: String,
    /// One per sampling percentage, in the order given.
    pub runs: Vec<TracedRecord>,
}

/// One traced pair: both sidecars sampling `sampling_percent` of the requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TracedRecord {
    /// `randomSamplingPercentage` of both sidecars.
    pub sampling_percent: f64,
    /// Latency through the traced pair.
    pub meshed: Option<LegRecord>,
    /// Traced pair minus direct.
    pub added: Option<Percentiles>,
    /// Errors through the traced pair.
    pub errors: u64,
    /// Achieved rate through the traced pair.
    pub achieved_rps: f64,
    /// The traced pair's two sidecars (client, server).
    pub sidecars: Vec<SidecarRecord>,
    /// What the collector received.
    pub spans: Option<SpanCounts>,
    /// CPU of the collector (a thread of the bench) over the measured window, cores; taken out
    /// of the generator's figure, counted against no sidecar.
    pub collector_cpu_cores: f64,
    /// The difference from the untraced pair of the same repetition.
    pub vs_untraced: Option<TracingDelta>,
    /// This leg, the untraced one or the direct one is disturbed.
    pub disturbed: bool,
    /// The span count does not match the sampling percentage (see `notes`).
    pub spans_off: bool,
    /// What the span check found, and the proxies' exit notes.
    pub notes: Vec<String>,
    /// Why the traced leg could not run, if it could not.
    pub failure: Option<String>,
}

/// The spans one traced leg produced, as the collector received them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SpanCounts {
    /// Every span received during the leg: warm-up, window, and the flush after it.
    pub received: u64,
    /// CLIENT spans (source sidecar) that started inside the measured window: one per sampled
    /// request.
    pub client_in_window: u64,
    /// SERVER spans (destination sidecar) that started inside the measured window: one per
    /// sampled request too (the decision travels with the request).
    pub server_in_window: u64,
    /// `client_in_window` per request due in the window, percent: the sampling seen.
    pub sampled_percent: f64,
    /// Export requests the collector answered.
    pub batches: u64,
    /// Spans the sidecars dropped (`meshlite_spans_dropped_total`: queue full, export failed);
    /// null when their metrics could not be read.
    pub dropped: Option<u64>,
}

/// A traced pair against the untraced one.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct TracingDelta {
    /// CPU per request of both sidecars together, percent more than untraced.
    pub cpu_per_request_pct: f64,
    /// The client sidecar's CPU per request, percent more.
    pub client_cpu_pct: f64,
    /// The server sidecar's CPU per request, percent more.
    pub server_cpu_pct: f64,
    /// Added latency minus the untraced pair's, ms, percentile by percentile.
    pub latency: Percentiles,
    /// The client sidecar's peak RSS minus the untraced one's, MB.
    pub client_rss_mb: f64,
    /// The server sidecar's peak RSS minus the untraced one's, MB.
    pub server_rss_mb: f64,
}

impl TracingDelta {
    /// `traced` against `untraced`: added latencies and both sidecars' (client, server) figures.
    pub fn between(
        traced: (&Percentiles, &[SidecarRecord]),
        untraced: (&Percentiles, &[SidecarRecord]),
    ) -> Option<Self> {
        let ([tc, ts], [uc, us]) = (traced.1, untraced.1) else {
            return None;
        };
        let pct = |t: f64, u: f64| {
            if u > 0.0 { (t / u - 1.0) * 100.0 } else { 0.0 }
        };
        Some(Self {
            cpu_per_request_pct: pct(
                tc.cpu_ms_per_1k_req + ts.cpu_ms_per_1k_req,
                uc.cpu_ms_per_1k_req + us.cpu_ms_per_1k_req,
            ),
            client_cpu_pct: pct(tc.cpu_ms_per_1k_req, uc.cpu_ms_per_1k_req),
            server_cpu_pct: pct(ts.cpu_ms_per_1k_req, us.cpu_ms_per_1k_req),
            latency: traced.0.minus(untraced.0),
            client_rss_mb: tc.rss_peak_mb - uc.rss_peak_mb,
            server_rss_mb: ts.rss_peak_mb - us.rss_peak_mb,
        })
    }
}

/// How a scenario drove its load: the keys every scenario's JSON starts with (flattened
/// into each record, so the keys stay top-level).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadSettings {
    /// Target rate where the generator sends (the client sidecar, or the mesh's entry).
    pub rate_rps: u32,
    /// Measured window (per leg), seconds.
    pub duration_s: f64,
    /// Warm-up (per leg), seconds.
    pub warmup_s: f64,
    /// Generator connections.
    pub connections: u32,
    /// Response body size (of every app).
    pub payload_bytes: usize,
    /// What the generator spoke.
    pub protocol: String,
    /// Sidecar-to-sidecar traffic is mutual TLS.
    pub mtls: bool,
    /// The server sidecar enforced the decision record's AuthorizationPolicy shape.
    pub authz: bool,
}

impl LoadSettings {
    /// The settings `args` gives a run at `rate`; every scenario's sidecars speak mTLS.
    pub fn of(rate: u32, args: &crate::cli::BenchArgs) -> Self {
        Self {
            rate_rps: rate,
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            connections: args.connections,
            payload_bytes: args.payload,
            protocol: args.protocol.name().into(),
            mtls: true,
            authz: args.authz,
        }
    }
}

/// Everything measured at one rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RateRecord {
    /// Rate, window, connections, payload, protocol, mTLS.
    #[serde(flatten)]
    pub load: LoadSettings,
    /// `--workers` given to the proxies (null: the proxy's default).
    pub workers: Option<u32>,
    /// Sidecar-to-sidecar protocol.
    pub upstream_protocol: String,
    /// Whether `upstream.protocol` was written into the config (false: proxy default).
    pub upstream_protocol_explicit: bool,
    /// Generator on CPU 0, app and sidecars on CPU 1.
    pub pinned: bool,
    /// Repetitions run.
    pub repetitions: u32,
    /// Repetitions the medians are taken over (the undisturbed ones, or all if none was clean).
    pub repetitions_used: u32,
    /// Straight to the app.
    pub direct: LegRecord,
    /// Through the meshlite pair.
    pub meshed: Option<LegRecord>,
    /// Meshed minus direct.
    pub added: Option<Percentiles>,
    /// Errors through the meshlite pair.
    pub errors: u64,
    /// Achieved rate through the meshlite pair.
    pub achieved_rps: f64,
    /// Generator CPU during the meshed leg, cores.
    pub generator_cpu_cores: f64,
    /// Other processes' CPU during the meshed leg, cores.
    pub other_load_cores: f64,
    /// The direct or the meshed leg is disturbed.
    pub disturbed: bool,
    /// The meshlite sidecars.
    pub sidecars: Vec<SidecarRecord>,
    /// Why the meshed leg could not run, if it could not.
    pub meshed_failure: Option<String>,
    /// Notes on the proxies' behaviour (e.g. an unclean exit on SIGTERM).
    pub proxy_notes: Vec<String>,
    /// The peer pair, with `--peer`.
    pub peer: Option<PeerRecord>,
    /// The traced pairs, with `--tracing` (left out of the JSON without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingRecord>,
    /// `[min, max]` of each figure over the repetitions used, by JSON path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spread: Option<BTreeMap<String, [f64; 2]>>,
}

/// Why records could not be combined or written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// (De)serialising a record failed.
    #[error("cannot combine repetitions: {0}")]
    Json(#[from] serde_json::Error),
    /// There was nothing to combine.
    #[error("no repetitions to combine")]
    Empty,
    /// Writing the JSON file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Keys that describe the run rather than measure it: no spread for them.
const SETTINGS: [&str; 9] = [
    "rate_rps",
    "duration_s",
    "warmup_s",
    "connections",
    "payload_bytes",
    "workers",
    "repetitions",
    "threads",
    "sampling_percent",
];

/// Combines repetitions: medians over the clean ones (or all), plus the spread.
pub fn combine(reps: &[RateRecord]) -> Result<RateRecord, ReportError> {
    let clean: Vec<&RateRecord> = reps.iter().filter(|r| !r.disturbed).collect();
    let used: Vec<&RateRecord> = if clean.is_empty() {
        reps.iter().collect()
    } else {
        clean
    };
    let first = used.first().ok_or(ReportError::Empty)?;
    if reps.len() == 1 {
        let mut one = (*first).clone();
        one.repetitions = 1;
        one.repetitions_used = 1;
        return Ok(one);
    }
    let values = used
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()?;
    let mut spread = BTreeMap::new();
    let merged = combine_values(&values, "", &mut spread);
    let mut record: RateRecord = serde_json::from_value(merged)?;
    record.repetitions = u32::try_from(reps.len()).unwrap_or(u32::MAX);
    record.repetitions_used = u32::try_from(used.len()).unwrap_or(u32::MAX);
    record.disturbed = used.iter().all(|r| r.disturbed);
    record.spread = Some(spread);
    Ok(record)
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn combine_values(values: &[Value], path: &str, spread: &mut BTreeMap<String, [f64; 2]>) -> Value {
    let Some(first) = values.first() else {
        return Value::Null;
    };
    if values.iter().all(Value::is_number) {
        let mut sorted: Vec<&Value> = values.iter().collect();
        sorted.sort_by(|a, b| {
            let (a, b) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
            a.total_cmp(&b)
        });
        let key = path.rsplit('.').next().unwrap_or(path);
        if !SETTINGS.contains(&key) {
            let low = sorted.first().and_then(|v| v.as_f64()).unwrap_or(0.0);
            let high = sorted.last().and_then(|v| v.as_f64()).unwrap_or(0.0);
            spread.insert(path.to_string(), [low, high]);
        }
        // Lower median: an observed value (exact median for odd counts), keeps integers integers.
        return sorted
            .get((sorted.len() - 1) / 2)
            .map_or(Value::Null, |v| (*v).clone());
    }
    if values.iter().all(Value::is_boolean) {
        return Value::Bool(values.iter().any(|v| v.as_bool() == Some(true)));
    }
    if values.iter().all(Value::is_object) {
        let mut out = Map::new();
        if let Some(obj) = first.as_object() {
            for key in obj.keys() {
                let parts: Vec<Value> = values
                    .iter()
                    .filter_map(|v| v.get(key))
                    .filter(|v| !v.is_null())
                    .cloned()
                    .collect();
                let merged = if parts.is_empty() {
                    Value::Null
                } else {
                    combine_values(&parts, &child_path(path, key), spread)
                };
                out.insert(key.clone(), merged);
            }
        }
        return Value::Object(out);
    }
    if values.iter().all(Value::is_array) {
        let arrays: Vec<&Vec<Value>> = values.iter().filter_map(Value::as_array).collect();
        let all_strings = arrays.iter().all(|a| a.iter().all(Value::is_string));
        if all_strings {
            let mut union: Vec<Value> = Vec::new();
            for item in arrays.iter().flat_map(|a| a.iter()) {
                if !union.contains(item) {
                    union.push(item.clone());
                }
            }
            return Value::Array(union);
        }
        let len = arrays.iter().map(|a| a.len()).min().unwrap_or(0);
        return Value::Array(
            (0..len)
                .map(|i| {
                    let parts: Vec<Value> =
                        arrays.iter().filter_map(|a| a.get(i).cloned()).collect();
                    combine_values(&parts, &format!("{path}[{i}]"), spread)
                })
                .collect(),
        );
    }
    values
        .iter()
        .find(|v| !v.is_null())
        .cloned()
        .unwrap_or(Value::Null)
}

/// The JSON document: one object for one rate, `{"runs": [...]}` for a ladder.
pub fn to_json(records: &[RateRecord], single_rate: bool) -> Result<String, ReportError> {
    let value = match (single_rate, records) {
        (true, [one]) => serde_json::to_value(one)?,
        _ => serde_json::json!({ "runs": records }),
    };
    Ok(serde_json::to_string_pretty(&value)?)
}

/// Writes a scenario's runs as `{"scenario": NAME, "runs": [...]}` to `path` (the shape the
/// control and scale scenarios share), and says where.
pub fn write_runs(
    path: &std::path::Path,
    scenario: &str,
    runs: &impl serde::Serialize,
) -> Result<(), ReportError> {
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "scenario": scenario,
        "runs": runs,
    }))?;
    write_json(path, &text)?;
    println!("JSON written to {}", path.display());
    Ok(())
}

/// Writes the JSON document to `path`.
pub fn write_json(path: &std::path::Path, text: &str) -> Result<(), ReportError> {
    std::fs::write(path, format!("{text}\n")).map_err(|source| ReportError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// A number with its range when there were repetitions: `0.41 [0.38-0.52]`.
fn cell(record: &RateRecord, path: &str, value: f64, decimals: usize) -> String {
    match record.spread.as_ref().and_then(|s| s.get(path)) {
        Some([low, high]) if (high - low).abs() > f64::EPSILON => {
            format!("{value:.decimals$} [{low:.decimals$}-{high:.decimals$}]")
        }
        _ => format!("{value:.decimals$}"),
    }
}

fn flags(disturbed: bool, reasons: &[String]) -> String {
    if disturbed {
        format!("DISTURBED: {}", reasons.join("; "))
    } else {
        String::new()
    }
}

/// One line of the latency table: implementation, JSON key prefix, (added, meshed leg) figures
/// when the leg ran, and why it failed otherwise.
type TableRow<'a> = (
    String,
    String,
    Option<(&'a Percentiles, &'a LegRecord)>,
    Option<&'a String>,
);

/// Renders the tables for all rates.
pub fn render(records: &[RateRecord]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nAdded latency over a direct call (meshed minus direct, ms; latency from intended send time)"
    );
    if records.iter().any(|r| r.load.authz) {
        let _ = writeln!(
            out,
            "(meshlite's server sidecar enforcing the decision record's AuthorizationPolicy shape: ALLOW principal+method+path, DENY on a header)"
        );
    }
    let _ = writeln!(
        out,
        "{:>6}  {:<9} {:>15} {:>15} {:>15} {:>15} {:>10} {:>7}  {:>13} {:>13}  flags",
        "rate",
        "sidecars",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "achieved",
        "errors",
        "direct p50",
        "direct p99"
    );
    for r in records {
        let direct = &r.direct;
        let direct_p50 = cell(r, "direct.p50_ms", direct.latency.p50_ms, 3);
        let direct_p99 = cell(r, "direct.p99_ms", direct.latency.p99_ms, 3);
        let mut rows: Vec<TableRow<'_>> = vec![(
            "meshlite".into(),
            String::new(),
            r.added.as_ref().zip(r.meshed.as_ref()),
            r.meshed_failure.as_ref(),
        )];
        if let Some(peer) = &r.peer {
            rows.push((
                peer.name.clone(),
                "peer.".into(),
                peer.added.as_ref().zip(peer.meshed.as_ref()),
                peer.failure.as_ref(),
            ));
        }
        for (i, (name, prefix, figures, failure)) in rows.into_iter().enumerate() {
            let rate = if i == 0 {
                r.load.rate_rps.to_string()
            } else {
                String::new()
            };
            match (figures, failure) {
                (Some((added, leg)), _) => {
                    let mut reasons = leg.disturbed_reasons.clone();
                    if i == 0 && direct.disturbed {
                        reasons.extend(
                            direct
                                .disturbed_reasons
                                .iter()
                                .map(|d| format!("direct: {d}")),
                        );
                    }
                    let _ = writeln!(
                        out,
                        "{:>6}  {:<9} {:>15} {:>15} {:>15} {:>15} {:>10} {:>7}  {:>13} {:>13}  {}",
                        rate,
                        name,
                        cell(r, &format!("{prefix}added.p50_ms"), added.p50_ms, 3),
                        cell(r, &format!("{prefix}added.p90_ms"), added.p90_ms, 3),
                        cell(r, &format!("{prefix}added.p99_ms"), added.p99_ms, 2),
                        cell(r, &format!("{prefix}added.p999_ms"), added.p999_ms, 2),
                        format!("{:.0}", leg.achieved_rps),
                        leg.errors,
                        if i == 0 {
                            direct_p50.clone()
                        } else {
                            String::new()
                        },
                        if i == 0 {
                            direct_p99.clone()
                        } else {
                            String::new()
                        },
                        flags(leg.disturbed || (i == 0 && direct.disturbed), &reasons),
                    );
                    if leg.errors > 0 && !leg.error_samples.is_empty() {
                        let _ = writeln!(
                            out,
                            "{:>6}  {:<9} errors e.g.: {}",
                            "",
                            "",
                            leg.error_samples.join(" | ")
                        );
                    }
                }
                (None, failure) => {
                    let why = failure.map_or("not run", String::as_str);
                    let first_line = why.lines().next().unwrap_or(why);
                    let _ = writeln!(out, "{rate:>6}  {name:<9} FAILED: {first_line}");
                }
            }
        }
    }

    let _ = writeln!(
        out,
        "\nCPU and peak memory per sidecar over the measured window"
    );
    let _ = writeln!(
        out,
        "{:>6}  {:<9} {:>13} {:>13} {:>11}   {:>13} {:>13} {:>11}   {:>9} {:>9} {:>10}",
        "rate",
        "sidecars",
        "client cores",
        "client ms/1k",
        "client MB",
        "server cores",
        "server ms/1k",
        "server MB",
        "gen cores",
        "app cores",
        "other load"
    );
    for r in records {
        let mut rows: Vec<(String, String, &[SidecarRecord], Option<&LegRecord>)> = vec![(
            "meshlite".into(),
            String::new(),
            &r.sidecars,
            r.meshed.as_ref(),
        )];
        if let Some(peer) = &r.peer {
            rows.push((
                peer.name.clone(),
                "peer.".into(),
                &peer.sidecars,
                peer.meshed.as_ref(),
            ));
        }
        for (i, (name, prefix, sidecars, leg)) in rows.into_iter().enumerate() {
            let rate = if i == 0 {
                r.load.rate_rps.to_string()
            } else {
                String::new()
            };
            let (Some(leg), [client, server]) = (leg, sidecars) else {
                let _ = writeln!(out, "{rate:>6}  {name:<9} -");
                continue;
            };
            let _ = writeln!(
                out,
                "{:>6}  {:<9} {:>13} {:>13} {:>11}   {:>13} {:>13} {:>11}   {:>9.2} {:>9.2} {:>10.2}",
                rate,
                name,
                cell(
                    r,
                    &format!("{prefix}sidecars[0].cpu_cores"),
                    client.cpu_cores,
                    2
                ),
                cell(
                    r,
                    &format!("{prefix}sidecars[0].cpu_ms_per_1k_req"),
                    client.cpu_ms_per_1k_req,
                    0
                ),
                cell(
                    r,
                    &format!("{prefix}sidecars[0].rss_peak_mb"),
                    client.rss_peak_mb,
                    1
                ),
                cell(
                    r,
                    &format!("{prefix}sidecars[1].cpu_cores"),
                    server.cpu_cores,
                    2
                ),
                cell(
                    r,
                    &format!("{prefix}sidecars[1].cpu_ms_per_1k_req"),
                    server.cpu_ms_per_1k_req,
                    0
                ),
                cell(
                    r,
                    &format!("{prefix}sidecars[1].rss_peak_mb"),
                    server.rss_peak_mb,
                    1
                ),
                leg.generator_cpu_cores,
                leg.app_cpu_cores,
                leg.other_load_cores,
            );
        }
    }

    if records.iter().any(|r| r.tracing.is_some()) {
        render_tracing(&mut out, records);
    }

    let _ = writeln!(
        out,
        "\nThe decision record's targets beside ours (per sidecar; ours: the highest of client and server)"
    );
    let _ = writeln!(
        out,
        "  {:<26} {:>20} {:>8} {:>9}",
        "", "added latency", "cores", "RSS MB"
    );
    for t in TARGETS {
        let _ = writeln!(
            out,
            "  {:<26} {:>17.2} ms {:>8.2} {:>9.0}",
            t.name, t.added_ms, t.cores, t.rss_mb
        );
    }
    for r in records {
        let mut rows = vec![("meshlite", r.added.as_ref(), &r.sidecars)];
        if let Some(peer) = &r.peer {
            rows.push((peer.name.as_str(), peer.added.as_ref(), &peer.sidecars));
        }
        for (name, added, sidecars) in rows {
            let Some(added) = added else { continue };
            let cores = sidecars.iter().map(|s| s.cpu_cores).fold(0.0, f64::max);
            let rss = sidecars.iter().map(|s| s.rss_peak_mb).fold(0.0, f64::max);
            let label = format!("{name} @ {} RPS", r.load.rate_rps);
            let latency = format!("p50 {:.2} / p99 {:.2} ms", added.p50_ms, added.p99_ms);
            let _ = writeln!(out, "  {label:<26} {latency:>20} {cores:>8.2} {rss:>9.1}");
        }
    }
    out
}

/// Issue 13's aim for traces: at this sampling, under [`TRACING_AIM_CPU_PCT`] more CPU per
/// request (and no visible latency change).
pub const TRACING_AIM_PERCENT: f64 = 10.0;
/// See [`TRACING_AIM_PERCENT`].
pub const TRACING_AIM_CPU_PCT: f64 = 5.0;

/// A signed figure with its unit and, over repetitions, its range: `+3.1% [+1.2/+4.0]`.
fn signed_cell(record: &RateRecord, path: &str, value: f64, decimals: usize, unit: &str) -> String {
    match record.spread.as_ref().and_then(|s| s.get(path)) {
        Some([low, high]) if (high - low).abs() > f64::EPSILON => {
            format!("{value:+.decimals$}{unit} [{low:+.decimals$}/{high:+.decimals$}]")
        }
        _ => format!("{value:+.decimals$}{unit}"),
    }
}

/// The `--tracing` table: the untraced pair, then each traced one with its deltas and spans.
fn render_tracing(out: &mut String, records: &[RateRecord]) {
    let collector = records
        .iter()
        .find_map(|r| r.tracing.as_ref())
        .map_or("", |t| t.collector.as_str());
    let _ = writeln!(
        out,
        "\nTracing: both sidecars report spans ({collector}); deltas against the untraced pair of the same repetition"
    );
    let _ = writeln!(
        out,
        "{:>6}  {:<9} {:>13} {:>13} {:>13} {:>15} {:>15} {:>15} {:>11} {:>11} {:>16} {:>11} {:>9} {:>8} {:>8} {:>9}  flags",
        "rate",
        "sampling",
        "added p50",
        "added p90",
        "added p99",
        "p50 vs untr.",
        "p90 vs untr.",
        "p99 vs untr.",
        "client/1k",
        "server/1k",
        "CPU/req vs untr.",
        "RSS MB c/s",
        "spans",
        "sampled",
        "dropped",
        "collector"
    );
    for r in records {
        let Some(tracing) = &r.tracing else { continue };
        let rate = r.load.rate_rps.to_string();
        match (r.added.as_ref(), r.sidecars.as_slice()) {
            (Some(added), [client, server]) => {
                let _ = writeln!(
                    out,
                    "{:>6}  {:<9} {:>13} {:>13} {:>13} {:>15} {:>15} {:>15} {:>11} {:>11} {:>16} {:>11}",
                    rate,
                    "untraced",
                    cell(r, "added.p50_ms", added.p50_ms, 3),
                    cell(r, "added.p90_ms", added.p90_ms, 3),
                    cell(r, "added.p99_ms", added.p99_ms, 2),
                    "",
                    "",
                    "",
                    cell(
                        r,
                        "sidecars[0].cpu_ms_per_1k_req",
                        client.cpu_ms_per_1k_req,
                        0
                    ),
                    cell(
                        r,
                        "sidecars[1].cpu_ms_per_1k_req",
                        server.cpu_ms_per_1k_req,
                        0
                    ),
                    "",
                    format!("{:.1}/{:.1}", client.rss_peak_mb, server.rss_peak_mb),
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "{rate:>6}  {:<9} FAILED (no base for the deltas)",
                    "untraced"
                );
            }
        }
        for (i, t) in tracing.runs.iter().enumerate() {
            let p = |key: &str| format!("tracing.runs[{i}].{key}");
            let name = format!("{} %", t.sampling_percent);
            let (Some(added), Some(leg), [client, server]) =
                (t.added.as_ref(), t.meshed.as_ref(), t.sidecars.as_slice())
            else {
                let why = t.failure.as_deref().unwrap_or("not run");
                let first_line = why.lines().next().unwrap_or(why);
                let _ = writeln!(out, "{:>6}  {name:<9} FAILED: {first_line}", "");
                continue;
            };
            let delta = |f: fn(&TracingDelta) -> f64, key: &str, decimals: usize, unit: &str| {
                t.vs_untraced.as_ref().map_or_else(
                    || "-".to_string(),
                    |d| signed_cell(r, &p(&format!("vs_untraced.{key}")), f(d), decimals, unit),
                )
            };
            let spans = t.spans.as_ref();
            let mut reasons = leg.disturbed_reasons.clone();
            if t.disturbed && reasons.is_empty() {
                reasons.push("the untraced or direct leg".into());
            }
            if t.spans_off {
                reasons.push("span count off (see notes)".into());
            }
            let _ = writeln!(
                out,
                "{:>6}  {:<9} {:>13} {:>13} {:>13} {:>15} {:>15} {:>15} {:>11} {:>11} {:>16} {:>11} {:>9} {:>8} {:>8} {:>9}  {}",
                "",
                name,
                cell(r, &p("added.p50_ms"), added.p50_ms, 3),
                cell(r, &p("added.p90_ms"), added.p90_ms, 3),
                cell(r, &p("added.p99_ms"), added.p99_ms, 2),
                delta(|d| d.latency.p50_ms, "latency.p50_ms", 3, ""),
                delta(|d| d.latency.p90_ms, "latency.p90_ms", 3, ""),
                delta(|d| d.latency.p99_ms, "latency.p99_ms", 2, ""),
                cell(
                    r,
                    &p("sidecars[0].cpu_ms_per_1k_req"),
                    client.cpu_ms_per_1k_req,
                    0
                ),
                cell(
                    r,
                    &p("sidecars[1].cpu_ms_per_1k_req"),
                    server.cpu_ms_per_1k_req,
                    0
                ),
                delta(|d| d.cpu_per_request_pct, "cpu_per_request_pct", 1, "%"),
                format!("{:.1}/{:.1}", client.rss_peak_mb, server.rss_peak_mb),
                spans.map_or_else(|| "-".into(), |s| s.received.to_string()),
                spans.map_or_else(|| "-".into(), |s| format!("{:.1} %", s.sampled_percent)),
                spans
                    .and_then(|s| s.dropped)
                    .map_or_else(|| "-".into(), |d| d.to_string()),
                format!("{:.3}", t.collector_cpu_cores),
                flags(t.disturbed || t.spans_off, &reasons),
            );
        }
        for t in &tracing.runs {
            for note in &t.notes {
                let _ = writeln!(
                    out,
                    "{:>6}  {:<9} note: {note}",
                    "",
                    format!("{} %", t.sampling_percent)
                );
            }
        }
        if let Some((t, d)) = tracing
            .runs
            .iter()
            .find(|t| t.sampling_percent == TRACING_AIM_PERCENT)
            .and_then(|t| Some((t, t.vs_untraced.as_ref()?)))
        {
            let verdict = if d.cpu_per_request_pct < TRACING_AIM_CPU_PCT {
                "met"
            } else {
                "NOT met"
            };
            let _ = writeln!(
                out,
                "{:>6}  aim at {TRACING_AIM_PERCENT} % sampling: under {TRACING_AIM_CPU_PCT} % more CPU per request: {verdict} ({:+.1} %); latency vs untraced: p50 {:+.3}, p90 {:+.3}, p99 {:+.2} ms{}",
                "",
                d.cpu_per_request_pct,
                d.latency.p50_ms,
                d.latency.p90_ms,
                d.latency.p99_ms,
                if t.disturbed {
                    " (DISTURBED legs: not figures to judge by)"
                } else {
                    ""
                },
            );
        }
    }
    let _ = writeln!(
        out,
        "(spans: received over the leg, warm-up and flush included; sampled: CLIENT spans started in the window per request due in it; \
         collector: its cores over the window, counted against no sidecar)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(p50: f64, disturbed: bool) -> LegRecord {
        LegRecord {
            latency: Percentiles {
                p50_ms: p50,
                p90_ms: p50,
                p99_ms: p50,
                p999_ms: p50,
            },
            max_ms: p50,
            achieved_rps: 1000.0,
            requests: 10_000,
            errors: 0,
            warmup_errors: 0,
            generator_cpu_cores: 0.1,
            app_cpu_cores: 0.1,
            other_load_cores: 0.0,
            disturbed,
            disturbed_reasons: if disturbed {
                vec!["busy".into()]
            } else {
                vec![]
            },
            error_samples: vec![],
            pacer_late_p50_ms: 0.0,
            pacer_late_p99_ms: 0.0,
        }
    }

    fn record(added: f64, disturbed: bool) -> RateRecord {
        RateRecord {
            load: LoadSettings {
                rate_rps: 1000,
                duration_s: 10.0,
                warmup_s: 2.0,
                connections: 50,
                payload_bytes: 64,
                protocol: "http1".into(),
                mtls: true,
                authz: false,
            },
            workers: None,
            upstream_protocol: "h2".into(),
            upstream_protocol_explicit: false,
            pinned: false,
            repetitions: 1,
            repetitions_used: 1,
            direct: leg(0.1, false),
            meshed: Some(leg(0.1 + added, disturbed)),
            added: Some(Percentiles {
                p50_ms: added,
                p90_ms: added,
                p99_ms: added,
                p999_ms: added,
            }),
            errors: 0,
            achieved_rps: 1000.0,
            generator_cpu_cores: 0.1,
            other_load_cores: 0.0,
            disturbed,
            sidecars: vec![],
            meshed_failure: None,
            proxy_notes: vec![],
            peer: None,
            tracing: None,
            spread: None,
        }
    }

    #[test]
    fn median_and_spread_over_clean_repetitions() {
        let reps = [
            record(0.3, false),
            record(5.0, true),
            record(0.5, false),
            record(0.4, false),
        ];
        let combined = combine(&reps).ok();
        let combined = combined.as_ref();
        assert_eq!(combined.map(|c| c.repetitions), Some(4));
        assert_eq!(combined.map(|c| c.repetitions_used), Some(3));
        assert_eq!(combined.and_then(|c| c.added).map(|a| a.p99_ms), Some(0.4));
        assert_eq!(
            combined
                .and_then(|c| c.spread.as_ref())
                .and_then(|s| s.get("added.p99_ms"))
                .copied(),
            Some([0.3, 0.5])
        );
        assert_eq!(combined.map(|c| c.disturbed), Some(false));
    }

    #[test]
    fn all_disturbed_stays_flagged() {
        let reps = [record(0.3, true), record(0.5, true)];
        assert_eq!(combine(&reps).ok().map(|c| c.disturbed), Some(true));
    }

    #[test]
    fn single_rate_json_is_an_object_and_ladder_has_runs() {
        let one = to_json(&[record(0.3, false)], true).unwrap_or_default();
        assert!(one.trim_start().starts_with('{') && one.contains("\"rate_rps\""));
        let ladder = to_json(&[record(0.3, false), record(0.4, false)], false).unwrap_or_default();
        assert!(ladder.contains("\"runs\""));
    }

    fn sidecar(role: &str, per_1k: f64, rss: f64) -> SidecarRecord {
        SidecarRecord {
            role: role.into(),
            rss_peak_mb: rss,
            cpu_cores: per_1k / 100.0,
            cpu_ms_per_1k_req: per_1k,
        }
    }

    fn traced(percent: f64, added: f64, client_per_1k: f64) -> TracedRecord {
        let untraced = [sidecar("client", 40.0, 12.0), sidecar("server", 40.0, 11.0)];
        let sidecars = vec![
            sidecar("client", client_per_1k, 12.5),
            sidecar("server", 40.0, 11.0),
        ];
        let latency = Percentiles {
            p50_ms: added,
            p90_ms: added,
            p99_ms: added,
            p999_ms: added,
        };
        let base = Percentiles {
            p50_ms: 0.1,
            p90_ms: 0.1,
            p99_ms: 0.1,
            p999_ms: 0.1,
        };
        TracedRecord {
            sampling_percent: percent,
            meshed: Some(leg(0.1 + added, false)),
            added: Some(latency),
            errors: 0,
            achieved_rps: 1000.0,
            vs_untraced: TracingDelta::between((&latency, &sidecars), (&base, &untraced)),
            sidecars,
            spans: Some(SpanCounts {
                received: 2_000,
                client_in_window: 1_000,
                server_in_window: 1_000,
                sampled_percent: percent,
                batches: 4,
                dropped: Some(0),
            }),
            collector_cpu_cores: 0.01,
            disturbed: false,
            spans_off: false,
            notes: vec![],
            failure: None,
        }
    }

    #[test]
    fn a_traced_pair_is_compared_with_the_untraced_one() {
        let t = traced(10.0, 0.12, 44.0);
        let d = t.vs_untraced.unwrap_or_else(|| panic!("two sidecars each"));
        assert!(
            (d.cpu_per_request_pct - 5.0).abs() < 1e-9,
            "84 vs 80 ms per 1k"
        );
        assert!((d.client_cpu_pct - 10.0).abs() < 1e-9);
        assert!(d.server_cpu_pct.abs() < 1e-9);
        assert!((d.latency.p50_ms - 0.02).abs() < 1e-9);
        assert!((d.client_rss_mb - 0.5).abs() < 1e-9);
        assert!(
            TracingDelta::between(
                (&Percentiles::default(), &[]),
                (&Percentiles::default(), &[])
            )
            .is_none()
        );
    }

    #[test]
    fn tracing_is_in_the_json_and_the_table_only_when_asked() {
        let plain = record(0.3, false);
        let json = to_json(std::slice::from_ref(&plain), true).unwrap_or_default();
        assert!(!json.contains("tracing"), "the default report is unchanged");
        assert!(!render(std::slice::from_ref(&plain)).contains("Tracing"));

        let reps: Vec<RateRecord> = [(44.0, 0.12), (42.0, 0.11), (46.0, 0.13)]
            .into_iter()
            .map(|(cpu, added)| {
                let mut r = record(0.1, false);
                r.sidecars = vec![sidecar("client", 40.0, 12.0), sidecar("server", 40.0, 11.0)];
                r.tracing = Some(TracingRecord {
                    collector: "otlp-grpc".into(),
                    runs: vec![traced(0.0, 0.1, 40.0), traced(10.0, added, cpu)],
                });
                r
            })
            .collect();
        let combined = combine(&reps).unwrap_or_else(|e| panic!("{e}"));
        let runs = combined
            .tracing
            .as_ref()
            .map(|t| t.runs.clone())
            .unwrap_or_default();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs.get(1).map(|r| r.sampling_percent), Some(10.0));
        assert_eq!(
            runs.get(1)
                .and_then(|r| r.sidecars.first())
                .map(|s| s.cpu_ms_per_1k_req),
            Some(44.0),
            "the median over repetitions"
        );
        let spread = combined.spread.clone().unwrap_or_default();
        assert_eq!(
            spread.get("tracing.runs[1].sidecars[0].cpu_ms_per_1k_req"),
            Some(&[42.0, 46.0])
        );
        assert!(!spread.contains_key("tracing.runs[1].sampling_percent"));

        let json = to_json(std::slice::from_ref(&combined), true).unwrap_or_default();
        assert!(json.contains("\"tracing\"") && json.contains("\"cpu_per_request_pct\""));
        let text = render(std::slice::from_ref(&combined));
        assert!(text.contains("Tracing:"), "{text}");
        assert!(text.contains("untraced") && text.contains("10 %"), "{text}");
        assert!(text.contains("aim at 10 % sampling"), "{text}");
    }
}
