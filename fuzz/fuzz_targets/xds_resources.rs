//! xDS responses from a control plane (or a corrupted state directory): decoded, applied to
//! the state and turned into a mesh view without a panic; a bad resource is a NACK.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlite_proxy::xds::state::XdsState;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let _ = XdsState::decode_persisted(data);
    if let Ok(resp) = meshlite_xds_proto::discovery::DeltaDiscoveryResponse::decode(data)
        && let Ok(mut state) = XdsState::default().apply(&resp)
    {
        let _ = state.view();
        let _ = state.inbound_policy();
        let _ = state.trust_bundle();
    }
});
