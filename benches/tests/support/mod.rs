//! What the bench binary's integration tests share: a bounded wait for a child and the debug
//! proxy under test.
#![allow(dead_code)]

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
