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
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Whether this machine can run namespace tests; says SKIPPED when not (a failure under
/// `MESHLITE_REQUIRE_PEERS`).
///
/// # Panics
/// When something is missing and `MESHLITE_REQUIRE_PEERS` is set.
pub fn can_run() -> bool {
    crate::netns::can_run_tests("network namespace tests")
}

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
    /// When the pod started: `meshlite-proxy init` began.
    pub started: tokio::time::Instant,
    /// From [`Self::started`] until the sidecar answered 200 on `/healthz/ready`.
    pub ready_after: Duration,
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
        Self::start_workload(pod, control, (sa, sa), ports, init_args).await
    }

    /// [`Self::start`] for workload `name` of app and service account `sa` (`(sa, name)`):
    /// several pods of one service, told apart by their workload names.
    ///
    /// # Panics
    /// If init fails or the sidecar is not ready within [`SOON`].
    pub async fn start_workload(
        pod: &Pod,
        control: &NodeControl,
        (sa, name): (&str, &str),
        ports: &[Served],
        init_args: &[&str],
    ) -> PodSidecar {
        let started = tokio::time::Instant::now();
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
        let _ = writeln!(y, "  workload: \"{name}\"\n  app: \"{sa}\"");
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
        // Cluster statistics (outlier detection, retries), which Istio's default set leaves
        // out, as a user's `proxyStatsMatcher` would include them.
        let _ = writeln!(
            y,
            "proxy_stats_matcher:\n  inclusion_prefixes: [\"cluster.\"]"
        );
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
        let health = SocketAddr::new(IpAddr::V4(pod.ip), 15021);
        let what = format!("{name}'s sidecar to be ready");
        eventually(&what, SOON, || async {
            let reply = get(pod, health, "localhost", "/healthz/ready").await.ok()?;
            (reply.status == 200).then_some(())
        })
        .await;
        PodSidecar {
            process,
            dir,
            started,
            ready_after: started.elapsed(),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Kills it (SIGKILL: a crashed pod; no drain, no goodbye to the control plane).
    pub fn kill(&mut self) {
        self.process.kill();
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

/// The admin `/config_dump` of the sidecar of `pod` (127.0.0.1:15000 inside it), as JSON.
///
/// # Panics
/// If it does not answer with JSON.
pub async fn config_dump(pod: &Pod) -> serde_json::Value {
    let admin = SocketAddr::from(([127, 0, 0, 1], 15000));
    get(pod, admin, "localhost", "/config_dump")
        .await
        .expect("config_dump")
        .json()
}

/// The IPv4 address `name` resolves to for an app in `pod`: one A query over UDP to the
/// node's address on port 53, which the pod's `--redirect-dns` rule sends to its sidecar's DNS
/// proxy (the app's resolver would ask its nameserver the same way); within two seconds.
pub async fn resolve(pod: &Pod, node: &Node, name: &str) -> Result<Ipv4Addr, String> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut query = Message::new(0x7070, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    let qname = Name::from_ascii(name).map_err(|e| e.to_string())?;
    query.add_query(Query::query(qname, RecordType::A));
    let packet = query.to_vec().map_err(|e| e.to_string())?;
    let socket = pod
        .ns
        .udp(SocketAddr::from(([0, 0, 0, 0], 0)))
        .await
        .map_err(|e| e.to_string())?;
    let resolver = SocketAddr::new(IpAddr::V4(node.gateway()), 53);
    socket
        .send_to(&packet, resolver)
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
        .await
        .map_err(|_| format!("no answer for {name} within 2 s"))?
        .map_err(|e| e.to_string())?;
    let reply = Message::from_vec(buf.get(..n).unwrap_or_default()).map_err(|e| e.to_string())?;
    reply
        .answers
        .iter()
        .find_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .ok_or_else(|| format!("no A record for {name}: {:?}", reply.metadata.response_code))
}

/// One call of a [`PodLoad`]: when it was sent and answered, and which app answered (its
/// `x-served-by`) or why it failed.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// When it was sent.
    pub sent: tokio::time::Instant,
    /// When its answer (or failure) came.
    pub done: tokio::time::Instant,
    /// The app that answered 200, or the failure.
    pub served_by: Result<String, String>,
}

/// Callers in a pod, each on its own keep-alive connection (opened again after a failure),
/// sending `GET /` with one `Host` to one address one after another, as an app with no proxy
/// settings does; bounded in count and in time, so it stops by itself.
pub struct PodLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    outcomes: std::sync::Arc<std::sync::Mutex<Vec<Outcome>>>,
    callers: Vec<tokio::task::JoinHandle<()>>,
}

/// One request per caller at most every this often (a steady load the machine keeps up with).
const CALL_PAUSE: Duration = Duration::from_millis(5);

impl PodLoad {
    /// Starts `callers` callers in `pod` calling `addr` with `Host: host`, each sending at most
    /// `max_calls` requests and for at most `max_time`.
    pub fn start(
        pod: std::sync::Arc<Pod>,
        addr: SocketAddr,
        host: &str,
        callers: usize,
        (max_calls, max_time): (usize, Duration),
    ) -> PodLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let outcomes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let until = tokio::time::Instant::now() + max_time;
        let callers = (0..callers)
            .map(|_| {
                let (pod, stop, outcomes) = (pod.clone(), stop.clone(), outcomes.clone());
                let host = host.to_string();
                tokio::spawn(async move {
                    let mut conn: Option<
                        hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>,
                    > = None;
                    for _ in 0..max_calls {
                        if stop.load(std::sync::atomic::Ordering::Relaxed)
                            || tokio::time::Instant::now() >= until
                        {
                            break;
                        }
                        let sent = tokio::time::Instant::now();
                        let served_by = call_on(&pod, &mut conn, addr, &host).await;
                        let done = tokio::time::Instant::now();
                        outcomes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Outcome {
                                sent,
                                done,
                                served_by,
                            });
                        tokio::time::sleep(CALL_PAUSE).await;
                    }
                })
            })
            .collect();
        PodLoad {
            stop,
            outcomes,
            callers,
        }
    }

    /// Every outcome so far, in the order they ended.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the callers, waits for their last calls, and returns every outcome.
    pub async fn stop(mut self) -> Vec<Outcome> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for caller in std::mem::take(&mut self.callers) {
            let _ = caller.await;
        }
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for PodLoad {
    fn drop(&mut self) {
        for caller in &self.callers {
            caller.abort();
        }
    }
}

/// One `GET /` on the caller's connection (opened first when there is none); the connection is
/// let go after a failure. Each call is bounded by five seconds.
async fn call_on(
    pod: &Pod,
    conn: &mut Option<hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>>,
    addr: SocketAddr,
    host: &str,
) -> Result<String, String> {
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            let stream = pod.ns.connect(addr).await.map_err(|e| e.to_string())?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            *conn = Some(sender);
        }
        let sender = conn.as_mut().ok_or("no connection")?;
        sender.ready().await.map_err(|e| e.to_string())?;
        let req = http::Request::get("/")
            .header("host", host)
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let served_by = resp
            .headers()
            .get(crate::apps::SERVED_BY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| format!("{status}, body cut: {e}"))?
            .to_bytes();
        if status == 200 {
            Ok(served_by)
        } else {
            Err(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body).trim()
            ))
        }
    })
    .await
    .unwrap_or_else(|_| Err("no answer within 5 s".into()));
    if outcome.is_err() {
        *conn = None;
    }
    outcome
}
