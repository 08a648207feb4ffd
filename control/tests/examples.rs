//! The example mesh configuration shipped in `examples/mesh` is valid: a user who copies it
//! starts from a config the control plane accepts without warnings.

use std::process::Command;

#[test]
fn the_example_mesh_config_validates_without_warnings() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh");
    let out = Command::new(env!("CARGO_BIN_EXE_meshlite-control"))
        .arg("validate")
        .arg(&dir)
        .output()
        .expect("run meshlite-control validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("0 warning(s)"), "{stdout}");
}
