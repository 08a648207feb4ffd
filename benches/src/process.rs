//! Starting, watching and stopping child processes: the one spawner under the benchmark's app
//! and HAProxy peers and under [`crate::harness`], which runs meshlite's own binaries for the
//! benchmark and the end-to-end tests alike.
//!
//! Every child gets its stderr and its stdout (each stdout line marked `[stdout]`) in one log
//! file, `<name>.log`, opened for appending so a restarted child continues the same log and a
//! failure can show what the process said. Readiness is never a sleep: a child that announces
//! itself (the proxy's and the app's JSON line) is waited for line-first, with a timeout, and a
//! child that dies meanwhile is reported with its exit status and the tail of its log. Pinning
//! uses `taskset -c CPU`, which execs the program, so the PID is the program's own. Stopping
//! sends SIGTERM and waits a bounded time before SIGKILL; dropping a child kills it.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long a stopping child may take after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How much of a log a failure report quotes.
const LOG_TAIL_BYTES: usize = 2_000;

/// Why a child process misbehaved.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started at all.
    #[error("cannot start {name} ({program}): {source}")]
    Spawn {
        /// Role of the process.
        name: String,
        /// Program path.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The log file could not be created.
    #[error("cannot create log file {path}: {source}")]
    Log {
        /// Log path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The process exited before it was ready.
    #[error("{name} exited before it was ready ({status}); its log {log}:\n{tail}")]
    EarlyExit {
        /// Role of the process.
        name: String,
        /// Its exit status.
        status: String,
        /// Log path.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// The process did not become ready in time.
    #[error("{name} was not ready after {waited:?}: {what}; its log {log}:\n{tail}")]
    NotReady {
        /// Role of the process.
        name: String,
        /// How long we waited.
        waited: Duration,
        /// What was awaited.
        what: String,
        /// Log path.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// Waiting for or signalling the process failed.
    #[error("cannot control {name}: {message}")]
    Control {
        /// Role of the process.
        name: String,
        /// What failed.
        message: String,
    },
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// Role, used in messages and log file names (`app`, `client-sidecar`...).
    pub name: String,
    /// Program to run.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Pin it to this CPU with `taskset`.
    pub pin_cpu: Option<usize>,
    /// Directory for its log file.
    pub log_dir: PathBuf,
    /// Give it a stdin pipe that closes when we drop the child (the app exits on EOF).
    pub stdin_pipe: bool,
    /// The `msg` of the JSON line on stdout that announces readiness (the proxy prints other
    /// lines first when its access or audit log goes to stdout); `None`: the first line.
    pub announce: Option<String>,
    /// Working directory; `None` inherits ours. meshlite's binaries run in `/`, so a relative
    /// path in a config file must be relative to the file, as the proxy promises.
    pub current_dir: Option<PathBuf>,
}

/// Whether `line` is the announcement awaited: any line without a marker, else a JSON object
/// whose `msg` is the marker.
fn announces(marker: Option<&str>, line: &str) -> bool {
    let Some(marker) = marker else {
        return true;
    };
    serde_json::from_str::<serde_json::Value>(line)
        .is_ok_and(|v| v.get("msg").and_then(serde_json::Value::as_str) == Some(marker))
}

/// A running child process.
pub struct ManagedChild {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    first_line: Option<mpsc::Receiver<String>>,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl ManagedChild {
    /// Starts the process described by `spec`.
    pub fn spawn(spec: ChildSpec) -> Result<Self, ProcessError> {
        let log = spec.log_dir.join(format!("{}.log", spec.name));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|source| ProcessError::Log {
                path: log.clone(),
                source,
            })?;
        let stderr = log_file.try_clone().map_err(|source| ProcessError::Log {
            path: log.clone(),
            source,
        })?;
        let mut command = match spec.pin_cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(&spec.program);
                c
            }
            None => Command::new(&spec.program),
        };
        command
            .args(&spec.args)
            .stdin(if spec.stdin_pipe {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        if let Some(dir) = &spec.current_dir {
            command.current_dir(dir);
        }
        let mut child = command.spawn().map_err(|source| ProcessError::Spawn {
            name: spec.name.clone(),
            program: spec.program.display().to_string(),
            source,
        })?;
        let stdin = child.stdin.take();
        let first_line = child.stdout.take().map(|stdout| {
            let (tx, rx) = mpsc::channel();
            let mut rest = log_file;
            let announce = spec.announce.clone();
            // The reader ends when the child closes stdout (exit); it only forwards and logs.
            let _ = thread::Builder::new()
                .name(format!("{}-stdout", spec.name))
                .spawn(move || {
                    let mut announced = false;
                    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                        let _ = writeln!(rest, "[stdout] {line}");
                        if !announced && announces(announce.as_deref(), &line) {
                            announced = true;
                            let _ = tx.send(line);
                        }
                    }
                });
            rx
        });
        Ok(Self {
            name: spec.name,
            child,
            stdin,
            first_line,
            log,
            exited: None,
        })
    }

    /// The process id (the program's own, also when pinned through `taskset`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Role of the process.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits for its announcement on stdout: the first line, or the line [`ChildSpec::announce`]
    /// names.
    pub fn first_line(&mut self, timeout: Duration) -> Result<String, ProcessError> {
        let deadline = Instant::now() + timeout;
        let Some(rx) = self.first_line.take() else {
            return Err(self.not_ready(timeout, "stdout line (stdout not captured)"));
        };
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => return Ok(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed without a line: the process is exiting.
                    let status = self.wait_exit(Duration::from_secs(2));
                    return Err(self.early_exit(status));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Some(status) = self.try_exit()? {
                return Err(self.early_exit(Some(status)));
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready(timeout, "its listening line on stdout"));
            }
        }
    }

    /// Returns the exit status if the process has exited.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>, ProcessError> {
        if let Some(status) = self.exited {
            return Ok(Some(status));
        }
        let status = self.child.try_wait().map_err(|e| ProcessError::Control {
            name: self.name.clone(),
            message: e.to_string(),
        })?;
        self.exited = status;
        Ok(status)
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_exit() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => return None,
            }
        }
    }

    /// An error saying the process died, with its log's tail.
    pub fn early_exit(&self, status: Option<ExitStatus>) -> ProcessError {
        ProcessError::EarlyExit {
            name: self.name.clone(),
            status: status.map_or_else(|| "still running".to_string(), |s| s.to_string()),
            log: self.log.clone(),
            tail: self.log_tail(),
        }
    }

    /// An error saying the process was not ready after `waited`, with its log's tail.
    pub fn not_ready(&self, waited: Duration, what: &str) -> ProcessError {
        ProcessError::NotReady {
            name: self.name.clone(),
            waited,
            what: what.to_string(),
            log: self.log.clone(),
            tail: self.log_tail(),
        }
    }

    /// The last couple of kilobytes of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(LOG_TAIL_BYTES);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    /// Sends SIGTERM and waits (bounded) for the exit; SIGKILL after the grace period.
    /// Returns the exit status, or `None` if it had to be killed.
    pub fn stop(mut self) -> Result<Option<ExitStatus>, ProcessError> {
        self.stdin = None;
        if let Some(status) = self.try_exit()? {
            return Ok(Some(status));
        }
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        // ESRCH (already gone) is fine: the wait below collects it.
        let _ = kill(pid, Signal::SIGTERM);
        if let Some(status) = self.wait_exit(STOP_GRACE) {
            return Ok(Some(status));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.exited = None;
        Ok(None)
    }
}

impl ManagedChild {
    /// SIGKILLs the process and reaps it: a crash, not a graceful exit.
    pub fn kill(mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and returns at once (the caller watches the exit with [`Self::try_exit`]).
    pub fn terminate(&self) -> Result<(), ProcessError> {
        if self.exited.is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        match kill(pid, Signal::SIGTERM) {
            // Already gone: nothing to stop.
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(ProcessError::Control {
                name: self.name.clone(),
                message: format!("SIGTERM: {e}"),
            }),
        }
    }

    /// Everything it logged so far (stderr, and stdout lines marked `[stdout]`).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        self.stdin = None;
        if matches!(self.try_exit(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A workspace binary the benchmark runs, and where it came from.
#[derive(Debug, Clone)]
pub struct Binary {
    /// Its path.
    pub path: PathBuf,
    /// How it was found (`$ENV_VAR`, `found next to meshlite-bench`, `built by cargo`).
    pub origin: String,
}

/// Why a workspace binary could not be found or built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BinaryError(String);

/// The packages built together whenever one of their binaries is needed. One set for every
/// build: cargo unifies dependency features over the packages of one invocation, so building
/// `-p meshlite-proxy` alone after `cargo run -p meshlite-bench` (which enables more `nix`
/// features, for one) rebuilt the proxy and then the bench, minutes each time; this set leaves
/// the artifacts of `cargo run --release -p meshlite-bench` as they are.
const BUILT_TOGETHER: [&str; 3] = ["meshlite-bench", "meshlite-proxy", "meshlite-control"];

/// The outcome of this process's one workspace build (see [`BUILT_TOGETHER`]).
static WORKSPACE_BUILD: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();

/// Builds [`BUILT_TOGETHER`] once per process (cargo decides whether anything changed; a no-op
/// takes a fraction of a second).
fn build_workspace(workspace: &Path) -> Result<(), BinaryError> {
    WORKSPACE_BUILD
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let packages: Vec<String> = BUILT_TOGETHER.iter().map(|p| format!("-p {p}")).collect();
            let packages = packages.join(" ");
            eprintln!("meshlite-bench: cargo build --release {packages} (no-op when up to date)");
            let mut command = Command::new(&cargo);
            command.args(["build", "--release", "--quiet"]);
            // Under `cargo run`, this process carries the package's variables (CARGO_PKG_NAME,
            // CARGO_MANIFEST_DIR...); build scripts that watch them (ring's) would see them
            // change and rebuild, and the next `cargo run` would rebuild again.
            for (key, _) in std::env::vars_os() {
                if key.to_str().is_some_and(is_package_variable) {
                    command.env_remove(&key);
                }
            }
            for package in BUILT_TOGETHER {
                command.args(["-p", package]);
            }
            let status = command
                .current_dir(workspace)
                .status()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!(
                    "`cargo build --release {packages}` failed ({status})"
                ))
            }
        })
        .clone()
        .map_err(BinaryError)
}

/// This executable's path, read once, before any build can replace the file: cargo's build of
/// [`BUILT_TOGETHER`] may put another variant of `meshlite-bench` at the same path (it runs the
/// same code), after which Linux reports the running one as `PATH (deleted)`.
pub fn own_executable() -> Result<PathBuf, std::io::Error> {
    static OWN: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| {
        std::env::current_exe()
            .map(|p| strip_deleted(&p))
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(std::io::Error::other)
}

/// `PATH (deleted)` -> `PATH`: the file at the path is the rebuilt binary.
fn strip_deleted(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    match text.strip_suffix(" (deleted)") {
        Some(live) => PathBuf::from(live),
        None => path.to_path_buf(),
    }
}

/// A variable `cargo run` sets for the package it runs (not one of the user's settings).
fn is_package_variable(name: &str) -> bool {
    ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CFG_"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        || [
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "OUT_DIR",
        ]
        .contains(&name)
}

/// Finds the release binary `binary` of workspace package `package`: `$env_var` if set; else,
/// inside the workspace, builds the workspace's binaries ([`BUILT_TOGETHER`], `package` among
/// them, once per process) and takes `target/release/BINARY`; else the release binary beside
/// this executable. A debug bench still runs release binaries: debug figures would mean nothing.
pub fn locate_or_build(package: &str, binary: &str, env_var: &str) -> Result<Binary, BinaryError> {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(BinaryError(format!(
                "{env_var}={} is not a file",
                path.display()
            )));
        }
        return Ok(Binary {
            path,
            origin: format!("${env_var}"),
        });
    }
    let own = own_executable()
        .map_err(|e| BinaryError(format!("cannot find our own executable: {e}")))?;
    let own_dir = own.parent().map(Path::to_path_buf).unwrap_or_default();
    let release_dir = if own_dir.file_name().is_some_and(|n| n == "release") {
        own_dir.clone()
    } else {
        own_dir
            .parent()
            .map(|p| p.join("release"))
            .unwrap_or_else(|| own_dir.clone())
    };
    let candidate = release_dir.join(binary);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if !workspace.join("Cargo.toml").is_file() {
        return if candidate.is_file() {
            Ok(Binary {
                path: candidate,
                origin: "found next to meshlite-bench".into(),
            })
        } else {
            Err(BinaryError(format!(
                "{} is missing and the workspace {} is not here to build it; set {env_var}",
                candidate.display(),
                workspace.display()
            )))
        };
    }
    if !BUILT_TOGETHER.contains(&package) {
        return Err(BinaryError(format!(
            "{package} is not one of the packages the benchmark builds ({}); set {env_var}",
            BUILT_TOGETHER.join(", ")
        )));
    }
    build_workspace(&workspace)?;
    if !candidate.is_file() {
        return Err(BinaryError(format!(
            "cargo built {package} but {} does not exist (CARGO_TARGET_DIR elsewhere? set {env_var})",
            candidate.display()
        )));
    }
    Ok(Binary {
        path: candidate,
        origin: "target/release, built by cargo".into(),
    })
}

/// Finds `name` on PATH (and in the sbin directories, where Debian puts daemons).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin", "/usr/local/sbin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nested_build_drops_the_package_variables_of_cargo_run_only() {
        for name in [
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
            "CARGO_CRATE_NAME",
            "OUT_DIR",
        ] {
            assert!(is_package_variable(name), "{name}");
        }
        for name in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "PATH",
            "RUSTFLAGS",
        ] {
            assert!(!is_package_variable(name), "{name}");
        }
    }

    #[test]
    fn the_announcement_is_the_line_carrying_the_marker() {
        assert!(announces(None, "anything"));
        let line = r#"{"msg":"meshlite-proxy listening","outbound":"127.0.0.1:1"}"#;
        assert!(announces(Some("meshlite-proxy listening"), line));
        assert!(!announces(
            Some("meshlite-proxy listening"),
            r#"{"msg":"other"}"#
        ));
        assert!(!announces(Some("meshlite-proxy listening"), "not json"));
    }

    #[test]
    fn a_replaced_executable_is_found_at_its_path() {
        assert_eq!(
            strip_deleted(Path::new("/t/release/meshlite-bench (deleted)")),
            PathBuf::from("/t/release/meshlite-bench")
        );
        assert_eq!(
            strip_deleted(Path::new("/t/release/meshlite-bench")),
            PathBuf::from("/t/release/meshlite-bench")
        );
        assert!(own_executable().is_ok_and(|p| p.is_file()));
    }
}
