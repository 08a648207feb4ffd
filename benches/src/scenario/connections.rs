//! Scenario `connections`: what connections and bodies cost a sidecar pair, meshlite beside
//! HAProxy (`--peer haproxy`) in the same run.
//!
//! Every part starts a fresh pair (the pair scenario's: mTLS between the sidecars, one app
//! behind them) and samples both sidecars from `/proc`:
//! - idle: `--idle-connections` HTTP/1.1 keep-alive connections (default 10,000), each answered
//!   once, then one request per connection every `--idle-interval` for `--idle-rounds` rounds:
//!   resident set added per open connection, CPU while held;
//! - closed loop: `--connections` keep-alive connections (default 50), one thread of load, each
//!   sending its next request when the last is answered, for `--duration`: the most requests per
//!   second the pair carries;
//! - churn: the same loop with a new app connection per request (`Connection: close`);
//! - mTLS handshakes: new mutual-TLS connections straight into the server sidecar, the bench
//!   playing the client sidecar with meshlite's own TLS client (and its resumption cache);
//! - bodies: `--body-mib` sizes (default 1 and 100 MiB), uploads and downloads, byte counts
//!   checked: Gbit/s and CPU seconds per GiB per sidecar.
//!
//! The implementations take turns going first from one repetition to the next. Every loop is
//! bounded in count and time; all traffic stays on loopback.

mod parts;
pub mod record;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshlite_proxy::identity::tls::{ALPN_HTTP1, ALPN_MESH_HTTP1};

use crate::cli::{BenchArgs, PeerName};
use crate::load::Protocol;
use crate::process::{ChildSpec, ManagedChild, ProcessError};
use crate::procfs;
use crate::report::{self, ReportError};
use crate::sidecar::meshlite::{self, MeshliteOptions, ProxyBinary};
use crate::sidecar::pki::{self, MeshPki};
use crate::sidecar::{RunningPair, SidecarError, haproxy};
use parts::{bodies_part, handshake_part, idle_part, loop_part};
use record::PairRecord;

/// Concurrent connections of the churn loop (each opens a new one per request).
const CHURN_CONNECTIONS: usize = 8;
/// Concurrent new mTLS connections.
const HANDSHAKE_CONCURRENCY: usize = 4;
/// Requests per second no loop exceeds (the count bound of a closed loop).
const MAX_LOOP_RPS: u64 = 200_000;
/// File descriptors a process needs besides the idle connections (each process holds one end
/// of each: the generator, the client sidecar; plus pools, the app's side, logs).
const SPARE_FDS: u64 = 8_192;
/// Bytes moved per direction and size, at most (fewer, larger transfers for large sizes).
const BODY_BUDGET: u64 = 256 * 1024 * 1024;
/// Transfers per direction and size: at least, at most.
const BODY_TRANSFERS: (u64, u64) = (2, 50);
/// Bound on one body transfer and on the transfers of one size and direction.
const BODY_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the scenario could not run at all (a failing part is reported, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ConnectionsError {
    /// The arguments cannot be honoured.
    #[error("{0}")]
    Unsupported(String),
    /// The run directory could not be made.
    #[error("cannot create the run directory: {0}")]
    RunDir(std::io::Error),
    /// Certificates could not be prepared.
    #[error(transparent)]
    Sidecar(#[from] SidecarError),
    /// The app could not be started.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The app's listening line was not understood.
    #[error("the app printed an unexpected line: {0}")]
    AppAnnounce(String),
    /// The open-file limit could not be raised for the idle connections.
    #[error("cannot raise RLIMIT_NOFILE to {wanted}: {source}")]
    FileLimit {
        /// The limit wanted.
        wanted: u64,
        /// The OS error.
        source: nix::Error,
    },
    /// The report could not be written.
    #[error(transparent)]
    Report(#[from] ReportError),
}

/// One implementation under test.
enum Implementation {
    Meshlite(ProxyBinary),
    Haproxy { binary: PathBuf, version: String },
}

impl Implementation {
    fn name(&self) -> &'static str {
        match self {
            Implementation::Meshlite(_) => "meshlite",
            Implementation::Haproxy { .. } => "haproxy",
        }
    }

    fn version(&self) -> String {
        match self {
            Implementation::Meshlite(bin) => format!("{} ({})", bin.path.display(), bin.origin),
            Implementation::Haproxy { version, .. } => version.clone(),
        }
    }

    /// The ALPN a client sidecar of this implementation offers for HTTP/1.1.
    fn alpn(&self) -> &'static [u8] {
        match self {
            Implementation::Meshlite(_) => ALPN_MESH_HTTP1,
            Implementation::Haproxy { .. } => ALPN_HTTP1,
        }
    }
}

/// What every part shares.
struct Setup<'a> {
    args: &'a BenchArgs,
    pki: MeshPki,
    app: SocketAddr,
}

/// Runs the scenario, prints the tables, writes the JSON; returns false if any part failed.
pub fn run(args: &BenchArgs) -> Result<bool, ConnectionsError> {
    raise_file_limit(u64::from(args.idle_connections) + SPARE_FDS)?;
    let temp = tempfile::Builder::new()
        .prefix("meshlite-bench-")
        .tempdir()
        .map_err(ConnectionsError::RunDir)?;
    let run_dir = temp.path().to_path_buf();
    let pki = pki::generate(&run_dir)?;
    let mut implementations = Vec::new();
    match meshlite::locate_or_build() {
        Ok(bin) => implementations.push(Implementation::Meshlite(bin)),
        Err(e) => eprintln!("meshlite-bench: meshlite-proxy unavailable: {e}"),
    }
    if args.peer == Some(PeerName::Haproxy) {
        match haproxy::find() {
            Some(binary) => {
                let version =
                    haproxy::version(&binary).unwrap_or_else(|| "HAProxy (version unknown)".into());
                implementations.push(Implementation::Haproxy { binary, version });
            }
            None => eprintln!(
                "meshlite-bench: --peer haproxy: haproxy is not installed (Debian: `apt-get install -y haproxy`); running without the peer"
            ),
        }
    }
    let (app, app_addr) = start_app(&run_dir)?;
    let setup = Setup {
        args,
        pki,
        app: app_addr,
    };
    print_header(args, &implementations);

    let repeat = args.repeat.unwrap_or(1);
    let mut records = Vec::new();
    for rep in 1..=repeat {
        let count = implementations.len().max(1);
        let shift = usize::try_from(rep - 1).unwrap_or(0) % count;
        for i in 0..implementations.len() {
            if let Some(imp) = implementations.get((i + shift) % count) {
                let dir = run_dir.join(format!("run-{rep}-{}", imp.name()));
                std::fs::create_dir_all(&dir).map_err(ConnectionsError::RunDir)?;
                records.push(run_pair(&setup, imp, rep, &dir));
            }
        }
    }
    // The app is ours: how it exits changes no figure.
    let _ = app.stop();
    let all_ran = !records.is_empty() && records.iter().all(|r| r.failures.is_empty());
    println!("{}", record::render(&records));
    if let Some(path) = &args.json {
        report::write_runs(path, "connections", &records)?;
    }
    if args.keep_dir {
        let kept = temp.keep();
        println!("run directory kept: {}", kept.display());
    }
    Ok(all_ran)
}

fn print_header(args: &BenchArgs, implementations: &[Implementation]) {
    println!(
        "meshlite-bench, scenario connections: idle {} connections (one request each every {:.1} s, {} rounds); closed loop {} connections for {:.1} s; churn {CHURN_CONNECTIONS} connections; mTLS handshakes {HANDSHAKE_CONCURRENCY} at a time; bodies {:?} MiB each way",
        args.idle_connections,
        args.idle_interval.as_secs_f64(),
        args.idle_rounds,
        args.connections,
        args.duration.as_secs_f64(),
        body_sizes(args)
            .iter()
            .map(|b| b / (1024 * 1024))
            .collect::<Vec<_>>(),
    );
    for imp in implementations {
        println!("{}: {}", imp.name(), imp.version());
    }
    println!(
        "each part on a fresh pair (mTLS between the sidecars); generator, app and sidecars share the machine's {} CPUs; one thread of load",
        procfs::cpu_count()
    );
}

/// The body sizes, bytes.
fn body_sizes(args: &BenchArgs) -> Vec<u64> {
    let mibs: &[u32] = if args.body_mib.is_empty() {
        &[1, 100]
    } else {
        &args.body_mib
    };
    mibs.iter().map(|m| u64::from(*m) * 1024 * 1024).collect()
}

/// Raises this process's open-file limit (the sidecars and the app inherit it) to `wanted`:
/// the hard limit too where allowed (root with CAP_SYS_RESOURCE), else within it.
fn raise_file_limit(wanted: u64) -> Result<(), ConnectionsError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|source| ConnectionsError::FileLimit { wanted, source })?;
    if soft >= wanted {
        return Ok(());
    }
    match setrlimit(Resource::RLIMIT_NOFILE, wanted, hard.max(wanted)) {
        Ok(()) => Ok(()),
        Err(_) if hard >= wanted => setrlimit(Resource::RLIMIT_NOFILE, wanted, hard)
            .map_err(|source| ConnectionsError::FileLimit { wanted, source }),
        Err(source) => Err(ConnectionsError::FileLimit { wanted, source }),
    }
}

/// HAProxy's limits for `idle` connections under this process's open-file limit: it refuses
/// to start unless `ulimit-n` covers twice `maxconn` (a socket each side), so `maxconn` is
/// capped to what the limit allows.
fn haproxy_limits(idle: u32, ulimit_n: Option<u64>) -> haproxy::Limits {
    let wanted = idle.saturating_add(1_000);
    let allowed = ulimit_n.map_or(wanted, |n| {
        u32::try_from(n.saturating_sub(64) / 2).unwrap_or(u32::MAX)
    });
    let maxconn = wanted.min(allowed);
    haproxy::Limits {
        maxconn,
        ulimit_n,
        // No queue in front of the next hop: an idle client's connection may keep its
        // server-side connection, and the baseline's 1,000 would queue the rest.
        server_maxconn: maxconn,
    }
}

/// This process's open-file limit (soft), if readable.
fn file_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Starts the app every part calls.
fn start_app(dir: &Path) -> Result<(ManagedChild, SocketAddr), ConnectionsError> {
    let mut app = ManagedChild::spawn(ChildSpec {
        name: "app".into(),
        program: crate::process::own_executable().map_err(ConnectionsError::RunDir)?,
        args: vec!["app".into(), "--listen".into(), "127.0.0.1:0".into()],
        pin_cpu: None,
        log_dir: dir.to_path_buf(),
        stdin_pipe: true,
        announce: None,
        current_dir: None,
    })?;
    let line = app.first_line(Duration::from_secs(10))?;
    let addr = crate::app::announced_addr(&line)
        .ok_or_else(|| ConnectionsError::AppAnnounce(line.clone()))?;
    Ok((app, addr))
}

/// Starts a fresh pair of `imp` in `dir`.
fn start_pair(setup: &Setup, imp: &Implementation, dir: &Path) -> Result<RunningPair, String> {
    let started = match imp {
        Implementation::Meshlite(bin) => {
            let opts = MeshliteOptions {
                binary: bin.path.clone(),
                workers: setup.args.workers,
                upstream: setup.args.upstream,
                protocol: Protocol::Http1,
                pin_cpu: None,
                authz: false,
                tracing: None,
            };
            meshlite::start_pair(dir, &setup.pki, setup.app, &opts)
        }
        Implementation::Haproxy { binary, .. } => haproxy::start_pair_sized(
            binary,
            dir,
            &setup.pki,
            setup.app,
            Protocol::Http1,
            None,
            haproxy_limits(setup.args.idle_connections, file_limit()),
        ),
    };
    started.map_err(|e| format!("{} pair did not start: {e}", imp.name()))
}

/// Runs `part` on a fresh pair in its own directory and stops the pair.
fn with_pair<T>(
    setup: &Setup,
    imp: &Implementation,
    dir: &Path,
    part: &str,
    run: impl FnOnce(&RunningPair) -> Result<T, String>,
) -> Result<T, String> {
    let dir = dir.join(part);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{part}: {e}"))?;
    let pair = start_pair(setup, imp, &dir)?;
    let outcome = run(&pair);
    let logs = format!(
        "logs: {} and {}",
        pair.client.log_path().display(),
        pair.server.log_path().display()
    );
    // HAProxy's exit on SIGTERM is its own business; only meshlite's is checked.
    let checked = pair.implementation == "meshlite";
    let notes = pair.stop();
    match outcome {
        Ok(v) if notes.is_empty() || !checked => Ok(v),
        Ok(_) => Err(format!("{part}: {}", notes.join("; "))),
        Err(e) => Err(format!("{part}: {e}; {logs}")),
    }
}

/// One implementation, every part.
fn run_pair(setup: &Setup, imp: &Implementation, rep: u32, dir: &Path) -> PairRecord {
    let mut record = PairRecord {
        implementation: imp.name().into(),
        version: imp.version(),
        repetition: rep,
        idle: None,
        closed_loop: None,
        churn: None,
        mtls_handshakes: None,
        bodies: Vec::new(),
        failures: Vec::new(),
    };
    let tag = format!("[{} #{rep}]", imp.name());
    match with_pair(setup, imp, dir, "idle", |p| idle_part(setup, p)) {
        Ok(r) => {
            eprintln!(
                "{tag} idle: {}/{} held, client +{:.2} KB/conn, server +{:.2} KB/conn, {} errors",
                r.held,
                r.connections,
                r.client_kb_per_connection,
                r.server_kb_per_connection,
                r.errors
            );
            record.idle = Some(r);
        }
        Err(e) => record.failures.push(e),
    }
    for fresh in [false, true] {
        let part = if fresh { "churn" } else { "closed-loop" };
        match with_pair(setup, imp, dir, part, |p| loop_part(setup, p, fresh)) {
            Ok(r) => {
                eprintln!(
                    "{tag} {part}: {:.0} rps, {} errors, client {:.4} ms/req",
                    r.rps, r.errors, r.client_cpu_ms_per_request
                );
                if fresh {
                    record.churn = Some(r);
                } else {
                    record.closed_loop = Some(r);
                }
            }
            Err(e) => record.failures.push(e),
        }
    }
    match with_pair(setup, imp, dir, "handshakes", |p| {
        handshake_part(setup, imp, p)
    }) {
        Ok(r) => {
            eprintln!(
                "{tag} mTLS: {:.0} conns/s, {} of {} resumed, {} errors",
                r.per_second, r.resumed, r.ok, r.errors
            );
            record.mtls_handshakes = Some(r);
        }
        Err(e) => record.failures.push(e),
    }
    match with_pair(setup, imp, dir, "bodies", |p| bodies_part(setup, p)) {
        Ok(bodies) => {
            for b in &bodies {
                eprintln!(
                    "{tag} {} {} B: {:.2} Gbit/s, {} errors",
                    b.direction, b.size_bytes, b.gbit_per_s, b.errors
                );
            }
            record.bodies = bodies;
        }
        Err(e) => record.failures.push(e),
    }
    record
}

#[cfg(test)]
mod tests {
    use super::parts::{ms_per, per_connection};
    use super::*;

    #[test]
    fn rss_per_connection_is_the_difference_shared_out() {
        assert_eq!(per_connection(1_000, 9_000, 1_000), 8.0);
        assert_eq!(per_connection(1_000, 900, 100), -1.0);
        assert_eq!(per_connection(1_000, 9_000, 0), 0.0);
    }

    #[test]
    fn haproxy_maxconn_fits_the_file_limit() {
        assert_eq!(haproxy_limits(200, Some(20_000)).maxconn, 1_200);
        assert_eq!(haproxy_limits(10_000, Some(20_000)).maxconn, 9_968);
        assert_eq!(haproxy_limits(10_000, None).maxconn, 11_000);
    }

    #[test]
    fn cpu_is_shared_out_per_request() {
        assert_eq!(ms_per(0.5, 2.0, 1_000), 1.0);
        assert_eq!(ms_per(0.5, 2.0, 0), 0.0);
    }
}
