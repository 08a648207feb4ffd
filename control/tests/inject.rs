//! Sidecar injection against golden files: each `tests/inject/NAME.in.yaml` is injected and
//! compared byte for byte with `NAME.out.yaml` (a first line `# inject: FLAGS` gives the
//! `inject` flags for that file). `MESHLITE_REGENERATE_GOLDEN=1 cargo test -p
//! meshlite-control --test inject` rewrites the expected files; review the diff.
//!
//! Beside the exact comparison, the tests check what the goldens stand for: injecting an
//! injected file changes nothing, the `inject` command writes the same bytes, the init
//! container's flags are the ones `meshlite-proxy init` takes, and the sidecar runs as Istio's
//! does.

// Test helpers: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use clap::Parser;
use meshlite_control::inject::{InjectOptions, inject_documents};
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    options: InjectOptions,
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject")
}

/// Every `(input path, expected output path)`.
fn cases() -> Vec<(PathBuf, PathBuf)> {
    let mut cases: Vec<_> = std::fs::read_dir(golden_dir())
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let name = p
                .file_name()?
                .to_str()?
                .strip_suffix(".in.yaml")?
                .to_string();
            Some((p.clone(), golden_dir().join(format!("{name}.out.yaml"))))
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "golden inputs missing: {cases:?}");
    cases
}

/// The `inject` flags a file asks for on its first line.
fn options_for(input: &str) -> (InjectOptions, Vec<String>) {
    let args: Vec<String> = input
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# inject:"))
        .map(|flags| flags.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let flags =
        Flags::try_parse_from(std::iter::once("inject".to_string()).chain(args.clone())).unwrap();
    (flags.options, args)
}

#[test]
fn every_golden_input_injects_to_its_expected_output() {
    let regenerate = std::env::var_os("MESHLITE_REGENERATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for (input, expected) in cases() {
        let text = std::fs::read_to_string(&input).unwrap();
        let (opts, _) = options_for(&text);
        let got = inject_documents(&text, &opts)
            .unwrap_or_else(|e| panic!("{}: {e}", input.display()))
            .yaml;
        if regenerate {
            std::fs::write(&expected, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "{} differs from {} (MESHLITE_REGENERATE_GOLDEN=1 rewrites it):\n{got}",
                input.display(),
                expected.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn injecting_an_injected_file_changes_nothing() {
    for (input, expected) in cases() {
        let text = std::fs::read_to_string(&input).unwrap();
        let (opts, _) = options_for(&text);
        let once = inject_documents(&text, &opts).unwrap().yaml;
        let twice = inject_documents(&once, &opts).unwrap();
        assert_eq!(
            twice.yaml,
            once,
            "{} ({})",
            input.display(),
            expected.display()
        );
        assert!(
            twice
                .reports
                .iter()
                .flat_map(|r| &r.outcomes)
                .all(|o| !o.changed()),
            "{}",
            input.display()
        );
    }
}

#[test]
fn the_inject_command_writes_the_golden_output() {
    let dir = tempfile::tempdir().unwrap();
    for (input, expected) in cases() {
        let text = std::fs::read_to_string(&input).unwrap();
        let (_, flags) = options_for(&text);
        let out = dir.path().join("out.yaml");
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_meshlite-control"))
            .arg("inject")
            .arg("-f")
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .args(&flags)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}: {}",
            input.display(),
            String::from_utf8_lossy(&run.stderr)
        );
        let want = inject_documents(&text, &options_for(&text).0).unwrap().yaml;
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            want,
            "{}",
            expected.display()
        );
    }
    // Standard input to standard output, with a summary of each workload on stderr.
    let input = golden_dir().join("skip.in.yaml");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_meshlite-control"))
        .args(["inject", "-f", "-"])
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    assert!(run.status.success());
    assert_eq!(
        String::from_utf8(run.stdout).unwrap(),
        std::fs::read_to_string(&input).unwrap()
    );
    let summary = String::from_utf8(run.stderr).unwrap();
    assert!(summary.contains("Deployment/legacy: skipped"), "{summary}");
    assert!(
        summary.contains("DaemonSet/node-agent: skipped: hostNetwork"),
        "{summary}"
    );
}

#[test]
fn a_bad_annotation_fails_the_command_naming_the_object_and_annotation() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.yaml");
    std::fs::write(
        &input,
        "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\n---\napiVersion: apps/v1\nkind: Deployment\n\
         metadata: {name: web}\nspec:\n  template:\n    metadata:\n      annotations:\n        \
         traffic.sidecar.istio.io/excludeInboundPorts: \"80,http\"\n    spec:\n      containers: [{name: web}]\n",
    )
    .unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_meshlite-control"))
        .args(["inject", "-f"])
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("document 2"), "{err}");
    assert!(err.contains("Deployment/web"), "{err}");
    assert!(
        err.contains("traffic.sidecar.istio.io/excludeInboundPorts"),
        "{err}"
    );
    assert!(err.contains("`http` is not a port"), "{err}");
}

/// Every container the injector added, across all golden outputs.
fn injected_containers() -> Vec<Value> {
    let mut found = Vec::new();
    for (input, _) in cases() {
        let text = std::fs::read_to_string(&input).unwrap();
        let out = inject_documents(&text, &options_for(&text).0).unwrap().yaml;
        for doc in out.split("\n---\n") {
            let v: Value = serde_saphyr::from_str(doc).unwrap_or(Value::Null);
            collect_containers(&v, &mut found);
        }
    }
    assert!(!found.is_empty());
    found
}

fn collect_containers(v: &Value, found: &mut Vec<Value>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if (k == "containers" || k == "initContainers")
                    && let Some(list) = child.as_array()
                {
                    found.extend(
                        list.iter()
                            .filter(|c| {
                                matches!(
                                    c["name"].as_str(),
                                    Some("meshlite-proxy" | "meshlite-init")
                                ) && c["image"].as_str() != Some("meshlite/proxy:0.0.9")
                            })
                            .cloned(),
                    );
                } else {
                    collect_containers(child, found);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_containers(c, found)),
        _ => {}
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The long flags a `--flag value ...` list uses, values skipped.
fn flag_names(args: &[String]) -> Vec<String> {
    args.iter()
        .filter(|a| a.starts_with("--"))
        .cloned()
        .collect()
}

#[test]
fn the_init_container_uses_the_capture_flags_of_meshlite_proxy_init() {
    const INIT_FLAGS: &[&str] = &[
        "--proxy-uid",
        "--proxy-gid",
        "--inbound-port",
        "--outbound-port",
        "--include-outbound-ip-ranges",
        "--exclude-outbound-ip-ranges",
        "--include-inbound-ports",
        "--exclude-inbound-ports",
        "--exclude-outbound-ports",
    ];
    let inits: Vec<Value> = injected_containers()
        .into_iter()
        .filter(|c| c["name"] == "meshlite-init")
        .collect();
    assert!(inits.len() >= 8);
    let total = inits.len();
    let mut dns_captured = 0;
    for init in inits {
        let mut args = strings(&init["args"]);
        assert_eq!(args.first().map(String::as_str), Some("init"), "{args:?}");
        // DNS capture, on unless the pod's proxyMetadata turns it off, takes no value; every
        // other flag does.
        let dns = args.iter().filter(|a| *a == "--redirect-dns").count();
        assert!(dns <= 1, "{args:?}");
        dns_captured += dns;
        args.retain(|a| a != "--redirect-dns");
        assert_eq!((args.len() - 1) % 2, 0, "{args:?}");
        for flag in flag_names(&args) {
            assert!(
                INIT_FLAGS.contains(&flag.as_str()),
                "unknown init flag {flag}"
            );
        }
        let caps = strings(&init["securityContext"]["capabilities"]["add"]);
        assert_eq!(caps, ["NET_ADMIN", "NET_RAW"]);
        assert_eq!(init["securityContext"]["runAsUser"], 0);
    }
    // capture.in.yaml turns DNS capture off; the others keep the default.
    assert!(
        dns_captured > 0 && dns_captured < total,
        "{dns_captured} of {total}"
    );
}

/// The sidecar's security context, probes and identity sources (that the proxy accepts its
/// command line is tested in `proxy/tests/cli.rs`, with the real binary).
#[test]
fn the_sidecar_runs_as_1337_read_only_with_the_downward_api_identity() {
    let mut checked = 0;
    for proxy in injected_containers()
        .into_iter()
        .filter(|c| c["name"] == "meshlite-proxy")
    {
        let env: Vec<String> = proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["name"].as_str().map(str::to_string))
            .collect();
        for downward in [
            "POD_NAME",
            "POD_NAMESPACE",
            "INSTANCE_IP",
            "SERVICE_ACCOUNT",
        ] {
            assert!(env.iter().any(|e| e == downward), "{downward} missing");
        }
        assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
        assert_eq!(proxy["securityContext"]["runAsGroup"], 1337);
        assert_eq!(proxy["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 15021);
        assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/healthz/ready");
        checked += 1;
    }
    assert!(checked >= 8);
}
