//! The `meshlite-control` binary through its command line: `validate` accepts a good config
//! directory and lists every problem of a bad one (file, resource, field) with exit code 1;
//! `token create` prints a bootstrap token the control plane's key verifies, or writes it to a
//! private file; `cert root` writes the trust bundle once the control plane has made its root.
//!
//! Being an integration test of this package also makes `cargo test --workspace` build the
//! binary, so the end-to-end crate finds it in `target/` beside the proxy.

// Test helpers: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshlite_control::ca::TokenSigner;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn control() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshlite-control"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

const SUBSETS: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

fn routes(second_subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: 90
    - destination: {{host: reviews, subset: {second_subset}}}
      weight: 10
"
    )
}

fn config_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, yaml) in files {
        std::fs::write(dir.path().join(name), yaml).expect("write config");
    }
    dir
}

fn validate(dir: &Path) -> Output {
    control()
        .arg("validate")
        .arg(dir)
        .output()
        .expect("run meshlite-control validate")
}

#[test]
fn validate_accepts_a_canary_config() {
    let dir = config_dir(&[
        ("reviews-destinationrule.yaml", SUBSETS),
        ("reviews-virtualservice.yaml", &routes("v2")),
    ]);
    let out = validate(dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("valid (2 resources"),
        "validate should say the config is valid and count it: {}",
        text(&out)
    );
}

#[test]
fn validate_lists_every_problem_with_file_resource_and_field() {
    let dir = config_dir(&[
        ("reviews-destinationrule.yaml", SUBSETS),
        ("reviews-virtualservice.yaml", &routes("v9")),
        (
            "ratings-virtualservice.yaml",
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings}
      weight: -5
",
        ),
    ]);
    let out = validate(dir.path());
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");

    let line_about = |file: &str| -> String {
        all.lines()
            .find(|l| l.contains(file) && l.contains("error"))
            .unwrap_or_else(|| panic!("no error line names {file}:\n{all}"))
            .to_string()
    };
    let subset = line_about("reviews-virtualservice.yaml");
    for part in [
        "VirtualService shop/reviews",
        "spec.http[0].route[1].destination.subset",
        "v9",
    ] {
        assert!(
            subset.contains(part),
            "the undefined subset's line should name {part:?}: {subset}"
        );
    }
    let weight = line_about("ratings-virtualservice.yaml");
    for part in [
        "VirtualService shop/ratings",
        "spec.http[0].route[0].weight",
        "negative",
    ] {
        assert!(
            weight.contains(part),
            "the bad weight's line should name {part:?}: {weight}"
        );
    }
    assert!(
        all.contains("2 error(s)"),
        "the summary counts the errors: {all}"
    );
}

#[test]
fn validate_refuses_a_directory_that_does_not_exist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    let out = validate(&missing);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("nope"),
        "the error names the directory: {}",
        text(&out)
    );
}

#[test]
fn token_create_prints_a_token_the_control_planes_key_verifies() {
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir = state.path().join("state");
    let out = control()
        .args(["token", "create", "--state-dir"])
        .arg(&state_dir)
        .args([
            "--namespace",
            "shop",
            "--service-account",
            "reviews",
            "--ttl",
            "10m",
        ])
        .output()
        .expect("run token create");
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(token.starts_with("mlt1."), "token: {token}");

    let key = state_dir.join("token-key");
    let mode = std::fs::metadata(&key)
        .expect("token-key written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "token-key must be private, mode {mode:o}");

    let signer = TokenSigner::load_or_create(&state_dir).expect("load the token key");
    let now = time::OffsetDateTime::now_utc();
    let claims = signer.verify(&token, now).expect("the token verifies");
    assert_eq!(
        claims.identity.as_str(),
        "spiffe://cluster.local/ns/shop/sa/reviews"
    );
    let ttl = claims.expires - now;
    assert!(
        ttl > time::Duration::minutes(9) && ttl <= time::Duration::minutes(10),
        "the token lives for the 10 minutes asked, got {ttl}"
    );

    // A second token for the same identity is a different token under the same key.
    let again = control()
        .args(["token", "create", "--state-dir"])
        .arg(&state_dir)
        .args(["--namespace", "shop", "--service-account", "reviews"])
        .output()
        .expect("run token create");
    let again = String::from_utf8_lossy(&again.stdout).trim().to_string();
    assert_ne!(again, token);
    signer
        .verify(&again, now)
        .expect("the same key signs every token");
}

#[test]
fn token_create_refuses_an_identity_that_is_not_one() {
    let state = tempfile::tempdir().expect("tempdir");
    let out = control()
        .args(["token", "create", "--state-dir"])
        .arg(state.path())
        .args(["--namespace", "shop/evil", "--service-account", "reviews"])
        .output()
        .expect("run token create");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("shop/evil"),
        "the refusal names the namespace: {}",
        text(&out)
    );
    assert!(out.stdout.is_empty(), "no token may be printed");
}

#[test]
fn token_create_and_cert_root_write_a_sidecars_credentials_to_files() {
    // How a shell-less container hands a sidecar its credentials (docker/compose.yaml's jobs):
    // the token to a private file, the trust bundle to a readable one.
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir = state.path().join("state");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let mode = |p: &Path| std::fs::metadata(p).expect("written").permissions().mode() & 0o777;

    // Before `serve` made the root there is no bundle, and the refusal says so.
    let root_file = out_dir.path().join("root-cert.pem");
    let root = |state_dir: &Path| {
        control()
            .args(["cert", "root", "--state-dir"])
            .arg(state_dir)
            .arg("--out")
            .arg(&root_file)
            .output()
            .expect("run cert root")
    };
    let out = root(&state_dir);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("`serve` starts"), "{}", text(&out));
    assert!(!root_file.exists(), "nothing is written on a refusal");

    let ca =
        meshlite_control::ca::CertificateAuthority::load_or_create(&state_dir, "cluster.local")
            .expect("the CA the control plane makes");
    let out = root(&state_dir);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&root_file).expect("root-cert.pem"),
        ca.roots_pem().concat()
    );
    assert_eq!(mode(&root_file), 0o644);
    // Without --out it is printed.
    let out = control()
        .args(["cert", "root", "--state-dir"])
        .arg(&state_dir)
        .output()
        .expect("run cert root");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        ca.roots_pem().concat()
    );

    let token_file = out_dir.path().join("token");
    let out = control()
        .args(["token", "create", "--state-dir"])
        .arg(&state_dir)
        .args(["--namespace", "default", "--service-account", "reviews"])
        .args(["--label", "app=reviews", "--out"])
        .arg(&token_file)
        .output()
        .expect("run token create");
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty(), "the token goes to the file only");
    assert_eq!(mode(&token_file), 0o600);
    let token = std::fs::read_to_string(&token_file).expect("token");
    let claims = TokenSigner::load_or_create(&state_dir)
        .expect("the token key")
        .verify(token.trim(), time::OffsetDateTime::now_utc())
        .expect("the written token verifies");
    assert_eq!(
        claims.identity.as_str(),
        "spiffe://cluster.local/ns/default/sa/reviews"
    );
}

#[test]
fn token_create_and_cert_root_print_the_kubernetes_objects_an_injected_pod_mounts() {
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir = state.path().join("state");
    let ca =
        meshlite_control::ca::CertificateAuthority::load_or_create(&state_dir, "cluster.local")
            .expect("the CA the control plane makes");
    let out = control()
        .args(["cert", "root", "--format", "kubernetes", "--state-dir"])
        .arg(&state_dir)
        .args(["--namespace", "shop", "--namespace", "books"])
        .output()
        .expect("run cert root");
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(list["kind"], "List");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    for (item, ns) in items.iter().zip(["shop", "books"]) {
        assert_eq!(item["kind"], "ConfigMap");
        assert_eq!(item["metadata"]["name"], "istio-ca-root-cert");
        assert_eq!(item["metadata"]["namespace"], ns);
        assert_eq!(item["data"]["root-cert.pem"], ca.roots_pem().concat());
    }
    // The namespaces are required for this format.
    let out = control()
        .args(["cert", "root", "--format", "kubernetes", "--state-dir"])
        .arg(&state_dir)
        .output()
        .expect("run cert root");
    assert!(!out.status.success());
    assert!(text(&out).contains("--namespace"), "{}", text(&out));

    let out = control()
        .args(["token", "create", "--format", "kubernetes", "--state-dir"])
        .arg(&state_dir)
        .args(["--namespace", "shop", "--service-account", "reviews"])
        .args(["--label", "app=reviews"])
        .output()
        .expect("run token create");
    assert!(out.status.success(), "{}", text(&out));
    let secret: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["metadata"]["name"], "meshlite-token-reviews");
    assert_eq!(secret["metadata"]["namespace"], "shop");
    let token = secret["stringData"]["token"].as_str().expect("token");
    let claims = TokenSigner::load_or_create(&state_dir)
        .expect("the token key")
        .verify(token, time::OffsetDateTime::now_utc())
        .expect("the token verifies");
    assert_eq!(
        claims.identity.as_str(),
        "spiffe://cluster.local/ns/shop/sa/reviews"
    );
}
