//! The configuration file through the CLI: `validate`, and a refused start, both naming the
//! offending field with exit code 2.

use meshlite_tests::mesh::{CLIENT_SA, SidecarSpec, run_proxy_cli};
use meshlite_tests::pki::Pki;
use std::ffi::OsStr;
use std::path::Path;

/// Writes a valid client spec into `dir` and returns (config path, its YAML).
fn valid_config(dir: &Path) -> (std::path::PathBuf, String) {
    let pki = Pki::new();
    let mut spec = SidecarSpec::new(&pki, CLIENT_SA);
    spec.services = vec![meshlite_tests::mesh::service(
        "app",
        80,
        meshlite_tests::mesh::AppProtocol::Http,
        "127.0.0.1:15006".parse().unwrap(),
    )];
    let path = spec.write(dir);
    (path, spec.to_yaml())
}

fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_config_validates() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = valid_config(dir.path());
    let output = run_proxy_cli(&[
        OsStr::new("validate"),
        OsStr::new("--config"),
        path.as_os_str(),
    ])
    .await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "validate refused a valid config: {}",
        output_text(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (path, yaml) = valid_config(dir.path());
    let server_id = "\"spiffe://cluster.local/ns/default/sa/server\"";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "an identity that is not a SPIFFE ID",
            yaml.replace(server_id, "\"https://not-spiffe.example\""),
            "services[0].identities[0]",
        ),
        (
            "a misspelled section",
            format!("{yaml}listners: {{}}\n"),
            "listners",
        ),
        (
            "a duration without a unit",
            format!("{yaml}limits:\n  header_read_timeout: \"10\"\n"),
            "header_read_timeout",
        ),
        (
            "a service without endpoints",
            yaml.replace("endpoints: [\"127.0.0.1:15006\"]", "endpoints: []"),
            "services[0].endpoints",
        ),
    ];
    for (what, text, field) in cases {
        assert_ne!(text, yaml, "{what}: the case did not change the config");
        std::fs::write(&path, &text).unwrap();

        let validate = run_proxy_cli(&[
            OsStr::new("validate"),
            OsStr::new("--config"),
            path.as_os_str(),
        ])
        .await;
        assert_eq!(
            validate.status.code(),
            Some(2),
            "validate, {what}: {}",
            output_text(&validate)
        );
        assert!(
            output_text(&validate).contains(field),
            "validate, {what}: the message should name `{field}`: {}",
            output_text(&validate)
        );

        let start = run_proxy_cli(&[OsStr::new("--config"), path.as_os_str()]).await;
        assert_eq!(
            start.status.code(),
            Some(2),
            "start, {what}: {}",
            output_text(&start)
        );
        assert!(
            String::from_utf8_lossy(&start.stderr).contains(field),
            "start, {what}: stderr should name `{field}`: {}",
            output_text(&start)
        );
    }
}

/// The sidecar config shipped beside the example mesh (`examples/productpage-sidecar.yaml`,
/// the quick start's) is one `meshlite-proxy validate` accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_control_sidecar_config_validates() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/productpage-sidecar.yaml");
    let output = run_proxy_cli(&[
        OsStr::new("validate"),
        OsStr::new("--config"),
        file.as_os_str(),
    ])
    .await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "validate refused the example: {}",
        output_text(&output)
    );
}
