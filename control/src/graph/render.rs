//! The graph for scripts and terminals: Graphviz DOT (`/graph.dot`, `graph --format dot`) and
//! a table (`graph --format text`). Labels say what the page says: requests per second, error
//! share, p99 and mTLS for HTTP edges; bytes per second for TCP edges.

use std::fmt::Write as _;

use super::{Edge, Graph, NodeKind};

/// Error share above which an edge is degraded (Kiali's default "degraded" threshold, 0.1 %).
pub const DEGRADED: f64 = 0.001;
/// Error share above which an edge is failing (Kiali's default "failure" threshold, 20 %).
pub const FAILING: f64 = 0.2;

/// A DOT quoted string: `"` and `\` escaped, newlines as `\n`.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `12.3 rps`, `0.05 rps`.
pub fn rate(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Bytes per second in B/s, kB/s or MB/s.
pub fn bytes_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1} MB/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} kB/s", v / 1e3)
    } else {
        format!("{v:.0} B/s")
    }
}

/// The lines of an edge's label: traffic, errors, latency, mTLS.
pub fn edge_label(e: &Edge) -> Vec<String> {
    let mut lines = Vec::new();
    if e.protocol == "tcp" {
        lines.push(format!(
            "{} out, {} in",
            bytes_rate(e.tcp_sent_bps),
            bytes_rate(e.tcp_received_bps)
        ));
    } else {
        lines.push(format!("{} rps", rate(e.rps)));
        if let Some(err) = e.error_rate {
            lines.push(format!("{:.1}% err", err * 100.0));
        }
        if let Some(p99) = e.p99_ms {
            lines.push(format!("p99 {p99:.0} ms"));
        }
    }
    lines.push(if e.mtls { "mTLS" } else { "no mTLS" }.to_string());
    lines
}

/// Green, orange or red by error share; grey when idle.
fn colour(e: &Edge) -> &'static str {
    match e.error_rate {
        _ if !e.active() => "grey60",
        Some(r) if r > FAILING => "red3",
        Some(r) if r > DEGRADED => "orange2",
        _ => "green4",
    }
}

/// Graphviz DOT: a left-to-right digraph, one node per workload or service, one edge per call
/// with its figures as the label, coloured by error share; idle edges dashed, mTLS edges
/// drawn thicker.
pub fn dot(g: &Graph) -> String {
    let mut out = String::from(
        "digraph meshlite {\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\", \
         fillcolor=white, fontname=\"Helvetica\"];\n  edge [fontname=\"Helvetica\", fontsize=10];\n",
    );
    for n in &g.nodes {
        let label = match n.kind {
            NodeKind::Workload => format!("{}\n{}", n.name, n.namespace),
            NodeKind::Service | NodeKind::Unknown => n.name.clone(),
        };
        let shape = match n.kind {
            NodeKind::Workload => "box",
            NodeKind::Service => "ellipse",
            NodeKind::Unknown => "diamond",
        };
        let _ = writeln!(
            out,
            "  {} [label={}, shape={shape}{}];",
            quoted(&n.id),
            quoted(&label),
            if n.sidecar { "" } else { ", color=grey50" }
        );
    }
    for e in &g.edges {
        let mut attrs = format!(
            "label={}, color={}, fontcolor={}",
            quoted(&edge_label(e).join("\n")),
            colour(e),
            colour(e)
        );
        if !e.active() {
            attrs.push_str(", style=dashed");
        }
        if e.mtls {
            attrs.push_str(", penwidth=2");
        }
        let _ = write!(
            attrs,
            ", tooltip={}",
            quoted(&format!(
                "{} ({} reports)",
                e.destination_service, e.reporter
            ))
        );
        let _ = writeln!(
            out,
            "  {} -> {} [{}];",
            quoted(&e.source),
            quoted(&e.destination),
            attrs
        );
    }
    out.push_str("}\n");
    out
}

/// A table: one line per edge, then the sidecars that could not be read.
pub fn text(g: &Graph) -> String {
    let mut out = String::new();
    let window = g
        .window_s
        .map_or("no rates yet: sidecars read once".to_string(), |w| {
            format!("rates over the last {w:.1} s")
        });
    let _ = writeln!(
        out,
        "service graph at {}: {} nodes, {} edges ({window}; {} of {} sidecars read)",
        if g.generated_at.is_empty() {
            "-"
        } else {
            &g.generated_at
        },
        g.nodes.len(),
        g.edges.len(),
        g.scrapes.ok,
        g.scrapes.targets
    );
    let rows: Vec<[String; 9]> = g
        .edges
        .iter()
        .map(|e| {
            let tcp = e.protocol == "tcp";
            [
                e.source.clone(),
                e.destination.clone(),
                e.destination_service.clone(),
                e.protocol.clone(),
                if tcp { "-".into() } else { rate(e.rps) },
                e.error_rate
                    .map_or("-".into(), |r| format!("{:.1}%", r * 100.0)),
                e.p99_ms.map_or("-".into(), |p| format!("{p:.1}ms")),
                if tcp {
                    format!(
                        "{} / {}",
                        bytes_rate(e.tcp_sent_bps),
                        bytes_rate(e.tcp_received_bps)
                    )
                } else {
                    "-".into()
                },
                match e.mtls_share {
                    Some(s) if e.mtls && s >= 1.0 => "yes".into(),
                    Some(s) => format!("no ({:.0}%)", s * 100.0),
                    None => "unknown".into(),
                },
            ]
        })
        .collect();
    let header = [
        "SOURCE",
        "DESTINATION",
        "SERVICE",
        "PROTO",
        "RPS",
        "ERRORS",
        "P99",
        "TCP OUT / IN",
        "MTLS",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (cell, w) in cells.zip(&widths) {
            let _ = write!(l, "{cell:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    let idle: Vec<&str> = g
        .nodes
        .iter()
        .filter(|n| {
            !g.edges
                .iter()
                .any(|e| e.source == n.id || e.destination == n.id)
        })
        .map(|n| n.id.as_str())
        .collect();
    if !idle.is_empty() {
        let _ = writeln!(out, "no calls: {}", idle.join(", "));
    }
    for f in &g.scrapes.failed {
        let _ = writeln!(out, "not read: {} at {}: {}", f.proxy, f.address, f.error);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{Node, ScrapeFailure};
    use super::*;

    fn sample() -> Graph {
        let node = |id: &str, kind, sidecar| Node {
            id: id.into(),
            kind,
            namespace: "default".into(),
            name: id.rsplit('/').next().unwrap().into(),
            app: None,
            version: None,
            sidecar,
        };
        let edge = |src: &str, dst: &str, protocol: &str| Edge {
            source: src.into(),
            destination: dst.into(),
            destination_service: "reviews.default.svc.cluster.local".into(),
            protocol: protocol.into(),
            reporter: "destination".into(),
            rps: if protocol == "tcp" { 0.0 } else { 12.5 },
            error_rate: (protocol != "tcp").then_some(0.25),
            p99_ms: (protocol != "tcp").then_some(47.5),
            tcp_sent_bps: if protocol == "tcp" { 2048.0 } else { 0.0 },
            tcp_received_bps: 0.0,
            tcp_connections_per_s: 0.0,
            mtls: true,
            mtls_share: Some(1.0),
        };
        Graph {
            generated_at: "2026-11-01T00:00:00Z".into(),
            window_s: Some(10.0),
            nodes: vec![
                node("default/product\"page", NodeKind::Workload, true),
                node("default/reviews-v1", NodeKind::Workload, true),
                node("default/idle", NodeKind::Workload, true),
                node("unknown", NodeKind::Unknown, false),
            ],
            edges: vec![
                edge("default/product\"page", "default/reviews-v1", "http"),
                edge("unknown", "default/reviews-v1", "tcp"),
            ],
            scrapes: ScrapeSummary {
                interval_s: Some(10.0),
                targets: 3,
                ok: 2,
                failed: vec![ScrapeFailure {
                    proxy: "idle.default".into(),
                    address: "127.0.0.1:1".into(),
                    error: "timeout".into(),
                }],
            },
        }
    }

    use super::super::ScrapeSummary;

    #[test]
    fn dot_is_a_digraph_with_escaped_ids_and_figures_on_the_edges() {
        let d = dot(&sample());
        assert!(d.starts_with("digraph meshlite {\n") && d.ends_with("}\n"));
        assert!(
            d.contains("\"default/product\\\"page\" -> \"default/reviews-v1\" [label=\"12.5 rps\\n25.0% err\\np99 48 ms\\nmTLS\", color=red3"),
            "{d}"
        );
        assert!(d.contains("\"unknown\" [label=\"unknown\", shape=diamond, color=grey50];"));
        assert!(d.contains("label=\"2.0 kB/s out, 0 B/s in\\nmTLS\""), "{d}");
        assert_eq!(d.matches(" -> ").count(), 2);
    }

    #[test]
    fn text_lists_edges_idle_nodes_and_failed_reads() {
        let t = text(&sample());
        assert!(t.contains("2 of 3 sidecars read"), "{t}");
        let row = t
            .lines()
            .find(|l| l.starts_with("default/product\"page"))
            .unwrap();
        for cell in [
            "default/reviews-v1",
            "http",
            "12.5",
            "25.0%",
            "47.5ms",
            "yes",
        ] {
            assert!(row.contains(cell), "{cell} missing in {row}");
        }
        assert!(t.contains("no calls: default/idle"), "{t}");
        assert!(t.contains("not read: idle.default at 127.0.0.1:1: timeout"));
    }
}
