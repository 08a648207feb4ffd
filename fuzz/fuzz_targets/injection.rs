//! Sidecar injection's untrusted inputs: any bytes posted to the webhook get an answer (an
//! AdmissionReview or a 400 Status) and any manifest text an injected result or an error,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlite_control::inject::{InjectOptions, inject_documents, webhook};

fuzz_target!(|data: &[u8]| {
    let opts = InjectOptions::default();
    let _ = webhook::review(data, &opts);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = inject_documents(text, &opts);
    }
});
