//! meshlite's wire contract between `meshlite-control` and every `meshlite-proxy`.
//!
//! Generated from `proto/` at build time: the xDS transport as `envoy.service.discovery.v3`
//! defines it (field numbers kept, so the messages are wire-compatible), `google.rpc.Status`
//! for NACKs, meshlite's own resources (`meshlite.v1`) and the certificate service. Beside them,
//! the two types both sides must agree on ([`spiffe`] IDs and [`duration`] text), so that the
//! proxy and the control plane never import each other. No other logic lives here beyond the
//! type URLs.
#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::all)]

pub mod duration;
pub mod spiffe;

/// `google.rpc`: the status carried in a NACK's `error_detail`.
pub mod google {
    /// google.rpc.
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

/// `envoy.service.discovery.v3`: the aggregated discovery service (nested as the proto
/// package is, so generated cross-package paths resolve).
pub mod envoy {
    /// envoy.service.
    pub mod service {
        /// envoy.service.discovery.
        pub mod discovery {
            /// envoy.service.discovery.v3.
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }
    }
}

/// `meshlite.v1`: the resources a sidecar receives and the certificate service.
pub mod meshlite {
    /// meshlite.v1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/meshlite.v1.rs"));
    }
}

pub use envoy::service::discovery::v3 as discovery;
pub use meshlite::v1;

/// The gRPC codec of every meshlite service: prost, with small buffers. tonic keeps one
/// encode and one decode buffer per stream at the size of the largest batch it carried
/// (32 KiB batches by default); a control plane holds a thousand such streams, so they start
/// at 1 KiB and yield after 8 KiB.
pub mod codec {
    use std::marker::PhantomData;
    use tonic::codec::{BufferSettings, Codec};
    use tonic_prost::ProstCodec;

    /// Buffer start size and yield threshold.
    pub fn buffer_settings() -> BufferSettings {
        BufferSettings::new(1024, 8 * 1024)
    }

    /// [`ProstCodec`] with [`buffer_settings`].
    #[derive(Debug, Clone)]
    pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for SmallBufferCodec<T, U> {
        fn default() -> Self {
            Self(PhantomData)
        }
    }

    impl<T, U> Codec for SmallBufferCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
        type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

        fn encoder(&mut self) -> Self::Encoder {
            ProstCodec::<T, U>::raw_encoder(buffer_settings())
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstCodec::<T, U>::raw_decoder(buffer_settings())
        }
    }
}

/// Type URLs of the resources, as carried in `type_url` and in each `Any`.
pub mod type_url {
    /// Prefix of every type URL.
    pub const PREFIX: &str = "type.googleapis.com/";
    /// [`crate::v1::Service`]: the services a proxy may call.
    pub const SERVICE: &str = "type.googleapis.com/meshlite.v1.Service";
    /// [`crate::v1::Endpoints`]: each service's endpoints.
    pub const ENDPOINTS: &str = "type.googleapis.com/meshlite.v1.Endpoints";
    /// [`crate::v1::DestinationPolicy`]: DestinationRules.
    pub const DESTINATION_POLICY: &str = "type.googleapis.com/meshlite.v1.DestinationPolicy";
    /// [`crate::v1::RouteTable`]: VirtualServices.
    pub const ROUTE_TABLE: &str = "type.googleapis.com/meshlite.v1.RouteTable";
    /// [`crate::v1::InboundPolicy`]: this workload's PeerAuthentication and authorization.
    pub const INBOUND_POLICY: &str = "type.googleapis.com/meshlite.v1.InboundPolicy";
    /// [`crate::v1::TrustBundle`]: the mesh's roots.
    pub const TRUST_BUNDLE: &str = "type.googleapis.com/meshlite.v1.TrustBundle";
    /// [`crate::v1::MeshConfig`]: mesh-wide settings.
    pub const MESH_CONFIG: &str = "type.googleapis.com/meshlite.v1.MeshConfig";

    /// Every type, in the order a server sends them on a change: make before break
    /// (trust and mesh settings, then services and their endpoints and policies, then routes
    /// that refer to them, then inbound policy).
    pub const ALL: [&str; 7] = [
        TRUST_BUNDLE,
        MESH_CONFIG,
        SERVICE,
        ENDPOINTS,
        DESTINATION_POLICY,
        ROUTE_TABLE,
        INBOUND_POLICY,
    ];
}

#[cfg(test)]
mod tests {
    use super::discovery::{DeltaDiscoveryRequest, DiscoveryRequest};
    use super::google::rpc::Status;
    use prost::Message;

    /// The first byte of a length-delimited field is its tag: `(number << 3) | 2`.
    fn tag(number: u8) -> u8 {
        (number << 3) | 2
    }

    #[test]
    fn nack_fields_keep_envoys_numbers() {
        let nack = DiscoveryRequest {
            error_detail: Some(Status {
                code: 3,
                message: "bad".into(),
                details: vec![],
            }),
            ..Default::default()
        };
        assert_eq!(nack.encode_to_vec()[0], tag(6));
        let delta = DeltaDiscoveryRequest {
            response_nonce: "n".into(),
            ..Default::default()
        };
        assert_eq!(delta.encode_to_vec()[0], tag(6));
        let delta_nack = DeltaDiscoveryRequest {
            error_detail: Some(Status::default()),
            ..Default::default()
        };
        assert_eq!(delta_nack.encode_to_vec()[0], tag(7));
    }

    #[test]
    fn type_urls_name_the_generated_messages() {
        use prost::Name;
        assert_eq!(super::v1::Service::type_url(), super::type_url::SERVICE);
        assert_eq!(
            super::v1::TrustBundle::type_url(),
            super::type_url::TRUST_BUNDLE
        );
        assert_eq!(
            super::v1::MeshConfig::type_url(),
            super::type_url::MESH_CONFIG
        );
    }
}
