//! Request heads from a hostile peer: the first-bytes detector, the bare-LF scan and, for
//! heads httparse accepts, the framing checks and path normalisation (all modes). None may
//! panic; a normalised path must be stable (normalising it again changes nothing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlite_proxy::message::path::{PathNormalization, normalize};

fuzz_target!(|data: &[u8]| {
    let _ = meshlite_proxy::inbound::detect::detect(data);
    let _ = meshlite_proxy::message::framing::bare_lf_in_head(b'\r', data);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(data) else {
        return;
    };
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return;
    };
    let mut b = http::Request::builder().method(method).uri(path);
    for h in parsed.headers.iter() {
        b = b.header(h.name, h.value);
    }
    let Ok(req) = b.body(()) else { return };
    let _ = meshlite_proxy::message::framing::check(&req);
    for mode in [
        PathNormalization::Base,
        PathNormalization::MergeSlashes,
        PathNormalization::DecodeAndMergeSlashes,
    ] {
        if let Ok(once) = normalize(req.uri().path(), mode) {
            let again = normalize(&once, mode).expect("a normalised path normalises");
            assert_eq!(once, again, "normalisation is idempotent");
        }
    }
});
