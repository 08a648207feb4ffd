//! Real `meshlite-proxy` processes: configuration, start-up, observation and shutdown.
//!
//! A [`SidecarSpec`] is rendered to the proxy's YAML file (every listener on port 0, certificate
//! paths relative to the file, as an operator would write them); [`Sidecar::start`] runs the
//! binary through the harness the benchmark uses too (`meshlite_bench::harness`), which waits for
//! the one JSON line it prints once every listener is bound; from then on it gives tests the
//! bound addresses, the JSON access log, the metrics, the logs, the peak RSS and a way to send
//! SIGTERM. A [`Mesh`] is the usual picture: a client workload's sidecar calling a server
//! workload's sidecar, which fronts the [`crate::apps`].
//!
//! The binary is `$MESHLITE_PROXY_BIN` if set, else `target/debug/meshlite-proxy` of this
//! workspace, built once (guarded by a `OnceLock`) when it is missing.

use crate::apps::{HttpApp, TcpEchoApp};
use crate::deadline::{SOON, eventually};
use crate::grpc::GrpcEchoApp;
use crate::pki::{Pki, spiffe_id};
use crate::prometheus::{Sample, samples};
use meshlite_bench::harness::{
    HarnessError, Mode, SidecarConfig, SidecarLaunch, SidecarProcess, StaticService,
};
use meshlite_proxy::identity::dev_pki::IssuedCert;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// How long a proxy may take to print its listening line (debug build on a shared machine).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Service account (and workload name) of the calling workload.
pub const CLIENT_SA: &str = "client";

/// Service account (and workload name) of the called workload.
pub const SERVER_SA: &str = "server";

/// `app:80` (HTTP/1.1) on the server workload, served by [`TestApps::alpha`].
pub const APP: &str = "app";
/// `other:8081` (HTTP/1.1) on the server workload, served by [`TestApps::beta`].
pub const OTHER: &str = "other";
/// Port of [`OTHER`].
pub const OTHER_PORT: u16 = 8081;
/// `h2app:8082` (HTTP/2 to the app) on the server workload, served by [`TestApps::alpha`].
pub const H2APP: &str = "h2app";
/// Port of [`H2APP`].
pub const H2APP_PORT: u16 = 8082;
/// `echo:50051` (gRPC) on the server workload, served by [`TestApps::grpc`].
pub const ECHO: &str = "echo";
/// Port of [`ECHO`].
pub const ECHO_PORT: u16 = 50051;
/// `db:5432` (opaque TCP, explicit listener on the client side), served by [`TestApps::tcp`].
pub const DB: &str = "db";
/// Port of [`DB`].
pub const DB_PORT: u16 = 5432;

/// Application protocol of a port or service, and a port the workload serves: the harness's
/// config types.
pub use meshlite_bench::harness::{AppProtocol, InboundPort};

/// A service the workload may call: the harness's static service.
pub type Service = StaticService;

/// A service in namespace `default` whose destination is the `server` identity; TCP services
/// get an explicit outbound listener on `127.0.0.1:0`.
pub fn service(name: &str, port: u16, protocol: AppProtocol, endpoint: SocketAddr) -> Service {
    StaticService {
        name: name.to_string(),
        namespace: "default".to_string(),
        port,
        protocol,
        identities: vec![spiffe_id(SERVER_SA)],
        endpoints: vec![endpoint],
        listen: (protocol == AppProtocol::Tcp).then_some(SocketAddr::from(([127, 0, 0, 1], 0))),
    }
}

/// The `limits` section; `None` leaves the proxy's default.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// `max_header_bytes`.
    pub max_header_bytes: Option<usize>,
    /// `header_read_timeout`, e.g. `"1s"`.
    pub header_read_timeout: Option<String>,
    /// `idle_timeout`.
    pub idle_timeout: Option<String>,
    /// `drain_timeout`.
    pub drain_timeout: Option<String>,
}

/// Everything one sidecar's configuration file says.
#[derive(Clone, Debug)]
pub struct SidecarSpec {
    /// Workload name; also the name of the identity files.
    pub workload: String,
    /// The workload's SPIFFE ID.
    pub spiffe_id: String,
    /// Its certificate and key.
    pub cert: IssuedCert,
    /// The trust bundle it is given.
    pub roots_pem: String,
    /// Ports it serves.
    pub inbound: Vec<InboundPort>,
    /// Services it may call.
    pub services: Vec<Service>,
    /// `upstream.protocol` (`h2` or `http1`); `None` for the default.
    pub upstream_protocol: Option<String>,
    /// `limits`.
    pub limits: Limits,
    /// `--workers`.
    pub workers: Option<usize>,
    /// Top-level sections appended to the file as given (e.g. `tracing`).
    pub extra_yaml: String,
    /// Command-line arguments added to the launch (e.g. `--app-probers JSON`).
    pub extra_args: Vec<String>,
}

impl SidecarSpec {
    /// A sidecar for service account `sa` (workload of the same name) with a fresh certificate.
    pub fn new(pki: &Pki, sa: &str) -> Self {
        let id = spiffe_id(sa);
        Self {
            workload: sa.to_string(),
            cert: pki.issue(&id),
            spiffe_id: id,
            roots_pem: pki.root_pem(),
            inbound: Vec::new(),
            services: Vec::new(),
            upstream_protocol: None,
            limits: Limits::default(),
            workers: Some(1),
            extra_yaml: String::new(),
            extra_args: Vec::new(),
        }
    }

    /// The service called `name`.
    ///
    /// # Panics
    /// If there is none.
    pub fn service_mut(&mut self, name: &str) -> &mut Service {
        self.services
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name} in spec"))
    }

    /// The configuration file's text (YAML), with certificate paths relative to the file.
    pub fn to_yaml(&self) -> String {
        let mut c = SidecarConfig::new(
            &self.spiffe_id,
            &self.workload,
            Mode::Static {
                cert: format!("{}.crt", self.workload).into(),
                key: format!("{}.key", self.workload).into(),
                roots: "root.crt".into(),
            },
        );
        c.inbound = self.inbound.clone();
        c.services = self.services.clone();
        c.upstream_protocol = self.upstream_protocol.clone();
        // The tests read cluster and HTTP filter statistics, which Istio's default set
        // leaves out.
        c.stats_prefixes = vec!["cluster.".to_string(), "http.".to_string()];
        let l = &self.limits;
        c.limits = [
            (
                "max_header_bytes",
                l.max_header_bytes.map(|v| v.to_string()),
            ),
            ("header_read_timeout", l.header_read_timeout.clone()),
            ("idle_timeout", l.idle_timeout.clone()),
            ("drain_timeout", l.drain_timeout.clone()),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_string(), value?)))
        .collect();
        c.extra = self.extra_yaml.clone();
        c.to_yaml()
    }

    /// Writes the configuration file, the identity files and the root into `dir`; returns the
    /// configuration file's path.
    ///
    /// # Panics
    /// On I/O errors.
    pub fn write(&self, dir: &Path) -> PathBuf {
        self.cert
            .write(dir, &self.workload)
            .expect("write identity");
        std::fs::write(dir.join("root.crt"), &self.roots_pem).expect("write root");
        let config = dir.join("proxy.yaml");
        std::fs::write(&config, self.to_yaml()).expect("write config");
        config
    }
}

/// The proxy binary under test.
///
/// # Panics
/// If `MESHLITE_PROXY_BIN` names a missing file, or building the binary fails.
pub fn proxy_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ lives in the workspace");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"));
        workspace_binary(
            "MESHLITE_PROXY_BIN",
            target.join("debug").join("meshlite-proxy"),
        )
    })
}

/// A binary of the workspace: the file `env_var` names, else `default` (a debug build in the
/// target directory), built with `cargo build -p <its name>` if it is missing.
///
/// # Panics
/// If `env_var` names a missing file, or building the binary fails.
pub fn workspace_binary(env_var: &str, default: PathBuf) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{env_var}={} does not exist",
            path.display()
        );
        return path;
    }
    if !default.is_file() {
        let package = default
            .file_name()
            .and_then(|n| n.to_str())
            .expect("binary file name");
        cargo_build(package, env_var);
    }
    assert!(
        default.is_file(),
        "{} is missing after building it",
        default.display()
    );
    default
}

/// Runs `cargo build -p <package>` once, bounded by a deadline.
fn cargo_build(package: &str, env_var: &str) {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("meshlite-tests: building {package} (set {env_var} to skip)");
    let mut child = std::process::Command::new(cargo)
        .args(["build", "-p", package])
        .current_dir(workspace)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("run cargo build -p {package}: {e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    loop {
        if let Some(status) = child.try_wait().expect("wait for cargo") {
            assert!(
                status.success(),
                "cargo build -p {package} failed: {status}"
            );
            return;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("cargo build -p {package} did not finish within 15 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `binary` with `args` to completion (e.g. `validate --config FILE`).
///
/// # Panics
/// If it cannot be started or runs longer than [`STARTUP_TIMEOUT`].
pub async fn run_cli<S: AsRef<std::ffi::OsStr>>(binary: &Path, args: &[S]) -> std::process::Output {
    let name = binary.display();
    let child = tokio::process::Command::new(binary)
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    crate::deadline::within(
        &format!("{name} to exit"),
        STARTUP_TIMEOUT,
        child.wait_with_output(),
    )
    .await
    .unwrap_or_else(|e| panic!("collect the output of {name}: {e}"))
}

/// Runs the proxy binary with `args` to completion (e.g. `validate --config FILE`).
///
/// # Panics
/// If it cannot be started or runs longer than [`STARTUP_TIMEOUT`].
pub async fn run_proxy_cli(args: &[&std::ffi::OsStr]) -> std::process::Output {
    run_cli(proxy_binary(), args).await
}

/// The addresses a started proxy reported (the harness reads them from its listening line).
pub use meshlite_bench::harness::Listening;

/// Starts `launch` on tokio's blocking pool (the harness waits synchronously) and waits for it.
///
/// # Errors
/// When the process fails to start or print its listening line in time; the error quotes the
/// end of its log.
///
/// # Panics
/// If the blocking task itself panics.
pub async fn start_process(launch: SidecarLaunch) -> Result<SidecarProcess, HarnessError> {
    tokio::task::spawn_blocking(move || launch.start())
        .await
        .expect("the start task")
}

/// The `--log-level` a test run asks of every process (`MESHLITE_E2E_LOG_LEVEL`).
pub fn log_level() -> Option<String> {
    std::env::var("MESHLITE_E2E_LOG_LEVEL").ok()
}

/// A running `meshlite-proxy` process. Killed when dropped; if the test is failing, its logs
/// are printed first.
pub struct Sidecar {
    /// The workload it runs beside.
    pub name: String,
    /// Bound addresses from the startup line.
    pub addrs: Listening,
    process: SidecarProcess,
    pid: u32,
    // After `process`: the directory goes once the process is killed.
    dir: tempfile::TempDir,
    exit: Option<ExitStatus>,
}

impl Sidecar {
    /// Writes `spec` to a fresh directory and starts a proxy with it, waiting for its listening
    /// line.
    ///
    /// # Panics
    /// If the process fails to start, exits, or prints no listening line in time; the message
    /// includes its log.
    pub async fn start(spec: &SidecarSpec) -> Sidecar {
        let dir = tempfile::Builder::new()
            .prefix(&format!("meshlite-e2e-{}-", spec.workload))
            .tempdir()
            .expect("temp dir");
        let config = spec.write(dir.path());
        let launch = SidecarLaunch::new(
            proxy_binary(),
            &format!("sidecar-{}", spec.workload),
            dir.path(),
            &config,
        )
        .access_log(&dir.path().join("access.log"))
        .workers(
            spec.workers
                .map(|w| u32::try_from(w).expect("workers fit u32")),
        )
        .log_level(log_level())
        .extra_args(spec.extra_args.iter())
        .startup_timeout(STARTUP_TIMEOUT);
        let process = start_process(launch).await.unwrap_or_else(|e| {
            panic!(
                "{}: meshlite-proxy did not start: {e}\nconfig:\n{}",
                spec.workload,
                spec.to_yaml()
            )
        });
        Sidecar {
            name: spec.workload.clone(),
            addrs: process.listening().clone(),
            pid: process.pid(),
            process,
            dir,
            exit: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The directory holding its config, identity, access log and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The address of the explicit TCP listener for `service:port`.
    ///
    /// # Panics
    /// If the startup line did not report it.
    pub fn tcp_listener(&self, service: &str, port: u16) -> SocketAddr {
        let key = format!("{service}:{port}");
        *self.addrs.tcp.get(&key).unwrap_or_else(|| {
            panic!(
                "startup line has no tcp listener \"{key}\": {:?}",
                self.addrs.tcp
            )
        })
    }

    /// Everything it wrote to stderr and stdout so far.
    pub fn logs(&self) -> String {
        self.process.log_text()
    }

    /// The access log entries written so far (lines that are not JSON are skipped).
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        json_lines(&self.dir.path().join("access.log"))
    }

    /// Waits for an access log entry matching `matches`.
    ///
    /// # Panics
    /// If none appears within [`SOON`]; the message shows the log.
    pub async fn access_log_entry(
        &self,
        what: &str,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let found = tokio::time::timeout(SOON, async {
            loop {
                if let Some(entry) = self.access_log().into_iter().find(|e| matches(e)) {
                    return entry;
                }
                tokio::time::sleep(crate::deadline::POLL_INTERVAL).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            let raw =
                std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
            panic!(
                "{}: no access log entry for {what} within {SOON:?}; access log:\n{raw}",
                self.name
            )
        })
    }

    /// The current Prometheus text from `/stats/prometheus`.
    pub async fn metrics_text(&self) -> String {
        let reply = crate::clients::get(self.addrs.metrics, "127.0.0.1", "/stats/prometheus").await;
        assert_eq!(
            reply.status, 200,
            "{}: /stats/prometheus answered {}",
            self.name, reply.status
        );
        reply.text()
    }

    /// Waits until some sample of metric `name` satisfies `matches` and returns it.
    ///
    /// # Panics
    /// If none does within [`SOON`]; the message shows the metric's samples.
    pub async fn metric_sample(
        &self,
        name: &str,
        what: &str,
        matches: impl Fn(&Sample) -> bool,
    ) -> Sample {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let text = self.metrics_text().await;
            let all = samples(&text, name);
            if let Some(sample) = all.iter().find(|s| matches(s)) {
                return sample.clone();
            }
            if tokio::time::Instant::now() >= deadline {
                let shown: Vec<String> = text
                    .lines()
                    .filter(|l| l.contains(name.trim_end_matches("_total")))
                    .map(str::to_string)
                    .collect();
                panic!(
                    "{}: no {name} sample for {what} within {SOON:?}; got:\n{}",
                    self.name,
                    shown.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The status of `/healthz/ready`, or `None` if the health listener does not answer.
    pub async fn readiness(&self) -> Option<u16> {
        crate::clients::try_get(self.addrs.health, "127.0.0.1", "/healthz/ready")
            .await
            .map(|r| r.status.as_u16())
    }

    /// Peak resident set size so far (`VmHWM`), in bytes.
    ///
    /// # Panics
    /// If `/proc/<pid>/status` cannot be read (the process is gone).
    pub fn peak_rss_bytes(&self) -> u64 {
        meshlite_bench::procfs::peak_rss_kb(self.pid)
            .map(|kb| kb * 1024)
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// Sends SIGTERM.
    ///
    /// # Panics
    /// If the signal cannot be sent.
    pub fn sigterm(&self) {
        self.process.terminate().expect("send SIGTERM");
    }

    /// Waits for the process to exit and returns its status.
    ///
    /// # Panics
    /// If it is still running after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let what = format!("{} to exit", self.name);
        let process = &mut self.process;
        let status = crate::deadline::within(&what, within, async {
            loop {
                if let Some(status) = process.try_exit().expect("wait") {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        self.exit = Some(status);
        status
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.process.try_exit(), Ok(None))
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let tail = |text: String, n: usize| {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(n)..].join("\n")
            };
            let access =
                std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
            eprintln!(
                "---- sidecar {} (pid {}) logs, last 80 lines ----\n{}\n---- sidecar {} access log, last 20 lines ----\n{}",
                self.name,
                self.pid,
                tail(self.logs(), 80),
                self.name,
                tail(access, 20)
            );
            if std::env::var_os("MESHLITE_E2E_KEEP").is_some() {
                let kept =
                    std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir")).keep();
                eprintln!("kept {}", kept.display());
            }
        }
    }
}

/// The applications the server workload runs.
pub struct TestApps {
    /// Serves `app:80` (HTTP/1.1) and `h2app:8082` (HTTP/2).
    pub alpha: HttpApp,
    /// Serves `other:8081`.
    pub beta: HttpApp,
    /// Serves `echo:50051` (gRPC).
    pub grpc: GrpcEchoApp,
    /// Serves `db:5432` (TCP).
    pub tcp: TcpEchoApp,
}

impl TestApps {
    /// Starts all of them.
    pub async fn start() -> Self {
        Self {
            alpha: HttpApp::start("alpha").await,
            beta: HttpApp::start("beta").await,
            grpc: GrpcEchoApp::start().await,
            tcp: TcpEchoApp::start().await,
        }
    }
}

type Tweak = Box<dyn FnOnce(&mut SidecarSpec, &Pki) + Send>;

/// Builds a [`Mesh`], letting a test change either sidecar's spec before it starts.
#[derive(Default)]
pub struct MeshBuilder {
    server: Vec<Tweak>,
    client: Vec<Tweak>,
}

impl MeshBuilder {
    /// Changes the server sidecar's spec (applied before it starts).
    pub fn server(mut self, tweak: impl FnOnce(&mut SidecarSpec, &Pki) + Send + 'static) -> Self {
        self.server.push(Box::new(tweak));
        self
    }

    /// Changes the client sidecar's spec (applied after its services point at the server).
    pub fn client(mut self, tweak: impl FnOnce(&mut SidecarSpec, &Pki) + Send + 'static) -> Self {
        self.client.push(Box::new(tweak));
        self
    }

    /// Starts the apps, then the server sidecar, then the client sidecar.
    pub async fn start(self) -> Mesh {
        let pki = Pki::new();
        let apps = TestApps::start().await;
        let mut server = SidecarSpec::new(&pki, SERVER_SA);
        server.inbound = vec![
            InboundPort {
                port: 80,
                target: apps.alpha.addr,
                protocol: AppProtocol::Http,
            },
            InboundPort {
                port: OTHER_PORT,
                target: apps.beta.addr,
                protocol: AppProtocol::Http,
            },
            InboundPort {
                port: H2APP_PORT,
                target: apps.alpha.addr,
                protocol: AppProtocol::Http2,
            },
            InboundPort {
                port: ECHO_PORT,
                target: apps.grpc.addr,
                protocol: AppProtocol::Grpc,
            },
            InboundPort {
                port: DB_PORT,
                target: apps.tcp.addr,
                protocol: AppProtocol::Tcp,
            },
        ];
        for tweak in self.server {
            tweak(&mut server, &pki);
        }
        let server = Sidecar::start(&server).await;
        let inbound = server.addrs.inbound;
        let mut client = SidecarSpec::new(&pki, CLIENT_SA);
        client.services = vec![
            service(APP, 80, AppProtocol::Http, inbound),
            service(OTHER, OTHER_PORT, AppProtocol::Http, inbound),
            service(H2APP, H2APP_PORT, AppProtocol::Http2, inbound),
            service(ECHO, ECHO_PORT, AppProtocol::Grpc, inbound),
            service(DB, DB_PORT, AppProtocol::Tcp, inbound),
        ];
        for tweak in self.client {
            tweak(&mut client, &pki);
        }
        let client = Sidecar::start(&client).await;
        Mesh {
            pki,
            apps,
            client,
            server,
        }
    }
}

/// Two workloads: `client` calls the services of `server` through their sidecars.
pub struct Mesh {
    /// The mesh's CA.
    pub pki: Pki,
    /// The server workload's applications.
    pub apps: TestApps,
    /// The calling workload's sidecar: tests send to its outbound address.
    pub client: Sidecar,
    /// The called workload's sidecar.
    pub server: Sidecar,
}

impl Mesh {
    /// A mesh with nothing changed.
    pub async fn start() -> Mesh {
        MeshBuilder::default().start().await
    }

    /// A builder to change the specs first.
    pub fn builder() -> MeshBuilder {
        MeshBuilder::default()
    }

    /// The client sidecar's outbound address: where the calling app sends.
    pub fn outbound(&self) -> SocketAddr {
        self.client.addrs.outbound
    }

    /// Waits until `app` has served `count` requests (used before asserting on what it saw).
    pub async fn wait_requests(app: &HttpApp, count: u64) {
        eventually("the app to receive the request", SOON, || async move {
            (app.requests() >= count).then_some(())
        })
        .await;
    }
}

/// The JSON lines of the file at `path` so far (none when it does not exist yet; lines that
/// are not JSON are skipped): a sidecar's access log.
pub fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
