//! The live service graph: the control plane reads what every sidecar reports and draws who
//! calls whom, with request rate, error share, p99 and mTLS per call, as JSON, as Graphviz DOT,
//! on the CLI, and as a page a browser renders.

use meshlite_tests::apps::{HttpApp, TcpEchoApp};
use meshlite_tests::clients;
use meshlite_tests::control::{
    ControlPlane, Load, MeshProxy, NAMESPACE, StaticTcp, Workload, output_text, wait_served_by,
};
use meshlite_tests::deadline::{SOON, eventually};
use meshlite_tests::mesh::{AppProtocol, InboundPort};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bound of every load loop in this file.
const LOAD_BOUND: Duration = Duration::from_secs(60);

/// How long the graph may take to show a call: two reads of every sidecar one second apart
/// (`--graph-interval 1s`), plus traffic.
const GRAPH_SHOWS: Duration = Duration::from_secs(20);

const CLIENT: &str = "default/client";
const PRODUCTPAGE: &str = "default/productpage-v1";
const REVIEWS: &str = "default/reviews-v1";
const MONGODB: &str = "default/mongodb";

/// A small bookinfo: `client` calls `productpage`, which calls `reviews` (one request in five
/// answered 500), which holds TCP connections to `mongodb`; every sidecar joined through the
/// control plane, whose graph reads them every second. Traffic keeps flowing while the test
/// looks.
struct Bookinfo {
    control: ControlPlane,
    _proxies: Vec<MeshProxy>,
    _apps: (HttpApp, HttpApp, TcpEchoApp),
    loads: Vec<Load>,
    tcp: tokio::task::JoinHandle<()>,
}

impl Bookinfo {
    async fn start() -> Bookinfo {
        let control = ControlPlane::start_with(&[], &["--graph-interval", "1s"]).await;
        let productpage_app = HttpApp::start("productpage-v1").await;
        let reviews_app = HttpApp::start("reviews-v1").await;
        reviews_app.fail_some_with(500, &[0, 5]);
        let mongo_app = TcpEchoApp::start().await;

        let mut mongodb = Workload::new("mongodb");
        mongodb.inbound.push(InboundPort {
            port: 27017,
            target: mongo_app.addr,
            protocol: AppProtocol::Tcp,
        });
        let mongodb_proxy =
            MeshProxy::start(&control.access(NAMESPACE, "mongodb").await, &mongodb).await;
        let mut reviews = Workload::version_of("reviews", "v1", 9080, reviews_app.addr);
        reviews.static_tcp.push(StaticTcp {
            name: "orders-db".into(),
            port: 27017,
            endpoint: mongodb_proxy.addrs.inbound,
            identity: mongodb.spiffe_id(),
        });
        let productpage = Workload::version_of("productpage", "v1", 9080, productpage_app.addr);
        let (reviews_proxy, productpage_proxy, client_proxy) = tokio::join!(
            async { MeshProxy::start(&control.access(NAMESPACE, "reviews").await, &reviews).await },
            async {
                MeshProxy::start(
                    &control.access(NAMESPACE, "productpage").await,
                    &productpage,
                )
                .await
            },
            MeshProxy::caller(&control, "client"),
        );
        wait_served_by(
            client_proxy.outbound(),
            "productpage:9080",
            "productpage-v1",
            SOON,
        )
        .await;
        eventually("productpage to reach reviews", SOON, || async {
            let r = clients::try_get(productpage_proxy.outbound(), "reviews:9080", "/").await?;
            r.header("x-served-by").map(|_| ())
        })
        .await;

        let loads = vec![
            Load::start(client_proxy.outbound(), "productpage:9080", 1, LOAD_BOUND),
            Load::start(productpage_proxy.outbound(), "reviews:9080", 1, LOAD_BOUND),
        ];
        let tcp_listener = reviews_proxy.addrs.tcp["orders-db:27017"];
        let tcp = tokio::spawn(async move {
            loop {
                let _ = crate::tcp_ping(tcp_listener).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Bookinfo {
            control,
            _proxies: vec![
                mongodb_proxy,
                reviews_proxy,
                productpage_proxy,
                client_proxy,
            ],
            _apps: (productpage_app, reviews_app, mongo_app),
            loads,
            tcp,
        }
    }

    /// `GET /graph`, once every call of the story shows traffic.
    async fn busy_graph(&self) -> serde_json::Value {
        eventually(
            "the graph to show every call with traffic",
            GRAPH_SHOWS,
            || async {
                let g = clients::get(self.control.monitoring, "127.0.0.1", "/graph")
                    .await
                    .json();
                let busy = |src: &str, dst: &str| {
                    edge(&g, src, dst).is_some_and(|e| {
                        e["rps"].as_f64().unwrap_or(0.0) > 0.0
                            || e["tcp_sent_bps"].as_f64().unwrap_or(0.0) > 0.0
                    })
                };
                (busy(CLIENT, PRODUCTPAGE)
                    && busy(PRODUCTPAGE, REVIEWS)
                    && g["edges"].as_array()?.iter().any(|e| {
                        e["destination"] == MONGODB
                            && e["tcp_sent_bps"].as_f64().unwrap_or(0.0) > 0.0
                    }))
                .then_some(g)
            },
        )
        .await
    }

    async fn stop(self) {
        self.tcp.abort();
        for load in self.loads {
            load.stop().await;
        }
    }
}

fn edge<'a>(g: &'a serde_json::Value, src: &str, dst: &str) -> Option<&'a serde_json::Value> {
    g["edges"]
        .as_array()?
        .iter()
        .find(|e| e["source"] == src && e["destination"] == dst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_shows_who_calls_whom_with_rates_errors_latency_and_mtls() {
    let mesh = Bookinfo::start().await;
    let g = mesh.busy_graph().await;

    let nodes: Vec<&str> = g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    for id in [CLIENT, PRODUCTPAGE, REVIEWS, MONGODB] {
        assert!(nodes.contains(&id), "node {id} missing: {nodes:?}");
    }
    let node = |id: &str| {
        g["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(node(REVIEWS)["sidecar"], true, "{g}");
    assert_eq!(node(REVIEWS)["app"], "reviews");
    assert_eq!(node(REVIEWS)["version"], "v1");

    let front = edge(&g, CLIENT, PRODUCTPAGE).unwrap();
    assert_eq!(front["reporter"], "destination", "{front}");
    assert_eq!(
        front["destination_service"],
        "productpage.default.svc.cluster.local"
    );
    assert_eq!(front["protocol"], "http");
    assert_eq!(front["error_rate"], 0.0, "productpage never fails: {front}");
    assert_eq!(
        front["mtls"], true,
        "sidecar to sidecar is mutual TLS: {front}"
    );
    assert!(front["p99_ms"].as_f64().unwrap() > 0.0, "{front}");

    let back = edge(&g, PRODUCTPAGE, REVIEWS).unwrap();
    assert_eq!(back["mtls"], true, "{back}");
    let errors = back["error_rate"].as_f64().unwrap();
    assert!(
        (0.05..=0.4).contains(&errors),
        "reviews answers 500 to one request in five: {back}"
    );

    let tcp = g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["destination"] == MONGODB)
        .unwrap();
    assert_eq!(tcp["protocol"], "tcp", "{tcp}");
    assert_eq!(tcp["rps"], 0.0, "{tcp}");
    assert!(
        tcp["tcp_received_bps"].as_f64().unwrap() > 0.0,
        "the echo: {tcp}"
    );

    assert_eq!(g["scrapes"]["targets"], 4, "{}", g["scrapes"]);
    assert_eq!(g["scrapes"]["ok"], 4, "{}", g["scrapes"]);
    assert!(g["window_s"].as_f64().unwrap() > 0.0);
    assert!(
        mesh.control
            .metric("meshlite_control_graph_scrapes_total", &[("result", "ok")])
            .await
            >= 8.0,
        "each sidecar read at least twice"
    );

    // DOT: a digraph with the same edges, whose labels carry the figures.
    let dot = clients::get(mesh.control.monitoring, "127.0.0.1", "/graph.dot")
        .await
        .text();
    let edges = dot_edges(&dot);
    for (src, dst) in [(CLIENT, PRODUCTPAGE), (PRODUCTPAGE, REVIEWS)] {
        let label = edges
            .iter()
            .find(|(s, d, _)| s == src && d == dst)
            .map(|(_, _, attrs)| attrs.clone())
            .unwrap_or_else(|| panic!("no {src} -> {dst} in:\n{dot}"));
        assert!(label.contains("rps") && label.contains("mTLS"), "{label}");
    }
    if let Some(plain) = graphviz_plain(&dot).await {
        for (src, dst) in [(CLIENT, PRODUCTPAGE), (PRODUCTPAGE, REVIEWS)] {
            assert!(
                plain
                    .lines()
                    .any(|l| l.starts_with(&format!("edge \"{src}\" \"{dst}\""))),
                "Graphviz laid out no {src} -> {dst}:\n{plain}"
            );
        }
    }

    // The CLI, in each format.
    let url = format!("http://{}", mesh.control.monitoring);
    let text = mesh.control.cli(&["graph", "--monitoring", &url]).await;
    assert!(text.status.success(), "{}", output_text(&text));
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    for (src, dst) in [(CLIENT, PRODUCTPAGE), (PRODUCTPAGE, REVIEWS)] {
        let row = text
            .lines()
            .find(|l| l.starts_with(src) && l.contains(dst))
            .unwrap_or_else(|| panic!("no row {src} -> {dst} in:\n{text}"));
        assert!(row.contains("http") && row.ends_with("yes"), "{row}");
    }
    let json = mesh
        .control
        .cli(&["graph", "--monitoring", &url, "--format", "json"])
        .await;
    assert!(json.status.success(), "{}", output_text(&json));
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(edge(&parsed, CLIENT, PRODUCTPAGE).is_some(), "{parsed}");
    let dot_cli = mesh
        .control
        .cli(&["graph", "--monitoring", &url, "--format", "dot"])
        .await;
    let dot_cli = String::from_utf8_lossy(&dot_cli.stdout).into_owned();
    assert!(
        dot_edges(&dot_cli)
            .iter()
            .any(|(s, d, _)| s == PRODUCTPAGE && d == REVIEWS),
        "{dot_cli}"
    );
    let refused = mesh
        .control
        .cli(&["graph", "--monitoring", "https://127.0.0.1:1"])
        .await;
    assert!(!refused.status.success());
    mesh.stop().await;
}

/// The edges of a DOT digraph as meshlite writes it: `"a" -> "b" [attrs];` lines between
/// `digraph NAME {` and `}`, ids unescaped.
///
/// # Panics
/// If the text is not such a digraph.
fn dot_edges(dot: &str) -> Vec<(String, String, String)> {
    let body = dot
        .trim()
        .strip_prefix("digraph ")
        .and_then(|rest| rest.split_once('{'))
        .and_then(|(_, body)| body.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not a digraph:\n{dot}"));
    let mut edges = Vec::new();
    for statement in body.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(
            statement.ends_with(';'),
            "unterminated statement {statement:?}"
        );
        let mut rest = statement;
        let Some(src) = quoted_id(&mut rest) else {
            continue;
        };
        let Some(after) = rest.trim_start().strip_prefix("->") else {
            continue;
        };
        rest = after.trim_start();
        let dst = quoted_id(&mut rest).unwrap_or_else(|| panic!("bad edge {statement:?}"));
        edges.push((src, dst, rest.to_string()));
    }
    edges
}

/// Reads a `"..."` id at the start of `rest` and advances past it.
fn quoted_id(rest: &mut &str) -> Option<String> {
    let s = rest.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?.1),
            '"' => {
                *rest = &s[i + 1..];
                return Some(out);
            }
            c => out.push(c),
        }
    }
    None
}

/// Graphviz's own reading of `dot` (`dot -Tplain`), when Graphviz is installed.
async fn graphviz_plain(dot: &str) -> Option<String> {
    crate::which("dot")?;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("graph.dot");
    std::fs::write(&file, dot).unwrap();
    let out = tokio::process::Command::new("dot")
        .arg("-Tplain")
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "Graphviz refused the DOT: {}\n{dot}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where the page's screenshot is written: `MESHLITE_GRAPH_SCREENSHOT` (the README's
/// `docs/graph.png` is made with it), else a temporary file.
fn screenshot_path(dir: &Path) -> PathBuf {
    std::env::var_os("MESHLITE_GRAPH_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("graph.png"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_page_renders_the_live_graph_in_a_headless_browser() {
    let Some(chromium) = crate::peer(&["chromium", "chromium-browser"], "chromium") else {
        return;
    };
    let mesh = Bookinfo::start().await;
    mesh.busy_graph().await;
    let page = clients::get(mesh.control.monitoring, "127.0.0.1", "/graph.html").await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        !page.text().contains("src=\"http") && !page.text().contains("href=\"http"),
        "the page loads nothing from elsewhere"
    );

    let url = format!("http://{}/graph.html", mesh.control.monitoring);
    let dir = tempfile::tempdir().unwrap();
    let browse = |extra: Vec<String>| {
        let mut cmd = tokio::process::Command::new(&chromium);
        cmd.args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1400,720",
            "--virtual-time-budget=4000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .args(extra)
        .arg(&url)
        .kill_on_drop(true);
        async move {
            tokio::time::timeout(Duration::from_secs(90), cmd.output())
                .await
                .expect("chromium finished within 90 s")
                .expect("chromium runs")
        }
    };

    // The DOM after the page's script ran: the nodes and edges it drew, with their labels.
    let dumped = browse(vec!["--dump-dom".into()]).await;
    let dom = String::from_utf8_lossy(&dumped.stdout).into_owned();
    assert!(
        dom.contains("data-rendered="),
        "the page's script did not draw the graph; chromium said:\n{}\nDOM:\n{dom}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    for id in [CLIENT, PRODUCTPAGE, REVIEWS, MONGODB] {
        assert!(
            dom.contains(&format!("data-id=\"{id}\"")),
            "no node {id} drawn:\n{dom}"
        );
    }
    for name in ["client", "productpage-v1", "reviews-v1", "mongodb"] {
        assert!(dom.contains(&format!(">{name}</text>")), "no label {name}");
    }
    for (src, dst) in [(CLIENT, PRODUCTPAGE), (PRODUCTPAGE, REVIEWS)] {
        assert!(
            dom.contains(&format!("data-source=\"{src}\" data-destination=\"{dst}\"")),
            "no edge {src} -> {dst} drawn:\n{dom}"
        );
    }
    assert!(dom.contains(" rps"), "edge labels carry the rate");
    assert!(dom.contains("% err"), "and the error share");
    assert!(dom.contains("p99 "), "and the p99");
    assert!(dom.contains(">mTLS<"), "and the mTLS status");
    assert!(dom.contains("out, "), "TCP edges carry bytes per second");

    // A screenshot of it.
    let png = screenshot_path(dir.path());
    let shot = browse(vec![format!("--screenshot={}", png.display())]).await;
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {} ({e}); chromium said:\n{}",
            png.display(),
            String::from_utf8_lossy(&shot.stderr)
        )
    });
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
        "a PNG of a drawn page ({} bytes)",
        bytes.len()
    );
    mesh.stop().await;
}
