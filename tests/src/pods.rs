//! A mesh of pods for the transparent-capture tests: a real `meshlite-control` on the node
//! namespace's bridge address, and pods ([`crate::netns`]) whose capture rules are installed
//! by `meshlite-proxy init` and whose sidecar runs as uid/gid 1337, Istio's defaults, with
//! Istio's ports (15001, 15006, 15020, 15021).
//!
//! The test's own process plays the apps: it binds their servers and opens their connections
//! from inside the pods ([`crate::netns::Netns::bind`], [`crate::netns::Netns::connect`]), so
//! what they send is captured exactly as a real app's would be.

use crate::clients::Reply;
use crate::control::control_binary;
use crate::deadline::{SOON, eventually};
use crate::mesh::proxy_binary;
use crate::netns::{Node, NsProcess, Pod};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use meshlite_bench::harness::create_token;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The uid and gid the sidecars run as (Istio's).
pub const PROXY_ID: u32 = 1337;
/// The xDS + CA port of the control plane on the node.
pub const XDS_PORT: u16 = 15012;
/// Its monitoring port.
pub const MONITORING_PORT: u16 = 15014;

/// `meshlite-control serve` running in the node namespace.
pub struct NodeControl {
    /// Where the pods reach it.
    pub xds: SocketAddr,
    dir: tempfile::TempDir,
    process: NsProcess,
}

impl NodeControl {
    /// Starts a control plane on the node's bridge address, its config directory holding
    /// `files` (name, YAML).
    ///
    /// # Panics
    /// If it does not print its listening line within [`SOON`].
    pub async fn start(node: &Node, files: &[(&str, &str)]) -> NodeControl {
        let dir = tempfile::Builder::new()
            .prefix("meshlite-e2e-node-control-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir(dir.path().join("config")).expect("config dir");
        for (name, yaml) in files {
            std::fs::write(dir.path().join("config").join(name), yaml).expect("write config");
        }
        let xds = SocketAddr::new(IpAddr::V4(node.gateway()), XDS_PORT);
        let monitoring = SocketAddr::new(IpAddr::V4(node.gateway()), MONITORING_PORT);
        let (config, state) = (dir.path().join("config"), dir.path().join("state"));
        let (xds_s, mon_s) = (xds.to_string(), monitoring.to_string());
        let args = [
            "serve",
            "--config-dir",
            config.to_str().expect("utf-8 path"),
            "--state-dir",
            state.to_str().expect("utf-8 path"),
            "--xds-addr",
            &xds_s,
            "--monitoring-addr",
            &mon_s,
        ];
        let command = node.ns.command(control_binary(), &args);
        let process = node
            .ns
            .spawn(command, &dir.path().join("control.log"))
            .expect("start meshlite-control in the node namespace");
        let plane = NodeControl { xds, dir, process };
        eventually("the node's control plane to listen", SOON, || async {
            plane
                .process
                .log()
                .contains("meshlite-control listening")
                .then_some(())
        })
        .await;
        plane
    }

    /// A one-hour bootstrap token for service account `sa` of `default`, granting `app=sa`.
    pub async fn token(&self, sa: &str) -> String {
        let state = self.dir.path().join("state");
        let sa = sa.to_string();
        tokio::task::spawn_blocking(move || {
            create_token(
                control_binary(),
                &state,
                "default",
                &sa,
                Some("1h"),
                &[&format!("app={sa}")],
            )
        })
        .await
        .expect("token task")
        .unwrap_or_else(|e| panic!("token create: {e}"))
    }

    /// Writes (or replaces) `name` in its config directory, atomically.
    pub fn write_config(&self, name: &str, yaml: &str) {
        let config = self.dir.path().join("config");
        let temp = config.join(format!(".{name}.tmp"));
        std::fs::write(&temp, yaml).expect("write config");
        std::fs::rename(&temp, config.join(name)).expect("rename config");
    }

    /// The root certificate the proxies trust.
    pub fn root_cert(&self) -> PathBuf {
        self.dir.path().join("state").join("root-cert.pem")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// A served port of a pod's app: the port callers address, its protocol (`http`, `tcp`).
#[derive(Clone, Copy, Debug)]
pub struct Served {
    /// The port (the app listens on it too, on every address).
    pub port: u16,
    /// Its protocol name.
    pub protocol: &'static str,
}

/// A sidecar running as 1337 in a pod whose capture rules `meshlite-proxy init` installed.
pub struct PodSidecar {
    process: NsProcess,
    dir: tempfile::TempDir,
}

impl PodSidecar {
    /// Installs the capture rules in `pod` (`meshlite-proxy init` with `init_args`), then
    /// starts its sidecar for service account and app `sa`, serving `ports`, and waits for
    /// its readiness.
    ///
    /// # Panics
    /// If init fails or the sidecar is not ready within [`SOON`].
    pub async fn start(
        pod: &Pod,
        control: &NodeControl,
        sa: &str,
        ports: &[Served],
        init_args: &[&str],
    ) -> PodSidecar {
        let mut args = vec!["init"];
        args.extend_from_slice(init_args);
        let init = pod
            .ns
            .run(proxy_binary(), &args, Duration::from_secs(20))
            .await
            .expect("run meshlite-proxy init");
        assert!(
            init.status.success(),
            "meshlite-proxy init failed: {}{}",
            String::from_utf8_lossy(&init.stdout),
            String::from_utf8_lossy(&init.stderr)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("meshlite-e2e-pod-{sa}-"))
            .tempdir()
            .expect("temp dir");
        std::fs::copy(control.root_cert(), dir.path().join("root-cert.pem")).expect("root");
        std::fs::write(dir.path().join("token"), control.token(sa).await).expect("token");
        let mut y = String::new();
        let _ = writeln!(y, "identity:");
        let _ = writeln!(
            y,
            "  spiffe_id: \"spiffe://cluster.local/ns/default/sa/{sa}\""
        );
        let _ = writeln!(y, "  workload: \"{sa}\"\n  app: \"{sa}\"");
        let _ = writeln!(y, "listeners:");
        let _ = writeln!(
            y,
            "  outbound: \"127.0.0.1:15001\"\n  inbound: \"0.0.0.0:15006\""
        );
        let _ = writeln!(
            y,
            "  admin: \"127.0.0.1:15000\"\n  metrics: \"0.0.0.0:15020\""
        );
        let _ = writeln!(y, "  health: \"0.0.0.0:15021\"");
        let _ = writeln!(
            y,
            "inbound:\n  ports:{}",
            if ports.is_empty() { " []" } else { "" }
        );
        for p in ports {
            let _ = writeln!(
                y,
                "    - {{ port: {}, target: \"127.0.0.1:{}\", protocol: {} }}",
                p.port, p.port, p.protocol
            );
        }
        let _ = writeln!(y, "control:");
        let _ = writeln!(y, "  address: \"https://{}\"", control.xds);
        let _ = writeln!(y, "  root_cert: root-cert.pem\n  token_file: token");
        let _ = writeln!(y, "  inbound_address: \"{}:15006\"", pod.ip);
        let config = dir.path().join("proxy.yaml");
        std::fs::write(&config, y).expect("write config");
        // The sidecar's own files belong to its uid, as in its container.
        for entry in std::fs::read_dir(dir.path()).expect("read dir").flatten() {
            std::os::unix::fs::chown(entry.path(), Some(PROXY_ID), Some(PROXY_ID)).expect("chown");
        }
        std::os::unix::fs::chown(dir.path(), Some(PROXY_ID), Some(PROXY_ID)).expect("chown");
        let access_log = dir.path().join("access.log");
        let command = pod.ns.command_as(
            PROXY_ID,
            PROXY_ID,
            proxy_binary(),
            &[
                "--config",
                config.to_str().expect("utf-8 path"),
                "--access-log",
                access_log.to_str().expect("utf-8 path"),
            ],
        );
        let process = pod
            .ns
            .spawn(command, &dir.path().join("proxy.log"))
            .expect("start the sidecar");
        let sidecar = PodSidecar { process, dir };
        let health = SocketAddr::new(IpAddr::V4(pod.ip), 15021);
        let what = format!("{sa}'s sidecar to be ready");
        eventually(&what, SOON, || async {
            let reply = get(pod, health, "localhost", "/healthz/ready").await.ok()?;
            (reply.status == 200).then_some(())
        })
        .await;
        sidecar
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Its access log lines, parsed.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        crate::mesh::json_lines(&self.dir.path().join("access.log"))
    }
}

impl Drop for PodSidecar {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- pod sidecar log ----\n{}", self.log());
        }
    }
}

/// `GET path` with `Host: host` on a new connection opened from inside `pod` to `addr`
/// (captured like any of the pod's own connections), within five seconds.
pub async fn get(pod: &Pod, addr: SocketAddr, host: &str, path: &str) -> Result<Reply, String> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let stream = pod.ns.connect(addr).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", host)
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        Ok(Reply::collect(resp).await)
    })
    .await
    .map_err(|_| format!("GET {addr}{path}: no answer within 5 s"))?
}

/// The metrics text of the sidecar of `pod` (`/stats/prometheus` on 15020).
///
/// # Panics
/// If it does not answer.
pub async fn metrics(pod: &Pod) -> String {
    let addr = SocketAddr::new(IpAddr::V4(pod.ip), 15020);
    get(pod, addr, "localhost", "/stats/prometheus")
        .await
        .expect("metrics")
        .text()
}
