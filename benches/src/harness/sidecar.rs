//! One `meshlite-proxy` process, in static mode or control-plane mode (the config file decides):
//! how it is launched, how its readiness is awaited, what it tells about itself, and how it ends.
//!
//! The proxy prints one JSON line, `msg` = [`LISTENING_MSG`], once every listener is bound (in
//! control-plane mode, once the CA signed its certificate); the launcher waits for it and reads
//! the bound addresses, so every listener may be configured on port 0. Start-up can be split
//! ([`SidecarLaunch::spawn`], then [`StartingSidecar::ready`]) so that many sidecars get their
//! certificates at once.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use super::{HarnessError, announced_addr, parse_line};
use crate::process::{ChildSpec, ManagedChild};

/// The `msg` of the proxy's listening line.
pub const LISTENING_MSG: &str = "meshlite-proxy listening";

/// How long a proxy may take to print its listening line, unless the launch says otherwise.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long `/healthz/ready` may take to answer 200 after the listening line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The addresses a started proxy reported in its listening line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listening {
    /// Outbound (apps send here).
    pub outbound: SocketAddr,
    /// Inbound (mutual TLS from other sidecars).
    pub inbound: SocketAddr,
    /// Admin.
    pub admin: SocketAddr,
    /// Prometheus metrics.
    pub metrics: SocketAddr,
    /// Health.
    pub health: SocketAddr,
    /// Explicit TCP listeners, keyed `name:port`.
    pub tcp: BTreeMap<String, SocketAddr>,
    /// The DNS proxy (UDP and TCP), when it runs.
    pub dns: Option<SocketAddr>,
}

impl Listening {
    /// The addresses of a parsed listening line.
    ///
    /// # Errors
    /// When a listener's address is missing or does not parse.
    pub fn parse(line: &serde_json::Value) -> Result<Self, String> {
        Self::from_value("meshlite-proxy", &line.to_string(), line).map_err(|e| match e {
            HarnessError::Announce { problem, .. } => problem,
            other => other.to_string(),
        })
    }

    /// The addresses of the listening line `line` that process `name` printed.
    pub fn from_line(name: &str, line: &str) -> Result<Self, HarnessError> {
        Self::from_value(name, line, &parse_line(name, line)?)
    }

    fn from_value(name: &str, line: &str, value: &serde_json::Value) -> Result<Self, HarnessError> {
        let addr = |key: &str| announced_addr(name, line, value, key);
        let mut tcp = BTreeMap::new();
        if let Some(map) = value.get("tcp").and_then(serde_json::Value::as_object) {
            for (key, v) in map {
                let a = v.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
                    HarnessError::Announce {
                        name: name.to_string(),
                        problem: format!("bad tcp.{key}"),
                        line: line.to_string(),
                    }
                })?;
                tcp.insert(key.clone(), a);
            }
        }
        Ok(Self {
            outbound: addr("outbound")?,
            inbound: addr("inbound")?,
            admin: addr("admin")?,
            metrics: addr("metrics")?,
            health: addr("health")?,
            tcp,
            dns: match value.get("dns") {
                None | Some(serde_json::Value::Null) => None,
                Some(_) => Some(addr("dns")?),
            },
        })
    }
}

/// `path` made absolute against our working directory (the proxy runs in `/`).
pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A loopback address to connect to for a listener that may be bound to 0.0.0.0.
pub fn connectable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// How to run one `meshlite-proxy`: the binary, the config file the caller wrote, the run
/// directory its log goes to, and the command-line options the scenarios and tests use.
#[derive(Clone, Debug)]
pub struct SidecarLaunch {
    binary: PathBuf,
    name: String,
    dir: PathBuf,
    config: PathBuf,
    workers: Option<u32>,
    pin_cpu: Option<usize>,
    access_log: Option<PathBuf>,
    audit_log: Option<PathBuf>,
    audit_all: bool,
    log_level: Option<String>,
    startup_timeout: Duration,
    wait_ready: bool,
    dns: Vec<OsString>,
    extra: Vec<OsString>,
}

impl SidecarLaunch {
    /// A launch of `binary --config CONFIG` named `name` (messages, `DIR/<name>.log`), with the
    /// proxy's defaults otherwise, waiting for the listening line only.
    pub fn new(binary: &Path, name: &str, dir: &Path, config: &Path) -> Self {
        Self {
            binary: absolute(binary),
            name: name.to_string(),
            dir: absolute(dir),
            config: absolute(config),
            workers: None,
            pin_cpu: None,
            access_log: None,
            audit_log: None,
            audit_all: false,
            log_level: None,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            wait_ready: false,
            dns: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// Appends arguments the launch has no method for (e.g. `--app-probers JSON`).
    pub fn extra_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.extra.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs the DNS proxy on `addr` (e.g. `127.0.0.1:0`), forwarding other names to
    /// `upstreams` (none: the host's resolv.conf). Without this the launch passes
    /// `--dns-addr off`: many sidecars share the host, so none takes port 15053.
    pub fn dns(mut self, addr: SocketAddr, upstreams: &[SocketAddr]) -> Self {
        self.dns = vec!["--dns-addr".into(), addr.to_string().into()];
        for u in upstreams {
            self.dns.push("--dns-upstream".into());
            self.dns.push(u.to_string().into());
        }
        self
    }

    /// `--workers N`; `None` for the proxy's default.
    pub fn workers(mut self, workers: Option<u32>) -> Self {
        self.workers = workers;
        self
    }

    /// Pins the process to `cpu` with `taskset`.
    pub fn pin_cpu(mut self, cpu: Option<usize>) -> Self {
        self.pin_cpu = cpu;
        self
    }

    /// `--access-log PATH`.
    pub fn access_log(mut self, path: &Path) -> Self {
        self.access_log = Some(path.to_path_buf());
        self
    }

    /// `--audit-log PATH`, and `--audit-log-all` when `all`.
    pub fn audit_log(mut self, path: &Path, all: bool) -> Self {
        self.audit_log = Some(path.to_path_buf());
        self.audit_all = all;
        self
    }

    /// `--log-level LEVEL`; `None` for the proxy's default.
    pub fn log_level(mut self, level: Option<String>) -> Self {
        self.log_level = level;
        self
    }

    /// How long the listening line may take.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Also wait for `/healthz/ready` to answer 200 (a benchmark measures a ready proxy; a test
    /// of readiness itself must not wait).
    pub fn wait_ready(mut self, wait: bool) -> Self {
        self.wait_ready = wait;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log file its stderr and stdout go to (appended to across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    /// The command-line arguments.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--config".into(), self.config.clone().into()];
        if let Some(path) = &self.access_log {
            args.push("--access-log".into());
            args.push(path.clone().into());
        }
        if let Some(path) = &self.audit_log {
            args.push("--audit-log".into());
            args.push(path.clone().into());
        }
        if self.audit_all {
            args.push("--audit-log-all".into());
        }
        if let Some(workers) = self.workers {
            args.push("--workers".into());
            args.push(workers.to_string().into());
        }
        if let Some(level) = &self.log_level {
            args.push("--log-level".into());
            args.push(level.into());
        }
        if self.dns.is_empty() {
            args.push("--dns-addr".into());
            args.push("off".into());
        } else {
            args.extend(self.dns.iter().cloned());
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Starts the process without waiting for it.
    pub fn spawn(&self) -> Result<StartingSidecar, HarnessError> {
        let child = ManagedChild::spawn(ChildSpec {
            name: self.name.clone(),
            program: self.binary.clone(),
            args: self.args(),
            pin_cpu: self.pin_cpu,
            log_dir: self.dir.clone(),
            stdin_pipe: false,
            announce: Some(LISTENING_MSG.to_string()),
            current_dir: Some(PathBuf::from("/")),
        })?;
        Ok(StartingSidecar {
            launch: self.clone(),
            child,
        })
    }

    /// Starts the process and waits until it is listening (and ready, if asked).
    pub fn start(&self) -> Result<SidecarProcess, HarnessError> {
        self.spawn()?.ready()
    }
}

/// A proxy process started but not yet known to be listening.
pub struct StartingSidecar {
    launch: SidecarLaunch,
    child: ManagedChild,
}

impl StartingSidecar {
    /// Waits for its listening line (and `/healthz/ready`, if the launch asks).
    pub fn ready(mut self) -> Result<SidecarProcess, HarnessError> {
        let line = self.child.first_line(self.launch.startup_timeout)?;
        let listening = Listening::from_line(&self.launch.name, &line)?;
        if self.launch.wait_ready {
            wait_ready(&mut self.child, connectable(listening.health))?;
        }
        Ok(SidecarProcess {
            launch: self.launch,
            child: self.child,
            listening,
        })
    }
}

/// A listening `meshlite-proxy`; killed when dropped.
pub struct SidecarProcess {
    launch: SidecarLaunch,
    child: ManagedChild,
    listening: Listening,
}

impl SidecarProcess {
    /// The addresses from its listening line.
    pub fn listening(&self) -> &Listening {
        &self.listening
    }

    /// Where its app sends outbound requests.
    pub fn outbound(&self) -> SocketAddr {
        connectable(self.listening.outbound)
    }

    /// Its `/stats/prometheus` listener.
    pub fn metrics(&self) -> SocketAddr {
        connectable(self.listening.metrics)
    }

    /// How it was launched.
    pub fn launch(&self) -> &SidecarLaunch {
        &self.launch
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.launch.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        self.child.log_path()
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        self.child.log_text()
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        self.child.log_tail()
    }

    /// The exit status if it has exited.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>, HarnessError> {
        Ok(self.child.try_exit()?)
    }

    /// Sends SIGTERM (the proxy drains) without waiting.
    pub fn terminate(&self) -> Result<(), HarnessError> {
        Ok(self.child.terminate()?)
    }

    /// SIGTERM, a bounded wait, then SIGKILL; a note when it did not exit 0 in time.
    pub fn stop(self) -> Option<String> {
        stop_note(self.child)
    }

    /// SIGKILLs it (a crash: no drain, no goodbye to the control plane).
    pub fn kill(self) {
        self.child.kill();
    }

    /// Kills it and starts the same launch again: same config, state and log; its listeners
    /// get new ports where they were configured as 0.
    pub fn restart(self) -> Result<SidecarProcess, HarnessError> {
        let launch = self.launch.clone();
        self.kill();
        launch.start()
    }

    /// The bare child, for callers that manage every implementation's processes alike.
    pub fn into_child(self) -> ManagedChild {
        self.child
    }
}

/// Stops `child` with SIGTERM; a note when it did not exit 0 in time.
pub fn stop_note(child: ManagedChild) -> Option<String> {
    let name = child.name().to_string();
    let log = child.log_path().display().to_string();
    match child.stop() {
        Ok(Some(status)) if status.success() => None,
        Ok(Some(status)) => Some(format!(
            "{name} exited with {status} on SIGTERM (log {log})"
        )),
        Ok(None) => Some(format!(
            "{name} did not exit within 5 s of SIGTERM: killed (log {log})"
        )),
        Err(e) => Some(e.to_string()),
    }
}

/// One `GET /healthz/ready`; true on a 200.
fn ready_once(health: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&health, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let request = "GET /healthz/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// Waits until `/healthz/ready` answers 200, or the child exits, or [`READY_TIMEOUT`] passes.
fn wait_ready(child: &mut ManagedChild, health: SocketAddr) -> Result<(), HarnessError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if ready_once(health) {
            return Ok(());
        }
        if let Some(status) = child.try_exit()? {
            return Err(child.early_exit(Some(status)).into());
        }
        if Instant::now() >= deadline {
            return Err(child
                .not_ready(READY_TIMEOUT, "200 from /healthz/ready")
                .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_gives_every_address() {
        let line = r#"{"msg":"meshlite-proxy listening","outbound":"127.0.0.1:15001","inbound":"0.0.0.0:15006","admin":"127.0.0.1:1","metrics":"127.0.0.1:2","health":"0.0.0.0:3","tcp":{"db:5432":"127.0.0.1:4"}}"#;
        let l = Listening::from_line("x", line).ok();
        assert_eq!(
            l.as_ref().map(|l| connectable(l.inbound).to_string()),
            Some("127.0.0.1:15006".into())
        );
        assert_eq!(
            l.and_then(|l| l.tcp.get("db:5432").copied()),
            Some(SocketAddr::from(([127, 0, 0, 1], 4)))
        );
        assert!(Listening::from_line("x", "not json").is_err());
        assert!(Listening::from_line("x", r#"{"outbound":"127.0.0.1:1"}"#).is_err());
    }

    #[test]
    fn the_arguments_follow_the_launch() {
        let launch = SidecarLaunch::new(
            Path::new("/bin/p"),
            "s",
            Path::new("/d"),
            Path::new("/d/proxy.yaml"),
        )
        .workers(Some(1))
        .audit_log(Path::new("/d/audit.log"), true);
        let args: Vec<String> = launch
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--config",
                "/d/proxy.yaml",
                "--audit-log",
                "/d/audit.log",
                "--audit-log-all",
                "--workers",
                "1",
                // Without `.dns(..)`, no DNS proxy: launched sidecars never fight over 15053.
                "--dns-addr",
                "off"
            ]
        );
        assert_eq!(launch.log_path(), PathBuf::from("/d/s.log"));
    }
}
