//! What the bench binary's integration tests share: a bounded wait for a child, the debug
//! proxy under test, and a short run of the bench read back through its JSON report.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest the short run may take (sidecar start-ups, a flush wait per traced leg).
pub const RUN_DEADLINE: Duration = Duration::from_secs(180);
/// The longest a missing proxy's debug build may take.
pub const BUILD_DEADLINE: Duration = Duration::from_secs(900);

/// Waits for `child` until `deadline`, killing it past that.
pub fn wait_bounded(mut child: std::process::Child, deadline: Duration, what: &str) -> bool {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return status.success();
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The debug proxy under test: `$MESHLITE_PROXY_BIN`, else the workspace's debug build (made
/// with `cargo build -p meshlite-proxy` when missing).
pub fn proxy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MESHLITE_PROXY_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "MESHLITE_PROXY_BIN={} does not exist",
            path.display()
        );
        return path;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ lives in the workspace");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let binary = target.join("debug").join("meshlite-proxy");
    if !binary.is_file() {
        eprintln!("building meshlite-proxy (debug; set MESHLITE_PROXY_BIN to skip)");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let build = Command::new(cargo)
            .args(["build", "-p", "meshlite-proxy"])
            .current_dir(workspace)
            .stdin(Stdio::null())
            .spawn()
            .expect("run cargo build -p meshlite-proxy");
        assert!(
            wait_bounded(build, BUILD_DEADLINE, "cargo build -p meshlite-proxy"),
            "cargo build -p meshlite-proxy failed"
        );
    }
    assert!(binary.is_file(), "{} is missing", binary.display());
    binary
}

/// The debug control plane beside the proxy under test, for scenarios that start one:
/// `$MESHLITE_CONTROL_BIN`, else the workspace's debug build when it exists (`cargo test
/// --workspace` makes it), else `None` and the bench builds its own.
pub fn control_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MESHLITE_CONTROL_BIN") {
        return Some(PathBuf::from(path));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    Some(target.join("debug").join("meshlite-control")).filter(|p| p.is_file())
}

/// A finished run of the bench binary.
pub struct BenchRun {
    /// Its pid (the names it gave what it made carry it).
    pub pid: u32,
    /// Its standard output and error.
    pub output: String,
    /// The JSON report it wrote.
    pub report: Value,
}

/// Runs `meshlite-bench ARGS --json FILE` against the debug proxy, bounded by
/// [`RUN_DEADLINE`]; panics (with its output) unless it succeeds and writes its report.
pub fn run_bench(args: &[&str], what: &str) -> BenchRun {
    let proxy = proxy_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let json_path = dir.path().join("report.json");
    let log_path = dir.path().join("bench.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshlite-bench"));
    if let Some(control) = control_binary() {
        command.env("MESHLITE_CONTROL_BIN", control);
    }
    let child = command
        .args(args)
        .arg("--json")
        .arg(&json_path)
        .env("MESHLITE_PROXY_BIN", &proxy)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("start meshlite-bench");
    let pid = child.id();
    let ok = wait_bounded(child, RUN_DEADLINE, what);
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(ok, "meshlite-bench failed:\n{output}");
    let report =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("the JSON report"))
            .expect("the JSON report parses");
    BenchRun {
        pid,
        output,
        report,
    }
}

/// The number at `pointer` in a report; panics (showing the report) when there is none.
pub fn number(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} is not a number in the report:\n{v:#}"))
}
