//! SPIFFE IDs, as the shared contract crate defines them (`meshlite_xds_proto::spiffe`): the
//! control plane issues them and the proxy checks them, so both read the one definition.

pub use meshlite_xds_proto::spiffe::{SpiffeId, SpiffeIdError};
