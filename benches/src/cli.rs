//! Command-line interface of `meshlite-bench` (clap).
//!
//! The visible interface is the benchmark itself (`--scenario`, rates, durations, ...); the hidden
//! `app` subcommand is the upstream application the benchmark starts as a separate process, so
//! that the app never shares a runtime or a CPU budget with the load generator.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::load::Protocol;
use crate::scenario::ScenarioName;

const ABOUT: &str = "End-to-end benchmark of the meshlite data plane: open-loop fixed-rate load, \
directly to an app and through a mutual-TLS meshlite-proxy sidecar pair, reporting the added \
latency, CPU and peak RSS of each sidecar.";

const LONG_ABOUT: &str = "End-to-end benchmark of the meshlite data plane.

It finds (or builds, with `cargo build --release -p meshlite-bench -p meshlite-proxy -p \
meshlite-control`, one feature set for all three) the meshlite-proxy binary next to its own \
executable (or takes MESHLITE_PROXY_BIN; MESHLITE_CONTROL_BIN for meshlite-control), generates test certificates, and starts real \
processes on 127.0.0.1: an upstream app (this binary's hidden `app` subcommand), a server-side and a \
client-side sidecar. For each rate it drives open-loop load at fixed intended send times (latency is \
counted from the intended time, so queueing is not hidden), first directly to the app, then through \
the sidecar pair with the same rate and connection count, and prints the added latency (meshed minus \
direct), the achieved rate, errors, each sidecar's CPU and peak RSS, and the decision record's targets.

Fresh processes are started for every run, and every run has a warm-up at the target rate before \
the measured window. A run is flagged `disturbed` (and left out of medians when clean repetitions \
exist) when the achieved rate is below 97% of the target, the generator is near saturation, or \
other processes on the machine used noticeable CPU during the window.

`--tracing 0,10,100` adds to every repetition of the pair scenario one more meshlite pair per \
sampling percentage (legs in a rotating order, so none is always first): both sidecars report spans \
over OTLP/gRPC to a collector this process runs on loopback (on a thread of its own, whose CPU is \
reported apart and counted against no sidecar), with `randomSamplingPercentage` set to the value. \
For each it reports the added latency, the sidecars' CPU per 1,000 requests and peak RSS, the spans \
the collector received (the share of requests sampled is checked against the percentage; 0 % must \
give none) and the difference from the untraced pair of the same repetition.

`--scenario chaos` runs a client sidecar and three backends of one service (`echo` v1..v3, each \
app behind its own sidecar) under a real meshlite-control that pushes a DestinationRule with outlier \
detection (consecutive5xxErrors 5, maxEjectionPercent 50) and a VirtualService with retries \
(attempts 2 on 5xx,reset,connect-failure). Under open-loop load (`--rate`, default 1000 RPS) one \
backend starts answering 503 at 30% of the window and is killed (app and sidecar, SIGKILL) 3 s \
later; the report gives the requests, the errors the client saw, the attempts the three apps \
received, the time from the first 503 to the client sidecar's ejection (its \
envoy_cluster_outlier_detection_ejections_enforced_total, polled), latency and each sidecar's cost.

`--scenario mesh` runs 15 services shaped like a small shop (frontend -> 4 mid-tier services -> 10 \
leaves; every app fans out to its callees through its own sidecar) under meshlite-control with \
mTLS, plus an entry sidecar for the load generator, at `--rate` requests per second at the entry \
(default 300: what a 2-core machine sustains with 15 app requests and 30 sidecar passes per entry \
request, with headroom: 1.3 of 2 cores busy; 500 saturates it). The same call graph is first run without sidecars; the report gives the latency added per \
hop (meshed minus direct, divided by the hops on the longest path), CPU per 1,000 requests and \
peak RSS per sidecar (min/median/max over the 15).

`--scenario pods` runs the pair in pods: two network namespaces on a bridge (a veth each), the app \
in the server pod and the load generator inside the client pod. After a direct leg (client pod to \
the server pod's address, no rules), `meshlite-proxy init` installs the capture rules in both pods \
and a fresh sidecar pair (static identities, uid 1337, Istio's ports) is started per leg: \
`meshlite`, the explicit mode (the app sends to 127.0.0.1:15001 naming the service), and \
`captured`, the app calling the server pod's address with no proxy settings, redirected by the \
rules. The report has the pair's tables for both, the cost of capture (captured minus explicit: \
added latency p50/p90/p99, CPU per 1,000 requests and peak RSS per sidecar) and the time from pod \
start (init begins) to the first request served through capture. Default --rate 1000, 3 \
repetitions. Needs root, ip (iproute2), setpriv (util-linux) and iptables (Debian's, nft backend); \
without them it says what is missing and runs nothing.

`--scenario control` measures the control plane instead: it starts the release meshlite-control \
on a generated config of `--services` ServiceEntries (50 of them routed by a VirtualService and a \
DestinationRule), has N simulated proxies (in this process) each get a certificate by CSR and open \
a delta ADS stream over mutual TLS, then edits VirtualServices `--changes` times and reports the \
convergence time (file write -> each proxy received the new route) p50/p99/max, the CSR signing \
rate, and the control plane's peak RSS and CPU, for each N of `--proxies` (default 100,1000).

`--scenario connections` measures what connections and bodies cost each pair (meshlite, and \
HAProxy with `--peer haproxy`, in the same run; a fresh pair per part): `--idle-connections` \
keep-alive connections (default 10,000) held through the client sidecar, each sending one request \
per `--idle-interval` for `--idle-rounds` rounds (RSS added per open connection, CPU while held); a \
closed loop over `--connections` connections for `--duration` (the most requests per second, one \
thread of load); connection churn (a new app connection per request); new mutual-TLS connections \
into the server sidecar (whether TLS sessions resume); and `--body-mib` bodies (default 1,100) up \
and down (Gbit/s, CPU seconds per GiB per sidecar). Raises RLIMIT_NOFILE as needed.

`--scenario scale` measures one client sidecar in meshes of `--sizes` services (default \
1,100,1000,5000; 5 endpoints each, one in five with subsets, outlier detection and a 90/10 split) \
under a release meshlite-control: its peak RSS, the time to the whole config applied, the apply \
time of a one-service change, and the first request to a service it never called.

Examples:
  meshlite-bench                                 # the default ladder 1k, 2k, 5k, 10k RPS
  meshlite-bench --rate 2000 --peer haproxy      # one rate, 3 repetitions, beside an HAProxy pair
  meshlite-bench --rate 5000 --workers 1 --pin --json out.json
  meshlite-bench --rate 2000 --tracing 0,10,100  # beside traced pairs sampling 0, 10, 100 %
  meshlite-bench --scenario chaos --duration 20 --json chaos.json
  meshlite-bench --scenario mesh --rate 300 --json mesh.json
  meshlite-bench --scenario pods --rate 1000 --json pods.json   # as root
  meshlite-bench --scenario control --proxies 100,1000 --json control.json
  meshlite-bench --scenario scale --sizes 1,1000,5000 --json scale.json
  meshlite-bench --scenario connections --peer haproxy --json connections.json";

/// The whole command line.
#[derive(Debug, Parser)]
#[command(name = "meshlite-bench", version, about = ABOUT, long_about = LONG_ABOUT)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Internal subcommands (the upstream app).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Benchmark options (used when no subcommand is given).
    #[command(flatten)]
    pub bench: BenchArgs,
}

/// Subcommands; all hidden, they are how the benchmark starts its own helper processes.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the upstream application: fixed 200 with an N-byte body (HTTP/1.1, h2c, gRPC),
    /// optionally after calling downstream services (`--call`).
    #[command(hide = true)]
    App(AppArgs),
    /// Holds a pod's network namespace in a container, as Kubernetes' pause container does:
    /// does nothing until SIGTERM or SIGINT (the compose mesh's pods, `docker/compose.yaml`).
    #[command(hide = true)]
    Pause,
}

/// Options of the hidden `app` subcommand.
#[derive(Debug, Clone, Args)]
pub struct AppArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed as JSON).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Response body size in bytes (for gRPC, the message size inside the gRPC frame).
    #[arg(long, default_value_t = DEFAULT_PAYLOAD)]
    pub payload: usize,
    /// A downstream service to call (concurrently with the others) before answering each
    /// request: `HOST=ADDR`, the `Host` to name and where to connect (repeatable).
    #[arg(long = "call", value_parser = crate::app::parse_downstream)]
    pub calls: Vec<crate::app::Downstream>,
    /// Bound on one downstream call.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub call_timeout: Duration,
    /// Serve until SIGTERM or SIGINT only, without watching standard input (a container's is
    /// closed from the start). By default the app also exits when its stdin closes, so it never
    /// outlives the benchmark that started it.
    #[arg(long)]
    pub ignore_stdin: bool,
}

/// Default response body size: a small fixed response, like the `return 200` baseline app.
pub const DEFAULT_PAYLOAD: usize = 64;

/// Options of the benchmark.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Scenario to run.
    #[arg(long, value_enum, default_value_t = ScenarioName::Pair)]
    pub scenario: ScenarioName,
    /// Run a single rate (requests per second) instead of the default ladder 1000, 2000, 5000,
    /// 10000 (`chaos` and `pods`: default 1000; `mesh`: the rate at the entry, default 300).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=200_000))]
    pub rate: Option<u32>,
    /// Measured window per run, e.g. `10`, `10s`, `1500ms`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up at the target rate before the measured window (connections, TLS, caches).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Concurrent connections of the load generator (each with its own staggered schedule).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,
    /// Response body size in bytes.
    #[arg(long, default_value_t = DEFAULT_PAYLOAD)]
    pub payload: usize,
    /// What the load generator speaks to the app or to the client-side sidecar.
    #[arg(long, value_enum, default_value_t = Protocol::Http1)]
    pub protocol: Protocol,
    /// How the sidecars talk to each other (client sidecar's `upstream.protocol`); default: the
    /// proxy's own default (left out of the config).
    #[arg(long, value_enum)]
    pub upstream: Option<UpstreamProtocol>,
    /// Worker threads of each meshlite-proxy (`--workers N`); default: the proxy's default.
    #[arg(long)]
    pub workers: Option<u32>,
    /// Repetitions per rate (fresh processes each); default 3 for one rate, 1 per ladder step.
    /// With more than one, the median and the range are reported.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub repeat: Option<u32>,
    /// Pin the load generator to CPU 0 and the app and sidecars to CPU 1 (uses `taskset`).
    #[arg(long)]
    pub pin: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also run the same load, in the same run, through a peer sidecar pair.
    #[arg(long, value_enum)]
    pub peer: Option<PeerName>,
    /// The server sidecar enforces the decision record's authorization shape on every
    /// request: an ALLOW for the client's principal, method and path (what the generator
    /// sends) and a DENY on a debug header that wins over it.
    #[arg(long)]
    pub authz: bool,
    /// Pair scenario: also run, in the same run, one meshlite pair per sampling percentage
    /// (`--tracing 0,10,100`, or repeated), each sidecar reporting spans (OTLP/gRPC) to a
    /// collector this process runs on loopback; reported beside the untraced pair.
    #[arg(
        long,
        value_name = "PERCENT",
        value_delimiter = ',',
        value_parser = parse_percent,
        allow_negative_numbers = true
    )]
    pub tracing: Vec<f64>,
    /// Per-request timeout; a request slower than this counts as an error.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Keep the run directory (configs, certificates, process logs) and print its path.
    #[arg(long)]
    pub keep_dir: bool,
    /// `control` scenario: simulated proxies, one run per value (default 100,1000).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub proxies: Vec<u32>,
    /// `control` scenario: services (ServiceEntries) in the generated config.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub services: u32,
    /// `scale` scenario: services in the mesh, one run per value (default 1,100,1000,5000).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub sizes: Vec<u32>,
    /// `scale` scenario: how the client sidecar gets the mesh: fetched on demand (the proxy's
    /// default), pushed whole, or both, one run of every size each.
    #[arg(long, value_enum, default_value_t = Fetch::Both)]
    pub fetch: Fetch,
    /// `control` scenario: VirtualService edits per run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub changes: u32,
    /// `connections` scenario: idle keep-alive connections held through each pair.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub idle_connections: u32,
    /// `connections` scenario: each idle connection sends one request per interval.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub idle_interval: Duration,
    /// `connections` scenario: intervals the idle connections are held for.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub idle_rounds: u32,
    /// `connections` scenario: body sizes in MiB, each sent both ways (default 1,100).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub body_mib: Vec<u32>,
    /// `control` scenario: time between two edits.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub change_interval: Duration,
}

/// Protocol between the two sidecars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UpstreamProtocol {
    /// Multiplexed HTTP/2 over mTLS (the proxy's default).
    H2,
    /// HTTP/1.1 over mTLS, one request at a time per connection.
    Http1,
}

impl UpstreamProtocol {
    /// The value written into the proxy config's `upstream.protocol`.
    pub fn config_value(self) -> &'static str {
        match self {
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::Http1 => "http1",
        }
    }
}

/// How a sidecar in the `scale` scenario gets the mesh (`control.on_demand`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fetch {
    /// Services' endpoints, routes and policies fetched when first called.
    OnDemand,
    /// The whole mesh pushed up front.
    Whole,
    /// One run of each.
    Both,
}

impl Fetch {
    /// The `on_demand` settings to run, in order.
    pub fn modes(self) -> Vec<bool> {
        match self {
            Fetch::OnDemand => vec![true],
            Fetch::Whole => vec![false],
            Fetch::Both => vec![true, false],
        }
    }
}

/// A peer sidecar implementation run beside meshlite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PeerName {
    /// HAProxy (Debian's `haproxy`), an mTLS sidecar pair with one thread each.
    Haproxy,
}

/// Why a duration argument was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a duration: use seconds (`10`, `2.5`) or Istio's forms (`10s`, `500ms`, `1m30s`), at most 24 h"
)]
pub struct DurationParseError(String);

/// Why a percentage argument was refused.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a sampling percentage: give a number from 0 to 100 (`10`, `0.5`, `10%`)")]
pub struct PercentParseError(String);

/// Parses a sampling percentage, 0 to 100 inclusive (`10`, `0.5`; a trailing `%` is allowed),
/// the range the proxy's `randomSamplingPercentage` takes.
pub fn parse_percent(text: &str) -> Result<f64, PercentParseError> {
    let trimmed = text.trim();
    let number = trimmed.strip_suffix('%').unwrap_or(trimmed).trim();
    match number.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(PercentParseError(text.to_string())),
    }
}

/// Parses a bare number of seconds (`10`, `2.5`), or any duration Istio's grammar takes
/// (`10s`, `500ms`, `1m30s`: the parser the proxy and the control plane share), up to 24 h.
pub fn parse_duration(text: &str) -> Result<Duration, DurationParseError> {
    let bad = || DurationParseError(text.to_string());
    let trimmed = text.trim();
    let parsed = match trimmed.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Duration::try_from_secs_f64(seconds).map_err(|_| bad())?
        }
        Ok(_) => return Err(bad()),
        Err(_) => meshlite_xds_proto::duration::parse(trimmed).map_err(|_| bad())?,
    };
    if parsed > Duration::from_secs(24 * 3600) {
        return Err(bad());
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    fn bench(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("meshlite-bench").chain(args.iter().copied()))
            .map(|c| c.bench)
    }

    #[test]
    fn tracing_takes_a_list_or_repeats() {
        let tracing = |args: &[&str]| bench(args).ok().map(|b| b.tracing);
        assert_eq!(tracing(&[]), Some(vec![]), "no --tracing: no traced legs");
        assert_eq!(
            tracing(&["--tracing", "0,10,100"]),
            Some(vec![0.0, 10.0, 100.0])
        );
        assert_eq!(
            tracing(&["--tracing", "10", "--tracing", "0.5", "--tracing=25%"]),
            Some(vec![10.0, 0.5, 25.0])
        );
    }

    #[test]
    fn tracing_refuses_what_is_not_a_percentage() {
        for bad in [
            ["--tracing", "101"],
            ["--tracing", "-1"],
            ["--tracing", "-0.5"],
            ["--tracing", "10,200"],
            ["--tracing", "0,-5"],
            ["--tracing", "ten"],
            ["--tracing", "NaN"],
            ["--tracing", "inf"],
            ["--tracing", ""],
        ] {
            let parsed = bench(&bad);
            assert!(parsed.is_err(), "{bad:?} was accepted: {parsed:?}");
        }
        let message = bench(&["--tracing", "-5"]).err().map(|e| e.to_string());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("not a sampling percentage")),
            "a negative value is refused as a percentage, not as an unknown flag: {message:?}"
        );
        assert_eq!(parse_percent("100").ok(), Some(100.0));
        assert_eq!(parse_percent("0").ok(), Some(0.0));
        assert!(parse_percent("100.01").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10").ok(), Some(Duration::from_secs(10)));
        assert_eq!(
            parse_duration("2.5s").ok(),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            parse_duration("500ms").ok(),
            Some(Duration::from_millis(500))
        );
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("-1").is_err());
        assert_eq!(
            parse_duration("1m30s").ok(),
            Some(Duration::from_secs(90)),
            "Istio's forms, as the proxy and control plane read them"
        );
        assert!(parse_duration("25h").is_err(), "above the 24 h cap");
        assert!(parse_duration("10 parsecs").is_err());
    }
}
