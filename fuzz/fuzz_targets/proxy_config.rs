//! The proxy's config file: any text is parsed and validated without a panic; a refusal is an
//! error naming the field.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = meshlite_proxy::config::ProxyConfig::parse(
            text,
            std::path::Path::new("/fuzz/proxy.yaml"),
        );
    }
});
