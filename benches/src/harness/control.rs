//! One `meshlite-control serve` process on a config directory of Istio YAML and a CA state
//! directory, both the caller's, and the bootstrap tokens its CLI makes.
//!
//! The control plane prints one JSON line, `msg` = [`LISTENING_MSG`], with its bound xDS and
//! monitoring addresses; the launcher waits for it. A restart keeps the ports it was first
//! given, so proxies reconnect to the address they were configured with, as after a crash.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::sidecar::{absolute, connectable, stop_note};
use super::{HarnessError, announced_addr, parse_line};
use crate::process::{ChildSpec, ManagedChild};

/// The `msg` of the control plane's listening line.
pub const LISTENING_MSG: &str = "meshlite-control listening";

/// How long the control plane may take to print its listening line, unless the launch says
/// otherwise.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The process name (and log file `meshlite-control.log`).
const NAME: &str = "meshlite-control";

/// How to run `meshlite-control serve`.
#[derive(Clone, Debug)]
pub struct ControlPlaneLaunch {
    binary: PathBuf,
    log_dir: PathBuf,
    config_dir: PathBuf,
    state_dir: PathBuf,
    xds: SocketAddr,
    monitoring: SocketAddr,
    extra_args: Vec<OsString>,
    log_level: Option<String>,
    startup_timeout: Duration,
}

impl ControlPlaneLaunch {
    /// `binary serve` on `config_dir` with its CA state in `state_dir`, logging into `log_dir`,
    /// xDS and monitoring on loopback port 0.
    pub fn new(binary: &Path, log_dir: &Path, config_dir: &Path, state_dir: &Path) -> Self {
        Self {
            binary: absolute(binary),
            log_dir: absolute(log_dir),
            config_dir: absolute(config_dir),
            state_dir: absolute(state_dir),
            xds: SocketAddr::from(([127, 0, 0, 1], 0)),
            monitoring: SocketAddr::from(([127, 0, 0, 1], 0)),
            extra_args: Vec::new(),
            log_level: None,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        }
    }

    /// More `serve` flags (e.g. `--cert-ttl 10s`).
    pub fn args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// `--log-level LEVEL`; `None` for the default.
    pub fn log_level(mut self, level: Option<String>) -> Self {
        self.log_level = level;
        self
    }

    /// How long the listening line may take.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// The log file (appended to across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.log_dir.join(format!("{NAME}.log"))
    }

    /// The CA state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The watched config directory.
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// The binary (its CLI makes tokens).
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Starts it and waits for its listening line.
    pub fn start(&self) -> Result<ControlPlaneProcess, HarnessError> {
        let mut args: Vec<OsString> = vec![
            "serve".into(),
            "--config-dir".into(),
            self.config_dir.clone().into(),
            "--state-dir".into(),
            self.state_dir.clone().into(),
            "--xds-addr".into(),
            self.xds.to_string().into(),
            "--monitoring-addr".into(),
            self.monitoring.to_string().into(),
            // Not the default 15017: several control planes run side by side in the tests.
            "--webhook-addr".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(self.extra_args.iter().cloned());
        if let Some(level) = &self.log_level {
            args.push("--log-level".into());
            args.push(level.into());
        }
        let mut child = ManagedChild::spawn(ChildSpec {
            name: NAME.into(),
            program: self.binary.clone(),
            args,
            pin_cpu: None,
            log_dir: self.log_dir.clone(),
            stdin_pipe: false,
            announce: Some(LISTENING_MSG.to_string()),
            current_dir: Some(PathBuf::from("/")),
        })?;
        let line = child.first_line(self.startup_timeout)?;
        let value = parse_line(NAME, &line)?;
        let xds = connectable(announced_addr(NAME, &line, &value, "xds")?);
        let monitoring = connectable(announced_addr(NAME, &line, &value, "monitoring")?);
        Ok(ControlPlaneProcess {
            launch: self.clone(),
            child,
            xds,
            monitoring,
        })
    }
}

/// A listening control plane; killed when dropped.
pub struct ControlPlaneProcess {
    launch: ControlPlaneLaunch,
    child: ManagedChild,
    xds: SocketAddr,
    monitoring: SocketAddr,
}

impl ControlPlaneProcess {
    /// xDS + CA (TLS) address.
    pub fn xds(&self) -> SocketAddr {
        self.xds
    }

    /// Monitoring address (`/metrics`, `/debug/status`).
    pub fn monitoring(&self) -> SocketAddr {
        self.monitoring
    }

    /// `https://<xds address>`, the proxies' `control.address`.
    pub fn address(&self) -> String {
        format!("https://{}", self.xds)
    }

    /// The CA root every proxy is told to trust (`root-cert.pem` in the state directory).
    pub fn root_cert(&self) -> PathBuf {
        self.launch.state_dir.join("root-cert.pem")
    }

    /// How it was launched.
    pub fn launch(&self) -> &ControlPlaneLaunch {
        &self.launch
    }

    /// The same launch pinned to the ports it bound: what a restart runs.
    pub fn relaunch(&self) -> ControlPlaneLaunch {
        ControlPlaneLaunch {
            xds: self.xds,
            monitoring: self.monitoring,
            ..self.launch.clone()
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        self.child.log_text()
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        self.child.log_tail()
    }

    /// A bootstrap token from its CLI (see [`create_token`]).
    pub fn token(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Option<&str>,
        labels: &[&str],
    ) -> Result<String, HarnessError> {
        create_token(
            &self.launch.binary,
            &self.launch.state_dir,
            namespace,
            service_account,
            ttl,
            labels,
        )
    }

    /// SIGTERM, a bounded wait, then SIGKILL; a note when it did not exit 0 in time.
    pub fn stop(self) -> Option<String> {
        stop_note(self.child)
    }

    /// SIGKILLs it (a crash: no goodbye to the proxies).
    pub fn kill(self) {
        self.child.kill();
    }

    /// Kills it and starts it again on the same ports, config and state.
    pub fn restart(self) -> Result<ControlPlaneProcess, HarnessError> {
        let launch = self.relaunch();
        self.kill();
        launch.start()
    }
}

/// Runs `binary token create` on `state_dir` for `namespace`/`service_account`, with `--ttl`
/// if given and one `--label` per `key=value` of `labels`; returns the token.
pub fn create_token(
    binary: &Path,
    state_dir: &Path,
    namespace: &str,
    service_account: &str,
    ttl: Option<&str>,
    labels: &[&str],
) -> Result<String, HarnessError> {
    let failed = |message: String| HarnessError::Token {
        account: format!("{namespace}/{service_account}"),
        message,
    };
    let mut command = Command::new(binary);
    command
        .args(["token", "create", "--state-dir"])
        .arg(state_dir)
        .args([
            "--namespace",
            namespace,
            "--service-account",
            service_account,
        ]);
    if let Some(ttl) = ttl {
        command.args(["--ttl", ttl]);
    }
    for label in labels {
        command.args(["--label", label]);
    }
    let out = command
        .output()
        .map_err(|e| failed(format!("cannot run it: {e}")))?;
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || token.is_empty() {
        return Err(failed(format!(
            "{}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(token)
}

/// Replaces `dir/name` atomically: a hidden temporary (which the control plane's loader skips),
/// then a rename, so the watcher never reads half a file.
pub fn replace_config_file(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))
}
