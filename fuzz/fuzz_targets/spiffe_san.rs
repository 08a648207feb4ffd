//! SPIFFE IDs and the certificates that carry them: any text parses or is refused, any DER
//! yields an ID or a named refusal, and the control plane's label extension decodes or
//! grants nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(id) = meshlite_xds_proto::spiffe::SpiffeId::parse(text)
    {
        let again = meshlite_xds_proto::spiffe::SpiffeId::parse(id.as_str()).expect("round trip");
        assert_eq!(id, again);
    }
    let der = rustls_pki_types::CertificateDer::from(data);
    let _ = meshlite_proxy::identity::tls::spiffe_id_of_leaf(&der);
    let _ = meshlite_control::ca::binding::decode(data);
});
