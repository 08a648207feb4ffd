//! The container side of the tests: meshlite's images built by `docker/build.sh` and
//! `docker/compose.yaml` brought up as a Docker Compose project, on the machine's Docker
//! engine, with `docker` and `docker-compose` (the v1 CLI, Debian's package).
//!
//! Everything a test makes is its own and goes when it is dropped: the images carry a tag of
//! the test's process, and the project (named after it too) is taken down with its volumes and
//! network by [`ComposeProject`]'s `Drop`, also when the test fails (its logs are printed
//! then). Every command runs under a deadline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Bound on building the three images from binaries already built.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// Bound on `docker-compose up -d`: every job done and every sidecar ready.
pub const UP_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on any other docker or docker-compose command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// Runs `command` to completion within `timeout` (killed after it); its output.
///
/// # Panics
/// If it cannot be started or runs too long.
pub fn run(command: Command, timeout: Duration) -> Output {
    try_run(command, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`run`], saying what went wrong instead of panicking (for `Drop`).
pub fn try_run(mut command: Command, timeout: Duration) -> Result<Output, String> {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    // Read the pipes on threads, so a chatty command cannot block on a full pipe.
    let mut stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let mut stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for {shown}: {e}")),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{shown} did not finish within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Runs `command` within `timeout` and requires success; its standard output.
///
/// # Panics
/// If it fails or runs too long (its output is in the message).
pub fn run_ok(command: Command, timeout: Duration) -> String {
    let shown = format!("{command:?}");
    let output = run(command, timeout);
    assert!(
        output.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `docker` and `docker-compose`, found and able to reach the engine.
#[derive(Debug, Clone)]
pub struct DockerTools {
    /// The docker CLI.
    pub docker: PathBuf,
    /// docker-compose (v1).
    pub compose: PathBuf,
}

impl DockerTools {
    /// The tools, or `None` (the test then says it skipped) when either is missing or the
    /// engine does not answer, unless `MESHLITE_REQUIRE_PEERS` is set (CI), where that fails.
    ///
    /// # Panics
    /// Under `MESHLITE_REQUIRE_PEERS` when the tools or the engine are missing.
    pub fn find() -> Option<DockerTools> {
        let required = std::env::var_os("MESHLITE_REQUIRE_PEERS").is_some();
        let which = |name: &str| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        };
        let skip = |why: String| {
            assert!(!required, "MESHLITE_REQUIRE_PEERS is set and {why}");
            eprintln!("SKIPPED: {why}");
            None
        };
        let (Some(docker), Some(compose)) = (which("docker"), which("docker-compose")) else {
            return skip(
                "docker or docker-compose is not on PATH (Debian's docker.io and docker-compose packages)"
                    .into(),
            );
        };
        let mut info = Command::new(&docker);
        info.args(["info", "--format", "{{.ServerVersion}}"]);
        let output = run(info, COMMAND_TIMEOUT);
        if !output.status.success() {
            return skip(format!(
                "the Docker engine does not answer: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Some(DockerTools { docker, compose })
    }

    /// A `docker` command.
    pub fn docker(&self) -> Command {
        Command::new(&self.docker)
    }
}

/// The images `docker/build.sh` built under one tag; removed when dropped.
#[derive(Debug)]
pub struct Images {
    tools: DockerTools,
    /// The tag given to `meshlite/proxy`, `meshlite/control` and `meshlite/app`.
    pub tag: String,
    /// What build.sh printed (the images and their sizes).
    pub report: String,
}

/// The names of the images build.sh makes.
pub const IMAGES: [&str; 3] = ["meshlite/proxy", "meshlite/control", "meshlite/app"];

impl Images {
    /// Runs `docker/build.sh --bin-dir DIR --tag TAG` on `binaries` (meshlite-proxy,
    /// meshlite-control and meshlite-bench, wherever they are).
    ///
    /// # Panics
    /// If the build fails.
    pub fn build(tools: &DockerTools, tag: &str, binaries: &[&Path]) -> Images {
        let dir = tempfile::tempdir().expect("temporary directory");
        for binary in binaries {
            let name = binary.file_name().expect("a binary's file name");
            std::os::unix::fs::symlink(binary, dir.path().join(name)).expect("link the binary");
        }
        let mut build = Command::new(workspace().join("docker/build.sh"));
        build
            .arg("--bin-dir")
            .arg(dir.path())
            .args(["--tag", tag])
            .env("PATH", docker_path(tools));
        let report = run_ok(build, BUILD_TIMEOUT);
        Images {
            tools: tools.clone(),
            tag: tag.to_string(),
            report,
        }
    }

    /// `docker image inspect` of one image (`meshlite/proxy`): the JSON object.
    ///
    /// # Panics
    /// If the image does not exist.
    pub fn inspect(&self, image: &str) -> serde_json::Value {
        let mut cmd = self.tools.docker();
        cmd.args(["image", "inspect", &format!("{image}:{}", self.tag)]);
        let text = run_ok(cmd, COMMAND_TIMEOUT);
        let mut all: Vec<serde_json::Value> =
            serde_json::from_str(&text).expect("docker image inspect prints JSON");
        assert_eq!(all.len(), 1, "one image named {image}:{}", self.tag);
        all.remove(0)
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        let mut cmd = self.tools.docker();
        cmd.args(["image", "rm", "--force"]);
        for image in IMAGES {
            cmd.arg(format!("{image}:{}", self.tag));
        }
        match try_run(cmd, COMMAND_TIMEOUT) {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "removing the test images failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(e) => eprintln!("removing the test images failed: {e}"),
        }
    }
}

/// `PATH` with the directory of the docker CLI first, so build.sh finds the same one.
fn docker_path(tools: &DockerTools) -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = tools
        .docker
        .parent()
        .map(Path::to_path_buf)
        .into_iter()
        .collect();
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).expect("a PATH")
}

/// A running `docker/compose.yaml` project; taken down (`down -v --remove-orphans`) when
/// dropped, with the last lines of every container's log printed if the test failed.
#[derive(Debug)]
pub struct ComposeProject {
    tools: DockerTools,
    /// The project name (`-p`).
    pub name: String,
    file: PathBuf,
    env: Vec<(String, String)>,
}

impl ComposeProject {
    /// `docker-compose -p NAME -f docker/compose.yaml up -d` with `env` (e.g. `MESHLITE_TAG`);
    /// returns once every job has completed and every sidecar is ready.
    ///
    /// # Panics
    /// If the project does not come up within [`UP_TIMEOUT`] (it is taken down again).
    pub fn up(tools: &DockerTools, name: &str, env: &[(&str, &str)]) -> ComposeProject {
        let project = ComposeProject {
            tools: tools.clone(),
            name: name.to_string(),
            file: workspace().join("docker/compose.yaml"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        run_ok(project.command(&["up", "-d", "--no-color"]), UP_TIMEOUT);
        project
    }

    /// A `docker-compose -p NAME -f FILE ARGS...` command with the project's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.tools.compose);
        cmd.arg("-p")
            .arg(&self.name)
            .arg("-f")
            .arg(&self.file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    /// Runs `docker-compose ARGS...` and requires success; its standard output.
    ///
    /// # Panics
    /// If it fails.
    pub fn compose(&self, args: &[&str]) -> String {
        run_ok(self.command(args), COMMAND_TIMEOUT)
    }

    /// The host address a service's container port is published on.
    ///
    /// # Panics
    /// If the port is not published.
    pub fn published(&self, service: &str, port: u16) -> SocketAddr {
        let out = self.compose(&["port", service, &port.to_string()]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{service}:{port} is not published (`{}`)", out.trim()))
    }

    /// The last `lines` lines of every container's log.
    pub fn logs(&self, lines: usize) -> String {
        match try_run(
            self.command(&["logs", "--no-color", "--tail", &lines.to_string()]),
            COMMAND_TIMEOUT,
        ) {
            Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
            Err(e) => e,
        }
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- compose project {} (last log lines)\n{}",
                self.name,
                self.logs(40)
            );
        }
        match try_run(
            self.command(&["down", "-v", "--remove-orphans", "--timeout", "5"]),
            UP_TIMEOUT,
        ) {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "docker-compose down failed for {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(e) => eprintln!("docker-compose down failed for {}: {e}", self.name),
        }
    }
}
