//! meshlite's wire contract between `meshlite-control` and every `meshlite-proxy`.
//!
//! Generated from `proto/` at build time: the xDS transport as `envoy.service.discovery.v3`
//! defines it (field numbers kept, so the messages are wire-compatible), `google.rpc.Status`
//! for NACKs, meshlite's own resources (`meshlite.v1`), the certificate service, and Envoy's
//! external authorization protocol (`envoy.service.auth.v3`, field numbers kept, so a sidecar
//! asks any ext_authz server and the e2e tests serve it with the same types). Beside them,
//! what both sides must read alike ([`spiffe`] IDs, [`duration`] text and access-log
//! [`log_format`] strings: the control plane refuses what the sidecar could not render), so that the
//! proxy and the control plane never import each other. No other logic lives here beyond the
//! type URLs.
#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::all)]

pub mod duration;
pub mod log_format;
pub mod spiffe;

/// `google.rpc`: the status carried in a NACK's `error_detail`.
pub mod google {
    /// google.rpc.
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

/// Envoy's packages: `envoy.service.discovery.v3`, the aggregated discovery service, and
/// `envoy.service.auth.v3`, the external authorization protocol with the few
/// `envoy.config.core.v3` and `envoy.type.v3` messages it uses (nested as the proto packages
/// are, so generated cross-package paths resolve).
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
        /// envoy.service.auth: ext_authz.
        pub mod auth {
            /// envoy.service.auth.v3: `Authorization/Check`, its request and response.
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.auth.v3.rs"));
            }
        }
    }
    /// envoy.config.
    pub mod config {
        /// envoy.config.core.
        pub mod core {
            /// envoy.config.core.v3: addresses and headers.
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }
    /// envoy.type.
    pub mod r#type {
        /// envoy.type.v3: HTTP status.
        pub mod v3 {
            include!(concat!(env!("OUT_DIR"), "/envoy.r#type.v3.rs"));
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

pub use envoy::service::auth::v3 as auth;
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
    fn ext_authz_fields_keep_envoys_numbers() {
        use super::auth::{AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse};
        use super::auth::{attribute_context, check_response};
        use super::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
        let check = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    http: Some(attribute_context::HttpRequest {
                        path: "/p".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        // attributes = 1 { request = 4 { http = 2 { path = 4 } } }
        assert_eq!(
            check.encode_to_vec(),
            vec![tag(1), 8, tag(4), 6, tag(2), 4, tag(4), 2, b'/', b'p']
        );
        let denied = CheckResponse {
            status: Some(Status::default()),
            http_response: Some(check_response::HttpResponse::DeniedResponse(
                DeniedHttpResponse {
                    status: None,
                    headers: vec![HeaderValueOption {
                        header: Some(HeaderValue {
                            key: "k".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    body: String::new(),
                },
            )),
        };
        // status = 1 (empty), denied_response = 2 { headers = 2 { header = 1 { key = 1 } } }
        assert_eq!(
            denied.encode_to_vec(),
            vec![tag(1), 0, tag(2), 7, tag(2), 5, tag(1), 3, tag(1), 1, b'k']
        );
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
