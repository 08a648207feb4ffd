//! The `meshlite-proxy` binary through its command line: the quick start's `dev-pki` output is
//! accepted by `validate` for the shipped example configs, and a missing or broken file is
//! refused with exit code 2.
//!
//! Being an integration test of this package also makes `cargo test --workspace` build the
//! binary with the workspace's features, so the end-to-end crate finds it in `target/` without
//! a second, differently-featured build.

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
