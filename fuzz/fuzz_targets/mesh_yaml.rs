//! The control plane's Istio YAML: any text is loaded and validated without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let out =
            meshlite_control::source::load_text(std::path::Path::new("/fuzz/mesh.yaml"), text);
        let _ = meshlite_control::validate::validate(&out.resources);
    }
});
