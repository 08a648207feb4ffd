//! Inbound security policy: who may call this workload and how ([`inbound`]: the mutual TLS
//! mode of each port, PeerAuthentication), which end user is calling ([`jwt`], Istio's
//! RequestAuthentication), what they may do ([`authz`], Istio's AuthorizationPolicy,
//! pushed or written in the config file: [`static_file`]; CUSTOM actions ask an external
//! authorizer: [`ext_authz`]), and the record of what was decided ([`audit`]).

pub mod audit;
pub mod authz;
pub mod ext_authz;
pub mod inbound;
pub mod jwt;
pub mod static_file;
