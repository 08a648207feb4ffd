//! The collector: every interval, reads each connected sidecar's `/stats/prometheus` and
//! rebuilds the graph from its two latest readings.
//!
//! Bounded as a Prometheus scrape is: a timeout per sidecar, a few sidecars at a time, a
//! capped body and sample count, plain HTTP/1.1 GET to the address the sidecar announced (only
//! when it is on its inbound address's IP, checked when the stream opens). A sidecar that
//! cannot be read is listed in the graph's `scrapes.failed` and left out of that round; its
//! previous reading is kept, so the next success measures over the longer window. Readings of
//! sidecars that disconnected are dropped.

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use meshlite_xds_proto::discovery::Node as XdsNode;
use prost_types::value::Kind;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use super::build::{self, Reading, Snapshot};
use super::{Graph, ScrapeFailure, ScrapeSummary, exposition};
use crate::metrics::{ControlMetrics, ResultLabel};
use crate::plane::ControlPlane;

/// How often sidecars are read by default: rates are averaged over this window.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Longest wait for one sidecar's metrics (Prometheus' default scrape timeout is 10 s; a
/// sidecar answers in milliseconds).
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
/// Sidecars read at once.
pub const CONCURRENT_SCRAPES: usize = 8;
/// Largest metrics body read (a sidecar at its series caps writes a few MiB).
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// Most samples of the graph's families taken from one sidecar.
pub const MAX_SAMPLES: usize = 200_000;
/// The node metadata key a sidecar announces its metrics address with (the proxy's
/// `control_client::node_metadata::METRICS_ADDRESS`).
pub const METRICS_ADDRESS: &str = "METRICS_ADDRESS";

/// How the collector runs.
#[derive(Clone, Debug)]
pub struct GraphSettings {
    /// Time between rounds; zero turns the collector off.
    pub interval: Duration,
    /// Timeout of one scrape.
    pub timeout: Duration,
    /// Scrapes at once.
    pub concurrency: usize,
    /// Largest body.
    pub max_body: usize,
    /// Most samples per scrape.
    pub max_samples: usize,
}

impl Default for GraphSettings {
    fn default() -> Self {
        Self::every(DEFAULT_INTERVAL)
    }
}

impl GraphSettings {
    /// The defaults, with rounds every `interval` (and no scrape longer than it).
    pub fn every(interval: Duration) -> Self {
        Self {
            interval,
            timeout: SCRAPE_TIMEOUT.min(interval),
            concurrency: CONCURRENT_SCRAPES,
            max_body: MAX_BODY_BYTES,
            max_samples: MAX_SAMPLES,
        }
    }
}

/// A sidecar to read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Its xDS node id.
    pub proxy: String,
    /// Its workload, `namespace/name`.
    pub workload: String,
    /// Its metrics listener.
    pub address: SocketAddr,
}

/// Why a sidecar's metrics could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// No TCP connection.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// No complete answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// Not a 200.
    #[error("answered {0}")]
    Status(u16),
    /// The body is over the limit.
    #[error("the metrics are larger than {0} bytes")]
    TooLarge(usize),
    /// The body is not UTF-8 text.
    #[error("the metrics are not UTF-8 text")]
    NotText,
    /// The text is not the exposition format.
    #[error("{0}")]
    Parse(#[from] exposition::ParseError),
}

impl ScrapeError {
    /// The `result` label of `meshlite_control_graph_scrapes_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ScrapeError::Connect(_) => "connect_error",
            ScrapeError::Timeout(_) => "timeout",
            ScrapeError::Http(_) | ScrapeError::Status(_) => "http_error",
            ScrapeError::TooLarge(_) => "too_large",
            ScrapeError::NotText | ScrapeError::Parse(_) => "parse_error",
        }
    }
}

/// `GET /stats/prometheus` from `address`: the body, within `settings`' bounds.
pub async fn scrape(address: SocketAddr, settings: &GraphSettings) -> Result<String, ScrapeError> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(ScrapeError::Connect)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ScrapeError::Http(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let request = http::Request::get("/stats/prometheus")
            .header(http::header::HOST, address.to_string())
            .header(http::header::ACCEPT, "text/plain;version=0.0.4")
            .body(Empty::<Bytes>::new())
            .map_err(|e| ScrapeError::Http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ScrapeError::Http(e.to_string()))?;
        if response.status() != http::StatusCode::OK {
            conn.abort();
            return Err(ScrapeError::Status(response.status().as_u16()));
        }
        let body = Limited::new(response.into_body(), settings.max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ScrapeError::TooLarge(settings.max_body)
                } else {
                    ScrapeError::Http(e.to_string())
                }
            })?
            .to_bytes();
        conn.abort();
        String::from_utf8(body.to_vec()).map_err(|_| ScrapeError::NotText)
    };
    tokio::time::timeout(settings.timeout, exchange)
        .await
        .map_err(|_| ScrapeError::Timeout(settings.timeout))?
}

/// The metrics address a sidecar announced in `node`, if it is one the control plane may
/// read: on the IP of its announced inbound address (the pod's, or loopback beside it), so a
/// sidecar can have the control plane connect to nothing but itself. Anything else is ignored
/// (logged): the sidecar is still served, only left out of the graph's scrapes.
pub fn metrics_target(node: &XdsNode, inbound: SocketAddr) -> Option<SocketAddr> {
    let raw = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(METRICS_ADDRESS))
        .and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.as_str()),
            _ => None,
        })?;
    match raw.parse::<SocketAddr>() {
        Ok(a) if a.ip() == inbound.ip() && a.port() != 0 => Some(a),
        _ => {
            tracing::warn!(proxy = %node.id, metrics = raw, inbound = %inbound,
                "ignoring the announced metrics address: not ip:port on the inbound address's IP");
            None
        }
    }
}

#[derive(Debug, Default)]
struct Readings {
    base: Option<Snapshot>,
    latest: Option<Snapshot>,
}

/// The collector's state and the latest graph.
#[derive(Debug)]
pub struct Collector {
    graph: ArcSwap<Graph>,
    readings: Mutex<HashMap<Target, Readings>>,
}

impl Default for Collector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector {
    /// A collector that has read nothing yet.
    pub fn new() -> Self {
        Self {
            graph: ArcSwap::from_pointee(Graph::default()),
            readings: Mutex::new(HashMap::new()),
        }
    }

    /// The graph of the last round.
    pub fn graph(&self) -> Arc<Graph> {
        self.graph.load_full()
    }

    fn readings(&self) -> std::sync::MutexGuard<'_, HashMap<Target, Readings>> {
        // Each update is a whole-entry write: a poisoned lock is still consistent.
        self.readings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One round: reads every target (those not given are forgotten), rebuilds the graph,
    /// counts each scrape's outcome in `metrics` when given, and returns the graph.
    pub async fn round(
        &self,
        targets: Vec<Target>,
        settings: &GraphSettings,
        metrics: Option<&ControlMetrics>,
    ) -> Arc<Graph> {
        let results: Vec<(Target, Result<Snapshot, ScrapeError>)> =
            futures_util::stream::iter(targets.iter().cloned())
                .map(|t| async move {
                    let read = scrape(t.address, settings).await.and_then(|text| {
                        let samples =
                            exposition::parse(&text, build::wanted, settings.max_samples)?;
                        Ok(build::snapshot(&samples, Instant::now()))
                    });
                    (t, read)
                })
                .buffer_unordered(settings.concurrency.max(1))
                .collect()
                .await;

        let mut failed = Vec::new();
        let mut fresh = Vec::new();
        let connected: HashSet<&Target> = targets.iter().collect();
        let mut readings = self.readings();
        readings.retain(|t, _| connected.contains(t));
        for (target, result) in results {
            let reason = match &result {
                Ok(_) => "ok",
                Err(e) => e.reason(),
            };
            if let Some(m) = metrics {
                m.graph_scrapes
                    .get_or_create(&ResultLabel { result: reason })
                    .inc();
            }
            match result {
                Ok(snapshot) => {
                    let r = readings.entry(target.clone()).or_default();
                    r.base = r.latest.take();
                    r.latest = Some(snapshot);
                    fresh.push(target);
                }
                Err(e) => {
                    tracing::debug!(proxy = %target.proxy, address = %target.address,
                        "graph: cannot read the sidecar's metrics: {e}");
                    failed.push(ScrapeFailure {
                        proxy: target.proxy,
                        address: target.address.to_string(),
                        error: e.to_string(),
                    });
                }
            }
        }
        let views: Vec<Reading<'_>> = fresh
            .iter()
            .filter_map(|t| readings.get(t))
            .filter_map(|r| {
                r.latest.as_ref().map(|latest| Reading {
                    base: r.base.as_ref(),
                    latest,
                })
            })
            .collect();
        let mut sidecars: Vec<String> = targets.iter().map(|t| t.workload.clone()).collect();
        sidecars.sort();
        sidecars.dedup();
        let (nodes, edges, window_s) = build::graph(&views, &sidecars);
        drop(views);
        drop(readings);
        failed.sort_by(|a, b| a.proxy.cmp(&b.proxy));
        let graph = Arc::new(Graph {
            generated_at: now_rfc3339(),
            window_s,
            nodes,
            edges,
            scrapes: ScrapeSummary {
                interval_s: Some(settings.interval.as_secs_f64()),
                targets: targets.len(),
                ok: fresh.len(),
                failed,
            },
        });
        self.graph.store(graph.clone());
        graph
    }

    /// Runs rounds every `settings.interval` over the plane's connected sidecars, until the
    /// process exits. A zero interval returns at once (the collector is off).
    pub async fn run(plane: Arc<ControlPlane>, settings: GraphSettings) {
        if settings.interval.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let targets = targets(&plane);
            plane
                .graph
                .round(targets, &settings, Some(&plane.metrics))
                .await;
        }
    }
}

/// The connected sidecars that announced an address to read.
pub fn targets(plane: &ControlPlane) -> Vec<Target> {
    let mut out: Vec<Target> = plane
        .proxies()
        .values()
        .filter_map(|p| {
            p.metrics_address.map(|address| Target {
                proxy: p.id.clone(),
                workload: p.workload.clone(),
                address,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.proxy, a.address).cmp(&(&b.proxy, b.address)));
    out.dedup();
    out
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::{Struct, Value};

    /// Serves `/stats/prometheus` with whatever `body` holds at the time of each request.
    async fn sidecar(body: Arc<Mutex<String>>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                        let text = body.lock().unwrap().clone();
                        async move {
                            let _: &http::Request<hyper::body::Incoming> = &req;
                            let status = if req.uri().path() == "/stats/prometheus" {
                                200
                            } else {
                                404
                            };
                            let mut r =
                                http::Response::new(http_body_util::Full::new(Bytes::from(text)));
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    fn requests(n: u64) -> String {
        format!(
            "# TYPE istio_requests_total counter\n\
             istio_requests_total{{reporter=\"destination\",source_workload=\"productpage-v1\",\
             source_workload_namespace=\"default\",destination_workload=\"reviews-v1\",\
             destination_workload_namespace=\"default\",\
             destination_service=\"reviews.default.svc.cluster.local\",request_protocol=\"http\",\
             response_code=\"200\",connection_security_policy=\"mutual_tls\"}} {n}\n\
             envoy_cluster_upstream_rq_retry{{cluster_name=\"x\"}} 3\n"
        )
    }

    #[tokio::test]
    async fn rounds_read_sidecars_and_turn_two_readings_into_rates() {
        let body = Arc::new(Mutex::new(requests(10)));
        let addr = sidecar(body.clone()).await;
        let collector = Collector::new();
        let settings = GraphSettings::every(Duration::from_secs(1));
        let target = Target {
            proxy: "reviews-v1.default".into(),
            workload: "default/reviews-v1".into(),
            address: addr,
        };
        let first = collector.round(vec![target.clone()], &settings, None).await;
        assert_eq!(first.window_s, None);
        assert_eq!(first.edges.len(), 1);
        assert_eq!(first.edges[0].rps, 0.0, "one reading: no rate yet");
        assert_eq!((first.scrapes.targets, first.scrapes.ok), (1, 1));

        *body.lock().unwrap() = requests(30);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let metrics = ControlMetrics::new();
        let second = collector
            .round(vec![target.clone()], &settings, Some(&metrics))
            .await;
        let window = second.window_s.unwrap();
        let e = &second.edges[0];
        assert!(e.rps > 0.0 && (e.rps * window - 20.0).abs() < 1e-6, "{e:?}");
        assert!(e.mtls);
        assert!(
            metrics
                .encode()
                .contains("meshlite_control_graph_scrapes_total{result=\"ok\"} 1")
        );
        assert_eq!(collector.graph(), second);
        let reviews = second
            .nodes
            .iter()
            .find(|n| n.id == "default/reviews-v1")
            .unwrap();
        assert!(reviews.sidecar);

        // A sidecar that no longer answers is listed, its readings kept for the next round.
        let gone = Target {
            proxy: "gone.default".into(),
            workload: "default/gone".into(),
            address: closed_port().await,
        };
        let third = collector
            .round(vec![target, gone], &settings, Some(&metrics))
            .await;
        assert_eq!((third.scrapes.targets, third.scrapes.ok), (2, 1));
        assert_eq!(third.scrapes.failed[0].proxy, "gone.default");
        assert!(
            metrics
                .encode()
                .contains("meshlite_control_graph_scrapes_total{result=\"connect_error\"} 1"),
            "{}",
            metrics.encode()
        );
        // Disconnected sidecars are forgotten.
        let empty = collector.round(vec![], &settings, None).await;
        assert!(empty.nodes.is_empty() && empty.edges.is_empty());
    }

    async fn closed_port() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn scrapes_are_bounded_in_size_and_time_and_must_be_the_format() {
        let body = Arc::new(Mutex::new("x".repeat(4096)));
        let addr = sidecar(body.clone()).await;
        let mut settings = GraphSettings::every(Duration::from_secs(1));
        settings.max_body = 1024;
        assert!(matches!(
            scrape(addr, &settings).await,
            Err(ScrapeError::TooLarge(1024))
        ));
        *body.lock().unwrap() = "istio_requests_total{reporter=\"destination\" 1\n".into();
        let c = Collector::new();
        let t = Target {
            proxy: "p".into(),
            workload: "default/p".into(),
            address: addr,
        };
        let g = c.round(vec![t], &settings, None).await;
        assert!(
            g.scrapes.failed[0].error.contains("line 1"),
            "{:?}",
            g.scrapes
        );

        // A listener that accepts and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        settings.timeout = Duration::from_millis(200);
        assert!(matches!(
            scrape(silent_addr, &settings).await,
            Err(ScrapeError::Timeout(_))
        ));
        drop(silent);
    }

    #[test]
    fn only_an_address_on_the_inbound_ip_is_read() {
        let node = |metrics: &str| XdsNode {
            id: "reviews-v1.default".into(),
            metadata: Some(Struct {
                fields: [(
                    METRICS_ADDRESS.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(metrics.into())),
                    },
                )]
                .into_iter()
                .collect(),
            }),
            ..Default::default()
        };
        let inbound: SocketAddr = "10.0.0.7:15006".parse().unwrap();
        assert_eq!(
            metrics_target(&node("10.0.0.7:15020"), inbound),
            Some("10.0.0.7:15020".parse().unwrap())
        );
        for refused in [
            "10.0.0.8:15020",
            "169.254.169.254:80",
            "10.0.0.7:0",
            "nonsense",
        ] {
            assert_eq!(metrics_target(&node(refused), inbound), None, "{refused}");
        }
        assert_eq!(metrics_target(&XdsNode::default(), inbound), None);
    }
}
