//! The shipped dashboards against a real Prometheus: a mesh under HTTP and TCP traffic is
//! scraped with `deploy/prometheus/prometheus.yml`, and every PromQL expression of
//! `deploy/grafana/dashboards/` (extracted by `deploy/grafana/extract_queries.py`, so the
//! queries tested are the dashboards' own) must evaluate; the golden signals must return
//! the series a user expects.
//!
//! Needs Debian's `prometheus` and `python3`. Without Prometheus the test says so and passes,
//! unless `MESHLITE_REQUIRE_PEERS=1` (set by `.ci/run`, which installs it) makes that a
//! failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use meshlite_tests::apps::{HttpApp, TcpEchoApp};
use meshlite_tests::clients::try_get;
use meshlite_tests::control::{
    ControlPlane, ECHO_HOST, ECHO_PORT, MeshProxy, NAMESPACE, StaticTcp, Workload, wait_served_by,
};
use meshlite_tests::deadline::SOON;
use meshlite_tests::mesh::{AppProtocol, InboundPort};
use serde_json::Value;
use tokio::process::{Child, Command};

const TCP_PORT: u16 = 5432;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// A free loopback port (bound, then released for Prometheus).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A Prometheus server scraping `sidecars` and `control` every second, with the shipped
/// configuration; killed when dropped.
struct Prometheus {
    addr: SocketAddr,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(sidecars: &[(&str, SocketAddr)], control: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let shipped = std::fs::read_to_string(workspace().join("deploy/prometheus/prometheus.yml"))
            .expect("deploy/prometheus/prometheus.yml");
        // The shipped file, scraping every second instead of every 15.
        let config = shipped
            .replace("scrape_interval: 15s", "scrape_interval: 1s")
            .replace("scrape_timeout: 10s", "scrape_timeout: 1s")
            .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
        assert_ne!(
            config, shipped,
            "the shipped intervals moved: update this test"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
        let targets = dir.path().join("targets");
        std::fs::create_dir(&targets).expect("targets dir");
        let sidecar_targets: Vec<Value> = sidecars
            .iter()
            .map(|(pod, addr)| {
                serde_json::json!({
                    "targets": [addr.to_string()],
                    "labels": {"namespace": NAMESPACE, "pod": pod},
                })
            })
            .collect();
        std::fs::write(
            targets.join("sidecars.json"),
            Value::Array(sidecar_targets).to_string(),
        )
        .expect("write targets");
        std::fs::write(
            targets.join("control.json"),
            serde_json::json!([{"targets": [control.to_string()]}]).to_string(),
        )
        .expect("write targets");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            addr,
            _child: child,
            _dir: dir,
        }
    }

    /// Evaluates `expr` now; the API's whole answer.
    async fn query(&self, expr: &str) -> Value {
        let encoded =
            percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC);
        let path = format!("/api/v1/query?query={encoded}");
        match try_get(self.addr, "127.0.0.1", &path).await {
            Some(reply) => serde_json::from_str(&reply.text()).unwrap_or(Value::Null),
            None => Value::Null,
        }
    }

    /// The values of `expr`'s result vector.
    async fn values(&self, expr: &str) -> Vec<f64> {
        self.query(expr).await["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|s| s["value"][1].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `expr` returns a sample `accept` takes.
    async fn wait_for(&self, expr: &str, accept: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + SOON * 2;
        loop {
            if let Some(v) = self.values(expr).await.into_iter().find(|v| accept(*v)) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{expr} never returned the expected value: {}",
                self.query(expr).await
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Every dashboard query with the template variables filled in:
/// `(dashboard, panel, expr)`.
fn dashboard_queries(vars: &[(&str, &str)]) -> Vec<(String, String, String)> {
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(workspace().join("deploy/grafana/extract_queries.py"))
        .args(["--json", "--strict"]);
    for (k, v) in vars {
        cmd.arg("--var").arg(format!("{k}={v}"));
    }
    let out = cmd.output().expect("python3 runs extract_queries.py");
    assert!(
        out.status.success(),
        "extract_queries.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("extract_queries.py --json");
    list.as_array()
        .expect("a list")
        .iter()
        .map(|q| {
            let field = |k: &str| q[k].as_str().unwrap_or_default().to_string();
            (field("dashboard"), field("panel"), field("expr"))
        })
        .collect()
}

/// Sends HTTP requests and TCP exchanges through `client` for `for_how_long`.
async fn traffic(client: &MeshProxy, for_how_long: Duration) {
    let end = tokio::time::Instant::now() + for_how_long;
    while tokio::time::Instant::now() < end {
        for _ in 0..10 {
            let reply = try_get(client.outbound(), ECHO_HOST, "/").await;
            assert_eq!(reply.map(|r| r.status.as_u16()), Some(200));
        }
        assert_eq!(
            crate::tcp_ping(client.addrs.tcp["echo:5432"]).await,
            b"ping",
            "the TCP echo answers through the mesh"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_queries_return_the_golden_signals_from_a_real_prometheus() {
    if crate::peer(&["prometheus"], "prometheus").is_none() {
        return;
    }
    let control = ControlPlane::start(&[]).await;
    let (http_app, tcp_app) = (HttpApp::start("echo-a").await, TcpEchoApp::start().await);
    let mut echo = Workload::version_of("echo", "a", ECHO_PORT, http_app.addr);
    echo.inbound.push(InboundPort {
        port: TCP_PORT,
        target: tcp_app.addr,
        protocol: AppProtocol::Tcp,
    });
    let server = MeshProxy::start(&control.access(NAMESPACE, "echo").await, &echo).await;
    let mut caller = Workload::new("client");
    caller.static_tcp.push(StaticTcp {
        name: "echo".into(),
        port: TCP_PORT,
        endpoint: server.addrs.inbound,
        identity: echo.spiffe_id(),
    });
    let client = MeshProxy::start(&control.access(NAMESPACE, "client").await, &caller).await;
    wait_served_by(client.outbound(), ECHO_HOST, "echo-a", SOON).await;

    let prometheus = Prometheus::start(
        &[
            ("client", client.addrs.metrics),
            ("echo-a", server.addrs.metrics),
        ],
        control.monitoring,
    )
    .await;
    prometheus.wait_for("count(up == 1)", |n| n >= 3.0).await;
    // Traffic across several scrapes, so rates have two points.
    traffic(&client, Duration::from_secs(4)).await;
    prometheus
        .wait_for(
            "sum(rate(istio_requests_total{reporter=\"destination\"}[1m]))",
            |v| v > 0.0,
        )
        .await;

    let queries = dashboard_queries(&[
        ("datasource", "prometheus"),
        ("service", "echo.default.svc.cluster.local"),
        ("namespace", NAMESPACE),
        ("workload", "echo-a"),
    ]);
    assert!(queries.len() >= 80, "{} queries", queries.len());
    let mut results: BTreeMap<(String, String), Vec<Vec<f64>>> = BTreeMap::new();
    for (dashboard, panel, expr) in &queries {
        let answer = prometheus.query(expr).await;
        assert_eq!(
            answer["status"], "success",
            "{dashboard} / {panel}: {expr}: {answer}"
        );
        results
            .entry((dashboard.clone(), panel.clone()))
            .or_default()
            .push(prometheus.values(expr).await);
    }
    let panel = |dashboard: &str, title: &str| -> &Vec<Vec<f64>> {
        results
            .get(&(dashboard.to_string(), title.to_string()))
            .unwrap_or_else(|| panic!("no panel {title} in {dashboard}"))
    };
    // Golden signals: volume, success, latency percentiles, sizes, TCP bytes, the control
    // plane's connected proxies.
    let positive = |dashboard: &str, title: &str| {
        for (i, target) in panel(dashboard, title).iter().enumerate() {
            assert!(
                !target.is_empty() && target.iter().all(|v| v.is_finite() && *v > 0.0),
                "{dashboard} / {title} [{i}]: {target:?}"
            );
        }
    };
    positive("mesh.json", "Global Request Volume");
    positive("mesh.json", "Request Volume by Service");
    positive("mesh.json", "Request Duration p99 by Service");
    positive("mesh.json", "TCP Services");
    positive("service.json", "Server Request Duration");
    positive("service.json", "Client Request Duration");
    positive("service.json", "Server Response Size");
    positive("service.json", "Incoming Requests by Source Workload");
    positive("service.json", "TCP Bytes Received from Source Workloads");
    positive("workload.json", "Incoming Request Volume");
    positive("workload.json", "Incoming TCP Bytes");
    assert_eq!(
        panel("mesh.json", "Global Success Rate (non-5xx responses)"),
        &vec![vec![1.0]],
        "every request succeeded"
    );
    assert!(
        prometheus
            .values("istio_requests_total{request_protocol=\"tcp\"}")
            .await
            .is_empty(),
        "TCP connections are counted in istio_tcp_*, not as requests"
    );
    let connected = &panel("control-plane.json", "Connected Proxies")[0];
    assert_eq!(connected, &vec![2.0], "two sidecars hold an xDS stream");
}
