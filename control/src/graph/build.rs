//! From sidecars' readings to the graph: what each sample counts, the increase of each series
//! between a sidecar's two readings, and the edges and nodes those increases make.
//!
//! Counters follow Prometheus' `increase`: a series that went down was reset (the sidecar
//! restarted) and counts from zero; a series absent from the earlier reading was created
//! during the window (the sidecars make series on first use) and counts whole. A sidecar read
//! only once contributes the topology, not rates. Each edge is measured from one reporter:
//! the destination's sidecars when any reported it, else the source's (a destination without a
//! sidecar, or requests that never reached it), so a call seen by both sides is not counted
//! twice.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use tokio::time::Instant;

use super::exposition::Sample;
use super::{Edge, Node, NodeKind, UNKNOWN};

/// `istio_requests_total`.
pub const REQUESTS: &str = "istio_requests_total";
/// The buckets of `istio_request_duration_milliseconds`.
pub const DURATION_BUCKETS: &str = "istio_request_duration_milliseconds_bucket";
/// `istio_tcp_sent_bytes_total`: bytes from the source to the destination.
pub const TCP_SENT: &str = "istio_tcp_sent_bytes_total";
/// `istio_tcp_received_bytes_total`: bytes back to the source.
pub const TCP_RECEIVED: &str = "istio_tcp_received_bytes_total";
/// `istio_tcp_connections_opened_total`.
pub const TCP_OPENED: &str = "istio_tcp_connections_opened_total";

/// The families the graph reads; every other line of a scrape is skipped unparsed.
pub fn wanted(name: &str) -> bool {
    matches!(
        name,
        REQUESTS | DURATION_BUCKETS | TCP_SENT | TCP_RECEIVED | TCP_OPENED
    )
}

/// The quantile the edges report (Kiali's default latency).
pub const QUANTILE: f64 = 0.99;

/// Largest sample value taken: 2^53, past which a float no longer counts by ones. No real
/// counter gets there; a value beyond it (or negative, or NaN) is skipped, so sums over every
/// series of a sidecar stay finite.
pub const MAX_VALUE: f64 = 9_007_199_254_740_992.0;

/// Which sidecar reported a sample (Istio's `reporter` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reporter {
    /// The caller's sidecar.
    Source,
    /// The called workload's sidecar.
    Destination,
}

/// A workload (or service) as the labels name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Party {
    /// Node id.
    pub id: String,
    /// Kind of node.
    pub kind: NodeKind,
    /// Namespace.
    pub namespace: String,
    /// Workload name, service host or `unknown`.
    pub name: String,
    /// `app` label value, empty or `unknown` when not known.
    pub app: String,
    /// `version` label value.
    pub version: String,
}

/// What the samples of one label set (less the measured labels) share: the edge and who
/// reported it. Shared by every series of the set (codes, buckets).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SeriesInfo {
    /// The caller.
    pub source: Party,
    /// The called workload, or the service when no workload is known.
    pub destination: Party,
    /// `destination_service`.
    pub service: String,
    /// `request_protocol`.
    pub protocol: String,
    /// Who reported it.
    pub reporter: Reporter,
}

/// What one series counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Measure {
    /// Requests; whether they failed, and over mTLS (`None`: not known to the reporter).
    Requests {
        /// 5xx, or a non-OK gRPC status.
        error: bool,
        /// `connection_security_policy`.
        mtls: Option<bool>,
    },
    /// A cumulative duration bucket with upper bound `le` (ms).
    Bucket {
        /// Upper bound.
        le: f64,
    },
    /// TCP bytes from the source.
    TcpSent,
    /// TCP bytes to the source.
    TcpReceived,
    /// TCP connections opened.
    TcpOpened {
        /// `connection_security_policy`.
        mtls: Option<bool>,
    },
}

/// One series' value in a reading.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// The edge it belongs to.
    pub info: Arc<SeriesInfo>,
    /// What it counts.
    pub measure: Measure,
    /// Its value.
    pub value: f64,
}

/// One sidecar's metrics at one moment, keyed by a hash of each series' text.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// When it was read.
    pub at: Instant,
    /// Its series.
    pub points: HashMap<u64, Point>,
}

/// A sidecar's two latest readings.
#[derive(Clone, Copy, Debug)]
pub struct Reading<'a> {
    /// The earlier one, if it has been read before.
    pub base: Option<&'a Snapshot>,
    /// The latest one.
    pub latest: &'a Snapshot,
}

fn series_hash(series: &str) -> u64 {
    // SipHash with fixed keys: the same series hashes the same in every reading.
    let mut h = std::hash::DefaultHasher::new();
    series.hash(&mut h);
    h.finish()
}

fn party(s: &Sample<'_>, side: &str, service: &str) -> Party {
    let get = |what: &str| s.label(&format!("{side}_{what}")).to_string();
    let (workload, namespace) = (get("workload"), get("workload_namespace"));
    let (app, version) = (get("app"), get("version"));
    let known = |v: &str| !v.is_empty() && v != UNKNOWN;
    if known(&workload) {
        return Party {
            id: format!("{namespace}/{workload}"),
            kind: NodeKind::Workload,
            namespace,
            name: workload,
            app,
            version,
        };
    }
    if side == "destination" && known(service) {
        let namespace = s.label("destination_service_namespace");
        return Party {
            id: service.to_string(),
            kind: NodeKind::Service,
            namespace: if known(namespace) {
                namespace.to_string()
            } else {
                String::new()
            },
            name: service.to_string(),
            app: String::new(),
            version: String::new(),
        };
    }
    Party {
        id: UNKNOWN.into(),
        kind: NodeKind::Unknown,
        namespace: String::new(),
        name: UNKNOWN.into(),
        app: String::new(),
        version: String::new(),
    }
}

fn mtls(s: &Sample<'_>) -> Option<bool> {
    match s.label("connection_security_policy") {
        "mutual_tls" => Some(true),
        "none" => Some(false),
        _ => None,
    }
}

/// Reads one scrape's samples (of the [`wanted`] families) into a snapshot taken `at`.
/// Samples without a known `reporter`, and buckets without a numeric `le`, are skipped, and so
/// are request samples of `request_protocol="tcp"`: Istio measures TCP by its `istio_tcp_*`
/// families, and a sidecar that also counts connections as requests must not turn a TCP edge
/// into an HTTP one.
pub fn snapshot(samples: &[Sample<'_>], at: Instant) -> Snapshot {
    let mut infos: HashMap<SeriesInfo, Arc<SeriesInfo>> = HashMap::new();
    let mut points = HashMap::with_capacity(samples.len());
    for s in samples {
        let reporter = match s.label("reporter") {
            "destination" => Reporter::Destination,
            "source" => Reporter::Source,
            _ => continue,
        };
        let tcp = s.label("request_protocol") == "tcp";
        let measure = match s.name {
            REQUESTS | DURATION_BUCKETS if tcp => continue,
            REQUESTS => {
                let code: u16 = s.label("response_code").parse().unwrap_or(0);
                let grpc = s.label("grpc_response_status");
                let error = code >= 500
                    || (s.label("request_protocol") == "grpc" && !matches!(grpc, "" | "0"));
                Measure::Requests {
                    error,
                    mtls: mtls(s),
                }
            }
            DURATION_BUCKETS => match s.label("le") {
                "+Inf" => Measure::Bucket { le: f64::INFINITY },
                le => match le.parse::<f64>() {
                    Ok(le) if !le.is_nan() => Measure::Bucket { le },
                    _ => continue,
                },
            },
            TCP_SENT => Measure::TcpSent,
            TCP_RECEIVED => Measure::TcpReceived,
            TCP_OPENED => Measure::TcpOpened { mtls: mtls(s) },
            _ => continue,
        };
        if !(0.0..=MAX_VALUE).contains(&s.value) {
            continue;
        }
        let service = s.label("destination_service").to_string();
        let info = SeriesInfo {
            source: party(s, "source", &service),
            destination: party(s, "destination", &service),
            protocol: s.label("request_protocol").to_string(),
            service,
            reporter,
        };
        let info = match infos.get(&info) {
            Some(shared) => shared.clone(),
            None => {
                let shared = Arc::new(info.clone());
                infos.insert(info, shared.clone());
                shared
            }
        };
        points.insert(
            series_hash(s.series),
            Point {
                info,
                measure,
                value: s.value,
            },
        );
    }
    Snapshot { at, points }
}

/// What one reporter saw of one edge.
#[derive(Debug, Default)]
struct Tally {
    /// Requests per second, and failed ones.
    rps: f64,
    errors_ps: f64,
    /// Bucket increases by upper bound.
    buckets: BTreeMap<OrderedBound, f64>,
    tcp_sent_bps: f64,
    tcp_received_bps: f64,
    tcp_opened_ps: f64,
    /// Requests and connections during the window, over mTLS and not.
    window_mtls: (f64, f64),
    /// The same since the series began (for edges idle during the window).
    total_mtls: (f64, f64),
    /// Whether any series counted requests (else it is a TCP edge).
    requests_seen: bool,
    protocol: String,
}

/// An `le` bound usable as a map key (never NaN: [`snapshot`] skips those).
#[derive(Clone, Copy, Debug)]
struct OrderedBound(f64);

impl PartialEq for OrderedBound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for OrderedBound {}

impl PartialOrd for OrderedBound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedBound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Prometheus' `histogram_quantile` over cumulative `(upper bound, count)` buckets sorted by
/// bound, the last `+Inf`: linear interpolation inside the bucket holding the rank; a rank in
/// the `+Inf` bucket is the highest finite bound. `None` without observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    interpolate(q, buckets).filter(|v| v.is_finite())
}

fn interpolate(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let &(last_bound, total) = buckets.last()?;
    if last_bound != f64::INFINITY || total <= 0.0 || buckets.len() < 2 {
        return None;
    }
    let rank = q * total;
    // Counts must not decrease (a reset in one bucket and not another could make them).
    let mut running = 0.0f64;
    let counts: Vec<f64> = buckets
        .iter()
        .map(|&(_, c)| {
            running = running.max(c);
            running
        })
        .collect();
    let i = counts.iter().position(|&c| c >= rank)?;
    if i == buckets.len() - 1 {
        return Some(buckets[i - 1].0);
    }
    let end = buckets[i].0;
    let (start, below) = if i == 0 {
        if end <= 0.0 {
            return Some(end);
        }
        (0.0, 0.0)
    } else {
        (buckets[i - 1].0, counts[i - 1])
    };
    let inside = counts[i] - below;
    if inside <= 0.0 {
        return Some(end);
    }
    Some(start + (end - start) * (rank - below) / inside)
}

/// Adds `p`'s contribution (its increase over `dt` seconds, if known) to `t`.
fn add(t: &mut Tally, p: &Point, increase: Option<f64>, dt: f64) {
    let rate = increase.map_or(0.0, |i| i / dt);
    let count_mtls = |t: &mut Tally, mtls: Option<bool>| {
        let Some(m) = mtls else { return };
        let (yes, no) = if m { (1.0, 0.0) } else { (0.0, 1.0) };
        t.total_mtls.0 += p.value * yes;
        t.total_mtls.1 += p.value * no;
        if let Some(i) = increase {
            t.window_mtls.0 += i * yes;
            t.window_mtls.1 += i * no;
        }
    };
    match p.measure {
        Measure::Requests { error, mtls } => {
            t.requests_seen = true;
            t.protocol.clone_from(&p.info.protocol);
            t.rps += rate;
            if error {
                t.errors_ps += rate;
            }
            count_mtls(t, mtls);
        }
        Measure::Bucket { le } => {
            if let Some(i) = increase {
                *t.buckets.entry(OrderedBound(le)).or_default() += i;
            }
        }
        Measure::TcpSent => t.tcp_sent_bps += rate,
        Measure::TcpReceived => t.tcp_received_bps += rate,
        Measure::TcpOpened { mtls } => {
            t.tcp_opened_ps += rate;
            count_mtls(t, mtls);
        }
    }
    if t.protocol.is_empty() {
        t.protocol.clone_from(&p.info.protocol);
    }
}

/// The increase of a series from `base` to `now` (Prometheus' counter semantics).
fn increase(base: Option<&Point>, now: f64) -> f64 {
    match base {
        Some(b) if now >= b.value => now - b.value,
        _ => now,
    }
}

/// The edges and nodes of `readings`, and the window the rates cover (the longest time between
/// a sidecar's two readings; `None` when no sidecar has been read twice). `sidecars` are the
/// ids (`namespace/workload`) of the workloads with a connected sidecar: they are nodes even
/// when idle.
pub fn graph(readings: &[Reading<'_>], sidecars: &[String]) -> (Vec<Node>, Vec<Edge>, Option<f64>) {
    type EdgeKey = (String, String, String);
    let mut tallies: BTreeMap<(EdgeKey, Reporter), Tally> = BTreeMap::new();
    let mut parties: BTreeMap<String, Party> = BTreeMap::new();
    let mut window: Option<f64> = None;
    for r in readings {
        let dt = r
            .base
            .map(|b| r.latest.at.saturating_duration_since(b.at).as_secs_f64())
            .filter(|dt| *dt > 0.0);
        if let Some(dt) = dt {
            window = Some(window.map_or(dt, |w: f64| w.max(dt)));
        }
        for (hash, p) in &r.latest.points {
            let inc = match (dt, r.base) {
                (Some(_), Some(b)) => Some(increase(b.points.get(hash), p.value)),
                _ => None,
            };
            let info = &p.info;
            for party in [&info.source, &info.destination] {
                let entry = parties
                    .entry(party.id.clone())
                    .or_insert_with(|| party.clone());
                if entry.app.is_empty() || entry.app == UNKNOWN {
                    entry.app.clone_from(&party.app);
                }
                if entry.version.is_empty() || entry.version == UNKNOWN {
                    entry.version.clone_from(&party.version);
                }
            }
            let key = (
                info.source.id.clone(),
                info.destination.id.clone(),
                info.service.clone(),
            );
            let tally = tallies.entry((key, info.reporter)).or_default();
            add(tally, p, inc, dt.unwrap_or(1.0));
        }
    }

    let mut edges = Vec::new();
    let mut keys: Vec<&EdgeKey> = tallies.keys().map(|(k, _)| k).collect();
    keys.dedup();
    for key in keys {
        let dest = tallies.get(&(key.clone(), Reporter::Destination));
        let (t, reporter) = match dest {
            Some(t) => (t, "destination"),
            None => match tallies.get(&(key.clone(), Reporter::Source)) {
                Some(t) => (t, "source"),
                None => continue,
            },
        };
        let buckets: Vec<(f64, f64)> = t.buckets.iter().map(|(b, c)| (b.0, *c)).collect();
        let mtls_share = dest.and_then(|d| {
            let (yes, no) = if d.window_mtls.0 + d.window_mtls.1 > 0.0 {
                d.window_mtls
            } else {
                d.total_mtls
            };
            (yes + no > 0.0).then(|| yes / (yes + no))
        });
        edges.push(Edge {
            source: key.0.clone(),
            destination: key.1.clone(),
            destination_service: key.2.clone(),
            protocol: if t.requests_seen || t.protocol.is_empty() {
                if t.protocol.is_empty() {
                    "http".into()
                } else {
                    t.protocol.clone()
                }
            } else {
                "tcp".into()
            },
            reporter: reporter.into(),
            rps: t.rps,
            error_rate: (t.rps > 0.0).then(|| t.errors_ps / t.rps),
            p99_ms: quantile(QUANTILE, &buckets),
            tcp_sent_bps: t.tcp_sent_bps,
            tcp_received_bps: t.tcp_received_bps,
            tcp_connections_per_s: t.tcp_opened_ps,
            mtls: mtls_share == Some(1.0),
            mtls_share,
        });
    }

    for id in sidecars {
        if !parties.contains_key(id) {
            let (namespace, name) = id.split_once('/').unwrap_or(("", id));
            parties.insert(
                id.clone(),
                Party {
                    id: id.clone(),
                    kind: NodeKind::Workload,
                    namespace: namespace.into(),
                    name: name.into(),
                    app: String::new(),
                    version: String::new(),
                },
            );
        }
    }
    let known = |v: &str| (!v.is_empty() && v != UNKNOWN).then(|| v.to_string());
    let nodes = parties
        .into_values()
        .map(|p| Node {
            sidecar: sidecars.contains(&p.id),
            app: known(&p.app),
            version: known(&p.version),
            id: p.id,
            kind: p.kind,
            namespace: p.namespace,
            name: p.name,
        })
        .collect();
    (nodes, edges, window)
}

#[cfg(test)]
mod tests {
    use super::super::exposition::parse;
    use super::*;
    use std::time::Duration;

    /// A sample line of `family` reported by `reporter` for `src` -> `dst` (workload names in
    /// `default`), with extra labels `extra`.
    fn line(family: &str, reporter: &str, src: &str, dst: &str, extra: &str, value: f64) -> String {
        let svc = dst.split('-').next().unwrap_or(dst);
        format!(
            "{family}{{reporter=\"{reporter}\",source_workload=\"{src}\",\
             source_workload_namespace=\"default\",source_app=\"{src}\",source_version=\"unknown\",\
             destination_workload=\"{dst}\",destination_workload_namespace=\"default\",\
             destination_app=\"{svc}\",destination_version=\"v1\",\
             destination_service=\"{svc}.default.svc.cluster.local\",\
             destination_service_namespace=\"default\",{extra}}} {value}\n"
        )
    }

    fn requests(reporter: &str, src: &str, dst: &str, code: u16, policy: &str, n: f64) -> String {
        line(
            REQUESTS,
            reporter,
            src,
            dst,
            &format!(
                "request_protocol=\"http\",response_code=\"{code}\",\
                 connection_security_policy=\"{policy}\""
            ),
            n,
        )
    }

    /// Cumulative duration buckets for `src` -> `dst` from `(upper bound, count)`.
    fn buckets(reporter: &str, src: &str, dst: &str, counts: &[(&str, f64)]) -> String {
        counts
            .iter()
            .map(|(le, n)| {
                line(
                    DURATION_BUCKETS,
                    reporter,
                    src,
                    dst,
                    &format!("request_protocol=\"http\",le=\"{le}\""),
                    *n,
                )
            })
            .collect()
    }

    fn read(text: &str, at: Instant) -> Snapshot {
        snapshot(&parse(text, wanted, 10_000).unwrap(), at)
    }

    /// The graph of one sidecar read twice (`base`, then `latest`), no sidecar announced.
    fn between(base: &Snapshot, latest: &Snapshot) -> (Vec<Node>, Vec<Edge>, Option<f64>) {
        graph(
            &[Reading {
                base: Some(base),
                latest,
            }],
            &[],
        )
    }

    fn edge<'a>(edges: &'a [Edge], src: &str, dst: &str) -> &'a Edge {
        edges
            .iter()
            .find(|e| e.source == src && e.destination == dst)
            .unwrap_or_else(|| panic!("no edge {src} -> {dst} in {edges:#?}"))
    }

    #[test]
    fn histogram_quantile_interpolates_as_prometheus_does() {
        let b = |v: &[(f64, f64)]| v.to_vec();
        // 100 observations: 50 under 10 ms, 90 under 25, all under 50.
        let h = b(&[
            (10.0, 50.0),
            (25.0, 90.0),
            (50.0, 100.0),
            (f64::INFINITY, 100.0),
        ]);
        assert_eq!(quantile(0.5, &h), Some(10.0));
        // Rank 99 lies 9/10 of the way through the 25-50 bucket.
        assert!((quantile(0.99, &h).unwrap() - 47.5).abs() < 1e-9);
        // The first bucket interpolates from zero.
        assert_eq!(quantile(0.25, &h), Some(5.0));
        // A rank in +Inf is the highest finite bound.
        let tail = b(&[(10.0, 50.0), (f64::INFINITY, 100.0)]);
        assert_eq!(quantile(0.99, &tail), Some(10.0));
        assert_eq!(
            quantile(0.99, &b(&[(10.0, 0.0), (f64::INFINITY, 0.0)])),
            None
        );
        assert_eq!(quantile(0.99, &b(&[(10.0, 5.0)])), None, "no +Inf bucket");
        assert_eq!(quantile(0.99, &[]), None);
        // Nonsense bounds give no figure rather than an infinite one.
        let odd = b(&[(f64::NEG_INFINITY, 1.0), (f64::INFINITY, 2.0)]);
        assert_eq!(quantile(0.99, &odd), None);
    }

    #[test]
    fn rates_errors_p99_and_mtls_come_from_the_destinations_reports() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(10);
        // The destination (reviews-v1) saw 100 then 300 requests from productpage-v1, 10 then
        // 30 of them 503; the source saw the same plus 50 local failures, which are not
        // counted twice: the destination reported.
        let dest = |ok: f64, failed: f64, b: [f64; 3]| {
            requests(
                "destination",
                "productpage-v1",
                "reviews-v1",
                200,
                "mutual_tls",
                ok,
            ) + &requests(
                "destination",
                "productpage-v1",
                "reviews-v1",
                503,
                "mutual_tls",
                failed,
            ) + &buckets(
                "destination",
                "productpage-v1",
                "reviews-v1",
                &[("10.0", b[0]), ("100.0", b[1]), ("+Inf", b[2])],
            )
        };
        let src = |n: f64| requests("source", "productpage-v1", "reviews-v1", 200, "unknown", n);
        let base = read(&(dest(90.0, 10.0, [90.0, 100.0, 100.0]) + &src(150.0)), t0);
        let latest = read(
            &(dest(270.0, 30.0, [180.0, 300.0, 300.0]) + &src(350.0)),
            t1,
        );
        let (nodes, edges, window) = graph(
            &[Reading {
                base: Some(&base),
                latest: &latest,
            }],
            &["default/reviews-v1".to_string()],
        );
        assert_eq!(window, Some(10.0));
        assert_eq!(edges.len(), 1, "{edges:#?}");
        let e = edge(&edges, "default/productpage-v1", "default/reviews-v1");
        assert_eq!(e.reporter, "destination");
        assert_eq!(e.destination_service, "reviews.default.svc.cluster.local");
        assert_eq!(e.protocol, "http");
        assert!((e.rps - 20.0).abs() < 1e-9, "200 requests in 10 s: {e:?}");
        assert!((e.error_rate.unwrap() - 0.1).abs() < 1e-9, "{e:?}");
        // 200 new observations: 90 under 10 ms, all under 100: rank 198 is in the second
        // bucket, (198 - 90) / 110 of the way from 10 to 100.
        let p99 = e.p99_ms.unwrap();
        assert!((p99 - (10.0 + 90.0 * 108.0 / 110.0)).abs() < 1e-9, "{p99}");
        assert!(e.mtls);
        assert_eq!(e.mtls_share, Some(1.0));
        let ids: Vec<(&str, bool)> = nodes.iter().map(|n| (n.id.as_str(), n.sidecar)).collect();
        assert_eq!(
            ids,
            [
                ("default/productpage-v1", false),
                ("default/reviews-v1", true)
            ]
        );
        assert_eq!(nodes[1].app.as_deref(), Some("reviews"));
        assert_eq!(nodes[1].version.as_deref(), Some("v1"));
        assert_eq!(nodes[0].version, None, "`unknown` is no version");
    }

    #[test]
    fn without_destination_reports_the_source_counts_and_mtls_is_unknown() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(5);
        let text = |n: f64, failed: f64| {
            requests("source", "client", "httpbin", 200, "unknown", n)
                + &requests("source", "client", "httpbin", 502, "unknown", failed)
        };
        let base = read(&text(10.0, 0.0), t0);
        let latest = read(&text(20.0, 10.0), t1);
        let (_, edges, _) = between(&base, &latest);
        let e = edge(&edges, "default/client", "default/httpbin");
        assert_eq!(e.reporter, "source");
        assert!((e.rps - 4.0).abs() < 1e-9);
        assert!((e.error_rate.unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(e.mtls_share, None);
        assert!(!e.mtls);
        assert_eq!(e.p99_ms, None, "no histogram");
    }

    #[test]
    fn plaintext_callers_from_outside_are_the_unknown_node_and_break_mtls() {
        let t0 = Instant::now();
        let text = |n: f64| {
            line(
                REQUESTS,
                "destination",
                "unknown",
                "reviews-v1",
                "request_protocol=\"http\",response_code=\"200\",connection_security_policy=\"none\"",
                n,
            )
            .replace("source_workload_namespace=\"default\"", "source_workload_namespace=\"unknown\"")
                + &requests("destination", "productpage-v1", "reviews-v1", 200, "mutual_tls", n)
        };
        let base = read(&text(1.0), t0);
        let latest = read(&text(4.0), t0 + Duration::from_secs(1));
        let (nodes, edges, _) = between(&base, &latest);
        let outside = edge(&edges, UNKNOWN, "default/reviews-v1");
        assert_eq!(outside.mtls_share, Some(0.0));
        assert!(!outside.mtls);
        assert!(edge(&edges, "default/productpage-v1", "default/reviews-v1").mtls);
        let unknown = nodes.iter().find(|n| n.id == UNKNOWN).unwrap();
        assert_eq!(unknown.kind, NodeKind::Unknown);
    }

    #[test]
    fn resets_new_series_and_first_readings_follow_prometheus_increase() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let base = read(
            &requests("destination", "a", "b-v1", 200, "mutual_tls", 100.0),
            t0,
        );
        // The sidecar restarted (200 -> 6) and a 500 series appeared: 6 + 2 requests.
        let latest = read(
            &(requests("destination", "a", "b-v1", 200, "mutual_tls", 6.0)
                + &requests("destination", "a", "b-v1", 500, "mutual_tls", 2.0)),
            t1,
        );
        let (_, edges, _) = between(&base, &latest);
        let e = edge(&edges, "default/a", "default/b-v1");
        assert!((e.rps - 4.0).abs() < 1e-9, "{e:?}");
        assert!((e.error_rate.unwrap() - 0.25).abs() < 1e-9);

        // Read once: the topology and mTLS from the totals, no rates.
        let (nodes, edges, window) = graph(
            &[Reading {
                base: None,
                latest: &latest,
            }],
            &[],
        );
        assert_eq!(window, None);
        assert_eq!(nodes.len(), 2);
        let e = edge(&edges, "default/a", "default/b-v1");
        assert_eq!((e.rps, e.error_rate, e.p99_ms), (0.0, None, None));
        assert!(e.mtls, "mTLS from what the destination ever reported");
        assert!(!e.active());
    }

    #[test]
    fn tcp_edges_carry_byte_and_connection_rates_and_instances_add_up() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(4);
        let tcp = |sent: f64, received: f64, opened: f64| {
            let extra = "request_protocol=\"tcp\",connection_security_policy=\"mutual_tls\"";
            line(
                TCP_SENT,
                "destination",
                "reviews-v1",
                "mongodb-v1",
                extra,
                sent,
            ) + &line(
                TCP_RECEIVED,
                "destination",
                "reviews-v1",
                "mongodb-v1",
                extra,
                received,
            ) + &line(
                TCP_OPENED,
                "destination",
                "reviews-v1",
                "mongodb-v1",
                extra,
                opened,
            )
        };
        // Two instances of mongodb-v1, each read twice.
        let (a0, a1) = (
            read(&tcp(0.0, 0.0, 0.0), t0),
            read(&tcp(400.0, 40.0, 4.0), t1),
        );
        let (b0, b1) = (
            read(&tcp(100.0, 0.0, 1.0), t0),
            read(&tcp(500.0, 80.0, 5.0), t1),
        );
        // Connections counted as requests too are not requests.
        let extra = "request_protocol=\"tcp\",response_code=\"0\",connection_security_policy=\"mutual_tls\"";
        let b1 = read(
            &(tcp(500.0, 80.0, 5.0)
                + &line(
                    REQUESTS,
                    "destination",
                    "reviews-v1",
                    "mongodb-v1",
                    extra,
                    5.0,
                )
                + &line(
                    DURATION_BUCKETS,
                    "destination",
                    "reviews-v1",
                    "mongodb-v1",
                    &format!("{extra},le=\"+Inf\""),
                    5.0,
                )),
            b1.at,
        );
        let (_, edges, _) = graph(
            &[
                Reading {
                    base: Some(&a0),
                    latest: &a1,
                },
                Reading {
                    base: Some(&b0),
                    latest: &b1,
                },
            ],
            &[],
        );
        let e = edge(&edges, "default/reviews-v1", "default/mongodb-v1");
        assert_eq!(e.protocol, "tcp");
        assert_eq!(e.rps, 0.0);
        assert_eq!((e.error_rate, e.p99_ms), (None, None));
        assert!((e.tcp_sent_bps - 200.0).abs() < 1e-9, "{e:?}");
        assert!((e.tcp_received_bps - 30.0).abs() < 1e-9);
        assert!((e.tcp_connections_per_s - 2.0).abs() < 1e-9);
        assert!(e.mtls);
        assert!(e.active());
    }

    #[test]
    fn grpc_errors_are_non_ok_statuses_and_unwanted_samples_are_skipped() {
        let grpc = |status: &str, n: f64| {
            line(
                REQUESTS,
                "destination",
                "a",
                "b-v1",
                &format!(
                    "request_protocol=\"grpc\",response_code=\"200\",grpc_response_status=\"{status}\",\
                     connection_security_policy=\"mutual_tls\""
                ),
                n,
            )
        };
        let t0 = Instant::now();
        let base = read(&(grpc("0", 0.0) + &grpc("14", 0.0)), t0);
        let latest = read(
            &(grpc("0", 3.0) + &grpc("14", 1.0) + "istio_requests_total{le=\"x\"} 5\n"),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(latest.points.len(), 2, "no reporter: skipped");
        let (_, edges, _) = between(&base, &latest);
        let e = edge(&edges, "default/a", "default/b-v1");
        assert_eq!(e.protocol, "grpc");
        assert_eq!(e.error_rate, Some(0.25));
    }
}
