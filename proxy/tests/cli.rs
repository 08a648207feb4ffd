//! The `meshlite-proxy` binary through its command line: the quick start's `dev-pki` output is
//! accepted by `validate` for the shipped example configs, and a missing or broken file is
//! refused with exit code 2.
//!
//! Being an integration test of this package also makes `cargo test --workspace` build the
//! binary with the workspace's features, so the end-to-end crate finds it in `target/` without
//! a second, differently-featured build.

// Test helpers: a failed expectation is a failed test.
#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn proxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshlite-proxy"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.join("examples"))
        .unwrap_or_default()
}

#[test]
fn dev_pki_output_validates_with_the_example_configs() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["client-sidecar.yaml", "server-sidecar.yaml"] {
        std::fs::copy(examples_dir().join(name), dir.path().join(name)).expect("copy example");
    }
    let out = proxy()
        .current_dir(dir.path())
        .args([
            "dev-pki",
            "--out",
            "certs",
            "--identity",
            "default/productpage",
            "--identity",
            "default/reviews",
        ])
        .output()
        .expect("run dev-pki");
    assert!(out.status.success(), "dev-pki failed: {}", text(&out));
    for file in [
        "root.crt",
        "productpage.crt",
        "productpage.key",
        "reviews.crt",
    ] {
        assert!(
            dir.path().join("certs").join(file).is_file(),
            "{file} not written"
        );
    }
    for name in ["client-sidecar.yaml", "server-sidecar.yaml"] {
        let out = proxy()
            .current_dir(dir.path())
            .args(["validate", "--config", name])
            .output()
            .expect("run validate");
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
        assert!(text(&out).contains("valid"), "{name}: {}", text(&out));
    }
}

#[test]
fn a_missing_or_broken_config_exits_2_naming_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = proxy()
        .args(["validate", "--config"])
        .arg(dir.path().join("absent.yaml"))
        .output()
        .expect("run validate");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("absent.yaml"), "{}", text(&out));

    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "identity:\n  spiffe_id: [not, a, string\n").expect("write");
    let out = proxy()
        .args(["validate", "--config"])
        .arg(&broken)
        .output()
        .expect("run validate");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("invalid configuration"),
        "{}",
        text(&out)
    );

    let out = proxy().arg("validate").output().expect("run validate");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--config"), "{}", text(&out));
}

#[test]
fn an_expired_own_certificate_refuses_to_start_with_exit_2() {
    use meshlite_proxy::identity::dev_pki::{DevCa, LeafOptions};
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::new("cluster.local").expect("ca");
    ca.write_root(dir.path()).expect("root");
    let expired = ca
        .issue_with(
            "spiffe://cluster.local/ns/default/sa/productpage",
            &LeafOptions {
                expired_by: Some(std::time::Duration::from_secs(48 * 3600)),
                ..Default::default()
            },
        )
        .expect("issue");
    std::fs::create_dir_all(dir.path().join("certs")).expect("mkdir");
    expired
        .write(&dir.path().join("certs"), "productpage")
        .expect("write");
    std::fs::rename(
        dir.path().join("root.crt"),
        dir.path().join("certs/root.crt"),
    )
    .expect("mv");
    // The identity is checked before any listener is bound, so the example's ports are unused.
    let config =
        std::fs::read_to_string(examples_dir().join("client-sidecar.yaml")).expect("example");
    std::fs::write(dir.path().join("client.yaml"), config).expect("write config");
    let out = proxy()
        .current_dir(dir.path())
        .args(["--config", "client.yaml"])
        .output()
        .expect("run proxy");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("expired"), "{said}");
    assert_eq!(
        said.matches("own certificate fails verification").count(),
        1,
        "the cause is said once: {said}"
    );
}

/// The sidecar the Kubernetes injector writes (`control/tests/inject/<golden>`): its arguments
/// and plain `env` values, with the kubelet's `$(VAR)` expansion of the downward-API
/// variables done for a pod in namespace `shop` at 10.1.2.3.
fn injected_sidecar(golden: &str) -> (Vec<String>, Vec<(String, String)>) {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../control/tests/inject")
        .join(golden);
    let text = std::fs::read_to_string(&golden).expect("golden injection output");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).expect("YAML");
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let sidecar = deployment["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .expect("init containers")
        .iter()
        .find(|c| c["name"] == "meshlite-proxy")
        .expect("the sidecar")
        .clone();
    let downward = [
        ("POD_NAME", "reviews-v1-7d9c8f6b5-x2x9z"),
        ("POD_NAMESPACE", "shop"),
        ("INSTANCE_IP", "10.1.2.3"),
        ("SERVICE_ACCOUNT", "bookinfo-reviews"),
    ];
    let expand = |s: &str| {
        downward
            .iter()
            .fold(s.to_string(), |s, (k, v)| s.replace(&format!("$({k})"), v))
    };
    let args = sidecar["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| expand(a.as_str().expect("string arg")))
        .collect();
    let mut env: Vec<(String, String)> = downward
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for e in sidecar["env"].as_array().expect("env") {
        if let Some(v) = e["value"].as_str() {
            env.push((e["name"].as_str().expect("name").to_string(), expand(v)));
        }
    }
    (args, env)
}

#[test]
fn the_injected_sidecar_command_line_is_one_the_proxy_accepts() {
    // The plain Deployment, and one whose probes were rewritten (ISTIO_KUBE_APP_PROBERS).
    for golden in ["deployment.out.yaml", "probes.out.yaml"] {
        let (args, env) = injected_sidecar(golden);
        assert!(
            env.iter().any(|(k, _)| k == "MESHLITE_CONTROL"),
            "the control plane address comes from the environment: {env:?}"
        );
        let probes = env.iter().any(|(k, _)| k == "ISTIO_KUBE_APP_PROBERS");
        assert_eq!(probes, golden == "probes.out.yaml", "{golden}: {env:?}");
        let out = proxy()
            .env_remove("MESHLITE_CONFIG")
            .envs(env)
            .args(&args)
            .arg("validate")
            .output()
            .expect("run validate");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{golden} {args:?}: {}",
            text(&out)
        );
        // Two application ports, from the Deployment's containers.
        assert!(
            text(&out).contains("(command line): valid (0 services, 2 inbound ports)"),
            "{golden}: {}",
            text(&out)
        );
    }
    let (args, _) = injected_sidecar("deployment.out.yaml");

    // Without the control plane's address there is nothing to configure the proxy from.
    let out = proxy()
        .env_remove("MESHLITE_CONFIG")
        .env_remove("MESHLITE_CONTROL")
        .args(&args)
        .arg("validate")
        .output()
        .expect("run validate");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // A malformed application port is refused by the flag's parser.
    let out = proxy()
        .args([
            "--control",
            "https://cp:15012",
            "--app-port",
            "9080/sctp",
            "validate",
        ])
        .output()
        .expect("run validate");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("sctp"), "{}", text(&out));
}

#[test]
fn instance_ip_auto_refuses_a_route_that_leaves_from_loopback() {
    // `auto` takes the address the route to the control plane leaves from (a compose pod's
    // IP); a control plane on loopback gives no pod address, and the proxy says so.
    let run = |ip: &str| {
        proxy()
            .env_remove("MESHLITE_CONFIG")
            .env_remove("INSTANCE_IP")
            .args([
                "--control",
                "https://127.0.0.1:15012",
                "--root-cert",
                "/dev/null",
            ])
            .args(["--namespace", "default", "--service-account", "reviews"])
            .args(["--workload", "reviews-v1", "--instance-ip", ip, "validate"])
            .output()
            .expect("run validate")
    };
    let out = run("auto");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("leaves from 127.0.0.1, not a pod address"),
        "{}",
        text(&out)
    );
    let out = run("pod-ip");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("neither an IP address nor `auto`"),
        "{}",
        text(&out)
    );
    let out = run("10.1.2.3");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Starts a proxy on free loopback ports with a static identity, holds one connection open
/// mid-request on its outbound listener, sends SIGTERM and returns how long it took to exit.
fn drain_time(drain: Option<&str>) -> std::time::Duration {
    use std::io::{BufRead, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = proxy()
        .args(["dev-pki", "--out"])
        .arg(dir.path())
        .args(["--identity", "default/app"])
        .output()
        .expect("dev-pki");
    assert!(pki.status.success(), "{}", text(&pki));
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        "identity:\n  spiffe_id: spiffe://cluster.local/ns/default/sa/app\n  workload: app\n  \
         cert: app.crt\n  key: app.key\n  roots: root.crt\nlisteners:\n  outbound: 127.0.0.1:0\n  \
         inbound: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  metrics: 127.0.0.1:0\n  health: 127.0.0.1:0\n",
    )
    .expect("config");
    let mut cmd = proxy();
    cmd.env_remove("MESHLITE_DRAIN_DURATION")
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    if let Some(d) = drain {
        cmd.env("MESHLITE_DRAIN_DURATION", d);
    }
    let mut child = cmd.spawn().expect("start proxy");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let addrs: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    let outbound: std::net::SocketAddr = addrs["outbound"]
        .as_str()
        .expect("outbound address")
        .parse()
        .expect("address");
    let mut held = std::net::TcpStream::connect(outbound).expect("connect");
    held.write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\n")
        .expect("half a request");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let sent = std::time::SystemTime::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "a drained proxy exits 0: {status:?}");
    drop(held);
    sent.elapsed().expect("clock")
}

#[test]
fn sigterm_drains_for_the_termination_drain_duration() {
    let short = drain_time(Some("1s"));
    assert!(
        short >= std::time::Duration::from_millis(900) && short < std::time::Duration::from_secs(4),
        "MESHLITE_DRAIN_DURATION=1s drained for {short:?}"
    );
    // The default is Istio's 5 s: the setting is what shortened it.
    let default = drain_time(None);
    assert!(
        default >= std::time::Duration::from_millis(4500),
        "the default drain lasted {default:?}"
    );
}

#[test]
fn wait_exits_1_naming_the_address_when_no_proxy_becomes_ready() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let out = proxy()
        .args(["wait", "--health", &addr.to_string(), "--timeout", "1s"])
        .output()
        .expect("run wait");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(&addr.to_string()), "{}", text(&out));
}
